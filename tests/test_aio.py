"""zerocopy.aio.sendfile on real servers over loopback, on asyncio and uvloop.

Clients are blocking sockets read by threads (_zcutil.Collector), most with
small receive buffers so that transfers must wait for the loop.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import socket
import threading
from typing import Any

import pytest
from _asyncutil import LOOPS, in_thread, run, small_client, tls_client, tls_contexts
from _zcutil import DEADLINE, Collector, feed, itimer, recv_exactly, recv_then_reset, reset

import zerocopy
from zerocopy import aio

BEFORE = b"before-" * 40_000  # ~280 KiB written to the transport ahead of the file
AFTER = b"-after"


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Served:
    """A one-connection stream server running a given handler; its outcome is kept."""

    def __init__(self) -> None:
        self.outcome: asyncio.Future[tuple[Any, BaseException | None]] | None = None
        self.task: asyncio.Task[Any] | None = None

    async def start(self, handler: Any, **kw: Any) -> tuple[asyncio.AbstractServer, int]:
        loop = asyncio.get_running_loop()
        self.outcome = outcome = loop.create_future()

        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.task = asyncio.current_task()
            try:
                value = await handler(reader, writer)
            except BaseException as exc:  # the test inspects it
                if not outcome.done():
                    outcome.set_result((None, exc))
                if not isinstance(exc, Exception):
                    raise
                return
            if not outcome.done():
                outcome.set_result((value, None))

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0, **kw)
        return server, server.sockets[0].getsockname()[1]

    @property
    def result(self) -> Any:
        """An awaitable: the handler's value, or its exception raised."""
        assert self.outcome is not None

        async def get() -> Any:
            assert self.outcome is not None
            value, exc = await self.outcome
            if exc is not None:
                raise exc
            return value

        return get()


def small_sndbuf(transport: Any) -> None:
    """Keep the server's socket buffer small, so a client that reads nothing stalls it."""
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)


# --------------------------------------------------------------------------- streams


def test_streamwriter_order(loop_kind: str, big_file: str, big_data: bytes) -> None:
    """Bytes written before go out first, then headers, file, trailers, then bytes written after."""

    async def main() -> None:
        served = Served()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> tuple[int, int]:
            w.write(BEFORE)  # more than the socket takes at once: the transport buffers it
            with open(big_file, "rb") as f:
                f.seek(1000)
                n = await aio.sendfile(w, f, headers=b"HEAD", trailers=b"TAIL")
                pos = f.tell()
            w.write(AFTER)
            await w.drain()
            w.close()
            return n, pos

        server, port = await served.start(handler)
        client = small_client(port)
        col = Collector(client, delay=0.0005)
        n, pos = await served.result
        got = await in_thread(col.result)
        client.close()
        server.close()
        body = big_data[1000:]
        assert got == BEFORE + b"HEAD" + body + b"TAIL" + AFTER
        assert n == 4 + len(body) + 4
        assert pos == len(big_data)

    run(loop_kind, main)


@pytest.mark.timeout(120, method="thread")
def test_signals_during_transfers(loop_kind: str, big_file: str, big_data: bytes) -> None:
    """A signal makes sendfile(2) return EINTR even on a non-blocking socket; the
    resumed step then meets a full socket.  That is the end of a step, not an
    error: it raised BlockingIOError out of aio.sendfile."""
    rounds = 40  # 160 MiB: a few hundred steps, each a chance for a signal to land

    def read_all(sock: socket.socket) -> tuple[int, str]:
        digest, n = hashlib.sha256(), 0
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return n, digest.hexdigest()
            digest.update(data)
            n += len(data)

    async def main() -> None:
        served = Served()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> list[int]:
            sent = []
            with open(big_file, "rb") as f:
                for _ in range(rounds):
                    sent.append(await aio.sendfile(w, f, 0))
            w.close()
            return sent

        server, port = await served.start(handler)
        client = small_client(port, rcvbuf=64 * 1024)
        client.settimeout(DEADLINE)
        with itimer(lambda signum, frame: None, 0.0002, 0.0002):  # 5 kHz
            reader = asyncio.ensure_future(in_thread(lambda: read_all(client)))
            sent = await served.result
            n, digest = await reader
        client.close()
        server.close()
        assert sent == [len(big_data)] * rounds
        assert (n, digest) == (len(big_data) * rounds,
                               hashlib.sha256(big_data * rounds).hexdigest())

    run(loop_kind, main)


@pytest.mark.parametrize("via", ["writer", "transport"])
def test_writes_from_another_task_are_refused(loop_kind: str, via: str, big_file: str,
                                              big_data: bytes) -> None:
    """A write from another task during the transfer landed in the middle of the
    file; it raises RuntimeError instead, as loop.sendfile makes it.  uvloop's
    transports cannot refuse it (only its StreamWriter is guarded)."""
    if loop_kind == "uvloop" and via == "transport":
        pytest.skip("uvloop's transports cannot refuse a write (documented)")

    async def main() -> None:
        served = Served()
        outcome: list[BaseException | None] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            writes = w if via == "writer" else w.transport
            target = w if via == "writer" else w.transport

            async def other() -> None:
                await asyncio.sleep(0.005)  # the transfer waits for the slow reader
                try:
                    writes.write(b"<<in the middle>>")
                    outcome.append(None)
                except RuntimeError as exc:
                    outcome.append(exc)

            task = asyncio.ensure_future(other())
            with open(big_file, "rb") as f:
                n = await aio.sendfile(target, f)
            await task
            w.write(AFTER)  # allowed again
            await w.drain()
            w.close()
            return n

        server, port = await served.start(handler)
        client = small_client(port)
        col = Collector(client, delay=0.0005)
        n = await served.result
        got = await in_thread(col.result)
        client.close()
        server.close()
        assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError)
        assert "sendfile is in progress" in str(outcome[0])
        assert n == len(big_data)
        assert got == big_data + AFTER

    run(loop_kind, main)


@pytest.mark.parametrize("via", ["writer", "transport"])
def test_second_sendfile_during_a_transfer_is_refused(loop_kind: str, via: str, big_file: str,
                                                      big_data: bytes) -> None:
    """A second aio.sendfile on a transport whose transfer waits for the peer sent
    its bytes straight to the socket (no guard on write() sees that), in the middle
    of the first file, on both loops; it raises RuntimeError, as loop.sendfile does."""

    async def main() -> None:
        served = Served()
        outcome: list[BaseException | int] = []

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            target = w if via == "writer" else w.transport

            async def other() -> None:
                await asyncio.sleep(0.005)  # the transfer waits for the slow reader
                try:
                    outcome.append(await aio.sendfile(target, None, headers=b"<<in the middle>>"))
                except RuntimeError as exc:
                    outcome.append(exc)

            task = asyncio.ensure_future(other())
            with open(big_file, "rb") as f:
                n = await aio.sendfile(target, f)
            await task
            n += await aio.sendfile(target, None, headers=AFTER)  # allowed again
            w.close()
            return n

        server, port = await served.start(handler)
        client = small_client(port)
        col = Collector(client, delay=0.0005)
        n = await served.result
        got = await in_thread(col.result)
        client.close()
        server.close()
        assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
        assert "sendfile is in progress" in str(outcome[0])
        assert n == len(big_data) + len(AFTER)
        assert got == big_data + AFTER

    run(loop_kind, main)


def test_range_and_int_fd(loop_kind: str, big_file: str, big_data: bytes) -> None:
    """An int fd with an explicit range: the fd's own position is left alone."""
    import os

    async def main() -> None:
        served = Served()
        fd = os.open(big_file, os.O_RDONLY)

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            n = await aio.sendfile(w.transport, fd, 123, 1_000_000)
            w.close()
            return n

        try:
            server, port = await served.start(handler)
            client = small_client(port)
            col = Collector(client)
            assert await served.result == 1_000_000
            got = await in_thread(col.result)
            assert got == big_data[123:1_000_123]
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0
            client.close()
            server.close()
        finally:
            os.close(fd)

    run(loop_kind, main)


def test_small_file_fast_path(loop_kind: str, tmp_path: Any) -> None:
    """A response that fits in the socket buffer goes in one step; order is kept."""
    p = tmp_path / "s.bin"
    p.write_bytes(b"0123456789" * 100)

    async def main() -> None:
        served = Served()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            w.write(b"A")
            with open(p, "rb") as f:
                n = await aio.sendfile(w, f, headers=b"B", trailers=b"C")
            w.write(b"D")
            w.close()
            return n

        server, port = await served.start(handler)
        client = small_client(port)
        col = Collector(client)
        assert await served.result == 1002
        assert await in_thread(col.result) == b"AB" + b"0123456789" * 100 + b"CD"
        client.close()
        server.close()

    run(loop_kind, main)


def test_bytesio_source(loop_kind: str) -> None:
    """Objects without a file descriptor go through the same path (read into memory)."""
    data = bytes(range(256)) * 4000

    async def main() -> None:
        served = Served()
        src = io.BytesIO(data)

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            n = await aio.sendfile(w, src, 10, 500_000)
            w.close()
            return n

        server, port = await served.start(handler)
        client = small_client(port)
        col = Collector(client, delay=0.0005)
        assert await served.result == 500_000
        assert await in_thread(col.result) == data[10:500_010]
        assert src.tell() == 500_010
        client.close()
        server.close()

    run(loop_kind, main)


# --------------------------------------------------------------------------- protocols


class Recorder(asyncio.Protocol):
    """A protocol that records what it is told."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.eof = False
        self.lost: list[BaseException | None] = []
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_transport_protocol_restored(loop_kind: str, big_file: str, big_data: bytes) -> None:
    """A protocol's transport: data that arrives during the transfer reaches it after, in order."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Recorder())
            return protos[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = small_client(port)
        start = threading.Event()
        col = Collector(client, start=start)
        proto = protos[0] if protos else None
        while proto is None:
            await asyncio.sleep(0.01)
            proto = protos[0] if protos else None
        await proto.made
        transport = proto.transport
        task = asyncio.ensure_future(aio.sendfile(transport, open(big_file, "rb")))
        await asyncio.sleep(0.05)
        client.sendall(b"request bytes sent during the transfer")
        start.set()
        n = await task
        assert n == len(big_data)
        assert transport.get_protocol() is proto
        assert transport.is_reading()
        for _ in range(500):
            if proto.data:
                break
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b"request bytes sent during the transfer"
        transport.close()
        assert await in_thread(col.result) == big_data
        await asyncio.sleep(0.05)
        assert proto.lost == [None]
        client.close()
        server.close()

    run(loop_kind, main)


class BufferedRecorder(asyncio.BufferedProtocol):
    """A buffered protocol that records what it is told."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = bytearray()
        self.eof = False
        self.buf = bytearray(7)  # small: delivery takes several get_buffer calls
        self.made = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made.set_result(None)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buf[:nbytes]

    def eof_received(self) -> bool:
        self.eof = True
        return True


@pytest.mark.parametrize("factory", [Recorder, BufferedRecorder])
def test_data_and_eof_during_transfer(loop_kind: str, factory: Any, big_file: str,
                                      big_data: bytes) -> None:
    """Data and EOF that arrive while the transfer waits reach the protocol after, in order."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[Any] = []

        def make() -> Any:
            protos.append(factory())
            return protos[-1]

        server = await loop.create_server(make, "127.0.0.1", 0)
        client = small_client(server.sockets[0].getsockname()[1])
        start = threading.Event()
        col = Collector(client, start=start)
        while not protos:
            await asyncio.sleep(0.01)
        proto = protos[0]
        await proto.made
        small_sndbuf(proto.transport)
        f = open(big_file, "rb")
        task = asyncio.ensure_future(aio.sendfile(proto.transport, f))
        await asyncio.sleep(0.1)  # the client reads nothing yet: the transfer waits
        client.sendall(b"0123456789" * 10)
        client.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.1)
        start.set()
        assert await task == len(big_data)
        f.close()
        for _ in range(500):
            if proto.eof:
                break
            await asyncio.sleep(0.01)
        assert bytes(proto.data) == b"0123456789" * 10 and proto.eof
        assert proto.transport.get_protocol() is proto
        proto.transport.close()
        assert await in_thread(col.result) == big_data
        client.close()
        server.close()

    run(loop_kind, main)


# --------------------------------------------------------------------------- non-blocking sockets


def test_nonblocking_socket(loop_kind: str, big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        lst.setblocking(False)
        client = small_client(lst.getsockname()[1])
        conn, _ = await loop.sock_accept(lst)
        conn.setblocking(False)
        col = Collector(client, delay=0.0005)
        with open(big_file, "rb") as f:
            n = await aio.sendfile(conn, f, 5, None, headers=bytearray(b"H"), trailers=b"T")
            assert f.tell() == len(big_data)
        conn.close()
        assert n == len(big_data) - 5 + 2
        assert await in_thread(col.result) == b"H" + big_data[5:] + b"T"
        client.close()
        lst.close()

    run(loop_kind, main)


def test_blocking_socket_refused(loop_kind: str, make_pair: Any, big_file: str) -> None:
    s, _ = make_pair("tcp4")

    async def main() -> None:
        with pytest.raises(ValueError, match="non-blocking"):
            await aio.sendfile(s, big_file)

    run(loop_kind, main)


def test_wrong_target(loop_kind: str) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="StreamWriter"):
            await aio.sendfile(object(), 0)  # type: ignore[arg-type]

    run(loop_kind, main)


# --------------------------------------------------------------------------- TLS


def test_tls_transport(loop_kind: str, tls_cert: tuple[str, str], big_file: str,
                       big_data: bytes) -> None:
    """An SSL transport gets the bytes through its TLS layer: a TLS client reads the file."""
    server_ctx, client_ctx = tls_contexts(tls_cert)

    async def main() -> None:
        served = Served()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> tuple[int, int]:
            assert w.get_extra_info("ssl_object") is not None
            w.write(b"B" * 100_000)
            with open(big_file, "rb") as f:
                f.seek(7)
                n = await aio.sendfile(w, f, None, 2_000_000, headers=b"H", trailers=b"T")
                pos = f.tell()
            w.write(AFTER)
            await w.drain()
            w.close()
            return n, pos

        server, port = await served.start(handler, ssl=server_ctx)
        client = await in_thread(lambda: tls_client(port, client_ctx, rcvbuf=32 * 1024))
        col = Collector(client, delay=0.0005)
        n, pos = await served.result
        got = await in_thread(col.result)
        assert got == b"B" * 100_000 + b"H" + big_data[7:2_000_007] + b"T" + AFTER
        assert n == 2_000_002 and pos == 2_000_007
        client.close()
        server.close()

    run(loop_kind, main)


def test_tls_nonblocking_sslsocket(loop_kind: str, tls: Any, big_file: str,
                                   big_data: bytes) -> None:
    """An ssl.SSLSocket (non-blocking) gets the bytes through OpenSSL."""
    server, client = tls

    async def main() -> None:
        server.setblocking(False)
        col = Collector(client, delay=0.0002)
        with open(big_file, "rb") as f:
            n = await aio.sendfile(server, f, 0, 1_500_000, headers=b"H")
        assert n == 1_500_001
        server.setblocking(True)
        server.close()
        got = await in_thread(lambda: col.result())
        assert got == b"H" + big_data[:1_500_000]

    run(loop_kind, main)


# --------------------------------------------------------------------------- failures


def test_cancel_mid_transfer(loop_kind: str, big_file: str, big_data: bytes) -> None:
    """CancelledError carries bytes_sent; the position says the same; the transport is usable."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Recorder())
            return protos[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        client = small_client(server.sockets[0].getsockname()[1])
        while not protos:
            await asyncio.sleep(0.01)
        proto = protos[0]
        await proto.made
        transport = proto.transport
        small_sndbuf(transport)
        f = open(big_file, "rb")
        caught: list[BaseException] = []

        async def send() -> int:
            try:
                return await aio.sendfile(transport, f, headers=b"HEADER")
            except asyncio.CancelledError as exc:  # seen inside the task on every Python
                caught.append(exc)
                raise

        task = asyncio.ensure_future(send())
        await asyncio.sleep(0.2)  # the client reads nothing: the transfer waits
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sent = caught[0].bytes_sent  # type: ignore[attr-defined]
        assert 6 < sent < len(big_data)
        assert f.tell() == sent - 6
        f.close()
        # usable: its protocol is back, reading resumed, writes go out after the bytes sent
        assert transport.get_protocol() is proto
        assert transport.is_reading() and not transport.is_closing()
        transport.write(b"!")
        transport.close()
        got = await in_thread(lambda: recv_exactly(client, sent + 1))
        assert got == b"HEADER" + big_data[: sent - 6] + b"!"
        client.close()
        server.close()

    run(loop_kind, main)


def test_peer_reset(loop_kind: str, big_file: str, big_data: bytes) -> None:
    async def main() -> None:
        served = Served()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            with open(big_file, "rb") as f:
                try:
                    return await aio.sendfile(w, f)
                finally:
                    served.pos = f.tell()  # type: ignore[attr-defined]

        server, port = await served.start(handler)
        client = small_client(port)
        got = await in_thread(lambda: recv_then_reset(client, 100_000))
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
            await served.result
        assert isinstance(info.value, zerocopy.TransferError)
        sent = info.value.bytes_sent
        assert len(got) <= sent < len(big_data)
        assert served.pos == sent  # type: ignore[attr-defined]
        server.close()

    run(loop_kind, main)


def test_truncated_file(loop_kind: str, tmp_path: Any) -> None:
    p = tmp_path / "short.bin"
    p.write_bytes(b"x" * 5000)

    async def main() -> None:
        served = Served()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            try:
                with open(p, "rb") as f:
                    return await aio.sendfile(w, f, 0, 10_000, headers=b"HH")
            finally:
                w.close()

        server, port = await served.start(handler)
        client = small_client(port)
        col = Collector(client)
        with pytest.raises(zerocopy.TruncatedFileError) as info:
            await served.result
        assert info.value.bytes_sent == 5002
        assert await in_thread(col.result) == b"HH" + b"x" * 5000
        client.close()
        server.close()

    run(loop_kind, main)


def test_transport_closed_during_wait(loop_kind: str, big_file: str) -> None:
    """Another task closes the transport: the transfer ends, connection_lost comes once."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        protos: list[Recorder] = []

        def factory() -> Recorder:
            protos.append(Recorder())
            return protos[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        client = small_client(server.sockets[0].getsockname()[1])
        while not protos:
            await asyncio.sleep(0.01)
        proto = protos[0]
        await proto.made
        small_sndbuf(proto.transport)
        task = asyncio.ensure_future(aio.sendfile(proto.transport, big_file_fd))
        await asyncio.sleep(0.1)
        proto.transport.abort()
        with pytest.raises(OSError) as info:
            await task
        assert isinstance(info.value, zerocopy.TransferError)
        assert info.value.bytes_sent > 0
        await asyncio.sleep(0.05)
        assert len(proto.lost) == 1
        client.close()
        server.close()

    import os

    big_file_fd = os.open(big_file, os.O_RDONLY)
    try:
        run(loop_kind, main)
    finally:
        os.close(big_file_fd)


def test_tls_cancel(loop_kind: str, tls_cert: tuple[str, str], big_file: str,
                    big_data: bytes) -> None:
    """Cancelled through the TLS layer: bytes_sent and the position agree, no plaintext."""
    server_ctx, client_ctx = tls_contexts(tls_cert)

    async def main() -> None:
        served = Served()
        f = open(big_file, "rb")

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            small_sndbuf(w.transport)
            return await aio.sendfile(w, f)

        server, port = await served.start(handler, ssl=server_ctx)
        client = await in_thread(lambda: tls_client(port, client_ctx, rcvbuf=32 * 1024))
        await asyncio.sleep(0.2)  # the client reads nothing: the transfer waits
        assert served.task is not None and served.outcome is not None
        assert not served.outcome.done()
        served.task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await served.result  # the handler's own exception, kept by Served
        sent = info.value.bytes_sent  # type: ignore[attr-defined]
        assert 0 < sent < len(big_data)
        assert f.tell() == sent
        f.close()
        client.close()
        server.close()

    run(loop_kind, main)


# --------------------------------------------------------------------------- aio.Socket


def test_socket_sendall_and_completions(loop_kind: str, make_pair: Any, big_data: bytes) -> None:
    """Zero-copy sends (kept on even when loopback copies) complete; the bytes arrive."""
    s, r = make_pair("tcp4", small=True)

    async def main() -> None:
        s.setblocking(False)
        zs = aio.Socket(s, adaptive=False)
        col = Collector(r, delay=0.0002)
        buf = bytearray(big_data[:2_000_000])
        handle = await zs.sendall(buf)
        assert await handle.wait(timeout=25)
        assert handle.done()
        assert await zs.flush(timeout=25) and zs.pending == 0
        stats = zs.zsocket.stats
        if zs.zsocket.zerocopy_supported:
            assert stats.zerocopy_sends > 0 and stats.completions > 0
        buf[:] = b"\0" * len(buf)  # free again: changing it cannot change what was sent
        await zs.aclose()
        assert await in_thread(col.result) == big_data[:2_000_000]

    run(loop_kind, main)


def test_socket_flush_times_out_on_stalled_peer(loop_kind: str, make_pair: Any,
                                                big_data: bytes) -> None:
    s, _ = make_pair("tcp4", small=True)

    async def main() -> None:
        s.setblocking(False)
        zs = aio.Socket(s, adaptive=False)
        if not zs.zsocket.zerocopy_supported:
            pytest.skip(zs.zsocket.zerocopy_unsupported_reason)
        task = asyncio.ensure_future(zs.sendall(big_data))
        await asyncio.sleep(0.2)  # the peer reads nothing: sendall waits for room
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert zs.pending > 0  # what went out zero-copy is still on loan
        assert await zs.flush(timeout=0.3) is False
        await zs.aclose(timeout=0.1)  # resets the stalled connection, gets the buffers back
        assert zs.pending == 0

    run(loop_kind, main)


def test_socket_close_does_not_reset_a_reading_peer(loop_kind: str, make_pair: Any,
                                                    big_data: bytes) -> None:
    """Regression (review): aio.Socket.close() defaulted to timeout 0, which resets the
    connection whenever anything is on loan, so a peer still reading lost the tail."""
    s, r = make_pair("tcp4", small=True)

    async def main() -> None:
        s.setblocking(False)
        zs = aio.Socket(s, adaptive=False)
        if not zs.zsocket.zerocopy_supported:
            pytest.skip(zs.zsocket.zerocopy_unsupported_reason)
        data = big_data[:2_000_000]
        col = Collector(r, delay=0.002)  # reads, slowly: the tail is still in flight
        await zs.sendall(data)
        zs.close()  # the default waits for the completions before it closes
        assert await in_thread(col.result) == data

    run(loop_kind, main)


def test_blockingioerror_carries_the_handle(make_pair: Any, big_data: bytes) -> None:
    """zerocopy.Socket.sendall on a full non-blocking socket: the exception's handle
    covers the part sent zero-copy."""
    s, r = make_pair("tcp4", small=True)
    s.setblocking(False)
    zs = zerocopy.Socket(s, adaptive=False)
    if not zs.zerocopy_supported:
        pytest.skip(zs.zerocopy_unsupported_reason)
    with pytest.raises(BlockingIOError) as info:
        zs.sendall(big_data)
    handle = info.value.handle  # type: ignore[attr-defined]
    assert 0 < info.value.characters_written < len(big_data)
    col = Collector(r)
    assert handle.wait(20)
    zs.close()
    assert col.result() == big_data[: info.value.characters_written]


def test_socket_refuses(loop_kind: str, make_pair: Any, tls: Any) -> None:
    s, _ = make_pair("tcp4")

    async def main() -> None:
        with pytest.raises(ValueError, match="non-blocking"):
            aio.Socket(s)
        server, _ = tls
        server.setblocking(False)
        with pytest.raises(ValueError, match="TLS"):
            aio.Socket(server)

    run(loop_kind, main)


# --------------------------------------------------------------------------- recvfile


def test_recvfile_socket(loop_kind: str, make_pair: Any, big_data: bytes, tmp_path: Any) -> None:
    s, r = make_pair("tcp4", small=True)
    data = big_data[:1_500_000]

    async def main() -> None:
        r.setblocking(False)
        feed(s, data, chunk=16384)
        with open(tmp_path / "out.bin", "wb") as f:
            f.write(b"x" * 10)
            n = await aio.recvfile(r, f)
            assert f.tell() == 10 + len(data)
        assert n == len(data)
        assert (tmp_path / "out.bin").read_bytes() == b"x" * 10 + data

    run(loop_kind, main)


def test_recvfile_streamreader(loop_kind: str, big_data: bytes, tmp_path: Any) -> None:
    """Bytes the reader holds go first; the transport's reading comes back after, in order."""
    body = big_data[:1_000_000]
    out = tmp_path / "body.bin"

    async def main() -> None:
        served = Served()

        async def handler(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> bytes:
            line = await reader.readline()
            assert line == b"PUT 1000000\n"
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                assert await aio.recvfile(reader, fd, 1_000_000, 0) == 1_000_000
            finally:
                os.close(fd)
            rest = await reader.read()
            w.close()
            return rest

        server, port = await served.start(handler)
        client = small_client(port)
        feed(client, b"PUT 1000000\n" + body + b"TRAILING", chunk=30000)
        assert await served.result == b"TRAILING"
        assert out.read_bytes() == body
        client.close()
        server.close()

    run(loop_kind, main)


def test_recvfile_truncated_and_cancelled(loop_kind: str, make_pair: Any,
                                          tmp_path: Any) -> None:
    s, r = make_pair("tcp4")

    async def main() -> None:
        r.setblocking(False)
        s.sendall(b"a" * 5000)
        f = open(tmp_path / "o.bin", "wb")
        caught: list[BaseException] = []

        async def receive() -> int:
            try:
                return await aio.recvfile(r, f, 10_000)
            except asyncio.CancelledError as exc:
                caught.append(exc)
                raise

        task = asyncio.ensure_future(receive())
        await asyncio.sleep(0.2)  # 5000 of 10000 bytes came: it waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert caught[0].bytes_received == 5000  # type: ignore[attr-defined]
        assert f.tell() == 5000
        s.sendall(b"b" * 1000)
        s.shutdown(socket.SHUT_WR)
        with pytest.raises(zerocopy.TruncatedFileError) as info:
            await aio.recvfile(r, f, 5000)
        assert info.value.bytes_received == 1000  # type: ignore[attr-defined]
        f.close()
        assert (tmp_path / "o.bin").read_bytes() == b"a" * 5000 + b"b" * 1000

    run(loop_kind, main)


def test_recvfile_tls_reader(loop_kind: str, tls_cert: tuple[str, str], big_data: bytes,
                             tmp_path: Any) -> None:
    server_ctx, client_ctx = tls_contexts(tls_cert)
    out = tmp_path / "tls.bin"

    async def main() -> None:
        served = Served()

        async def handler(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
            with open(out, "wb") as f:
                n = await aio.recvfile(reader, f)
            w.close()
            return n

        server, port = await served.start(handler, ssl=server_ctx)
        client = await in_thread(lambda: tls_client(port, client_ctx))

        def send() -> None:
            client.sendall(big_data[:700_000])
            client.unwrap().close()

        await in_thread(send)
        assert await served.result == 700_000
        assert out.read_bytes() == big_data[:700_000]
        server.close()

    run(loop_kind, main)


# --------------------------------------------------------------------------- relay


def test_relay_both_ways(loop_kind: str, make_pair: Any, big_data: bytes) -> None:
    """client <-> (a | relay | b) <-> server, a half-close passed on, counts returned."""
    client, a = make_pair("tcp4")
    b, server = make_pair("tcp4")
    up, down = big_data[:1_500_000], big_data[-700_000:]

    async def main() -> tuple[int, int]:
        feed(client, up)  # then SHUT_WR: the relay passes it on to the server
        feed(server, down)
        got_server = Collector(server)
        got_client = Collector(client)
        moved = await aio.relay(a, b)
        assert await in_thread(got_server.result) == up
        assert await in_thread(got_client.result) == down
        return moved

    assert run(loop_kind, main) == (len(up), len(down))


def test_relay_cancelled(loop_kind: str, make_pair: Any) -> None:
    """Cancelled: both sockets shut down, the C loop ends, CancelledError has the counts."""
    client, a = make_pair("tcp4")
    b, server = make_pair("tcp4")

    async def main() -> None:
        caught: list[BaseException] = []

        async def run_relay() -> tuple[int, int]:
            try:
                return await aio.relay(a, b)
            except asyncio.CancelledError as exc:
                caught.append(exc)
                raise

        task = asyncio.ensure_future(run_relay())
        client.sendall(b"x" * 1000)
        assert await in_thread(lambda: recv_exactly(server, 1000)) == b"x" * 1000
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert caught[0].bytes_relayed == (1000, 0)  # type: ignore[attr-defined]
        # the sockets stay open, blocking again: usable (or to be closed)
        assert a.fileno() >= 0 and a.gettimeout() is None
        a.sendall(b"direct")
        assert await in_thread(lambda: recv_exactly(client, 6)) == b"direct"

    run(loop_kind, main)


def test_relay_reset_and_timeout(loop_kind: str, make_pair: Any) -> None:
    client, a = make_pair("tcp4")
    b, server = make_pair("tcp4")
    _client2, a2 = make_pair("tcp4")
    b2, _server2 = make_pair("tcp4")

    async def main() -> None:
        task = asyncio.ensure_future(aio.relay(a, b))
        client.sendall(b"y" * 300)
        assert await in_thread(lambda: recv_exactly(server, 300)) == b"y" * 300
        reset(server)
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
            await task
        assert info.value.bytes_relayed[0] == 300  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError) as timed:
            await aio.relay(a2, b2, timeout=0.2)  # nobody sends: idle
        assert timed.value.bytes_relayed == (0, 0)  # type: ignore[attr-defined]

    run(loop_kind, main)


def test_relay_of_int_fds_stops_when_a_number_is_reused(loop_kind: str, make_pair: Any) -> None:
    """Regression: nothing holds an int fd.  Between two steps another task closes the
    number and a new connection gets it (dup2 does both): the next step pumped the new
    connection's bytes.  The relay ends with EBADF instead."""
    client, a = make_pair("tcp4")
    b, server = make_pair("tcp4")
    new_a, new_b = make_pair("unix")
    fa, fb = os.dup(a.fileno()), os.dup(b.fileno())  # a and b keep the originals open

    async def main() -> None:
        task = asyncio.ensure_future(aio.relay(fa, fb, timeout=2))
        client.sendall(b"hello")
        assert await in_thread(lambda: recv_exactly(server, 5)) == b"hello"
        os.dup2(new_a.fileno(), fa)
        new_b.sendall(b"EVIL")
        client.sendall(b"late")  # an event on the original connection wakes the relay
        with pytest.raises(OSError) as info:
            await task
        assert info.value.errno == errno.EBADF
        assert info.value.bytes_relayed == (5, 0)  # type: ignore[attr-defined]
        assert await in_thread(lambda: recv_exactly(new_a, 4)) == b"EVIL"  # untouched
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(16)  # nothing more reached the target

    try:
        run(loop_kind, main)
    finally:
        os.close(fa)
        os.close(fb)


def test_relay_of_int_fds_notices_a_close_without_traffic(loop_kind: str,
                                                         make_pair: Any) -> None:
    """Regression: the C loop relays duplicates of int fds, so closing a number no
    longer closes the connection under it, and only a socket object's close was
    looked for between events: an idle relay whose number was closed elsewhere
    waited for ever, holding the connection open.  It ends with EBADF."""
    client, a = make_pair("tcp4")
    b, server = make_pair("tcp4")
    fa, fb = os.dup(a.fileno()), os.dup(b.fileno())  # a and b keep the originals open

    async def main() -> None:
        task = asyncio.ensure_future(aio.relay(fa, fb))  # no idle timeout
        client.sendall(b"hello")
        assert await in_thread(lambda: recv_exactly(server, 5)) == b"hello"
        os.close(fa)  # another task's close; no byte moves after it
        with pytest.raises(OSError) as info:
            await asyncio.wait_for(task, DEADLINE)
        assert info.value.errno == errno.EBADF
        assert info.value.bytes_relayed == (5, 0)  # type: ignore[attr-defined]

    try:
        run(loop_kind, main)
    finally:
        os.close(fb)


def test_relay_refuses_tls(loop_kind: str, tls: Any, make_pair: Any) -> None:
    server, _ = tls
    s, _ = make_pair("tcp4")

    async def main() -> None:
        with pytest.raises(ValueError, match="SSLSocket"):
            await aio.relay(server, s)

    run(loop_kind, main)
