/* SPDX-License-Identifier: MIT */
/* Relays: pairs of sockets pumped both ways through pipes by one epoll loop. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* _state[d] of direction d (fd[d] -> fd[!d]) */
#define S_EOF 0x1   /* fd[d] said EOF */
#define S_SHUT 0x2  /* ... and fd[!d] got shutdown(SHUT_WR): direction over */
/* _state[s] of socket s */
#define S_PENDING 0x4 /* fd[s] is still connecting */

/* _queued */
#define Q_READY 0x1 /* on the loop's ready list */
#define Q_DONE 0x2  /* on the loop's done list */

/* epoll_event.data.u64: a relay pointer | its side, or one of these tags */
#define TAG_MASK 0x3u
#define TAG_LISTENER 0x2u
#define TAG_WAKE 0x3u

/* Pipe fills per direction before other relays get a turn. */
#define BUDGET 16
/* Connections accepted per listener wake-up. */
#define ACCEPT_BURST 64

static long long now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int socket_error(int fd)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	return -err;
}

/*
 * End a socket abnormally so that its peer learns the stream broke: a TCP
 * socket is disconnected (connect to AF_UNSPEC sends RST); others (AF_UNIX)
 * are shut down both ways.
 */
static void reset_socket(int fd)
{
	struct sockaddr sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_family = AF_UNSPEC;
	if (connect(fd, &sa, sizeof(sa)) < 0)
		(void)shutdown(fd, SHUT_RDWR);
}

/* ---- lists -------------------------------------------------------------- */

static void unlink_all(struct zc_relay *r)
{
	struct zc_relay_loop *loop = r->_loop;

	if (r->_prev)
		r->_prev->_next = r->_next;
	else
		loop->_all = r->_next;
	if (r->_next)
		r->_next->_prev = r->_prev;
	r->_next = r->_prev = NULL;
}

/* The ready list is doubly linked through _ready/_ready_prev. */
static void unlink_ready(struct zc_relay *r)
{
	struct zc_relay_loop *loop = r->_loop;

	if (r->_ready_prev)
		r->_ready_prev->_ready = r->_ready;
	else if (loop->_ready == r)
		loop->_ready = r->_ready;
	if (r->_ready)
		r->_ready->_ready_prev = r->_ready_prev;
	r->_ready = r->_ready_prev = NULL;
	r->_queued &= ~Q_READY;
}

/* The done list is doubly linked through _next/_prev (free once a relay
 * left the _all list). */
static void unlink_done(struct zc_relay *r)
{
	struct zc_relay_loop *loop = r->_loop;

	if (!(r->_queued & Q_DONE))
		return;
	if (r->_prev)
		r->_prev->_next = r->_next;
	else
		loop->_done = r->_next;
	if (r->_next)
		r->_next->_prev = r->_prev;
	else
		loop->_done_tail = r->_prev;
	r->_next = r->_prev = NULL;
	r->_queued &= ~Q_DONE;
}

static void queue_ready(struct zc_relay *r)
{
	struct zc_relay_loop *loop = r->_loop;

	if (r->_queued & Q_READY)
		return;
	r->_queued |= Q_READY;
	r->_ready_prev = NULL;
	r->_ready = loop->_ready;
	if (loop->_ready)
		loop->_ready->_ready_prev = r;
	loop->_ready = r;
}

/* ---- taking a relay out --------------------------------------------------- */

/* Out of epoll and the ready list, pipes back, flags restored. */
static void detach(struct zc_relay *r)
{
	struct zc_relay_loop *loop = r->_loop;

	for (int s = 0; s < 2; s++) {
		(void)epoll_ctl(loop->_epfd, EPOLL_CTL_DEL, r->fd[s], NULL);
		zc_pipe_put(loop->pool, &r->_pipe[s]); /* closes one with data */
		if (r->_fl[s] >= 0)
			(void)fcntl(r->fd[s], F_SETFL, r->_fl[s]);
	}
	if (r->_queued & Q_READY)
		unlink_ready(r);
	unlink_all(r);
	loop->active--;
}

static void proxy_release(struct zc_relay *r);

/* The relay ended (r->error says how): report it, or hand it to its proxy. */
static void finish(struct zc_relay *r)
{
	struct zc_relay_loop *loop = r->_loop;

	r->done = 1;
	detach(r);
	if (r->_proxy) {
		proxy_release(r);
		return;
	}
	r->_next = NULL;
	r->_prev = loop->_done_tail;
	r->_queued |= Q_DONE;
	if (loop->_done_tail)
		loop->_done_tail->_next = r;
	else
		loop->_done = r;
	loop->_done_tail = r;
}

static void fail(struct zc_relay *r, int err)
{
	if (r->done)
		return;
	r->error = err;
	/* a broken stream on one side breaks the other: tell both peers */
	reset_socket(r->fd[0]);
	reset_socket(r->fd[1]);
	finish(r);
}

/* ---- pumping ------------------------------------------------------------ */

/*
 * Move bytes of direction d until the source has nothing, the destination
 * is full (edge-triggered epoll reports the change) or the budget is spent
 * (*again is set: the relay goes on the ready list).
 */
static int pump(struct zc_relay *r, int d, int *again)
{
	struct zc_relay_loop *loop = r->_loop;
	struct zc_pipe *p = &r->_pipe[d];
	int src = r->fd[d], dst = r->fd[!d];

	for (int round = 0;; round++) {
		ssize_t n;

		while (p->buffered > 0) {
			/* SPLICE_F_NONBLOCK: the pipe side never waits; the
			 * socket is non-blocking anyway */
			n = splice(p->rfd, NULL, dst, NULL, p->buffered,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0)
				return errno == EAGAIN ? 0 : -errno;
			if (n == 0)
				return -EIO; /* our pipe holds bytes */
			p->buffered -= (uint32_t)n;
			r->bytes[d] += (uint64_t)n;
			loop->bytes[d] += (uint64_t)n;
		}
		if (r->_state[d] & S_SHUT)
			return 0;
		if (r->_state[d] & S_EOF) {
			zc_pipe_put(loop->pool, p);
			if (r->_state[!d] & S_PENDING)
				return 0; /* shutdown() would abort the connect */
			if (shutdown(dst, SHUT_WR) < 0) {
				int rc = -errno, err = socket_error(dst);

				return err < 0 ? err : rc; /* ECONNRESET > ENOTCONN */
			}
			r->_state[d] |= S_SHUT;
			return 0;
		}
		if (round >= BUDGET) {
			*again = 1;
			return 0;
		}
		if (p->rfd < 0) {
			int rc = zc_pipe_get(loop->pool, p);

			if (rc < 0)
				return rc;
		}
		/* The pipe is empty: EAGAIN means the socket has nothing, never
		 * a full pipe, and 0 means EOF. */
		n = splice(src, NULL, p->wfd, NULL, p->size,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			p->buffered = (uint32_t)n;
		} else if (n == 0) {
			r->_state[d] |= S_EOF;
		} else if (errno == EAGAIN) {
			/* idle direction: hold no pipe */
			zc_pipe_put(loop->pool, p);
			return 0;
		} else {
			return -errno;
		}
	}
}

static void pump_dirs(struct zc_relay *r, int d0, int d1)
{
	int again = 0, rc;

	for (int d = d0; d <= d1 && !r->done; d++) {
		rc = pump(r, d, &again);
		if (rc < 0) {
			fail(r, rc);
			return;
		}
	}
	if (r->done)
		return;
	if ((r->_state[0] & S_SHUT) && (r->_state[1] & S_SHUT))
		finish(r);
	else if (again)
		queue_ready(r);
}

static void on_event(struct zc_relay *r, int side, uint32_t ev)
{
	int in = (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
	int out = (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
	int rc;

	if (r->done)
		return; /* a stale event from the same batch */
	if ((r->_state[side] & S_PENDING) && out) {
		rc = socket_error(r->fd[side]);
		if (rc < 0) {
			fail(r, rc); /* the connect failed */
			return;
		}
		r->_state[side] &= ~S_PENDING;
		in = 1; /* a deferred shutdown may be due */
	}
	/* side is the source of direction side and the destination of !side */
	if (in && out)
		pump_dirs(r, 0, 1);
	else if (in)
		pump_dirs(r, side, side);
	else if (out)
		pump_dirs(r, !side, !side);
	if (!r->done && (ev & EPOLLERR)) {
		/* an error no pump met: a reset while both directions idle */
		rc = socket_error(r->fd[side]);
		if (rc < 0)
			fail(r, rc);
	}
	if (!r->done && (r->_state[0] & S_SHUT) && (r->_state[1] & S_SHUT))
		finish(r);
}

/* ---- the loop ------------------------------------------------------------ */

int zc_relay_loop_init(struct zc_relay_loop *loop, struct zc_pipe_pool *pool)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_WAKE };

	memset(loop, 0, sizeof(*loop));
	loop->pool = pool;
	loop->_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->_epfd < 0)
		return -errno;
	loop->_wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (loop->_wakefd < 0 ||
	    epoll_ctl(loop->_epfd, EPOLL_CTL_ADD, loop->_wakefd, &ev) < 0) {
		int rc = -errno;

		if (loop->_wakefd >= 0)
			close(loop->_wakefd);
		close(loop->_epfd);
		loop->_epfd = loop->_wakefd = -1;
		return rc;
	}
	return 0;
}

void zc_relay_loop_close(struct zc_relay_loop *loop)
{
	if (loop->_epfd < 0)
		return;
	while (loop->_proxies)
		zc_proxy_close(loop->_proxies);
	while (loop->_all)
		zc_relay_remove(loop->_all);
	while (loop->_done) {
		struct zc_relay *r = loop->_done;

		unlink_done(r);
		r->_loop = NULL;
	}
	close(loop->_wakefd);
	close(loop->_epfd);
	loop->_epfd = loop->_wakefd = -1;
}

int zc_relay_wake(struct zc_relay_loop *loop)
{
	uint64_t one = 1;

	if (write(loop->_wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

static int connecting(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	return getpeername(fd, (struct sockaddr *)&ss, &len) < 0 &&
	       errno == ENOTCONN;
}

int zc_relay_add(struct zc_relay_loop *loop, struct zc_relay *r, int a, int b)
{
	void *data = r->data;
	int rc = 0, s;

	if (a < 0 || b < 0)
		return -EBADF;
	if (a == b)
		return -EINVAL;
	memset(r, 0, sizeof(*r));
	r->data = data;
	r->fd[0] = a;
	r->fd[1] = b;
	r->_loop = loop;
	for (s = 0; s < 2; s++) {
		r->_pipe[s].rfd = r->_pipe[s].wfd = -1;
		r->_fl[s] = -1;
	}
	for (s = 0; s < 2; s++) {
		struct epoll_event ev = {
			.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
			.data.u64 = (uint64_t)(uintptr_t)r | (uint64_t)s,
		};
		int fl = fcntl(r->fd[s], F_GETFL);

		if (fl < 0 || fcntl(r->fd[s], F_SETFL, fl | O_NONBLOCK) < 0) {
			rc = -errno;
			break;
		}
		r->_fl[s] = fl;
		if (connecting(r->fd[s]))
			r->_state[s] |= S_PENDING;
		if (epoll_ctl(loop->_epfd, EPOLL_CTL_ADD, r->fd[s], &ev) < 0) {
			rc = -errno;
			(void)fcntl(r->fd[s], F_SETFL, fl);
			r->_fl[s] = -1;
			break;
		}
	}
	if (rc < 0) {
		while (s-- > 0) {
			(void)epoll_ctl(loop->_epfd, EPOLL_CTL_DEL, r->fd[s], NULL);
			(void)fcntl(r->fd[s], F_SETFL, r->_fl[s]);
		}
		r->_loop = NULL;
		return rc;
	}
	r->_next = loop->_all;
	if (loop->_all)
		loop->_all->_prev = r;
	loop->_all = r;
	loop->active++;
	/* bytes may be waiting already, and edge-triggered epoll reports
	 * only changes from now on */
	queue_ready(r);
	return 0;
}

void zc_relay_remove(struct zc_relay *r)
{
	if (!r->_loop)
		return;
	if (!r->done) {
		r->done = 1;
		detach(r);
		if (r->_proxy)
			proxy_release(r);
	} else if (r->_queued & Q_DONE) {
		unlink_done(r);
	}
	r->_loop = NULL;
}

static void run_ready(struct zc_relay_loop *loop)
{
	struct zc_relay *list = loop->_ready;

	loop->_ready = NULL;
	while (list) {
		struct zc_relay *r = list;

		list = r->_ready;
		if (list)
			list->_ready_prev = NULL;
		r->_ready = r->_ready_prev = NULL;
		r->_queued &= ~Q_READY;
		if (!r->done)
			pump_dirs(r, 0, 1);
	}
}

static void proxy_accept(struct zc_proxy *px);
static void proxy_arm(struct zc_proxy *px, int on);

static unsigned take_done(struct zc_relay_loop *loop, struct zc_relay **done,
			  unsigned max_done)
{
	unsigned n = 0;

	while (loop->_done && n < max_done) {
		struct zc_relay *r = loop->_done;

		loop->_done = r->_next;
		if (loop->_done)
			loop->_done->_prev = NULL;
		else
			loop->_done_tail = NULL;
		r->_next = r->_prev = NULL;
		r->_queued &= ~Q_DONE;
		r->_loop = NULL;
		done[n++] = r;
	}
	return n;
}

int zc_relay_run(struct zc_relay_loop *loop, int timeout_ms,
		 struct zc_relay **done, unsigned max_done)
{
	struct epoll_event ev[ZC_RELAY_EVENTS];
	long long deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;

	if (loop->_epfd < 0)
		return -EBADF;
	for (struct zc_proxy *px = loop->_proxies; px; px = px->_next)
		if (!px->_listening && px->_free)
			proxy_arm(px, 1);
	for (;;) {
		int wait = -1, n, woke = 0, nlisten;

		if (loop->_done && max_done > 0)
			return (int)take_done(loop, done, max_done);
		if (loop->_ready) {
			wait = 0;
		} else if (deadline >= 0) {
			long long left = deadline - now_ms();

			if (left <= 0)
				return 0;
			wait = left > 1000000 ? 1000000 : (int)left;
		}
		n = epoll_wait(loop->_epfd, ev, ZC_RELAY_EVENTS, wait);
		if (n < 0)
			return -errno; /* -EINTR: a signal; the caller resumes */
		nlisten = 0;
		for (int i = 0; i < n; i++) {
			uint64_t u = ev[i].data.u64;
			unsigned tag = (unsigned)(u & TAG_MASK);
			void *ptr = (void *)(uintptr_t)(u & ~(uint64_t)TAG_MASK);

			if (tag == TAG_WAKE && !ptr) {
				uint64_t v;

				(void)!read(loop->_wakefd, &v, sizeof(v));
				woke = 1;
			} else if (tag == TAG_LISTENER) {
				ev[nlisten++].data.u64 = u; /* after the batch */
			} else {
				on_event(ptr, (int)tag, ev[i].events);
			}
		}
		/*
		 * Accept only once every event of the batch was handled: a relay
		 * that ended in this batch gave its slot back to the proxy, and
		 * an accept before the batch's end could hand that slot to a new
		 * connection at once, which the old connection's later events
		 * in ev[] (same data.u64) would then hit.  nlisten <= i, so the
		 * entries overwritten above were already handled.
		 */
		for (int i = 0; i < nlisten; i++)
			proxy_accept((struct zc_proxy *)(uintptr_t)
				     (ev[i].data.u64 & ~(uint64_t)TAG_MASK));
		run_ready(loop);
		if (woke)
			return (int)take_done(loop, done, max_done);
		if (deadline >= 0 && !loop->_done && now_ms() >= deadline)
			return 0;
	}
}

/* ---- proxy --------------------------------------------------------------- */

static void proxy_arm(struct zc_proxy *px, int on)
{
	struct epoll_event ev = {
		.events = on ? EPOLLIN : 0,
		.data.u64 = (uint64_t)(uintptr_t)px | TAG_LISTENER,
	};

	if (epoll_ctl(px->_loop->_epfd, EPOLL_CTL_MOD, px->_listen_fd, &ev) == 0)
		px->_listening = on;
}

static void no_delay(int fd)
{
	int one = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* A connection that could not be set up: reset it, count it. */
static void refuse(struct zc_proxy *px, int client, int server)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	(void)setsockopt(client, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(client);
	if (server >= 0)
		close(server);
	px->failed++;
}

static void proxy_accept(struct zc_proxy *px)
{
	const struct sockaddr *to = (const struct sockaddr *)&px->_target;

	for (int i = 0; i < ACCEPT_BURST; i++) {
		struct zc_relay *r;
		int c, s;

		if (!px->_free) {
			proxy_arm(px, 0); /* the rest wait in the backlog */
			return;
		}
		c = accept4(px->_listen_fd, NULL, NULL,
			    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				/* out of fds: wait for a relay to end (or the
				 * next zc_relay_run() call) */
				proxy_arm(px, 0);
				return;
			}
			continue; /* ECONNABORTED and friends: next one */
		}
		px->accepted++;
		s = socket(to->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s < 0) {
			refuse(px, c, -1);
			continue;
		}
		if (to->sa_family != AF_UNIX) {
			no_delay(c);
			no_delay(s);
		}
		if (connect(s, to, px->_target_len) < 0 && errno != EINPROGRESS) {
			refuse(px, c, s);
			continue;
		}
		r = px->_free;
		px->_free = r->_next;
		r->data = NULL;
		if (zc_relay_add(px->_loop, r, c, s) < 0) {
			r->_next = px->_free;
			px->_free = r;
			refuse(px, c, s);
			continue;
		}
		r->_proxy = px;
		px->active++;
	}
}

static void proxy_release(struct zc_relay *r)
{
	struct zc_proxy *px = r->_proxy;

	px->active--;
	if (r->error)
		px->failed++;
	else
		px->completed++;
	px->bytes[0] += r->bytes[0];
	px->bytes[1] += r->bytes[1];
	close(r->fd[0]);
	close(r->fd[1]);
	r->fd[0] = r->fd[1] = -1;
	r->_proxy = NULL;
	r->_loop = NULL;
	r->_next = px->_free;
	px->_free = r;
	if (!px->_listening && px->_listen_fd >= 0)
		proxy_arm(px, 1);
}

int zc_proxy_init(struct zc_proxy *px, struct zc_relay_loop *loop,
		  int listen_fd, const struct sockaddr *target,
		  unsigned target_len, struct zc_relay *slots, unsigned nslots)
{
	struct epoll_event ev = {
		.events = EPOLLIN,
		.data.u64 = (uint64_t)(uintptr_t)px | TAG_LISTENER,
	};
	int fl;

	if (!target || target_len < sizeof(sa_family_t) ||
	    target_len > sizeof(px->_target) || !slots || !nslots ||
	    listen_fd < 0)
		return -EINVAL;
	if (target->sa_family != AF_INET && target->sa_family != AF_INET6 &&
	    target->sa_family != AF_UNIX)
		return -EINVAL;
	memset(px, 0, sizeof(*px));
	memcpy(&px->_target, target, target_len);
	px->_target_len = target_len;
	px->_listen_fd = listen_fd;
	px->_loop = loop;
	for (unsigned i = nslots; i-- > 0;) {
		memset(&slots[i], 0, sizeof(slots[i]));
		slots[i].fd[0] = slots[i].fd[1] = -1;
		slots[i]._next = px->_free;
		px->_free = &slots[i];
	}
	fl = fcntl(listen_fd, F_GETFL);
	if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	if (epoll_ctl(loop->_epfd, EPOLL_CTL_ADD, listen_fd, &ev) < 0)
		return -errno;
	px->_listening = 1;
	px->_next = loop->_proxies;
	loop->_proxies = px;
	return 0;
}

void zc_proxy_close(struct zc_proxy *px)
{
	struct zc_relay_loop *loop = px->_loop;
	struct zc_proxy **pp;
	struct zc_relay *r, *next;

	if (!loop)
		return;
	(void)epoll_ctl(loop->_epfd, EPOLL_CTL_DEL, px->_listen_fd, NULL);
	px->_listen_fd = -1;
	px->_listening = 0;
	for (r = loop->_all; r; r = next) {
		next = r->_next;
		if (r->_proxy == px)
			fail(r, -ECONNABORTED); /* unlinks r only */
	}
	for (pp = &loop->_proxies; *pp; pp = &(*pp)->_next)
		if (*pp == px) {
			*pp = px->_next;
			break;
		}
	px->_next = NULL;
	px->_loop = NULL;
}
