# SPDX-License-Identifier: MIT
"""ASGI under uvicorn: ``http.response.pathsend`` and ``http.response.zerocopysend``.

uvicorn's HTTP/1.1 protocols with two ASGI extensions added: a Starlette or
FastAPI ``FileResponse`` (which sends ``http.response.pathsend`` whenever the
server offers it) then goes out with kernel ``sendfile`` through
:func:`zerocopy.aio.sendfile`, and an application can send any open file
range zero-copy with ``http.response.zerocopysend``::

    import uvicorn
    from zerocopy.asgi import HTTPProtocol

    uvicorn.run("app:app", http=HTTPProtocol)
    # or: uvicorn app:app --http zerocopy.asgi:HTTPProtocol

``HTTPProtocol`` is uvicorn's httptools protocol when httptools is
installed, else its h11 one (as uvicorn's ``auto``); both are also
exported (``HttpToolsProtocol``, ``H11Protocol``).

Starlette's ``FileResponse`` sends ``pathsend`` for whole files only; its
ranges go as chunks read in a thread.  ``zerocopy.asgi.FileResponse`` (with
Starlette >= 0.39 installed; None otherwise) is the same class whose
single-range answers use ``zerocopysend``.

The messages, after ``http.response.start``::

    {"type": "http.response.pathsend", "path": "/abs/path"}          # ends the body
    {"type": "http.response.zerocopysend", "file": fd_or_file,
     "offset": 0, "count": 1000, "more_body": False}

``file`` is an int fd or a binary file object; ``offset=None`` (or absent)
sends from the file's position, ``count`` absent sends to its end.  The
bytes count against ``Content-Length`` as body bytes do; without one the
protocol frames them as a chunk.  ``HEAD`` responses send nothing.  Over
TLS the bytes go through uvicorn's TLS layer (never plaintext).

How it hooks in: uvicorn makes a ``RequestResponseCycle`` per request and
starts its task; before the task runs, the cycle gets the two extensions in
its scope and a ``send`` that handles the two messages and hands every
other message to uvicorn's own.  The module checks the uvicorn version and
the attributes it relies on, and refuses versions it was not tested with.
"""
from __future__ import annotations

import os
import stat
from typing import Any

from ._async import missing_extra

try:
    import uvicorn
    from uvicorn.protocols.http import h11_impl
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise missing_extra("asgi", "uvicorn", "asgi") from _exc

from . import aio

__all__ = ["MIN_UVICORN", "FileResponse", "H11Protocol", "HTTPProtocol", "HttpToolsProtocol"]

MIN_UVICORN = (0, 30, 0)
EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")

# What the cycle's send relies on, checked once per protocol class.
_CYCLE_ATTRS = ("scope", "transport", "flow", "disconnected", "keep_alive", "response_started",
                "response_complete", "message_event", "on_response")


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version(uvicorn.__version__) < MIN_UVICORN:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"zerocopy.asgi needs uvicorn >= {'.'.join(map(str, MIN_UVICORN))}, "
        f"this is uvicorn {uvicorn.__version__}: pip install 'zerocopy-net[asgi]'"
    )


class _Placeholder:
    """Stands for the file bytes in h11's framing (``send_with_data_passthrough``)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _open(message: dict[str, Any]) -> tuple[Any, int | None, int | None, bool, int]:
    """(file, offset, count, more_body, fd to close or -1) for a pathsend/zerocopysend."""
    if message["type"] == "http.response.pathsend":
        path = message.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise RuntimeError("http.response.pathsend needs an absolute 'path'")
        # O_NONBLOCK: a FIFO must not block the loop in open(2) waiting for a
        # writer; only a regular file is sent (a directory opens too)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RuntimeError(
                    f"http.response.pathsend: {path!r} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd, 0, st.st_size, False, fd  # the whole file: its size is the count
    file = message.get("file")
    if file is None:
        raise RuntimeError("http.response.zerocopysend needs a 'file'")
    return file, message.get("offset"), message.get("count"), bool(message.get("more_body")), -1


def _length(file: Any, offset: int | None, count: int | None) -> int:
    """Bytes to send: ``count``, or from the start to the end of the file."""
    if count is not None:
        return int(count)
    fd = file if isinstance(file, int) else file.fileno()
    size = os.fstat(fd).st_size
    if offset is None:
        offset = os.lseek(fd, 0, os.SEEK_CUR) if isinstance(file, int) else file.tell()
    return max(size - offset, 0)


def _check_cycle(cycle: Any) -> None:
    missing = [name for name in _CYCLE_ATTRS if not hasattr(cycle, name)]
    if missing:
        raise RuntimeError(
            f"zerocopy.asgi does not support uvicorn {uvicorn.__version__}: its "
            f"RequestResponseCycle lacks {', '.join(missing)}"
        )


async def _finish(cycle: Any, more_body: bool) -> None:
    """httptools: what uvicorn's send does when a body ends."""
    if more_body:
        return
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


async def _h11_finish(cycle: Any, more_body: bool) -> None:
    """h11: what uvicorn's send does when a body ends."""
    import h11

    if more_body:
        return
    cycle.response_complete = True
    cycle.message_event.set()
    if cycle.conn.our_state is h11.MUST_CLOSE or not cycle.keep_alive:
        cycle.conn.send(event=h11.ConnectionClosed())
        cycle.transport.close()
    cycle.on_response()


def _httptools_frame(cycle: Any) -> Any:
    """httptools: Content-Length accounting or chunk framing, as uvicorn's body writes."""

    def frame(n: int, more_body: bool) -> tuple[bytes, bytes] | None:
        if cycle.scope["method"] == "HEAD":
            cycle.expected_content_length = 0
            return None
        if cycle.chunked_encoding:
            head = b"%x\r\n" % n if n else b""
            tail = b"\r\n" if n else b""
            if not more_body:
                tail += b"0\r\n\r\n"
            return head, tail
        if n > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        cycle.expected_content_length -= n
        if not more_body and cycle.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        return b"", b""

    return frame


def _h11_frame(cycle: Any) -> Any:
    """h11: its own framing around the file bytes (``send_with_data_passthrough``)."""
    import h11

    def frame(n: int, more_body: bool) -> tuple[bytes, bytes] | None:
        conn = cycle.conn
        if cycle.scope["method"] == "HEAD":
            out = conn.send(h11.Data(data=b""))
            if not more_body:
                out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
            if out:
                cycle.transport.write(out)
            return None
        parts: list[Any] = []
        placeholder = _Placeholder(n)
        if n:
            parts = conn.send_with_data_passthrough(
                h11.Data(data=placeholder)) or []  # type: ignore[arg-type]
        at = next((i for i, p in enumerate(parts) if p is placeholder), len(parts))
        head = b"".join(bytes(p) for p in parts[:at])
        tail = b"".join(bytes(p) for p in parts[at + 1:])
        if not more_body:
            tail += conn.send(h11.EndOfMessage()) or b""
        return head, tail

    return frame


async def _send_file(cycle: Any, message: dict[str, Any], frame: Any, finish: Any) -> None:
    """The body part a pathsend/zerocopysend carries, framed by ``frame(n, more_body)``
    (None: send nothing, for HEAD)."""
    file, offset, count, more_body, own_fd = _open(message)
    try:
        n = _length(file, offset, count)
        framing = frame(n, more_body)
        if framing is not None:
            head, tail = framing
            try:
                await aio.sendfile(cycle.transport, file, offset, n, headers=head, trailers=tail)
            except ConnectionError:
                # The client went away: as for uvicorn's body writes, the
                # application is not told; the connection is closed.
                cycle.disconnected = True
                cycle.transport.close()
                return
    finally:
        if own_fd >= 0:
            os.close(own_fd)
    await finish(cycle, more_body)


def _adopt(before: Any, cycle: Any, make_frame: Any, finish: Any) -> None:
    """Offer the extensions in a new cycle's scope and handle them in its ``send``.

    Called with the protocol's cycle from ``before`` and after the parser
    step that may make one, so before the new cycle's task first runs: the
    application sees both.  Nothing to do when no new cycle was made.
    """
    if cycle is before or cycle is None:
        return
    _check_cycle(cycle)
    extensions = cycle.scope.setdefault("extensions", {})
    for name in EXTENSIONS:
        extensions.setdefault(name, {})
    uvicorn_send = cycle.send
    frame = make_frame(cycle)

    async def send(message: Any) -> None:
        if (message.get("type") in EXTENSIONS and cycle.response_started
                and not cycle.response_complete):
            if cycle.flow.write_paused and not cycle.disconnected:
                await cycle.flow.drain()
            if cycle.disconnected:
                return
            await _send_file(cycle, message, frame, finish)
            return
        await uvicorn_send(message)

    cycle.send = send


# --------------------------------------------------------------------------- protocols


class H11Protocol(h11_impl.H11Protocol):
    """uvicorn's h11 protocol with ``pathsend`` and ``zerocopysend``."""

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        _adopt(before, self.cycle, _h11_frame, _h11_finish)


HttpToolsProtocol: Any
try:
    from uvicorn.protocols.http import httptools_impl
except ImportError:  # httptools is not installed
    HttpToolsProtocol = None
    HTTPProtocol: Any = H11Protocol
else:

    class HttpToolsProtocol(httptools_impl.HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol with ``pathsend`` and ``zerocopysend``."""

        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            _adopt(before, self.cycle, _httptools_frame, _finish)

    HTTPProtocol = HttpToolsProtocol


# --------------------------------------------------------------------------- Starlette ranges


def _starlette_file_response() -> Any:
    """A Starlette ``FileResponse`` that sends single ranges with ``zerocopysend``, or None."""
    import inspect

    try:
        from starlette.responses import FileResponse as Base
    except ImportError:
        return None
    hook = getattr(Base, "_handle_single_range", None)
    if hook is None or list(inspect.signature(hook).parameters) != [
        "self", "send", "start", "end", "file_size", "send_header_only"
    ]:
        return None  # a Starlette without ranges (before 0.39), or one reorganised

    class FileResponse(Base):  # type: ignore[misc,valid-type]
        """Starlette's ``FileResponse``; a single-range request (``Range: bytes=a-b``)
        goes out with ``http.response.zerocopysend`` when the server offers it, as
        whole files already do with ``pathsend``.  Elsewhere it is Starlette's own."""

        _zerocopysend = False

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            self._zerocopysend = (scope.get("type") == "http"
                                  and EXTENSIONS[1] in scope.get("extensions", {}))
            await super().__call__(scope, receive, send)

        async def _handle_single_range(self, send: Any, start: int, end: int, file_size: int,
                                       send_header_only: bool) -> None:
            if not self._zerocopysend or send_header_only:
                await super()._handle_single_range(send, start, end, file_size,
                                                   send_header_only)
                return
            headers = [(k, v) for k, v in self.raw_headers
                       if k not in (b"content-range", b"content-length")]
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{file_size}".encode()))
            headers.append((b"content-length", str(end - start).encode()))
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                await send({"type": "http.response.start", "status": 206, "headers": headers})
                await send({"type": "http.response.zerocopysend", "file": fd, "offset": start,
                            "count": end - start, "more_body": False})
            finally:
                os.close(fd)

    return FileResponse


FileResponse: Any = _starlette_file_response()
