# SPDX-License-Identifier: MIT
"""The benchmark harness: what every mode of ``python -m zerocopy bench`` shares.

The harness parses the command line, isolates the measurement (CPU pinning and a private
network namespace), runs a receiver process, interleaves the methods round by round with
time limits, turns samples into medians, spreads and ratios, checks targets, and prints
tables, JSON or a plot.  A mode only says what to send and how to time one sample.

Adding a mode
=============

Write one module in this package, say ``zerocopy/bench/serve.py``, that defines ``MODE``::

    from ._harness import Context, Mode, Report

    def _add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--connections", type=positive_int, default=None)

    def _runner(address: tuple[str, int], name: str) -> Callable[[], Sample]:
        return lambda: ...  # time one sample of method ``name``: a Sample

    def _run(ctx: Context) -> Report:
        with ctx.receiver() as address:  # a receiver process on the peer CPU
            runners = {("", name): _runner(address, name) for name in ctx.methods}
            runs = ctx.interleave(runners, describe_bytes)  # keys: (group, method)
        return ctx.report(heading="...", unit=BYTES, settings={...}, runs=runs,
                          baseline="nginx", targets=[Target(...)], notes=[...])

    MODE = Mode(
        name="serve",                   # `bench serve` and `bench --serve`
        summary="HTTP file servers against nginx",
        methods={"zerocopy": "what it runs", "nginx": "..."},  # for --methods and --help
        run=_run,
        add_arguments=_add_arguments,   # the mode's own options, if any
        order=40,                       # place in `bench --help` and `bench --quick`
        measured="server", peer="load generator",
        measured_in_main=False,         # the main process drives the load: it is a peer
    )

Nothing else changes: the harness finds every module here whose name does not start
with ``_`` and that defines a ``Mode`` named ``MODE``.  The mode gets ``bench serve
--help``, the common options (``--repeat``, ``--quick``, ``--methods``, ``--json``,
``--plot``, ``--isolate``), the isolation, and a place in ``bench --quick``, which runs
every mode once with ``ctx.quick`` set: keep that path short (a few seconds).

``MODE.run`` runs in the isolated process: the main process is pinned to the measured CPU
(or to the peer CPU when ``measured_in_main`` is false), ``ctx.receiver()`` pins its
process to the peer CPU, and a process the mode starts itself is pinned with
``fork_helper(ctx.measured_cpu)`` or ``preexec_fn=ctx.pin_measured``.  A sample's
``cpu_seconds`` is the measured side's CPU time; the harness reports CPU per unit first
(``BYTES``: seconds per GiB and throughput; ``CALLS``: microseconds per call), medians
over the rounds, spreads, and ratios to the baseline (medians of per-round ratios).

Isolation
=========

With two CPUs or more, the measured process and its peers are pinned to different CPUs.
As root, the measurement also runs in a forked process inside a private network namespace
(``unshare(CLONE_NEWNET | CLONE_NEWNS)`` through ctypes: ``os.unshare`` needs Python
3.12), with a private sysfs mounted so that the new ``lo``'s receive steering
(``queues/rx-0/rps_cpus``) can be set to the peer CPU: loopback's TCP receive work then
runs on the peer's CPU instead of in the sender's system calls, as it would on the other
machine of a real network.  When that is not possible, the run falls back to pinning only
and the output says that the measured figures include the receive work.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import importlib
import json
import math
import os
import pickle
import pkgutil
import platform
import re
import resource
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
import time
import traceback
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any, TextIO

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BYTES = "bytes"  # a sample's size is bytes: CPU s/GiB and throughput
CALLS = "calls"  # a sample's size is calls: CPU us/call and us/call

NOTE_WIDTH = 92
RECEIVE_BUFFER = 1 * MiB
GENERATE_BLOCK = 1 * MiB
BACKLOG = 4096  # every listener here: many concurrent connects must never overflow it

# Time limits. A transfer slower than SLOWEST_SANE_RATE is broken, not slow.
TRANSFER_BASE_SECONDS = 10.0
SLOWEST_SANE_RATE = 32 * MiB
RECEIVE_STALL_SECONDS = 30.0
RECEIVE_DEADLINE_SECONDS = 600.0
RECEIVER_IDLE_SECONDS = 120.0
CONNECT_SECONDS = 10.0
HELPER_STOP_SECONDS = 5.0
ISOLATED_STOP_SECONDS = 30.0

# The receiver's reply after the sender's EOF: bytes received, CRC-32 (0 unless verifying),
# the receiver's CPU nanoseconds from accept to EOF.
ACK = struct.Struct("!QIQ")

ISOLATE_CHOICES = ("auto", "pin", "none")


class TransferTimeout(Exception):
    """A transfer ran past its time limit."""


class TransferError(Exception):
    """A transfer finished but delivered the wrong bytes."""


# --------------------------------------------------------------------------- arguments


_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str) -> int:
    """Parse a byte count such as ``4096``, ``64K``, ``256M``, ``1G`` or ``1.5GiB``.

    Units are binary (K = 1024). Raises ``argparse.ArgumentTypeError`` on anything else
    or on a size below one byte.
    """
    match = _SIZE_PATTERN.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (try 4096, 64K, 256M, 1G)")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.lower()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is below one byte")
    return size


def size_list(text: str) -> list[int]:
    """Parse a comma-separated list of sizes (``16K,1M``)."""
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("empty size list")
    return sizes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def method_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty method list")
    return names


def select_methods(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Keep the methods named in ``wanted`` (exact name, else substring), in table order.

    Raises ValueError when a term matches no method.
    """
    if wanted is None:
        return list(available)
    chosen = set()
    for term in wanted:
        matches = [name for name in available if name == term]
        matches = matches or [name for name in available if term.lower() in name.lower()]
        if not matches:
            raise ValueError(f"no method matches {term!r}; choose from: {', '.join(available)}")
        chosen.update(matches)
    return [name for name in available if name in chosen]


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, object]:
    import zerocopy  # here: the harness itself needs no compiled module

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "zerocopy": str(getattr(zerocopy, "__version__", "unknown")),
    }


def describe_machine(machine: Mapping[str, object]) -> str:
    return (
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']}"
        f" usable), {machine['kernel']}, {machine['python']}, zerocopy {machine['zerocopy']}"
    )


def load_average() -> float:
    """The one-minute load average (how busy the machine was), 0.0 if unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


# --------------------------------------------------------------------------- progress


class Progress:
    """Progress on stderr: one rewritten line on a terminal, else one line per step."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._on_terminal = self._stream.isatty()
        self._width = 0

    def show(self, text: str, *, transient: bool = False) -> None:
        """Show ``text``; a ``transient`` line appears only on a terminal."""
        if self._on_terminal:
            padding = " " * max(0, self._width - len(text))
            self._width = len(text)
            self._stream.write(f"\r{text}{padding}")
            if not transient:
                self._stream.write("\n")
                self._width = 0
        elif not transient:
            self._stream.write(f"{text}\n")
        self._stream.flush()

    def finish(self) -> None:
        """Leave the terminal on a fresh line."""
        if self._on_terminal and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


# --------------------------------------------------------------------------- isolation


@dataclass
class Isolation:
    """How the measured process was kept apart from its peers.

    ``measured_cpu`` / ``peer_cpu``: the CPUs they were pinned to (None: not pinned).
    ``netns``: a private network namespace whose ``lo`` steers receive processing
    (``rps_cpus``) to the peer CPU.  ``reason``: why there is less than that.
    """

    measured_cpu: int | None = None
    peer_cpu: int | None = None
    netns: bool = False
    rps_cpus: str | None = None
    reason: str | None = None
    mtu: int | None = None  # lo's MTU in the private namespace (None: loopback's own)

    @property
    def name(self) -> str:
        if self.netns:
            return "pinned+netns"
        return "pinned" if self.measured_cpu is not None else "none"

    def describe(self, measured: str = "sender", peer: str = "receiver") -> str:
        """One paragraph for the output: what was done, and what the figures include."""
        includes = (
            f"loopback runs the TCP receive work in the {measured}'s system calls, so the"
            f" {measured}'s CPU figures include it (with a NIC the other machine does it)"
        )
        if self.netns:
            return (
                f"isolation: {measured} pinned to CPU {self.measured_cpu}, {peer} to CPU"
                f" {self.peer_cpu}; private network namespace whose lo steers receive"
                f" processing to CPU {self.peer_cpu} (rps_cpus {self.rps_cpus}), so loopback's"
                f" TCP receive work runs there, not in the {measured}'s system calls; the"
                f" {measured} still pays to hand packets over (an inter-processor interrupt"
                " per batch, dear in a virtual machine)."
                + (f" lo's MTU is {self.mtu} there (--mtu), not loopback's own 64 KiB."
                   if self.mtu else "")
            )
        why = f" ({self.reason})" if self.reason else ""
        if self.measured_cpu is not None:
            return (
                f"isolation: {measured} pinned to CPU {self.measured_cpu}, {peer} to CPU"
                f" {self.peer_cpu}; no private network namespace{why}: {includes}."
            )
        return f"isolation: none{why}: {measured} and {peer} share the CPUs, and {includes}."


def _cpu_list(text: str) -> set[int]:
    """Parse a kernel CPU list such as ``0-3,8``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def choose_cpus() -> tuple[int, int] | None:
    """Two usable CPUs for the measured process and its peers, not SMT siblings if possible."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    first = cpus[0]
    try:
        path = f"/sys/devices/system/cpu/cpu{first}/topology/thread_siblings_list"
        with open(path, encoding="ascii") as siblings_file:
            siblings = _cpu_list(siblings_file.read())
    except (OSError, ValueError):
        siblings = {first}
    others = [cpu for cpu in cpus[1:] if cpu not in siblings] or cpus[1:]
    return first, others[0]


def pin(cpu: int | None) -> None:
    """Pin the calling process to ``cpu`` (nothing when None)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def cpu_mask(cpu: int) -> str:
    """``cpu`` as a kernel CPU mask: hex, in comma-separated 32-bit groups."""
    digits = f"{1 << cpu:x}"
    digits = digits.zfill((len(digits) + 7) // 8 * 8)
    return ",".join(digits[i : i + 8] for i in range(0, len(digits), 8))


_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCSIFMTU = 0x8922
_IFREQ_MTU = struct.Struct("16si20x")  # struct ifreq: name, then ifr_mtu
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in a 24-byte union
_RPS_CPUS = "/sys/class/net/lo/queues/rx-0/rps_cpus"


def _libc_check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def enter_private_network(peer_cpu: int, mtu: int | None = None) -> str:
    """Move the calling (single-threaded) process into a private network namespace.

    Also a private mount namespace with sysfs mounted again, since sysfs shows the network
    namespace of whoever mounted it; then ``lo`` goes up (with ``mtu``, when given) and its
    receive steering goes to ``peer_cpu``.  Returns the mask as the kernel reads it back;
    raises OSError.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [
        ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p
    ]
    _libc_check(libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS), "unshare(CLONE_NEWNET)")
    # Mounts made below must not propagate back to the host's namespace.
    _libc_check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "private mounts")
    _libc_check(libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mounting sysfs")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
        flags = _IFREQ.unpack(fcntl.ioctl(control, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0)))[1]
        fcntl.ioctl(control, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
        if mtu:
            fcntl.ioctl(control, _SIOCSIFMTU, _IFREQ_MTU.pack(b"lo", mtu))
    with open(_RPS_CPUS, "w", encoding="ascii") as steering:
        steering.write(cpu_mask(peer_cpu) + "\n")
    with open(_RPS_CPUS, encoding="ascii") as steering:
        written = steering.read().strip()
    if int(written.replace(",", ""), 16) != 1 << peer_cpu:
        raise OSError(errno.EIO, f"rps_cpus reads back {written!r}")
    with socket.create_server(("127.0.0.1", 0)) as listener:  # loopback works in there
        socket.create_connection(listener.getsockname(), timeout=CONNECT_SECONDS).close()
    return written


# --------------------------------------------------------------------------- helpers

# File descriptors a forked helper must close (the isolated process's report pipe: a helper
# holding it would keep the parent waiting after the isolated process is gone).
_CLOSE_IN_HELPERS: list[int] = []


def fork_helper(cpu: int | None) -> int:
    """``os.fork()``; the child is pinned to ``cpu``, ignores Ctrl-C (the parent stops it)
    and closes the harness's private descriptors.  Returns the pid (0 in the child), like
    ``os.fork``.  The child must end with ``os._exit``."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for fd in _CLOSE_IN_HELPERS:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            pin(cpu)
    return pid


def stop_helper(pid: int, seconds: float = HELPER_STOP_SECONDS) -> None:
    """SIGTERM ``pid``, wait up to ``seconds``, then SIGKILL; reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                return
            time.sleep(0.005)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:  # reaped already
        pass


# --------------------------------------------------------------------------- receiver


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound each blocking recv with SO_RCVTIMEO; the socket itself stays blocking."""
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))


def _acknowledge(conn: socket.socket, received: int, checksum: int, cpu_start: float) -> None:
    cpu_ns = max(0, int((time.process_time() - cpu_start) * 1e9))
    conn.sendall(ACK.pack(received, checksum, cpu_ns))


def _drain_blocking(conn: socket.socket, buffer: bytearray, verify: bool) -> None:
    """Read ``conn`` to EOF into ``buffer`` and acknowledge; give up (closing, so the sender
    sees an error) on a stall or past the deadline."""
    cpu_start = time.process_time()
    _set_receive_timeout(conn, RECEIVE_STALL_SECONDS)
    view = memoryview(buffer)
    received = 0
    checksum = 0
    deadline = time.monotonic() + RECEIVE_DEADLINE_SECONDS
    flags = 0 if verify else socket.MSG_TRUNC  # TCP discards the bytes instead of copying
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            count = conn.recv_into(buffer, 0, flags)
            if count == 0:
                _acknowledge(conn, received, checksum, cpu_start)
                return
            received += count
            if verify:
                checksum = zlib.crc32(view[:count], checksum)


def _serve_one_at_a_time(listener: socket.socket, verify: bool, parent: int) -> None:
    listener.settimeout(1.0)
    buffer = bytearray(RECEIVE_BUFFER)
    idle_since = time.monotonic()
    while os.getppid() == parent and time.monotonic() - idle_since < RECEIVER_IDLE_SECONDS:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        with conn:
            conn.settimeout(None)
            _drain_blocking(conn, buffer, verify)
        idle_since = time.monotonic()


@dataclass
class _Incoming:
    received: int = 0
    checksum: int = 0
    cpu_start: float = 0.0
    last_data: float = 0.0


def _serve_concurrently(listener: socket.socket, verify: bool, parent: int) -> None:
    """Drain any number of connections at once (one selector); acknowledge each at EOF."""
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    open_connections: dict[socket.socket, _Incoming] = {}
    buffer = bytearray(RECEIVE_BUFFER)
    view = memoryview(buffer)
    flags = 0 if verify else socket.MSG_TRUNC
    idle_since = time.monotonic()
    while os.getppid() == parent:
        now = time.monotonic()
        if open_connections:
            idle_since = now
        elif now - idle_since > RECEIVER_IDLE_SECONDS:
            return
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                for _ in range(BACKLOG):
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    open_connections[conn] = _Incoming(0, 0, time.process_time(), now)
                    selector.register(conn, selectors.EVENT_READ)
                continue
            state = open_connections[sock]
            count = -1
            for _ in range(64):  # drain what is there, then look at the others
                try:
                    count = sock.recv_into(buffer, 0, flags)
                except BlockingIOError:
                    break
                except OSError:
                    count = 0
                if count == 0:
                    break
                state.received += count
                state.last_data = now
                if verify:
                    state.checksum = zlib.crc32(view[:count], state.checksum)
            if count != 0:
                continue
            selector.unregister(sock)
            del open_connections[sock]
            with contextlib.suppress(OSError):
                sock.settimeout(1.0)
                _acknowledge(sock, state.received, state.checksum, state.cpu_start)
            sock.close()
        stalled = [s for s, st in open_connections.items() if now - st.last_data > 60.0]
        for sock in stalled:  # a stalled sender: close, so it sees an error
            selector.unregister(sock)
            del open_connections[sock]
            sock.close()


@contextlib.contextmanager
def receiver_process(
    cpu: int | None, *, verify: bool = False, concurrent: bool = False
) -> Iterator[tuple[str, int]]:
    """Fork a receiver pinned to ``cpu``, listening on 127.0.0.1; yield its address.

    It drains every connection and answers the sender's EOF with ``ACK`` (bytes, CRC-32
    when ``verify``, its CPU time).  Without ``verify`` the bytes are discarded in the
    kernel (``recv(MSG_TRUNC)`` on TCP), as cheaply as the far end of a real network costs
    the sender; with ``verify`` they are copied into a reused 1 MiB buffer and checked.
    One connection at a time with blocking reads, or with ``concurrent`` any number
    through a selector.  Stopped after.
    """
    listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    with listener:
        address: tuple[str, int] = listener.getsockname()[:2]
        pid = fork_helper(cpu)
        if pid == 0:  # pragma: no cover - the receiver process
            code = 0
            try:
                serve = _serve_concurrently if concurrent else _serve_one_at_a_time
                serve(listener, verify, os.getppid())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
    try:
        yield address
    finally:
        stop_helper(pid)


# --------------------------------------------------------------------------- sender side


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _raise_timeout(signum: int, frame: FrameType | None) -> None:
    raise TransferTimeout("time limit exceeded")


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block with TransferTimeout after ``seconds`` (SIGALRM, main thread).

    Blocking syscalls fail with EINTR, Python runs this handler and the exception unwinds
    the transfer, whichever method is running.
    """
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def transfer_time_limit(size: int) -> float:
    return TRANSFER_BASE_SECONDS + size / SLOWEST_SANE_RATE


@contextlib.contextmanager
def connection(address: tuple[str, int]) -> Iterator[socket.socket]:
    """A blocking TCP connection to the receiver (sendfile-style calls need blocking fds)."""
    sock = socket.create_connection(address, timeout=CONNECT_SECONDS)
    with sock:
        sock.settimeout(None)
        yield sock


@dataclass
class Ack:
    received: int
    checksum: int
    cpu_seconds: float  # the receiver's


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise TransferError("receiver closed the connection without acknowledging")
        data += chunk
    return data


def finish_and_read_ack(sock: socket.socket) -> Ack:
    """Send EOF, then wait for the receiver's acknowledgement."""
    sock.shutdown(socket.SHUT_WR)
    received, checksum, cpu_ns = ACK.unpack(_receive_exactly(sock, ACK.size))
    return Ack(int(received), int(checksum), cpu_ns / 1e9)


@dataclass
class Expected:
    """What one transfer must deliver; ``checksum`` is None unless verifying."""

    size: int
    checksum: int | None = None


def check_delivery(sent: int, ack: Ack, expected: Expected) -> None:
    if sent != expected.size:
        raise TransferError(f"sender reported {sent} bytes sent, expected {expected.size}")
    if ack.received != expected.size:
        raise TransferError(f"receiver got {ack.received} bytes, expected {expected.size}")
    if expected.checksum is not None and ack.checksum != expected.checksum:
        raise TransferError(
            f"CRC-32 mismatch: received {ack.checksum:#010x}, expected {expected.checksum:#010x}"
        )


@dataclass
class Sample:
    """One measured transfer (``BYTES``: ``size`` bytes) or batch of calls (``CALLS``).

    ``cpu_seconds`` is the measured side's CPU time, ``peer_cpu_seconds`` the receiver's
    when known; ``counters`` are a mode's own counts (zero-copy sends...).
    """

    seconds: float
    cpu_seconds: float
    size: int
    peer_cpu_seconds: float | None = None
    counters: dict[str, int] = field(default_factory=dict)


# A transfer sends on a connected blocking socket and returns the byte count it reports;
# it may fill the sample's counters.
Send = Callable[[socket.socket, dict[str, int]], int]


_TCP_INFO_DATA_SEGS_OUT = struct.Struct("=I")  # struct tcp_info.tcpi_data_segs_out ...
_TCP_INFO_DATA_SEGS_OUT_AT = 156  # ... at this offset (Linux 4.6 and later)


def tcp_data_segments(sock: socket.socket) -> int | None:
    """How many data segments (of at most one MSS) the connection sent, if the kernel says."""
    size = _TCP_INFO_DATA_SEGS_OUT_AT + _TCP_INFO_DATA_SEGS_OUT.size
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < size:
        return None
    return int(_TCP_INFO_DATA_SEGS_OUT.unpack_from(info, _TCP_INFO_DATA_SEGS_OUT_AT)[0])


def timed_transfer(address: tuple[str, int], send: Send, expected: Expected) -> Sample:
    """One transfer on a fresh connection; wall time runs until the receiver acknowledges.

    The sample's counters get ``tcp_segments``: the data segments the connection sent.
    """
    counters: dict[str, int] = {}
    with time_limit(transfer_time_limit(expected.size)), connection(address) as sock:
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        sent = send(sock, counters)
        ack = finish_and_read_ack(sock)
        wall_seconds = time.perf_counter() - wall_start
        cpu_seconds = time.process_time() - cpu_start
        segments = tcp_data_segments(sock)
        if segments is not None:
            counters["tcp_segments"] = segments
    check_delivery(sent, ack, expected)
    return Sample(wall_seconds, cpu_seconds, expected.size, ack.cpu_seconds, counters)


def http_header(size: int, length: int = 200) -> bytes:
    """A response header of exactly ``length`` bytes announcing ``size`` bytes of body."""
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Server: zerocopy-bench\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Padding: "
    )
    padding = max(0, length - len(head) - len("\r\n\r\n"))
    return f"{head}{'.' * padding}\r\n\r\n".encode("ascii")


def write_test_file(path: str, size: int) -> None:
    """Write ``size`` incompressible bytes fast (one random MiB, repeated), fsync, and read
    them once: clean pages in the page cache, so no writeback or disk read runs during the
    timing."""
    block = os.urandom(GENERATE_BLOCK)
    with open(path, "wb", buffering=0) as file:
        written = 0
        while written < size:
            written += file.write(block[: min(GENERATE_BLOCK, size - written)])
        os.fsync(file.fileno())
    checksum(path)


def checksum(path: str, prefix: bytes = b"") -> int:
    """CRC-32 of ``prefix`` + the file (reading it pulls it into the page cache)."""
    crc = zlib.crc32(prefix)
    buffer = bytearray(GENERATE_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        for _ in range(os.fstat(file.fileno()).st_size // GENERATE_BLOCK + 1):
            count = file.readinto(buffer)
            if not count:
                break
            crc = zlib.crc32(view[:count], crc)
    return crc


def check_room_for(directory: str, size: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < size + 64 * MiB:
        raise OSError(
            f"{directory} has {free // MiB} MiB free, the test file needs {size // MiB} MiB;"
            " use a smaller --size or point TMPDIR elsewhere"
        )


# --------------------------------------------------------------------------- interleaving


@dataclass
class Runs:
    """The samples of one method in one group, or why it stopped."""

    group: str
    method: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def interleave(
    runners: Mapping[tuple[str, str], Callable[[], Sample]],
    repeat: int,
    describe: Callable[[Sample], str],
    progress: Progress,
) -> list[Runs]:
    """Run every (group, method) once per round, ``repeat`` rounds, in the given order.

    Round-robin, so a slow moment of the machine hits every method alike.  A method that
    fails (any exception) is reported with its error and not run again in that group.
    """
    results = {key: Runs(*key) for key in runners}
    for round_number in range(1, repeat + 1):
        for key, run_once in runners.items():
            runs = results[key]
            if runs.error is not None:
                continue
            label = " ".join(part for part in (f"[{round_number}/{repeat}]", *key) if part)
            progress.show(f"{label} ...", transient=True)
            try:
                sample = run_once()
            except Exception as error:
                runs.error = one_line(error)
                progress.show(f"{label}: FAILED: {runs.error}")
                continue
            runs.samples.append(sample)
            progress.show(f"{label}: {describe(sample)}")
    progress.finish()
    return list(results.values())


# --------------------------------------------------------------------------- statistics


def cpu_per_unit(sample: Sample, unit: str) -> float:
    """CPU seconds per GiB (``BYTES``) or CPU microseconds per call (``CALLS``)."""
    if unit == BYTES:
        return sample.cpu_seconds * GiB / sample.size
    return sample.cpu_seconds * 1e6 / sample.size


def value_of(sample: Sample, unit: str) -> float:
    """Throughput in bytes/s (``BYTES``) or wall microseconds per call (``CALLS``)."""
    if unit == BYTES:
        return sample.size / sample.seconds
    return sample.seconds * 1e6 / sample.size


def peer_cpu_per_unit(sample: Sample, unit: str) -> float | None:
    if sample.peer_cpu_seconds is None:
        return None
    return cpu_per_unit(dataclasses.replace(sample, cpu_seconds=sample.peer_cpu_seconds), unit)


def median_and_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The median and the spread (max - min) / median; None where undefined."""
    if not values:
        return None, None
    median = statistics.median(values)
    if len(values) < 2 or not median:
        return median, None
    return median, (max(values) - min(values)) / median


def paired_ratio(ours: Sequence[float], reference: Sequence[float]) -> float | None:
    """The median over rounds of ours / reference in the same round (rounds in order)."""
    ratios = [mine / theirs for mine, theirs in zip(ours, reference) if theirs]
    return statistics.median(ratios) if ratios else None


@dataclass
class Result:
    """One method in one group: medians, spreads and ratios to the group's baseline."""

    method: str
    cpu: float | None = None  # CPU s/GiB or CPU us/call, median
    cpu_spread: float | None = None
    cpu_ratio: float | None = None
    value: float | None = None  # bytes/s or us/call, median
    value_spread: float | None = None
    value_ratio: float | None = None
    peer_cpu: float | None = None  # the receiver's CPU per unit, median
    columns: dict[str, str] = field(default_factory=dict)  # a mode's own table columns
    error: str | None = None
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Group:
    """The methods compared with each other (one table)."""

    title: str
    baseline: str | None
    results: list[Result]


@dataclass
class Target:
    """A goal for the ratio of ``method`` to ``reference`` (medians of per-round ratios).

    ``metric`` is "cpu" or "value" (throughput for ``BYTES``, us/call for ``CALLS``).
    ``ratio`` and ``met`` are filled in when the report is made.
    """

    label: str
    method: str
    reference: str
    metric: str
    at_most: float | None = None
    at_least: float | None = None
    group: str = ""
    ratio: float | None = None
    met: bool | None = None

    def describe(self) -> str:
        bounds = []
        if self.at_least is not None:
            bounds.append(f"at least {self.at_least:.2f}x")
        if self.at_most is not None:
            bounds.append(f"at most {self.at_most:.2f}x")
        if self.ratio is None:
            verdict = "not measured"
        else:
            verdict = f"{self.ratio:.2f}x, {'met' if self.met else 'NOT MET'}"
        group = f"{self.group}: " if self.group else ""
        return f"{group}{self.label}: {verdict} (target {' and '.join(bounds)})"


def series(samples: Sequence[Sample], unit: str, metric: str) -> list[float]:
    """Each sample's CPU per unit (``metric`` "cpu") or value (``metric`` "value")."""
    if metric == "cpu":
        return [cpu_per_unit(sample, unit) for sample in samples]
    return [value_of(sample, unit) for sample in samples]


def _ratio(ours: Runs, reference: Runs | None, unit: str, metric: str) -> float | None:
    if reference is None:
        return None
    return paired_ratio(
        series(ours.samples, unit, metric), series(reference.samples, unit, metric)
    )


def summarize(
    runs: Sequence[Runs],
    unit: str,
    baseline: str,
    columns: Callable[[Sequence[Sample]], dict[str, str]] | None = None,
) -> list[Group]:
    """Groups in the order they first appear; ratios to ``baseline`` in each group, or to
    the group's first method with samples when the baseline has none."""
    groups: dict[str, list[Runs]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    made = []
    for title, members in groups.items():
        with_samples = [run for run in members if run.samples]
        reference = next((r for r in with_samples if r.method == baseline), None)
        reference = reference or (with_samples[0] if with_samples else None)
        results = []
        for run in members:
            result = Result(run.method, error=run.error, samples=run.samples)
            if run.samples:
                result.cpu, result.cpu_spread = median_and_spread(series(run.samples, unit, "cpu"))
                result.value, result.value_spread = median_and_spread(
                    series(run.samples, unit, "value")
                )
                peers = [peer_cpu_per_unit(sample, unit) for sample in run.samples]
                known = [peer for peer in peers if peer is not None]
                result.peer_cpu = statistics.median(known) if known else None
                result.cpu_ratio = _ratio(run, reference, unit, "cpu")
                result.value_ratio = _ratio(run, reference, unit, "value")
                if columns is not None:
                    result.columns = columns(run.samples)
            results.append(result)
        made.append(Group(title, None if reference is None else reference.method, results))
    return made


def evaluate(target: Target, runs: Sequence[Runs], unit: str) -> Target:
    """A copy of ``target`` with ``ratio`` and ``met`` filled in from the runs."""
    by_key = {(run.group, run.method): run for run in runs}
    ours = by_key.get((target.group, target.method))
    reference = by_key.get((target.group, target.reference))
    ratio = None if ours is None else _ratio(ours, reference, unit, target.metric)
    met = None
    if ratio is not None:
        met = (target.at_most is None or ratio <= target.at_most) and (
            target.at_least is None or ratio >= target.at_least
        )
    return dataclasses.replace(target, ratio=ratio, met=met)


@dataclass
class Report:
    """What one mode measured, ready to print, dump as JSON or plot."""

    mode: str
    heading: str
    unit: str
    measured: str  # who the CPU figures are of ("sender", "relay")
    settings: dict[str, object]
    groups: list[Group]
    targets: list[Target]
    notes: list[str]
    isolation: str
    load: tuple[float, float]  # one-minute load average before and after
    seconds: float

    @property
    def failed(self) -> bool:
        return any(result.error is not None for group in self.groups for result in group.results)


# --------------------------------------------------------------------------- formatting


def format_rate(bytes_per_second: float) -> str:
    if bytes_per_second >= GiB:
        return f"{bytes_per_second / GiB:.2f} GiB/s"
    return f"{bytes_per_second / MiB:.0f} MiB/s"


def format_size(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _optional(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def describe_bytes(sample: Sample) -> str:
    """A progress line for a ``BYTES`` sample."""
    return (
        f"{sample.cpu_seconds * GiB / sample.size:.3f} CPU s/GiB, "
        f"{format_rate(sample.size / sample.seconds)}"
    )


def describe_calls(sample: Sample) -> str:
    """A progress line for a ``CALLS`` sample."""
    return (
        f"{sample.cpu_seconds / sample.size * 1e6:.2f} CPU us/call, "
        f"{sample.seconds / sample.size * 1e6:.2f} us/call ({sample.size} calls)"
    )


def render_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    text_columns: Sequence[int] = (0,),
    widths: Sequence[int] | None = None,
) -> str:
    """Left-align the ``text_columns``, right-align the (numeric) others.

    A row shorter than the header (a failure message) does not widen the columns: its
    cells after the first are printed as they are.  ``widths`` overrides the computed
    minimum widths (to align several tables).
    """
    full_rows = [header, *(row for row in rows if len(row) == len(header))]
    computed = [max(len(row[column]) for row in full_rows) for column in range(len(header))]
    if widths is not None:
        computed = [max(a, b) for a, b in zip(computed, widths)]

    def render(row: Sequence[str]) -> str:
        if len(row) < len(header):
            return "  ".join([row[0].ljust(computed[0]), *row[1:]]).rstrip()
        cells = [
            cell.ljust(width) if column in text_columns else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, computed))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(
        [render(header), render(["-" * width for width in computed])]
        + [render(row) for row in rows]
    )


def _table_cells(report: Report, group: Group) -> tuple[list[str], list[list[str]]]:
    vs = f"vs {group.baseline or '-'}"
    extra = list(dict.fromkeys(key for r in group.results for key in r.columns))
    if report.unit == BYTES:
        header = ["method", "CPU s/GiB", "spread", vs, "throughput", "spread", vs, *extra]
        cpu_pattern = "{:.3f}"
    else:
        header = ["method", "CPU us/call", "spread", vs, "us/call", "spread", vs, *extra]
        cpu_pattern = "{:.2f}"

    def value(number: float) -> str:
        return format_rate(number) if report.unit == BYTES else f"{number:.2f}"

    rows: list[list[str]] = []
    for result in group.results:
        if result.value is None:
            rows.append([result.method, f"FAILED: {result.error or 'no sample'}"])
            continue
        rows.append(
            [
                result.method,
                _optional(result.cpu, cpu_pattern),
                _optional(result.cpu_spread, "{:.0%}"),
                _optional(result.cpu_ratio, "{:.2f}x"),
                value(result.value),
                _optional(result.value_spread, "{:.0%}"),
                _optional(result.value_ratio, "{:.2f}x"),
                *(result.columns.get(key, "-") for key in extra),
            ]
        )
        if result.error is not None:  # failed after some rounds
            rows.append(["", f"(then FAILED: {result.error})"])
    return header, rows


def report_tables(report: Report) -> str:
    """One table per group, all with the same column widths, titled when there are several."""
    cells = [(group.title, *_table_cells(report, group)) for group in report.groups]
    widths: list[int] = []
    for _, header, rows in cells:
        for row in (header, *rows):
            if len(row) != len(header):
                continue
            for column, cell in enumerate(row):
                if column == len(widths):
                    widths.append(0)
                widths[column] = max(widths[column], len(cell))
    blocks = []
    for title, header, rows in cells:
        table = render_table(header, rows, widths=widths[: len(header)])
        blocks.append(f"{title}\n{table}" if title and len(cells) > 1 else table)
    return "\n\n".join(blocks)


def _fill(text: str) -> str:
    return textwrap.fill(text, width=NOTE_WIDTH, subsequent_indent="  ")


def report_text(report: Report) -> str:
    """The whole report as printed: heading, isolation, tables, targets, notes."""
    lines = [_fill(report.heading), _fill(report.isolation), "", report_tables(report), ""]
    if report.targets:
        lines.append("Targets (medians of per-round ratios):")
        lines += [_fill(f"- {target.describe()}") for target in report.targets]
        lines.append("")
    lines += [_fill(note) for note in report.notes]
    before, after = report.load
    lines.append(
        f"\n{report.mode}: {report.seconds:.1f} s, load average {before:.2f} before,"
        f" {after:.2f} after ({os.cpu_count()} CPUs)"
    )
    return "\n".join(lines)


UNITS = {
    BYTES: {
        "cpu": "CPU seconds of the measured process per GiB",
        "value": "bytes per second",
        "peer_cpu": "CPU seconds of the receiver per GiB",
        "sample.size": "bytes",
    },
    CALLS: {
        "cpu": "CPU microseconds of the measured process per call",
        "value": "wall microseconds per call",
        "peer_cpu": "CPU microseconds of the receiver per call",
        "sample.size": "calls",
    },
}


def json_document(
    reports: Sequence[Report],
    machine: Mapping[str, object],
    isolation: Isolation | None,
    seconds: float,
) -> dict[str, Any]:
    """The ``--json`` document: the same shape for one mode or several."""
    documents = []
    for report in reports:
        document = dataclasses.asdict(report)
        document["failed"] = report.failed
        document["units"] = dict(UNITS[report.unit])
        document["units"]["ratios"] = "median over rounds of method / baseline in that round"
        document["units"]["spread"] = "(max - min) / median"
        documents.append(document)
    return {
        "format": "zerocopy-bench/1",
        "machine": dict(machine),
        "isolation": None if isolation is None else dataclasses.asdict(isolation),
        "reports": documents,
        "failed": any(report.failed for report in reports),
        "seconds": seconds,
    }


# --------------------------------------------------------------------------- plot


PLOT_EXTRA = "plot"


class PlotUnavailable(Exception):
    """matplotlib cannot be imported."""


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError as error:
        raise PlotUnavailable(
            f"--plot needs matplotlib, which is not installed ({error}); install the"
            f" '{PLOT_EXTRA}' extra: pip install 'zerocopy-net[{PLOT_EXTRA}]'"
            " (or pip install matplotlib)"
        ) from None


def check_plot_available() -> None:
    """Raise PlotUnavailable now rather than after a long run."""
    _pyplot()


def plot(reports: Sequence[Report], path: str, title: str) -> None:
    """Draw every group of every report: CPU per unit (left), throughput or time (right).

    Bars are medians, whiskers span the samples (min to max), labels give the ratio to the
    group's baseline.  Raises PlotUnavailable or OSError.
    """
    pyplot = _pyplot()
    panels = [(report, group) for report in reports for group in report.groups]
    panels = [(r, g) for r, g in panels if any(x.value is not None for x in g.results)]
    if not panels:
        raise OSError(errno.ENODATA, "nothing to plot: every method failed")
    heights = [max(1.2, 0.42 * len(group.results) + 0.9) for _, group in panels]
    figure, axes = pyplot.subplots(
        len(panels), 2, figsize=(12, sum(heights) + 0.8), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for row, (report, group) in enumerate(panels):
        results = [result for result in group.results if result.value is not None]
        names = [result.method for result in results]
        colours = ["#1f77b4" if name.startswith("zerocopy") else "#a0a0a0" for name in names]
        measured = report.measured
        if report.unit == BYTES:
            cpu_label = f"{measured} CPU s/GiB (lower is better)"
            value_label = "throughput GiB/s (higher is better)"
            scale = 1 / GiB
        else:
            cpu_label = f"{measured} CPU us per call (lower is better)"
            value_label = "wall us per call (lower is better)"
            scale = 1.0
        for column, metric, label in ((0, "cpu", cpu_label), (1, "value", value_label)):
            axis = axes[row][column]
            medians, lows, highs, ratios = [], [], [], []
            for result in results:
                values = [value * (1.0 if metric == "cpu" else scale)
                          for value in series(result.samples, report.unit, metric)]
                median = statistics.median(values)
                medians.append(median)
                lows.append(median - min(values))
                highs.append(max(values) - median)
                ratios.append(result.cpu_ratio if metric == "cpu" else result.value_ratio)
            positions = list(range(len(results)))
            axis.barh(positions, medians, xerr=[lows, highs], color=colours, capsize=3)
            axis.set_yticks(positions)
            axis.set_yticklabels(names if column == 0 else [""] * len(names))
            axis.invert_yaxis()
            axis.set_xlabel(label)
            for position, median, high, ratio in zip(positions, medians, highs, ratios):
                if ratio is not None:  # past the whisker
                    axis.text(median + high, position, f"  {ratio:.2f}x", va="center",
                              fontsize=8)
            axis.margins(x=0.22)
        heading = report.mode if not group.title else f"{report.mode}: {group.title}"
        axes[row][0].set_title(heading, loc="left", fontsize=10)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    finally:
        pyplot.close(figure)


# --------------------------------------------------------------------------- modes


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Mode:
    """A benchmark mode: see "Adding a mode" in this module's docstring."""

    name: str
    summary: str
    methods: Mapping[str, str]  # name -> what it does, in table order
    run: Callable[[Context], Report]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    default_repeat: int = 5
    quick_repeat: int = 1
    order: int = 100
    measured: str = "sender"
    peer: str = "receiver"
    measured_in_main: bool = True


@dataclass
class Context:
    """What a mode's ``run`` gets: its options, the isolation and the harness's tools."""

    mode: Mode
    options: argparse.Namespace
    quick: bool
    repeat: int
    methods: list[str]
    isolation: Isolation
    progress: Progress
    started: float = field(default_factory=time.perf_counter)
    load_before: float = field(default_factory=load_average)

    @property
    def measured_cpu(self) -> int | None:
        return self.isolation.measured_cpu

    @property
    def peer_cpu(self) -> int | None:
        return self.isolation.peer_cpu

    def pin_measured(self) -> None:
        """Pin the calling process to the measured CPU (a ``preexec_fn`` for Popen)."""
        pin(self.isolation.measured_cpu)

    def pin_peer(self) -> None:
        pin(self.isolation.peer_cpu)

    def receiver(
        self, *, verify: bool = False, concurrent: bool = False
    ) -> contextlib.AbstractContextManager[tuple[str, int]]:
        """A receiver process on the peer CPU: see ``receiver_process``."""
        return receiver_process(self.isolation.peer_cpu, verify=verify, concurrent=concurrent)

    def tempdir(self) -> tempfile.TemporaryDirectory[str]:
        return tempfile.TemporaryDirectory(prefix=f"zerocopy-bench-{self.mode.name}-")

    def interleave(
        self,
        runners: Mapping[tuple[str, str], Callable[[], Sample]],
        describe: Callable[[Sample], str],
    ) -> list[Runs]:
        return interleave(runners, self.repeat, describe, self.progress)

    def report(
        self,
        *,
        heading: str,
        unit: str,
        settings: dict[str, object],
        runs: Sequence[Runs],
        baseline: str,
        targets: Sequence[Target] = (),
        notes: Sequence[str] = (),
        columns: Callable[[Sequence[Sample]], dict[str, str]] | None = None,
    ) -> Report:
        """Summarize ``runs`` and evaluate ``targets`` into this mode's report."""
        settings = {
            **settings, "repeat": self.repeat, "quick": self.quick, "methods": self.methods
        }
        return Report(
            mode=self.mode.name,
            heading=heading,
            unit=unit,
            measured=self.mode.measured,
            settings=settings,
            groups=summarize(runs, unit, baseline, columns),
            targets=[evaluate(target, runs, unit) for target in targets],
            notes=list(notes),
            isolation=self.isolation.describe(self.mode.measured, self.mode.peer),
            load=(self.load_before, load_average()),
            seconds=time.perf_counter() - self.started,
        )


def discover_modes() -> dict[str, Mode]:
    """Every ``MODE`` defined by a module of this package whose name has no leading ``_``."""
    package = importlib.import_module(__package__ or "zerocopy.bench")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        mode = getattr(module, "MODE", None)
        if isinstance(mode, Mode):
            found.append(mode)
    found.sort(key=lambda mode: (mode.order, mode.name))
    return {mode.name: mode for mode in found}


# --------------------------------------------------------------------------- command line


ALL = "all"


class UsageError(Exception):
    """A mistake on the command line."""


def program_name() -> str:
    if os.path.basename(sys.argv[0]) == "zerocopy":
        return "zerocopy bench"
    return "python -m zerocopy bench"


def split_mode(argv: Sequence[str], modes: Mapping[str, Mode]) -> tuple[str | None, list[str]]:
    """Find the mode: ``MODE`` as the first argument, or ``--MODE`` anywhere.

    Returns (mode name or ``ALL``, or None when none was named; the other arguments).
    """
    names = [*modes, ALL]
    chosen: list[str] = []
    rest = list(argv)
    if rest and rest[0] in names:
        chosen.append(rest.pop(0))
    kept = []
    for arg in rest:
        if arg.startswith("--") and arg[2:] in names:
            chosen.append(arg[2:])
        else:
            kept.append(arg)
    if len(set(chosen)) > 1:
        raise UsageError(f"choose one mode, not {' and '.join(dict.fromkeys(chosen))}")
    return (chosen[0] if chosen else None), kept


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repeat", type=positive_int, default=None,
        help="rounds: every method runs once per round, interleaved (default: per mode)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a short smoke run (without a mode: every mode, each once)",
    )
    parser.add_argument(
        "--methods", type=method_list, default=None,
        help="comma-separated methods to run (exact names, or parts of names)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print machine-readable JSON on stdout (progress still goes to stderr)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", default=None,
        help=f"also draw the comparison into FILE.png (needs the '{PLOT_EXTRA}' extra:"
        f" pip install 'zerocopy-net[{PLOT_EXTRA}]')",
    )
    parser.add_argument(
        "--isolate", choices=ISOLATE_CHOICES, default="auto",
        help="auto (default): pin sender and receiver to different CPUs and, as root, run"
        " in a private network namespace whose lo steers receive work to the receiver's CPU;"
        " pin: pinning only; none: neither (the sender's CPU then includes the receive work)",
    )
    parser.add_argument(
        "--mtu", type=_mtu, default=DEFAULT_MTU, metavar="BYTES",
        help="lo's MTU in the private namespace (default 0: loopback's own 64 KiB, whose"
        " segments split each 64 KiB sendfile chunk into a full segment and a runt; 1500 is"
        " Ethernet's, but then every small send costs several times more on loopback)",
    )


DEFAULT_MTU = 0  # loopback's own; see --mtu


def _mtu(text: str) -> int:
    value = positive_int(text) if text.strip() != "0" else 0
    if value and not 576 <= value <= 65536:
        raise argparse.ArgumentTypeError(f"an MTU between 576 and 65536, or 0: {text!r}")
    return value


def _modes_epilog(prog: str, modes: Mapping[str, Mode]) -> str:
    lines = [f"modes ({prog} MODE --help for each; --MODE works too):"]
    lines += [f"  {mode.name:<8} {mode.summary}" for mode in modes.values()]
    lines.append(f"  {ALL:<8} every mode in turn (what --quick runs when no mode is named)")
    return "\n".join(lines)


def build_parser(
    prog: str, mode: Mode | None, modes: Mapping[str, Mode], *, named: bool
) -> argparse.ArgumentParser:
    """The parser of one mode (its own options too), or of ``ALL`` (common options only)."""
    if mode is None:
        description = "Run every benchmark mode in turn."
        epilog = _modes_epilog(prog, modes)
    else:
        description = mode.summary
        epilog = "methods (for --methods):\n" + "\n".join(
            f"  {name:<28} {what}" for name, what in mode.methods.items()
        )
        epilog += "\n\n" + _modes_epilog(prog, modes)
    parser = argparse.ArgumentParser(
        prog=f"{prog} {mode.name if mode is not None else ALL}" if named else prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_arguments(parser)
    if mode is not None:
        mode.add_arguments(parser)
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {string for action in parser._actions for string in action.option_strings}


def _mode_options_in(
    args: Sequence[str], mode: Mode, prog: str, modes: Mapping[str, Mode]
) -> bool:
    """Whether ``args`` use an option that only ``mode`` has (``--size`` for the file mode)."""
    own = _option_strings(build_parser(prog, mode, modes, named=False))
    own -= _option_strings(build_parser(prog, None, modes, named=False))
    return any(arg.partition("=")[0] in own for arg in args)


def _exit_code(request: SystemExit) -> int:
    if request.code is None:
        return 0
    return request.code if isinstance(request.code, int) else 2


@dataclass
class Plan:
    mode: Mode
    methods: list[str]


def plan_modes(
    modes: Sequence[Mode], wanted: Sequence[str] | None, *, every: bool
) -> list[Plan]:
    """The modes to run and their methods.  With ``every`` (``all``), a mode none of whose
    methods match is left out; raises ValueError when nothing is left."""
    plans = []
    for mode in modes:
        try:
            plans.append(Plan(mode, select_methods(list(mode.methods), wanted)))
        except ValueError:
            if not every:
                raise
    if not plans:
        raise ValueError(f"no method of any mode matches {', '.join(wanted or [])}")
    return plans


def _options_for(mode: Mode, options: argparse.Namespace) -> argparse.Namespace:
    """``options`` plus the defaults of the mode's own options (absent when running all)."""
    parser = argparse.ArgumentParser(add_help=False)
    mode.add_arguments(parser)
    return argparse.Namespace(**{**vars(parser.parse_args([])), **vars(options)})


def _run_plans(
    plans: Sequence[Plan], options: argparse.Namespace, isolation: Isolation,
    emit: Callable[[Report], None],
) -> None:
    """Run the modes one after another in this process, pinned as the isolation says."""
    previous = os.sched_getaffinity(0)
    try:
        for plan in plans:
            mode = plan.mode
            pin(isolation.measured_cpu if mode.measured_in_main else isolation.peer_cpu)
            repeat = options.repeat or (mode.quick_repeat if options.quick else mode.default_repeat)
            ctx = Context(mode, _options_for(mode, options), options.quick, repeat,
                          plan.methods, isolation, Progress())
            emit(mode.run(ctx))
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, previous)


_FRAME = struct.Struct("!I")


def _send_message(fd: int, message: tuple[object, ...]) -> None:
    data = pickle.dumps(message)
    view = memoryview(_FRAME.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_message(fd: int) -> tuple[Any, ...] | None:
    head = _read_exactly(fd, _FRAME.size)
    if head is None:
        return None
    body = _read_exactly(fd, _FRAME.unpack(head)[0])
    if body is None:
        return None
    message = pickle.loads(body)  # from our own forked child
    assert isinstance(message, tuple)
    return message


def _isolated_child(
    fd: int, plans: Sequence[Plan], options: argparse.Namespace, cpus: tuple[int, int]
) -> None:
    """The forked measuring process: enter the namespace, run, send results through ``fd``."""
    try:
        mask = enter_private_network(cpus[1], options.mtu)
    except OSError as error:
        _send_message(fd, ("unavailable", error.strerror or str(error)))
        return
    isolation = Isolation(cpus[0], cpus[1], True, mask, mtu=options.mtu or None)
    _send_message(fd, ("isolation", isolation))
    try:
        _run_plans(plans, options, isolation, lambda report: _send_message(fd, ("report", report)))
    except KeyboardInterrupt:
        _send_message(fd, ("interrupted",))
        return
    except OSError as error:
        _send_message(fd, ("error", str(error)))
        return
    _send_message(fd, ("done",))


class Outcome:
    """What the parent collects: the isolation, reports as they come, and how it ended."""

    def __init__(self, show: Callable[[Report], None]) -> None:
        self.show = show
        self.isolation: Isolation | None = None
        self.reports: list[Report] = []
        self.error: str | None = None
        self.interrupted = False

    def take(self, report: Report) -> None:
        self.reports.append(report)
        self.show(report)


def _reap(pid: int, grace: float) -> None:
    """Give the child ``grace`` seconds to end by itself (it cleans up its temporary files),
    then stop it; a second Ctrl-C stops it at once."""
    deadline = time.monotonic() + grace
    try:
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0] != 0:
                return
            time.sleep(0.01)
    except KeyboardInterrupt:
        pass
    except ChildProcessError:
        return
    stop_helper(pid)


def _wait_isolated(pid: int, fd: int, outcome: Outcome) -> str | None:
    """Collect the child's messages until it ends.  Returns why isolation was unavailable
    (the caller then runs here, pinned only), or None when the child did the run."""
    unavailable: str | None = None
    finished = False
    try:
        while True:
            message = _read_message(fd)
            if message is None:
                break
            kind = message[0]
            if kind == "unavailable":
                unavailable = str(message[1])
            elif kind == "isolation":
                outcome.isolation = message[1]
            elif kind == "report":
                outcome.take(message[1])
            elif kind == "interrupted":
                outcome.interrupted = True
            elif kind == "error":
                outcome.error = str(message[1])
            elif kind == "done":
                finished = True
    except KeyboardInterrupt:  # the child got Ctrl-C too: it stops and cleans up
        outcome.interrupted = True
    finally:
        os.close(fd)
        # Interrupted: a child that got no Ctrl-C of its own is stopped (SIGTERM) soon.
        _reap(pid, HELPER_STOP_SECONDS if outcome.interrupted else ISOLATED_STOP_SECONDS)
    if unavailable is None and not finished and not outcome.interrupted and not outcome.error:
        outcome.error = "the isolated benchmark process ended unexpectedly"
    return unavailable


def measure(plans: Sequence[Plan], options: argparse.Namespace, outcome: Outcome) -> None:
    """Run ``plans`` with the best isolation allowed; fill ``outcome``."""
    cpus = None if options.isolate == "none" else choose_cpus()
    if options.isolate == "none":
        reason = "--isolate none"
    elif cpus is None:
        reason = "fewer than 2 usable CPUs"
    elif options.isolate == "pin":
        reason = "--isolate pin"
    elif os.geteuid() != 0:
        reason = "needs root"
    else:
        reason = None
    if cpus is not None and reason is None:
        read_fd, write_fd = os.pipe()
        pid = fork_helper(None)
        if pid == 0:  # pragma: no cover - the isolated measuring process
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _interrupt)  # clean up when stopped
            os.close(read_fd)
            _CLOSE_IN_HELPERS.append(write_fd)
            code = 0
            try:
                _isolated_child(write_fd, plans, options, cpus)
            except BrokenPipeError:  # the parent is gone or stopped listening
                code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        reason = _wait_isolated(pid, read_fd, outcome)
        if reason is None:
            return
    isolation = Isolation(cpus[0] if cpus else None, cpus[1] if cpus else None, False, None,
                          reason)
    outcome.isolation = isolation
    try:
        _run_plans(plans, options, isolation, outcome.take)
    except KeyboardInterrupt:
        outcome.interrupted = True
    except OSError as error:
        outcome.error = str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with command-line arguments ``argv`` (those after ``bench``).

    Returns 0 when every method succeeded, 1 when one failed (it is reported, the others
    still run) or setup failed, 2 on a usage error and 130 on Ctrl-C.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = program_name()
    modes = discover_modes()
    try:
        named, rest = split_mode(args, modes)
    except UsageError as error:
        print(f"usage: {prog} [MODE] [options]\n{prog}: error: {error}", file=sys.stderr)
        return 2
    if named is None:  # `bench`: the file mode; `bench --quick` alone: every mode
        every = "--quick" in rest and not _mode_options_in(rest, modes["file"], prog, modes)
        chosen = None if every else modes["file"]
    else:
        every = named == ALL
        chosen = None if every else modes[named]
    parser = build_parser(prog, chosen, modes, named=named is not None)
    try:
        options = parser.parse_args(rest)
    except SystemExit as request:  # --help, or a usage error already printed
        return _exit_code(request)
    try:
        plans = plan_modes(
            list(modes.values()) if chosen is None else [chosen], options.methods, every=every
        )
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    if options.plot:
        try:
            check_plot_available()
        except PlotUnavailable as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
    return _measure_and_report(prog, plans, options)


def _measure_and_report(prog: str, plans: Sequence[Plan], options: argparse.Namespace) -> int:
    started = time.perf_counter()
    machine = machine_info()
    first = [True]

    def show(report: Report) -> None:
        if options.json:
            return
        if not first[0]:
            print("\n")
        first[0] = False
        print(report_text(report), flush=True)

    if not options.json:
        print(describe_machine(machine), flush=True)
        print(flush=True)
    outcome = Outcome(show)
    measure(plans, options, outcome)
    seconds = time.perf_counter() - started
    code = 1 if any(report.failed for report in outcome.reports) else 0
    if outcome.error is not None:
        print(f"{prog}: error: {outcome.error}", file=sys.stderr)
        code = 1
    if options.json and outcome.reports:
        json.dump(
            json_document(outcome.reports, machine, outcome.isolation, seconds), sys.stdout,
            indent=2,
        )
        print()
    if options.plot and outcome.reports:
        isolation = outcome.isolation.name if outcome.isolation else "none"
        title = f"{describe_machine(machine)}\nisolation: {isolation}"
        try:
            plot(outcome.reports, options.plot, title)
        except (PlotUnavailable, OSError, ValueError) as error:
            print(f"{prog}: error: cannot plot: {error}", file=sys.stderr)
            code = 1
        else:
            print(f"plot written to {options.plot}", file=sys.stderr)
    if outcome.interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    return code


# --------------------------------------------------------------------------- peer processes
# A relay or a server under test runs in a process of its own (forked, or an external
# program such as socat, haproxy or nginx bounded by ``timeout``); modes start it, wait for
# it to listen, and read its CPU time when they stop it.

START_SECONDS = 10.0  # for a peer process to start listening
STOP_SECONDS = 10.0  # for a peer process to exit after SIGTERM (then SIGKILL)


@dataclass
class Running:
    pid: int  # forked, or (an external program) the pid of ``timeout`` running it
    port: int
    proc: subprocess.Popen[bytes] | None = None  # an external program
    log: IO[bytes] | None = None  # their stderr
    path: str = ""  # a config file to remove


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bounded_process(argv: list[str], lifetime: float,
             ctx: Context) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start argv on the measured CPU, killed after ``lifetime`` seconds even if this
    process dies first.  Its stderr goes to an unlinked temporary file, read if it fails."""
    log = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(
            ["timeout", "-s", "KILL", f"{math.ceil(lifetime)}", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            preexec_fn=ctx.pin_measured,
        )
    except BaseException:
        log.close()
        raise
    return proc, log


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (/proc/net/tcp; no probe connection)."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return True
    return False


def last_line(log: IO[bytes] | None) -> str:
    if log is None:
        return ""
    log.seek(0)
    lines = log.read()[-4096:].decode(errors="replace").strip().splitlines()
    return f": {' '.join(lines[-1].split())}" if lines else ""


def wait_listening(relay: Running) -> None:
    if relay.proc is None:
        return  # forked: the listener was listening before the fork
    end = time.monotonic() + START_SECONDS
    for _ in range(int(START_SECONDS / 0.01)):
        if listening(relay.port):
            return
        if relay.proc.poll() is not None:
            raise RuntimeError(f"the relay exited at start (status {relay.proc.returncode})"
                               f"{last_line(relay.log)}")
        if time.monotonic() > end:
            break
        time.sleep(0.01)
    raise RuntimeError("the relay did not start listening")


def _tree_stats(pid: int) -> list[list[str]]:
    """/proc/<pid>/stat fields after the name (state first) of pid and its descendants."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            parent = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # gone since the listing
        stats[int(entry)] = fields
        children.setdefault(parent, []).append(int(entry))
    tree: list[list[str]] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            tree.append(stats[current])
            todo += children.get(current, [])
    return tree


def tree_cpu(pid: int) -> float:
    """CPU seconds of pid and its descendants, reaped children included (/proc stat)."""
    # after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
    ticks = sum(int(x) for fields in _tree_stats(pid) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and its descendants (nginx: master and worker)."""
    # after the name: ... rss(24), in pages
    return sum(int(fields[21]) for fields in _tree_stats(pid)) * resource.getpagesize()


@contextlib.contextmanager
def sigpipe_ignored() -> Iterator[None]:
    """Ignore SIGPIPE in the block (a write to a closed peer raises EPIPE), then restore it."""
    old = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGPIPE, old)


def stop_process(relay: Running) -> float:
    """Read the process's CPU seconds (its forked helpers included), then stop and reap it."""
    pid = relay.pid
    cpu = tree_cpu(pid)
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


def fork_listening(body: Callable[[socket.socket], None], lifetime: float, ctx: Context,
                   what: str) -> Running:
    """A peer process on the measured CPU that serves ``body(listener)`` on a fresh
    loopback listener; ``alarm`` ends it after ``lifetime`` seconds, SIGTERM at once."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=BACKLOG)
    port = int(listener.getsockname()[1])
    pid = fork_helper(ctx.measured_cpu)
    if pid == 0:  # pragma: no cover - the peer process
        code = 0
        try:
            signal.alarm(math.ceil(lifetime))  # SIGALRM's default action ends it
            signal.signal(signal.SIGTERM, lambda s, f: os._exit(0))
            body(listener)
        except BaseException as error:
            print(f"{what} process failed: {error!r}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    listener.close()  # the child's copy listens already: no need to wait for it
    return Running(pid, port)
