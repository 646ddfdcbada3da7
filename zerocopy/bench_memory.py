# SPDX-License-Identifier: MIT
"""Memory-to-socket benchmark: ``python -m zerocopy bench --memory``.

For each buffer size, one reused in-memory buffer is sent again and again (a fixed
total per transfer) over a fresh loopback TCP connection with:

* ``socket.sendall`` (the baseline);
* ``zerocopy.Socket(adaptive=False).sendall``: MSG_ZEROCOPY forced on;
* ``zerocopy.Socket().sendall``: the default adaptive mode, which turns zero-copy off at
  the first completion the kernel flags as COPIED;
* the mmap route: a file of the buffer's size, mapped, and the mapping object given to
  ``zerocopy.Socket(adaptive=False).sendall``.

It reports throughput, the sender's CPU per GiB, both relative to ``socket.sendall``, and
for the zero-copy methods how many sends used MSG_ZEROCOPY and the share of completions the
kernel flagged COPIED. The receiver process, connection, time limits, interleaving,
medians and table formatting come from :mod:`zerocopy.bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import zerocopy

# Private helpers of zerocopy.bench, imported until bench.py exposes them (see the report).
from zerocopy.bench import (
    NOTE_WIDTH,
    Expected,
    GiB,
    KiB,
    MethodRuns,
    MiB,
    Progress,
    Sample,
    Summary,
    TransferError,
    _bytes_per_second,
    _check_delivery,
    _connection,
    _cpu_seconds_per_gib,
    _describe_machine,
    _exit_code,
    _finish_and_read_ack,
    _format_optional,
    _format_rate,
    _format_size,
    _machine_info,
    _method_list,
    _plural,
    _positive_int,
    _receiver_process,
    _render_table,
    _run_and_report,
    _run_interleaved,
    _select_methods,
    _summarize,
    _time_limit,
    _transfer_time_limit,
    _write_test_file,
    parse_size,
)

__all__ = ["main"]

DEFAULT_TOTAL = 256 * MiB
QUICK_TOTAL = 16 * MiB
DEFAULT_BUFFERS = (16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB)
QUICK_BUFFERS = (64 * KiB, 1 * MiB)
DEFAULT_REPEAT = 5
QUICK_REPEAT = 5
FLUSH_SECONDS = 10.0  # completions still missing this long after the last send: a failure
TARGET_COST = 0.05  # the adaptive mode may cost at most this much against socket.sendall

BASELINE = "socket.sendall"
FORCED = "zerocopy.Socket forced"
ADAPTIVE = "zerocopy.Socket adaptive"
MMAP_FORCED = "mmap+zerocopy.Socket forced"

NOTES = (
    "Notes:",
    (
        "- LOOPBACK ALWAYS COPIES: data sent to a local socket is delivered in memory, so the"
        " kernel copies every MSG_ZEROCOPY buffer anyway and flags its completion COPIED"
        " (COPIED column = copied / reported completions). The forced mode therefore pays for"
        " page pinning + a deferred copy + completion handling and is expected to be SLOWER"
        " here. The adaptive mode turns zero-copy off at the first COPIED completion it reaps,"
        " so it should match socket.sendall. Real gains need a NIC with scatter-gather (and"
        " typically buffers of 16 KiB or more); measure there before drawing conclusions."
    ),
    (
        "- Each transfer sends ONE reused buffer (total / buffer times, as a server reusing"
        " buffers would; the same object may be on loan several times) over a fresh loopback"
        " TCP connection to a receiver in another process that recv_into()s a 1 MiB buffer."
        " A fresh zerocopy.Socket per connection, so the adaptive mode learns again each time."
        " Time runs from the first send until every completion is reaped (flush()) and the"
        " receiver acknowledges the byte count."
    ),
    (
        "- mmap row: a page-cached file of the buffer's size, mapped read-only once per"
        " transfer; the mmap object itself goes to sendall() each time."
    ),
    (
        "- CPU s/GiB: the sender process's user+system CPU per GiB (lower is better); on"
        " loopback it may include the kernel's delivery to the receiver. zc sends:"
        " send(2) calls made with MSG_ZEROCOPY / all send calls (median of the transfers)."
    ),
    (
        "- Methods run interleaved (round-robin) within each buffer size; medians of the"
        " repeats; spread = (max - min) / median of throughput. The machine may be shared and"
        " noisy: trust the ratios within one buffer size and the spread, not absolute rates."
    ),
)


@dataclass
class MemorySample(Sample):
    """One transfer, plus the zerocopy.Socket counters (zero for socket.sendall)."""

    zerocopy_sends: int = 0
    plain_sends: int = 0
    completions: int = 0
    copied_completions: int = 0
    enobufs_fallbacks: int = 0
    peak_pinned_bytes: int = 0


@dataclass
class Payload:
    """The reused buffer of one size and a page-cached file holding the same bytes."""

    buffer: bytearray
    path: str
    sends: int  # buffers per transfer


# A method sends ``payload`` ``sends`` times on a connected blocking socket, then reads the
# receiver's acknowledgement; it returns (bytes received, CRC-32) and its Socket's counters.
Outcome = tuple[tuple[int, int], "zerocopy.SocketStats | None"]
SendMethod = Callable[[socket.socket, Payload], Outcome]


def _send_plain(sock: socket.socket, payload: Payload) -> Outcome:
    data = payload.buffer
    for _ in range(payload.sends):
        sock.sendall(data)
    return _finish_and_read_ack(sock), None


def _send_zerocopy(sock: socket.socket, data: object, sends: int, adaptive: bool) -> Outcome:
    with zerocopy.Socket(sock, adaptive=adaptive) as zsock:
        for _ in range(sends):
            zsock.sendall(data)
        if not zsock.flush(FLUSH_SECONDS):
            raise TransferError(
                f"{zsock.pending} buffer(s) still on loan {FLUSH_SECONDS:g} s after the last send"
            )
        stats = zsock.stats
        return _finish_and_read_ack(sock), stats


def _send_forced(sock: socket.socket, payload: Payload) -> Outcome:
    return _send_zerocopy(sock, payload.buffer, payload.sends, adaptive=False)


def _send_adaptive(sock: socket.socket, payload: Payload) -> Outcome:
    return _send_zerocopy(sock, payload.buffer, payload.sends, adaptive=True)


def _send_mmap_forced(sock: socket.socket, payload: Payload) -> Outcome:
    with open(payload.path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _send_zerocopy(sock, mapping, payload.sends, adaptive=False)
    finally:
        # BufferError: a loan was abandoned (the kernel may still read it), keep the mapping.
        with contextlib.suppress(BufferError):
            mapping.close()


METHODS: dict[str, SendMethod] = {
    BASELINE: _send_plain,
    FORCED: _send_forced,
    ADAPTIVE: _send_adaptive,
    MMAP_FORCED: _send_mmap_forced,
}


def _measure(address: tuple[str, int], method: SendMethod, payload: Payload) -> MemorySample:
    """One transfer on a fresh connection; wall time runs until the receiver acknowledges."""
    expected = Expected(size=payload.sends * len(payload.buffer), checksum=None)
    with _time_limit(_transfer_time_limit(expected.size)), _connection(address) as sock:
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        (received, checksum), stats = method(sock, payload)
        wall_seconds = time.perf_counter() - wall_start
        cpu_seconds = time.process_time() - cpu_start
    # Every send call returned, so everything was sent: the receiver's count is the check.
    _check_delivery(expected.size, received, checksum, expected)
    sample = MemorySample(seconds=wall_seconds, cpu_seconds=cpu_seconds, size=expected.size)
    if stats is not None:
        sample.zerocopy_sends = stats.zerocopy_sends
        sample.plain_sends = stats.plain_sends
        sample.completions = stats.completions
        sample.copied_completions = stats.copied_completions
        sample.enobufs_fallbacks = stats.enobufs_fallbacks
        sample.peak_pinned_bytes = stats.peak_pinned_bytes
    return sample


def _describe(sample: Sample) -> str:
    text = (
        f"{_format_rate(sample.size / sample.seconds)}, "
        f"{sample.cpu_seconds * GiB / sample.size:.3f} CPU s/GiB"
    )
    if isinstance(sample, MemorySample) and sample.completions:
        text += (
            f", {sample.zerocopy_sends} zc sends, "
            f"{sample.copied_completions}/{sample.completions} completions COPIED"
        )
    return text


# --------------------------------------------------------------------------- results


@dataclass
class ZerocopyCounts:
    """Zero-copy counters of one method at one buffer size (None for socket.sendall)."""

    zerocopy_sends: int  # median over the transfers
    sends: int  # median of zero-copy + plain send calls
    copied_share: float | None  # copied / reported completions, all transfers together
    enobufs_fallbacks: int  # total over the transfers


@dataclass
class BufferResult:
    buffer_size: int
    sends_per_transfer: int
    results: list[Summary]
    zerocopy: dict[str, ZerocopyCounts]
    # The adaptive mode against socket.sendall: median of the per-round ratios (each round
    # runs both back to back, so a slow moment of the machine hits both alike).
    adaptive_throughput_ratio: float | None
    adaptive_cpu_ratio: float | None
    target_met: bool | None  # throughput ratio >= 1 - TARGET_COST and CPU <= 1 + TARGET_COST


def _zerocopy_counts(samples: Sequence[Sample]) -> ZerocopyCounts | None:
    ours = [sample for sample in samples if isinstance(sample, MemorySample)]
    if not ours or not any(s.zerocopy_sends + s.plain_sends for s in ours):
        return None
    completions = sum(s.completions for s in ours)
    return ZerocopyCounts(
        zerocopy_sends=int(statistics.median(s.zerocopy_sends for s in ours)),
        sends=int(statistics.median(s.zerocopy_sends + s.plain_sends for s in ours)),
        copied_share=sum(s.copied_completions for s in ours) / completions if completions else None,
        enobufs_fallbacks=sum(s.enobufs_fallbacks for s in ours),
    )


def _buffer_result(size: int, sends: int, runs: Sequence[MethodRuns]) -> BufferResult:
    summaries = _summarize(runs, BASELINE, _bytes_per_second, _cpu_seconds_per_gib)
    counts = {}
    for summary in summaries:
        found = _zerocopy_counts(summary.samples)
        if found is not None:
            counts[summary.method] = found
    throughput = _paired_ratio(runs, ADAPTIVE, _bytes_per_second)
    cpu = _paired_ratio(runs, ADAPTIVE, _cpu_seconds_per_gib)
    met = None
    if throughput is not None and cpu is not None:
        met = throughput >= 1 - TARGET_COST and cpu <= 1 + TARGET_COST
    return BufferResult(size, sends, summaries, counts, throughput, cpu, met)


def _paired_ratio(
    runs: Sequence[MethodRuns], method: str, value_of: Callable[[Sample], float]
) -> float | None:
    """Median over the rounds of ``method``'s value / the baseline's in the same round."""
    by_name = {run.name: run for run in runs}
    if method not in by_name or BASELINE not in by_name:
        return None
    pairs = zip(by_name[method].samples, by_name[BASELINE].samples)
    ratios = [value_of(ours) / value_of(base) for ours, base in pairs if value_of(base)]
    return statistics.median(ratios) if ratios else None


@dataclass
class MemoryReport:
    mode: str
    machine: dict[str, object]
    settings: dict[str, object]
    baseline: str
    buffers: list[BufferResult]
    notes: Sequence[str]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(s.error is not None for b in self.buffers for s in b.results)

    @property
    def target_met(self) -> bool | None:
        verdicts = [b.target_met for b in self.buffers if b.target_met is not None]
        return all(verdicts) if verdicts else None


# --------------------------------------------------------------------------- formatting


def _table(report: MemoryReport) -> str:
    vs = f"vs {BASELINE}"
    header = ["buffer", "method", "throughput", "spread", vs, "CPU s/GiB", vs, "zc sends", "COPIED"]
    rows: list[list[str]] = []
    for block in report.buffers:
        label = _format_size(block.buffer_size)
        for summary in block.results:
            if summary.error is not None or summary.value is None:
                rows.append([label, f"{summary.method}: FAILED: {summary.error}"])
            else:
                counts = block.zerocopy.get(summary.method)
                rows.append([
                    label,
                    summary.method,
                    _format_rate(summary.value),
                    _format_optional(summary.spread, "{:.0%}"),
                    _format_optional(summary.value_ratio, "{:.2f}x"),
                    _format_optional(summary.cpu, "{:.3f}"),
                    _format_optional(summary.cpu_ratio, "{:.2f}x"),
                    "-" if counts is None else f"{counts.zerocopy_sends}/{counts.sends}",
                    "-" if counts is None else _format_optional(counts.copied_share, "{:.0%}"),
                ])
            label = ""
    return _render_table(header, rows, text_columns=(0, 1))


def _verdict(report: MemoryReport) -> str:
    parts = []
    for block in report.buffers:
        throughput, cpu = block.adaptive_throughput_ratio, block.adaptive_cpu_ratio
        if block.target_met is None or throughput is None or cpu is None:
            continue
        parts.append(
            f"{_format_size(block.buffer_size)}: throughput {throughput - 1:+.0%},"
            f" CPU {cpu - 1:+.0%} {'ok' if block.target_met else 'MISSED'}"
        )
    if not parts:
        return ""
    overall = "MET" if report.target_met else "NOT MET"
    return (
        f"Target: the adaptive mode within {TARGET_COST:.0%} of {BASELINE} in throughput and"
        f" CPU (median of per-round ratios): {overall}. " + "; ".join(parts) + "."
    )


def _print_text(report: MemoryReport) -> None:
    print()
    print(_table(report))
    print()
    verdict = _verdict(report)
    if verdict:
        print(textwrap.fill(verdict, width=NOTE_WIDTH, subsequent_indent="  "))
        print()
    for note in report.notes:
        print(textwrap.fill(note, width=NOTE_WIDTH, subsequent_indent="  "))
    print(f"\ntotal time {report.seconds:.1f} s")


def _print_json(report: MemoryReport) -> None:
    document = asdict(report)
    document["failed"] = report.failed
    document["target_met"] = report.target_met
    document["units"] = {
        "value": "bytes per second",
        "cpu": "CPU seconds per GiB",
        "sample.size": "bytes",
        "copied_share": "copied completions / completions",
    }
    json.dump(document, sys.stdout, indent=2)
    print()


# --------------------------------------------------------------------------- run


@dataclass
class Settings:
    total: int
    buffers: list[int]
    repeat: int


def _size_list(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("empty buffer size list")
    return sizes


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy bench --memory",
        description=(
            "Send one reused in-memory buffer over loopback TCP with socket.sendall and"
            " zerocopy.Socket (forced and adaptive MSG_ZEROCOPY, and an mmap'ed file), side"
            " by side. Loopback always copies: zero-copy gains only show on a real NIC."
        ),
        epilog="methods (for --methods): " + ", ".join(METHODS),
    )
    sizes = ",".join(_format_size(size).replace(" ", "") for size in DEFAULT_BUFFERS)
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help=f"bytes per transfer: 64M, 1G... (default {_format_size(DEFAULT_TOTAL)})",
    )
    parser.add_argument(
        "--buffers",
        type=_size_list,
        default=None,
        help=f"comma-separated buffer sizes (default {sizes})",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=None,
        help=f"transfers per method and buffer size, interleaved (default {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {_format_size(QUICK_TOTAL)} per transfer, buffers"
        f" {', '.join(_format_size(size) for size in QUICK_BUFFERS)}, repeat {QUICK_REPEAT}",
    )
    parser.add_argument(
        "--methods",
        type=_method_list,
        default=None,
        help="comma-separated methods to run (exact names, or parts of names)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable JSON on stdout (progress still goes to stderr)",
    )
    return parser


def _settings_from(options: argparse.Namespace) -> Settings:
    quick: bool = options.quick
    return Settings(
        total=options.size or (QUICK_TOTAL if quick else DEFAULT_TOTAL),
        buffers=list(options.buffers or (QUICK_BUFFERS if quick else DEFAULT_BUFFERS)),
        repeat=options.repeat or (QUICK_REPEAT if quick else DEFAULT_REPEAT),
    )


def _make_payload(directory: str, size: int, total: int) -> Payload:
    path = os.path.join(directory, f"buffer-{size}.bin")
    _write_test_file(path, size)  # leaves it in the page cache, for the mmap route
    with open(path, "rb") as file:
        buffer = bytearray(file.read())
    return Payload(buffer=buffer, path=path, sends=max(1, total // size))


def _run(
    names: Sequence[str], settings: Settings, machine: dict[str, object], progress: Progress
) -> MemoryReport:
    started = time.perf_counter()
    blocks = []
    with contextlib.ExitStack() as stack:  # not a parenthesised with: Python 3.9
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="zerocopy-bench-mem-"))
        address = stack.enter_context(_receiver_process(False))
        for size in settings.buffers:
            payload = _make_payload(directory, size, settings.total)

            def runner(method: SendMethod, payload: Payload = payload) -> Callable[[], Sample]:
                return lambda: _measure(address, method, payload)

            runners = {name: runner(METHODS[name]) for name in names}
            progress.show(f"buffer {_format_size(size)}, {payload.sends} sends per transfer")
            runs = _run_interleaved(runners, settings.repeat, _describe, progress)
            blocks.append(_buffer_result(size, payload.sends, runs))
    return MemoryReport(
        mode="memory",
        machine=machine,
        settings={
            "total_per_transfer": settings.total,
            "buffers": settings.buffers,
            "repeat": settings.repeat,
            "connection": "fresh per transfer",
            "target_cost": TARGET_COST,
        },
        baseline=BASELINE,
        buffers=blocks,
        notes=NOTES,
        seconds=time.perf_counter() - started,
    )


def _describe_run(settings: Settings) -> str:
    return (
        f"zerocopy bench --memory: {_format_size(settings.total)} per transfer from one reused"
        f" buffer of {', '.join(_format_size(size) for size in settings.buffers)},"
        f" {_plural(settings.repeat, 'transfer')} per method (interleaved),"
        " a fresh loopback TCP connection per transfer"
    )


def main(argv: list[str]) -> int:
    """Run the memory benchmark with ``argv`` (the arguments after ``bench --memory``).

    Returns 0 when every method succeeded (whether or not the adaptive target was met), 1
    when one failed (it is reported, the others still run) or setup failed, 2 on a usage
    error and 130 on Ctrl-C.
    """
    parser = _build_parser()
    try:
        options = parser.parse_args(argv)
        names = _select_methods(list(METHODS), options.methods)
    except SystemExit as request:  # --help, or a usage error already printed
        return _exit_code(request)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    settings = _settings_from(options)
    machine = _machine_info()
    heading = [_describe_run(settings), _describe_machine(machine)]
    return _run_and_report(
        parser.prog, heading, lambda progress: _run(names, settings, machine, progress),
        _print_json if options.json else _print_text, to_json=options.json,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
