/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct priv {
	int changed; /* 1 when zc_cork_begin() set the cork and must undo it */
};
ZC__PRIV_FITS(struct priv, struct zc_cork_state);

void zc__cork_forget(struct zc_cork_state *st)
{
	ZC__PRIV(struct priv, st)->changed = 0;
}

int zc_cork_begin(int sock, struct zc_cork_state *st)
{
	struct priv *p = ZC__PRIV(struct priv, st);
	int on = 0, one = 1;
	socklen_t len = sizeof(on);

	p->changed = 0;
	if (getsockopt(sock, IPPROTO_TCP, TCP_CORK, &on, &len) < 0) {
		/* not TCP (AF_UNIX says EOPNOTSUPP): nothing to coalesce */
		if (errno == EOPNOTSUPP || errno == ENOPROTOOPT)
			return 0;
		return -errno;
	}
	if (on)
		return 0; /* the caller corked it: leave it to the caller */
	if (setsockopt(sock, IPPROTO_TCP, TCP_CORK, &one, sizeof(one)) < 0)
		return -errno;
	p->changed = 1;
	return 0;
}

int zc_cork_end(int sock, struct zc_cork_state *st)
{
	struct priv *p = ZC__PRIV(struct priv, st);
	int off = 0;

	if (!p->changed)
		return 0;
	p->changed = 0;
	/* uncorking pushes the queued partial segment at once; a cork left
	 * set would hold it back for up to 200 ms */
	if (setsockopt(sock, IPPROTO_TCP, TCP_CORK, &off, sizeof(off)) < 0)
		return -errno;
	return 0;
}
