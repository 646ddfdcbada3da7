/* SPDX-License-Identifier: MIT */
/* zc_http_parse_request(): good heads, hostile heads, heads in pieces. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

static struct zc_http_header hdrs[ZC_HTTP_HEADERS_MAX];

/* Parse s whole; the status on refusal goes to *status. */
static int parse(struct zc_http_request *r, const char *s, size_t n)
{
	zc_http_request_init(r, hdrs, 0, 0);
	h_ran++;
	return zc_http_parse_request(r, s, n);
}

#define P(r, lit) parse((r), lit, sizeof(lit) - 1)

static int str_is(const char *p, size_t n, const char *lit)
{
	return p && n == strlen(lit) && memcmp(p, lit, n) == 0;
}

static void good(void)
{
	struct zc_http_request r;
	const char get[] = "GET /a/b?c=d HTTP/1.1\r\nHost: example\r\n"
			   "Range:  bytes=0-9 \r\nIf-None-Match: \"x\"\r\n"
			   "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
			   "If-Range: \"x\"\r\nX-Empty:\r\n\r\nNEXT";
	int rc = P(&r, get);

	CHECK_EQ(rc, sizeof(get) - 1 - 4); /* the head ends before NEXT */
	CHECK_EQ(r.method, ZC_HTTP_GET);
	CHECK_EQ(r.minor_version, 1);
	CHECK_EQ(r.keep_alive, 1);
	CHECK(str_is(r.method_str, r.method_len, "GET"));
	CHECK(str_is(r.target, r.target_len, "/a/b?c=d"));
	CHECK(str_is(r.host, r.host_len, "example"));
	CHECK(str_is(r.range, r.range_len, "bytes=0-9"));
	CHECK(str_is(r.if_none_match, r.if_none_match_len, "\"x\""));
	CHECK(str_is(r.if_range, r.if_range_len, "\"x\""));
	CHECK(str_is(r.if_modified_since, r.if_modified_since_len,
		     "Sun, 06 Nov 1994 08:49:37 GMT"));
	CHECK_EQ(r.num_headers, 6);
	CHECK(str_is(hdrs[5].name, hdrs[5].name_len, "X-Empty"));
	CHECK_EQ(hdrs[5].value_len, 0);
	CHECK_EQ(r.content_length, -1);
	CHECK_EQ(r.flags, 0);

	/* HEAD, HTTP/1.0 without Host, keep-alive rules */
	CHECK(P(&r, "HEAD / HTTP/1.0\r\n\r\n") > 0);
	CHECK_EQ(r.method, ZC_HTTP_HEAD);
	CHECK_EQ(r.minor_version, 0);
	CHECK_EQ(r.keep_alive, 0);
	CHECK(P(&r, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n") > 0);
	CHECK_EQ(r.keep_alive, 1);
	CHECK(P(&r, "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n") > 0);
	CHECK_EQ(r.keep_alive, 0);
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nConnection: foo,  CLOSE \r\n\r\n") > 0);
	CHECK_EQ(r.keep_alive, 0);
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nconnection: upgrade\r\n\r\n") > 0);
	CHECK_EQ(r.keep_alive, 1);
	/* 1.x above 1 answers as 1.1 */
	CHECK(P(&r, "GET / HTTP/1.7\r\nHost: x\r\n\r\n") > 0);
	CHECK_EQ(r.minor_version, 1);
	/* other methods parse; the server answers them 405 */
	CHECK(P(&r, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n") > 0);
	CHECK_EQ(r.method, ZC_HTTP_OTHER);
	CHECK_EQ(r.content_length, 12);
	CHECK(P(&r, "get / HTTP/1.1\r\nHost: x\r\n\r\n") > 0);
	CHECK_EQ(r.method, ZC_HTTP_OTHER); /* methods are case-sensitive */
	/* empty lines before the request line are skipped */
	rc = P(&r, "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
	CHECK_EQ(rc, 4 + 16 + 9 + 2);
	CHECK(str_is(r.method_str, r.method_len, "GET"));
	/* flags */
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n") > 0);
	CHECK_EQ(r.flags, ZC_HTTP_REQ_EXPECT);
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n") > 0);
	CHECK_EQ(r.flags, ZC_HTTP_REQ_TE);
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\nrange: bytes=3-4\r\n\r\n") > 0);
	CHECK(r.flags & ZC_HTTP_REQ_RANGE_DUP);
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n") > 0);
	CHECK(r.flags & ZC_HTTP_REQ_COND_DUP);
	/* obs-text and tabs in values are fine */
	CHECK(P(&r, "GET / HTTP/1.1\r\nHost: x\r\nX-A: \tcaf\xc3\xa9\t \r\n\r\n") > 0);
	CHECK(str_is(hdrs[1].value, hdrs[1].value_len, "caf\xc3\xa9"));
	/* absolute-form targets parse (the path code takes them apart) */
	CHECK(P(&r, "GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n") > 0);
	/* without a header array the headers are only counted */
	zc_http_request_init(&r, NULL, 2, 0);
	CHECK(zc_http_parse_request(&r, "GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n", 33) > 0);
	CHECK_EQ(r.num_headers, 2);
	zc_http_request_init(&r, NULL, 2, 0);
	CHECK_RC(zc_http_parse_request(&r, "GET / HTTP/1.1\r\nHost: x\r\nA: b\r\nC: d\r\n\r\n", 39), -EMSGSIZE);
	CHECK_EQ(r.status, 431);
}

struct bad {
	const char *s;
	int rc;
	int status;
};

static void hostile(void)
{
	static const struct bad cases[] = {
		/* bare LF / CR, NUL, controls */
		{ "GET / HTTP/1.1\nHost: x\n\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nA: b\x01\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nA: \x7f\r\n\r\n", -EBADMSG, 400 },
		/* request line shape */
		{ "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET /  HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1 \r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ " GET / HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET /\r\n\r\n", -EBADMSG, 400 }, /* HTTP/0.9 */
		{ "GET / http/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.10\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/a.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/2.0\r\nHost: x\r\n\r\n", -EBADMSG, 505 },
		{ "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", -EBADMSG, 505 },
		{ "GET / HTTP/0.9\r\nHost: x\r\n\r\n", -EBADMSG, 505 },
		/* header lines */
		{ "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\n\tHost: x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost : x\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHo(st: x\r\n\r\n", -EBADMSG, 400 },
		/* Host rules */
		{ "GET / HTTP/1.1\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", -EBADMSG, 400 },
		/* framing */
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 1\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", -EBADMSG, 400 },
		{ "GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -EBADMSG, 400 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct zc_http_request r;
		int rc = parse(&r, cases[i].s, strlen(cases[i].s));

		if (rc != cases[i].rc || r.status != cases[i].status)
			H_REPORT("case %zu (%s): rc %d status %d, want %d %d", i,
				 cases[i].s, rc, r.status, cases[i].rc,
				 cases[i].status);
	}
	/* a NUL in the request line or a header value */
	{
		static const char nul1[] = "GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n";
		static const char nul2[] = "GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n";
		struct zc_http_request r;

		CHECK_RC(parse(&r, nul1, sizeof(nul1) - 1), -EBADMSG);
		CHECK_EQ(r.status, 400);
		CHECK_RC(parse(&r, nul2, sizeof(nul2) - 1), -EBADMSG);
		CHECK_EQ(r.status, 400);
	}
}

static void limits(void)
{
	struct zc_http_request r;
	char *big = malloc(20000);
	size_t n;

	REQUIRE(big);
	/* a request line that never ends: 414 once max_head bytes are in */
	memcpy(big, "GET /", 5);
	memset(big + 5, 'a', 20000 - 5);
	CHECK_RC(parse(&r, big, 8191), -EAGAIN);
	CHECK_RC(parse(&r, big, 8192), -EMSGSIZE);
	CHECK_EQ(r.status, 414);
	/* a request line of 9000 bytes that ends: still 414 */
	memcpy(big + 9000, " HTTP/1.1\r\nHost: x\r\n\r\n", 22);
	CHECK_RC(parse(&r, big, 9022), -EMSGSIZE);
	CHECK_EQ(r.status, 414);
	/* headers that never end: 431 */
	n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nHost: x\r\n");
	while (n < 19000)
		n += (size_t)sprintf(big + n, "X-Long: %0100d\r\n", 7);
	CHECK_RC(parse(&r, big, n), -EMSGSIZE);
	CHECK_EQ(r.status, 431);
	/* exactly max_head bytes is fine, one more is not */
	{
		size_t want = 200, k;

		k = (size_t)sprintf(big, "GET / HTTP/1.1\r\nHost: x\r\nX: ");
		memset(big + k, 'v', want - k - 4);
		memcpy(big + want - 4, "\r\n\r\n", 4);
		zc_http_request_init(&r, NULL, 0, 200);
		CHECK_EQ(zc_http_parse_request(&r, big, want), 200);
		zc_http_request_init(&r, NULL, 0, 199);
		CHECK_RC(zc_http_parse_request(&r, big, want), -EMSGSIZE);
		CHECK_EQ(r.status, 431);
	}
	/* too many header lines */
	n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nHost: x\r\n");
	for (int i = 0; i < 101; i++)
		n += (size_t)sprintf(big + n, "A%d: b\r\n", i);
	n += (size_t)sprintf(big + n, "\r\n");
	CHECK_RC(parse(&r, big, n), -EMSGSIZE);
	CHECK_EQ(r.status, 431);
	free(big);
}

/* Byte by byte, and in every two-piece split: the same result as whole. */
static void pieces(void)
{
	static const char *heads[] = {
		"GET /x HTTP/1.1\r\nHost: a\r\nRange: bytes=1-\r\n\r\n",
		"\r\nHEAD / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\nY: z\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
		"BAD LINE\r\nHost: x\r\n\r\n",
	};

	for (size_t h = 0; h < sizeof(heads) / sizeof(heads[0]); h++) {
		const char *s = heads[h];
		size_t n = strlen(s);
		struct zc_http_request whole, r;
		int want = parse(&whole, s, n), rc = -EAGAIN;

		for (size_t len = 0; len <= n && rc == -EAGAIN; len++) {
			if (len == 0)
				zc_http_request_init(&r, hdrs, 0, 0);
			rc = zc_http_parse_request(&r, s, len);
		}
		if (rc != want || r.status != whole.status)
			H_REPORT("byte by byte %zu: %d/%d, whole %d/%d", h, rc,
				 r.status, want, whole.status);
		for (size_t cut = 0; cut <= n; cut++) {
			zc_http_request_init(&r, hdrs, 0, 0);
			rc = zc_http_parse_request(&r, s, cut);
			if (rc == -EAGAIN)
				rc = zc_http_parse_request(&r, s, n);
			if (rc != want || r.status != whole.status)
				H_REPORT("cut %zu of %zu: %d/%d, whole %d/%d",
					 cut, h, rc, r.status, want,
					 whole.status);
		}
	}
	/* garbage is refused as soon as its first line ends */
	{
		struct zc_http_request r;

		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "\x16\x03\x01\x02\x00\r\n", 7), -EBADMSG);
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "GET / HTTP/1.1\n", 15), -EBADMSG);
		/* and later calls keep saying so */
		CHECK_RC(zc_http_parse_request(&r, "GET / HTTP/1.1\nHost", 19), -EBADMSG);
		/* a byte no request line holds: refused before any line end
		 * (a TLS ClientHello on a plain port gets its 400 at once) */
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "\x16\x03\x01\x02\x00\x01", 6), -EBADMSG);
		CHECK(r.status == 400);
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "GET /a", 6), -EAGAIN);
		CHECK_RC(zc_http_parse_request(&r, "GET /a\x80", 7), -EBADMSG);
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "GET /a\x7f", 7), -EBADMSG);
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "GET /a\t", 7), -EBADMSG);
		/* a CR waits for what follows it; empty lines first are fine */
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "\r\nGET / HTTP/1.1\r", 17), -EAGAIN);
		CHECK_RC(zc_http_parse_request(&r, "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
					       29), 29);
		/* header bytes are checked once the head ends, as before */
		zc_http_request_init(&r, NULL, 0, 0);
		CHECK_RC(zc_http_parse_request(&r, "GET / HTTP/1.1\r\nX: \x80", 20), -EAGAIN);
	}
}

int main(void)
{
	h_init(30);
	good();
	hostile();
	limits();
	pieces();
	return h_result("test_http_parse");
}
