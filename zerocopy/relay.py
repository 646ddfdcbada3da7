# SPDX-License-Identifier: MIT
"""``relay`` and ``Proxy``: sockets pumped both ways through pipes by the C epoll loop."""
from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple, Union

from . import _lowlevel as _c
from ._args import stream_socket_fd
from ._lowlevel import ffi, lib
from .splice import PipePool, default_pool

__all__ = ["Proxy", "ProxyStats", "relay"]

# The longest the C loop runs without returning to Python, so that signal
# handlers run promptly even while bytes flow (a busy loop never sleeps in
# epoll_wait, where a signal would interrupt it).
_SLICE_MS = 250

Address = Union[tuple[str, int], tuple[str, int, int, int], str]


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
    ``bytes_relayed = (a->b, b->a)``.  ``timeout`` (seconds) bounds how long
    neither direction may move a byte: ``TimeoutError`` after that.  A
    signal handler runs during the relay, which resumes unless it raises.
    The sockets stay open (close them) and keep their blocking mode.
    """
    for name, sock in (("a", a), ("b", b)):
        if isinstance(sock, bool):  # not a file descriptor here
            raise TypeError(f"{name} must be a socket.socket or an int file descriptor, not bool")
    fa = stream_socket_fd(a, "a")
    fb = stream_socket_fd(b, "b")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0 or None")
    pool = default_pool()
    loop = ffi.new("struct zc_relay_loop *")
    rc = lib.zc_relay_loop_init(loop, pool.cdata)
    if rc < 0:
        raise _c.error(rc, 0)
    r = ffi.new("struct zc_relay *")
    done = ffi.new("struct zc_relay *[1]")
    try:
        rc = lib.zc_relay_add(loop, r, fa, fb)
        if rc < 0:
            raise _c.error(rc, 0)
        slice_ms = _SLICE_MS
        if timeout is not None:
            slice_ms = max(1, min(_SLICE_MS, int(timeout * 1000)))
        seen = (0, 0)
        quiet_since = time.monotonic()
        try:
            while True:
                rc = lib.zc_relay_run(loop, slice_ms, done, 1)
                if rc > 0:
                    break
                if rc < 0 and rc != _c.EINTR:
                    raise _c.error(rc, 0)
                # after -EINTR the signal's handler has run (or raised)
                if timeout is not None:
                    now_seen = (int(r.bytes[0]), int(r.bytes[1]))
                    now = time.monotonic()
                    if now_seen != seen:
                        seen, quiet_since = now_seen, now
                    elif now - quiet_since >= timeout:
                        exc = TimeoutError(errno.ETIMEDOUT, "relay timed out: no bytes moved")
                        raise _c.attach(exc, seen, "bytes_relayed")
        except BaseException as exc:
            raise _c.attach(exc, (int(r.bytes[0]), int(r.bytes[1])), "bytes_relayed") from None
        moved = (int(r.bytes[0]), int(r.bytes[1]))
        if r.error:
            raise _c.error(r.error, moved, attr="bytes_relayed")
        return moved
    finally:
        lib.zc_relay_remove(r)  # a no-op once it ended; restores the sockets' flags
        lib.zc_relay_loop_close(loop)


# --------------------------------------------------------------------------- Proxy


class ProxyStats(NamedTuple):
    """A snapshot of a :class:`Proxy`'s counters."""

    accepted: int  # connections accepted
    active: int  # relays running now
    completed: int  # connections that ended cleanly (both directions finished)
    failed: int  # connections that ended with an error or could not be set up
    bytes_up: int  # client -> target bytes, running connections included
    bytes_down: int  # target -> client bytes, running connections included


def sockaddr_bytes(address: Address, family: int | None = None) -> tuple[int, bytes]:
    """Resolve ``address`` ((host, port) or an AF_UNIX path) to (family, struct sockaddr bytes)."""
    if isinstance(address, str):
        path = address.encode()
        if len(path) >= 108:
            raise ValueError("AF_UNIX path too long")
        return socket.AF_UNIX, struct.pack("=H", socket.AF_UNIX) + path + b"\0"
    host, port = address[0], address[1]
    infos = socket.getaddrinfo(host, port, family or socket.AF_UNSPEC, socket.SOCK_STREAM)
    fam, _, _, _, sa_info = infos[0]
    sa: Any = sa_info
    if fam == socket.AF_INET:
        return fam, (
            struct.pack("=H", fam) + struct.pack("!H", sa[1])
            + socket.inet_pton(fam, sa[0]) + bytes(8)
        )
    if fam == socket.AF_INET6:
        return fam, (
            struct.pack("=H", fam) + struct.pack("!HI", sa[1], sa[2])
            + socket.inet_pton(fam, sa[0].split("%")[0]) + struct.pack("=I", sa[3])
        )
    raise ValueError(f"unsupported address family {fam}")


class Proxy:
    """A TCP (or AF_UNIX) relay: accepts on ``listen`` and relays every connection to ``target``.

    ``listen`` is a listening socket (it stays the caller's) or an address to
    bind, ``(host, port)``; ``target`` is ``(host, port)`` (resolved once,
    now) or an AF_UNIX path.  Accepting, connecting and relaying all happen
    in the C epoll loop with the GIL released, so one thread serves
    thousands of connections.  Each client gets its own connection to the
    target; a failure (unreachable target, a reset) ends that connection
    only, resetting both of its sockets, and counts in ``stats().failed``.
    At most ``max_connections`` run at once; more wait in the listen backlog.
    A connection holds a pipe (``pipe_size``, 1 MiB) only while bytes are in
    flight; past ``/proc/sys/fs/pipe-user-pages-soft`` an unprivileged user
    gets smaller pipes, which still work.

    ``serve_forever()`` runs until ``close()`` (from another thread or a
    signal handler) or until a signal handler raises; ``close()`` resets the
    running connections and frees everything.
    """

    def __init__(
        self,
        listen: socket.socket | tuple[str, int],
        target: Address,
        *,
        max_connections: int = 1024,
        backlog: int = 511,
        pipe_size: int = lib.ZC_PIPE_SIZE,
    ) -> None:
        self._closed = True
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._family, self._target = sockaddr_bytes(target)
        if isinstance(listen, socket.socket):
            if listen.type != socket.SOCK_STREAM:
                raise ValueError("listen must be a SOCK_STREAM socket")
            self._sock = listen
            self._own_sock = False
        else:
            self._sock = _listener(listen, backlog)
            self._own_sock = True
        self._blocking = self._sock.getblocking()
        try:
            self._pool = PipePool(pipe_size, max_idle=64)
            self._loop = ffi.new("struct zc_relay_loop *")
            rc = lib.zc_relay_loop_init(self._loop, self._pool.cdata)
            if rc < 0:
                raise _c.error(rc, 0)
            self._slots = ffi.new("struct zc_relay[]", max_connections)
            self._px = ffi.new("struct zc_proxy *")
            self._target_buf = ffi.from_buffer(self._target)
            rc = lib.zc_proxy_init(
                self._px, self._loop, self._sock.fileno(),
                ffi.cast("struct sockaddr *", self._target_buf), len(self._target),
                self._slots, max_connections,
            )
            if rc < 0:
                lib.zc_relay_loop_close(self._loop)
                raise _c.error(rc, 0)
        except BaseException:
            if self._own_sock:
                self._sock.close()
            raise
        self._done = ffi.new("struct zc_relay *[1]")
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
        px = self._px
        loop = self._loop
        return ProxyStats(
            int(px.accepted), int(px.active), int(px.completed), int(px.failed),
            int(loop.bytes[0]), int(loop.bytes[1]),
        )

    def serve_forever(
        self,
        callback: Callable[[ProxyStats], None] | None = None,
        interval: float = 1.0,
    ) -> None:
        """Accept and relay until :meth:`close` is called.

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
                rc = lib.zc_relay_run(self._loop, slice_ms, self._done, 1)
                if rc < 0 and rc != _c.EINTR:
                    raise _c.error(rc, 0)
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
                lib.zc_relay_wake(self._loop)
                if serving == threading.get_ident():
                    return  # a handler in the serving thread: serve_forever frees on its way out
        with self._lock:
            self._free()

    def _free(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            lib.zc_relay_loop_close(self._loop)  # closes the proxy and its connections
        self._pool.close()
        if self._own_sock:
            self._sock.close()
        else:
            self._sock.setblocking(self._blocking)

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


def _listener(address: tuple[str, int], backlog: int) -> socket.socket:
    host, port = address[0], address[1]
    infos = socket.getaddrinfo(
        host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    fam, kind, proto, _, sa = infos[0]
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
