/* SPDX-License-Identifier: MIT */
/* zc_http_path_resolve() and zc_open_beneath(): nothing outside the root. */
#define _GNU_SOURCE
#include "harness.h"
#include "zc.h"

#include <dirent.h>
#include <ftw.h>
#include <sys/sysmacros.h>
#include <sys/un.h>

struct want {
	const char *target;
	int rc;
	const char *path;
	unsigned flags;
};

static void resolve(void)
{
	static const struct want cases[] = {
		{ "/", 0, "", ZC_HTTP_PATH_SLASH },
		{ "/a", 0, "a", 0 },
		{ "/a/", 0, "a", ZC_HTTP_PATH_SLASH },
		{ "/a//b///c", 0, "a/b/c", 0 },
		{ "//a", 0, "a", 0 },
		{ "/a/./b", 0, "a/b", 0 },
		{ "/a/.", 0, "a", ZC_HTTP_PATH_SLASH },
		{ "/a/b/..", 0, "a", ZC_HTTP_PATH_SLASH },
		{ "/a/b/../c", 0, "a/c", 0 },
		{ "/a/..", 0, "", ZC_HTTP_PATH_SLASH },
		{ "/a/../", 0, "", ZC_HTTP_PATH_SLASH },
		{ "/...", 0, "...", 0 },
		{ "/..a", 0, "..a", 0 },
		{ "/a?x=/../..", 0, "a", 0 },
		{ "/a?", 0, "a", 0 },
		{ "/%41%62c", 0, "Abc", 0 },
		{ "/a%20b", 0, "a b", 0 },
		{ "/a%2fb", 0, "a/b", 0 },
		{ "/caf%C3%A9", 0, "caf\xc3\xa9", 0 },
		{ "/%F0%9F%98%80", 0, "\xf0\x9f\x98\x80", 0 },
		{ "/%252e%252e/x", 0, "%2e%2e/x", 0 }, /* decoded once only */
		{ "/%25", 0, "%", 0 },
		{ "http://host/a/b", 0, "a/b", 0 },
		{ "HTTP://host/a", 0, "a", 0 },
		{ "https://host:8080/a/?q", 0, "a", ZC_HTTP_PATH_SLASH },
		{ "http://host", 0, "", ZC_HTTP_PATH_SLASH },
		{ "http://host?q", 0, "", ZC_HTTP_PATH_SLASH },
		/* traversal */
		{ "/..", -EINVAL, NULL, 0 },
		{ "/../", -EINVAL, NULL, 0 },
		{ "/../etc/passwd", -EINVAL, NULL, 0 },
		{ "/a/../../etc/passwd", -EINVAL, NULL, 0 },
		{ "/%2e%2e/etc/passwd", -EINVAL, NULL, 0 },
		{ "/%2E%2E%2Fetc%2Fpasswd", -EINVAL, NULL, 0 },
		{ "/.%2e/x", -EINVAL, NULL, 0 },
		{ "/a%2f..%2f..%2fx", -EINVAL, NULL, 0 },
		{ "/..%5c..%5cwindows", -EINVAL, NULL, 0 },
		{ "/a\\..\\b", -EINVAL, NULL, 0 },
		{ "/a%5cb", -EINVAL, NULL, 0 },
		{ "http://host/../x", -EINVAL, NULL, 0 },
		{ "http://host/%2e%2e/x", -EINVAL, NULL, 0 },
		/* encodings */
		{ "/a%00b", -EINVAL, NULL, 0 },
		{ "/a%0ab", -EINVAL, NULL, 0 },
		{ "/a%0d%0aSet-Cookie:x", -EINVAL, NULL, 0 },
		{ "/a%7f", -EINVAL, NULL, 0 },
		{ "/a%1", -EINVAL, NULL, 0 },
		{ "/a%", -EINVAL, NULL, 0 },
		{ "/a%zz", -EINVAL, NULL, 0 },
		{ "/a%+1", -EINVAL, NULL, 0 },
		{ "/%c0%ae%c0%ae/x", -EINVAL, NULL, 0 },      /* overlong '.' */
		{ "/%c0%af", -EINVAL, NULL, 0 },	      /* overlong '/' */
		{ "/%e0%80%ae", -EINVAL, NULL, 0 },	      /* overlong, 3 bytes */
		{ "/%f0%80%80%ae", -EINVAL, NULL, 0 },	      /* overlong, 4 bytes */
		{ "/%ed%a0%80", -EINVAL, NULL, 0 },	      /* a surrogate */
		{ "/%f4%90%80%80", -EINVAL, NULL, 0 },	      /* above U+10FFFF */
		{ "/%ff", -EINVAL, NULL, 0 },
		{ "/%c3", -EINVAL, NULL, 0 },		      /* cut short */
		{ "/a b", -EINVAL, NULL, 0 },
		{ "/a#frag", -EINVAL, NULL, 0 },
		{ "/a?b#c", -EINVAL, NULL, 0 },
		/* target forms */
		{ "", -EINVAL, NULL, 0 },
		{ "*", -EINVAL, NULL, 0 },
		{ "a/b", -EINVAL, NULL, 0 },
		{ "host:80", -EINVAL, NULL, 0 },
		{ "ftp://host/x", -EINVAL, NULL, 0 },
		{ "file:///etc/passwd", -EINVAL, NULL, 0 },
		{ "http:///etc/passwd", -EINVAL, NULL, 0 },
		{ "\\etc\\passwd", -EINVAL, NULL, 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct want *w = &cases[i];
		char out[256];
		size_t len = 99;
		unsigned flags = 99;
		int rc = zc_http_path_resolve(w->target, strlen(w->target), out,
					      sizeof(out), &len, &flags);

		h_ran++;
		if (rc != w->rc) {
			H_REPORT("%s: rc %d, want %d", w->target, rc, w->rc);
			continue;
		}
		if (rc < 0)
			continue;
		if (len != strlen(w->path) || strcmp(out, w->path) != 0 ||
		    flags != w->flags)
			H_REPORT("%s: \"%s\" flags %u, want \"%s\" %u", w->target,
				 out, flags, w->path, w->flags);
		/* the result never climbs or starts at the filesystem root */
		CHECK(out[0] != '/');
		CHECK(strcmp(out, "..") != 0 && strncmp(out, "../", 3) != 0 &&
		      !strstr(out, "/../") && !strstr(out, "/.."));
	}
	{
		char small[4];
		size_t len;
		unsigned flags;

		CHECK_RC(zc_http_path_resolve("/abcd", 5, small, sizeof(small),
					      &len, &flags), -ENAMETOOLONG);
		/* room for the decoded path with its slash and a NUL */
		CHECK_RC(zc_http_path_resolve("/abc", 4, small, sizeof(small),
					      &len, &flags), -ENAMETOOLONG);
		CHECK_RC(zc_http_path_resolve("/ab", 3, small, sizeof(small),
					      &len, &flags), 0);
		CHECK(strcmp(small, "ab") == 0);
	}
}

/* ---- a tree to open things in ------------------------------------------- */

static char top[64]; /* /tmp/zc-path-XXXXXX: holds root/ and secret */
static int root_fd = -1;

static int rm_one(const char *p, const struct stat *st, int type,
		  struct FTW *f)
{
	(void)st, (void)type, (void)f;
	return remove(p);
}

static void put_file(const char *rel, const char *text)
{
	char p[256];
	int fd;

	snprintf(p, sizeof(p), "%s/%s", top, rel);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0) {
		h_write_all(fd, text, strlen(text));
		close(fd);
	}
}

static int make_tree(void)
{
	char p[256], q[256];
	struct sockaddr_un sa;
	int s;

	strcpy(top, "/tmp/zc-path-XXXXXX");
	if (!mkdtemp(top))
		return -1;
	snprintf(p, sizeof(p), "%s/root", top);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/root/dir", top);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/root/dir/sub", top);
	mkdir(p, 0755);
	put_file("secret", "SECRET");
	put_file("root/file.txt", "hello");
	put_file("root/dir/inner.txt", "inner");
	/* symlinks: inside, up and out, absolute, to a dir, dangling, chains */
	snprintf(p, sizeof(p), "%s/root/in_link", top);
	(void)!symlink("file.txt", p);
	snprintf(p, sizeof(p), "%s/root/dir/up_link", top);
	(void)!symlink("../file.txt", p);
	snprintf(p, sizeof(p), "%s/root/out_rel", top);
	(void)!symlink("../secret", p);
	snprintf(p, sizeof(p), "%s/root/out_abs", top);
	snprintf(q, sizeof(q), "%s/secret", top);
	(void)!symlink(q, p);
	snprintf(p, sizeof(p), "%s/root/etc_link", top);
	(void)!symlink("/etc", p);
	snprintf(p, sizeof(p), "%s/root/dir_link", top);
	(void)!symlink("dir", p);
	snprintf(p, sizeof(p), "%s/root/dangling", top);
	(void)!symlink("nowhere", p);
	snprintf(p, sizeof(p), "%s/root/proc_link", top);
	(void)!symlink("/proc/self/root/etc/passwd", p);
	/* special files */
	snprintf(p, sizeof(p), "%s/root/fifo", top);
	mkfifo(p, 0644);
	snprintf(p, sizeof(p), "%s/root/null", top);
	(void)mknod(p, S_IFCHR | 0666, makedev(1, 3)); /* may be refused */
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/root/sock", top);
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	if (s >= 0) {
		(void)bind(s, (struct sockaddr *)&sa, sizeof(sa));
		close(s);
	}
	snprintf(p, sizeof(p), "%s/root", top);
	root_fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return root_fd < 0 ? -1 : 0;
}

static void remove_tree(void)
{
	if (root_fd >= 0)
		close(root_fd);
	if (top[0])
		nftw(top, rm_one, 16, FTW_DEPTH | FTW_PHYS);
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

/* Open rel; 0 and the first bytes in *text, or -errno. */
static int try_open(const char *rel, unsigned flags, char *text, size_t cap,
		    mode_t *type)
{
	struct stat st;
	int fd, rc = zc_open_beneath(root_fd, rel, flags, &fd, &st);
	ssize_t n = 0;

	text[0] = '\0';
	if (rc < 0) {
		if (fd != -1)
			H_REPORT("%s: failed but fd %d", rel, fd);
		return rc;
	}
	*type = st.st_mode & S_IFMT;
	if (S_ISREG(st.st_mode)) {
		n = pread(fd, text, cap - 1, 0);
		if (n < 0)
			n = 0;
		text[n] = '\0';
		if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY)
			H_REPORT("%s: not O_RDONLY", rel);
	} else if ((fcntl(fd, F_GETFL) & O_PATH) == 0) {
		H_REPORT("%s: a directory should come as O_PATH", rel);
	}
	if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC))
		H_REPORT("%s: no FD_CLOEXEC", rel);
	close(fd);
	return 0;
}

struct open_case {
	const char *rel;
	int rc;		 /* without FOLLOW_SYMLINKS */
	int rc_follow;	 /* with it */
	const char *text; /* for a regular file opened */
	mode_t type;
};

static void open_modes(unsigned extra)
{
	/* -ELOOP/-EXDEV both mean "a symlink was refused" (403) */
	static const struct open_case cases[] = {
		{ "file.txt", 0, 0, "hello", S_IFREG },
		{ "", 0, 0, NULL, S_IFDIR },
		{ "dir", 0, 0, NULL, S_IFDIR },
		{ "dir/inner.txt", 0, 0, "inner", S_IFREG },
		{ "missing", -ENOENT, -ENOENT, NULL, 0 },
		{ "file.txt/x", -ENOTDIR, -ENOTDIR, NULL, 0 },
		{ "out_rel", -EXDEV, 0, "SECRET", S_IFREG },
		{ "out_abs", -EXDEV, 0, "SECRET", S_IFREG },
		{ "etc_link/passwd", -EXDEV, 0, NULL, S_IFREG },
		{ "proc_link", -EXDEV, -ELOOP, NULL, 0 },
		{ "fifo", -EACCES, -EACCES, NULL, 0 },
		{ "sock", -EACCES, -EACCES, NULL, 0 },
	};
	int openat2_walk = extra & ZC_HTTP_NO_OPENAT2;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int follow = 0; follow < 2; follow++) {
			const struct open_case *c = &cases[i];
			unsigned flags = extra | (follow ? ZC_HTTP_FOLLOW_SYMLINKS : 0);
			char text[64];
			mode_t type = 0;
			int want = follow ? c->rc_follow : c->rc;
			int rc = try_open(c->rel, flags, text, sizeof(text), &type);

			h_ran++;
			/* the O_NOFOLLOW walk refuses any symlink with ELOOP;
			 * following anywhere, the proc magic link resolves */
			if (openat2_walk && want == -EXDEV)
				want = -ELOOP;
			if (!strcmp(c->rel, "proc_link") && follow &&
			    openat2_walk)
				want = 0;
			if (rc == -EXDEV || rc == -ELOOP) /* both 403 */
				rc = want == -EXDEV || want == -ELOOP ? want : rc;
			if (rc != want) {
				H_REPORT("%s (follow %d, flags %#x): rc %d (%s), want %d",
					 c->rel, follow, flags, rc,
					 h_errname(rc), want);
				continue;
			}
			if (rc == 0 && c->text && strcmp(text, c->text) != 0)
				H_REPORT("%s: read \"%s\"", c->rel, text);
			if (rc == 0 && c->type && type != c->type)
				H_REPORT("%s: type %o", c->rel, type);
			if (rc == 0 && !follow && strstr(text, "SECRET"))
				H_REPORT("%s: the secret left the root", c->rel);
		}
	}
	/* symlinks that stay inside: followed with openat2, refused by the
	 * O_NOFOLLOW walk unless FOLLOW_SYMLINKS */
	{
		const char *inside[] = { "in_link", "dir/up_link", "dir_link/inner.txt" };

		for (size_t i = 0; i < 3; i++) {
			char text[64];
			mode_t type;
			int rc = try_open(inside[i], extra, text, sizeof(text), &type);

			if (openat2_walk)
				CHECK_RC(rc, -ELOOP);
			else
				CHECK_RC(rc, 0);
			rc = try_open(inside[i], extra | ZC_HTTP_FOLLOW_SYMLINKS,
				      text, sizeof(text), &type);
			CHECK_RC(rc, 0);
			CHECK(strcmp(text, "hello") == 0 || strcmp(text, "inner") == 0);
		}
	}
	/* a device node, when this system let us make one */
	{
		char p[256], text[64];
		struct stat st;
		mode_t type;

		snprintf(p, sizeof(p), "%s/root/null", top);
		if (lstat(p, &st) == 0 && S_ISCHR(st.st_mode))
			CHECK_RC(try_open("null", extra, text, sizeof(text), &type),
				 -EACCES);
	}
}

/* A FIFO is refused without ever being opened for reading: a writer
 * blocked in open(O_WRONLY) would be released by any reader. */
static void fifo_never_opened(void)
{
	char p[256];
	int pp[2], fd;
	pid_t pid;
	struct stat st;
	struct pollfd pfd;

	snprintf(p, sizeof(p), "%s/root/fifo", top);
	REQUIRE(pipe2(pp, O_CLOEXEC) == 0);
	pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		int w;

		h_child_setup();
		w = open(p, O_WRONLY); /* blocks until someone reads */
		(void)!write(pp[1], "o", 1);
		_exit(w >= 0 ? 0 : 1);
	}
	close(pp[1]);
	usleep(100 * 1000); /* let the child block in open (not required) */
	for (int i = 0; i < 3; i++) {
		CHECK_RC(zc_open_beneath(root_fd, "fifo", 0, &fd, &st), -EACCES);
		CHECK_RC(zc_open_beneath(root_fd, "fifo", ZC_HTTP_NO_OPENAT2,
					 &fd, &st), -EACCES);
	}
	pfd.fd = pp[0];
	pfd.events = POLLIN;
	CHECK_EQ(poll(&pfd, 1, 200), 0); /* the writer is still blocked */
	/* release it */
	fd = open(p, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	CHECK_EQ(poll(&pfd, 1, 5000), 1);
	if (fd >= 0)
		close(fd);
	close(pp[0]);
	CHECK_EQ(h_reap(pid), 0);
}

/* Resolve then open, as the server does: hostile targets never reach the
 * secret file beside the root. */
static void traversal_corpus(void)
{
	static const char *targets[] = {
		"/../secret", "/..%2fsecret", "/%2e%2e/secret", "/%2e%2e%2fsecret",
		"/%252e%252e/secret", "/..%5csecret", "/..\\secret",
		"/dir/../../secret", "/dir/%2e%2e/%2e%2e/secret",
		"/%c0%ae%c0%ae/secret", "/%e0%80%ae%e0%80%ae/secret",
		"/out_rel", "/out_abs", "/etc_link/passwd", "/proc_link",
		"http://x/../secret", "/secret%00.txt", "/.%00./secret",
		"/dir/..%00/secret", "//secret", "/./../secret",
	};

	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		char path[512], text[64];
		size_t len;
		unsigned pf;
		mode_t type;
		int rc = zc_http_path_resolve(targets[i], strlen(targets[i]),
					      path, sizeof(path), &len, &pf);

		h_ran++;
		if (rc < 0)
			continue;
		for (int walk = 0; walk < 2; walk++) {
			rc = try_open(path, walk ? ZC_HTTP_NO_OPENAT2 : 0, text,
				      sizeof(text), &type);
			if (rc == 0 && strstr(text, "SECRET"))
				H_REPORT("%s (%s) reached the secret", targets[i], path);
			if (rc == 0 && strstr(text, "root:"))
				H_REPORT("%s (%s) reached /etc/passwd", targets[i], path);
		}
	}
}

int main(void)
{
	int before;

	h_init(30);
	resolve();
	if (make_tree() < 0) {
		H_SKIP_CASE("no temp tree: %s", strerror(errno));
		remove_tree();
		return h_result("test_http_path");
	}
	before = count_fds();
	open_modes(0);
	open_modes(ZC_HTTP_NO_OPENAT2);
	fifo_never_opened();
	traversal_corpus();
	CHECK_EQ(count_fds(), before); /* no descriptor leaked */
	remove_tree();
	return h_result("test_http_path");
}
