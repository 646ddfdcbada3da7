/* SPDX-License-Identifier: MIT */
/* Relays and proxies: socket pairs pumped both ways through pipes by one epoll loop. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* state[d] of direction d (fd[d] -> fd[!d]) */
#define S_EOF 0x1u  /* fd[d] said EOF */
#define S_SHUT 0x2u /* ... and fd[!d] got shutdown(SHUT_WR): direction over */
/* state[s] of socket s */
#define S_PENDING 0x4u /* fd[s] is still connecting */

/* epoll_event.data.u64: a relay pointer | its side, or one of these tags */
#define TAG_MASK 0x3u
#define TAG_LISTENER 0x2u
#define TAG_WAKE 0x3u

#define BUDGET 16	    /* pipe fills per direction before others get a turn */
#define ACCEPT_BURST 64	    /* connections accepted per listener wake-up */
#define STARVED_RETRY_MS 10 /* a relay that got no pipe (EMFILE) tries again */
#define PAUSE_MS 100	    /* a listener that cannot accept at all rests */

/*
 * Relays with the same timeout, ordered by last activity: a relay moves to
 * the tail when it makes progress, so the head always expires first and
 * every operation is O(1).
 */
struct tq {
	struct zc__queue q;
	int ms; /* > 0; otherwise unused (no relay is put in it) */
};

struct relay_priv {
	struct zc_pipe pipe[2];
	int fl[2];	   /* the sockets' own file flags, restored at the end */
	unsigned state[2];
	int progress;	   /* moved something since the last retime() */
	struct tq *tq;	   /* the timer queue it is in, or NULL */
	struct tq *idle;   /* a plain relay's timeout class, or NULL */
	int64_t last;	   /* loop time of its last activity */
	struct zc_relay_loop *loop;
	struct zc_proxy *proxy;
	struct zc__queue link;	/* loop all | loop done | proxy conns | proxy free */
	struct zc__queue work;	/* loop ready | loop starved */
	struct zc__queue timer; /* a tq */
};
ZC__PRIV_FITS(struct relay_priv, struct zc_relay);

struct loop_priv {
	int epfd;
	int wakefd;
	int intr;	    /* a splice met a signal: say -EINTR after the batch */
	int64_t now;	    /* CLOCK_MONOTONIC ms, read once per wake-up */
	int64_t starved_at; /* when the starved relays try again (0: none) */
	struct zc__queue all;	  /* running plain relays */
	struct zc__queue done;	  /* ended plain relays, not yet reported */
	struct zc__queue ready;	  /* budget ran out: pump again */
	struct zc__queue starved; /* waiting for a pipe */
	struct zc__queue proxies;
	struct tq classes[ZC_RELAY_TIMEOUTS];
};
ZC__PRIV_FITS(struct loop_priv, struct zc_relay_loop);

struct proxy_priv {
	struct sockaddr_storage target;
	unsigned target_len;
	int listen_fd;
	int listening;
	int spare_fd;	   /* kept in reserve for EMFILE, or -1 */
	int64_t resume_at; /* a paused listener is armed again then (0: not paused) */
	struct zc_relay_loop *loop;
	struct zc__queue free;	/* unused slots */
	struct zc__queue conns; /* running connections */
	struct zc__queue link;	/* in the loop's proxies */
	struct tq connect, idle, stall;
};
ZC__PRIV_FITS(struct proxy_priv, struct zc_proxy);

static struct relay_priv *rp(struct zc_relay *r)
{
	return ZC__PRIV(struct relay_priv, r);
}

static struct loop_priv *lp(struct zc_relay_loop *loop)
{
	return ZC__PRIV(struct loop_priv, loop);
}

static struct proxy_priv *pp(struct zc_proxy *px)
{
	return ZC__PRIV(struct proxy_priv, px);
}

static struct zc_relay *relay_of(struct relay_priv *p)
{
	return (struct zc_relay *)(void *)((char *)p -
					   offsetof(struct zc_relay, _private));
}

static struct zc_proxy *proxy_of(struct proxy_priv *p)
{
	return (struct zc_proxy *)(void *)((char *)p -
					   offsetof(struct zc_proxy, _private));
}

#define RELAY(node, field) relay_of(zc__queue_data(node, struct relay_priv, field))
#define PROXY(node) proxy_of(zc__queue_data(node, struct proxy_priv, link))

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

/* ---- timers --------------------------------------------------------------- */

static struct tq *pick_tq(struct zc_relay *r)
{
	struct relay_priv *p = rp(r);
	struct proxy_priv *x;
	struct tq *tq;

	if (!p->proxy)
		return p->idle;
	x = pp(p->proxy);
	if ((p->state[0] | p->state[1]) & S_PENDING)
		tq = &x->connect;
	else if (p->pipe[0].buffered || p->pipe[1].buffered)
		tq = &x->stall; /* bytes wait for a peer that does not take them */
	else
		tq = &x->idle;
	return tq->ms > 0 ? tq : NULL;
}

/* After progress or a change of state: the relay's clock starts again. */
static void retime(struct zc_relay *r)
{
	struct relay_priv *p = rp(r);
	struct tq *tq = pick_tq(r);

	p->progress = 0;
	p->last = lp(p->loop)->now;
	p->tq = tq;
	zc__queue_remove(&p->timer);
	if (tq)
		zc__queue_insert_tail(&tq->q, &p->timer);
}

/* Absolute time the head of tq expires, or -1. */
static int64_t tq_due(const struct tq *tq)
{
	if (tq->ms <= 0 || zc__queue_empty(&tq->q))
		return -1;
	return rp(RELAY(zc__queue_head(&tq->q), timer))->last + tq->ms;
}

static int64_t sooner(int64_t a, int64_t b)
{
	if (a < 0)
		return b;
	return b < 0 || a < b ? a : b;
}

/* ---- taking a relay out --------------------------------------------------- */

/* Out of epoll and every queue, pipes back, flags restored. */
static void detach(struct zc_relay *r)
{
	struct relay_priv *p = rp(r);
	struct zc_relay_loop *loop = p->loop;

	for (int s = 0; s < 2; s++) {
		(void)epoll_ctl(lp(loop)->epfd, EPOLL_CTL_DEL, r->fd[s], NULL);
		zc_pipe_put(loop->pool, &p->pipe[s]); /* closes one with data */
		if (p->fl[s] >= 0)
			(void)fcntl(r->fd[s], F_SETFL, p->fl[s]);
	}
	zc__queue_remove(&p->work);
	zc__queue_remove(&p->timer);
	zc__queue_remove(&p->link);
	p->tq = NULL;
	loop->active--;
}

static void proxy_release(struct zc_relay *r);

/* The relay ended (r->error says how): report it, or hand it to its proxy. */
static void finish(struct zc_relay *r)
{
	struct relay_priv *p = rp(r);

	r->done = 1;
	detach(r);
	if (p->proxy)
		proxy_release(r);
	else
		zc__queue_insert_tail(&lp(p->loop)->done, &p->link);
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

static void time_out(struct zc_relay *r)
{
	struct zc_proxy *px = rp(r)->proxy;

	if (px) {
		fail(r, -ETIMEDOUT);
		px->timed_out++; /* after failed: readers of the stats see both */
		return;
	}
	/* a plain relay's sockets are the caller's: what the peers are told
	 * is the caller's choice */
	r->error = -ETIMEDOUT;
	finish(r);
}

static void expire(struct zc_relay_loop *loop, struct tq *tq)
{
	int64_t now = lp(loop)->now;

	while (tq->ms > 0 && !zc__queue_empty(&tq->q)) {
		struct zc_relay *r = RELAY(zc__queue_head(&tq->q), timer);

		if (now - rp(r)->last < tq->ms)
			break;
		time_out(r);
	}
}

/* ---- pumping ---------------------------------------------------------------- */

/*
 * Move bytes of direction d until the source has nothing, the destination
 * is full (edge-triggered epoll reports the change) or the budget is spent
 * (*again is set: the relay goes on the ready list).  *starved: no pipe
 * could be had (EMFILE, ENFILE); the relay tries again a little later.
 */
static int pump(struct zc_relay *r, int d, int *again, int *starved)
{
	struct relay_priv *p = rp(r);
	struct zc_relay_loop *loop = p->loop;
	struct zc_pipe *pipe = &p->pipe[d];
	int src = r->fd[d], dst = r->fd[!d];

	for (int round = 0;; round++) {
		ssize_t n;

		while (pipe->buffered > 0) {
			/* SPLICE_F_NONBLOCK: the pipe side never waits; the
			 * socket is non-blocking anyway */
			n = splice(pipe->rfd, NULL, dst, NULL, pipe->buffered,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n < 0 && errno == EINTR) {
				/* a signal pending at the call: no fault of
				 * the stream's; the caller runs its handlers */
				lp(loop)->intr = 1;
				continue;
			}
			if (n < 0)
				return errno == EAGAIN ? 0 : -errno;
			if (n == 0)
				return -EIO; /* our pipe holds bytes */
			pipe->buffered -= (uint32_t)n;
			r->bytes[d] += (uint64_t)n;
			loop->bytes[d] += (uint64_t)n;
			p->progress = 1;
		}
		if (p->state[d] & S_SHUT)
			return 0;
		if (p->state[d] & S_EOF) {
			zc_pipe_put(loop->pool, pipe);
			if (p->state[!d] & S_PENDING)
				return 0; /* shutdown() would abort the connect */
			if (shutdown(dst, SHUT_WR) < 0) {
				int rc = -errno, err = zc__socket_error(dst);

				return err < 0 ? err : rc; /* ECONNRESET > ENOTCONN */
			}
			p->state[d] |= S_SHUT;
			p->progress = 1;
			return 0;
		}
		if (round >= BUDGET) {
			*again = 1;
			return 0;
		}
		if (pipe->rfd < 0) {
			int rc = zc_pipe_get(loop->pool, pipe);

			if (rc == -EMFILE || rc == -ENFILE) {
				*starved = 1;
				return 0;
			}
			if (rc < 0)
				return rc;
		}
		/* The pipe is empty: EAGAIN means the socket has nothing, never
		 * a full pipe, and 0 means EOF. */
		n = splice(src, NULL, pipe->wfd, NULL, pipe->size,
			   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			pipe->buffered = (uint32_t)n;
			p->progress = 1;
		} else if (n == 0) {
			p->state[d] |= S_EOF;
			p->progress = 1;
		} else if (errno == EINTR) {
			lp(loop)->intr = 1; /* as above: read again */
		} else if (errno == EAGAIN) {
			/* idle direction: hold no pipe */
			zc_pipe_put(loop->pool, pipe);
			return 0;
		} else {
			return -errno;
		}
	}
}

static void pump_dirs(struct zc_relay *r, int d0, int d1)
{
	struct relay_priv *p = rp(r);
	struct loop_priv *l = lp(p->loop);
	int again = 0, starved = 0, rc;

	for (int d = d0; d <= d1; d++) {
		rc = pump(r, d, &again, &starved);
		if (rc < 0) {
			fail(r, rc);
			return;
		}
	}
	if ((p->state[0] & S_SHUT) && (p->state[1] & S_SHUT)) {
		finish(r);
		return;
	}
	if (starved) {
		if (zc__queue_empty(&l->starved))
			l->starved_at = l->now + STARVED_RETRY_MS;
		zc__queue_remove(&p->work);
		zc__queue_insert_tail(&l->starved, &p->work);
	} else if (again && !zc__queue_linked(&p->work)) {
		zc__queue_insert_tail(&l->ready, &p->work);
	}
	if (p->progress || pick_tq(r) != p->tq)
		retime(r);
}

static void on_event(struct zc_relay *r, int side, uint32_t ev)
{
	struct relay_priv *p = rp(r);
	int in = (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
	int out = (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0;
	int rc;

	if (r->done)
		return; /* a stale event from the same batch */
	if ((p->state[side] & S_PENDING) && out) {
		rc = zc__socket_error(r->fd[side]);
		if (rc < 0) {
			fail(r, rc); /* the connect failed */
			return;
		}
		p->state[side] &= ~S_PENDING;
		p->progress = 1;
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
		rc = zc__socket_error(r->fd[side]);
		if (rc < 0)
			fail(r, rc);
	}
}

/* ---- the loop ------------------------------------------------------------- */

int zc_relay_loop_init(struct zc_relay_loop *loop, struct zc_pipe_pool *pool)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = TAG_WAKE };
	struct loop_priv *l = lp(loop);

	memset(loop, 0, sizeof(*loop));
	loop->pool = pool;
	zc__queue_init(&l->all);
	zc__queue_init(&l->done);
	zc__queue_init(&l->ready);
	zc__queue_init(&l->starved);
	zc__queue_init(&l->proxies);
	for (int i = 0; i < ZC_RELAY_TIMEOUTS; i++)
		zc__queue_init(&l->classes[i].q);
	l->wakefd = -1;
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0)
		return -errno;
	l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->wakefd < 0 ||
	    epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0) {
		int rc = -errno;

		if (l->wakefd >= 0)
			close(l->wakefd);
		close(l->epfd);
		l->epfd = l->wakefd = -1;
		return rc;
	}
	return 0;
}

void zc_relay_loop_close(struct zc_relay_loop *loop)
{
	struct loop_priv *l = lp(loop);

	if (l->epfd < 0)
		return;
	while (!zc__queue_empty(&l->proxies))
		zc_proxy_close(PROXY(zc__queue_head(&l->proxies)));
	while (!zc__queue_empty(&l->all))
		zc_relay_remove(RELAY(zc__queue_head(&l->all), link));
	while (!zc__queue_empty(&l->done)) {
		struct zc_relay *r = RELAY(zc__queue_head(&l->done), link);

		zc__queue_remove(&rp(r)->link);
		rp(r)->loop = NULL;
	}
	close(l->wakefd);
	close(l->epfd);
	l->epfd = l->wakefd = -1;
}

int zc_relay_wake(struct zc_relay_loop *loop)
{
	uint64_t one = 1;

	if (write(lp(loop)->wakefd, &one, sizeof(one)) < 0 && errno != EAGAIN)
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

static int add(struct zc_relay_loop *loop, struct zc_relay *r, int a, int b,
	       struct zc_proxy *px)
{
	struct loop_priv *l = lp(loop);
	struct relay_priv *p = rp(r);
	void *data = r->data;
	int rc = 0, s;

	if (a < 0 || b < 0)
		return -EBADF;
	if (a == b)
		return -EINVAL;
	if (l->epfd < 0)
		return -EBADF;
	memset(r, 0, sizeof(*r));
	r->data = data;
	r->fd[0] = a;
	r->fd[1] = b;
	p->loop = loop;
	p->proxy = px;
	zc__queue_init(&p->link);
	zc__queue_init(&p->work);
	zc__queue_init(&p->timer);
	for (s = 0; s < 2; s++) {
		p->pipe[s].rfd = p->pipe[s].wfd = -1;
		p->fl[s] = -1;
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
		p->fl[s] = fl;
		if (connecting(r->fd[s]))
			p->state[s] |= S_PENDING;
		if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, r->fd[s], &ev) < 0) {
			rc = -errno;
			(void)fcntl(r->fd[s], F_SETFL, fl);
			p->fl[s] = -1;
			break;
		}
	}
	if (rc < 0) {
		while (s-- > 0) {
			(void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, r->fd[s], NULL);
			(void)fcntl(r->fd[s], F_SETFL, p->fl[s]);
		}
		p->loop = NULL;
		p->proxy = NULL;
		return rc;
	}
	zc__queue_insert_tail(px ? &pp(px)->conns : &l->all, &p->link);
	loop->active++;
	/* bytes may be waiting already, and edge-triggered epoll reports
	 * only changes from now on */
	zc__queue_insert_tail(&l->ready, &p->work);
	l->now = zc__now_ms();
	retime(r);
	return 0;
}

int zc_relay_add(struct zc_relay_loop *loop, struct zc_relay *r, int a, int b)
{
	return add(loop, r, a, b, NULL);
}

int zc_relay_set_timeout(struct zc_relay *r, int idle_ms)
{
	struct relay_priv *p = rp(r);
	struct loop_priv *l;
	struct tq *tq = NULL;

	if (!p->loop || r->done || p->proxy || idle_ms == 0 || idle_ms < -1)
		return -EINVAL;
	l = lp(p->loop);
	zc__queue_remove(&p->timer); /* its old class may be free now */
	if (idle_ms > 0) {
		for (int i = 0; i < ZC_RELAY_TIMEOUTS && !tq; i++)
			if (l->classes[i].ms == idle_ms)
				tq = &l->classes[i];
		for (int i = 0; i < ZC_RELAY_TIMEOUTS && !tq; i++)
			if (zc__queue_empty(&l->classes[i].q))
				tq = &l->classes[i];
		if (!tq) {
			retime(r); /* back where it was */
			return -ENOSPC;
		}
		tq->ms = idle_ms;
	}
	p->idle = tq;
	l->now = zc__now_ms();
	retime(r);
	return 0;
}

void zc_relay_remove(struct zc_relay *r)
{
	struct relay_priv *p = rp(r);

	if (!p->loop)
		return;
	if (!r->done) {
		r->done = 1;
		detach(r);
		if (p->proxy)
			proxy_release(r);
	} else {
		zc__queue_remove(&p->link); /* from the done list */
	}
	p->loop = NULL;
}

static void run_ready(struct zc_relay_loop *loop)
{
	struct zc__queue batch;

	zc__queue_init(&batch);
	zc__queue_move(&lp(loop)->ready, &batch);
	while (!zc__queue_empty(&batch)) {
		struct zc__queue *q = zc__queue_head(&batch);
		struct zc_relay *r = RELAY(q, work);

		zc__queue_remove(q);
		if (!r->done)
			pump_dirs(r, 0, 1);
	}
}

static void proxy_accept(struct zc_proxy *px);
static void proxy_arm(struct zc_proxy *px, int on);

static unsigned take_done(struct zc_relay_loop *loop, struct zc_relay **done,
			  unsigned max_done)
{
	struct loop_priv *l = lp(loop);
	unsigned n = 0;

	while (!zc__queue_empty(&l->done) && n < max_done) {
		struct zc_relay *r = RELAY(zc__queue_head(&l->done), link);

		zc__queue_remove(&rp(r)->link);
		rp(r)->loop = NULL;
		done[n++] = r;
	}
	return n;
}

/* Absolute time of the next timer, retry or listener resumption, or -1. */
static int64_t next_due(struct zc_relay_loop *loop)
{
	struct loop_priv *l = lp(loop);
	int64_t t = zc__queue_empty(&l->starved) ? -1 : l->starved_at;
	struct zc__queue *q;

	for (int i = 0; i < ZC_RELAY_TIMEOUTS; i++)
		t = sooner(t, tq_due(&l->classes[i]));
	zc__queue_foreach(q, &l->proxies) {
		struct proxy_priv *x = pp(PROXY(q));

		t = sooner(t, tq_due(&x->connect));
		t = sooner(t, tq_due(&x->idle));
		t = sooner(t, tq_due(&x->stall));
		if (x->resume_at)
			t = sooner(t, x->resume_at);
	}
	return t;
}

/* Timeouts, starved relays, paused listeners: whatever is due now. */
static void run_due(struct zc_relay_loop *loop)
{
	struct loop_priv *l = lp(loop);
	struct zc__queue *q;

	for (int i = 0; i < ZC_RELAY_TIMEOUTS; i++)
		expire(loop, &l->classes[i]);
	zc__queue_foreach(q, &l->proxies) {
		struct zc_proxy *px = PROXY(q);
		struct proxy_priv *x = pp(px);

		expire(loop, &x->connect);
		expire(loop, &x->idle);
		expire(loop, &x->stall);
		if (x->resume_at && l->now >= x->resume_at)
			proxy_arm(px, 1);
	}
	if (!zc__queue_empty(&l->starved) && l->now >= l->starved_at) {
		zc__queue_move(&l->starved, &l->ready);
		run_ready(loop);
	}
}

int zc_relay_run(struct zc_relay_loop *loop, int timeout_ms,
		 struct zc_relay **done, unsigned max_done)
{
	struct loop_priv *l = lp(loop);
	struct epoll_event ev[ZC_RELAY_EVENTS];
	int64_t deadline;

	if (l->epfd < 0)
		return -EBADF;
	l->now = zc__now_ms();
	deadline = timeout_ms >= 0 ? l->now + timeout_ms : -1;
	run_due(loop);
	for (;;) {
		int64_t next = sooner(next_due(loop), deadline);
		int wait = -1, n, woke = 0, nlisten = 0;

		if (!zc__queue_empty(&l->done) && max_done > 0)
			return (int)take_done(loop, done, max_done);
		if (!zc__queue_empty(&l->ready))
			wait = 0;
		else if (next >= 0)
			wait = next <= l->now ? 0
			       : next - l->now > 1000000 ? 1000000
			       : (int)(next - l->now);
		n = epoll_wait(l->epfd, ev, ZC_RELAY_EVENTS, wait);
		if (n < 0)
			return -errno; /* -EINTR: a signal; the caller resumes */
		l->now = zc__now_ms();
		for (int i = 0; i < n; i++) {
			uint64_t u = ev[i].data.u64;
			unsigned tag = (unsigned)(u & TAG_MASK);
			void *ptr = (void *)(uintptr_t)(u & ~(uint64_t)TAG_MASK);

			if (tag == TAG_WAKE && !ptr) {
				uint64_t v;

				(void)!read(l->wakefd, &v, sizeof(v));
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
		run_due(loop);
		if (l->intr) {
			l->intr = 0;
			if (!zc__queue_empty(&l->done) && max_done > 0)
				return (int)take_done(loop, done, max_done);
			return -EINTR;
		}
		/* at the deadline return whatever max_done allows: ended relays
		 * that max_done 0 cannot take must not keep the loop spinning */
		if (woke || (deadline >= 0 && l->now >= deadline))
			return (int)take_done(loop, done, max_done);
	}
}

int zc_relay_loop_fd(struct zc_relay_loop *loop, int *next_ms)
{
	struct loop_priv *l = lp(loop);

	if (l->epfd < 0)
		return -EBADF;
	if (next_ms) {
		int64_t now = zc__now_ms(), next = next_due(loop);

		if (!zc__queue_empty(&l->ready) || !zc__queue_empty(&l->done))
			*next_ms = 0; /* work that no descriptor event announces */
		else if (next < 0)
			*next_ms = -1;
		else
			*next_ms = next <= now ? 0
				   : next - now > INT_MAX ? INT_MAX
				   : (int)(next - now);
	}
	return l->epfd;
}

/* ---- proxy ---------------------------------------------------------------- */

static void proxy_arm(struct zc_proxy *px, int on)
{
	struct proxy_priv *x = pp(px);
	struct epoll_event ev = {
		.events = on ? EPOLLIN : 0,
		.data.u64 = (uint64_t)(uintptr_t)px | TAG_LISTENER,
	};

	if (epoll_ctl(lp(x->loop)->epfd, EPOLL_CTL_MOD, x->listen_fd, &ev) == 0) {
		x->listening = on;
		x->resume_at = 0;
	}
}

/* accept(2) cannot go on (no memory, no descriptor to spare): rest a little,
 * rather than spin on a listener that stays readable. */
static void proxy_pause(struct zc_proxy *px)
{
	struct proxy_priv *x = pp(px);

	proxy_arm(px, 0);
	x->resume_at = lp(x->loop)->now + PAUSE_MS;
}

static void no_delay(int fd)
{
	int one = 1;

	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int out_of_fds(int err)
{
	return err == EMFILE || err == ENFILE;
}

static void proxy_accept(struct zc_proxy *px)
{
	struct proxy_priv *x = pp(px);
	const struct sockaddr *to = (const struct sockaddr *)&x->target;

	if (x->spare_fd < 0)
		x->spare_fd = zc__spare_open();
	for (int i = 0; i < ACCEPT_BURST && x->listen_fd >= 0; i++) {
		struct zc_relay *r;
		int c, s;

		c = accept4(x->listen_fd, NULL, NULL,
			    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (c < 0) {
			int err = errno;

			if (err == EAGAIN || err == EINTR)
				return;
			if (out_of_fds(err)) {
				/* reset the client rather than leave it in
				 * the backlog */
				err = -zc__refuse_with_spare(x->listen_fd,
							     &x->spare_fd, 1);
				if (err == 0) {
					px->accepted++;
					px->refused++;
					continue;
				}
				if (err == EAGAIN)
					return; /* nobody was waiting */
				/* -EMFILE: no spare; the listener rests */
			}
			if (out_of_fds(err) || err == ENOBUFS || err == ENOMEM) {
				proxy_pause(px);
				return;
			}
			continue; /* ECONNABORTED and friends: next one */
		}
		px->accepted++;
		if (zc__queue_empty(&x->free)) {
			zc__reset_close(c); /* full: say so now, not after a timeout */
			px->refused++;
			continue;
		}
		s = socket(to->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (s < 0) {
			zc__reset_close(c);
			if (out_of_fds(errno))
				px->refused++;
			else
				px->failed++;
			continue;
		}
		if (to->sa_family != AF_UNIX) {
			no_delay(c);
			no_delay(s);
		}
		if (connect(s, to, x->target_len) < 0 && errno != EINPROGRESS) {
			zc__reset_close(c);
			close(s);
			px->failed++;
			continue;
		}
		r = RELAY(zc__queue_head(&x->free), link);
		zc__queue_remove(&rp(r)->link);
		r->data = NULL;
		if (add(x->loop, r, c, s, px) < 0) {
			zc__queue_insert_head(&x->free, &rp(r)->link);
			zc__reset_close(c);
			close(s);
			px->failed++;
			continue;
		}
		px->active++;
	}
}

static void proxy_release(struct zc_relay *r)
{
	struct relay_priv *p = rp(r);
	struct zc_proxy *px = p->proxy;
	struct proxy_priv *x = pp(px);

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
	p->proxy = NULL;
	p->loop = NULL;
	zc__queue_insert_head(&x->free, &p->link);
	/* descriptors were freed: a listener paused for want of them resumes */
	if (x->resume_at)
		x->resume_at = lp(x->loop)->now;
}

static int check_listener(int fd)
{
	int type = 0, listening = 0;
	socklen_t len = sizeof(type);

	/* a closed fd or a non-socket is no listener either: -EINVAL, as
	 * zc.h says, whichever check finds out */
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return errno == ENOTSOCK || errno == EBADF ? -EINVAL : -errno;
	len = sizeof(listening);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
		return errno == ENOTSOCK || errno == EBADF ? -EINVAL : -errno;
	/* not listening: accept(2) fails at once, and a level-triggered
	 * listener would spin */
	return type == SOCK_STREAM && listening ? 0 : -EINVAL;
}

int zc_proxy_init(struct zc_proxy *px, struct zc_relay_loop *loop,
		  int listen_fd, const struct sockaddr *target,
		  unsigned target_len, struct zc_relay *slots, unsigned nslots)
{
	struct proxy_priv *x = pp(px);
	struct epoll_event ev = {
		.events = EPOLLIN,
		.data.u64 = (uint64_t)(uintptr_t)px | TAG_LISTENER,
	};
	int fl, rc;

	memset(px, 0, sizeof(*px)); /* a failed init leaves zc_proxy_close() a no-op */
	if (!target || target_len < sizeof(sa_family_t) ||
	    target_len > sizeof(x->target) || !slots || !nslots ||
	    listen_fd < 0 || lp(loop)->epfd < 0)
		return -EINVAL;
	if (target->sa_family != AF_INET && target->sa_family != AF_INET6 &&
	    target->sa_family != AF_UNIX)
		return -EINVAL;
	rc = check_listener(listen_fd);
	if (rc < 0)
		return rc;
	memcpy(&x->target, target, target_len);
	x->target_len = target_len;
	x->listen_fd = listen_fd;
	x->spare_fd = -1;
	x->loop = loop;
	zc__queue_init(&x->free);
	zc__queue_init(&x->conns);
	zc__queue_init(&x->link);
	zc__queue_init(&x->connect.q);
	zc__queue_init(&x->idle.q);
	zc__queue_init(&x->stall.q);
	x->connect.ms = ZC_PROXY_CONNECT_MS;
	x->idle.ms = ZC_PROXY_IDLE_MS;
	x->stall.ms = ZC_PROXY_STALL_MS;
	for (unsigned i = 0; i < nslots; i++) {
		struct relay_priv *p = rp(&slots[i]);

		memset(&slots[i], 0, sizeof(slots[i]));
		slots[i].fd[0] = slots[i].fd[1] = -1;
		zc__queue_init(&p->work);
		zc__queue_init(&p->timer);
		zc__queue_insert_tail(&x->free, &p->link);
	}
	fl = fcntl(listen_fd, F_GETFL);
	if (fl < 0 || fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
	    epoll_ctl(lp(loop)->epfd, EPOLL_CTL_ADD, listen_fd, &ev) < 0) {
		rc = -errno;
		if (fl >= 0)
			(void)fcntl(listen_fd, F_SETFL, fl); /* the caller's flags */
		/* nothing else was taken yet (the spare fd comes last); a
		 * proxy without a loop is one zc_proxy_close() ignores */
		x->loop = NULL;
		x->listen_fd = -1;
		return rc;
	}
	x->listening = 1;
	x->spare_fd = zc__spare_open();
	zc__queue_insert_tail(&lp(loop)->proxies, &x->link);
	return 0;
}

int zc_proxy_set_timeouts(struct zc_proxy *px, int connect_ms, int idle_ms,
			  int stall_ms)
{
	struct proxy_priv *x = pp(px);
	int v[3] = { connect_ms, idle_ms, stall_ms };

	for (int i = 0; i < 3; i++)
		if (v[i] == 0 || v[i] < -1)
			return -EINVAL;
	x->connect.ms = connect_ms;
	x->idle.ms = idle_ms;
	x->stall.ms = stall_ms;
	return 0;
}

void zc_proxy_close(struct zc_proxy *px)
{
	struct proxy_priv *x = pp(px);

	if (!x->loop)
		return;
	(void)epoll_ctl(lp(x->loop)->epfd, EPOLL_CTL_DEL, x->listen_fd, NULL);
	x->listen_fd = -1;
	x->listening = 0;
	x->resume_at = 0;
	while (!zc__queue_empty(&x->conns))
		fail(RELAY(zc__queue_head(&x->conns), link), -ECONNABORTED);
	zc__queue_remove(&x->link);
	if (x->spare_fd >= 0)
		close(x->spare_fd);
	x->spare_fd = -1;
	x->loop = NULL;
}
