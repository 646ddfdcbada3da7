/* SPDX-License-Identifier: MIT */
/* zc_cork_begin()/zc_cork_end(): TCP_CORK set and restored, nothing else. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <linux/tcp.h> /* struct tcp_info with tcpi_data_segs_out */

static int cork(int s)
{
	return h_getopt_int(s, IPPROTO_TCP, TCP_CORK);
}

static int nodelay(int s)
{
	return h_getopt_int(s, IPPROTO_TCP, TCP_NODELAY);
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

/* Set and restored; TCP_NODELAY keeps whatever value it had. */
static void test_set_restore(int nd)
{
	struct zc_cork_state st;
	int s, r;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_setopt_int(s, IPPROTO_TCP, TCP_NODELAY, nd) == 0);
	CHECK_EQ(cork(s), 0);
	CHECK_RC(zc_cork_begin(s, &st), 0);
	CHECK_EQ(cork(s), 1);
	CHECK_EQ(nodelay(s), nd);
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(cork(s), 0);
	CHECK_EQ(nodelay(s), nd);
	/* twice is harmless */
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(cork(s), 0);
	/* and a state can be reused */
	CHECK_RC(zc_cork_begin(s, &st), 0);
	CHECK_EQ(cork(s), 1);
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(cork(s), 0);
	CHECK_EQ(nodelay(s), nd);
	close(s);
	close(r);
	h_ran++;
}

/* A cork the caller set is the caller's: begin and end leave it set. */
static void test_caller_cork(void)
{
	struct zc_cork_state st;
	int s, r;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_setopt_int(s, IPPROTO_TCP, TCP_CORK, 1) == 0);
	CHECK_RC(zc_cork_begin(s, &st), 0);
	CHECK_EQ(cork(s), 1);
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(cork(s), 1);
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(cork(s), 1);
	CHECK_EQ(nodelay(s), 0);
	close(s);
	close(r);
	h_ran++;
}

/* Corked bytes are held back; zc_cork_end() pushes them out at once. */
static void test_push(void)
{
	struct zc_cork_state st;
	unsigned char buf[100], want[100];
	long long before, held;
	int s, r;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_fill(want, sizeof(want), 0, 3);
	if ((before = segs_out(s)) < 0) {
		H_SKIP_CASE("no tcpi_data_segs_out");
		close(s);
		close(r);
		return;
	}
	CHECK_RC(zc_cork_begin(s, &st), 0);
	CHECK_EQ(send(s, want, 40, MSG_NOSIGNAL), 40);
	CHECK_EQ(send(s, want + 40, 60, MSG_NOSIGNAL), 60);
	held = segs_out(s);
	CHECK_EQ(held, before); /* held back (the cork timer is 200 ms) */
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(h_recv_upto(r, buf, sizeof(buf), 5000), sizeof(buf));
	CHECK_MEM(buf, sizeof(buf), want, sizeof(want));
	CHECK_EQ(segs_out(s) - before, 1); /* one segment for both sends */
	close(s);
	close(r);
	h_ran++;
}

/* Not TCP: nothing to do, and success. */
static void test_not_tcp(void)
{
	struct zc_cork_state st;
	unsigned char b[3];
	int s, r, u;

	REQUIRE(h_unix_pair(&s, &r) == 0);
	CHECK_RC(zc_cork_begin(s, &st), 0);
	CHECK_EQ(send(s, "abc", 3, MSG_NOSIGNAL), 3);
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_RC(zc_cork_end(s, &st), 0);
	CHECK_EQ(h_recv_upto(r, b, 3, 5000), 3);
	CHECK(memcmp(b, "abc", 3) == 0);
	close(s);
	close(r);
	u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	REQUIRE(u >= 0);
	CHECK_RC(zc_cork_begin(u, &st), 0);
	CHECK_RC(zc_cork_end(u, &st), 0);
	close(u);
	/* a bad descriptor is an error, not a silent success */
	CHECK_RC(zc_cork_begin(u, &st), -EBADF);
	h_ran++;
}

int main(void)
{
	h_init(20);
	test_set_restore(0);
	test_set_restore(1);
	test_caller_cork();
	test_push();
	test_not_tcp();
	return h_result("test_cork");
}
