# SPDX-License-Identifier: MIT
"""What the event-loop adapters (``aio``, ``trio``, ``anyio``) share.

The zero-copy route is a :class:`~zerocopy.FileSender` on the socket's fd,
stepped with ``send()`` (the C loop with timeout 0: it sends until the
kernel would block and never waits) while the event loop does the waiting.
The other route, for TLS layers in user space, is :class:`Chunks`: the
response read in chunks, to be written through the TLS layer.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

from . import _lowlevel as _c
from ._args import check_range, file_source
from ._lowlevel import FD_POSITION, TO_EOF
from .sendfile import _reader

CHUNK = 256 * 1024  # what a TLS fallback reads and writes at a time


def missing_extra(module: str, package: str, extra: str) -> ImportError:
    """The ImportError for an adapter whose framework is not installed."""
    return ImportError(
        f"zerocopy.{module} needs {package}: pip install 'zerocopy-net[{extra}]'"
    )


class Chunks:
    """``headers`` + a file range + ``trailers`` as chunks of bytes, for a TLS layer.

    ``next()`` returns the next chunk (``b""`` at the end); ``advance(n)``
    says that the peer's layer accepted all ``n`` bytes of it.  ``sent``
    counts the bytes accepted (headers and trailers included); ``close()``
    moves a file object's position to start + file bytes accepted.  A file
    that ends before ``count`` raises :class:`zerocopy.TruncatedFileError`.
    """

    def __init__(self, file: Any, offset: int | None, count: int | None,
                 headers: Any, trailers: Any) -> None:
        check_range(offset, count)
        self._head = _as_bytes(headers, "headers")
        self._tail = _as_bytes(trailers, "trailers")
        src = file_source(file, offset)
        self._src = src
        reader = file if src.fileobj is None else src.fileobj
        if src.fileobj is not None:
            src.fileobj.seek(src.start)
        self._read = _reader(src, reader)
        self._left = TO_EOF if count is None else count
        self._file_sent = 0
        self._stage = 0  # 0 headers, 1 file, 2 trailers, 3 done
        self._from_file = False  # whether the last chunk was file bytes
        self.sent = 0

    def next(self, size: int = CHUNK) -> bytes:
        self._from_file = False
        while True:
            if self._stage == 0:
                self._stage = 1
                if self._head:
                    return self._head
            elif self._stage == 1:
                left = self._left
                if left == 0:
                    self._stage = 2
                    continue
                want = size if left == TO_EOF else min(size, left)
                data = self._read(self._file_sent, want)
                if data is None:  # a non-blocking source with nothing ready
                    raise BlockingIOError(errno.EAGAIN, "the source has no bytes ready")
                if not data:
                    if left != TO_EOF:
                        raise _c.error(_c.ENODATA, self.sent)
                    self._stage = 2
                    continue
                self._from_file = True
                return bytes(data)
            elif self._stage == 2:
                self._stage = 3
                if self._tail:
                    return self._tail
            else:
                return b""

    def advance(self, n: int) -> None:
        self.sent += n
        if self._from_file:
            self._file_sent += n
            if self._left != TO_EOF:
                self._left -= n

    def close(self) -> None:
        src = self._src
        if src.fileobj is not None:
            src.fileobj.seek(src.start + self._file_sent)


def _as_bytes(data: Any, name: str) -> bytes:
    if type(data) is bytes:
        return data
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object, not {type(data).__name__}") from None


class Progress:
    """How far a transfer got, kept up to date while it runs.

    Pass one as ``progress=`` where the exception that ends a transfer
    cannot carry ``bytes_sent`` (trio's ``Cancelled`` has no room for
    attributes); asyncio's ``CancelledError`` carries it as well.
    """

    __slots__ = ("bytes_sent",)

    def __init__(self) -> None:
        self.bytes_sent = 0

    def __repr__(self) -> str:
        return f"<Progress bytes_sent={self.bytes_sent}>"


async def drive(sender: Any, wait_writable: Callable[[], Awaitable[object]],
                progress: Progress | None) -> bool:
    """Step a FileSender on a non-blocking socket until done, awaiting
    ``wait_writable()`` whenever the kernel would block.  Returns whether it
    waited; exceptions get ``bytes_sent`` where they can take it."""
    waited = False
    try:
        while True:
            sender.send()
            if progress is not None:
                progress.bytes_sent = sender.sent
            if sender.done:
                return waited
            await wait_writable()
            waited = True
    except BaseException as exc:
        raise _c.attach(exc, sender.sent) from None
    finally:
        sender.close()


async def send_chunks(body: Chunks, write: Callable[[bytes], Awaitable[object]],
                      progress: Progress | None) -> int:
    """The response through a stream's own ``send_all`` (a TLS layer in user space)."""
    try:
        while True:
            chunk = body.next()
            if not chunk:
                return body.sent
            await write(chunk)
            body.advance(len(chunk))
            if progress is not None:
                progress.bytes_sent = body.sent
    except BaseException as exc:
        raise _c.attach(exc, body.sent) from None
    finally:
        body.close()


def dup(fd: int) -> int:
    """A private descriptor for ``fd``'s socket, to register with a loop that refuses ``fd``."""
    return os.dup(fd)  # non-inheritable, as every fd Python makes


__all__ = ["CHUNK", "FD_POSITION", "Chunks", "Progress", "drive", "dup", "missing_extra",
           "send_chunks"]
