# SPDX-License-Identifier: MIT
"""``recvfile`` and ``splice_all``: bytes between sockets, pipes and files with splice(2)."""
from __future__ import annotations

import errno
import io
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any, Union

from . import _lowlevel as _c
from ._args import (
    check_binary,
    check_range,
    check_stream,
    seekable,
    stream_socket_fd,
    timeout_ms,
    writable,
)
from ._lowlevel import TO_EOF, WAIT_FOREVER, PipePool, default_pool, raw_socket_type

__all__ = ["PipePool", "default_pool", "recvfile", "splice_all"]

_CHUNK = 256 * 1024

FdLike = Union[int, Any]  # an int fd or an object with fileno()



# --------------------------------------------------------------------------- arguments


def _fd_of(obj: Any, name: str) -> int:
    if isinstance(obj, bool):  # an int, but never meant as a file descriptor
        raise TypeError(f"{name} must be an int file descriptor or an object with fileno(), "
                        "not bool")
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


def _is_tls(sock: Any) -> bool:
    """An ``ssl.SSLSocket`` with a TLS session: its fd carries records, not our bytes."""
    ssl = sys.modules.get("ssl")
    return (ssl is not None and isinstance(sock, ssl.SSLSocket)
            and getattr(sock, "_sslobj", None) is not None)


def _probe(obj: Any, fd: int, name: str) -> tuple[bool, bool]:
    """(is a pipe, is a socket) for one end of ``splice_all``; refuses what it cannot serve."""
    if isinstance(obj, socket.socket):
        if _is_tls(obj):
            raise ValueError(
                f"{name} is an ssl.SSLSocket: splice(2) would move TLS records as if they "
                "were the data; use sendfile_all() to send a file through TLS, recvfile() "
                "to receive one"
            )
        if raw_socket_type(obj) != socket.SOCK_STREAM:
            raise ValueError(f"{name} must be a SOCK_STREAM socket")
        return False, True
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        check_stream(fd, name)  # a datagram socket would take the bytes as packets
        return False, True
    return stat.S_ISFIFO(mode), False


def _wait_ms(sock: Any, fd: int) -> int:
    """A socket object's timeout; for a bare fd, wait only when it blocks (it has no timeout)."""
    if isinstance(sock, socket.socket):
        return timeout_ms(sock.gettimeout())
    return 0 if os.get_blocking(fd) is False else WAIT_FOREVER


def _is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def _combine(waits: list[int]) -> int:
    """The strictest of two wait policies: 0 (never wait) < a bound < forever."""
    if 0 in waits:
        return 0
    bounded = [w for w in waits if w != WAIT_FOREVER]
    return min(bounded) if bounded else WAIT_FOREVER


# --------------------------------------------------------------------------- recvfile


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

    An ``ssl.SSLSocket`` is read through its TLS layer (``recv_into``): the
    file gets the plaintext, never the records on the wire.

    A socket's timeout applies to each wait for data (``TimeoutError``); a
    non-blocking socket with nothing to read raises ``BlockingIOError``; a
    signal handler runs during the transfer, which resumes unless it raises.
    A socket object is held during the transfer (another thread's ``close()``
    takes effect when it returns); an int fd cannot be: if another thread
    closes it and the number goes to another connection, the transfer stops
    with ``EBADF`` or finishes from the original one, never reading a byte
    of the new one.  Every exception raised once the transfer started,
    ``KeyboardInterrupt`` included, has ``bytes_received``: the bytes
    written to the file.
    """
    sock_fd = stream_socket_fd(sock)
    check_range(offset, count)
    wait_ms = _wait_ms(sock, sock_fd)
    left = TO_EOF if count is None else count
    owners = (sock,) if isinstance(sock, socket.socket) else ()
    # nothing holds an int fd: the transfer checks that its number still names
    # the same file before each resumed call (EBADF otherwise)
    watch = () if owners else (sock_fd,)
    tls = _is_tls(sock)

    if isinstance(file, int):
        if isinstance(file, bool):
            raise TypeError("file must be an int file descriptor or a binary file object, "
                            "not bool")
        if file < 0:
            raise ValueError(f"file must be a file descriptor >= 0, got {file}")
        if tls:
            return _recv_through_python(sock, sock_fd, _fd_writer(file, offset), left, [0])
        job = _c.Splice(None, offset)
        return job.run(sock_fd, file, left, wait_ms, None if _is_pipe(file) else default_pool(),
                       attr="bytes_received", what="the stream", owners=owners,
                       watch=(*watch, file))

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
    if fd is None or tls:
        start = 0
        if can_seek:
            start = file.tell() if offset is None else offset
            file.seek(start)
        done = [0]
        try:
            return _recv_through_python(sock, sock_fd, file.write, left, done)
        finally:
            if can_seek:
                file.seek(start + done[0])
    file.flush()  # bytes in the write buffer go first
    if not can_seek:
        pool = None if _is_pipe(fd) else default_pool()
        return _c.Splice().run(sock_fd, fd, left, wait_ms, pool, attr="bytes_received",
                               what="the stream", owners=owners, watch=(*watch, fd))
    start = file.tell() if offset is None else offset
    job = _c.Splice(None, start)
    try:
        return job.run(sock_fd, fd, left, wait_ms, default_pool(), attr="bytes_received",
                       what="the stream", owners=owners, watch=(*watch, fd))
    finally:
        file.seek(start + job.moved)


def _fd_writer(fd: int, offset: int | None) -> Callable[[memoryview], Any]:
    """``write(view)`` writing all of ``view`` to ``fd``: at ``offset`` on, or at its position."""
    pos = [offset]

    def write(view: memoryview) -> None:
        while view:
            at = pos[0]
            n = os.write(fd, view) if at is None else os.pwrite(fd, view, at)
            if at is not None:
                pos[0] = at + n
            view = view[n:]

    return write


def _recv_through_python(
    sock: socket.socket | int, sock_fd: int, write: Callable[[memoryview], Any], count: int,
    done: list[int],
) -> int:
    """recv + write: for objects without a file descriptor (``io.BytesIO``) and TLS
    sockets, whose bytes must be decrypted in user space.  ``done[0]`` counts.

    An int fd is read through a duplicate made now: if another thread closes
    the number and a new connection gets it, the reads go on from the
    original connection, never from the new one.
    """
    ssl = sys.modules.get("ssl")
    want_read: Any = ssl.SSLWantReadError if ssl is not None else ()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    # (made before the try whose finally closes the duplicate: see _c.Pins)
    pins = None if isinstance(sock, socket.socket) else _c.Pins(1)
    try:
        if pins is not None:
            fds = pins.pin([(sock_fd, _c.fd_id(sock_fd))])
            if fds is None:  # closed meanwhile
                raise _c.error(_c.EBADF, done[0], attr="bytes_received")
            sock_fd = fds.get(sock_fd, sock_fd)  # EMFILE: the number, as C uses it then
        while count == TO_EOF or done[0] < count:
            want = _CHUNK if count == TO_EOF else min(_CHUNK, count - done[0])
            try:
                if isinstance(sock, socket.socket):
                    n = sock.recv_into(view, want)
                else:
                    n = os.readv(sock_fd, [view[:want]])
            except want_read:  # a non-blocking TLS socket: no whole record yet
                raise BlockingIOError(errno.EAGAIN, "the socket has no bytes ready") from None
            if n == 0:
                if count == TO_EOF:
                    break
                raise _c.error(_c.ENODATA, done[0], attr="bytes_received", what="the stream")
            write(view[:n])
            done[0] += n
        return done[0]
    except BaseException as exc:
        raise _c.attach(exc, done[0], "bytes_received") from None
    finally:
        if pins is not None:
            pins.close()


# --------------------------------------------------------------------------- splice_all


def splice_all(src: FdLike, dst: FdLike, count: int | None = None) -> int:
    """Move ``count`` bytes (default: until EOF) from ``src`` to ``dst``; return the bytes moved.

    Each of ``src`` and ``dst`` is an int fd or an object with ``fileno()``:
    a stream socket, a pipe or a file, in any pair splice(2) can serve.  A
    datagram or ``SOCK_SEQPACKET`` socket raises ``ValueError`` (as
    ``sendfile_all`` does), and so does an ``ssl.SSLSocket``: its fd carries
    TLS records (use ``sendfile_all`` to send a file through TLS,
    ``recvfile`` to receive one).  When neither is a pipe, the bytes go
    through a pooled pipe (src -> pipe -> dst) and never through user space.
    A file object's position is used and moved by the bytes read from (or
    written to) it; an int fd's own position is used and advanced.  A
    buffered reader that is not seekable (``open(pipe_fd, "rb")``,
    ``sock.makefile("rb")``) may already hold bytes in its buffer (``peek``
    reads once when it holds none): those go first, then the rest comes from
    its file descriptor.

    After an exception the positions still match ``bytes_sent``: bytes read
    from a seekable source into the pipe but not written to ``dst`` are
    given back (the source's position is moved back over them), so a new
    call resumes exactly there.  From a socket they cannot be given back:
    they are dropped with the pipe (at most one pipe's worth, ``pipe_size``
    of the pool) and the source stream is no longer usable.

    Waits follow the sockets: a socket object's timeout bounds each wait,
    for the destination and for the source alike (``TimeoutError``); a
    non-blocking fd raises ``BlockingIOError`` when it would block before
    any byte was read into the pipe; bytes already read are always written
    out.  ``TruncatedFileError`` when ``src`` ends before ``count`` bytes.
    An int fd (or a file object's) closed by another thread, its number
    reused, ends the transfer with ``EBADF``: no byte goes to or comes from
    the file that got the number.
    Every exception raised once the transfer started has ``bytes_sent``: the
    bytes written to ``dst``.
    """
    s_fd = _fd_of(src, "src")
    d_fd = _fd_of(dst, "dst")
    check_range(None, count)
    s_pipe, s_sock = _probe(src, s_fd, "src")
    d_pipe, d_sock = _probe(dst, d_fd, "dst")
    waits = [
        _wait_ms(obj, fd) if is_sock else WAIT_FOREVER
        for obj, fd, is_sock in ((src, s_fd, s_sock), (dst, d_fd, d_sock))
    ]
    wait_ms = _combine(waits)
    pool = None if s_pipe or d_pipe else default_pool()
    owners = tuple(obj for obj in (src, dst) if isinstance(obj, socket.socket))
    # the ends nothing holds: their identity is checked before each resumed call
    watch = tuple(fd for obj, fd in ((src, s_fd), (dst, d_fd))
                  if not isinstance(obj, socket.socket))
    starts: list[int | None] = []  # explicit offsets of seekable file objects
    for obj in (src, dst):
        if isinstance(obj, (int, socket.socket)):
            starts.append(None)
            continue
        if writable(obj):
            obj.flush()  # bytes in the write buffer go first
        starts.append(obj.tell() if seekable(obj) else None)
    total = TO_EOF if count is None else count
    head = _buffered_head(src, count)
    job = _c.Splice(starts[0], starts[1])
    try:
        view = memoryview(head)
        while job.moved < len(head):  # each round delivers bytes or raises
            job.run(s_fd, d_fd, 0, wait_ms, default_pool(), attr="bytes_sent",
                    what="the source", owners=owners, watch=watch, preload=view[job.moved:])
        if total == TO_EOF or job.moved < total:
            job.run(s_fd, d_fd, total, wait_ms, pool, attr="bytes_sent", what="the source",
                    owners=owners, watch=watch)
        return job.moved
    finally:
        if head:
            reader: Any = src
            reader.read(min(job.moved, len(head)))  # from its buffer: no raw read
        for obj, pos in ((src, job.src_pos), (dst, job.dst_pos)):
            if pos is not None:  # a seekable file object
                file: Any = obj
                file.seek(pos)


def _buffered_head(src: Any, count: int | None) -> bytes:
    """The bytes a buffered, non-seekable reader already holds (``peek``)."""
    if isinstance(src, (int, socket.socket, io.RawIOBase)) or seekable(src):
        return b""
    peek = getattr(src, "peek", None)
    if peek is None or count == 0:
        return b""
    head = bytes(peek(1))  # its whole buffer; one raw read when it is empty
    return head if count is None else head[:count]
