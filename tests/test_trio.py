"""zerocopy.trio.sendfile over loopback: trio socket streams, raw trio sockets, SSLStream."""

from __future__ import annotations

import os
import ssl
from typing import Any

import pytest

trio = pytest.importorskip("trio")

from _asyncutil import tls_contexts  # noqa: E402
from _zcutil import DEADLINE, Collector, recv_then_reset  # noqa: E402

import zerocopy  # noqa: E402
import zerocopy.trio as zt  # noqa: E402

BEFORE = b"before-" * 40_000
AFTER = b"-after"


def run(main: Any) -> Any:
    async def bounded() -> Any:
        with trio.fail_after(DEADLINE):
            return await main()

    return trio.run(bounded)


async def accepted(rcvbuf: int = 32 * 1024, sndbuf: int | None = None) -> tuple[Any, Any]:
    """(server-side trio.SocketStream, blocking client socket) over 127.0.0.1."""
    import socket

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    def connect() -> socket.socket:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.settimeout(DEADLINE)
        c.connect(("127.0.0.1", port))
        c.settimeout(None)
        return c

    client = await trio.to_thread.run_sync(connect)
    stream = await listeners[0].accept()
    await listeners[0].aclose()
    if sndbuf:
        stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, sndbuf)
    return stream, client


def test_stream_order(big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        stream, client = await accepted()
        col = Collector(client, delay=0.0005)
        await stream.send_all(BEFORE)
        with open(big_file, "rb") as f:
            f.seek(100)
            n = await zt.sendfile(stream, f, headers=b"HEAD", trailers=b"TAIL")
            assert f.tell() == len(big_data)
        await stream.send_all(AFTER)
        await stream.aclose()
        assert n == len(big_data) - 100 + 8
        got = await trio.to_thread.run_sync(col.result)
        assert got == BEFORE + b"HEAD" + big_data[100:] + b"TAIL" + AFTER
        client.close()

    run(main)


def test_raw_trio_socket_range(big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        stream, client = await accepted()
        col = Collector(client)
        fd = os.open(big_file, os.O_RDONLY)
        try:
            n = await zt.sendfile(stream.socket, fd, 10, 1_000_000)
        finally:
            os.close(fd)
        await stream.aclose()
        assert n == 1_000_000
        assert await trio.to_thread.run_sync(col.result) == big_data[10:1_000_010]
        client.close()

    run(main)


def test_ssl_stream(tls_cert: tuple[str, str], big_file: str, big_data: bytes) -> None:
    """A TLS client reads the right bytes: they went through the TLS layer."""
    server_ctx, client_ctx = tls_contexts(tls_cert)

    async def main() -> None:
        stream, client = await accepted()
        tls_stream = trio.SSLStream(stream, server_ctx, server_side=True)

        def handshake() -> ssl.SSLSocket:
            return client_ctx.wrap_socket(client, server_hostname="127.0.0.1")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tls_stream.do_handshake)
            tls_client = await trio.to_thread.run_sync(handshake)
        col = Collector(tls_client, delay=0.0005)
        with open(big_file, "rb") as f:
            n = await zt.sendfile(tls_stream, f, 3, 1_000_000, headers=b"H", trailers=b"T")
            assert f.tell() == 1_000_003
        await tls_stream.send_all(AFTER)
        await stream.aclose()
        assert n == 1_000_002
        got = await trio.to_thread.run_sync(col.result)
        assert got == b"H" + big_data[3:1_000_003] + b"T" + AFTER
        tls_client.close()

    run(main)


def test_cancel_mid_transfer(big_file: str, big_data: bytes) -> None:
    """Cancelled: Progress and the file position agree with what the client can read."""

    async def main() -> None:
        stream, client = await accepted(sndbuf=32 * 1024)
        progress = zt.Progress()
        f = open(big_file, "rb")
        with trio.move_on_after(0.3) as scope:
            await zt.sendfile(stream, f, headers=b"HEADER", progress=progress)
        assert scope.cancelled_caught
        sent = progress.bytes_sent
        assert 6 < sent < len(big_data)
        assert f.tell() == sent - 6
        f.close()
        col = Collector(client)
        await stream.send_all(b"!")  # the stream is still usable
        await stream.aclose()
        got = await trio.to_thread.run_sync(col.result)
        assert got == b"HEADER" + big_data[: sent - 6] + b"!"
        client.close()

    run(main)


def test_peer_reset(big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        stream, client = await accepted(sndbuf=32 * 1024)
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await trio.to_thread.run_sync(lambda: recv_then_reset(client, 100_000)))

        with open(big_file, "rb") as f:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
                    await zt.sendfile(stream, f)
            assert isinstance(info.value, zerocopy.TransferError)
            assert len(got[0]) <= info.value.bytes_sent < len(big_data)
            assert f.tell() == info.value.bytes_sent
        await stream.aclose()

    run(main)


def test_truncated(tmp_path: Any) -> None:
    p = tmp_path / "short.bin"
    p.write_bytes(b"y" * 3000)

    async def main() -> None:
        stream, client = await accepted()
        col = Collector(client)
        with open(p, "rb") as f, pytest.raises(zerocopy.TruncatedFileError) as info:
            await zt.sendfile(stream, f, 0, 9000)
        assert info.value.bytes_sent == 3000
        await stream.aclose()
        assert await trio.to_thread.run_sync(col.result) == b"y" * 3000
        client.close()

    run(main)


def test_closed_by_another_task(big_file: str) -> None:
    async def main() -> None:
        stream, client = await accepted(sndbuf=32 * 1024)

        async def closer() -> None:
            await trio.sleep(0.2)
            await stream.aclose()

        with open(big_file, "rb") as f:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(closer)
                with pytest.raises(trio.ClosedResourceError):
                    await zt.sendfile(stream, f)
        client.close()

    run(main)


def test_concurrent_send_refused(big_file: str) -> None:
    """Two sends on one SocketStream would interleave: trio's own guard refuses the second."""

    async def main() -> None:
        stream, client = await accepted(sndbuf=32 * 1024)
        with open(big_file, "rb") as f:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zt.sendfile, stream, f)
                await trio.sleep(0.1)
                with pytest.raises(trio.BusyResourceError):
                    await stream.send_all(b"x")
                nursery.cancel_scope.cancel()
        await stream.aclose()
        client.close()

    run(main)


def test_wrong_target() -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match=r"trio\.SocketStream"):
            await zt.sendfile(object(), 0)

    run(main)
