/* SPDX-License-Identifier: MIT */
/* Relays and the proxy: byte-exact both ways, half-closes, resets, many. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <dirent.h>
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

/* ---- proxy ----------------------------------------------------------------- */

static int tcp_listener(struct sockaddr_in *addr)
{
	socklen_t len = sizeof(*addr);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || bind(l, (struct sockaddr *)addr, sizeof(*addr)) < 0 ||
	    listen(l, 512) < 0 ||
	    getsockname(l, (struct sockaddr *)addr, &len) < 0)
		return -1;
	return l;
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
	static struct zc_relay slots[8]; /* fewer than clients: backlog */
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
			      sizeof(taddr), slots, 8) == 0);
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
		CHECK(px.active <= 8);
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

int main(void)
{
	h_init(150);
	test_relays();
	test_resets();
	test_loop_control();
	test_proxy();
	return h_result("test_relay");
}
