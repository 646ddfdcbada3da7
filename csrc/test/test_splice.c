/* SPDX-License-Identifier: MIT */
/* The pipe pool and zc_splice(): every transfer's bytes are checked. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/time.h>

#define SEED 11

static int fd_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
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
	return n - 1; /* the directory's own fd */
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/* The whole content of fd (from offset 0) in a malloc'd buffer. */
static unsigned char *slurp(int fd, size_t *len)
{
	struct stat st;
	unsigned char *b;

	*len = 0;
	if (fstat(fd, &st) < 0)
		return NULL;
	b = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (b && pread(fd, b, (size_t)st.st_size, 0) == st.st_size)
		*len = (size_t)st.st_size;
	return b;
}

/* ---- pool ---------------------------------------------------------------- */

static void test_pool_reuse_and_bounds(void)
{
	struct zc_pipe slots[2];
	struct zc_pipe_pool pool;
	struct zc_pipe p[3];
	int fds_before = count_fds(), first_r;

	REQUIRE(zc_pipe_pool_init(&pool, slots, 2, ZC_PIPE_SIZE) == 0);
	CHECK_RC(zc_pipe_pool_init(&pool, NULL, 2, ZC_PIPE_SIZE), -EINVAL);
	REQUIRE(zc_pipe_pool_init(&pool, slots, 2, ZC_PIPE_SIZE) == 0);
	REQUIRE(zc_pipe_get(&pool, &p[0]) == 0);
	CHECK_EQ(pool.created, 1);
	CHECK_EQ(p[0].buffered, 0);
	CHECK(fcntl(p[0].rfd, F_GETFL) & O_NONBLOCK);
	CHECK(fcntl(p[0].wfd, F_GETFD) & FD_CLOEXEC);
	/* grown to 1 MiB unless the system forbids it (then counted) */
	if (p[0].size != ZC_PIPE_SIZE)
		CHECK_EQ(pool.small, 1);
	CHECK_EQ(p[0].size, fcntl(p[0].wfd, F_GETPIPE_SZ));
	first_r = p[0].rfd;
	zc_pipe_put(&pool, &p[0]);
	CHECK_EQ(p[0].rfd, -1);
	CHECK(fd_open(first_r)); /* pooled, not closed */
	REQUIRE(zc_pipe_get(&pool, &p[0]) == 0);
	CHECK_EQ(p[0].rfd, first_r);
	CHECK_EQ(pool.reused, 1);

	/* a pipe that holds data is closed, never pooled */
	CHECK_EQ(write(p[0].wfd, "xyz", 3), 3);
	p[0].buffered = 3;
	zc_pipe_put(&pool, &p[0]);
	CHECK(!fd_open(first_r));
	CHECK_EQ(pool.discarded, 1);

	/* bounded: the third idle pipe is closed */
	for (int i = 0; i < 3; i++)
		REQUIRE(zc_pipe_get(&pool, &p[i]) == 0);
	for (int i = 0; i < 3; i++)
		zc_pipe_put(&pool, &p[i]);
	CHECK_EQ(pool.discarded, 2);
	CHECK_EQ(count_fds(), fds_before + 4);
	zc_pipe_put(&pool, &p[0]); /* already given back: ignored */
	zc_pipe_pool_destroy(&pool);
	CHECK_EQ(count_fds(), fds_before);

	/* no pool: a fresh pipe, closed on put */
	REQUIRE(zc_pipe_get(NULL, &p[0]) == 0);
	zc_pipe_put(NULL, &p[0]);
	CHECK_EQ(count_fds(), fds_before);
	h_ran++;
}

/* A socket -> file transfer through a pipe from pool; checks the bytes. */
static int transfer_via(struct zc_pipe_pool *pool, size_t len, unsigned seed)
{
	unsigned char *data = h_pattern(len, 0, seed), *got;
	struct zc_pipe p;
	uint64_t moved = 0;
	size_t got_len;
	int s, r, f, rc, ok;
	char path[] = "/tmp/zc-test-XXXXXX";

	if (!data || h_pair(0, &s, &r) < 0)
		return -1;
	f = mkstemp(path);
	if (f < 0)
		return -1;
	unlink(path);
	h_writer_start(s, data, len);
	if (zc_pipe_get(pool, &p) < 0)
		return -1;
	rc = zc_splice(r, NULL, f, NULL, ZC_TO_EOF, &p, ZC_WAIT_FOREVER, &moved);
	zc_pipe_put(pool, &p);
	close(r);
	got = slurp(f, &got_len);
	ok = rc == 0 && moved == len && got && got_len == len &&
	     memcmp(got, data, len) == 0;
	free(got);
	free(data);
	close(f);
	while (wait(NULL) > 0)
		;
	return ok ? 0 : -1;
}

/*
 * F_SETPIPE_SZ failing: an unprivileged process asking for more than
 * pipe-max-size gets EPERM.  A child drops root first (CAP_SYS_RESOURCE
 * ignores the limit), then the pool must keep the default pipes, count
 * them, and still move every byte.
 */
static void test_pool_resize_failure(void)
{
	long max = read_long("/proc/sys/fs/pipe-max-size");
	pid_t pid;

	if (max <= 0) {
		H_SKIP_CASE("no /proc/sys/fs/pipe-max-size");
		return;
	}
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		struct zc_pipe slots[2];
		struct zc_pipe_pool pool;
		struct zc_pipe p;

		h_child_setup();
		if (geteuid() == 0 &&
		    (setresgid(65534, 65534, 65534) < 0 ||
		     setresuid(65534, 65534, 65534) < 0))
			_exit(77);
		zc_pipe_pool_init(&pool, slots, 2, (size_t)max * 4);
		if (zc_pipe_get(&pool, &p) < 0)
			_exit(2);
		if (p.size >= (size_t)max * 4 || pool.small != 1)
			_exit(3);
		zc_pipe_put(&pool, &p);
		for (int i = 0; i < 3; i++)
			if (transfer_via(&pool, 3 << 20, SEED + (unsigned)i) < 0)
				_exit(4);
		if (pool.created != 1 || pool.reused != 3)
			_exit(5);
		zc_pipe_pool_destroy(&pool);
		_exit(0);
	}
	{
		int status = 0;

		waitpid(pid, &status, 0);
		if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
			H_SKIP_CASE("cannot drop root to uid 65534");
			return;
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			H_REPORT("resize-failure child: status %#x", status);
	}
	h_ran++;
}

/* ---- socket -> file (recvfile) ---------------------------------------- */

static void recv_to_file(int kind, size_t len, int64_t offset)
{
	unsigned char *data = h_pattern(len, 0, SEED), *got;
	struct zc_pipe_pool pool;
	struct zc_pipe slot, p;
	int64_t off = offset;
	uint64_t moved = 0;
	size_t got_len;
	int s, r, f;

	REQUIRE(data);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE((f = h_temp_file(100, SEED + 1)) >= 0);
	REQUIRE(lseek(f, 7, SEEK_SET) == 7);
	REQUIRE(h_writer_start(s, data, len) > 0);
	zc_pipe_pool_init(&pool, &slot, 1, ZC_PIPE_SIZE);
	REQUIRE(zc_pipe_get(&pool, &p) == 0);
	CHECK_RC(zc_splice(r, NULL, f, &off, ZC_TO_EOF, &p, ZC_WAIT_FOREVER,
			   &moved), 0);
	CHECK_EQ(moved, len);
	CHECK_EQ(off, offset + (int64_t)len);
	CHECK_EQ(h_tell(f), 7); /* explicit offset: position untouched */
	CHECK_EQ(p.buffered, 0);
	zc_pipe_put(&pool, &p);
	CHECK_EQ(pool.discarded, 0);
	got = slurp(f, &got_len);
	REQUIRE(got);
	CHECK_EQ(got_len, (size_t)offset + len > 100 ? (size_t)offset + len : 100);
	CHECK_MEM(got + offset, len, data, len);
	if (offset >= 7) {
		unsigned char *head = h_pattern(7, 0, SEED + 1);

		CHECK_MEM(got, 7, head, 7); /* bytes before offset kept */
		free(head);
	}
	while (wait(NULL) > 0)
		;
	free(got);
	free(data);
	close(r);
	close(f);
	zc_pipe_pool_destroy(&pool);
	h_ran++;
}

static void test_recv_to_file(void)
{
	for (int kind = 0; kind < 2; kind++) {
		recv_to_file(kind, 5 << 20, 0);
		recv_to_file(kind, 100000, 4096 + 3);
		recv_to_file(kind, 0, 0);
		recv_to_file(kind, 1, 50);
	}
}

/* The peer sends less than count: -ENODATA, moved says what arrived. */
static void test_short_peer(void)
{
	for (int kind = 0; kind < 2; kind++) {
		unsigned char *data = h_pattern(300000, 0, SEED), *got;
		struct zc_pipe p;
		uint64_t moved = 0;
		size_t got_len;
		int s, r, f;
		char path[] = "/tmp/zc-test-XXXXXX";

		REQUIRE(h_pair(kind, &s, &r) == 0);
		REQUIRE((f = mkstemp(path)) >= 0);
		unlink(path);
		REQUIRE(h_writer_start(s, data, 300000) > 0);
		REQUIRE(zc_pipe_get(NULL, &p) == 0);
		CHECK_RC(zc_splice(r, NULL, f, NULL, 1000000, &p,
				   ZC_WAIT_FOREVER, &moved), -ENODATA);
		CHECK_EQ(moved, 300000);
		CHECK_EQ(h_tell(f), 300000); /* fd position advanced */
		zc_pipe_put(NULL, &p);
		got = slurp(f, &got_len);
		CHECK_MEM(got, got_len, data, 300000);
		while (wait(NULL) > 0)
			;
		free(got);
		free(data);
		close(r);
		close(f);
		h_ran++;
	}
}

/* O_APPEND refuses splice: the bytes are copied, in order. */
static void test_append_file(void)
{
	unsigned char *data = h_pattern(400000, 0, SEED), *got;
	char path[] = "/tmp/zc-test-XXXXXX";
	struct zc_pipe p;
	uint64_t moved = 0;
	size_t got_len;
	int s, r, f, fa;

	REQUIRE(h_pair(0, &s, &r) == 0);
	REQUIRE((f = mkstemp(path)) >= 0);
	REQUIRE(write(f, "head", 4) == 4);
	REQUIRE((fa = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)) >= 0);
	unlink(path);
	REQUIRE(h_writer_start(s, data, 400000) > 0);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	CHECK_RC(zc_splice(r, NULL, fa, NULL, ZC_TO_EOF, &p, ZC_WAIT_FOREVER,
			   &moved), 0);
	CHECK_EQ(moved, 400000);
	zc_pipe_put(NULL, &p);
	got = slurp(f, &got_len);
	CHECK_EQ(got_len, 400004);
	CHECK(got && memcmp(got, "head", 4) == 0);
	CHECK_MEM(got + 4, got_len - 4, data, 400000);
	while (wait(NULL) > 0)
		;
	free(got);
	free(data);
	close(r);
	close(f);
	close(fa);
	h_ran++;
}

/* ---- file -> socket, pipe -> socket, socket -> pipe --------------------- */

static void test_file_to_socket(void)
{
	for (int kind = 0; kind < 2; kind++) {
		const size_t size = 3000000;
		struct h_rx rx;
		struct zc_pipe p;
		unsigned char *got, *want;
		size_t got_len;
		int64_t off = 12345;
		uint64_t moved = 0;
		int s, r, f;

		REQUIRE(h_pair(kind, &s, &r) == 0);
		REQUIRE((f = h_temp_file(size, SEED)) >= 0);
		REQUIRE(h_rx_start(&rx, r, NULL) == 0);
		REQUIRE(zc_pipe_get(NULL, &p) == 0);
		CHECK_RC(zc_splice(f, &off, s, NULL, 2000000, &p,
				   ZC_WAIT_FOREVER, &moved), 0);
		CHECK_EQ(moved, 2000000);
		CHECK_EQ(off, 12345 + 2000000);
		/* the rest, from the fd position this time */
		REQUIRE(lseek(f, off, SEEK_SET) == off);
		CHECK_RC(zc_splice(f, NULL, s, NULL, ZC_TO_EOF, &p,
				   ZC_WAIT_FOREVER, &moved), 0);
		CHECK_EQ(moved, size - 12345);
		CHECK_EQ(h_tell(f), size);
		zc_pipe_put(NULL, &p);
		close(s);
		CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
		want = h_pattern(size - 12345, 12345, SEED);
		CHECK_MEM(got, got_len, want, size - 12345);
		free(got);
		free(want);
		close(f);
		h_ran++;
	}
}

static void test_pipe_ends(void)
{
	for (int kind = 0; kind < 2; kind++) {
		const size_t size = 2500000;
		unsigned char *data = h_pattern(size, 0, SEED), *got;
		size_t got_len;
		struct h_rx rx;
		uint64_t moved = 0;
		int pp[2], s, r, f;
		char path[] = "/tmp/zc-test-XXXXXX";

		/* pipe -> socket, no pool pipe needed */
		REQUIRE(pipe2(pp, O_CLOEXEC) == 0);
		REQUIRE(h_pair(kind, &s, &r) == 0);
		REQUIRE(h_rx_start(&rx, r, NULL) == 0);
		REQUIRE(h_writer_start(pp[1], data, size) > 0);
		/* a short count to a blocking socket gives -EINTR (the
		 * kernel does cut one short now and then without a signal):
		 * the documented answer is to call again */
		{
			int rc = -EINTR;

			for (int i = 0; i < 1000 && rc == -EINTR; i++)
				rc = zc_splice(pp[0], NULL, s, NULL, ZC_TO_EOF,
					       NULL, ZC_WAIT_FOREVER, &moved);
			CHECK_RC(rc, 0);
		}
		CHECK_EQ(moved, size);
		close(pp[0]);
		close(s);
		CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
		CHECK_MEM(got, got_len, data, size);
		free(got);

		/* socket -> pipe -> file (the pipe is the caller's) */
		REQUIRE(pipe2(pp, O_CLOEXEC) == 0);
		REQUIRE(h_pair(kind, &s, &r) == 0);
		REQUIRE((f = mkstemp(path)) >= 0);
		unlink(path);
		REQUIRE(h_writer_start(s, data, size) > 0);
		moved = 0;
		{
			pid_t pid = fork();

			REQUIRE(pid >= 0);
			if (pid == 0) { /* drains the pipe into the file */
				uint64_t n = 0;
				int keep[2] = { pp[0], f };

				h_child_setup();
				h_close_except(keep, 2);
				_exit(zc_splice(pp[0], NULL, f, NULL, ZC_TO_EOF,
						NULL, ZC_WAIT_FOREVER, &n) == 0 &&
				      n == size ? 0 : 1);
			}
			close(pp[0]);
			CHECK_RC(zc_splice(r, NULL, pp[1], NULL, ZC_TO_EOF, NULL,
					   ZC_WAIT_FOREVER, &moved), 0);
			CHECK_EQ(moved, size);
			close(pp[1]);
			CHECK(h_reap(pid) == 0);
		}
		while (wait(NULL) > 0)
			;
		got = slurp(f, &got_len);
		CHECK_MEM(got, got_len, data, size);
		free(got);
		free(data);
		close(r);
		close(f);
		h_ran++;
	}
}

/* Neither fd a pipe and no pipe given: -EINVAL, nothing moved. */
static void test_bad_args(void)
{
	uint64_t moved = 0;
	int64_t neg = -5;
	int s, r;

	REQUIRE(h_pair(1, &s, &r) == 0);
	CHECK_RC(zc_splice(r, NULL, s, NULL, 10, NULL, 0, &moved), -EINVAL);
	CHECK_RC(zc_splice(r, &neg, s, NULL, 10, NULL, 0, &moved), -EINVAL);
	CHECK_EQ(moved, 0);
	close(s);
	close(r);
	h_ran++;
}

/* ---- waits, signals, errors -------------------------------------------- */

static void on_alarm(int sig)
{
	(void)sig;
}

static void test_timeouts_and_eintr(void)
{
	struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART */
	struct itimerval it = { .it_value = { .tv_usec = 100000 } };
	struct zc_pipe p;
	uint64_t moved = 0;
	int s, r, f;
	char path[] = "/tmp/zc-test-XXXXXX";

	REQUIRE(h_pair(0, &s, &r) == 0);
	REQUIRE((f = mkstemp(path)) >= 0);
	unlink(path);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	{
		/* the direct route (no via): an empty pipe, its writer
		 * open, a writable socket: the wait is for the pipe */
		int pp[2];

		REQUIRE(pipe2(pp, O_CLOEXEC | O_NONBLOCK) == 0);
		CHECK_RC(zc_splice(pp[0], NULL, s, NULL, 10, NULL, 30, &moved),
			 -ETIMEDOUT);
		CHECK_RC(zc_splice(pp[0], NULL, s, NULL, 10, NULL, 0, &moved),
			 -EAGAIN);
		CHECK_EQ(moved, 0);
		close(pp[0]);
		close(pp[1]);
	}
	REQUIRE(h_set_nonblock(r, 1) == 0);
	CHECK_RC(zc_splice(r, NULL, f, NULL, 10, &p, 0, &moved), -EAGAIN);
	CHECK_RC(zc_splice(r, NULL, f, NULL, 10, &p, 30, &moved), -ETIMEDOUT);
	CHECK_EQ(moved, 0);

	/* blocked (in poll or in the kernel): a signal returns -EINTR */
	sigaction(SIGALRM, &sa, NULL);
	for (int blocking = 0; blocking < 2; blocking++) {
		REQUIRE(h_set_nonblock(r, !blocking) == 0);
		REQUIRE(send(s, "abc", 3, 0) == 3);
		moved = 0;
		setitimer(ITIMER_REAL, &it, NULL);
		CHECK_RC(zc_splice(r, NULL, f, NULL, 10, &p, ZC_WAIT_FOREVER,
				   &moved), -EINTR);
		CHECK_EQ(moved, 3);
		/* resume: the rest arrives and the call finishes */
		REQUIRE(send(s, "defghij", 7, 0) == 7);
		CHECK_RC(zc_splice(r, NULL, f, NULL, 10 - moved, &p,
				   ZC_WAIT_FOREVER, &moved), 0);
		CHECK_EQ(moved, 10);
	}
	signal(SIGALRM, SIG_DFL);
	alarm(60);
	zc_pipe_put(NULL, &p);
	{
		size_t len;
		unsigned char *got = slurp(f, &len);

		CHECK_MEM(got, len, "abcdefghijabcdefghij", 20);
		free(got);
	}
	close(s);
	close(r);
	close(f);
	h_ran++;
}

/* Bytes a pipe holds, by the kernel's count. */
static int pipe_count(int fd)
{
	int n = -1;

	return ioctl(fd, FIONREAD, &n) == 0 ? n : -1;
}

/*
 * The destination stalls with bytes read into the pipe: the call times
 * out, the seekable source takes them back (its explicit offset, or its own
 * position, is at the bytes delivered) and the pipe is empty, so a call
 * resumed there delivers the file intact.  (This was Python policy; a C
 * caller gets it now.)
 */
static void give_back(int by_position)
{
	const size_t size = 4 << 20;
	struct h_rx_opts o = { .stall_ms = 20000 };
	unsigned char *got, *want;
	struct h_rx rx;
	struct zc_pipe p;
	uint64_t moved = 0;
	int64_t off = 0, *offp = by_position ? NULL : &off;
	size_t got_len;
	int s, r, f;

	REQUIRE(h_pair(0, &s, &r) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	CHECK_RC(zc_splice(f, offp, s, NULL, size, &p, 100, &moved), -ETIMEDOUT);
	CHECK(moved > 0 && moved < size);
	CHECK_EQ(p.buffered, 0);
	CHECK_EQ(pipe_count(p.rfd), 0);
	if (by_position) {
		CHECK_EQ(h_tell(f), moved);
	} else {
		CHECK_EQ(off, moved);
		CHECK_EQ(h_tell(f), 0);
	}
	h_rx_go(&rx);
	CHECK_RC(zc_splice(f, offp, s, NULL, size - moved, &p, ZC_WAIT_FOREVER,
			   &moved), 0);
	CHECK_EQ(moved, size);
	zc_pipe_put(NULL, &p);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

/*
 * A non-blocking destination (timeout 0) that fills up: what was read into
 * the pipe is delivered anyway (the call waits for it), then -EAGAIN with
 * the pipe empty and the offset at the bytes delivered.  Driven to the end
 * by polling, the stream arrives intact.
 */
static void test_nonblocking_destination(void)
{
	const size_t size = 3 << 20;
	struct h_rx_opts o = { .chunk = 16384, .delay_us = 1000 };
	unsigned char *got, *want;
	struct h_rx rx;
	struct zc_pipe p;
	uint64_t moved = 0;
	int64_t off = 0;
	size_t got_len;
	int s, r, f, rc = -EAGAIN, again = 0;

	REQUIRE(h_pair(0, &s, &r) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	for (int i = 0; i < 100000 && rc == -EAGAIN; i++) {
		rc = zc_splice(f, &off, s, NULL, size - moved, &p, 0, &moved);
		CHECK_EQ(p.buffered, 0);
		CHECK_EQ(off, moved);
		if (rc == -EAGAIN) {
			again++;
			h_wait_out(s, 5000);
		}
	}
	CHECK_RC(rc, 0);
	CHECK(again > 0);
	CHECK_EQ(moved, size);
	zc_pipe_put(NULL, &p);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

/*
 * A socket source cannot take bytes back: after a timeout they stay in the
 * pipe (p.buffered) and moved counts only what was delivered.  resume: the
 * same pipe delivers them first and the stream is intact.  Otherwise the
 * destination breaks (RST): the error comes back, and the pipe, still
 * holding bytes, is closed when put back, never pooled.
 */
static void socket_source_keeps_bytes(int resume)
{
	const size_t size = 2 << 20;
	unsigned char *data = h_pattern(size, 0, SEED), *got;
	struct h_rx_opts o = { .stall_ms = 20000 };
	struct zc_pipe slot, p;
	struct zc_pipe_pool pool;
	struct h_rx rx;
	uint64_t moved = 0;
	size_t got_len;
	int a, b, s, r, rc, rfd;
	pid_t w;

	REQUIRE(data);
	REQUIRE(h_unix_pair(&a, &b) == 0);
	REQUIRE(h_pair(0, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((w = h_writer_start(a, data, size)) > 0);
	if (resume)
		REQUIRE(h_rx_start(&rx, r, &o) == 0);
	zc_pipe_pool_init(&pool, &slot, 1, ZC_PIPE_SIZE);
	REQUIRE(zc_pipe_get(&pool, &p) == 0);
	rfd = p.rfd;
	CHECK_RC(zc_splice(b, NULL, s, NULL, size, &p, 100, &moved), -ETIMEDOUT);
	CHECK(p.buffered > 0);
	CHECK_EQ(pipe_count(p.rfd), p.buffered);
	CHECK(moved < size);
	if (resume) {
		h_rx_go(&rx);
		CHECK_RC(zc_splice(b, NULL, s, NULL, size - moved, &p,
				   ZC_WAIT_FOREVER, &moved), 0);
		CHECK_EQ(moved, size);
		close(s);
		CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
		CHECK_MEM(got, got_len, data, size);
		free(got);
		zc_pipe_put(&pool, &p);
		CHECK_EQ(pool.discarded, 0);
	} else {
		close(r); /* unread data: RST */
		rc = zc_splice(b, NULL, s, NULL, size - moved, &p,
			       ZC_WAIT_FOREVER, &moved);
		CHECK(rc == -ECONNRESET || rc == -EPIPE);
		CHECK(moved < size);
		CHECK(p.buffered > 0);
		zc_pipe_put(&pool, &p);
		CHECK(!fd_open(rfd));
		CHECK_EQ(pool.discarded, 1);
		close(s);
	}
	close(b);
	h_reap(w);
	zc_pipe_pool_destroy(&pool);
	free(data);
	h_ran++;
}

static void test_bytes_in_the_pipe(void)
{
	give_back(0);
	give_back(1);
	test_nonblocking_destination();
	socket_source_keeps_bytes(1);
	socket_source_keeps_bytes(0);
}

/* ---- a socket's fd replaced by another thread during a wait ------------- */

struct replacer {
	int sock;     /* our fd number, replaced by the thread */
	int new_sock; /* the socket that takes over the number */
	int new_peer; /* writes to the new socket after the switch (or -1) */
	int old_peer; /* wakes our wait after the switch: drains or writes */
	int old_writes;
};

static void *replace_fd(void *arg)
{
	struct replacer *rp = arg;
	unsigned char buf[65536];
	long long end;

	usleep(100 * 1000); /* the transfer is waiting by now */
	/* close + reuse of the number, in one step */
	if (dup2(rp->new_sock, rp->sock) < 0)
		return NULL;
	if (rp->new_peer >= 0)
		(void)!write(rp->new_peer, "EVIL", 4);
	if (rp->old_writes) {
		(void)!write(rp->old_peer, "late", 4);
		return NULL;
	}
	end = h_now_ms() + 500;
	while (h_now_ms() < end) {
		struct pollfd p = { .fd = rp->old_peer, .events = POLLIN };

		if (poll(&p, 1, 50) > 0 && read(rp->old_peer, buf, sizeof(buf)) <= 0)
			break;
	}
	return NULL;
}

/*
 * Regression (issue 8.1, splice): a server thread closes a connection that
 * zc_splice() waits on and accept() hands the number to a new client.  file
 * -> socket: -EBADF, not a byte to the new client, and the file's offset at
 * the bytes delivered.
 */
static void dst_replaced_during_wait(int kind)
{
	const size_t size = 8 << 20;
	struct replacer rp;
	struct zc_pipe p;
	pthread_t t;
	uint64_t moved = 0;
	int64_t off = 0;
	unsigned char probe[16];
	int s, r, b0, b1, f, rc;

	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE(h_pair(kind, &b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	rp = (struct replacer){ .sock = s, .new_sock = b0, .new_peer = -1,
				.old_peer = r };
	REQUIRE(pthread_create(&t, NULL, replace_fd, &rp) == 0);
	rc = zc_splice(f, &off, s, NULL, size, &p, 5000, &moved);
	pthread_join(t, NULL);
	CHECK_RC(rc, -EBADF);
	CHECK(moved > 0 && moved < size);
	CHECK_EQ(off, moved);
	CHECK_EQ(p.buffered, 0);
	CHECK_EQ(recv(b1, probe, sizeof(probe), MSG_DONTWAIT), -1);
	CHECK_EQ(errno, EAGAIN); /* the new client got nothing */
	zc_pipe_put(NULL, &p);
	close(s); /* now b0's socket */
	close(b0);
	close(b1);
	close(r);
	close(f);
	h_ran++;
}

/* socket -> file (via a pipe) or -> pipe (direct): -EBADF, and the new
 * client's bytes are neither read nor written anywhere. */
static void src_replaced_during_wait(int kind, int direct)
{
	struct replacer rp;
	struct zc_pipe p;
	pthread_t t;
	uint64_t moved = 0;
	char buf[16];
	int a, r, b0, b1, out, pp[2] = { -1, -1 }, rc;
	char path[] = "/tmp/zc-test-XXXXXX";

	REQUIRE(h_pair(kind, &a, &r) == 0);
	REQUIRE(h_pair(kind, &b0, &b1) == 0);
	REQUIRE(h_set_nonblock(r, 1) == 0);
	if (direct) {
		REQUIRE(pipe2(pp, O_CLOEXEC | O_NONBLOCK) == 0);
		out = pp[1];
	} else {
		REQUIRE((out = mkstemp(path)) >= 0);
		unlink(path);
	}
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	REQUIRE(send(a, "original", 8, 0) == 8);
	rp = (struct replacer){ .sock = r, .new_sock = b0, .new_peer = b1,
				.old_peer = a, .old_writes = 1 };
	REQUIRE(pthread_create(&t, NULL, replace_fd, &rp) == 0);
	rc = zc_splice(r, NULL, out, NULL, 1000, direct ? NULL : &p, 5000, &moved);
	pthread_join(t, NULL);
	CHECK_RC(rc, -EBADF);
	CHECK_EQ(moved, 8);
	if (direct) {
		CHECK_EQ(read(pp[0], buf, sizeof(buf)), 8);
	} else {
		CHECK_EQ(pread(out, buf, sizeof(buf), 0), 8);
	}
	CHECK(memcmp(buf, "original", 8) == 0);
	/* the new client's bytes are still there for their new owner */
	CHECK_EQ(h_recv_upto(r, buf, sizeof(buf), 1000), 4);
	CHECK(memcmp(buf, "EVIL", 4) == 0);
	zc_pipe_put(NULL, &p);
	close(r); /* now b0's socket */
	close(b0);
	close(b1);
	close(a);
	close(out);
	if (direct)
		close(pp[0]);
	h_ran++;
}

/* Takes over a blocking sender's number, then reads the old connection to
 * its EOF into a memfd. */
struct drainer {
	int sock, new_sock, old_peer, store;
	size_t got;
};

static void *replace_and_drain(void *arg)
{
	struct drainer *d = arg;
	unsigned char buf[65536];
	long long end;

	usleep(100 * 1000); /* the sender blocks in the kernel by now */
	if (dup2(d->new_sock, d->sock) < 0)
		return NULL;
	end = h_now_ms() + 20000;
	while (h_now_ms() < end) {
		struct pollfd p = { .fd = d->old_peer, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, 100) <= 0)
			continue;
		n = read(d->old_peer, buf, sizeof(buf));
		if (n <= 0)
			break;
		if (h_write_all(d->store, buf, (size_t)n) < 0)
			break;
		d->got += (size_t)n;
	}
	return NULL;
}

/*
 * A blocking destination waits inside splice(2), where no check can run:
 * before its second syscall the socket is pinned and found replaced, so
 * the transfer stops with -EBADF; the old peer got exactly the bytes
 * counted, the new one none.
 */
static void dst_replaced_blocking(void)
{
	const size_t size = 4 << 20;
	struct drainer d;
	struct zc_pipe p;
	pthread_t t;
	uint64_t moved = 0;
	int64_t off = 0;
	unsigned char probe[16], *got, *want;
	size_t got_len;
	int s, r, b0, b1, f;

	REQUIRE(h_pair(0, &s, &r) == 0);
	REQUIRE(h_pair(1, &b0, &b1) == 0);
	h_small_buffers(s, r);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	d = (struct drainer){ .sock = s, .new_sock = b0, .old_peer = r,
			      .store = memfd_create("zc-drain", MFD_CLOEXEC) };
	REQUIRE(d.store >= 0);
	REQUIRE(pthread_create(&t, NULL, replace_and_drain, &d) == 0);
	CHECK_RC(zc_splice(f, &off, s, NULL, size, &p, ZC_WAIT_FOREVER, &moved),
		 -EBADF);
	CHECK(moved > 0 && moved < size);
	CHECK_EQ(off, moved);
	/* nothing holds the old connection now: it ends, the drainer sees EOF */
	pthread_join(t, NULL);
	CHECK_EQ(d.got, moved);
	CHECK_EQ(recv(b1, probe, sizeof(probe), MSG_DONTWAIT), -1);
	CHECK_EQ(errno, EAGAIN); /* the new client got nothing */
	got = slurp(d.store, &got_len);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, (size_t)moved);
	free(got);
	free(want);
	zc_pipe_put(NULL, &p);
	close(d.store);
	close(s); /* b0's socket now */
	close(b0);
	close(b1);
	close(r);
	close(f);
	h_ran++;
}

static void test_fd_replaced_during_wait(void)
{
	for (int kind = 0; kind < 2; kind++) {
		dst_replaced_during_wait(kind);
		src_replaced_during_wait(kind, 0);
		src_replaced_during_wait(kind, 1);
	}
	dst_replaced_blocking();
}

/* ---- a stalled source is bounded by the timeout ------------------------ */

static int open_pty_master(int *slave)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	char *name;

	if (m < 0)
		return -1;
	if (grantpt(m) < 0 || unlockpt(m) < 0 || !(name = ptsname(m)) ||
	    (*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
		close(m);
		return -1;
	}
	return m;
}

/*
 * Regression (issue 8.16): a blocking source with nothing to read (a
 * socket whose peer is silent, a pty) is polled first when the timeout is
 * positive, so the call gives -ETIMEDOUT instead of blocking in the kernel
 * until a signal (the watchdog kills the test).  Bytes that did arrive are
 * delivered first.
 */
static void test_stalled_source_bounded(void)
{
	struct zc_pipe p;
	uint64_t moved = 0;
	int a, b, m, sl, pp[2], f;
	char path[] = "/tmp/zc-test-XXXXXX", buf[8];

	REQUIRE(h_unix_pair(&a, &b) == 0); /* b: blocking */
	REQUIRE(pipe2(pp, O_CLOEXEC) == 0);
	REQUIRE((f = mkstemp(path)) >= 0);
	unlink(path);
	REQUIRE(zc_pipe_get(NULL, &p) == 0);
	alarm(10);
	CHECK_RC(zc_splice(b, NULL, f, NULL, 10, &p, 100, &moved), -ETIMEDOUT);
	CHECK_RC(zc_splice(b, NULL, pp[1], NULL, 10, NULL, 100, &moved),
		 -ETIMEDOUT);
	CHECK_EQ(moved, 0);
	REQUIRE(send(a, "abc", 3, 0) == 3);
	CHECK_RC(zc_splice(b, NULL, f, NULL, 10, &p, 100, &moved), -ETIMEDOUT);
	CHECK_EQ(moved, 3);
	CHECK_EQ(pread(f, buf, sizeof(buf), 0), 3);
	m = open_pty_master(&sl);
	if (m >= 0) {
		moved = 0;
		CHECK_RC(zc_splice(m, NULL, pp[1], NULL, 10, NULL, 100, &moved),
			 -ETIMEDOUT);
		CHECK_RC(zc_splice(m, NULL, f, NULL, 10, &p, 100, &moved),
			 -ETIMEDOUT);
		CHECK_EQ(moved, 0);
		close(sl);
		close(m);
	} else {
		H_SKIP_CASE("no pty: %s", strerror(errno));
	}
	alarm(120);
	zc_pipe_put(NULL, &p);
	close(a);
	close(b);
	close(pp[0]);
	close(pp[1]);
	close(f);
	h_ran++;
}

/* Thousands of transfers, failed ones included: no descriptor leaks. */
static void test_no_fd_leak(void)
{
	struct zc_pipe slots[4];
	struct zc_pipe_pool pool;
	int before = count_fds();

	zc_pipe_pool_init(&pool, slots, 4, 256 * 1024);
	for (int i = 0; i < 2000; i++) {
		struct zc_pipe p;
		uint64_t moved = 0;
		char buf[64];
		int s, r, f, rc;
		char path[] = "/tmp/zc-test-XXXXXX";

		REQUIRE(h_pair(1, &s, &r) == 0);
		REQUIRE((f = mkstemp(path)) >= 0);
		unlink(path);
		h_fill((unsigned char *)buf, sizeof(buf), (uint64_t)i, SEED);
		REQUIRE(send(s, buf, (size_t)(i % 64) + 1, 0) > 0);
		if (i % 3 != 2)
			close(s); /* EOF after the bytes */
		REQUIRE(zc_pipe_get(&pool, &p) == 0);
		if (i % 3 == 2) {
			/* fails with data in the pipe: nothing to write to */
			close(f);
			f = open("/dev/null", O_RDONLY | O_CLOEXEC);
			rc = zc_splice(r, NULL, f, NULL, 1000, &p, 0, &moved);
			CHECK(rc == -EBADF || rc == -EINVAL);
			close(s);
		} else {
			rc = zc_splice(r, NULL, f, NULL, i % 2 ? ZC_TO_EOF : 1000,
				       &p, 0, &moved);
			CHECK_RC(rc, i % 2 ? 0 : -ENODATA);
			CHECK_EQ(moved, (uint64_t)(i % 64) + 1);
		}
		zc_pipe_put(&pool, &p);
		close(r);
		close(f);
	}
	CHECK(pool.discarded > 0);
	zc_pipe_pool_destroy(&pool);
	CHECK_EQ(count_fds(), before);
	h_ran++;
}

/* Regression: a MSG_ZEROCOPY completion left on the destination socket's
 * error queue keeps POLLERR up, so the wait for room returned at once and
 * the splice loop spun at full CPU past its timeout. */
static void test_errqueue_wait(void)
{
	struct h_rx_opts o = { .stall_ms = 10000 };
	static unsigned char chunk[4 << 20]; /* more than the stalled socket takes */
	struct h_rx rx;
	unsigned char *got;
	size_t got_len;
	uint64_t moved = 0;
	int s, r, pfd[2], rc;
	pid_t w;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_small_buffers(s, r);
	if (h_queue_completion(s) < 0) {
		H_SKIP_CASE("no MSG_ZEROCOPY completions here");
		close(s);
		close(r);
		return;
	}
	REQUIRE(pipe(pfd) == 0);
	memset(chunk, 'z', sizeof(chunk));
	w = h_writer_start(pfd[1], chunk, sizeof(chunk)); /* keeps the pipe full */
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0); /* stalls */
	rc = zc_splice(pfd[0], NULL, s, NULL, 64 << 20, NULL, 300, &moved);
	CHECK_RC(rc, -ETIMEDOUT);
	CHECK(moved < (64u << 20));
	close(pfd[0]); /* the writer meets EPIPE and ends */
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_EQ(got_len, 4096 + moved); /* the MSG_ZEROCOPY send, then ours */
	free(got);
	(void)h_reap(w);
	h_ran++;
}

/* zc_splice_id(): an end whose number names another file now is never
 * read; one that still names its file is read through a duplicate; and
 * zc_fd_dup_checked() says the same. */
static void test_splice_id(void)
{
	struct zc_fd_id sid;
	uint64_t moved = 0;
	char buf[16];
	int s, r, n0, n1, p[2], d = 7;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_tcp_pair(&n0, &n1) == 0);
	REQUIRE(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
	REQUIRE(zc_fd_id_get(r, &sid) == 0);
	REQUIRE(send(s, "original", 8, 0) == 8);
	CHECK_EQ(zc_splice_id(r, NULL, p[1], NULL, 8, NULL, 1000, &moved, &sid,
			      NULL), 0);
	CHECK_EQ(moved, 8);
	CHECK_EQ(read(p[0], buf, sizeof(buf)), 8);
	CHECK_MEM(buf, 8, "original", 8);
	CHECK_EQ(zc_fd_dup_checked(r, &sid, &d), 0);
	CHECK(d >= 0 && d != r);
	{
		int both[2] = { d, -1 };

		zc_fd_close_each(both, 2);
		CHECK(both[0] == -1 && both[1] == -1);
		CHECK_EQ(fcntl(d, F_GETFD), -1); /* closed */
	}
	/* the number is another connection's now */
	REQUIRE(send(n1, "EVIL", 4, 0) == 4);
	REQUIRE(dup2(n0, r) == r);
	moved = 0;
	CHECK_RC(zc_splice_id(r, NULL, p[1], NULL, 4, NULL, 1000, &moved, &sid,
			      NULL), -EBADF);
	CHECK_EQ(moved, 0);
	CHECK_EQ(read(p[0], buf, sizeof(buf)), -1); /* nothing read */
	CHECK_RC(zc_fd_dup_checked(r, &sid, &d), -EBADF);
	CHECK_EQ(d, -1);
	CHECK_EQ(recv(n0, buf, sizeof(buf), MSG_DONTWAIT), 4); /* still there */
	close(r);
	CHECK_RC(zc_fd_dup_checked(r, &sid, &d), -EBADF);
	close(s);
	close(n0);
	close(n1);
	close(p[0]);
	close(p[1]);
	h_ran++;
}

int main(void)
{
	h_init(120);
	test_pool_reuse_and_bounds();
	test_pool_resize_failure();
	test_recv_to_file();
	test_short_peer();
	test_append_file();
	test_file_to_socket();
	test_pipe_ends();
	test_bad_args();
	test_timeouts_and_eintr();
	test_bytes_in_the_pipe();
	test_fd_replaced_during_wait();
	test_stalled_source_bounded();
	test_errqueue_wait();
	test_no_fd_leak();
	test_splice_id();
	return h_result("test_splice");
}
