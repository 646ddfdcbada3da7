/* SPDX-License-Identifier: MIT */
/* Routes for sources that sendfile(2) refuses: pipes, sockets, devices. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define DEVICE_CHUNK (16 * 1024)

struct route {
	struct zc__hold *h;
	int file;
	int file_blocks;	/* reads of file block in the kernel */
	off_t *pos;	/* explicit offset, or NULL: the fd's own position */
	int timeout_ms;
	int to_eof;
	uint64_t count;
	uint64_t *sent;
};

static size_t next_len(const struct route *r, size_t cap)
{
	uint64_t left = r->count - *r->sent;

	return left < cap ? (size_t)left : cap;
}

/* After a 0-byte read: the source ended. */
static int source_ended(const struct route *r)
{
	return r->to_eof ? 0 : -ENODATA;
}

/*
 * Send buf[0..len) from a source we can re-read (pread, peek): report how
 * much went, leave the rest for the next round.  Returns bytes sent or
 * -errno; 0 never happens for len > 0.
 */
static ssize_t send_some(const struct route *r, const void *buf, size_t len)
{
	for (;;) {
		ssize_t n = zc__send(r->h->fd, buf, len, 0);
		int rc;

		if (n != -EAGAIN)
			return n;
		rc = zc__hold_wait_writable(r->h, r->timeout_ms);
		if (rc < 0)
			return rc;
	}
}

/* The socket took n of the `offered` bytes the source had ready. */
static int after_progress(const struct route *r, size_t n, size_t offered)
{
	if (n < offered && *r->sent < r->count)
		return zc__after_short_send(r->h->fd);
	return 0;
}

/*
 * A pipe: splice moves its pages straight to the socket, nothing is read
 * (zc__splice_direct(), shared with zc_splice(): an empty pipe is waited
 * for with POLLIN, a full socket with POLLOUT).  timeout_ms 0 means "do not
 * wait where the kernel would not": when neither fd is O_NONBLOCK the
 * kernel would block, so the wait is ZC_WAIT_FOREVER (in poll(2), so a
 * signal still gives -EINTR).
 */
static int from_pipe(const struct route *r, const struct stat *st)
{
	int timeout_ms = r->timeout_ms;
	struct zc__hold pipe;

	if (r->pos)
		return -ESPIPE;
	if (timeout_ms == 0 && r->file_blocks) {
		int sock_nb = 0;
		int rc = zc__is_nonblocking(r->h->caller, &sock_nb);

		if (rc < 0)
			return rc;
		if (!sock_nb)
			timeout_ms = ZC_WAIT_FOREVER;
	}
	zc__hold_init_plain(&pipe, r->file, st->st_dev, st->st_ino);
	return zc__splice_direct(&pipe, NULL, r->h, NULL, r->count, r->to_eof,
				 timeout_ms, r->sent);
}

/* A seekable file sendfile refuses (some /proc and FUSE files): pread+send. */
static int from_seekable(const struct route *r, off_t start)
{
	unsigned char buf[CHUNK];
	off_t pos = start;
	int rc = 0;

	while (*r->sent < r->count) {
		size_t want = next_len(r, sizeof(buf));
		ssize_t got = pread(r->file, buf, want, pos);
		ssize_t n;

		if (got < 0) {
			rc = -errno;
			break;
		}
		if (got == 0) {
			rc = source_ended(r);
			break;
		}
		n = send_some(r, buf, (size_t)got);
		if (n < 0) {
			rc = (int)n;
			break;
		}
		pos += n;
		*r->sent += (uint64_t)n;
		rc = after_progress(r, (size_t)n, (size_t)got);
		if (rc < 0)
			break;
	}
	if (r->pos)
		*r->pos = pos;
	else if (lseek(r->file, pos, SEEK_SET) < 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* A socket: peek, send, then consume exactly what went out. */
static int from_socket(const struct route *r)
{
	unsigned char buf[CHUNK];

	if (r->pos)
		return -ESPIPE;
	while (*r->sent < r->count) {
		size_t want = next_len(r, sizeof(buf));
		ssize_t got, n;
		int rc = r->file_blocks ? zc__wait_source(r->file, r->timeout_ms) : 0;

		if (rc < 0)
			return rc;
		got = recv(r->file, buf, want, MSG_PEEK);
		if (got < 0)
			return -errno;
		if (got == 0)
			return source_ended(r);
		n = send_some(r, buf, (size_t)got);
		if (n < 0)
			return (int)n;
		*r->sent += (uint64_t)n; /* they reached the peer, whatever follows */
		if (recv(r->file, buf, (size_t)n, 0) != n)
			return -EIO; /* another reader took the peeked bytes */
		rc = after_progress(r, (size_t)n, (size_t)got);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/*
 * Anything else (character devices): what is read cannot be put back.  So
 * the caller's timeout applies before each read (the socket must be
 * writable first), and a chunk once read is finished, waiting as long as
 * it takes.  Chunks are small, so a writable socket nearly always takes a
 * whole one at once.
 */
static int from_device(const struct route *r)
{
	unsigned char buf[DEVICE_CHUNK];

	if (r->pos)
		return -ESPIPE;
	while (*r->sent < r->count) {
		int rc = r->timeout_ms == 0 ? zc_wait_writable(r->h->fd, 0)
					    : zc__hold_wait_writable(r->h, r->timeout_ms);
		ssize_t got;
		size_t off = 0;

		if (rc == 0 && r->file_blocks)
			rc = zc__wait_source(r->file, r->timeout_ms);
		if (rc < 0)
			return rc;
		got = read(r->file, buf, next_len(r, sizeof(buf)));
		if (got < 0)
			return -errno;
		if (got == 0)
			return source_ended(r);
		while (off < (size_t)got) {
			ssize_t n = zc__send(r->h->fd, buf + off, (size_t)got - off, 0);

			if (n >= 0) {
				off += (size_t)n;
				*r->sent += (uint64_t)n;
				continue;
			}
			if (n == -EINTR)
				continue;
			if (n != -EAGAIN)
				return (int)n;
			rc = zc__hold_wait_writable(r->h, ZC_WAIT_FOREVER);
			if (rc < 0 && rc != -EINTR)
				return rc;
		}
	}
	return 0;
}

int zc__send_fallback(struct zc__hold *h, int file, off_t *pos, uint64_t count,
		      int to_eof, int timeout_ms, uint64_t *sent)
{
	struct route r = {
		.h = h, .file = file, .pos = pos,
		.timeout_ms = timeout_ms, .to_eof = to_eof, .count = count,
		.sent = sent,
	};
	struct stat st;
	off_t start;
	int nonblock = 0, rc;

	if (fstat(file, &st) < 0)
		return -errno;
	rc = zc__is_nonblocking(file, &nonblock);
	if (rc < 0)
		return rc;
	/* a positive timeout bounds the wait for a stalled source too */
	r.file_blocks = !nonblock;
	if (S_ISFIFO(st.st_mode))
		return from_pipe(&r, &st);
	if (S_ISSOCK(st.st_mode))
		return from_socket(&r);
	start = r.pos ? *r.pos : lseek(file, 0, SEEK_CUR);
	if (start >= 0 && !S_ISCHR(st.st_mode))
		return from_seekable(&r, start);
	return from_device(&r);
}
