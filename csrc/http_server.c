/* SPDX-License-Identifier: MIT */
/* The HTTP/1.1 file server: one epoll loop per thread over pooled connections. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EVENTS 128	     /* epoll events per wait */
#define OUT_SIZE 1536	     /* response head (and short page) per connection */
#define ACCEPT_BURST 64	     /* accepts per listener wake-up */
#define SEND_BUDGET (2u << 20) /* bytes per connection per turn (nginx's
				* sendfile_max_chunk) */
#define REQS_PER_TURN 16     /* pipelined requests per connection per turn */
#define LINGER_READ (64u << 10) /* discarded bytes per turn while lingering */
#define LOG_SIZE 65536	     /* access log buffer per loop */
#define LOG_LINE_MAX 2560
#define ACCEPT_PAUSE_MS 100  /* no descriptors, no memory: retry after this */
#define LISTING_MAX 10000    /* names in a directory listing */
#define TRIM_ON_EMFILE 16    /* cached files closed when descriptors run out */

#define TAG_LISTEN 0u
#define TAG_STOP 1u

/* conn.state */
enum { C_HEAD, C_IDLE, C_SEND, C_LINGER };

struct loop_priv;

struct conn {
	struct zc__queue timer; /* in the queue of its state */
	struct zc__queue link;	/* free list, or the ready list */
	int fd;
	uint8_t state;
	uint8_t readable;    /* no EAGAIN (or short read) since the last EPOLLIN */
	uint8_t writable;
	uint8_t ready;	     /* on the ready list */
	uint8_t in_response; /* resp, file and status describe a response */
	uint8_t close_after; /* close once this response is out */
	uint8_t refused;     /* ... after lingering: input may still come */
	uint8_t family;	     /* peer address, for the log */
	uint8_t addr[16];
	char *buf;	     /* [head_max: request bytes][OUT_SIZE: head out] */
	uint32_t rlen;	     /* request bytes in buf */
	uint32_t head_len;   /* the current request's head, once parsed */
	int status;
	int64_t deadline;
	struct zc__fentry *ent; /* a cached file in use, or NULL */
	struct zc__file own;	/* an uncached file or a listing (fd >= 0: ours) */
	uint64_t head_out;	/* bytes of the response head (for the log) */
	struct zc_response resp;
	struct zc_http_request req;
};

struct srv_priv {
	int stop_fd; /* eventfd: a write wakes every loop (edge-triggered) */
	int stop;    /* 0 running, else grace_ms + 1 */
};
ZC__PRIV_FITS(struct srv_priv, struct zc_http_server);

struct loop_priv {
	struct zc_http_server *srv;
	const struct zc_http_config *cfg;
	int epfd;
	int listen_fd;
	int spare_fd;	/* kept open for EMFILE: closed to accept and refuse */
	int listening;	/* the listener is in the epoll set */
	int exclusive;	/* EPOLLEXCLUSIVE accepted by the kernel */
	int stopping;
	int intr;	/* a syscall met a signal: return -EINTR after the batch */
	int mem_owned;
	int64_t stop_deadline;
	int64_t accept_resume; /* accepting paused until then (0: not) */
	int64_t now;	       /* CLOCK_MONOTONIC, ms */
	int64_t date_sec;
	void *mem;
	size_t mem_size;
	struct epoll_event *events;
	struct conn *conns;
	unsigned nconns;
	unsigned fresh_conns; /* conns[fresh..] were never used */
	unsigned active;
	char *bufs;
	size_t buf_size;
	unsigned fresh_bufs;
	char *free_buf; /* LIFO of returned buffers, linked through them */
	char *log;
	size_t log_len;
	struct zc__queue free_conns;
	struct zc__queue ready;
	struct zc__queue q_head; /* one queue per timeout: appending keeps */
	struct zc__queue q_idle; /* each sorted by deadline, so expiry looks */
	struct zc__queue q_send; /* at the heads only */
	struct zc__queue q_linger;
	struct zc__fcache cache;
	char date[ZC__DATE_LEN + 1];
	char clf_date[ZC__CLF_DATE_LEN + 1];
};
ZC__PRIV_FITS(struct loop_priv, struct zc_http_loop);

#define L_OF(loop) ZC__PRIV(struct loop_priv, loop)

/* ---- configuration --------------------------------------------------------- */

void zc_http_config_init(struct zc_http_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->root_fd = -1;
	cfg->max_conns = ZC_HTTP_MAX_CONNS;
	cfg->head_max = ZC_HTTP_HEAD_MAX;
	cfg->max_headers = ZC_HTTP_HEADERS_MAX;
	cfg->header_timeout_ms = ZC_HTTP_HEADER_TIMEOUT_MS;
	cfg->idle_timeout_ms = ZC_HTTP_IDLE_TIMEOUT_MS;
	cfg->send_timeout_ms = ZC_HTTP_SEND_TIMEOUT_MS;
	cfg->linger_ms = ZC_HTTP_LINGER_MS;
	cfg->cache_entries = ZC_HTTP_CACHE_ENTRIES;
	cfg->cache_valid_ms = ZC_HTTP_CACHE_VALID_MS;
	cfg->small_file_max = ZC_HTTP_SMALL_FILE_MAX;
	cfg->log_fd = -1;
}

static int config_ok(const struct zc_http_config *cfg)
{
	if (!cfg || cfg->root_fd < 0 || cfg->max_conns == 0 ||
	    cfg->max_conns > (1u << 24) || cfg->head_max < 64 ||
	    cfg->head_max > (1u << 20) || cfg->max_headers == 0 ||
	    cfg->header_timeout_ms <= 0 || cfg->idle_timeout_ms <= 0 ||
	    cfg->send_timeout_ms <= 0 || cfg->linger_ms < 0 ||
	    cfg->cache_valid_ms < 0 || cfg->cache_entries > (1u << 20) ||
	    cfg->small_file_max > (1u << 20) ||
	    (cfg->flags & ~(unsigned)(ZC_HTTP_FOLLOW_SYMLINKS |
				      ZC_HTTP_NO_OPENAT2 | ZC_HTTP_NO_LISTING)))
		return 0;
	return 1;
}

static unsigned cache_entries(const struct zc_http_config *cfg)
{
	return cfg->cache_valid_ms > 0 ? cfg->cache_entries : 0;
}

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

static size_t buf_size(const struct zc_http_config *cfg)
{
	return ALIGN64((size_t)cfg->head_max + OUT_SIZE);
}

int zc_http_loop_size(const struct zc_http_config *cfg, size_t *size)
{
	size_t n;

	*size = 0;
	if (!config_ok(cfg))
		return -EINVAL;
	n = ALIGN64(EVENTS * sizeof(struct epoll_event));
	n += ALIGN64((size_t)cfg->max_conns * sizeof(struct conn));
	n += (size_t)cfg->max_conns * buf_size(cfg);
	n += ALIGN64(zc__fcache_mem(cache_entries(cfg), cfg->small_file_max));
	if (cfg->log_fd >= 0)
		n += LOG_SIZE;
	*size = n;
	return 0;
}

int zc_http_server_init(struct zc_http_server *srv,
			const struct zc_http_config *cfg)
{
	struct srv_priv *p = ZC__PRIV(struct srv_priv, srv);
	struct stat st;

	memset(srv, 0, sizeof(*srv));
	p->stop_fd = -1;
	if (!config_ok(cfg))
		return -EINVAL;
	if (fstat(cfg->root_fd, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	srv->config = *cfg;
	p->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->stop_fd < 0)
		return -errno;
	return 0;
}

int zc_http_server_stop(struct zc_http_server *srv, int grace_ms)
{
	struct srv_priv *p = ZC__PRIV(struct srv_priv, srv);
	uint64_t one = 1;
	int v = (grace_ms < 0 ? 0 : grace_ms >= INT_MAX ? INT_MAX - 1 : grace_ms) + 1;
	int old = __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);

	/* keep the shortest grace asked for */
	while ((old == 0 || v < old) &&
	       !__atomic_compare_exchange_n(&p->stop, &old, v, 0,
					    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		;
	if (write(p->stop_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

int zc_http_server_rearm(struct zc_http_server *srv)
{
	struct srv_priv *p = ZC__PRIV(struct srv_priv, srv);
	uint64_t v;

	__atomic_store_n(&p->stop, 0, __ATOMIC_RELEASE);
	if (read(p->stop_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

void zc_http_server_close(struct zc_http_server *srv)
{
	struct srv_priv *p = ZC__PRIV(struct srv_priv, srv);

	if (p->stop_fd >= 0)
		close(p->stop_fd);
	p->stop_fd = -1;
}

/* ---- pools ------------------------------------------------------------------- */

static struct conn *conn_take(struct loop_priv *L)
{
	if (!zc__queue_empty(&L->free_conns)) {
		struct zc__queue *q = zc__queue_head(&L->free_conns);

		zc__queue_remove(q);
		return zc__queue_data(q, struct conn, link);
	}
	if (L->fresh_conns < L->nconns)
		return &L->conns[L->fresh_conns++];
	return NULL;
}

static int conn_available(struct loop_priv *L)
{
	return !zc__queue_empty(&L->free_conns) || L->fresh_conns < L->nconns;
}

static char *buf_take(struct loop_priv *L)
{
	char *b = L->free_buf;

	if (b) {
		memcpy(&L->free_buf, b, sizeof(char *));
		return b;
	}
	/* one buffer per connection at most: this never runs out */
	return L->bufs + (size_t)L->fresh_bufs++ * L->buf_size;
}

static void buf_give(struct loop_priv *L, struct conn *c)
{
	if (!c->buf)
		return;
	memcpy(c->buf, &L->free_buf, sizeof(char *));
	L->free_buf = c->buf;
	c->buf = NULL;
	c->rlen = 0;
}

static void timer_set(struct loop_priv *L, struct conn *c, struct zc__queue *q,
		      int ms)
{
	zc__queue_remove(&c->timer);
	c->deadline = L->now + ms;
	zc__queue_insert_tail(q, &c->timer);
}

static void make_ready(struct loop_priv *L, struct conn *c)
{
	if (c->ready)
		return;
	c->ready = 1;
	zc__queue_insert_tail(&L->ready, &c->link);
}

/* ---- access log ---------------------------------------------------------------- */

/* One write per loop iteration; lines that cannot be written are dropped. */
static void log_flush(struct loop_priv *L, struct zc_http_stats *stats)
{
	size_t off = 0;

	while (off < L->log_len) {
		ssize_t n = write(L->cfg->log_fd, L->log + off, L->log_len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			stats->log_errors++;
			break;
		}
		off += (size_t)n;
	}
	L->log_len = 0;
}

static size_t put_u64(char *p, uint64_t v)
{
	char tmp[20];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

/* Common log format: host ident user [time] "request line" status bytes */
static void log_request(struct loop_priv *L, struct zc_http_stats *stats,
			struct conn *c)
{
	char line[LOG_LINE_MAX];
	const char *rl = c->req.method_str;
	size_t rlen = 0, n = 0;
	uint64_t body = c->resp.sent > c->head_out ? c->resp.sent - c->head_out
						    : 0;

	if (!L->log)
		return;
	if (c->family == AF_INET || c->family == AF_INET6) {
		if (!inet_ntop(c->family, c->addr, line, INET6_ADDRSTRLEN))
			line[0] = '\0';
		n = strlen(line);
	} else {
		line[n++] = '-';
	}
	memcpy(line + n, " - - [", 6);
	n += 6;
	memcpy(line + n, L->clf_date, ZC__CLF_DATE_LEN);
	n += ZC__CLF_DATE_LEN;
	memcpy(line + n, "] \"", 3);
	n += 3;
	if (rl && c->req.target) {
		rlen = (size_t)(c->req.target + c->req.target_len - rl) + 9;
	} else if (c->buf) { /* refused: the first line as far as it goes */
		rl = c->buf;
		while (rlen < c->rlen && rl[rlen] != '\r' && rl[rlen] != '\n')
			rlen++;
	}
	for (size_t i = 0; i < rlen && n < sizeof(line) - 64; i++) {
		unsigned char ch = (unsigned char)rl[i];

		if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
			line[n++] = (char)ch;
		} else {
			line[n++] = '\\';
			line[n++] = 'x';
			line[n++] = "0123456789abcdef"[ch >> 4];
			line[n++] = "0123456789abcdef"[ch & 15];
		}
	}
	line[n++] = '"';
	line[n++] = ' ';
	n += put_u64(line + n, (uint64_t)c->status);
	line[n++] = ' ';
	if (body)
		n += put_u64(line + n, body);
	else
		line[n++] = '-';
	line[n++] = '\n';
	if (L->log_len + n > LOG_SIZE)
		log_flush(L, stats);
	memcpy(L->log + L->log_len, line, n);
	L->log_len += n;
}

/* ---- connections ----------------------------------------------------------------- */

static void request_reset(struct loop_priv *L, struct conn *c)
{
	zc_http_request_init(&c->req, NULL, L->cfg->max_headers,
			     L->cfg->head_max);
	c->head_len = 0;
}

/* The response is over (sent, or abandoned): log it, let go of its file. */
static void response_end(struct loop_priv *L, struct zc_http_stats *stats,
			 struct conn *c)
{
	if (!c->in_response)
		return;
	c->in_response = 0;
	log_request(L, stats, c);
	zc_response_end(&c->resp);
	if (c->ent)
		zc__fcache_put(&L->cache, c->ent);
	c->ent = NULL;
	if (c->own.fd >= 0)
		close(c->own.fd);
	c->own.fd = -1;
}

static void listener_on(struct loop_priv *L)
{
	struct epoll_event ev;

	if (L->listening || L->stopping)
		return;
	memset(&ev, 0, sizeof(ev));
	ev.data.u64 = TAG_LISTEN;
	ev.events = EPOLLIN | (L->exclusive ? EPOLLEXCLUSIVE : 0);
	if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->listen_fd, &ev) < 0 &&
	    errno == EINVAL && L->exclusive) {
		L->exclusive = 0; /* before Linux 4.5: every loop wakes */
		ev.events = EPOLLIN;
		if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->listen_fd, &ev) < 0)
			return;
	}
	L->listening = 1;
}

static void listener_off(struct loop_priv *L)
{
	if (!L->listening)
		return;
	(void)epoll_ctl(L->epfd, EPOLL_CTL_DEL, L->listen_fd, NULL);
	L->listening = 0;
}

static void conn_close(struct loop_priv *L, struct zc_http_stats *stats,
		       struct conn *c)
{
	response_end(L, stats, c);
	zc__queue_remove(&c->timer);
	if (c->ready) {
		zc__queue_remove(&c->link);
		c->ready = 0;
	}
	buf_give(L, c);
	close(c->fd); /* also takes it out of the epoll set */
	c->fd = -1;
	stats->closed++;
	L->active--;
	zc__queue_insert_head(&L->free_conns, &c->link);
}

/* Half-close and read until the client closes (or linger_ms), so that the
 * response is read instead of lost to the reset unread input would cause. */
static void linger(struct loop_priv *L, struct zc_http_stats *stats,
		   struct conn *c)
{
	response_end(L, stats, c);
	buf_give(L, c);
	if (L->cfg->linger_ms == 0 || L->stopping ||
	    shutdown(c->fd, SHUT_WR) < 0) {
		conn_close(L, stats, c);
		return;
	}
	c->state = C_LINGER;
	timer_set(L, c, &L->q_linger, L->cfg->linger_ms);
	make_ready(L, c);
}

/* ---- responses ----------------------------------------------------------------- */

struct out {
	char *p;
	size_t len;
	size_t cap;
	int over;
};

static void o_put(struct out *o, const char *s, size_t n)
{
	if (o->len + n > o->cap) {
		o->over = 1;
		return;
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

#define O_LIT(o, lit) o_put((o), lit, sizeof(lit) - 1)

static void o_str(struct out *o, const char *s)
{
	o_put(o, s, strlen(s));
}

static void o_u64(struct out *o, uint64_t v)
{
	char tmp[20];

	o_put(o, tmp, put_u64(tmp, v));
}

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 414: return "URI Too Long";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 431: return "Request Header Fields Too Large";
	case 503: return "Service Unavailable";
	case 505: return "HTTP Version Not Supported";
	default: return "Internal Server Error";
	}
}

static void o_status(struct loop_priv *L, struct out *o, int status)
{
	O_LIT(o, "HTTP/1.1 ");
	o_u64(o, (uint64_t)status);
	O_LIT(o, " ");
	o_str(o, reason(status));
	O_LIT(o, "\r\nServer: zerocopy\r\nDate: ");
	o_put(o, L->date, ZC__DATE_LEN);
	O_LIT(o, "\r\n");
}

/* Connection header and the empty line; decides keep-alive. */
static void o_end(struct loop_priv *L, struct out *o, struct conn *c)
{
	if (!c->req.keep_alive || L->stopping)
		c->close_after = 1;
	if (c->close_after)
		O_LIT(o, "Connection: close\r\n");
	else if (c->req.minor_version == 0)
		O_LIT(o, "Connection: keep-alive\r\n");
	O_LIT(o, "\r\n");
}

static struct out out_of(struct loop_priv *L, struct conn *c)
{
	struct out o = { c->buf + L->cfg->head_max, 0, OUT_SIZE, 0 };

	return o;
}

/* o holds the head (and, for a page, its body after head_len bytes). */
static void start_send(struct loop_priv *L, struct zc_http_stats *stats,
		       struct conn *c, int status, int fd, int64_t off,
		       uint64_t len, const void *body, size_t body_len,
		       struct out *o, size_t head_len)
{
	if (o->over) { /* cannot happen with OUT_SIZE; never send half a head */
		static const char err[] = "HTTP/1.1 500 Internal Server Error\r\n"
					  "Content-Length: 0\r\n"
					  "Connection: close\r\n\r\n";

		memcpy(o->p, err, sizeof(err) - 1);
		o->len = head_len = sizeof(err) - 1;
		status = 500;
		fd = -1;
		len = 0;
		body_len = 0;
		c->close_after = 1;
	}
	c->status = status;
	c->in_response = 1;
	c->head_out = head_len;
	stats->requests++;
	stats->responses[status / 100 <= 5 ? status / 100 : 5]++;
	zc_response_init(&c->resp, c->fd, fd, off, len, o->p, o->len, body,
			 body_len);
	c->state = C_SEND;
	timer_set(L, c, &L->q_send, L->cfg->send_timeout_ms);
}

/* A short fixed page.  extra: more header lines, already CRLF-terminated. */
static void send_page(struct loop_priv *L, struct zc_http_stats *stats,
		      struct conn *c, int status, const char *extra)
{
	struct out o = out_of(L, c);
	char body[160];
	struct out b = { body, 0, sizeof(body), 0 };
	int head = c->req.method == ZC_HTTP_HEAD;
	size_t hlen;

	if (status >= 400) {
		O_LIT(&b, "<html><head><title>");
		o_u64(&b, (uint64_t)status);
		O_LIT(&b, " ");
		o_str(&b, reason(status));
		O_LIT(&b, "</title></head><body><h1>");
		o_u64(&b, (uint64_t)status);
		O_LIT(&b, " ");
		o_str(&b, reason(status));
		O_LIT(&b, "</h1></body></html>\n");
	}
	o_status(L, &o, status);
	if (extra)
		o_str(&o, extra);
	if (b.len)
		O_LIT(&o, "Content-Type: text/html\r\n");
	if (status != 304) {
		O_LIT(&o, "Content-Length: ");
		o_u64(&o, b.len);
		O_LIT(&o, "\r\n");
	}
	o_end(L, &o, c);
	hlen = o.len;
	if (!head)
		o_put(&o, body, b.len);
	start_send(L, stats, c, status, -1, 0, 0, NULL, 0, &o, hlen);
}

/* A refusal after which the connection cannot be trusted to continue. */
static void refuse(struct loop_priv *L, struct zc_http_stats *stats,
		   struct conn *c, int status, const char *extra)
{
	c->close_after = 1;
	c->refused = 1;
	send_page(L, stats, c, status, extra);
}

static int status_for_open(int rc)
{
	switch (-rc) {
	case ENOENT:
	case ENOTDIR:
	case ENAMETOOLONG:
		return 404;
	case EACCES:
	case EPERM:
	case ELOOP:
	case EXDEV:
		return 403;
	case EMFILE:
	case ENFILE:
	case ENOMEM:
	case EAGAIN:
		return 503;
	default:
		return 500;
	}
}

static int open_file(struct loop_priv *L, struct conn *c, const char *path,
		     size_t len, struct zc__file **f)
{
	int rc;

	c->own.fd = -1;
	rc = zc__fcache_get(&L->cache, path, len, L->now, &c->ent, &c->own);
	if ((rc == -EMFILE || rc == -ENFILE) &&
	    zc__fcache_trim(&L->cache, TRIM_ON_EMFILE) > 0)
		rc = zc__fcache_get(&L->cache, path, len, L->now, &c->ent,
				    &c->own);
	if (rc < 0)
		return rc;
	*f = c->ent ? &c->ent->f : &c->own;
	return 0;
}

static void drop_file(struct loop_priv *L, struct conn *c)
{
	if (c->ent)
		zc__fcache_put(&L->cache, c->ent);
	c->ent = NULL;
	if (c->own.fd >= 0)
		close(c->own.fd);
	c->own.fd = -1;
}

/* Does the If-Range value allow the range? (strong comparison) */
static int if_range_ok(const struct zc_http_request *r, const char *etag,
		       size_t elen, const struct zc__file *f)
{
	int64_t t;

	if (!r->if_range)
		return 1;
	if (r->if_range_len && r->if_range[0] == '"')
		return r->if_range_len == elen &&
		       memcmp(r->if_range, etag, elen) == 0;
	return zc__http_parse_date(r->if_range, r->if_range_len, &t) == 0 &&
	       t == f->mtime;
}

static void serve_file(struct loop_priv *L, struct zc_http_stats *stats,
		       struct conn *c, struct zc__file *f, const char *name,
		       size_t name_len)
{
	const struct zc_http_request *r = &c->req;
	struct out o = out_of(L, c);
	char etag[ZC__ETAG_MAX], lm[ZC__DATE_LEN + 1];
	size_t elen = zc__etag(etag, f);
	uint64_t first = 0, len = f->size;
	int status = 200, head = r->method == ZC_HTTP_HEAD, kind;
	int64_t ims;

	zc__http_date(lm, f->mtime);
	if (!(r->flags & ZC_HTTP_REQ_COND_DUP)) {
		int not_modified = 0;

		if (r->if_none_match)
			not_modified = zc__etag_list_match(
				r->if_none_match, r->if_none_match_len, etag,
				elen);
		else if (r->if_modified_since &&
			 zc__http_parse_date(r->if_modified_since,
					     r->if_modified_since_len,
					     &ims) == 0)
			not_modified = f->mtime <= ims;
		if (not_modified) {
			o_status(L, &o, 304);
			O_LIT(&o, "ETag: ");
			o_put(&o, etag, elen);
			O_LIT(&o, "\r\nLast-Modified: ");
			o_put(&o, lm, ZC__DATE_LEN);
			O_LIT(&o, "\r\n");
			o_end(L, &o, c);
			start_send(L, stats, c, 304, -1, 0, 0, NULL, 0, &o, o.len);
			return;
		}
	}
	if (r->range && !(r->flags & ZC_HTTP_REQ_RANGE_DUP) &&
	    if_range_ok(r, etag, elen, f)) {
		kind = zc__parse_range(r->range, r->range_len, f->size, &first,
				       &len);
		if (kind == ZC__RANGE_UNSAT) {
			char extra[64];
			struct out e = { extra, 0, sizeof(extra) - 1, 0 };

			O_LIT(&e, "Content-Range: bytes */");
			o_u64(&e, f->size);
			O_LIT(&e, "\r\n");
			extra[e.len] = '\0';
			send_page(L, stats, c, 416, extra);
			return;
		}
		if (kind == ZC__RANGE_ONE)
			status = 206;
		else
			first = 0, len = f->size;
	}
	o_status(L, &o, status);
	O_LIT(&o, "Content-Type: ");
	o_str(&o, zc__mime_type(name, name_len));
	O_LIT(&o, "\r\nContent-Length: ");
	o_u64(&o, len);
	O_LIT(&o, "\r\nLast-Modified: ");
	o_put(&o, lm, ZC__DATE_LEN);
	O_LIT(&o, "\r\nETag: ");
	o_put(&o, etag, elen);
	O_LIT(&o, "\r\nAccept-Ranges: bytes\r\n");
	if (status == 206) {
		O_LIT(&o, "Content-Range: bytes ");
		o_u64(&o, first);
		O_LIT(&o, "-");
		o_u64(&o, first + len - 1);
		O_LIT(&o, "/");
		o_u64(&o, f->size);
		O_LIT(&o, "\r\n");
	}
	o_end(L, &o, c);
	if (head)
		len = 0;
	if (f->body) /* small file: header and bytes in one sendmsg */
		start_send(L, stats, c, status, -1, 0, 0, f->body + first,
			   (size_t)len, &o, o.len);
	else
		start_send(L, stats, c, status, len ? f->fd : -1,
			   (int64_t)first, len, NULL, 0, &o, o.len);
}

/*
 * A directory asked for without its final '/': send the client there.  The
 * Location is built from the resolved path, never from the target as sent:
 * "//evil.example/../dir" names "dir" here, but echoed back it would be a
 * network-path reference that takes the browser to another host (the open
 * redirect of CPython's http.server, CVE-2021-28861).  The query follows as
 * sent (its bytes were checked: visible ASCII only).
 */
static void redirect_slash(struct loop_priv *L, struct zc_http_stats *stats,
			   struct conn *c, const char *path, size_t len)
{
	const char *t = c->req.target;
	const char *q = memchr(t, '?', c->req.target_len);
	char extra[OUT_SIZE - 320];
	struct out e = { extra, 0, sizeof(extra) - 1, 0 };

	O_LIT(&e, "Location: /");
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)path[i];
		char pct[3];

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		    (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
		    ch == '_' || ch == '~' || ch == '/') {
			o_put(&e, path + i, 1);
			continue;
		}
		pct[0] = '%';
		pct[1] = "0123456789ABCDEF"[ch >> 4];
		pct[2] = "0123456789ABCDEF"[ch & 15];
		o_put(&e, pct, 3);
	}
	O_LIT(&e, "/");
	if (q)
		o_put(&e, q, (size_t)(t + c->req.target_len - q));
	O_LIT(&e, "\r\n");
	if (e.over) {
		send_page(L, stats, c, 414, NULL);
		return;
	}
	extra[e.len] = '\0';
	send_page(L, stats, c, 301, extra);
}

static void serve_listing(struct loop_priv *L, struct zc_http_stats *stats,
			  struct conn *c, int dir_fd, const char *path,
			  size_t len)
{
	struct out o = out_of(L, c);
	uint64_t size;
	int fd, rc;

	if (L->cfg->flags & ZC_HTTP_NO_LISTING) {
		send_page(L, stats, c, 403, NULL);
		return;
	}
	rc = zc__listing(dir_fd, path, len, LISTING_MAX, &fd, &size);
	drop_file(L, c); /* the directory: listed */
	if (rc < 0) {
		send_page(L, stats, c, status_for_open(rc), NULL);
		return;
	}
	c->own.fd = fd; /* closed with the response */
	o_status(L, &o, 200);
	O_LIT(&o, "Content-Type: text/html; charset=utf-8\r\nContent-Length: ");
	o_u64(&o, size);
	O_LIT(&o, "\r\n");
	o_end(L, &o, c);
	if (c->req.method == ZC_HTTP_HEAD)
		size = 0;
	start_send(L, stats, c, 200, size ? fd : -1, 0, size, NULL, 0, &o, o.len);
}

static void handle_request(struct loop_priv *L, struct zc_http_stats *stats,
			   struct conn *c)
{
	const struct zc_http_request *r = &c->req;
	char path[PATH_MAX];
	size_t len;
	unsigned pflags;
	struct zc__file *f;
	int rc;

	if (r->method == ZC_HTTP_OTHER) {
		if (r->content_length > 0 || (r->flags & ZC_HTTP_REQ_TE))
			c->close_after = c->refused = 1; /* its body is unread */
		send_page(L, stats, c, 405, "Allow: GET, HEAD\r\n");
		return;
	}
	if (r->content_length > 0 || (r->flags & ZC_HTTP_REQ_TE)) {
		refuse(L, stats, c, 400, NULL);
		return;
	}
	if (r->flags & ZC_HTTP_REQ_EXPECT) {
		refuse(L, stats, c, 417, NULL);
		return;
	}
	rc = zc_http_path_resolve(r->target, r->target_len, path,
				  sizeof(path) - sizeof("/index.html"), &len,
				  &pflags);
	if (rc < 0) {
		send_page(L, stats, c, rc == -ENAMETOOLONG ? 414 : 400, NULL);
		return;
	}
	rc = open_file(L, c, path, len, &f);
	if (rc < 0) {
		send_page(L, stats, c, status_for_open(rc), NULL);
		return;
	}
	if (S_ISREG(f->mode)) {
		if (pflags & ZC_HTTP_PATH_SLASH) {
			drop_file(L, c); /* "file/" names no file */
			send_page(L, stats, c, 404, NULL);
			return;
		}
		serve_file(L, stats, c, f, path, len);
		return;
	}
	if (!(pflags & ZC_HTTP_PATH_SLASH)) {
		drop_file(L, c);
		redirect_slash(L, stats, c, path, len);
		return;
	}
	{
		struct zc__fentry *dir_ent = c->ent;
		struct zc__file dir_own = c->own;
		size_t ilen = len;
		struct zc__file *index;

		if (ilen)
			path[ilen++] = '/';
		memcpy(path + ilen, "index.html", sizeof("index.html"));
		ilen += sizeof("index.html") - 1;
		c->ent = NULL;
		rc = open_file(L, c, path, ilen, &index);
		if (rc == 0 && S_ISREG(index->mode)) {
			if (dir_ent)
				zc__fcache_put(&L->cache, dir_ent);
			else
				close(dir_own.fd);
			serve_file(L, stats, c, index, path, ilen);
			return;
		}
		if (rc == 0)
			drop_file(L, c);
		c->ent = dir_ent;
		c->own = dir_own;
		path[len] = '\0';
		if (rc < 0 && rc != -ENOENT) {
			send_page(L, stats, c, status_for_open(rc), NULL);
			return;
		}
		serve_listing(L, stats, c, dir_ent ? dir_ent->f.fd : dir_own.fd,
			      path, len);
	}
}

/* ---- the connection state machine ---------------------------------------------- */

static int tcp_nodelay(int fd)
{
	int one = 1;

	return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* The response went out: keep the next pipelined bytes, then go on. */
static int response_done(struct loop_priv *L, struct zc_http_stats *stats,
			 struct conn *c)
{
	int close_after = c->close_after;

	response_end(L, stats, c);
	if (close_after || L->stopping) {
		/* unread input (pipelined or not) would make close() reset */
		if (c->refused || c->rlen > c->head_len || c->readable)
			linger(L, stats, c);
		else
			conn_close(L, stats, c);
		return -1;
	}
	if (c->rlen > c->head_len)
		memmove(c->buf, c->buf + c->head_len, c->rlen - c->head_len);
	c->rlen -= c->head_len;
	request_reset(L, c);
	if (c->rlen) {
		c->state = C_HEAD;
		timer_set(L, c, &L->q_head, L->cfg->header_timeout_ms);
	} else {
		c->state = C_IDLE;
		buf_give(L, c);
		timer_set(L, c, &L->q_idle, L->cfg->idle_timeout_ms);
	}
	return 0;
}

static void on_parse(struct loop_priv *L, struct zc_http_stats *stats,
		     struct conn *c, int rc)
{
	if (rc > 0) {
		c->head_len = (uint32_t)rc;
		handle_request(L, stats, c);
		return;
	}
	stats->bad_requests++;
	c->head_len = c->rlen;
	refuse(L, stats, c, c->req.status ? c->req.status : 400, NULL);
}

static void drive(struct loop_priv *L, struct zc_http_stats *stats,
		  struct conn *c)
{
	unsigned reqs = 0;

	for (;;) {
		if (c->state == C_SEND) {
			uint64_t n = 0;
			int rc;

			if (!c->writable)
				return;
			rc = zc_response_send_some(&c->resp, SEND_BUDGET, &n);
			stats->bytes += n;
			if (n) {
				uint64_t after = c->resp.sent, h = c->head_out;
				uint64_t before = after - n;

				if (after > h)
					stats->body_bytes +=
						after - (before > h ? before : h);
				timer_set(L, c, &L->q_send,
					  L->cfg->send_timeout_ms);
			}
			if (rc == ZC_RESPONSE_MORE) {
				make_ready(L, c);
				return;
			}
			if (rc == -EAGAIN) {
				c->writable = 0;
				return;
			}
			if (rc == -EINTR) {
				/* sendfile(2) meets a signal pending at the call
				 * even on a non-blocking socket: no fault of the
				 * client's; go on next turn, the caller runs its
				 * handlers meanwhile */
				L->intr = 1;
				make_ready(L, c);
				return;
			}
			if (rc < 0) {
				if (rc == -ENODATA) {
					/* the file shrank: reset, so queued
					 * bytes are dropped and no client
					 * takes the short body for whole */
					stats->truncated++;
					zc__reset_on_close(c->fd);
				} else {
					stats->resets++;
				}
				conn_close(L, stats, c);
				return;
			}
			if (response_done(L, stats, c) < 0)
				return;
			if (++reqs >= REQS_PER_TURN) {
				make_ready(L, c);
				return;
			}
			continue;
		}
		if (c->state == C_LINGER) {
			char junk[4096];
			size_t got = 0;

			while (got < LINGER_READ) {
				ssize_t n = recv(c->fd, junk, sizeof(junk), 0);

				if (n < 0 && errno == EAGAIN) {
					c->readable = 0;
					return;
				}
				if (n < 0 && errno == EINTR) {
					L->intr = 1;
					make_ready(L, c);
					return;
				}
				if (n <= 0) { /* the client closed: done */
					conn_close(L, stats, c);
					return;
				}
				got += (size_t)n;
			}
			make_ready(L, c);
			return;
		}
		/* C_HEAD or C_IDLE */
		if (c->rlen) {
			int rc = zc_http_parse_request(&c->req, c->buf, c->rlen);

			if (rc != -EAGAIN) {
				on_parse(L, stats, c, rc);
				continue;
			}
		}
		if (!c->readable) {
			if (c->state == C_IDLE)
				buf_give(L, c);
			return;
		}
		{
			size_t room;
			ssize_t n;

			if (!c->buf)
				c->buf = buf_take(L);
			room = L->cfg->head_max - c->rlen;
			n = recv(c->fd, c->buf + c->rlen, room, 0);
			if (n < 0 && errno == EAGAIN) {
				c->readable = 0;
				continue;
			}
			if (n < 0 && errno == EINTR) {
				L->intr = 1;
				make_ready(L, c);
				return;
			}
			if (n <= 0) {
				/* EOF between requests is the normal end */
				if (n < 0 || c->rlen)
					stats->resets++;
				conn_close(L, stats, c);
				return;
			}
			if ((size_t)n < room)
				c->readable = 0; /* drained: epoll says when more */
			c->rlen += (uint32_t)n;
			if (c->state == C_IDLE) {
				c->state = C_HEAD;
				timer_set(L, c, &L->q_head,
					  L->cfg->header_timeout_ms);
			}
		}
	}
}

/* ---- accepting ------------------------------------------------------------------ */

static void accept_pause(struct loop_priv *L, int ms)
{
	listener_off(L);
	L->accept_resume = L->now + ms;
}

static void accept_some(struct loop_priv *L, struct zc_http_stats *stats)
{
	for (unsigned i = 0; i < ACCEPT_BURST && L->listening; i++) {
		struct sockaddr_storage sa;
		socklen_t salen = sizeof(sa);
		struct epoll_event ev;
		struct conn *c;
		int fd;

		if (!conn_available(L) && zc__queue_empty(&L->q_idle)) {
			stats->conn_limit++;
			listener_off(L); /* back when one ends or idles */
			return;
		}
		fd = accept4(L->listen_fd, (struct sockaddr *)&sa, &salen,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			int err = errno;

			if (err == EAGAIN)
				return;
			if (err == EMFILE || err == ENFILE) {
				if (zc__fcache_trim(&L->cache, TRIM_ON_EMFILE))
					continue;
				if (L->spare_fd < 0)
					L->spare_fd = zc__spare_open();
				if (L->spare_fd < 0) {
					stats->fd_exhausted++;
					accept_pause(L, ACCEPT_PAUSE_MS);
					return;
				}
				/* the spare makes room to take the client
				 * off the queue and close it: no busy loop */
				err = -zc__refuse_with_spare(L->listen_fd,
							     &L->spare_fd, 0);
				/* accept(2) says EMFILE before it looks at the
				 * queue: only a client taken off it counts */
				if (err == EAGAIN)
					return;
				if (err == 0) {
					stats->fd_exhausted++;
					continue;
				}
				if (err == ECONNABORTED || err == EPROTO)
					continue;
				accept_pause(L, ACCEPT_PAUSE_MS);
				return;
			}
			stats->accept_errors++;
			if (err == ECONNABORTED || err == EINTR ||
			    err == EPROTO || err == EPERM)
				continue; /* that client's problem only */
			accept_pause(L, ACCEPT_PAUSE_MS); /* ENOBUFS, ENOMEM */
			return;
		}
		if (!conn_available(L)) {
			/* make room: the connection idle the longest goes */
			stats->conn_limit++;
			conn_close(L, stats,
				   zc__queue_data(zc__queue_head(&L->q_idle),
						  struct conn, timer));
		}
		c = conn_take(L);
		memset(c, 0, sizeof(*c));
		zc__queue_init(&c->timer);
		zc__queue_init(&c->link);
		c->fd = fd;
		c->own.fd = -1;
		c->family = (uint8_t)sa.ss_family;
		if (sa.ss_family == AF_INET)
			memcpy(c->addr, &((struct sockaddr_in *)&sa)->sin_addr, 4);
		else if (sa.ss_family == AF_INET6)
			memcpy(c->addr, &((struct sockaddr_in6 *)&sa)->sin6_addr,
			       16);
		if (sa.ss_family != AF_UNIX)
			(void)tcp_nodelay(fd);
		memset(&ev, 0, sizeof(ev));
		ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
		ev.data.ptr = c;
		if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			stats->accept_errors++;
			close(fd);
			zc__queue_insert_head(&L->free_conns, &c->link);
			continue;
		}
		stats->accepted++;
		L->active++;
		request_reset(L, c);
		c->state = C_HEAD;
		timer_set(L, c, &L->q_head, L->cfg->header_timeout_ms);
		/* the request has often arrived already: look without waiting */
		c->readable = c->writable = 1;
		drive(L, stats, c);
	}
}

/* ---- the loop -------------------------------------------------------------------- */

int zc_http_loop_init(struct zc_http_loop *loop, struct zc_http_server *srv,
		      int listen_fd, void *mem, size_t mem_size)
{
	struct loop_priv *L = L_OF(loop);
	const struct zc_http_config *cfg = &srv->config;
	struct epoll_event ev;
	size_t need;
	char *p;
	int fl, rc;

	memset(loop, 0, sizeof(*loop));
	L->epfd = L->spare_fd = -1;
	zc__queue_init(&L->free_conns);
	zc__queue_init(&L->ready);
	zc__queue_init(&L->q_head);
	zc__queue_init(&L->q_idle);
	zc__queue_init(&L->q_send);
	zc__queue_init(&L->q_linger);
	zc__fcache_init(&L->cache, NULL, 0, -1, 0, 0, 0);
	if (listen_fd < 0 || zc_http_loop_size(cfg, &need) < 0 ||
	    (mem && mem_size < need))
		return -EINVAL;
	L->srv = srv;
	L->cfg = cfg;
	L->listen_fd = listen_fd;
	if (!mem) {
		mem = mmap(NULL, need, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			return -errno;
		L->mem_owned = 1;
	}
	L->mem = mem;
	L->mem_size = need;
	{
		int acc = 0;
		socklen_t alen = sizeof(acc);

		if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &acc,
			       &alen) < 0 || !acc) {
			rc = errno == ENOTSOCK || acc == 0 ? -EINVAL : -errno;
			goto fail;
		}
	}
	fl = fcntl(listen_fd, F_GETFL);
	if (fl < 0 || (!(fl & O_NONBLOCK) &&
		       fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
		rc = -errno;
		goto fail;
	}
	L->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (L->epfd < 0) {
		rc = -errno;
		goto fail;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLET; /* each stop() write is one edge */
	ev.data.u64 = TAG_STOP;
	if (epoll_ctl(L->epfd, EPOLL_CTL_ADD,
		      ZC__PRIV(struct srv_priv, srv)->stop_fd, &ev) < 0) {
		rc = -errno;
		goto fail;
	}
	p = mem;
	L->events = (struct epoll_event *)(void *)p;
	p += ALIGN64(EVENTS * sizeof(struct epoll_event));
	L->conns = (struct conn *)(void *)p;
	L->nconns = cfg->max_conns;
	p += ALIGN64((size_t)cfg->max_conns * sizeof(struct conn));
	L->bufs = p;
	L->buf_size = buf_size(cfg);
	p += (size_t)cfg->max_conns * L->buf_size;
	zc__fcache_init(&L->cache, p, cache_entries(cfg), cfg->root_fd,
			cfg->flags & (ZC_HTTP_FOLLOW_SYMLINKS | ZC_HTTP_NO_OPENAT2),
			cfg->cache_valid_ms, cfg->small_file_max);
	p += ALIGN64(zc__fcache_mem(cache_entries(cfg), cfg->small_file_max));
	if (cfg->log_fd >= 0)
		L->log = p;
	L->spare_fd = zc__spare_open();
	L->exclusive = 1;
	L->date_sec = -1;
	L->now = zc__now_ms();
	listener_on(L);
	if (!L->listening) {
		rc = -errno;
		goto fail;
	}
	return 0;
fail:
	zc_http_loop_close(loop);
	return rc;
}

static void close_queue(struct loop_priv *L, struct zc_http_stats *stats,
			struct zc__queue *q)
{
	while (!zc__queue_empty(q))
		conn_close(L, stats,
			   zc__queue_data(zc__queue_head(q), struct conn, timer));
}

static void close_all(struct loop_priv *L, struct zc_http_stats *stats)
{
	close_queue(L, stats, &L->q_head);
	close_queue(L, stats, &L->q_idle);
	close_queue(L, stats, &L->q_linger);
	close_queue(L, stats, &L->q_send);
}

void zc_http_loop_close(struct zc_http_loop *loop)
{
	struct loop_priv *L = L_OF(loop);

	if (L->mem) {
		close_all(L, &loop->stats);
		if (L->log && L->log_len)
			log_flush(L, &loop->stats);
		zc__fcache_destroy(&L->cache);
		if (L->mem_owned)
			munmap(L->mem, L->mem_size);
		L->mem = NULL;
	}
	if (L->epfd >= 0)
		close(L->epfd);
	if (L->spare_fd >= 0)
		close(L->spare_fd);
	L->epfd = L->spare_fd = -1;
}

static void expire(struct loop_priv *L, struct zc_http_stats *stats,
		   struct zc__queue *q, uint64_t *counter)
{
	while (!zc__queue_empty(q)) {
		struct conn *c = zc__queue_data(zc__queue_head(q), struct conn,
						timer);

		if (c->deadline > L->now)
			break;
		if (counter)
			(*counter)++;
		conn_close(L, stats, c);
	}
}

static void begin_stop(struct loop_priv *L, struct zc_http_stats *stats,
		       int grace_ms)
{
	struct zc__queue *q;

	if (!L->stopping) {
		L->stopping = 1;
		L->stop_deadline = L->now + grace_ms;
		listener_off(L);
		close_queue(L, stats, &L->q_head);
		close_queue(L, stats, &L->q_idle);
		close_queue(L, stats, &L->q_linger);
		zc__queue_foreach(q, &L->q_send)
			zc__queue_data(q, struct conn, timer)->close_after = 1;
	} else if (L->now + grace_ms < L->stop_deadline) {
		L->stop_deadline = L->now + grace_ms;
	}
}

static void tick(struct loop_priv *L)
{
	struct timespec t;

	L->now = zc__now_ms();
	clock_gettime(CLOCK_REALTIME_COARSE, &t);
	if (t.tv_sec != L->date_sec) { /* Date: formatted once a second */
		L->date_sec = t.tv_sec;
		zc__http_date(L->date, t.tv_sec);
		zc__clf_date(L->clf_date, t.tv_sec);
	}
}

static void sync_stats(struct loop_priv *L, struct zc_http_stats *stats)
{
	stats->cache_hits = L->cache.hits;
	stats->cache_misses = L->cache.misses;
	stats->cache_stale = L->cache.stale;
}

static int wait_ms(struct loop_priv *L, int64_t end)
{
	struct zc__queue *qs[4] = { &L->q_head, &L->q_idle, &L->q_send,
				    &L->q_linger };
	int64_t next = INT64_MAX;

	if (!zc__queue_empty(&L->ready))
		return 0;
	for (int i = 0; i < 4; i++)
		if (!zc__queue_empty(qs[i])) {
			struct conn *c = zc__queue_data(zc__queue_head(qs[i]),
							struct conn, timer);

			if (c->deadline < next)
				next = c->deadline;
		}
	if (L->stopping && L->stop_deadline < next)
		next = L->stop_deadline;
	if (L->accept_resume && L->accept_resume < next)
		next = L->accept_resume;
	if (end >= 0 && end < next)
		next = end;
	if (next == INT64_MAX)
		return -1;
	if (next <= L->now)
		return 0;
	return next - L->now > INT_MAX ? INT_MAX : (int)(next - L->now);
}

int zc_http_loop_run(struct zc_http_loop *loop, int timeout_ms)
{
	struct loop_priv *L = L_OF(loop);
	struct zc_http_stats *stats = &loop->stats;
	struct srv_priv *sp;
	int64_t end;

	if (!L->mem)
		return -EINVAL;
	sp = ZC__PRIV(struct srv_priv, L->srv);
	tick(L);
	end = timeout_ms >= 0 ? L->now + timeout_ms : -1;
	if (L->stopping && __atomic_load_n(&sp->stop, __ATOMIC_ACQUIRE) == 0) {
		L->stopping = 0; /* rearmed */
		listener_on(L);
	}
	for (;;) {
		int stop = __atomic_load_n(&sp->stop, __ATOMIC_ACQUIRE);
		struct zc__queue todo;
		int n, rc = 0;

		if (stop) {
			begin_stop(L, stats, stop - 1);
			if (L->active == 0 || L->now >= L->stop_deadline) {
				close_all(L, stats);
				if (L->log_len)
					log_flush(L, stats);
				sync_stats(L, stats);
				return 0;
			}
		}
		if (!L->listening && !L->stopping) {
			if (L->accept_resume && L->now >= L->accept_resume)
				L->accept_resume = 0;
			if (!L->accept_resume &&
			    (conn_available(L) || !zc__queue_empty(&L->q_idle))) {
				listener_on(L);
			}
		}
		if (L->log_len)
			log_flush(L, stats);
		sync_stats(L, stats);
		if (end >= 0 && L->now >= end)
			return -ETIMEDOUT;
		n = epoll_wait(L->epfd, L->events, EVENTS, wait_ms(L, end));
		if (n < 0)
			rc = -errno;
		tick(L);
		for (int i = 0; i < n; i++) {
			struct epoll_event *ev = &L->events[i];
			struct conn *c;

			if (ev->data.u64 == TAG_STOP)
				continue; /* the flag is read above */
			if (ev->data.u64 == TAG_LISTEN) {
				if (L->listening)
					accept_some(L, stats);
				continue;
			}
			c = ev->data.ptr;
			if (c->fd < 0)
				continue; /* closed earlier in this batch */
			if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				c->readable = 1;
			if (ev->events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
				c->writable = 1;
			drive(L, stats, c);
		}
		/* connections with more to do after their turn */
		zc__queue_init(&todo);
		zc__queue_move(&L->ready, &todo);
		while (!zc__queue_empty(&todo)) {
			struct zc__queue *q = zc__queue_head(&todo);
			struct conn *c = zc__queue_data(q, struct conn, link);

			zc__queue_remove(q);
			c->ready = 0;
			drive(L, stats, c);
		}
		expire(L, stats, &L->q_head, &stats->header_timeouts);
		expire(L, stats, &L->q_idle, &stats->idle_timeouts);
		expire(L, stats, &L->q_send, &stats->send_timeouts);
		expire(L, stats, &L->q_linger, NULL);
		if (L->intr) {
			L->intr = 0;
			rc = -EINTR;
		}
		if (rc == -EINTR) {
			if (L->log_len)
				log_flush(L, stats);
			sync_stats(L, stats);
			return -EINTR;
		}
		if (rc < 0)
			return rc;
	}
}
