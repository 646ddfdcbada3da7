/* SPDX-License-Identifier: MIT */
/* The open-file cache: fd + stat per path, bounded, revalidated by interval. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void zc__file_from_stat(struct zc__file *f, int fd, const struct stat *st)
{
	f->fd = fd;
	f->mode = st->st_mode;
	f->size = st->st_size > 0 ? (uint64_t)st->st_size : 0;
	f->mtime = st->st_mtim.tv_sec;
	f->mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
	f->ino = st->st_ino;
	f->dev = st->st_dev;
	f->body = NULL;
}

static unsigned nbuckets(unsigned n)
{
	unsigned b = 1;

	while (b < 2 * n && b < (1u << 30))
		b <<= 1;
	return b;
}

size_t zc__fcache_mem(unsigned n, size_t body_max)
{
	if (n == 0)
		return 0;
	return (size_t)n * sizeof(struct zc__fentry) +
	       (size_t)nbuckets(n) * sizeof(struct zc__fentry *) +
	       (size_t)n * body_max;
}

void zc__fcache_init(struct zc__fcache *c, void *mem, unsigned n, int root_fd,
		     unsigned open_flags, int valid_ms, size_t body_max)
{
	char *p = mem;

	memset(c, 0, sizeof(*c));
	zc__queue_init(&c->lru);
	zc__queue_init(&c->free);
	c->root_fd = root_fd;
	c->open_flags = open_flags;
	c->valid_ms = valid_ms;
	if (n == 0 || valid_ms <= 0 || !mem)
		return;
	c->n = n;
	c->entries = (struct zc__fentry *)(void *)p;
	p += (size_t)n * sizeof(struct zc__fentry);
	c->buckets = (struct zc__fentry **)(void *)p;
	c->mask = nbuckets(n) - 1;
	p += (size_t)nbuckets(n) * sizeof(struct zc__fentry *);
	memset(c->buckets, 0, (c->mask + 1) * sizeof(*c->buckets));
	if (body_max) {
		c->bodies = (unsigned char *)p;
		c->body_max = body_max;
	}
	for (unsigned i = n; i-- > 0;) {
		struct zc__fentry *e = &c->entries[i];

		e->f.fd = -1;
		e->refs = 0;
		e->stale = 0;
		e->hnext = NULL;
		zc__queue_insert_head(&c->free, &e->lru);
	}
}

static uint32_t hash_key(const char *s, size_t n)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static void unhash(struct zc__fcache *c, struct zc__fentry *e)
{
	struct zc__fentry **pp = &c->buckets[e->hash & c->mask];

	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	e->hnext = NULL;
}

/* An entry out of use and out of the table: close it, back to free. */
static void release(struct zc__fcache *c, struct zc__fentry *e)
{
	if (e->f.fd >= 0)
		close(e->f.fd);
	e->f.fd = -1;
	e->stale = 0;
	zc__queue_remove(&e->lru);
	zc__queue_insert_head(&c->free, &e->lru);
}

/* Take an entry out of the table; closed now if idle, else at its put. */
static void drop(struct zc__fcache *c, struct zc__fentry *e)
{
	unhash(c, e);
	if (e->refs == 0) {
		release(c, e);
		return;
	}
	e->stale = 1;
}

static struct zc__fentry *find(struct zc__fcache *c, const char *path,
			       size_t len, uint32_t h)
{
	struct zc__fentry *e = c->buckets[h & c->mask];

	for (; e; e = e->hnext)
		if (e->hash == h && e->key_len == len &&
		    memcmp(e->key, path, len) == 0)
			return e;
	return NULL;
}

/* Is the cached file still what the path names?  Refresh its stat if so. */
static int still_valid(struct zc__fcache *c, struct zc__fentry *e)
{
	struct stat st;

	if (fstatat(c->root_fd, e->key_len ? e->key : ".", &st, 0) < 0)
		return 0;
	if (st.st_ino != e->f.ino || st.st_dev != e->f.dev ||
	    (st.st_mode & S_IFMT) != (e->f.mode & S_IFMT))
		return 0; /* replaced (renamed over), or gone */
	if ((uint64_t)st.st_size != e->f.size ||
	    st.st_mtim.tv_sec != e->f.mtime ||
	    (uint32_t)st.st_mtim.tv_nsec != e->f.mtime_nsec) {
		if (e->f.body)
			return 0; /* the copy is old: read it again */
		e->f.size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
		e->f.mtime = st.st_mtim.tv_sec;
		e->f.mtime_nsec = (uint32_t)st.st_mtim.tv_nsec;
	}
	return 1;
}

/* A copy of a small regular file, kept only if it did not change meanwhile. */
static void load_body(struct zc__fcache *c, struct zc__fentry *e)
{
	unsigned char *slot;
	struct stat st;
	ssize_t n;

	if (!c->bodies || !S_ISREG(e->f.mode) || e->f.size > c->body_max)
		return;
	slot = c->bodies + (size_t)(e - c->entries) * c->body_max;
	/* one byte more than expected shows a file that grew */
	n = pread(e->f.fd, slot, (size_t)e->f.size + (e->f.size < c->body_max),
		  0);
	if (n < 0 || (uint64_t)n != e->f.size || fstat(e->f.fd, &st) < 0 ||
	    (uint64_t)st.st_size != e->f.size || st.st_mtim.tv_sec != e->f.mtime ||
	    (uint32_t)st.st_mtim.tv_nsec != e->f.mtime_nsec)
		return;
	e->f.body = slot;
}

int zc__fcache_get(struct zc__fcache *c, const char *path, size_t len,
		   int64_t now_ms, struct zc__fentry **out, struct zc__file *own)
{
	struct zc__fentry *e = NULL;
	struct stat st;
	uint32_t h = 0;
	int fd, rc;

	*out = NULL;
	if (c->n && len <= ZC__CACHE_KEY_MAX) {
		h = hash_key(path, len);
		e = find(c, path, len, h);
	}
	if (e) {
		if (now_ms - e->checked_ms < c->valid_ms || still_valid(c, e)) {
			if (now_ms - e->checked_ms >= c->valid_ms)
				e->checked_ms = now_ms;
			if (e->refs++ == 0)
				zc__queue_remove(&e->lru);
			c->hits++;
			*out = e;
			return 0;
		}
		c->stale++;
		drop(c, e);
	}
	/* open first: a path that fails evicts nothing */
	rc = zc_open_beneath(c->root_fd, path, c->open_flags, &fd, &st);
	if (rc < 0)
		return rc;
	c->misses++;
	e = NULL;
	if (c->n && len <= ZC__CACHE_KEY_MAX) {
		if (!zc__queue_empty(&c->free)) {
			e = zc__queue_data(zc__queue_head(&c->free),
					   struct zc__fentry, lru);
		} else if (!zc__queue_empty(&c->lru)) {
			e = zc__queue_data(zc__queue_head(&c->lru),
					   struct zc__fentry, lru);
			unhash(c, e);
			release(c, e); /* closed, now on the free list */
		}
	}
	if (!e) { /* not cacheable, or every entry in use */
		zc__file_from_stat(own, fd, &st);
		return 0;
	}
	zc__queue_remove(&e->lru);
	zc__file_from_stat(&e->f, fd, &st);
	e->checked_ms = now_ms;
	e->hash = h;
	e->refs = 1;
	e->stale = 0;
	e->key_len = (uint16_t)len;
	memcpy(e->key, path, len);
	e->hnext = c->buckets[h & c->mask];
	c->buckets[h & c->mask] = e;
	load_body(c, e);
	*out = e;
	return 0;
}

void zc__fcache_put(struct zc__fcache *c, struct zc__fentry *e)
{
	if (--e->refs > 0)
		return;
	if (e->stale) {
		release(c, e);
		return;
	}
	zc__queue_insert_tail(&c->lru, &e->lru);
}

unsigned zc__fcache_trim(struct zc__fcache *c, unsigned max)
{
	unsigned done = 0;

	while (done < max && !zc__queue_empty(&c->lru)) {
		struct zc__fentry *e = zc__queue_data(zc__queue_head(&c->lru),
						      struct zc__fentry, lru);

		unhash(c, e);
		release(c, e);
		done++;
	}
	return done;
}

void zc__fcache_destroy(struct zc__fcache *c)
{
	zc__fcache_trim(c, ~0u);
	/* entries still in use (a caller bug) are closed too */
	for (unsigned i = 0; c->entries && i < c->n; i++) {
		struct zc__fentry *e = &c->entries[i];

		if (zc__queue_linked(&e->lru) || !e->refs)
			continue;
		if (e->f.fd >= 0)
			close(e->f.fd);
		e->f.fd = -1;
		e->refs = 0;
	}
	c->n = 0;
}
