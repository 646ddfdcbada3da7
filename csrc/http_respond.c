/* SPDX-License-Identifier: MIT */
/* Pieces of HTTP responses: types, dates, validators, ranges, listings. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <dirent.h> /* DT_* */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- Content-Type ------------------------------------------------------- */

static const struct {
	const char *ext;
	const char *type;
} mime[] = {
	{ "html", "text/html" },
	{ "htm", "text/html" },
	{ "css", "text/css" },
	{ "js", "text/javascript" },
	{ "mjs", "text/javascript" },
	{ "json", "application/json" },
	{ "map", "application/json" },
	{ "txt", "text/plain" },
	{ "md", "text/markdown" },
	{ "csv", "text/csv" },
	{ "xml", "application/xml" },
	{ "svg", "image/svg+xml" },
	{ "png", "image/png" },
	{ "jpg", "image/jpeg" },
	{ "jpeg", "image/jpeg" },
	{ "gif", "image/gif" },
	{ "webp", "image/webp" },
	{ "avif", "image/avif" },
	{ "ico", "image/vnd.microsoft.icon" },
	{ "bmp", "image/bmp" },
	{ "pdf", "application/pdf" },
	{ "wasm", "application/wasm" },
	{ "zip", "application/zip" },
	{ "gz", "application/gzip" },
	{ "tgz", "application/gzip" },
	{ "bz2", "application/x-bzip2" },
	{ "xz", "application/x-xz" },
	{ "zst", "application/zstd" },
	{ "tar", "application/x-tar" },
	{ "whl", "application/zip" },
	{ "mp4", "video/mp4" },
	{ "webm", "video/webm" },
	{ "mp3", "audio/mpeg" },
	{ "ogg", "audio/ogg" },
	{ "wav", "audio/wav" },
	{ "flac", "audio/flac" },
	{ "woff", "font/woff" },
	{ "woff2", "font/woff2" },
	{ "ttf", "font/ttf" },
	{ "otf", "font/otf" },
	{ "py", "text/x-python" },
	{ "c", "text/x-c" },
	{ "h", "text/x-c" },
	{ "sh", "application/x-sh" },
};

const char *zc__mime_type(const char *name, size_t len)
{
	size_t i = len;

	while (i > 0 && name[i - 1] != '.' && name[i - 1] != '/')
		i--;
	if (i == 0 || name[i - 1] != '.' || len - i > 8)
		return "application/octet-stream";
	for (size_t k = 0; k < sizeof(mime) / sizeof(mime[0]); k++) {
		size_t el = strlen(mime[k].ext);

		if (el == len - i && strncasecmp(name + i, mime[k].ext, el) == 0)
			return mime[k].type;
	}
	return "application/octet-stream";
}

/* ---- dates --------------------------------------------------------------- */

static const char wday_names[7][4] = { "Sun", "Mon", "Tue", "Wed",
				       "Thu", "Fri", "Sat" };
static const char month_names[12][4] = { "Jan", "Feb", "Mar", "Apr",
					  "May", "Jun", "Jul", "Aug",
					  "Sep", "Oct", "Nov", "Dec" };

static void put2(char *p, int v)
{
	p[0] = (char)('0' + v / 10 % 10);
	p[1] = (char)('0' + v % 10);
}

static int gm(int64_t t, struct tm *tm)
{
	time_t tt = (time_t)t;

	if (!gmtime_r(&tt, tm) || tm->tm_year + 1900 > 9999 ||
	    tm->tm_year + 1900 < 0) {
		memset(tm, 0, sizeof(*tm));
		tm->tm_mday = 1;
		tm->tm_year = 70;
		tm->tm_wday = 4; /* 1970-01-01, a Thursday */
		return -1;
	}
	return 0;
}

void zc__http_date(char out[ZC__DATE_LEN + 1], int64_t t)
{
	struct tm tm;
	int y;

	gm(t, &tm);
	y = tm.tm_year + 1900;
	memcpy(out, wday_names[tm.tm_wday], 3);
	out[3] = ',';
	out[4] = ' ';
	put2(out + 5, tm.tm_mday);
	out[7] = ' ';
	memcpy(out + 8, month_names[tm.tm_mon], 3);
	out[11] = ' ';
	put2(out + 12, y / 100);
	put2(out + 14, y % 100);
	out[16] = ' ';
	put2(out + 17, tm.tm_hour);
	out[19] = ':';
	put2(out + 20, tm.tm_min);
	out[22] = ':';
	put2(out + 23, tm.tm_sec);
	memcpy(out + 25, " GMT", 5);
}

void zc__clf_date(char out[ZC__CLF_DATE_LEN + 1], int64_t t)
{
	struct tm tm;
	int y;

	gm(t, &tm);
	y = tm.tm_year + 1900;
	put2(out, tm.tm_mday);
	out[2] = '/';
	memcpy(out + 3, month_names[tm.tm_mon], 3);
	out[6] = '/';
	put2(out + 7, y / 100);
	put2(out + 9, y % 100);
	out[11] = ':';
	put2(out + 12, tm.tm_hour);
	out[14] = ':';
	put2(out + 15, tm.tm_min);
	out[17] = ':';
	put2(out + 18, tm.tm_sec);
	memcpy(out + 20, " +0000", 7);
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; m 1-12). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int digits(const char *s, int n)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

int zc__http_parse_date(const char *s, size_t n, int64_t *t)
{
	int day, mon = -1, year, hh, mm, ss, wd = -1;

	if (n != ZC__DATE_LEN || s[3] != ',' || s[4] != ' ' || s[7] != ' ' ||
	    s[11] != ' ' || s[16] != ' ' || s[19] != ':' || s[22] != ':' ||
	    memcmp(s + 25, " GMT", 4) != 0)
		return -EINVAL;
	for (int i = 0; i < 7; i++)
		if (memcmp(s, wday_names[i], 3) == 0)
			wd = i;
	for (int i = 0; i < 12; i++)
		if (memcmp(s + 8, month_names[i], 3) == 0)
			mon = i + 1;
	day = digits(s + 5, 2);
	year = digits(s + 12, 4);
	hh = digits(s + 17, 2);
	mm = digits(s + 20, 2);
	ss = digits(s + 23, 2);
	if (wd < 0 || mon < 0 || day < 1 || day > 31 || year < 0 || hh < 0 ||
	    hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 60)
		return -EINVAL;
	*t = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
	return 0;
}

/* ---- validators ------------------------------------------------------------ */

static size_t put_hex(char *p, uint64_t v)
{
	char tmp[16];
	size_t n = 0;

	do {
		tmp[n++] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	for (size_t i = 0; i < n; i++)
		p[i] = tmp[n - 1 - i];
	return n;
}

size_t zc__etag(char out[ZC__ETAG_MAX], const struct zc__file *f)
{
	uint64_t ns = (uint64_t)f->mtime * 1000000000u + f->mtime_nsec;
	size_t n = 0;

	out[n++] = '"';
	n += put_hex(out + n, f->ino);
	out[n++] = '-';
	n += put_hex(out + n, f->size);
	out[n++] = '-';
	n += put_hex(out + n, ns);
	out[n++] = '"';
	return n;
}

int zc__etag_list_match(const char *v, size_t n, const char *etag, size_t elen)
{
	size_t i = 0;

	while (i < n && (v[i] == ' ' || v[i] == '\t'))
		i++;
	if (i < n && v[i] == '*') {
		for (i++; i < n; i++)
			if (v[i] != ' ' && v[i] != '\t')
				return 0; /* "*" must stand alone */
		return 1;
	}
	while (i < n) {
		size_t a;

		while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
			i++;
		if (i == n)
			break;
		if (n - i >= 2 && v[i] == 'W' && v[i + 1] == '/')
			i += 2; /* weak comparison (RFC 9110 13.1.2) */
		if (i >= n || v[i] != '"')
			return 0; /* malformed: no match */
		a = i++;
		while (i < n && v[i] != '"')
			i++;
		if (i == n)
			return 0;
		i++;
		if (i - a == elen && memcmp(v + a, etag, elen) == 0)
			return 1;
	}
	return 0;
}

/* ---- ranges ---------------------------------------------------------------- */

/* Digits as a saturating count; *ok 0 when there are none. */
static uint64_t number(const char *v, size_t n, size_t *i, int *ok)
{
	uint64_t x = 0;

	*ok = 0;
	while (*i < n && v[*i] >= '0' && v[*i] <= '9') {
		unsigned d = (unsigned)(v[*i] - '0');

		x = x > (UINT64_MAX - d) / 10 ? UINT64_MAX : x * 10 + d;
		(*i)++;
		*ok = 1;
	}
	return x;
}

int zc__parse_range(const char *v, size_t n, uint64_t size, uint64_t *first,
		    uint64_t *len)
{
	size_t i = 0;
	uint64_t a, b = 0;
	int has_a, has_b = 0;

	if (n < 6 || strncasecmp(v, "bytes", 5) != 0)
		return ZC__RANGE_NONE;
	i = 5;
	while (i < n && (v[i] == ' ' || v[i] == '\t'))
		i++;
	if (i == n || v[i] != '=')
		return ZC__RANGE_NONE;
	i++;
	if (memchr(v + i, ',', n - i))
		return ZC__RANGE_NONE; /* several ranges: the whole file */
	while (i < n && (v[i] == ' ' || v[i] == '\t'))
		i++;
	a = number(v, n, &i, &has_a);
	if (i == n || v[i] != '-')
		return ZC__RANGE_NONE;
	i++;
	b = number(v, n, &i, &has_b);
	while (i < n && (v[i] == ' ' || v[i] == '\t'))
		i++;
	if (i != n || (!has_a && !has_b) || (has_a && has_b && b < a))
		return ZC__RANGE_NONE;
	if (!has_a) { /* suffix: the last b bytes */
		if (b == 0 || size == 0)
			return ZC__RANGE_UNSAT;
		*len = b < size ? b : size;
		*first = size - *len;
		return ZC__RANGE_ONE;
	}
	if (a >= size)
		return ZC__RANGE_UNSAT;
	if (!has_b || b >= size)
		b = size - 1;
	*first = a;
	*len = b - a + 1;
	return ZC__RANGE_ONE;
}

/* ---- directory listing ----------------------------------------------------- */

struct writer {
	int fd;
	int err;
	size_t len;
	uint64_t total;
	char buf[4096];
};

static void w_flush(struct writer *w)
{
	size_t off = 0;

	while (!w->err && off < w->len) {
		ssize_t n = write(w->fd, w->buf + off, w->len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			w->err = n < 0 ? -errno : -EIO;
			break;
		}
		off += (size_t)n;
	}
	w->total += w->len;
	w->len = 0;
}

static void w_put(struct writer *w, const char *s, size_t n)
{
	while (n) {
		size_t room = sizeof(w->buf) - w->len, k = n < room ? n : room;

		memcpy(w->buf + w->len, s, k);
		w->len += k;
		s += k;
		n -= k;
		if (w->len == sizeof(w->buf))
			w_flush(w);
	}
}

#define W_LIT(w, lit) w_put((w), lit, sizeof(lit) - 1)

static void w_html(struct writer *w, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		switch (s[i]) {
		case '&': W_LIT(w, "&amp;"); break;
		case '<': W_LIT(w, "&lt;"); break;
		case '>': W_LIT(w, "&gt;"); break;
		case '"': W_LIT(w, "&quot;"); break;
		case '\'': W_LIT(w, "&#x27;"); break;
		default: w_put(w, s + i, 1);
		}
	}
}

/* Everything but unreserved characters percent-encoded: safe in an href. */
static void w_url(struct writer *w, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char e[3];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		    c == '_' || c == '~') {
			w_put(w, s + i, 1);
			continue;
		}
		e[0] = '%';
		e[1] = "0123456789ABCDEF"[c >> 4];
		e[2] = "0123456789ABCDEF"[c & 15];
		w_put(w, e, 3);
	}
}

/* A name for people: itself (escaped) when it is UTF-8, else its %-form. */
static void w_name(struct writer *w, const char *s, size_t n)
{
	if (zc__utf8_ok((const unsigned char *)s, n))
		w_html(w, s, n);
	else
		w_url(w, s, n);
}

struct zc__dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

int zc__listing(int dir_fd, const char *path, size_t len,
		unsigned max_entries, int *out_fd, uint64_t *size)
{
	struct writer w;
	char ents[4096];
	unsigned count = 0;
	int dfd, rc = 0;

	*out_fd = -1;
	*size = 0;
	/* an O_PATH directory fd can be the dirfd of an open */
	dfd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	w.fd = memfd_create("zc-listing", MFD_CLOEXEC);
	if (w.fd < 0) {
		rc = -errno;
		close(dfd);
		return rc;
	}
	w.err = 0;
	w.len = 0;
	w.total = 0;
	W_LIT(&w, "<!DOCTYPE HTML>\n<html lang=\"en\">\n<head>\n"
		  "<meta charset=\"utf-8\">\n<title>Directory listing for /");
	w_name(&w, path, len);
	if (len)
		W_LIT(&w, "/");
	W_LIT(&w, "</title>\n</head>\n<body>\n<h1>Directory listing for /");
	w_name(&w, path, len);
	if (len)
		W_LIT(&w, "/");
	W_LIT(&w, "</h1>\n<hr>\n<ul>\n");
	for (;;) {
		long n = syscall(SYS_getdents64, dfd, ents, sizeof(ents));

		if (n < 0) {
			rc = -errno;
			break;
		}
		if (n == 0)
			break;
		for (long off = 0; off < n && count < max_entries;) {
			struct zc__dirent64 *d =
				(struct zc__dirent64 *)(void *)(ents + off);
			size_t nl = strlen(d->d_name);
			int dir = d->d_type == DT_DIR;

			off += d->d_reclen;
			if ((nl == 1 && d->d_name[0] == '.') ||
			    (nl == 2 && d->d_name[0] == '.' && d->d_name[1] == '.'))
				continue;
			if (d->d_type == DT_UNKNOWN || d->d_type == DT_LNK) {
				struct stat st;

				dir = fstatat(dfd, d->d_name, &st, 0) == 0 &&
				      S_ISDIR(st.st_mode);
			}
			W_LIT(&w, "<li><a href=\"");
			w_url(&w, d->d_name, nl);
			if (dir)
				W_LIT(&w, "/");
			W_LIT(&w, "\">");
			w_name(&w, d->d_name, nl);
			if (dir)
				W_LIT(&w, "/");
			W_LIT(&w, "</a></li>\n");
			count++;
		}
		if (count >= max_entries) {
			W_LIT(&w, "<li>(more entries not shown)</li>\n");
			break;
		}
	}
	W_LIT(&w, "</ul>\n<hr>\n</body>\n</html>\n");
	w_flush(&w);
	close(dfd);
	if (!rc)
		rc = w.err;
	if (rc < 0) {
		close(w.fd);
		return rc;
	}
	*out_fd = w.fd;
	*size = w.total;
	return 0;
}
