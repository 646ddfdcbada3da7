/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

long long zc__now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int zc__socket_error(int sock)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(sock, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	return -err;
}

void zc__reset_on_close(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}

void zc__reset_close(int fd)
{
	zc__reset_on_close(fd);
	close(fd);
}

int zc__spare_open(void)
{
	return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

int zc__refuse_with_spare(int listen_fd, int *spare, int reset)
{
	int c, rc = 0;

	if (*spare < 0)
		return -EMFILE;
	close(*spare);
	c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		rc = -errno;
	else if (reset)
		zc__reset_close(c);
	else
		close(c);
	*spare = zc__spare_open();
	return rc;
}

int zc__poll_event(int fd, short ev, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = ev };
	int n = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms), rc;

	if (n < 0)
		return -errno;
	if (n == 0)
		return timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
	if (p.revents & (ev | POLLHUP | POLLNVAL))
		return 0; /* ready, or the next syscall reports the hang-up */
	/* POLLERR alone: an error on the connection (reading it clears it,
	 * so it is returned here), or messages on the error queue */
	rc = zc__socket_error(fd);
	if (rc == -ENOTSOCK)
		return 0; /* a pipe without readers: the next splice says EPIPE */
	return rc < 0 ? rc : 1;
}

int zc__poll_out(int sock, int timeout_ms)
{
	return zc__poll_event(sock, POLLOUT, timeout_ms);
}

int zc__wait_event(int fd, short ev, int timeout_ms)
{
	long long deadline;
	int rc = zc__poll_event(fd, ev, timeout_ms), pause = 1;

	if (rc <= 0)
		return rc;
	if (timeout_ms == 0)
		return -EAGAIN;
	/* POLLERR stays up while the error queue holds messages (MSG_ZEROCOPY
	 * completions, TX timestamps) that are not ours to read, so poll()
	 * returns at once: nap between looks, at a growing pace, until the fd
	 * is ready, the queue is read, or the time is up. */
	deadline = timeout_ms < 0 ? -1 : zc__now_ms() + timeout_ms;
	for (;;) {
		long long left = deadline < 0 ? pause : deadline - zc__now_ms();

		if (left <= 0)
			return -ETIMEDOUT;
		if (poll(NULL, 0, left < pause ? (int)left : pause) < 0)
			return -errno;
		if (pause < ZC__PACE_MAX_MS)
			pause *= 2;
		left = deadline < 0 ? -1 : deadline - zc__now_ms();
		rc = zc__poll_event(fd, ev, left < 0 ? (deadline < 0 ? -1 : 0) : (int)left);
		if (rc != 1)
			return rc == -EAGAIN ? -ETIMEDOUT : rc;
	}
}

int zc_wait_writable(int sock, int timeout_ms)
{
	return zc__wait_event(sock, POLLOUT, timeout_ms);
}

int zc__is_nonblocking(int fd, int *nonblock)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -errno;
	*nonblock = (fl & O_NONBLOCK) != 0;
	return 0;
}

int zc__short_send_blocking(int sock)
{
	struct pollfd p = { .fd = sock, .events = 0 };

	if (poll(&p, 1, 0) <= 0)
		return -EINTR;
	if (p.revents & (POLLHUP | POLLNVAL))
		return 0; /* the next send reports it */
	if (p.revents & POLLERR) {
		/* an error on the connection, or only messages on the error
		 * queue (MSG_ZEROCOPY completions): then it was a signal */
		int rc = zc__socket_error(sock);

		return rc < 0 ? rc : -EINTR;
	}
	return -EINTR;
}

int zc__after_short_send(int sock)
{
	int nonblock = 0;
	int rc = zc__is_nonblocking(sock, &nonblock);

	if (rc < 0)
		return rc;
	return nonblock ? 0 : zc__short_send_blocking(sock);
}

ssize_t zc__send(int sock, const void *buf, size_t len, int more)
{
	ssize_t n = send(sock, buf, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));

	return n < 0 ? -errno : n;
}

static int same_file(int fd, dev_t dev, ino_t ino)
{
	struct stat st;

	return fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

struct fd_id {
	dev_t dev;
	ino_t ino;
};
ZC__PRIV_FITS(struct fd_id, struct zc_fd_id);

static const struct fd_id *id_of(const struct zc_fd_id *id)
{
	return (const struct fd_id *)(const void *)id->_private.bytes;
}

int zc_fd_id_get(int fd, struct zc_fd_id *id)
{
	struct fd_id *p = ZC__PRIV(struct fd_id, id);
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	p->dev = st.st_dev;
	p->ino = st.st_ino;
	return 0;
}

int zc_fd_id_check(int fd, const struct zc_fd_id *id)
{
	const struct fd_id *p = id_of(id);

	return same_file(fd, p->dev, p->ino) ? 0 : -EBADF;
}

/* A CLOEXEC duplicate of fd, checked to name dev/ino: 0 and *dup; -EBADF
 * when it names another file; -errno of fcntl(2).  *dup is -1 on failure. */
static int dup_same(int fd, dev_t dev, ino_t ino, int *dup)
{
	*dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (*dup < 0)
		return -errno;
	if (!same_file(*dup, dev, ino)) {
		close(*dup); /* the number changed hands before the dup */
		*dup = -1;
		return -EBADF;
	}
	return 0;
}

int zc__hold_pin_file(struct zc__hold *h, dev_t dev, ino_t ino)
{
	int rc;

	h->dev = dev;
	h->ino = ino;
	h->known = 1;
	rc = dup_same(h->caller, dev, ino, &h->dup);
	if (rc == 0)
		h->fd = h->dup;
	else if (rc != -EBADF) /* EMFILE: go on with the number, checked once */
		rc = same_file(h->caller, dev, ino) ? 0 : -EBADF;
	return rc;
}

int zc__hold_pin(struct zc__hold *h)
{
	struct stat st;

	if (h->known)
		return 0;
	if (fstat(h->caller, &st) < 0)
		return -errno;
	return zc__hold_pin_file(h, st.st_dev, st.st_ino);
}

int zc_fd_dup_checked(int fd, const struct zc_fd_id *id, int *dup)
{
	const struct fd_id *p = id_of(id);

	return dup_same(fd, p->dev, p->ino, dup);
}

void zc_fd_close_each(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		if (fds[i] >= 0)
			close(fds[i]);
		fds[i] = -1;
	}
}

int zc__hold_pin_id(struct zc__hold *h, const struct zc_fd_id *id)
{
	const struct fd_id *p = id_of(id);

	return zc__hold_pin_file(h, p->dev, p->ino);
}

int zc__hold_check(struct zc__hold *h)
{
	if (!h->known)
		return 0;
	return same_file(h->caller, h->dev, h->ino) ? 0 : -EBADF;
}

void zc__hold_release(struct zc__hold *h)
{
	if (h->dup >= 0)
		close(h->dup);
	h->dup = -1;
	h->fd = h->caller;
}

int zc__hold_wait_writable(struct zc__hold *h, int timeout_ms)
{
	int rc;

	if (timeout_ms == 0)
		return -EAGAIN;
	rc = zc__hold_pin(h);
	if (rc < 0)
		return rc;
	rc = zc_wait_writable(h->fd, timeout_ms);
	if (rc < 0)
		return rc;
	return zc__hold_check(h);
}

int zc__wait_source(int fd, int timeout_ms)
{
	if (timeout_ms <= 0)
		return 0;
	return zc__wait_event(fd, POLLIN, timeout_ms);
}
