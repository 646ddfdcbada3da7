# SPDX-License-Identifier: MIT
"""``relay`` and ``Proxy``: sockets pumped both ways through pipes by the C epoll loop."""
from __future__ import annotations

import errno
import math
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple, Union

from . import _lowlevel as _c
from ._args import stream_socket_fd, timeout_ms
from ._lowlevel import INT_MAX, PIPE_SIZE, WAIT_FOREVER, PipePool, default_pool, raw_socket_type

__all__ = ["Proxy", "ProxyStats", "default_max_connections", "raise_fd_limit", "relay"]

Address = Union[tuple[str, int], tuple[str, int, int, int], str]


# The longest serve_forever() leaves C without returning to Python (signal
# handlers, close() of the listening socket, the progress callback).
_SLICE_MS = 250
# Idle pipes a Proxy's pool keeps (two descriptors each).
_POOL_IDLE = 64
# Descriptors a Proxy leaves to the rest of the process when it sizes its table.
_FD_RESERVE = 64
# The largest table a Proxy makes on its own (about 230 bytes a slot).
_MAX_DEFAULT_CONNECTIONS = 16384


def _is_ssl(sock: Any) -> bool:
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


# --------------------------------------------------------------------------- relay


def relay(
    a: socket.socket | int, b: socket.socket | int, *, timeout: float | None = None
) -> tuple[int, int]:
    """Relay two connected stream sockets both ways until both directions end.

    Bytes read from ``a`` are written to ``b`` and the other way round,
    through pipes with splice(2), by the C epoll loop with the GIL released.
    When one side reaches EOF, the other gets ``shutdown(SHUT_WR)`` (a
    half-close is passed on) and the other direction carries on.  Returns
    ``(bytes a->b, bytes b->a)``.

    A reset or other error on either socket ends both: the sockets are reset
    (TCP peers see ``ECONNRESET``) and the error is raised, with
    ``bytes_relayed = (a->b, b->a)``.  ``timeout`` (seconds; None or inf:
    none) bounds how long neither direction may move a byte: then
    ``TimeoutError`` (the C loop's idle timeout; the sockets are not reset,
    bytes in flight in the pipes are dropped).  A signal handler runs during
    the relay, which resumes unless it raises.  The socket objects are held
    while the relay runs: a ``close()`` from another thread ends it with
    ``EBADF`` (within a quarter of a second) and takes effect then.  Nothing
    holds an int fd: the relay works on a duplicate of it, and the number's
    identity is taken at the start and checked each time the relay resumes,
    so a number that another thread closed and a new connection reused ends
    the relay with ``EBADF``, no byte of the new connection moved.  The sockets stay open
    (close them) and keep their blocking mode.

    An ``ssl.SSLSocket`` raises ``ValueError``: splicing its fd would move
    TLS records, not the data; relay the plain sockets (TLS passes through).
    """
    for name, sock in (("a", a), ("b", b)):
        if isinstance(sock, bool):  # not a file descriptor here
            raise TypeError(f"{name} must be a socket.socket or an int file descriptor, not bool")
        if _is_ssl(sock):
            raise ValueError(
                f"{name} is an ssl.SSLSocket: a relay moves raw bytes, which on a TLS "
                "socket are its records; relay the plain sockets (TLS then passes through) "
                "or copy through sock.recv()/sendall()"
            )
    fa = stream_socket_fd(a, "a")
    fb = stream_socket_fd(b, "b")
    if timeout is None or timeout == math.inf:
        idle_ms = WAIT_FOREVER
    else:
        idle_ms = max(1, timeout_ms(timeout))  # raises ValueError for < 0
    owners = tuple(s for s in (a, b) if isinstance(s, socket.socket))
    watch = tuple(fd for s, fd in ((a, fa), (b, fb)) if not isinstance(s, socket.socket))
    return _c.relay(fa, fb, default_pool(), idle_ms, owners, watch)


# --------------------------------------------------------------------------- Proxy


class ProxyStats(NamedTuple):
    """A snapshot of a :class:`Proxy`'s counters.

    ``accepted`` = ``active`` + ``completed`` + ``failed`` + ``refused``.
    """

    accepted: int  # connections accepted
    active: int  # relays running now
    completed: int  # connections that ended cleanly (both directions finished)
    failed: int  # ended with an error or a timeout, or could not be set up
    bytes_up: int  # client -> target bytes, running connections included
    bytes_down: int  # target -> client bytes, running connections included
    refused: int = 0  # reset at once: every slot taken, or no descriptor left (EMFILE)
    timed_out: int = 0  # ended by a connect, idle or stall timeout (also in ``failed``)


def raise_fd_limit() -> int:
    """Raise ``RLIMIT_NOFILE``'s soft limit as far as the hard limit allows; return it.

    The hard limit is the ceiling (``/proc/sys/fs/nr_open`` when it is
    unlimited).  The limit is the whole process's: descriptors above 1023
    cannot be used with ``select.select()``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (ValueError, OSError):
            pass  # keep what we have
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _nr_open() if soft == resource.RLIM_INFINITY else int(soft)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def default_max_connections(fd_limit: int) -> int:
    """The connection table :class:`Proxy` makes for a descriptor limit of ``fd_limit``.

    A connection takes two sockets, plus a pipe (two descriptors) for each
    direction while bytes are in flight: four are counted per connection,
    after 64 for the rest of the process and 128 for the pool's idle pipes
    (a connection that finds no pipe waits for one rather than failing).
    At most 16384.  1024 gives 208.
    """
    spare = fd_limit - _FD_RESERVE - 2 * _POOL_IDLE
    return max(1, min(_MAX_DEFAULT_CONNECTIONS, spare // 4))


def _port(value: Any, name: str, lowest: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    if not 0 <= value <= 65535:
        raise OverflowError(f"{name}: port must be 0-65535.")
    if value < lowest:
        raise ValueError(f"{name}: port must be {lowest}-65535, got {value}")
    port: int = value
    return port


def _host_port(address: Any, name: str, lowest_port: int,
               any_host: bool = False) -> tuple[Any, int, tuple[int, int] | None]:
    """(host, port, (flowinfo, scope_id) or None) of a (host, port[, flowinfo, scope_id])
    tuple, checked as ``socket.bind()`` would; ``any_host``: None means every interface."""
    if not isinstance(address, tuple):
        raise TypeError(
            f"{name} must be a (host, port) tuple or an AF_UNIX path, not {type(address).__name__}"
        )
    if len(address) not in (2, 4):
        raise TypeError(
            f"{name} must be a pair (host, port) or a tuple (host, port, flowinfo, scope_id)"
        )
    host = address[0]
    if not isinstance(host, (str, bytes, bytearray)) and not (host is None and any_host):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if isinstance(host, bytearray):
        host = bytes(host)
    port = _port(address[1], name, lowest_port)
    if len(address) == 2:
        return host, port, None
    for field in address[2:]:
        if isinstance(field, bool) or not isinstance(field, int):
            raise TypeError(f"'{type(field).__name__}' object cannot be interpreted as an integer")
    flowinfo, scope_id = address[2], address[3]
    if not 0 <= flowinfo <= 0xFFFFF:
        raise OverflowError(f"{name}: flowinfo must be 0-1048575.")
    if not 0 <= scope_id <= 0xFFFFFFFF:
        raise OverflowError(f"{name}: scope_id must be 0-4294967295.")
    return host, port, (flowinfo, scope_id)


def sockaddr_bytes(address: Address, family: int | None = None,
                   name: str = "target") -> tuple[int, bytes]:
    """Check and resolve ``address`` to (family, ``struct sockaddr`` bytes).

    ``address`` is ``(host, port)`` (resolved now), ``(host, port, flowinfo,
    scope_id)`` for IPv6, or an AF_UNIX path: a ``str`` (or bytes, or path
    object) with a ``/`` in it, or starting with NUL (the abstract
    namespace).  Mistakes raise what ``socket.connect`` would (``TypeError``,
    ``OverflowError`` for a port above 65535, ``OSError`` for a path too
    long), or ``ValueError`` for a string that is no path ("host:80").
    """
    if isinstance(address, (str, bytes, os.PathLike)):
        path = os.fsencode(address)
        abstract = path.startswith(b"\0")
        if not abstract and b"/" not in path:
            raise ValueError(
                f"{name} {address!r} is not an AF_UNIX path (no '/'; write './{os.fsdecode(path)}'"
                " for one here); a TCP address is a (host, port) tuple"
            )
        if not abstract and b"\0" in path:
            raise ValueError("embedded null byte")
        if len(path) >= 108:
            raise OSError("AF_UNIX path too long")
        return socket.AF_UNIX, struct.pack("=H", socket.AF_UNIX) + path + (b"" if abstract
                                                                           else b"\0")
    host, port, v6 = _host_port(address, name, 1)
    if v6 is not None:
        family = socket.AF_INET6
    infos = socket.getaddrinfo(host, port, family or socket.AF_UNSPEC, socket.SOCK_STREAM)
    fam, _, _, _, sa_info = infos[0]
    sa: Any = sa_info
    if fam == socket.AF_INET:
        return fam, (
            struct.pack("=H", fam) + struct.pack("!H", sa[1])
            + socket.inet_pton(fam, sa[0]) + bytes(8)
        )
    if fam == socket.AF_INET6:
        flow, scope = v6 if v6 is not None else (sa[2], sa[3])
        return fam, (
            struct.pack("=H", fam) + struct.pack("!HI", sa[1], flow)
            + socket.inet_pton(fam, sa[0].split("%")[0]) + struct.pack("=I", scope)
        )
    raise ValueError(f"unsupported address family {fam}")


def _timeout_ms_arg(name: str, value: float | None) -> int:
    if value is None or value == math.inf:
        return WAIT_FOREVER
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value > 0:  # zero, negative or NaN
        raise ValueError(f"{name} must be > 0 or None, got {value!r}")
    return min(math.ceil(value * 1000), INT_MAX)


def _check_listener(sock: socket.socket) -> None:
    if _is_ssl(sock):
        raise ValueError(
            "listen is an ssl.SSLSocket: the proxy does not terminate TLS; give it the "
            "plain listening socket (TLS then passes through to the target untouched)"
        )
    if raw_socket_type(sock) != socket.SOCK_STREAM:
        raise ValueError("listen must be a SOCK_STREAM socket")
    if sock.fileno() < 0:
        raise OSError(errno.EBADF, "listen is closed")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("listen must be a listening socket (call its listen() first)")


class Proxy:
    """A TCP (or AF_UNIX) relay: accepts on ``listen`` and relays every connection to ``target``.

    ``listen`` is a listening socket (it stays the caller's) or an address to
    bind, ``(host, port)``; ``target`` is ``(host, port)`` (resolved once,
    now) or an AF_UNIX path.  Accepting, connecting and relaying all happen
    in the C epoll loop with the GIL released, so one thread serves
    thousands of connections.  Each client gets its own connection to the
    target; a failure (unreachable target, a reset) ends that connection
    only, resetting both of its sockets, and counts in ``stats().failed``.

    No client is left waiting unanswered: at most ``max_connections`` run at
    once, and a client beyond them, or one that arrives when the process has
    no descriptor left, is accepted and reset at once (``stats().refused``).
    By default the proxy raises the process's ``RLIMIT_NOFILE`` soft limit
    to the hard limit (``raise_fd_limit=False`` leaves it) and sizes
    ``max_connections`` from it (:func:`default_max_connections`: 208 at
    1024 descriptors, at most 16384); an explicit value above half the limit
    (two descriptors a connection) is lowered to it.  A connection holds a pipe
    (``pipe_size``, 1 MiB) only while bytes are in flight; past
    ``/proc/sys/fs/pipe-user-pages-soft`` an unprivileged user gets smaller
    pipes, which still work, and a connection that finds no descriptor for a
    pipe waits for one.

    Timeouts (seconds; None for no bound), kept by the C loop: a connection
    is reset on both sides and counted in ``failed`` and ``timed_out`` when
    the target does not accept it within ``connect_timeout`` (10), when no
    byte moves either way for ``idle_timeout`` (300), or when bytes wait for
    a peer that does not read them for ``stall_timeout`` (60): a client or
    target that stopped reading, or a client that left while the target does
    not take its last bytes.

    ``serve_forever()`` runs until ``close()`` (from another thread or a
    signal handler), until a signal handler raises, or until the caller
    closes the listening socket; ``close()`` resets the running connections
    and frees everything.  The listening socket is held while the proxy is
    open: its ``close()`` takes effect when the proxy closes.  An
    ``ssl.SSLSocket`` listener raises ``ValueError`` (the proxy does not
    terminate TLS).
    """

    def __init__(
        self,
        listen: socket.socket | tuple[str, int],
        target: Address,
        *,
        max_connections: int | None = None,
        backlog: int = 511,
        pipe_size: int = PIPE_SIZE,
        connect_timeout: float | None = _c.PROXY_CONNECT_MS / 1000,
        idle_timeout: float | None = _c.PROXY_IDLE_MS / 1000,
        stall_timeout: float | None = _c.PROXY_STALL_MS / 1000,
        raise_fd_limit: bool = True,
    ) -> None:
        self._closed = True
        if max_connections is not None:
            if isinstance(max_connections, bool) or not isinstance(max_connections, int):
                raise TypeError("max_connections must be an int or None, "
                                f"not {type(max_connections).__name__}")
            if max_connections < 1:
                raise ValueError("max_connections must be >= 1")
        timeouts = (
            _timeout_ms_arg("connect_timeout", connect_timeout),
            _timeout_ms_arg("idle_timeout", idle_timeout),
            _timeout_ms_arg("stall_timeout", stall_timeout),
        )
        self._family, self._target = sockaddr_bytes(target)
        if isinstance(listen, socket.socket):
            _check_listener(listen)
            self._sock = listen
            self._own_sock = False
        else:
            self._sock = _listener(listen, backlog)
            self._own_sock = True
        self._blocking = self._sock.getblocking()
        pool: PipePool | None = None
        try:
            self.fd_limit = _raise_fd_limit() if raise_fd_limit else _soft_fd_limit()
            if max_connections is None:
                max_connections = default_max_connections(self.fd_limit)
            # two descriptors a connection: more slots could never be used
            max_connections = min(max_connections, max(1, self.fd_limit // 2))
            self.max_connections = max_connections
            pool = PipePool(pipe_size, max_idle=_POOL_IDLE)
            self._core = _c.ProxyLoop(pool, self._sock.fileno(), self._target, max_connections,
                                      timeouts)
        except BaseException:
            if pool is not None:
                pool.close()
            if self._own_sock:
                self._sock.close()
            raise
        self._pool = pool
        _c.hold(self._sock)  # its fd number stays ours while C accepts on it
        # Held while serving.  Reentrant: a signal handler in the serving
        # thread may call close() after serve_forever stopped serving but
        # before it let go of the lock.
        self._lock = threading.RLock()
        # Guards _serving_thread and the loop's lifetime: close() wakes the
        # loop under it, and _free() closes the loop (its eventfd) under it,
        # so a wake never writes to a closed (or reused) descriptor.
        # Reentrant: close() may run in a signal handler of the serving
        # thread while that thread holds it.
        self._state_lock = threading.RLock()
        self._closing = False
        self._serving_thread: int | None = None
        self._closed = False

    @property
    def address(self) -> Any:
        """The listening socket's address (``getsockname()``)."""
        return self._sock.getsockname()

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self._sock.fileno()

    def stats(self) -> ProxyStats:
        """Counters so far (read without locking: a snapshot may be a moment old)."""
        return ProxyStats(*self._core.stats())

    def serve_forever(
        self,
        callback: Callable[[ProxyStats], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        """Accept and relay until :meth:`close` is called (or the listening socket is closed).

        ``callback(stats)`` runs every ``interval`` seconds (for progress lines).
        A signal handler runs promptly; one that raises (``KeyboardInterrupt``)
        ends the call with its exception, leaving the proxy open: call close().
        """
        if self._closed:
            raise ValueError("serve_forever() on a closed Proxy")
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("serve_forever() is already running")
        with self._state_lock:
            if self._serving_thread is not None:  # again, from its own callback
                self._lock.release()
                raise RuntimeError("serve_forever() is already running")
            self._serving_thread = threading.get_ident()
        try:
            slice_ms = _SLICE_MS
            if callback is not None:
                slice_ms = max(1, min(_SLICE_MS, int(interval * 1000)))
            next_tick = time.monotonic() + interval
            while not self._closing:
                self._core.run(slice_ms)
                if not _c.is_open(self._sock):  # the caller closed the listener
                    self._closing = True
                if callback is not None and time.monotonic() >= next_tick:
                    next_tick += interval
                    callback(self.stats())
        finally:
            with self._state_lock:
                self._serving_thread = None
            try:
                if self._closing:
                    self._free()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Stop serving, reset running connections, free the loop; idempotent.

        Safe from another thread and from a signal handler of the serving thread.
        """
        with self._state_lock:
            if self._closed or self._closing:
                return
            self._closing = True
            serving = self._serving_thread
            if serving is not None:
                # the serving thread cannot free the loop while we hold the lock
                self._core.wake()
                if serving == threading.get_ident():
                    return  # a handler in the serving thread: serve_forever frees on its way out
        with self._lock:
            self._free()

    def _free(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._core.close()  # closes the proxy and its connections
        self._pool.close()
        if self._own_sock:
            _c.release(self._sock)
            self._sock.close()
        else:
            if _c.is_open(self._sock):
                self._sock.setblocking(self._blocking)
            _c.release(self._sock)  # a close() the caller made meanwhile happens now

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and self._serving_thread is None:
            self._free()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"listening on {self.address!r}"
        return f"<Proxy {state}>"


def _raise_fd_limit() -> int:
    return raise_fd_limit()


def _soft_fd_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _nr_open() if soft == resource.RLIM_INFINITY else int(soft)


def _listener(address: Any, backlog: int) -> socket.socket:
    if isinstance(address, (str, bytes, os.PathLike)):
        raise TypeError(
            "listen must be a listening socket or a (host, port) tuple, not "
            f"{type(address).__name__}; for AF_UNIX, bind and listen on a socket and pass it"
        )
    host, port, v6 = _host_port(address, "listen", 0, any_host=True)
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_INET6 if v6 else socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
        socket.AI_PASSIVE,
    )
    fam, kind, proto, _, sa_info = infos[0]
    sa: Any = sa_info if v6 is None else (sa_info[0], sa_info[1], *v6)
    sock = socket.socket(fam, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sa)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
