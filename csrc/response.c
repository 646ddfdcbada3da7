/* SPDX-License-Identifier: MIT */
/* A header + file range + trailer, coalesced, resumable on any socket. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum { ST_NEW, ST_HEADER, ST_FILE, ST_TRAILER, ST_DONE };

struct priv {
	const unsigned char *header;
	size_t header_len;
	const unsigned char *trailer;
	size_t trailer_len;
	int64_t offset;
	uint64_t file_len;
	struct zc_cork_state cork;
	const struct zc_fd_id *id; /* zc_response_bind_id(), or NULL */
	int corking;
	int state;
};
ZC__PRIV_FITS(struct priv, struct zc_response);

static struct priv *priv_of(struct zc_response *r)
{
	return ZC__PRIV(struct priv, r);
}

int zc_response_init(struct zc_response *r, int sock, int file, int64_t offset,
		     uint64_t count, const void *header, size_t header_len,
		     const void *trailer, size_t trailer_len)
{
	struct priv *p = priv_of(r);

	memset(r, 0, sizeof(*r));
	r->sock = sock;
	r->file = file;
	if ((!header && header_len) || (!trailer && trailer_len))
		return -EINVAL;
	if (offset < 0 && offset != ZC_FD_POSITION)
		return -EINVAL;
	if (count == ZC_TO_EOF) {
		off_t start = (off_t)offset;
		int rc = zc__count_to_eof(file, offset == ZC_FD_POSITION ? NULL : &start,
					  &count);

		if (rc < 0)
			return rc;
	} else if (count > (uint64_t)INT64_MAX ||
		   (offset >= 0 && count > (uint64_t)(INT64_MAX - offset))) {
		return -EINVAL; /* the range must fit in off_t */
	}
	p->header = header;
	p->header_len = header_len;
	p->trailer = trailer;
	p->trailer_len = trailer_len;
	p->offset = offset;
	p->file_len = count;
	r->total = count == ZC_TO_EOF ? ZC_TO_EOF : header_len + count + trailer_len;
	/* Header then file: MSG_MORE on the header is enough, as sendfile's
	 * last page pushes.  A trailer after file data needs the cork, since
	 * sendfile cannot say "more follows"; so does a file of unknown length,
	 * which may turn out empty and leave the header waiting for a push. */
	p->corking = (trailer_len > 0 && count > 0) ||
		     (header_len > 0 && count == ZC_TO_EOF);
	p->state = ST_NEW;
	return 0;
}

/* Send the unsent part of buf, whose first byte is response byte `base`. */
static int send_memory(struct zc_response *r, struct zc__hold *h,
		       const unsigned char *buf, size_t len, uint64_t base,
		       int more, int timeout_ms)
{
	while (r->sent < base + len) {
		size_t done = (size_t)(r->sent - base);
		ssize_t n = zc__send(h->fd, buf + done, len - done, more);
		int rc;

		if (n == -EAGAIN) {
			rc = zc__hold_wait_writable(h, timeout_ms);
			if (rc < 0)
				return rc;
			continue;
		}
		if (n < 0)
			return (int)n;
		r->sent += (uint64_t)n;
		if ((size_t)n < len - done && r->sent < base + len) {
			rc = zc__after_short_send(h->fd);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

/*
 * Header and trailer with no file bytes between: one sendmsg with both
 * (the small-file path of the HTTP server), resumed at any byte.
 */
static int send_both(struct zc_response *r, struct zc__hold *h, int timeout_ms)
{
	struct priv *p = priv_of(r);
	uint64_t total = p->header_len + p->trailer_len;

	while (r->sent < total) {
		struct iovec iov[2];
		struct msghdr m;
		size_t want = (size_t)(total - r->sent), done;
		ssize_t w;
		int n = 0, rc;

		memset(&m, 0, sizeof(m));
		if (r->sent < p->header_len) {
			iov[n].iov_base = (void *)(p->header + r->sent);
			iov[n++].iov_len = p->header_len - (size_t)r->sent;
		}
		done = r->sent > p->header_len ? (size_t)(r->sent - p->header_len) : 0;
		iov[n].iov_base = (void *)(p->trailer + done);
		iov[n++].iov_len = p->trailer_len - done;
		m.msg_iov = iov;
		m.msg_iovlen = (size_t)n;
		w = sendmsg(h->fd, &m, MSG_NOSIGNAL);
		if (w < 0 && errno == EAGAIN) {
			rc = zc__hold_wait_writable(h, timeout_ms);
			if (rc < 0)
				return rc;
			continue;
		}
		if (w < 0)
			return -errno;
		r->sent += (uint64_t)w;
		if ((size_t)w < want) {
			rc = zc__after_short_send(h->fd);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

static int send_file(struct zc_response *r, struct zc__hold *h, int timeout_ms,
		     uint64_t budget)
{
	struct priv *p = priv_of(r);
	uint64_t file_sent = r->sent - p->header_len;
	uint64_t left = p->file_len == ZC_TO_EOF ? ZC_TO_EOF
						  : p->file_len - file_sent;
	uint64_t n = 0, want = left < budget ? left : budget;
	int rc = zc__sendfile_held(h, r->file, p->offset, want, timeout_ms, 0, &n);

	r->sent += n;
	if (p->offset != ZC_FD_POSITION)
		p->offset += (int64_t)n;
	if (p->file_len == ZC_TO_EOF &&
	    ((rc == 0 && want == left) || (rc == -ENODATA && want < left))) {
		/* a pipe or device reached its end: now the size is known */
		p->file_len = file_sent + n;
		r->total = p->header_len + p->file_len + p->trailer_len;
		return 0;
	}
	if (rc == 0 && want < left)
		return ZC_RESPONSE_MORE; /* the budget, not the file, ended */
	return rc;
}

static int step(struct zc_response *r, struct zc__hold *h, int timeout_ms,
		uint64_t budget)
{
	struct priv *p = priv_of(r);

	switch (p->state) {
	case ST_HEADER:
		if (p->file_len == 0 && p->header_len && p->trailer_len)
			return send_both(r, h, timeout_ms);
		return send_memory(r, h, p->header, p->header_len, 0,
				   p->file_len > 0 || p->trailer_len > 0,
				   timeout_ms);
	case ST_FILE:
		return p->file_len == 0 ? 0 : send_file(r, h, timeout_ms, budget);
	case ST_TRAILER:
		return send_memory(r, h, p->trailer, p->trailer_len,
				   p->header_len + p->file_len, 0, timeout_ms);
	}
	return 0;
}

static int send_steps(struct zc_response *r, int timeout_ms, uint64_t budget,
		      uint64_t *sent_now)
{
	struct priv *p = priv_of(r);
	uint64_t before = r->sent;
	struct zc__hold h;
	int rc = 0;

	if (sent_now)
		*sent_now = 0;
	if (p->state == ST_DONE)
		return 0;
	zc__hold_init(&h, r->sock);
	if (p->id && p->state == ST_NEW) {
		/* nothing is corked yet: the number is looked at (one fstat),
		 * as the caller made the response for what it named */
		rc = zc_fd_id_check(r->sock, p->id);
		if (rc < 0)
			return rc;
	} else if (p->id) {
		rc = zc__hold_pin_id(&h, p->id);
		if (rc < 0) {
			/* our socket is gone; its number is another's, whose
			 * cork is not ours to touch */
			zc__cork_forget(&p->cork);
			zc__hold_release(&h);
			return rc;
		}
	}
	if (p->state == ST_NEW) {
		if (p->corking) {
			rc = zc_cork_begin(r->sock, &p->cork);
			if (rc < 0)
				return rc;
		}
		p->state = ST_HEADER;
	}
	while (p->state != ST_DONE) {
		uint64_t spent = r->sent - before;

		if (spent >= budget) {
			rc = ZC_RESPONSE_MORE;
			break;
		}
		/* UINT64_MAX: no budget (zc_response_send), ZC_TO_EOF intact */
		rc = step(r, &h, timeout_ms,
			  budget == UINT64_MAX ? UINT64_MAX : budget - spent);
		if (rc != 0)
			break;
		/* send_both finished the trailer too */
		p->state = p->state == ST_HEADER && p->file_len == 0 &&
					   r->sent == p->header_len + p->trailer_len
				   ? ST_DONE
				   : p->state + 1;
	}
	if (sent_now)
		*sent_now = r->sent - before;
	/* uncork the socket we sent to, also when the caller's fd moved on */
	if (rc == 0)
		rc = zc_cork_end(h.fd, &p->cork);
	else if (rc != -EAGAIN && rc != -ETIMEDOUT && rc != -EINTR &&
		 rc != ZC_RESPONSE_MORE)
		(void)zc_cork_end(h.fd, &p->cork); /* report the send's error */
	zc__hold_release(&h);
	return rc;
}

int zc_response_send(struct zc_response *r, int timeout_ms, uint64_t *sent_now)
{
	return send_steps(r, timeout_ms, UINT64_MAX, sent_now);
}

int zc_response_send_some(struct zc_response *r, uint64_t budget,
			  uint64_t *sent_now)
{
	return send_steps(r, 0, budget ? budget : 1, sent_now);
}

int zc_response_bind_id(struct zc_response *r, const struct zc_fd_id *id)
{
	priv_of(r)->id = id;
	return 0;
}

int zc_response_end(struct zc_response *r)
{
	struct priv *p = priv_of(r);
	struct zc__hold h;
	int rc;

	if (!p->id)
		return zc_cork_end(r->sock, &p->cork);
	zc__hold_init(&h, r->sock);
	rc = zc__hold_pin_id(&h, p->id);
	if (rc == 0)
		rc = zc_cork_end(h.fd, &p->cork);
	else
		zc__cork_forget(&p->cork); /* the number is another socket's now */
	zc__hold_release(&h);
	return rc == -EBADF ? 0 : rc;
}
