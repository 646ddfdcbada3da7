/* SPDX-License-Identifier: MIT */
/* Private helpers shared by the zc_*.c files; not part of the public API. */
#ifndef ZC_INTERNAL_H
#define ZC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- intrusive queue ---------------------------------------------------- */

/*
 * A circular doubly linked list with a sentinel head (libuv's uv__queue is
 * the model).  Embed a struct zc__queue in each element; an unlinked node
 * points at itself, so removing twice is harmless.
 */
struct zc__queue {
	struct zc__queue *next;
	struct zc__queue *prev;
};

#define zc__queue_data(node, type, field)                                    \
	((type *)(void *)((char *)(node) - offsetof(type, field)))

#define zc__queue_foreach(q, head)                                           \
	for ((q) = (head)->next; (q) != (head); (q) = (q)->next)

static inline void zc__queue_init(struct zc__queue *q)
{
	q->next = q->prev = q;
}

static inline int zc__queue_empty(const struct zc__queue *q)
{
	return q->next == q;
}

static inline int zc__queue_linked(const struct zc__queue *q)
{
	return q->next != q;
}

static inline struct zc__queue *zc__queue_head(const struct zc__queue *q)
{
	return q->next;
}

static inline void zc__queue_insert_tail(struct zc__queue *head,
					 struct zc__queue *q)
{
	q->next = head;
	q->prev = head->prev;
	q->prev->next = q;
	head->prev = q;
}

static inline void zc__queue_insert_head(struct zc__queue *head,
					 struct zc__queue *q)
{
	q->next = head->next;
	q->prev = head;
	q->next->prev = q;
	head->next = q;
}

static inline void zc__queue_remove(struct zc__queue *q)
{
	q->prev->next = q->next;
	q->next->prev = q->prev;
	zc__queue_init(q);
}

/* Move every element of `from` to the tail of `to`; `from` ends empty. */
static inline void zc__queue_move(struct zc__queue *from, struct zc__queue *to)
{
	if (zc__queue_empty(from))
		return;
	from->next->prev = to->prev;
	to->prev->next = from->next;
	from->prev->next = to;
	to->prev = from->prev;
	zc__queue_init(from);
}

/* ---- private areas of public structs ----------------------------------- */

/*
 * A public struct reserves ZC_PRIVATE bytes (zc.h) that only the library
 * reads; each .c file views them as its own struct, checked to fit.
 */
#define ZC__PRIV(type, obj) ((type *)(void *)(obj)->_private.bytes)
#define ZC__PRIV_FITS(type, pub)                                             \
	_Static_assert(sizeof(type) <= sizeof(((pub *)0)->_private.bytes),   \
		       #type " must fit in " #pub "'s private area")

/* ---- a transfer's hold on its socket ------------------------------------ */

/*
 * The caller's fd is only a number: if another thread closes it while a
 * transfer waits and accept() reuses the number, further syscalls on it
 * would send (or receive) another client's bytes.  So before its first wait
 * a transfer pins the socket with a duplicate, and the wait and every
 * syscall after it use the duplicate (h->fd).  After each wait
 * zc__hold_check() compares the caller's fd with the duplicate and stops
 * the transfer with -EBADF when the caller closed it or it names another
 * file now.  A transfer that never waits costs nothing; when dup fails
 * (EMFILE) the transfer goes on with the caller's fd, checked the same way.
 */
struct zc__hold {
	int fd;	    /* for the next syscall */
	int caller; /* the caller's fd */
	int dup;    /* our duplicate, or -1 */
	int known;  /* dev/ino below are set: pinned */
	dev_t dev;
	ino_t ino;
};

static inline void zc__hold_init(struct zc__hold *h, int fd)
{
	h->fd = h->caller = fd;
	h->dup = -1;
	h->known = 0;
	h->dev = 0;
	h->ino = 0;
}

/* Pin the socket before a wait (once); -errno (-EBADF when it is gone). */
int zc__hold_pin(struct zc__hold *h);

/* After a wait: 0, or -EBADF when the caller's fd no longer names our socket. */
int zc__hold_check(struct zc__hold *h);

/* Close the duplicate; safe twice. */
void zc__hold_release(struct zc__hold *h);

/* Wait for writability on the held socket as timeout_ms says (0 gives
 * -EAGAIN without pinning), then zc__hold_check(). */
int zc__hold_wait_writable(struct zc__hold *h, int timeout_ms);

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
int zc__send_fallback(struct zc__hold *h, int file, off_t *pos, uint64_t count,
		      int to_eof, int timeout_ms, uint64_t *sent);

/* zc_sendfile() on a held socket (zc_response_send() holds it across the
 * header, the file and the trailer). */
int zc__sendfile_held(struct zc__hold *h, int file, int64_t offset,
		      uint64_t count, int timeout_ms, unsigned flags,
		      uint64_t *sent);

/*
 * ZC_TO_EOF resolved to a count: for a regular file of non-zero size, the
 * bytes from *pos (NULL: the fd's position) to its end, so that a blocking
 * socket can tell a signal's short count from the end of the file.  Other
 * files (pipes, devices, /proc files that say size 0 and have more) keep
 * ZC_TO_EOF and end at the first 0 return.  -errno from fstat/lseek.
 */
int zc__count_to_eof(int file, const off_t *pos, uint64_t *count);

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

/* ---- MSG_ZEROCOPY ------------------------------------------------------- */

struct msghdr;
struct zc_completion;

/*
 * One error-queue message: 1 and *out for a zero-copy completion; the
 * error it carries (-ENOMSG for a TX timestamp) or -EPROTO for another
 * message or a cmsg too short for a sock_extended_err; -EIO when the
 * control data was truncated.
 */
int zc__parse_completion(const struct msghdr *msg, struct zc_completion *out);

#endif
