# SPDX-License-Identifier: MIT
"""``FileSender``: one response (headers, a file range, trailers), resumable on any socket."""
from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from . import _lowlevel as _c
from . import _tls
from ._args import SocketLike, check_range, check_stream, file_source, socket_target
from ._lowlevel import FD_POSITION, TO_EOF

_TLS_CHUNK = 64 * 1024


class FileSender(_c.Response):
    """Send ``headers``, then ``count`` bytes of ``file`` from ``offset``, then ``trailers``.

    On TCP the parts are coalesced, so a small header never leaves in a
    segment of its own (``MSG_MORE`` for a header, ``TCP_CORK`` when a
    trailer follows file data), and the socket is uncorked when the response
    completes, when a step raises (a timeout or an interrupt too: a resumed
    response goes on uncorked, and one that is abandoned never holds its
    last segment back), or at ``close()``.

    ``file=None`` sends the headers and trailers only (a ``304``, a ``HEAD``).
    ``send()`` makes progress: on a non-blocking socket it sends until the
    kernel would block and returns the bytes sent by this step (0 is fine);
    on a blocking socket it finishes.  ``send_all()`` finishes on any socket.
    ``fileno()`` is the socket's fd, so a sender can be registered with
    ``selectors`` for ``EVENT_WRITE`` directly.

    Arguments and errors are those of :func:`zerocopy.sendfile_all`; a file
    object's position is moved to start + file bytes sent after every step.
    Objects without a usable ``fileno()`` (``io.BytesIO``) are read into
    memory when the sender is made.  An ``ssl.SSLSocket`` gets every byte
    through its TLS layer (the file is read in chunks), unless kernel TLS
    encrypts its fd.  Exceptions carry ``bytes_sent``: the bytes of the whole
    response that went out (``OSError`` subclasses are also
    :class:`zerocopy.TransferError`).

    Made once per response, it costs little: with an int file descriptor, an
    explicit range and ``bytes`` headers, construction is a few attribute
    stores and one C call that sends nothing; ``send()`` is one C call.
    """

    __slots__ = ("__weakref__",)

    _slow: _Slow | None

    # __init__, send(), send_all(), close() and __exit__ are the boundary's
    # (_lowlevel.Response), which serves the common response directly; the
    # methods below handle every other one.

    def _setup(self, sock: SocketLike, file: Any, offset: int | None, count: int | None,
               headers: Any, trailers: Any) -> None:
        """Every other combination of arguments."""
        fd, _, unchecked, owner, tls = socket_target(sock)
        check_range(offset, count)
        if unchecked:
            check_stream(fd)
        self._fd = fd
        self._owner = owner  # its timeout is read at each step (Response._wait_ms)
        slow = self._slow = _Slow(_header_len(headers))
        if file is None:  # headers and trailers only
            if offset or count:
                raise ValueError("file=None sends no file bytes: offset and count must be None")
            file_fd, start, file_len = -1, 0, 0
        elif type(file) is int and 0 <= file <= _c.INT_MAX:
            file_fd = file
            start = FD_POSITION if offset is None else offset
            file_len = TO_EOF if count is None else count
        else:
            src = file_source(file, offset)
            file_len = TO_EOF if count is None else count
            if src.fd is None:  # read it now; the response then is memory only
                reader = file if src.fileobj is None else src.fileobj
                before = reader.tell() if src.fileobj is not None else None
                body = _read_range(reader, src.start, count)
                if src.fileobj is not None:
                    slow.fileobj, slow.start = reader, src.start
                    reader.seek(before)  # as for a real file: moved by the steps only
                slow.file_len = len(body)
                headers = b"".join([_bytes_like(headers, "headers"), body,
                                    _bytes_like(trailers, "trailers")])
                trailers, file_fd, start, file_len = b"", -1, 0, 0
            else:
                file_fd, start = src.fd, src.start
                slow.fileobj, slow.start = src.fileobj, src.start
        if tls and owner is not None:
            slow.tls = _TlsResponse(owner, file_fd, start, file_len, headers, trailers)
            self._c = self._extra = None
        else:
            self._c_init(fd, file_fd, start, file_len, headers, trailers, owner)

    @property
    def sent(self) -> int:
        """Bytes of the whole response sent so far."""
        slow = self._slow
        if slow is not None and slow.tls is not None:
            return slow.tls.sent
        return int(self._c.sent)

    @property
    def total(self) -> int | None:
        """Bytes of the whole response; None until a pipe-like source with ``count=None`` ends."""
        slow = self._slow
        total = slow.tls.total if slow is not None and slow.tls is not None else self._total()
        return None if total == TO_EOF else total

    @property
    def done(self) -> bool:
        """True once every byte of the response went out."""
        slow = self._slow
        if slow is not None and slow.tls is not None:
            return slow.tls.done
        return self._done

    def fileno(self) -> int:
        """The socket's file descriptor (for ``selectors`` and epoll)."""
        return self._fd

    def _drive(self, timeout_ms: int, stop_on_again: bool) -> int:
        if self._closed:
            raise ValueError("I/O operation on a closed FileSender")
        if self.done:
            return 0
        before = self.sent
        slow = self._slow
        try:
            if slow is not None and slow.tls is not None:
                slow.tls.send(timeout_ms, stop_on_again and timeout_ms == 0)
            else:
                self._c_send(timeout_ms, stop_on_again and timeout_ms == 0)
        finally:
            if slow is not None and slow.fileobj is not None:
                self._sync_position(slow)
        return self.sent - before

    def _sync_position(self, slow: _Slow) -> None:
        file_len = slow.file_len
        trailer_len = slow.tls.trailer_len if slow.tls is not None else self.trailer_len
        if file_len is None:
            file_len = (self.total or 0) - slow.file_at - trailer_len
        file_sent = min(max(self.sent - slow.file_at, 0), file_len)
        slow.fileobj.seek(slow.start + file_sent)

    def _close_slow(self) -> None:
        """close() of a response that may have corked, exported buffers, or uses TLS."""
        slow = self._slow
        if slow is not None and slow.tls is not None:
            slow.tls.close()
            return
        try:
            if not self._done:
                self._c_end()
        finally:
            self._c_release()

    def __enter__(self) -> FileSender:
        return self

    def __repr__(self) -> str:
        try:
            return (f"<FileSender fd={self._fd} sent={self.sent} total={self.total} "
                    f"done={self.done}>")
        except AttributeError:
            return "<FileSender (not set up)>"


class _Slow:
    """What a FileSender needs beyond the fast path: a file position to follow, TLS."""

    __slots__ = ("file_at", "file_len", "fileobj", "start", "tls")

    def __init__(self, file_at: int) -> None:
        self.file_at = file_at  # where the file's bytes start in the response
        self.file_len: int | None = None  # None: ask C (a pipe's length is known at its end)
        self.fileobj: Any = None
        self.start = FD_POSITION
        self.tls: _TlsResponse | None = None


def _header_len(headers: Any) -> int:
    if type(headers) is bytes:
        return len(headers)
    try:
        return memoryview(headers).nbytes
    except TypeError:
        raise TypeError(
            f"headers must be a bytes-like object, not {type(headers).__name__}"
        ) from None


def _bytes_like(data: Any, name: str) -> bytes:
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object, not {type(data).__name__}") from None


def _read_range(file: Any, start: int, count: int | None) -> bytes:
    """The range, read through Python; a non-blocking source is waited for, not cut short."""
    if start != FD_POSITION:
        file.seek(start)
    chunks: list[bytes] = []
    got = 0
    while count is None or got < count:
        data = file.read(-1 if count is None else count - got)
        if data is None:  # non-blocking and nothing ready yet: not the end
            _wait_readable(file)
            continue
        if not data:
            break
        chunks.append(bytes(data))
        got += len(data)
    if count is not None and got < count:
        raise _c.error(_c.ENODATA, 0)
    return b"".join(chunks)


def _wait_readable(file: Any) -> None:
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):
        raise BlockingIOError(errno.EAGAIN, "the source has no bytes ready", 0) from None
    select.select([fd], [], [])


class _TlsResponse:
    """The response through an ``ssl.SSLSocket``'s TLS layer (the same interface as
    ``_lowlevel.Response``): the file is read in chunks and each chunk is encrypted by
    OpenSSL.  A chunk OpenSSL could not write is offered again with the same bytes."""

    def __init__(self, sock: socket.socket, file_fd: int, start: int, count: int,
                 header: Any, trailer: Any) -> None:
        self._sock = sock
        self._header = _bytes_like(header, "headers")
        self._trailer = _bytes_like(trailer, "trailers")
        self.header_len = len(self._header)
        self.trailer_len = len(self._trailer)
        self._fd = file_fd
        if count == TO_EOF and file_fd >= 0:
            size = _size_from(file_fd, start)
            count = TO_EOF if size is None else size
        self._file_len = count
        self._at = start  # next file offset, or FD_POSITION
        self._pending = b""  # file bytes read but not yet taken by OpenSSL
        self.sent = 0
        self.done = False

    @property
    def total(self) -> int:
        if self._file_len == TO_EOF:
            return TO_EOF
        return self.header_len + self._file_len + self.trailer_len

    def _next(self) -> bytes:
        """The bytes to offer next (b"" when the response is complete)."""
        if self.sent < self.header_len:
            return self._header[self.sent : self.sent + _TLS_CHUNK]
        file_sent = self.sent - self.header_len
        if self._file_len == TO_EOF or file_sent < self._file_len:
            if not self._pending:
                want = _TLS_CHUNK if self._file_len == TO_EOF else min(
                    _TLS_CHUNK, self._file_len - file_sent)
                if self._at == FD_POSITION:
                    data = os.read(self._fd, want)
                else:
                    data = os.pread(self._fd, want, self._at)
                if not data:
                    if self._file_len != TO_EOF:
                        raise _c.error(_c.ENODATA, self.sent)
                    self._file_len = file_sent  # a pipe's end: now the length is known
                    return self._next()
                self._pending = data
            return self._pending
        at = self.sent - self.header_len - self._file_len
        return self._trailer[at : at + _TLS_CHUNK]

    def send(self, timeout_ms: int, stop_on_again: bool) -> int:
        try:
            while True:
                data = self._next()
                if not data:
                    self.done = True
                    return 0
                n = _tls.send_some(self._sock, data)
                if n is None:  # the socket is full
                    if stop_on_again:
                        return _c.EAGAIN
                    _tls.wait_for_room(self._sock, timeout_ms, self.sent)
                    continue
                in_file = self.header_len <= self.sent < self.header_len + self._file_len
                self.sent += n
                if in_file:
                    self._pending = self._pending[n:]
                    if self._at != FD_POSITION:
                        self._at += n
        except BaseException as exc:
            raise _c.attach(exc, self.sent) from None

    def close(self) -> None:
        if self._at == FD_POSITION and self._pending:
            try:  # give back what was read and not sent, where the fd can
                os.lseek(self._fd, -len(self._pending), os.SEEK_CUR)
            except OSError:
                pass
        self._pending = b""


def _size_from(fd: int, start: int) -> int | None:
    """Bytes from ``start`` to the end of a regular file; None for pipes and devices."""
    st = os.fstat(fd)
    if not (st.st_mode & 0o170000 == 0o100000) or st.st_size == 0:
        return None
    at = os.lseek(fd, 0, os.SEEK_CUR) if start == FD_POSITION else start
    return max(st.st_size - at, 0)
