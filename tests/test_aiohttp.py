"""zerocopy.aiohttp.FileResponse under a real aiohttp server, on asyncio and uvloop."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")

from _asyncutil import LOOPS, run, tls_contexts  # noqa: E402
from aiohttp import web  # noqa: E402

from zerocopy import aio  # noqa: E402
from zerocopy.aiohttp import FileResponse  # noqa: E402


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the bytes that went through zerocopy.aio.sendfile."""
    calls: list[int] = []
    real = aio.sendfile

    async def counting(*args: Any, **kw: Any) -> int:
        n = await real(*args, **kw)
        calls.append(n)
        return n

    monkeypatch.setattr(aio, "sendfile", counting)
    return calls


async def serve(path: str, main: Callable[[str, Any], Awaitable[None]],
                ssl_context: ssl.SSLContext | None = None, **response: Any) -> None:
    """Serve ``path`` at /f with our FileResponse and run main(base_url, runner)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return FileResponse(path, **response)

    app = web.Application()
    app.router.add_get("/f", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    try:
        await main(f"{scheme}://127.0.0.1:{port}/f", runner)
    finally:
        await runner.cleanup()


def test_whole_file_keepalive(loop_kind: str, big_file: str, big_data: bytes,
                              spy: list[int]) -> None:
    """Two requests on one keep-alive connection, each body checked; the kernel sent them."""

    async def main(url: str, runner: Any) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(2):
                async with session.get(url) as r:
                    assert r.status == 200
                    assert r.headers["Content-Length"] == str(len(big_data))
                    assert await r.read() == big_data
        assert spy == [len(big_data), len(big_data)]

    run(loop_kind, lambda: serve(big_file, main))


def test_range(loop_kind: str, big_file: str, big_data: bytes, spy: list[int]) -> None:
    async def main(url: str, runner: Any) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Range": "bytes=1000-2000999"}) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == f"bytes 1000-2000999/{len(big_data)}"
                assert await r.read() == big_data[1000:2001000]
            async with session.get(url, headers={"Range": "bytes=-500"}) as r:
                assert r.status == 206
                assert await r.read() == big_data[-500:]
            async with session.get(url, headers={"Range": f"bytes={len(big_data)}-"}) as r:
                assert r.status == 416
        assert spy == [2_000_000, 500]

    run(loop_kind, lambda: serve(big_file, main))


def test_head_and_conditional(loop_kind: str, big_file: str, spy: list[int]) -> None:
    async def main(url: str, runner: Any) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.head(url) as r:
                assert r.status == 200
                etag = r.headers["ETag"]
            async with session.get(url, headers={"If-None-Match": etag}) as r:
                assert r.status == 304
                assert await r.read() == b""
        assert spy == []

    run(loop_kind, lambda: serve(big_file, main))


def test_tls(loop_kind: str, tls_cert: tuple[str, str], big_file: str, big_data: bytes,
             spy: list[int]) -> None:
    """Over TLS the body goes through the TLS layer: the client decrypts the right bytes."""
    server_ctx, client_ctx = tls_contexts(tls_cert)

    async def main(url: str, runner: Any) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=client_ctx) as r:
                assert r.status == 200
                assert await r.read() == big_data
            async with session.get(url, ssl=client_ctx, headers={"Range": "bytes=5-104"}) as r:
                assert await r.read() == big_data[5:105]
        assert spy == [len(big_data), 100]

    run(loop_kind, lambda: serve(big_file, main, ssl_context=server_ctx))


def test_client_goes_away(loop_kind: str, big_file: str, big_data: bytes) -> None:
    """A client that resets the connection mid-body: the server serves the next one."""
    import asyncio
    import socket
    import struct

    async def main(url: str, runner: Any) -> None:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readexactly(100_000)).startswith(b"HTTP/1.1 200")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as r:
                assert await r.read() == big_data

    run(loop_kind, lambda: serve(big_file, main))
