# SPDX-License-Identifier: MIT
"""``python -m zerocopy bench --relay``: relays compared side by side in one run.

Bytes go sender -> relay -> receiver over loopback TCP; the receiver (its own
process) drains each connection and answers with the byte count, which the
sender checks.  Each relay implementation runs in its own process, started
fresh for each transfer, so its CPU time (user + system, from /proc/PID/stat,
forked helpers included) is its own.  Scenarios: one connection carrying SIZE
bytes, and CONNS concurrent connections carrying SIZE bytes in all.  The runs
are interleaved: every round runs every relay once in each scenario, so machine
noise hits all of them alike; the tables show medians and their spread.  Every
transfer, and every process started here, is bounded in time; a relay that
fails or stalls is reported as failed (with the error) and the run goes on.
Progress goes to stderr; stdout gets only the tables and notes (or, with
``--json``, only JSON).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .bench import Progress
from .relay import Proxy
from .sendfile import sendfile_all

__all__ = ["main"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
DEFAULT_SIZE = 1 * GiB
QUICK_SIZE = 64 * MiB
DEFAULT_CONNS = 256
QUICK_CONNS = 64
DEFAULT_REPEAT = 3
BUFFER = 256 * KiB  # recv buffer of the Python relays
BACKLOG = 4096  # every listener here: N concurrent connects must never overflow it
ACK = struct.Struct("!Q")
SLOWEST_SANE_RATE = 32 * MiB  # a transfer slower than this is broken, not slow
START_SECONDS = 10.0  # for a relay to start listening
STOP_SECONDS = 10.0  # for a relay to exit after SIGTERM (then SIGKILL)
NOTE_WIDTH = 92
BASELINE = "asyncio"

LOOPBACK = (
    "Loopback hides the network: sender, relay and receiver compete for the same {cpus} cores,"
    " so throughput here is mostly how little CPU the relay leaves the other two; the relay's"
    " CPU s/GiB is the figure that travels to real links. MSG_ZEROCOPY is not used here."
)
NOTES = (
    "Notes:",
    "- One loopback TCP connection sender -> relay -> receiver per transfer; the sender uses"
    " sendfile from a page-cached file, the receiver (another process) recv_into()s a 1 MiB"
    " buffer and acknowledges the byte count, which the sender checks.",
    "- Throughput and CPU s/GiB are medians over the rounds; spread is (max - min) / median of"
    " the throughput. Each round runs every relay once per scenario (interleaved), each"
    " relay in a fresh process. CPU s/GiB is the relay process's own user+system CPU time"
    " (forked helpers included, start-up excluded, from /proc/PID/stat) per GiB relayed.",
    "- A relay that fails once (bytes lost, error, over the time limit) is reported FAILED"
    " for that scenario and not run again in it.",
    "- Ratios are against {baseline} (or the first relay that succeeded, if it failed)."
    " asyncio: streams, one task per connection; threads: two threads per connection;"
    " socat: fork per connection; haproxy: mode tcp, splice-request/response, one thread;"
    " socat and haproxy run only when on PATH.",
)
QUICK_NOTE = (
    "- --quick: CPU time is counted in clock ticks (10 ms), coarse for {size}; use the"
    " default size to compare CPU."
)


# --------------------------------------------------------------------------- receiver


def _receiver(listener: socket.socket, lifetime: float) -> None:
    """Drain every connection; answer each EOF with the byte count. Ends after ``lifetime``
    seconds, when its parent exits, or when killed."""
    parent = os.getppid()
    end = time.monotonic() + lifetime
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    counts: dict[socket.socket, int] = {}
    buf = bytearray(MiB)
    while time.monotonic() < end and os.getppid() == parent:
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                for _ in range(256):
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    counts[conn] = 0
                    sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n:
                counts[sock] += n
                continue
            sel.unregister(sock)
            try:
                sock.setblocking(True)
                sock.settimeout(1.0)
                sock.sendall(ACK.pack(counts.pop(sock)))
            except OSError:
                counts.pop(sock, None)
            sock.close()


# --------------------------------------------------------------------------- relays


def _relay_zerocopy(listener: socket.socket, target: tuple[str, int]) -> None:
    proxy = Proxy(listener, target, max_connections=BACKLOG)
    signal.signal(signal.SIGTERM, lambda s, f: proxy.close())
    proxy.serve_forever()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
        dst.shutdown(socket.SHUT_WR)
    except OSError:  # a reset ends both directions, as in the other relays
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def _relay_threads(listener: socket.socket, target: tuple[str, int]) -> None:
    def serve(client: socket.socket) -> None:
        try:
            server = socket.create_connection(target)
        except OSError:
            client.close()
            return
        t = threading.Thread(target=_pump, args=(server, client), daemon=True)
        t.start()
        _pump(client, server)
        t.join()
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
            while data := await reader.read(BUFFER):
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


@dataclass
class Running:
    pid: int  # forked, or (socat, haproxy) the pid of ``timeout`` running it
    port: int
    proc: subprocess.Popen[bytes] | None = None  # socat, haproxy
    log: IO[bytes] | None = None  # their stderr
    path: str = ""  # a config file to remove


RelayStarter = Callable[[tuple[str, int], float], Running]  # (target, lifetime) -> Running


def _forked(fn: Callable[[socket.socket, tuple[str, int]], None]) -> RelayStarter:
    def start(target: tuple[str, int], lifetime: float) -> Running:
        listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
        port = listener.getsockname()[1]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the relay process
            code = 0
            try:
                signal.alarm(math.ceil(lifetime))  # SIGALRM's default action ends it
                signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                fn(listener, target)
            except BaseException as e:
                print(f"relay process failed: {e!r}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        listener.close()  # the child's copy listens already: no need to wait for it
        return Running(pid, port)

    return start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bounded(argv: list[str], lifetime: float) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start argv, killed after ``lifetime`` seconds even if this process dies first.

    Its stderr goes to an unlinked temporary file, returned to be read if it fails."""
    log = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(
            ["timeout", "-s", "KILL", f"{math.ceil(lifetime)}", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
    except BaseException:
        log.close()
        raise
    return proc, log


def _socat(target: tuple[str, int], lifetime: float) -> Running:
    port = _free_port()
    proc, log = _bounded(
        ["socat", f"-b{BUFFER}",
         f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog={BACKLOG}",
         f"TCP:{target[0]}:{target[1]}"], lifetime)
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


def _haproxy(target: tuple[str, int], lifetime: float) -> Running:
    port = _free_port()
    fd, path = tempfile.mkstemp(prefix="zc-haproxy-", suffix=".cfg")
    with os.fdopen(fd, "w") as f:
        f.write(_HAPROXY_CONFIG.format(port=port, host=target[0], target_port=target[1],
                                       backlog=BACKLOG, global_maxconn=BACKLOG + 64))
    proc, log = _bounded(["haproxy", "-db", "-f", path], lifetime)
    return Running(proc.pid, port, proc, log, path)


RELAYS: dict[str, RelayStarter] = {
    "zerocopy Proxy": _forked(_relay_zerocopy),
    "threads": _forked(_relay_threads),
    "asyncio": _forked(_relay_asyncio),
    "socat": _socat,
    "haproxy": _haproxy,
}


def _available(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in ("socat", "haproxy") or shutil.which(n)]


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (/proc/net/tcp; no probe connection)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return True
    return False


def _last_line(log: IO[bytes] | None) -> str:
    if log is None:
        return ""
    log.seek(0)
    lines = log.read()[-4096:].decode(errors="replace").strip().splitlines()
    return f": {' '.join(lines[-1].split())}" if lines else ""


def _wait_listening(relay: Running) -> None:
    if relay.proc is None:
        return  # forked: the listener was listening before the fork
    end = time.monotonic() + START_SECONDS
    for _ in range(int(START_SECONDS / 0.01)):
        if _listening(relay.port):
            return
        if relay.proc.poll() is not None:
            raise RuntimeError(f"the relay exited at start (status {relay.proc.returncode})"
                               f"{_last_line(relay.log)}")
        if time.monotonic() > end:
            break
        time.sleep(0.01)
    raise RuntimeError("the relay did not start listening")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of pid and its descendants, reaped children included (/proc stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
            todo += [c for c, (pp, _) in stats.items() if pp == p]
    return total / tick


def _stop(relay: Running) -> float:
    """Read the relay's CPU seconds (its forked helpers included), then stop and reap it."""
    pid = relay.pid
    cpu = _tree_cpu(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + STOP_SECONDS
    reaped = False
    try:
        for _ in range(int(STOP_SECONDS / 0.005)):
            reaped = os.waitpid(pid, os.WNOHANG)[0] != 0
            if reaped or time.monotonic() > end:
                break
            time.sleep(0.005)
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:  # reaped already (Popen.poll())
        pass
    if relay.proc is not None and relay.proc.returncode is None:
        relay.proc.returncode = 0  # reaped here; keep subprocess from waiting for it again
    if relay.log is not None:
        relay.log.close()
    if relay.path:
        with contextlib.suppress(OSError):
            os.unlink(relay.path)
    return cpu


# --------------------------------------------------------------------------- senders


def _send_one(port: int, fd: int, offset: int, count: int, deadline: float) -> None:
    left = max(0.1, deadline - time.monotonic())
    with socket.create_connection(("127.0.0.1", port), timeout=left) as s:
        sent = sendfile_all(s, fd, offset, count)
        s.shutdown(socket.SHUT_WR)
        ack = b""
        for _ in range(ACK.size):
            s.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = s.recv(ACK.size - len(ack))
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

    def one(i: int) -> None:
        count = share if i < conns - 1 else size - share * (conns - 1)
        try:
            _send_one(port, fd, i * share, count, deadline)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"transfers still running after {limit:.0f} s")


# --------------------------------------------------------------------------- running


@dataclass
class Scenario:
    name: str
    conns: int
    title: str


@dataclass
class Sample:
    seconds: float
    cpu_seconds: float
    size: int

    @property
    def rate(self) -> float:
        return self.size / self.seconds

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu_seconds * GiB / self.size


@dataclass
class Runs:
    relay: str
    scenario: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


@dataclass
class Summary:
    relay: str
    throughput: float | None = None  # bytes/s, median
    spread: float | None = None  # (max - min) / median of throughput
    cpu_per_gib: float | None = None  # median
    throughput_ratio: float | None = None
    cpu_ratio: float | None = None
    error: str | None = None
    samples: list[Sample] = field(default_factory=list)


def _measure(name: str, conns: int, fd: int, size: int, target: tuple[str, int],
             limit: float) -> Sample:
    relay = RELAYS[name](target, START_SECONDS + limit + STOP_SECONDS)
    try:
        _wait_listening(relay)
        cpu0 = _tree_cpu(relay.pid)  # start-up (haproxy parsing its configuration) excluded
        start = time.monotonic()
        _send(relay.port, fd, size, conns, limit)
        seconds = time.monotonic() - start
    finally:
        cpu = _stop(relay)
    return Sample(seconds, max(0.0, cpu - cpu0), size)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _run(names: Sequence[str], scenarios: Sequence[Scenario], repeat: int, fd: int,
         size: int, target: tuple[str, int], limit: float,
         progress: Progress) -> dict[str, list[Runs]]:
    """Round-robin: each round runs every relay once in every scenario."""
    runs = {sc.name: [Runs(name, sc.name) for name in names] for sc in scenarios}
    for round_number in range(1, repeat + 1):
        for sc in scenarios:
            for r in runs[sc.name]:
                if r.error is not None:
                    continue
                label = f"[{round_number}/{repeat}] {sc.name:>9} {r.relay}"
                progress.show(f"{label} ...", transient=True)
                try:
                    sample = _measure(r.relay, sc.conns, fd, size, target, limit)
                except Exception as e:  # any failure is a result
                    r.error = _one_line(e)
                    progress.show(f"{label}: FAILED: {r.error}")
                    continue
                r.samples.append(sample)
                progress.show(f"{label}: {sample.rate / MiB:.0f} MiB/s, "
                              f"{sample.cpu_per_gib:.2f} CPU s/GiB")
    progress.finish()
    return runs


def _summarize(runs: Sequence[Runs]) -> tuple[str | None, list[Summary]]:
    out = []
    for r in runs:
        s = Summary(r.relay, error=r.error, samples=r.samples)
        if r.error is None and r.samples:
            rates = [x.rate for x in r.samples]
            s.throughput = statistics.median(rates)
            if len(rates) > 1:
                s.spread = (max(rates) - min(rates)) / s.throughput
            s.cpu_per_gib = statistics.median(x.cpu_per_gib for x in r.samples)
        out.append(s)
    ok = [s for s in out if s.throughput is not None]
    base = next((s for s in ok if s.relay == BASELINE), ok[0] if ok else None)
    if base is not None:
        for s in ok:
            assert s.throughput is not None and base.throughput is not None
            s.throughput_ratio = s.throughput / base.throughput
            if s.cpu_per_gib is not None and base.cpu_per_gib:
                s.cpu_ratio = s.cpu_per_gib / base.cpu_per_gib
    return (base.relay if base else None), out


# --------------------------------------------------------------------------- reporting


def _rate(bytes_per_second: float) -> str:
    if bytes_per_second >= GiB:
        return f"{bytes_per_second / GiB:.2f} GiB/s"
    return f"{bytes_per_second / MiB:.0f} MiB/s"


def _opt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _tables(scenarios: Sequence[Scenario],
            summaries: dict[str, tuple[str | None, list[Summary]]]) -> str:
    """One table per scenario, all with the same column widths."""
    blocks: list[tuple[str, list[str], list[list[str]]]] = []
    for sc in scenarios:
        base, results = summaries[sc.name]
        vs = f"vs {base or BASELINE}"
        header = ["relay", "throughput", "spread", vs, "CPU s/GiB", vs]
        rows = []
        for s in results:
            if s.throughput is None:
                rows.append([s.relay, f"FAILED: {s.error or 'no run'}"])
                continue
            rows.append([s.relay, _rate(s.throughput), _opt(s.spread, "{:.0%}"),
                         _opt(s.throughput_ratio, "{:.2f}x"), _opt(s.cpu_per_gib, "{:.2f}"),
                         _opt(s.cpu_ratio, "{:.2f}x")])
        blocks.append((sc.title, header, rows))
    full = [row for _, h, rows in blocks for row in [h, *rows] if len(row) == len(h)]
    widths = [max(len(row[i]) for row in full) for i in range(len(full[0]))]

    def render(row: Sequence[str]) -> str:
        if len(row) < len(widths):  # a failure: the message, on one line
            return "  ".join([row[0].ljust(widths[0]), *row[1:]]).rstrip()
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = []
    for title, header, rows in blocks:
        out += [title, render(header), render(["-" * w for w in widths])]
        out += [render(row) for row in rows]
        out.append("")
    return "\n".join(out).rstrip()


def _parse_size(text: str) -> int:
    units = {"": 1, "k": KiB, "m": MiB, "g": GiB}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(unit)]) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (try 64M, 1G)") from None
    if value < MiB:
        raise argparse.ArgumentTypeError("size must be at least 1M")
    return int(value)


def _size_text(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay benchmark; returns an exit status (1 when a relay failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy bench --relay",
        description="Compare relays (zerocopy Proxy, Python threads, asyncio, socat,"
        " haproxy) side by side.",
    )
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=_parse_size, default=None,
                        help="bytes per transfer: 64M, 1G... (default 1G)")
    parser.add_argument("--connections", type=int, default=None, metavar="N",
                        help=f"concurrent connections (default {DEFAULT_CONNS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {QUICK_SIZE // MiB} MiB, {QUICK_CONNS} connections")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                        help="rounds (interleaved); the tables show medians"
                             f" (default {DEFAULT_REPEAT})")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of: " + ", ".join(RELAYS))
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable JSON on stdout (progress still goes"
                             " to stderr)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    conns = args.connections or (QUICK_CONNS if args.quick else DEFAULT_CONNS)
    repeat = args.repeat
    if repeat < 1 or repeat > 100:
        print("bench --relay: error: --repeat must be 1..100", file=sys.stderr)
        return 2
    if conns < 1 or conns > BACKLOG:
        print(f"bench --relay: error: --connections must be 1..{BACKLOG}", file=sys.stderr)
        return 2
    wanted = list(RELAYS) if args.methods is None else [
        m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in RELAYS]
    if unknown or not wanted:
        print(f"bench --relay: error: unknown method(s) {', '.join(unknown)}; "
              f"choose from {', '.join(RELAYS)}", file=sys.stderr)
        return 2
    names = _available(wanted)
    skipped = [m for m in wanted if m not in names]
    limit = START_SECONDS + size / SLOWEST_SANE_RATE
    scenarios = [
        Scenario("1 conn", 1, f"1 connection carrying {_size_text(size)}"),
        Scenario(f"{conns} conns", conns,
                 f"{conns} concurrent connections carrying {_size_text(size)} in all"),
    ]
    per_run = START_SECONDS + limit + STOP_SECONDS
    progress = Progress()
    began = time.monotonic()

    tmpdir = tempfile.mkdtemp(prefix="zc-bench-relay-")
    path = os.path.join(tmpdir, "data.bin")
    listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    target = listener.getsockname()[:2]
    receiver = os.fork()
    if receiver == 0:  # pragma: no cover - the receiver process
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _receiver(listener, per_run * repeat * len(scenarios) * len(names) + 60)
        finally:
            os._exit(0)
    listener.close()
    old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        print(f"relay benchmark: {_size_text(size)} per transfer through a loopback relay,"
              f" 1 connection and {conns} concurrent connections, {repeat} interleaved"
              f" rounds; {os.cpu_count()} CPUs", file=sys.stderr, flush=True)
        if skipped:
            print(f"(not on PATH, skipped: {', '.join(skipped)})", file=sys.stderr, flush=True)
        _write_file(path, size)
        fd = os.open(path, os.O_RDONLY)
        try:
            runs = _run(names, scenarios, repeat, fd, size, target, limit, progress)
        finally:
            os.close(fd)
    except KeyboardInterrupt:
        progress.finish()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGPIPE, old_pipe)
        _kill(receiver)
        shutil.rmtree(tmpdir, ignore_errors=True)
    summaries = {sc.name: _summarize(runs[sc.name]) for sc in scenarios}
    failed = any(s.throughput is None for _, results in summaries.values() for s in results)
    seconds = time.monotonic() - began
    cpus = os.cpu_count() or 0
    loopback = LOOPBACK.format(cpus=cpus)
    notes = [n.format(baseline=BASELINE) for n in NOTES]
    if args.quick:
        notes.append(QUICK_NOTE.format(size=_size_text(size)))
    if skipped:
        notes.append(f"- Not on PATH, skipped: {', '.join(skipped)}.")
    if args.json:
        document = {
            "mode": "relay",
            "settings": {"size": size, "connections": conns, "repeat": repeat,
                         "relays": names, "skipped": skipped, "time_limit": limit},
            "machine": {"cpus": cpus},
            "scenarios": [
                {"name": sc.name, "connections": sc.conns, "title": sc.title,
                 "baseline": summaries[sc.name][0],
                 "results": [_summary_dict(s) for s in summaries[sc.name][1]]}
                for sc in scenarios],
            "units": {"throughput": "bytes per second", "cpu_per_gib": "CPU seconds per GiB",
                      "spread": "(max - min) / median of throughput",
                      "sample.seconds": "seconds", "sample.cpu_seconds": "CPU seconds",
                      "sample.size": "bytes"},
            "notes": [loopback, *notes[1:]],
            "failed": failed,
            "seconds": seconds,
        }
        json.dump(document, sys.stdout, indent=2)
        print()
        return 1 if failed else 0
    print()
    print(_tables(scenarios, summaries))
    print()
    print(textwrap.fill(loopback, width=NOTE_WIDTH))
    print()
    for note in notes:
        print(textwrap.fill(note, width=NOTE_WIDTH, subsequent_indent="  "))
    print(f"\ntotal time {seconds:.1f} s")
    return 1 if failed else 0


def _summary_dict(s: Summary) -> dict[str, Any]:
    return {"relay": s.relay, "throughput": s.throughput, "spread": s.spread,
            "cpu_per_gib": s.cpu_per_gib, "throughput_ratio": s.throughput_ratio,
            "cpu_ratio": s.cpu_ratio, "error": s.error,
            "samples": [{"seconds": x.seconds, "cpu_seconds": x.cpu_seconds, "size": x.size}
                        for x in s.samples]}


def _write_file(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(block[: min(left, len(block))])
    with open(path, "rb") as f:  # into the page cache
        while f.read(8 * MiB):
            pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
