# SPDX-License-Identifier: MIT
"""HTTP file servers side by side: ``bench serve`` (or ``bench --serve``).

Every server serves the same generated files (4 KiB, 64 KiB and 1 MiB by default) from
one directory and runs in its own process pinned to the measured CPU: ``zerocopy
FileServer`` (1 worker), nginx (1 worker, ``sendfile on``, ``tcp_nopush on``, access log
off) with and without ``open_file_cache``, ``python -m http.server`` and aiohttp's static
files.  The same load generator, on the peer CPU, loads each server in turn with keep-alive
GETs of one file for a fixed time: ``wrk -t1 -cN`` when it is on PATH, else the
project's own C generator (``loadgen.c``, compiled with the system C compiler into the
run's temporary directory), else a Python one (which cannot saturate the fast servers:
the output says so).  A sample's CPU time is the server's process tree's user + system
time (``/proc``), so the table's "CPU us/call" is the server's CPU per request and
"us/call" the wall time per request (1 / requests per second).

After the timed runs, ``--idle N`` keep-alive connections (10,000 by default) are opened
to the zerocopy server and to nginx, each after one request, and the growth of the
server's RSS is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ._harness import (
    BACKLOG,
    CALLS,
    Context,
    GiB,
    KiB,
    MiB,
    Mode,
    Report,
    Running,
    Runs,
    Sample,
    Target,
    bounded_process,
    describe_calls,
    fork_listening,
    format_rate,
    format_size,
    free_port,
    last_line,
    paired_ratio,
    plural,
    positive_int,
    sigpipe_ignored,
    size_list,
    stop_process,
    tree_cpu,
    tree_rss,
    wait_listening,
    write_test_file,
)

ZEROCOPY = "zerocopy FileServer"
NGINX = "nginx"
NGINX_OFC = "nginx+open_file_cache"
HTTP_SERVER = "http.server"
AIOHTTP = "aiohttp"

DEFAULT_SIZES = (4 * KiB, 64 * KiB, 1 * MiB)
DEFAULT_SECONDS = 5.0
QUICK_SECONDS = 1.0
DEFAULT_CONNS = 64
DEFAULT_IDLE = 10_000
QUICK_IDLE = 1_000
MAX_CONNECTIONS = 16_384  # per server: room for the idle connections
START_SECONDS = 10.0
LOAD_GRACE_SECONDS = 30.0  # past its duration, a load generator that has not ended is broken
IDLE_RSS_BUDGET = 64 * MiB  # for 10,000 idle keep-alive connections (scaled for others)

LOADERS = ("auto", "wrk", "c", "python")
_RPS_CPUS = "/sys/class/net/lo/queues/rx-0/rps_cpus"  # lo's receive steering (see _harness)


# --------------------------------------------------------------------------- servers


def _serve_zerocopy(root: str, listener: socket.socket) -> None:
    from ..server import FileServer

    server = FileServer(root, sock=listener, max_connections=MAX_CONNECTIONS)
    signal.signal(signal.SIGTERM, lambda s, f: server.shutdown())
    server.serve_forever()
    server.close()


def _serve_aiohttp(root: str, listener: socket.socket) -> None:
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", root)
    web.run_app(app, sock=listener, print=None, access_log=None, backlog=BACKLOG)


def _forked(body: Callable[[str, socket.socket], None]) -> Starter:
    def start(root: str, workdir: str, lifetime: float, ctx: Context) -> Running:
        return fork_listening(lambda listener: body(root, listener), lifetime, ctx, "server")

    return start


def _http_server(root: str, workdir: str, lifetime: float, ctx: Context) -> Running:
    port = free_port()
    proc, log = bounded_process([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                          "--directory", root, str(port)], lifetime, ctx)
    return Running(proc.pid, port, proc, log)


_NGINX_CONFIG = """{user}worker_processes 1;
worker_rlimit_nofile {nofile};
pid {workdir}/nginx-{port}.pid;
error_log {workdir}/nginx-{port}.log warn;
events {{
    worker_connections {connections};
}}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
{cache}    client_body_temp_path {workdir}/nginx-tmp;
    proxy_temp_path {workdir}/nginx-tmp;
    fastcgi_temp_path {workdir}/nginx-tmp;
    uwsgi_temp_path {workdir}/nginx-tmp;
    scgi_temp_path {workdir}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port} backlog={backlog};
        root {root};
    }}
}}
"""
# The example of the nginx documentation for open_file_cache.
_OPEN_FILE_CACHE = """    open_file_cache max=1000 inactive=20s;
    open_file_cache_valid 30s;
    open_file_cache_min_uses 2;
    open_file_cache_errors on;
"""


def _nginx(open_file_cache: bool) -> Starter:
    def start(root: str, workdir: str, lifetime: float, ctx: Context) -> Running:
        port = free_port()
        path = os.path.join(workdir, f"nginx-{port}.conf")
        os.makedirs(os.path.join(workdir, "nginx-tmp"), exist_ok=True)
        with open(path, "w", encoding="ascii") as config:
            config.write(_NGINX_CONFIG.format(
                # as root, the worker would otherwise run as nobody, who cannot read
                # the run's private temporary directory
                user="user root;\n" if os.geteuid() == 0 else "", nofile=4 * MAX_CONNECTIONS,
                workdir=workdir, port=port, connections=MAX_CONNECTIONS + 64,
                cache=_OPEN_FILE_CACHE if open_file_cache else "", backlog=BACKLOG,
                root=root))
        argv = ["nginx", "-p", workdir, "-c", path, "-g", "daemon off;"]
        if _nginx_has_e():
            argv[1:1] = ["-e", os.path.join(workdir, f"nginx-{port}.log")]
        proc, log = bounded_process(argv, lifetime, ctx)
        return Running(proc.pid, port, proc, log, path)

    return start


def _nginx_has_e() -> bool:
    """nginx 1.19.5 and later take ``-e`` for the error log used before the config is read."""
    try:
        text = subprocess.run(["nginx", "-h"], capture_output=True, text=True,
                              timeout=START_SECONDS).stderr
    except (OSError, subprocess.SubprocessError):
        return False
    return "-e filename" in text


def _have_aiohttp() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


# (root, workdir, lifetime, context) -> Running
Starter = Callable[[str, str, float, Context], Running]

_SERVERS: dict[str, tuple[Starter, str, Callable[[], bool]]] = {
    ZEROCOPY: (_forked(_serve_zerocopy), "zerocopy.FileServer, 1 worker (epoll, sendfile, in C)",
               lambda: True),
    NGINX: (_nginx(False), "nginx, 1 worker, sendfile on, tcp_nopush on, access_log off "
                           "(when on PATH)", lambda: shutil.which("nginx") is not None),
    NGINX_OFC: (_nginx(True), "the same with open_file_cache (when on PATH)",
                lambda: shutil.which("nginx") is not None),
    HTTP_SERVER: (_http_server, "python -m http.server (ThreadingHTTPServer)", lambda: True),
    AIOHTTP: (_forked(_serve_aiohttp), "aiohttp web static files (when installed)",
              _have_aiohttp),
}


# --------------------------------------------------------------------------- load generators


@dataclass
class Load:
    requests: int  # completed in the window
    body_bytes: int
    seconds: float
    errors: int  # connection errors, timeouts, bad responses
    non2xx: int


class Loader:
    """Runs a load generator against one URL for a number of seconds."""

    name = ""
    describe = ""

    def run(self, port: int, path: str, size: int, conns: int, seconds: float) -> Load:
        raise NotImplementedError


_WRK_DONE = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


class Wrk(Loader):
    name = "wrk"
    describe = "wrk -t1 -c{conns} (keep-alive, one request at a time per connection)"

    def run(self, port: int, path: str, size: int, conns: int, seconds: float) -> Load:
        result = subprocess.run(
            ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
             f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=seconds + LOAD_GRACE_SECONDS)
        done = _WRK_DONE.search(result.stdout)
        if result.returncode != 0 or done is None:
            raise RuntimeError(f"wrk failed: {' '.join((result.stderr or result.stdout).split())}")
        requests = int(done.group(1))
        errors = _WRK_ERRORS.search(result.stdout)
        non2xx = _WRK_NON2XX.search(result.stdout)
        bad = int(non2xx.group(1)) if non2xx else 0
        return Load(requests, (requests - bad) * size,
                    float(done.group(2)) * _UNITS[done.group(3)],
                    sum(int(x) for x in errors.groups()) if errors else 0, bad)


class CLoad(Loader):
    name = "loadgen.c"
    describe = ("the project's C load generator (zerocopy/bench/loadgen.c: one thread, epoll, "
                "{conns} keep-alive connections, one request at a time each, like wrk -t1)")

    def __init__(self, workdir: str, compiler: str) -> None:
        self.binary = os.path.join(workdir, "loadgen")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loadgen.c")
        result = subprocess.run([compiler, "-std=c11", "-O2", "-o", self.binary, source],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise OSError(f"cannot compile the load generator with {compiler}: "
                          f"{' '.join(result.stderr.split())[:300]}")

    def run(self, port: int, path: str, size: int, conns: int, seconds: float) -> Load:
        result = subprocess.run([self.binary, "127.0.0.1", str(port), path, str(conns),
                                 f"{seconds:.3f}"], capture_output=True, text=True,
                                timeout=seconds + LOAD_GRACE_SECONDS)
        if result.returncode != 0:
            raise RuntimeError(f"loadgen failed: {' '.join(result.stderr.split())}")
        values = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        return Load(int(values["requests"]), int(values["body_bytes"]),
                    float(values["seconds"]), int(values["errors"]), int(values["non2xx"]))


class PythonLoad(Loader):
    name = "python"
    describe = ("a Python load generator (selectors, {conns} keep-alive connections): it "
                "cannot saturate the fast servers, so their figures are the generator's; "
                "install wrk or a C compiler")

    def run(self, port: int, path: str, size: int, conns: int, seconds: float) -> Load:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("ascii")
        selector = selectors.DefaultSelector()
        state: dict[socket.socket, bytearray] = {}
        load = Load(0, 0, 0.0, 0, 0)

        def connect() -> None:  # non-blocking: sends its request once writable
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            state[sock] = bytearray()
            selector.register(sock, selectors.EVENT_WRITE)

        def drop(sock: socket.socket) -> None:
            selector.unregister(sock)
            del state[sock]
            sock.close()

        start = time.perf_counter()
        end = start + seconds
        try:
            for _ in range(conns):
                connect()
            while (now := time.perf_counter()) < end:
                for key, events in selector.select(end - now):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if events & selectors.EVENT_WRITE:
                        try:
                            sock.send(request)
                        except OSError:
                            load.errors += 1
                            drop(sock)
                            connect()
                            continue
                        selector.modify(sock, selectors.EVENT_READ)
                        continue
                    buf = state[sock]
                    try:
                        data = sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        load.errors += 1
                        drop(sock)
                        connect()
                        continue
                    buf += data
                    head_end = buf.find(b"\r\n\r\n")
                    if head_end < 0:
                        continue
                    head = bytes(buf[:head_end]).lower()
                    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
                    length = int(m.group(1)) if m else 0
                    if len(buf) < head_end + 4 + length:
                        continue
                    load.requests += 1
                    load.body_bytes += length
                    if not head.startswith((b"http/1.1 2", b"http/1.0 2")):
                        load.non2xx += 1
                    if b"connection: close" in head or head.startswith(b"http/1.0"):
                        drop(sock)
                        connect()
                    else:
                        del buf[:]
                        selector.modify(sock, selectors.EVENT_WRITE)
        finally:
            for sock in list(state):
                drop(sock)
            selector.close()
        load.seconds = time.perf_counter() - start
        return load


def _compiler() -> str | None:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def choose_loader(wanted: str, workdir: str) -> tuple[Loader, str | None]:
    """The load generator ``wanted`` names (auto: wrk, else C, else Python), and why a
    better one was not used (None when the best one runs)."""
    if wanted in ("auto", "wrk") and shutil.which("wrk"):
        return Wrk(), None
    if wanted == "wrk":
        raise OSError("--load wrk: wrk is not on PATH")
    why = "wrk is not on PATH" if wanted == "auto" else None
    if wanted in ("auto", "c"):
        compiler = _compiler()
        if compiler is not None:
            return CLoad(workdir, compiler), why
        if wanted == "c":
            raise OSError("--load c: no C compiler (cc, gcc, clang) on PATH")
        why = "neither wrk nor a C compiler is on PATH"
    return PythonLoad(), why


# --------------------------------------------------------------------------- measuring


def _url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def _check(port: int, path: str, digest: str) -> None:
    """One GET: the server must send the file's exact bytes (permissions, roots...)."""
    with urllib.request.urlopen(_url(port, path), timeout=START_SECONDS) as reply:
        body = reply.read()
    if hashlib.sha256(body).hexdigest() != digest:
        raise RuntimeError(f"{path}: the server sent {len(body)} bytes that are not the file")


@dataclass
class Server:
    """One server under test, started once for the whole run."""

    name: str
    running: Running
    checked: set[str]


def _sample(server: Server, loader: Loader, path: str, size: int, digest: str, conns: int,
            seconds: float) -> Sample:
    if path not in server.checked:
        _check(server.running.port, path, digest)
        server.checked.add(path)
    cpu_start = tree_cpu(server.running.pid)
    load = loader.run(server.running.port, path, size, conns, seconds)
    cpu = tree_cpu(server.running.pid) - cpu_start
    if load.requests == 0:
        raise RuntimeError(f"no request completed ({load.errors} errors)")
    if load.non2xx:
        raise RuntimeError(f"{load.non2xx} answers were not 2xx")
    return Sample(load.seconds, max(cpu, 0.0), load.requests,
                  counters={"body_bytes": load.body_bytes, "errors": load.errors})


def _columns(samples: Sequence[Sample]) -> dict[str, str]:
    rates = [s.size / s.seconds for s in samples]
    bytes_rates = [s.counters["body_bytes"] / s.seconds for s in samples]
    per_gib = [s.cpu_seconds * GiB / s.counters["body_bytes"] for s in samples
               if s.counters["body_bytes"]]
    busy = [s.cpu_seconds / s.seconds for s in samples]
    return {
        "req/s": f"{statistics.median(rates):,.0f}",
        "server busy": f"{statistics.median(busy):.0%}",
        "throughput": format_rate(statistics.median(bytes_rates)),
        "CPU s/GiB": f"{statistics.median(per_gib):.2f}" if per_gib else "-",
        "errors": str(sum(s.counters["errors"] for s in samples)),
    }


def _idle_rss(running: Running, count: int, path: str) -> int:
    """RSS growth of the server once ``count`` connections each made one request and idle."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii")
    base = tree_rss(running.pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", running.port), timeout=START_SECONDS)
            socks.append(sock)
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("closed before answering")
                head += chunk
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            left = int(m.group(1)) - (len(head) - head.index(b"\r\n\r\n") - 4) if m else 0
            while left > 0:
                chunk = sock.recv(min(left, 65536))
                if not chunk:
                    raise RuntimeError("closed in a body")
                left -= len(chunk)
        time.sleep(0.2)  # let the server settle (it answered; nothing else is pending)
        return tree_rss(running.pid) - base
    finally:
        for sock in socks:
            sock.close()


def _raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return int(soft)


@contextlib.contextmanager
def _no_receive_steering(ctx: Context) -> Iterator[bool]:
    """In the harness's private network namespace, turn lo's receive steering off for the
    run (yields whether it did).

    The steering puts loopback's TCP receive work on the peer CPU, which is right for a
    bulk sender; here the peer CPU also runs the load generator, and the receive work of
    both directions (requests and responses) on top of it capped every server at what that
    CPU could take (the servers were a third busy).  Without it, each side's sends run the
    other side's receive: the server's CPU figures include the delivery of its responses.
    """
    if not ctx.isolation.netns:
        yield False
        return
    with open(_RPS_CPUS, encoding="ascii") as steering:
        before = steering.read().strip()
    with open(_RPS_CPUS, "w", encoding="ascii") as steering:
        steering.write("0\n")
    try:
        yield True
    finally:
        with contextlib.suppress(OSError), open(_RPS_CPUS, "w", encoding="ascii") as steering:
            steering.write(before + "\n")


def _isolation_text(ctx: Context, steering_off: bool) -> str:
    iso = ctx.isolation
    if not steering_off:
        return iso.describe("server", "load generator")
    return (f"isolation: server pinned to CPU {iso.measured_cpu}, load generator to CPU"
            f" {iso.peer_cpu}; private network namespace, its lo's receive steering turned off"
            " for this mode: loopback's TCP receive work runs in the sender's system calls, so"
            " the server's CPU figures include the delivery of its responses to the load"
            " generator's sockets, and the generator's the delivery of its requests (with a"
            " NIC the other machine does both).")


# --------------------------------------------------------------------------- the mode


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=size_list, default=None, metavar="SIZES",
        help="comma-separated file sizes (default 4K,64K,1M)")
    parser.add_argument(
        "--duration", type=float, default=None, metavar="SECONDS",
        help=f"seconds of load per sample (default {DEFAULT_SECONDS:g}, {QUICK_SECONDS:g} "
             "with --quick)")
    parser.add_argument(
        "--connections", type=positive_int, default=DEFAULT_CONNS, metavar="N",
        help=f"keep-alive connections of the load generator (default {DEFAULT_CONNS})")
    parser.add_argument(
        "--load", choices=LOADERS, default="auto",
        help="the load generator: auto (default: wrk when on PATH, else the C one, else "
             "Python), wrk, c or python")
    parser.add_argument(
        "--idle", type=int, default=None, metavar="N",
        help=f"idle keep-alive connections for the RSS measurement (default {DEFAULT_IDLE}, "
             f"{QUICK_IDLE} with --quick; 0: skip it)")


def _targets(sizes: Sequence[int], methods: Sequence[str]) -> list[Target]:
    """The issue's goals; "value" is wall time per request, so req/s >= r x is at most 1/r."""
    targets = []
    for size in sizes:
        group = f"{format_size(size)} file"
        want = 1.0 if size <= 4 * KiB else 0.95
        if NGINX in methods:
            targets.append(Target(f"{ZEROCOPY} / {NGINX}, time per request (requests/s at "
                                  f"least {want:.2f}x)", ZEROCOPY, NGINX, "value",
                                  at_most=round(1 / want, 3), group=group))
            targets.append(Target(f"{ZEROCOPY} / {NGINX}, server CPU per request", ZEROCOPY,
                                  NGINX, "cpu", at_most=1.0, group=group))
        if size <= 4 * KiB and HTTP_SERVER in methods:
            targets.append(Target(f"{ZEROCOPY} / {HTTP_SERVER}, time per request (requests/s "
                                  "at least 20x)", ZEROCOPY, HTTP_SERVER, "value",
                                  at_most=0.05, group=group))
    return targets


def _rate_ratios(runs: Sequence[Runs]) -> list[str]:
    """Requests/s of zerocopy over each other server, medians of per-round ratios."""
    groups: dict[str, dict[str, Runs]] = {}
    for run in runs:
        groups.setdefault(run.group, {})[run.method] = run
    lines = []
    for group, members in groups.items():
        ours = members.get(ZEROCOPY)
        if ours is None or not ours.samples:
            continue
        parts = []
        for name, other in members.items():
            if name == ZEROCOPY or not other.samples:
                continue
            ratio = paired_ratio([s.size / s.seconds for s in ours.samples],
                                 [s.size / s.seconds for s in other.samples])
            if ratio is not None:
                parts.append(f"{ratio:.2f}x {name}")
        if parts:
            lines.append(f"{group}: {', '.join(parts)}")
    return lines


def _run(ctx: Context) -> Report:
    sizes: list[int] = ctx.options.sizes or list(DEFAULT_SIZES)
    seconds: float = ctx.options.duration or (QUICK_SECONDS if ctx.quick else DEFAULT_SECONDS)
    if not seconds > 0:
        raise OSError("--duration must be more than 0 seconds")
    conns: int = ctx.options.connections
    idle: int = ctx.options.idle if ctx.options.idle is not None else (
        QUICK_IDLE if ctx.quick else DEFAULT_IDLE)
    names = [name for name in ctx.methods if _SERVERS[name][2]()]
    skipped = [name for name in ctx.methods if name not in names]
    servers: dict[str, Server] = {}
    idle_notes: list[str] = []
    try:
        with sigpipe_ignored(), ctx.tempdir() as workdir, \
                _no_receive_steering(ctx) as steering_off:
            loader, downgrade = choose_loader(ctx.options.load, workdir)
            describe_load = loader.describe.format(conns=conns)
            heading = (
                f"zerocopy bench serve: GET of one {'/'.join(format_size(s) for s in sizes)}"
                f" file for {seconds:g} s per sample, load from {describe_load},"
                f" {plural(ctx.repeat, 'round')} (interleaved); server CPU per request first"
            )
            ctx.progress.show(heading)
            root = os.path.join(workdir, "www")
            os.mkdir(root)
            files = {}
            for size in sizes:
                path = f"/f{size}.bin"
                write_test_file(os.path.join(root, path[1:]), size)
                with open(os.path.join(root, path[1:]), "rb") as f:
                    files[size] = (path, hashlib.sha256(f.read()).hexdigest())
            lifetime = (START_SECONDS + 60 + len(sizes) * len(names) * ctx.repeat
                        * (seconds + 5) + 4 * idle / 1000)
            _raise_nofile(idle + 4 * conns + 1024)
            for name in names:
                running = _SERVERS[name][0](root, workdir, lifetime, ctx)
                servers[name] = Server(name, running, set())
                try:
                    wait_listening(running)
                except RuntimeError as error:
                    servers[name].checked.add(f"failed: {error}")
            runners: dict[tuple[str, str], Callable[[], Sample]] = {}
            for size in sizes:
                path, digest = files[size]
                for name in names:
                    runners[(f"{format_size(size)} file", name)] = _runner(
                        servers[name], loader, path, size, digest, conns, seconds)
            runs = ctx.interleave(runners, describe_calls)
            if idle > 0:
                path = files[min(sizes)][0]
                for name in (ZEROCOPY, NGINX):
                    if name not in servers:
                        continue
                    ctx.progress.show(f"{name}: {idle} idle keep-alive connections ...",
                                      transient=True)
                    try:
                        grown = _idle_rss(servers[name].running, idle, path)
                    except (OSError, RuntimeError) as error:
                        idle_notes.append(f"{name}: failed ({error})")
                        continue
                    budget = IDLE_RSS_BUDGET * idle / 10_000
                    verdict = (f" (target: within {budget / MiB:.1f} MiB: "
                               f"{'met' if grown <= budget else 'NOT MET'})"
                               if name == ZEROCOPY else "")
                    idle_notes.append(f"{name}: +{grown / MiB:.1f} MiB, "
                                      f"{grown / idle:,.0f} bytes each{verdict}")
                ctx.progress.finish()
            for server in servers.values():
                stop_process(server.running)
            servers.clear()
    finally:
        for server in servers.values():
            with contextlib.suppress(OSError):
                stop_process(server.running)
    notes = [
        "Notes:",
        "- A call is one request: CPU us/call is the server process tree's user+system CPU"
        " time per request (from /proc, 10 ms ticks), us/call the wall time per request"
        " (1 / requests per second): lower is better for both; ratios (vs) are medians of"
        f" per-round ratios to {NGINX if NGINX in names else 'the first server'}. req/s,"
        " throughput (file bytes) and CPU s/GiB are medians too; server busy is its CPU"
        " time over the sample's wall time: below 100%, the server waited for the load"
        " generator (or for the network), so its req/s is the generator's limit, not its own.",
        f"- Load: {describe_load}, {seconds:g} s per sample, on the peer CPU; every server is"
        " checked first to send the file's exact bytes. Errors are the generator's"
        " connection errors (http.server's listen backlog of 5 refuses some connects).",
        f"- {NGINX}: 1 worker, sendfile on, tcp_nopush on, access_log off, otherwise nginx's"
        f" defaults (keepalive_requests 1000: a connection is renewed every 1000 requests);"
        f" {NGINX_OFC}: plus the nginx documentation's open_file_cache example (max=1000,"
        " valid 30s, min_uses 2). zerocopy FileServer: its defaults (open-file cache"
        " revalidated every second, files up to 16 KiB answered from memory in one sendmsg)."
        " http.server answers HTTP/1.0 (a connection per request) and logs every request to"
        " stderr (a file here), as `python -m http.server` does.",
        "- Loopback: the server's sends are copied into the client's socket by the kernel"
        " either way, so sendfile's saving of a copy shows less than on a NIC.",
    ]
    ratios = _rate_ratios(runs)
    if ratios:
        notes.append("- requests/s of zerocopy FileServer over the others (medians of"
                     " per-round ratios): " + "; ".join(ratios) + ".")
    if idle_notes:
        notes.append(f"- {idle} idle keep-alive connections (each made one request), server"
                     " RSS growth: " + "; ".join(idle_notes) + ".")
    if downgrade:
        notes.append(f"- {downgrade}: the load came from {loader.name}.")
    if skipped:
        notes.append(f"- Not available, skipped: {', '.join(skipped)}.")
    report = ctx.report(
        heading=heading,
        unit=CALLS,
        settings={"sizes": sizes, "seconds": seconds, "connections": conns,
                  "load": loader.name, "servers": names, "skipped": skipped, "idle": idle,
                  "idle_rss": idle_notes},
        runs=runs,
        baseline=NGINX,
        targets=_targets(sizes, names),
        notes=notes,
        columns=_columns,
    )
    report.isolation = _isolation_text(ctx, steering_off)
    return report


def _runner(server: Server, loader: Loader, path: str, size: int, digest: str, conns: int,
            seconds: float) -> Callable[[], Sample]:
    def run() -> Sample:
        failed = [c for c in server.checked if c.startswith("failed: ")]
        if failed:
            raise RuntimeError(failed[0][len("failed: "):] + last_line(server.running.log))
        return _sample(server, loader, path, size, digest, conns, seconds)

    return run


MODE = Mode(
    name="serve",
    summary="HTTP file servers: zerocopy FileServer against nginx, http.server, aiohttp",
    methods={name: what for name, (_, what, _) in _SERVERS.items()},
    run=_run,
    add_arguments=_add_arguments,
    default_repeat=3,
    order=40,
    measured="server",
    peer="load generator",
    measured_in_main=False,
)
