# SPDX-License-Identifier: MIT
"""The default mode: send one page-cached file with every method, side by side.

Each transfer sends the whole file (256 MiB) over a fresh loopback TCP connection to the
receiver process, which acknowledges the byte count (and a CRC-32 with ``--verify``).
Reported first: the sender's CPU seconds per GiB; then throughput.
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import zerocopy

from ._harness import (
    BYTES,
    Context,
    Expected,
    GiB,
    KiB,
    MiB,
    Mode,
    Report,
    Sample,
    Target,
    check_room_for,
    checksum,
    describe_bytes,
    format_size,
    http_header,
    parse_size,
    plural,
    timed_transfer,
    write_test_file,
)

DEFAULT_SIZE = 256 * MiB
QUICK_SIZE = 16 * MiB
READ_CHUNK = 256 * KiB  # buffer of the traditional read+sendall loop
SENDFILE_MAX_CHUNK = 0x7FFFF000  # Linux moves at most this much per sendfile(2) call

TRADITIONAL = "read+sendall"
SENDFILE_ALL = "zerocopy.sendfile_all"

# The goal for the default run with isolation: sendfile_all's sender CPU per GiB at
# most 0.6x read+sendall's, and throughput at least read+sendall's.
TARGETS = (
    Target(f"{SENDFILE_ALL} / {TRADITIONAL}, sender CPU per GiB", SENDFILE_ALL, TRADITIONAL,
           "cpu", at_most=0.6),
    Target(f"{SENDFILE_ALL} / {TRADITIONAL}, throughput", SENDFILE_ALL, TRADITIONAL,
           "value", at_least=1.0),
)

NOTES = (
    "Notes:",
    "- CPU s/GiB: the sender process's user+system CPU time per GiB sent (lower is better),"
    " the figure that carries over to real hardware, where the receiver's TCP work happens"
    " on another machine (see the isolation line). Throughput runs from the first send"
    " until the receiver acknowledges the last byte.",
    "- The file is written, fsync'ed and read once first, so every method reads it from the"
    " page cache (disk speed is not measured). A fresh loopback connection per transfer to"
    " a receiver process that discards the bytes in the kernel (recv with MSG_TRUNC; with"
    " --verify it copies them out and checks a CRC-32); methods interleaved round by round;"
    " medians, spread = (max - min) / median, ratios = medians of the per-round ratios to"
    " read+sendall.",
    "- segs/GiB: TCP data segments sent per GiB (TCP_INFO). Each one costs the sender a"
    " trip down the TCP and loopback transmit path (and, with receive steering, a hand-over"
    " to the receiver's CPU), so a method that sends more, smaller segments pays for them:"
    " a sender blocked on a full socket buffer pushes out the partial segment it was"
    " filling.",
    "- read+sendall copies file -> user buffer -> socket buffer; the sendfile methods hand"
    " page-cache pages to the socket. The FileSender row also sends a 200-byte header"
    " (coalesced with the file's first bytes). MSG_ZEROCOPY never shows a gain on loopback"
    " (see the memory mode).",
)


# A method sends the whole file at ``path`` (``size`` bytes) on a connected blocking socket
# and returns the byte count it reports as sent.
SendFile = Callable[[socket.socket, str, int], int]


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


def _send_sendfile_all(sock: socket.socket, path: str, size: int) -> int:
    in_fd = os.open(path, os.O_RDONLY)
    try:
        return zerocopy.sendfile_all(sock, in_fd)
    finally:
        os.close(in_fd)


def _send_file_sender(sock: socket.socket, path: str, size: int) -> int:
    in_fd = os.open(path, os.O_RDONLY)
    try:
        with zerocopy.FileSender(sock, in_fd, headers=http_header(size)) as sender:
            return sender.send_all()
    finally:
        os.close(in_fd)


# name -> (function, what it does, whether a header precedes the file)
_METHODS: dict[str, tuple[SendFile, str, bool]] = {
    TRADITIONAL: (_send_read_sendall, "file.readinto(256 KiB buffer) + sock.sendall, looped",
                  False),
    "mmap+sendall": (_send_mmap_sendall, "sock.sendall(memoryview(mmap of the file))", False),
    "socket.sendfile": (_send_socket_sendfile, "sock.sendfile(file)", False),
    "os.sendfile loop": (_send_os_sendfile_loop, "os.sendfile(sock_fd, fd, offset, n), looped",
                         False),
    SENDFILE_ALL: (_send_sendfile_all, "zerocopy.sendfile_all(sock, fd)", False),
    "zerocopy.FileSender+header": (
        _send_file_sender, "FileSender(sock, fd, headers=200-byte header).send_all()", True
    ),
}


def _segments_column(samples: Sequence[Sample]) -> dict[str, str]:
    """TCP data segments per GiB: fewer, fuller segments cost the sender less."""
    per_gib = [s.counters["tcp_segments"] * GiB / s.size for s in samples
               if "tcp_segments" in s.counters]
    return {"segs/GiB": f"{statistics.median(per_gib) / 1000:.1f}k"} if per_gib else {}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size", type=parse_size, default=None,
        help=f"file size: 4096, 64K, 256M, 1G... (default {format_size(DEFAULT_SIZE)},"
        f" {format_size(QUICK_SIZE)} with --quick)",
    )
    parser.add_argument(
        "--verify", action="store_true",
        help="also check a CRC-32 of the received bytes (costs receiver CPU)",
    )


def _runner(address: tuple[str, int], name: str, path: str, size: int,
            verify: bool) -> Callable[[], Sample]:
    send, _, with_header = _METHODS[name]
    prefix = http_header(size) if with_header else b""
    expected = Expected(len(prefix) + size, checksum(path, prefix) if verify else None)
    return lambda: timed_transfer(address, lambda sock, _: send(sock, path, size), expected)


def _run(ctx: Context) -> Report:
    size: int = ctx.options.size or (QUICK_SIZE if ctx.quick else DEFAULT_SIZE)
    verify: bool = ctx.options.verify
    heading = (
        f"zerocopy bench file: a {format_size(size)} file,"
        f" {plural(ctx.repeat, 'transfer')} per method (interleaved), a fresh loopback TCP"
        " connection per transfer; sender CPU per GiB first"
    )
    ctx.progress.show(heading)
    with ctx.tempdir() as directory:
        check_room_for(directory, size)
        path = os.path.join(directory, "payload.bin")
        ctx.progress.show(f"writing a {format_size(size)} test file in {directory}")
        write_test_file(path, size)
        with ctx.receiver(verify=verify) as address:
            runners = {("", name): _runner(address, name, path, size, verify)
                       for name in ctx.methods}
            runs = ctx.interleave(runners, describe_bytes)
    return ctx.report(
        heading=heading,
        unit=BYTES,
        settings={"size": size, "verify": verify, "connection": "fresh per transfer"},
        runs=runs,
        baseline=TRADITIONAL,
        targets=TARGETS,
        notes=NOTES,
        columns=_segments_column,
    )


MODE = Mode(
    name="file",
    summary="send a page-cached file (256 MiB) with every method side by side (the default)",
    methods={name: what for name, (_, what, _) in _METHODS.items()},
    run=_run,
    add_arguments=_add_arguments,
    default_repeat=9,
    order=0,
)
