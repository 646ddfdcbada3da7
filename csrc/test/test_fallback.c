/* SPDX-License-Identifier: MIT */
/*
 * The routes zc_sendfile() takes when sendfile(2) refuses the source:
 * splice from a pipe, peek+send+consume from a socket, read+send from a
 * character device, pread+send from a seekable file.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"
#include "zc_internal.h"

#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/time.h>
#include <termios.h>

#define SEED 11

/*
 * Keep calling zc_sendfile() on a non-seekable source until it is done:
 * -EAGAIN polls, -EINTR resumes (counted in *eintrs).  Returns the last rc.
 */

/* The internal route on a socket held as zc_sendfile() holds it. */
static int fallback(int sock, int file, off_t *pos, uint64_t count, int to_eof,
		    int timeout_ms, uint64_t *sent)
{
	struct zc__hold h;
	int rc;

	zc__hold_init(&h, sock);
	rc = zc__send_fallback(&h, file, pos, count, to_eof, timeout_ms, sent);
	zc__hold_release(&h);
	return rc;
}

static int drive(int s, int f, uint64_t count, int timeout_ms, uint64_t *sent,
		 int *eintrs)
{
	for (int i = 0; i < 100000; i++) {
		uint64_t left = count == ZC_TO_EOF ? ZC_TO_EOF : count - *sent;
		int rc = zc_sendfile(s, f, ZC_FD_POSITION, left, timeout_ms, 0,
				     sent);

		if (rc == -EINTR) {
			(*eintrs)++;
			continue;
		}
		if (rc != -EAGAIN)
			return rc;
		if (h_wait_out(s, 10000) <= 0)
			return -ETIMEDOUT;
	}
	return -EINTR;
}

/* ---- pipes ------------------------------------------------------------- */

/* A pipe as source, to EOF; small data written up front or by a child. */
static void pipe_to_eof(int kind, int nonblock, size_t size)
{
	unsigned char *data = h_pattern(size, 0, SEED), *got;
	struct h_rx rx;
	size_t got_len;
	uint64_t sent = 0;
	int p[2], s, r, rc, eintrs = 0;
	pid_t w = -1;

	REQUIRE(data);
	REQUIRE(pipe2(p, O_CLOEXEC) == 0);
	REQUIRE(h_pair(kind, &s, &r) == 0);
	REQUIRE(h_set_nonblock(s, nonblock) == 0);
	if (size <= 32768) {
		REQUIRE(h_write_all(p[1], data, size) == 0);
		close(p[1]);
	} else {
		REQUIRE((w = h_writer_start(p[1], data, size)) > 0);
	}
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	rc = zc_sendfile(s, p[0], ZC_FD_POSITION, ZC_TO_EOF, ZC_WAIT_FOREVER,
			 ZC_CHECK_STREAM, &sent);
	if (rc != 0 && rc != -EINTR)
		fprintf(stderr, "  pipe_to_eof(%s, nonblock=%d, %zu bytes): "
			"first call %d (%s) after %llu bytes\n",
			h_kind_name(kind), nonblock, size, rc, h_errname(rc),
			(unsigned long long)sent);
	/* -EINTR: a short count to a blocking socket, which the kernel
	 * gives now and then even without a signal; the answer is to resume */
	if (rc == -EINTR)
		rc = drive(s, p[0], ZC_TO_EOF, ZC_WAIT_FOREVER, &sent, &eintrs);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, data, size);
	if (w > 0)
		CHECK(h_reap(w) == 0);
	free(got);
	free(data);
	close(p[0]);
	h_ran++;
}

/* Explicit counts on a pipe: exact bytes, the rest stays in the pipe. */
static void test_pipe_counts(void)
{
	const size_t size = 20000;
	unsigned char *data = h_pattern(size, 0, SEED), rest[20000];
	unsigned char b[16];
	uint64_t sent = 0;
	int p[2], s, r;

	REQUIRE(data);
	REQUIRE(pipe2(p, O_CLOEXEC) == 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_write_all(p[1], data, size) == 0);
	CHECK_RC(zc_sendfile(s, p[0], ZC_FD_POSITION, 7000, ZC_WAIT_FOREVER, 0,
			     &sent), 0);
	CHECK_EQ(sent, 7000);
	CHECK_EQ(h_recv_upto(r, rest, 7000, 5000), 7000);
	CHECK_MEM(rest, 7000, data, 7000);
	/* an explicit offset makes no sense for a pipe */
	sent = 0;
	CHECK_RC(zc_sendfile(s, p[0], 0, 10, ZC_WAIT_FOREVER, 0, &sent),
		 -ESPIPE);
	CHECK_EQ(sent, 0);
	/* more than the pipe will ever hold: -ENODATA after the rest */
	close(p[1]);
	sent = 0;
	CHECK_RC(zc_sendfile(s, p[0], ZC_FD_POSITION, size, ZC_WAIT_FOREVER, 0,
			     &sent), -ENODATA);
	CHECK_EQ(sent, size - 7000);
	CHECK_EQ(h_recv_upto(r, rest, size - 7000, 5000), size - 7000);
	CHECK_MEM(rest, size - 7000, data + 7000, size - 7000);
	close(s);
	CHECK_EQ(h_recv_upto(r, b, sizeof(b), 5000), 0);
	close(r);
	close(p[0]);
	free(data);
	h_ran++;
}

/* ---- sockets ----------------------------------------------------------- */

/*
 * A socket as source, a non-blocking destination with a stalled reader:
 * -EAGAIN must leave the unsent bytes in the source, and resuming must
 * deliver the exact stream.
 */
static void socket_source_again(int src_kind, int dst_kind)
{
	const size_t size = 1 << 20;
	unsigned char *data = h_pattern(size, 0, SEED), *got;
	struct h_rx_opts o = { .stall_ms = 10000 };
	struct h_rx rx;
	size_t got_len;
	uint64_t sent = 0, first;
	int a, b, s, r, rc, eintrs = 0, avail = -1;
	pid_t w;

	REQUIRE(data);
	REQUIRE(h_pair(src_kind, &a, &b) == 0);
	REQUIRE(h_pair(dst_kind, &s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE((w = h_writer_start(a, data, size)) > 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	rc = zc_sendfile(s, b, ZC_FD_POSITION, ZC_TO_EOF, 0, 0, &sent);
	CHECK_RC(rc, -EAGAIN);
	CHECK(sent > 0 && sent < size);
	first = sent;
	/* still stalled: nothing more goes, and nothing is consumed */
	REQUIRE(ioctl(b, FIONREAD, &avail) == 0);
	CHECK(avail > 0);
	rc = zc_sendfile(s, b, ZC_FD_POSITION, ZC_TO_EOF, 0, 0, &sent);
	CHECK_RC(rc, -EAGAIN);
	CHECK_EQ(sent, first);
	h_rx_go(&rx);
	CHECK_RC(drive(s, b, ZC_TO_EOF, 0, &sent, &eintrs), 0);
	CHECK_EQ(eintrs, 0);
	CHECK_EQ(sent, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, data, size);
	CHECK(h_reap(w) == 0);
	free(got);
	free(data);
	close(b);
	h_ran++;
}

/* A socket source to a blocking destination, in one call. */
static void socket_source_blocking(int src_kind, int dst_kind)
{
	const size_t size = 1 << 20;
	unsigned char *data = h_pattern(size, 0, SEED), *got;
	struct h_rx rx;
	size_t got_len;
	uint64_t sent = 0;
	int a, b, s, r, rc, eintrs = 0;
	pid_t w;

	REQUIRE(data);
	REQUIRE(h_pair(src_kind, &a, &b) == 0);
	REQUIRE(h_pair(dst_kind, &s, &r) == 0);
	REQUIRE((w = h_writer_start(a, data, size)) > 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	rc = zc_sendfile(s, b, ZC_FD_POSITION, ZC_TO_EOF, ZC_WAIT_FOREVER, 0,
			 &sent);
	if (rc != 0)
		fprintf(stderr, "  socket_source_blocking(%s -> %s): first "
			"call %d (%s) after %llu bytes\n",
			h_kind_name(src_kind), h_kind_name(dst_kind), rc,
			h_errname(rc), (unsigned long long)sent);
	CHECK_RC(rc, 0);
	if (rc == -EINTR)
		rc = drive(s, b, ZC_TO_EOF, ZC_WAIT_FOREVER, &sent, &eintrs);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, data, size);
	CHECK(h_reap(w) == 0);
	free(got);
	free(data);
	close(b);
	h_ran++;
}

/* Explicit count from a socket: exactly count consumed, the rest stays. */
static void test_socket_count(void)
{
	const size_t size = 30000;
	unsigned char *data = h_pattern(size, 0, SEED);
	unsigned char buf[30000];
	uint64_t sent = 0;
	int a, b, s, r;

	REQUIRE(data);
	REQUIRE(h_unix_pair(&a, &b) == 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_write_all(a, data, size) == 0);
	CHECK_RC(zc_sendfile(s, b, ZC_FD_POSITION, 12345, ZC_WAIT_FOREVER, 0,
			     &sent), 0);
	CHECK_EQ(sent, 12345);
	CHECK_EQ(h_recv_upto(r, buf, 12345, 5000), 12345);
	CHECK_MEM(buf, 12345, data, 12345);
	sent = 0;
	CHECK_RC(zc_sendfile(s, b, 100, 10, ZC_WAIT_FOREVER, 0, &sent),
		 -ESPIPE);
	CHECK_EQ(sent, 0);
	CHECK_EQ(h_recv_upto(b, buf, size - 12345, 5000), size - 12345);
	CHECK_MEM(buf, size - 12345, data + 12345, size - 12345);
	close(a);
	close(b);
	close(s);
	close(r);
	free(data);
	h_ran++;
}

/* ---- character devices -------------------------------------------------- */

static int all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* /dev/zero with an explicit count, through zc_sendfile and the device route. */
static void test_dev_zero(void)
{
	const size_t count = 100001;
	struct h_rx rx;
	unsigned char *got;
	size_t got_len;
	uint64_t sent = 0;
	off_t pos = 0;
	int z, s, r;

	z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	if (z < 0) {
		H_SKIP_CASE("no /dev/zero");
		return;
	}
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	CHECK_RC(zc_sendfile(s, z, ZC_FD_POSITION, count, ZC_WAIT_FOREVER,
			     ZC_CHECK_STREAM, &sent), 0);
	CHECK_EQ(sent, count);
	/* the read+send route itself (this kernel may splice /dev/zero) */
	sent = 0;
	CHECK_RC(fallback(s, z, NULL, count, 0, ZC_WAIT_FOREVER,
				   &sent), 0);
	CHECK_EQ(sent, count);
	sent = 0;
	CHECK_RC(fallback(s, z, &pos, count, 0, ZC_WAIT_FOREVER,
				   &sent), -ESPIPE);
	CHECK_EQ(sent, 0);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_EQ(got_len, 2 * count);
	CHECK(all_zero(got, got_len));
	free(got);
	close(z);
	h_ran++;
}

/*
 * The device route on a non-blocking socket with timeout 0: a chunk already
 * read is finished, then the call should give -EAGAIN rather than read more
 * and wait for the reader.  The reader un-stalls itself after 1.5 s, so a
 * route that waits anyway completes (and fails the check) instead of hanging.
 */
static void test_device_nonblocking(void)
{
	const size_t count = 256 << 10;
	struct h_rx_opts o = { .stall_ms = 1500 };
	struct h_rx rx;
	unsigned char *got;
	size_t got_len;
	uint64_t sent = 0;
	long long t0;
	int z, s, r, rc;

	z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	if (z < 0) {
		H_SKIP_CASE("no /dev/zero");
		return;
	}
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	t0 = h_now_ms();
	rc = fallback(s, z, NULL, count, 0, 0, &sent);
	if (rc != -EAGAIN)
		fprintf(stderr, "  device route, timeout 0, stalled reader: "
			"%d (%s) after %llu bytes and %lld ms\n", rc,
			h_errname(rc), (unsigned long long)sent,
			h_now_ms() - t0);
	CHECK_RC(rc, -EAGAIN);
	CHECK(sent > 0);
	h_rx_go(&rx);
	while (rc == -EAGAIN && h_wait_out(s, 10000) > 0) {
		uint64_t n = 0; /* fresh: the internal *sent counts within count */

		rc = fallback(s, z, NULL, count - sent, 0, 0, &n);
		sent += n;
	}
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, count);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_EQ(got_len, count);
	CHECK(all_zero(got, got_len));
	free(got);
	close(z);
	h_ran++;
}

/* A pty slave: a character device sendfile refuses, with real content. */
static int open_pty(int *master, int *slave)
{
	struct termios t;
	char *name;

	*master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0)
		return -1;
	if (grantpt(*master) < 0 || unlockpt(*master) < 0 ||
	    !(name = ptsname(*master)))
		goto fail;
	*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*slave < 0)
		goto fail;
	if (tcgetattr(*slave, &t) < 0)
		goto fail2;
	cfmakeraw(&t);
	if (tcsetattr(*slave, TCSANOW, &t) < 0)
		goto fail2;
	return 0;
fail2:
	close(*slave);
fail:
	close(*master);
	return -1;
}

/*
 * timeout_ms ZC_WAIT_FOREVER: one call moves count bytes.  200: a stalled
 * reader makes the call give up, and resuming must still give the exact
 * stream (no byte read from the device may be dropped).  The writer offers
 * more than we ask for, so a dropped byte shows as a wrong stream, not a
 * hang; it is killed at the end.
 */
static void pty_source(int timeout_ms)
{
	const size_t size = 200000, extra = 65536;
	unsigned char *data = h_pattern(size + extra, 0, SEED), *got;
	struct h_rx_opts o = { .stall_ms = timeout_ms > 0 ? 10000 : 0 };
	struct h_rx rx;
	size_t got_len;
	uint64_t sent = 0;
	int m, sl, s, r, rc, eintrs = 0;
	pid_t w;

	REQUIRE(data);
	if (open_pty(&m, &sl) < 0) {
		H_SKIP_CASE("no pty: %s", strerror(errno));
		free(data);
		return;
	}
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	if (timeout_ms > 0) {
		h_small_buffers(s, r);
		REQUIRE(h_set_nonblock(s, 1) == 0);
	}
	/* the parent keeps m open: a closed master hangs the slave up */
	REQUIRE((w = h_writer_start(dup(m), data, size + extra)) > 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	rc = zc_sendfile(s, sl, ZC_FD_POSITION, size, timeout_ms, 0, &sent);
	if (timeout_ms > 0) {
		CHECK_RC(rc, -ETIMEDOUT);
		CHECK(sent > 0 && sent < size);
		h_rx_go(&rx);
	} else {
		if (rc != 0)
			fprintf(stderr, "  pty_source: first call %d (%s) "
				"after %llu bytes\n", rc, h_errname(rc),
				(unsigned long long)sent);
		CHECK_RC(rc, 0);
	}
	if (rc == -EINTR || rc == -ETIMEDOUT || rc == -EAGAIN)
		rc = drive(s, sl, size, ZC_WAIT_FOREVER, &sent, &eintrs);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, data, size);
	kill(w, SIGKILL);
	h_reap(w);
	free(got);
	free(data);
	close(sl);
	close(m);
	h_ran++;
}

/* ---- seekable files --------------------------------------------------------- */

/* Read a whole (pseudo) file; malloc'd, NULL on failure. */
static unsigned char *slurp(const char *path, size_t *len)
{
	unsigned char *buf = NULL;
	size_t cap = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	*len = 0;
	if (fd < 0)
		return NULL;
	for (;;) {
		ssize_t n;

		if (*len == cap) {
			unsigned char *nb = realloc(buf, cap ? 2 * cap : 4096);

			if (!nb)
				break;
			buf = nb;
			cap = cap ? 2 * cap : 4096;
		}
		n = read(fd, buf + *len, cap - *len);
		if (n <= 0)
			break;
		*len += (size_t)n;
	}
	close(fd);
	return buf;
}

/* A seekable file sendfile refuses and whose content is stable, or NULL. */
static const char *refused_file(unsigned char **content, size_t *len)
{
	static const char *const cand[] = {
		"/proc/self/limits", "/proc/self/environ", "/proc/self/auxv",
		"/proc/self/cmdline",
	};

	for (size_t i = 0; i < sizeof(cand) / sizeof(cand[0]); i++) {
		size_t l1, l2;
		unsigned char *c1 = slurp(cand[i], &l1);
		unsigned char *c2 = slurp(cand[i], &l2);
		int fd = open(cand[i], O_RDONLY | O_CLOEXEC), s, r, refused = 0;
		off_t off = 0;

		if (fd >= 0 && h_unix_pair(&s, &r) == 0) {
			refused = sendfile(s, fd, &off, 16) < 0 &&
				  errno == EINVAL;
			close(s);
			close(r);
		}
		if (fd >= 0)
			close(fd);
		if (refused && c1 && c2 && l1 > 64 && l1 == l2 &&
		    memcmp(c1, c2, l1) == 0) {
			free(c2);
			*content = c1;
			*len = l1;
			return cand[i];
		}
		free(c1);
		free(c2);
	}
	return NULL;
}

static void refused_one(int nonblock, int64_t offset, uint64_t count,
			const char *path, const unsigned char *content,
			size_t len)
{
	size_t start = offset == ZC_FD_POSITION ? 3 : (size_t)offset;
	size_t want = count == ZC_TO_EOF ? len - start : (size_t)count;
	unsigned char *buf = malloc(len);
	uint64_t sent = 0;
	int fd, s, r, rc;

	REQUIRE(buf);
	REQUIRE((fd = open(path, O_RDONLY | O_CLOEXEC)) >= 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_set_nonblock(s, nonblock) == 0);
	REQUIRE(lseek(fd, 3, SEEK_SET) == 3);
	rc = zc_sendfile(s, fd, offset, count, ZC_WAIT_FOREVER, 0, &sent);
	if (rc != 0)
		fprintf(stderr, "  %s (nonblock=%d, offset %lld, count %lld): "
			"%d (%s) after %llu bytes\n", path, nonblock,
			(long long)offset, (long long)count, rc, h_errname(rc),
			(unsigned long long)sent);
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, want);
	CHECK_EQ(h_tell(fd), offset == ZC_FD_POSITION ? (off_t)(start + sent)
						      : 3);
	close(s);
	CHECK_EQ(h_recv_upto(r, buf, len, 5000), want);
	CHECK_MEM(buf, want, content + start, want);
	close(r);
	close(fd);
	free(buf);
	h_ran++;
}

static void test_refused_file(void)
{
	unsigned char *content;
	size_t len;
	const char *path = refused_file(&content, &len);

	if (!path) {
		H_SKIP_CASE("sendfile accepts every candidate /proc file");
		return;
	}
	for (int nb = 0; nb < 2; nb++) {
		refused_one(nb, 0, len, path, content, len);
		refused_one(nb, 10, len - 20, path, content, len);
		refused_one(nb, ZC_FD_POSITION, len - 13, path, content, len);
		/* st_size is 0 for these: ZC_TO_EOF must still read to the end */
		refused_one(nb, 0, ZC_TO_EOF, path, content, len);
		refused_one(nb, 17, ZC_TO_EOF, path, content, len);
		refused_one(nb, ZC_FD_POSITION, ZC_TO_EOF, path, content, len);
	}
	free(content);
}

/* The pread route called directly with a regular file. */
static void test_pread_route(void)
{
	const size_t size = 300000;
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0;
	off_t pos = 1000;
	int s, r, f;

	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	REQUIRE(lseek(f, 2000, SEEK_SET) == 2000);
	/* explicit position: *pos advances, the fd's position does not */
	CHECK_RC(fallback(s, f, &pos, 150000, 0, ZC_WAIT_FOREVER,
				   &sent), 0);
	CHECK_EQ(sent, 150000);
	CHECK_EQ(pos, 151000);
	CHECK_EQ(h_tell(f), 2000);
	/* the fd's own position: advanced by exactly what was sent */
	sent = 0;
	CHECK_RC(fallback(s, f, NULL, 100000, 0, ZC_WAIT_FOREVER,
				   &sent), 0);
	CHECK_EQ(sent, 100000);
	CHECK_EQ(h_tell(f), 102000);
	/* to the end, as zc_sendfile() would pass it */
	sent = 0;
	CHECK_RC(fallback(s, f, NULL, size - 102000, 1,
				   ZC_WAIT_FOREVER, &sent), 0);
	CHECK_EQ(sent, size - 102000);
	CHECK_EQ(h_tell(f), size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = malloc(150000 + size - 2000);
	REQUIRE(want);
	h_fill(want, 150000, 1000, SEED);
	h_fill(want + 150000, size - 2000, 2000, SEED);
	CHECK_MEM(got, got_len, want, 150000 + size - 2000);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

/* pread route past the end of the file: -ENODATA, counts exact. */
static void pread_past_eof(int nonblock)
{
	const size_t size = 100000;
	unsigned char buf[100000], *want = h_pattern(size, 0, SEED);
	uint64_t sent = 0;
	off_t pos = 60000;
	int s, r, f, rc;

	REQUIRE(want);
	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_set_nonblock(s, nonblock) == 0);
	rc = fallback(s, f, &pos, 50000, 0, ZC_WAIT_FOREVER, &sent);
	if (rc != -ENODATA)
		fprintf(stderr, "  pread_past_eof(nonblock=%d)\n", nonblock);
	CHECK_RC(rc, -ENODATA);
	CHECK_EQ(sent, 40000);
	CHECK_EQ(pos, 100000);
	close(s);
	CHECK_EQ(h_recv_upto(r, buf, sizeof(buf), 5000), 40000);
	CHECK_MEM(buf, 40000, want + 60000, 40000);
	close(r);
	close(f);
	free(want);
	h_ran++;
}

/* pread route, non-blocking, stalled reader: -EAGAIN keeps *pos exact. */
static void test_pread_again(void)
{
	const size_t size = 1 << 20;
	struct h_rx_opts o = { .stall_ms = 10000 };
	struct h_rx rx;
	unsigned char *got, *want;
	size_t got_len;
	uint64_t sent = 0;
	off_t pos = 0;
	int s, r, f, rc;

	REQUIRE((f = h_temp_file(size, SEED)) >= 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	h_small_buffers(s, r);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_rx_start(&rx, r, &o) == 0);
	rc = fallback(s, f, &pos, size, 1, 0, &sent);
	CHECK_RC(rc, -EAGAIN);
	CHECK(sent > 0 && sent < size);
	CHECK_EQ(pos, sent);
	h_rx_go(&rx);
	while (rc == -EAGAIN && h_wait_out(s, 10000) > 0) {
		uint64_t n = 0; /* fresh: the internal *sent counts within count */

		rc = fallback(s, f, &pos, size - sent, 1, 0, &n);
		sent += n;
	}
	CHECK_RC(rc, 0);
	CHECK_EQ(sent, size);
	CHECK_EQ(pos, size);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	want = h_pattern(size, 0, SEED);
	CHECK_MEM(got, got_len, want, size);
	free(got);
	free(want);
	close(f);
	h_ran++;
}

static void on_tick(int sig)
{
	(void)sig;
}

/*
 * An empty pipe with its writer open, the socket writable: the wait is for
 * the pipe (POLLIN), with the caller's timeout.  Waiting for the socket
 * instead returned at once and spun forever (the watchdog below fails it).
 * Timeout 0: -EAGAIN for a non-blocking pipe; with neither fd O_NONBLOCK the
 * kernel would block, so the call waits (a signal gives -EINTR, nothing
 * sent) and then resumes.
 */
static void test_pipe_empty_waits(void)
{
	struct sigaction sa = { .sa_handler = on_tick }; /* no SA_RESTART */
	struct itimerval it = { .it_value = { .tv_usec = 100000 } };
	struct h_rx rx;
	unsigned char *got;
	size_t got_len;
	uint64_t sent = 0;
	int p[2], s, r;

	REQUIRE(pipe2(p, O_CLOEXEC | O_NONBLOCK) == 0);
	REQUIRE(h_pair(1, &s, &r) == 0);
	alarm(10); /* the old spin never returns */
	CHECK_RC(zc_sendfile(s, p[0], ZC_FD_POSITION, 10, 50, 0, &sent),
		 -ETIMEDOUT);
	CHECK_RC(zc_sendfile(s, p[0], ZC_FD_POSITION, 10, 0, 0, &sent),
		 -EAGAIN);
	CHECK_EQ(sent, 0);

	REQUIRE(h_set_nonblock(p[0], 0) == 0);
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	CHECK_RC(zc_sendfile(s, p[0], ZC_FD_POSITION, 10, 0, 0, &sent), -EINTR);
	CHECK_EQ(sent, 0);
	signal(SIGALRM, SIG_DFL);
	alarm(60);
	REQUIRE(h_write_all(p[1], "0123456789", 10) == 0);
	REQUIRE(h_rx_start(&rx, r, NULL) == 0);
	CHECK_RC(zc_sendfile(s, p[0], ZC_FD_POSITION, 10, 0, 0, &sent), 0);
	CHECK_EQ(sent, 10);
	close(s);
	CHECK(h_rx_finish(&rx, &got, &got_len) == 0);
	CHECK_MEM(got, got_len, "0123456789", 10);
	free(got);
	close(p[0]);
	close(p[1]);
	h_ran++;
}

/*
 * Regression (issue 8.16): a positive timeout bounds the wait for a stalled
 * source too: a pty with nothing to read, a blocking socket whose peer says
 * nothing.  Before, the read blocked in the kernel until a signal (the
 * watchdog kills the test).  A source with bytes still goes through.
 */
static void test_stalled_source_bounded(void)
{
	uint64_t sent = 0;
	int m, sl, s, r, a, b;

	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_set_nonblock(s, 1) == 0);
	REQUIRE(h_unix_pair(&a, &b) == 0); /* b: a blocking socket source */
	alarm(10);
	CHECK_RC(zc_sendfile(s, b, ZC_FD_POSITION, 10, 100, 0, &sent),
		 -ETIMEDOUT);
	CHECK_EQ(sent, 0);
	REQUIRE(send(a, "abc", 3, 0) == 3);
	CHECK_RC(zc_sendfile(s, b, ZC_FD_POSITION, 10, 100, 0, &sent),
		 -ETIMEDOUT);
	CHECK_EQ(sent, 3);
	if (open_pty(&m, &sl) == 0) {
		sent = 0;
		CHECK_RC(zc_sendfile(s, sl, ZC_FD_POSITION, 10, 100, 0, &sent),
			 -ETIMEDOUT);
		CHECK_EQ(sent, 0);
		close(sl);
		close(m);
	} else {
		H_SKIP_CASE("no pty: %s", strerror(errno));
	}
	alarm(60);
	{
		char buf[8];

		CHECK_EQ(h_recv_upto(r, buf, sizeof(buf), 1000), 3);
		CHECK(memcmp(buf, "abc", 3) == 0);
	}
	close(a);
	close(b);
	close(s);
	close(r);
	h_ran++;
}

/* ---- fault injection: another reader takes peeked bytes ------------------ */

/* When steal_fd >= 0, the next consuming recv(2) on it (flags 0, the peek
 * route's second step) takes one byte fewer than asked: as if another
 * reader of the same socket had taken part of what was peeked. */
static int steal_fd = -1;

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	if (fd == steal_fd && flags == 0 && len > 1) {
		steal_fd = -1;
		len--;
	}
	return recvfrom(fd, buf, len, flags, NULL, NULL);
}

/* Regression (review): the peek route sent n bytes, then found that the
 * consuming recv took fewer (another reader), and returned -EIO without
 * counting the n bytes that had already reached the peer. */
static void test_socket_source_stolen(void)
{
	const size_t size = 3000;
	unsigned char *data = h_pattern(size, 0, SEED);
	unsigned char buf[3000];
	uint64_t sent = 0;
	int a, b, s, r;

	REQUIRE(data);
	REQUIRE(h_unix_pair(&a, &b) == 0);
	REQUIRE(h_tcp_pair(&s, &r) == 0);
	REQUIRE(h_write_all(a, data, size) == 0);
	steal_fd = b;
	CHECK_RC(zc_sendfile(s, b, ZC_FD_POSITION, size, ZC_WAIT_FOREVER, 0,
			     &sent), -EIO);
	steal_fd = -1;
	CHECK_EQ(sent, size); /* every byte peeked went out, and is counted */
	CHECK_EQ(h_recv_upto(r, buf, size, 5000), size);
	CHECK_MEM(buf, size, data, size);
	close(a);
	close(b);
	close(s);
	close(r);
	free(data);
	h_ran++;
}

int main(void)
{
	h_init(60);
	for (int kind = 0; kind < 2; kind++)
		for (int nb = 0; nb < 2; nb++) {
			pipe_to_eof(kind, nb, 30000);
			pipe_to_eof(kind, nb, 1 << 20);
		}
	test_pipe_counts();
	test_pipe_empty_waits();
	for (int src = 0; src < 2; src++)
		for (int dst = 0; dst < 2; dst++) {
			socket_source_again(src, dst);
			socket_source_blocking(src, dst);
		}
	test_socket_count();
	test_dev_zero();
	test_device_nonblocking();
	pty_source(ZC_WAIT_FOREVER);
	pty_source(200);
	test_refused_file();
	test_pread_route();
	pread_past_eof(0);
	pread_past_eof(1);
	test_pread_again();
	test_stalled_source_bounded();
	test_socket_source_stolen();
	return h_result("test_fallback");
}
