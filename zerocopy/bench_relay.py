# SPDX-License-Identifier: MIT
"""``python -m zerocopy bench --relay``: relays compared side by side in one run.

Bytes go sender -> relay -> receiver over loopback TCP; the receiver (its own
process) drains each connection and answers with the byte count, which the
sender checks.  Each relay implementation runs in its own process, started
fresh for each scenario, so its CPU time (user + system, from
/proc/PID/stat, forked helpers included) is its own.  Scenarios: one
connection carrying SIZE bytes, then CONNS concurrent connections carrying
SIZE bytes in all.  Every transfer is
bounded in time; a relay that fails or stalls is reported as failed and the
run goes on.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
BUFFER = 256 * KiB  # recv buffer of the Python relays
ACK = struct.Struct("!Q")
SLOWEST_SANE_RATE = 32 * MiB  # a transfer slower than this is broken, not slow
START_SECONDS = 10.0

NOTES = (
    "Notes:",
    "- One loopback TCP connection sender -> relay -> receiver per transfer; the sender uses"
    " sendfile from a page-cached file, the receiver (another process) recv_into()s a 1 MiB"
    " buffer and acknowledges the byte count, which is checked.",
    "- CPU s/GiB is the relay process's own user+system CPU time (its forked helpers included,"
    " from /proc/PID/stat) per GiB relayed. Where sender, relay and receiver share few"
    " cores this is the figure that carries over; throughput is capped by those cores.",
    "- Each figure is the median of the runs (by throughput); a relay is 'failed' only when"
    " every run failed.",
    "- Ratios are against the asyncio relay. socat and haproxy run only when on PATH"
    " (haproxy: mode tcp, option splice-request/splice-response, one thread).",
)


# --------------------------------------------------------------------------- receiver


def _receiver(listener: socket.socket) -> None:
    """Drain every connection; answer each EOF with the byte count. Runs until killed."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ)
    counts: dict[socket.socket, int] = {}
    buf = bytearray(MiB)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                for _ in range(64):
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
                sock.sendall(ACK.pack(counts.pop(sock)))
            except OSError:
                counts.pop(sock, None)
            sock.close()


# --------------------------------------------------------------------------- relays


def _relay_zerocopy(listener: socket.socket, target: tuple[str, int]) -> None:
    proxy = Proxy(listener, target, max_connections=4096)
    signal.signal(signal.SIGTERM, lambda s, f: proxy.close())
    proxy.serve_forever()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


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

    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


def _relay_asyncio(listener: socket.socket, target: tuple[str, int]) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(BUFFER):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except OSError:
            pass

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))
        cw.close()
        sw.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, sock=listener, limit=BUFFER)
        async with server:  # until SIGTERM ends the process
            await server.serve_forever()

    asyncio.run(run())


@dataclass
class Relay:
    name: str
    start: Callable[[tuple[str, int]], Any]  # target -> (pid, port) or None


def _forked(fn: Callable[[socket.socket, tuple[str, int]], None]) -> Callable[..., Any]:
    def start(target: tuple[str, int]) -> tuple[int, int]:
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        port = listener.getsockname()[1]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the relay process
            code = 0
            try:
                signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                fn(listener, target)
            except BaseException as e:
                print(f"relay process failed: {e!r}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        listener.close()
        return pid, port

    return start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _socat(target: tuple[str, int]) -> tuple[int, int]:
    port = _free_port()
    proc = subprocess.Popen(
        ["socat", f"-b{BUFFER}",
         f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024",
         f"TCP:{target[0]}:{target[1]}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _procs[proc.pid] = proc
    return proc.pid, port


_HAPROXY_CONFIG = """global
    maxconn 4000
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
    server target {host}:{target_port}
"""


def _haproxy(target: tuple[str, int]) -> tuple[int, int]:
    port = _free_port()
    fd, path = tempfile.mkstemp(prefix="zc-haproxy-", suffix=".cfg")
    with os.fdopen(fd, "w") as f:
        f.write(_HAPROXY_CONFIG.format(port=port, host=target[0], target_port=target[1]))
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", path],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _cleanup.append(path)
    _procs[proc.pid] = proc
    return proc.pid, port


_cleanup: list[str] = []
_procs: dict[int, subprocess.Popen[bytes]] = {}  # referenced until _stop() reaps them

RELAYS = {
    "zerocopy Proxy": _forked(_relay_zerocopy),
    "threads": _forked(_relay_threads),
    "asyncio": _forked(_relay_asyncio),
    "socat": _socat,
    "haproxy": _haproxy,
}
BASELINE = "asyncio"


def _available(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in ("socat", "haproxy") or shutil.which(n)]


def _wait_listening(port: int, pid: int) -> None:
    end = time.monotonic() + START_SECONDS
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if os.waitpid(pid, os.WNOHANG)[0]:
            raise RuntimeError("the relay exited at start")
        time.sleep(0.02)
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


def _stop(pid: int) -> float:
    """Read the relay's CPU seconds (its forked helpers included), then stop and reap it."""
    cpu = _tree_cpu(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    end = time.monotonic() + 10
    reaped = False
    while time.monotonic() < end and not reaped:
        reaped = os.waitpid(pid, os.WNOHANG)[0] != 0
        if not reaped:
            time.sleep(0.02)
    if not reaped:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    proc = _procs.pop(pid, None)
    if proc is not None:
        proc.returncode = 0  # reaped here; keep subprocess from waiting for it again
    return cpu


# --------------------------------------------------------------------------- senders


def _send_one(port: int, fd: int, offset: int, count: int, limit: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        sent = sendfile_all(s, fd, offset, count)
        s.shutdown(socket.SHUT_WR)
        ack = b""
        while len(ack) < ACK.size:
            chunk = s.recv(ACK.size - len(ack))
            if not chunk:
                break
            ack += chunk
    if len(ack) != ACK.size or ACK.unpack(ack)[0] != sent:
        raise RuntimeError(f"receiver got {ACK.unpack(ack)[0] if len(ack) == 8 else '?'}"
                           f" of {sent} bytes")


def _send_many(port: int, fd: int, size: int, conns: int, limit: float) -> None:
    share = size // conns
    errors: list[BaseException] = []

    def one(i: int) -> None:
        count = share if i < conns - 1 else size - share * (conns - 1)
        try:
            _send_one(port, fd, i * share, count, limit)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
    if any(t.is_alive() for t in threads):
        raise TimeoutError("transfers still running at the time limit")
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    name: str
    scenario: str
    seconds: float = 0.0
    cpu: float = 0.0
    size: int = 0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.size / GiB) if self.size else 0.0


def _measure(name: str, scenario: str, send: Callable[[int], None], size: int,
             target: tuple[str, int]) -> Result:
    result = Result(name, scenario, size=size)
    try:
        pid, port = RELAYS[name](target)
    except OSError as e:
        result.error = f"cannot start: {e}"
        return result
    try:
        _wait_listening(port, pid)
        start = time.monotonic()
        send(port)
        result.seconds = time.monotonic() - start
    except BaseException as e:
        result.error = f"{type(e).__name__}: {e}"
        if isinstance(e, KeyboardInterrupt):
            _stop(pid)
            raise
    finally:
        result.cpu = _stop(pid)
    return result


def _write_file(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = f.write(block[: min(left, len(block))])
            left -= n
    with open(path, "rb") as f:  # into the page cache
        while f.read(8 * MiB):
            pass


def _table(results: list[Result], scenarios: list[str]) -> str:
    base = {r.scenario: r for r in results if r.name == BASELINE and not r.error}
    header = ["relay"]
    for sc in scenarios:
        header += [f"{sc}: MiB/s", "x asyncio", "CPU s/GiB", "x asyncio"]
    rows = [header]
    names = list(dict.fromkeys(r.name for r in results))
    for name in names:
        row = [name]
        for sc in scenarios:
            r = next((r for r in results if r.name == name and r.scenario == sc), None)
            b = base.get(sc)
            if r is None or r.error:
                row += ["failed" if r else "-", "", "", ""]
                continue
            row.append(f"{r.rate / MiB:.0f}")
            row.append(f"{r.rate / b.rate:.2f}" if b else "")
            row.append(f"{r.cpu_per_gib:.2f}")
            row.append(f"{r.cpu_per_gib / b.cpu_per_gib:.2f}" if b and b.cpu_per_gib else "")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay benchmark; returns an exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy bench --relay",
        description="Compare relays (zerocopy Proxy, Python threads, asyncio, socat,"
        " haproxy) side by side.",
    )
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=_parse_size, default=None,
                        help="bytes per scenario: 64M, 1G... (default 1G)")
    parser.add_argument("--connections", type=int, default=None, metavar="N",
                        help=f"concurrent connections (default {DEFAULT_CONNS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {QUICK_SIZE // MiB} MiB, {QUICK_CONNS} connections")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="runs per relay and scenario; the table shows the median"
                             " (default 3, 1 with --quick)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of: " + ", ".join(RELAYS))
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    conns = args.connections or (QUICK_CONNS if args.quick else DEFAULT_CONNS)
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1 or repeat > 100:
        print("bench --relay: error: --repeat must be 1..100", file=sys.stderr)
        return 2
    if conns < 1 or conns > 4096:
        print("bench --relay: error: --connections must be 1..4096", file=sys.stderr)
        return 2
    wanted = list(RELAYS) if args.methods is None else [
        m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in RELAYS]
    if unknown:
        print(f"bench --relay: error: unknown method(s) {', '.join(unknown)}; "
              f"choose from {', '.join(RELAYS)}", file=sys.stderr)
        return 2
    names = _available(wanted)
    skipped = [m for m in wanted if m not in names]
    limit = START_SECONDS + size / SLOWEST_SANE_RATE
    scenarios = ["1 conn", f"{conns} conns"]

    tmpdir = tempfile.mkdtemp(prefix="zc-bench-relay-")
    path = os.path.join(tmpdir, "data.bin")
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    target = listener.getsockname()[:2]
    receiver = os.fork()
    if receiver == 0:  # pragma: no cover - the receiver process
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _receiver(listener)
        finally:
            os._exit(0)
    listener.close()
    old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    results: list[Result] = []
    try:
        print(f"relay benchmark: {size / MiB:.0f} MiB through a loopback relay, "
              f"1 connection, then {conns} concurrent connections; {os.cpu_count()} CPUs",
              flush=True)
        if skipped:
            print(f"(not on PATH, skipped: {', '.join(skipped)})", flush=True)
        _write_file(path, size)
        fd = os.open(path, os.O_RDONLY)
        try:
            for name in names:
                for sc in scenarios:
                    if sc == "1 conn":
                        def send(port: int) -> None:
                            _send_one(port, fd, 0, size, limit)
                    else:
                        def send(port: int) -> None:
                            _send_many(port, fd, size, conns, limit)
                    runs = []
                    for _ in range(repeat):
                        r = _measure(name, sc, send, size, target)
                        runs.append(r)
                        status = r.error or (f"{r.rate / MiB:.0f} MiB/s, "
                                             f"{r.cpu_per_gib:.2f} CPU s/GiB")
                        print(f"  {name:15s} {sc:10s} {status}", flush=True)
                    good = sorted((r for r in runs if not r.error), key=lambda r: r.rate)
                    results.append(good[len(good) // 2] if good else runs[-1])
        finally:
            os.close(fd)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGPIPE, old_pipe)
        _kill(receiver)
        shutil.rmtree(tmpdir, ignore_errors=True)
        for p in _cleanup:
            try:
                os.unlink(p)
            except OSError:
                pass
    print()
    print(_table(results, scenarios))
    print()
    for note in NOTES:
        print(note)
    return 1 if any(r.error for r in results) else 0  # a relay failed every run


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass

