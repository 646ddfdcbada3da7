"""zerocopy.asgi: Starlette's FileResponse and raw ASGI apps under uvicorn, in process.

uvicorn serves on an ephemeral port of 127.0.0.1 inside the test's loop
(asyncio or uvloop), with each of its HTTP/1.1 protocols; httpx is the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
starlette = pytest.importorskip("starlette")

from _asyncutil import LOOPS, run, tls_contexts  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import FileResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from zerocopy import aio, asgi  # noqa: E402

RANGES = hasattr(FileResponse, "_parse_range_header")  # Starlette >= 0.39 serves ranges
PROTOCOLS = [p for p in (asgi.HttpToolsProtocol, asgi.H11Protocol) if p is not None]


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=PROTOCOLS, ids=lambda p: p.__name__)
def protocol(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts that went through zerocopy.aio.sendfile."""
    calls: list[int] = []
    real = aio.sendfile

    async def counting(*args: Any, **kw: Any) -> int:
        n = await real(*args, **kw)
        calls.append(n)
        return n

    monkeypatch.setattr(aio, "sendfile", counting)
    return calls


@contextlib.asynccontextmanager
async def serving(app: Any, protocol: Any, **config: Any) -> AsyncIterator[int]:
    """uvicorn with ``protocol`` on an ephemeral port; yields the port, stops after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    cfg = uvicorn.Config(app, http=protocol, lifespan="off", log_level="warning",
                         access_log=False, **config)
    server = uvicorn.Server(cfg)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


def starlette_app(path: str) -> Starlette:
    async def whole(request: Any) -> FileResponse:
        return FileResponse(path)

    return Starlette(routes=[Route("/f", whole, methods=["GET", "HEAD"])])


# --------------------------------------------------------------------------- Starlette


def test_starlette_fileresponse(loop_kind: str, protocol: Any, big_file: str, big_data: bytes,
                                spy: list[int]) -> None:
    """pathsend is offered and used: two keep-alive requests, bytes checked, HEAD sends none."""

    async def main() -> None:
        async with serving(starlette_app(big_file), protocol) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(2):
                    r = await client.get("/f")
                    assert r.status_code == 200
                    assert r.content == big_data
                r = await client.head("/f")
                assert r.status_code == 200
                assert r.headers["content-length"] == str(len(big_data))
                assert r.content == b""
                r = await client.get("/f", headers={"Range": "bytes=10-19"})
                if RANGES:  # Starlette's own range path, not pathsend
                    assert r.status_code == 206 and r.content == big_data[10:20]
                else:
                    assert r.status_code == 200 and r.content == big_data
        assert spy == [len(big_data)] * (2 if RANGES else 3)

    run(loop_kind, main)


def test_starlette_tls(loop_kind: str, protocol: Any, tls_cert: tuple[str, str],
                       big_file: str, big_data: bytes, spy: list[int]) -> None:
    """uvicorn with TLS: the body goes through the TLS layer and the client decrypts it."""
    _, client_ctx = tls_contexts(tls_cert)

    async def main() -> None:
        async with serving(starlette_app(big_file), protocol, ssl_certfile=tls_cert[0],
                           ssl_keyfile=tls_cert[1]) as port:
            async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}",
                                         verify=client_ctx) as client:
                r = await client.get("/f")
                assert r.status_code == 200 and r.content == big_data
        assert spy == [len(big_data)]

    run(loop_kind, main)


# --------------------------------------------------------------------------- zerocopysend


def zerocopy_app(path: str, chunked: bool, seen: list[Any]) -> Any:
    """A raw ASGI app: a body message, a zerocopysend of a range, another body message."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        seen.append(sorted(scope.get("extensions", {})))
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(3 + 1_000_000 + 3).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<<<", "more_body": True})
        fd = os.open(path, os.O_RDONLY)
        try:
            await send({"type": "http.response.zerocopysend", "file": fd, "offset": 77,
                        "count": 1_000_000, "more_body": True})
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            f.seek(5)
            await send({"type": "http.response.zerocopysend", "file": f, "count": 0,
                        "more_body": True})
            assert f.tell() == 5
        await send({"type": "http.response.body", "body": b">>>", "more_body": False})

    return app


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_zerocopysend(loop_kind: str, protocol: Any, chunked: bool, big_file: str,
                      big_data: bytes, spy: list[int]) -> None:
    seen: list[Any] = []

    async def main() -> None:
        async with serving(zerocopy_app(big_file, chunked, seen), protocol) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(2):
                    r = await client.get("/")
                    assert r.status_code == 200
                    assert ("transfer-encoding" in r.headers) == chunked
                    assert r.content == b"<<<" + big_data[77:1_000_077] + b">>>"

    run(loop_kind, main)
    assert seen[0] == ["http.response.pathsend", "http.response.zerocopysend"]
    framing = len(b"%x\r\n\r\n" % 1_000_000) if chunked else 0  # a chunk's size line and CRLF
    assert spy.count(1_000_000 + framing) == 2


def test_zerocopysend_too_long(loop_kind: str, big_file: str) -> None:
    """More file bytes than Content-Length announced: uvicorn's own error, connection closed."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        with open(big_file, "rb") as f:
            await send({"type": "http.response.zerocopysend", "file": f, "count": 11})

    async def main() -> None:
        async with serving(app, asgi.HTTPProtocol) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                with pytest.raises(httpx.HTTPError):
                    await client.get("/")

    run(loop_kind, main)


@pytest.mark.timeout(60, method="thread")
def test_pathsend_refuses_what_is_not_a_file(loop_kind: str, protocol: Any,
                                             tmp_path: Any) -> None:
    """pathsend of a FIFO opened it blocking, in the loop: every connection of the
    server hung until a writer came.  A FIFO, a directory or a missing path is
    now the application's error at once (its connection closed), never a hang."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/ok":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        target = {"/fifo": fifo, "/dir": tmp_path, "/gone": tmp_path / "gone"}[scope["path"]]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        try:
            await send({"type": "http.response.pathsend", "path": str(target)})
        except Exception as exc:
            errors.append(exc)
            raise

    async def main() -> None:
        async with serving(app, protocol) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         timeout=10) as client:
                for path in ("/fifo", "/dir", "/gone"):
                    with pytest.raises(httpx.HTTPError):
                        await client.get(path)
                    assert (await client.get("/ok")).content == b"ok"

    run(loop_kind, main)
    assert [type(e) for e in errors] == [RuntimeError, RuntimeError, FileNotFoundError]
    assert "not a regular file" in str(errors[0])


def test_client_reset_mid_body(loop_kind: str, protocol: Any, big_file: str,
                               big_data: bytes) -> None:
    """A client that resets mid-body: the server goes on serving the next one."""

    async def main() -> None:
        async with serving(starlette_app(big_file), protocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.readexactly(50_000)).startswith(b"HTTP/1.1 200")
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                r = await client.get("/f")
                assert r.content == big_data

    run(loop_kind, main)


# --------------------------------------------------------------------------- versions


def test_old_uvicorn_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.29.9")
    saved = sys.modules.pop("zerocopy.asgi")
    try:
        with pytest.raises(ImportError, match=r"needs uvicorn >= 0\.30\.0"):
            importlib.import_module("zerocopy.asgi")
    finally:
        sys.modules["zerocopy.asgi"] = saved


def test_unknown_cycle_refused() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.scope: dict[str, Any] = {}

    with pytest.raises(RuntimeError, match="does not support uvicorn"):
        asgi._adopt(None, Cycle(), asgi._h11_frame, asgi._h11_finish)


# --------------------------------------------------------------------------- ranges


@pytest.mark.skipif(asgi.FileResponse is None, reason="Starlette before 0.39 serves no ranges")
@pytest.mark.parametrize("ours", [True, False], ids=["zerocopy-protocol", "stock-uvicorn"])
def test_range_with_zerocopysend(loop_kind: str, ours: bool, big_file: str, big_data: bytes,
                                 spy: list[int]) -> None:
    """zerocopy.asgi.FileResponse: single ranges zero-copy where offered, Starlette's otherwise."""

    async def endpoint(request: Any) -> Any:
        return asgi.FileResponse(big_file)

    app = Starlette(routes=[Route("/f", endpoint, methods=["GET", "HEAD"])])
    protocol = asgi.HTTPProtocol if ours else "h11"

    async def main() -> None:
        async with serving(app, protocol) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                r = await client.get("/f", headers={"Range": "bytes=1000-1999999"})
                assert r.status_code == 206
                assert r.headers["content-range"] == f"bytes 1000-1999999/{len(big_data)}"
                assert r.headers["content-length"] == str(1_999_000)
                assert r.content == big_data[1000:2_000_000]
                r = await client.head("/f", headers={"Range": "bytes=0-9"})
                assert r.status_code == 206 and r.headers["content-length"] == "10"
                r = await client.get("/f")
                assert r.content == big_data
        assert spy == ([1_999_000, len(big_data)] if ours else [])

    run(loop_kind, main)


def test_zerocopysend_head_keeps_the_connection(loop_kind: str, protocol: Any, big_file: str,
                                                big_data: bytes, spy: list[int]) -> None:
    """HEAD sends no body bytes; the next request on the connection is answered right."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1000")]})
        with open(big_file, "rb") as f:
            await send({"type": "http.response.zerocopysend", "file": f, "offset": 5,
                        "count": 1000})

    async def main() -> None:
        async with serving(app, protocol) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1000" in head.lower()
            head = await reader.readuntil(b"\r\n\r\n")  # straight after: HEAD had no body
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(1000) == big_data[5:1005]
            writer.close()
        assert spy == [1000]

    run(loop_kind, main)
