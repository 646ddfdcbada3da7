/* SPDX-License-Identifier: MIT */
/*
 * The HTTP file server end to end over loopback: the server runs in a forked
 * child (its loops, its signals, its descriptor count), this process is the
 * client and checks every byte.
 */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <sys/resource.h>

#define SEED 9
#define MID_SIZE (100 * 1024)	   /* above small_file_max: sendfile */
#define BIG_SIZE (3 * 1024 * 1024)
#define TRUNC_SIZE (32 * 1024 * 1024)
#define SPARSE_SIZE (5ull << 30)   /* past 4 GiB */
#define SPARSE_AT (4ull << 30) + 12345

/* ---- the tree served ------------------------------------------------------ */

static char top[64]; /* holds root/ and secret (outside the root) */
static char rootp[96];
static int root_fd = -1;

static int rm_one(const char *p, const struct stat *st, int type,
		  struct FTW *f)
{
	(void)st, (void)type, (void)f;
	return remove(p);
}

static int write_file(const char *rel, const void *data, size_t len)
{
	char p[256];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", top, rel);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	if (h_write_all(fd, data, len) < 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

static int pattern_file(const char *rel, size_t size)
{
	unsigned char *b = h_pattern(size, 0, SEED);
	int rc;

	if (!b)
		return -1;
	rc = write_file(rel, b, size);
	free(b);
	return rc;
}

static int make_tree(void)
{
	char p[256], q[256];

	strcpy(top, "/tmp/zc-srv-XXXXXX");
	if (!mkdtemp(top))
		return -1;
	snprintf(rootp, sizeof(rootp), "%s/root", top);
	mkdir(rootp, 0755);
	snprintf(p, sizeof(p), "%s/dir", rootp);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/list", rootp);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/list/sub", rootp);
	mkdir(p, 0755);
	if (write_file("secret", "SECRET", 6) < 0 ||
	    write_file("root/small.txt", "hello world\n", 12) < 0 ||
	    write_file("root/page.html", "<p>x</p>", 8) < 0 ||
	    write_file("root/empty", "", 0) < 0 ||
	    write_file("root/dir/index.html", "<h1>index</h1>", 14) < 0 ||
	    write_file("root/list/a b&<c>.txt", "1", 1) < 0 ||
	    write_file("root/list/q\"'.txt", "2", 1) < 0 ||
	    pattern_file("root/mid.bin", MID_SIZE) < 0 ||
	    pattern_file("root/big.bin", BIG_SIZE) < 0)
		return -1;
	snprintf(p, sizeof(p), "%s/fifo", rootp);
	mkfifo(p, 0644);
	snprintf(p, sizeof(p), "%s/out_link", rootp);
	snprintf(q, sizeof(q), "%s/secret", top);
	(void)!symlink(q, p);
	snprintf(p, sizeof(p), "%s/up_link", rootp);
	(void)!symlink("../secret", p);
	root_fd = open(rootp, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return root_fd < 0 ? -1 : 0;
}

/* ---- the server child ------------------------------------------------------ */

struct shared {
	struct zc_http_stats stats;
	int eintr;	/* run() calls that returned -EINTR */
	int fd_delta;	/* descriptors after closing - before starting */
	int run_rc;
	int grace_ms;	/* for the SIGTERM handler */
	int ready;
};

static struct shared *sh;
static struct zc_http_server g_srv;
static struct zc_http_loop g_loops[2];

struct server {
	pid_t pid;
	int port;
};

static void on_term(int sig)
{
	(void)sig;
	zc_http_server_stop(&g_srv, sh->grace_ms);
}

static void on_usr1(int sig)
{
	(void)sig; /* only interrupts epoll_wait */
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void *loop_thread(void *arg)
{
	struct zc_http_loop *loop = arg;
	int rc;

	do {
		rc = zc_http_loop_run(loop, ZC_WAIT_FOREVER);
		if (rc == -EINTR)
			__atomic_add_fetch(&sh->eintr, 1, __ATOMIC_RELAXED);
	} while (rc == -EINTR);
	return (void *)(intptr_t)rc;
}

static void sum_stats(struct zc_http_stats *t, const struct zc_http_stats *s)
{
	uint64_t *a = (uint64_t *)(void *)t;
	const uint64_t *b = (const uint64_t *)(const void *)s;

	for (size_t k = 0; k < sizeof(*t) / sizeof(uint64_t); k++)
		a[k] += b[k];
}

/*
 * Fork a server on 127.0.0.1:<ephemeral> with cfg (root_fd is set here).
 * nofile > 0: RLIMIT_NOFILE is set to the descriptors in use + nofile once
 * the loops are made.
 */
static int server_start(struct server *s, struct zc_http_config *cfg,
			int nloops, int nofile)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	int lfd, one = 1;

	cfg->root_fd = root_fd;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return -1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(lfd, 128) < 0 ||
	    getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
		close(lfd);
		return -1;
	}
	s->port = ntohs(a.sin_port);
	memset(sh, 0, sizeof(*sh));
	s->pid = fork();
	if (s->pid < 0) {
		close(lfd);
		return -1;
	}
	if (s->pid == 0) {
		struct sigaction sa;
		pthread_t th;
		int before, rc, rc2 = 0;
		void *ret;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		alarm(60);
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_term;
		sigaction(SIGTERM, &sa, NULL);
		sa.sa_handler = on_usr1;
		sigaction(SIGUSR1, &sa, NULL);
		before = count_fds();
		if (zc_http_server_init(&g_srv, cfg) < 0)
			_exit(20);
		for (int i = 0; i < nloops; i++)
			if (zc_http_loop_init(&g_loops[i], &g_srv, lfd, NULL, 0) < 0)
				_exit(21);
		if (nofile > 0) {
			struct rlimit rl;

			getrlimit(RLIMIT_NOFILE, &rl);
			rl.rlim_cur = (rlim_t)(count_fds() - 1 + nofile);
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		if (nloops > 1 &&
		    pthread_create(&th, NULL, loop_thread, &g_loops[1]) != 0)
			_exit(22);
		sh->ready = 1;
		rc = (int)(intptr_t)loop_thread(&g_loops[0]);
		if (nloops > 1) {
			pthread_join(th, &ret);
			rc2 = (int)(intptr_t)ret;
		}
		sh->run_rc = rc ? rc : rc2;
		for (int i = 0; i < nloops; i++) {
			sum_stats(&sh->stats, &g_loops[i].stats);
			zc_http_loop_close(&g_loops[i]);
		}
		zc_http_server_close(&g_srv);
		sh->fd_delta = count_fds() - before;
		_exit(sh->run_rc == 0 ? 0 : 23);
	}
	close(lfd);
	return 0;
}

/* Stop it (SIGTERM, grace_ms) and check it ended cleanly, leaking nothing. */
static void server_stop(struct server *s, int grace_ms)
{
	int status = 0;

	sh->grace_ms = grace_ms;
	kill(s->pid, SIGTERM);
	while (waitpid(s->pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		H_REPORT("server child status %#x (run_rc %d)", status,
			 sh->run_rc);
	CHECK_EQ(sh->fd_delta, 0);
	CHECK_EQ(sh->stats.accepted, sh->stats.closed);
}

/* ---- a small client ---------------------------------------------------------- */

struct cli {
	int fd;
	size_t len;
	char buf[65536];
};

struct resp {
	int status;
	char head[8192];
	long long clen; /* -1 without Content-Length */
	unsigned char *body;
	size_t body_len;
};

static int cli_open(struct cli *c, int port, int rcvbuf)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct timeval tv = { 5, 0 };

	c->len = 0;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (rcvbuf)
		setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	return 0;
}

static void cli_close(struct cli *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int cli_send(struct cli *c, const char *s)
{
	return h_write_all(c->fd, s, strlen(s));
}

/* More bytes into c->buf; 0 at EOF/reset/timeout. */
static ssize_t cli_fill(struct cli *c)
{
	ssize_t n;

	if (c->len == sizeof(c->buf))
		return -1;
	do
		n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return 0;
	c->len += (size_t)n;
	return n;
}

static void cli_consume(struct cli *c, size_t n)
{
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
}

static const char *hdr(const struct resp *r, const char *name, char *out,
		       size_t cap)
{
	size_t nl = strlen(name);
	const char *p = r->head;

	while ((p = strstr(p, "\r\n")) != NULL) {
		p += 2;
		if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
			const char *v = p + nl + 1, *e;
			size_t n;

			while (*v == ' ')
				v++;
			e = strstr(v, "\r\n");
			n = e ? (size_t)(e - v) : strlen(v);
			if (n >= cap)
				n = cap - 1;
			memcpy(out, v, n);
			out[n] = '\0';
			return out;
		}
	}
	return NULL;
}

/*
 * One response.  no_body: a HEAD (Content-Length describes, nothing
 * follows).  Returns 0, or -1 when the connection ended first (r->body then
 * holds what came: truncated bodies are checked by prefix).
 */
static int cli_read(struct cli *c, struct resp *r, int no_body)
{
	char *end;
	char v[64];
	size_t hl, want;

	memset(r, 0, sizeof(*r));
	r->clen = -1;
	while (!(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
		if (cli_fill(c) <= 0)
			return -1;
	hl = (size_t)(end - c->buf) + 4;
	if (hl >= sizeof(r->head))
		return -1;
	memcpy(r->head, c->buf, hl);
	r->head[hl] = '\0';
	cli_consume(c, hl);
	if (sscanf(r->head, "HTTP/1.1 %d ", &r->status) != 1)
		return -1;
	if (hdr(r, "Content-Length", v, sizeof(v)))
		r->clen = atoll(v);
	if (no_body || r->status == 304)
		return 0;
	want = r->clen >= 0 ? (size_t)r->clen : SIZE_MAX;
	r->body = malloc(r->clen >= 0 ? (size_t)r->clen + 1 : 1 << 20);
	if (!r->body)
		return -1;
	while (r->body_len < want) {
		size_t k = c->len < want - r->body_len ? c->len : want - r->body_len;

		memcpy(r->body + r->body_len, c->buf, k);
		r->body_len += k;
		cli_consume(c, k);
		if (r->body_len == want)
			break;
		if (cli_fill(c) <= 0)
			return r->clen >= 0 ? -1 : 0;
	}
	return 0;
}

static void resp_free(struct resp *r)
{
	free(r->body);
	r->body = NULL;
}

/* 1 when the server closed the connection (EOF or reset) within ms. */
static int cli_closed(struct cli *c, int ms)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	char b[4096];
	long long end = h_now_ms() + ms;

	while (h_now_ms() < end) {
		ssize_t n;

		if (poll(&p, 1, (int)(end - h_now_ms())) <= 0)
			return 0;
		n = recv(c->fd, b, sizeof(b), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno == ECONNRESET))
			return 1;
		if (n < 0 && errno != EAGAIN)
			return 1;
	}
	return 0;
}

/* One request on a fresh connection; the response in *r. */
static int get1(int port, const char *req, struct resp *r)
{
	struct cli *c = malloc(sizeof(*c));
	int rc = -1;

	if (!c)
		return -1;
	if (cli_open(c, port, 0) == 0 && cli_send(c, req) == 0)
		rc = cli_read(c, r, strncmp(req, "HEAD ", 5) == 0);
	cli_close(c);
	free(c);
	return rc;
}

static int body_is_pattern(const struct resp *r, uint64_t from, size_t len)
{
	if (r->body_len != len)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (r->body[i] != h_byte(from + i, SEED))
			return 0;
	return 1;
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: t\r\n\r\n"

/* ---- cases ------------------------------------------------------------------- */

static void basics(int port)
{
	struct resp r;
	char v[256];

	h_ran++;
	CHECK_EQ(get1(port, GET("/small.txt"), &r), 0);
	CHECK_EQ(r.status, 200);
	CHECK_MEM(r.body, r.body_len, "hello world\n", 12);
	CHECK(hdr(&r, "Content-Type", v, sizeof(v)) && !strcmp(v, "text/plain"));
	CHECK(hdr(&r, "Accept-Ranges", v, sizeof(v)) && !strcmp(v, "bytes"));
	CHECK(hdr(&r, "ETag", v, sizeof(v)) && v[0] == '"');
	CHECK(hdr(&r, "Date", v, sizeof(v)) && strlen(v) == 29);
	CHECK(hdr(&r, "Last-Modified", v, sizeof(v)) && strstr(v, " GMT"));
	CHECK(!hdr(&r, "Connection", v, sizeof(v)));
	resp_free(&r);

	CHECK_EQ(get1(port, "HEAD /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n", &r), 0);
	CHECK_EQ(r.status, 200);
	CHECK_EQ(r.clen, MID_SIZE);
	resp_free(&r);

	CHECK_EQ(get1(port, GET("/mid.bin"), &r), 0);
	CHECK(body_is_pattern(&r, 0, MID_SIZE));
	CHECK(hdr(&r, "Content-Type", v, sizeof(v)) &&
	      !strcmp(v, "application/octet-stream"));
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/big.bin"), &r), 0);
	CHECK(body_is_pattern(&r, 0, BIG_SIZE));
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/empty"), &r), 0);
	CHECK_EQ(r.status, 200);
	CHECK_EQ(r.clen, 0);
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/page.html"), &r), 0);
	CHECK(hdr(&r, "Content-Type", v, sizeof(v)) && !strcmp(v, "text/html"));
	resp_free(&r);

	/* not found, refused, redirected */
	CHECK_EQ(get1(port, GET("/nope"), &r), 0);
	CHECK_EQ(r.status, 404);
	CHECK(r.body_len > 0 && r.body_len < 200);
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/small.txt/"), &r), 0);
	CHECK_EQ(r.status, 404);
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/fifo"), &r), 0);
	CHECK_EQ(r.status, 403);
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/out_link"), &r), 0);
	CHECK_EQ(r.status, 403);
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/up_link"), &r), 0);
	CHECK_EQ(r.status, 403);
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/dir?x=1"), &r), 0);
	CHECK_EQ(r.status, 301);
	CHECK(hdr(&r, "Location", v, sizeof(v)) && !strcmp(v, "/dir/?x=1"));
	resp_free(&r);
	/* the Location names the resolved path: a target starting "//" must
	 * not come back as a network-path reference (another host) */
	CHECK_EQ(get1(port, GET("//evil.example/../dir"), &r), 0);
	CHECK_EQ(r.status, 301);
	CHECK(hdr(&r, "Location", v, sizeof(v)) && !strcmp(v, "/dir/"));
	resp_free(&r);
	CHECK_EQ(get1(port, GET("//dir?a=%2F"), &r), 0);
	CHECK_EQ(r.status, 301);
	CHECK(hdr(&r, "Location", v, sizeof(v)) && !strcmp(v, "/dir/?a=%2F"));
	resp_free(&r);
	CHECK_EQ(get1(port, GET("/dir/"), &r), 0);
	CHECK_EQ(r.status, 200);
	CHECK_MEM(r.body, r.body_len, "<h1>index</h1>", 14);
	resp_free(&r);
	/* a listing, names escaped for HTML and for URLs */
	CHECK_EQ(get1(port, GET("/list/"), &r), 0);
	CHECK_EQ(r.status, 200);
	CHECK(hdr(&r, "Content-Type", v, sizeof(v)) && strstr(v, "text/html"));
	REQUIRE(r.body);
	r.body[r.body_len] = '\0';
	CHECK(strstr((char *)r.body, "<a href=\"a%20b%26%3Cc%3E.txt\">a b&amp;&lt;c&gt;.txt</a>"));
	CHECK(strstr((char *)r.body, "<a href=\"q%22%27.txt\">q&quot;&#x27;.txt</a>"));
	CHECK(strstr((char *)r.body, "<a href=\"sub/\">sub/</a>"));
	CHECK(strstr((char *)r.body, "Directory listing for /list/"));
	CHECK(!strchr((char *)r.body, '\\'));
	resp_free(&r);
}

static void ranges(int port)
{
	static const struct {
		const char *path;
		uint64_t size;
	} files[] = { { "/mid.bin", MID_SIZE }, { "/small16.bin", 16 * 1024 } };
	char req[256], v[128];
	struct resp r;

	h_ran++;
	for (size_t f = 0; f < 2; f++) {
		const char *p = files[f].path;
		uint64_t n = files[f].size;
		struct {
			const char *spec;
			int status;
			uint64_t first, len;
		} cases[] = {
			{ "bytes=0-0", 206, 0, 1 },
			{ "bytes=100-199", 206, 100, 100 },
			{ "bytes=1000-", 206, 1000, n - 1000 },
			{ "bytes=-500", 206, n - 500, 500 },
			{ "bytes=-99999999", 206, 0, n },
			{ "bytes=10-99999999", 206, 10, n - 10 },
			{ "bytes= 5-9 ", 206, 5, 5 },
			{ "bytes=5 - 9", 200, 0, n },	/* no spaces inside */
			{ "bytes=0-1,4-5", 200, 0, n },	/* several: whole */
			{ "bytes=5-2", 200, 0, n },	/* invalid: ignored */
			{ "items=0-1", 200, 0, n },
			{ "bytes=x-1", 200, 0, n },
		};

		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			snprintf(req, sizeof(req),
				 "GET %s HTTP/1.1\r\nHost: t\r\nRange: %s\r\n\r\n",
				 p, cases[i].spec);
			if (get1(port, req, &r) < 0 ||
			    r.status != cases[i].status ||
			    !body_is_pattern(&r, cases[i].first, cases[i].len))
				H_REPORT("%s %s: status %d, %zu bytes", p,
					 cases[i].spec, r.status, r.body_len);
			if (cases[i].status == 206) {
				char want[96];

				snprintf(want, sizeof(want), "bytes %llu-%llu/%llu",
					 (unsigned long long)cases[i].first,
					 (unsigned long long)(cases[i].first + cases[i].len - 1),
					 (unsigned long long)n);
				if (!hdr(&r, "Content-Range", v, sizeof(v)) ||
				    strcmp(v, want) != 0)
					H_REPORT("%s %s: Content-Range %s", p,
						 cases[i].spec, v);
			}
			resp_free(&r);
		}
		/* unsatisfiable */
		snprintf(req, sizeof(req),
			 "GET %s HTTP/1.1\r\nHost: t\r\nRange: bytes=%llu-\r\n\r\n",
			 p, (unsigned long long)n);
		CHECK_EQ(get1(port, req, &r), 0);
		CHECK_EQ(r.status, 416);
		snprintf(req, sizeof(req), "bytes */%llu", (unsigned long long)n);
		CHECK(hdr(&r, "Content-Range", v, sizeof(v)) && !strcmp(v, req));
		resp_free(&r);
		snprintf(req, sizeof(req),
			 "GET %s HTTP/1.1\r\nHost: t\r\nRange: bytes=-0\r\n\r\n", p);
		CHECK_EQ(get1(port, req, &r), 0);
		CHECK_EQ(r.status, 416);
		resp_free(&r);
	}
	/* If-Range: the current ETag allows the range, another one does not */
	{
		char etag[128];

		CHECK_EQ(get1(port, "HEAD /mid.bin HTTP/1.1\r\nHost: t\r\n\r\n", &r), 0);
		REQUIRE(hdr(&r, "ETag", etag, sizeof(etag)));
		snprintf(req, sizeof(req),
			 "GET /mid.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\nIf-Range: %s\r\n\r\n",
			 etag);
		CHECK_EQ(get1(port, req, &r), 0);
		CHECK_EQ(r.status, 206);
		CHECK(body_is_pattern(&r, 0, 10));
		resp_free(&r);
		CHECK_EQ(get1(port, "GET /mid.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\nIf-Range: \"other\"\r\n\r\n", &r), 0);
		CHECK_EQ(r.status, 200);
		CHECK(body_is_pattern(&r, 0, MID_SIZE));
		resp_free(&r);
		/* a range on an empty file can never be satisfied */
		CHECK_EQ(get1(port, "GET /empty HTTP/1.1\r\nHost: t\r\nRange: bytes=0-\r\n\r\n", &r), 0);
		CHECK_EQ(r.status, 416);
		resp_free(&r);
	}
}

/* Offsets past 4 GiB: a sparse file with a pattern far out. */
static void sparse(int port)
{
	char p[256], req[256], v[64];
	unsigned char chunk[4096];
	struct resp r;
	int fd;

	snprintf(p, sizeof(p), "%s/sparse.bin", rootp);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	REQUIRE(fd >= 0);
	h_fill(chunk, sizeof(chunk), SPARSE_AT, SEED);
	if (ftruncate(fd, (off_t)SPARSE_SIZE) < 0 ||
	    pwrite(fd, chunk, sizeof(chunk), (off_t)(SPARSE_AT)) != sizeof(chunk)) {
		close(fd);
		unlink(p);
		H_SKIP_CASE("no sparse 5 GiB file here");
		return;
	}
	close(fd);
	h_ran++;
	CHECK_EQ(get1(port, "HEAD /sparse.bin HTTP/1.1\r\nHost: t\r\n\r\n", &r), 0);
	CHECK_EQ(r.clen, (long long)SPARSE_SIZE);
	snprintf(req, sizeof(req),
		 "GET /sparse.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=%llu-%llu\r\n\r\n",
		 (unsigned long long)(SPARSE_AT), (unsigned long long)(SPARSE_AT) + 4095);
	CHECK_EQ(get1(port, req, &r), 0);
	CHECK_EQ(r.status, 206);
	CHECK(body_is_pattern(&r, SPARSE_AT, 4096));
	snprintf(req, sizeof(req), "bytes %llu-%llu/%llu",
		 (unsigned long long)(SPARSE_AT),
		 (unsigned long long)(SPARSE_AT) + 4095,
		 (unsigned long long)SPARSE_SIZE);
	CHECK(hdr(&r, "Content-Range", v, sizeof(v)) && !strcmp(v, req));
	resp_free(&r);
	/* the last bytes, by suffix */
	CHECK_EQ(get1(port, "GET /sparse.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=-3\r\n\r\n", &r), 0);
	CHECK_EQ(r.status, 206);
	CHECK_EQ(r.body_len, 3);
	CHECK(r.body_len == 3 && r.body[0] == 0 && r.body[2] == 0);
	resp_free(&r);
	unlink(p);
}

static void conditional(int port)
{
	char etag[128], lm[64], req[512];
	struct resp r;

	h_ran++;
	CHECK_EQ(get1(port, "HEAD /small.txt HTTP/1.1\r\nHost: t\r\n\r\n", &r), 0);
	REQUIRE(hdr(&r, "ETag", etag, sizeof(etag)) &&
		hdr(&r, "Last-Modified", lm, sizeof(lm)));
	{
		struct {
			const char *fmt;
			int status;
		} cases[] = {
			{ "If-None-Match: %s", 304 },
			{ "If-None-Match: W/%s", 304 },
			{ "If-None-Match: \"zz\", %s", 304 },
			{ "If-None-Match: *", 304 },
			{ "If-None-Match: \"zz\"", 200 },
			{ "If-None-Match: garbage", 200 },
			{ "If-Modified-Since: %s", 304 },
			{ "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT", 200 },
			{ "If-Modified-Since: yesterday", 200 },
			/* If-None-Match wins over If-Modified-Since */
			{ "If-None-Match: \"zz\"\r\nIf-Modified-Since: %s", 200 },
		};

		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			char line[256];
			const char *arg = strstr(cases[i].fmt, "Since: %s") ? lm : etag;

			snprintf(line, sizeof(line), cases[i].fmt, arg);
			snprintf(req, sizeof(req),
				 "GET /small.txt HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n", line);
			if (get1(port, req, &r) < 0 || r.status != cases[i].status)
				H_REPORT("%s: status %d", line, r.status);
			if (r.status == 304 && (r.clen != -1 || r.body_len))
				H_REPORT("%s: a 304 with a body", line);
			if (r.status == 200)
				CHECK_MEM(r.body, r.body_len, "hello world\n", 12);
			resp_free(&r);
		}
	}
}

static void keepalive(int port)
{
	struct cli *c = malloc(sizeof(*c));
	struct resp r;
	char v[64];

	REQUIRE(c);
	h_ran++;
	/* three pipelined requests in one write: answered in order */
	REQUIRE(cli_open(c, port, 0) == 0);
	CHECK_EQ(cli_send(c, GET("/small.txt")
			  "HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n"
			  GET("/mid.bin")), 0);
	CHECK_EQ(cli_read(c, &r, 0), 0);
	CHECK_MEM(r.body, r.body_len, "hello world\n", 12);
	resp_free(&r);
	CHECK_EQ(cli_read(c, &r, 1), 0);
	CHECK_EQ(r.clen, BIG_SIZE);
	resp_free(&r);
	CHECK_EQ(cli_read(c, &r, 0), 0);
	CHECK(body_is_pattern(&r, 0, MID_SIZE));
	resp_free(&r);
	/* the same connection goes on; 20 more one at a time */
	for (int i = 0; i < 20; i++) {
		CHECK_EQ(cli_send(c, GET("/small.txt")), 0);
		CHECK_EQ(cli_read(c, &r, 0), 0);
		CHECK_EQ(r.status, 200);
		resp_free(&r);
	}
	/* Connection: close ends it after the response */
	CHECK_EQ(cli_send(c, "GET /small.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), 0);
	CHECK_EQ(cli_read(c, &r, 0), 0);
	CHECK(hdr(&r, "Connection", v, sizeof(v)) && !strcmp(v, "close"));
	resp_free(&r);
	CHECK(cli_closed(c, 3000));
	cli_close(c);

	/* HTTP/1.0: closes unless asked to keep alive */
	REQUIRE(cli_open(c, port, 0) == 0);
	CHECK_EQ(cli_send(c, "GET /small.txt HTTP/1.0\r\n\r\n"), 0);
	CHECK_EQ(cli_read(c, &r, 0), 0);
	CHECK_EQ(r.status, 200);
	CHECK(hdr(&r, "Connection", v, sizeof(v)) && !strcmp(v, "close"));
	resp_free(&r);
	CHECK(cli_closed(c, 3000));
	cli_close(c);
	REQUIRE(cli_open(c, port, 0) == 0);
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(cli_send(c, "GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
		CHECK_EQ(cli_read(c, &r, 0), 0);
		CHECK(hdr(&r, "Connection", v, sizeof(v)) && !strcmp(v, "keep-alive"));
		CHECK_MEM(r.body, r.body_len, "hello world\n", 12);
		resp_free(&r);
	}
	cli_close(c);
	/* a request sent byte by byte */
	REQUIRE(cli_open(c, port, 0) == 0);
	{
		const char *s = GET("/small.txt");

		for (size_t i = 0; s[i]; i++)
			CHECK_EQ(send(c->fd, s + i, 1, 0), 1);
	}
	CHECK_EQ(cli_read(c, &r, 0), 0);
	CHECK_MEM(r.body, r.body_len, "hello world\n", 12);
	resp_free(&r);
	cli_close(c);
	free(c);
}

struct refusal {
	const char *req;
	int status;
	int closes; /* the connection ends after it */
};

static void errors(int port)
{
	static const struct refusal cases[] = {
		{ "POST /small.txt HTTP/1.1\r\nHost: t\r\n\r\n", 405, 0 },
		{ "DELETE /small.txt HTTP/1.1\r\nHost: t\r\n\r\n", 405, 0 },
		{ "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 405, 1 },
		{ "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 400, 1 },
		{ "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 1 },
		{ "GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n", 417, 1 },
		{ "GET / HTTP/1.1\nHost: t\n\n", 400, 1 },
		{ "GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, 1 },
		{ "BREW /pot HTCPCP/1.0\r\n\r\n", 400, 1 },
		{ "GET /%00 HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0 },
		{ "GET /../secret HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0 },
		{ "GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, 0 },
		{ "GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n", 400, 1 },
		{ "GET / HTTP/1.1\r\n\r\n", 400, 1 },
	};
	struct cli *c = malloc(sizeof(*c));
	struct resp r;
	char v[64];

	REQUIRE(c);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		h_ran++;
		REQUIRE(cli_open(c, port, 0) == 0);
		CHECK_EQ(cli_send(c, cases[i].req), 0);
		if (cli_read(c, &r, 0) < 0 || r.status != cases[i].status) {
			H_REPORT("case %zu: status %d, want %d", i, r.status,
				 cases[i].status);
		} else if (cases[i].status == 405) {
			CHECK(hdr(&r, "Allow", v, sizeof(v)) && !strcmp(v, "GET, HEAD"));
		}
		resp_free(&r);
		if (cases[i].closes) {
			if (!cli_closed(c, 3000))
				H_REPORT("case %zu: still open", i);
		} else {
			/* the connection is still good */
			CHECK_EQ(cli_send(c, GET("/small.txt")), 0);
			CHECK_EQ(cli_read(c, &r, 0), 0);
			CHECK_EQ(r.status, 200);
			resp_free(&r);
		}
		cli_close(c);
	}
	/* oversized: 414 and 431 */
	{
		char *big = malloc(20000);
		size_t n;

		REQUIRE(big);
		n = (size_t)sprintf(big, "GET /");
		memset(big + n, 'a', 9000);
		n += 9000;
		n += (size_t)sprintf(big + n, " HTTP/1.1\r\nHost: t\r\n\r\n");
		big[n] = '\0';
		CHECK_EQ(get1(port, big, &r), 0);
		CHECK_EQ(r.status, 414);
		resp_free(&r);
		n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nHost: t\r\n");
		for (int i = 0; i < 150; i++)
			n += (size_t)sprintf(big + n, "X-%d: y\r\n", i);
		sprintf(big + n, "\r\n");
		CHECK_EQ(get1(port, big, &r), 0);
		CHECK_EQ(r.status, 431);
		resp_free(&r);
		free(big);
	}
	free(c);
}

/* Every hostile target: a refusal or a file under the root, never the
 * secret beside it or a system file. */
static void traversal(int port)
{
	static const char *targets[] = {
		"/../secret", "/..%2fsecret", "/%2e%2e/secret", "/%2e%2e%2fsecret",
		"/%252e%252e/secret", "/..%5csecret", "/..\\secret",
		"/dir/../../secret", "/dir/%2e%2e/%2e%2e/secret",
		"/%c0%ae%c0%ae/secret", "/out_link", "/up_link",
		"http://x/../secret", "/secret%00.txt", "/./../secret",
		"/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/../../../../etc/passwd",
		"/fifo", "//etc/passwd", "http://x//etc/passwd",
		"/.%2e/.%2e/etc/passwd", "/%2f%2fetc/passwd",
	};

	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		char req[512];
		struct resp r;

		h_ran++;
		snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n",
			 targets[i]);
		if (get1(port, req, &r) < 0) {
			H_REPORT("%s: no response", targets[i]);
			continue;
		}
		if (r.status == 200 || r.status == 206 ||
		    (r.body && (memmem(r.body, r.body_len, "SECRET", 6) ||
				memmem(r.body, r.body_len, "root:", 5))))
			H_REPORT("%s: status %d", targets[i], r.status);
		resp_free(&r);
	}
}

static void timeouts(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(sizeof(*c));
	struct resp r;
	long long t0;

	REQUIRE(c);
	h_ran++;
	zc_http_config_init(&cfg);
	cfg.header_timeout_ms = 300;
	cfg.idle_timeout_ms = 300;
	REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
	/* slowloris: a head that never ends, one byte every 100 ms */
	REQUIRE(cli_open(c, s.port, 0) == 0);
	CHECK_EQ(cli_send(c, "GET / HTTP/1.1\r\n"), 0);
	t0 = h_now_ms();
	while (h_now_ms() - t0 < 4000) {
		if (send(c->fd, "X", 1, MSG_NOSIGNAL) != 1 || cli_closed(c, 100))
			break;
	}
	CHECK(h_now_ms() - t0 < 4000); /* closed by the deadline, not by us */
	cli_close(c);
	/* a connection that never sends anything */
	REQUIRE(cli_open(c, s.port, 0) == 0);
	CHECK(cli_closed(c, 4000));
	cli_close(c);
	/* idle keep-alive after a response */
	REQUIRE(cli_open(c, s.port, 0) == 0);
	CHECK_EQ(cli_send(c, GET("/small.txt")), 0);
	CHECK_EQ(cli_read(c, &r, 0), 0);
	resp_free(&r);
	CHECK(cli_closed(c, 4000));
	cli_close(c);
	server_stop(&s, 0);
	CHECK_EQ(sh->stats.header_timeouts, 2);
	CHECK_EQ(sh->stats.idle_timeouts, 1);
	free(c);
}

/* A reader that stops reading: the response is abandoned after the
 * send timeout, and the server goes on serving others. */
static void send_stall(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(sizeof(*c));
	struct resp r;
	char b[4096];

	REQUIRE(c);
	h_ran++;
	zc_http_config_init(&cfg);
	cfg.send_timeout_ms = 200;
	REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
	REQUIRE(cli_open(c, s.port, 4096) == 0);
	CHECK_EQ(cli_send(c, GET("/big.bin")), 0);
	CHECK(recv(c->fd, b, sizeof(b), MSG_WAITALL) > 0);
	/* stall; meanwhile another client is served */
	CHECK_EQ(get1(s.port, GET("/small.txt"), &r), 0);
	CHECK_EQ(r.status, 200);
	resp_free(&r);
	usleep(1500 * 1000); /* well past the 200 ms timeout */
	server_stop(&s, 0);
	CHECK_EQ(sh->stats.send_timeouts, 1);
	cli_close(c);
	free(c);
}

/* A client that resets mid-response hurts only itself. */
static void reset_midway(int port)
{
	struct cli *c = malloc(sizeof(*c));
	struct linger lg = { 1, 0 };
	struct resp r;
	char b[4096];

	REQUIRE(c);
	h_ran++;
	for (int i = 0; i < 3; i++) {
		REQUIRE(cli_open(c, port, 4096) == 0);
		CHECK_EQ(cli_send(c, GET("/big.bin")), 0);
		CHECK(recv(c->fd, b, sizeof(b), MSG_WAITALL) > 0);
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		cli_close(c); /* RST with unread data */
	}
	CHECK_EQ(get1(port, GET("/big.bin"), &r), 0);
	CHECK(body_is_pattern(&r, 0, BIG_SIZE));
	resp_free(&r);
	free(c);
}

/* A file cut short while it is sent: the client gets a correct prefix,
 * fewer bytes than Content-Length, and the connection ends. */
static void truncated(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(sizeof(*c));
	char p[256];
	unsigned char *got;
	size_t n = 0, zeros_after = 0;
	long long clen = -1;
	int bad = 0, reset = 0;

	REQUIRE(c);
	got = malloc(TRUNC_SIZE);
	REQUIRE(got);
	h_ran++;
	REQUIRE(pattern_file("root/trunc.bin", TRUNC_SIZE) == 0);
	zc_http_config_init(&cfg);
	REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
	REQUIRE(cli_open(c, s.port, 8192) == 0);
	CHECK_EQ(cli_send(c, GET("/trunc.bin")), 0);
	/* the head and the first bytes */
	while (n < 65536) {
		char *e;

		if (cli_fill(c) <= 0)
			break;
		e = memmem(c->buf, c->len, "\r\n\r\n", 4);
		if (e && clen < 0) {
			char *cl = strcasestr(c->buf, "Content-Length: ");

			clen = cl ? atoll(cl + 16) : -2;
			cli_consume(c, (size_t)(e - c->buf) + 4);
		}
		if (clen >= 0) {
			memcpy(got + n, c->buf, c->len);
			n += c->len;
			c->len = 0;
		}
	}
	CHECK_EQ(clen, TRUNC_SIZE);
	snprintf(p, sizeof(p), "%s/trunc.bin", rootp);
	CHECK_EQ(truncate(p, 1 << 20), 0);
	for (;;) {
		ssize_t k = recv(c->fd, got + n, TRUNC_SIZE - n, 0);

		if (k < 0)
			reset = errno == ECONNRESET;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	CHECK(reset); /* an abortive end: no client takes it for whole */
	CHECK(n < TRUNC_SIZE);
	/* Below the new end every byte is right.  Past it, bytes that were
	 * already queued share the page cache with the file (zero-copy) and
	 * the kernel may zero them when it truncates: that is why the
	 * connection is reset rather than closed. */
	for (size_t i = 0; i < n && i < (1u << 20) && !bad; i++)
		if (got[i] != h_byte(i, SEED)) {
			H_REPORT("wrong byte at %zu of %zu", i, n);
			bad = 1;
		}
	for (size_t i = 1u << 20; i < n; i++)
		zeros_after += got[i] != h_byte(i, SEED);
	if (zeros_after)
		fprintf(stderr, "note: %zu of %zu bytes past the cut changed in flight\n",
			zeros_after, n > (1u << 20) ? n - (1u << 20) : 0);
	cli_close(c);
	server_stop(&s, 0);
	CHECK_EQ(sh->stats.truncated, 1);
	unlink(p);
	free(got);
	free(c);
}

/* At max_conns: an idle connection makes room; busy ones make new ones wait. */
static void conn_limit(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(4 * sizeof(*c));
	struct resp r;

	REQUIRE(c);
	h_ran++;
	zc_http_config_init(&cfg);
	cfg.max_conns = 3;
	REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
	for (int i = 0; i < 3; i++) {
		REQUIRE(cli_open(&c[i], s.port, 0) == 0);
		CHECK_EQ(cli_send(&c[i], GET("/small.txt")), 0);
		CHECK_EQ(cli_read(&c[i], &r, 0), 0);
		resp_free(&r);
	}
	/* a fourth: served, and the longest idle (the first) is closed */
	REQUIRE(cli_open(&c[3], s.port, 0) == 0);
	CHECK_EQ(cli_send(&c[3], GET("/small.txt")), 0);
	CHECK_EQ(cli_read(&c[3], &r, 0), 0);
	CHECK_EQ(r.status, 200);
	resp_free(&r);
	CHECK(cli_closed(&c[0], 3000));
	cli_close(&c[0]);
	for (int i = 0; i < 4; i++)
		cli_close(&c[i]);
	server_stop(&s, 0);
	CHECK(sh->stats.conn_limit >= 1);
	/* all three busy (new connections, heads half sent: none idle): a
	 * fourth waits in the backlog until one ends */
	REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
	for (int i = 1; i < 4; i++) {
		REQUIRE(cli_open(&c[i], s.port, 0) == 0);
		CHECK_EQ(cli_send(&c[i], "GET /small.txt HTTP/1.1\r\n"), 0);
	}
	REQUIRE(cli_open(&c[0], s.port, 0) == 0);
	CHECK_EQ(cli_send(&c[0], GET("/small.txt")), 0);
	{
		struct pollfd p = { .fd = c[0].fd, .events = POLLIN };

		CHECK_EQ(poll(&p, 1, 300), 0); /* not answered while full */
	}
	cli_close(&c[1]);
	CHECK_EQ(cli_read(&c[0], &r, 0), 0);
	CHECK_EQ(r.status, 200);
	resp_free(&r);
	for (int i = 0; i < 4; i++)
		cli_close(&c[i]);
	server_stop(&s, 0);
	CHECK(sh->stats.conn_limit >= 1);
	free(c);
}

/* Graceful stop: idle connections close at once, a response in flight
 * finishes; with no grace it is cut. */
static void graceful_stop(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(2 * sizeof(*c));
	struct resp r;
	char b[8192];

	REQUIRE(c);
	h_ran++;
	zc_http_config_init(&cfg);
	for (int grace = 1; grace >= 0; grace--) {
		REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
		REQUIRE(cli_open(&c[0], s.port, 0) == 0); /* idle */
		CHECK_EQ(cli_send(&c[0], GET("/small.txt")), 0);
		CHECK_EQ(cli_read(&c[0], &r, 0), 0);
		resp_free(&r);
		REQUIRE(cli_open(&c[1], s.port, 4096) == 0); /* slow reader */
		CHECK_EQ(cli_send(&c[1], GET("/big.bin")), 0);
		CHECK(recv(c[1].fd, b, sizeof(b), MSG_WAITALL) > 0);
		sh->grace_ms = grace ? 10000 : 0;
		kill(s.pid, SIGTERM);
		CHECK(cli_closed(&c[0], 3000));
		c[1].len = 0;
		{
			/* b held the head and the first bytes: count the rest */
			size_t total = 0;
			char *e = memmem(b, sizeof(b), "\r\n\r\n", 4);
			ssize_t k;

			total = e ? sizeof(b) - (size_t)(e + 4 - b) : 0;
			while ((k = recv(c[1].fd, b, sizeof(b), 0)) > 0)
				total += (size_t)k;
			if (grace)
				CHECK_EQ(total, BIG_SIZE);
			else
				CHECK(total < BIG_SIZE);
		}
		cli_close(&c[0]);
		cli_close(&c[1]);
		server_stop(&s, 0); /* already stopping: waits for the exit */
	}
	free(c);
}

/* Signals interrupt the loop; it resumes with its connections intact. */
static void signals(int port, pid_t pid)
{
	struct cli *c = malloc(sizeof(*c));
	unsigned char *got = malloc(BIG_SIZE + 8192);
	size_t n = 0, head = 0;
	int kills = 0;

	REQUIRE(c && got);
	h_ran++;
	REQUIRE(cli_open(c, port, 4096) == 0);
	CHECK_EQ(cli_send(c, GET("/big.bin")), 0);
	for (;;) {
		ssize_t k = recv(c->fd, got + n, BIG_SIZE + 8192 - n, 0);

		if (k <= 0)
			break;
		n += (size_t)k;
		if (!head) {
			char *e = memmem(got, n, "\r\n\r\n", 4);

			if (e)
				head = (size_t)(e - (char *)got) + 4;
		}
		if (head && n - head >= BIG_SIZE)
			break;
		if (kills < 20 && n > (size_t)kills * 100000) {
			kill(pid, SIGUSR1);
			kills++;
			usleep(2000);
		}
	}
	CHECK(head > 0);
	CHECK_EQ(n - head, BIG_SIZE);
	for (size_t i = 0; head && i < n - head; i++)
		if (got[head + i] != h_byte(i, SEED)) {
			H_REPORT("wrong byte at %zu", i);
			break;
		}
	cli_close(c);
	free(got);
	free(c);
}

static void access_log(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct resp r;
	char text[4096];
	int mfd = memfd_create("log", MFD_CLOEXEC);
	ssize_t n;

	REQUIRE(mfd >= 0);
	h_ran++;
	zc_http_config_init(&cfg);
	cfg.log_fd = mfd;
	REQUIRE(server_start(&s, &cfg, 1, 0) == 0);
	CHECK_EQ(get1(s.port, GET("/small.txt"), &r), 0);
	resp_free(&r);
	CHECK_EQ(get1(s.port, "GET /nope\"x HTTP/1.1\r\nHost: t\r\n\r\n", &r), 0);
	resp_free(&r);
	CHECK_EQ(get1(s.port, "HEAD /mid.bin HTTP/1.0\r\n\r\n", &r), 0);
	resp_free(&r);
	server_stop(&s, 0);
	n = pread(mfd, text, sizeof(text) - 1, 0);
	REQUIRE(n > 0);
	text[n] = '\0';
	CHECK(!strncmp(text, "127.0.0.1 - - [", 15));
	CHECK(strstr(text, " +0000] \"GET /small.txt HTTP/1.1\" 200 12\n"));
	CHECK(strstr(text, "\"GET /nope\\x22x HTTP/1.1\" 404 "));
	CHECK(strstr(text, "\"HEAD /mid.bin HTTP/1.0\" 200 -\n"));
	close(mfd);
}

/* Out of descriptors: clients are refused (accepted with the spare and
 * closed), the server keeps serving once they are back. */
static void emfile(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(12 * sizeof(*c));
	struct resp r;
	int served = 0, refused = 0;

	REQUIRE(c);
	h_ran++;
	zc_http_config_init(&cfg);
	cfg.cache_entries = 0;
	REQUIRE(server_start(&s, &cfg, 1, 4) == 0);
	for (int i = 0; i < 12; i++) {
		REQUIRE(cli_open(&c[i], s.port, 0) == 0);
		CHECK_EQ(cli_send(&c[i], GET("/small.txt")), 0);
	}
	for (int i = 0; i < 12; i++) {
		int rc = cli_read(&c[i], &r, 0);

		if (rc == 0 && r.status == 200)
			served++;
		if (rc != 0)
			refused++; /* closed unanswered (503s were answered) */
		resp_free(&r);
	}
	CHECK(served > 0 && served < 12);
	for (int i = 0; i < 12; i++)
		cli_close(&c[i]);
	usleep(100 * 1000); /* let the server see the closes (not required) */
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(get1(s.port, GET("/small.txt"), &r), 0);
		CHECK_EQ(r.status, 200);
		resp_free(&r);
	}
	server_stop(&s, 0);
	/* each refused client counted once (accept(2) says EMFILE with an
	 * empty queue too: those are no clients) */
	CHECK(sh->stats.fd_exhausted > 0);
	CHECK_EQ(sh->stats.fd_exhausted, (uint64_t)refused);
	free(c);
}

/* Two loops in two threads on one listener (EPOLLEXCLUSIVE). */
static void two_loops(void)
{
	struct zc_http_config cfg;
	struct server s;
	struct cli *c = malloc(40 * sizeof(*c));
	struct resp r;

	REQUIRE(c);
	h_ran++;
	zc_http_config_init(&cfg);
	REQUIRE(server_start(&s, &cfg, 2, 0) == 0);
	for (int i = 0; i < 40; i++) {
		REQUIRE(cli_open(&c[i], s.port, 0) == 0);
		CHECK_EQ(cli_send(&c[i], GET("/mid.bin")), 0);
	}
	for (int i = 0; i < 40; i++) {
		CHECK_EQ(cli_read(&c[i], &r, 0), 0);
		CHECK(body_is_pattern(&r, 0, MID_SIZE));
		resp_free(&r);
		cli_close(&c[i]);
	}
	server_stop(&s, 1000);
	CHECK_EQ(sh->stats.requests, 40);
	CHECK_EQ(sh->stats.accepted, 40);
	free(c);
}

/* Arguments the loop refuses, and a stop before any run. */
static void api_edges(void)
{
	struct zc_http_config cfg;
	struct zc_http_server srv;
	struct zc_http_loop loop;
	size_t size = 0;
	int sv[2], lfd;

	h_ran++;
	zc_http_config_init(&cfg);
	CHECK_RC(zc_http_server_init(&srv, &cfg), -EINVAL); /* no root */
	CHECK_RC(zc_http_loop_size(&cfg, &size), -EINVAL);
	cfg.root_fd = root_fd;
	cfg.head_max = 10;
	CHECK_RC(zc_http_server_init(&srv, &cfg), -EINVAL);
	cfg.head_max = ZC_HTTP_HEAD_MAX;
	cfg.idle_timeout_ms = -1;
	CHECK_RC(zc_http_server_init(&srv, &cfg), -EINVAL);
	cfg.idle_timeout_ms = 1000;
	CHECK_RC(zc_http_loop_size(&cfg, &size), 0);
	CHECK(size > cfg.max_conns * (size_t)cfg.head_max);
	{
		struct zc_http_config f = cfg;
		char p[256];

		snprintf(p, sizeof(p), "%s/small.txt", rootp);
		f.root_fd = open(p, O_RDONLY | O_CLOEXEC);
		CHECK_RC(zc_http_server_init(&srv, &f), -ENOTDIR);
		close(f.root_fd);
	}
	REQUIRE(zc_http_server_init(&srv, &cfg) == 0);
	/* not a listening socket */
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	CHECK_RC(zc_http_loop_init(&loop, &srv, sv[0], NULL, 0), -EINVAL);
	zc_http_loop_close(&loop);
	close(sv[0]);
	close(sv[1]);
	/* caller's memory too small */
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(lfd >= 0 && listen(lfd, 4) == 0);
	{
		void *mem = malloc(size);

		REQUIRE(mem);
		CHECK_RC(zc_http_loop_init(&loop, &srv, lfd, mem, size - 1), -EINVAL);
		zc_http_loop_close(&loop);
		/* with enough: a stop before the first run returns 0 at once,
		 * again until rearmed; then a timeout */
		REQUIRE(zc_http_loop_init(&loop, &srv, lfd, mem, size) == 0);
		CHECK_RC(zc_http_server_stop(&srv, 5000), 0);
		CHECK_RC(zc_http_loop_run(&loop, 10000), 0);
		CHECK_RC(zc_http_loop_run(&loop, 10000), 0);
		CHECK_RC(zc_http_server_rearm(&srv), 0);
		CHECK_RC(zc_http_loop_run(&loop, 20), -ETIMEDOUT);
		zc_http_loop_close(&loop);
		zc_http_loop_close(&loop); /* twice is fine */
		free(mem);
	}
	close(lfd);
	zc_http_server_close(&srv);
	zc_http_server_close(&srv);
}

int main(void)
{
	struct zc_http_config cfg;
	struct server s;
	unsigned char *b;

	h_init(100);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || make_tree() < 0) {
		fprintf(stderr, "test_http_server: no tree: %s\n", strerror(errno));
		return 77;
	}
	b = h_pattern(16 * 1024, 0, SEED);
	if (b)
		write_file("root/small16.bin", b, 16 * 1024);
	free(b);

	zc_http_config_init(&cfg);
	if (server_start(&s, &cfg, 1, 0) == 0) {
		basics(s.port);
		ranges(s.port);
		sparse(s.port);
		conditional(s.port);
		keepalive(s.port);
		errors(s.port);
		traversal(s.port);
		reset_midway(s.port);
		signals(s.port, s.pid);
		server_stop(&s, 1000);
		CHECK(sh->stats.resets >= 1);
		CHECK(sh->eintr > 0);
		CHECK(sh->stats.cache_hits > 0);
		CHECK(sh->stats.bad_requests > 0);
	}
	/* the same with the file cache off and no small-file copies */
	zc_http_config_init(&cfg);
	cfg.cache_entries = 0;
	cfg.small_file_max = 0;
	if (server_start(&s, &cfg, 1, 0) == 0) {
		basics(s.port);
		ranges(s.port);
		keepalive(s.port);
		server_stop(&s, 1000);
		CHECK_EQ(sh->stats.cache_hits, 0);
	}
	/* listing off, and the O_NOFOLLOW walk instead of openat2 */
	zc_http_config_init(&cfg);
	cfg.flags = ZC_HTTP_NO_LISTING | ZC_HTTP_NO_OPENAT2;
	if (server_start(&s, &cfg, 1, 0) == 0) {
		struct resp r;

		h_ran++;
		CHECK_EQ(get1(s.port, GET("/list/"), &r), 0);
		CHECK_EQ(r.status, 403);
		resp_free(&r);
		CHECK_EQ(get1(s.port, GET("/dir/"), &r), 0);
		CHECK_EQ(r.status, 200);
		resp_free(&r);
		traversal(s.port);
		server_stop(&s, 0);
	}
	api_edges();
	timeouts();
	send_stall();
	truncated();
	conn_limit();
	graceful_stop();
	access_log();
	emfile();
	two_loops();
	close(root_fd);
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return h_result("test_http_server");
}
