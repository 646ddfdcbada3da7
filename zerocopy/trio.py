# SPDX-License-Identifier: MIT
"""trio adapter: kernel ``sendfile`` to trio sockets and streams.

trio sockets are non-blocking and have no buffer of their own in user
space, so the C loop sends straight to the fd (timeout 0: until the kernel
would block) and ``trio.lowlevel.wait_writable`` waits between steps.
"""
from __future__ import annotations

from typing import Any

from ._async import Chunks, Progress, drive, missing_extra, send_chunks
from .sender import FileSender

try:
    import trio
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise missing_extra("trio", "trio", "trio") from _exc

__all__ = ["Progress", "sendfile"]


async def sendfile(
    target: Any,
    file: Any,
    offset: int | None = None,
    count: int | None = None,
    *,
    headers: Any = b"",
    trailers: Any = b"",
    progress: Progress | None = None,
) -> int:
    """Send ``headers``, ``count`` bytes of ``file`` from ``offset``, then ``trailers``.

    ``target`` is a ``trio.SocketStream``, a ``trio.SSLStream`` or a
    ``trio.socket`` stream socket.  ``file``, ``offset`` and ``count`` are
    those of :func:`zerocopy.sendfile_all`.  Returns the bytes sent, headers
    and trailers included.  It is a checkpoint, like trio's own sends.

    Errors and positions follow :func:`zerocopy.aio.sendfile`: ``OSError``
    subclasses carry ``bytes_sent``, a file object's position ends at start
    + file bytes sent.  trio's ``Cancelled`` cannot carry attributes: pass
    ``progress=zerocopy.trio.Progress()`` to learn how far a cancelled
    transfer got (the file position says it too).  A socket closed by
    another task ends the transfer with ``trio.ClosedResourceError``.

    ``trio.SSLStream`` makes its TLS records in user space: the file is read
    in chunks and sent with ``send_all`` (never plaintext on the socket);
    ``bytes_sent`` then counts the bytes the stream accepted.  A cancelled
    ``send_all`` breaks an ``SSLStream``, as trio documents.
    """
    if isinstance(target, trio.SSLStream):
        await trio.lowlevel.checkpoint_if_cancelled()
        body = Chunks(file, offset, count, headers, trailers)
        return await send_chunks(body, target.send_all, progress)
    guard: Any = None
    if isinstance(target, trio.SocketStream):
        sock = target.socket
        guard = getattr(target, "_send_conflict_detector", None)  # two sends would interleave
    elif isinstance(target, trio.socket.SocketType):
        sock = target
    else:
        raise TypeError(
            "target must be a trio.SocketStream, trio.SSLStream or trio.socket.SocketType, "
            f"not {type(target).__name__}"
        )
    await trio.lowlevel.checkpoint_if_cancelled()
    sender = FileSender(sock.fileno(), file, offset, count, headers=headers, trailers=trailers)

    async def wait() -> None:
        await trio.lowlevel.wait_writable(sock)

    if guard is not None:
        with guard:
            waited = await drive(sender, wait, progress)
    else:
        waited = await drive(sender, wait, progress)
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return int(sender.sent)
