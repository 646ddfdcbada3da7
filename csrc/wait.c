/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int zc_wait_writable(int sock, int timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = POLLOUT };
	int n = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);

	if (n < 0)
		return -errno;
	if (n == 0)
		return timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
	return 0; /* POLLOUT, or POLLERR/POLLHUP: the next send reports it */
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

	if (poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP)))
		return 0;
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

int zc__wait_or_again(int sock, int timeout_ms)
{
	if (timeout_ms == 0)
		return -EAGAIN;
	return zc_wait_writable(sock, timeout_ms);
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

int zc__hold_pin(struct zc__hold *h)
{
	struct stat st;

	if (h->known)
		return 0;
	if (fstat(h->caller, &st) < 0)
		return -errno;
	h->dev = st.st_dev;
	h->ino = st.st_ino;
	h->known = 1;
	h->dup = fcntl(h->caller, F_DUPFD_CLOEXEC, 0);
	if (h->dup >= 0 && !same_file(h->dup, h->dev, h->ino)) {
		close(h->dup); /* replaced between the two calls above */
		h->dup = -1;
		return -EBADF;
	}
	if (h->dup >= 0)
		h->fd = h->dup;
	return 0;
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
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n;

	if (timeout_ms <= 0)
		return 0;
	n = poll(&p, 1, timeout_ms);
	if (n < 0)
		return -errno;
	return n == 0 ? -ETIMEDOUT : 0;
}
