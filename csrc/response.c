/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

enum { ST_NEW, ST_HEADER, ST_FILE, ST_TRAILER, ST_DONE };

int zc_response_init(struct zc_response *r, int sock, int file, int64_t offset,
		     uint64_t count, const void *header, size_t header_len,
		     const void *trailer, size_t trailer_len)
{
	memset(r, 0, sizeof(*r));
	r->sock = sock;
	r->file = file;
	if ((!header && header_len) || (!trailer && trailer_len))
		return -EINVAL;
	if (offset < 0 && offset != ZC_FD_POSITION)
		return -EINVAL;
	if (count == ZC_TO_EOF) {
		struct stat st;
		off_t start = (off_t)offset;

		if (fstat(file, &st) < 0)
			return -errno;
		if (S_ISREG(st.st_mode) && st.st_size > 0) {
			if (offset == ZC_FD_POSITION)
				start = lseek(file, 0, SEEK_CUR);
			if (start < 0)
				return -errno;
			count = st.st_size > start ? (uint64_t)(st.st_size - start) : 0;
		}
	} else if (count > (uint64_t)INT64_MAX) {
		return -EINVAL;
	}
	r->_header = header;
	r->_header_len = header_len;
	r->_trailer = trailer;
	r->_trailer_len = trailer_len;
	r->_offset = offset;
	r->_file_len = count;
	r->total = count == ZC_TO_EOF ? ZC_TO_EOF : header_len + count + trailer_len;
	/* Header then file: MSG_MORE on the header is enough, as sendfile's
	 * last page pushes.  A trailer after file data needs the cork, since
	 * sendfile cannot say "more follows"; so does a file of unknown length,
	 * which may turn out empty and leave the header waiting for a push. */
	r->_corking = (trailer_len > 0 && count > 0) ||
		      (header_len > 0 && count == ZC_TO_EOF);
	r->_state = ST_NEW;
	return 0;
}

/* Send the unsent part of buf, whose first byte is response byte `base`. */
static int send_memory(struct zc_response *r, const unsigned char *buf,
		       size_t len, uint64_t base, int more, int timeout_ms)
{
	while (r->sent < base + len) {
		size_t done = (size_t)(r->sent - base);
		ssize_t n = zc__send(r->sock, buf + done, len - done, more);
		int rc;

		if (n == -EAGAIN) {
			rc = zc__wait_or_again(r->sock, timeout_ms);
			if (rc < 0)
				return rc;
			continue;
		}
		if (n < 0)
			return (int)n;
		r->sent += (uint64_t)n;
		if ((size_t)n < len - done && r->sent < base + len) {
			rc = zc__after_short_send(r->sock);
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
static int send_both(struct zc_response *r, int timeout_ms)
{
	uint64_t total = r->_header_len + r->_trailer_len;

	while (r->sent < total) {
		struct iovec iov[2];
		struct msghdr m;
		size_t want;
		ssize_t w;
		int n = 0, rc;

		memset(&m, 0, sizeof(m));
		if (r->sent < r->_header_len) {
			iov[n].iov_base = (void *)(r->_header + r->sent);
			iov[n++].iov_len = r->_header_len - (size_t)r->sent;
		}
		{
			size_t done = r->sent > r->_header_len
					      ? (size_t)(r->sent - r->_header_len)
					      : 0;

			iov[n].iov_base = (void *)(r->_trailer + done);
			iov[n++].iov_len = r->_trailer_len - done;
		}
		want = (size_t)(total - r->sent);
		m.msg_iov = iov;
		m.msg_iovlen = (size_t)n;
		w = sendmsg(r->sock, &m, MSG_NOSIGNAL);
		if (w < 0 && errno == EAGAIN) {
			rc = zc__wait_or_again(r->sock, timeout_ms);
			if (rc < 0)
				return rc;
			continue;
		}
		if (w < 0)
			return -errno;
		r->sent += (uint64_t)w;
		if ((size_t)w < want) {
			rc = zc__after_short_send(r->sock);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

static int send_file(struct zc_response *r, int timeout_ms, uint64_t budget)
{
	uint64_t file_sent = r->sent - r->_header_len;
	uint64_t left = r->_file_len == ZC_TO_EOF ? ZC_TO_EOF
						   : r->_file_len - file_sent;
	uint64_t n = 0, want = left < budget ? left : budget;
	int rc = zc_sendfile(r->sock, r->file, r->_offset, want, timeout_ms, 0, &n);

	r->sent += n;
	if (r->_offset != ZC_FD_POSITION)
		r->_offset += (int64_t)n;
	if (r->_file_len == ZC_TO_EOF &&
	    ((rc == 0 && want == left) || (rc == -ENODATA && want < left))) {
		/* a pipe or device reached its end: now the size is known */
		r->_file_len = file_sent + n;
		r->total = r->_header_len + r->_file_len + r->_trailer_len;
		return 0;
	}
	if (rc == 0 && want < left)
		return ZC_RESPONSE_MORE; /* the budget, not the file, ended */
	return rc;
}

static int step(struct zc_response *r, int timeout_ms, uint64_t budget)
{
	switch (r->_state) {
	case ST_HEADER:
		if (r->_file_len == 0 && r->_header_len && r->_trailer_len)
			return send_both(r, timeout_ms);
		return send_memory(r, r->_header, r->_header_len, 0,
				   r->_file_len > 0 || r->_trailer_len > 0,
				   timeout_ms);
	case ST_FILE:
		return r->_file_len == 0 ? 0 : send_file(r, timeout_ms, budget);
	case ST_TRAILER:
		return send_memory(r, r->_trailer, r->_trailer_len,
				   r->_header_len + r->_file_len, 0, timeout_ms);
	}
	return 0;
}

static int send_steps(struct zc_response *r, int timeout_ms, uint64_t budget,
		      uint64_t *sent_now)
{
	uint64_t before = r->sent;
	int rc = 0;

	*sent_now = 0;
	if (r->_state == ST_DONE)
		return 0;
	if (r->_state == ST_NEW) {
		if (r->_corking) {
			rc = zc_cork_begin(r->sock, &r->_cork);
			if (rc < 0)
				return rc;
		}
		r->_state = ST_HEADER;
	}
	while (r->_state != ST_DONE) {
		uint64_t spent = r->sent - before;

		if (spent >= budget) {
			rc = ZC_RESPONSE_MORE;
			break;
		}
		/* UINT64_MAX: no budget (zc_response_send), ZC_TO_EOF intact */
		rc = step(r, timeout_ms,
			  budget == UINT64_MAX ? UINT64_MAX : budget - spent);
		if (rc != 0)
			break;
		/* send_both finished the trailer too */
		r->_state = r->_state == ST_HEADER && r->_file_len == 0 &&
					    r->sent == r->_header_len + r->_trailer_len
				    ? ST_DONE
				    : r->_state + 1;
	}
	*sent_now = r->sent - before;
	if (rc == 0)
		return zc_response_end(r);
	if (rc != -EAGAIN && rc != -ETIMEDOUT && rc != -EINTR &&
	    rc != ZC_RESPONSE_MORE)
		zc_response_end(r); /* the send's error is the one to report */
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

int zc_response_end(struct zc_response *r)
{
	return zc_cork_end(r->sock, &r->_cork);
}
