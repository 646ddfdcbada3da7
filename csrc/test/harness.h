/* SPDX-License-Identifier: MIT */
/*
 * harness.h - the tiny shared test harness for csrc/test/test_*.c.
 *
 * Each test program includes this header once (everything here is static),
 * calls h_init() first and returns h_result() from main().  Exit codes: 0 all
 * checks passed, 1 a check failed, 77 skipped (nothing could run).
 *
 * Receivers and writers are forked children (no -pthread needed).  A child
 * keeps only the descriptors it uses, so a parent closing its end of a socket
 * or pipe really produces EOF, and it dies with the parent (PDEATHSIG).  The
 * parent's alarm() watchdog bounds every wait.
 */
#ifndef ZC_TEST_HARNESS_H
#define ZC_TEST_HARNESS_H

#ifndef _GNU_SOURCE
#error "#define _GNU_SOURCE before including harness.h"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int h_failures;
static int h_ran; /* cases that ran (not skipped) */

#define H_REPORT(...)                                                        \
	do {                                                                 \
		fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);              \
		fprintf(stderr, __VA_ARGS__);                                \
		fputc('\n', stderr);                                         \
		h_failures++;                                                \
	} while (0)

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond))                                                 \
			H_REPORT("CHECK(%s) failed", #cond);                 \
	} while (0)

#define CHECK_EQ(a, b)                                                       \
	do {                                                                 \
		long long h_a_ = (long long)(a), h_b_ = (long long)(b);      \
		if (h_a_ != h_b_)                                            \
			H_REPORT("CHECK_EQ(%s, %s) failed: %lld != %lld", #a, \
				 #b, h_a_, h_b_);                            \
	} while (0)

/* A -errno return value; prints the error names on mismatch. */
#define CHECK_RC(rc, want)                                                   \
	do {                                                                 \
		int h_r_ = (int)(rc), h_w_ = (int)(want);                    \
		if (h_r_ != h_w_)                                            \
			H_REPORT("CHECK_RC(%s) = %d (%s), want %d (%s)", #rc, \
				 h_r_, h_errname(h_r_), h_w_,                \
				 h_errname(h_w_));                           \
	} while (0)

/* Received bytes against the expected ones; reports the first difference. */
#define CHECK_MEM(got, got_len, want, want_len)                              \
	do {                                                                 \
		size_t h_gl_ = (size_t)(got_len), h_wl_ = (size_t)(want_len); \
		size_t h_at_ = h_first_diff((got), h_gl_, (want), h_wl_);    \
		if (h_at_ != (size_t)-1)                                     \
			H_REPORT("CHECK_MEM(%s, %s): got %zu bytes, want %zu, " \
				 "first difference at %zu", #got, #want,     \
				 h_gl_, h_wl_, h_at_);                       \
	} while (0)

/* Setup that must work for the rest of a case: fail the case and leave. */
#define REQUIRE(cond)                                                        \
	do {                                                                 \
		if (!(cond)) {                                               \
			H_REPORT("REQUIRE(%s) failed (errno %d: %s)", #cond, \
				 errno, strerror(errno));                    \
			return;                                              \
		}                                                            \
	} while (0)

static inline const char *h_errname(int rc)
{
	if (rc >= 0)
		return "ok";
	switch (-rc) {
	case EAGAIN: return "EAGAIN";
	case EINTR: return "EINTR";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ENODATA: return "ENODATA";
	case EPIPE: return "EPIPE";
	case ECONNRESET: return "ECONNRESET";
	case EPROTOTYPE: return "EPROTOTYPE";
	case ENOTSOCK: return "ENOTSOCK";
	case EINVAL: return "EINVAL";
	case ESPIPE: return "ESPIPE";
	case EBADF: return "EBADF";
	case EIO: return "EIO";
	default: return strerror(-rc);
	}
}

static inline size_t h_first_diff(const void *got, size_t got_len,
				  const void *want, size_t want_len)
{
	const unsigned char *g = got, *w = want;
	size_t n = got_len < want_len ? got_len : want_len;

	for (size_t i = 0; i < n; i++)
		if (g[i] != w[i])
			return i;
	return got_len == want_len ? (size_t)-1 : n;
}

static inline void h_init(unsigned watchdog_s)
{
	setvbuf(stderr, NULL, _IONBF, 0);
	signal(SIGPIPE, SIG_IGN);
	alarm(watchdog_s); /* default action kills a hung test */
}

static inline int h_result(const char *name)
{
	if (h_failures) {
		fprintf(stderr, "%s: %d check(s) failed\n", name, h_failures);
		return 1;
	}
	if (!h_ran) {
		fprintf(stderr, "%s: nothing could run\n", name);
		return 77;
	}
	return 0;
}

#define H_SKIP_CASE(...)                                                     \
	do {                                                                 \
		fprintf(stderr, "skip %s: ", __func__);                      \
		fprintf(stderr, __VA_ARGS__);                                \
		fputc('\n', stderr);                                         \
	} while (0)

/* ---- data -------------------------------------------------------------- */

/* The byte at absolute position pos of pattern seed: offsets are visible. */
static inline unsigned char h_byte(uint64_t pos, unsigned seed)
{
	uint64_t x = (pos + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t)seed << 32;

	x ^= x >> 29;
	x *= 0xbf58476d1ce4e5b9ull;
	return (unsigned char)(x >> 56);
}

static inline void h_fill(unsigned char *buf, size_t len, uint64_t pos,
			  unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = h_byte(pos + i, seed);
}

/* malloc'd pattern bytes [pos, pos+len) (never NULL for len 0). */
static inline unsigned char *h_pattern(size_t len, uint64_t pos, unsigned seed)
{
	unsigned char *b = malloc(len ? len : 1);

	if (b)
		h_fill(b, len, pos, seed);
	return b;
}

static inline int h_write_all(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* An unlinked temp file holding pattern seed, position 0; -1 on failure. */
static inline int h_temp_file(size_t size, unsigned seed)
{
	char path[] = "/tmp/zc-test-XXXXXX";
	unsigned char buf[65536];
	int fd = mkstemp(path);

	if (fd < 0)
		return -1;
	unlink(path);
	for (size_t off = 0; off < size;) {
		size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);

		h_fill(buf, n, off, seed);
		if (h_write_all(fd, buf, n) < 0) {
			close(fd);
			return -1;
		}
		off += n;
	}
	if (lseek(fd, 0, SEEK_SET) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static inline off_t h_tell(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

/* ---- sockets ----------------------------------------------------------- */

/* A connected TCP pair on 127.0.0.1: *snd from connect, *rcv from accept. */
static inline int h_tcp_pair(int *snd, int *rcv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int l, c = -1, s = -1;

	*snd = *rcv = -1; /* set on failure too: callers' compilers can tell */
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		return -1;
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0 ||
	    getsockname(l, (struct sockaddr *)&a, &len) < 0)
		goto fail;
	c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)) < 0)
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

static inline int h_unix_pair(int *snd, int *rcv)
{
	int sv[2];

	*snd = *rcv = -1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -1;
	*snd = sv[0];
	*rcv = sv[1];
	return 0;
}

/* kind 0: TCP loopback, 1: AF_UNIX socketpair */
static inline int h_pair(int kind, int *snd, int *rcv)
{
	return kind ? h_unix_pair(snd, rcv) : h_tcp_pair(snd, rcv);
}

static inline const char *h_kind_name(int kind)
{
	return kind ? "unix" : "tcp";
}

static inline int h_set_nonblock(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -1;
	fl = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
	return fcntl(fd, F_SETFL, fl);
}

/* Shrink the buffers so a stalled reader blocks the sender quickly. */
static inline void h_small_buffers(int snd, int rcv)
{
	int v = 16 * 1024;

	setsockopt(snd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
	setsockopt(rcv, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
}

static inline int h_getopt_int(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if (getsockopt(fd, level, name, &v, &len) < 0)
		return -1;
	return v;
}

static inline int h_setopt_int(int fd, int level, int name, int v)
{
	return setsockopt(fd, level, name, &v, sizeof(v));
}

/* Wait for POLLOUT (or an error state) up to ms; 1 ready, 0 not, -1 error. */
static inline int h_wait_out(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int n;

	do
		n = poll(&p, 1, ms);
	while (n < 0 && errno == EINTR);
	return n;
}

static inline long long h_now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/*
 * Read up to len bytes, waiting at most timeout_ms in total; returns the
 * count read (less on EOF, error or timeout).  The sender stays open, so
 * this shows whether bytes were pushed rather than held back.
 */
static inline size_t h_recv_upto(int fd, void *buf, size_t len, int timeout_ms)
{
	long long end = h_now_ms() + timeout_ms;
	size_t got = 0;

	while (got < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		long long left = end - h_now_ms();
		ssize_t n;

		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			break;
		n = recv(fd, (char *)buf + got, len - got, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

/* ---- children ---------------------------------------------------------- */

/* In a child: close every descriptor above 2 except those in keep[]. */
static inline void h_close_except(const int *keep, int n)
{
	int k[8], m = 0;
	unsigned lo = 3;

	for (int i = 0; i < n && m < 8; i++)
		if (keep[i] > 2)
			k[m++] = keep[i];
	for (int i = 1; i < m; i++) /* insertion sort */
		for (int j = i; j > 0 && k[j - 1] > k[j]; j--) {
			int t = k[j];

			k[j] = k[j - 1];
			k[j - 1] = t;
		}
	for (int i = 0; i < m; i++) {
		if ((unsigned)k[i] > lo)
			close_range(lo, (unsigned)k[i] - 1, 0);
		lo = (unsigned)k[i] + 1;
	}
	close_range(lo, ~0U, 0);
}

static inline void h_child_setup(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGALRM, SIG_DFL);
	alarm(60); /* a child never outlives a hung parent by much */
}

struct h_rx_opts {
	int stall_ms;	    /* >0: wait for h_rx_go() (at most this long) first */
	size_t chunk;	    /* bytes per recv (0: 64 KiB) */
	int delay_us;	    /* sleep after each recv: a slow reader */
	uint64_t stop_after; /* >0: close the socket after this many bytes */
};

/* A receiver: a child that drains a socket into an anonymous file. */
struct h_rx {
	pid_t pid;
	int store; /* memfd shared with the child */
	int go;	   /* write end of the release pipe, or -1 */
};

/*
 * Start a receiver on sock.  Takes ownership of sock (the parent's copy is
 * closed).  Returns 0 or -1.
 */
static inline int h_rx_start(struct h_rx *rx, int sock,
			     const struct h_rx_opts *o)
{
	struct h_rx_opts none = { 0 };
	int gp[2];

	if (!o)
		o = &none;
	rx->pid = -1;
	rx->go = -1;
	rx->store = memfd_create("zc-rx", MFD_CLOEXEC);
	if (rx->store < 0)
		return -1;
	if (pipe2(gp, O_CLOEXEC) < 0) {
		close(rx->store);
		return -1;
	}
	rx->pid = fork();
	if (rx->pid < 0) {
		close(gp[0]);
		close(gp[1]);
		close(rx->store);
		return -1;
	}
	if (rx->pid == 0) {
		int keep[3] = { sock, rx->store, gp[0] };
		size_t chunk = o->chunk ? o->chunk : 65536;
		unsigned char *buf;
		uint64_t total = 0;

		h_child_setup();
		h_close_except(keep, 3);
		buf = malloc(chunk);
		if (!buf)
			_exit(3);
		if (o->stall_ms > 0) {
			struct pollfd p = { .fd = gp[0], .events = POLLIN };

			poll(&p, 1, o->stall_ms);
		}
		for (;;) {
			ssize_t n = recv(sock, buf, chunk, 0);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				_exit(errno == ECONNRESET ? 0 : 2);
			if (n == 0)
				break;
			if (h_write_all(rx->store, buf, (size_t)n) < 0)
				_exit(4);
			total += (uint64_t)n;
			if (o->stop_after && total >= o->stop_after) {
				close(sock); /* unread data: TCP sends RST */
				break;
			}
			if (o->delay_us)
				usleep((useconds_t)o->delay_us);
		}
		_exit(0);
	}
	close(sock);
	close(gp[0]);
	rx->go = gp[1];
	return 0;
}

/* Release a stalled receiver. */
static inline void h_rx_go(struct h_rx *rx)
{
	if (rx->go >= 0) {
		close(rx->go);
		rx->go = -1;
	}
}

/*
 * Wait for the receiver to finish (the sender must be closed by now) and
 * return what it received in a malloc'd buffer (*len bytes).  Returns 0, or
 * -1 if the child failed (the buffer is still returned when possible).
 */
static inline int h_rx_finish(struct h_rx *rx, unsigned char **data,
			      size_t *len)
{
	int status = 0, rc = 0;
	struct stat st;

	*data = NULL;
	*len = 0;
	h_rx_go(rx);
	if (rx->pid > 0) {
		while (waitpid(rx->pid, &status, 0) < 0 && errno == EINTR)
			;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "receiver child status %#x\n", status);
			rc = -1;
		}
	}
	if (fstat(rx->store, &st) == 0) {
		*data = malloc(st.st_size ? (size_t)st.st_size : 1);
		if (*data && pread(rx->store, *data, (size_t)st.st_size, 0) ==
				     st.st_size)
			*len = (size_t)st.st_size;
		else
			rc = -1;
	} else {
		rc = -1;
	}
	close(rx->store);
	rx->store = -1;
	return rc;
}

/*
 * A writer: a child that writes data to fd (then exits, closing it).  Takes
 * ownership of fd.  Returns the child's pid or -1.
 */
static inline pid_t h_writer_start(int fd, const void *data, size_t len)
{
	pid_t pid = fork();

	if (pid == 0) {
		int keep[1] = { fd };
		int rc;

		h_child_setup();
		h_close_except(keep, 1);
		signal(SIGPIPE, SIG_IGN);
		rc = h_write_all(fd, data, len);
		_exit(rc < 0 ? 2 : 0);
	}
	close(fd);
	return pid;
}

/* Reap a child; 0 when it exited 0. */
static inline int h_reap(pid_t pid)
{
	int status = 0;

	if (pid <= 0)
		return -1;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

/*
 * Put one MSG_ZEROCOPY completion on s's error queue and leave it unread
 * (another owner's, as zerocopy.Socket's would be): POLLERR stays up until
 * it is read.  0, or -1 when the kernel cannot do MSG_ZEROCOPY here.
 */
static inline int h_queue_completion(int s)
{
	static unsigned char buf[4096];
	struct pollfd p = { .fd = s, .events = 0 };

	if (h_setopt_int(s, SOL_SOCKET, SO_ZEROCOPY, 1) < 0)
		return -1;
	if (send(s, buf, sizeof(buf), MSG_ZEROCOPY) != (ssize_t)sizeof(buf))
		return -1;
	return poll(&p, 1, 5000) == 1 && (p.revents & POLLERR) ? 0 : -1;
}

#endif /* ZC_TEST_HARNESS_H */
