# SPDX-License-Identifier: MIT
"""``sendfile_all``: a whole file range to a stream socket, or a clear exception."""
from __future__ import annotations

import errno
import os
from typing import Any

from ._args import (
    FD_POSITION,
    TO_EOF,
    WAIT_FOREVER,
    SocketLike,
    Source,
    Target,
    check_range,
    check_stream,
    file_source,
    socket_target,
)
from ._errors import error_for, with_progress
from ._native import ffi, lib

_U64 = ffi.typeof("uint64_t[1]")
_EINTR = -errno.EINTR
_EPROTOTYPE = -errno.EPROTOTYPE
_CHECK_STREAM: int = lib.ZC_CHECK_STREAM
_OFF_MAX = 2**63 - 1  # off_t; larger ranges go to check_range's ValueError
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

    Raises ``TruncatedFileError`` when the file ends before ``count`` bytes,
    ``BlockingIOError`` (``characters_written``) when a non-blocking socket is
    full, ``TimeoutError`` when a socket's timeout expires while waiting, and
    the usual ``OSError`` subclasses (``BrokenPipeError``,
    ``ConnectionResetError``) otherwise.  Every exception raised once the
    transfer started, ``KeyboardInterrupt`` included, has ``bytes_sent``.
    """
    if (
        type(sock) is int
        and type(file) is int
        and type(offset) is int
        and type(count) is int
        and sock | file | offset | count >= 0
        and offset + count <= _OFF_MAX
    ):
        # The per-call fast path (a server sending small files from a cache
        # of fds): one C call, which also checks the fd is a stream socket.
        sent = _counters.pop() if _counters else ffi.new(_U64)
        sent[0] = 0
        try:
            rc = lib.zc_sendfile(sock, file, offset, count, 0, _CHECK_STREAM, sent)
        except BaseException as exc:  # a signal handler raised as the call returned
            with_progress(exc, int(sent[0]))
            raise
        if rc == 0:
            _counters.append(sent)
            return count
        return _resume(rc, (sock, 0, True), file, offset, count, sent)
    target = socket_target(sock)
    check_range(offset, count)
    left = TO_EOF if count is None else count
    if type(file) is int and file >= 0:
        return send_fd(target, file, FD_POSITION if offset is None else offset, left)
    src = file_source(file, offset)
    if src.fd is None:
        if target[2]:
            check_stream(target[0])
        return _send_through_python(target, src, file if src.fileobj is None else src.fileobj, left)
    if src.fileobj is None:
        return send_fd(target, src.fd, src.start, left)
    sent = _take_counter()
    try:
        return send_fd(target, src.fd, src.start, left, sent)
    finally:
        src.fileobj.seek(src.start + sent[0])
        _counters.append(sent)


# uint64_t[1] running totals for the C loop, reused: ffi.new on every call
# costs a measurable share of a 4 KiB send.  list.pop/append are atomic.
_counters: list[Any] = []


def _take_counter() -> Any:
    counter = _counters.pop() if _counters else ffi.new(_U64)
    counter[0] = 0
    return counter


def send_fd(target: Target, file_fd: int, start: int, count: int, sent: Any = None) -> int:
    """The C loop, resumed after each signal; ``sent`` (uint64_t[1]) keeps the running total."""
    own = sent is None
    if own:
        sent = _take_counter()
    try:
        try:
            rc = lib.zc_sendfile(
                target[0], file_fd, start, count, target[1], _CHECK_STREAM if target[2] else 0, sent
            )
        except BaseException as exc:  # a signal handler raised as the call returned
            with_progress(exc, int(sent[0]))
            raise
        if rc == 0:
            return int(sent[0])
        return _resume(rc, target, file_fd, start, count, sent)
    finally:
        if own:
            _counters.append(sent)


def _resume(rc: int, target: Target, file_fd: int, start: int, count: int, sent: Any) -> int:
    """After a call that did not finish: resume after signals, or raise with ``bytes_sent``."""
    sock_fd, timeout_ms, unchecked = target
    try:
        while True:
            if rc == _EPROTOTYPE and unchecked:
                raise ValueError("sock must be a SOCK_STREAM socket")
            if rc != _EINTR:
                raise error_for(rc, int(sent[0]))
            # A signal cut the transfer short and its handler has run (it
            # would have raised here otherwise): resume where it stopped.
            done = int(sent[0])
            offset = start if start == FD_POSITION else start + done
            left = count if count == TO_EOF else count - done
            rc = lib.zc_sendfile(sock_fd, file_fd, offset, left, timeout_ms, 0, sent)
            if rc == 0:
                return int(sent[0])
    except BaseException as exc:
        with_progress(exc, int(sent[0]))
        raise


def _send_through_python(target: Target, src: Source, file: Any, count: int) -> int:
    """read + write for objects the kernel cannot read (``io.BytesIO``, buffered pipes).

    A seekable object gives back what the socket did not take, so a
    non-blocking socket just raises ``BlockingIOError``; from a non-seekable
    one, a chunk once read is finished, waiting for the socket if need be.
    """
    seekable = src.fileobj is not None
    if seekable:
        file.seek(src.start)
    sent = 0
    try:
        while count == TO_EOF or sent < count:
            data = file.read(_CHUNK if count == TO_EOF else min(_CHUNK, count - sent))
            if data is None:  # a non-blocking source with nothing ready: not the end
                raise BlockingIOError(errno.EAGAIN, "the source has no bytes ready", sent)
            if not data:
                if count == TO_EOF:
                    break
                raise error_for(-errno.ENODATA, sent)
            view = memoryview(data)
            while view:
                try:
                    n = os.write(target[0], view)
                except BlockingIOError:
                    _wait_for_room(target, seekable, sent)
                    continue
                view = view[n:]
                sent += n
                if seekable and view:
                    break  # re-read the rest from the file next round
            if seekable and view:
                file.seek(src.start + sent)
        return sent
    except BaseException as exc:
        with_progress(exc, sent)
        raise
    finally:
        if seekable:
            file.seek(src.start + sent)


def _wait_for_room(target: Target, can_stop: bool, sent: int) -> None:
    sock_fd, timeout, _ = target
    if timeout == 0 and not can_stop:
        timeout = WAIT_FOREVER
    rc = lib.zc_wait_writable(sock_fd, timeout)
    if rc < 0 and rc != _EINTR:
        raise error_for(rc, sent)
