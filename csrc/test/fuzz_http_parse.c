/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the request parser and the path resolver.
 *
 * With libFuzzer:  make fuzz FUZZ_SECONDS=60   (clang -fsanitize=fuzzer,address)
 * Without it (make check): the same checks replay the seed corpus in
 * test/corpus/http_parse/ plus every prefix of each seed, and a bounded
 * run of mutations from a fixed random seed.
 *
 * Besides "no crash, no sanitizer report", each input is checked for
 * properties the server relies on:
 *  - the result is the same whether the bytes come at once or in two
 *    pieces (the resumable scan must not change the answer);
 *  - a complete head is at most max_head bytes, ends in "\r\n\r\n", and
 *    every pointer the parser returns lies inside the input;
 *  - a refusal carries an HTTP status of 400, 414, 431 or 505;
 *  - a resolved path never starts with '/', never has a "." or ".."
 *    segment, and never holds a NUL, a control byte or a backslash.
 */
#define _GNU_SOURCE
#include "zc.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef ZC_FUZZ_REPLAY
static int failures;
#define FAIL(...)                                                            \
	do {                                                                 \
		fprintf(stderr, __VA_ARGS__);                                \
		fputc('\n', stderr);                                         \
		failures++;                                                  \
		return;                                                      \
	} while (0)
#else
#define FAIL(...)                                                            \
	do {                                                                 \
		fprintf(stderr, __VA_ARGS__);                                \
		fputc('\n', stderr);                                         \
		abort();                                                     \
	} while (0)
#endif

static int inside(const char *p, size_t n, const char *buf, size_t len)
{
	return !p || (p >= buf && p + n <= buf + len);
}

static void check_path(const char *t, size_t n)
{
	char out[1024];
	size_t len = 0;
	unsigned flags = 0;
	int rc = zc_http_path_resolve(t, n, out, sizeof(out), &len, &flags);

	if (rc < 0) {
		if (rc != -EINVAL && rc != -ENAMETOOLONG)
			FAIL("path: rc %d", rc);
		return;
	}
	if (len != strlen(out) || (len && out[0] == '/'))
		FAIL("path: bad result \"%s\"", out);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)out[i];
		size_t s = i, e;

		if (c < 0x20 || c == 0x7f || c == '\\')
			FAIL("path: byte %#x in result", c);
		if (i > 0 && out[i - 1] != '/')
			continue;
		for (e = s; e < len && out[e] != '/'; e++)
			;
		if (e == s || (e - s == 1 && out[s] == '.') ||
		    (e - s == 2 && out[s] == '.' && out[s + 1] == '.'))
			FAIL("path: segment \"%.*s\" in \"%s\"", (int)(e - s),
			     out + s, out);
	}
}

static void one(const char *buf, size_t len, size_t cut)
{
	static struct zc_http_header h1[16], h2[16];
	struct zc_http_request a, b;
	int ra, rb;

	zc_http_request_init(&a, h1, 16, 512);
	ra = zc_http_parse_request(&a, buf, len);
	zc_http_request_init(&b, h2, 16, 512);
	rb = zc_http_parse_request(&b, buf, cut < len ? cut : len);
	if (rb == -EAGAIN)
		rb = zc_http_parse_request(&b, buf, len);
	if (ra != rb || a.status != b.status)
		FAIL("whole %d/%d, in two pieces (cut %zu) %d/%d", ra,
		     a.status, cut, rb, b.status);
	if (ra > 0) {
		if ((size_t)ra > len || ra > 512 ||
		    memcmp(buf + ra - 4, "\r\n\r\n", 4) != 0)
			FAIL("head length %d of %zu", ra, len);
		if (a.method != ZC_HTTP_GET && a.method != ZC_HTTP_HEAD &&
		    a.method != ZC_HTTP_OTHER)
			FAIL("method %d", a.method);
		if (a.minor_version != 0 && a.minor_version != 1)
			FAIL("minor %d", a.minor_version);
		if (!inside(a.method_str, a.method_len, buf, (size_t)ra) ||
		    !inside(a.target, a.target_len, buf, (size_t)ra) ||
		    !inside(a.host, a.host_len, buf, (size_t)ra) ||
		    !inside(a.range, a.range_len, buf, (size_t)ra) ||
		    !inside(a.if_none_match, a.if_none_match_len, buf, (size_t)ra) ||
		    !inside(a.if_modified_since, a.if_modified_since_len, buf, (size_t)ra) ||
		    !inside(a.if_range, a.if_range_len, buf, (size_t)ra))
			FAIL("a pointer outside the head");
		if (a.num_headers > 16)
			FAIL("%u headers", a.num_headers);
		for (unsigned i = 0; i < a.num_headers; i++)
			if (!inside(h1[i].name, h1[i].name_len, buf, (size_t)ra) ||
			    !inside(h1[i].value, h1[i].value_len, buf, (size_t)ra) ||
			    h1[i].name_len == 0)
				FAIL("header %u outside the head", i);
		check_path(a.target, a.target_len);
	} else if (ra == -EBADMSG || ra == -EMSGSIZE) {
		if (a.status != 400 && a.status != 414 && a.status != 431 &&
		    a.status != 505)
			FAIL("refused with status %d", a.status);
	} else if (ra != -EAGAIN) {
		FAIL("rc %d", ra);
	} else if (len >= 512) {
		FAIL("-EAGAIN with %zu bytes (limit 512)", len);
	}
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	/* a copy of exactly size bytes: ASan sees any read past the end */
	char *buf = malloc(size ? size : 1);
	size_t cut = size ? data[0] % (size + 1) : 0;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	one(buf, size, cut);
	check_path(buf, size);
	free(buf);
	return 0;
}

#ifdef ZC_FUZZ_REPLAY
/* ---- replay without libFuzzer ------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static const char *tokens[] = {
	"GET ", "HEAD ", "POST ", " HTTP/1.1", " HTTP/1.0", "\r\n", "\n",
	"\r", "\r\n\r\n", "Host: x", "Range: bytes=0-1", "Content-Length: 1",
	"Transfer-Encoding: chunked", ": ", " ", "\t", "/", "%2e", "%2f",
	"..", "%00", "%c0%ae", "?", "#", "http://", "\0", "\x7f", "\xff",
};

static void mutate_run(const unsigned char *seed, size_t n, unsigned rounds)
{
	unsigned char buf[640];

	for (unsigned r = 0; r < rounds; r++) {
		size_t len = n < sizeof(buf) ? n : sizeof(buf);
		unsigned edits = 1 + next() % 4;

		memcpy(buf, seed, len);
		for (unsigned e = 0; e < edits; e++) {
			size_t at = len ? next() % len : 0;

			switch (next() % 4) {
			case 0: /* flip a byte */
				if (len)
					buf[at] = (unsigned char)next();
				break;
			case 1: /* delete a run */
				if (len) {
					size_t k = 1 + next() % 8;

					if (k > len - at)
						k = len - at;
					memmove(buf + at, buf + at + k, len - at - k);
					len -= k;
				}
				break;
			default: { /* insert a token */
				const char *t = tokens[next() % (sizeof(tokens) / sizeof(tokens[0]))];
				size_t tl = strlen(t) ? strlen(t) : 1;

				if (len + tl <= sizeof(buf)) {
					memmove(buf + at + tl, buf + at, len - at);
					memcpy(buf + at, t, tl);
					len += tl;
				}
			}
			}
		}
		LLVMFuzzerTestOneInput(buf, len);
	}
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "test/corpus/http_parse";
	unsigned rounds = argc > 2 ? (unsigned)atoi(argv[2]) : 20000;
	struct dirent *d;
	DIR *dp = opendir(dir);
	unsigned files = 0;

	if (!dp) {
		fprintf(stderr, "fuzz_http_parse: no corpus at %s\n", dir);
		return 77;
	}
	while ((d = readdir(dp))) {
		unsigned char data[4096];
		char path[1024];
		size_t n;
		FILE *f;

		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		f = fopen(path, "rb");
		if (!f)
			continue;
		n = fread(data, 1, sizeof(data), f);
		fclose(f);
		files++;
		for (size_t k = 0; k <= n; k++) /* every prefix */
			LLVMFuzzerTestOneInput(data, k);
		mutate_run(data, n, rounds);
	}
	closedir(dp);
	fprintf(stderr, "fuzz_http_parse: %u corpus files replayed, %u mutations each\n",
		files, rounds);
	if (failures)
		return 1;
	return files ? 0 : 77;
}
#endif
