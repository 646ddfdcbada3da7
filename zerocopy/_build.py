# SPDX-License-Identifier: MIT
"""cffi builder (out-of-line API mode): compiles csrc/ into zerocopy._native."""
from __future__ import annotations

import glob
import os

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_CSRC = os.path.relpath(os.path.join(_HERE, os.pardir, "csrc"))
_SOURCES = sorted(glob.glob(os.path.join(_CSRC, "*.c")))

# The parts of csrc/zc.h that Python calls, one string per capability;
# zc.h is the reference.
CDEF_SENDFILE = """
#define ZC_TO_EOF ...
#define ZC_FD_POSITION ...
#define ZC_WAIT_FOREVER ...
#define ZC_CHECK_STREAM ...
#define ZC_ID_TAKE ...
#define ZC_ID_CHECK ...

int zc_check_stream(int sock);
struct zc_fd_id { ...; };
int zc_fd_id_get(int fd, struct zc_fd_id *id);
int zc_fd_id_check(int fd, const struct zc_fd_id *id);
int zc_fd_dup_checked(int fd, const struct zc_fd_id *id, int *dup);
void zc_fd_close_each(int *fds, unsigned n);
int zc_tls_tx_offloaded(int sock);
int zc_wait_writable(int sock, int timeout_ms);
int zc_sendfile(int sock, int file, int64_t offset, uint64_t count,
                int timeout_ms, unsigned flags, uint64_t *sent);
int zc_sendfile_id(int sock, int file, int64_t offset, uint64_t count,
                   int timeout_ms, unsigned flags, uint64_t *sent, struct zc_fd_id *id);

struct zc_cork_state { ...; };
int zc_cork_begin(int sock, struct zc_cork_state *st);
int zc_cork_end(int sock, struct zc_cork_state *st);

struct zc_response { int sock; int file; uint64_t sent; uint64_t total; ...; };
int zc_response_init(struct zc_response *r, int sock, int file, int64_t offset,
                     uint64_t count, const void *header, size_t header_len,
                     const void *trailer, size_t trailer_len);
int zc_response_send(struct zc_response *r, int timeout_ms, uint64_t *sent_now);
int zc_response_bind_id(struct zc_response *r, const struct zc_fd_id *id);
int zc_response_end(struct zc_response *r);
"""

CDEF_ZEROCOPY = """
struct zc_completion { uint32_t lo; uint32_t hi; uint32_t copied; };
struct zc_track_rec { ...; };
struct zc_tracker { uint32_t next_seq; ...; };
int zc_zerocopy_enable(int sock);
int zc_tracker_init(struct zc_tracker *t, struct zc_track_rec *recs, uint32_t cap);
uint32_t zc_tracker_pending(const struct zc_tracker *t);
long zc_send_tracked(int sock, struct zc_tracker *t, const void *buf, size_t len,
                     uint64_t token, int msg_flags);
int zc_tracker_seal(struct zc_tracker *t, uint64_t token);
int zc_reap_completions(int sock, struct zc_completion *out, size_t max, size_t *n);
size_t zc_tracker_complete(struct zc_tracker *t, const struct zc_completion *c,
                           size_t n, uint64_t *freed, size_t max_freed);
int zc_wait_completions(int sock, int timeout_ms);
"""

CDEF_SPLICE = """
#define ZC_PIPE_SIZE ...

struct zc_pipe { int rfd; int wfd; uint32_t size; uint32_t buffered; };
struct zc_pipe_pool {
    size_t pipe_size; uint64_t created; uint64_t reused; uint64_t discarded;
    uint64_t small; ...;
};
unsigned zc_pipe_pool_idle(struct zc_pipe_pool *pool);
int zc_pipe_pool_init(struct zc_pipe_pool *pool, struct zc_pipe *slots,
                      unsigned nslots, size_t pipe_size);
int zc_pipe_get(struct zc_pipe_pool *pool, struct zc_pipe *p);
void zc_pipe_put(struct zc_pipe_pool *pool, struct zc_pipe *p);
void zc_pipe_pool_destroy(struct zc_pipe_pool *pool);
int zc_splice(int src, int64_t *src_off, int dst, int64_t *dst_off,
              uint64_t count, struct zc_pipe *via, int timeout_ms,
              uint64_t *moved);
int zc_splice_id(int src, int64_t *src_off, int dst, int64_t *dst_off,
                 uint64_t count, struct zc_pipe *via, int timeout_ms,
                 uint64_t *moved, const struct zc_fd_id *src_id,
                 const struct zc_fd_id *dst_id);
"""

CDEF_RELAY = """
#define ZC_PROXY_CONNECT_MS ...
#define ZC_PROXY_IDLE_MS ...
#define ZC_PROXY_STALL_MS ...

struct zc_relay_loop { unsigned active; uint64_t bytes[2]; ...; };
struct zc_relay {
    int fd[2]; uint64_t bytes[2]; int error; int done; void *data; ...;
};
struct zc_proxy {
    uint64_t accepted; uint64_t active; uint64_t completed; uint64_t failed;
    uint64_t refused; uint64_t timed_out; uint64_t bytes[2]; ...;
};
struct sockaddr;
int zc_relay_loop_init(struct zc_relay_loop *loop, struct zc_pipe_pool *pool);
void zc_relay_loop_close(struct zc_relay_loop *loop);
int zc_relay_add(struct zc_relay_loop *loop, struct zc_relay *r, int a, int b);
int zc_relay_set_timeout(struct zc_relay *r, int idle_ms);
void zc_relay_remove(struct zc_relay *r);
int zc_relay_run(struct zc_relay_loop *loop, int timeout_ms,
                 struct zc_relay **done, unsigned max_done);
int zc_relay_wake(struct zc_relay_loop *loop);
int zc_relay_loop_fd(struct zc_relay_loop *loop, int *next_ms);
int zc_proxy_init(struct zc_proxy *px, struct zc_relay_loop *loop,
                  int listen_fd, const struct sockaddr *target,
                  unsigned target_len, struct zc_relay *slots, unsigned nslots);
int zc_proxy_set_timeouts(struct zc_proxy *px, int connect_ms, int idle_ms,
                          int stall_ms);
void zc_proxy_close(struct zc_proxy *px);
"""

# struct zc_zsock: the MSG_ZEROCOPY policy
CDEF_ZSOCK = """
#define ZC_ZSOCK_ONCE ...
#define ZC_ZSOCK_RESUME ...
struct zc_zsock_opts { uint64_t threshold; uint64_t max_pinned_bytes; int adaptive; };
struct zc_zsock_stats {
    uint64_t zerocopy_sends; uint64_t plain_sends; uint64_t completions;
    uint64_t copied_completions; uint64_t enobufs_fallbacks; uint64_t pinned_bytes;
    uint64_t peak_pinned_bytes;
};
struct zc_zsock {
    int sock; int supported; int unsupported; int active; int loaned;
    uint32_t on_loan; uint32_t freed; struct zc_zsock_stats stats; ...;
};
void zc_zsock_opts_init(struct zc_zsock_opts *o);
int zc_zsock_init(struct zc_zsock *z, int sock, struct zc_track_rec *recs,
                  uint32_t nrecs, const struct zc_zsock_opts *o);
int zc_zsock_send(struct zc_zsock *z, const void *buf, size_t len,
                  uint64_t token, unsigned flags, int timeout_ms, uint64_t *sent);
int zc_zsock_send_end(struct zc_zsock *z);
int zc_zsock_reap(struct zc_zsock *z);
size_t zc_zsock_collect(struct zc_zsock *z, uint64_t *tokens, size_t max);
int zc_zsock_poll(const struct zc_zsock *z, int timeout_ms);
int zc_zsock_flush(struct zc_zsock *z, int timeout_ms);
int zc_zsock_end(struct zc_zsock *z, int timeout_ms);
uint32_t zc_zsock_abandon(struct zc_zsock *z);
"""

# The HTTP file server: one struct zc_http_server (configuration, stop
# switch) shared by N struct zc_http_loop, one per thread.
CDEF_HTTP = """
#define ZC_HTTP_HEAD_MAX ...
#define ZC_HTTP_HEADERS_MAX ...
#define ZC_HTTP_MAX_CONNS ...
#define ZC_HTTP_CACHE_ENTRIES ...
#define ZC_HTTP_CACHE_VALID_MS ...
#define ZC_HTTP_HEADER_TIMEOUT_MS ...
#define ZC_HTTP_IDLE_TIMEOUT_MS ...
#define ZC_HTTP_SEND_TIMEOUT_MS ...
#define ZC_HTTP_LINGER_MS ...
#define ZC_HTTP_SMALL_FILE_MAX ...
#define ZC_HTTP_FOLLOW_SYMLINKS ...
#define ZC_HTTP_NO_OPENAT2 ...
#define ZC_HTTP_NO_LISTING ...
struct zc_http_config {
    int root_fd; unsigned flags; unsigned max_conns; unsigned head_max;
    unsigned max_headers; int header_timeout_ms; int idle_timeout_ms;
    int send_timeout_ms; int linger_ms; unsigned cache_entries;
    int cache_valid_ms; unsigned small_file_max; int log_fd;
    ...;
};
struct zc_http_stats {
    uint64_t accepted; uint64_t closed; uint64_t requests;
    uint64_t responses[6]; uint64_t bytes; uint64_t body_bytes;
    uint64_t bad_requests; uint64_t header_timeouts; uint64_t idle_timeouts;
    uint64_t send_timeouts; uint64_t resets; uint64_t truncated;
    uint64_t accept_errors; uint64_t fd_exhausted; uint64_t conn_limit;
    uint64_t cache_hits; uint64_t cache_misses; uint64_t cache_stale;
    uint64_t log_errors;
    ...;
};
struct zc_http_server { struct zc_http_config config; ...; };
struct zc_http_loop { struct zc_http_stats stats; ...; };
void zc_http_config_init(struct zc_http_config *cfg);
int zc_http_server_init(struct zc_http_server *srv, const struct zc_http_config *cfg);
int zc_http_server_stop(struct zc_http_server *srv, int grace_ms);
int zc_http_server_rearm(struct zc_http_server *srv);
void zc_http_server_close(struct zc_http_server *srv);
int zc_http_loop_size(const struct zc_http_config *cfg, size_t *size);
int zc_http_loop_init(struct zc_http_loop *loop, struct zc_http_server *srv,
                      int listen_fd, void *mem, size_t mem_size);
int zc_http_loop_run(struct zc_http_loop *loop, int timeout_ms);
void zc_http_loop_close(struct zc_http_loop *loop);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF_SENDFILE + CDEF_ZEROCOPY + CDEF_ZSOCK + CDEF_SPLICE + CDEF_RELAY + CDEF_HTTP)
ffibuilder.set_source(
    "zerocopy._native",
    '#include "zc.h"',
    sources=_SOURCES,
    include_dirs=[_CSRC],
    define_macros=[("_FILE_OFFSET_BITS", "64")],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
    py_limited_api=True,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
