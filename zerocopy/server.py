# SPDX-License-Identifier: MIT
"""``FileServer``: the C engine's HTTP/1.1 file server, run from Python.

The engine (``zc_http_*`` in ``csrc/zc.h``) does everything per request in C:
the strict parser, the path resolution that cannot leave the root, the
open-file cache, the header coalesced with the file, ``sendfile``.  This
module opens the root and the listening socket, checks the options, runs one
C event loop per worker thread with the GIL released, and turns a stop
request (another thread, a signal handler) into the engine's stop switch.

Why threads and not processes for ``workers=N``: the loops share nothing on
the hot path (each has its own epoll set, connections, file cache and
counters) and run without the GIL, so a thread per loop scales as a process
would -- measured on loopback with two loops: the same requests/s and CPU per
request within noise -- while one process keeps ``stats``, ``shutdown()`` and
the listening socket simple (one ``EPOLLEXCLUSIVE`` listener, no fork).
"""
from __future__ import annotations

import math
import operator
import os
import resource
import signal
import socket
import threading
from types import TracebackType
from typing import IO, Any, NamedTuple, Union

from . import _lowlevel as _c

__all__ = ["FileServer", "ServerStats"]

Address = Union[tuple[str, int], tuple[str, int, int, int]]

# The longest the serving thread stays in C without looking at Python's
# pending signals: a loop that is never idle never sleeps in epoll_wait, where
# a signal would interrupt it, so it returns this often to let handlers run.
_SLICE_MS = 100

# Signals the worker threads block, so that every signal lands on a thread
# that runs Python's handlers promptly (the main thread); the synchronous ones
# (faults) cannot be blocked usefully.
_SYNCHRONOUS = {getattr(signal, name) for name in (
    "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT")
    if hasattr(signal, name)}
_BLOCKED = signal.valid_signals() - _SYNCHRONOUS

_DEFAULTS = _c.http_defaults()
_INT_MAX = _c.INT_MAX


class ServerStats(NamedTuple):
    """A snapshot of a :class:`FileServer`'s counters, summed over its workers.

    Read while the server runs, each counter is a moment old (the workers
    write them without locks).
    """

    accepted: int  # connections accepted
    closed: int  # connections closed
    active: int  # connections open now (accepted - closed)
    requests: int  # requests answered, any status
    responses_1xx: int
    responses_2xx: int  # 200 and 206
    responses_3xx: int  # 301 (a directory without its '/') and 304
    responses_4xx: int
    responses_5xx: int
    bytes_sent: int  # bytes written to sockets, headers included
    body_bytes_sent: int  # file and page bytes among them
    bad_requests: int  # request heads refused by the parser (400, 414, 431, 505)
    header_timeouts: int  # clients too slow to send a request head (slowloris)
    idle_timeouts: int  # keep-alive connections closed for idling
    send_timeouts: int  # responses abandoned: the client read nothing for send_timeout
    resets: int  # connections ended by the client (reset, EOF) before their response
    truncated: int  # responses cut short because the file shrank: connection reset
    accept_errors: int  # accept(2) failures other than EAGAIN
    fd_exhausted: int  # connections refused for lack of file descriptors (EMFILE, ENFILE)
    connection_limit: int  # times a worker was full (max_connections)
    cache_hits: int  # requests answered from the open-file cache
    cache_misses: int  # requests that opened their file
    cache_stale: int  # cached files found changed on revalidation
    log_errors: int  # access log writes that failed (those lines are lost)


def _sum_stats(loops: list[_c.HttpLoop]) -> ServerStats:
    totals = [0] * 24
    for loop in loops:
        for i, value in enumerate(loop.stats()):
            totals[i] += value
    accepted, closed, requests, _, r1, r2, r3, r4, r5, *rest = totals
    return ServerStats(accepted, closed, accepted - closed, requests, r1, r2, r3, r4, r5,
                       *rest)


# --------------------------------------------------------------------------- arguments


def _whole(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high]: TypeError for a non-integer, ValueError out of range."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    number: int = operator.index(value)  # "'float' object cannot be interpreted as an integer"
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {number}")
    return number


def _millis(name: str, seconds: Any, *, zero: bool = False) -> int:
    """Seconds (int or float; None: no bound) as C's milliseconds, at least 1 unless ``zero``."""
    if seconds is None:
        return _INT_MAX  # about 25 days: as good as forever
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, "
                        f"not {type(seconds).__name__}")
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"{name} must be {'>= 0' if zero else '> 0'} seconds or None, "
                         f"got {seconds!r}")
    if seconds == math.inf:
        return _INT_MAX
    return max(min(math.ceil(float(seconds) * 1000), _INT_MAX), 0 if zero else 1)


def _log_fd(access_log: Any) -> int:
    """-1, or the descriptor of ``access_log`` (an int fd or an object with ``fileno()``)."""
    if access_log is None:
        return -1
    if isinstance(access_log, bool):
        raise TypeError("access_log must be a file descriptor, a file object or None, not bool")
    if isinstance(access_log, int):
        fd = access_log
    elif hasattr(access_log, "fileno"):
        flush = getattr(access_log, "flush", None)
        if flush is not None:
            flush()  # what Python buffered goes first; C writes to the fd directly
        fd = access_log.fileno()
    else:
        raise TypeError("access_log must be a file descriptor, a file object or None, "
                        f"not {type(access_log).__name__}")
    if fd < 0:
        raise ValueError(f"access_log: bad file descriptor {fd}")
    os.fstat(fd)  # EBADF now rather than log_errors later
    return fd


def _listener(address: Address, backlog: int) -> socket.socket:
    """A bound, listening TCP socket; ``::`` also takes IPv4 (like ``http.server``)."""
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    family, kind, proto, _, found = infos[0]
    sockaddr: Any = found
    if family == socket.AF_INET6 and len(address) == 4:
        sockaddr = (sockaddr[0], sockaddr[1], address[2], address[3])
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _raise_nofile(need: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit toward ``need`` more descriptors, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    want = in_use + need
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            except (OSError, ValueError):
                pass  # the engine refuses what it cannot take (fd_exhausted), never crashes


def _ignore_sigpipe() -> None:
    """sendfile(2) cannot take MSG_NOSIGNAL: a client that resets must not kill the process."""
    if signal.getsignal(signal.SIGPIPE) != signal.SIG_DFL:
        return  # Python ignores it from startup; an embedder's handler is kept
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("SIGPIPE has its default action (end the process), and only the "
                           "main thread can change that: call signal.signal(signal.SIGPIPE, "
                           "signal.SIG_IGN) first")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


# --------------------------------------------------------------------------- FileServer


class FileServer:
    """Serve the files under ``root`` over HTTP/1.1 from C event loops, GET and HEAD only.

    ``address`` is ``(host, port)`` to bind (port 0 picks a free one; host
    ``""`` means every IPv4 interface, ``"::"`` every interface, IPv4
    included); ``sock``, a listening ``SOCK_STREAM`` socket, is served
    instead when given (it stays the caller's: closing the server leaves it
    open and restores its blocking mode; it is held while the server is
    open, so a ``close()`` of it from another thread takes effect when the
    server closes).  ``server_address`` is the address actually bound, as
    in :mod:`socketserver`.

    What is answered (see the "HTTP file server" section of ``csrc/zc.h``):
    a regular file with ``Content-Length``, ``Content-Type`` (from the
    extension), ``Last-Modified``, ``ETag``, ``Accept-Ranges``; 304 for
    ``If-None-Match``/``If-Modified-Since``; one byte range (206, 416 when it
    cannot be satisfied; a request for several ranges gets the whole file); a
    directory without its final ``/`` is redirected (301), with it its
    ``index.html`` or an HTML listing (403 with ``listing=False``).  Paths
    cannot leave ``root``: ``..`` above it, encoded NUL, backslashes and
    invalid UTF-8 are 400; a symlink leading out of ``root`` is 403 unless
    ``follow_symlinks``; FIFOs, sockets and devices are 403 and never opened.
    HTTP/1.1 keep-alive and pipelining; HTTP/1.0 keep-alive on request.

    Options (per worker where it says so; ``None`` for a timeout means none):

    - ``workers``: event loops, each in its own thread with the GIL released,
      sharing the listening socket (``EPOLLEXCLUSIVE``); the thread that calls
      :meth:`serve_forever` runs the first.
    - ``max_connections`` (per worker): at the bound the worker closes its
      longest-idle keep-alive connection for a new one, or stops accepting
      until a connection ends (the others keep accepting).
    - ``max_header_bytes``, ``max_headers``: bounds on the request line plus
      headers (414 or 431 beyond) and on the header count (431).
    - ``header_timeout``: a request head must arrive within this many seconds
      (slow clients are closed); ``keepalive_timeout``: an idle keep-alive
      connection is closed after it; ``send_timeout``: a response whose client
      reads nothing for this long is abandoned; ``linger``: after an error
      answer the connection's input is drained for up to this long, so the
      client reads the answer rather than a reset.
    - ``open_file_cache`` (per worker): files kept open, each checked against
      its path at most every ``open_file_cache_valid`` seconds (0 for either
      turns the cache off: every request opens its file).
    - ``small_file_max``: files up to this many bytes are kept in memory with
      their cache entry and sent with their header in one ``sendmsg``; larger
      ones go with ``sendfile``.
    - ``access_log``: a file descriptor or a file object with ``fileno()``
      (flushed first) that gets one line per request in common log format,
      written by the workers directly (a blocking descriptor that blocks them
      stalls them: give a file or a pipe that is read); ``None``, the
      default, for none.  It stays the caller's to close, after the server.
    - ``backlog``: the listen queue of a socket the server binds.

    Errors: a bad option is ``TypeError`` or ``ValueError``; ``root`` that
    cannot be opened as a directory raises ``FileNotFoundError``,
    ``NotADirectoryError`` or ``PermissionError``; a failed bind
    (``OSError``, e.g. ``EADDRINUSE``) and the other set-up failures raise
    the ``OSError`` with nothing left open.  Errors of single requests or
    connections are never raised: they are answered or end that connection,
    and counted in :attr:`stats`.

    The process: RLIMIT_NOFILE's soft limit is raised toward its hard limit
    when the workers may need more descriptors than it allows (each worker:
    ``max_connections`` sockets and ``open_file_cache`` files); SIGPIPE is
    set to be ignored if it had its default action (Python ignores it from
    startup).
    """

    def __init__(
        self,
        root: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        address: Address = ("127.0.0.1", 8000),
        *,
        workers: int = 1,
        follow_symlinks: bool = False,
        listing: bool = True,
        max_connections: int = _DEFAULTS["max_conns"],
        max_header_bytes: int = _DEFAULTS["head_max"],
        max_headers: int = _DEFAULTS["max_headers"],
        header_timeout: float | None = _DEFAULTS["header_timeout_ms"] / 1000,
        keepalive_timeout: float | None = _DEFAULTS["idle_timeout_ms"] / 1000,
        send_timeout: float | None = _DEFAULTS["send_timeout_ms"] / 1000,
        linger: float = _DEFAULTS["linger_ms"] / 1000,
        open_file_cache: int = _DEFAULTS["cache_entries"],
        open_file_cache_valid: float = _DEFAULTS["cache_valid_ms"] / 1000,
        small_file_max: int = _DEFAULTS["small_file_max"],
        access_log: int | IO[Any] | None = None,
        backlog: int = 511,
        sock: socket.socket | None = None,
    ) -> None:
        self._closed = True  # until everything is open: __del__ and close() do nothing
        workers = _whole("workers", workers, 1, 1024)
        config = {
            "flags": (_c.HTTP_FOLLOW_SYMLINKS if follow_symlinks else 0)
            | (0 if listing else _c.HTTP_NO_LISTING),
            "max_conns": _whole("max_connections", max_connections, 1, 1 << 24),
            "head_max": _whole("max_header_bytes", max_header_bytes, 64, 1 << 20),
            "max_headers": _whole("max_headers", max_headers, 1, 1 << 16),
            "header_timeout_ms": _millis("header_timeout", header_timeout),
            "idle_timeout_ms": _millis("keepalive_timeout", keepalive_timeout),
            "send_timeout_ms": _millis("send_timeout", send_timeout),
            "linger_ms": _millis("linger", linger, zero=True),
            "cache_entries": _whole("open_file_cache", open_file_cache, 0, 1 << 20),
            "cache_valid_ms": _millis("open_file_cache_valid", open_file_cache_valid,
                                      zero=True),
            "small_file_max": _whole("small_file_max", small_file_max, 0, 1 << 20),
            "log_fd": _log_fd(access_log),
        }
        backlog = _whole("backlog", backlog, 0, _INT_MAX)
        if sock is not None:
            if not isinstance(sock, socket.socket):
                raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ValueError("sock must be a listening SOCK_STREAM socket")
        _ignore_sigpipe()
        self._access_log = access_log  # its descriptor stays open while C writes to it
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._loops: list[_c.HttpLoop] = []
        self._own_sock = sock is None
        self._held = False
        self._blocking = True
        try:
            if sock is None:
                sock = _listener(address, backlog)
            self._blocking = sock.getblocking()
            self.socket = sock
            if not self._own_sock:
                # a close() of the caller's socket from another thread waits for
                # ours: its fd number stays the listener while the C loops accept on it
                _c.hold(sock)
                self._held = True
            self.server_address: Any = sock.getsockname()
            config["root_fd"] = self._root_fd
            self._srv = _c.HttpServer(config)
            cache = config["cache_entries"] if config["cache_valid_ms"] else 0
            _raise_nofile(workers * (config["max_conns"] + cache + 8))
            for _ in range(workers):
                self._loops.append(_c.HttpLoop(self._srv, sock.fileno()))
        except BaseException:
            self._release()
            raise
        # Guards the life cycle (serving, closing, freeing) and every use of
        # the stop switch's eventfd against its close.  Reentrant: a signal
        # handler of a thread that holds it may call shutdown() or close().
        self._state = threading.RLock()
        self._serving: int | None = None  # the ident of the thread in serve_forever
        self._done = threading.Event()  # set while serve_forever does not run
        self._done.set()
        self._closing = False
        self._closed = False

    # -- information ------------------------------------------------------------

    @property
    def workers(self) -> int:
        return len(self._loops)

    @property
    def stats(self) -> ServerStats:
        """The counters so far, summed over the workers (see :class:`ServerStats`)."""
        return _sum_stats(self._loops)

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self.socket.fileno()

    # -- serving ----------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` or :meth:`close`; then return.

        Runs the first worker's loop in this thread (the GIL released) and
        the others in threads of their own, which block signals so that
        signals reach the main thread.  Signal handlers run while it serves
        (within 0.1 s); one that returns lets it go on; one that raises
        (``KeyboardInterrupt`` from the default SIGINT handler) ends it with
        that exception after closing every connection at once -- call
        ``shutdown(grace)`` from the handler instead to let responses finish.
        It may be called again after it returned.  Raises ``RuntimeError``
        if it is running already, ``ValueError`` once closed, and the
        ``OSError`` of a worker that failed (``epoll_wait``; never the
        errors of single connections, see :attr:`stats`).
        """
        with self._state:
            if self._closed or self._closing:
                raise ValueError("serve_forever() on a closed FileServer")
            if self._serving is not None:
                raise RuntimeError("serve_forever() is already running")
            self._serving = threading.get_ident()
            self._done.clear()
        threads: list[threading.Thread] = []
        failures: list[BaseException] = []
        error: BaseException | None = None
        try:
            if len(self._loops) > 1:
                old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)  # inherited
                try:
                    for n, loop in enumerate(self._loops[1:], 1):
                        thread = threading.Thread(target=self._work, args=(loop, failures),
                                                  name=f"zerocopy-http-{n}", daemon=True)
                        thread.start()
                        threads.append(thread)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
            loop = self._loops[0]
            while loop.run(_SLICE_MS) != 0:
                pass  # EINTR: the handler ran and returned; ETIMEDOUT: a slice ended
        except BaseException as exc:
            error = exc
            self._srv.stop(0)
        error = self._finish(threads, failures, error)
        if error is not None:
            raise error

    def _work(self, loop: _c.HttpLoop, failures: list[BaseException]) -> None:
        """A worker thread: its loop until stopped; a failure stops the others."""
        try:
            while loop.run(_c.WAIT_FOREVER) != 0:
                pass
        except BaseException as exc:
            failures.append(exc)
            self._srv.stop(0)

    def _finish(self, threads: list[threading.Thread], failures: list[BaseException],
                error: BaseException | None) -> BaseException | None:
        """After serve_forever's own loop ended: end every loop, rearm or free; return
        the exception serve_forever raises."""
        if error is not None:
            try:  # stopped with grace 0: its connections close, it returns at once
                self._loops[0].run(0)
            except OSError:
                pass
        for thread in threads:
            while thread.is_alive():
                try:
                    thread.join()
                except BaseException as exc:  # a handler raised while we waited
                    error = error or exc
                    self._srv.stop(0)
        if error is None and failures:
            error = failures[0]
        with self._state:
            self._serving = None
            if self._closing:
                self._free()
            else:
                self._srv.rearm()
            self._done.set()
        return error

    def shutdown(self, grace: float = 0.0) -> None:
        """Stop :meth:`serve_forever`; safe from another thread and from a signal handler.

        With ``grace`` 0 every connection is closed at once.  With ``grace``
        seconds, the workers stop accepting, close idle connections, and let
        responses in flight finish for up to ``grace`` seconds before closing
        what remains.  A later call may shorten the grace (``shutdown()``
        after ``shutdown(5)`` closes everything now).

        Called from another thread, it waits until ``serve_forever`` has
        returned (as :mod:`socketserver` does); called in the serving thread
        (a signal handler), it returns at once and ``serve_forever`` returns
        when the grace is over.  If ``serve_forever`` is not running, the
        next call to it returns at once.  Does nothing once closed.
        """
        ms = _millis("grace", grace, zero=True)
        with self._state:
            if self._closed:
                return
            self._srv.stop(ms)
            serving = self._serving
        if serving is not None and serving != threading.get_ident():
            self._done.wait()

    def close(self) -> None:
        """Stop serving (closing every connection at once) and release everything.

        Closes the listening socket the server bound (a ``sock`` given to it
        stays open, its blocking mode restored) and the root directory; the
        ``access_log`` stays the caller's.  Safe from another thread (it waits
        for ``serve_forever`` to return) and from a signal handler (then
        ``serve_forever`` releases everything on its way out).  Idempotent.
        """
        with self._state:
            if self._closed:
                return
            serving = self._serving
            if serving is None:
                self._free()
                return
            self._closing = True
            self._srv.stop(0)
            if serving == threading.get_ident():
                return
        self._done.wait()

    def _free(self) -> None:
        """Release the loops, the stop switch, the root and the socket (under ``_state``)."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        for loop in self._loops:
            loop.close()
        srv = getattr(self, "_srv", None)
        if srv is not None:
            srv.close()
        root_fd, self._root_fd = self._root_fd, -1
        if root_fd >= 0:
            os.close(root_fd)
        sock = getattr(self, "socket", None)
        if sock is not None:
            if self._own_sock:
                sock.close()
            elif _c.is_open(sock):
                sock.setblocking(self._blocking)
            if self._held:
                self._held = False
                _c.release(sock)  # a close() the caller made meanwhile happens now

    # -- context manager, finalizer, repr --------------------------------------------

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and self._serving is None:
            self._free()

    def __repr__(self) -> str:
        if self._closed:
            return "<FileServer closed>"
        return f"<FileServer {self.server_address!r}, {len(self._loops)} worker(s)>"
