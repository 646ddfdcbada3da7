/* SPDX-License-Identifier: MIT */
/*
 * struct zc_zsock: the MSG_ZEROCOPY policy.  One case per policy:
 * threshold, adaptive COPIED, pinned-bytes bound (plain when the socket
 * must not wait, waiting otherwise), records in flight, ENOBUFS for real in
 * a private network namespace, AF_UNIX, signals and resuming, a fd closed
 * and reused by another thread during a wait, and zc_zsock_end() on
 * stalled peers (8.7).  Loopback flags every completion COPIED; the cases
 * accept that.  Tokens are checked to come back exactly once, never
 * before the receiver had the bytes.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"
#include "zc_internal.h"

#include <linux/errqueue.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>

#define KIB 1024
#define MIB (1024 * 1024)

static struct zc_track_rec recs[4096];

/* A TCP pair on 127.0.0.1 with the receive buffer (set on the listener, so
 * the window is small from the start) and the send buffer given. */
static int zpair(int *snd, int *rcv, int rcvbuf, int sndbuf)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int l, c = -1, s;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		return -1;
	if (rcvbuf)
		h_setopt_int(l, SOL_SOCKET, SO_RCVBUF, rcvbuf);
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &len) < 0)
		goto fail;
	c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0)
		goto fail;
	if (sndbuf)
		h_setopt_int(c, SOL_SOCKET, SO_SNDBUF, sndbuf);
	if (connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
		goto fail;
	s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	if (s < 0)
		goto fail;
	close(l);
	*snd = c;
	*rcv = s;
	return 0;
fail:
	if (c >= 0)
		close(c);
	close(l);
	return -1;
}

/* Plain filler larger than the receive window: what follows stays queued
 * in the sender until the receiver reads. */
#define FILLER (128 * KIB)
static unsigned char *filler;

static void send_filler(int s)
{
	size_t off = 0;

	while (off < FILLER) {
		ssize_t n = send(s, filler + off, FILLER - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			h_wait_out(s, 1000);
			continue;
		}
		REQUIRE(n > 0);
		off += (size_t)n;
	}
}

/* Send all of buf through z, resuming after -EINTR; 0 or the error. */
static int send_all(struct zc_zsock *z, const void *buf, size_t len,
		    uint64_t token, int timeout_ms, uint64_t *sent)
{
	unsigned flags = 0;
	int rc;

	*sent = 0;
	do {
		rc = zc_zsock_send(z, (const char *)buf + *sent, len - *sent,
				   token, flags, timeout_ms, sent);
		flags = ZC_ZSOCK_RESUME;
	} while (rc == -EINTR);
	return rc;
}

/* Collect every free token into got[] (appending at *n). */
static void collect(struct zc_zsock *z, uint64_t *got, size_t *n, size_t cap)
{
	size_t k;

	do {
		uint64_t t[3];

		k = zc_zsock_collect(z, t, 3);
		for (size_t i = 0; i < k; i++) {
			if (*n < cap)
				got[*n] = t[i];
			(*n)++;
		}
	} while (k == 3);
	CHECK_EQ(z->freed, 0);
}

static void check_free_state(struct zc_zsock *z)
{
	CHECK_EQ(z->on_loan, 0);
	CHECK_EQ(z->stats.pinned_bytes, 0);
	CHECK_EQ(z->freed, 0);
}

/* ---- init --------------------------------------------------------------- */

static void test_init(void)
{
	struct zc_zsock z;
	struct zc_zsock_opts o;
	int s, r, p[2], u;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	CHECK_RC(zc_zsock_init(&z, s, NULL, 4, NULL), -EINVAL);
	CHECK_RC(zc_zsock_init(&z, s, recs, 0, NULL), -EINVAL);
	zc_zsock_opts_init(&o);
	CHECK_EQ(o.threshold, 16 * KIB);
	CHECK_EQ(o.max_pinned_bytes, 64 * MIB);
	CHECK_EQ(o.adaptive, 1);
	o.threshold = 0;
	CHECK_RC(zc_zsock_init(&z, s, recs, 4, &o), -EINVAL);
	zc_zsock_opts_init(&o);
	o.max_pinned_bytes = 0;
	CHECK_RC(zc_zsock_init(&z, s, recs, 4, &o), -EINVAL);
	CHECK_RC(zc_zsock_init(&z, s, recs, 4, NULL), 0);
	CHECK_EQ(z.sock, s);
	CHECK_EQ(z.supported, 1);
	CHECK_EQ(z.active, 1);
	CHECK_EQ(z.unsupported, 0);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 0), 0);
	/* after end: no more syscalls */
	{
		uint64_t sent = 0;

		CHECK_RC(zc_zsock_send(&z, "x", 1, 1, 0, 0, &sent), -EBADF);
		CHECK_EQ(sent, 0);
		CHECK_EQ(z.loaned, 0);
		CHECK_RC(zc_zsock_reap(&z), 0);
	}
	close(s);
	close(r);

	u = socket(AF_INET, SOCK_DGRAM, 0);
	REQUIRE(u >= 0);
	CHECK_RC(zc_zsock_init(&z, u, recs, 4, NULL), -EPROTOTYPE);
	close(u);
	REQUIRE(pipe(p) == 0);
	CHECK_RC(zc_zsock_init(&z, p[0], recs, 4, NULL), -ENOTSOCK);
	close(p[0]);
	close(p[1]);
	CHECK_RC(zc_zsock_init(&z, -1, recs, 4, NULL), -EBADF);

	REQUIRE(h_unix_pair(&s, &r) == 0);
	CHECK_RC(zc_zsock_init(&z, s, recs, 4, NULL), 0);
	CHECK_EQ(z.supported, 0);
	CHECK_EQ(z.active, 0);
	CHECK_EQ(z.unsupported, EOPNOTSUPP);
	close(s);
	close(r);
	h_ran++;
}

/* ---- threshold ------------------------------------------------------------ */

static void test_threshold(void)
{
	static const size_t sizes[] = { 1, 999, 500, 1000, 300 * KIB, 10 };
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct h_rx rx;
	unsigned char *pat, *got;
	uint64_t toks[8], sent;
	size_t total = 0, pos = 0, ntok = 0, got_len;
	int s, r, zc_buffers = 0;

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		total += sizes[i];
	pat = h_pattern(total, 0, 21);
	REQUIRE(pat != NULL);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	zc_zsock_opts_init(&o);
	o.threshold = 1000;
	o.adaptive = 0;
	REQUIRE(zc_zsock_init(&z, s, recs, 64, &o) == 0);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		uint64_t zc_before = z.stats.zerocopy_sends;
		uint64_t plain_before = z.stats.plain_sends;

		CHECK_RC(send_all(&z, pat + pos, sizes[i], 100 + i, ZC_WAIT_FOREVER, &sent), 0);
		CHECK_EQ(sent, sizes[i]);
		pos += sizes[i];
		if (sizes[i] < 1000) {
			/* below the threshold: plain, free at once */
			CHECK_EQ(z.loaned, 0);
			CHECK_EQ(z.stats.zerocopy_sends, zc_before);
			CHECK(z.stats.plain_sends > plain_before);
		} else {
			CHECK(z.stats.zerocopy_sends > zc_before || z.stats.enobufs_fallbacks > 0);
			CHECK_EQ(z.loaned, z.stats.zerocopy_sends > zc_before);
			zc_buffers += z.loaned;
		}
	}
	CHECK_EQ(z.stats.peak_pinned_bytes >= 1000, zc_buffers > 0);
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, 8);
	CHECK_EQ(ntok, (size_t)zc_buffers);
	for (size_t i = 0; i < ntok && i < 8; i++)
		CHECK(toks[i] == 103 || toks[i] == 104);
	CHECK_EQ(z.stats.completions, z.stats.zerocopy_sends);
	check_free_state(&z);
	CHECK_EQ(z.active, 1); /* not adaptive */
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, total);
	free(got);
	free(pat);
	h_ran++;
}

/* ---- adaptive: COPIED turns zero-copy off --------------------------------- */

static void test_adaptive(void)
{
	struct zc_zsock z;
	struct h_rx rx;
	unsigned char *pat, *got;
	uint64_t toks[4], sent;
	size_t ntok = 0, got_len;
	int s, r;

	pat = h_pattern(2 * MIB, 0, 22);
	REQUIRE(pat != NULL);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	REQUIRE(zc_zsock_init(&z, s, recs, 64, NULL) == 0);
	CHECK_RC(send_all(&z, pat, MIB, 1, ZC_WAIT_FOREVER, &sent), 0);
	if (z.stats.zerocopy_sends == 0) {
		H_SKIP_CASE("the kernel refused MSG_ZEROCOPY (ENOBUFS)");
	} else {
		CHECK_RC(zc_zsock_flush(&z, 10000), 0);
		collect(&z, toks, &ntok, 4);
		CHECK_EQ(ntok, 1);
		CHECK_EQ(toks[0], 1);
		CHECK(z.stats.copied_completions > 0); /* loopback copies */
		CHECK_EQ(z.active, 0);
		CHECK_EQ(z.supported, 1);
		{
			uint64_t zc = z.stats.zerocopy_sends;

			CHECK_RC(send_all(&z, pat + MIB, MIB, 2, ZC_WAIT_FOREVER, &sent), 0);
			CHECK_EQ(z.stats.zerocopy_sends, zc);
			CHECK_EQ(z.loaned, 0);
		}
		h_ran++;
	}
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, z.stats.zerocopy_sends ? 2 * MIB : MIB);
	free(got);
	free(pat);
}

/* ---- the pinned-bytes bound ------------------------------------------------ */

/* A socket that must not wait: past the bound the bytes go plain. */
static void test_bound_nonblocking(void)
{
	enum { BOUND = 48 * KIB, SIZE = 20 * KIB, N = 8 };
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct h_rx rx;
	struct h_rx_opts ro = { .stall_ms = 10000 };
	unsigned char *pat, *got, *want;
	uint64_t toks[N], sent;
	size_t ntok = 0, got_len;
	int s, r, loaned = 0;

	pat = h_pattern(N * SIZE, 0, 23);
	REQUIRE(pat != NULL);
	REQUIRE(zpair(&s, &r, 32 * KIB, 1 * MIB) == 0);
	send_filler(s);
	REQUIRE(h_rx_start(&rx, r, &ro) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	zc_zsock_opts_init(&o);
	o.max_pinned_bytes = BOUND;
	o.adaptive = 0;
	REQUIRE(zc_zsock_init(&z, s, recs, 64, &o) == 0);
	for (int i = 0; i < N; i++) {
		CHECK_RC(send_all(&z, pat + i * SIZE, SIZE, 10 + (uint64_t)i, 0, &sent), 0);
		loaned += z.loaned;
		CHECK(z.stats.pinned_bytes <= BOUND + SIZE);
		CHECK_EQ(z.on_loan, (uint32_t)loaned);
	}
	if (z.stats.zerocopy_sends == 0) {
		H_SKIP_CASE("the kernel refused MSG_ZEROCOPY (ENOBUFS)");
	} else {
		CHECK(loaned >= 2);
		CHECK(z.stats.plain_sends >= 1); /* past the bound */
		CHECK(z.stats.peak_pinned_bytes <= BOUND + SIZE);
		/* the receiver has read nothing: nothing may come back */
		CHECK_RC(zc_zsock_flush(&z, 50), -ETIMEDOUT);
		CHECK_EQ(zc_zsock_collect(&z, toks, N), 0);
		h_ran++;
	}
	h_rx_go(&rx);
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, N);
	CHECK_EQ(ntok, (size_t)loaned);
	for (size_t i = 1; i < ntok && i < N; i++)
		CHECK(toks[i] > toks[i - 1]);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	want = malloc(FILLER + N * SIZE);
	REQUIRE(want != NULL);
	memcpy(want, filler, FILLER);
	memcpy(want + FILLER, pat, N * SIZE);
	CHECK_MEM(got, got_len, want, FILLER + N * SIZE);
	free(want);
	free(got);
	free(pat);
}

/* The peer of test_stall_timeout(): reads 128 KiB 100 ms in, then stalls; if
 * the sender is still in its call 3 s later, resets the connection. */
struct nudge {
	int r;
	volatile int done;
	size_t got;
};

static void *nudge_once(void *arg)
{
	struct nudge *n = arg;
	unsigned char buf[64 * KIB];
	long long end;

	usleep(100 * 1000);
	end = h_now_ms() + 50;
	while (h_now_ms() < end && n->got < 128 * KIB) {
		ssize_t k = recv(n->r, buf, sizeof(buf), MSG_DONTWAIT);

		if (k > 0)
			n->got += (size_t)k;
		else
			usleep(1000);
	}
	end = h_now_ms() + 3000;
	while (!n->done && h_now_ms() < end)
		usleep(10 * 1000);
	if (!n->done) { /* still in the call: reset the connection to end it */
		struct sockaddr unspec = { .sa_family = AF_UNSPEC };

		(void)connect(n->r, &unspec, sizeof(unspec));
	}
	return NULL;
}

/* Regression: a send waiting for room on a stalled peer spun at full CPU
 * and never timed out: the completions of its first parts (acked once the
 * peer read a little) kept POLLERR up, poll() reported it at once, and
 * each wake-up was taken for writability. */
static void test_stall_timeout(void)
{
	enum { SIZE = 4 * MIB };
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct nudge n = { 0 };
	pthread_t t;
	unsigned char *pat, *got;
	uint64_t sent = 0;
	int s, r, rc;

	pat = h_pattern(SIZE, 0, 31);
	got = malloc(SIZE);
	REQUIRE(pat != NULL && got != NULL);
	REQUIRE(zpair(&s, &r, 32 * KIB, 64 * KIB) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	zc_zsock_opts_init(&o);
	o.adaptive = 0;
	REQUIRE(zc_zsock_init(&z, s, recs, 4096, &o) == 0);
	n.r = r;
	REQUIRE(pthread_create(&t, NULL, nudge_once, &n) == 0);
	rc = zc_zsock_send(&z, pat, SIZE, 1, 0, 300, &sent);
	n.done = 1;
	pthread_join(t, NULL);
	if (z.stats.zerocopy_sends == 0) {
		H_SKIP_CASE("the kernel refused MSG_ZEROCOPY");
	} else {
		CHECK_RC(rc, -ETIMEDOUT);
		CHECK(sent > n.got && sent < SIZE);
		h_ran++;
	}
	/* what the peer holds is the start of the buffer */
	{
		size_t have = n.got;

		memcpy(got, pat, n.got < SIZE ? n.got : 0);
		for (;;) {
			ssize_t k = recv(r, got + have, SIZE - have, MSG_DONTWAIT);

			if (k <= 0)
				break;
			have += (size_t)k;
		}
		CHECK(have <= sent);
		CHECK_MEM(got + n.got, have - n.got, pat + n.got, have - n.got);
	}
	(void)zc_zsock_end(&z, 100);
	close(s);
	close(r);
	free(got);
	free(pat);
}

/* A socket that may wait: each buffer waits for the one before to complete. */
static void test_bound_waits(void)
{
	enum { SIZE = 64 * KIB, N = 3 };
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct h_rx rx;
	struct h_rx_opts ro = { .stall_ms = 300 };
	unsigned char *pat, *got, *want;
	uint64_t toks[N], sent;
	size_t ntok = 0, got_len;
	int s, r;

	pat = h_pattern(N * SIZE, 0, 24);
	REQUIRE(pat != NULL);
	REQUIRE(zpair(&s, &r, 32 * KIB, 1 * MIB) == 0);
	send_filler(s);
	REQUIRE(h_rx_start(&rx, r, &ro) == 0); /* reads after 300 ms */
	zc_zsock_opts_init(&o);
	o.max_pinned_bytes = SIZE;
	o.adaptive = 0;
	REQUIRE(zc_zsock_init(&z, s, recs, 64, &o) == 0);
	for (int i = 0; i < N; i++) {
		CHECK_RC(send_all(&z, pat + i * SIZE, SIZE, 1 + (uint64_t)i,
				  ZC_WAIT_FOREVER, &sent), 0);
		CHECK(z.stats.pinned_bytes <= SIZE);
		collect(&z, toks, &ntok, N);
	}
	if (z.stats.zerocopy_sends == 0) {
		H_SKIP_CASE("the kernel refused MSG_ZEROCOPY (ENOBUFS)");
	} else {
		CHECK_EQ(z.stats.plain_sends, 0);
		CHECK_EQ(z.stats.zerocopy_sends + z.stats.enobufs_fallbacks, N);
		CHECK_EQ(z.stats.peak_pinned_bytes, SIZE);
		h_ran++;
	}
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, N);
	CHECK_EQ(ntok, z.stats.zerocopy_sends);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	want = malloc(FILLER + N * SIZE);
	REQUIRE(want != NULL);
	memcpy(want, filler, FILLER);
	memcpy(want + FILLER, pat, N * SIZE);
	CHECK_MEM(got, got_len, want, FILLER + N * SIZE);
	free(want);
	free(got);
	free(pat);
}

/* ---- records: the bound on sends in flight --------------------------------- */

static void test_records(void)
{
	enum { SIZE = 32 * KIB, N = 20 };
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct h_rx rx;
	unsigned char *pat, *got;
	uint64_t toks[N], sent;
	size_t ntok = 0, got_len;
	int s, r;

	pat = h_pattern(N * SIZE, 0, 25);
	REQUIRE(pat != NULL);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	zc_zsock_opts_init(&o);
	o.adaptive = 0;
	REQUIRE(zc_zsock_init(&z, s, recs, 1, &o) == 0);
	for (int i = 0; i < N; i++) {
		CHECK_RC(send_all(&z, pat + i * SIZE, SIZE, 1 + (uint64_t)i,
				  ZC_WAIT_FOREVER, &sent), 0);
		CHECK(z.on_loan <= 1);
		collect(&z, toks, &ntok, N);
	}
	CHECK_EQ(z.stats.plain_sends, 0);
	CHECK_EQ(z.stats.zerocopy_sends + z.stats.enobufs_fallbacks, N);
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, N);
	CHECK_EQ(ntok, z.stats.zerocopy_sends);
	for (size_t i = 1; i < ntok && i < N; i++)
		CHECK(toks[i] > toks[i - 1]);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, N * SIZE);
	free(got);
	free(pat);
	h_ran++;
}

/*
 * One record, adaptive, a buffer sent in many parts: the first part's
 * completion (COPIED) turns zero-copy off while its record is the ring's
 * only one; the buffer's token must still come back, once.
 */
static void test_one_record_many_parts(void)
{
	enum { SIZE = 2 * MIB };
	struct zc_zsock z;
	struct h_rx rx;
	struct h_rx_opts ro = { .chunk = 16 * KIB };
	unsigned char *pat, *got;
	uint64_t toks[4], sent;
	size_t ntok = 0, got_len;
	int s, r;

	pat = h_pattern(SIZE, 0, 26);
	REQUIRE(pat != NULL);
	REQUIRE(zpair(&s, &r, 64 * KIB, 64 * KIB) == 0);
	REQUIRE(h_rx_start(&rx, r, &ro) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(zc_zsock_init(&z, s, recs, 1, NULL) == 0);
	CHECK_RC(send_all(&z, pat, SIZE, 77, 10000, &sent), 0);
	CHECK_EQ(sent, SIZE);
	CHECK_EQ(z.loaned, z.stats.zerocopy_sends > 0);
	CHECK(z.stats.zerocopy_sends + z.stats.plain_sends + z.stats.enobufs_fallbacks > 1);
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, 4);
	CHECK_EQ(ntok, (size_t)(z.stats.zerocopy_sends > 0));
	if (ntok == 1)
		CHECK_EQ(toks[0], 77);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, SIZE);
	free(got);
	free(pat);
	h_ran++;
}

/* ---- ENOBUFS for real: optmem_max 0 in a private network namespace -------- */

static int read_file_str(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static int write_file_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -1;
}

#define OPTMEM "/proc/sys/net/core/optmem_max"

/* In the child: 0 pass, 1 fail, 77 skip. */
static int enobufs_child(ino_t host_ns)
{
	struct ifreq ifr;
	struct stat st;
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct h_rx rx;
	unsigned char *pat, *got;
	uint64_t sent, toks[8];
	size_t ntok = 0, got_len;
	char v[32];
	int fd, s, r, loaned;

	if (unshare(CLONE_NEWNET) < 0)
		return 77;
	if (stat("/proc/self/ns/net", &st) < 0 || st.st_ino == host_ns)
		return 77;
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		return 77;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		return 77;
	close(fd);
	if (write_file_str(OPTMEM, "0\n") < 0 || read_file_str(OPTMEM, v, sizeof(v)) < 0 ||
	    atoi(v) != 0)
		return 77;
	pat = h_pattern(3 * MIB, 0, 27);
	if (!pat || h_tcp_pair(&s, &r) < 0 || h_rx_start(&rx, r, NULL) < 0)
		return 1;
	zc_zsock_opts_init(&o);
	o.adaptive = 0;
	if (zc_zsock_init(&z, s, recs, 64, &o) < 0)
		return 1;
	CHECK_RC(send_all(&z, pat, MIB, 1, ZC_WAIT_FOREVER, &sent), 0);
	loaned = z.loaned;
	CHECK_RC(send_all(&z, pat + MIB, 2 * MIB, 2, ZC_WAIT_FOREVER, &sent), 0);
	loaned += z.loaned;
	CHECK(z.stats.enobufs_fallbacks > 0);
	CHECK(z.stats.plain_sends >= z.stats.enobufs_fallbacks);
	CHECK_EQ(z.active, 1); /* ENOBUFS does not turn zero-copy off */
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, 8);
	CHECK_EQ(ntok, (size_t)loaned);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, 3 * MIB);
	free(got);
	free(pat);
	return h_failures ? 1 : 0;
}

static void test_enobufs_netns(void)
{
	char before[32], after[32];
	struct stat st;
	pid_t pid;
	int status = 0;

	if (read_file_str(OPTMEM, before, sizeof(before)) < 0 ||
	    stat("/proc/self/ns/net", &st) < 0) {
		H_SKIP_CASE("cannot read %s", OPTMEM);
		return;
	}
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		_exit(enobufs_child(st.st_ino));
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (read_file_str(OPTMEM, after, sizeof(after)) == 0 && strcmp(before, after)) {
		write_file_str(OPTMEM, before); /* never leave the host changed */
		H_REPORT("the child changed the host's optmem_max");
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
		H_SKIP_CASE("no private network namespace with optmem_max 0 here");
		return;
	}
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	h_ran++;
}

/* ---- AF_UNIX: plain, and the peer's data is never read as an error queue -- */

static void test_unix(void)
{
	enum { SIZE = 100 * KIB };
	struct zc_zsock z;
	unsigned char *pat, buf[SIZE + 16];
	uint64_t sent, toks[2];
	size_t got = 0;
	int s, r;

	pat = h_pattern(SIZE, 0, 28);
	REQUIRE(pat != NULL);
	REQUIRE(h_unix_pair(&s, &r) == 0);
	REQUIRE(zc_zsock_init(&z, s, recs, 4, NULL) == 0);
	CHECK_EQ(z.supported, 0);
	CHECK_RC(send_all(&z, pat, SIZE, 1, 5000, &sent), 0);
	CHECK_EQ(sent, SIZE);
	CHECK_EQ(z.loaned, 0);
	CHECK_EQ(z.stats.zerocopy_sends, 0);
	CHECK(z.stats.plain_sends >= 1);
	got = h_recv_upto(r, buf, SIZE, 5000);
	CHECK_MEM(buf, got, pat, SIZE);
	/* the peer sends and closes: nothing we do may consume or fail on it */
	CHECK_EQ(send(r, "hello", 5, 0), 5);
	close(r);
	CHECK_RC(zc_zsock_reap(&z), 0);
	CHECK_RC(zc_zsock_poll(&z, 0), 0);
	CHECK_RC(zc_zsock_flush(&z, 0), 0);
	CHECK_EQ(zc_zsock_collect(&z, toks, 2), 0);
	CHECK_RC(zc_zsock_end(&z, 0), 0);
	CHECK_EQ(h_recv_upto(s, buf, sizeof(buf), 1000), 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	close(s);
	free(pat);
	h_ran++;
}

/* ---- signals: -EINTR, resume, and ending without resuming ------------------ */

static void on_usr1(int sig)
{
	(void)sig;
}

struct kicker {
	pthread_t target;
	int sock;
	volatile int stop;
	int kicks;
};

/* Interrupt the target while its socket has bytes queued (a blocked send). */
static void *kick(void *arg)
{
	struct kicker *k = arg;
	long long end = h_now_ms() + 5000;

	while (!k->stop && h_now_ms() < end && k->kicks < 20) {
		int q = 0;

		usleep(20000);
		if (ioctl(k->sock, SIOCOUTQ, &q) == 0 && q > 0) {
			pthread_kill(k->target, SIGUSR1);
			k->kicks++;
		}
	}
	return NULL;
}

static void test_eintr_resume(void)
{
	enum { SIZE = 4 * MIB };
	struct sigaction sa, old;
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct h_rx rx;
	struct h_rx_opts ro = { .stall_ms = 400 };
	struct kicker k = { 0 };
	pthread_t th;
	unsigned char *pat, *got;
	uint64_t sent = 0, toks[4];
	size_t ntok = 0, got_len;
	int s, r, rc, eintrs = 0, loaned_after_end;
	unsigned flags = 0;

	pat = h_pattern(2 * SIZE, 0, 29);
	REQUIRE(pat != NULL);
	REQUIRE(zpair(&s, &r, 64 * KIB, 128 * KIB) == 0);
	REQUIRE(h_rx_start(&rx, r, &ro) == 0);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1; /* no SA_RESTART */
	sigaction(SIGUSR1, &sa, &old);
	zc_zsock_opts_init(&o);
	o.adaptive = 0;
	o.max_pinned_bytes = SIZE;
	REQUIRE(zc_zsock_init(&z, s, recs, 4096, &o) == 0);
	k.target = pthread_self();
	k.sock = s;
	REQUIRE(pthread_create(&th, NULL, kick, &k) == 0);
	/* blocking socket: a signal cuts a send short, -EINTR comes back */
	do {
		rc = zc_zsock_send(&z, pat + sent, SIZE - sent, 5, flags,
				   ZC_WAIT_FOREVER, &sent);
		if (rc == -EINTR) {
			eintrs++;
			CHECK_EQ(z.loaned, 1); /* open: keep the buffer */
		}
		flags = ZC_ZSOCK_RESUME;
	} while (rc == -EINTR);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, SIZE);
	CHECK_EQ(z.loaned, z.stats.zerocopy_sends > 0);
	/* a second buffer, ended without resuming after the first -EINTR */
	sent = 0;
	rc = zc_zsock_send(&z, pat + SIZE, SIZE, 6, 0, ZC_WAIT_FOREVER, &sent);
	if (rc == -EINTR) {
		loaned_after_end = zc_zsock_send_end(&z);
		CHECK_EQ(loaned_after_end, z.loaned);
		/* nothing open any more: the same answer, nothing changed */
		CHECK_EQ(zc_zsock_send_end(&z), loaned_after_end);
		/* the rest goes as a new buffer */
		CHECK_RC(send_all(&z, pat + SIZE + sent, SIZE - sent, 7, ZC_WAIT_FOREVER, &sent), 0);
	} else {
		CHECK_RC(rc, 0);
	}
	k.stop = 1;
	pthread_join(th, NULL);
	sigaction(SIGUSR1, &old, NULL);
	if (eintrs == 0)
		H_SKIP_CASE("no signal landed in a blocked send: resuming was not tried");
	CHECK_RC(zc_zsock_flush(&z, 10000), 0);
	collect(&z, toks, &ntok, 4);
	for (size_t i = 0; i < ntok && i < 4; i++)
		CHECK(toks[i] >= 5 && toks[i] <= 7);
	for (size_t i = 1; i < ntok && i < 4; i++)
		CHECK(toks[i] > toks[i - 1]);
	check_free_state(&z);
	CHECK_RC(zc_zsock_end(&z, 1000), 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, 2 * SIZE);
	free(got);
	free(pat);
	if (eintrs)
		h_ran++;
}

/* ---- a fd closed and reused by another thread during a wait ---------------- */

struct waiter {
	struct zc_zsock *z;
	const unsigned char *buf;
	size_t len;
	int rc;
	uint64_t sent;
	volatile int done;
};

static void *wait_send(void *arg)
{
	struct waiter *w = arg;

	w->rc = send_all(w->z, w->buf, w->len, 2, ZC_WAIT_FOREVER, &w->sent);
	w->done = 1;
	return NULL;
}

/* Replace fd's socket by a new connection (dup2: the same number at once).
 * *peer gets the new connection's other end. */
static int replace_fd(int fd, int *peer, int *newsock)
{
	int a, b;

	if (h_tcp_pair(&a, &b) < 0)
		return -1;
	if (dup2(a, fd) < 0)
		return -1;
	close(a);
	*peer = b;
	*newsock = fd;
	return 0;
}

/* mode 0: waiting for pinned room; 1: waiting for writability */
static void test_fd_replaced(int mode)
{
	enum { SIZE = 64 * KIB, BIG = 4 * MIB };
	struct zc_zsock z;
	struct zc_zsock_opts o;
	struct waiter w = { 0 };
	pthread_t th;
	unsigned char *pat, rbuf[4096];
	uint64_t sent;
	long long end;
	int s, r, peer, ns;

	pat = h_pattern(BIG, 0, 30);
	REQUIRE(pat != NULL);
	REQUIRE(zpair(&s, &r, 32 * KIB, 1 * MIB) == 0);
	send_filler(s); /* r never reads */
	zc_zsock_opts_init(&o);
	o.adaptive = 0;
	if (mode == 0) {
		o.max_pinned_bytes = SIZE;
	} else {
		o.threshold = (uint64_t)BIG + 1; /* plain: the wait is for room in the socket */
		REQUIRE(h_set_nonblock(s, 1) == 0);
	}
	REQUIRE(zc_zsock_init(&z, s, recs, 64, &o) == 0);
	if (mode == 0) {
		CHECK_RC(send_all(&z, pat, SIZE, 1, ZC_WAIT_FOREVER, &sent), 0);
		if (!z.loaned) {
			H_SKIP_CASE("the first buffer did not go zero-copy");
			close(s);
			close(r);
			free(pat);
			return;
		}
	}
	w.z = &z;
	w.buf = mode == 0 ? pat + SIZE : pat;
	w.len = mode == 0 ? SIZE : BIG;
	REQUIRE(pthread_create(&th, NULL, wait_send, &w) == 0);
	usleep(200000);
	CHECK(!w.done); /* it waits */
	/* another thread closes the socket; the number names a new connection */
	REQUIRE(replace_fd(s, &peer, &ns) == 0);
	end = h_now_ms() + 5000;
	while (!w.done && h_now_ms() < end)
		usleep(10000);
	CHECK(w.done);
	pthread_join(th, NULL);
	CHECK_RC(w.rc, -EBADF);
	if (mode == 0)
		CHECK_EQ(w.sent, 0);
	/* the new connection got nothing */
	CHECK_EQ(h_recv_upto(peer, rbuf, sizeof(rbuf), 300), 0);
	/* and it is left alone: no reap of its error queue, no reset */
	{
		struct zc_track_rec rr[2];
		struct zc_tracker t;
		struct zc_completion c[2];
		size_t n = 0;
		int got = 0;

		CHECK_RC(zc_zerocopy_enable(ns), 0);
		REQUIRE(zc_tracker_init(&t, rr, 2) == 0);
		CHECK_EQ(zc_send_tracked(ns, &t, "0123456789", 10, 9, 0), 10);
		CHECK_EQ(h_recv_upto(peer, rbuf, 10, 5000), 10);
		CHECK_RC(zc_wait_completions(ns, 5000), 0);
		CHECK_RC(zc_zsock_reap(&z), -EBADF);
		CHECK_RC(zc_zsock_poll(&z, 0), -EBADF);
		CHECK_RC(zc_zsock_flush(&z, 0), -EBADF);
		/* end must not reset the new connection (buffer 1 stays out) */
		CHECK_EQ(zc_zsock_end(&z, 0), mode == 0 ? 1 : 0);
		CHECK_RC(zc_reap_completions(ns, c, 2, &n), 0);
		got = (int)n;
		CHECK_EQ(got, 1);
		CHECK_EQ(send(ns, "ok", 2, MSG_NOSIGNAL), 2);
		CHECK_EQ(h_recv_upto(peer, rbuf, 2, 5000), 2);
	}
	close(ns);
	close(peer);
	close(r);
	free(pat);
	h_ran++;
}

/* ---- 8.7: stalled peers give the buffers back at zc_zsock_end() ------------ */

static void test_end_stalled(void)
{
	enum { N = 16, SIZE = 256 * KIB };
	static struct zc_track_rec rs[N][8];
	struct zc_zsock z[N];
	int s[N], r[N];
	unsigned char *pat, *buf;
	uint64_t sent, tok;
	long long t0, worst = 0;
	int loaned = 0;

	pat = h_pattern(SIZE, 0, 31);
	buf = malloc(FILLER + SIZE);
	REQUIRE(pat != NULL && buf != NULL);
	for (int i = 0; i < N; i++) {
		struct zc_zsock_opts o;

		REQUIRE(zpair(&s[i], &r[i], 32 * KIB, 1 * MIB) == 0);
		send_filler(s[i]);
		REQUIRE(h_set_nonblock(s[i], 1) == 0);
		zc_zsock_opts_init(&o);
		o.adaptive = 0;
		REQUIRE(zc_zsock_init(&z[i], s[i], rs[i], 8, &o) == 0);
		CHECK_RC(send_all(&z[i], pat, SIZE, 1000 + (uint64_t)i, 0, &sent), 0);
		loaned += z[i].loaned;
	}
	if (loaned < N) {
		H_SKIP_CASE("only %d of %d buffers went zero-copy", loaned, N);
		goto out;
	}
	for (int i = 0; i < N; i++) {
		long long took;
		ssize_t n, total = 0;

		/* the peer stalls: nothing completes, nothing is collected */
		CHECK_RC(zc_zsock_flush(&z[i], 20), -ETIMEDOUT);
		CHECK_EQ(zc_zsock_collect(&z[i], &tok, 1), 0);
		t0 = h_now_ms();
		CHECK_RC(zc_zsock_end(&z[i], 20), 0); /* 0: every buffer is back */
		took = h_now_ms() - t0;
		worst = took > worst ? took : worst;
		CHECK_EQ(zc_zsock_collect(&z[i], &tok, 1), 1);
		CHECK_EQ(tok, 1000 + (uint64_t)i);
		check_free_state(&z[i]);
		close(s[i]);
		/* the peer reads what had reached it, then the reset */
		h_set_nonblock(r[i], 0);
		h_setopt_int(r[i], SOL_SOCKET, SO_RCVTIMEO, 0);
		for (;;) {
			n = recv(r[i], buf + total, (size_t)(FILLER + SIZE - total), 0);
			if (n <= 0)
				break;
			total += n;
		}
		CHECK_EQ(n, -1);
		CHECK_EQ(errno, ECONNRESET);
		CHECK(total < FILLER + SIZE);
		CHECK(memcmp(buf, filler, (size_t)(total < FILLER ? total : FILLER)) == 0);
		close(r[i]);
	}
	fprintf(stderr, "test_end_stalled: %d stalled peers, end() took at most %lld ms each\n",
		N, worst);
	h_ran++;
	free(buf);
	free(pat);
	return;
out:
	for (int i = 0; i < N; i++) {
		zc_zsock_end(&z[i], 0);
		close(s[i]);
		close(r[i]);
	}
	free(buf);
	free(pat);
}

/* A peer that reads: end() waits for the completions; no reset. */
static void test_end_graceful(void)
{
	struct zc_zsock z;
	struct h_rx rx;
	struct h_rx_opts ro = { .stall_ms = 200 };
	unsigned char *pat, *got, *want;
	uint64_t sent, tok;
	size_t got_len;
	int s, r;

	pat = h_pattern(MIB, 0, 32);
	REQUIRE(pat != NULL);
	REQUIRE(zpair(&s, &r, 32 * KIB, 2 * MIB) == 0);
	send_filler(s);
	REQUIRE(h_rx_start(&rx, r, &ro) == 0);
	REQUIRE(zc_zsock_init(&z, s, recs, 64, NULL) == 0);
	CHECK_RC(send_all(&z, pat, MIB, 3, ZC_WAIT_FOREVER, &sent), 0);
	CHECK_RC(zc_zsock_end(&z, 10000), 0);
	CHECK_EQ(zc_zsock_collect(&z, &tok, 1), z.stats.zerocopy_sends > 0);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0); /* EOF, no reset */
	want = malloc(FILLER + MIB);
	REQUIRE(want != NULL);
	memcpy(want, filler, FILLER);
	memcpy(want + FILLER, pat, MIB);
	CHECK_MEM(got, got_len, want, FILLER + MIB);
	free(want);
	free(got);
	free(pat);
	h_ran++;
}

/* ---- 8.15: a cmsg too short for a sock_extended_err ----------------------- */

static void test_parse_short_cmsg(void)
{
	union {
		char buf[CMSG_SPACE(sizeof(struct sock_extended_err))];
		struct cmsghdr align;
	} control;
	struct msghdr msg = { .msg_control = control.buf,
			      .msg_controllen = sizeof(control.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	struct sock_extended_err ee = { .ee_origin = SO_EE_ORIGIN_ZEROCOPY,
					.ee_info = 4, .ee_data = 9 };
	struct zc_completion c = { 0 };

	memset(control.buf, 0, sizeof(control.buf));
	cm->cmsg_level = SOL_IP;
	cm->cmsg_type = IP_RECVERR;
	cm->cmsg_len = CMSG_LEN(sizeof(ee));
	memcpy(CMSG_DATA(cm), &ee, sizeof(ee));
	CHECK_RC(zc__parse_completion(&msg, &c), 1);
	CHECK_EQ(c.lo, 4);
	CHECK_EQ(c.hi, 9);
	cm->cmsg_len = CMSG_LEN(4); /* claims a sock_extended_err, holds 4 bytes */
	CHECK_RC(zc__parse_completion(&msg, &c), -EPROTO);
	h_ran++;
}

int main(void)
{
	h_init(120);
	filler = h_pattern(FILLER, 0, 99);
	if (!filler)
		return 1;
	test_init();
	test_parse_short_cmsg();
	test_threshold();
	test_adaptive();
	test_bound_nonblocking();
	test_bound_waits();
	test_stall_timeout();
	test_records();
	test_one_record_many_parts();
	test_enobufs_netns();
	test_unix();
	test_eintr_resume();
	test_fd_replaced(0);
	test_fd_replaced(1);
	test_end_stalled();
	test_end_graceful();
	free(filler);
	return h_result("test_zsock");
}
