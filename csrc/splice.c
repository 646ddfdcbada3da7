/* SPDX-License-Identifier: MIT */
/* The pipe pool and the splice(2) loops: any fd -> pipe -> any fd. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes copied per read/write when the destination refuses splice. */
#define COPY_CHUNK (64 * 1024)

/* ---- pipes and the pool ------------------------------------------------- */

struct pool_priv {
	struct zc_pipe *slots;
	unsigned cap;
	unsigned count;
	int lock;
};
ZC__PRIV_FITS(struct pool_priv, struct zc_pipe_pool);

static struct pool_priv *pool_of(struct zc_pipe_pool *pool)
{
	return ZC__PRIV(struct pool_priv, pool);
}

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
	/* Failing is fine: above pipe-max-size, or over pipe-user-pages-soft
	 * (unprivileged), the pipe keeps a smaller size that works too. */
	if (size > 0 && size <= INT32_MAX)
		(void)fcntl(p->wfd, F_SETPIPE_SZ, (int)size);
	cur = fcntl(p->wfd, F_GETPIPE_SZ);
	p->size = cur > 0 ? (uint32_t)cur : 4096;
	return 0;
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

/* Held for a few loads and stores: a spin is enough (and needs no -pthread). */
static void pool_lock(struct pool_priv *pp)
{
	while (__atomic_exchange_n(&pp->lock, 1, __ATOMIC_ACQUIRE))
		sched_yield();
}

static void pool_unlock(struct pool_priv *pp)
{
	__atomic_store_n(&pp->lock, 0, __ATOMIC_RELEASE);
}

int zc_pipe_pool_init(struct zc_pipe_pool *pool, struct zc_pipe *slots,
		      unsigned nslots, size_t pipe_size)
{
	struct pool_priv *pp = pool_of(pool);

	if (!slots && nslots)
		return -EINVAL;
	memset(pool, 0, sizeof(*pool));
	pool->pipe_size = pipe_size;
	pp->slots = slots;
	pp->cap = nslots;
	return 0;
}

int zc_pipe_get(struct zc_pipe_pool *pool, struct zc_pipe *p)
{
	struct pool_priv *pp;
	int rc;

	if (!pool)
		return zc_pipe_open(p, ZC_PIPE_SIZE);
	pp = pool_of(pool);
	pool_lock(pp);
	if (pp->count > 0) {
		*p = pp->slots[--pp->count];
		pool->reused++;
		pool_unlock(pp);
		return 0;
	}
	pool_unlock(pp);
	rc = zc_pipe_open(p, pool->pipe_size);
	if (rc < 0)
		return rc;
	pool_lock(pp);
	pool->created++;
	pool->small += p->size < pool->pipe_size;
	pool_unlock(pp);
	return 0;
}

void zc_pipe_put(struct zc_pipe_pool *pool, struct zc_pipe *p)
{
	struct pool_priv *pp;

	if (p->rfd < 0 && p->wfd < 0)
		return;
	if (!pool) {
		zc_pipe_close(p);
		return;
	}
	pp = pool_of(pool);
	pool_lock(pp);
	/* A pipe holding data is never pooled: its bytes belong to a dead stream. */
	if (p->buffered == 0 && p->rfd >= 0 && p->wfd >= 0 && pp->count < pp->cap) {
		pp->slots[pp->count++] = *p;
		pool_unlock(pp);
		p->rfd = p->wfd = -1;
		return;
	}
	pool->discarded++;
	pool_unlock(pp);
	zc_pipe_close(p);
}

unsigned zc_pipe_pool_idle(struct zc_pipe_pool *pool)
{
	struct pool_priv *pp = pool_of(pool);
	unsigned n;

	pool_lock(pp);
	n = pp->count;
	pool_unlock(pp);
	return n;
}

void zc_pipe_pool_destroy(struct zc_pipe_pool *pool)
{
	struct pool_priv *pp = pool_of(pool);

	for (;;) {
		struct zc_pipe p;

		pool_lock(pp);
		if (pp->count == 0) {
			pool_unlock(pp);
			return;
		}
		p = pp->slots[--pp->count];
		pool_unlock(pp);
		zc_pipe_close(&p);
	}
}

/* ---- splice loops ------------------------------------------------------- */

/* One fd of a transfer: its hold and what kind of file it is. */
struct end {
	struct zc__hold *h;
	int pipe;	    /* a pipe or FIFO */
	int seekable;	    /* a regular file or block device: can be rewound */
	int blocking_sock;  /* a socket without O_NONBLOCK */
	int may_block;	    /* its reads block in the kernel (socket, tty) */
	int used;	    /* a syscall used it already */
	dev_t dev;	    /* what the fd named when the call began */
	ino_t ino;
};

struct move {
	struct end src, dst;
	off_t *src_off, *dst_off; /* NULL: the fd's own position */
	int timeout_ms;
	int to_eof;
	int fresh;	/* @via holds bytes this call read from src */
	int forced;	/* drain() waited although timeout_ms is 0 */
	uint64_t count; /* bytes to deliver in this call */
	uint64_t done;	/* delivered so far in this call */
};

/* Look at fd; init: set up its hold too (a socket is pinned on reuse). */
static int probe(struct end *e, struct zc__hold *h, int fd, int init)
{
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fstat(fd, &st) < 0)
		return -errno;
	e->h = h;
	e->used = 0;
	e->dev = st.st_dev;
	e->ino = st.st_ino;
	e->pipe = S_ISFIFO(st.st_mode);
	e->seekable = S_ISREG(st.st_mode) || S_ISBLK(st.st_mode);
	e->blocking_sock = S_ISSOCK(st.st_mode) && !(fl & O_NONBLOCK);
	/* pipes are spliced with SPLICE_F_NONBLOCK, and files never wait */
	e->may_block = !(fl & O_NONBLOCK) &&
		       (S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode));
	if (!init)
		return 0;
	if (S_ISSOCK(st.st_mode))
		zc__hold_init(h, fd);
	else
		zc__hold_init_plain(h, fd, st.st_dev, st.st_ino);
	return 0;
}

static size_t step(uint64_t left, size_t cap)
{
	return left < cap ? (size_t)left : cap;
}

/* Bytes waiting in a pipe (0 when FIONREAD fails). */
static size_t pipe_holds(int pipe_fd)
{
	int n = 0;

	return ioctl(pipe_fd, FIONREAD, &n) == 0 && n > 0 ? (size_t)n : 0;
}

/*
 * Pin a socket end (a duplicate that every later syscall uses): before a
 * wait in poll, and before the second syscall, since a blocking socket
 * waits inside the first one.  -EBADF when the number already names
 * another file than when the call began.
 */
static int pin(struct end *e)
{
	if (e->h->known)
		return 0;
	return zc__hold_pin_file(e->h, e->dev, e->ino);
}

/* The fd for the next syscall on an end; -errno. */
static int fd_for(struct end *e)
{
	int rc = e->used ? pin(e) : 0;

	e->used = 1;
	return rc < 0 ? rc : e->h->fd;
}

/* Wait for ev on one end as timeout_ms says; then both ends must still
 * name the files the transfer started with (-EBADF). */
static int wait_on(struct move *m, struct end *e, short ev, int timeout_ms)
{
	int rc;

	if (timeout_ms == 0)
		return -EAGAIN;
	rc = pin(&m->src);
	if (rc == 0)
		rc = pin(&m->dst);
	if (rc < 0)
		return rc;
	/* not a bare poll(): queued error-queue messages keep POLLERR up */
	rc = zc__wait_event(e->h->fd, ev, timeout_ms);
	if (rc < 0)
		return rc == -EAGAIN ? -ETIMEDOUT : rc;
	rc = zc__hold_check(m->src.h);
	return rc < 0 ? rc : zc__hold_check(m->dst.h);
}

/* A blocking source would wait in the kernel, where no bound applies:
 * with a positive timeout, poll it first. */
static int source_ready(struct move *m)
{
	if (!m->src.may_block || m->timeout_ms <= 0)
		return 0;
	return wait_on(m, &m->src, POLLIN, m->timeout_ms);
}

/*
 * The destination refuses splice (a file opened O_APPEND): copy one chunk
 * of the pipe's bytes with read(2) and write(2).  Bytes read from the pipe
 * but not written (an error midway) are gone with the stream.
 */
static int copy_out(struct move *m, struct zc_pipe *via, int dst)
{
	unsigned char buf[COPY_CHUNK];
	size_t want = via->buffered < sizeof(buf) ? via->buffered : sizeof(buf);
	ssize_t got = read(via->rfd, buf, want), off = 0;

	if (got <= 0)
		return got < 0 ? -errno : -EIO; /* our pipe is not empty */
	via->buffered -= (uint32_t)got;
	while (off < got) {
		ssize_t n = m->dst_off ? pwrite(dst, buf + off, (size_t)(got - off),
						*m->dst_off)
				       : write(dst, buf + off, (size_t)(got - off));

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

/* Write the pipe's bytes to the destination, all of them. */
static int drain(struct move *m, struct zc_pipe *via)
{
	/* bytes read from the source cannot go back into it: they are
	 * delivered even to a destination that is not to be waited for */
	int wait_ms = m->timeout_ms == 0 ? ZC_WAIT_FOREVER : m->timeout_ms;

	while (via->buffered > 0) {
		uint64_t after = m->count - m->done - via->buffered;
		size_t want = via->buffered;
		unsigned fl = SPLICE_F_MOVE;
		int fd = fd_for(&m->dst);
		ssize_t n;
		int rc = 0;

		if (fd < 0)
			return fd;
		/* More bytes follow this pipe's worth: let TCP fill segments. */
		if (!m->to_eof && after > 0)
			fl |= SPLICE_F_MORE;
		n = splice(via->rfd, NULL, fd, m->dst_off, want, fl);
		if (n > 0) {
			via->buffered -= (uint32_t)n;
			m->done += (uint64_t)n;
			/* a blocking socket cuts a write short for a signal
			 * (-EINTR) or an error (reported by the next call) */
			if ((size_t)n < want && m->dst.blocking_sock)
				rc = zc__short_send_blocking(fd);
		} else if (n == 0) {
			rc = -EIO; /* the pipe is ours and not empty */
		} else if (errno == EINVAL) {
			rc = copy_out(m, via, fd);
		} else if (errno == EAGAIN) {
			m->forced = m->timeout_ms == 0;
			rc = wait_on(m, &m->dst, POLLOUT, wait_ms);
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
	int rc = drain(m, via); /* left by an earlier call, or the caller's */

	while (rc == 0 && m->done < m->count) {
		size_t want = step(m->count - m->done, via->size);
		int fd;
		ssize_t n;

		/* the destination was full: waiting to deliver what was read
		 * is owed; reading more would be waiting by choice */
		if (m->forced) {
			rc = -EAGAIN;
			break;
		}

		rc = source_ready(m);
		if (rc < 0)
			break;
		fd = fd_for(&m->src);
		if (fd < 0) {
			rc = fd;
			break;
		}
		/* The pipe is empty here, so EAGAIN can only mean that the
		 * source has nothing to read, and 0 only its end. */
		n = splice(fd, m->src_off, via->wfd, NULL, want, SPLICE_F_MOVE);
		if (n > 0) {
			via->buffered = (uint32_t)n;
			m->fresh = 1;
			rc = drain(m, via);
		} else if (n == 0) {
			rc = m->to_eof ? 0 : -ENODATA;
			break;
		} else if (errno == EAGAIN) {
			rc = wait_on(m, &m->src, POLLIN, m->timeout_ms);
		} else {
			rc = -errno;
		}
	}
	return rc;
}

/* Empty @via without delivering its bytes; returns how many went. */
static uint32_t discard(struct zc_pipe *via)
{
	int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	uint32_t gone = 0;

	while (via->buffered > 0) {
		char buf[4096];
		ssize_t n;

		if (null >= 0) /* no copy: the pages are just released */
			n = splice(via->rfd, NULL, null, NULL, via->buffered,
				   SPLICE_F_NONBLOCK);
		else
			n = read(via->rfd, buf, step(via->buffered, sizeof(buf)));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		via->buffered -= (uint32_t)n;
		gone += (uint32_t)n;
	}
	if (null >= 0)
		close(null);
	return gone;
}

/* The call failed with bytes it read still in @via: a seekable source
 * takes them back, so that its position matches the bytes delivered. */
static void give_back(struct move *m, struct zc_pipe *via)
{
	uint32_t n;

	if (!m->fresh || via->buffered == 0 || !m->src.seekable)
		return;
	n = discard(via);
	if (m->src_off)
		*m->src_off -= (off_t)n;
	else
		(void)lseek(m->src.h->fd, -(off_t)n, SEEK_CUR);
}

/*
 * splice(2) said EAGAIN: wait for the side that is not ready.  A source
 * pipe that holds nothing is the one (waiting for a writable socket
 * instead would spin); otherwise the destination, unless poll says it is
 * ready.
 */
static int wait_either(struct move *m)
{
	struct pollfd p = { .fd = m->dst.h->fd, .events = POLLOUT };
	int src_side;

	if (m->timeout_ms == 0)
		return -EAGAIN;
	if (m->src.pipe) {
		src_side = pipe_holds(m->src.h->fd) == 0;
	} else {
		if (poll(&p, 1, 0) < 0)
			return -errno;
		src_side = p.revents != 0;
	}
	return wait_on(m, src_side ? &m->src : &m->dst,
		       src_side ? POLLIN : POLLOUT, m->timeout_ms);
}

/* One of the two is a pipe: splice straight from src to dst. */
static int direct(struct move *m)
{
	/* pipe -> blocking socket: ask for what the pipe holds, so that a
	 * short count can only mean a signal (or an error on the socket) */
	int exact = m->src.pipe && m->dst.blocking_sock;
	int rc = 0;

	while (m->done < m->count) {
		size_t want = step(m->count - m->done, ZC_SENDFILE_MAX);
		int sfd, dfd;
		size_t avail;
		ssize_t n;

		rc = source_ready(m);
		if (rc < 0)
			break;
		sfd = fd_for(&m->src);
		dfd = fd_for(&m->dst);
		if (sfd < 0 || dfd < 0) {
			rc = sfd < 0 ? sfd : dfd;
			break;
		}
		avail = exact ? pipe_holds(sfd) : 0;
		if (avail > 0 && avail < want)
			want = avail;
		/* SPLICE_F_NONBLOCK affects only the pipe side: a blocking
		 * socket still blocks in the kernel (until a signal) */
		n = splice(sfd, m->src_off, dfd, m->dst_off, want,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			m->done += (uint64_t)n;
			/* short of what the pipe held before: the socket's doing
			 * (with nothing counted before, a writer raced us) */
			if (avail > 0 && (size_t)n < want && m->done < m->count)
				rc = zc__short_send_blocking(dfd);
		} else if (n == 0) {
			/* the source ended: a pipe without writers, a
			 * socket's EOF, a file's end */
			rc = m->to_eof ? 0 : -ENODATA;
			break;
		} else if (errno == EAGAIN) {
			rc = wait_either(m);
		} else {
			rc = -errno;
		}
		if (rc < 0)
			break;
	}
	return rc;
}

int zc__splice_direct(struct zc__hold *src, off_t *src_off,
		      struct zc__hold *dst, off_t *dst_off, uint64_t count,
		      int to_eof, int timeout_ms, uint64_t *done)
{
	struct move m = {
		.src_off = src_off, .dst_off = dst_off,
		.timeout_ms = timeout_ms, .to_eof = to_eof,
		.count = count, .done = *done,
	};
	int rc = probe(&m.src, src, src->fd, 0);

	if (rc == 0)
		rc = probe(&m.dst, dst, dst->fd, 0);
	if (rc == 0)
		rc = direct(&m);
	*done = m.done;
	return rc;
}

int zc_splice(int src, int64_t *src_off, int dst, int64_t *dst_off,
	      uint64_t count, struct zc_pipe *via, int timeout_ms,
	      uint64_t *moved)
{
	return zc_splice_id(src, src_off, dst, dst_off, count, via, timeout_ms,
			    moved, NULL, NULL);
}

/* Look at an end whose identity the caller gave: pin it to that file first
 * (a checked duplicate that every syscall uses), then look at the duplicate. */
static int probe_id(struct end *e, struct zc__hold *h, int fd,
		    const struct zc_fd_id *id)
{
	int rc;

	if (!id)
		return probe(e, h, fd, 1);
	zc__hold_init(h, fd);
	rc = zc__hold_pin_id(h, id);
	if (rc == 0)
		rc = probe(e, h, h->fd, 0);
	if (rc < 0)
		zc__hold_release(h);
	return rc;
}

int zc_splice_id(int src, int64_t *src_off, int dst, int64_t *dst_off,
		 uint64_t count, struct zc_pipe *via, int timeout_ms,
		 uint64_t *moved, const struct zc_fd_id *src_id,
		 const struct zc_fd_id *dst_id)
{
	off_t so = src_off ? (off_t)*src_off : 0;
	off_t d_o = dst_off ? (off_t)*dst_off : 0;
	struct zc__hold hs, hd;
	struct move m = {
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
	/* bytes already in the pipe belong to this count */
	if (via && !m.to_eof && via->buffered > count)
		return -EINVAL;
	rc = probe_id(&m.src, &hs, src, src_id);
	if (rc < 0)
		return rc;
	rc = probe_id(&m.dst, &hd, dst, dst_id);
	if (rc < 0) {
		zc__hold_release(&hs);
		return rc;
	}
	if (via) {
		rc = through_pipe(&m, via);
		if (rc < 0)
			give_back(&m, via);
	} else if (m.src.pipe || m.dst.pipe) {
		rc = direct(&m);
	} else {
		rc = -EINVAL; /* splice(2) needs a pipe on one side */
	}
	zc__hold_release(&hs);
	zc__hold_release(&hd);
	if (src_off)
		*src_off = (int64_t)so;
	if (dst_off)
		*dst_off = (int64_t)d_o;
	*moved += m.done;
	return rc;
}
