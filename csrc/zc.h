/* SPDX-License-Identifier: MIT */
/*
 * zc.h - the public interface of the zerocopy C core.
 *
 * Conventions (see csrc/README.md):
 *  - every function returns 0 (or a count) on success and -errno on failure;
 *  - nothing allocates, prints or exits; structs are caller-allocated;
 *  - a blocking wait that a signal interrupts returns -EINTR with the progress
 *    so far in an out-parameter, so the caller can run its handlers and resume;
 *  - sendfile(2) cannot take MSG_NOSIGNAL: a process that sends to sockets
 *    should ignore SIGPIPE (Python does), or a closed peer kills it.
 */
#ifndef ZC_H
#define ZC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Count meaning "up to the end of the file" (resolved once, with fstat). */
#define ZC_TO_EOF UINT64_MAX

/* Offset meaning "the file descriptor's own position" (used and advanced). */
#define ZC_FD_POSITION (-1)

/* Wait forever for writability (timeout_ms argument). */
#define ZC_WAIT_FOREVER (-1)

/* zc_sendfile() flags. */
#define ZC_CHECK_STREAM 0x1 /* fail with -EPROTOTYPE unless sock is SOCK_STREAM */

/* Largest count one sendfile(2) call accepts; the kernel caps it anyway. */
#define ZC_SENDFILE_MAX 0x7ffff000

/**
 * zc_wait_writable() - wait until a socket can take more bytes
 * @sock: the socket
 * @timeout_ms: ZC_WAIT_FOREVER, 0 (just look) or a bound in milliseconds
 *
 * Return: 0 when writable (or in error: the next send reports it),
 * -ETIMEDOUT when the bound passed, -EAGAIN when @timeout_ms is 0 and it is
 * not writable, -EINTR when a signal arrived.
 */
int zc_wait_writable(int sock, int timeout_ms);

/**
 * zc_sendfile() - send a file range to a stream socket
 * @sock: connected stream socket (blocking or not)
 * @file: file descriptor to read from
 * @offset: byte offset to start at, or ZC_FD_POSITION to use (and advance)
 *          the descriptor's own position; an explicit offset leaves the
 *          descriptor's position untouched
 * @count: bytes to send, or ZC_TO_EOF
 * @timeout_ms: what to do when the socket would block: 0 returns -EAGAIN,
 *              ZC_WAIT_FOREVER waits, a positive value waits that long for
 *              each stretch of unwritability
 * @flags: 0 or ZC_CHECK_STREAM
 * @sent: in/out: this call ADDS the bytes it sent (also on errors), so a
 *        caller that resumes after -EINTR keeps one running total; the
 *        caller advances @offset and lowers @count by them when resuming
 *
 * Sends with sendfile(2) in chunks of at most ZC_SENDFILE_MAX.  When the
 * kernel refuses the source before the first byte (pipes, sockets, some
 * special files: -EINVAL, -ENOSYS, -EOPNOTSUPP), falls back to splice(2)
 * from a pipe, pread+send for seekable files, peek+send+consume for socket
 * sources, and read+send otherwise; it never switches method after a byte
 * went out.  On the read+send route (character devices) what was read
 * cannot be put back, so a chunk once read is finished, waiting for the
 * socket even when @timeout_ms is 0; if a positive @timeout_ms expires
 * first, the unsent rest of that chunk (at most 16 KiB) is lost and *@sent
 * says exactly what went out.
 *
 * Return: 0 when @count bytes went out (or the file ended, for ZC_TO_EOF);
 * -ENODATA when the file ended before @count bytes (truncated file);
 * -EAGAIN, -ETIMEDOUT as @timeout_ms says; -EINTR when a signal interrupted
 * the transfer (also a short count on a blocking socket: call again to
 * resume); -EPROTOTYPE when ZC_CHECK_STREAM finds a non-stream socket;
 * any other -errno from the syscalls (-EPIPE, -ECONNRESET, -EBADF, ...).
 */
int zc_sendfile(int sock, int file, int64_t offset, uint64_t count,
		int timeout_ms, unsigned flags, uint64_t *sent);

/**
 * struct zc_cork_state - what zc_cork_begin() changed, for zc_cork_end()
 * @_changed: 1 when cork was set by zc_cork_begin() and must be undone
 */
struct zc_cork_state {
	int _changed;
};

/**
 * zc_cork_begin() - hold partial TCP segments back until zc_cork_end()
 * @sock: a TCP socket (other sockets are left alone and succeed)
 * @st: caller-allocated state
 *
 * Sets TCP_CORK unless it is already set (then zc_cork_end() leaves it set).
 * TCP_NODELAY is never changed, so it keeps its value.
 *
 * Return: 0, or -errno from getsockopt/setsockopt.
 */
int zc_cork_begin(int sock, struct zc_cork_state *st);

/**
 * zc_cork_end() - undo zc_cork_begin(): uncork, which pushes what is queued
 * @sock: the socket given to zc_cork_begin()
 * @st: its state; safe to call twice
 *
 * Return: 0, or -errno from setsockopt.
 */
int zc_cork_end(int sock, struct zc_cork_state *st);

/**
 * struct zc_response - one header + file range + trailer, resumable
 * @sock: the socket
 * @file: the file descriptor
 * @sent: bytes of the whole response sent so far
 * @total: bytes of the whole response (header + file range + trailer)
 *
 * The header and trailer memory is the caller's and must stay valid and
 * unchanged until the response is done or abandoned.  All fields starting
 * with '_' are private.
 */
struct zc_response {
	int sock;
	int file;
	uint64_t sent;
	uint64_t total;
	const unsigned char *_header;
	size_t _header_len;
	const unsigned char *_trailer;
	size_t _trailer_len;
	int64_t _offset;
	uint64_t _file_len;
	struct zc_cork_state _cork;
	int _corking;
	int _state;
};

/**
 * zc_response_init() - describe a response; sends nothing
 * @r: caller-allocated
 * @sock: connected stream socket
 * @file: file descriptor, or -1 when @count is 0 (header and trailer only)
 * @offset: start in the file, or ZC_FD_POSITION (used and advanced)
 * @count: file bytes, or ZC_TO_EOF (resolved now with fstat)
 * @header: bytes sent before the file (may be NULL when @header_len is 0)
 * @header_len: their length
 * @trailer: bytes sent after the file
 * @trailer_len: their length
 *
 * Return: 0, -EINVAL for a NULL pointer with a length or a range that does
 * not fit in the file offset type, or -errno from fstat/lseek.
 */
int zc_response_init(struct zc_response *r, int sock, int file, int64_t offset,
		     uint64_t count, const void *header, size_t header_len,
		     const void *trailer, size_t trailer_len);

/**
 * zc_response_send() - make progress on a response
 * @r: from zc_response_init()
 * @timeout_ms: as for zc_sendfile()
 * @sent_now: out, bytes sent by this call (always set); the running total
 *            is @r->sent
 *
 * The first call corks the socket when a header or trailer surrounds file
 * data (a lone header goes with MSG_MORE instead, which costs no syscall);
 * the call that completes the response uncorks it.  On an error other than
 * -EAGAIN, -ETIMEDOUT or -EINTR the socket is uncorked before returning.
 *
 * Return: 0 when the response is complete; -EAGAIN/-ETIMEDOUT/-EINTR (call
 * again to continue); -ENODATA when the file ended early; other -errno.
 */
int zc_response_send(struct zc_response *r, int timeout_ms, uint64_t *sent_now);

/**
 * zc_response_end() - restore the socket options a response changed
 * @r: the response, complete or abandoned; safe to call more than once
 *
 * Return: 0, or -errno from setsockopt.
 */
int zc_response_end(struct zc_response *r);

/* ---- MSG_ZEROCOPY sends and completion tracking ---------------------- */

/*
 * The kernel numbers each successful non-empty MSG_ZEROCOPY send on a socket
 * (0, 1, 2, ... wrapping at 2**32) and later reports on the socket's error
 * queue, as inclusive ranges [lo, hi], which sends it no longer references.
 * Until then the sent memory must stay allocated and unchanged.
 */

/**
 * struct zc_completion - one completion range from the error queue
 * @lo: first sequence number covered
 * @hi: last sequence number covered (may be below @lo after wrapping)
 * @copied: 1 when the kernel copied the data after all
 *          (SO_EE_CODE_ZEROCOPY_COPIED: always so on loopback and veth)
 */
struct zc_completion {
	uint32_t lo;
	uint32_t hi;
	uint32_t copied;
};

/**
 * struct zc_track_rec - one in-flight send; caller-allocated array element
 *
 * All fields are private.
 */
struct zc_track_rec {
	uint64_t _token;
	uint8_t _done;
	uint8_t _last;
};

/**
 * struct zc_tracker - sequence numbers of in-flight sends -> buffer tokens
 * @next_seq: the sequence number the next zero-copy send will take
 *
 * A ring of the caller's zc_track_rec array, oldest send first.  A buffer
 * (token) may take several sends; it is free when the send marked last for
 * it, and every send before, have completed.  Buffers are released in send
 * order: a completion for a later send only marks it done until the ones
 * before it complete too, so nothing is ever released early.
 */
struct zc_tracker {
	struct zc_track_rec *_recs;
	uint32_t _cap;
	uint32_t _head;
	uint32_t _count;
	uint32_t next_seq;
};

/**
 * zc_zerocopy_enable() - set SO_ZEROCOPY on a socket
 * @sock: a TCP socket
 *
 * Return: 0; -EOPNOTSUPP (AF_UNIX, other families) or -ENOPROTOOPT (kernels
 * before 4.14) when the socket cannot do zero-copy sends; other -errno.
 */
int zc_zerocopy_enable(int sock);

/**
 * zc_tracker_init() - an empty tracker over the caller's array
 * @t: caller-allocated
 * @recs: caller-allocated array, alive as long as @t
 * @cap: its length (the most sends in flight at once)
 *
 * Return: 0, or -EINVAL for a NULL array or @cap 0.
 */
int zc_tracker_init(struct zc_tracker *t, struct zc_track_rec *recs, uint32_t cap);

/**
 * zc_tracker_pending() - sends still waiting for their completion
 * @t: the tracker
 *
 * Return: the number of records in flight.
 */
uint32_t zc_tracker_pending(const struct zc_tracker *t);

/**
 * zc_send_tracked() - one send(2), with MSG_ZEROCOPY when @t is given
 * @sock: connected stream socket (SO_ZEROCOPY enabled when @t is given)
 * @t: tracker recording the sequence number, or NULL for a plain send
 * @buf: the bytes; with @t they are on loan to the kernel until the
 *       tracker reports @token free
 * @len: their length, > 0
 * @token: the caller's name for the buffer (reported back when free)
 * @msg_flags: extra MSG_* flags (MSG_DONTWAIT, MSG_MORE)
 *
 * A send that took all of @len is recorded as the buffer's last.  Signals
 * are not retried: -EINTR comes back to the caller.  MSG_NOSIGNAL is always
 * added.
 *
 * Return: bytes sent (one sequence number consumed when @t is given);
 * -ENOSPC when @t is full (nothing sent: reap first); -ENOBUFS when the
 * kernel cannot track another zero-copy send (optmem_max or locked-memory
 * limit: nothing sent, no number consumed; resend the same bytes without
 * @t); -EAGAIN, -EPIPE, ... as send(2).
 */
long zc_send_tracked(int sock, struct zc_tracker *t, const void *buf, size_t len,
		     uint64_t token, int msg_flags);

/**
 * zc_tracker_seal() - mark @token's newest send as its last
 * @t: the tracker
 * @token: a buffer whose sending stopped early (an error after some sends)
 *
 * Return: 1 when a record was marked; 0 when @token has no record in
 * flight (nothing of it went out zero-copy, or all of it completed).
 */
int zc_tracker_seal(struct zc_tracker *t, uint64_t token);

/**
 * zc_reap_completions() - read completions from the error queue, never blocking
 * @sock: the socket
 * @out: caller-allocated array
 * @max: its length
 *
 * Accepts IP_RECVERR and IPV6_RECVERR messages (a v6 socket may carry
 * v4-mapped traffic).  Each message is one range, possibly merged from many
 * sends by the kernel.
 *
 * Return: ranges written to @out (0 when the queue is empty); -EPROTO for
 * a message that is not a zero-copy completion; -EIO when the control data
 * was truncated (MSG_CTRUNC); the error itself when the queue holds one.
 */
int zc_reap_completions(int sock, struct zc_completion *out, size_t max);

/**
 * zc_tracker_complete() - apply completions, collect the tokens now free
 * @t: the tracker
 * @c: completion ranges (any order; ranges may repeat, overlap, wrap, or
 *     cover sends the tracker no longer holds: those are ignored)
 * @n: how many
 * @freed: caller-allocated array for tokens now free, oldest first
 * @max_freed: its length; more free tokens wait for the next call (pass
 *             @n = 0 to collect them)
 *
 * Return: the number of tokens written to @freed.
 */
size_t zc_tracker_complete(struct zc_tracker *t, const struct zc_completion *c,
			   size_t n, uint64_t *freed, size_t max_freed);

/**
 * zc_wait_completions() - wait until the error queue has something to reap
 * @sock: the socket
 * @timeout_ms: ZC_WAIT_FOREVER, 0 or a bound in milliseconds
 *
 * Polls for POLLERR.  Reap until empty before waiting again: an undrained
 * queue makes this return at once.  On a hung-up socket without POLLERR it
 * sleeps up to 10 ms instead of spinning.
 *
 * Return: 0 when there may be completions; -ETIMEDOUT (-EAGAIN for 0);
 * -EINTR when a signal arrived.
 */
int zc_wait_completions(int sock, int timeout_ms);


/* ---- splice: pipe pool, splice loops, relay ------------------------- */

#ifdef __cplusplus
}
#endif

#endif /* ZC_H */
