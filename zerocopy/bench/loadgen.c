/* SPDX-License-Identifier: MIT */
/*
 * loadgen - the HTTP load generator of `zerocopy bench serve` when wrk is not
 * on PATH.  The bench compiles it with the system C compiler into its
 * temporary directory; it is not part of the library.
 *
 *   loadgen HOST PORT PATH CONNECTIONS SECONDS
 *
 * Like `wrk -t1 -cCONNECTIONS`: one thread, epoll, each connection sends one
 * GET at a time (no pipelining) and the next as soon as the response is in;
 * a response with "Connection: close" (or an HTTP/1.0 one without
 * keep-alive) makes the connection reconnect.  Bodies are discarded in the
 * kernel (recv MSG_TRUNC), so the generator costs less CPU per request than
 * the servers it loads.  Prints "key value" lines: requests (completed in
 * the window), body_bytes, seconds, errors (connection failures and bad
 * responses), non2xx, connects.  Exit status 0, or 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 8192
#define MAX_CONNS 4096

struct conn {
	int fd;
	size_t sent;		/* bytes of the request sent */
	size_t hlen;		/* bytes of the response head read */
	long long body_left;	/* -1: until EOF */
	long long body_len;
	int in_body;
	int close_after;
	int status;
	char head[HEAD_MAX];
};

static struct conn conns[MAX_CONNS];
static struct sockaddr_storage addr;
static socklen_t addr_len;
static char request[1024];
static size_t request_len;
static int epfd;
static int stopping;
static unsigned long long n_requests, n_bytes, n_errors, n_non2xx, n_connects;

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void start(struct conn *c)
{
	struct epoll_event ev;
	int one = 1;

	c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		perror("socket");
		exit(1);
	}
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(c->fd, (struct sockaddr *)&addr, addr_len) < 0 &&
	    errno != EINPROGRESS) {
		perror("connect");
		exit(1);
	}
	n_connects++;
	c->sent = c->hlen = 0;
	c->in_body = 0;
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		perror("epoll_ctl");
		exit(1);
	}
}

static void restart(struct conn *c, int failed)
{
	if (failed)
		n_errors++;
	close(c->fd);
	c->fd = -1;
	if (!stopping)
		start(c);
}

/* Case-insensitive search for a header line "\r\nname:" in the head. */
static const char *header(const struct conn *c, const char *name)
{
	size_t n = strlen(name);

	for (size_t i = 0; i + n + 2 < c->hlen; i++)
		if (c->head[i] == '\r' && c->head[i + 1] == '\n' &&
		    strncasecmp(c->head + i + 2, name, n) == 0 &&
		    c->head[i + 2 + n] == ':')
			return c->head + i + 3 + n;
	return NULL;
}

/* The head ends at end (the first byte after "\r\n\r\n"); 0 or -1 if bad. */
static int parse_head(struct conn *c, size_t end)
{
	const char *v;
	int http10;

	if (end < 12 || memcmp(c->head, "HTTP/1.", 7) != 0)
		return -1;
	http10 = c->head[7] == '0';
	c->status = atoi(c->head + 9);
	v = header(c, "content-length");
	c->body_len = v ? atoll(v) : -1;
	v = header(c, "connection");
	while (v && *v == ' ')
		v++;
	if (http10)
		c->close_after = !(v && strncasecmp(v, "keep-alive", 10) == 0);
	else
		c->close_after = v && strncasecmp(v, "close", 5) == 0;
	if (c->body_len < 0 && !c->close_after)
		return -1; /* chunked: not spoken here */
	if (c->body_len >= 0 && (long long)(c->hlen - end) > c->body_len)
		return -1; /* bytes past the body: nobody pipelines here */
	c->body_left = c->body_len < 0 ? -1 : c->body_len - (long long)(c->hlen - end);
	c->in_body = 1;
	return 0;
}

static void complete(struct conn *c)
{
	n_requests++;
	n_bytes += (unsigned long long)(c->body_len > 0 ? c->body_len : 0);
	if (c->status < 200 || c->status > 299)
		n_non2xx++;
	if (stopping)
		return;
	if (c->close_after) {
		restart(c, 0);
		return;
	}
	c->sent = c->hlen = 0;
	c->in_body = 0;
}

static void drive(struct conn *c)
{
	static char scratch[1 << 16];

	while (c->fd >= 0 && !stopping) {
		ssize_t n;

		if (c->sent < request_len) {
			n = send(c->fd, request + c->sent, request_len - c->sent,
				 MSG_NOSIGNAL);
			if (n < 0) {
				if (errno != EAGAIN)
					restart(c, 1);
				return;
			}
			c->sent += (size_t)n;
			if (c->sent == request_len)
				return; /* the answer comes with the next EPOLLIN edge */
			continue;
		}
		if (!c->in_body) {
			char *end;

			n = recv(c->fd, c->head + c->hlen, HEAD_MAX - c->hlen, 0);
			if (n <= 0) {
				if (n < 0 && errno == EAGAIN)
					return;
				restart(c, 1);
				return;
			}
			c->hlen += (size_t)n;
			end = memmem(c->head, c->hlen, "\r\n\r\n", 4);
			if (!end) {
				if (c->hlen == HEAD_MAX)
					restart(c, 1);
				continue;
			}
			if (parse_head(c, (size_t)(end - c->head) + 4) < 0) {
				restart(c, 1);
				return;
			}
		}
		if (c->body_left != 0) {
			size_t want = c->body_left < 0 || c->body_left > (long long)sizeof(scratch)
					      ? sizeof(scratch)
					      : (size_t)c->body_left;

			/* TCP discards the bytes instead of copying them */
			n = recv(c->fd, scratch, want, MSG_TRUNC);
			if (n < 0 && errno == EAGAIN)
				return;
			if (n == 0 && c->body_left < 0) { /* body to EOF */
				c->body_len = c->body_len < 0 ? 0 : c->body_len;
				complete(c); /* close_after is set: it reconnects */
				return;
			}
			if (n <= 0) {
				restart(c, 1);
				return;
			}
			if (c->body_left > 0)
				c->body_left -= n;
			else
				c->body_len = (c->body_len < 0 ? 0 : c->body_len) + n;
			continue;
		}
		complete(c);
	}
}

int main(int argc, char **argv)
{
	struct epoll_event events[256];
	struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
	double began, end;
	int nconns;

	if (argc != 6) {
		fprintf(stderr, "usage: loadgen HOST PORT PATH CONNECTIONS SECONDS\n");
		return 2;
	}
	memset(&addr, 0, sizeof(addr));
	if (inet_pton(AF_INET, argv[1], &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)atoi(argv[2]));
		addr_len = sizeof(*a4);
	} else if (inet_pton(AF_INET6, argv[1], &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)atoi(argv[2]));
		addr_len = sizeof(*a6);
	} else {
		fprintf(stderr, "loadgen: bad address %s\n", argv[1]);
		return 2;
	}
	nconns = atoi(argv[4]);
	if (nconns < 1 || nconns > MAX_CONNS || atof(argv[5]) <= 0 ||
	    strlen(argv[3]) > 512) {
		fprintf(stderr, "loadgen: bad arguments\n");
		return 2;
	}
	request_len = (size_t)snprintf(request, sizeof(request),
				       "GET %s HTTP/1.1\r\nHost: %s:%s\r\n\r\n",
				       argv[3], argv[1], argv[2]);
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0) {
		perror("epoll_create1");
		return 1;
	}
	began = now();
	end = began + atof(argv[5]);
	for (int i = 0; i < nconns; i++)
		start(&conns[i]);
	for (;;) {
		double left = end - now();
		int n;

		if (left <= 0)
			break;
		n = epoll_wait(epfd, events, 256, (int)(left * 1000) + 1);
		if (n < 0 && errno != EINTR) {
			perror("epoll_wait");
			return 1;
		}
		for (int i = 0; i < n && now() < end; i++)
			drive(events[i].data.ptr);
	}
	stopping = 1;
	printf("requests %llu\nbody_bytes %llu\nseconds %.6f\nerrors %llu\n"
	       "non2xx %llu\nconnects %llu\n",
	       n_requests, n_bytes, now() - began, n_errors, n_non2xx, n_connects);
	return 0;
}
