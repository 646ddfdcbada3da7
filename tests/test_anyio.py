"""zerocopy.anyio.sendfile over loopback, on anyio's asyncio and trio backends."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest

anyio = pytest.importorskip("anyio")
pytest.importorskip("trio")

from _asyncutil import tls_contexts  # noqa: E402
from _zcutil import DEADLINE, Collector, recv_then_reset  # noqa: E402
from anyio.abc import SocketAttribute  # noqa: E402
from anyio.streams.tls import TLSStream  # noqa: E402

import zerocopy  # noqa: E402
import zerocopy.anyio as za  # noqa: E402

BEFORE = b"before-" * 40_000
AFTER = b"-after"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(backend: str, main: Any) -> Any:
    async def bounded() -> Any:
        with anyio.fail_after(DEADLINE):
            return await main()

    return anyio.run(bounded, backend=backend)


def _connect(port: int, rcvbuf: int) -> socket.socket:
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(DEADLINE)
    c.connect(("127.0.0.1", port))
    c.settimeout(None)
    return c


async def accepted(rcvbuf: int = 32 * 1024, small_sndbuf: bool = False) -> tuple[Any, Any]:
    """(server-side anyio SocketStream, blocking client socket) over 127.0.0.1."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1")
    listener = multi.listeners[0]
    port = listener.extra(SocketAttribute.local_port)
    client = await anyio.to_thread.run_sync(lambda: _connect(port, rcvbuf))
    stream = await listener.accept()
    await multi.aclose()
    if small_sndbuf:
        stream.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    return stream, client


def test_stream_order(backend: str, big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        stream, client = await accepted()
        col = Collector(client, delay=0.0005)
        await stream.send(BEFORE)
        with open(big_file, "rb") as f:
            n = await za.sendfile(stream, f, 9, None, headers=b"HEAD", trailers=b"TAIL")
            assert f.tell() == len(big_data)
        await stream.send(AFTER)
        await stream.aclose()
        assert n == len(big_data) - 9 + 8
        got = await anyio.to_thread.run_sync(col.result)
        assert got == BEFORE + b"HEAD" + big_data[9:] + b"TAIL" + AFTER
        client.close()

    run(backend, main)


def test_unix_stream(backend: str, tmp_path: Any, big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        path = str(tmp_path / "s.sock")
        listener = await anyio.create_unix_listener(path)

        def connect() -> socket.socket:
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(DEADLINE)
            c.connect(path)
            c.settimeout(None)
            return c

        client = await anyio.to_thread.run_sync(connect)
        stream = await listener.accept()
        await listener.aclose()
        col = Collector(client, delay=0.0002)
        await stream.send(b"x")
        with open(big_file, "rb") as f:
            n = await za.sendfile(stream, f, 0, 2_000_000)
        await stream.send(b"y")
        await stream.aclose()
        assert n == 2_000_000
        assert await anyio.to_thread.run_sync(col.result) == b"x" + big_data[:2_000_000] + b"y"
        client.close()

    run(backend, main)


def test_tls_stream(backend: str, tls_cert: tuple[str, str], big_file: str,
                    big_data: bytes) -> None:
    server_ctx, client_ctx = tls_contexts(tls_cert)

    async def main() -> None:
        stream, client = await accepted()
        box: list[ssl.SSLSocket] = []

        async def client_side() -> None:
            box.append(await anyio.to_thread.run_sync(
                lambda: client_ctx.wrap_socket(client, server_hostname="127.0.0.1")))

        async with anyio.create_task_group() as tg:
            tg.start_soon(client_side)
            tls = await TLSStream.wrap(stream, server_side=True, ssl_context=server_ctx,
                                       standard_compatible=False)
        col = Collector(box[0], delay=0.0005)
        with open(big_file, "rb") as f:
            n = await za.sendfile(tls, f, 0, 1_000_000, headers=b"H", trailers=b"T")
            assert f.tell() == 1_000_000
        await tls.send(AFTER)
        await tls.aclose()
        assert n == 1_000_002
        got = await anyio.to_thread.run_sync(col.result)
        assert got == b"H" + big_data[:1_000_000] + b"T" + AFTER
        box[0].close()

    run(backend, main)


def test_cancel_mid_transfer(backend: str, big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        stream, client = await accepted(small_sndbuf=True)
        progress = za.Progress()
        caught: list[BaseException] = []
        f = open(big_file, "rb")
        with anyio.move_on_after(0.3) as scope:
            try:
                await za.sendfile(stream, f, headers=b"HEADER", progress=progress)
            except BaseException as exc:
                caught.append(exc)
                raise
        assert scope.cancelled_caught
        sent = progress.bytes_sent
        assert 6 < sent < len(big_data)
        assert f.tell() == sent - 6
        if backend == "asyncio":  # trio's Cancelled has no room for the attribute
            assert caught[0].bytes_sent == sent  # type: ignore[attr-defined]
        f.close()
        col = Collector(client)
        await stream.send(b"!")
        await stream.aclose()
        got = await anyio.to_thread.run_sync(col.result)
        assert got == b"HEADER" + big_data[: sent - 6] + b"!"
        client.close()

    run(backend, main)


def test_peer_reset(backend: str, big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        stream, client = await accepted(small_sndbuf=True)
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await anyio.to_thread.run_sync(lambda: recv_then_reset(client, 100_000)))

        with open(big_file, "rb") as f:
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
                    await za.sendfile(stream, f)
            assert isinstance(info.value, zerocopy.TransferError)
            assert len(got[0]) <= info.value.bytes_sent < len(big_data)
            assert f.tell() == info.value.bytes_sent
        await stream.aclose()

    run(backend, main)


def test_truncated(backend: str, tmp_path: Any) -> None:
    p = tmp_path / "short.bin"
    p.write_bytes(b"z" * 4000)

    async def main() -> None:
        stream, client = await accepted()
        col = Collector(client)
        with open(p, "rb") as f, pytest.raises(zerocopy.TruncatedFileError) as info:
            await za.sendfile(stream, f, 0, 8000, headers=b"h")
        assert info.value.bytes_sent == 4001
        await stream.aclose()
        assert await anyio.to_thread.run_sync(col.result) == b"h" + b"z" * 4000
        client.close()

    run(backend, main)


def test_wrong_stream(backend: str) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="anyio socket stream"):
            await za.sendfile(object(), 0)

    run(backend, main)
