# SPDX-License-Identifier: MIT
"""``FileSender``: one response (headers, a file range, trailers), resumable on any socket."""
from __future__ import annotations

import errno
import select
import socket
import warnings
from types import TracebackType
from typing import Any

from ._args import (
    FD_POSITION,
    TO_EOF,
    WAIT_FOREVER,
    SocketLike,
    check_range,
    check_stream,
    file_source,
    socket_target,
)
from ._errors import error_for, with_progress
from ._native import ffi, lib

_EINTR = -errno.EINTR
_EAGAIN = -errno.EAGAIN
_U64 = ffi.typeof("uint64_t[1]")


class FileSender:
    """Send ``headers``, then ``count`` bytes of ``file`` from ``offset``, then ``trailers``.

    On TCP the parts are coalesced, so a small header never leaves in a
    segment of its own (``MSG_MORE`` for a header, ``TCP_CORK`` when a
    trailer follows file data), and the socket is uncorked when the response
    completes, when a step raises (a timeout or an interrupt too: a resumed
    response goes on uncorked, and one that is abandoned never holds its
    last segment back), or at ``close()``.

    ``send()`` makes progress: on a non-blocking socket it sends until the
    kernel would block and returns the bytes sent by this step (0 is fine);
    on a blocking socket it finishes.  ``send_all()`` finishes on any socket.
    ``fileno()`` is the socket's fd, so a sender can be registered with
    ``selectors`` for ``EVENT_WRITE`` directly.

    Arguments and errors are those of :func:`zerocopy.sendfile_all`; a file
    object's position is moved to start + file bytes sent after every step.
    Objects without a usable ``fileno()`` (``io.BytesIO``) are read into
    memory when the sender is made.  Exceptions carry ``bytes_sent``: the
    bytes of the whole response that went out.
    """

    def __init__(
        self,
        sock: SocketLike,
        file: Any,
        offset: int | None = None,
        count: int | None = None,
        *,
        headers: Any = b"",
        trailers: Any = b"",
    ) -> None:
        self._closed = True
        fd, timeout_ms, unchecked = socket_target(sock)
        check_range(offset, count)
        if unchecked:
            check_stream(fd)
        self._sock = sock
        self._fd = fd
        self._timeout_ms = timeout_ms
        self._fileobj: Any = None
        self._start = FD_POSITION
        self._file_at = 0  # where the file's bytes start in the response
        self._file_len: int | None = None
        src = file_source(file, offset)
        file_fd, start, file_len = -1, FD_POSITION, TO_EOF if count is None else count
        if src.fd is None:  # read it now; the response then is memory only
            reader = file if src.fileobj is None else src.fileobj
            before = reader.tell() if src.fileobj is not None else None
            body = _read_range(reader, src.start, count)
            self._file_at, self._file_len = memoryview(headers).nbytes, len(body)
            if src.fileobj is not None:
                self._fileobj, self._start = reader, src.start
                reader.seek(before)  # as for a real file: moved by the steps only
            headers = b"".join([bytes(headers), body, bytes(trailers)])
            trailers, file_len = b"", 0
        else:
            file_fd, start, self._fileobj, self._start = src.fd, src.start, src.fileobj, src.start
        # exported and referenced until the sender dies; NULL costs nothing
        self._headers = ffi.from_buffer(headers) if headers else ffi.NULL
        self._trailers = ffi.from_buffer(trailers) if trailers else ffi.NULL
        self._header_len = len(self._headers) if headers else 0
        self._trailer_len = len(self._trailers) if trailers else 0
        if src.fd is not None:
            self._file_at, self._file_len = self._header_len, None  # None: ask C
        self._resp = ffi.new("struct zc_response *")
        self._step = ffi.new(_U64)
        rc = lib.zc_response_init(
            self._resp, self._fd, file_fd, start, file_len,
            self._headers, self._header_len, self._trailers, self._trailer_len,
        )
        if rc < 0:
            raise error_for(rc, 0)
        self._done = False
        self._closed = False

    @property
    def sent(self) -> int:
        """Bytes of the whole response sent so far."""
        return int(self._resp.sent)

    @property
    def total(self) -> int | None:
        """Bytes of the whole response; None until a pipe-like source with ``count=None`` ends."""
        total = int(self._resp.total)
        return None if total == TO_EOF else total

    @property
    def done(self) -> bool:
        """True once every byte of the response went out."""
        return self._done

    def fileno(self) -> int:
        """The socket's file descriptor (for ``selectors`` and epoll)."""
        return self._fd

    def send(self) -> int:
        """Make progress; return the bytes sent by this call.

        Non-blocking socket: sends until the kernel would block (may return 0).
        Blocking socket or one with a timeout: finishes, or raises.
        """
        return self._drive(self._timeout_ms)

    def send_all(self) -> int:
        """Finish the response on any socket (waiting for a non-blocking one); return bytes sent."""
        wait = WAIT_FOREVER if self._timeout_ms == 0 else self._timeout_ms
        return self._drive(wait)

    def _drive(self, timeout_ms: int) -> int:
        if self._closed:
            raise ValueError("I/O operation on a closed FileSender")
        before = self._resp.sent
        try:
            while not self._done:
                rc = lib.zc_response_send(self._resp, timeout_ms, self._step)
                if rc == 0:
                    self._done = True
                elif rc == _EAGAIN and timeout_ms == 0:
                    break
                elif rc != _EINTR:  # after -EINTR a handler ran: resume
                    raise error_for(rc, self.sent)
        except BaseException as exc:
            with_progress(exc, self.sent)
            lib.zc_response_end(self._resp)  # a failed step never leaves the cork set
            raise
        finally:
            self._sync_position()
        return int(self._resp.sent - before)

    def _sync_position(self) -> None:
        if self._fileobj is None:
            return
        file_len = self._file_len
        if file_len is None:
            file_len = int(self._resp.total) - self._header_len - self._trailer_len
        file_sent = min(max(self.sent - self._file_at, 0), file_len)
        self._fileobj.seek(self._start + file_sent)

    def close(self) -> None:
        """Restore the socket options the response changed; idempotent."""
        if self._closed:
            return
        self._closed = True
        rc = lib.zc_response_end(self._resp)
        for exported in (self._headers, self._trailers):
            if exported != ffi.NULL:
                ffi.release(exported)  # a bytearray header may be resized again
        if rc < 0:
            raise error_for(rc, self.sent)

    def __enter__(self) -> FileSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
        # Restore the cork only while the socket object still owns the fd:
        # a bare fd may have been closed and reused by now.
        if isinstance(self._sock, socket.socket) and self._sock.fileno() == self._fd:
            self.close()

    def __repr__(self) -> str:
        return f"<FileSender fd={self._fd} sent={self.sent} total={self.total} done={self._done}>"


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
        raise error_for(-errno.ENODATA, 0)
    return b"".join(chunks)


def _wait_readable(file: Any) -> None:
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):
        raise BlockingIOError(errno.EAGAIN, "the source has no bytes ready", 0) from None
    select.select([fd], [], [])
