/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(off_t) == 8, "build with -D_FILE_OFFSET_BITS=64");

int zc_check_stream(int sock)
{
	int type = 0;
	socklen_t len = sizeof(type);

	if (getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return -errno;
	return type == SOCK_STREAM ? 0 : -EPROTOTYPE;
}

int zc__count_to_eof(int file, const off_t *pos, uint64_t *count)
{
	struct stat st;
	off_t start;

	if (fstat(file, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) || st.st_size == 0)
		return 0; /* /proc and sysfs files say 0 and have more */
	start = pos ? *pos : lseek(file, 0, SEEK_CUR);
	if (start < 0)
		return -errno;
	*count = st.st_size > start ? (uint64_t)(st.st_size - start) : 0;
	return 0;
}

/*
 * After sendfile sent less than asked: did the file run out?  Then the next
 * call returns 0 at once.  Pseudo files (size 0) count as run out: their
 * short reads are normal, and the next call says whether more follows.
 */
static int file_ran_out(int file, const off_t *pos)
{
	struct stat st;
	off_t at;

	if (fstat(file, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	at = pos ? *pos : lseek(file, 0, SEEK_CUR);
	return st.st_size == 0 || at >= st.st_size;
}

/*
 * sendfile sent less than asked, before count.  A non-blocking socket: its
 * buffer filled or the file ran out, and the next call meets EAGAIN or 0
 * either way, so nothing is looked at.  A blocking socket: a file that ran
 * out is not a signal; otherwise zc__short_send_blocking() decides.
 * *nonblock is -1 until the first short count of a zc_sendfile() call.
 */
static int after_short(int sock, int file, const off_t *pos, int *nonblock)
{
	if (*nonblock < 0) {
		int rc = zc__is_nonblocking(sock, nonblock);

		if (rc < 0)
			return rc;
	}
	if (*nonblock || file_ran_out(file, pos))
		return 0;
	return zc__short_send_blocking(sock);
}

int zc_sendfile(int sock, int file, int64_t offset, uint64_t count,
		int timeout_ms, unsigned flags, uint64_t *sent)
{
	struct zc__hold h;
	int rc;

	zc__hold_init(&h, sock);
	rc = zc__sendfile_held(&h, file, offset, count, timeout_ms, flags, sent);
	zc__hold_release(&h);
	return rc;
}

int zc_sendfile_id(int sock, int file, int64_t offset, uint64_t count,
		   int timeout_ms, unsigned flags, uint64_t *sent,
		   struct zc_fd_id *id)
{
	struct zc__hold h;
	int rc = 0;

	if (!(flags & ZC_ID_CHECK)) {
		/* Before the first syscall, not after: a blocking socket sits
		 * inside sendfile(2) for a whole stall, while another thread
		 * may close the number and accept() hand it to a new client. */
		if (flags & ZC_ID_TAKE)
			rc = zc_fd_id_get(sock, id);
		if (rc < 0)
			return rc;
		return zc_sendfile(sock, file, offset, count, timeout_ms,
				   flags & ZC_CHECK_STREAM, sent);
	}
	/* A resume sends through a duplicate checked against @id: checking
	 * the number and then sending to it would leave a window in which
	 * the number changes hands. */
	zc__hold_init(&h, sock);
	rc = zc__hold_pin_id(&h, id);
	if (rc == 0)
		rc = zc__sendfile_held(&h, file, offset, count, timeout_ms,
				       flags & ZC_CHECK_STREAM, sent);
	zc__hold_release(&h);
	return rc;
}

int zc__sendfile_held(struct zc__hold *h, int file, int64_t offset,
		      uint64_t count, int timeout_ms, unsigned flags,
		      uint64_t *sent)
{
	const int to_eof = count == ZC_TO_EOF;
	off_t pos = (off_t)offset;
	off_t *posp = offset == ZC_FD_POSITION ? NULL : &pos;
	uint64_t done = 0;
	int nonblock = -1; /* the socket's O_NONBLOCK: looked up once, lazily */
	int rc = 0;

	if (flags & ZC_CHECK_STREAM) {
		rc = zc_check_stream(h->caller);
		if (rc < 0)
			return rc;
	}
	if (offset < 0 && offset != ZC_FD_POSITION)
		return -EINVAL;
	if (count == 0)
		return 0;
	if (to_eof) {
		rc = zc__count_to_eof(file, posp, &count);
		if (rc < 0)
			return rc;
		if (count == 0)
			return 0;
	}

	while (done < count) {
		uint64_t left = count - done;
		size_t want = left < ZC_SENDFILE_MAX ? (size_t)left : ZC_SENDFILE_MAX;
		int fd = h->fd;
		ssize_t n = sendfile(fd, file, posp, want);

		rc = 0;
		if (n > 0) {
			done += (uint64_t)n;
			if ((size_t)n < want && done < count)
				rc = after_short(fd, file, posp, &nonblock);
		} else if (n == 0) { /* the file ended (or shrank) before count */
			rc = to_eof ? 0 : -ENODATA;
			break;
		} else if (errno == EAGAIN) {
			rc = zc__hold_wait_writable(h, timeout_ms);
		} else {
			rc = -errno;
			/* The kernel refuses this source: switch routes, but only
			 * before the first byte, so no stream mixes two methods. */
			if (done == 0 && (rc == -EINVAL || rc == -ENOSYS ||
					  rc == -EOPNOTSUPP)) {
				rc = zc__send_fallback(h, file, posp, count,
						       to_eof, timeout_ms, &done);
				break;
			}
		}
		if (rc < 0)
			break;
	}
	*sent += done;
	return rc;
}
