# SPDX-License-Identifier: MIT
"""anyio adapter: kernel ``sendfile`` to anyio socket streams, on both backends.

On the asyncio backend an anyio ``SocketStream`` is an asyncio transport
underneath: the transfer goes through :func:`zerocopy.aio.sendfile`, which
empties the transport's buffer first and stands in for its protocol while
it waits.  Streams on a raw socket (anyio's UNIX streams) and the trio
backend send to the fd and wait with ``anyio.wait_writable``.
"""
from __future__ import annotations

from typing import Any

from ._async import Chunks, Progress, drive, missing_extra, send_chunks
from .sender import FileSender

try:
    import anyio
    import anyio.lowlevel
    import sniffio
    from anyio.abc import SocketAttribute
    from anyio.streams.tls import TLSStream
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise missing_extra("anyio", "anyio", "anyio") from _exc

__all__ = ["Progress", "sendfile"]

# anyio >= 4.7 has wait_writable (any fd); before, wait_socket_writable
_wait_writable: Any = getattr(anyio, "wait_writable", None) or anyio.wait_socket_writable


async def sendfile(
    stream: Any,
    file: Any,
    offset: int | None = None,
    count: int | None = None,
    *,
    headers: Any = b"",
    trailers: Any = b"",
    progress: Progress | None = None,
) -> int:
    """Send ``headers``, ``count`` bytes of ``file`` from ``offset``, then ``trailers``.

    ``stream`` is an anyio socket stream (``anyio.connect_tcp``,
    ``connect_unix``, a listener's stream) or a ``TLSStream`` around one.
    The contract is that of :func:`zerocopy.aio.sendfile` and
    :func:`zerocopy.trio.sendfile`: the bytes sent (headers and trailers
    included) are returned; exceptions carry ``bytes_sent`` where they can
    (asyncio's ``CancelledError`` does, trio's ``Cancelled`` cannot: pass
    ``progress``); file objects' positions say what went out.

    A ``TLSStream`` makes its records in user space: the file is read in
    chunks and sent with ``stream.send`` (never plaintext).
    """
    if isinstance(stream, TLSStream):
        await anyio.lowlevel.checkpoint_if_cancelled()
        body = Chunks(file, offset, count, headers, trailers)
        return await send_chunks(body, stream.send, progress)
    guard: Any = getattr(stream, "_send_guard", None)  # anyio's own "writing to" guard
    if sniffio.current_async_library() == "asyncio":
        transport = getattr(stream, "_transport", None)
        if transport is not None:
            from . import aio

            if guard is not None:
                with guard:
                    return await aio.sendfile(transport, file, offset, count, headers=headers,
                                              trailers=trailers, progress=progress)
            return await aio.sendfile(transport, file, offset, count, headers=headers,
                                      trailers=trailers, progress=progress)
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
    except (AttributeError, anyio.TypedAttributeLookupError):
        raise TypeError(
            f"stream must be an anyio socket stream or TLSStream, not {type(stream).__name__}"
        ) from None
    await anyio.lowlevel.checkpoint_if_cancelled()
    sender = FileSender(sock.fileno(), file, offset, count, headers=headers, trailers=trailers)

    async def wait() -> None:
        await _wait_writable(sock)

    if guard is not None:
        with guard:
            waited = await drive(sender, wait, progress)
    else:
        waited = await drive(sender, wait, progress)
    if not waited:
        await anyio.lowlevel.cancel_shielded_checkpoint()
    return int(sender.sent)
