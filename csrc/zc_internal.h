/* SPDX-License-Identifier: MIT */
/* Private helpers shared by the zc_*.c files; not part of the public API. */
#ifndef ZC_INTERNAL_H
#define ZC_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>

/* Set *nonblock from the socket's O_NONBLOCK flag; -errno on failure. */
int zc__is_nonblocking(int fd, int *nonblock);

/*
 * After a send made partial progress: on a blocking socket only a signal
 * cuts a send short, so return -EINTR (the caller resumes); on a
 * non-blocking one return 0 and let the next call meet EAGAIN.
 */
int zc__after_short_send(int sock);

/* EAGAIN policy: wait as timeout_ms says (0 means return -EAGAIN). */
int zc__wait_or_again(int sock, int timeout_ms);

/* Send one memory range; like send(2) with MSG_NOSIGNAL, -errno on failure. */
ssize_t zc__send(int sock, const void *buf, size_t len, int more);

/* The non-sendfile routes; as zc_sendfile(), *sent starts at 0 here. */
int zc__send_fallback(int sock, int file, off_t *pos, uint64_t count,
		      int to_eof, int timeout_ms, uint64_t *sent);

#endif
