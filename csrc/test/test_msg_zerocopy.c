/* SPDX-License-Identifier: MIT */
/*
 * MSG_ZEROCOPY: SO_ZEROCOPY, zc_send_tracked() sequence numbers, reaping
 * the error queue, the tracker's range logic, zc_wait_completions().
 *
 * The range logic is tested with synthetic completions.  Records are made
 * by real zc_send_tracked() calls on an AF_UNIX socketpair, where the
 * kernel ignores MSG_ZEROCOPY (no real completions interfere): a 1-byte
 * send is taken whole (the buffer's last send), a 1 MiB send on the small
 * non-blocking socket is taken in part (not the last).
 */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <linux/errqueue.h>
#include <linux/net_tstamp.h>

#define BIG (1024 * 1024)

/* The ranges read, or the error (tests that expect no foreign message). */
static int reap(int s, struct zc_completion *c, size_t max)
{
	size_t n = 0;
	int rc = zc_reap_completions(s, c, max, &n);

	return rc < 0 ? rc : (int)n;
}

static unsigned char big_buf[BIG];

/* ---- synthetic records ------------------------------------------------ */

struct syn {
	int s, r;
	struct zc_track_rec recs[64];
	struct zc_tracker t;
};

static int syn_open(struct syn *y, uint32_t cap, uint32_t first_seq)
{
	if (cap > 64 || h_unix_pair(&y->s, &y->r) < 0)
		return -1;
	h_small_buffers(y->s, y->r);
	if (h_set_nonblock(y->s, 1) < 0 || h_set_nonblock(y->r, 1) < 0 ||
	    zc_tracker_init(&y->t, y->recs, cap) != 0) {
		close(y->s);
		close(y->r);
		return -1;
	}
	y->t.next_seq = first_seq;
	return 0;
}

static void syn_close(struct syn *y)
{
	close(y->s);
	close(y->r);
}

static void syn_drain(struct syn *y)
{
	static unsigned char sink[65536];

	while (recv(y->r, sink, sizeof(sink), MSG_DONTWAIT) > 0)
		;
}

/* One tracked send for @token: taken whole (@last) or in part. 0 or -1. */
static int syn_add(struct syn *y, uint64_t token, int last)
{
	uint32_t seq = y->t.next_seq, pend = zc_tracker_pending(&y->t);
	size_t len = last ? 1 : BIG;
	long n = zc_send_tracked(y->s, &y->t, big_buf, len, token, MSG_DONTWAIT);

	syn_drain(y);
	if (n <= 0 || (last && n != 1) || (!last && (size_t)n >= len)) {
		H_REPORT("syn_add(token %llu, last %d): send returned %ld",
			 (unsigned long long)token, last, n);
		return -1;
	}
	CHECK_EQ(y->t.next_seq, (uint32_t)(seq + 1));
	CHECK_EQ(zc_tracker_pending(&y->t), pend + 1);
	return 0;
}

static struct zc_completion rng(uint32_t lo, uint32_t hi)
{
	struct zc_completion c = { .lo = lo, .hi = hi, .copied = 1 };

	return c;
}

#define EXPECT_FREED(t, cs, ...)                                             \
	do {                                                                 \
		const uint64_t want_[] = { __VA_ARGS__ };                    \
		uint64_t got_[16] = { 0 };                                   \
		size_t n_ = zc_tracker_complete((t), (cs),                 \
				sizeof(cs) / sizeof((cs)[0]), got_, 16);     \
		size_t w_ = sizeof(want_) / sizeof(want_[0]);                \
		if (want_[0] == (uint64_t)-1)                                \
			w_ = 0;                                              \
		CHECK_EQ(n_, w_);                                            \
		for (size_t i_ = 0; i_ < n_ && i_ < w_; i_++)                \
			CHECK_EQ(got_[i_], want_[i_]);                       \
	} while (0)

#define NONE ((uint64_t)-1)

static void test_tracker_init(void)
{
	struct zc_track_rec recs[2];
	struct zc_tracker t;

	CHECK_RC(zc_tracker_init(&t, NULL, 4), -EINVAL);
	CHECK_RC(zc_tracker_init(&t, recs, 0), -EINVAL);
	CHECK_RC(zc_tracker_init(&t, recs, 2), 0);
	CHECK_EQ(zc_tracker_pending(&t), 0);
	CHECK_EQ(t.next_seq, 0);
	/* nothing held: a completion is ignored */
	{
		struct zc_completion c[] = { rng(0, 5) };
		uint64_t f[2];

		CHECK_EQ(zc_tracker_complete(&t, c, 1, f, 2), 0);
		CHECK_EQ(zc_tracker_complete(&t, NULL, 0, f, 2), 0);
	}
	h_ran++;
}

/* Sequence numbers: only a successful, non-empty tracked send takes one. */
static void test_send_numbers(void)
{
	struct syn y;
	unsigned char sink[8];

	REQUIRE(syn_open(&y, 2, 0) == 0);
	CHECK_RC(zc_send_tracked(y.s, &y.t, big_buf, 0, 1, 0), -EINVAL);
	CHECK_EQ(y.t.next_seq, 0);
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	/* a plain send records nothing */
	CHECK_EQ(zc_send_tracked(y.s, NULL, big_buf, 1, 1, 0), 1);
	syn_drain(&y);
	CHECK_EQ(y.t.next_seq, 0);
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	/* -EAGAIN takes no number */
	while (send(y.s, big_buf, BIG, MSG_DONTWAIT) > 0)
		;
	CHECK_RC(zc_send_tracked(y.s, &y.t, big_buf, 1, 1, 0), -EAGAIN);
	CHECK_EQ(y.t.next_seq, 0);
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	syn_drain(&y);
	REQUIRE(syn_add(&y, 1, 1) == 0);
	REQUIRE(syn_add(&y, 2, 1) == 0);
	/* full: -ENOSPC, nothing sent, no number */
	CHECK_RC(zc_send_tracked(y.s, &y.t, big_buf, 1, 3, 0), -ENOSPC);
	CHECK_EQ(y.t.next_seq, 2);
	CHECK_EQ(zc_tracker_pending(&y.t), 2);
	CHECK_EQ(recv(y.r, sink, sizeof(sink), MSG_DONTWAIT), -1);
	/* a plain send still goes when the tracker is full */
	CHECK_EQ(zc_send_tracked(y.s, NULL, big_buf, 1, 3, 0), 1);
	syn_drain(&y);
	syn_close(&y);
	h_ran++;
}

static void test_in_order_and_merged(void)
{
	struct syn y;

	REQUIRE(syn_open(&y, 8, 0) == 0);
	for (uint64_t tok = 1; tok <= 5; tok++)
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		struct zc_completion c[] = { rng(0, 0) };

		EXPECT_FREED(&y.t, c, 1);
	}
	{
		struct zc_completion c[] = { rng(1, 4) }; /* merged by the kernel */

		EXPECT_FREED(&y.t, c, 2, 3, 4, 5);
	}
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	syn_close(&y);
	h_ran++;
}

/* A later send completing first frees nothing until the ones before it do. */
static void test_out_of_order(void)
{
	struct syn y;

	REQUIRE(syn_open(&y, 8, 100) == 0);
	for (uint64_t tok = 1; tok <= 4; tok++)
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		struct zc_completion c[] = { rng(102, 102), rng(103, 103) };

		EXPECT_FREED(&y.t, c, NONE);
		CHECK_EQ(zc_tracker_pending(&y.t), 4);
	}
	{
		struct zc_completion c[] = { rng(100, 100) };

		EXPECT_FREED(&y.t, c, 1);
		CHECK_EQ(zc_tracker_pending(&y.t), 3);
	}
	{
		struct zc_completion c[] = { rng(101, 101) };

		EXPECT_FREED(&y.t, c, 2, 3, 4);
	}
	/* several ranges in one call, in any order */
	for (uint64_t tok = 5; tok <= 8; tok++)
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		struct zc_completion c[] = { rng(107, 107), rng(105, 106), rng(104, 104) };

		EXPECT_FREED(&y.t, c, 5, 6, 7, 8);
	}
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	syn_close(&y);
	h_ran++;
}

/* Numbers wrap at 2**32, and so may a range (hi < lo). */
static void test_wrap(void)
{
	struct syn y;

	REQUIRE(syn_open(&y, 8, 0xfffffffeu) == 0);
	for (uint64_t tok = 1; tok <= 5; tok++) /* fffffffe ffffffff 0 1 2 */
		REQUIRE(syn_add(&y, tok, 1) == 0);
	CHECK_EQ(y.t.next_seq, 3);
	{
		struct zc_completion c[] = { rng(0xfffffffeu, 0) };

		EXPECT_FREED(&y.t, c, 1, 2, 3);
	}
	{
		struct zc_completion c[] = { rng(1, 2) };

		EXPECT_FREED(&y.t, c, 4, 5);
	}
	/* again, the wrapping range arriving after the later one */
	y.t.next_seq = 0xfffffffdu; /* tracker is empty: the caller may set it */
	for (uint64_t tok = 6; tok <= 9; tok++) /* fffffffd fffffffe ffffffff 0 */
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		struct zc_completion c[] = { rng(0xffffffffu, 0) };

		EXPECT_FREED(&y.t, c, NONE);
	}
	{
		struct zc_completion c[] = { rng(0xfffffffdu, 0xfffffffeu) };

		EXPECT_FREED(&y.t, c, 6, 7, 8, 9);
	}
	/* a stale wrapping range after teardown is ignored */
	REQUIRE(syn_add(&y, 10, 1) == 0); /* seq 1 */
	{
		struct zc_completion c[] = { rng(0xfffffffdu, 0) };

		EXPECT_FREED(&y.t, c, NONE);
		CHECK_EQ(zc_tracker_pending(&y.t), 1);
	}
	{
		struct zc_completion c[] = { rng(1, 1) };

		EXPECT_FREED(&y.t, c, 10);
	}
	syn_close(&y);
	h_ran++;
}

/* Repeated ranges, stale ranges, ranges reaching past what is held. */
static void test_duplicates_stale_and_excess(void)
{
	struct syn y;

	REQUIRE(syn_open(&y, 8, 10) == 0);
	for (uint64_t tok = 1; tok <= 3; tok++) /* 10 11 12 */
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		/* duplicate in one batch, and a range into the future */
		struct zc_completion c[] = { rng(10, 10), rng(10, 10), rng(11, 40) };

		EXPECT_FREED(&y.t, c, 1, 2, 3);
	}
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	/* the range above covered 13..40: sends taking those numbers later
	 * must not count as done */
	for (uint64_t tok = 4; tok <= 6; tok++) /* 13 14 15 */
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		uint64_t f[4];

		CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 4), 0);
	}
	{
		/* duplicates after teardown, wholly stale */
		struct zc_completion c[] = { rng(10, 12), rng(0, 9), rng(11, 11) };

		EXPECT_FREED(&y.t, c, NONE);
		CHECK_EQ(zc_tracker_pending(&y.t), 3);
	}
	{
		/* starts before the oldest held send: clipped there */
		struct zc_completion c[] = { rng(5, 13) };

		EXPECT_FREED(&y.t, c, 4);
	}
	{
		/* wholly in the future: nothing */
		struct zc_completion c[] = { rng(16, 30) };

		EXPECT_FREED(&y.t, c, NONE);
		CHECK_EQ(zc_tracker_pending(&y.t), 2);
	}
	{
		/* covers everything held and more on both sides */
		struct zc_completion c[] = { rng(0, 1000) };

		EXPECT_FREED(&y.t, c, 5, 6);
	}
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	/* an inverted range (hi a little below lo) is not one the kernel sends */
	for (uint64_t tok = 7; tok <= 9; tok++) /* 16 17 18 */
		REQUIRE(syn_add(&y, tok, 1) == 0);
	{
		struct zc_completion c[] = { rng(18, 16) };

		EXPECT_FREED(&y.t, c, NONE);
		CHECK_EQ(zc_tracker_pending(&y.t), 3);
	}
	{
		struct zc_completion c[] = { rng(16, 18) };

		EXPECT_FREED(&y.t, c, 7, 8, 9);
	}
	syn_close(&y);
	h_ran++;
}

/* A buffer taken in several sends is free only after its last one. */
static void test_multi_send_token(void)
{
	struct syn y;

	REQUIRE(syn_open(&y, 16, 0xffffffffu) == 0);
	/* token 1: part, part, whole rest  (ffffffff 0 1) */
	REQUIRE(syn_add(&y, 1, 0) == 0);
	REQUIRE(syn_add(&y, 1, 0) == 0);
	REQUIRE(syn_add(&y, 1, 1) == 0);
	/* token 2: one part, then the sending stopped: sealed  (2) */
	REQUIRE(syn_add(&y, 2, 0) == 0);
	CHECK_EQ(zc_tracker_seal(&y.t, 1), 0); /* not the newest send */
	CHECK_EQ(zc_tracker_seal(&y.t, 2), 1);
	/* token 3: one part, never sealed yet  (3) */
	REQUIRE(syn_add(&y, 3, 0) == 0);
	{
		struct zc_completion c[] = { rng(0xffffffffu, 0xffffffffu), rng(0, 0) };

		EXPECT_FREED(&y.t, c, NONE);
		CHECK_EQ(zc_tracker_pending(&y.t), 3);
	}
	{
		struct zc_completion c[] = { rng(2, 3) }; /* out of order */

		EXPECT_FREED(&y.t, c, NONE);
	}
	{
		struct zc_completion c[] = { rng(1, 1) };

		/* token 3's only send is done but was not its last */
		EXPECT_FREED(&y.t, c, 1, 2);
	}
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	/* all of token 3 that went out completed: seal finds nothing */
	CHECK_EQ(zc_tracker_seal(&y.t, 3), 0);

	/* sealed while its earlier parts are still in flight */
	REQUIRE(syn_add(&y, 4, 0) == 0); /* 4 */
	REQUIRE(syn_add(&y, 4, 0) == 0); /* 5 */
	CHECK_EQ(zc_tracker_seal(&y.t, 4), 1);
	CHECK_EQ(zc_tracker_seal(&y.t, 4), 1); /* idempotent */
	REQUIRE(syn_add(&y, 5, 1) == 0); /* 6 */
	{
		struct zc_completion c[] = { rng(5, 6) };

		EXPECT_FREED(&y.t, c, NONE);
	}
	{
		struct zc_completion c[] = { rng(4, 4) };

		EXPECT_FREED(&y.t, c, 4, 5);
	}
	/* empty tracker */
	CHECK_EQ(zc_tracker_seal(&y.t, 5), 0);
	syn_close(&y);
	h_ran++;
}

/* More free tokens than fit: the rest come with the next call (n = 0). */
static void test_freed_capacity(void)
{
	struct syn y;
	struct zc_completion c = rng(0, 4);
	uint64_t f[2] = { 0, 0 };

	REQUIRE(syn_open(&y, 8, 0) == 0);
	for (uint64_t tok = 1; tok <= 5; tok++)
		REQUIRE(syn_add(&y, tok, 1) == 0);
	CHECK_EQ(zc_tracker_complete(&y.t, &c, 1, f, 0), 0);
	CHECK_EQ(zc_tracker_pending(&y.t), 5);
	CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 2), 2);
	CHECK_EQ(f[0], 1);
	CHECK_EQ(f[1], 2);
	CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 2), 2);
	CHECK_EQ(f[0], 3);
	CHECK_EQ(f[1], 4);
	CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 2), 1);
	CHECK_EQ(f[0], 5);
	CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 2), 0);
	CHECK_EQ(zc_tracker_pending(&y.t), 0);
	/* the ring wraps around its array */
	for (int round = 0; round < 5; round++) {
		for (uint64_t tok = 1; tok <= 5; tok++)
			REQUIRE(syn_add(&y, 10 * (uint64_t)round + tok, 1) == 0);
		c = rng(y.t.next_seq - 5, y.t.next_seq - 1);
		CHECK_EQ(zc_tracker_complete(&y.t, &c, 1, f, 2), 2);
		CHECK_EQ(f[0], 10 * (uint64_t)round + 1);
		CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 2), 2);
		CHECK_EQ(zc_tracker_complete(&y.t, NULL, 0, f, 2), 1);
		CHECK_EQ(f[0], 10 * (uint64_t)round + 5);
	}
	syn_close(&y);
	h_ran++;
}

/* ---- a randomised check against a model -------------------------------- */

static uint64_t prng_state = 0x243f6a8885a308d3ull;

static uint32_t prng(uint32_t n)
{
	prng_state ^= prng_state << 13;
	prng_state ^= prng_state >> 7;
	prng_state ^= prng_state << 17;
	return n ? (uint32_t)(prng_state % n) : 0;
}

struct model_rec {
	uint32_t seq;
	uint64_t token;
	int last, done;
};

static void test_model(void)
{
	static const uint32_t starts[] = { 0, 0xfffffff0u, 0x7ffffff8u, 0xffffffffu, 12345 };
	struct model_rec m[64];
	unsigned checks = 0;

	for (size_t si = 0; si < sizeof(starts) / sizeof(starts[0]); si++) {
		struct syn y;
		uint32_t cap = 4 + prng(28);
		size_t mc = 0; /* model count */
		uint64_t next_token = 1, open = 0; /* open: token mid-buffer */

		REQUIRE(syn_open(&y, cap, starts[si]) == 0);
		for (int step = 0; step < 400; step++) {
			uint32_t op = prng(10);

			if (op < 5 && mc < cap) { /* send */
				uint64_t tok = open ? open : next_token++;
				int last = prng(3) == 0;

				if (syn_add(&y, tok, last) < 0)
					break;
				m[mc].seq = y.t.next_seq - 1;
				m[mc].token = tok;
				m[mc].last = last;
				m[mc].done = 0;
				mc++;
				open = last ? 0 : tok;
			} else if (op == 5 && open) { /* the buffer's sending stops */
				int want = mc > 0 && m[mc - 1].token == open;

				CHECK_EQ(zc_tracker_seal(&y.t, open), want);
				if (want)
					m[mc - 1].last = 1;
				open = 0;
			} else { /* completions */
				struct zc_completion c[6];
				size_t nc = 1 + prng(6);
				uint32_t base = y.t.next_seq - (uint32_t)mc;
				uint64_t want[64], got[64];
				size_t nw = 0, ng = 0, k;

				for (size_t i = 0; i < nc; i++) {
					/* around what is held: some stale, some future */
					uint32_t a = base - 8 + prng((uint32_t)mc + 16);
					uint32_t len = prng(6);

					c[i] = rng(a, a + len);
					for (size_t j = 0; j < mc; j++)
						if (m[j].seq - a <= len)
							m[j].done = 1;
				}
				while (mc > 0 && m[0].done) {
					if (m[0].last)
						want[nw++] = m[0].token;
					memmove(m, m + 1, (mc - 1) * sizeof(m[0]));
					mc--;
				}
				size_t mx = 1 + prng(3);

				k = zc_tracker_complete(&y.t, c, nc, got, mx);
				ng = k;
				while (k == mx && ng + mx <= 64) {
					k = zc_tracker_complete(&y.t, NULL, 0, got + ng, mx);
					ng += k;
				}
				CHECK_EQ(ng, nw);
				for (size_t i = 0; i < ng && i < nw; i++)
					CHECK_EQ(got[i], want[i]);
				CHECK_EQ(zc_tracker_pending(&y.t), mc);
				checks++;
			}
		}
		syn_close(&y);
	}
	CHECK(checks > 100);
	h_ran++;
}

/* ---- real sockets --------------------------------------------------------- */

enum { K_TCP4, K_TCP6, K_MAPPED }; /* MAPPED: v6 socket, v4 traffic */

static const char *kname(int kind)
{
	return kind == K_TCP4 ? "tcp4" : kind == K_TCP6 ? "tcp6" : "v4-mapped";
}

/* A connected pair of @kind; 1 when it cannot be made here (no ::1). */
static int tcp_pair_kind(int kind, int *snd, int *rcv, int rcvbuf, int sndbuf)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;
	int l, c = -1, s;

	memset(&ss, 0, sizeof(ss));
	if (kind == K_TCP6) {
		a6->sin6_family = AF_INET6;
		a6->sin6_addr = in6addr_loopback;
		len = sizeof(*a6);
	} else {
		a4->sin_family = AF_INET;
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*a4);
	}
	l = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		return kind == K_TCP4 ? -1 : 1;
	if (rcvbuf)
		h_setopt_int(l, SOL_SOCKET, SO_RCVBUF, rcvbuf);
	if (bind(l, (struct sockaddr *)&ss, len) < 0) {
		close(l);
		return kind == K_TCP4 ? -1 : 1;
	}
	if (listen(l, 1) < 0 || getsockname(l, (struct sockaddr *)&ss, &len) < 0)
		goto fail;
	if (kind == K_MAPPED) {
		struct sockaddr_in6 m = { .sin6_family = AF_INET6, .sin6_port = a4->sin_port };

		m.sin6_addr.s6_addr[10] = 0xff;
		m.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&m.sin6_addr.s6_addr[12], &a4->sin_addr, 4);
		c = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c < 0) {
			close(l);
			return 1;
		}
		if (sndbuf)
			h_setopt_int(c, SOL_SOCKET, SO_SNDBUF, sndbuf);
		if (connect(c, (struct sockaddr *)&m, sizeof(m)) < 0) {
			close(c);
			close(l);
			return 1;
		}
	} else {
		c = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c < 0)
			goto fail;
		if (sndbuf)
			h_setopt_int(c, SOL_SOCKET, SO_SNDBUF, sndbuf);
		if (connect(c, (struct sockaddr *)&ss, len) < 0)
			goto fail;
	}
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

static void test_enable(void)
{
	int s, r, p[2];

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	CHECK_RC(zc_zerocopy_enable(s), 0);
	CHECK_EQ(h_getopt_int(s, SOL_SOCKET, SO_ZEROCOPY), 1);
	close(s);
	close(r);
	REQUIRE(h_unix_pair(&s, &r) == 0);
	CHECK_RC(zc_zerocopy_enable(s), -EOPNOTSUPP);
	close(s);
	close(r);
	REQUIRE(pipe(p) == 0);
	CHECK_RC(zc_zerocopy_enable(p[0]), -ENOTSOCK);
	close(p[0]);
	close(p[1]);
	h_ran++;
}

/*
 * Reap until the tracker is empty or the deadline passes.  Every range is
 * checked against [lo_ok, lo_ok + count) and counted into cover[]; freed
 * tokens are appended to freed[] (*nfreed).  Returns the number of ranges.
 */
static size_t reap_until_empty(int s, struct zc_tracker *t, uint32_t first,
			       unsigned char *cover, size_t count, uint64_t *freed,
			       size_t *nfreed, size_t freed_cap, int deadline_ms)
{
	long long end = h_now_ms() + deadline_ms;
	size_t ranges = 0;

	while (zc_tracker_pending(t) > 0 && h_now_ms() < end) {
		struct zc_completion c[4]; /* small: several rounds */
		int rc = zc_wait_completions(s, 100), n;

		if (rc == -ETIMEDOUT)
			continue;
		CHECK_RC(rc, 0);
		n = reap(s, c, 4);
		if (n < 0) {
			CHECK_RC(n, 0);
			break;
		}
		for (int i = 0; i < n; i++) {
			uint32_t from = c[i].lo - first, to = c[i].hi - first;

			CHECK(from <= to && to < count);
			for (uint32_t q = from; q <= to && q < count; q++)
				cover[q]++;
		}
		ranges += (size_t)n;
		for (;;) {
			size_t k = zc_tracker_complete(t, c, (size_t)n, freed + *nfreed,
						       freed_cap - *nfreed);

			*nfreed += k;
			n = 0;
			if (k == 0 || *nfreed == freed_cap)
				break;
		}
	}
	return ranges;
}

/*
 * Tracked sends over loopback: ranges come back covering exactly the
 * numbers consumed, every token is freed once in order, bytes arrive intact.
 */
static void test_roundtrip(int kind)
{
	enum { NSEND = 48 };
	size_t total = 0, pos = 0, nfreed = 0;
	struct zc_track_rec recs[2 * NSEND];
	struct zc_tracker t;
	unsigned char cover[2 * NSEND] = { 0 };
	uint64_t freed[2 * NSEND];
	unsigned char *pat, *got;
	size_t got_len;
	struct h_rx rx;
	int s, r, rc;

	rc = tcp_pair_kind(kind, &s, &r, 0, 0);
	if (rc == 1) {
		H_SKIP_CASE("%s: no such loopback here", kname(kind));
		return;
	}
	REQUIRE(rc == 0);
	for (int i = 0; i < NSEND; i++)
		total += 1 + (size_t)(i * 7919) % 100000;
	pat = h_pattern(total, 0, 11);
	REQUIRE(pat != NULL);
	CHECK_RC(zc_zerocopy_enable(s), 0);
	REQUIRE(zc_tracker_init(&t, recs, 2 * NSEND) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	for (int i = 0; i < NSEND; i++) {
		size_t len = 1 + (size_t)(i * 7919) % 100000;
		size_t off = 0;

		/* blocking socket: each send takes the whole buffer */
		while (off < len) {
			long n = zc_send_tracked(s, &t, pat + pos + off, len - off,
						 (uint64_t)i + 1, 0);

			if (n == -EINTR)
				continue;
			if (n <= 0) {
				CHECK_RC(n, 1);
				break;
			}
			off += (size_t)n;
		}
		pos += len;
		if (off < len)
			break;
	}
	CHECK_EQ(pos, total);
	/* one number per send: on a blocking socket, one per buffer unless a
	 * signal cut one short */
	CHECK(t.next_seq >= NSEND && t.next_seq <= 2 * NSEND);
	reap_until_empty(s, &t, 0, cover, t.next_seq, freed, &nfreed, 2 * NSEND, 10000);
	CHECK_EQ(zc_tracker_pending(&t), 0);
	CHECK_EQ(nfreed, NSEND);
	for (size_t i = 0; i < nfreed; i++)
		CHECK_EQ(freed[i], i + 1);
	for (uint32_t i = 0; i < t.next_seq; i++)
		if (cover[i] != 1)
			H_REPORT("%s: send %u covered %d times", kname(kind), i, cover[i]);
	/* nothing more: the queue is drained and stays so */
	CHECK_RC(zc_wait_completions(s, 0), -EAGAIN);
	{
		struct zc_completion c[2];

		CHECK_EQ(reap(s, c, 2), 0);
	}
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, total);
	free(got);
	free(pat);
	h_ran++;
}

/*
 * Only successful sends take a number: a stalled peer makes sends fail with
 * -EAGAIN on a non-blocking socket; if the kernel had numbered those, its
 * ranges would run past the tracker's numbers.
 */
static void test_eagain_takes_no_number(void)
{
	enum { CAP = 4096, TOTAL = 8 * 1024 * 1024, CHUNK = 48 * 1024 };
	static struct zc_track_rec recs[CAP];
	static unsigned char cover[CAP];
	static uint64_t freed[CAP];
	struct zc_tracker t;
	size_t pos = 0, nfreed = 0, ntok = 0;
	unsigned char *pat, *got;
	size_t got_len;
	struct h_rx rx;
	struct h_rx_opts o = { .stall_ms = 10000 };
	int s, r, eagains = 0;
	long long end;

	memset(cover, 0, sizeof(cover));
	REQUIRE(tcp_pair_kind(K_TCP4, &s, &r, 4096, 64 * 1024) == 0);
	pat = h_pattern(TOTAL, 0, 12);
	REQUIRE(pat != NULL);
	CHECK_RC(zc_zerocopy_enable(s), 0);
	REQUIRE(zc_tracker_init(&t, recs, CAP) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	end = h_now_ms() + 15000;
	while (pos < TOTAL && h_now_ms() < end && t.next_seq < CAP) {
		size_t len = TOTAL - pos < CHUNK ? TOTAL - pos : CHUNK;
		uint64_t tok = ++ntok;
		size_t off = 0;

		while (off < len && h_now_ms() < end && t.next_seq < CAP) {
			long n = zc_send_tracked(s, &t, pat + pos + off, len - off, tok, 0);

			if (n == -EAGAIN) {
				uint32_t before = t.next_seq;

				eagains++;
				/* once the peer is known to be stuck, let it read */
				if (eagains == 3)
					h_rx_go(&rx);
				CHECK_EQ(t.next_seq, before);
				h_wait_out(s, 100);
				continue;
			}
			if (n == -ENOBUFS) { /* locked-memory limit: send plain */
				n = zc_send_tracked(s, NULL, pat + pos + off, len - off, tok, 0);
				if (n == -EAGAIN) {
					h_wait_out(s, 100);
					continue;
				}
			}
			if (n <= 0) {
				CHECK_RC(n, 1);
				goto out;
			}
			off += (size_t)n;
		}
		/* stopped early (deadline, numbers): this buffer's last send */
		if (off < len)
			zc_tracker_seal(&t, tok);
		pos += off;
		if (off < len)
			break;
	}
out:
	h_rx_go(&rx);
	CHECK(eagains >= 3);
	CHECK_EQ(pos, TOTAL);
	reap_until_empty(s, &t, 0, cover, t.next_seq, freed, &nfreed, CAP, 10000);
	CHECK_EQ(zc_tracker_pending(&t), 0);
	for (uint32_t i = 0; i < t.next_seq; i++)
		if (cover[i] != 1) {
			H_REPORT("send %u covered %d times", i, cover[i]);
			break;
		}
	for (size_t i = 1; i < nfreed; i++)
		CHECK(freed[i] > freed[i - 1]);
	close(s);
	CHECK_EQ(h_rx_finish(&rx, &got, &got_len), 0);
	CHECK_MEM(got, got_len, pat, pos);
	free(got);
	free(pat);
	h_ran++;
}

/* zc_wait_completions(): polls for POLLERR; never waits on an undrained queue. */
static void test_wait(void)
{
	struct zc_track_rec recs[4];
	struct zc_tracker t;
	struct zc_completion c[4];
	unsigned char buf[1000], rbuf[1000]; /* buf is on loan: never reused */
	int s, r, n, total = 0;
	long long end;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	CHECK_RC(zc_zerocopy_enable(s), 0);
	/* empty queue */
	CHECK_RC(zc_wait_completions(s, 0), -EAGAIN);
	CHECK_RC(zc_wait_completions(s, 30), -ETIMEDOUT);
	CHECK_EQ(reap(s, c, 4), 0);
	REQUIRE(zc_tracker_init(&t, recs, 4) == 0);
	memset(buf, 'w', sizeof(buf));
	CHECK_EQ(zc_send_tracked(s, &t, buf, sizeof(buf), 1, 0), (long)sizeof(buf));
	CHECK_EQ(h_recv_upto(r, rbuf, sizeof(rbuf), 5000), sizeof(buf));
	/* the completion comes once the peer has the bytes */
	CHECK_RC(zc_wait_completions(s, 5000), 0);
	/* not reaped yet: every wait returns at once (a long bound would show
	 * as -ETIMEDOUT here), however often it is asked */
	for (int i = 0; i < 3; i++)
		CHECK_RC(zc_wait_completions(s, 3000), 0);
	CHECK_RC(zc_wait_completions(s, 0), 0);
	/* reap it all (the kernel may still be merging: bounded loop) */
	end = h_now_ms() + 5000;
	while (total < 1 && h_now_ms() < end) {
		n = reap(s, c, 4);
		REQUIRE(n >= 0);
		for (int i = 0; i < n; i++) {
			CHECK_EQ(c[i].lo, 0);
			CHECK_EQ(c[i].hi, 0);
			CHECK(c[i].copied <= 1);
		}
		total += n;
	}
	CHECK_EQ(total, 1);
	CHECK_RC(zc_wait_completions(s, 0), -EAGAIN);
	CHECK_RC(zc_wait_completions(s, 30), -ETIMEDOUT);
	/* the ranges free the token */
	{
		uint64_t f[2];

		CHECK_EQ(zc_tracker_complete(&t, c, 1, f, 2), 1);
		CHECK_EQ(f[0], 1);
	}
	/* a hung-up socket with nothing queued: returns (paced), no error */
	close(r);
	shutdown(s, SHUT_RDWR);
	for (int i = 0; i < 3; i++) {
		int rc = zc_wait_completions(s, 30);

		CHECK(rc == 0 || rc == -ETIMEDOUT);
	}
	close(s);
	h_ran++;
}

static void wait_for_completion_queued(int s)
{
	CHECK_RC(zc_wait_completions(s, 5000), 0);
}

/*
 * A message on the error queue that is not a zero-copy completion (here a
 * software TX timestamp, origin SO_EE_ORIGIN_TIMESTAMPING) is an error,
 * never a range; one whose control data did not fit is -EIO (MSG_CTRUNC).
 * An error met after some ranges were read comes back with those ranges.
 */
static void test_foreign_messages(void)
{
	struct zc_track_rec recs[4];
	struct zc_tracker t;
	struct zc_completion c[8];
	unsigned char buf[100], rbuf[100];
	int s, r, n, v;

	memset(buf, 'f', sizeof(buf));
	/* 1. only the foreign message after the completion */
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	CHECK_RC(zc_zerocopy_enable(s), 0);
	REQUIRE(zc_tracker_init(&t, recs, 4) == 0);
	CHECK_EQ(zc_send_tracked(s, &t, buf, sizeof(buf), 1, 0), (long)sizeof(buf));
	CHECK_EQ(h_recv_upto(r, rbuf, sizeof(rbuf), 5000), sizeof(buf));
	wait_for_completion_queued(s);
	/* TX timestamps without the reporting flag: no SCM_TIMESTAMPING cmsg,
	 * just a sock_extended_err of another origin (errno ENOMSG) */
	v = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_OPT_ID;
	if (setsockopt(s, SOL_SOCKET, SO_TIMESTAMPING, &v, sizeof(v)) < 0) {
		H_SKIP_CASE("SO_TIMESTAMPING: %s", strerror(errno));
		close(s);
		close(r);
		return;
	}
	CHECK_EQ(zc_send_tracked(s, &t, buf, sizeof(buf), 2, 0), (long)sizeof(buf));
	CHECK_EQ(h_recv_upto(r, rbuf, sizeof(rbuf), 5000), sizeof(buf));
	/* queue now: completion 0, timestamp, completion 1 (ACK after xmit) */
	{
		long long end = h_now_ms() + 5000;
		int ranges = 0, errors = 0, calls = 0;
		size_t got = 0;
		int rc = zc_reap_completions(s, c, 8, &got);

		/* completion 0 comes back together with the timestamp's error */
		CHECK(rc == -EPROTO || rc == -ENOMSG);
		errors += rc < 0;
		CHECK_EQ(got, 1);
		if (got == 1) {
			CHECK_EQ(c[0].lo, 0);
			CHECK_EQ(c[0].hi, 0);
		}
		/* then completion 1; wait for it if it is not queued yet */
		while (ranges < 1 && calls < 50 && h_now_ms() < end) {
			n = reap(s, c, 8);
			calls++;
			if (n < 0) {
				CHECK(n == -EPROTO || n == -ENOMSG);
				errors++;
				continue;
			}
			for (int i = 0; i < n; i++) {
				CHECK_EQ(c[i].lo, 1);
				CHECK_EQ(c[i].hi, 1);
			}
			ranges += n;
			if (ranges < 1)
				zc_wait_completions(s, 100);
		}
		CHECK_EQ(ranges, 1);
		if (errors != 1)
			H_REPORT("a foreign message after a completion was reported "
				 "%d times, want once (it was dropped)", errors);
	}
	close(s);
	close(r);

	/* 2. MSG_CTRUNC: with the reporting flag a SCM_TIMESTAMPING cmsg
	 * comes first and the sock_extended_err no longer fits */
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	CHECK_RC(zc_zerocopy_enable(s), 0);
	REQUIRE(zc_tracker_init(&t, recs, 4) == 0);
	v = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID;
	REQUIRE(setsockopt(s, SOL_SOCKET, SO_TIMESTAMPING, &v, sizeof(v)) == 0);
	CHECK_EQ(zc_send_tracked(s, &t, buf, sizeof(buf), 1, 0), (long)sizeof(buf));
	CHECK_EQ(h_recv_upto(r, rbuf, sizeof(rbuf), 5000), sizeof(buf));
	wait_for_completion_queued(s);
	/* the timestamp (at xmit) is queued before the completion (at ACK) */
	CHECK_RC(reap(s, c, 8), -EIO);
	{
		long long end = h_now_ms() + 5000;
		int ranges = 0;

		while (ranges < 1 && h_now_ms() < end) {
			n = reap(s, c, 8);
			REQUIRE(n >= 0);
			for (int i = 0; i < n; i++) {
				CHECK_EQ(c[i].lo, 0);
				CHECK_EQ(c[i].hi, 0);
			}
			ranges += n;
			if (ranges < 1)
				zc_wait_completions(s, 100);
		}
		CHECK_EQ(ranges, 1);
	}
	close(s);
	close(r);
	h_ran++;
}

int main(void)
{
	h_init(90);
	memset(big_buf, 'z', sizeof(big_buf));
	test_tracker_init();
	test_send_numbers();
	test_in_order_and_merged();
	test_out_of_order();
	test_wrap();
	test_duplicates_stale_and_excess();
	test_multi_send_token();
	test_freed_capacity();
	test_model();
	test_enable();
	test_roundtrip(K_TCP4);
	test_roundtrip(K_TCP6);
	test_roundtrip(K_MAPPED);
	test_eagain_takes_no_number();
	test_wait();
	test_foreign_messages();
	return h_result("test_msg_zerocopy");
}
