/* SPDX-License-Identifier: MIT */
/* zc_sendfile(): regular files to stream sockets; bytes checked every time. */
#define _GNU_SOURCE
#include "harness.h"

#include <pthread.h>
#include "zc.h"

#include <sys/time.h>

#define SEED 7

/* Send [offset, offset+count) of a size-byte file; check rc, sent, bytes. */
static void whole_range(int kind, size_t size, int64_t offset, uint64_t count,
			size_t want_off, size_t want_len)
{
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 1000; /* in/out: the call adds what it sent */
	int s, r, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	REQUIRE(lseek(f, 123, SEEK_SET) == 123);
	rc = zc_sendfile(s, f, offset, count, ZC_WAIT_FOREVER, ZC_CHECK_STREAM,
			 &sent);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, 1000 + want_len);
	CHECK_EQ(h_tell(f), 123); /* explicit offset: position untouched */
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(want_len, want_off, SEED);
	CHECK_MEM(got, got_len, want, want_len);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

static void test_ranges(void)
{
	for (int kind = 0; kind < 2; kind++) {
		whole_range(kind, 100000, 0, ZC_TO_EOF, 0, 100000);
		whole_range(kind, 100000, 4097, ZC_TO_EOF, 4097, 100000 - 4097);
		whole_range(kind, 100000, 30001, 5000, 30001, 5000); /* middle */
		whole_range(kind, 100000, 100000, ZC_TO_EOF, 0, 0); /* at EOF */
		whole_range(kind, 100000, 200000, ZC_TO_EOF, 0, 0); /* past */
		whole_range(kind, 0, 0, ZC_TO_EOF, 0, 0);	    /* empty */
		whole_range(kind, 8 << 20, 0, ZC_TO_EOF, 0, 8 << 20);
	}
}

/* ZC_FD_POSITION: starts at the position, advances it by exactly sent. */
static void test_fd_position(void)
{
	for (int kind = 0; kind < 2; kind++) {
		const size_t size = 300000, start = 1234, mid = 70000;
		struct h_rx rx;
		unsigned char *got, *want;
		size_t got_len;
		uint64_t sent = 0;
		int s, r, f;

		REQUIRE(h_pair(kind, &s, &r) == 0);
		REQUIRE((f = h_temp_file(size, SEED)) >= 0);
		REQUIRE(h_rx_start(&rx, r, NULL) == 0);
		REQUIRE(lseek(f, (off_t)start, SEEK_SET) == (off_t)start);
		CHECK_RC(zc_sendfile(s, f, ZC_FD_POSITION, mid, ZC_WAIT_FOREVER,
				     0, &sent), 0);
		CHECK_EQ(sent, mid);
		CHECK_EQ(h_tell(f), start + mid);
		/* @sent is a running total: this call adds to it */
		CHECK_RC(zc_sendfile(s, f, ZC_FD_POSITION, ZC_TO_EOF,
				     ZC_WAIT_FOREVER, 0, &sent), 0);
		CHECK_EQ(sent, size - start);
		CHECK_EQ(h_tell(f), size);
		/* at EOF: nothing more, position stays */
		CHECK_RC(zc_sendfile(s, f, ZC_FD_POSITION, ZC_TO_EOF,
				     ZC_WAIT_FOREVER, 0, &sent), 0);
		CHECK_EQ(sent, size - start);
		CHECK_EQ(h_tell(f), size);
		close(s);
		CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
		want = h_pattern(size - start, start, SEED);
		CHECK_MEM(got, got_len, want, size - start);
		free(got);
		free(want);
		close(f);
		h_ran++;
	}
}

/* count past EOF: -ENODATA, *sent is what went out, and it all arrived. */
static void past_eof(int kind, int nonblock, int64_t offset)
{
	const size_t size = 10000;
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0;
	int s, r, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	REQUIRE(h_set_nonblock(s, nonblock) == 0);
	if (offset == ZC_FD_POSITION)
		REQUIRE(lseek(f, 5000, SEEK_SET) == 5000);
	rc = zc_sendfile(s, f, offset, 10000, ZC_WAIT_FOREVER, 0, &sent);
	if (rc != -ENODATA)
		fprintf(stderr, "  past_eof(%s, nonblock=%d, offset=%lld)\n",
			h_kind_name(kind), nonblock, (long long)offset);
	CHECK_RC(rc, -ENODATA);
	CHECK_EQ(sent, size - 5000);
	if (offset == ZC_FD_POSITION)
		CHECK_EQ(h_tell(f), size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size - 5000, 5000, SEED);
	CHECK_MEM(got, got_len, want, size - 5000);
	CHECK_EQ(got_len, sent);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

static void test_past_eof(void)
{
	for (int kind = 0; kind < 2; kind++)
		for (int nb = 0; nb < 2; nb++) {
			past_eof(kind, nb, 5000);
			past_eof(kind, nb, ZC_FD_POSITION);
		}
}

static void test_count_zero_and_args(void)
{
	uint64_t sent = 99;
	unsigned char b;
	int s, r, f, u;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE((f = h_temp_file(1000, SEED)) >= 0);
	CHECK_RC(zc_sendfile(s, f, 0, 0, ZC_WAIT_FOREVER, 0, &sent), 0);
	CHECK_EQ(sent, 99);
	CHECK_RC(zc_sendfile(s, f, ZC_FD_POSITION, 0, 0, 0, &sent), 0);
	CHECK_EQ(sent, 99);
	CHECK_EQ(h_tell(f), 0);
	CHECK_RC(zc_sendfile(s, f, -2, 10, 0, 0, &sent), -EINVAL);
	CHECK_EQ(sent, 99);
	close(s);
	CHECK_EQ(recv(r, &b, 1, 0), 0); /* nothing was sent */
	close(r);

	/* ZC_CHECK_STREAM */
	u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	REQUIRE(u >= 0);
	sent = 99;
	CHECK_RC(zc_sendfile(u, f, 0, ZC_TO_EOF, 0, ZC_CHECK_STREAM, &sent),
		 -EPROTOTYPE);
	CHECK_EQ(sent, 99);
	close(u);
	REQUIRE(h_unix_pair(&s, &r) == 0);
	close(r);
	u = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	REQUIRE(u >= 0);
	CHECK_RC(zc_sendfile(u, f, 0, ZC_TO_EOF, 0, ZC_CHECK_STREAM, &sent),
		 -EPROTOTYPE);
	close(u);
	close(s);
	sent = 99;
	CHECK_RC(zc_sendfile(f, f, 0, ZC_TO_EOF, 0, ZC_CHECK_STREAM, &sent),
		 -ENOTSOCK);
	CHECK_EQ(sent, 99);
	close(f);
	h_ran++;
}

/* Resume [offset+done, end) until complete, polling between calls. */
static int resume(int s, int f, int64_t offset, uint64_t count,
		  uint64_t *done)
{
	for (;;) {
		uint64_t sent = 0;
		int rc = zc_sendfile(s, f, offset + (int64_t)*done,
				     count - *done, 0, 0, &sent);

		*done += sent;
		if (rc != -EAGAIN)
			return rc;
		if (h_wait_out(s, 10000) <= 0)
			return -ETIMEDOUT;
	}
}

/* Non-blocking socket, stalled reader: -EAGAIN / -ETIMEDOUT with progress. */
static void stalled(int kind, int timeout_ms)
{
	const size_t size = 2 << 20;
	struct h_rx_opts o = { .stall_ms = 10000 };
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0, done;
	long long t0;
	int s, r, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	t0 = h_now_ms();
	rc = zc_sendfile(s, f, 0, ZC_TO_EOF, timeout_ms, 0, &sent);
	CHECK_RC(rc, timeout_ms ? -ETIMEDOUT : -EAGAIN);
	if (timeout_ms)
		CHECK(h_now_ms() - t0 >= timeout_ms - 20);
	CHECK(sent > 0);
	CHECK(sent < size);
	done = sent;
	/* still stalled: a second call makes no progress */
	rc = zc_sendfile(s, f, (int64_t)done, size - done, 0, 0, &sent);
	CHECK_RC(rc, -EAGAIN);
	done = sent;
	h_rx_go(&rx);
	CHECK_RC(resume(s, f, 0, size, &done), 0);
	CHECK_EQ(done, size);
	CHECK_EQ(h_tell(f), 0);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

static void test_stalled(void)
{
	for (int kind = 0; kind < 2; kind++) {
		stalled(kind, 0);
		stalled(kind, 200);
	}
}

/* Peer goes away mid-transfer: -EPIPE or -ECONNRESET, *sent reported. */
static void peer_closed(int kind)
{
	const size_t size = 8 << 20;
	struct h_rx_opts o = { .stop_after = 100000 };
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0;
	int s, r, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	rc = zc_sendfile(s, f, 0, ZC_TO_EOF, ZC_WAIT_FOREVER, 0, &sent);
	CHECK(rc == -EPIPE || rc == -ECONNRESET);
	if (rc != -EPIPE && rc != -ECONNRESET)
		fprintf(stderr, "  peer_closed(%s): rc %d (%s)\n",
			h_kind_name(kind), rc, h_errname(rc));
	if (rc == -EINTR) { /* no signal here: see what the next call says */
		uint64_t more = 0;
		int again = zc_sendfile(s, f, (int64_t)sent, ZC_TO_EOF,
					ZC_WAIT_FOREVER, 0, &more);

		fprintf(stderr, "  (no signal was sent; calling again gives "
			"%d (%s) after %llu more bytes)\n", again,
			h_errname(again), (unsigned long long)more);
		sent += more;
	}
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK(got_len >= o.stop_after);
	CHECK(sent >= got_len);
	CHECK(sent < size);
	want = h_pattern(got_len, 0, SEED);
	CHECK_MEM(got, got_len, want, got_len);
	/* already closed before the call: nothing sent */
	sent = 99;
	rc = zc_sendfile(s, f, 0, ZC_TO_EOF, ZC_WAIT_FOREVER, 0, &sent);
	CHECK(rc == -EPIPE || rc == -ECONNRESET);
	CHECK_EQ(sent, 99);
	free(got);
	free(want);
	close(s);
	close(f);
	h_ran++;
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

/* SIGALRM without SA_RESTART interrupts a blocking send: -EINTR, resume. */
static void interrupted(int kind)
{
	const size_t size = 4 << 20;
	struct h_rx_opts o = { .stall_ms = 10000 };
	struct sigaction sa = { .sa_handler = on_alarm }, old;
	struct itimerval it = { .it_value = { .tv_usec = 200000 } };
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0, done;
	unsigned watchdog;
	int s, r, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	watchdog = alarm(0);
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART */
	REQUIRE(sigaction(SIGALRM, &sa, &old) == 0);
	alarms = 0;
	REQUIRE(setitimer(ITIMER_REAL, &it, NULL) == 0);
	rc = zc_sendfile(s, f, 0, ZC_TO_EOF, ZC_WAIT_FOREVER, 0, &sent);
	sigaction(SIGALRM, &old, NULL);
	alarm(watchdog);
	CHECK_RC(rc, -EINTR);
	CHECK_EQ(alarms, 1);
	CHECK(sent > 0);
	CHECK(sent < size);
	done = sent;
	h_rx_go(&rx);
	rc = zc_sendfile(s, f, (int64_t)done, size - done, ZC_WAIT_FOREVER, 0,
			 &sent); /* adds to the running total */
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

/* A slow reader and a 20 ms interval timer: many -EINTRs, exact stream. */
static void interrupted_often(int kind)
{
	const size_t size = 1 << 20;
	struct h_rx_opts o = { .chunk = 8192, .delay_us = 1000 };
	struct sigaction sa = { .sa_handler = on_alarm }, old;
	struct itimerval it = { .it_value = { .tv_usec = 20000 },
				.it_interval = { .tv_usec = 20000 } };
	struct itimerval off = { 0 };
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t done = 0;
	unsigned watchdog;
	int s, r, f, rc, eintr = 0, calls = 0;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	watchdog = alarm(0);
	sigemptyset(&sa.sa_mask);
	REQUIRE(sigaction(SIGALRM, &sa, &old) == 0);
	REQUIRE(setitimer(ITIMER_REAL, &it, NULL) == 0);
	do {
		uint64_t sent = 0;

		rc = zc_sendfile(s, f, (int64_t)done, size - done,
				 ZC_WAIT_FOREVER, 0, &sent);
		done += sent;
		eintr += rc == -EINTR;
		calls++;
	} while (rc == -EINTR && calls < 100000);
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
	alarm(watchdog);
	CHECK_RC(rc, 0);
	CHECK(eintr > 0);
	CHECK_EQ(done, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

/* ---- messages on the socket's error queue ------------------------------- */

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60 /* include/uapi/asm-generic/socket.h */
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000 /* include/linux/socket.h */
#endif

/* Regression: a completion on the error queue keeps POLLERR up, so poll()
 * returned at once, zc_wait_writable() said "writable", sendfile said EAGAIN,
 * and the transfer spun at full CPU forever: the timeout never came. */
static void errqueue_timeout(void)
{
	const size_t size = 8 << 20;
	struct h_rx_opts o = { .stall_ms = 10000 };
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0, done;
	int s, r, f, rc;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_small_buffers(s, r);
	if (h_queue_completion(s) < 0) {
		H_SKIP_CASE("no MSG_ZEROCOPY completions here");
		close(s);
		close(r);
		return;
	}
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	rc = zc_sendfile(s, f, 0, size, 300, 0, &sent);
	CHECK_RC(rc, -ETIMEDOUT);
	CHECK(sent < size);
	CHECK_RC(zc_wait_writable(s, 0), -EAGAIN);
	CHECK_RC(zc_wait_writable(s, 50), -ETIMEDOUT);
	/* the completion is still there: it was not ours to read */
	CHECK(h_wait_out(s, 0) == 1);
	done = sent;
	h_rx_go(&rx);
	rc = zc_sendfile(s, f, (int64_t)done, size - done, 10000, 0, &sent);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	/* the 4096 zero bytes of the MSG_ZEROCOPY send came first */
	CHECK(got_len == size + 4096);
	if (got_len == size + 4096)
		CHECK_MEM(got + 4096, got_len - 4096, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

/* Regression: with a completion on the error queue, a blocking send cut
 * short by a signal took POLLERR for an error on the connection, went on
 * sending, and blocked again: the signal's handler never got to run. */
static void errqueue_signal(void)
{
	const size_t size = 8 << 20;
	struct h_rx_opts o = { .stall_ms = 10000 };
	struct sigaction sa = { .sa_handler = on_alarm }, old;
	struct itimerval it = { .it_value = { .tv_usec = 200000 } };
	struct h_rx rx;
	unsigned char *got;
	size_t got_len;
	uint64_t sent = 0;
	unsigned watchdog;
	int s, r, f, rc;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_small_buffers(s, r);
	if (h_queue_completion(s) < 0) {
		H_SKIP_CASE("no MSG_ZEROCOPY completions here");
		close(s);
		close(r);
		return;
	}
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	watchdog = alarm(0);
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART */
	REQUIRE(sigaction(SIGALRM, &sa, &old) == 0);
	alarms = 0;
	REQUIRE(setitimer(ITIMER_REAL, &it, NULL) == 0);
	rc = zc_sendfile(s, f, 0, size, ZC_WAIT_FOREVER, 0, &sent);
	sigaction(SIGALRM, &old, NULL);
	alarm(watchdog);
	CHECK_RC(rc, -EINTR);
	CHECK_EQ(alarms, 1);
	CHECK(sent < size);
	h_rx_go(&rx);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_EQ(got_len, 4096 + sent);
	free(got);
	close(f);
	h_ran++;
}

/* zc_fd_id: the check a caller makes before resuming after -EINTR. */
static void test_fd_id(void)
{
	struct zc_fd_id id;
	int s, r, b0, b1, spare;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_tcp_pair(&b0, &b1) == 0);
	CHECK_RC(zc_fd_id_get(s, &id), 0);
	CHECK_RC(zc_fd_id_check(s, &id), 0);
	REQUIRE((spare = dup(s)) >= 0);
	CHECK_RC(zc_fd_id_check(spare, &id), 0); /* a duplicate names the same socket */
	REQUIRE(dup2(b0, s) == s);		 /* s closed, its number reused */
	CHECK_RC(zc_fd_id_check(s, &id), -EBADF);
	close(s);
	CHECK_RC(zc_fd_id_check(s, &id), -EBADF); /* not open at all */
	CHECK_RC(zc_fd_id_get(s, &id), -EBADF);
	close(spare);
	close(r);
	close(b0);
	close(b1);
	h_ran++;
}

/* zc_sendfile_id(): a call that returns unfinished records the socket; a
 * resumed one sends nothing once the number names another socket. */
static void test_sendfile_id(void)
{
	const size_t size = 4 << 20;
	struct zc_fd_id id;
	unsigned char probe[16], *got, *want;
	uint64_t sent = 0, before, first;
	int s, r, b0, b1, f, rc;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_tcp_pair(&b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	/* the peer does not read: the call stops unfinished, identity taken */
	rc = zc_sendfile_id(s, f, 0, size, 0, ZC_CHECK_STREAM | ZC_ID_TAKE, &sent, &id);
	CHECK_RC(rc, -EAGAIN);
	CHECK(sent > 0 && sent < size);
	/* resumed on the same socket: it goes on */
	got = malloc(size);
	REQUIRE(got != NULL);
	before = sent;
	CHECK_EQ(h_recv_upto(r, got, before, 5000), before);
	rc = zc_sendfile_id(s, f, (int64_t)sent, size - sent, 0, ZC_ID_CHECK, &sent, &id);
	CHECK(rc == 0 || rc == -EAGAIN);
	CHECK(sent > before);
	REQUIRE(dup2(b0, s) == s); /* closed by another thread, number reused */
	first = before;
	before = sent;
	rc = zc_sendfile_id(s, f, (int64_t)sent, size - sent, 0, ZC_ID_CHECK, &sent, &id);
	if (before < size)
		CHECK_RC(rc, -EBADF);
	CHECK_EQ(sent, before);
	CHECK_EQ(recv(b1, probe, sizeof(probe), MSG_DONTWAIT), -1); /* nothing for it */
	close(s); /* b0's socket now; dup2 closed the original, whose queue still drains */
	/* the original peer gets exactly what was sent to it, in order */
	CHECK_EQ(h_recv_upto(r, got + first, size - first, 5000), before - first);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, before, want, before);
	free(got);
	free(want);
	close(r);
	close(b0);
	close(b1);
	close(f);
	h_ran++;
}

/* ---- the socket's fd replaced by another thread during a wait ---------- */

struct replacer {
	int sock;     /* the sender's fd number, replaced by the thread */
	int old_peer; /* the original receiver: drained after the switch */
	int new_sock; /* the socket that takes over the number */
};

static void *replace_fd(void *arg)
{
	struct replacer *rp = arg;
	unsigned char buf[65536];
	long long end;

	usleep(100 * 1000); /* the sender is waiting for room by now */
	/* close + reuse of the number, in one step */
	if (dup2(rp->new_sock, rp->sock) < 0)
		return NULL;
	/* make room on the original connection so the sender wakes up */
	end = h_now_ms() + 500;
	while (h_now_ms() < end) {
		struct pollfd p = { .fd = rp->old_peer, .events = POLLIN };

		if (poll(&p, 1, 50) > 0 && read(rp->old_peer, buf, sizeof(buf)) <= 0)
			break;
	}
	return NULL;
}

/* Regression (issue 8.1): a server thread closes a connection while another
 * sends to it and accept() hands the number to a new client; the transfer
 * must stop with -EBADF and never send a byte to the new client. */
static void fd_replaced_during_wait(int kind)
{
	const size_t size = 8 << 20;
	struct replacer rp;
	pthread_t t;
	uint64_t sent = 0;
	unsigned char probe[16];
	int s, r, b0, b1, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE(h_pair(kind, &b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	rp = (struct replacer){ .sock = s, .old_peer = r, .new_sock = b0 };
	REQUIRE(pthread_create(&t, NULL, replace_fd, &rp) == 0);
	rc = zc_sendfile(s, f, 0, size, 5000, 0, &sent);
	pthread_join(t, NULL);
	CHECK_RC(rc, -EBADF);
	CHECK(sent > 0 && sent < size);
	/* the new client got nothing */
	CHECK_EQ(recv(b1, probe, sizeof(probe), MSG_DONTWAIT), -1);
	CHECK_EQ(errno, EAGAIN);
	close(s); /* now b0's socket */
	close(b0);
	close(b1);
	close(r);
	close(f);
	h_ran++;
}

/* ---- one late signal after the number changed hands (blocking socket) ---- */

static void on_usr1(int sig)
{
	(void)sig;
}

struct late_signal {
	pthread_t target;
	int sock, new_sock, old_peer;
};

static void *replace_then_signal(void *arg)
{
	struct late_signal *ls = arg;
	unsigned char buf[65536];
	long long end;

	usleep(150 * 1000); /* sendfile is stuck in the kernel by now */
	if (dup2(ls->new_sock, ls->sock) < 0)
		return NULL;
	usleep(50 * 1000);
	pthread_kill(ls->target, SIGUSR1); /* one signal, after the switch */
	end = h_now_ms() + 300;
	while (h_now_ms() < end) { /* let the original connection drain a little */
		struct pollfd p = { .fd = ls->old_peer, .events = POLLIN };

		if (poll(&p, 1, 50) > 0 && read(ls->old_peer, buf, sizeof(buf)) <= 0)
			break;
	}
	return NULL;
}

/* Regression (review of issue 8.1): the identity was taken after the first
 * call returned; a blocking socket sits in sendfile(2) for the whole stall,
 * so the number had already changed hands and the resume went to the new
 * client.  It is taken before the first syscall. */
static void late_signal_after_reuse(void)
{
	const size_t size = 8 << 20;
	struct sigaction sa = { .sa_handler = on_usr1 }, old;
	struct late_signal ls;
	struct zc_fd_id id;
	unsigned char probe[16];
	uint64_t sent = 0;
	pthread_t t;
	int s, r, b0, b1, f, rc;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_tcp_pair(&b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(sigaction(SIGUSR1, &sa, &old) == 0); /* no SA_RESTART */
	ls = (struct late_signal){ .target = pthread_self(), .sock = s,
				   .new_sock = b0, .old_peer = r };
	REQUIRE(pthread_create(&t, NULL, replace_then_signal, &ls) == 0);
	rc = zc_sendfile_id(s, f, 0, size, ZC_WAIT_FOREVER,
			    ZC_CHECK_STREAM | ZC_ID_TAKE, &sent, &id);
	CHECK_RC(rc, -EINTR);
	pthread_join(t, NULL);
	/* the caller's handler ran; it resumes on the same number */
	rc = zc_sendfile_id(s, f, (int64_t)sent, size - sent, ZC_WAIT_FOREVER,
			    ZC_ID_CHECK, &sent, &id);
	CHECK_RC(rc, -EBADF);
	CHECK_EQ(recv(b1, probe, sizeof(probe), MSG_DONTWAIT), -1); /* nothing */
	sigaction(SIGUSR1, &old, NULL);
	close(s);
	close(r);
	close(b0);
	close(b1);
	close(f);
	h_ran++;
}

int main(void)
{
	h_init(60);
	test_ranges();
	test_fd_position();
	test_past_eof();
	test_count_zero_and_args();
	test_stalled();
	for (int kind = 0; kind < 2; kind++) {
		peer_closed(kind);
		interrupted(kind);
		interrupted_often(kind);
		fd_replaced_during_wait(kind);
	}
	test_fd_id();
	test_sendfile_id();
	errqueue_timeout();
	errqueue_signal();
	late_signal_after_reuse();
	return h_result("test_sendfile");
}
