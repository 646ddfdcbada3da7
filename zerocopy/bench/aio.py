# SPDX-License-Identifier: MIT
"""HTTP file servers on event loops: ``bench aio`` (or ``bench --aio``).

Each server runs in its own process on the measured CPU and serves two page-cached
files (default 1 MiB and 64 KiB) over keep-alive HTTP/1.1; this process is the load
generator on the peer CPU: CONNS connections, one request in flight on each, every
response's length checked and the first body per connection compared byte for byte.
A sample is REQUESTS responses; the server's CPU time (all its threads, from
/proc/PID/task/*/schedstat) is read before and after.

The pairs compared (the first of each pair is the baseline):

- asyncio, a minimal streams server: ``loop.sendfile`` against ``zerocopy.aio.sendfile``;
- uvloop, the same server: what a uvloop user has today (uvloop has no ``loop.sendfile``:
  read the file and write it, with ``drain``) against ``zerocopy.aio.sendfile``;
- aiohttp on uvloop: ``web.FileResponse`` against ``zerocopy.aiohttp.FileResponse``;
- Starlette's ``FileResponse`` under uvicorn (httptools, uvloop): uvicorn's own protocol
  against ``zerocopy.asgi.HttpToolsProtocol`` (``http.response.pathsend``).

Frameworks that are not installed are skipped (``pip install 'zerocopy-net[test-async]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._harness import (
    BACKLOG,
    BYTES,
    Context,
    KiB,
    MiB,
    Mode,
    Report,
    Sample,
    Target,
    TransferError,
    describe_bytes,
    fork_helper,
    format_size,
    http_header,
    plural,
    positive_int,
    sigpipe_ignored,
    size_list,
    stop_helper,
    time_limit,
    write_test_file,
)

DEFAULT_SIZES = (1 * MiB, 64 * KiB)
DEFAULT_CONNS = 4
# responses per sample: enough bytes for a steady figure, and at least this many requests
BYTES_PER_SAMPLE = 384 * MiB
QUICK_BYTES_PER_SAMPLE = 16 * MiB
MIN_REQUESTS = 1000
QUICK_MIN_REQUESTS = 50
START_SECONDS = 20.0
SAMPLE_SECONDS = 120.0
READ_CHUNK = 256 * KiB
HEAD_READ = 4 * KiB  # what the load generator copies of a response: its header and a little

# (group, method): what runs; the first method of a group is its baseline
SERVERS: dict[str, tuple[str, str, str]] = {
    # method name: (group, framework needed, what it is)
    "asyncio loop.sendfile": ("asyncio", "", "asyncio streams, loop.sendfile(transport, file)"),
    "asyncio zerocopy.aio": ("asyncio", "", "asyncio streams, zerocopy.aio.sendfile(writer, fd)"),
    "uvloop read+write": ("uvloop", "uvloop",
                          "uvloop streams, read 256 KiB + write + drain (no loop.sendfile)"),
    "uvloop zerocopy.aio": ("uvloop", "uvloop", "uvloop streams, zerocopy.aio.sendfile"),
    "aiohttp FileResponse": ("aiohttp on uvloop", "aiohttp",
                             "aiohttp web.FileResponse (falls back to read+write on uvloop)"),
    "aiohttp zerocopy": ("aiohttp on uvloop", "aiohttp", "zerocopy.aiohttp.FileResponse"),
    "uvicorn httptools": ("Starlette under uvicorn", "uvicorn",
                          "Starlette FileResponse, uvicorn http=httptools, uvloop"),
    "uvicorn zerocopy.asgi": ("Starlette under uvicorn", "uvicorn",
                              "Starlette FileResponse, http=zerocopy.asgi.HttpToolsProtocol"),
}
_NEEDS = {"uvloop": ("uvloop",), "aiohttp": ("aiohttp", "uvloop"),
          "uvicorn": ("uvicorn", "httptools", "starlette", "uvloop")}

NOTES = (
    "Notes:",
    "- Server CPU s/GiB is the server process's CPU time (all threads, from"
    " /proc/PID/task/*/schedstat) per GiB of response bodies; throughput counts bodies only."
    " The load generator (this process, on the other CPU) keeps one request in flight on"
    " each keep-alive connection and checks every length and the first body of each"
    " connection per sample byte for byte; other bodies are counted and discarded in the"
    " kernel (recv with MSG_TRUNC), so the load generator is cheap next to the servers.",
    "- 'what uvloop users get today': uvloop implements neither loop.sendfile nor"
    " sock_sendfile (uvloop issues #228, #549), so aiohttp falls back to reading chunks in"
    " a thread and writing them, and a hand-written server reads and writes; the"
    " 'uvloop read+write' baseline reads 256 KiB at a time in the loop (no thread), the"
    " cheapest form of that fallback.",
    "- Starlette's FileResponse reads 64 KiB chunks through a thread pool unless the server"
    " offers http.response.pathsend, which stock uvicorn does not.",
    "- Loopback in a virtual machine may make kernel sendfile dearer than read+write (compare"
    " `bench file`: the os.sendfile loop against read+sendall, same kernel path as here);"
    " then the uvloop and aiohttp groups measure that kernel path, not the adapters. On the"
    " development VM os.sendfile costs about 1.4x the CPU per GiB of read+sendall and makes"
    " half again as many segments; a real NIC's copies are what sendfile saves.",
    "- The machine may be shared: the figures are rough; ratios come from interleaved"
    " rounds (medians of per-round ratios).",
)


# --------------------------------------------------------------------------- servers


@dataclass
class Files:
    """The files served: URL path -> (file path, size, response header)."""

    paths: dict[str, tuple[str, int, bytes]]


def _stream_server(loop_kind: str, send_kind: str, listener: socket.socket, files: Files) -> None:
    """A minimal keep-alive HTTP/1.1 server on asyncio streams."""
    from .. import aio

    opened = {path.encode(): (os.open(name, os.O_RDONLY), size, header)
              for path, (name, size, header) in files.paths.items()}

    async def respond(writer: asyncio.StreamWriter, fd: int, size: int, header: bytes,
                      fileobj: Any) -> None:
        if send_kind == "zerocopy":
            await aio.sendfile(writer, fd, 0, size, headers=header)
        elif send_kind == "loop.sendfile":
            writer.write(header)
            await asyncio.get_running_loop().sendfile(writer.transport, fileobj, 0, size)
        else:  # read and write, as without loop.sendfile
            writer.write(header)
            offset = 0
            while offset < size:
                data = os.pread(fd, min(READ_CHUNK, size - offset), offset)
                writer.write(data)
                offset += len(data)
                await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fileobjs = {path: os.fdopen(os.dup(fd), "rb") for path, (fd, _, _) in opened.items()}
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                path = request.split(b" ", 2)[1]
                if path not in opened:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                fd, size, header = opened[path]
                await respond(writer, fd, size, header, fileobjs[path])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for f in fileobjs.values():
                f.close()
            writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.cancel)
        server = await asyncio.start_server(handle, sock=listener, backlog=BACKLOG)
        with contextlib.suppress(asyncio.CancelledError):
            await stop
        server.close()

    _run_loop(loop_kind, main)


def _run_loop(loop_kind: str, main: Callable[[], Any]) -> None:
    loop: asyncio.AbstractEventLoop
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(main())


def _aiohttp_server(ours: bool, listener: socket.socket, files: Files) -> None:
    from aiohttp import web

    response: type[web.FileResponse] = web.FileResponse
    if ours:
        from ..aiohttp import FileResponse

        response = FileResponse

    app = web.Application()
    for path, (name, _, _) in files.paths.items():
        async def handler(request: web.Request, name: str = name) -> web.StreamResponse:
            return response(name)

        app.router.add_get(path, handler)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.cancel)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, listener, backlog=BACKLOG).start()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
        await runner.cleanup()

    _run_loop("uvloop", main)


def _uvicorn_server(ours: bool, listener: socket.socket, files: Files) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    routes = []
    for path, (name, _, _) in files.paths.items():
        async def endpoint(request: Any, name: str = name) -> FileResponse:
            return FileResponse(name)

        routes.append(Route(path, endpoint))
    http: Any = "httptools"
    if ours:
        from ..asgi import HttpToolsProtocol

        http = HttpToolsProtocol
    config = uvicorn.Config(Starlette(routes=routes), http=http, loop="uvloop",
                            lifespan="off", access_log=False, log_level="error",
                            timeout_keep_alive=60, backlog=BACKLOG)
    uvicorn.Server(config).run(sockets=[listener])


def _serve(method: str, listener: socket.socket, files: Files) -> None:
    if method.startswith("asyncio "):
        _stream_server("asyncio", method.split(" ", 1)[1].replace("zerocopy.aio", "zerocopy"),
                       listener, files)
    elif method == "uvloop read+write":
        _stream_server("uvloop", "read+write", listener, files)
    elif method == "uvloop zerocopy.aio":
        _stream_server("uvloop", "zerocopy", listener, files)
    elif method.startswith("aiohttp "):
        _aiohttp_server(method == "aiohttp zerocopy", listener, files)
    else:
        _uvicorn_server(method == "uvicorn zerocopy.asgi", listener, files)


@dataclass
class Server:
    method: str
    pid: int
    port: int


def _start(ctx: Context, method: str, files: Files) -> Server:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(BACKLOG)
    port = listener.getsockname()[1]
    pid = fork_helper(ctx.measured_cpu)
    if pid == 0:  # the server process
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # frameworks' banners and access logs: not ours to print
            _serve(method, listener, files)
        except BaseException:  # the parent sees it fail to serve
            code = 1
        finally:
            os._exit(code)
    listener.close()
    return Server(method, pid, port)


# --------------------------------------------------------------------------- load


def _server_cpu(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` so far."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError), open(path) as f:
            total += int(f.read().split()[0])
    return total / 1e9


class _Conn:
    __slots__ = ("body", "head", "remaining", "sock", "verify")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = bytearray()
        self.remaining = -1  # -1: reading the header
        self.verify = False
        self.body = bytearray()


def _connect(port: int, conns: int) -> list[socket.socket]:
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=START_SECONDS)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    return socks


def _load(socks: Sequence[socket.socket], path: str, expected: bytes, requests: int) -> None:
    """``requests`` responses over the connections, one in flight on each; checked."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    sink = bytearray(1 * MiB)
    view = memoryview(sink)
    size = len(expected)
    issued = done = 0
    with selectors.DefaultSelector() as sel:
        for s in socks:
            conn = _Conn(s)
            conn.verify = True
            sel.register(s, selectors.EVENT_READ, conn)
            if issued < requests:
                s.send(request)
                issued += 1
        while done < requests:
            for key, _ in sel.select(SAMPLE_SECONDS):
                conn = key.data
                if conn.remaining < 0 or conn.verify:
                    n = conn.sock.recv_into(sink, HEAD_READ if conn.remaining < 0 else 0)
                else:
                    # the body is counted, not copied: MSG_TRUNC discards it in the kernel,
                    # so the load generator's CPU goes to the network stack, not to memcpy
                    n = conn.sock.recv_into(sink, min(conn.remaining, len(sink)), socket.MSG_TRUNC)
                if n == 0:
                    raise TransferError(f"the server closed a connection after {done} responses")
                if conn.remaining < 0:
                    conn.head += view[:n]
                    end = conn.head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    head = bytes(conn.head[:end]).lower()
                    if not head.startswith(b"http/1.1 200"):
                        raise TransferError(f"status {head[:40]!r}")
                    at = head.find(b"\r\ncontent-length:")
                    if at < 0 or int(head[at + 17:].split(b"\r\n", 1)[0]) != size:
                        raise TransferError(f"unexpected response header {head!r}")
                    part = conn.head[end + 4:]
                    if conn.verify:
                        conn.body = bytearray(part)
                    conn.remaining = size - len(part)
                    conn.head = bytearray()
                else:
                    conn.remaining -= n
                    if conn.verify:
                        conn.body += view[:n]
                if conn.remaining < 0:
                    raise TransferError("the server sent more than Content-Length")
                if conn.remaining == 0:
                    done += 1
                    conn.remaining = -1
                    if conn.verify:
                        if conn.body != expected:
                            raise TransferError("a response body differs from the file")
                        conn.verify = False
                        conn.body = bytearray()
                    if issued < requests:
                        conn.sock.send(request)
                        issued += 1


def _runner(server: Server, conns: int, path: str, expected: bytes,
            requests: int) -> Callable[[], Sample]:
    def run_once() -> Sample:
        with time_limit(SAMPLE_SECONDS):
            socks = _connect(server.port, conns)
            try:
                _load(socks, path, expected, conns)  # warm-up: connections, caches
                cpu0 = _server_cpu(server.pid)
                peer0 = time.process_time()
                wall0 = time.perf_counter()
                _load(socks, path, expected, requests)
                seconds = time.perf_counter() - wall0
                peer = time.process_time() - peer0
                cpu = _server_cpu(server.pid) - cpu0
            finally:
                for s in socks:
                    s.close()
        return Sample(seconds, cpu, requests * len(expected), peer, {"requests": requests})

    return run_once


# --------------------------------------------------------------------------- the mode


def _available(framework: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in _NEEDS.get(framework, ()))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=size_list, default=None,
                        help="file sizes served (default 1M,64K)")
    parser.add_argument("--connections", type=positive_int, default=None,
                        help=f"keep-alive connections of the load generator (default "
                             f"{DEFAULT_CONNS})")


def _columns(samples: Sequence[Sample]) -> dict[str, str]:
    import statistics

    rates = [s.counters.get("requests", 0) / s.seconds for s in samples if s.seconds]
    return {"req/s": f"{statistics.median(rates):,.0f}" if rates else "-"}


def _run(ctx: Context) -> Report:
    sizes: list[int] = list(ctx.options.sizes or DEFAULT_SIZES)
    conns: int = ctx.options.connections or DEFAULT_CONNS
    names = [m for m in ctx.methods if _available(SERVERS[m][1])]
    skipped = [m for m in ctx.methods if m not in names]
    per_sample = QUICK_BYTES_PER_SAMPLE if ctx.quick else BYTES_PER_SAMPLE
    least = QUICK_MIN_REQUESTS if ctx.quick else MIN_REQUESTS
    heading = (
        f"zerocopy bench aio: HTTP file servers on event loops, files of"
        f" {', '.join(format_size(s) for s in sizes)}"
        f" over {plural(conns, 'keep-alive connection')},"
        f" {plural(ctx.repeat, 'round')} (interleaved); server CPU per GiB first"
    )
    ctx.progress.show(heading)
    if skipped:
        ctx.progress.show(f"(not installed, skipped: {', '.join(skipped)})")
    servers: list[Server] = []
    try:
        with sigpipe_ignored(), ctx.tempdir() as directory:
            files = Files({})
            expected: dict[str, bytes] = {}
            for size in sizes:
                path = f"/{size}"
                name = os.path.join(directory, f"f{size}.bin")
                write_test_file(name, size)
                with open(name, "rb") as f:
                    expected[path] = f.read()
                files.paths[path] = (name, size, http_header(size))
            for method in names:
                servers.append(_start(ctx, method, files))
            for server in servers:
                _wait_listening(server)
            runners = {}
            for size in sizes:
                requests = max(least, per_sample // size)
                for server in servers:
                    group = f"{SERVERS[server.method][0]}, {format_size(size)}"
                    runners[(group, server.method)] = _runner(
                        server, conns, f"/{size}", expected[f"/{size}"], requests)
            runs = ctx.interleave(runners, describe_bytes)
    finally:
        for server in servers:
            stop_helper(server.pid)
    big = format_size(max(sizes))
    targets = [
        Target("zerocopy.aio vs loop.sendfile, throughput", "asyncio zerocopy.aio",
               "asyncio loop.sendfile", "value", at_least=1.0, group=f"asyncio, {big}"),
        Target("zerocopy.aio vs uvloop today, throughput", "uvloop zerocopy.aio",
               "uvloop read+write", "value", at_least=1.4, group=f"uvloop, {big}"),
        Target("zerocopy.aio vs uvloop today, server CPU/GiB", "uvloop zerocopy.aio",
               "uvloop read+write", "cpu", at_most=0.7, group=f"uvloop, {big}"),
        Target("aiohttp: ours vs FileResponse on uvloop, throughput", "aiohttp zerocopy",
               "aiohttp FileResponse", "value", at_least=1.4, group=f"aiohttp on uvloop, {big}"),
        Target("aiohttp: ours vs FileResponse on uvloop, server CPU/GiB", "aiohttp zerocopy",
               "aiohttp FileResponse", "cpu", at_most=0.7, group=f"aiohttp on uvloop, {big}"),
        Target("Starlette: with pathsend vs without, throughput", "uvicorn zerocopy.asgi",
               "uvicorn httptools", "value", at_least=1.5,
               group=f"Starlette under uvicorn, {big}"),
    ]
    notes = list(NOTES)
    if skipped:
        notes.append(f"- Not installed, skipped: {', '.join(skipped)}"
                     " (pip install 'zerocopy-net[test-async]').")
    if ctx.quick:
        notes.append("- --quick: few requests per sample; use the default to compare.")
    return ctx.report(
        heading=heading,
        unit=BYTES,
        settings={"sizes": sizes, "connections": conns, "servers": names, "skipped": skipped,
                  "python": sys.version.split()[0]},
        runs=runs,
        baseline="",
        targets=[t for t in targets if t.method in names and t.reference in names],
        notes=notes,
        columns=_columns,
    )


def _wait_listening(server: Server) -> None:
    """Until the server answers a connection (its framework is up), or it died."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        pid, status = os.waitpid(server.pid, os.WNOHANG)
        if pid:
            raise OSError(f"the {server.method} server exited (status {status:#x})")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
                s.sendall(b"GET /none HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                s.settimeout(START_SECONDS)
                s.recv(64)  # an answer, or the server's close: it runs
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise OSError(f"the {server.method} server did not start in {START_SECONDS:.0f} s")
        time.sleep(0.05)


MODE = Mode(
    name="aio",
    summary="HTTP file servers on asyncio, uvloop, aiohttp, uvicorn: zerocopy against today",
    methods={name: what for name, (_, _, what) in SERVERS.items()},
    run=_run,
    add_arguments=_add_arguments,
    default_repeat=3,
    order=50,
    measured="server",
    peer="load generator",
    measured_in_main=False,
)
