/* SPDX-License-Identifier: MIT */
/* struct zc_response: header + file range + trailer, resumable, corked. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <linux/tcp.h> /* struct tcp_info with tcpi_data_segs_out */

#define SEED 5
#define HSEED 21
#define TSEED 22

static int cork(int s)
{
	return h_getopt_int(s, IPPROTO_TCP, TCP_CORK);
}

static long long segs_out(int s)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_data_segs_out) +
			  sizeof(ti.tcpi_data_segs_out))
		return -1;
	return ti.tcpi_data_segs_out;
}

/* Bytes queued but not yet sent (held back by a cork or MSG_MORE). */
static long long unsent(int s)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_notsent_bytes) +
			  sizeof(ti.tcpi_notsent_bytes))
		return -1;
	return ti.tcpi_notsent_bytes;
}

/* header, file bytes [off, off+flen), trailer: what the peer must get. */
static unsigned char *expected(const unsigned char *h, size_t hlen, size_t off,
			       size_t flen, const unsigned char *t, size_t tlen)
{
	unsigned char *w = malloc(hlen + flen + tlen + 1);

	if (!w)
		return NULL;
	if (hlen)
		memcpy(w, h, hlen);
	h_fill(w + hlen, flen, off, SEED);
	if (tlen)
		memcpy(w + hlen + flen, t, tlen);
	return w;
}

/*
 * One response over a blocking socket: file is a temp file of fsize bytes
 * (or none when fsize is (size_t)-1), range [off, off+count).
 */
static void one(int kind, size_t hlen, size_t fsize, int64_t off,
		uint64_t count, size_t tlen)
{
	unsigned char *h = h_pattern(hlen, 0, HSEED);
	unsigned char *t = h_pattern(tlen, 0, TSEED);
	size_t start = off == ZC_FD_POSITION ? 7 : (size_t)off;
	size_t flen = fsize == (size_t)-1 ? 0
		      : count == ZC_TO_EOF ? fsize - start : (size_t)count;
	unsigned char *want = expected(h, hlen, start, flen, t, tlen), *got;
	struct zc_response resp;
	struct h_rx rx;
	size_t got_len;
	uint64_t now = 99;
	int s, r, f = -1;

	REQUIRE(h && t && want);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	if (fsize != (size_t)-1) {
		REQUIRE((f = h_temp_file(fsize, SEED)) >= 0);
		REQUIRE(lseek(f, 7, SEEK_SET) == 7);
	}
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	CHECK_RC(zc_response_init(&resp, s, f, off, count, hlen ? h : NULL,
				  hlen, tlen ? t : NULL, tlen), 0);
	/* an empty regular file looks like a /proc file (st_size 0), so its
	 * size stays unknown until the file has been read to its end */
	if (fsize == 0 && count == ZC_TO_EOF)
		CHECK(resp.total == ZC_TO_EOF || resp.total == hlen + tlen);
	else
		CHECK_EQ(resp.total, hlen + flen + tlen);
	CHECK_EQ(resp.sent, 0);
	CHECK_RC(zc_response_send(&resp, ZC_WAIT_FOREVER, &now), 0);
	CHECK_EQ(now, hlen + flen + tlen);
	CHECK_EQ(resp.sent, resp.total);
	CHECK_EQ(resp.total, hlen + flen + tlen);
	if (kind == 0) {
		CHECK_EQ(cork(s), 0);
		/* nothing held back: queued bytes are on their way (a big
		 * file may still wait for the peer's window) */
		if (hlen + flen + tlen < 65536 && unsent(s) != 0) {
			fprintf(stderr, "  one(%zu+%zu+%zu): %lld bytes held "
				"back after completion\n", hlen, flen, tlen,
				unsent(s));
			CHECK_EQ(unsent(s), 0);
		}
	}
	if (f >= 0)
		CHECK_EQ(h_tell(f), off == ZC_FD_POSITION ? (off_t)(7 + flen)
							  : 7);
	/* done: more calls send nothing and succeed */
	now = 99;
	CHECK_RC(zc_response_send(&resp, 0, &now), 0);
	CHECK_EQ(now, 0);
	CHECK_RC(zc_response_end(&resp), 0);
	CHECK_RC(zc_response_end(&resp), 0);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, want, hlen + flen + tlen);
	free(got);
	free(want);
	free(h);
	free(t);
	if (f >= 0)
		close(f);
	h_ran++;
}

static void test_shapes(void)
{
	const size_t none = (size_t)-1;

	for (int kind = 0; kind < 2; kind++) {
		one(kind, 100, 100000, 0, ZC_TO_EOF, 50);
		one(kind, 100, 100000, 333, 40000, 50);
		one(kind, 100, 100000, ZC_FD_POSITION, ZC_TO_EOF, 50);
		one(kind, 100, 100000, ZC_FD_POSITION, 5000, 0);
		one(kind, 100, none, 0, 0, 0);		 /* header only */
		one(kind, 0, none, 0, 0, 50);		 /* trailer only */
		one(kind, 100, none, 0, 0, 50);		 /* no file */
		one(kind, 100, 0, 0, ZC_TO_EOF, 50);	 /* empty file */
		one(kind, 100, 0, 0, ZC_TO_EOF, 0);
		one(kind, 0, 0, 0, ZC_TO_EOF, 0);	 /* nothing at all */
		one(kind, 0, 100000, 0, ZC_TO_EOF, 0);	 /* file only */
		one(kind, 0, 100000, 10, 1000, 20);
		one(kind, 1000, 8 << 20, 0, ZC_TO_EOF, 300);
	}
}

static void test_init_errors(void)
{
	struct zc_response resp;
	unsigned char b[4] = { 0 };
	int s, r, f;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE((f = h_temp_file(100, SEED)) >= 0);
	CHECK_RC(zc_response_init(&resp, s, f, 0, 10, NULL, 4, b, 4), -EINVAL);
	CHECK_RC(zc_response_init(&resp, s, f, 0, 10, b, 4, NULL, 4), -EINVAL);
	CHECK_RC(zc_response_init(&resp, s, f, -5, 10, b, 4, b, 4), -EINVAL);
	CHECK_RC(zc_response_init(&resp, s, f, 0, (uint64_t)INT64_MAX + 1, b,
				  4, b, 4), -EINVAL);
	CHECK_RC(zc_response_init(&resp, s, -1, 0, ZC_TO_EOF, b, 4, b, 4),
		 -EBADF);
	CHECK_RC(zc_response_init(&resp, s, f, 0, 10, NULL, 0, NULL, 0), 0);
	close(s);
	close(r);
	close(f);
	h_ran++;
}

/*
 * ZC_TO_EOF with a pipe: total is unknown (ZC_TO_EOF) until the pipe ends.
 * The receiver reads with the sender still open, so bytes held back (a
 * MSG_MORE or cork never released) show up as missing.
 */
static void pipe_eof(int kind, size_t hlen, size_t plen, size_t tlen)
{
	unsigned char *h = h_pattern(hlen, 0, HSEED);
	unsigned char *t = h_pattern(tlen, 0, TSEED);
	unsigned char *want = expected(h, hlen, 0, plen, t, tlen), *got;
	size_t total = hlen + plen + tlen;
	struct zc_response resp;
	uint64_t now = 0, sum = 0;
	int p[2], s, r, rc, calls = 0;

	REQUIRE(h && t && want && (got = malloc(total + 1)));
	REQUIRE(pipe2(p, O_CLOEXEC) == 0);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	if (plen) {
		unsigned char *d = h_pattern(plen, 0, SEED);

		REQUIRE(d && h_write_all(p[1], d, plen) == 0);
		free(d);
	}
	close(p[1]);
	CHECK_RC(zc_response_init(&resp, s, p[0], ZC_FD_POSITION, ZC_TO_EOF,
				  hlen ? h : NULL, hlen, tlen ? t : NULL, tlen),
		 0);
	CHECK_EQ(resp.total, ZC_TO_EOF);
	do {
		rc = zc_response_send(&resp, ZC_WAIT_FOREVER, &now);
		sum += now;
		if (calls++ == 0 && rc != 0) {
			fprintf(stderr, "  pipe_eof(%s, %zu+%zu+%zu): first "
				"call %d (%s) after %llu bytes\n",
				h_kind_name(kind), hlen, plen, tlen, rc,
				h_errname(rc), (unsigned long long)now);
			CHECK_RC(rc, 0);
		}
	} while (rc == -EINTR && calls < 1000);
	CHECK_RC(rc, 0);
	CHECK_EQ(resp.total, total);
	CHECK_EQ(resp.sent, total);
	CHECK_EQ(sum, total);
	if (kind == 0)
		CHECK_EQ(cork(s), 0);
	/* everything must arrive while the sender is still open */
	if (kind == 0 && unsent(s) != 0)
		fprintf(stderr, "  pipe_eof(%s, %zu+%zu+%zu): %lld bytes held "
			"back after completion\n", h_kind_name(kind), hlen,
			plen, tlen, unsent(s));
	if (kind == 0)
		CHECK_EQ(unsent(s), 0);
	CHECK_EQ(h_recv_upto(r, got, total, 2000), total);
	CHECK_MEM(got, total, want, total);
	close(s);
	close(r);
	close(p[0]);
	free(got);
	free(want);
	free(h);
	free(t);
	h_ran++;
}

static void test_pipe(void)
{
	for (int kind = 0; kind < 2; kind++) {
		pipe_eof(kind, 100, 30000, 50);
		pipe_eof(kind, 100, 30000, 0);
		pipe_eof(kind, 0, 30000, 50);
		pipe_eof(kind, 100, 0, 50);
		pipe_eof(kind, 100, 0, 0);
	}
}

/*
 * Non-blocking, timeout 0: call, poll POLLOUT, call again, with a slow
 * reader; the bytes must be exact and the cork held until the end.
 */
static void nonblocking(int kind)
{
	const size_t hlen = 1000, fsize = 2 << 20, tlen = 500;
	unsigned char *h = h_pattern(hlen, 0, HSEED);
	unsigned char *t = h_pattern(tlen, 0, TSEED);
	unsigned char *want = expected(h, hlen, 0, fsize, t, tlen), *got;
	struct h_rx_opts o = { .chunk = 32768, .delay_us = 200 };
	struct zc_response resp;
	struct h_rx rx;
	size_t got_len;
	uint64_t now, sum = 0;
	int s, r, f, rc, again = 0, corked_while_paused = 1;

	REQUIRE(h && t && want);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(fsize, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	CHECK_RC(zc_response_init(&resp, s, f, 0, ZC_TO_EOF, h, hlen, t, tlen),
		 0);
	for (;;) {
		rc = zc_response_send(&resp, 0, &now);
		sum += now;
		CHECK_EQ(resp.sent, sum);
		if (rc != -EAGAIN)
			break;
		again++;
		if (kind == 0 && cork(s) != 1)
			corked_while_paused = 0;
		if (h_wait_out(s, 10000) <= 0) {
			H_REPORT("never writable again");
			break;
		}
	}
	CHECK_RC(rc, 0);
	CHECK(again > 0);
	CHECK(corked_while_paused);
	CHECK_EQ(sum, hlen + fsize + tlen);
	CHECK_EQ(resp.sent, resp.total);
	if (kind == 0)
		CHECK_EQ(cork(s), 0);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, want, hlen + fsize + tlen);
	free(got);
	free(want);
	free(h);
	free(t);
	close(f);
	h_ran++;
}

/* Peer resets mid-transfer: the error comes back and the cork is undone. */
static void peer_reset(int nonblock)
{
	const size_t fsize = 8 << 20;
	unsigned char h[100], t[50];
	struct h_rx_opts o = { .stop_after = 100000 };
	struct zc_response resp;
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t now = 0;
	int s, r, f, rc;

	h_fill(h, sizeof(h), 0, HSEED);
	h_fill(t, sizeof(t), 0, TSEED);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, nonblock) == 0);
	REQUIRE((f = h_temp_file(fsize, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	CHECK_RC(zc_response_init(&resp, s, f, 0, ZC_TO_EOF, h, sizeof(h), t,
				  sizeof(t)), 0);
	rc = zc_response_send(&resp, ZC_WAIT_FOREVER, &now);
	if (rc != -EPIPE && rc != -ECONNRESET)
		fprintf(stderr, "  peer_reset(nonblock=%d): %d (%s), "
			"TCP_CORK now %d\n", nonblock, rc, h_errname(rc),
			cork(s));
	CHECK(rc == -EPIPE || rc == -ECONNRESET);
	CHECK_EQ(cork(s), 0);
	CHECK_EQ(now, resp.sent);
	CHECK(resp.sent > sizeof(h) && resp.sent < resp.total);
	CHECK_RC(zc_response_end(&resp), 0);
	CHECK_EQ(cork(s), 0);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK(got_len <= resp.sent);
	want = expected(h, sizeof(h), 0, got_len, t, 0);
	REQUIRE(want);
	CHECK_MEM(got, got_len, want, got_len);
	free(got);
	free(want);
	close(s);
	close(f);
	h_ran++;
}

/* A cork the caller set stays set; the caller's uncork delivers it all. */
static void test_caller_cork(void)
{
	unsigned char h[100], t[50], *want, *got;
	struct zc_response resp;
	size_t total = sizeof(h) + 1000 + sizeof(t);
	uint64_t now = 0;
	int s, r, f;

	h_fill(h, sizeof(h), 0, HSEED);
	h_fill(t, sizeof(t), 0, TSEED);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE((f = h_temp_file(1000, SEED)) >= 0);
	REQUIRE(h_setopt_int(s, IPPROTO_TCP, TCP_CORK, 1) == 0);
	CHECK_RC(zc_response_init(&resp, s, f, 0, ZC_TO_EOF, h, sizeof(h), t,
				  sizeof(t)), 0);
	CHECK_RC(zc_response_send(&resp, ZC_WAIT_FOREVER, &now), 0);
	CHECK_EQ(now, total);
	CHECK_EQ(cork(s), 1);
	CHECK_RC(zc_response_end(&resp), 0);
	CHECK_EQ(cork(s), 1);
	REQUIRE(h_setopt_int(s, IPPROTO_TCP, TCP_CORK, 0) == 0);
	want = expected(h, sizeof(h), 0, 1000, t, sizeof(t));
	got = malloc(total);
	REQUIRE(want && got);
	CHECK_EQ(h_recv_upto(r, got, total, 2000), total);
	CHECK_MEM(got, total, want, total);
	free(got);
	free(want);
	close(s);
	close(r);
	close(f);
	h_ran++;
}

/*
 * TCP_NODELAY on, small header + file (+ trailer): the whole response must
 * leave as one segment, and arrive without the sender closing.
 */
static void one_segment(size_t tlen)
{
	unsigned char h[100], t[64], *want, *got;
	struct zc_response resp;
	size_t total = sizeof(h) + 1000 + tlen;
	long long before;
	uint64_t now = 0;
	int s, r, f;

	h_fill(h, sizeof(h), 0, HSEED);
	h_fill(t, sizeof(t), 0, TSEED);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE((f = h_temp_file(1000, SEED)) >= 0);
	REQUIRE(h_setopt_int(s, IPPROTO_TCP, TCP_NODELAY, 1) == 0);
	if ((before = segs_out(s)) < 0) {
		H_SKIP_CASE("no tcpi_data_segs_out");
		close(s);
		close(r);
		close(f);
		return;
	}
	CHECK_RC(zc_response_init(&resp, s, f, 0, ZC_TO_EOF, h, sizeof(h),
				  tlen ? t : NULL, tlen), 0);
	CHECK_RC(zc_response_send(&resp, ZC_WAIT_FOREVER, &now), 0);
	CHECK_EQ(now, total);
	want = expected(h, sizeof(h), 0, 1000, t, tlen);
	got = malloc(total);
	REQUIRE(want && got);
	CHECK_EQ(h_recv_upto(r, got, total, 2000), total);
	CHECK_MEM(got, total, want, total);
	if (segs_out(s) - before != 1)
		fprintf(stderr, "  one_segment(trailer %zu): %lld segments\n",
			tlen, segs_out(s) - before);
	CHECK_EQ(segs_out(s) - before, 1);
	CHECK_EQ(unsent(s), 0);
	CHECK_EQ(cork(s), 0);
	CHECK_EQ(h_getopt_int(s, IPPROTO_TCP, TCP_NODELAY), 1);
	free(got);
	free(want);
	close(s);
	close(r);
	close(f);
	h_ran++;
}

/*
 * zc_response_send_some(): each call stops near its budget (a header goes
 * whole, file bytes never past the budget), the pieces add up, and a known
 * range (or ZC_TO_EOF) ends with the exact bytes.
 */
static void budget(int kind, uint64_t count)
{
	const size_t hlen = 300, fsize = 1 << 20, tlen = 40;
	const uint64_t b = 64 * 1024;
	size_t flen = count == ZC_TO_EOF ? fsize : (size_t)count;
	unsigned char *h = h_pattern(hlen, 0, HSEED);
	unsigned char *t = h_pattern(tlen, 0, TSEED);
	unsigned char *want = expected(h, hlen, 0, flen, t, tlen), *got;
	struct zc_response resp;
	struct h_rx rx;
	size_t got_len;
	uint64_t now, sum = 0;
	int s, r, f, rc, more = 0;

	REQUIRE(h && t && want);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(fsize, SEED)) >= 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	CHECK_RC(zc_response_init(&resp, s, f, 0, count, h, hlen, t, tlen), 0);
	for (;;) {
		rc = zc_response_send_some(&resp, b, &now);
		sum += now;
		CHECK_EQ(resp.sent, sum);
		if (now > b + hlen)
			H_REPORT("one call sent %llu, budget %llu",
				 (unsigned long long)now, (unsigned long long)b);
		if (rc == ZC_RESPONSE_MORE) {
			more++;
			continue;
		}
		if (rc != -EAGAIN)
			break;
		if (h_wait_out(s, 10000) <= 0) {
			H_REPORT("never writable again");
			break;
		}
	}
	CHECK_RC(rc, 0);
	CHECK(more >= (int)(flen / b) - 1);
	CHECK_EQ(sum, hlen + flen + tlen);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, want, hlen + flen + tlen);
	free(got);
	free(want);
	free(h);
	free(t);
	close(f);
	h_ran++;
}

/* Header and trailer without file bytes: one sendmsg, any socket kind. */
static void header_and_trailer(int kind, int nonblock)
{
	const size_t hlen = 200, tlen = 3000;
	unsigned char *h = h_pattern(hlen, 0, HSEED);
	unsigned char *t = h_pattern(tlen, 0, TSEED);
	unsigned char *want = expected(h, hlen, 0, 0, t, tlen), *got;
	struct zc_response resp;
	struct h_rx rx;
	size_t got_len;
	uint64_t now;
	int s, r, rc;

	REQUIRE(h && t && want);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE(h_set_nonblock(s, nonblock) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	CHECK_RC(zc_response_init(&resp, s, -1, 0, 0, h, hlen, t, tlen), 0);
	CHECK_EQ(resp.total, hlen + tlen);
	do {
		rc = nonblock ? zc_response_send_some(&resp, UINT64_MAX, &now)
			      : zc_response_send(&resp, ZC_WAIT_FOREVER, &now);
		if (rc == -EAGAIN && h_wait_out(s, 10000) <= 0)
			break;
	} while (rc == -EAGAIN);
	CHECK_RC(rc, 0);
	CHECK_EQ(resp.sent, hlen + tlen);
	if (kind == 0)
		CHECK_EQ(segs_out(s), 1); /* both pieces in one segment */
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, want, hlen + tlen);
	free(got);
	free(want);
	free(h);
	free(t);
	h_ran++;
}

/* A source of unknown length (a pipe) sent with a budget: its end is the
 * response's end, not an error, even when it comes inside a budget. */
static void budget_pipe(void)
{
	const size_t hlen = 100, plen = 200000;
	unsigned char *h = h_pattern(hlen, 0, HSEED);
	unsigned char *data = h_pattern(plen, 0, SEED);
	unsigned char *want = malloc(hlen + plen), *got;
	struct zc_response resp;
	struct h_rx rx;
	size_t got_len;
	uint64_t now, sum = 0;
	int s, r, p[2], rc;
	pid_t w;

	REQUIRE(h && data && want);
	memcpy(want, h, hlen);
	memcpy(want + hlen, data, plen);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(pipe2(p, O_CLOEXEC) == 0);
	w = h_writer_start(p[1], data, plen);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	CHECK_RC(zc_response_init(&resp, s, p[0], ZC_FD_POSITION, ZC_TO_EOF, h,
				  hlen, NULL, 0), 0);
	for (;;) {
		rc = zc_response_send_some(&resp, 65536, &now);
		sum += now;
		if (rc == ZC_RESPONSE_MORE)
			continue;
		if (rc != -EAGAIN)
			break;
		if (h_wait_out(s, 10000) <= 0)
			break;
	}
	CHECK_RC(rc, 0);
	CHECK_EQ(sum, hlen + plen);
	CHECK_EQ(resp.total, hlen + plen);
	close(s);
	close(p[0]);
	CHECK_EQ(h_reap(w), 0);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, want, hlen + plen);
	free(got);
	free(want);
	free(data);
	free(h);
	h_ran++;
}

/* zc_response_bind_id(): a step after the first sends nothing once the
 * number names another socket, and goes on to the original one while it
 * still names it. */
static void bound_id(void)
{
	const size_t size = 4 << 20, hlen = 100;
	unsigned char probe[16], *got, *want, *head, *body;
	struct zc_response resp;
	struct zc_fd_id id;
	uint64_t now = 0, first;
	int s, r, b0, b1, f, rc;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_tcp_pair(&b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	head = h_pattern(hlen, 0, HSEED);
	REQUIRE(zc_fd_id_get(s, &id) == 0);
	REQUIRE(zc_response_init(&resp, s, f, 0, size, head, hlen, NULL, 0) == 0);
	CHECK_EQ(zc_response_bind_id(&resp, &id), 0);
	CHECK_RC(zc_response_send(&resp, 0, &now), -EAGAIN);
	CHECK(resp.sent > hlen && resp.sent < hlen + size);
	got = malloc(hlen + size);
	REQUIRE(got != NULL);
	first = resp.sent;
	CHECK_EQ(h_recv_upto(r, got, first, 5000), first);
	/* the same socket under the number: it goes on */
	rc = zc_response_send(&resp, 0, &now);
	CHECK(rc == 0 || rc == -EAGAIN);
	CHECK(resp.sent > first);
	CHECK_EQ(now, resp.sent - first);
	/* closed by another thread, the number reused: nothing is sent */
	REQUIRE(dup2(b0, s) == s);
	now = 1;
	CHECK_RC(zc_response_send(&resp, 0, &now), -EBADF);
	CHECK_EQ(now, 0);
	CHECK_EQ(recv(b1, probe, sizeof(probe), MSG_DONTWAIT), -1);
	close(s);
	/* the original peer got exactly the bytes counted, in order */
	CHECK_EQ(h_recv_upto(r, got + first, hlen + size - first, 5000),
		 resp.sent - first);
	want = h_pattern(size, 0, SEED);
	body = got + hlen;
	CHECK_MEM(got, hlen, head, hlen);
	CHECK_MEM(body, resp.sent - hlen, want, resp.sent - hlen);
	free(got);
	free(want);
	free(head);
	close(r);
	close(b0);
	close(b1);
	close(f);
	h_ran++;
}

/* A bound response whose number changed hands never touches the new
 * socket's cork: not when a step finds it, not at zc_response_end(). */
static void bound_id_cork(void)
{
	const size_t size = 4 << 20;
	unsigned char head[64] = "H", tail[16] = "T";
	struct zc_response resp;
	struct zc_fd_id id;
	uint64_t now = 0;
	int s, r, b0, b1, f, on = 1;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_tcp_pair(&b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(zc_fd_id_get(s, &id) == 0);
	REQUIRE(zc_response_init(&resp, s, f, 0, size, head, sizeof(head),
				 tail, sizeof(tail)) == 0);
	zc_response_bind_id(&resp, &id);
	CHECK_RC(zc_response_send(&resp, 0, &now), -EAGAIN); /* corked */
	CHECK_EQ(cork(s), 1);
	/* another thread closes the number; its new owner corks */
	REQUIRE(setsockopt(b0, IPPROTO_TCP, TCP_CORK, &on, sizeof(on)) == 0);
	REQUIRE(dup2(b0, s) == s);
	CHECK_RC(zc_response_send(&resp, 0, &now), -EBADF);
	CHECK_EQ(cork(s), 1);
	CHECK_EQ(zc_response_end(&resp), 0);
	CHECK_EQ(cork(s), 1);
	CHECK_EQ(cork(b0), 1);
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
	test_shapes();
	test_init_errors();
	test_pipe();
	nonblocking(0);
	nonblocking(1);
	peer_reset(0);
	peer_reset(1);
	test_caller_cork();
	one_segment(0);
	one_segment(30);
	budget_pipe();
	bound_id();
	bound_id_cork();
	for (int kind = 0; kind < 2; kind++) {
		budget(kind, 1 << 20);
		budget(kind, 100000);
		budget(kind, ZC_TO_EOF);
		header_and_trailer(kind, 0);
		header_and_trailer(kind, 1);
	}
	return h_result("test_response");
}
