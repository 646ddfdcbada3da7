/* SPDX-License-Identifier: MIT */
/* The open-file cache: hits, revalidation, replacement, bounds, no leaks. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"
#include "zc_internal.h"

#include <dirent.h>
#include <ftw.h>

static char top[64];
static int root_fd = -1;

static int rm_one(const char *p, const struct stat *st, int type,
		  struct FTW *f)
{
	(void)st, (void)type, (void)f;
	return remove(p);
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

static void put(const char *rel, const char *text)
{
	char p[256], tmp[256];
	int fd;

	/* written aside and renamed over: a new inode, as editors do */
	snprintf(p, sizeof(p), "%s/%s", top, rel);
	snprintf(tmp, sizeof(tmp), "%s/.tmp", top);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	h_write_all(fd, text, strlen(text));
	close(fd);
	rename(tmp, p);
}

static void rewrite_in_place(const char *rel, const char *text)
{
	char p[256];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", top, rel);
	fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC);
	if (fd < 0)
		return;
	h_write_all(fd, text, strlen(text));
	close(fd);
}

static void body_is(const struct zc__file *f, const char *text)
{
	char buf[256];
	ssize_t n;

	if (f->body) {
		CHECK_MEM(f->body, f->size, text, strlen(text));
		return;
	}
	n = pread(f->fd, buf, sizeof(buf), 0);
	CHECK_MEM(buf, n < 0 ? 0 : (size_t)n, text, strlen(text));
}

static void *mem_for(unsigned n, size_t body_max)
{
	return calloc(1, zc__fcache_mem(n, body_max) + 1);
}

#define GET(c, path, now, e, own) \
	zc__fcache_get((c), (path), strlen(path), (now), (e), (own))

static void basics(size_t body_max)
{
	struct zc__fcache c;
	struct zc__fentry *e, *e2;
	struct zc__file own;
	void *mem = mem_for(4, body_max);
	int64_t t = 1000;

	REQUIRE(mem);
	h_ran++;
	put("a.txt", "alpha");
	put("b.txt", "bravo");
	zc__fcache_init(&c, mem, 4, root_fd, 0, 1000, body_max);
	/* miss, then hits on the same entry */
	CHECK_RC(GET(&c, "a.txt", t, &e, &own), 0);
	REQUIRE(e);
	CHECK_EQ(e->f.size, 5);
	CHECK(S_ISREG(e->f.mode));
	CHECK_EQ(!!e->f.body, !!body_max);
	body_is(&e->f, "alpha");
	CHECK_RC(GET(&c, "a.txt", t + 10, &e2, &own), 0);
	CHECK(e2 == e);
	CHECK_EQ(e->refs, 2);
	zc__fcache_put(&c, e2);
	zc__fcache_put(&c, e);
	CHECK_EQ(c.hits, 1);
	CHECK_EQ(c.misses, 1);
	/* a failure is not cached and evicts nothing */
	CHECK_RC(GET(&c, "missing", t, &e, &own), -ENOENT);
	CHECK(e == NULL);
	CHECK_RC(GET(&c, "a.txt", t, &e, &own), 0);
	CHECK_EQ(c.hits, 2);
	zc__fcache_put(&c, e);

	/* replaced by rename: served as cached until the interval passes */
	put("a.txt", "ALPHA-2");
	CHECK_RC(GET(&c, "a.txt", t + 999, &e, &own), 0);
	body_is(&e->f, "alpha");
	/* e stays in use across the revalidation that drops it */
	CHECK_RC(GET(&c, "a.txt", t + 1000, &e2, &own), 0);
	CHECK(e2 != e);
	CHECK_EQ(c.stale, 1);
	body_is(&e2->f, "ALPHA-2");
	body_is(&e->f, "alpha"); /* the old one still reads the old inode */
	zc__fcache_put(&c, e);	 /* closed now: it was dropped */
	zc__fcache_put(&c, e2);

	/* modified in place: same inode; size and mtime refreshed */
	t += 5000;
	CHECK_RC(GET(&c, "b.txt", t, &e, &own), 0);
	zc__fcache_put(&c, e);
	rewrite_in_place("b.txt", "bravo-bravo");
	CHECK_RC(GET(&c, "b.txt", t + 2000, &e, &own), 0);
	CHECK_EQ(e->f.size, 11);
	body_is(&e->f, "bravo-bravo");
	zc__fcache_put(&c, e);

	/* removed: the next revalidation misses and reports ENOENT */
	t += 5000;
	CHECK_RC(GET(&c, "b.txt", t, &e, &own), 0);
	zc__fcache_put(&c, e);
	{
		char p[256];

		snprintf(p, sizeof(p), "%s/b.txt", top);
		unlink(p);
	}
	CHECK_RC(GET(&c, "b.txt", t + 1500, &e, &own), -ENOENT);
	zc__fcache_destroy(&c);
	free(mem);
}

static void bounds(void)
{
	struct zc__fcache c;
	struct zc__fentry *e[4], *x;
	struct zc__file own;
	void *mem = mem_for(3, 0);
	char name[32], longname[ZC__CACHE_KEY_MAX + 8];

	REQUIRE(mem);
	h_ran++;
	for (int i = 0; i < 4; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		put(name, name);
	}
	zc__fcache_init(&c, mem, 3, root_fd, 0, 1000, 0);
	/* three in use fill the cache: the fourth comes uncached, in own */
	for (int i = 0; i < 3; i++) {
		snprintf(name, sizeof(name), "f%d", i);
		CHECK_RC(GET(&c, name, 0, &e[i], &own), 0);
		CHECK(e[i] != NULL);
	}
	own.fd = -1;
	CHECK_RC(GET(&c, "f3", 0, &x, &own), 0);
	CHECK(x == NULL);
	CHECK(own.fd >= 0);
	CHECK_EQ(own.size, 2);
	close(own.fd);
	/* released, the least recently used goes first */
	zc__fcache_put(&c, e[1]);
	zc__fcache_put(&c, e[0]);
	zc__fcache_put(&c, e[2]);
	CHECK_RC(GET(&c, "f3", 0, &x, &own), 0);
	CHECK(x == e[1]); /* f1's slot, released first */
	zc__fcache_put(&c, x);
	CHECK_RC(GET(&c, "f0", 0, &x, &own), 0);
	CHECK(x == e[0]); /* still cached */
	zc__fcache_put(&c, x);
	CHECK_EQ(c.hits, 1);
	/* a path too long to be a key is opened each time */
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CHECK_RC(GET(&c, longname, 0, &x, &own), -ENOENT);
	/* trim closes idle entries only */
	CHECK_RC(GET(&c, "f0", 0, &x, &own), 0);
	CHECK_EQ(zc__fcache_trim(&c, 10), 2);
	CHECK_EQ(x->f.fd >= 0, 1);
	zc__fcache_put(&c, x);
	CHECK_EQ(zc__fcache_trim(&c, 10), 1);
	zc__fcache_destroy(&c);
	free(mem);

	/* a cache of 0 entries (or interval 0) opens everything uncached */
	zc__fcache_init(&c, NULL, 0, root_fd, 0, 1000, 0);
	own.fd = -1;
	CHECK_RC(GET(&c, "f0", 0, &x, &own), 0);
	CHECK(x == NULL && own.fd >= 0);
	close(own.fd);
	zc__fcache_destroy(&c);
}

/* A small copy is dropped when its file changes, even in place. */
static void small_copies(void)
{
	struct zc__fcache c;
	struct zc__fentry *e;
	struct zc__file own;
	void *mem = mem_for(2, 8);

	REQUIRE(mem);
	h_ran++;
	put("s.txt", "12345678");
	put("big.txt", "123456789");
	zc__fcache_init(&c, mem, 2, root_fd, 0, 1000, 8);
	CHECK_RC(GET(&c, "s.txt", 0, &e, &own), 0);
	CHECK(e->f.body != NULL); /* exactly body_max: kept */
	zc__fcache_put(&c, e);
	CHECK_RC(GET(&c, "big.txt", 0, &e, &own), 0);
	CHECK(e->f.body == NULL); /* one byte more: sendfile */
	zc__fcache_put(&c, e);
	rewrite_in_place("s.txt", "abcdefgh");
	CHECK_RC(GET(&c, "s.txt", 5000, &e, &own), 0);
	body_is(&e->f, "abcdefgh");
	zc__fcache_put(&c, e);
	zc__fcache_destroy(&c);
	free(mem);
}

int main(void)
{
	char p[128];
	int before;

	h_init(30);
	strcpy(top, "/tmp/zc-cache-XXXXXX");
	if (!mkdtemp(top))
		return 77;
	snprintf(p, sizeof(p), "%s", top);
	root_fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
	before = count_fds();
	basics(0);
	basics(64);
	bounds();
	small_copies();
	CHECK_EQ(count_fds(), before);
	close(root_fd);
	nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return h_result("test_file_cache");
}
