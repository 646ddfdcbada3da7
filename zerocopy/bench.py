"""Side-by-side benchmark of ways to send a file over TCP: ``python -m zerocopy bench``.

Two modes:

* throughput (default): send one page-cached file (256 MiB) over a fresh loopback TCP
  connection per transfer with each method in turn, interleaved round-robin, and report the
  median throughput and the sender's CPU seconds per GiB, both relative to the traditional
  ``readinto`` + ``sendall`` loop;
* ``--small``: per-call cost of sending a 4 KiB file many times on one connection, relative
  to a bare ``os.sendfile`` call.

The receiver is another process (forked) that drains every connection with ``recv_into`` into
one reusable buffer and acknowledges the byte count (and a CRC-32 with ``--verify``), so every
transfer is checked. Every loop is bounded by a count and every transfer by a time limit: a
method that fails or hangs is reported as failed and the run goes on.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import mmap
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Protocol, TextIO, TypeVar

import zerocopy

__all__ = ["main", "parse_size"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_SIZE = 256 * MiB
QUICK_SIZE = 16 * MiB
DEFAULT_REPEAT = 5
DEFAULT_CALLS = 20_000
QUICK_CALLS = 2_000
SMALL_FILE_SIZE = 4 * KiB
SMALL_WARMUP_CALLS = 100
SMALL_CHUNK_CALLS = 500  # calls between two looks at the clock
SMALL_BATCH_SECONDS = 1.0  # a --small repeat of one method stops after this long

READ_CHUNK = 256 * KiB  # buffer of the traditional read+sendall loop
RECEIVE_BUFFER = 1 * MiB
GENERATE_BLOCK = 1 * MiB
SENDFILE_MAX_CHUNK = 0x7FFFF000  # Linux moves at most this much per sendfile(2) call
HEADER_SIZE = 200
NOTE_WIDTH = 92

# Time limits. A transfer slower than SLOWEST_SANE_RATE is broken, not slow.
TRANSFER_BASE_SECONDS = 10.0
SLOWEST_SANE_RATE = 64 * MiB
SMALL_BATCH_LIMIT_SECONDS = 30.0
RECEIVE_STALL_SECONDS = 30.0
RECEIVE_DEADLINE_SECONDS = 600.0
ACCEPT_IDLE_SECONDS = 120.0
CONNECT_SECONDS = 10.0
RECEIVER_STOP_SECONDS = 5.0

# The receiver's reply after the sender's EOF: bytes received, CRC-32 (0 unless verifying).
ACK = struct.Struct("!QI")

TRADITIONAL = "read+sendall"
BARE_SENDFILE = "os.sendfile"

THROUGHPUT_NOTES = (
    "Notes:",
    (
        "- The file is written, fsync'ed and read once before measuring, so every method reads"
        " it from the page cache (the cache is not dropped: that needs root). Disk speed is"
        " not measured."
    ),
    (
        "- Each transfer uses a fresh loopback TCP connection to a receiver in another process,"
        " which recv_into()s a reusable 1 MiB buffer and discards the data. Time runs from the"
        " first send until the receiver acknowledges the full byte count. Methods run"
        " interleaved (round-robin) and the table shows medians."
    ),
    "- CPU s/GiB is the sender process's user+system CPU time per GiB sent (lower is better).",
    (
        "- What loopback can and cannot show: there is no NIC, so read+sendall still pays for"
        " copying file -> user buffer -> socket buffer, while the sendfile methods hand"
        " page-cache pages to the socket without any user-space copy. The receiver copies every"
        " loopback skb into its buffer, which caps throughput for all methods alike."
        " MSG_ZEROCOPY gains never appear on loopback (the kernel copies and reports COPIED)."
        " The sender's CPU per GiB is the figure that carries over to real hardware; on loopback"
        " it may also include the kernel's delivery to the receiving socket (softirq work done"
        " in the sender's context), the same for every method, so loopback understates the"
        " ratios."
    ),
)

SMALL_NOTES = (
    "Notes:",
    (
        "- Each method sends the same 4 KiB range (offset 0) of a page-cached file many times"
        " over one loopback TCP connection per repeat (default socket options); a receiver in"
        " another process drains it. us/call is the wall time of the calling loop divided by"
        f" the calls, after {SMALL_WARMUP_CALLS} untimed warm-up calls; medians of interleaved"
        " repeats. Lower is better. CPU us/call is the sender's own CPU time: the steadier"
        " figure when sender and receiver share few cores, since wall time also includes"
        " waiting for the receiver to drain the socket."
    ),
    (
        "- This measures per-call overhead (argument handling, extra syscalls, glue code):"
        " socket.sendfile() also runs fstat(), builds a poll selector and seeks the file on"
        " every call."
    ),
)


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _method_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty method list")
    return names


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy bench",
        description="Compare ways of sending a file over loopback TCP, side by side.",
        epilog=_method_names_help()
        + "\n\nother experiments (each with its own --help):\n"
        "  --memory   MSG_ZEROCOPY (zerocopy.Socket) against socket.sendall, buffers in memory\n"
        "  --relay    splice relay and proxy against threaded, asyncio, socat and haproxy relays",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="file size for the throughput run: 4096, 64K, 256M, 1G... (default 256M)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=None,
        help=f"transfers per method, interleaved (default {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="measure per-call cost with a 4 KiB file instead of throughput",
    )
    parser.add_argument(
        "--calls",
        type=_positive_int,
        default=None,
        help=f"calls per method and repeat with --small (default {DEFAULT_CALLS}; each"
        f" repeat also stops after {SMALL_BATCH_SECONDS:g} s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_SIZE // MiB} MiB, repeat 1, {QUICK_CALLS} calls",
    )
    parser.add_argument(
        "--methods",
        type=_method_list,
        default=None,
        help="comma-separated methods to run (exact names, or parts of names)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also check a CRC-32 of the received bytes (costs receiver CPU)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable JSON on stdout (progress still goes to stderr)",
    )
    return parser


def _method_names_help() -> str:
    lines = ["methods (for --methods):", "  throughput:"]
    lines += [f"    {name}" for name in THROUGHPUT_METHODS]
    lines += ["  --small:"]
    lines += [f"    {name:<30}{SMALL_METHOD_CALLS[name]}" for name in SMALL_METHODS]
    return "\n".join(lines)


@dataclass
class Settings:
    size: int
    repeat: int
    calls: int
    verify: bool


def _settings_from(options: argparse.Namespace) -> Settings:
    quick: bool = options.quick
    return Settings(
        size=options.size or (QUICK_SIZE if quick else DEFAULT_SIZE),
        repeat=options.repeat or (1 if quick else DEFAULT_REPEAT),
        calls=options.calls or (QUICK_CALLS if quick else DEFAULT_CALLS),
        verify=options.verify,
    )


def _select_methods(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Keep the methods named in ``wanted`` (exact name, else substring), in table order."""
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


def _machine_info() -> dict[str, object]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "zerocopy": str(getattr(zerocopy, "__version__", "unknown")),
    }


def _describe_machine(machine: dict[str, object]) -> str:
    return (
        f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']}"
        f" usable), {machine['kernel']}, {machine['python']}, zerocopy {machine['zerocopy']}"
    )


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
        elif not transient:
            self._stream.write(f"{text}\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._on_terminal and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


# --------------------------------------------------------------------------- receiver


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound each blocking recv with SO_RCVTIMEO; the socket itself stays blocking."""
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))


def _drain_and_acknowledge(conn: socket.socket, buffer: bytearray, verify: bool) -> None:
    """Read ``conn`` to EOF into ``buffer`` and reply with the byte count (and CRC-32).

    Gives up silently (closing, so the sender sees an error) on a stall or past the deadline.
    """
    _set_receive_timeout(conn, RECEIVE_STALL_SECONDS)
    view = memoryview(buffer)
    received = 0
    checksum = 0
    deadline = time.monotonic() + RECEIVE_DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            count = conn.recv_into(buffer)
            if count == 0:
                conn.sendall(ACK.pack(received, checksum))
                return
            received += count
            if verify:
                checksum = zlib.crc32(view[:count], checksum)
    except OSError:
        return


def _serve_receiver(listener: socket.socket, verify: bool) -> None:
    """Receiver process body: serve connections one at a time until idle for too long."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    listener.settimeout(ACCEPT_IDLE_SECONDS)
    buffer = bytearray(RECEIVE_BUFFER)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # includes the idle timeout
            return
        with conn:
            _drain_and_acknowledge(conn, buffer, verify)


@contextmanager
def _receiver_process(verify: bool) -> Iterator[tuple[str, int]]:
    """Fork a receiver process listening on 127.0.0.1; yield its address; stop it after."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address: tuple[str, int] = listener.getsockname()
        process = multiprocessing.get_context("fork").Process(
            target=_serve_receiver,
            args=(listener, verify),
            name="zerocopy-bench-receiver",
            daemon=True,
        )
        process.start()
    try:
        yield address
    finally:
        process.terminate()
        process.join(RECEIVER_STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(RECEIVER_STOP_SECONDS)


# --------------------------------------------------------------------------- sender side


def _raise_timeout(signum: int, frame: FrameType | None) -> None:
    raise TransferTimeout("time limit exceeded")


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
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


@contextmanager
def _connection(address: tuple[str, int]) -> Iterator[socket.socket]:
    """A blocking TCP connection to the receiver (sendfile-style calls need blocking fds)."""
    sock = socket.create_connection(address, timeout=CONNECT_SECONDS)
    with sock:
        sock.settimeout(None)
        yield sock


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise TransferError("receiver closed the connection without acknowledging")
        data += chunk
    return data


def _finish_and_read_ack(sock: socket.socket) -> tuple[int, int]:
    """Send EOF, then wait for the receiver's (byte count, CRC-32) acknowledgement."""
    sock.shutdown(socket.SHUT_WR)
    received, checksum = ACK.unpack(_receive_exactly(sock, ACK.size))
    return int(received), int(checksum)


@dataclass
class Expected:
    """What one transfer must deliver; ``checksum`` is None unless verifying."""

    size: int
    checksum: int | None


def _check_delivery(sent: int, received: int, checksum: int, expected: Expected) -> None:
    if sent != expected.size:
        raise TransferError(f"sender reported {sent} bytes sent, expected {expected.size}")
    if received != expected.size:
        raise TransferError(f"receiver got {received} bytes, expected {expected.size}")
    if expected.checksum is not None and checksum != expected.checksum:
        raise TransferError(
            f"CRC-32 mismatch: received {checksum:#010x}, expected {expected.checksum:#010x}"
        )


@dataclass
class Sample:
    """One measured transfer (throughput mode) or batch of calls (--small)."""

    seconds: float
    cpu_seconds: float
    size: int  # bytes in throughput mode, calls in --small


@dataclass
class MethodRuns:
    name: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


def _run_interleaved(
    runners: dict[str, Callable[[], Sample]],
    repeat: int,
    describe: Callable[[Sample], str],
    progress: Progress,
) -> list[MethodRuns]:
    """Run every method once per round, ``repeat`` rounds; a failed method is dropped."""
    results = {name: MethodRuns(name) for name in runners}
    for round_number in range(1, repeat + 1):
        for name, run_once in runners.items():
            runs = results[name]
            if runs.error is not None:
                continue
            label = f"[{round_number}/{repeat}] {name}"
            progress.show(f"{label} ...", transient=True)
            try:
                sample = run_once()
            except Exception as error:  # noqa: BLE001, RUF100 (any failure is a result)
                runs.error = f"{type(error).__name__}: {error}"
                progress.show(f"{label}: FAILED: {runs.error}")
                continue
            runs.samples.append(sample)
            progress.show(f"{label}: {describe(sample)}")
    progress.finish()
    return list(results.values())


# --------------------------------------------------------------------------- throughput

# A throughput method sends the whole file at ``path`` (``size`` bytes) on a connected
# blocking socket and returns the byte count it reports as sent.
SendMethod = Callable[[socket.socket, str, int], int]


def _http_header(size: int) -> bytes:
    """A response header of exactly HEADER_SIZE bytes announcing ``size`` bytes of body."""
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Server: zerocopy-bench\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n"
        "Cache-Control: no-store\r\n"
        "X-Padding: "
    )
    padding = max(0, HEADER_SIZE - len(head) - len("\r\n\r\n"))
    return f"{head}{'.' * padding}\r\n\r\n".encode("ascii")


def _send_read_sendall(sock: socket.socket, path: str, size: int) -> int:
    """The traditional loop: read into a user buffer, then copy it into the socket."""
    buffer = bytearray(READ_CHUNK)
    sent = 0
    with open(path, "rb", buffering=0) as file, memoryview(buffer) as view:
        while sent < size:
            count = file.readinto(buffer)
            if not count:
                break
            sock.sendall(view[:count])
            sent += count
    return sent


@contextmanager
def _mapped_file(path: str) -> Iterator[memoryview]:
    """A read-only view of the whole file through mmap."""
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    with mapped, memoryview(mapped) as view:
        yield view


def _send_mmap_sendall(sock: socket.socket, path: str, size: int) -> int:
    with _mapped_file(path) as view:
        sock.sendall(view)
        return len(view)


def _send_socket_sendfile(sock: socket.socket, path: str, size: int) -> int:
    with open(path, "rb") as file:
        return sock.sendfile(file)


def _send_os_sendfile_loop(sock: socket.socket, path: str, size: int) -> int:
    """A bare loop on int fds with an explicit offset, as a C programmer would write it."""
    out_fd = sock.fileno()
    in_fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            count = os.sendfile(out_fd, in_fd, offset, min(size - offset, SENDFILE_MAX_CHUNK))
            if count == 0:  # the file shrank
                break
            offset += count
        return offset
    finally:
        os.close(in_fd)


def _send_zerocopy_sendfile_all(sock: socket.socket, path: str, size: int) -> int:
    in_fd = os.open(path, os.O_RDONLY)
    try:
        return zerocopy.sendfile_all(sock, in_fd)
    finally:
        os.close(in_fd)


def _send_zerocopy_file_sender(sock: socket.socket, path: str, size: int) -> int:
    in_fd = os.open(path, os.O_RDONLY)
    try:
        with zerocopy.FileSender(sock, in_fd, headers=_http_header(size)) as sender:
            return sender.send_all()
    finally:
        os.close(in_fd)


THROUGHPUT_METHODS: dict[str, SendMethod] = {
    TRADITIONAL: _send_read_sendall,
    "mmap+sendall": _send_mmap_sendall,
    "socket.sendfile": _send_socket_sendfile,
    "os.sendfile loop": _send_os_sendfile_loop,
    "zerocopy.sendfile_all": _send_zerocopy_sendfile_all,
    "zerocopy.FileSender+header": _send_zerocopy_file_sender,
}

# Bytes a method sends before the file; they count towards its throughput.
THROUGHPUT_PREFIX: dict[str, Callable[[int], bytes]] = {
    "zerocopy.FileSender+header": _http_header,
}


def _prefix_for(name: str, size: int) -> bytes:
    make_prefix = THROUGHPUT_PREFIX.get(name)
    return make_prefix(size) if make_prefix is not None else b""


def _write_test_file(path: str, size: int) -> None:
    """Write ``size`` incompressible bytes fast (one random MiB, repeated) and fsync them.

    The fsync leaves clean pages in the page cache, so no writeback runs during the timing.
    """
    block = os.urandom(GENERATE_BLOCK)
    with open(path, "wb", buffering=0) as file:
        written = 0
        while written < size:
            written += file.write(block[: min(GENERATE_BLOCK, size - written)])
        os.fsync(file.fileno())


def _read_through(path: str, prefix: bytes = b"") -> int:
    """Read the whole file (which pulls it into the page cache); return CRC-32 of prefix+file."""
    checksum = zlib.crc32(prefix)
    buffer = bytearray(GENERATE_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        for _ in range(os.fstat(file.fileno()).st_size // GENERATE_BLOCK + 1):
            count = file.readinto(buffer)
            if not count:
                break
            checksum = zlib.crc32(view[:count], checksum)
    return checksum


def _check_room_for(directory: str, size: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < size + 64 * MiB:
        raise OSError(
            f"{directory} has {free // MiB} MiB free, the test file needs {size // MiB} MiB;"
            " use a smaller --size or point TMPDIR elsewhere"
        )


def _transfer_time_limit(size: int) -> float:
    return TRANSFER_BASE_SECONDS + size / SLOWEST_SANE_RATE


def _measure_transfer(
    address: tuple[str, int], method: SendMethod, path: str, size: int, expected: Expected
) -> Sample:
    """One transfer on a fresh connection; wall time runs until the receiver acknowledges."""
    with _time_limit(_transfer_time_limit(size)), _connection(address) as sock:
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        sent = method(sock, path, size)
        received, checksum = _finish_and_read_ack(sock)
        wall_seconds = time.perf_counter() - wall_start
        cpu_seconds = time.process_time() - cpu_start
    _check_delivery(sent, received, checksum, expected)
    return Sample(seconds=wall_seconds, cpu_seconds=cpu_seconds, size=expected.size)


def _throughput_runner(
    address: tuple[str, int], name: str, path: str, size: int, verify: bool
) -> Callable[[], Sample]:
    prefix = _prefix_for(name, size)
    expected = Expected(
        size=len(prefix) + size,
        checksum=_read_through(path, prefix) if verify else None,
    )
    method = THROUGHPUT_METHODS[name]
    return lambda: _measure_transfer(address, method, path, size, expected)


def _describe_throughput(sample: Sample) -> str:
    return (
        f"{_format_rate(sample.size / sample.seconds)}, "
        f"{sample.cpu_seconds * GiB / sample.size:.3f} CPU s/GiB"
    )


# --------------------------------------------------------------------------- --small


@dataclass
class SmallTarget:
    """A connected socket and an open 4 KiB file, in the forms the methods need."""

    sock: socket.socket
    file: io.BufferedReader

    @property
    def sock_fd(self) -> int:
        return self.sock.fileno()

    @property
    def file_fd(self) -> int:
        return self.file.fileno()


# A --small method makes ``calls`` calls that each send bytes 0..4095 of the file and
# returns the total byte count the calls reported.
CallLoop = Callable[[SmallTarget, int], int]


def _calls_os_sendfile(target: SmallTarget, calls: int) -> int:
    out_fd, in_fd = target.sock_fd, target.file_fd
    sent = 0
    for _ in range(calls):
        sent += os.sendfile(out_fd, in_fd, 0, SMALL_FILE_SIZE)
    return sent


def _calls_socket_sendfile(target: SmallTarget, calls: int) -> int:
    sock, file = target.sock, target.file
    sent = 0
    for _ in range(calls):
        sent += sock.sendfile(file, 0, SMALL_FILE_SIZE)
    return sent


def _calls_sendfile_all_fds(target: SmallTarget, calls: int) -> int:
    out_fd, in_fd = target.sock_fd, target.file_fd
    sent = 0
    for _ in range(calls):
        sent += zerocopy.sendfile_all(out_fd, in_fd, offset=0, count=SMALL_FILE_SIZE)
    return sent


def _calls_sendfile_all_socket(target: SmallTarget, calls: int) -> int:
    sock, in_fd = target.sock, target.file_fd
    sent = 0
    for _ in range(calls):
        sent += zerocopy.sendfile_all(sock, in_fd, 0, SMALL_FILE_SIZE)
    return sent


def _calls_file_sender(target: SmallTarget, calls: int) -> int:
    sock, in_fd = target.sock, target.file_fd
    sent = 0
    for _ in range(calls):
        with zerocopy.FileSender(sock, in_fd, 0, SMALL_FILE_SIZE) as sender:
            sent += sender.send_all()
    return sent


SMALL_METHODS: dict[str, CallLoop] = {
    BARE_SENDFILE: _calls_os_sendfile,
    "socket.sendfile": _calls_socket_sendfile,
    "zerocopy.sendfile_all(fd)": _calls_sendfile_all_fds,
    "zerocopy.sendfile_all(sock)": _calls_sendfile_all_socket,
    "zerocopy.FileSender": _calls_file_sender,
}

SMALL_METHOD_CALLS: dict[str, str] = {
    BARE_SENDFILE: "os.sendfile(sock_fd, file_fd, 0, 4096)",
    "socket.sendfile": "sock.sendfile(file_object, 0, 4096)",
    "zerocopy.sendfile_all(fd)": "sendfile_all(sock_fd, file_fd, offset=0, count=4096)",
    "zerocopy.sendfile_all(sock)": "sendfile_all(sock, file_fd, 0, 4096)",
    "zerocopy.FileSender": "with FileSender(sock, file_fd, 0, 4096) as s: s.send_all()",
}


def _call_for_a_while(loop: CallLoop, target: SmallTarget, calls: int) -> tuple[int, int]:
    """Make up to ``calls`` calls, stopping early after SMALL_BATCH_SECONDS.

    Returns (calls made, bytes reported sent).
    """
    deadline = time.perf_counter() + SMALL_BATCH_SECONDS
    made = 0
    sent = 0
    while made < calls and (made == 0 or time.perf_counter() < deadline):
        chunk = min(SMALL_CHUNK_CALLS, calls - made)
        sent += loop(target, chunk)
        made += chunk
    return made, sent


def _repeated_block_checksum(block: bytes, times: int) -> int:
    checksum = 0
    for _ in range(times):
        checksum = zlib.crc32(block, checksum)
    return checksum


def _measure_calls(
    address: tuple[str, int], loop: CallLoop, path: str, calls: int, verify: bool
) -> Sample:
    """Warm up, then time ``calls`` calls (or fewer, see above) on one fresh connection."""
    with (
        _time_limit(SMALL_BATCH_LIMIT_SECONDS),
        _connection(address) as sock,
        open(path, "rb") as file,
    ):
        target = SmallTarget(sock, file)
        sent = loop(target, SMALL_WARMUP_CALLS)
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        made, sent_timed = _call_for_a_while(loop, target, calls)
        wall_seconds = time.perf_counter() - wall_start
        cpu_seconds = time.process_time() - cpu_start
        sent += sent_timed
        received, checksum = _finish_and_read_ack(sock)
    total_calls = SMALL_WARMUP_CALLS + made
    block = _read_block(path)
    expected = Expected(
        size=total_calls * len(block),
        checksum=_repeated_block_checksum(block, total_calls) if verify else None,
    )
    _check_delivery(sent, received, checksum, expected)
    return Sample(seconds=wall_seconds, cpu_seconds=cpu_seconds, size=made)


def _read_block(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _describe_calls(sample: Sample) -> str:
    return (
        f"{sample.seconds / sample.size * 1e6:.2f} us/call, "
        f"{sample.cpu_seconds / sample.size * 1e6:.2f} CPU us/call ({sample.size} calls)"
    )


# --------------------------------------------------------------------------- results


@dataclass
class Summary:
    """Medians of one method's samples and their ratios to the baseline method.

    Throughput mode: ``value`` is bytes/s and ``cpu`` CPU seconds per GiB. --small mode:
    ``value`` is microseconds per call and ``cpu`` CPU microseconds per call. ``spread``
    is (max - min) / median of ``value``. Fields are None when there is nothing to report.
    """

    method: str
    value: float | None
    spread: float | None
    cpu: float | None
    value_ratio: float | None
    cpu_ratio: float | None
    error: str | None
    samples: list[Sample]


def _median_and_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    median = statistics.median(values)
    if len(values) < 2 or not median:
        return median, None
    return median, (max(values) - min(values)) / median


def _ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


def _summarize(
    runs: Sequence[MethodRuns],
    baseline: str,
    value_of: Callable[[Sample], float],
    cpu_of: Callable[[Sample], float],
) -> list[Summary]:
    summaries = []
    for method in runs:
        value, spread = _median_and_spread([value_of(sample) for sample in method.samples])
        cpu, _ = _median_and_spread([cpu_of(sample) for sample in method.samples])
        summaries.append(
            Summary(method.name, value, spread, cpu, None, None, method.error, method.samples)
        )
    reference = next((summary for summary in summaries if summary.method == baseline), None)
    for summary in summaries:
        if reference is not None:
            summary.value_ratio = _ratio(summary.value, reference.value)
            summary.cpu_ratio = _ratio(summary.cpu, reference.cpu)
    return summaries


def _bytes_per_second(sample: Sample) -> float:
    return sample.size / sample.seconds


def _cpu_seconds_per_gib(sample: Sample) -> float:
    return sample.cpu_seconds * GiB / sample.size


def _microseconds_per_call(sample: Sample) -> float:
    return sample.seconds * 1e6 / sample.size


def _cpu_microseconds_per_call(sample: Sample) -> float:
    return sample.cpu_seconds * 1e6 / sample.size


@dataclass
class Report:
    mode: str  # "throughput" or "small"
    machine: dict[str, object]
    settings: dict[str, object]
    baseline: str
    results: list[Summary]
    notes: Sequence[str]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(summary.error is not None for summary in self.results)


# --------------------------------------------------------------------------- formatting


def _format_rate(bytes_per_second: float) -> str:
    if bytes_per_second >= GiB:
        return f"{bytes_per_second / GiB:.2f} GiB/s"
    return f"{bytes_per_second / MiB:.0f} MiB/s"


def _format_size(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _format_optional(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: Sequence[int] = (0,)
) -> str:
    """Left-align the ``text_columns``, right-align the (numeric) others.

    A row shorter than the header (a failure message) does not widen the columns: its
    cells after the first are printed as they are.
    """
    full_rows = [header, *(row for row in rows if len(row) == len(header))]
    widths = [max(len(row[column]) for row in full_rows) for column in range(len(header))]

    def render(row: Sequence[str]) -> str:
        if len(row) < len(header):
            return "  ".join([row[0].ljust(widths[0]), *row[1:]]).rstrip()
        cells = [
            cell.ljust(width) if column in text_columns else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(
        [render(header), render(["-" * width for width in widths])] + [render(row) for row in rows]
    )


def _failure_row(summary: Summary) -> list[str]:
    return [summary.method, f"FAILED: {summary.error}"]


def _throughput_table(report: Report) -> str:
    vs = f"vs {report.baseline}"
    header = ["method", "throughput", "spread", vs, "CPU s/GiB", vs]
    rows = []
    for summary in report.results:
        if summary.error is not None or summary.value is None:
            rows.append(_failure_row(summary))
            continue
        rows.append(
            [
                summary.method,
                _format_rate(summary.value),
                _format_optional(summary.spread, "{:.0%}"),
                _format_optional(summary.value_ratio, "{:.2f}x"),
                _format_optional(summary.cpu, "{:.3f}"),
                _format_optional(summary.cpu_ratio, "{:.2f}x"),
            ]
        )
    return _render_table(header, rows)


def _small_table(report: Report) -> str:
    vs = f"vs {report.baseline}"
    header = ["method", "us/call", "spread", vs, "CPU us/call", vs, "call"]
    rows = []
    for summary in report.results:
        if summary.error is not None or summary.value is None:
            rows.append(_failure_row(summary))
            continue
        rows.append(
            [
                summary.method,
                f"{summary.value:.2f}",
                _format_optional(summary.spread, "{:.0%}"),
                _format_optional(summary.value_ratio, "{:.2f}x"),
                _format_optional(summary.cpu, "{:.2f}"),
                _format_optional(summary.cpu_ratio, "{:.2f}x"),
                SMALL_METHOD_CALLS[summary.method],
            ]
        )
    return _render_table(header, rows, text_columns=(0, len(header) - 1))


def _print_text_report(report: Report) -> None:
    table = _throughput_table(report) if report.mode == "throughput" else _small_table(report)
    print()
    print(table)
    print()
    for note in report.notes:
        print(textwrap.fill(note, width=NOTE_WIDTH, subsequent_indent="  "))
    print(f"\ntotal time {report.seconds:.1f} s")


def _print_json_report(report: Report) -> None:
    document = asdict(report)
    document["failed"] = report.failed
    document["units"] = (
        {"value": "bytes per second", "cpu": "CPU seconds per GiB", "sample.size": "bytes"}
        if report.mode == "throughput"
        else {
            "value": "microseconds per call",
            "cpu": "CPU microseconds per call",
            "sample.size": "calls",
        }
    )
    json.dump(document, sys.stdout, indent=2)
    print()


# --------------------------------------------------------------------------- runs


def _run_throughput(
    names: Sequence[str], settings: Settings, machine: dict[str, object], progress: Progress
) -> Report:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zerocopy-bench-") as directory:
        _check_room_for(directory, settings.size)
        path = os.path.join(directory, "payload.bin")
        progress.show(f"writing a {_format_size(settings.size)} test file in {directory}")
        _write_test_file(path, settings.size)
        _read_through(path)  # warm the page cache
        with _receiver_process(settings.verify) as address:
            runners = {
                name: _throughput_runner(address, name, path, settings.size, settings.verify)
                for name in names
            }
            runs = _run_interleaved(runners, settings.repeat, _describe_throughput, progress)
    return Report(
        mode="throughput",
        machine=machine,
        settings={
            "size": settings.size,
            "repeat": settings.repeat,
            "verify": settings.verify,
            "connection": "fresh per transfer",
        },
        baseline=TRADITIONAL,
        results=_summarize(runs, TRADITIONAL, _bytes_per_second, _cpu_seconds_per_gib),
        notes=THROUGHPUT_NOTES,
        seconds=time.perf_counter() - started,
    )


def _run_small(
    names: Sequence[str], settings: Settings, machine: dict[str, object], progress: Progress
) -> Report:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zerocopy-bench-") as directory:
        path = os.path.join(directory, "small.bin")
        _write_test_file(path, SMALL_FILE_SIZE)
        _read_through(path)
        with _receiver_process(settings.verify) as address:
            runners: dict[str, Callable[[], Sample]] = {
                name: _small_runner(address, SMALL_METHODS[name], path, settings) for name in names
            }
            runs = _run_interleaved(runners, settings.repeat, _describe_calls, progress)
    return Report(
        mode="small",
        machine=machine,
        settings={
            "file_size": SMALL_FILE_SIZE,
            "calls": settings.calls,
            "repeat": settings.repeat,
            "verify": settings.verify,
            "connection": "one per method and repeat",
        },
        baseline=BARE_SENDFILE,
        results=_summarize(runs, BARE_SENDFILE, _microseconds_per_call, _cpu_microseconds_per_call),
        notes=SMALL_NOTES,
        seconds=time.perf_counter() - started,
    )


def _small_runner(
    address: tuple[str, int], loop: CallLoop, path: str, settings: Settings
) -> Callable[[], Sample]:
    return lambda: _measure_calls(address, loop, path, settings.calls, settings.verify)


def _describe_run(small: bool, settings: Settings) -> str:
    if small:
        return (
            f"zerocopy bench --small: {settings.calls} calls of 4 KiB per method and repeat"
            f" (at most {SMALL_BATCH_SECONDS:g} s), {_plural(settings.repeat, 'repeat')},"
            " one loopback TCP connection per method and repeat"
        )
    return (
        f"zerocopy bench: {_format_size(settings.size)} file,"
        f" {_plural(settings.repeat, 'transfer')} per method (interleaved),"
        " a fresh loopback TCP connection per transfer"
    )


def _misused_option(options: argparse.Namespace) -> str | None:
    """Say which option does not apply to the chosen mode, if any."""
    if options.small and options.size is not None:
        return "--size sets the throughput file; --small always sends 4 KiB"
    if not options.small and options.calls is not None:
        return "--calls applies to --small only"
    return None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _exit_code(request: SystemExit) -> int:
    if request.code is None:
        return 0
    return request.code if isinstance(request.code, int) else 2


class _Outcome(Protocol):
    @property
    def failed(self) -> bool: ...


_R = TypeVar("_R", bound=_Outcome)


def _run_and_report(
    prog: str,
    heading: Sequence[str],
    run: Callable[[Progress], _R],
    show: Callable[[_R], None],
    *,
    to_json: bool,
) -> int:
    """Print ``heading``, ``run`` with a progress line and ``show`` its report; the exit code.

    0 when every method succeeded, 1 when one failed or setup failed (``OSError``),
    130 on Ctrl-C.  Shared by the benchmarks' ``main`` functions.
    """
    print("\n".join(heading), file=sys.stderr if to_json else sys.stdout, flush=True)
    progress = Progress()
    try:
        report = run(progress)
    except KeyboardInterrupt:
        progress.finish()
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        progress.finish()
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    show(report)
    return 1 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with command-line arguments ``argv`` (those after ``bench``).

    Returns 0 when every method succeeded, 1 when one failed (it is reported, the others
    still run) or setup failed, 2 on a usage error and 130 on Ctrl-C.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    for flag, module in (("--memory", "bench_memory"), ("--relay", "bench_relay")):
        if flag in args:  # another experiment, with options of its own
            other = importlib.import_module(f"zerocopy.{module}")
            return int(other.main([a for a in args if a != flag]))
    parser = _build_parser()
    try:
        options = parser.parse_args(args)
    except SystemExit as request:  # --help, or a usage error already printed
        return _exit_code(request)
    misuse = _misused_option(options)
    if misuse:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {misuse}", file=sys.stderr)
        return 2
    settings = _settings_from(options)
    available = SMALL_METHODS if options.small else THROUGHPUT_METHODS
    try:
        names = _select_methods(list(available), options.methods)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    machine = _machine_info()
    heading = [_describe_run(options.small, settings), _describe_machine(machine)]
    run = _run_small if options.small else _run_throughput
    return _run_and_report(
        parser.prog, heading, lambda progress: run(names, settings, machine, progress),
        _print_json_report if options.json else _print_text_report, to_json=options.json,
    )


if __name__ == "__main__":
    sys.exit(main())
