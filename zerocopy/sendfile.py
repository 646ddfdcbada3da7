# SPDX-License-Identifier: MIT
"""``sendfile_all``: a whole file range to a stream socket, or a clear exception."""
from __future__ import annotations

import errno
import functools
import os
import socket
from typing import Any

from . import _lowlevel as _c
from . import _tls
from ._args import SocketLike, Source, Target, check_range, check_stream, file_source, socket_target
from ._lowlevel import FD_POSITION, INT_MAX, OFF_MAX, TO_EOF, WAIT_FOREVER

_CHUNK = 256 * 1024


def sendfile_all(
    sock: SocketLike, file: Any, offset: int | None = None, count: int | None = None
) -> int:
    """Send ``count`` bytes (default: to the end) of ``file`` to ``sock``; return the bytes sent.

    ``sock`` is a connected ``SOCK_STREAM`` socket or its int fd.  ``file`` is
    an int fd or a binary file object.  ``offset=None`` starts at the file's
    current position.  A file object's position ends at start + bytes sent,
    also after an exception; an int fd's position is used and advanced only
    when ``offset`` is None.

    An ``ssl.SSLSocket`` gets the bytes through its TLS layer (read and
    encrypted in user space, as ``socket.sendfile`` does), unless kernel TLS
    encrypts its fd, where the zero-copy route is safe.

    Raises ``TruncatedFileError`` when the file ends before ``count`` bytes,
    ``BlockingIOError`` (``characters_written``) when a non-blocking socket is
    full, ``TimeoutError`` when a socket's timeout expires while waiting, and
    the usual ``OSError`` subclasses (``BrokenPipeError``,
    ``ConnectionResetError``) otherwise.  Every ``OSError`` raised once the
    transfer started is also a :class:`zerocopy.TransferError` with
    ``bytes_sent``; other exceptions (``KeyboardInterrupt``) get the
    attribute too.
    """
    if (
        type(sock) is int
        and type(file) is int
        and type(offset) is int
        and type(count) is int
        and sock | file | offset | count >= 0
        and offset + count <= OFF_MAX
    ):
        # The per-call fast path (a server sending small files from a cache
        # of fds): one C call, which also checks the fd is a stream socket.
        try:
            return _c.sendfile_range(sock, file, offset, count)
        except OverflowError:
            pass  # an fd past a C int: the checks below say which
    target = socket_target(sock)
    check_range(offset, count)
    left = TO_EOF if count is None else count
    if type(file) is int and 0 <= file <= INT_MAX and not target[4]:
        return send_fd(target, file, FD_POSITION if offset is None else offset, left)
    src = file_source(file, offset)
    if src.fd is None or target[4]:
        if target[2]:
            check_stream(target[0])
        reader = file if src.fileobj is None else src.fileobj
        return _send_through_python(target, src, reader, left)
    if src.fileobj is None:
        return send_fd(target, src.fd, src.start, left)
    sent = _c.counter()
    try:
        return _c.sendfile_into(sent, target[0], src.fd, src.start, left, target[1], target[2],
                                target[3])
    finally:
        src.fileobj.seek(src.start + int(sent[0]))
        _c._counters.append(sent)


def send_fd(target: Target, file_fd: int, start: int, count: int) -> int:
    """The C sendfile loop for ``target``, resumed after each signal."""
    return _c.sendfile(target[0], file_fd, start, count, target[1], target[2], target[3])


# --------------------------------------------------------------------------- through Python


def _send_through_python(target: Target, src: Source, file: Any, count: int) -> int:
    """read + send for what the kernel cannot send: objects without a file descriptor
    (``io.BytesIO``, buffered pipes) and TLS sockets, whose records are made in user space.

    A seekable source gives back what the socket did not take, so a
    non-blocking socket just raises ``BlockingIOError``; from a non-seekable
    one, a chunk once read is finished, waiting for the socket if need be.
    """
    fd_position = src.fileobj is None and src.fd is not None and src.start == FD_POSITION
    if src.fileobj is not None:
        src.fileobj.seek(src.start)
        seekable = True
    elif src.fd is not None:
        seekable = not fd_position or _can_seek(src.fd)
    else:
        seekable = False
    read = _reader(src, file)
    sock = target[3]
    # A socket object is held: its number cannot go to another connection
    # while this runs.  An int fd is written through a duplicate (os.write
    # retries after EINTR with the same number, which another thread may
    # have closed and accept() reused by then).  Either way, a close()
    # meanwhile ends the transfer before the next write.
    wfd = target[0]
    if sock is not None:
        _c.hold(sock)
        alive = functools.partial(_c.is_open, sock)
    else:
        ident = _c.fd_id(wfd)
        alive = functools.partial(_c.same_fd, wfd, ident)
        try:
            wfd = os.dup(wfd)
        except OSError:  # out of descriptors: checked writes to the number
            pass
        else:
            if not _c.same_fd(wfd, ident):  # replaced before the dup
                os.close(wfd)
                raise _c.error(_c.EBADF, 0)
    write = _tls_writer(sock) if target[4] and sock is not None else _fd_writer(wfd)
    sent = got = 0
    try:
        while count == TO_EOF or sent < count:
            want = _CHUNK if count == TO_EOF else min(_CHUNK, count - sent)
            data = read(sent, want)
            if data is None:  # a non-blocking source with nothing ready: not the end
                raise BlockingIOError(errno.EAGAIN, "the source has no bytes ready", sent)
            if not data:
                if count == TO_EOF:
                    break
                raise _c.error(_c.ENODATA, sent)
            got += len(data)
            view = memoryview(data)
            while view:
                if not alive():
                    raise _c.error(_c.EBADF, sent)
                n = write(view)
                if n is None:  # the socket is full
                    if seekable and target[1] == 0:
                        raise BlockingIOError(
                            errno.EAGAIN, "the socket would block; call again to continue", sent
                        )
                    # a timeout, or what was read cannot go back
                    _wait_for_room(target, wfd, sent)
                    continue
                view = view[n:]
                sent += n
        return sent
    except BaseException as exc:
        raise _c.attach(exc, sent) from None
    finally:
        if sock is not None:
            _c.release(sock)
        elif wfd != target[0]:
            os.close(wfd)
        if src.fileobj is not None:
            src.fileobj.seek(src.start + sent)
        elif fd_position and seekable and got > sent:
            os.lseek(src.fd, sent - got, os.SEEK_CUR)  # type: ignore[arg-type]


def _can_seek(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


def _reader(src: Source, file: Any) -> Any:
    """``read(done, n)`` -> bytes (b"" at the end, None when a non-blocking source is dry)."""
    if src.fd is not None and src.fileobj is None:
        fd = src.fd
        if src.start == FD_POSITION:
            return lambda done, n: _read_fd(fd, n)
        start = src.start
        return lambda done, n: os.pread(fd, n, start + done)
    return lambda done, n: file.read(n)


def _read_fd(fd: int, n: int) -> bytes | None:
    try:
        return os.read(fd, n)
    except BlockingIOError:
        return None


def _fd_writer(fd: int) -> Any:
    def write(view: memoryview) -> int | None:
        try:
            return os.write(fd, view)
        except BlockingIOError:
            return None

    return write


def _tls_writer(sock: socket.socket) -> Any:
    # OpenSSL must be given the same bytes again after a full socket: the
    # next call re-reads them from the same position
    return functools.partial(_tls.send_some, sock)


def _wait_for_room(target: Target, fd: int, sent: int) -> None:
    timeout = WAIT_FOREVER if target[1] == 0 else target[1]
    sock = target[3]
    if sock is not None:  # held: wait in slices, so a close() from another thread ends it
        _tls.wait_for_room(sock, timeout, sent)
        return
    rc = _c.wait_writable(fd, timeout)
    if rc < 0 and rc != _c.EINTR:
        raise _c.error(rc, sent)
