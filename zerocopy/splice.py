# SPDX-License-Identifier: MIT
"""``recvfile`` and ``splice_all``: bytes between sockets, pipes and files with splice(2)."""
from __future__ import annotations

import io
import os
import socket
import stat
import threading
from typing import Any, Union

from . import _lowlevel as _c
from ._args import (
    check_binary,
    check_range,
    seekable,
    stream_socket_fd,
    timeout_ms,
    writable,
)
from ._lowlevel import TO_EOF, WAIT_FOREVER, ffi, lib

__all__ = ["PipePool", "recvfile", "splice_all"]

_CHUNK = 256 * 1024

FdLike = Union[int, Any]  # an int fd or an object with fileno()


class PipePool:
    """A bounded pool of empty pipes, grown to ``pipe_size`` bytes with ``F_SETPIPE_SZ``.

    Pipes are made on demand (``O_CLOEXEC | O_NONBLOCK``); a pipe that cannot
    be grown (``/proc/sys/fs/pipe-max-size``, ``pipe-user-pages-soft``) keeps
    its smaller size.  At most ``max_idle`` empty pipes are kept; a pipe that
    still holds bytes after an error is closed, never reused.  Thread-safe.
    """

    def __init__(self, pipe_size: int = lib.ZC_PIPE_SIZE, max_idle: int = 16) -> None:
        if pipe_size < 0 or max_idle < 0:
            raise ValueError("pipe_size and max_idle must be >= 0")
        self._slots = ffi.new("struct zc_pipe[]", max(max_idle, 1))
        self._pool = ffi.new("struct zc_pipe_pool *")
        rc = lib.zc_pipe_pool_init(self._pool, self._slots, max_idle, pipe_size)
        if rc < 0:
            raise _c.error(rc, 0)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def cdata(self) -> Any:
        """The ``struct zc_pipe_pool *`` (for the C calls of this package)."""
        return self._pool

    def stats(self) -> dict[str, int]:
        """Counters: pipes ``created``, gets ``reused``, puts ``discarded``, ``small`` pipes."""
        p = self._pool
        return {
            "created": int(p.created),
            "reused": int(p.reused),
            "discarded": int(p.discarded),
            "small": int(p.small),
        }

    @property
    def idle(self) -> int:
        """Empty pipes waiting in the pool (two descriptors each)."""
        return int(lib.zc_pipe_pool_idle(self._pool))

    def take(self) -> Any:
        """An empty ``struct zc_pipe *``; give it back with :meth:`give`."""
        pipe = ffi.new("struct zc_pipe *")
        with self._lock:  # not while close() empties the pool
            rc = lib.zc_pipe_get(self._pool if not self._closed else ffi.NULL, pipe)
        if rc < 0:
            raise _c.error(rc, 0)
        return pipe

    def give(self, pipe: Any) -> None:
        """Put ``pipe`` back (it is closed when it holds bytes, or the pool is closed or full)."""
        # Under the lock: a pipe pooled after close() emptied the pool would
        # never be closed (two descriptors leaked).
        with self._lock:
            lib.zc_pipe_put(self._pool if not self._closed else ffi.NULL, pipe)

    def close(self) -> None:
        """Close the idle pipes; pipes given back later are closed too."""
        with self._lock:
            self._closed = True
            lib.zc_pipe_pool_destroy(self._pool)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            lib.zc_pipe_pool_destroy(self._pool)


_default_pool: PipePool | None = None
_default_lock = threading.Lock()


def default_pool() -> PipePool:
    """The process-wide pool used by :func:`splice_all`, :func:`recvfile` and relays."""
    global _default_pool
    pool = _default_pool
    if pool is None:
        with _default_lock:
            if _default_pool is None:
                _default_pool = PipePool()
            pool = _default_pool
    return pool


# --------------------------------------------------------------------------- arguments


def _fd_of(obj: Any, name: str) -> int:
    if isinstance(obj, int):
        if obj < 0:
            raise ValueError(f"{name} must be a file descriptor >= 0, got {obj}")
        return obj
    check_binary(obj, name)
    try:
        fd = obj.fileno()
    except (AttributeError, io.UnsupportedOperation):
        raise TypeError(
            f"{name} must be an int file descriptor or an object with fileno(), "
            f"not {type(obj).__name__}"
        ) from None
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"{name} is closed")
    return fd


def _wait_ms(sock: Any, fd: int) -> int:
    """A socket object's timeout; for a bare fd, wait only when it blocks (it has no timeout)."""
    if isinstance(sock, socket.socket):
        return timeout_ms(sock.gettimeout())
    return 0 if os.get_blocking(fd) is False else WAIT_FOREVER


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


# --------------------------------------------------------------------------- the loop


def _run(
    src: int,
    src_off: Any,
    dst: int,
    dst_off: Any,
    count: int,
    wait_ms: int,
    moved: Any,
    attr: str,
    what: str,
    pool: PipePool | None,
    preload: Any = b"",
) -> int:
    """zc_splice, resumed after signals; ``moved`` (uint64_t[1]) keeps the total.

    ``count`` is the total to reach, bytes already in ``moved`` included.
    ``preload``: bytes to deliver before anything is read from ``src`` (a
    Python buffer's); they are written into the pool's pipe, and this call
    delivers what fitted (``count`` is ignored).

    When the call fails with bytes read into the pipe but not delivered, a
    seekable ``src`` is rewound by them (``src_off``, or the fd's own
    position), so that its position matches the bytes delivered; from a
    socket they are lost with the pipe.
    """
    via = ffi.NULL
    if pool is not None:
        via = pool.take()
    try:
        if preload:
            via.buffered = os.write(via.wfd, preload)
            count = int(moved[0]) + int(via.buffered)
        while True:
            left = count if count == TO_EOF else count - int(moved[0])
            rc = lib.zc_splice(src, src_off, dst, dst_off, left, via, wait_ms, moved)
            if rc == 0:
                return int(moved[0])
            if rc == _c.EAGAIN and via != ffi.NULL and via.buffered:
                # Bytes read from the source sit in our pipe: they cannot go
                # back, so finish writing them even to a non-blocking socket.
                rc = lib.zc_wait_writable(dst, WAIT_FOREVER)
                if rc == 0 or rc == _c.EINTR:
                    continue
            if rc != _c.EINTR:
                raise _c.error(rc, int(moved[0]), attr=attr, what=what)
            # a signal arrived and its handler ran (it would have raised): resume
    except BaseException as exc:
        raise _c.attach(exc, int(moved[0]), attr) from None
    finally:
        if pool is not None:
            if via.buffered and not preload:
                _unread(src, src_off, int(via.buffered))
            pool.give(via)  # closes it when it still holds bytes


def _unread(src: int, src_off: Any, n: int) -> None:
    """Move a seekable source back by ``n`` bytes read into a pipe and never delivered."""
    if src_off != ffi.NULL:
        src_off[0] -= n
        return
    try:
        os.lseek(src, -n, os.SEEK_CUR)
    except OSError:
        pass  # a socket: the bytes cannot be put back (see splice_all)


def recvfile(
    sock: socket.socket | int, file: Any, count: int | None = None, offset: int | None = None
) -> int:
    """Receive from ``sock`` into ``file`` with splice(2); return the bytes received.

    ``sock`` is a connected ``SOCK_STREAM`` socket or its int fd.  ``file`` is
    an int fd or a binary file object opened for writing (``io.BytesIO`` and
    other objects without ``fileno()`` are written through Python).
    ``count=None`` receives until the peer's EOF; an explicit ``count`` the
    peer does not deliver raises ``TruncatedFileError``.  ``offset=None``
    writes at the file's current position.  A file object's position ends at
    start + bytes received, also after an exception; an int fd's position is
    used and advanced only when ``offset`` is None.

    A socket's timeout applies to each wait for data (``TimeoutError``); a
    non-blocking socket with nothing to read raises ``BlockingIOError``; a
    signal handler runs during the transfer, which resumes unless it raises.
    Every exception raised once the transfer started, ``KeyboardInterrupt``
    included, has ``bytes_received``: the bytes written to the file.
    """
    sock_fd = stream_socket_fd(sock)
    check_range(offset, count)
    wait_ms = _wait_ms(sock, sock_fd)
    left = TO_EOF if count is None else count
    moved = ffi.new("uint64_t[1]")

    if isinstance(file, int):
        if file < 0:
            raise ValueError(f"file must be a file descriptor >= 0, got {file}")
        pipe = _is_pipe(file)
        off = ffi.NULL if offset is None else ffi.new("int64_t[1]", [offset])
        return _run(sock_fd, ffi.NULL, file, off, left, wait_ms, moved,
                    "bytes_received", "the stream", None if pipe else default_pool())

    check_binary(file)
    if getattr(file, "closed", False):
        raise ValueError("I/O operation on closed file")
    try:
        can_write = bool(file.writable())
    except (AttributeError, ValueError):
        can_write = hasattr(file, "write")
    if not can_write:
        raise io.UnsupportedOperation("file must be opened for writing")
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    can_seek = seekable(file)
    if offset is not None and not can_seek:
        raise ValueError("offset needs a seekable file")
    if fd is None:
        return _recv_through_python(sock, sock_fd, file, offset, left)
    file.flush()  # bytes in the write buffer go first
    if not can_seek:
        pool = None if _is_pipe(fd) else default_pool()
        return _run(sock_fd, ffi.NULL, fd, ffi.NULL, left, wait_ms, moved,
                    "bytes_received", "the stream", pool)
    start = file.tell() if offset is None else offset
    off = ffi.new("int64_t[1]", [start])
    try:
        return _run(sock_fd, ffi.NULL, fd, off, left, wait_ms, moved,
                    "bytes_received", "the stream", default_pool())
    finally:
        file.seek(start + int(moved[0]))


def _recv_through_python(
    sock: socket.socket | int, sock_fd: int, file: Any, offset: int | None, count: int
) -> int:
    """recv + write for objects without a file descriptor (``io.BytesIO``)."""
    can_seek = seekable(file)
    start = 0
    if can_seek:
        start = file.tell() if offset is None else offset
        file.seek(start)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    done = 0
    try:
        while count == TO_EOF or done < count:
            want = _CHUNK if count == TO_EOF else min(_CHUNK, count - done)
            if isinstance(sock, socket.socket):
                n = sock.recv_into(view, want)
            else:
                n = os.readv(sock_fd, [view[:want]])
            if n == 0:
                if count == TO_EOF:
                    break
                raise _c.error(_c.ENODATA, done, attr="bytes_received", what="the stream")
            file.write(view[:n])
            done += n
        return done
    except BaseException as exc:
        raise _c.attach(exc, done, "bytes_received") from None
    finally:
        if can_seek:
            file.seek(start + done)


def splice_all(src: FdLike, dst: FdLike, count: int | None = None) -> int:
    """Move ``count`` bytes (default: until EOF) from ``src`` to ``dst``; return the bytes moved.

    Each of ``src`` and ``dst`` is an int fd or an object with ``fileno()``:
    a socket, a pipe or a file, in any pair splice(2) can serve.  When
    neither is a pipe, the bytes go through a pooled pipe (src -> pipe ->
    dst) and never through user space.  A file object's position is used
    and moved by the bytes read from (or written to) it; an int fd's own
    position is used and advanced.  A buffered reader that is not seekable
    (``open(pipe_fd, "rb")``, ``sock.makefile("rb")``) may already hold
    bytes in its buffer (``peek`` reads once when it holds none): those go
    first, then the rest comes from its file descriptor.

    After an exception the positions still match ``bytes_sent``: bytes read
    from a seekable source into the pipe but not written to ``dst`` are
    given back (the source's position is moved back over them), so a new
    call resumes exactly there.  From a socket they cannot be given back:
    they are dropped with the pipe (at most one pipe's worth, ``pipe_size``
    of the pool) and the source stream is no longer usable.

    Waits follow the sockets: a socket object's timeout bounds each wait
    (``TimeoutError``), a non-blocking fd raises ``BlockingIOError`` when it
    would block before any byte was read into the pipe; bytes already read
    are always written out.  ``TruncatedFileError`` when ``src`` ends before
    ``count`` bytes.  Every exception raised once the transfer started has
    ``bytes_sent``: the bytes written to ``dst``.
    """
    s_fd = _fd_of(src, "src")
    d_fd = _fd_of(dst, "dst")
    check_range(None, count)
    waits = [
        _wait_ms(obj, fd) if isinstance(obj, socket.socket) or _is_socket(fd)
        else WAIT_FOREVER
        for obj, fd in ((src, s_fd), (dst, d_fd))
    ]
    wait_ms = _combine(waits)
    pool = None if _is_pipe(s_fd) or _is_pipe(d_fd) else default_pool()
    positioned: list[tuple[Any, Any]] = []  # (file object or None, int64_t[1] or NULL)
    for obj in (src, dst):
        if isinstance(obj, (int, socket.socket)):
            positioned.append((None, ffi.NULL))
            continue
        if writable(obj):
            obj.flush()  # bytes in the write buffer go first
        if not seekable(obj):
            positioned.append((None, ffi.NULL))
            continue
        positioned.append((obj, ffi.new("int64_t[1]", [obj.tell()])))
    total = TO_EOF if count is None else count
    head = _buffered_head(src, count)
    moved = ffi.new("uint64_t[1]")
    try:
        view = memoryview(head)
        sent = 0
        while sent < len(head):  # each round delivers bytes or raises
            _run(s_fd, ffi.NULL, d_fd, positioned[1][1], 0, wait_ms, moved,
                 "bytes_sent", "the source", default_pool(), view[sent:])
            sent = int(moved[0])
        if total == TO_EOF or int(moved[0]) < total:
            _run(s_fd, positioned[0][1], d_fd, positioned[1][1], total,
                 wait_ms, moved, "bytes_sent", "the source", pool)
        return int(moved[0])
    finally:
        if head:
            reader: Any = src
            reader.read(min(int(moved[0]), len(head)))  # from its buffer: no raw read
        for obj, off in positioned:
            if obj is not None:
                obj.seek(int(off[0]))


def _buffered_head(src: Any, count: int | None) -> bytes:
    """The bytes a buffered, non-seekable reader already holds (``peek``)."""
    if isinstance(src, (int, socket.socket, io.RawIOBase)) or seekable(src):
        return b""
    peek = getattr(src, "peek", None)
    if peek is None or count == 0:
        return b""
    head = bytes(peek(1))  # its whole buffer; one raw read when it is empty
    return head if count is None else head[:count]


def _is_socket(fd: int) -> bool:
    return stat.S_ISSOCK(os.fstat(fd).st_mode)


def _combine(waits: list[int]) -> int:
    """The strictest of two wait policies: 0 (never wait) < a bound < forever."""
    if 0 in waits:
        return 0
    bounded = [w for w in waits if w != WAIT_FOREVER]
    return min(bounded) if bounded else WAIT_FOREVER

