/* SPDX-License-Identifier: MIT */
/* A strict HTTP/1.1 request-head parser (RFC 9112), resumable, no copies. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <string.h>

/* Resume state: what earlier calls learnt about the same buffer. */
struct parse_state {
	uint32_t scanned;  /* bytes checked for line ends */
	uint32_t start;	   /* first byte of the request line */
	uint32_t line_end; /* index of the request line's LF, 0 until seen */
	uint32_t pad;
};
ZC__PRIV_FITS(struct parse_state, struct zc_http_request);

/* token characters (RFC 9110 5.6.2) */
static const unsigned char tchar[256] = {
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
	['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
	['`'] = 1, ['|'] = 1, ['~'] = 1,
	['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
	['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
	['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
	['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
	['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
	['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
	['Y'] = 1, ['Z'] = 1,
	['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
	['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
	['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
	['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
	['y'] = 1, ['z'] = 1,
};

void zc_http_request_init(struct zc_http_request *req,
			  struct zc_http_header *headers, unsigned max_headers,
			  unsigned max_head)
{
	memset(req, 0, sizeof(*req));
	req->headers = headers;
	req->max_headers = max_headers ? max_headers : ZC_HTTP_HEADERS_MAX;
	req->max_head = max_head ? max_head : ZC_HTTP_HEAD_MAX;
	req->content_length = -1;
}

static int refuse(struct zc_http_request *req, int status)
{
	req->status = status;
	return status == 414 || status == 431 ? -EMSGSIZE : -EBADMSG;
}

/* Is s[0..n) equal to the lower-case letters-and-dashes word w, any case? */
static int name_is(const char *s, size_t n, const char *w, size_t wn)
{
	if (n != wn)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] | 0x20) != (unsigned char)w[i])
			return 0;
	return 1;
}

#define NAME_IS(s, n, lit) name_is((s), (n), lit, sizeof(lit) - 1)

/* "METHOD SP target SP HTTP/d.d", n bytes without the CRLF. */
static int request_line(struct zc_http_request *req, const char *s, size_t n)
{
	size_t i = 0, m, t;

	while (i < n && tchar[(unsigned char)s[i]])
		i++;
	if (i == 0 || i == n || s[i] != ' ')
		return refuse(req, 400);
	m = i++;
	t = i;
	while (i < n && (unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f)
		i++;
	if (i == t || i == n || s[i] != ' ')
		return refuse(req, 400);
	req->method_str = s;
	req->method_len = m;
	req->target = s + t;
	req->target_len = i - t;
	i++;
	/* exactly "HTTP/" DIGIT "." DIGIT and the end of the line */
	if (n - i != 8 || memcmp(s + i, "HTTP/", 5) != 0 ||
	    s[i + 5] < '0' || s[i + 5] > '9' || s[i + 6] != '.' ||
	    s[i + 7] < '0' || s[i + 7] > '9')
		return refuse(req, 400);
	if (s[i + 5] != '1')
		return refuse(req, 505); /* HTTP/2 preface, HTTP/0.9, ... */
	req->minor_version = s[i + 7] == '0' ? 0 : 1; /* 1.x answers as 1.1 */
	if (m == 3 && memcmp(s, "GET", 3) == 0)
		req->method = ZC_HTTP_GET;
	else if (m == 4 && memcmp(s, "HEAD", 4) == 0)
		req->method = ZC_HTTP_HEAD;
	else
		req->method = ZC_HTTP_OTHER;
	return 0;
}

/* Connection: a comma-separated list of tokens. */
static void connection_tokens(const char *v, size_t n, int *close, int *ka)
{
	size_t i = 0;

	while (i < n) {
		size_t a, b;

		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		a = i;
		while (i < n && v[i] != ',')
			i++;
		b = i;
		while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
			b--;
		if (NAME_IS(v + a, b - a, "close"))
			*close = 1;
		else if (NAME_IS(v + a, b - a, "keep-alive"))
			*ka = 1;
	}
}

static int content_length(struct zc_http_request *req, const char *v, size_t n)
{
	int64_t x = 0;

	if (req->content_length >= 0 || n == 0 || n > 18)
		return refuse(req, 400); /* repeated, empty or absurd */
	for (size_t i = 0; i < n; i++) {
		if (v[i] < '0' || v[i] > '9')
			return refuse(req, 400);
		x = x * 10 + (v[i] - '0');
	}
	req->content_length = x;
	return 0;
}

/* Remember a header value; a second one sets dup_flag instead. */
static void keep(struct zc_http_request *req, const char **p, size_t *plen,
		 const char *v, size_t n, unsigned dup_flag)
{
	if (*p) {
		req->flags |= dup_flag;
		return;
	}
	*p = v;
	*plen = n;
}

/* The header lines in buf[from, to): each ends in CRLF. */
static int header_lines(struct zc_http_request *req, const char *buf,
			size_t from, size_t to)
{
	int close = 0, ka = 0, host = 0;
	size_t i = from;

	while (i < to) {
		const char *line = buf + i;
		const char *lf = memchr(line, '\n', to - i);
		size_t len = (size_t)(lf - line) - 1; /* without the CRLF */
		size_t k = 0, v, e;
		const char *val;
		int rc = 0;

		i += len + 2;
		/* obs-fold, or whitespace before the first field name */
		while (k < len && tchar[(unsigned char)line[k]])
			k++;
		if (k == 0 || k == len || line[k] != ':')
			return refuse(req, 400);
		v = k + 1;
		while (v < len && (line[v] == ' ' || line[v] == '\t'))
			v++;
		for (e = v; e < len; e++) {
			unsigned char c = (unsigned char)line[e];

			if ((c < 0x20 && c != '\t') || c == 0x7f)
				return refuse(req, 400); /* NUL, bare CR, ... */
		}
		while (e > v && (line[e - 1] == ' ' || line[e - 1] == '\t'))
			e--;
		if (req->num_headers >= req->max_headers)
			return refuse(req, 431);
		val = line + v;
		if (req->headers) {
			struct zc_http_header *h = &req->headers[req->num_headers];

			h->name = line;
			h->name_len = k;
			h->value = val;
			h->value_len = e - v;
		}
		req->num_headers++;
		switch (k) {
		case 4:
			if (NAME_IS(line, k, "host")) {
				if (host++)
					return refuse(req, 400);
				req->host = val;
				req->host_len = e - v;
			}
			break;
		case 5:
			if (NAME_IS(line, k, "range"))
				keep(req, &req->range, &req->range_len, val,
				     e - v, ZC_HTTP_REQ_RANGE_DUP);
			break;
		case 6:
			if (NAME_IS(line, k, "expect"))
				req->flags |= ZC_HTTP_REQ_EXPECT;
			break;
		case 8:
			if (NAME_IS(line, k, "if-range"))
				keep(req, &req->if_range, &req->if_range_len,
				     val, e - v, ZC_HTTP_REQ_RANGE_DUP);
			break;
		case 10:
			if (NAME_IS(line, k, "connection"))
				connection_tokens(val, e - v, &close, &ka);
			break;
		case 13:
			if (NAME_IS(line, k, "if-none-match"))
				keep(req, &req->if_none_match,
				     &req->if_none_match_len, val, e - v,
				     ZC_HTTP_REQ_COND_DUP);
			break;
		case 14:
			if (NAME_IS(line, k, "content-length"))
				rc = content_length(req, val, e - v);
			break;
		case 17:
			if (NAME_IS(line, k, "transfer-encoding"))
				req->flags |= ZC_HTTP_REQ_TE;
			else if (NAME_IS(line, k, "if-modified-since"))
				keep(req, &req->if_modified_since,
				     &req->if_modified_since_len, val, e - v,
				     ZC_HTTP_REQ_COND_DUP);
			break;
		}
		if (rc < 0)
			return rc;
	}
	if (req->minor_version == 1 && !host)
		return refuse(req, 400); /* RFC 9112 3.2: a MUST */
	if ((req->flags & ZC_HTTP_REQ_TE) &&
	    (req->minor_version == 0 || req->content_length >= 0))
		return refuse(req, 400); /* framing a proxy could read two ways */
	req->keep_alive = !close && (req->minor_version == 1 || ka);
	return 0;
}

/*
 * Does s[0..n), part of an unfinished request line, hold a byte that no
 * request line may hold?  Garbage that never sends a line end (a TLS
 * ClientHello sent to a plain HTTP port) is then refused at once instead
 * of holding its connection until the header timeout.  A CR is left to
 * the line check (it is fine right before the LF).
 */
static int line_garbage(const char *s, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		unsigned char c = (unsigned char)s[j];

		if ((c < 0x20 && c != '\r') || c >= 0x7f)
			return 1;
	}
	return 0;
}

int zc_http_parse_request(struct zc_http_request *req, const char *buf,
			  size_t len)
{
	struct parse_state *st = ZC__PRIV(struct parse_state, req);
	size_t limit = req->max_head < INT32_MAX ? req->max_head : INT32_MAX;
	size_t end = len < limit ? len : limit;
	size_t i = st->scanned;

	if (req->status)
		return req->status == 414 || req->status == 431 ? -EMSGSIZE
								 : -EBADMSG;
	while (i < end) {
		const char *lf = memchr(buf + i, '\n', end - i);
		size_t k;
		int rc;

		if (!st->line_end &&
		    line_garbage(buf + i, (lf ? (size_t)(lf - buf) : end) - i))
			return refuse(req, 400);
		if (!lf) {
			i = end;
			break;
		}
		k = (size_t)(lf - buf);
		if (k == 0 || buf[k - 1] != '\r')
			return refuse(req, 400); /* bare LF */
		i = k + 1;
		if (!st->line_end) {
			if (k - 1 == st->start) { /* an empty line before it */
				st->start = (uint32_t)i;
				continue;
			}
			st->line_end = (uint32_t)k;
			st->scanned = (uint32_t)i;
			rc = request_line(req, buf + st->start,
					  k - 1 - st->start);
			if (rc < 0)
				return rc;
		} else if (buf[k - 2] == '\n') { /* "\r\n\r\n": the end */
			st->scanned = (uint32_t)i;
			rc = header_lines(req, buf, st->line_end + 1, k - 1);
			return rc < 0 ? rc : (int)i;
		}
	}
	st->scanned = (uint32_t)i;
	if (len >= limit)
		return refuse(req, st->line_end ? 431 : 414);
	return -EAGAIN;
}
