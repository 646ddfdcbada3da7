/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE
#include "zc.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

int zc_cork_begin(int sock, struct zc_cork_state *st)
{
	int on = 0, one = 1;
	socklen_t len = sizeof(on);

	st->_changed = 0;
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
	st->_changed = 1;
	return 0;
}

int zc_cork_end(int sock, struct zc_cork_state *st)
{
	int off = 0;

	if (!st->_changed)
		return 0;
	st->_changed = 0;
	/* uncorking pushes the queued partial segment at once; a cork left
	 * set would hold it back for up to 200 ms */
	if (setsockopt(sock, IPPROTO_TCP, TCP_CORK, &off, sizeof(off)) < 0)
		return -errno;
	return 0;
}
