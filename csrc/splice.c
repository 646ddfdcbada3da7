/* SPDX-License-Identifier: MIT */
/* The pipe pool and the splice(2) loops: any fd -> pipe -> any fd. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes copied per read/write when the destination refuses splice. */
#define COPY_CHUNK (64 * 1024)

/* ---- pipes -------------------------------------------------------------- */

int zc_pipe_open(struct zc_pipe *p, size_t size)
{
	int fds[2], cur;

	p->rfd = p->wfd = -1;
	p->size = 0;
	p->buffered = 0;
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	p->rfd = fds[0];
	p->wfd = fds[1];
	/* Failure is fine: above pipe-max-size, or over pipe-user-pages-soft
	 * (unprivileged), the pipe keeps its default (or even smaller) size. */
	if (size > 0 && size <= INT32_MAX)
		(void)fcntl(p->wfd, F_SETPIPE_SZ, (int)size);
	cur = fcntl(p->wfd, F_GETPIPE_SZ);
	p->size = cur > 0 ? (uint32_t)cur : 4096;
	return size == 0 || p->size >= size;
}

void zc_pipe_close(struct zc_pipe *p)
{
	if (p->rfd >= 0)
		close(p->rfd);
	if (p->wfd >= 0)
		close(p->wfd);
	p->rfd = p->wfd = -1;
	p->buffered = 0;
}

/* The pool's lock: held for a few loads and stores, so a spin is enough
 * (and needs no -pthread). */
static void pool_lock(struct zc_pipe_pool *pool)
{
	while (__atomic_exchange_n(&pool->_lock, 1, __ATOMIC_ACQUIRE))
		sched_yield();
}

static void pool_unlock(struct zc_pipe_pool *pool)
{
	__atomic_store_n(&pool->_lock, 0, __ATOMIC_RELEASE);
}

int zc_pipe_pool_init(struct zc_pipe_pool *pool, struct zc_pipe *slots,
		      unsigned nslots, size_t pipe_size)
{
	if (!slots && nslots)
		return -EINVAL;
	*pool = (struct zc_pipe_pool){
		.pipe_size = pipe_size, ._slots = slots, ._cap = nslots,
	};
	return 0;
}

int zc_pipe_get(struct zc_pipe_pool *pool, struct zc_pipe *p)
{
	int rc;

	if (!pool) {
		rc = zc_pipe_open(p, ZC_PIPE_SIZE);
		return rc < 0 ? rc : 0;
	}
	pool_lock(pool);
	if (pool->_count > 0) {
		*p = pool->_slots[--pool->_count];
		pool->reused++;
		pool_unlock(pool);
		return 0;
	}
	pool_unlock(pool);
	rc = zc_pipe_open(p, pool->pipe_size);
	if (rc < 0)
		return rc;
	pool_lock(pool);
	pool->created++;
	pool->small += rc == 0;
	pool_unlock(pool);
	return 0;
}

void zc_pipe_put(struct zc_pipe_pool *pool, struct zc_pipe *p)
{
	if (p->rfd < 0 && p->wfd < 0)
		return;
	if (pool && p->buffered == 0 && p->rfd >= 0 && p->wfd >= 0) {
		pool_lock(pool);
		if (pool->_count < pool->_cap) {
			pool->_slots[pool->_count++] = *p;
			pool_unlock(pool);
			p->rfd = p->wfd = -1;
			return;
		}
		pool->discarded++;
		pool_unlock(pool);
	} else if (pool) {
		/* Never pool a pipe holding data: it belongs to a dead stream. */
		pool_lock(pool);
		pool->discarded++;
		pool_unlock(pool);
	}
	zc_pipe_close(p);
}

void zc_pipe_pool_destroy(struct zc_pipe_pool *pool)
{
	for (;;) {
		struct zc_pipe p;

		pool_lock(pool);
		if (pool->_count == 0) {
			pool_unlock(pool);
			return;
		}
		p = pool->_slots[--pool->_count];
		pool_unlock(pool);
		zc_pipe_close(&p);
	}
}

/* ---- the loop ------------------------------------------------------------ */

struct move {
	int src, dst;
	loff_t *src_off, *dst_off; /* NULL: the fd's own position */
	int timeout_ms;
	int to_eof;
	uint64_t count; /* bytes to deliver in this call */
	uint64_t done;	/* delivered so far in this call */
};

static size_t step(uint64_t left, size_t cap)
{
	return left < cap ? (size_t)left : cap;
}

static int fd_is_blocking_socket(int fd)
{
	struct stat st;
	int nonblock = 0;

	if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
		return 0;
	return zc__is_nonblocking(fd, &nonblock) == 0 && !nonblock;
}

/* Bytes waiting in a pipe (0 when FIONREAD fails). */
static size_t pipe_holds(int pipe_fd)
{
	int n = 0;

	return ioctl(pipe_fd, FIONREAD, &n) == 0 && n > 0 ? (size_t)n : 0;
}

/*
 * splice(2) said EAGAIN: wait until the fd that was not ready is.  side is
 * POLLIN (src), POLLOUT (dst) or 0: find out.  A source pipe that holds
 * nothing is the one to wait for (waiting for a writable socket instead
 * would spin); otherwise the destination, unless poll says it is ready.
 */
static int wait_side(int src, int dst, int src_pipe, short side,
		     int timeout_ms)
{
	struct pollfd p[2] = {
		{ .fd = src, .events = POLLIN },
		{ .fd = dst, .events = POLLOUT },
	};
	int n, i = side == POLLIN ? 0 : 1;

	if (timeout_ms == 0)
		return -EAGAIN;
	if (!side && src_pipe) {
		i = pipe_holds(src) ? 1 : 0;
	} else if (!side) {
		n = poll(p, 2, 0);
		if (n < 0)
			return -errno;
		/* wait for the destination unless it is ready */
		i = p[1].revents ? 0 : 1;
		p[i].revents = 0;
	}
	n = poll(&p[i], 1, timeout_ms < 0 ? -1 : timeout_ms);
	if (n < 0)
		return -errno;
	return n == 0 ? -ETIMEDOUT : 0;
}

static int wait_for(const struct move *m, short side)
{
	return wait_side(m->src, m->dst, 0, side, m->timeout_ms);
}

/*
 * The destination refuses splice (a file opened O_APPEND): copy one chunk
 * of the pipe's bytes with read(2) and write(2).  Bytes read from the pipe
 * but not written (an error midway) are gone with the stream.
 */
static int copy_out(struct move *m, struct zc_pipe *via)
{
	unsigned char buf[COPY_CHUNK];
	size_t want = via->buffered < sizeof(buf) ? via->buffered : sizeof(buf);
	ssize_t got = read(via->rfd, buf, want), off = 0;

	if (got <= 0)
		return got < 0 ? -errno : -EIO; /* our pipe is not empty */
	via->buffered -= (uint32_t)got;
	while (off < got) {
		ssize_t n = m->dst_off ? pwrite(m->dst, buf + off,
						(size_t)(got - off), *m->dst_off)
				       : write(m->dst, buf + off, (size_t)(got - off));

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		if (m->dst_off)
			*m->dst_off += n;
		off += n;
		m->done += (uint64_t)n;
	}
	return 0;
}

/* A blocking socket cuts a write short only for a signal: report -EINTR so
 * the caller runs its handlers (the next blocking call would not see it). */
static int after_short(const struct move *m, int *blocking_dst)
{
	if (*blocking_dst < 0)
		*blocking_dst = fd_is_blocking_socket(m->dst);
	return *blocking_dst ? -EINTR : 0;
}

/* Write the pipe's bytes to the destination. */
static int drain(struct move *m, struct zc_pipe *via, int *blocking_dst)
{
	while (via->buffered > 0) {
		uint64_t after = m->count - m->done - via->buffered;
		size_t want = via->buffered;
		unsigned fl = SPLICE_F_MOVE;
		ssize_t n;
		int rc;

		/* More bytes follow this pipe's worth: let TCP fill segments. */
		if (!m->to_eof && after > 0)
			fl |= SPLICE_F_MORE;
		n = splice(via->rfd, NULL, m->dst, m->dst_off, want, fl);
		if (n > 0) {
			via->buffered -= (uint32_t)n;
			m->done += (uint64_t)n;
			rc = (size_t)n < want ? after_short(m, blocking_dst) : 0;
		} else if (n == 0) {
			rc = -EIO; /* the pipe is ours and not empty */
		} else if (errno == EINVAL) {
			rc = copy_out(m, via);
		} else if (errno == EAGAIN) {
			rc = wait_for(m, POLLOUT);
		} else {
			rc = -errno;
		}
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int through_pipe(struct move *m, struct zc_pipe *via)
{
	int blocking_dst = -1;
	int rc = drain(m, via, &blocking_dst); /* left over from a previous call */

	while (rc == 0 && m->done < m->count) {
		size_t want = step(m->count - m->done, via->size);
		ssize_t n;

		/* The pipe is empty here, so EAGAIN can only mean that the
		 * source has nothing to read, and 0 only its end. */
		n = splice(m->src, m->src_off, via->wfd, NULL, want, SPLICE_F_MOVE);
		if (n > 0) {
			via->buffered = (uint32_t)n;
			rc = drain(m, via, &blocking_dst);
		} else if (n == 0) {
			rc = m->to_eof ? 0 : -ENODATA;
		} else if (errno == EAGAIN) {
			rc = wait_for(m, POLLIN);
		} else {
			rc = -errno;
		}
		if (n == 0)
			break;
	}
	return rc;
}

static int is_pipe(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

/* One helper for both callers; see zc_internal.h. */
int zc__splice_direct(int src, off_t *src_off, int dst, off_t *dst_off,
		      uint64_t count, int to_eof, int timeout_ms,
		      uint64_t *done)
{
	int src_pipe = is_pipe(src);
	/* pipe -> blocking socket: ask for what the pipe holds, so that a
	 * short count can only mean a signal (or an error on the socket) */
	int exact = src_pipe && fd_is_blocking_socket(dst);
	int rc = 0;

	while (*done < count) {
		size_t want = step(count - *done, ZC_SENDFILE_MAX);
		size_t avail = exact ? pipe_holds(src) : 0;
		ssize_t n;

		if (avail > 0 && avail < want)
			want = avail;
		/* SPLICE_F_NONBLOCK affects only the pipe side: a blocking
		 * socket still blocks in the kernel (until a signal) */
		n = splice(src, src_off, dst, dst_off, want,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			*done += (uint64_t)n;
			/* short of what the pipe held before: the socket's doing
			 * (with nothing counted before, a writer raced us) */
			if (avail > 0 && (size_t)n < want && *done < count)
				rc = zc__short_send_blocking(dst);
		} else if (n == 0) {
			/* the source ended: a pipe without writers, a
			 * socket's EOF, a file's end */
			rc = to_eof ? 0 : -ENODATA;
			break;
		} else if (errno == EAGAIN) {
			/* either side may be the one that is not ready */
			rc = wait_side(src, dst, src_pipe, 0, timeout_ms);
		} else {
			rc = -errno;
		}
		if (rc < 0)
			break;
	}
	return rc;
}

int zc_splice(int src, int64_t *src_off, int dst, int64_t *dst_off,
	      uint64_t count, struct zc_pipe *via, int timeout_ms,
	      uint64_t *moved)
{
	loff_t so = src_off ? (loff_t)*src_off : 0;
	loff_t d_o = dst_off ? (loff_t)*dst_off : 0;
	struct move m = {
		.src = src, .dst = dst,
		.src_off = src_off ? &so : NULL,
		.dst_off = dst_off ? &d_o : NULL,
		.timeout_ms = timeout_ms,
		.to_eof = count == ZC_TO_EOF,
		.count = count,
	};
	int rc;

	if ((src_off && *src_off < 0) || (dst_off && *dst_off < 0))
		return -EINVAL;
	if (via && (via->rfd < 0 || via->wfd < 0))
		return -EINVAL;
	if (count == 0)
		return 0;
	if (via) {
		/* bytes already in the pipe belong to this count */
		if (!m.to_eof && via->buffered > count)
			return -EINVAL;
		rc = through_pipe(&m, via);
	} else {
		rc = zc__splice_direct(src, m.src_off, dst, m.dst_off, count,
				       m.to_eof, timeout_ms, &m.done);
	}
	if (src_off)
		*src_off = (int64_t)so;
	if (dst_off)
		*dst_off = (int64_t)d_o;
	*moved += m.done;
	return rc;
}
