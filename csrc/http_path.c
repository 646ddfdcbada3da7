/* SPDX-License-Identifier: MIT */
/* Request targets to paths under a root, and opening them without escaping. */
#define _GNU_SOURCE
#include "zc.h"
#include "zc_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- target -> relative path ------------------------------------------- */

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Well-formed UTF-8 (RFC 3629): no overlong forms, surrogates or > U+10FFFF. */
int zc__utf8_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = s[i];
		size_t k;
		unsigned lo = 0x80, hi = 0xbf;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			if (c == 0xe0)
				lo = 0xa0; /* overlong */
			else if (c == 0xed)
				hi = 0x9f; /* surrogates */
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			if (c == 0xf0)
				lo = 0x90; /* overlong */
			else if (c == 0xf4)
				hi = 0x8f; /* above U+10FFFF */
		} else {
			return 0; /* 0x80-0xc1 (overlong 2-byte), 0xf5-0xff */
		}
		if (n - i <= k)
			return 0;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (size_t j = 2; j <= k; j++)
			if (s[i + j] < 0x80 || s[i + j] > 0xbf)
				return 0;
		i += k + 1;
	}
	return 1;
}

/* Where the path of an origin-form or http(s) absolute-form target starts. */
static int path_start(const char *t, size_t n, size_t *at)
{
	static const char *const schemes[] = { "http://", "https://" };

	if (n > 0 && t[0] == '/') {
		*at = 0;
		return 0;
	}
	for (size_t s = 0; s < 2; s++) {
		size_t sl = strlen(schemes[s]), i;

		if (n < sl || strncasecmp(t, schemes[s], sl) != 0)
			continue;
		for (i = sl; i < n && t[i] != '/' && t[i] != '?'; i++)
			;
		if (i == sl)
			return -EINVAL; /* no authority */
		*at = i;	    /* "http://host" alone means "/" */
		return 0;
	}
	return -EINVAL;
}

int zc_http_path_resolve(const char *target, size_t target_len, char *out,
			 size_t out_size, size_t *out_len, unsigned *out_flags)
{
	size_t at, end, n = 0, r, w = 0;
	unsigned flags = 0;
	int rc;

	*out_len = 0;
	*out_flags = 0;
	rc = path_start(target, target_len, &at);
	if (rc < 0)
		return rc;
	for (end = at; end < target_len && target[end] != '?'; end++)
		if (target[end] == '#')
			return -EINVAL;
	for (size_t i = end; i < target_len; i++) {
		unsigned char c = (unsigned char)target[i];

		if (c == '#' || c <= 0x20 || c >= 0x7f)
			return -EINVAL;
	}
	/* decode [at, end) into out (the result only gets shorter later) */
	for (size_t i = at; i < end; i++) {
		unsigned char c = (unsigned char)target[i];

		if (c <= 0x20 || c >= 0x7f)
			return -EINVAL;
		if (c == '%') {
			int hi, lo;

			if (end - i < 3)
				return -EINVAL;
			hi = hexval((unsigned char)target[i + 1]);
			lo = hexval((unsigned char)target[i + 2]);
			if (hi < 0 || lo < 0)
				return -EINVAL;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
			if (c < 0x20 || c == 0x7f)
				return -EINVAL; /* NUL and control bytes */
		}
		if (c == '\\')
			return -EINVAL;
		if (n + 1 >= out_size)
			return -ENAMETOOLONG;
		out[n++] = (char)c;
	}
	if (!zc__utf8_ok((const unsigned char *)out, n))
		return -EINVAL;
	/* resolve "", "." and ".." segments in place (w <= r throughout) */
	flags = ZC_HTTP_PATH_SLASH; /* until a name ends the path */
	r = 0;
	while (r < n) {
		size_t s, len;

		while (r < n && out[r] == '/')
			r++;
		if (r == n)
			break;
		s = r;
		while (r < n && out[r] != '/')
			r++;
		len = r - s;
		flags = r < n ? ZC_HTTP_PATH_SLASH : 0;
		if (len == 1 && out[s] == '.') {
			flags = ZC_HTTP_PATH_SLASH;
			continue;
		}
		if (len == 2 && out[s] == '.' && out[s + 1] == '.') {
			if (w == 0)
				return -EINVAL; /* above the root */
			while (w > 0 && out[w - 1] != '/')
				w--;
			if (w > 0)
				w--; /* the '/' before the popped name */
			flags = ZC_HTTP_PATH_SLASH;
			continue;
		}
		if (w > 0)
			out[w++] = '/';
		memmove(out + w, out + s, len);
		w += len;
	}
	if (n > 0 && out[n - 1] == '/')
		flags = ZC_HTTP_PATH_SLASH;
	if (w == 0)
		flags = ZC_HTTP_PATH_SLASH;
	out[w] = '\0';
	*out_len = w;
	*out_flags = flags;
	return 0;
}

/* ---- opening beneath a root --------------------------------------------- */

/* From include/uapi/linux/openat2.h (Linux 5.6), for older build images. */
struct zc__open_how {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define ZC__RESOLVE_NO_MAGICLINKS 0x02
#define ZC__RESOLVE_BENEATH 0x08
#if !defined(SYS_openat2) && !defined(__alpha__) && !defined(__mips__)
#define SYS_openat2 437 /* one number on every other architecture */
#endif

/* 0 unknown, 1 works, -1 missing (ENOSYS, or EPERM from a seccomp filter) */
static int openat2_state;

static int try_openat2(int root, const char *path, int oflags,
		       unsigned flags, int *fd)
{
#ifdef SYS_openat2
	struct zc__open_how how;
	long r;

	if (__atomic_load_n(&openat2_state, __ATOMIC_RELAXED) < 0)
		return 0;
	memset(&how, 0, sizeof(how));
	how.flags = (uint64_t)(oflags | O_CLOEXEC);
	how.resolve = ZC__RESOLVE_NO_MAGICLINKS;
	if (!(flags & ZC_HTTP_FOLLOW_SYMLINKS))
		how.resolve |= ZC__RESOLVE_BENEATH;
	r = syscall(SYS_openat2, root, path, &how, sizeof(how));
	if (r >= 0) {
		__atomic_store_n(&openat2_state, 1, __ATOMIC_RELAXED);
		*fd = (int)r;
		return 1;
	}
	if ((errno == ENOSYS || errno == EPERM) &&
	    __atomic_load_n(&openat2_state, __ATOMIC_RELAXED) == 0) {
		__atomic_store_n(&openat2_state, -1, __ATOMIC_RELAXED);
		return 0;
	}
	*fd = -errno;
	return 1;
#else
	(void)root, (void)path, (void)oflags, (void)flags, (void)fd;
	return 0;
#endif
}

/*
 * Without openat2: one component at a time with O_NOFOLLOW, so a symlink
 * anywhere stops the walk (-ELOOP), and the path has no ".." (resolved by
 * zc_http_path_resolve()) to climb with.
 */
static int walk(int root, const char *path, int oflags, int *fd)
{
	char name[NAME_MAX + 1];
	int cur = root, err;

	if (!*path) {
		int r = openat(root, ".", oflags | O_CLOEXEC);

		*fd = r < 0 ? -errno : r;
		return *fd < 0 ? *fd : 0;
	}
	while (*path) {
		const char *slash = strchr(path, '/');
		size_t len = slash ? (size_t)(slash - path) : strlen(path);
		int last = !slash || !slash[1];
		int next;

		if (len > NAME_MAX) {
			err = -ENAMETOOLONG;
			goto fail;
		}
		memcpy(name, path, len);
		name[len] = '\0';
		next = openat(cur, name,
			      (last ? oflags : O_PATH | O_DIRECTORY) |
				      O_NOFOLLOW | O_CLOEXEC);
		/* O_NOFOLLOW on a symlink: ELOOP; with O_PATH the link itself
		 * opens, and the caller's fstat sees S_IFLNK */
		err = next < 0 ? -errno : 0;
		if (err == -ENOTDIR && !last) {
			struct stat st;

			if (fstatat(cur, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISLNK(st.st_mode))
				err = -ELOOP;
		}
		if (cur != root)
			close(cur);
		cur = root;
		if (err < 0)
			goto fail;
		cur = next;
		path += len;
		while (*path == '/')
			path++;
	}
	*fd = cur;
	return 0;
fail:
	if (cur != root)
		close(cur);
	*fd = err;
	return err;
}

/* Look path up under root; *fd is the new fd or -errno. */
static int lookup(int root, const char *path, int oflags, unsigned flags,
		  int *fd)
{
	const char *p = *path ? path : ".";

	if (!(flags & ZC_HTTP_NO_OPENAT2) &&
	    try_openat2(root, p, oflags, flags, fd))
		return *fd < 0 ? *fd : 0;
	if (flags & ZC_HTTP_FOLLOW_SYMLINKS) {
		/* no ".." in the path: only symlinks leave, and they may */
		int r = openat(root, p, oflags | O_CLOEXEC);

		*fd = r < 0 ? -errno : r;
		return *fd < 0 ? *fd : 0;
	}
	return walk(root, path, oflags, fd);
}

int zc_open_beneath(int root_fd, const char *path, unsigned flags, int *fd,
		    struct stat *st)
{
	char proc[64];
	struct stat st2;
	int pfd, rfd, rc;

	*fd = -1;
	rc = lookup(root_fd, path, O_PATH, flags, &pfd);
	if (rc < 0)
		return rc;
	if (fstat(pfd, st) < 0) {
		rc = -errno;
		close(pfd);
		return rc;
	}
	if (S_ISDIR(st->st_mode)) {
		*fd = pfd;
		return 0;
	}
	if (!S_ISREG(st->st_mode)) {
		close(pfd);
		return S_ISLNK(st->st_mode) ? -ELOOP : -EACCES;
	}
	/* Only now open for reading, and this very inode: O_PATH opened
	 * nothing, so a FIFO or device under the root never saw an open. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", pfd);
	rfd = open(proc, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	rc = rfd < 0 ? -errno : 0;
	close(pfd);
	if (rc == -ENOENT) { /* no /proc: by path again, same inode or none */
		rc = lookup(root_fd, path, O_RDONLY | O_NOCTTY | O_NONBLOCK,
			    flags, &rfd);
		if (rc < 0)
			return rc;
		if (fstat(rfd, &st2) < 0 || st2.st_ino != st->st_ino ||
		    st2.st_dev != st->st_dev || !S_ISREG(st2.st_mode)) {
			close(rfd);
			return -EAGAIN; /* replaced between the two opens */
		}
	}
	if (rc < 0)
		return rc;
	*fd = rfd;
	return 0;
}
