# SPDX-License-Identifier: MIT
"""Memory to socket, MSG_ZEROCOPY: ``bench memory`` (or ``bench --memory``).

For each buffer size, one reused in-memory buffer is sent again and again (a fixed total
per transfer) over a fresh loopback TCP connection with ``socket.sendall`` (the
baseline), ``zerocopy.Socket`` with MSG_ZEROCOPY forced on, the default adaptive
``zerocopy.Socket`` (which turns zero-copy off at the first completion the kernel flags
COPIED), and a mapped file given to the forced ``zerocopy.Socket``.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import socket
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zerocopy

from ._harness import (
    BYTES,
    Context,
    Expected,
    KiB,
    MiB,
    Mode,
    Report,
    Sample,
    Target,
    TransferError,
    describe_bytes,
    format_size,
    parse_size,
    plural,
    size_list,
    timed_transfer,
    write_test_file,
)

DEFAULT_TOTAL = 256 * MiB
QUICK_TOTAL = 16 * MiB
DEFAULT_BUFFERS = (16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB)
QUICK_BUFFERS = (64 * KiB, 1 * MiB)
FLUSH_SECONDS = 10.0  # completions still missing this long after the last send: a failure
TARGET_COST = 0.05  # the adaptive mode may cost at most this much against socket.sendall

BASELINE = "socket.sendall"
FORCED = "zerocopy.Socket forced"
ADAPTIVE = "zerocopy.Socket adaptive"
MMAP_FORCED = "mmap+zerocopy.Socket forced"

COUNTERS = (
    "zerocopy_sends", "plain_sends", "completions", "copied_completions",
    "enobufs_fallbacks", "peak_pinned_bytes",
)

NOTES = (
    "Notes:",
    "- LOOPBACK ALWAYS COPIES: data sent to a local socket is delivered in memory, so the"
    " kernel copies every MSG_ZEROCOPY buffer anyway and flags its completion COPIED"
    " (COPIED column = copied / reported completions). The forced mode therefore pays for"
    " page pinning + a deferred copy + completion handling and is expected to be SLOWER"
    " here. The adaptive mode turns zero-copy off at the first COPIED completion it reaps,"
    " so it should match socket.sendall. Real gains need a NIC with scatter-gather (and"
    " typically buffers of 16 KiB or more); measure there before drawing conclusions.",
    "- Each transfer sends ONE reused buffer (total / buffer times, as a server reusing"
    " buffers would) over a fresh loopback TCP connection to the receiver process. A fresh"
    " zerocopy.Socket per connection, so the adaptive mode learns again each time. Time runs"
    " from the first send until every completion is reaped (flush()) and the receiver"
    " acknowledges the byte count. mmap row: a page-cached file of the buffer's size, mapped"
    " once per transfer; the mmap object itself goes to sendall() each time.",
    "- CPU s/GiB: the sender process's user+system CPU per GiB (lower is better). zc sends:"
    " send(2) calls made with MSG_ZEROCOPY / all send calls (median of the transfers).",
)


@dataclass
class Payload:
    """The reused buffer of one size and a page-cached file holding the same bytes."""

    buffer: bytearray
    path: str
    sends: int  # buffers per transfer


def _send_plain(sock: socket.socket, payload: Payload, counters: dict[str, int]) -> int:
    data = payload.buffer
    for _ in range(payload.sends):
        sock.sendall(data)
    return payload.sends * len(data)


def _send_zerocopy(
    sock: socket.socket, data: bytearray | mmap.mmap, sends: int, adaptive: bool,
    counters: dict[str, int],
) -> int:
    # A duplicate, since closing a zerocopy.Socket closes its socket: the harness then
    # reads the receiver's answer on ``sock``.
    with zerocopy.Socket(sock.dup(), adaptive=adaptive) as zsock:
        for _ in range(sends):
            zsock.sendall(data)
        if not zsock.flush(FLUSH_SECONDS):
            raise TransferError(
                f"{zsock.pending} buffer(s) still on loan {FLUSH_SECONDS:g} s after the last send"
            )
        stats = zsock.stats
        for name in COUNTERS:
            counters[name] = int(getattr(stats, name))
    return sends * len(data)


def _send_forced(sock: socket.socket, payload: Payload, counters: dict[str, int]) -> int:
    return _send_zerocopy(sock, payload.buffer, payload.sends, False, counters)


def _send_adaptive(sock: socket.socket, payload: Payload, counters: dict[str, int]) -> int:
    return _send_zerocopy(sock, payload.buffer, payload.sends, True, counters)


def _send_mmap_forced(sock: socket.socket, payload: Payload, counters: dict[str, int]) -> int:
    with open(payload.path, "rb") as file:
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _send_zerocopy(sock, mapping, payload.sends, False, counters)
    finally:
        # BufferError: a loan was abandoned (the kernel may still read it), keep the mapping.
        with contextlib.suppress(BufferError):
            mapping.close()


SendMemory = Callable[[socket.socket, Payload, dict[str, int]], int]

_METHODS: dict[str, tuple[SendMemory, str]] = {
    BASELINE: (_send_plain, "sock.sendall(buffer), repeated"),
    FORCED: (_send_forced, "zerocopy.Socket(sock, adaptive=False).sendall(buffer), repeated"),
    ADAPTIVE: (_send_adaptive, "zerocopy.Socket(sock).sendall(buffer), repeated"),
    MMAP_FORCED: (_send_mmap_forced,
                  "zerocopy.Socket(sock, adaptive=False).sendall(mmap of a file), repeated"),
}


def _counts(samples: Sequence[Sample]) -> dict[str, str]:
    """The zc sends and COPIED columns (nothing for socket.sendall)."""
    ours = [sample.counters for sample in samples if "zerocopy_sends" in sample.counters]
    if not ours:
        return {}
    zerocopy_sends = int(statistics.median(c["zerocopy_sends"] for c in ours))
    sends = int(statistics.median(c["zerocopy_sends"] + c["plain_sends"] for c in ours))
    completions = sum(c["completions"] for c in ours)
    copied = sum(c["copied_completions"] for c in ours)
    return {
        "zc sends": f"{zerocopy_sends}/{sends}",
        "COPIED": f"{copied / completions:.0%}" if completions else "-",
    }


def _group_title(size: int) -> str:
    return f"{format_size(size)} buffer"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sizes = ",".join(format_size(size).replace(" ", "") for size in DEFAULT_BUFFERS)
    parser.add_argument(
        "--size", type=parse_size, default=None,
        help=f"bytes per transfer: 64M, 1G... (default {format_size(DEFAULT_TOTAL)})",
    )
    parser.add_argument(
        "--buffers", type=size_list, default=None,
        help=f"comma-separated buffer sizes (default {sizes})",
    )


def _make_payload(directory: str, size: int, total: int) -> Payload:
    path = os.path.join(directory, f"buffer-{size}.bin")
    write_test_file(path, size)  # leaves it in the page cache, for the mmap route
    with open(path, "rb") as file:
        buffer = bytearray(file.read())
    return Payload(buffer=buffer, path=path, sends=max(1, total // size))


def _runner(address: tuple[str, int], name: str, payload: Payload) -> Callable[[], Sample]:
    send = _METHODS[name][0]
    # Every send call returned, so everything was sent: the receiver's count is the check.
    expected = Expected(payload.sends * len(payload.buffer))
    return lambda: timed_transfer(
        address, lambda sock, counters: send(sock, payload, counters), expected
    )


def _run(ctx: Context) -> Report:
    total: int = ctx.options.size or (QUICK_TOTAL if ctx.quick else DEFAULT_TOTAL)
    buffers: list[int] = list(ctx.options.buffers or
                              (QUICK_BUFFERS if ctx.quick else DEFAULT_BUFFERS))
    heading = (
        f"zerocopy bench memory: {format_size(total)} per transfer from one reused buffer"
        f" of {', '.join(format_size(size) for size in buffers)},"
        f" {plural(ctx.repeat, 'transfer')} per method (interleaved), a fresh loopback TCP"
        " connection per transfer; sender CPU per GiB first"
    )
    ctx.progress.show(heading)
    with ctx.tempdir() as directory, ctx.receiver() as address:
        runners = {}
        for size in buffers:
            payload = _make_payload(directory, size, total)
            for name in ctx.methods:
                runners[(_group_title(size), name)] = _runner(address, name, payload)
        runs = ctx.interleave(runners, describe_bytes)
    targets = []
    for size in buffers:
        group = _group_title(size)
        targets += [
            Target(f"{ADAPTIVE} / {BASELINE}, throughput", ADAPTIVE, BASELINE, "value",
                   at_least=1 - TARGET_COST, group=group),
            Target(f"{ADAPTIVE} / {BASELINE}, CPU per GiB", ADAPTIVE, BASELINE, "cpu",
                   at_most=1 + TARGET_COST, group=group),
        ]
    return ctx.report(
        heading=heading,
        unit=BYTES,
        settings={"total_per_transfer": total, "buffers": buffers,
                  "connection": "fresh per transfer", "target_cost": TARGET_COST},
        runs=runs,
        baseline=BASELINE,
        targets=targets,
        notes=NOTES,
        columns=_counts,
    )


MODE = Mode(
    name="memory",
    summary="MSG_ZEROCOPY (zerocopy.Socket) against socket.sendall, buffers in memory",
    methods={name: what for name, (_, what) in _METHODS.items()},
    run=_run,
    add_arguments=_add_arguments,
    default_repeat=5,
    order=20,
)
