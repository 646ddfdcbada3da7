/* SPDX-License-Identifier: MIT */
/* MSG_ZEROCOPY sends, error-queue completions and the token tracker. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

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

static int parse_completion(struct msghdr *msg, struct zc_completion *out)
{
	struct cmsghdr *cm;

	if (msg->msg_flags & MSG_CTRUNC)
		return -EIO;
	for (cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		struct sock_extended_err ee;

		if (!((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR) ||
		      (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
			continue;
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
		rc = parse_completion(&msg, &out[*n]);
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
