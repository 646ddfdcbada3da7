/* SPDX-License-Identifier: MIT */
/* Relays and the proxy: byte-exact both ways, half-closes, resets, many. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/time.h>

#define MAX_PEERS 256

/* ---- peers: one child process drives many sockets at once ---------------- */

/*
 * A peer sends send_len bytes of pattern send_seed, then shutdown(SHUT_WR),
 * and at the same time reads until EOF, checking every byte against
 * pattern expect_seed and the total against expect_len.
 */
struct peer {
	int fd;
	uint64_t send_len;
	unsigned send_seed;
	uint64_t expect_len;
	unsigned expect_seed;
	/* child-side progress */
	uint64_t sent, got;
	int wr_done, eof;
};

static int peer_step_out(struct peer *p)
{
	unsigned char buf[65536];
	uint64_t left = p->send_len - p->sent;
	size_t n = left < sizeof(buf) ? (size_t)left : sizeof(buf);
	ssize_t w;

	if (n > 0) {
		h_fill(buf, n, p->sent, p->send_seed);
		w = send(p->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0)
			return errno == EAGAIN || errno == EINTR ? 0 : -1;
		p->sent += (uint64_t)w;
	}
	if (p->sent == p->send_len) {
		if (shutdown(p->fd, SHUT_WR) < 0)
			return -1;
		p->wr_done = 1;
	}
	return 0;
}

static int peer_step_in(struct peer *p)
{
	unsigned char buf[65536];
	ssize_t n = recv(p->fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -1;
	if (n == 0) {
		p->eof = 1;
		return p->got == p->expect_len ? 0 : -1;
	}
	for (ssize_t i = 0; i < n; i++)
		if (buf[i] != h_byte(p->got + (uint64_t)i, p->expect_seed))
			return -1;
	p->got += (uint64_t)n;
	return p->got <= p->expect_len ? 0 : -1;
}

static int peers_run(struct peer *ps, int n, int timeout_ms)
{
	struct pollfd pf[MAX_PEERS];
	long long end = h_now_ms() + timeout_ms;

	for (;;) {
		int busy = 0;

		for (int i = 0; i < n; i++) {
			pf[i].fd = ps[i].fd;
			pf[i].events = (short)((ps[i].eof ? 0 : POLLIN) |
					       (ps[i].wr_done ? 0 : POLLOUT));
			pf[i].revents = 0;
			if (!pf[i].events)
				pf[i].fd = -1;
			else
				busy = 1;
		}
		if (!busy)
			return 0;
		if (h_now_ms() > end)
			return 10;
		if (poll(pf, (nfds_t)n, 500) < 0 && errno != EINTR)
			return 11;
		for (int i = 0; i < n; i++) {
			if (pf[i].revents & POLLOUT && !ps[i].wr_done &&
			    peer_step_out(&ps[i]) < 0)
				return 12;
			if (pf[i].revents & (POLLIN | POLLHUP | POLLERR) &&
			    !ps[i].eof && peer_step_in(&ps[i]) < 0)
				return 13;
		}
	}
}

/* In a child: keep only the peers' fds (sorted copy for close_range). */
static void keep_only(const struct peer *ps, int n)
{
	int fds[MAX_PEERS];
	unsigned lo = 3;

	for (int i = 0; i < n; i++)
		fds[i] = ps[i].fd;
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
			int t = fds[j];

			fds[j] = fds[j - 1];
			fds[j - 1] = t;
		}
	for (int i = 0; i < n; i++) {
		if ((unsigned)fds[i] > lo)
			close_range(lo, (unsigned)fds[i] - 1, 0);
		lo = (unsigned)fds[i] + 1;
	}
	close_range(lo, ~0U, 0);
}

/* Fork the peers' child; the parent's copies of their fds are closed. */
static pid_t peers_start(struct peer *ps, int n)
{
	pid_t pid = fork();

	if (pid == 0) {
		h_child_setup();
		keep_only(ps, n);
		_exit(peers_run(ps, n, 40000));
	}
	for (int i = 0; i < n; i++)
		close(ps[i].fd);
	return pid;
}

/* Run the loop until want relays are reported (bounded); returns them. */
static int run_until(struct zc_relay_loop *loop, struct zc_relay **got,
		     int want, int ms)
{
	long long end = h_now_ms() + ms;
	int n = 0;

	while (n < want && h_now_ms() < end) {
		int rc = zc_relay_run(loop, 200, got + n, (unsigned)(want - n));

		if (rc < 0 && rc != -EINTR)
			return rc;
		if (rc > 0)
			n += rc;
	}
	return n;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1;
}

/* ---- cases ---------------------------------------------------------------- */

/*
 * n relays, each between two socket pairs: x <-> [a relay b] <-> y.  x and y
 * send different amounts both ways at once and half-close; everything must
 * arrive, and each relay's counts must match.
 */
static void many_relays(int kind, int n, uint64_t base_len)
{
	static struct peer ps[MAX_PEERS];
	static struct zc_relay rs[MAX_PEERS / 2];
	struct zc_relay *done[MAX_PEERS / 2];
	struct zc_pipe slots[8];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	int got, before = count_fds();
	pid_t pid;

	REQUIRE(n * 2 <= MAX_PEERS);
	zc_pipe_pool_init(&pool, slots, 8, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	for (int i = 0; i < n; i++) {
		struct peer *x = &ps[2 * i], *y = &ps[2 * i + 1];
		int a, b;

		memset(x, 0, sizeof(*x) * 2);
		REQUIRE(h_pair(kind, &x->fd, &a) == 0);
		REQUIRE(h_pair(kind, &b, &y->fd) == 0);
		x->send_len = base_len + (uint64_t)i * 1000;
		x->send_seed = 100 + (unsigned)i;
		y->send_len = (i % 3 == 0) ? 0 : base_len / 2 + (uint64_t)i;
		y->send_seed = 300 + (unsigned)i;
		x->expect_len = y->send_len;
		x->expect_seed = y->send_seed;
		y->expect_len = x->send_len;
		y->expect_seed = x->send_seed;
		rs[i].data = &rs[i];
		REQUIRE(zc_relay_add(&loop, &rs[i], a, b) == 0);
		CHECK(rs[i].data == &rs[i]); /* kept */
	}
	CHECK_EQ(loop.active, n);
	REQUIRE((pid = peers_start(ps, 2 * n)) > 0);
	got = run_until(&loop, done, n, 40000);
	CHECK_EQ(got, n);
	CHECK_EQ(loop.active, 0);
	for (int i = 0; i < got; i++) {
		struct zc_relay *r = done[i];
		int k = (int)(r - rs);

		CHECK(r->done);
		CHECK_RC(r->error, 0);
		CHECK_EQ(r->bytes[0], ps[2 * k].send_len);
		CHECK_EQ(r->bytes[1], ps[2 * k + 1].send_len);
		CHECK(!(fcntl(r->fd[0], F_GETFL) & O_NONBLOCK)); /* restored */
		close(r->fd[0]);
		close(r->fd[1]);
	}
	CHECK(h_reap(pid) == 0);
	zc_relay_loop_close(&loop);
	zc_pipe_pool_destroy(&pool);
	CHECK_EQ(count_fds(), before);
	h_ran++;
}

static void test_relays(void)
{
	for (int kind = 0; kind < 2; kind++) {
		many_relays(kind, 1, 20 << 20);
		many_relays(kind, 3, 1 << 20);
		many_relays(kind, 100, 100000);
	}
}

/*
 * A reset on one side ends the relay with the error, and the peer on the
 * other side sees its connection reset.
 */
static void reset_side(int side)
{
	struct zc_pipe slots[2];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_relay r = { 0 }, *done[1];
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int ends[2], relay_fd[2];
	char buf[16];
	ssize_t n;

	zc_pipe_pool_init(&pool, slots, 2, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	REQUIRE(h_tcp_pair(&ends[0], &relay_fd[0]) == 0);
	REQUIRE(h_tcp_pair(&relay_fd[1], &ends[1]) == 0);
	REQUIRE(zc_relay_add(&loop, &r, relay_fd[0], relay_fd[1]) == 0);
	/* a few bytes each way first */
	REQUIRE(send(ends[0], "ping", 4, 0) == 4);
	REQUIRE(send(ends[1], "pong!", 5, 0) == 5);
	CHECK_EQ(run_until(&loop, done, 1, 300), 0); /* still running */
	CHECK_EQ(h_recv_upto(ends[1], buf, 4, 5000), 4);
	CHECK_EQ(h_recv_upto(ends[0], buf + 4, 5, 5000), 5);
	CHECK(memcmp(buf, "pingpong!", 9) == 0);
	CHECK_EQ(r.bytes[0], 4);
	CHECK_EQ(r.bytes[1], 5);
	/* the peer on this side resets */
	setsockopt(ends[side], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(ends[side]);
	CHECK_EQ(run_until(&loop, done, 1, 5000), 1);
	CHECK(r.done);
	CHECK(r.error == -ECONNRESET || r.error == -EPIPE);
	/* ... and the other peer learns it */
	REQUIRE(h_set_nonblock(ends[!side], 0) == 0);
	n = recv(ends[!side], buf, sizeof(buf), 0);
	CHECK(n < 0 && errno == ECONNRESET);
	close(ends[!side]);
	close(relay_fd[0]);
	close(relay_fd[1]);
	zc_relay_loop_close(&loop);
	zc_pipe_pool_destroy(&pool);
	h_ran++;
}

static void test_resets(void)
{
	reset_side(0);
	reset_side(1);
}

static void on_alarm(int sig)
{
	(void)sig;
}

/* Timeouts, wake-ups, signals, removal. */
static void test_loop_control(void)
{
	struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART */
	struct itimerval it = { .it_value = { .tv_usec = 100000 } };
	struct zc_pipe slots[2];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_relay r = { 0 }, r2 = { 0 }, *done[2];
	int x, a, b, y, before = count_fds();
	char buf[8];

	zc_pipe_pool_init(&pool, slots, 2, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	REQUIRE(h_unix_pair(&x, &a) == 0);
	REQUIRE(h_unix_pair(&b, &y) == 0);
	REQUIRE(zc_relay_add(&loop, &r, a, b) == 0);
	CHECK_RC(zc_relay_add(&loop, &r2, a, y), -EEXIST);
	CHECK_RC(zc_relay_add(&loop, &r2, a, a), -EINVAL);
	CHECK_RC(zc_relay_add(&loop, &r2, -1, a), -EBADF);
	CHECK(fcntl(a, F_GETFL) & O_NONBLOCK);
	CHECK_EQ(loop.active, 1);
	CHECK_EQ(zc_relay_run(&loop, 50, done, 2), 0); /* timeout */
	CHECK_RC(zc_relay_wake(&loop), 0);
	CHECK_EQ(zc_relay_run(&loop, ZC_WAIT_FOREVER, done, 2), 0);
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK_RC(zc_relay_run(&loop, ZC_WAIT_FOREVER, done, 2), -EINTR);
	signal(SIGALRM, SIG_DFL);
	alarm(120);
	/* resumes where it was */
	REQUIRE(send(x, "hello", 5, 0) == 5);
	CHECK_EQ(zc_relay_run(&loop, 100, done, 2), 0);
	CHECK_EQ(h_recv_upto(y, buf, 5, 2000), 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	/* removed mid-stream: sockets open, flags restored, nothing reported */
	zc_relay_remove(&r);
	zc_relay_remove(&r);
	CHECK_EQ(loop.active, 0);
	CHECK(!(fcntl(a, F_GETFL) & O_NONBLOCK));
	CHECK(fcntl(b, F_GETFL) >= 0);
	REQUIRE(send(x, "more", 4, 0) == 4);
	CHECK_EQ(zc_relay_run(&loop, 50, done, 2), 0);
	CHECK_EQ(h_recv_upto(y, buf, 4, 100), 0);
	/* a relay added again after removal works */
	REQUIRE(zc_relay_add(&loop, &r, a, b) == 0);
	shutdown(x, SHUT_WR);
	shutdown(y, SHUT_WR);
	CHECK_EQ(run_until(&loop, done, 1, 5000), 1);
	CHECK_EQ(r.bytes[0], 4);
	CHECK_RC(r.error, 0);
	CHECK_EQ(h_recv_upto(y, buf, 8, 2000), 4); /* then EOF */
	close(x);
	close(a);
	close(b);
	close(y);
	zc_relay_loop_close(&loop);
	zc_relay_loop_close(&loop);
	zc_pipe_pool_destroy(&pool);
	CHECK_EQ(count_fds(), before);
	h_ran++;
}

/* ---- signals ----------------------------------------------------------------- */

static volatile sig_atomic_t ticks;

static void on_tick(int sig)
{
	(void)sig;
	ticks++;
}

/*
 * Regression (issue 8.2): splice() from the pipe to a socket returns EINTR
 * when a signal is pending as it starts; the loop took it for the stream's
 * error and reset the relay (1 in 6 at 1 kHz).  Under a storm of signals
 * (no SA_RESTART) and injected EINTRs every relay must finish cleanly, and
 * zc_relay_run() says -EINTR so the caller can run its handlers, then
 * resumes.
 */
/*
 * Fault injection: while inject_every > 0, every inject_every-th splice(2)
 * fails with EINTR before moving a byte, as the kernel's does when a signal
 * is pending as it starts (fs/splice.c, splice_to_socket()).  A real storm
 * lands there only now and then; this makes the case certain.  (This
 * definition takes precedence over libc's for the whole program.)
 */
static int inject_every;
static unsigned long injected;

ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out,
	       size_t len, unsigned int flags)
{
	static unsigned long calls;

	if (inject_every > 0 && ++calls % (unsigned long)inject_every == 0) {
		injected++;
		errno = EINTR;
		return -1;
	}
	return syscall(SYS_splice, fd_in, off_in, fd_out, off_out, len, flags);
}

struct storm {
	pthread_t target;
	volatile int stop;
	long sent;
};

/* Signals the relay's thread every few microseconds, so that some arrive
 * while it is inside splice(2) (a timer alone rarely lands there). */
static void *storm_run(void *arg)
{
	struct storm *st = arg;

	while (!st->stop) {
		pthread_kill(st->target, SIGUSR1);
		st->sent++;
		usleep(20);
	}
	return NULL;
}

static void test_signal_storm(void)
{
	enum { N = 6 };
	static struct peer ps[2 * N];
	static struct zc_relay rs[N];
	struct sigaction sa = { .sa_handler = on_tick }, old; /* no SA_RESTART */
	struct storm st = { .target = pthread_self() };
	struct zc_pipe slots[4];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_relay *done[N];
	pthread_t t;
	long long end;
	int got = 0, eintr = 0;
	pid_t pid;

	zc_pipe_pool_init(&pool, slots, 4, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	for (int i = 0; i < N; i++) {
		struct peer *x = &ps[2 * i], *y = &ps[2 * i + 1];
		int a, b;

		memset(x, 0, sizeof(*x) * 2);
		REQUIRE(h_pair(i % 2, &x->fd, &a) == 0);
		REQUIRE(h_pair(i % 2, &b, &y->fd) == 0);
		x->send_len = y->expect_len = (6 << 20) + (uint64_t)i;
		y->send_len = x->expect_len = (3 << 20) + (uint64_t)i;
		x->send_seed = y->expect_seed = 700 + (unsigned)i;
		y->send_seed = x->expect_seed = 800 + (unsigned)i;
		REQUIRE(zc_relay_add(&loop, &rs[i], a, b) == 0);
	}
	REQUIRE((pid = peers_start(ps, 2 * N)) > 0);
	ticks = 0;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, &old);
	REQUIRE(pthread_create(&t, NULL, storm_run, &st) == 0);
	inject_every = 5;
	end = h_now_ms() + 60000;
	while (got < N && h_now_ms() < end) {
		int rc = zc_relay_run(&loop, 200, done + got, (unsigned)(N - got));

		if (rc == -EINTR)
			eintr++;
		else if (rc > 0)
			got += rc;
		else
			CHECK(rc == 0);
	}
	inject_every = 0;
	st.stop = 1;
	pthread_join(t, NULL);
	sigaction(SIGUSR1, &old, NULL);
	CHECK_EQ(got, N);
	CHECK(ticks > 0 && eintr > 0 && injected > 0);
	for (int i = 0; i < got; i++) {
		struct zc_relay *r = done[i];
		int k = (int)(r - rs);

		CHECK_RC(r->error, 0);
		CHECK_EQ(r->bytes[0], ps[2 * k].send_len);
		CHECK_EQ(r->bytes[1], ps[2 * k + 1].send_len);
		close(r->fd[0]);
		close(r->fd[1]);
	}
	CHECK(h_reap(pid) == 0);
	zc_relay_loop_close(&loop);
	zc_pipe_pool_destroy(&pool);
	h_ran++;
}

/* ---- timeouts of plain relays ------------------------------------------------- */

/* Run the loop for ms, collecting what ends into got[*n]. */
static void run_for(struct zc_relay_loop *loop, int ms, struct zc_relay **got,
		    int *n, int max)
{
	long long end = h_now_ms() + ms;

	while (h_now_ms() < end) {
		long long left = end - h_now_ms();
		int rc = zc_relay_run(loop, left > 50 ? 50 : (int)left,
				      got + *n, (unsigned)(max - *n));

		if (rc > 0)
			*n += rc;
	}
}

/*
 * The idle timeout was a Python loop; now a C relay has it: a relay with a
 * timeout ends with -ETIMEDOUT once no byte moved for that long, reported
 * like any other, its sockets not reset (they are the caller's) and their
 * flags restored; a relay with another timeout, or none, runs on; bytes
 * flowing keep a relay alive.
 */
static void test_relay_timeouts(void)
{
	struct zc_pipe slots[2];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_relay r[3], extra[ZC_RELAY_TIMEOUTS + 1], *done[4];
	int x[3], a[3], b[3], y[3], n = 0;
	char buf[8];

	zc_pipe_pool_init(&pool, slots, 2, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	for (int i = 0; i < 3; i++) {
		REQUIRE(h_unix_pair(&x[i], &a[i]) == 0);
		REQUIRE(h_tcp_pair(&b[i], &y[i]) == 0);
		REQUIRE(zc_relay_add(&loop, &r[i], a[i], b[i]) == 0);
	}
	CHECK_RC(zc_relay_set_timeout(&r[0], 0), -EINVAL);
	CHECK_RC(zc_relay_set_timeout(&r[0], -7), -EINVAL);
	CHECK_RC(zc_relay_set_timeout(&r[0], 300), 0);
	CHECK_RC(zc_relay_set_timeout(&r[1], 2000), 0);
	/* r[2]: none.  r[1] moves a byte every 100 ms for 3 s. */
	REQUIRE(send(x[0], "abc", 3, 0) == 3);
	for (int t = 0; t < 30; t++) {
		REQUIRE(send(x[1], "+", 1, 0) == 1);
		run_for(&loop, 100, done, &n, 4);
	}
	CHECK_EQ(n, 1);
	CHECK(n >= 1 && done[0] == &r[0]);
	CHECK_RC(r[0].error, -ETIMEDOUT);
	CHECK_EQ(r[0].bytes[0], 3);
	CHECK(!r[1].done && !r[2].done);
	CHECK_EQ(r[1].bytes[0], 30);
	CHECK_EQ(loop.active, 2);
	/* not reset, flags back: the caller can go on with the sockets */
	CHECK(!(fcntl(a[0], F_GETFL) & O_NONBLOCK));
	CHECK_EQ(h_recv_upto(y[0], buf, 3, 2000), 3);
	REQUIRE(send(x[0], "z", 1, 0) == 1);
	CHECK_EQ(h_recv_upto(a[0], buf, 1, 2000), 1);
	/* r[1] stops: it times out too; r[2] never does */
	run_for(&loop, 3000, done, &n, 4);
	CHECK_EQ(n, 2);
	CHECK(n == 2 && done[1] == &r[1] && r[1].error == -ETIMEDOUT);
	CHECK(!r[2].done);
	/* no timeout again, and values beyond the classes */
	CHECK_RC(zc_relay_set_timeout(&r[2], ZC_WAIT_FOREVER), 0);
	CHECK_RC(zc_relay_set_timeout(&r[0], 100), -EINVAL); /* ended */
	for (int i = 0; i <= ZC_RELAY_TIMEOUTS; i++) {
		int p, q;

		REQUIRE(h_unix_pair(&p, &q) == 0);
		REQUIRE(zc_relay_add(&loop, &extra[i], p, q) == 0);
		CHECK_RC(zc_relay_set_timeout(&extra[i], 100000 + i),
			 i < ZC_RELAY_TIMEOUTS ? 0 : -ENOSPC);
	}
	zc_relay_remove(&extra[0]); /* frees its class */
	CHECK_RC(zc_relay_set_timeout(&extra[ZC_RELAY_TIMEOUTS], 7000), 0);
	CHECK_RC(zc_relay_set_timeout(&extra[1], 7000), 0); /* shares it */
	for (int i = 0; i <= ZC_RELAY_TIMEOUTS; i++) {
		zc_relay_remove(&extra[i]);
		close(extra[i].fd[0]);
		close(extra[i].fd[1]);
	}
	zc_relay_loop_close(&loop);
	zc_pipe_pool_destroy(&pool);
	for (int i = 0; i < 3; i++) {
		close(x[i]);
		close(a[i]);
		close(b[i]);
		close(y[i]);
	}
	h_ran++;
}

/*
 * A call with a timeout returns at its deadline even when a relay ended and
 * max_done is 0 (the caller only wants the loop run): the ended relay stays
 * for the next call instead of keeping the call spinning past its
 * deadline.  In a child: a spin is ended by its alarm, not by a check.
 */
static void test_relay_deadline_max_done_0(void)
{
	pid_t pid = fork();
	int status = 0;

	REQUIRE(pid >= 0);
	if (pid == 0) {
		struct zc_pipe_pool pool;
		struct zc_relay_loop loop;
		struct zc_relay r, *done[1] = { NULL };
		int x, a, b, y, rc;

		h_child_setup();
		alarm(10);
		zc_pipe_pool_init(&pool, NULL, 0, ZC_PIPE_SIZE);
		if (zc_relay_loop_init(&loop, &pool) < 0 ||
		    h_unix_pair(&x, &a) < 0 || h_unix_pair(&b, &y) < 0 ||
		    zc_relay_add(&loop, &r, a, b) < 0 ||
		    zc_relay_set_timeout(&r, 20) < 0)
			_exit(3);
		/* nobody sends: the relay times out within the first call */
		rc = zc_relay_run(&loop, 300, done, 0);
		if (rc != 0)
			_exit(4);
		if (!r.done || r.error != -ETIMEDOUT || done[0])
			_exit(5);
		/* a deadline already due, nothing to take: still returns */
		if (zc_relay_run(&loop, 0, done, 0) != 0)
			_exit(6);
		if (zc_relay_run(&loop, 0, done, 1) != 1 || done[0] != &r)
			_exit(7);
		zc_relay_loop_close(&loop);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fprintf(stderr, "  deadline child status %#x\n", status);
	h_ran++;
}

/*
 * No pipe to be had (EMFILE): relays wait for one instead of failing.  In
 * a child whose descriptor table leaves room for one pipe at a time, two
 * relays moving bytes both ways take turns and deliver everything.
 */
static void test_starved_of_pipes(void)
{
	pid_t pid = fork();
	int status = 0;

	REQUIRE(pid >= 0);
	if (pid == 0) {
		enum { N = 2 };
		static struct peer ps[2 * N];
		static struct zc_relay rs[N];
		struct zc_relay *done[N];
		struct zc_relay_loop loop;
		struct rlimit rl;
		int got, fill[64], nfill = 0, hi;
		pid_t peers;

		h_child_setup();
		REQUIRE(zc_relay_loop_init(&loop, NULL) == 0);
		for (int i = 0; i < N; i++) {
			struct peer *x = &ps[2 * i], *y = &ps[2 * i + 1];
			int a, b;

			memset(x, 0, sizeof(*x) * 2);
			if (h_pair(i, &x->fd, &a) < 0 || h_pair(i, &b, &y->fd) < 0)
				_exit(3);
			x->send_len = y->expect_len = (2 << 20) + (uint64_t)i;
			y->send_len = x->expect_len = (1 << 20) + (uint64_t)i;
			x->send_seed = y->expect_seed = 900 + (unsigned)i;
			y->send_seed = x->expect_seed = 950 + (unsigned)i;
			if (zc_relay_add(&loop, &rs[i], a, b) < 0)
				_exit(4);
		}
		if ((peers = peers_start(ps, 2 * N)) <= 0)
			_exit(5);
		/* descriptors up to the highest open one, plus two: every free
		 * number is filled but the top two, room for one pipe */
		hi = 0;
		for (int fd = 0; fd < 4096; fd++)
			if (fcntl(fd, F_GETFD) >= 0)
				hi = fd;
		if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(9);
		rl.rlim_cur = (rlim_t)hi + 3;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(10);
		while (nfill < 64) {
			int fd = dup(0);

			if (fd < 0)
				break;
			fill[nfill++] = fd;
		}
		if (nfill < 2)
			_exit(11);
		close(fill[--nfill]);
		close(fill[--nfill]);
		got = run_until(&loop, done, N, 40000);
		if (got != N)
			_exit(6);
		for (int i = 0; i < N; i++) {
			int k = (int)(done[i] - rs);

			if (done[i]->error || done[i]->bytes[0] != ps[2 * k].send_len ||
			    done[i]->bytes[1] != ps[2 * k + 1].send_len)
				_exit(7);
		}
		_exit(h_reap(peers) == 0 ? 0 : 8);
	}
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fprintf(stderr, "  starved child status %#x\n", status);
	h_ran++;
}

/* ---- proxy ----------------------------------------------------------------- */

static int tcp_listener_backlog(struct sockaddr_in *addr, int backlog)
{
	socklen_t len = sizeof(*addr);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)addr, sizeof(*addr)) < 0 ||
	    listen(l, backlog) < 0 ||
	    getsockname(l, (struct sockaddr *)addr, &len) < 0)
		return -1;
	return l;
}

static int tcp_listener(struct sockaddr_in *addr)
{
	return tcp_listener_backlog(addr, 512);
}

/* Echo server child: n connections, each echoed by its own grandchild. */
static pid_t echo_server(int l, int n)
{
	pid_t pid = fork();

	if (pid == 0) {
		int keep[1] = { l };

		h_child_setup();
		h_close_except(keep, 1);
		for (int i = 0; i < n; i++) {
			struct pollfd p = { .fd = l, .events = POLLIN };
			int c;

			if (poll(&p, 1, 20000) <= 0)
				_exit(20);
			c = accept(l, NULL, NULL);
			if (c < 0)
				_exit(21);
			if (fork() == 0) {
				char buf[65536];
				ssize_t got;

				h_child_setup();
				close(l);
				while ((got = read(c, buf, sizeof(buf))) > 0)
					if (h_write_all(c, buf, (size_t)got) < 0)
						_exit(22);
				shutdown(c, SHUT_WR);
				_exit(got == 0 ? 0 : 23);
			}
			close(c);
		}
		for (int i = 0; i < n; i++) {
			int st = 0;

			if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
				_exit(24);
		}
		_exit(0);
	}
	close(l);
	return pid;
}

static void test_proxy(void)
{
	enum { N = 24 };
	static struct zc_relay slots[N];
	static struct peer ps[N];
	struct zc_pipe pslots[4];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_proxy px;
	struct sockaddr_in paddr, taddr;
	int pl, tl, before = count_fds();
	pid_t server, clients;
	long long end;

	zc_pipe_pool_init(&pool, pslots, 4, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	REQUIRE((pl = tcp_listener(&paddr)) >= 0);
	REQUIRE((tl = tcp_listener(&taddr)) >= 0);
	CHECK_RC(zc_proxy_init(&px, &loop, pl, (struct sockaddr *)&taddr,
			       sizeof(taddr), slots, 0), -EINVAL);
	REQUIRE(zc_proxy_init(&px, &loop, pl, (struct sockaddr *)&taddr,
			      sizeof(taddr), slots, N) == 0);
	REQUIRE((server = echo_server(tl, N)) > 0);
	for (int i = 0; i < N; i++) {
		memset(&ps[i], 0, sizeof(ps[i]));
		ps[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		REQUIRE(ps[i].fd >= 0);
		REQUIRE(connect(ps[i].fd, (struct sockaddr *)&paddr,
				sizeof(paddr)) == 0);
		ps[i].send_len = 50000 + (uint64_t)i * 40000;
		ps[i].send_seed = ps[i].expect_seed = 500 + (unsigned)i;
		ps[i].expect_len = ps[i].send_len;
	}
	REQUIRE((clients = peers_start(ps, N)) > 0);
	end = h_now_ms() + 40000;
	while (px.completed + px.failed < N && h_now_ms() < end) {
		struct zc_relay *d[1];

		CHECK_EQ(zc_relay_run(&loop, 200, d, 1), 0); /* never reported */
		CHECK(px.active <= N);
	}
	CHECK_EQ(px.accepted, N);
	CHECK_EQ(px.completed, N);
	CHECK_EQ(px.failed, 0);
	CHECK_EQ(px.active, 0);
	CHECK(h_reap(clients) == 0);
	CHECK(h_reap(server) == 0);
	{
		uint64_t total = 0;

		for (int i = 0; i < N; i++)
			total += ps[i].send_len;
		CHECK_EQ(px.bytes[0], total);
		CHECK_EQ(px.bytes[1], total);
	}

	/* an unreachable target: the client is reset, counted as failed */
	{
		struct sockaddr_in dead;
		int dl = tcp_listener(&dead), c;
		char buf[4];

		REQUIRE(dl >= 0);
		close(dl); /* nothing listens there now */
		zc_proxy_close(&px);
		REQUIRE(zc_proxy_init(&px, &loop, pl, (struct sockaddr *)&dead,
				      sizeof(dead), slots, 8) == 0);
		c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		REQUIRE(connect(c, (struct sockaddr *)&paddr, sizeof(paddr)) == 0);
		end = h_now_ms() + 5000;
		while (px.failed < 1 && h_now_ms() < end) {
			struct zc_relay *d[1];

			zc_relay_run(&loop, 100, d, 1);
		}
		CHECK_EQ(px.failed, 1);
		CHECK_EQ(px.active, 0);
		CHECK(recv(c, buf, sizeof(buf), 0) <= 0);
		close(c);
	}
	/* closing the proxy ends its running connections */
	{
		int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct zc_relay *d[1];
		char buf[4];

		zc_proxy_close(&px);
		REQUIRE((tl = tcp_listener(&taddr)) >= 0);
		REQUIRE(zc_proxy_init(&px, &loop, pl, (struct sockaddr *)&taddr,
				      sizeof(taddr), slots, 8) == 0);
		REQUIRE(connect(c, (struct sockaddr *)&paddr, sizeof(paddr)) == 0);
		end = h_now_ms() + 5000;
		while (px.active < 1 && h_now_ms() < end)
			zc_relay_run(&loop, 100, d, 1);
		CHECK_EQ(px.active, 1);
		zc_proxy_close(&px);
		zc_proxy_close(&px);
		CHECK_EQ(px.failed, 1);
		REQUIRE(h_set_nonblock(c, 0) == 0);
		CHECK(recv(c, buf, sizeof(buf), 0) < 0 && errno == ECONNRESET);
		close(c);
		close(tl);
	}
	zc_relay_loop_close(&loop);
	zc_pipe_pool_destroy(&pool);
	close(pl);
	CHECK_EQ(count_fds(), before);
	h_ran++;
}

/* ---- proxy policies ------------------------------------------------------- */

/* A proxy on 127.0.0.1 in front of a target listener. */
struct pxenv {
	struct zc_pipe pslots[4];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_proxy px;
	struct zc_relay slots[8];
	struct sockaddr_in paddr, taddr;
	int pl, tl;
};

static int pxenv_init(struct pxenv *e, unsigned nslots, int target_backlog)
{
	zc_pipe_pool_init(&e->pool, e->pslots, 4, ZC_PIPE_SIZE);
	if (zc_relay_loop_init(&e->loop, &e->pool) < 0)
		return -1;
	e->pl = tcp_listener(&e->paddr);
	e->tl = tcp_listener_backlog(&e->taddr, target_backlog);
	if (e->pl < 0 || e->tl < 0)
		return -1;
	return zc_proxy_init(&e->px, &e->loop, e->pl, (struct sockaddr *)&e->taddr,
			     sizeof(e->taddr), e->slots, nslots) < 0 ? -1 : 0;
}

static void pxenv_close(struct pxenv *e)
{
	zc_relay_loop_close(&e->loop);
	zc_pipe_pool_destroy(&e->pool);
	close(e->pl);
	if (e->tl >= 0)
		close(e->tl);
}

/* Run the loop (a proxy reports nothing) until cond holds or ms pass. */
#define RUN_UNTIL(loop, cond, ms)                                            \
	do {                                                                 \
		long long e_ = h_now_ms() + (ms);                            \
		struct zc_relay *d_[1];                                      \
		while (!(cond) && h_now_ms() < e_)                           \
			(void)zc_relay_run((loop), 20, d_, 1);               \
	} while (0)

static int proxy_client(const struct sockaddr_in *to)
{
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (c >= 0 && connect(c, (const struct sockaddr *)to, sizeof(*to)) < 0) {
		close(c);
		return -1;
	}
	return c;
}

/* What a client hears within ms: recv(2)'s result, errno in *err. */
static ssize_t hear(int c, char *buf, size_t len, int ms, int *err)
{
	struct pollfd p = { .fd = c, .events = POLLIN };
	ssize_t n;

	*err = 0;
	if (poll(&p, 1, ms) <= 0) {
		*err = ETIMEDOUT;
		return -1;
	}
	n = recv(c, buf, len, MSG_DONTWAIT);
	if (n < 0)
		*err = errno;
	return n;
}

static int balanced(const struct zc_proxy *px)
{
	return px->accepted ==
	       px->active + px->completed + px->failed + px->refused;
}

/*
 * Regression (issue 8.3): every slot taken, a new client is answered at
 * once (reset, counted in refused) instead of waiting in the backlog with
 * no answer; running connections carry on.
 */
static void test_proxy_full(void)
{
	struct pxenv e;
	int c[3], err;
	char buf[8];
	pid_t server;

	REQUIRE(pxenv_init(&e, 2, 512) == 0);
	REQUIRE((server = echo_server(e.tl, 2)) > 0);
	e.tl = -1;
	for (int i = 0; i < 2; i++) {
		REQUIRE((c[i] = proxy_client(&e.paddr)) >= 0);
		REQUIRE(send(c[i], "hi", 2, 0) == 2);
	}
	RUN_UNTIL(&e.loop, e.px.active == 2 && e.loop.bytes[1] == 4, 5000);
	CHECK_EQ(e.px.active, 2);
	REQUIRE((c[2] = proxy_client(&e.paddr)) >= 0);
	RUN_UNTIL(&e.loop, e.px.refused == 1, 5000);
	CHECK_EQ(e.px.refused, 1);
	CHECK_EQ(hear(c[2], buf, sizeof(buf), 2000, &err), -1);
	CHECK_EQ(err, ECONNRESET);
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(hear(c[i], buf, sizeof(buf), 2000, &err), 2);
		shutdown(c[i], SHUT_WR);
	}
	RUN_UNTIL(&e.loop, e.px.completed == 2, 5000);
	CHECK_EQ(e.px.completed, 2);
	CHECK_EQ(e.px.accepted, 3);
	CHECK(balanced(&e.px));
	for (int i = 0; i < 3; i++)
		close(c[i]);
	CHECK(h_reap(server) == 0);
	pxenv_close(&e);
	h_ran++;
}

/*
 * Regression (issue 8.3): accept(2) fails with EMFILE.  Before, the client
 * stayed in the backlog, unanswered.  Now the descriptor kept in reserve
 * lets the proxy accept and reset it, and the reserve is taken back for
 * the next one.  In a child whose descriptor table is full.
 */
static void test_proxy_emfile(void)
{
	pid_t pid = fork();
	int status = 0;

	REQUIRE(pid >= 0);
	if (pid == 0) {
		struct pxenv e;
		struct rlimit rl;
		int c[2], hi = 0, n = 0, err;
		char buf[4];

		h_child_setup();
		if (pxenv_init(&e, 4, 512) < 0)
			_exit(2);
		for (int i = 0; i < 2; i++)
			if ((c[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
				_exit(3);
		for (int fd = 0; fd < 4096; fd++)
			if (fcntl(fd, F_GETFD) >= 0)
				hi = fd;
		if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(4);
		rl.rlim_cur = (rlim_t)hi + 1;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(5);
		while (n++ < 4096 && dup(0) >= 0)
			;
		if (errno != EMFILE)
			_exit(6);
		for (int i = 0; i < 2; i++) {
			if (connect(c[i], (struct sockaddr *)&e.paddr,
				    sizeof(e.paddr)) < 0)
				_exit(7);
			RUN_UNTIL(&e.loop, e.px.refused == (uint64_t)i + 1, 5000);
			if (e.px.refused != (uint64_t)i + 1)
				_exit(8);
			if (hear(c[i], buf, sizeof(buf), 2000, &err) != -1 ||
			    err != ECONNRESET)
				_exit(9);
		}
		_exit(e.px.accepted == 2 && e.px.active == 0 ? 0 : 10);
	}
	waitpid(pid, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		H_REPORT("emfile child status %#x", status);
	h_ran++;
}

/*
 * Regression (issue 8.6): the target does not answer the SYN (its accept
 * queue is full, so the kernel drops it): the connect timeout resets the
 * client and frees the slot.
 */
static void test_proxy_connect_timeout(void)
{
	struct pxenv e;
	struct pollfd p;
	int f, c, err;
	char buf[4];

	REQUIRE(pxenv_init(&e, 2, 0) == 0);
	CHECK_RC(zc_proxy_set_timeouts(&e.px, 300, ZC_WAIT_FOREVER,
				       ZC_WAIT_FOREVER), 0);
	/* fill the target's accept queue (backlog 0: one connection) */
	REQUIRE((f = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) >= 0);
	connect(f, (struct sockaddr *)&e.taddr, sizeof(e.taddr));
	p = (struct pollfd){ .fd = f, .events = POLLOUT };
	REQUIRE(poll(&p, 1, 2000) == 1);
	REQUIRE((c = proxy_client(&e.paddr)) >= 0);
	RUN_UNTIL(&e.loop, e.px.timed_out == 1, 10000);
	CHECK_EQ(e.px.timed_out, 1);
	CHECK_EQ(e.px.failed, 1);
	CHECK_EQ(e.px.active, 0);
	CHECK_EQ(hear(c, buf, sizeof(buf), 2000, &err), -1);
	CHECK_EQ(err, ECONNRESET);
	CHECK(balanced(&e.px));
	close(c);
	close(f);
	pxenv_close(&e);
	h_ran++;
}

/*
 * Regression (issue 8.6): idle connections no longer hold their slots
 * forever: after the idle timeout both peers are reset and the slot is
 * free.
 */
static void test_proxy_idle_timeout(void)
{
	struct pxenv e;
	int c, err;
	char buf[8];
	pid_t server;

	REQUIRE(pxenv_init(&e, 2, 512) == 0);
	CHECK_RC(zc_proxy_set_timeouts(&e.px, ZC_WAIT_FOREVER, 300,
				       ZC_WAIT_FOREVER), 0);
	REQUIRE((server = echo_server(e.tl, 1)) > 0);
	e.tl = -1;
	REQUIRE((c = proxy_client(&e.paddr)) >= 0);
	REQUIRE(send(c, "ping", 4, 0) == 4);
	RUN_UNTIL(&e.loop, e.loop.bytes[1] == 4, 5000);
	CHECK_EQ(hear(c, buf, sizeof(buf), 2000, &err), 4);
	RUN_UNTIL(&e.loop, e.px.timed_out == 1, 10000);
	CHECK_EQ(e.px.timed_out, 1);
	CHECK_EQ(e.px.active, 0);
	CHECK_EQ(hear(c, buf, sizeof(buf), 2000, &err), -1);
	CHECK_EQ(err, ECONNRESET);
	close(c);
	kill(server, SIGKILL);
	h_reap(server);
	pxenv_close(&e);
	h_ran++;
}

/*
 * Regression (issue 8.6): the target stops reading (here: it never
 * accepts) while the client has sent more than the buffers hold, then the
 * client leaves.  The relay held its slot forever; the stall timeout (the
 * idle one is long) now frees it.
 */
static void test_proxy_stall_timeout(void)
{
	static char chunk[65536];
	struct pxenv e;
	int c, eagain = 0;

	REQUIRE(pxenv_init(&e, 2, 512) == 0);
	CHECK_RC(zc_proxy_set_timeouts(&e.px, ZC_WAIT_FOREVER, 60000, 300), 0);
	REQUIRE((c = proxy_client(&e.paddr)) >= 0);
	REQUIRE(h_set_nonblock(c, 1) == 0);
	for (int i = 0; i < 2000 && eagain < 10; i++) {
		struct zc_relay *d[1];

		if (send(c, chunk, sizeof(chunk), MSG_NOSIGNAL) < 0)
			eagain++;
		zc_relay_run(&e.loop, 5, d, 1);
	}
	CHECK(eagain >= 10); /* the target took no more */
	close(c);
	RUN_UNTIL(&e.loop, e.px.active == 0, 10000);
	CHECK_EQ(e.px.active, 0);
	CHECK_EQ(e.px.timed_out, 1);
	CHECK_EQ(e.px.failed, 1);
	CHECK(balanced(&e.px));
	pxenv_close(&e);
	h_ran++;
}

/* Regression (issue 8.8): a socket that is not listening is refused (it
 * made the loop spin at 100% CPU); so are bad timeouts. */
static void test_proxy_bad_listener(void)
{
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_relay slots[1];
	struct zc_proxy px;
	struct sockaddr_in t, b = { .sin_family = AF_INET };
	int u, bound, udp, s, r, pp[2], l;

	zc_pipe_pool_init(&pool, NULL, 0, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	REQUIRE((l = tcp_listener(&t)) >= 0);
	REQUIRE((u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0);
	REQUIRE((bound = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) >= 0);
	b.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(bind(bound, (struct sockaddr *)&b, sizeof(b)) == 0);
	REQUIRE((udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) >= 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(pipe2(pp, O_CLOEXEC) == 0);
	{
		int bad[] = { u, bound, udp, s, pp[0] };

		for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
			CHECK_RC(zc_proxy_init(&px, &loop, bad[i],
					       (struct sockaddr *)&t, sizeof(t),
					       slots, 1), -EINVAL);
	}
	/* an early refusal leaves a struct that zc_proxy_close() ignores,
	 * whatever the caller's memory held before */
	memset(&px, 0xAA, sizeof(px));
	CHECK_RC(zc_proxy_init(&px, &loop, u, (struct sockaddr *)&t, sizeof(t),
			       slots, 1), -EINVAL);
	zc_proxy_close(&px);
	memset(&px, 0xAA, sizeof(px));
	CHECK_RC(zc_proxy_init(&px, &loop, l, NULL, sizeof(t), slots, 1), -EINVAL);
	zc_proxy_close(&px);
	close(pp[0]);
	CHECK_RC(zc_proxy_init(&px, &loop, pp[0], (struct sockaddr *)&t,
			       sizeof(t), slots, 1), -EINVAL); /* closed */
	CHECK_RC(zc_proxy_init(&px, &loop, -1, (struct sockaddr *)&t,
			       sizeof(t), slots, 1), -EINVAL);
	{
		/* epoll_ctl() fails (the fd is in the set already): the
		 * listener gets its flags back and nothing is left open */
		struct epoll_event ev = { .events = EPOLLIN };
		int fds, fl = fcntl(l, F_GETFL);

		REQUIRE(fl >= 0 && !(fl & O_NONBLOCK));
		REQUIRE(epoll_ctl(zc_relay_loop_fd(&loop, NULL), EPOLL_CTL_ADD,
				  l, &ev) == 0);
		fds = count_fds();
		CHECK_RC(zc_proxy_init(&px, &loop, l, (struct sockaddr *)&t,
				       sizeof(t), slots, 1), -EEXIST);
		CHECK_EQ(count_fds(), fds);
		CHECK_EQ(fcntl(l, F_GETFL), fl);
		zc_proxy_close(&px); /* a no-op, not a second removal */
		CHECK_EQ(count_fds(), fds);
		REQUIRE(epoll_ctl(zc_relay_loop_fd(&loop, NULL), EPOLL_CTL_DEL,
				  l, NULL) == 0);
	}
	REQUIRE(zc_proxy_init(&px, &loop, l, (struct sockaddr *)&t, sizeof(t),
			      slots, 1) == 0);
	CHECK_RC(zc_proxy_set_timeouts(&px, 0, 1, 1), -EINVAL);
	CHECK_RC(zc_proxy_set_timeouts(&px, 1, -2, 1), -EINVAL);
	CHECK_RC(zc_proxy_set_timeouts(&px, ZC_WAIT_FOREVER, 5, 5), 0);
	zc_relay_loop_close(&loop);
	close(pp[1]);
	close(u);
	close(bound);
	close(udp);
	close(s);
	close(r);
	close(l);
	h_ran++;
}

/* zc_relay_loop_fd(): a relay driven by another event loop (poll here). */
static void test_loop_fd(void)
{
	struct zc_pipe slots[2];
	struct zc_pipe_pool pool;
	struct zc_relay_loop loop;
	struct zc_relay r = { 0 }, *done[1];
	int x, a, b, y, fd, next = 99, before = count_fds();
	char buf[8];
	struct pollfd p;

	zc_pipe_pool_init(&pool, slots, 2, ZC_PIPE_SIZE);
	REQUIRE(zc_relay_loop_init(&loop, &pool) == 0);
	REQUIRE(h_unix_pair(&x, &a) == 0);
	REQUIRE(h_unix_pair(&b, &y) == 0);
	REQUIRE(zc_relay_add(&loop, &r, a, b) == 0);
	fd = zc_relay_loop_fd(&loop, NULL);
	CHECK(fd >= 0);
	p = (struct pollfd){ .fd = fd, .events = POLLIN };
	/* a new relay has its first look at the sockets to take */
	CHECK_EQ(zc_relay_run(&loop, 0, done, 1), 0);
	CHECK_EQ(zc_relay_loop_fd(&loop, &next), fd);
	CHECK_EQ(next, -1); /* no timeout, nothing pending */
	CHECK_EQ(poll(&p, 1, 0), 0); /* then quiet: no busy loop for the caller */
	REQUIRE(send(x, "hello", 5, 0) == 5);
	CHECK_EQ(poll(&p, 1, 2000), 1); /* readable: an event to handle */
	CHECK_EQ(zc_relay_run(&loop, 0, done, 1), 0);
	CHECK_EQ(h_recv_upto(y, buf, 5, 2000), 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	CHECK_EQ(r.bytes[0], 5);
	/* a timeout makes it due within its length */
	CHECK_RC(zc_relay_set_timeout(&r, 60000), 0);
	zc_relay_loop_fd(&loop, &next);
	CHECK(next > 0 && next <= 60000);
	/* the end: the descriptor announces it, and the relay is reported */
	shutdown(x, SHUT_WR);
	shutdown(y, SHUT_WR);
	for (long long end = h_now_ms() + 5000; h_now_ms() < end;) {
		if (poll(&p, 1, 100) < 0)
			break;
		if (zc_relay_run(&loop, 0, done, 1) == 1)
			break;
	}
	CHECK(r.done);
	CHECK_RC(r.error, 0);
	close(x);
	close(a);
	close(b);
	close(y);
	zc_relay_loop_close(&loop);
	CHECK_RC(zc_relay_loop_fd(&loop, &next), -EBADF);
	zc_pipe_pool_destroy(&pool);
	CHECK_EQ(count_fds(), before);
	h_ran++;
}

int main(void)
{
	h_init(150);
	test_relays();
	test_resets();
	test_loop_control();
	test_loop_fd();
	test_signal_storm();
	test_relay_timeouts();
	test_relay_deadline_max_done_0();
	test_starved_of_pipes();
	test_proxy();
	test_proxy_full();
	test_proxy_emfile();
	test_proxy_connect_timeout();
	test_proxy_idle_timeout();
	test_proxy_stall_timeout();
	test_proxy_bad_listener();
	return h_result("test_relay");
}
