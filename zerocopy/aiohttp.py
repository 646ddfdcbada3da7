# SPDX-License-Identifier: MIT
"""aiohttp: a ``FileResponse`` whose body goes out with kernel ``sendfile`` on any loop.

aiohttp's own ``web.FileResponse`` calls ``loop.sendfile``, which uvloop
does not implement: there every file is read into memory in a thread and
written through the transport.  :class:`FileResponse` is the same class
(headers, ``ETag``/``If-*`` handling, ``Range`` requests, compression, all
aiohttp's) with the body sent by :func:`zerocopy.aio.sendfile`::

    from aiohttp import web
    from zerocopy.aiohttp import FileResponse

    async def handler(request):
        return FileResponse("static/big.iso")

Compressed responses and ``AIOHTTP_NOSENDFILE=1`` keep aiohttp's own
chunked fallback; TLS sites get the bytes through the TLS layer (see
:func:`zerocopy.aio.sendfile`).
"""
from __future__ import annotations

import inspect
import os
from typing import IO, TYPE_CHECKING, Any

from ._async import missing_extra

try:
    from aiohttp import web
    from aiohttp.abc import AbstractStreamWriter
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise missing_extra("aiohttp", "aiohttp", "aiohttp") from _exc

if TYPE_CHECKING:
    from aiohttp.web_request import BaseRequest

from . import aio

__all__ = ["FileResponse"]

# FileResponse.prepare (which does the headers, conditionals and ranges)
# ends in ``self._sendfile(request, fobj, offset, count)``: that one step is
# replaced.  It has had this signature since aiohttp 3.7; check it, so an
# aiohttp that reorganised it fails here and not on a request.
_HOOK = getattr(web.FileResponse, "_sendfile", None)
if _HOOK is None or list(inspect.signature(_HOOK).parameters) != [
    "self", "request", "fobj", "offset", "count"
]:  # pragma: no cover - depends on the aiohttp version
    import aiohttp as _aiohttp

    raise ImportError(
        f"zerocopy.aiohttp does not support aiohttp {_aiohttp.__version__}: "
        "FileResponse._sendfile(request, fobj, offset, count) is not there"
    )

_NOSENDFILE = bool(os.environ.get("AIOHTTP_NOSENDFILE"))


class FileResponse(web.FileResponse):
    """``aiohttp.web.FileResponse`` whose body goes out through :func:`zerocopy.aio.sendfile`."""

    async def _sendfile(
        self, request: BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        if _NOSENDFILE or self.compression:
            return await super()._sendfile(request, fobj, offset, count)
        # StreamResponse.prepare: status line and headers, written to the
        # transport at once (aiohttp's own sendfile path does the same)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        sent = await aio.sendfile(transport, fobj, offset, count)
        if isinstance(getattr(writer, "output_size", None), int):
            writer.output_size += sent  # for the access log
        await web.StreamResponse.write_eof(self)
        return writer
