/* SPDX-License-Identifier: MIT */
/*
 * zc_serve - serve a directory with the C engine alone (for trying it by
 * hand and for benchmarks; not part of libzc, not a test).
 *
 *   zc_serve [-p PORT] [-b ADDR] [-w WORKERS] [-r] [-l] [-n] [-s SMALL]
 *            [-c CACHE] [-m MAXCONNS] DIR
 *
 * -r: one SO_REUSEPORT listener per worker (default: one shared listener,
 * EPOLLEXCLUSIVE); -l: access log on stdout; -n: no directory listing;
 * -s: small_file_max; -c: cache entries (0: off).  SIGINT/SIGTERM stop it
 * with a 2 s grace; SIGUSR1 prints the summed statistics.
 */
#define _GNU_SOURCE
#include "zc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXW 64

static struct zc_http_server srv;
static struct zc_http_loop loops[MAXW];
static volatile sig_atomic_t want_stats;

static void on_stop(int sig)
{
	(void)sig;
	zc_http_server_stop(&srv, 2000);
}

static void on_usr1(int sig)
{
	(void)sig;
	want_stats = 1;
}

static void print_stats(int n)
{
	struct zc_http_stats t;

	memset(&t, 0, sizeof(t));
	for (int i = 0; i < n; i++) {
		uint64_t *a = (uint64_t *)(void *)&t;
		const uint64_t *b = (const uint64_t *)(const void *)&loops[i].stats;

		for (size_t k = 0; k < sizeof(t) / sizeof(uint64_t); k++)
			a[k] += b[k];
	}
	fprintf(stderr,
		"accepted %llu closed %llu requests %llu (2xx %llu 3xx %llu 4xx %llu 5xx %llu) bytes %llu\n"
		"bad %llu timeouts h/i/s %llu/%llu/%llu resets %llu truncated %llu accept_err %llu fd_exh %llu limit %llu\n"
		"cache hits %llu misses %llu stale %llu log_err %llu\n",
		(unsigned long long)t.accepted, (unsigned long long)t.closed,
		(unsigned long long)t.requests,
		(unsigned long long)t.responses[2], (unsigned long long)t.responses[3],
		(unsigned long long)t.responses[4], (unsigned long long)t.responses[5],
		(unsigned long long)t.bytes, (unsigned long long)t.bad_requests,
		(unsigned long long)t.header_timeouts,
		(unsigned long long)t.idle_timeouts,
		(unsigned long long)t.send_timeouts, (unsigned long long)t.resets,
		(unsigned long long)t.truncated,
		(unsigned long long)t.accept_errors,
		(unsigned long long)t.fd_exhausted,
		(unsigned long long)t.conn_limit,
		(unsigned long long)t.cache_hits,
		(unsigned long long)t.cache_misses,
		(unsigned long long)t.cache_stale,
		(unsigned long long)t.log_errors);
	if (n > 1) {
		fprintf(stderr, "per loop: accepted/requests");
		for (int i = 0; i < n; i++)
			fprintf(stderr, " %llu/%llu",
				(unsigned long long)loops[i].stats.accepted,
				(unsigned long long)loops[i].stats.requests);
		fputc('\n', stderr);
	}
}

static void *worker(void *arg)
{
	struct zc_http_loop *loop = arg;
	int rc;

	do
		rc = zc_http_loop_run(loop, 1000);
	while (rc == -EINTR || rc == -ETIMEDOUT);
	if (rc < 0)
		fprintf(stderr, "loop: %s\n", strerror(-rc));
	return NULL;
}

static int listener(const char *addr, int port, int reuseport)
{
	struct sockaddr_in6 a6;
	struct sockaddr_in a4;
	int v6 = strchr(addr, ':') != NULL, one = 1;
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	memset(&a4, 0, sizeof(a4));
	memset(&a6, 0, sizeof(a6));
	if (v6) {
		a6.sin6_family = AF_INET6;
		a6.sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, addr, &a6.sin6_addr) != 1 ||
		    bind(fd, (struct sockaddr *)&a6, sizeof(a6)) < 0)
			goto fail;
	} else {
		a4.sin_family = AF_INET;
		a4.sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, addr, &a4.sin_addr) != 1 ||
		    bind(fd, (struct sockaddr *)&a4, sizeof(a4)) < 0)
			goto fail;
	}
	if (listen(fd, 4096) < 0)
		goto fail;
	return fd;
fail:
	close(fd);
	return -1;
}

int main(int argc, char **argv)
{
	struct zc_http_config cfg;
	const char *addr = "127.0.0.1";
	int port = 8000, workers = 1, reuseport = 0, opt, rc;
	int lfd[MAXW];
	pthread_t th[MAXW];
	struct sigaction sa;
	sigset_t all, old;

	zc_http_config_init(&cfg);
	while ((opt = getopt(argc, argv, "p:b:w:rlns:c:m:")) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'b': addr = optarg; break;
		case 'w': workers = atoi(optarg); break;
		case 'r': reuseport = 1; break;
		case 'l': cfg.log_fd = 1; break;
		case 'n': cfg.flags |= ZC_HTTP_NO_LISTING; break;
		case 's': cfg.small_file_max = (unsigned)atoi(optarg); break;
		case 'c': cfg.cache_entries = (unsigned)atoi(optarg); break;
		case 'm': cfg.max_conns = (unsigned)atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [-p PORT] [-b ADDR] [-w N] [-r] [-l] [-n] [-s SMALL] [-c CACHE] [-m MAXCONNS] DIR\n", argv[0]);
			return 2;
		}
	}
	if (optind != argc - 1 || workers < 1 || workers > MAXW) {
		fprintf(stderr, "zc_serve: one directory, 1-%d workers\n", MAXW);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	cfg.root_fd = open(argv[optind], O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cfg.root_fd < 0) {
		perror(argv[optind]);
		return 1;
	}
	rc = zc_http_server_init(&srv, &cfg);
	if (rc < 0) {
		fprintf(stderr, "zc_http_server_init: %s\n", strerror(-rc));
		return 1;
	}
	for (int i = 0; i < workers; i++) {
		lfd[i] = i == 0 || reuseport ? listener(addr, port, reuseport)
					     : lfd[0];
		if (lfd[i] < 0) {
			perror("listen");
			return 1;
		}
		rc = zc_http_loop_init(&loops[i], &srv, lfd[i], NULL, 0);
		if (rc < 0) {
			fprintf(stderr, "zc_http_loop_init: %s\n", strerror(-rc));
			return 1;
		}
	}
	fprintf(stderr, "serving %s on http://%s:%d/ with %d worker(s)%s\n",
		argv[optind], addr, port, workers,
		reuseport ? " (SO_REUSEPORT)" : "");
	/* the workers block the signals: the main thread takes them */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (int i = 0; i < workers; i++)
		pthread_create(&th[i], NULL, worker, &loops[i]);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	for (;;) {
		void *ret;

		if (pthread_tryjoin_np(th[0], &ret) == 0)
			break;
		usleep(100000);
		if (want_stats) {
			want_stats = 0;
			print_stats(workers);
		}
	}
	for (int i = 1; i < workers; i++)
		pthread_join(th[i], NULL);
	print_stats(workers);
	for (int i = 0; i < workers; i++)
		zc_http_loop_close(&loops[i]);
	zc_http_server_close(&srv);
	return 0;
}
