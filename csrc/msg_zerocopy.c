/* SPDX-License-Identifier: MIT */
/* MSG_ZEROCOPY sends, error-queue completions, the token tracker, and the
 * policy on top of them (struct zc_zsock). */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Fallbacks for old build images; values from the kernel's UAPI headers. */
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60 /* include/uapi/asm-generic/socket.h */
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000 /* include/linux/socket.h */
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5 /* include/uapi/linux/errqueue.h */
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1 /* include/uapi/linux/errqueue.h */
#endif

int zc_zerocopy_enable(int sock)
{
	int one = 1;

	if (setsockopt(sock, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0)
		return -errno;
	return 0;
}

int zc_tracker_init(struct zc_tracker *t, struct zc_track_rec *recs, uint32_t cap)
{
	memset(t, 0, sizeof(*t));
	if (!recs || cap == 0)
		return -EINVAL;
	t->_recs = recs;
	t->_cap = cap;
	return 0;
}

uint32_t zc_tracker_pending(const struct zc_tracker *t)
{
	return t->_count;
}

static struct zc_track_rec *rec_at(const struct zc_tracker *t, uint32_t i)
{
	return &t->_recs[(t->_head + i) % t->_cap];
}

long zc_send_tracked(int sock, struct zc_tracker *t, const void *buf, size_t len,
		     uint64_t token, int msg_flags)
{
	struct zc_track_rec *rec;
	ssize_t n;

	if (len == 0)
		return -EINVAL; /* an empty send would consume no number */
	if (t && t->_count == t->_cap)
		return -ENOSPC;
	msg_flags |= MSG_NOSIGNAL | (t ? MSG_ZEROCOPY : 0);
	n = send(sock, buf, len, msg_flags);
	if (n < 0)
		return -errno;
	if (t && n > 0) {
		rec = rec_at(t, t->_count);
		rec->_token = token;
		rec->_done = 0;
		rec->_last = (size_t)n == len;
		t->_count++;
		t->next_seq++; /* u32: wraps at 2**32 like the kernel's counter */
	}
	return (long)n;
}

int zc_tracker_seal(struct zc_tracker *t, uint64_t token)
{
	struct zc_track_rec *rec;

	if (t->_count == 0)
		return 0;
	rec = rec_at(t, t->_count - 1);
	if (rec->_token != token)
		return 0;
	rec->_last = 1;
	return 1;
}

int zc__parse_completion(const struct msghdr *msg, struct zc_completion *out)
{
	struct cmsghdr *cm;

	if (msg->msg_flags & MSG_CTRUNC)
		return -EIO;
	for (cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR((struct msghdr *)msg, cm)) {
		struct sock_extended_err ee;

		if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
		      (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
			continue;
		if (cm->cmsg_len < CMSG_LEN(sizeof(ee)))
			return -EPROTO; /* too short to hold what it claims */
		memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
		if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY)
			return ee.ee_errno ? -(int)ee.ee_errno : -EPROTO;
		if (ee.ee_errno != 0)
			return -(int)ee.ee_errno;
		out->lo = ee.ee_info;
		out->hi = ee.ee_data;
		out->copied = (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0;
		return 1;
	}
	return -EPROTO;
}

int zc_reap_completions(int sock, struct zc_completion *out, size_t max, size_t *n)
{
	*n = 0;
	while (*n < max) {
		/* room for one sock_extended_err plus the offender address */
		union {
			char buf[CMSG_SPACE(sizeof(struct sock_extended_err) +
					    sizeof(struct sockaddr_in6))];
			struct cmsghdr align;
		} control;
		struct msghdr msg = {
			.msg_control = control.buf,
			.msg_controllen = sizeof(control.buf),
		};
		int rc;

		if (recvmsg(sock, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR)
				continue;
			return -errno;
		}
		rc = zc__parse_completion(&msg, &out[*n]);
		if (rc < 0)
			return rc;
		(*n)++;
	}
	return 0;
}

/* Mark the sends of [lo, hi] that the tracker holds as done. */
static void mark_done(struct zc_tracker *t, uint32_t lo, uint32_t hi)
{
	uint32_t base = t->next_seq - t->_count; /* oldest send's number */
	uint32_t from = lo - base, to = hi - base;
	uint32_t i;

	if (from > to) {
		/* the range starts before the oldest send held: clip it there,
		 * unless it ends before it too (a stale, duplicate range) */
		if (hi - lo >= (uint32_t)1 << 31)
			return; /* inverted: not a range the kernel would send */
		from = 0;
	}
	if (from >= t->_count)
		return;
	if (to >= t->_count)
		to = t->_count - 1;
	for (i = from; i <= to; i++)
		rec_at(t, i)->_done = 1;
}

size_t zc_tracker_complete(struct zc_tracker *t, const struct zc_completion *c,
			   size_t n, uint64_t *freed, size_t max_freed)
{
	size_t i, nfreed = 0;

	for (i = 0; i < n; i++)
		mark_done(t, c[i].lo, c[i].hi);
	while (t->_count > 0) {
		struct zc_track_rec *rec = rec_at(t, 0);

		if (!rec->_done)
			break;
		if (rec->_last) {
			if (nfreed == max_freed)
				break;
			freed[nfreed++] = rec->_token;
		}
		t->_head = (t->_head + 1) % t->_cap;
		t->_count--;
	}
	return nfreed;
}

int zc_wait_completions(int sock, int timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = 0 }; /* POLLERR is implied */
	int n = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);

	if (n < 0)
		return -errno;
	if (n == 0)
		return timeout_ms == 0 ? -EAGAIN : -ETIMEDOUT;
	if (!(p.revents & POLLERR) && (p.revents & POLLHUP)) {
		/* hung up and nothing queued: POLLHUP would make every poll
		 * return at once, so pace the caller instead of spinning */
		int pause = timeout_ms < 0 || timeout_ms > 10 ? 10 : timeout_ms;

		if (poll(NULL, 0, pause) < 0)
			return -errno;
	}
	return 0;
}

/* ---- the policy: struct zc_zsock ---------------------------------------- */

#define ZS_CACHE 8	/* freed tokens kept for zc_zsock_collect() */
#define ZS_SLICE_MS 100 /* waits are cut into slices to notice a closed fd */
#define ZS_PACE_MS 10	/* pause after a wake-up that brought nothing */
#define ZS_BATCH 16	/* error-queue messages per recvmmsg() */

/*
 * The records form a ring, oldest send first, whose sequence numbers are
 * contiguous and end at next_seq - 1.  A done record leaves the head: the
 * token of a buffer's last send goes to the cache (when full, the ring
 * waits for zc_zsock_collect()).  The newest record of the open buffer
 * (the one being sent) stays even when done, so that ending the buffer
 * can mark it last; only with a one-record ring does it leave early
 * ("orphan"), and ending the buffer then puts a done record back in the
 * slot it left.
 */
struct zs_priv {
	struct zc_track_rec *recs;
	uint64_t threshold;
	uint64_t max_pinned;
	uint64_t open_token; /* the buffer being sent */
	uint64_t open_size;  /* the bytes it pins once on loan */
	uint64_t cache[ZS_CACHE];
	dev_t dev; /* the socket's identity, from zc_zsock_init() */
	ino_t ino;
	uint32_t cap, head, count, next_seq;
	uint8_t cache_head, cache_n;
	uint8_t adaptive, open, open_loaned, orphan, reset, ended;
};

ZC__PRIV_FITS(struct zs_priv, struct zc_zsock);

static struct zs_priv *zs(struct zc_zsock *z)
{
	return ZC__PRIV(struct zs_priv, z);
}

static const struct zs_priv *zs_const(const struct zc_zsock *z)
{
	return (const struct zs_priv *)(const void *)z->_private.bytes;
}

static struct zc_track_rec *zs_rec(struct zs_priv *p, uint32_t i)
{
	return &p->recs[(p->head + i) % p->cap];
}

/* 0 when fd names the zsock's socket (zc_zsock_init()'s), else -EBADF. */
static int zs_same(const struct zs_priv *p, int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0 || st.st_dev != p->dev || st.st_ino != p->ino)
		return -EBADF;
	return 0;
}

/* Pin the socket before a wait (the hold's duplicate), checking that it is
 * ours; the fd to wait on and use from then on, or -errno. */
static int zs_pin(const struct zs_priv *p, struct zc__hold *h)
{
	int rc = zc__hold_pin(h);

	if (rc < 0)
		return rc;
	if (h->dev != p->dev || h->ino != p->ino)
		return -EBADF;
	return h->fd;
}

/* The next slice of a wait ending at deadline (-1: none); 0 when over. */
static int zs_slice(long long deadline)
{
	long long left;

	if (deadline < 0)
		return ZS_SLICE_MS;
	left = deadline - zc__now_ms();
	if (left <= 0)
		return 0;
	return left < ZS_SLICE_MS ? (int)left : ZS_SLICE_MS;
}

static long long zs_deadline(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : zc__now_ms() + timeout_ms;
}

/* Pop done records off the head; free buffers' tokens go to the cache. */
static void zs_advance(struct zc_zsock *z, struct zs_priv *p)
{
	while (p->count > 0) {
		struct zc_track_rec *r = zs_rec(p, 0);

		if (!r->_done)
			break;
		if (r->_last) {
			if (p->cache_n == ZS_CACHE)
				break;
			p->cache[(p->cache_head + p->cache_n) % ZS_CACHE] = r->_token;
			p->cache_n++;
			z->on_loan--;
			z->stats.pinned_bytes -= r->_bytes;
		} else if (p->count == 1 && p->open) {
			break; /* the open buffer's newest send */
		}
		p->head = (p->head + 1) % p->cap;
		p->count--;
	}
	z->freed = p->cache_n;
}

/* Mark the held sends of [lo, hi] done (as mark_done() for the tracker). */
static void zs_mark(struct zs_priv *p, uint32_t lo, uint32_t hi)
{
	uint32_t base = p->next_seq - p->count;
	uint32_t from = lo - base, to = hi - base;

	if (from > to) {
		if (hi - lo >= (uint32_t)1 << 31)
			return;
		from = 0;
	}
	if (from >= p->count)
		return;
	if (to >= p->count)
		to = p->count - 1;
	for (uint32_t i = from; i <= to; i++)
		zs_rec(p, i)->_done = 1;
}

/* 1: a record is free now; 0: one frees when a send completes; -1: only
 * zc_zsock_collect() can free one (waiting cannot help). */
static int zs_record_room(struct zc_zsock *z, struct zs_priv *p)
{
	zs_advance(z, p);
	if (p->count < p->cap)
		return 1;
	if (p->count == 1 && p->open && zs_rec(p, 0)->_done) {
		/* one-record ring held by the open buffer's own done send */
		p->head = (p->head + 1) % p->cap;
		p->count = 0;
		p->orphan = 1;
		return 1;
	}
	return zs_rec(p, 0)->_done ? -1 : 0;
}

/* Room for a zero-copy send that pins need more bytes: 1, 0 (wait), -1. */
static int zs_room(struct zc_zsock *z, struct zs_priv *p, uint64_t need)
{
	int r = zs_record_room(z, p);

	if (r <= 0)
		return r;
	/* alone, a buffer over the bound may go: else it never could */
	if (need == 0 || z->on_loan == 0 ||
	    z->stats.pinned_bytes + need <= p->max_pinned)
		return 1;
	return 0;
}

/* Buffers on loan whose sending ended (the open one is still the caller's). */
static uint32_t zs_loans_out(const struct zc_zsock *z, const struct zs_priv *p)
{
	return z->on_loan - (p->open && p->open_loaned ? 1u : 0u);
}

static void zs_record(struct zc_zsock *z, struct zs_priv *p)
{
	struct zc_track_rec *r = zs_rec(p, p->count);

	r->_token = p->open_token;
	r->_bytes = 0;
	r->_done = 0;
	r->_last = 0;
	p->count++;
	p->next_seq++; /* u32: wraps at 2**32 like the kernel's counter */
	p->orphan = 0;
	z->stats.zerocopy_sends++;
	if (!p->open_loaned) {
		p->open_loaned = 1;
		z->on_loan++;
		z->stats.pinned_bytes += p->open_size;
		if (z->stats.pinned_bytes > z->stats.peak_pinned_bytes)
			z->stats.peak_pinned_bytes = z->stats.pinned_bytes;
	}
}

/* End the open buffer: 1 when it is on loan (its token will be collected). */
static int zs_seal(struct zc_zsock *z, struct zs_priv *p)
{
	struct zc_track_rec *r;

	if (!p->open)
		return 0;
	p->open = 0;
	if (!p->open_loaned)
		return 0;
	if (p->orphan) { /* its one record left early: the ring is empty */
		r = zs_rec(p, p->count);
		r->_done = 1;
		p->count++;
		p->orphan = 0;
	} else {
		r = zs_rec(p, p->count - 1);
	}
	r->_token = p->open_token;
	r->_bytes = p->open_size;
	r->_last = 1;
	zs_advance(z, p);
	return 1;
}

static void zs_apply(struct zc_zsock *z, struct zs_priv *p,
		     const struct zc_completion *c)
{
	uint64_t sends = (uint64_t)(uint32_t)(c->hi - c->lo) + 1;

	z->stats.completions += sends;
	if (c->copied) {
		z->stats.copied_completions += sends;
		if (p->adaptive)
			z->active = 0;
	}
	zs_mark(p, c->lo, c->hi);
}

/* Drain the error queue; the number of buffers that became free. */
static int zs_reap_held(struct zc_zsock *z, struct zs_priv *p,
			struct zc__hold *h)
{
	uint32_t before = z->on_loan;

	if (!z->supported)
		return 0;
	for (;;) {
		union {
			char buf[CMSG_SPACE(sizeof(struct sock_extended_err) +
					    sizeof(struct sockaddr_in6))];
			struct cmsghdr align;
		} control[ZS_BATCH];
		struct mmsghdr mm[ZS_BATCH];
		int n;

		memset(mm, 0, sizeof(mm));
		for (int i = 0; i < ZS_BATCH; i++) {
			mm[i].msg_hdr.msg_control = control[i].buf;
			mm[i].msg_hdr.msg_controllen = sizeof(control[i].buf);
		}
		n = recvmmsg(h->fd, mm, ZS_BATCH, MSG_ERRQUEUE | MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EAGAIN)
				break;
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			struct zc_completion c;

			/* not a completion (a TX timestamp asked for): skip */
			if (zc__parse_completion(&mm[i].msg_hdr, &c) == 1)
				zs_apply(z, p, &c);
		}
		if (n < ZS_BATCH)
			break;
	}
	zs_advance(z, p);
	return (int)(before - z->on_loan);
}

/* Wait up to slice_ms for completions on the held socket, then reap.
 * *idle: the previous wake-up brought nothing (a pending socket error
 * keeps POLLERR up): pause first instead of spinning. */
static int zs_wait_step(struct zc_zsock *z, struct zs_priv *p,
			struct zc__hold *h, int slice_ms, int *idle)
{
	uint64_t seen = z->stats.completions;
	int fd = zs_pin(p, h), rc, chk;

	if (fd < 0)
		return fd;
	if (*idle && poll(NULL, 0, slice_ms < ZS_PACE_MS ? slice_ms : ZS_PACE_MS) < 0)
		return -errno;
	rc = zc_wait_completions(fd, slice_ms);
	chk = zc__hold_check(h);
	if (chk < 0)
		return chk;
	if (rc < 0 && rc != -ETIMEDOUT && rc != -EAGAIN)
		return rc;
	chk = zs_reap_held(z, p, h);
	if (chk < 0)
		return chk;
	*idle = rc == 0 && z->stats.completions == seen;
	return 0;
}

static int zs_flush_held(struct zc_zsock *z, struct zs_priv *p,
			 struct zc__hold *h, int timeout_ms)
{
	long long deadline = zs_deadline(timeout_ms);
	int idle = 0, rc = zs_reap_held(z, p, h);

	while (rc >= 0) {
		int slice;

		if (zs_loans_out(z, p) == 0)
			return 0;
		if (timeout_ms == 0)
			return -EAGAIN;
		slice = zs_slice(deadline);
		if (slice == 0)
			return -ETIMEDOUT;
		rc = zs_wait_step(z, p, h, slice, &idle);
	}
	return rc;
}

/*
 * Wait for writability in slices, checking the socket after each.  Our
 * completions arriving meanwhile raise POLLERR, which poll() reports at once
 * until they are read: reap them, then wait on.
 */
static int zs_wait_out(struct zc_zsock *z, struct zs_priv *p, struct zc__hold *h,
		       int timeout_ms)
{
	long long deadline = zs_deadline(timeout_ms);
	int fd, rc, chk;

	if (timeout_ms == 0)
		return -EAGAIN;
	fd = zs_pin(p, h);
	if (fd < 0)
		return fd;
	for (;;) {
		int slice = zs_slice(deadline);

		if (slice == 0)
			return -ETIMEDOUT;
		/* without SO_ZEROCOPY the queue is not ours: zc_wait_writable() naps */
		rc = z->supported ? zc__poll_out(fd, slice) : zc_wait_writable(fd, slice);
		chk = zc__hold_check(h);
		if (chk < 0)
			return chk;
		if (rc == 1) {
			rc = zs_reap_held(z, p, h); /* empties the error queue */
			if (rc < 0)
				return rc;
			continue;
		}
		if (rc != -ETIMEDOUT)
			return rc;
	}
}

/*
 * The flag for the next part of the open buffer (*zc), waiting for room
 * where timeout_ms allows.  Past the bound, or when waiting cannot help,
 * the part goes plain.
 */
static int zs_want(struct zc_zsock *z, struct zs_priv *p, struct zc__hold *h,
		   size_t left, int timeout_ms, int *zc)
{
	uint64_t need = p->open_loaned ? 0 : p->open_size;
	long long deadline;
	int idle = 0, r, rc;

	*zc = 0;
	if (!z->active || left < p->threshold)
		return 0;
	r = zs_room(z, p, need);
	if (r == 0) { /* completions may be queued already */
		rc = zs_reap_held(z, p, h);
		if (rc < 0)
			return rc;
		r = zs_room(z, p, need);
	}
	if (r == 0 && timeout_ms != 0) {
		deadline = zs_deadline(timeout_ms);
		while (r == 0 && z->active) {
			int slice = zs_slice(deadline);

			if (slice == 0)
				break;
			rc = zs_wait_step(z, p, h, slice, &idle);
			if (rc < 0)
				return rc;
			r = zs_room(z, p, need);
		}
	}
	*zc = r > 0 && z->active;
	return 0;
}

void zc_zsock_opts_init(struct zc_zsock_opts *o)
{
	o->threshold = ZC_ZSOCK_THRESHOLD;
	o->max_pinned_bytes = ZC_ZSOCK_MAX_PINNED;
	o->adaptive = 1;
}

int zc_zsock_init(struct zc_zsock *z, int sock, struct zc_track_rec *recs,
		  uint32_t nrecs, const struct zc_zsock_opts *o)
{
	struct zs_priv *p = zs(z);
	struct zc_zsock_opts def;
	struct stat st;
	int rc;

	memset(z, 0, sizeof(*z));
	z->sock = sock;
	p->ended = 1; /* until it is set up */
	if (!o) {
		zc_zsock_opts_init(&def);
		o = &def;
	}
	if (!recs || nrecs == 0 || o->threshold == 0 || o->max_pinned_bytes == 0)
		return -EINVAL;
	rc = zc_check_stream(sock);
	if (rc < 0)
		return rc;
	if (fstat(sock, &st) < 0)
		return -errno;
	rc = zc_zerocopy_enable(sock);
	if (rc == -EOPNOTSUPP || rc == -ENOPROTOOPT || rc == -EINVAL)
		z->unsupported = -rc;
	else if (rc < 0)
		return rc;
	z->supported = z->active = rc == 0;
	p->recs = recs;
	p->cap = nrecs;
	p->threshold = o->threshold;
	p->max_pinned = o->max_pinned_bytes;
	p->adaptive = o->adaptive != 0;
	p->dev = st.st_dev;
	p->ino = st.st_ino;
	p->ended = 0;
	return 0;
}

int zc_zsock_send(struct zc_zsock *z, const void *buf, size_t len,
		  uint64_t token, unsigned flags, int timeout_ms, uint64_t *sent)
{
	struct zs_priv *p = zs(z);
	const unsigned char *b = buf;
	const int more = flags & ZC_ZSOCK_MORE ? MSG_MORE : 0;
	struct zc__hold h;
	size_t done = 0;
	int rc = 0, plain_next = 0, nonblock = -1, checked = 0;

	if (p->ended) {
		z->loaned = (flags & ZC_ZSOCK_RESUME) != 0; /* end() decided it */
		return -EBADF;
	}
	if (!(flags & ZC_ZSOCK_RESUME) || !p->open || p->open_token != token) {
		zs_seal(z, p); /* a buffer left open and not resumed */
		p->open = 1;
		p->open_token = token;
		p->open_size = len;
		p->open_loaned = 0;
		p->orphan = 0;
	}
	zc__hold_init(&h, z->sock);
	if (len > 0 && z->supported && p->count > 0) {
		/* learn of COPIED early, and free what is done */
		rc = zs_same(p, z->sock);
		checked = 1;
		if (rc == 0)
			rc = zs_reap_held(z, p, &h);
		if (rc > 0)
			rc = 0;
	}
	while (rc == 0 && done < len) {
		size_t left = len - done;
		int zc = 0, fd;
		ssize_t n;

		if (!plain_next) {
			rc = zs_want(z, p, &h, left, timeout_ms, &zc);
			if (rc < 0)
				break;
		}
		plain_next = 0;
		if (zc && !checked) { /* a sequence number must be ours */
			rc = zs_same(p, z->sock);
			checked = 1;
			if (rc < 0)
				break;
		}
		fd = h.fd; /* the caller's until a wait pinned the socket */
		n = send(fd, b + done, left, MSG_NOSIGNAL | more | (zc ? MSG_ZEROCOPY : 0));
		if (n > 0) {
			done += (size_t)n;
			if (zc)
				zs_record(z, p);
			else
				z->stats.plain_sends++;
			if (flags & ZC_ZSOCK_ONCE)
				break;
			if ((size_t)n < left) {
				if (nonblock < 0)
					rc = zc__is_nonblocking(fd, &nonblock);
				if (rc == 0 && !nonblock)
					rc = zc__short_send_blocking(fd);
			}
			continue;
		}
		rc = n == 0 ? -EIO : -errno;
		if (zc && rc == -ENOBUFS) {
			/* the kernel cannot track it (optmem_max, locked
			 * memory): resend the same bytes plain, now */
			z->stats.enobufs_fallbacks++;
			plain_next = 1;
			rc = 0;
		} else if (zc && rc == -EOPNOTSUPP) {
			z->active = 0; /* a layer that refuses the flag (kTLS) */
			rc = 0;
		} else if (rc == -EAGAIN) {
			rc = zs_wait_out(z, p, &h, timeout_ms);
		}
	}
	*sent += done;
	zc__hold_release(&h);
	if (rc == -EINTR)
		z->loaned = 1; /* open: resume, or zc_zsock_send_end() */
	else
		z->loaned = zs_seal(z, p);
	return rc;
}

int zc_zsock_send_end(struct zc_zsock *z)
{
	struct zs_priv *p = zs(z);

	if (p->open)
		z->loaned = zs_seal(z, p);
	return z->loaned;
}

int zc_zsock_reap(struct zc_zsock *z)
{
	struct zs_priv *p = zs(z);
	struct zc__hold h;
	int rc;

	if (p->ended || !z->supported)
		return 0;
	zc__hold_init(&h, z->sock);
	rc = zs_same(p, z->sock);
	if (rc == 0)
		rc = zs_reap_held(z, p, &h);
	zc__hold_release(&h);
	return rc;
}

size_t zc_zsock_collect(struct zc_zsock *z, uint64_t *tokens, size_t max)
{
	struct zs_priv *p = zs(z);
	size_t n = 0;

	for (;;) {
		while (n < max && p->cache_n > 0) {
			tokens[n++] = p->cache[p->cache_head];
			p->cache_head = (uint8_t)((p->cache_head + 1) % ZS_CACHE);
			p->cache_n--;
		}
		if (n == max)
			break;
		zs_advance(z, p); /* tokens the full cache held back */
		if (p->cache_n == 0)
			break;
	}
	z->freed = p->cache_n;
	return n;
}

int zc_zsock_poll(const struct zc_zsock *z, int timeout_ms)
{
	const struct zs_priv *p = zs_const(z);
	long long deadline = zs_deadline(timeout_ms);
	int rc;

	/* Only looks: polls the caller's fd and checks after each slice that
	 * it still names the socket (nothing is read or sent here). */
	if (!z->supported)
		return 0;
	rc = zs_same(p, z->sock);
	if (rc < 0)
		return rc;
	if (timeout_ms == 0)
		return zc_wait_completions(z->sock, 0);
	for (;;) {
		int slice = zs_slice(deadline), chk;

		if (slice == 0)
			return -ETIMEDOUT;
		rc = zc_wait_completions(z->sock, slice);
		chk = zs_same(p, z->sock);
		if (chk < 0)
			return chk;
		if (rc != -ETIMEDOUT)
			return rc;
	}
}

int zc_zsock_flush(struct zc_zsock *z, int timeout_ms)
{
	struct zs_priv *p = zs(z);
	struct zc__hold h;
	int rc;

	if (p->ended || !z->supported)
		return zs_loans_out(z, p) == 0 ? 0 : -EBADF;
	zc__hold_init(&h, z->sock);
	rc = zs_same(p, z->sock);
	if (rc == 0)
		rc = zs_flush_held(z, p, &h, timeout_ms);
	zc__hold_release(&h);
	return rc;
}

int zc_zsock_end(struct zc_zsock *z, int timeout_ms)
{
	struct zs_priv *p = zs(z);
	struct sockaddr unspec = { .sa_family = AF_UNSPEC };
	struct zc__hold h;
	int rc = 0, fd;

	zs_seal(z, p);
	if (p->ended || !z->supported || z->on_loan == 0) {
		p->ended = 1;
		return (int)z->on_loan;
	}
	zc__hold_init(&h, z->sock);
	if (zs_same(p, z->sock) < 0)
		goto out; /* not our socket any more: never reset another's */
	if (!p->reset) {
		rc = zs_flush_held(z, p, &h, timeout_ms);
		if (rc == -EINTR || rc == -EBADF || z->on_loan == 0)
			goto out;
		/* A stalled peer: reset the connection.  tcp_disconnect()
		 * purges the write queue; the fd stays open, so the kernel
		 * reports the completions (a closed socket's are dropped). */
		fd = zs_pin(p, &h); /* flush waited: pinned already */
		if (fd < 0)
			goto out;
		(void)connect(fd, &unspec, sizeof(unspec));
		p->reset = 1;
	}
	rc = zs_flush_held(z, p, &h, ZC_ZSOCK_RESET_WAIT_MS);
out:
	zc__hold_release(&h);
	if (rc == -EINTR)
		return rc;
	p->ended = 1;
	return (int)z->on_loan;
}

uint32_t zc_zsock_abandon(struct zc_zsock *z)
{
	struct zs_priv *p = zs(z);

	zs_seal(z, p);
	p->ended = 1;
	return z->on_loan;
}
