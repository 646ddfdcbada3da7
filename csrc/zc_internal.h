/* SPDX-License-Identifier: MIT */
/* Private helpers shared by the zc_*.c files; not part of the public API. */
#ifndef ZC_INTERNAL_H
#define ZC_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

/* Set *nonblock from the socket's O_NONBLOCK flag; -errno on failure. */
int zc__is_nonblocking(int fd, int *nonblock);

/*
 * The socket took fewer bytes than it was offered (the source had them).
 * Non-blocking socket: its buffer filled; return 0 and let the next call
 * meet EAGAIN.  Blocking socket: an error on the connection or a signal cut
 * the send short; return 0 when poll shows POLLERR/POLLHUP (the next call
 * reports the error), else -EINTR so the caller runs its handlers and
 * resumes.
 */
int zc__after_short_send(int sock);

/* zc__after_short_send() for a socket already known to be blocking. */
int zc__short_send_blocking(int sock);

/* EAGAIN policy: wait as timeout_ms says (0 means return -EAGAIN). */
int zc__wait_or_again(int sock, int timeout_ms);

/* Send one memory range; like send(2) with MSG_NOSIGNAL, -errno on failure. */
ssize_t zc__send(int sock, const void *buf, size_t len, int more);

/* The non-sendfile routes; unlike zc_sendfile(), *sent is progress within
 * count (the caller passes a counter at 0). */
int zc__send_fallback(int sock, int file, off_t *pos, uint64_t count,
		      int to_eof, int timeout_ms, uint64_t *sent);

/*
 * splice(2) from src straight to dst, one of them a pipe (no pipe between):
 * zc_splice() without @via, and zc_sendfile()'s route for a pipe source.
 * Offsets as zc_splice() (NULL: the fd's own position); *done is progress
 * within count.  Every splice is SPLICE_F_NONBLOCK, so waits happen in
 * poll(2), which a signal always interrupts.  On EAGAIN it waits for the
 * side that is not ready: an empty source pipe for POLLIN, otherwise the
 * destination for POLLOUT (timeout_ms: 0 gives -EAGAIN, ZC_WAIT_FOREVER, or
 * a bound that gives -ETIMEDOUT).  Pipe -> blocking socket asks for what the
 * pipe holds, so a short count means a signal (-EINTR) or an error pending
 * on the socket (0: the next call reports it).  Returns 0 when count bytes
 * went (or src ended, with to_eof), -ENODATA when src ended before, -errno.
 */
int zc__splice_direct(int src, off_t *src_off, int dst, off_t *dst_off,
		      uint64_t count, int to_eof, int timeout_ms,
		      uint64_t *done);

#endif
