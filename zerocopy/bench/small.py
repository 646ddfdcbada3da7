# SPDX-License-Identifier: MIT
"""Per-call cost at 4 KiB: ``bench small`` (or ``bench --small``).

Each method sends the same 4 KiB range of a page-cached file many times over one
connection; the sender's CPU time per call comes first.  Two pairs answer the issue's
questions: ``zerocopy.sendfile_all`` on int fds against a bare ``os.sendfile``, and
``zerocopy.FileSender`` with a header against the same two system calls written by hand
(``sock.send(header, MSG_MORE)`` + ``os.sendfile``), one response per call.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import zerocopy

from ._harness import (
    CALLS,
    Context,
    Expected,
    KiB,
    Mode,
    Report,
    Sample,
    Target,
    TransferError,
    check_delivery,
    connection,
    describe_calls,
    finish_and_read_ack,
    http_header,
    plural,
    positive_int,
    time_limit,
    write_test_file,
)

FILE_SIZE = 4 * KiB
DEFAULT_CALLS = 20_000
QUICK_CALLS = 2_000
WARMUP_CALLS = 100
CHUNK_CALLS = 500  # calls between two looks at the clock
BATCH_SECONDS = 1.0  # a repeat of one method stops after this long
BATCH_LIMIT_SECONDS = 30.0
HEADER = http_header(FILE_SIZE)

BARE = "os.sendfile"
SENDFILE_ALL_FDS = "zerocopy.sendfile_all(fd)"
HAND_WRITTEN = "hand-written send+sendfile"
FILE_SENDER_HEADER = "zerocopy.FileSender+header"

TARGETS = (
    Target(f"{FILE_SENDER_HEADER} / {HAND_WRITTEN}, CPU per 4 KiB response",
           FILE_SENDER_HEADER, HAND_WRITTEN, "cpu", at_most=1.2),
    Target(f"{SENDFILE_ALL_FDS} / {BARE}, CPU per call", SENDFILE_ALL_FDS, BARE, "cpu",
           at_most=1.7),
)

NOTES = (
    "Notes:",
    "- Each method sends bytes 0..4095 of a page-cached file many times over one loopback"
    " TCP connection per round (default socket options); the receiver process drains it."
    f" {WARMUP_CALLS} untimed warm-up calls, then timed calls. CPU us/call is the sender"
    " process's CPU time per call (a call is one response for the +header rows: a 200-byte"
    " header, then the 4 KiB); us/call is wall time, which also includes waiting for the"
    " receiver. Lower is better. Ratios are medians of per-round ratios to os.sendfile.",
    f"- {HAND_WRITTEN} is the hand-written response: sock.send(header, MSG_MORE) and"
    " os.sendfile(sock_fd, fd, 0, 4096), the system calls FileSender makes (strace shows"
    " the same two). socket.sendfile() also runs fstat(), builds a selector and seeks the"
    " file on every call.",
)


@dataclass
class Calls:
    """A connected socket, the open 4 KiB file and the header, as the methods need them."""

    sock: socket.socket
    sock_fd: int
    file_fd: int
    file: io.BufferedReader  # for socket.sendfile


# A method makes ``calls`` calls that each send the 4 KiB (after the header for the +header
# methods) and returns the total bytes the calls reported.
CallLoop = Callable[[Calls, int], int]


def _calls_os_sendfile(target: Calls, calls: int) -> int:
    out_fd, in_fd = target.sock_fd, target.file_fd
    sent = 0
    for _ in range(calls):
        sent += os.sendfile(out_fd, in_fd, 0, FILE_SIZE)
    return sent


def _calls_socket_sendfile(target: Calls, calls: int) -> int:
    sock, file = target.sock, target.file
    sent = 0
    for _ in range(calls):
        sent += sock.sendfile(file, 0, FILE_SIZE)
    return sent


def _calls_sendfile_all_fds(target: Calls, calls: int) -> int:
    out_fd, in_fd = target.sock_fd, target.file_fd
    sent = 0
    for _ in range(calls):
        sent += zerocopy.sendfile_all(out_fd, in_fd, offset=0, count=FILE_SIZE)
    return sent


def _calls_sendfile_all_socket(target: Calls, calls: int) -> int:
    sock, in_fd = target.sock, target.file_fd
    sent = 0
    for _ in range(calls):
        sent += zerocopy.sendfile_all(sock, in_fd, 0, FILE_SIZE)
    return sent


def _calls_hand_written(target: Calls, calls: int) -> int:
    """What a server writes by hand: the header with MSG_MORE, then the file range."""
    sock, out_fd, in_fd = target.sock, target.sock_fd, target.file_fd
    header, more = HEADER, socket.MSG_MORE
    sent = 0
    for _ in range(calls):
        count = sock.send(header, more)
        if count < len(header):
            sock.sendall(header[count:], more)
        done = os.sendfile(out_fd, in_fd, 0, FILE_SIZE)
        while done < FILE_SIZE:
            step = os.sendfile(out_fd, in_fd, done, FILE_SIZE - done)
            if step == 0:
                raise TransferError("the file shrank")
            done += step
        sent += len(header) + done
    return sent


def _calls_file_sender_header(target: Calls, calls: int) -> int:
    sock, in_fd, header = target.sock, target.file_fd, HEADER
    sent = 0
    for _ in range(calls):
        with zerocopy.FileSender(sock, in_fd, 0, FILE_SIZE, headers=header) as sender:
            sent += sender.send_all()
    return sent


def _calls_file_sender(target: Calls, calls: int) -> int:
    sock, in_fd = target.sock, target.file_fd
    sent = 0
    for _ in range(calls):
        with zerocopy.FileSender(sock, in_fd, 0, FILE_SIZE) as sender:
            sent += sender.send_all()
    return sent


# name -> (loop, the call it makes, whether the header precedes the 4 KiB)
_METHODS: dict[str, tuple[CallLoop, str, bool]] = {
    BARE: (_calls_os_sendfile, "os.sendfile(sock_fd, fd, 0, 4096)", False),
    "socket.sendfile": (_calls_socket_sendfile, "sock.sendfile(file_object, 0, 4096)", False),
    SENDFILE_ALL_FDS: (_calls_sendfile_all_fds,
                       "sendfile_all(sock_fd, fd, offset=0, count=4096)", False),
    "zerocopy.sendfile_all(sock)": (_calls_sendfile_all_socket,
                                    "sendfile_all(sock, fd, 0, 4096)", False),
    HAND_WRITTEN: (_calls_hand_written,
                   "sock.send(header, MSG_MORE); os.sendfile(sock_fd, fd, 0, 4096)", True),
    FILE_SENDER_HEADER: (_calls_file_sender_header,
                         "with FileSender(sock, fd, 0, 4096, headers=header) as s: s.send_all()",
                         True),
    "zerocopy.FileSender": (_calls_file_sender,
                            "with FileSender(sock, fd, 0, 4096) as s: s.send_all()", False),
}


def _call_for_a_while(loop: CallLoop, target: Calls, calls: int) -> tuple[int, int]:
    """Make up to ``calls`` calls, stopping early after BATCH_SECONDS.

    Returns (calls made, bytes reported sent).
    """
    deadline = time.perf_counter() + BATCH_SECONDS
    made = 0
    sent = 0
    while made < calls and (made == 0 or time.perf_counter() < deadline):
        chunk = min(CHUNK_CALLS, calls - made)
        sent += loop(target, chunk)
        made += chunk
    return made, sent


def _repeated_checksum(block: bytes, times: int) -> int:
    crc = 0
    for _ in range(times):
        crc = zlib.crc32(block, crc)
    return crc


def _measure_calls(address: tuple[str, int], name: str, path: str, calls: int,
                   verify: bool) -> Sample:
    """Warm up, then time ``calls`` calls (or fewer, see above) on one fresh connection."""
    loop, _, with_header = _METHODS[name]
    with contextlib.ExitStack() as stack:  # not a parenthesised with: Python 3.9
        stack.enter_context(time_limit(BATCH_LIMIT_SECONDS))
        sock = stack.enter_context(connection(address))
        file = stack.enter_context(open(path, "rb"))
        target = Calls(sock, sock.fileno(), file.fileno(), file)
        sent = loop(target, WARMUP_CALLS)
        cpu_start = time.process_time()
        wall_start = time.perf_counter()
        made, sent_timed = _call_for_a_while(loop, target, calls)
        wall_seconds = time.perf_counter() - wall_start
        cpu_seconds = time.process_time() - cpu_start
        sent += sent_timed
        ack = finish_and_read_ack(sock)
        file.seek(0)
        block = (HEADER if with_header else b"") + file.read()
    total_calls = WARMUP_CALLS + made
    expected = Expected(
        total_calls * len(block), _repeated_checksum(block, total_calls) if verify else None
    )
    check_delivery(sent, ack, expected)
    return Sample(wall_seconds, cpu_seconds, made)


def _runner(address: tuple[str, int], name: str, path: str, calls: int,
            verify: bool) -> Callable[[], Sample]:
    return lambda: _measure_calls(address, name, path, calls, verify)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calls", type=positive_int, default=None,
        help=f"calls per method and round (default {DEFAULT_CALLS}, {QUICK_CALLS} with"
        f" --quick; each round of a method also stops after {BATCH_SECONDS:g} s)",
    )
    parser.add_argument(
        "--verify", action="store_true",
        help="also check a CRC-32 of the received bytes (costs receiver CPU)",
    )


def _run(ctx: Context) -> Report:
    calls: int = ctx.options.calls or (QUICK_CALLS if ctx.quick else DEFAULT_CALLS)
    verify: bool = ctx.options.verify
    heading = (
        f"zerocopy bench small: {calls} calls of 4 KiB per method and round (at most"
        f" {BATCH_SECONDS:g} s), {plural(ctx.repeat, 'round')}, one loopback TCP connection"
        " per method and round; sender CPU per call first"
    )
    ctx.progress.show(heading)
    with ctx.tempdir() as directory:
        path = os.path.join(directory, "small.bin")
        write_test_file(path, FILE_SIZE)
        with ctx.receiver(verify=verify) as address:
            runners = {("", name): _runner(address, name, path, calls, verify)
                       for name in ctx.methods}
            runs = ctx.interleave(runners, describe_calls)
    return ctx.report(
        heading=heading,
        unit=CALLS,
        settings={"file_size": FILE_SIZE, "header_size": len(HEADER), "calls": calls,
                  "verify": verify, "connection": "one per method and round"},
        runs=runs,
        baseline=BARE,
        targets=TARGETS,
        notes=NOTES,
    )


MODE = Mode(
    name="small",
    summary="per-call cost at 4 KiB: sendfile_all and FileSender against hand-written calls",
    methods={name: what for name, (_, what, _) in _METHODS.items()},
    run=_run,
    add_arguments=_add_arguments,
    default_repeat=9,
    order=10,
)
