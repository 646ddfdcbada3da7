/* SPDX-License-Identifier: MIT */
/* Private helpers shared by the zc_*.c files; not part of the public API. */
#ifndef ZC_INTERNAL_H
#define ZC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct stat;

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

/* Forget a cork zc_cork_begin() set: the socket is no longer ours to undo. */
void zc__cork_forget(struct zc_cork_state *st);

/* Pin the socket before a wait (once); -errno (-EBADF when it is gone). */
int zc__hold_pin(struct zc__hold *h);

/* Pin the socket now, to the file dev/ino name (known already, so no
 * fstat(2) of the number): every later syscall uses a duplicate checked
 * against them.  -EBADF when the caller's fd names another file (or none). */
int zc__hold_pin_file(struct zc__hold *h, dev_t dev, ino_t ino);

/* Pin the socket now, to the file @id names: the duplicate is checked, not
 * the number, so no close and reuse between check and send can slip in.
 * -EBADF when the caller's fd names another file (or none) now. */
int zc__hold_pin_id(struct zc__hold *h, const struct zc_fd_id *id);

/* After a wait: 0, or -EBADF when the caller's fd no longer names our socket. */
int zc__hold_check(struct zc__hold *h);

/* Close the duplicate; safe twice. */
void zc__hold_release(struct zc__hold *h);

/* Wait for writability on the held socket as timeout_ms says (0 gives
 * -EAGAIN without pinning), then zc__hold_check(). */
int zc__hold_wait_writable(struct zc__hold *h, int timeout_ms);

/* CLOCK_MONOTONIC in milliseconds. */
long long zc__now_ms(void);

/* The socket's pending error as -errno (reading it clears it), or 0. */
int zc__socket_error(int sock);

/* Make close(2) of a socket send RST at once, dropping unsent bytes, so the
 * peer learns the stream broke instead of taking a FIN for a clean end. */
void zc__reset_on_close(int fd);

/* zc__reset_on_close() then close(2). */
void zc__reset_close(int fd);

/* A descriptor kept in reserve for EMFILE (on /dev/null), or -1. */
int zc__spare_open(void);

/*
 * The spare-fd trick of libev, libuv and nginx, after accept(2) failed with
 * EMFILE or ENFILE: close *spare, take one client off listen_fd's queue and
 * close it (with RST when reset), open the spare again (-1 if it cannot
 * be), so the client hears at once instead of waiting in the backlog and
 * the listener does not stay readable for ever.
 * Return: 0 when a client was taken off the queue and closed; -errno of
 * that accept(2) (-EAGAIN: the queue was empty, since accept(2) reports
 * EMFILE before it looks at the queue); -EMFILE without a spare (nothing
 * done).
 */
int zc__refuse_with_spare(int listen_fd, int *spare, int reset);

/*
 * One poll(2) for POLLOUT: 0 when writable (or hung up, or the fd is not
 * open: the next send reports it); -ETIMEDOUT, or -EAGAIN for timeout_ms 0;
 * -EINTR; -errno of an error pending on the connection; 1 when only
 * POLLERR came and no error is pending: the error queue holds messages,
 * which keep POLLERR up until they are read.
 */
int zc__poll_out(int sock, int timeout_ms);

/* zc__poll_out() for any poll event; a non-socket's POLLERR counts as ready
 * (a pipe without readers: the next syscall reports EPIPE). */
int zc__poll_event(int fd, short ev, int timeout_ms);

/* Wait for ev on fd as zc_wait_writable() waits for POLLOUT: messages on a
 * socket's error queue make it nap between looks instead of spinning. */
int zc__wait_event(int fd, short ev, int timeout_ms);

/* How long zc_wait_writable() sleeps at most between two looks while the
 * error queue holds messages it must not read. */
#define ZC__PACE_MAX_MS 8

/* Set *nonblock from the socket's O_NONBLOCK flag; -errno on failure. */
int zc__is_nonblocking(int fd, int *nonblock);

/*
 * The socket took fewer bytes than it was offered (the source had them).
 * Non-blocking socket: its buffer filled; return 0 and let the next call
 * meet EAGAIN.  Blocking socket: an error on the connection or a signal cut
 * the send short; return 0 on POLLHUP (the next call reports it), the
 * pending error as -errno, else -EINTR so the caller runs its handlers and
 * resumes (also when POLLERR only means messages on the error queue).
 */
int zc__after_short_send(int sock);

/* zc__after_short_send() for a socket already known to be blocking. */
int zc__short_send_blocking(int sock);

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
 * A hold on a fd that is not a socket (a file, a pipe): every syscall uses
 * the caller's fd, no duplicate is made, and zc__hold_check() still notices
 * when the number comes to name another file.
 */
static inline void zc__hold_init_plain(struct zc__hold *h, int fd, dev_t dev,
				       ino_t ino)
{
	zc__hold_init(h, fd);
	h->known = 1;
	h->dev = dev;
	h->ino = ino;
}

/*
 * Wait until a source that would block in the kernel (a blocking socket, a
 * pty) has bytes, when timeout_ms is positive: 0, -ETIMEDOUT, -EINTR.  With
 * timeout_ms 0 or ZC_WAIT_FOREVER it returns 0 at once: the read blocks in
 * the kernel as the caller's blocking fd asks.
 */
int zc__wait_source(int fd, int timeout_ms);

/*
 * splice(2) from src straight to dst, one of them a pipe (no pipe between):
 * zc_splice() without @via, and zc_sendfile()'s route for a pipe source.
 * Each side is held (zc__hold_init() for a socket, zc__hold_init_plain()
 * otherwise); after each wait both are checked (-EBADF).  Offsets as
 * zc_splice() (NULL: the fd's own position); *done is progress within
 * count.  Every splice is SPLICE_F_NONBLOCK, so waits happen in poll(2),
 * which a signal always interrupts.  On EAGAIN it waits for the side that
 * is not ready: an empty source pipe for POLLIN, otherwise the destination
 * for POLLOUT (timeout_ms: 0 gives -EAGAIN, ZC_WAIT_FOREVER, or a bound
 * that gives -ETIMEDOUT, and also bounds a blocking source's wait).  Pipe
 * -> blocking socket asks for what the pipe holds, so a short count means a
 * signal (-EINTR) or an error pending on the socket (0: the next call
 * reports it).  Returns 0 when count bytes went (or src ended, with
 * to_eof), -ENODATA when src ended before, -errno.
 */
int zc__splice_direct(struct zc__hold *src, off_t *src_off,
		      struct zc__hold *dst, off_t *dst_off, uint64_t count,
		      int to_eof, int timeout_ms, uint64_t *done);

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

/* ---- open-file cache (file_cache.c) -------------------------------------- */

/* Paths longer than this are opened for each request, not cached. */
#define ZC__CACHE_KEY_MAX 200

/* What a response needs of an open file. */
struct zc__file {
	int fd;		     /* O_RDONLY (regular file) or O_PATH (directory) */
	uint32_t mode;	     /* st_mode */
	uint64_t size;
	int64_t mtime;	     /* seconds */
	uint32_t mtime_nsec;
	uint64_t ino;
	uint64_t dev;
	const unsigned char *body; /* a copy of a small file's bytes, or NULL */
};

struct zc__fentry {
	struct zc__file f;
	struct zc__queue lru;	  /* idle entries (LRU first), or the free list */
	struct zc__fentry *hnext; /* hash chain */
	int64_t checked_ms;	  /* last time the path was compared */
	uint32_t hash;
	uint32_t refs;		  /* responses using it */
	uint16_t key_len;
	uint8_t stale;		  /* out of the table: closed at the last put */
	char key[ZC__CACHE_KEY_MAX];
};

/*
 * A bounded table of open files, keyed by the path under the root.  Entries
 * in use (refs > 0) are never closed; an idle entry is closed when its slot
 * is needed (least recently used first) or when it is found changed.  A
 * cached path is compared with fstatat() at most once per valid_ms: the
 * same inode keeps its fd (its size and times are refreshed), another one
 * (or none) makes the next lookup open the path again.  One thread only.
 */
struct zc__fcache {
	struct zc__fentry *entries;
	struct zc__fentry **buckets;
	unsigned char *bodies; /* n slots of body_max bytes, or NULL */
	unsigned n;
	unsigned mask;
	struct zc__queue lru;
	struct zc__queue free;
	int root_fd;
	unsigned open_flags;
	int valid_ms;
	size_t body_max;
	uint64_t hits, misses, stale;
};

/* Bytes of memory zc__fcache_init() carves for n entries (0: no cache). */
size_t zc__fcache_mem(unsigned n, size_t body_max);

/* mem: zc__fcache_mem() bytes, pointer-aligned.  n 0 disables the cache. */
void zc__fcache_init(struct zc__fcache *c, void *mem, unsigned n, int root_fd,
		     unsigned open_flags, int valid_ms, size_t body_max);

/*
 * Open path (len bytes, NUL-terminated) through the cache.  Returns 0 with
 * *out the entry, a reference taken (zc__fcache_put() it); or 0 with *out
 * NULL when the file could not be cached (cache off, path too long, every
 * entry in use): then *own describes a descriptor the caller must close.
 * -errno from zc_open_beneath() (nothing is cached for a failure).
 */
int zc__fcache_get(struct zc__fcache *c, const char *path, size_t len,
		   int64_t now_ms, struct zc__fentry **out, struct zc__file *own);

/* Drop a reference from zc__fcache_get(). */
void zc__fcache_put(struct zc__fcache *c, struct zc__fentry *e);

/* Close up to max idle entries (to free descriptors); returns how many. */
unsigned zc__fcache_trim(struct zc__fcache *c, unsigned max);

/* Close every entry (none may be in use). */
void zc__fcache_destroy(struct zc__fcache *c);

/* Fill f from st, fd and no body. */
void zc__file_from_stat(struct zc__file *f, int fd, const struct stat *st);


/* ---- HTTP response pieces (http_respond.c, http_path.c) ------------------- */

/* Well-formed UTF-8: no overlong forms, surrogates or code points > U+10FFFF. */
int zc__utf8_ok(const unsigned char *s, size_t n);

/* The Content-Type for a file name, from its extension (never NULL). */
const char *zc__mime_type(const char *name, size_t len);

/* IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): 29 bytes and a NUL. */
#define ZC__DATE_LEN 29
void zc__http_date(char out[ZC__DATE_LEN + 1], int64_t t);

/* Common log format time ("10/Oct/2000:13:55:36 +0000"): 26 bytes + NUL. */
#define ZC__CLF_DATE_LEN 26
void zc__clf_date(char out[ZC__CLF_DATE_LEN + 1], int64_t t);

/* Parse an IMF-fixdate; 0 and *t (seconds since the epoch), or -EINVAL. */
int zc__http_parse_date(const char *s, size_t n, int64_t *t);

/* A strong ETag, quotes included, from inode, size and mtime; its length. */
#define ZC__ETAG_MAX 64
size_t zc__etag(char out[ZC__ETAG_MAX], const struct zc__file *f);

/* Does an If-None-Match list ("*", or tags, weak or not) match etag? */
int zc__etag_list_match(const char *list, size_t n, const char *etag,
			size_t elen);

/* zc__parse_range() results */
#define ZC__RANGE_NONE 0  /* no usable range: send the whole file (200) */
#define ZC__RANGE_ONE 1	  /* one satisfiable range: 206 */
#define ZC__RANGE_UNSAT 2 /* nothing satisfiable: 416 */

/*
 * A Range value against a representation of size bytes.  Several ranges,
 * another unit or bad syntax give ZC__RANGE_NONE (the header is ignored,
 * as RFC 9110 14.2 allows).  For ZC__RANGE_ONE: *first and *len.
 */
int zc__parse_range(const char *v, size_t n, uint64_t size, uint64_t *first,
		    uint64_t *len);

/*
 * Write an HTML listing of the directory dir_fd (O_PATH or O_RDONLY) into
 * a new memfd, titled with the decoded path (len bytes, shown as
 * "/path/").  At most max_entries names.  Returns 0 with *out_fd (the
 * caller's) and *size, or -errno.
 */
int zc__listing(int dir_fd, const char *path, size_t len,
		unsigned max_entries, int *out_fd, uint64_t *size);

#endif
