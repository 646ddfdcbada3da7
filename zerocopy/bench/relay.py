# SPDX-License-Identifier: MIT
"""Relays side by side: ``bench relay`` (or ``bench --relay``).

Bytes go sender -> relay -> receiver over loopback TCP.  Each relay runs in its own
process, started fresh for each transfer and pinned to the measured CPU, so its CPU time
(user + system from /proc/PID/stat, forked helpers included) is its own; the sender threads
(this process) and the receiver run on the peer CPU.  Scenarios: one connection carrying
SIZE bytes, and CONNS concurrent connections carrying SIZE bytes in all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable

from ..relay import Proxy
from ..sendfile import sendfile_all
from ._harness import (
    ACK,
    BACKLOG,
    BYTES,
    START_SECONDS,
    STOP_SECONDS,
    Context,
    GiB,
    KiB,
    MiB,
    Mode,
    Report,
    Running,
    Sample,
    bounded_process,
    describe_bytes,
    fork_listening,
    format_size,
    free_port,
    parse_size,
    plural,
    positive_int,
    sigpipe_ignored,
    stop_process,
    tree_cpu,
    wait_listening,
    write_test_file,
)

DEFAULT_SIZE = 1 * GiB
QUICK_SIZE = 64 * MiB
DEFAULT_CONNS = 256
QUICK_CONNS = 64
BUFFER = 256 * KiB  # recv buffer of the Python relays
SLOWEST_SANE_RATE = 32 * MiB  # a transfer slower than this is broken, not slow
BASELINE = "asyncio"

NOTES = (
    "Notes:",
    "- CPU s/GiB is the relay process's own user+system CPU time (forked helpers included,"
    " start-up excluded, from /proc/PID/stat in 10 ms ticks) per GiB relayed: the figure"
    " that travels to real links. Throughput mostly says how little CPU a relay leaves the"
    " sender and receiver. The sender uses sendfile from a page-cached file; the receiver"
    " process drains and acknowledges the byte count, which the sender checks.",
    "- Each round runs every relay once per scenario (interleaved), each relay in a fresh"
    " process; medians, spread = (max - min) / median, ratios = medians of per-round ratios"
    " to asyncio (or to the first relay that succeeded, if it failed). A relay that fails"
    " once (bytes lost, error, over the time limit) is not run again in that scenario.",
    "- asyncio: streams, one task per connection; threads: two threads per connection;"
    " socat: fork per connection; haproxy: mode tcp, splice-request/response, one thread;"
    " socat and haproxy run only when on PATH. MSG_ZEROCOPY is not used here.",
)


# --------------------------------------------------------------------------- relays


def _relay_zerocopy(listener: socket.socket, target: tuple[str, int]) -> None:
    proxy = Proxy(listener, target, max_connections=BACKLOG)
    signal.signal(signal.SIGTERM, lambda s, f: proxy.close())
    proxy.serve_forever()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    try:
        while True:
            count = src.recv_into(buf)
            if not count:
                break
            dst.sendall(view[:count])
        dst.shutdown(socket.SHUT_WR)
    except OSError:  # a reset ends both directions, as in the other relays
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _relay_threads(listener: socket.socket, target: tuple[str, int]) -> None:
    def serve(client: socket.socket) -> None:
        try:
            server = socket.create_connection(target)
        except OSError:
            client.close()
            return
        thread = threading.Thread(target=_pump, args=(server, client), daemon=True)
        thread.start()
        _pump(client, server)
        thread.join()
        client.close()
        server.close()

    while True:  # until SIGTERM (or the process's alarm) ends the process
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def _relay_asyncio(listener: socket.socket, target: tuple[str, int]) -> None:
    # The handler tasks must be referenced from here.  asyncio's StreamReaderProtocol
    # holds its StreamReader only through a weakref, and the loop holds tasks only
    # weakly: once the client's EOF takes its transport out of the selector, nothing
    # the loop holds leads to the handler task waiting for the receiver's answer, so
    # the cycle collector destroyed it ("Task was destroyed but it is pending!") and
    # the client transport's __del__ closed the client socket before the answer came.
    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()  # of the open connections, for shutdown

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   both: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        try:
            while True:
                data = await reader.read(BUFFER)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if not writer.is_closing():
                writer.write_eof()  # half-close: the other direction goes on
        except OSError:  # a reset ends both directions, as in the other relays
            for w in both:
                w.transport.abort()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        mine = [cw]
        writers.add(cw)
        try:
            try:
                sr, sw = await asyncio.open_connection(*target, limit=BUFFER)
            except OSError:
                cw.transport.abort()
                return
            mine.append(sw)
            writers.add(sw)
            both = (cw, sw)
            await asyncio.gather(pipe(cr, sw, both), pipe(sr, cw, both))
            for w in both:
                w.close()
            for w in both:
                with contextlib.suppress(OSError):
                    await w.wait_closed()
        finally:
            handlers.discard(task)
            writers.difference_update(mine)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(
            signal.SIGTERM, lambda: None if stop.done() else stop.set_result(None))
        # backlog: start_server listen()s again, by default with a backlog of 100
        server = await asyncio.start_server(handle, sock=listener, limit=BUFFER,
                                            backlog=BACKLOG)
        await stop
        # A clean shutdown: reset the open connections and let every handler finish
        # (cancelling them instead makes Python 3.11's streams log a CancelledError).
        server.close()
        for w in list(writers):
            w.transport.abort()
        if handlers:
            await asyncio.wait(set(handlers), timeout=STOP_SECONDS / 2)
        await asyncio.wait_for(server.wait_closed(), STOP_SECONDS / 2)

    asyncio.run(run())


# (target, lifetime, the context for pinning) -> Running
RelayStarter = Callable[[tuple[str, int], float, Context], Running]


def _forked(body: Callable[[socket.socket, tuple[str, int]], None]) -> RelayStarter:
    def start(target: tuple[str, int], lifetime: float, ctx: Context) -> Running:
        return fork_listening(lambda listener: body(listener, target), lifetime, ctx, "relay")

    return start


def _socat(target: tuple[str, int], lifetime: float, ctx: Context) -> Running:
    port = free_port()
    proc, log = bounded_process(
        ["socat", f"-b{BUFFER}",
         f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog={BACKLOG}",
         f"TCP:{target[0]}:{target[1]}"], lifetime, ctx)
    return Running(proc.pid, port, proc, log)


_HAPROXY_CONFIG = """global
    maxconn {global_maxconn}
    nbthread 1
defaults
    mode tcp
    timeout connect 10s
    timeout client 120s
    timeout server 120s
    option splice-request
    option splice-response
listen relay
    bind 127.0.0.1:{port}
    maxconn {backlog}
    backlog {backlog}
    server target {host}:{target_port} maxconn {backlog}
"""


def _haproxy(target: tuple[str, int], lifetime: float, ctx: Context) -> Running:
    port = free_port()
    fd, path = tempfile.mkstemp(prefix="zc-haproxy-", suffix=".cfg")
    with os.fdopen(fd, "w") as config:
        config.write(_HAPROXY_CONFIG.format(
            port=port, host=target[0], target_port=target[1], backlog=BACKLOG,
            global_maxconn=BACKLOG + 64))
    proc, log = bounded_process(["haproxy", "-db", "-f", path], lifetime, ctx)
    return Running(proc.pid, port, proc, log, path)


_RELAYS: dict[str, tuple[RelayStarter, str]] = {
    "zerocopy Proxy": (_forked(_relay_zerocopy), "zerocopy.Proxy (splice, epoll, in C)"),
    "threads": (_forked(_relay_threads), "recv_into + sendall, two threads per connection"),
    "asyncio": (_forked(_relay_asyncio), "asyncio streams, one task per connection"),
    "socat": (_socat, "socat, fork per connection (when on PATH)"),
    "haproxy": (_haproxy, "haproxy mode tcp with splice (when on PATH)"),
}
_EXTERNAL = ("socat", "haproxy")


def _send_one(port: int, fd: int, offset: int, count: int, deadline: float) -> None:
    left = max(0.1, deadline - time.monotonic())
    with socket.create_connection(("127.0.0.1", port), timeout=left) as sock:
        sent = sendfile_all(sock, fd, offset, count)
        sock.shutdown(socket.SHUT_WR)
        ack = b""
        for _ in range(ACK.size):
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = sock.recv(ACK.size - len(ack))
            if not chunk:
                break
            ack += chunk
            if len(ack) == ACK.size:
                break
    if len(ack) != ACK.size or ACK.unpack(ack)[0] != sent:
        got = f"{ACK.unpack(ack)[0]} bytes" if len(ack) == ACK.size else "no byte count"
        raise RuntimeError(f"receiver sent {got} for {sent} bytes sent")


def _send(port: int, fd: int, size: int, conns: int, limit: float) -> None:
    """``size`` bytes over ``conns`` concurrent connections, all done within ``limit`` s."""
    share = size // conns
    deadline = time.monotonic() + limit
    errors: list[BaseException] = []

    def one(index: int) -> None:
        count = share if index < conns - 1 else size - share * (conns - 1)
        try:
            _send_one(port, fd, index * share, count, deadline)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"transfers still running after {limit:.0f} s")


def _measure(ctx: Context, name: str, conns: int, fd: int, size: int,
             target: tuple[str, int], limit: float) -> Sample:
    relay = _RELAYS[name][0](target, START_SECONDS + limit + STOP_SECONDS, ctx)
    try:
        wait_listening(relay)
        cpu_start = tree_cpu(relay.pid)  # start-up (haproxy parsing its config) excluded
        start = time.perf_counter()
        _send(relay.port, fd, size, conns, limit)
        seconds = time.perf_counter() - start
    finally:
        cpu = stop_process(relay)
    return Sample(seconds, max(0.0, cpu - cpu_start), size)


# --------------------------------------------------------------------------- the mode


def _relay_size(text: str) -> int:
    size = parse_size(text)
    if size < MiB:
        raise argparse.ArgumentTypeError("size must be at least 1M")
    return size


def _connections(text: str) -> int:
    count = positive_int(text)
    if count > BACKLOG:
        raise argparse.ArgumentTypeError(f"must be at most {BACKLOG}: {text!r}")
    return count


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=_relay_size, default=None,
        help=f"bytes per transfer: 64M, 1G... (default {format_size(DEFAULT_SIZE)},"
        f" {format_size(QUICK_SIZE)} with --quick)",
    )
    parser.add_argument(
        "--connections", type=_connections, default=None, metavar="N",
        help=f"concurrent connections (default {DEFAULT_CONNS}, {QUICK_CONNS} with --quick)",
    )


def _runner(ctx: Context, name: str, conns: int, fd: int, size: int, target: tuple[str, int],
            limit: float) -> Callable[[], Sample]:
    return lambda: _measure(ctx, name, conns, fd, size, target, limit)


def _run(ctx: Context) -> Report:
    size: int = ctx.options.size or (QUICK_SIZE if ctx.quick else DEFAULT_SIZE)
    conns: int = ctx.options.connections or (QUICK_CONNS if ctx.quick else DEFAULT_CONNS)
    names = [name for name in ctx.methods if name not in _EXTERNAL or shutil.which(name)]
    skipped = [name for name in ctx.methods if name not in names]
    if not names:
        raise OSError(f"no relay to run: {', '.join(skipped)} not on PATH")
    limit = START_SECONDS + size / SLOWEST_SANE_RATE
    scenarios = [
        (f"1 connection carrying {format_size(size)}", 1),
        (f"{conns} concurrent connections carrying {format_size(size)} in all", conns),
    ]
    heading = (
        f"zerocopy bench relay: {format_size(size)} per transfer through a loopback relay,"
        f" 1 connection and {conns} concurrent connections,"
        f" {plural(ctx.repeat, 'round')} (interleaved); relay CPU per GiB first"
    )
    ctx.progress.show(heading)
    if skipped:
        ctx.progress.show(f"(not on PATH, skipped: {', '.join(skipped)})")
    with sigpipe_ignored(), ctx.tempdir() as directory, ctx.receiver(concurrent=True) as target:
        path = os.path.join(directory, "data.bin")
        write_test_file(path, size)
        fd = os.open(path, os.O_RDONLY)
        try:
            runners = {
                (title, name): _runner(ctx, name, count, fd, size, target, limit)
                for title, count in scenarios for name in names
            }
            runs = ctx.interleave(runners, describe_bytes)
        finally:
            os.close(fd)
    notes = list(NOTES)
    if ctx.quick:
        notes.append(f"- --quick: CPU time is counted in 10 ms ticks, coarse for"
                     f" {format_size(size)}; use the default size to compare CPU.")
    if skipped:
        notes.append(f"- Not on PATH, skipped: {', '.join(skipped)}.")
    return ctx.report(
        heading=heading,
        unit=BYTES,
        settings={"size": size, "connections": conns, "relays": names, "skipped": skipped,
                  "time_limit": limit},
        runs=runs,
        baseline=BASELINE,
        notes=notes,
    )


MODE = Mode(
    name="relay",
    summary="splice relay and proxy against threaded, asyncio, socat and haproxy relays",
    methods={name: what for name, (_, what) in _RELAYS.items()},
    run=_run,
    add_arguments=_add_arguments,
    default_repeat=3,
    order=30,
    measured="relay",
    peer="sender and receiver",
    measured_in_main=False,
)
