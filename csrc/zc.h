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

/* ---- conventions and helpers shared by every capability ---------------- */

/*
 * State that only the library reads, of a fixed size so that callers can
 * allocate the struct (and bindings can size it) without seeing inside.
 */
#define ZC_PRIVATE(nbytes)                                                   \
	union {                                                              \
		unsigned char bytes[nbytes];                                 \
		uint64_t align_u64;                                          \
		void *align_ptr;                                             \
	} _private

/* Count meaning "up to the end of the file" (resolved once, with fstat). */
#define ZC_TO_EOF UINT64_MAX

/* Offset meaning "the file descriptor's own position" (used and advanced). */
#define ZC_FD_POSITION (-1)

/* Wait forever for writability (timeout_ms argument). */
#define ZC_WAIT_FOREVER (-1)

/**
 * zc_check_stream() - is this fd a SOCK_STREAM socket?
 * @sock: the file descriptor
 *
 * Return: 0 when it is; -EPROTOTYPE for another socket type; -ENOTSOCK for
 * a file that is no socket; other -errno from getsockopt.
 */
int zc_check_stream(int sock);

/**
 * struct zc_fd_id - which open file a descriptor named, for zc_fd_id_check()
 *
 * Caller-allocated; its contents are private.
 */
struct zc_fd_id {
	ZC_PRIVATE(16);
};

/**
 * zc_fd_id_get() - remember which open file @fd names now
 * @fd: a file descriptor (a socket)
 * @id: out: its identity (device and inode)
 *
 * A transfer resumed after -EINTR is given the descriptor's number again.
 * If another thread closed it meanwhile and the number went to a new file
 * (accept() hands it to the next client), the resumed call would send that
 * client the rest of the data.  Within one call the library guards its own
 * waits; across calls, take the identity before the first call and check
 * it with zc_fd_id_check() before each resume (and before each step of a
 * response kept across calls).
 *
 * Return: 0, or -errno from fstat (-EBADF when @fd is not open).
 */
int zc_fd_id_get(int fd, struct zc_fd_id *id);

/**
 * zc_fd_id_check() - does @fd still name the file zc_fd_id_get() saw?
 * @fd: the descriptor given to zc_fd_id_get()
 * @id: its identity from zc_fd_id_get()
 *
 * Return: 0 when it does; -EBADF when @fd is closed or names another file.
 */
int zc_fd_id_check(int fd, const struct zc_fd_id *id);

/**
 * zc_fd_dup_checked() - a duplicate of @fd, if it still names @id's file
 * @fd: the descriptor given to zc_fd_id_get()
 * @id: its identity from zc_fd_id_get()
 * @dup: out: the duplicate (O_CLOEXEC), or -1; written before the call
 *       returns, so a caller whose own code may be interrupted as the call
 *       returns (a signal handler that raises) can still close it
 *
 * Syscalls on the duplicate reach the file @id names even if another thread
 * closes @fd and the number is reused: the duplicate is checked, not the
 * number, so nothing can change hands between the check and the use.
 *
 * Return: 0; -EBADF when @fd is closed or names another file (*@dup is -1);
 * -EMFILE or another -errno from fcntl(F_DUPFD_CLOEXEC).
 */
int zc_fd_dup_checked(int fd, const struct zc_fd_id *id, int *dup);

/**
 * zc_fd_close_each() - close every descriptor >= 0 in @fds and set it to -1
 * @fds: descriptors from zc_fd_dup_checked(), or -1
 * @n: how many
 *
 * One call, so a caller interrupted as it returns has closed all or none.
 */
void zc_fd_close_each(int *fds, unsigned n);

/**
 * zc_wait_writable() - wait until a socket can take more bytes
 * @sock: the socket
 * @timeout_ms: ZC_WAIT_FOREVER, 0 (just look) or a bound in milliseconds
 *
 * Messages on the socket's error queue (MSG_ZEROCOPY completions, TX
 * timestamps) keep POLLERR up, so poll(2) cannot wait for writability while
 * they are there; they belong to whoever asked for them and are left
 * unread: the wait then looks again every few milliseconds (at most
 * ZC__PACE_MAX_MS, 8) until the socket is writable or the time is up.
 *
 * Return: 0 when writable (or hung up: the next send reports it); the error
 * pending on the connection as -errno (reading it clears it); -ETIMEDOUT
 * when the bound passed, -EAGAIN when @timeout_ms is 0 and it is not
 * writable, -EINTR when a signal arrived.
 */
int zc_wait_writable(int sock, int timeout_ms);

/* ---- sendfile: a file range to a socket --------------------------------- */

/* zc_sendfile() flags. */
#define ZC_CHECK_STREAM 0x1 /* fail with -EPROTOTYPE unless sock is SOCK_STREAM */
/* zc_sendfile_id() flags, with the above. */
#define ZC_ID_TAKE 0x2	    /* first record which socket sock names */
#define ZC_ID_CHECK 0x4	    /* first check sock still names that socket */

/* Largest count one sendfile(2) call accepts; the kernel caps it anyway. */
#define ZC_SENDFILE_MAX 0x7ffff000

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
 * cannot be put back: @timeout_ms applies before each read, and a chunk
 * once read (at most 16 KiB) is finished, waiting as long as it takes.
 *
 * @timeout_ms matters only when the socket is non-blocking: a blocking
 * socket blocks in the kernel (until a signal, which gives -EINTR).
 *
 * Return: 0 when @count bytes went out (or the file ended, for ZC_TO_EOF);
 * -ENODATA when the file ended before @count bytes (truncated file);
 * -EAGAIN, -ETIMEDOUT as @timeout_ms says; -EINTR when a signal interrupted
 * the transfer (a blocking socket that took less than offered, with no error
 * pending on it: call again to resume); -EPROTOTYPE when ZC_CHECK_STREAM
 * finds a non-stream socket;
 * any other -errno from the syscalls (-EPIPE, -ECONNRESET, -EBADF, ...).
 */
int zc_sendfile(int sock, int file, int64_t offset, uint64_t count,
		int timeout_ms, unsigned flags, uint64_t *sent);

/**
 * zc_sendfile_id() - zc_sendfile() that knows which socket it resumes on
 * @sock, @file, @offset, @count, @timeout_ms, @sent: as for zc_sendfile()
 * @flags: ZC_CHECK_STREAM, and ZC_ID_TAKE on the first call (records in @id
 *         which socket @sock names) or ZC_ID_CHECK on a resumed one (sends
 *         nothing unless @sock still names the socket in @id)
 * @id: caller-allocated, kept between the calls of one transfer
 *
 * A caller that resumes after -EINTR gives the same descriptor number; if
 * another thread closed it meanwhile and accept() handed the number to a new
 * client, zc_sendfile() would send that client the rest of the file.  This
 * takes the socket's identity in the same call, before the first send (one
 * fstat: a blocking socket may sit in the kernel for a whole stall while the
 * number changes hands).  A resumed call sends through a duplicate of @sock
 * that it checked against @id, so every byte goes to that socket or none
 * does (see zc_fd_id_get()).
 *
 * Return: as zc_sendfile(); -EBADF also when ZC_ID_CHECK finds @sock closed
 * or naming another file.
 */
int zc_sendfile_id(int sock, int file, int64_t offset, uint64_t count,
		   int timeout_ms, unsigned flags, uint64_t *sent,
		   struct zc_fd_id *id);

/* ---- kernel TLS: may file bytes go out on this socket? ------------------ */

/**
 * zc_tls_tx_offloaded() - does the kernel encrypt what is sent on @sock?
 * @sock: a socket
 *
 * A TLS session that lives in user space (OpenSSL through Python's ssl
 * module) must never get file bytes from sendfile(2) or splice(2): they would
 * reach the peer as plaintext inside the TLS stream.  With kernel TLS (the
 * "tls" ULP with TX keys installed, e.g. by OpenSSL's SSL_OP_ENABLE_KTLS)
 * the kernel encrypts them, and zero-copy sends are safe.
 *
 * Return: 1 when kernel TLS TX is active; 0 when not (also for non-TCP
 * sockets and kernels without TLS); -errno from getsockopt (-EBADF, ...).
 */
int zc_tls_tx_offloaded(int sock);

/* ---- TCP_CORK: a small header and the file after it in full segments ---- */

/**
 * struct zc_cork_state - what zc_cork_begin() changed, for zc_cork_end()
 *
 * Caller-allocated; its contents are private.
 */
struct zc_cork_state {
	ZC_PRIVATE(8);
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

/* ---- responses: header + file range + trailer, resumable ---------------- */

/**
 * struct zc_response - one header + file range + trailer, resumable
 * @sock: the socket
 * @file: the file descriptor (-1 for a response without file bytes)
 * @sent: bytes of the whole response sent so far
 * @total: bytes of the whole response (header + file range + trailer), or
 *         ZC_TO_EOF while the length of a pipe-like source is unknown
 *
 * The header and trailer memory is the caller's and must stay valid and
 * unchanged until the response is done or abandoned.
 */
struct zc_response {
	int sock;
	int file;
	uint64_t sent;
	uint64_t total;
	ZC_PRIVATE(96);
};

/**
 * zc_response_init() - describe a response; sends nothing
 * @r: caller-allocated
 * @sock: connected stream socket
 * @file: file descriptor, or -1 when @count is 0 (header and trailer only)
 * @offset: start in the file, or ZC_FD_POSITION (used and advanced)
 * @count: file bytes, or ZC_TO_EOF (resolved now with fstat for a regular
 *         file of non-zero size; otherwise known when the file ends, and
 *         @r->total stays ZC_TO_EOF until then)
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
 * @sent_now: out, bytes sent by this call (always set), or NULL; the running total
 *            is @r->sent
 *
 * The first call corks the socket when a trailer follows file data, or
 * when a header precedes file data of unknown length (a header before a
 * known, non-empty range goes with MSG_MORE instead, which costs no
 * syscall); the call that completes the response uncorks it.  On an error other than
 * -EAGAIN, -ETIMEDOUT or -EINTR the socket is uncorked before returning.
 *
 * Return: 0 when the response is complete; -EAGAIN/-ETIMEDOUT/-EINTR (call
 * again to continue); -ENODATA when the file ended early; other -errno.
 */
int zc_response_send(struct zc_response *r, int timeout_ms, uint64_t *sent_now);

/**
 * zc_response_bind_id() - make later sends check which socket they send to
 * @r: from zc_response_init()
 * @id: from zc_fd_id_get() on @r->sock, caller-allocated; it must stay
 *      valid and unchanged while @r is used
 *
 * For a caller that holds only the descriptor number: if another thread
 * closes it between two calls and accept() hands the number to a new
 * client, the next call would send that client the rest of the response.
 * Once bound, the call that begins the response first checks that @r->sock
 * still names @id's file, and each later call sends through a duplicate of
 * @r->sock checked against @id; either returns -EBADF (sending nothing)
 * when the number names another file or none.
 *
 * Return: 0.
 */
int zc_response_bind_id(struct zc_response *r, const struct zc_fd_id *id);

/**
 * zc_response_end() - restore the socket options a response changed
 * @r: the response, complete or abandoned; safe to call more than once
 *
 * With an identity bound (zc_response_bind_id()) the cork is undone through
 * a checked duplicate, and a socket that @r->sock no longer names is left
 * alone (its cork is not ours).
 *
 * Return: 0, or -errno from setsockopt.
 */
int zc_response_end(struct zc_response *r);

/*
 * zc_response_send_some() returns this when @budget bytes went out and more
 * remain (the socket may still be writable).
 */
#define ZC_RESPONSE_MORE 1

/**
 * zc_response_send_some() - zc_response_send() for an event loop, bounded
 * @r: from zc_response_init(), on a non-blocking socket
 * @budget: stop once about this many bytes went out in this call (at least
 *          one send is made); UINT64_MAX for no bound
 * @sent_now: out, bytes sent by this call (always set)
 *
 * Never waits (as zc_response_send() with @timeout_ms 0).  A response
 * without file bytes whose header and trailer are both non-empty goes out
 * in one sendmsg(2) with two iovecs.  The budget lets one loop share its
 * time between fast readers of large files.
 *
 * Return: 0 when the response is complete; ZC_RESPONSE_MORE when the budget
 * ran out first; -EAGAIN when the socket is full; -EINTR when a signal
 * arrived during a send (sendfile(2) says so even on a non-blocking socket:
 * nothing is wrong, call again); -ENODATA when the file ended early; other
 * -errno as zc_response_send().
 */
int zc_response_send_some(struct zc_response *r, uint64_t budget,
			  uint64_t *sent_now);

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
	uint64_t _bytes;
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
 * @n: out: ranges written to @out, also when an error is returned (a
 *     message read off the queue cannot be put back, so the ranges read
 *     before a bad one come back together with its error)
 *
 * Accepts IP_RECVERR and IPV6_RECVERR messages (a v6 socket may carry
 * v4-mapped traffic).  Each message is one range, possibly merged from many
 * sends by the kernel.  Stops when the queue is empty or @out is full.
 *
 * Return: 0; for a message that is not a zero-copy completion, the error it
 * carries (-ENOMSG for a TX timestamp) or -EPROTO; -EIO when the control
 * data was truncated (MSG_CTRUNC); -errno from recvmsg.
 */
int zc_reap_completions(int sock, struct zc_completion *out, size_t max, size_t *n);

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


/* ---- MSG_ZEROCOPY policy: struct zc_zsock ----------------------------- */

/*
 * A connected stream socket whose large sends go with MSG_ZEROCOPY, with
 * the policies production systems learned (folly's AsyncSocket, gRPC):
 *  - only sends of at least a threshold (16 KiB) use the flag: below it
 *    the page pinning and the notification cost more than the copy;
 *  - at most max_pinned_bytes of the caller's buffers stay on loan: past
 *    that a send waits for completions (as its timeout allows) or, on a
 *    socket that must not wait, goes without the flag;
 *  - adaptive: the first completion flagged COPIED (the kernel copied
 *    after all, as it always does on loopback and veth) turns the flag
 *    off for good, since a deferred copy costs more than a plain one;
 *  - ENOBUFS (optmem_max or the locked-memory limit) resends the same
 *    bytes at once without the flag;
 *  - sockets without zero-copy (AF_UNIX, kernels before 4.14) just send,
 *    and never read an error queue;
 *  - zc_zsock_end() bounds what a stalled peer can pin: see there.
 *
 * Buffers are loans named by the caller's 64-bit tokens.  A buffer is free
 * again only when zc_zsock_collect() reports its token: never before the
 * kernel said it no longer reads any of it.
 *
 * Every call that touches the socket first checks that the fd still names
 * the socket given to zc_zsock_init() (the same device and inode), and
 * from its second syscall on works on a duplicate, checked again after
 * each wait: a socket closed by another thread, its number reused by a
 * new connection, never gets our bytes nor has its error queue read.
 * Those calls then fail with -EBADF.
 *
 * Not thread-safe: serialise the calls on one zc_zsock, except
 * zc_zsock_poll(), which any thread may call at any time.
 */

#define ZC_ZSOCK_THRESHOLD (16 * 1024)	     /* default threshold */
#define ZC_ZSOCK_MAX_PINNED (64 * 1024 * 1024) /* default max_pinned_bytes */

/* zc_zsock_end(): how long it waits for completions after a reset. */
#define ZC_ZSOCK_RESET_WAIT_MS 2000

/* zc_zsock_send() flags. */
#define ZC_ZSOCK_ONCE 0x1   /* return after the first send that took bytes */
#define ZC_ZSOCK_RESUME 0x2 /* continue the buffer of an -EINTR return */
#define ZC_ZSOCK_MORE 0x4   /* MSG_MORE on every send of this buffer */

/**
 * struct zc_zsock_opts - settings for zc_zsock_init()
 * @threshold: sends of fewer bytes never use MSG_ZEROCOPY (>= 1)
 * @max_pinned_bytes: bound on the bytes of buffers on loan (>= 1); one
 *                    buffer larger than the bound may still go alone
 * @adaptive: 1 turns zero-copy off at the first COPIED completion; 0
 *            keeps it on (for measuring)
 *
 * zc_zsock_opts_init() fills in the defaults.
 */
struct zc_zsock_opts {
	uint64_t threshold;
	uint64_t max_pinned_bytes;
	int adaptive;
};

/**
 * struct zc_zsock_stats - counters of a zc_zsock
 * @zerocopy_sends: sends with MSG_ZEROCOPY (each took a sequence number)
 * @plain_sends: sends without it
 * @completions: zero-copy sends the kernel reported done
 * @copied_completions: of those, sends it had to copy after all
 * @enobufs_fallbacks: zero-copy sends refused with ENOBUFS, resent plain
 * @pinned_bytes: bytes of the buffers on loan now
 * @peak_pinned_bytes: the most @pinned_bytes ever was
 */
struct zc_zsock_stats {
	uint64_t zerocopy_sends;
	uint64_t plain_sends;
	uint64_t completions;
	uint64_t copied_completions;
	uint64_t enobufs_fallbacks;
	uint64_t pinned_bytes;
	uint64_t peak_pinned_bytes;
};

/**
 * struct zc_zsock - a socket with the MSG_ZEROCOPY policy (read-only fields)
 * @sock: the socket given to zc_zsock_init(); it stays the caller's
 * @supported: 1 when the socket accepted SO_ZEROCOPY
 * @unsupported: 0, or why not as a positive errno (EOPNOTSUPP for AF_UNIX
 *               and TLS sockets, ENOPROTOOPT on kernels before 4.14)
 * @active: 1 while sends of @threshold bytes or more use MSG_ZEROCOPY
 * @loaned: after every zc_zsock_send() return: 1 when the buffer is on
 *          loan (keep it unchanged until zc_zsock_collect() reports its
 *          token), 0 when the caller may reuse it at once; after -EINTR it
 *          is 1 until the buffer is resumed or zc_zsock_send_end() says
 * @on_loan: buffers on loan whose tokens are not free yet
 * @freed: tokens free and waiting for zc_zsock_collect()
 * @stats: counters
 */
struct zc_zsock {
	int sock;
	int supported;
	int unsupported;
	int active;
	int loaned;
	uint32_t on_loan;
	uint32_t freed;
	struct zc_zsock_stats stats;
	ZC_PRIVATE(192);
};

/**
 * zc_zsock_opts_init() - the default settings
 * @o: caller-allocated; gets threshold ZC_ZSOCK_THRESHOLD, max_pinned_bytes
 *     ZC_ZSOCK_MAX_PINNED, adaptive 1
 */
void zc_zsock_opts_init(struct zc_zsock_opts *o);

/**
 * zc_zsock_init() - set SO_ZEROCOPY and the policy up on a socket
 * @z: caller-allocated
 * @sock: a connected stream socket (blocking or not); it stays the
 *        caller's, who closes it after zc_zsock_end() or zc_zsock_abandon()
 * @recs: caller-allocated array, alive as long as @z is used; one record
 *        per zero-copy send in flight
 * @nrecs: its length: the bound on zero-copy sends in flight (>= 1)
 * @o: settings, or NULL for the defaults
 *
 * A socket that cannot do zero-copy is not an error: @z->supported is 0
 * and every send is plain.
 *
 * Return: 0; -EINVAL for a NULL @recs, @nrecs 0 or a setting of 0;
 * -EPROTOTYPE for a socket that is not SOCK_STREAM; -ENOTSOCK, -EBADF and
 * other -errno from getsockopt/setsockopt/fstat.
 */
int zc_zsock_init(struct zc_zsock *z, int sock, struct zc_track_rec *recs,
		  uint32_t nrecs, const struct zc_zsock_opts *o);

/**
 * zc_zsock_send() - send a buffer with the whole policy
 * @z: the zsock
 * @buf: the bytes; on loan when @z->loaned says so after the call
 * @len: their length (0 sends nothing and returns 0)
 * @token: the caller's name for the buffer, reported by zc_zsock_collect()
 *         when the buffer is free again; tokens of buffers on loan must
 *         differ from each other
 * @flags: 0 (send all of @len), ZC_ZSOCK_ONCE (like send(2): return after
 *         the first send that took bytes), ZC_ZSOCK_RESUME (this is the
 *         rest of the buffer whose send returned -EINTR: @buf and @len are
 *         what was left, @token the same), ZC_ZSOCK_MORE (MSG_MORE)
 * @timeout_ms: when the socket would block, or the pinned-bytes bound is
 *              reached: 0 never waits (returns -EAGAIN when full; past the
 *              bound the bytes go plain), ZC_WAIT_FOREVER waits, a positive
 *              value waits that long for each stretch of unwritability
 *              (and, past the bound, at most that long for completions,
 *              then the bytes go plain).  A blocking socket blocks in the
 *              kernel instead, until a signal.
 * @sent: in/out: this call ADDS the bytes it sent (also on errors)
 *
 * For each send the flag is decided anew: MSG_ZEROCOPY while @z->active,
 * for at least @threshold bytes left, and when a record and pinned-bytes
 * room are free (a buffer's first zero-copy send pins all of @len; its
 * later parts need only a record).  Completions are reaped first whenever
 * sends are in flight, so COPIED is seen early and memory freed promptly.
 *
 * Return: 0 when the bytes went out (all of them; with ZC_ZSOCK_ONCE, the
 * first send's worth); -EINTR when a signal interrupted a wait or cut a
 * send to a blocking socket short: the buffer stays open, resume with
 * ZC_ZSOCK_RESUME or end it with zc_zsock_send_end(); -EAGAIN,
 * -ETIMEDOUT as @timeout_ms says; -EBADF when @z->sock no longer names the
 * socket; -EPIPE, -ECONNRESET and other -errno from send(2).  Whatever
 * the return, @z->loaned says what to do with the buffer.
 */
int zc_zsock_send(struct zc_zsock *z, const void *buf, size_t len,
		  uint64_t token, unsigned flags, int timeout_ms, uint64_t *sent);

/**
 * zc_zsock_send_end() - end a buffer left open by an -EINTR return
 * @z: the zsock
 *
 * For a caller that does not resume (its signal handler gave up).  A send
 * without ZC_ZSOCK_RESUME, zc_zsock_end() and zc_zsock_abandon() end an
 * open buffer too, but only this call says what became of it.
 *
 * Return: 1 when the buffer is on loan (its token will be collected), 0
 * when it is free now.  With no buffer open it changes nothing and returns
 * @z->loaned as the last send left it, so a caller that lost track of the
 * last return (its signal handler raised) may always call it.
 */
int zc_zsock_send_end(struct zc_zsock *z);

/**
 * zc_zsock_reap() - read completions from the error queue; never blocks
 * @z: the zsock
 *
 * Messages that are no zero-copy completion (TX timestamps a caller asked
 * for) are skipped.  A socket without zero-copy reads nothing.
 *
 * Return: the number of buffers that became free (collect their tokens);
 * -EBADF when @z->sock no longer names the socket; other -errno from
 * recvmsg(2).
 */
int zc_zsock_reap(struct zc_zsock *z);

/**
 * zc_zsock_collect() - take the tokens of buffers that are free again
 * @z: the zsock
 * @tokens: caller-allocated array
 * @max: its length
 *
 * Makes no syscall.  Tokens come oldest first; the caller may reuse or
 * free those buffers now, and only those.
 *
 * Return: the number of tokens written (less than @max: none are left).
 */
size_t zc_zsock_collect(struct zc_zsock *z, uint64_t *tokens, size_t max);

/**
 * zc_zsock_poll() - wait until there may be completions to reap
 * @z: the zsock; only its socket identity is read, so any thread may call
 *     this while another uses @z
 * @timeout_ms: ZC_WAIT_FOREVER, 0 or a bound in milliseconds
 *
 * Waits in slices of at most 100 ms, checking between them that the fd
 * still names the socket.  Returns at once for a socket without zero-copy.
 * A socket with an error pending (a reset) keeps polling ready without
 * completions: such wake-ups are paced (10 ms) rather than spun.
 *
 * Return: 0 (reap now); -ETIMEDOUT (-EAGAIN for 0); -EINTR; -EBADF when
 * the fd no longer names the socket.
 */
int zc_zsock_poll(const struct zc_zsock *z, int timeout_ms);

/**
 * zc_zsock_flush() - reap and wait until no buffer is on loan
 * @z: the zsock
 * @timeout_ms: ZC_WAIT_FOREVER, 0 or a bound in milliseconds
 *
 * Return: 0 when @z->on_loan is 0 (collect the tokens); -ETIMEDOUT
 * (-EAGAIN for 0) with buffers still on loan; -EINTR (call again);
 * -EBADF; other -errno from recvmsg(2).
 */
int zc_zsock_flush(struct zc_zsock *z, int timeout_ms);

/**
 * zc_zsock_end() - get every buffer back, then leave the socket to close
 * @z: the zsock
 * @timeout_ms: how long to wait for the peer: ZC_WAIT_FOREVER, 0 or a
 *              bound in milliseconds
 *
 * Waits up to @timeout_ms for the completions of every buffer on loan.
 * If some are still out then (a peer that stopped reading), resets the
 * connection with connect(AF_UNSPEC): the kernel drops the bytes it has
 * not delivered, lets go of their pages and reports the completions on
 * the still open fd; they are waited for up to ZC_ZSOCK_RESET_WAIT_MS
 * more (pages referenced by packets still inside the stack, on a link
 * that went down, say, come back only when those are dropped: about a
 * second).  The peer then reads what had reached it and gets
 * ECONNRESET.  Closing the fd with buffers on loan would lose their
 * completions for good (the kernel drops a closed socket's
 * notifications), which is why this comes first.
 *
 * Afterwards @z makes no more syscalls: collect the tokens, then close
 * @z->sock.  Safe to call again (after -EINTR it resumes where it was).
 *
 * Return: 0 when every buffer is free (collect the tokens); a positive
 * count of buffers whose completions never came: their tokens will never
 * be reported, keep them for the life of the process; -EINTR (call again
 * to resume).
 */
int zc_zsock_end(struct zc_zsock *z, int timeout_ms);

/**
 * zc_zsock_abandon() - stop using the socket at once (it was closed, say)
 * @z: the zsock
 *
 * Makes no syscall.  Tokens already free can still be collected.
 *
 * Return: the number of buffers still on loan: their tokens will never be
 * reported, keep them for the life of the process (the kernel may still
 * read them).
 */
uint32_t zc_zsock_abandon(struct zc_zsock *z);

/* ---- pipes and the pipe pool ------------------------------------------ */

/* What pooled pipes are grown to with F_SETPIPE_SZ (Go and HAProxy: 1 MiB). */
#define ZC_PIPE_SIZE (1024 * 1024)

/**
 * struct zc_pipe - one pipe used as an in-kernel buffer between two fds
 * @rfd: read end (O_CLOEXEC|O_NONBLOCK), -1 when closed
 * @wfd: write end (O_CLOEXEC|O_NONBLOCK), -1 when closed
 * @size: capacity in bytes (smaller than asked when F_SETPIPE_SZ failed)
 * @buffered: bytes in the pipe that were read from a source but not yet
 *            written to their destination; a pipe with @buffered != 0 is
 *            never put back into a pool
 */
struct zc_pipe {
	int rfd;
	int wfd;
	uint32_t size;
	uint32_t buffered;
};

/**
 * struct zc_pipe_pool - a bounded stack of empty pipes, safe across threads
 * @pipe_size: capacity new pipes are grown to
 * @created: pipes made by zc_pipe_get()
 * @reused: zc_pipe_get() calls served from the pool
 * @discarded: zc_pipe_put() calls that closed the pipe (it held data, or
 *             the pool was full)
 * @small: pipes that kept a smaller capacity because F_SETPIPE_SZ failed
 *
 * The counters are updated under the pool's lock; read them when no other
 * thread uses the pool (they are statistics).
 */
struct zc_pipe_pool {
	size_t pipe_size;
	uint64_t created;
	uint64_t reused;
	uint64_t discarded;
	uint64_t small;
	ZC_PRIVATE(32);
};

/**
 * zc_pipe_open() - make one pipe and try to grow it
 * @p: caller-allocated; filled in (fds -1 on failure)
 * @size: capacity to ask for with F_SETPIPE_SZ (0 keeps the default)
 *
 * Both ends are O_CLOEXEC|O_NONBLOCK.  When F_SETPIPE_SZ fails (above
 * /proc/sys/fs/pipe-max-size, or over pipe-user-pages-soft for an
 * unprivileged user) the pipe keeps its smaller size, which still works:
 * compare @p->size with @size to tell.
 *
 * Return: 0, or -errno from pipe2() (-EMFILE, -ENFILE).
 */
int zc_pipe_open(struct zc_pipe *p, size_t size);

/**
 * zc_pipe_close() - close both ends; safe on a closed pipe
 * @p: the pipe
 */
void zc_pipe_close(struct zc_pipe *p);

/**
 * zc_pipe_pool_init() - set up an empty pool; makes no pipe
 * @pool: caller-allocated
 * @slots: @nslots entries the pool keeps idle pipes in (caller's memory,
 *         alive as long as the pool)
 * @nslots: bound on idle pipes (0: no pooling, every put closes)
 * @pipe_size: capacity for new pipes, usually ZC_PIPE_SIZE
 *
 * Return: 0, or -EINVAL when @slots is NULL with @nslots != 0.
 */
int zc_pipe_pool_init(struct zc_pipe_pool *pool, struct zc_pipe *slots,
		      unsigned nslots, size_t pipe_size);

/**
 * zc_pipe_get() - take an empty pipe from the pool, or make one
 * @pool: the pool, or NULL for a fresh ZC_PIPE_SIZE pipe
 * @p: out, the pipe (empty); the caller owns it until zc_pipe_put()
 *
 * Return: 0, or -errno from pipe2() (-EMFILE, -ENFILE).
 */
int zc_pipe_get(struct zc_pipe_pool *pool, struct zc_pipe *p);

/**
 * zc_pipe_put() - give a pipe back
 * @pool: the pool it came from, or NULL (the pipe is closed)
 * @p: the pipe; its fds are -1 afterwards, whatever happened
 *
 * A pipe that still holds data (@p->buffered != 0) is closed, never
 * pooled: its bytes belong to a stream that failed.  So is a pipe that
 * finds the pool full.  A closed pipe (fds -1) is ignored.
 */
void zc_pipe_put(struct zc_pipe_pool *pool, struct zc_pipe *p);

/**
 * zc_pipe_pool_idle() - empty pipes waiting in the pool now
 * @pool: the pool
 *
 * Return: their number (each holds two descriptors).
 */
unsigned zc_pipe_pool_idle(struct zc_pipe_pool *pool);

/**
 * zc_pipe_pool_destroy() - close every idle pipe; the pool is empty after
 * @pool: the pool; pipes still out with callers are theirs to put or close
 */
void zc_pipe_pool_destroy(struct zc_pipe_pool *pool);

/* ---- splice: any fd to any fd ----------------------------------------- */

/**
 * zc_splice() - move bytes from one fd to another with splice(2)
 * @src: where bytes come from: a socket, pipe or file
 * @src_off: NULL to use (and advance) @src's own position, or an explicit
 *           offset that this call advances by the bytes it delivered (the
 *           descriptor's position is left alone); must be NULL for pipes
 *           and sockets
 * @dst: where they go: a socket, pipe or file
 * @dst_off: as @src_off, for @dst
 * @count: bytes to deliver to @dst, or ZC_TO_EOF (until @src ends)
 * @via: NULL when @src or @dst is a pipe (one splice per step); otherwise
 *       a pipe from zc_pipe_get() that carries the bytes (src -> pipe ->
 *       dst).  Bytes it holds when the call starts (@via->buffered, left by
 *       an earlier call or written by the caller) are delivered first and
 *       count towards @count.
 * @timeout_ms: what to do when @src has nothing to read or @dst is full:
 *              0 returns -EAGAIN, ZC_WAIT_FOREVER waits, a positive value
 *              waits that long for each stretch of inactivity.  A blocking
 *              socket destination blocks in the kernel instead; a blocking
 *              source (a socket, a pty) is polled first when @timeout_ms
 *              is positive, so the bound holds for it too.
 * @moved: in/out: this call ADDS the bytes it wrote to @dst (also on
 *         errors); resume with @count lowered by them
 *
 * The pipe is only ever filled when it is empty, so -EAGAIN from a socket
 * is never mistaken for a full pipe, and a 0 return always means the end
 * of @src.  When @dst refuses splice (-EINVAL: a file opened O_APPEND) the
 * bytes in @via are copied with read(2)/write(2) instead.
 *
 * Bytes read into @via are never left behind silently, so that @moved and
 * the source's position always agree:
 *  - a destination that would block (-EAGAIN, @timeout_ms 0) gets them
 *    anyway: the call waits for it as long as it takes (a signal still
 *    gives -EINTR), then returns -EAGAIN without reading more, so -EAGAIN
 *    always comes with an empty @via;
 *  - on any other error a seekable source (a regular file or block device)
 *    is given them back: @src_off, or the fd's position, moves back over
 *    them and @via is emptied; a call that resumes there reads them again;
 *  - from a source that cannot seek (a socket, a tty) they stay in @via
 *    (@via->buffered): call again with the same @via to deliver them, or
 *    drop them with the stream by putting the pipe back.
 *
 * A socket given as @src or @dst is held for the call: if another thread
 * closes its fd and the number is reused (accept(2) hands it to a new
 * client) the call stops with -EBADF instead of moving another
 * connection's bytes.
 *
 * Return: 0 when @count bytes were delivered (or @src ended, for
 * ZC_TO_EOF); -ENODATA when @src ended before @count bytes; -EINVAL when
 * neither fd is a pipe and @via is NULL, or the kernel cannot splice
 * these fds; -EAGAIN, -ETIMEDOUT as @timeout_ms says; -EINTR when a signal
 * interrupted a wait (or cut a write to a blocking socket short): call
 * again to resume; -EBADF when a socket's fd was closed or replaced during
 * the call; any other -errno from splice(2) (-ECONNRESET, -EPIPE, -ENOSPC,
 * ...).
 */
int zc_splice(int src, int64_t *src_off, int dst, int64_t *dst_off,
	      uint64_t count, struct zc_pipe *via, int timeout_ms,
	      uint64_t *moved);

/**
 * zc_splice_id() - zc_splice() on the files the ends named when their identity was taken
 * @src, @src_off, @dst, @dst_off, @count, @via, @timeout_ms, @moved: as for zc_splice()
 * @src_id: NULL, or @src's identity from zc_fd_id_get()
 * @dst_id: NULL, or @dst's identity from zc_fd_id_get()
 *
 * For a caller that resumes a transfer on descriptor numbers nothing holds:
 * an end with an identity is used through a duplicate checked against it
 * (zc_fd_dup_checked()), so a number that another thread closed and that
 * was reused meanwhile is never read from or written to; after each wait
 * the number itself is looked at again, and a close ends the call.
 *
 * Return: as zc_splice(); -EBADF (nothing moved by this call) when an end
 * names another file or none.
 */
int zc_splice_id(int src, int64_t *src_off, int dst, int64_t *dst_off,
		 uint64_t count, struct zc_pipe *via, int timeout_ms,
		 uint64_t *moved, const struct zc_fd_id *src_id,
		 const struct zc_fd_id *dst_id);

/* ---- relays: socket pairs pumped both ways by one epoll loop ---------- */

/* zc_relay_run() handles at most this many epoll events per wait. */
#define ZC_RELAY_EVENTS 64

/* Distinct zc_relay_set_timeout() values a loop's relays may use at once. */
#define ZC_RELAY_TIMEOUTS 8

struct zc_relay_loop;

/**
 * struct zc_relay - two connected stream sockets pumped both ways
 * @fd: the sockets: fd[0] ("a") and fd[1] ("b")
 * @bytes: bytes[0] moved a -> b, bytes[1] moved b -> a (so far)
 * @error: 0, or the -errno that ended the relay (-ETIMEDOUT after its
 *         idle timeout)
 * @done: 1 once the relay ended (both directions reached EOF and were
 *        passed on, an error, or its timeout)
 * @data: the caller's, untouched
 *
 * Caller-allocated; it must stay in place from zc_relay_add() until
 * zc_relay_run() reports it done or zc_relay_remove() takes it out.
 */
struct zc_relay {
	int fd[2];
	uint64_t bytes[2];
	int error;
	int done;
	void *data;
	ZC_PRIVATE(192);
};

/**
 * struct zc_relay_loop - one epoll loop that pumps any number of relays
 * @pool: where relays take their pipes from (the caller's)
 * @active: relays added and not yet ended or removed
 * @bytes: bytes moved by every relay of this loop, a->b and b->a
 *
 * A relay holds a pipe only while bytes are in flight in that direction,
 * so idle connections cost no pipe.  Use a loop from one thread at a time;
 * zc_relay_wake() is the one call that any thread (or a signal handler)
 * may make.
 */
struct zc_relay_loop {
	struct zc_pipe_pool *pool;
	unsigned active;
	uint64_t bytes[2];
	ZC_PRIVATE(384);
};

/**
 * zc_relay_loop_init() - make the epoll instance and the wake-up eventfd
 * @loop: caller-allocated
 * @pool: pipe pool for the relays (shared pools are fine)
 *
 * Return: 0, or -errno from epoll_create1()/eventfd() (-EMFILE, ...).
 */
int zc_relay_loop_init(struct zc_relay_loop *loop, struct zc_pipe_pool *pool);

/**
 * zc_relay_loop_close() - remove every relay and proxy, close the loop
 * @loop: the loop; safe to call twice
 *
 * Relays still running are removed as by zc_relay_remove() (their sockets
 * stay open: they are the caller's); proxies are closed as by
 * zc_proxy_close().
 */
void zc_relay_loop_close(struct zc_relay_loop *loop);

/**
 * zc_relay_add() - start relaying between two connected stream sockets
 * @loop: the loop
 * @r: caller-allocated; @r->data is kept, everything else is set here
 * @a: one socket
 * @b: the other (a socket still connecting, non-blocking, is fine: the
 *     relay starts when it connects, and a failed connect ends it)
 *
 * The sockets stay the caller's; they are switched to O_NONBLOCK while the
 * relay runs and their flags are restored when it ends or is removed.
 * The relay has no timeout until zc_relay_set_timeout() gives it one.
 *
 * Return: 0, or -errno (-EBADF, -EEXIST when a socket is already in a
 * relay of this loop, -ENOMEM, ...); nothing changed on failure.
 */
int zc_relay_add(struct zc_relay_loop *loop, struct zc_relay *r, int a, int b);

/**
 * zc_relay_set_timeout() - end a relay after a stretch with no progress
 * @r: a running relay from zc_relay_add()
 * @idle_ms: > 0: the relay ends with @r->error = -ETIMEDOUT once no byte
 *           moved either way for this long (the clock starts now);
 *           ZC_WAIT_FOREVER: no timeout (the default)
 *
 * A timed-out relay is reported by zc_relay_run() like any other that
 * ended; its sockets are not reset (what to tell the peers is the
 * caller's choice), and bytes in flight in its pipes are dropped.  The
 * loop keeps one queue per distinct value, ordered by last activity, so
 * that its cost per event and per wait does not grow with the number of
 * relays; hence the bound on distinct values.
 *
 * Return: 0; -EINVAL for a relay that is not running or belongs to a
 * proxy, or @idle_ms 0 or below -1; -ENOSPC when ZC_RELAY_TIMEOUTS other
 * values are in use by the loop's relays.
 */
int zc_relay_set_timeout(struct zc_relay *r, int idle_ms);

/**
 * zc_relay_remove() - stop a relay that has not ended (or did already)
 * @r: a relay given to zc_relay_add(); safe to call on one that ended
 *
 * Bytes in flight inside its pipes are dropped (the pipes are closed);
 * the sockets are left open with their flags restored.
 */
void zc_relay_remove(struct zc_relay *r);

/**
 * zc_relay_run() - pump every relay of the loop
 * @loop: the loop
 * @timeout_ms: return after this long (busy or not); ZC_WAIT_FOREVER to
 *              return only for the reasons below
 * @done: caller's array for ended relays
 * @max_done: its length
 *
 * Moves bytes until a relay ends, @timeout_ms passes, zc_relay_wake() is
 * called or a signal arrives.  In each direction a relay reads from its
 * source into a pipe only when the pipe is empty and writes it all to the
 * destination before reading again; at the source's EOF the destination
 * gets shutdown(SHUT_WR).  A relay ends when both directions did so, at
 * its timeout, or at the first error on either socket: then both sockets
 * are reset (a TCP socket is disconnected, which sends RST; others are
 * shut down), so the peers on both sides learn that the stream broke.  A
 * signal that interrupts a splice never ends a relay: the splice is
 * resumed, and the call returns -EINTR once the events at hand are
 * handled, so the caller can run its handlers.
 *
 * When no pipe can be had (-EMFILE, -ENFILE) a relay waits for one
 * instead of failing: it is retried every few milliseconds.
 *
 * Ended relays are taken out of the loop (the caller may close their
 * sockets at once) and reported through @done, up to @max_done per call,
 * oldest first; relays of a zc_proxy are not reported: the proxy closes
 * them itself.
 *
 * Return: the number of relays written to @done (0 after a timeout or a
 * wake-up); -EINTR when a signal arrived (call again to resume); other
 * -errno from epoll_wait().
 */
int zc_relay_run(struct zc_relay_loop *loop, int timeout_ms,
		 struct zc_relay **done, unsigned max_done);

/**
 * zc_relay_wake() - make a zc_relay_run() in another thread return soon
 * @loop: the loop; async-signal-safe
 *
 * Return: 0, or -errno from write(2).
 */
int zc_relay_wake(struct zc_relay_loop *loop);

/**
 * zc_relay_loop_fd() - drive a relay loop from another event loop
 * @loop: the loop
 * @next_ms: out (may be NULL): how soon zc_relay_run() must be called even
 *           if the descriptor stays quiet: 0 at once (work is pending that
 *           no event announces: a relay out of budget, relays to report),
 *           -1 not before an event, else milliseconds until a timeout or a
 *           deferred relay is due
 *
 * The loop's epoll descriptor is readable when zc_relay_run() has events
 * to handle.  An event loop that cannot block in zc_relay_run() (asyncio,
 * libuv, another epoll) watches it for reading and calls
 * zc_relay_run(loop, 0, ...) when it is readable and when @next_ms has
 * passed, then asks again.  The descriptor stays the loop's: never close it
 * and never change its registrations.
 *
 * Return: the descriptor, or -EBADF when the loop is closed.
 */
int zc_relay_loop_fd(struct zc_relay_loop *loop, int *next_ms);

/* ---- proxy: accept, connect, relay ------------------------------------ */

/* Default timeouts of a zc_proxy's connections, in milliseconds. */
#define ZC_PROXY_CONNECT_MS 10000 /* connecting to the target */
#define ZC_PROXY_IDLE_MS 300000	  /* no byte moved either way */
#define ZC_PROXY_STALL_MS 60000	  /* bytes wait for a peer that does not read */

/**
 * struct zc_proxy - a listening socket whose connections are relayed to a
 *                   target address, inside a zc_relay_loop
 * @accepted: connections accepted (all of those below, plus @active)
 * @active: relays running now
 * @completed: relays that ended with both directions finished
 * @failed: connections that ended with an error (target unreachable,
 *          reset, a timeout, ...) or could not be set up
 * @refused: clients answered at once with a reset because every slot was
 *           taken or no descriptor was left for them or their target
 *           connection (EMFILE, ENFILE)
 * @timed_out: connections ended by a timeout (also counted in @failed)
 * @bytes: bytes moved by ended relays, client->target and target->client
 */
struct zc_proxy {
	uint64_t accepted;
	uint64_t active;
	uint64_t completed;
	uint64_t failed;
	uint64_t refused;
	uint64_t timed_out;
	uint64_t bytes[2];
	ZC_PRIVATE(384);
};

struct sockaddr;

/**
 * zc_proxy_init() - start accepting on @listen_fd and relaying to @target
 * @px: caller-allocated
 * @loop: the loop that runs it
 * @listen_fd: a listening stream socket; it stays the caller's (switched
 *             to O_NONBLOCK)
 * @target: address to connect each client to (AF_INET, AF_INET6, AF_UNIX)
 * @target_len: its length
 * @slots: @nslots relays the proxy uses for its connections (caller's
 *         memory, kept until zc_proxy_close())
 * @nslots: the bound on concurrent connections
 *
 * Each client gets a non-blocking connect to @target (TCP_NODELAY on TCP
 * sockets); the relay starts at once and a failed connect ends it.  Per
 * connection failures are counted in @px->failed and touch nothing else.
 *
 * No client is left waiting in the listen backlog: when every slot is
 * taken, or accept(2) fails with EMFILE/ENFILE, a new client is accepted
 * and reset at once (counted in @px->refused).  For EMFILE the proxy keeps
 * one descriptor in reserve (on /dev/null): it closes it, accepts, resets
 * the client and opens it again.  Connections get the timeouts
 * ZC_PROXY_CONNECT_MS, ZC_PROXY_IDLE_MS and ZC_PROXY_STALL_MS until
 * zc_proxy_set_timeouts() changes them.
 *
 * Return: 0; -EINVAL for a bad address, no slots, or a @listen_fd that is
 * not a listening stream socket (unbound, connected, closed, not a socket);
 * -errno from fcntl()/epoll_ctl() (-EEXIST when @listen_fd is in the loop
 * already).  On failure nothing is kept: @listen_fd has its flags back and
 * zc_proxy_close(@px) does nothing.
 */
int zc_proxy_init(struct zc_proxy *px, struct zc_relay_loop *loop,
		  int listen_fd, const struct sockaddr *target,
		  unsigned target_len, struct zc_relay *slots, unsigned nslots);

/**
 * zc_proxy_set_timeouts() - bound how long a connection may hang
 * @px: the proxy
 * @connect_ms: connecting to the target
 * @idle_ms: no byte moved either way
 * @stall_ms: no byte moved while bytes read from one side wait for the
 *            other, which does not read them (the client or the target
 *            stopped reading; also a client that left while the target
 *            does not take its last bytes)
 *
 * Each value is > 0, or ZC_WAIT_FOREVER for no bound.  A connection that
 * runs out of time is reset on both sides, closed, and counted in
 * @px->failed and @px->timed_out.  The new values apply from each
 * connection's next activity on.
 *
 * Return: 0, or -EINVAL for a value of 0 or below -1.
 */
int zc_proxy_set_timeouts(struct zc_proxy *px, int connect_ms, int idle_ms,
			  int stall_ms);

/**
 * zc_proxy_close() - stop accepting and end every connection of the proxy
 * @px: the proxy; safe to call twice
 *
 * Running connections are reset and closed; the listening socket is left
 * open (it is the caller's).
 */
void zc_proxy_close(struct zc_proxy *px);

/* ---- HTTP file server ------------------------------------------------ */

/*
 * An HTTP/1.1 server for the files under one directory: a strict request
 * parser, path resolution that cannot leave the root, an open-file cache,
 * and an epoll loop that answers GET and HEAD with zc_response (header
 * coalesced with the file, sendfile for the body).  The parser and the
 * path functions are usable on their own.
 *
 * Threads: a struct zc_http_server holds the configuration and the stop
 * switch; each thread runs its own struct zc_http_loop (own epoll set,
 * connections, file cache and statistics), so loops share nothing on the
 * hot path.  Several loops serve one listening socket: give every loop the
 * same fd (each adds it to its epoll set with EPOLLEXCLUSIVE, so one
 * connection wakes one loop).  That is the recommended set-up: one bind,
 * one backlog, a loop that is busy or stopping leaves new connections to
 * the others.  One SO_REUSEPORT socket per loop works too (the kernel
 * spreads connections by hash, evenly but blind to load, and connections
 * queued on a closed socket are lost).  Measured on loopback with two
 * loops, both gave the same requests/s and CPU per request.
 *
 * What the loop answers:
 *  - GET and HEAD of a regular file: 200 with Content-Type (from the
 *    extension), Content-Length, Last-Modified, ETag ("inode-size-mtime"
 *    in hex), Accept-Ranges: bytes and Date (formatted once a second);
 *  - If-None-Match (weak comparison, "*") or else If-Modified-Since
 *    (IMF-fixdate only; other date forms are ignored): 304;
 *  - one byte range (with If-Range by strong ETag or exact date): 206 with
 *    Content-Range, 416 when unsatisfiable.  A Range with several ranges
 *    is ignored and the whole file sent (RFC 9110 allows it): clients ask
 *    for one range in practice, and multipart answers are a known way to
 *    make a server send the same bytes many times;
 *  - a directory without its final '/': 301 to it; with it: its
 *    index.html, else a listing (names HTML- and URL-escaped, in directory
 *    order, at most 10000) or 403 with ZC_HTTP_NO_LISTING;
 *  - 400 (malformed, a body or Transfer-Encoding on GET/HEAD, a path
 *    zc_http_path_resolve() refuses), 403 (a symlink refused, a FIFO,
 *    socket or device, permission denied), 404, 405 with "Allow: GET,
 *    HEAD" for other methods, 414, 417 for Expect, 431, 503 (out of
 *    descriptors), 505 (HTTP/2 and others).  Refusals whose request may be
 *    followed by unread bytes close the connection, after a lingering
 *    half-close so that the client reads the answer.
 *  - HTTP/1.1 keeps the connection unless "Connection: close"; HTTP/1.0
 *    only with "Connection: keep-alive".  Pipelined requests are answered
 *    in order.
 *
 * sendfile(2) cannot take MSG_NOSIGNAL: ignore SIGPIPE in the process.
 */

/* Defaults of struct zc_http_config (zc_http_config_init()). */
#define ZC_HTTP_HEAD_MAX 8192	 /* request line + headers, bytes */
#define ZC_HTTP_HEADERS_MAX 100	 /* header lines per request */
#define ZC_HTTP_MAX_CONNS 1024	 /* connections per loop */
#define ZC_HTTP_CACHE_ENTRIES 256 /* open files kept per loop */
#define ZC_HTTP_CACHE_VALID_MS 1000
#define ZC_HTTP_HEADER_TIMEOUT_MS 10000
#define ZC_HTTP_IDLE_TIMEOUT_MS 30000
#define ZC_HTTP_SEND_TIMEOUT_MS 30000
#define ZC_HTTP_LINGER_MS 2000
/*
 * Files up to this size are answered from a copy in memory (read into the
 * file cache entry when the file is opened, dropped when it changes),
 * header and body in one sendmsg(2): two syscalls a request (recv,
 * sendmsg) instead of three (recv, send MSG_MORE, sendfile).  Measured with
 * wrk on loopback, server CPU per request: 7.3 vs 8.2 us at 4 KiB, 7.8 vs
 * 9.0 us at 16 KiB.  The copy costs memory (up to cache_entries times this
 * per loop), and loopback hides what sendfile saves on a real NIC (the
 * pages go out without a copy), so larger files keep sendfile.
 */
#define ZC_HTTP_SMALL_FILE_MAX 16384

/* struct zc_http_request.method */
#define ZC_HTTP_OTHER 0
#define ZC_HTTP_GET 1
#define ZC_HTTP_HEAD 2

/* struct zc_http_request.flags */
#define ZC_HTTP_REQ_TE 0x1	  /* Transfer-Encoding was present */
#define ZC_HTTP_REQ_EXPECT 0x2	  /* Expect was present */
#define ZC_HTTP_REQ_RANGE_DUP 0x4 /* Range or If-Range repeated: ignore the range */
#define ZC_HTTP_REQ_COND_DUP 0x8  /* If-None-Match or If-Modified-Since repeated */

/**
 * struct zc_http_header - one header line of a parsed request
 * @name: the field name as sent (not NUL-terminated)
 * @name_len: its length
 * @value: the value without leading and trailing whitespace
 * @value_len: its length (may be 0)
 */
struct zc_http_header {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

/**
 * struct zc_http_request - a request head and the parser's state
 * @headers: caller's array for the header lines, or NULL (headers are then
 *           checked and counted, not stored)
 * @max_headers: more header lines than this: 431 (the length of @headers
 *               when it is given)
 * @max_head: more bytes than this before the end of the head (the empty
 *            line): 414 while the request line is unfinished, 431 after
 * @method: ZC_HTTP_GET, ZC_HTTP_HEAD or ZC_HTTP_OTHER (any other token)
 * @minor_version: 0 for HTTP/1.0, 1 for HTTP/1.1 (and for HTTP/1.2-1.9)
 * @status: when the head is refused, the HTTP status to answer
 * @keep_alive: 1 when the connection may carry another request after this
 *              one: HTTP/1.1 without "Connection: close", or HTTP/1.0 with
 *              "Connection: keep-alive" (and without "close")
 * @num_headers: header lines seen
 * @flags: ZC_HTTP_REQ_* bits
 * @content_length: the Content-Length value, or -1 without one
 * @method_str: the method token; @method_len its length
 * @target: the request target as sent; @target_len its length
 * @host: the Host value or NULL; @host_len its length
 * @range: the Range value or NULL; @range_len its length
 * @if_none_match: the If-None-Match value or NULL; @if_none_match_len
 * @if_modified_since: the If-Modified-Since value or NULL; its length
 * @if_range: the If-Range value or NULL; @if_range_len its length
 *
 * The pointers point into the caller's buffer.  The private area lets a
 * head that arrives in pieces be scanned once.
 */
struct zc_http_request {
	struct zc_http_header *headers;
	unsigned max_headers;
	unsigned max_head;
	int method;
	int minor_version;
	int status;
	int keep_alive;
	unsigned num_headers;
	unsigned flags;
	int64_t content_length;
	const char *method_str;
	size_t method_len;
	const char *target;
	size_t target_len;
	const char *host;
	size_t host_len;
	const char *range;
	size_t range_len;
	const char *if_none_match;
	size_t if_none_match_len;
	const char *if_modified_since;
	size_t if_modified_since_len;
	const char *if_range;
	size_t if_range_len;
	ZC_PRIVATE(16);
};

/**
 * zc_http_request_init() - prepare a request for zc_http_parse_request()
 * @req: caller-allocated; every field is reset
 * @headers: array for header lines, or NULL
 * @max_headers: bound on header lines (0: ZC_HTTP_HEADERS_MAX)
 * @max_head: bound on the head's bytes (0: ZC_HTTP_HEAD_MAX)
 *
 * Call it before the first zc_http_parse_request() of every request.
 */
void zc_http_request_init(struct zc_http_request *req,
			  struct zc_http_header *headers, unsigned max_headers,
			  unsigned max_head);

/**
 * zc_http_parse_request() - parse a request line and its headers
 * @req: from zc_http_request_init(); filled in
 * @buf: the bytes received so far, the request's first byte first
 * @len: their count
 *
 * Strict HTTP/1.1 (RFC 9112): "METHOD SP target SP HTTP/1.x" then header
 * lines, every line ending in CRLF.  Empty lines before the request line
 * are skipped.  Refused (-EBADMSG, @req->status 400): a bare LF or CR, NUL
 * or another control byte, a target with bytes outside 0x21-0x7e, spaces
 * other than the two single ones, a version that is not "HTTP/" DIGIT "."
 * DIGIT, a header line starting with whitespace (obs-fold), a field name
 * that is not a token or is followed by whitespace before the colon, a
 * repeated Host, HTTP/1.1 without Host, a Content-Length that is not one
 * decimal number (or is repeated), Transfer-Encoding in HTTP/1.0 or with
 * Content-Length.  HTTP/2 and later versions get -EBADMSG with 505.  The
 * request line is checked as soon as it is complete, and a bare LF as soon
 * as it arrives, so garbage is refused without waiting for the limit.
 *
 * Call again with the same @req and @buf (now longer) after -EAGAIN; bytes
 * already scanned are not scanned again, so a head arriving byte by byte
 * costs O(length) in all.
 *
 * Return: the length of the head (through the empty line) when it is
 * complete: the body or the next pipelined request starts there;
 * -EAGAIN when more bytes are needed; -EBADMSG when the head is malformed;
 * -EMSGSIZE when it exceeds @req->max_head (status 414 or 431) or
 * @req->max_headers (431).
 */
int zc_http_parse_request(struct zc_http_request *req, const char *buf,
			  size_t len);

/* zc_http_path_resolve() *out_flags */
#define ZC_HTTP_PATH_SLASH 0x1 /* the path ended in '/' (or is the root) */

/**
 * zc_http_path_resolve() - turn a request target into a path under the root
 * @target: the request target (origin form "/a/b?q", or absolute form
 *          "http://host/a/b?q"; the scheme is matched without case)
 * @target_len: its length
 * @out: caller's buffer for the result, NUL-terminated
 * @out_size: its size
 * @out_len: out, the result's length without the NUL
 * @out_flags: out, ZC_HTTP_PATH_SLASH or 0
 *
 * Drops the query, percent-decodes once (so "%252e" is the name "%2e"),
 * then resolves "." and ".." segments and empty segments.  The result is
 * relative ("" for the root itself, "a/b" otherwise): it never starts with
 * '/' and contains no "." or ".." segment, so it cannot name anything above
 * the root by itself (symlinks are zc_open_beneath()'s business).
 * Refused with -EINVAL: a target that is not origin or http(s) absolute
 * form, a '#', a bad escape ("%2", "%zz"), a decoded NUL, control byte
 * (below 0x20, or 0x7f) or backslash, decoded bytes that are not valid
 * UTF-8 (overlong forms such as %c0%ae included), a ".." above the root.
 *
 * Return: 0; -EINVAL as above; -ENAMETOOLONG when @out is too small (it
 * needs the decoded path, leading '/' included, and a NUL).
 */
int zc_http_path_resolve(const char *target, size_t target_len, char *out,
			 size_t out_size, size_t *out_len, unsigned *out_flags);

/* zc_open_beneath() and struct zc_http_config flags */
#define ZC_HTTP_FOLLOW_SYMLINKS 0x1 /* follow symlinks that leave the root */
#define ZC_HTTP_NO_OPENAT2 0x2	    /* walk with O_NOFOLLOW even if openat2 exists */
#define ZC_HTTP_NO_LISTING 0x4	    /* a directory without index.html is 403 */

struct stat;

/**
 * zc_open_beneath() - open a file or directory under a root, safely
 * @root_fd: the root directory (O_PATH or O_RDONLY|O_DIRECTORY)
 * @path: relative path, as from zc_http_path_resolve() ("" is the root)
 * @flags: 0, ZC_HTTP_FOLLOW_SYMLINKS, ZC_HTTP_NO_OPENAT2
 * @fd: out, the new descriptor (O_CLOEXEC): O_RDONLY for a regular file,
 *      O_PATH for a directory; the caller closes it
 * @st: out, its fstat(2)
 *
 * Looks the path up with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
 * (Linux 5.6) as an O_PATH descriptor, so that opening has no effect on
 * what is found; only a regular file is then reopened for reading (through
 * /proc/self/fd, or by its path again, checking it is the same inode, when
 * /proc is missing).  A FIFO, socket or device is never opened for
 * reading.  Symlinks are followed while they stay under the root;
 * ZC_HTTP_FOLLOW_SYMLINKS lets them go anywhere.  Without openat2 (or with
 * ZC_HTTP_NO_OPENAT2) each component is opened with O_NOFOLLOW and any
 * symlink is refused unless ZC_HTTP_FOLLOW_SYMLINKS is given.
 *
 * Return: 0; -ENOENT, -ENOTDIR; -EXDEV or -ELOOP for a symlink refused;
 * -EACCES for a file that is neither regular nor a directory (or
 * permission denied); -EMFILE, -ENFILE; other -errno.
 */
int zc_open_beneath(int root_fd, const char *path, unsigned flags, int *fd,
		    struct stat *st);

/**
 * struct zc_http_config - what a server serves and its limits
 * @root_fd: directory served (the caller's: kept open while the server is)
 * @flags: ZC_HTTP_FOLLOW_SYMLINKS, ZC_HTTP_NO_LISTING, ZC_HTTP_NO_OPENAT2
 * @max_conns: connections per loop; at the bound the loop closes its
 *             longest-idle keep-alive connection to take a new one, or
 *             stops accepting until one ends (other loops keep accepting)
 * @head_max: bound on request line + headers (414/431 beyond)
 * @max_headers: bound on header lines (431 beyond)
 * @header_timeout_ms: a request head must arrive within this time from its
 *                     first byte (or from accept): a slow client is closed
 * @idle_timeout_ms: a keep-alive connection without a request is closed
 *                   after this
 * @send_timeout_ms: a response that makes no progress for this long is
 *                   abandoned and its connection closed
 * @linger_ms: after a refused request the connection is half-closed and its
 *             input discarded for up to this long before closing, so the
 *             client reads the error instead of a reset
 * @cache_entries: open files kept per loop (0 disables the cache)
 * @cache_valid_ms: a cached file is checked against its path at most once
 *                  per this interval (0 disables the cache)
 * @small_file_max: regular files up to this size are answered from a copy
 *                  in memory (header and body in one sendmsg); 0 sends
 *                  every file with sendfile
 * @log_fd: access log in common log format, or -1 (the default): lines are
 *          buffered and written once per loop iteration
 */
struct zc_http_config {
	int root_fd;
	unsigned flags;
	unsigned max_conns;
	unsigned head_max;
	unsigned max_headers;
	int header_timeout_ms;
	int idle_timeout_ms;
	int send_timeout_ms;
	int linger_ms;
	unsigned cache_entries;
	int cache_valid_ms;
	unsigned small_file_max;
	int log_fd;
};

/**
 * struct zc_http_stats - counters of one loop (sum the loops' for a server)
 * @accepted: connections accepted
 * @closed: connections closed (@accepted - @closed are open)
 * @requests: requests answered, any status
 * @responses: by status class: [1] 1xx ... [5] 5xx ([0] unused)
 * @bytes: bytes written to sockets (headers and bodies)
 * @body_bytes: file and page bytes among them
 * @bad_requests: heads refused by the parser (400, 414, 431, 505)
 * @header_timeouts: connections closed while a head was arriving too slowly
 * @idle_timeouts: keep-alive connections closed for idling
 * @send_timeouts: responses abandoned for making no progress
 * @resets: connections that ended on a socket error (reset by the peer,
 *          broken pipe) or an EOF before the response was sent
 * @truncated: responses cut short because their file shrank while they
 *             were sent: the connection is reset (never padded or
 *             finished), so the client sees an error, not a whole body.
 *             Bytes sendfile already queued share the page cache with
 *             the file, so a truncation can still change (zero) those
 *             past the new end before they leave: zero-copy cannot take
 *             them back.
 * @accept_errors: accept(2) failures other than EAGAIN
 * @fd_exhausted: connections refused for lack of descriptors (EMFILE,
 *                ENFILE: accepted with the spare descriptor and closed)
 * @conn_limit: times the loop was full (an idle connection was closed for
 *              a new one, or accepting paused)
 * @cache_hits: requests answered from the open-file cache
 * @cache_misses: lookups that opened the file
 * @cache_stale: cached files found changed on revalidation
 * @log_errors: access log writes that failed (the lines are dropped)
 *
 * Written only by the loop's thread.  Read them once zc_http_loop_run()
 * returned, or accept that a read from another thread while it runs sees
 * each counter at some recent value.
 */
struct zc_http_stats {
	uint64_t accepted;
	uint64_t closed;
	uint64_t requests;
	uint64_t responses[6];
	uint64_t bytes;
	uint64_t body_bytes;
	uint64_t bad_requests;
	uint64_t header_timeouts;
	uint64_t idle_timeouts;
	uint64_t send_timeouts;
	uint64_t resets;
	uint64_t truncated;
	uint64_t accept_errors;
	uint64_t fd_exhausted;
	uint64_t conn_limit;
	uint64_t cache_hits;
	uint64_t cache_misses;
	uint64_t cache_stale;
	uint64_t log_errors;
};

/**
 * struct zc_http_server - configuration and stop switch shared by loops
 * @config: a copy of the configuration given to zc_http_server_init()
 */
struct zc_http_server {
	struct zc_http_config config;
	ZC_PRIVATE(32);
};

/**
 * struct zc_http_loop - one event loop of a server; one thread runs it
 * @stats: its counters
 */
struct zc_http_loop {
	struct zc_http_stats stats;
	ZC_PRIVATE(1024);
};

/**
 * zc_http_config_init() - the defaults
 * @cfg: caller-allocated; root_fd and log_fd are set to -1, the limits to
 *       the ZC_HTTP_* defaults, flags to 0 (listing on, symlinks that
 *       leave the root refused), small_file_max to ZC_HTTP_SMALL_FILE_MAX
 */
void zc_http_config_init(struct zc_http_config *cfg);

/**
 * zc_http_server_init() - check a configuration and make the stop switch
 * @srv: caller-allocated; it must stay in place until zc_http_server_close()
 *       (loops keep a pointer to it)
 * @cfg: the configuration (copied)
 *
 * Return: 0; -EINVAL for a configuration out of range (no root, max_conns
 * 0, head_max below 64 or above 1 MiB, a negative timeout, ...); -ENOTDIR
 * when root_fd is not a directory; -errno from eventfd(2).
 */
int zc_http_server_init(struct zc_http_server *srv,
			const struct zc_http_config *cfg);

/**
 * zc_http_server_stop() - ask every loop of the server to stop
 * @srv: the server; async-signal-safe, callable from any thread
 * @grace_ms: 0 closes every connection at once; otherwise the loops stop
 *            accepting, close idle connections, and give responses in
 *            flight up to @grace_ms to finish (their connections then
 *            close) before closing what remains
 *
 * Each zc_http_loop_run() returns 0 once its loop has stopped, and at once
 * on later calls, until zc_http_server_rearm().  A second stop may shorten
 * the grace of loops still draining (0: close now).
 *
 * Return: 0, or -errno from write(2).
 */
int zc_http_server_stop(struct zc_http_server *srv, int grace_ms);

/**
 * zc_http_server_rearm() - undo zc_http_server_stop() so loops serve again
 * @srv: the server; call it when no zc_http_loop_run() is running
 *
 * Return: 0, or -errno from read(2).
 */
int zc_http_server_rearm(struct zc_http_server *srv);

/**
 * zc_http_server_close() - release the stop switch; safe to call twice
 * @srv: the server, whose loops are closed already
 */
void zc_http_server_close(struct zc_http_server *srv);

/**
 * zc_http_loop_size() - memory one loop needs for a configuration
 * @cfg: the configuration
 * @size: out, bytes: per connection about 500 bytes of state and a
 *        buffer of head_max + 1.5 KiB (taken from a pool only while the
 *        connection has a request in progress, so untouched otherwise),
 *        the file cache and its small-file copies, and 64 KiB of access
 *        log buffer when log_fd is set
 *
 * Return: 0, or -EINVAL for a configuration zc_http_server_init() refuses
 * (or a size that overflows).
 */
int zc_http_loop_size(const struct zc_http_config *cfg, size_t *size);

/**
 * zc_http_loop_init() - make one loop of a server
 * @loop: caller-allocated
 * @srv: the server (must outlive the loop)
 * @listen_fd: a listening stream socket (the caller's; switched to
 *             O_NONBLOCK).  The same fd for several loops is fine.
 * @mem: zc_http_loop_size() bytes, aligned for any type, kept until
 *       zc_http_loop_close(); or NULL to have the loop map them itself
 *       with mmap(2) (one allocation, at init)
 * @mem_size: the size of @mem (ignored when @mem is NULL)
 *
 * Nothing of @mem needs initialising, and the loop touches it lazily:
 * connection buffers come from a LIFO pool, so pages of buffers that were
 * never needed stay untouched (with @mem NULL, or memory from mmap, they
 * are not resident).  This is why a loop maps its own memory when asked:
 * calloc-style memory is often all resident.
 *
 * Return: 0; -EINVAL (bad arguments, @mem_size too small, @listen_fd not
 * a listening socket); -errno from epoll_create1(), epoll_ctl() or mmap()
 * (-ENOMEM, -EMFILE).
 */
int zc_http_loop_init(struct zc_http_loop *loop, struct zc_http_server *srv,
		      int listen_fd, void *mem, size_t mem_size);

/**
 * zc_http_loop_run() - serve until stopped, a signal or a timeout
 * @loop: the loop, run by one thread at a time (several loops of one server
 *        run in parallel threads)
 * @timeout_ms: return -ETIMEDOUT after this long; ZC_WAIT_FOREVER for no
 *              bound
 *
 * Accepts connections, reads requests, answers them.  Nothing blocks but
 * epoll_wait(2).  A signal that interrupts it makes the call return -EINTR
 * with everything in place: call again to go on (connections in progress
 * continue).
 *
 * Return: 0 when zc_http_server_stop() stopped the loop (its connections
 * are closed); -EINTR; -ETIMEDOUT; other -errno from epoll_wait(2).
 */
int zc_http_loop_run(struct zc_http_loop *loop, int timeout_ms);

/**
 * zc_http_loop_close() - close every connection and release the loop
 * @loop: the loop, not running; safe to call twice
 *
 * The listening socket stays open (it is the caller's).  Memory the loop
 * mapped itself is unmapped; the caller's @mem is the caller's to free.
 */
void zc_http_loop_close(struct zc_http_loop *loop);

#ifdef __cplusplus
}
#endif

#endif /* ZC_H */
