"""zerocopy.Socket: MSG_ZEROCOPY sends, buffer loans, completions, fallbacks.

Loopback never shows zero-copy for real: the kernel copies what it delivers
to a local socket and flags every completion COPIED.  The tests accept that;
they check bytes, buffer lifetimes and counters, never timings.

A buffer whose completion must stay outstanding is sent to a stalled
receiver: a small receive buffer, filled by plain filler bytes first, so the
buffer waits in the sender's (roomy) queue and the kernel keeps it until the
receiver reads.  (A receive buffer of a few KiB would do too, but TCP then
recovers from the zero window by slow, backed-off probes: seconds per test.)
"""

from __future__ import annotations

import array
import dataclasses
import gc
import json
import mmap
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _zcutil import (
    DEADLINE,
    Call,
    Collector,
    Pair,
    eof,
    itimer,
    outq,
    raise_keyboard_interrupt,
    rand_bytes,
    recv_exactly,
    recv_to_eof,
    reset,
    wait_pollerr,
    wait_until,
)

import zerocopy

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_enobufs_child.py")
THRESHOLD = 16384

pytestmark = pytest.mark.timeout(30)


class Buf(bytearray):
    """A bytearray that can be weakly referenced."""


FILLER = rand_bytes(128 * 1024, 99)


@pytest.fixture
def stalled(make_pair: Callable[..., Pair]) -> Callable[..., Pair]:
    """Factory: stalled(kind="tcp4") -> (sender, receiver), receiver unread.

    SO_RCVBUF on the receiver (32 KiB) and SO_SNDBUF on the sender (256 KiB)
    are set before connect; FILLER (more than the receive window) is sent
    plain first.  Whatever is sent next stays in the sender's queue until
    the receiver reads FILLER and more.
    """

    def factory(kind: str = "tcp4") -> Pair:
        s, r = make_pair(kind, sndbuf=256 * 1024, rcvbuf=32 * 1024)
        s.settimeout(5)
        s.sendall(FILLER)
        s.settimeout(None)
        return s, r

    return factory


def _need_zerocopy(z: zerocopy.Socket) -> None:
    """Skip when the kernel would not take a zero-copy send at all."""
    st = z.stats
    if st.zerocopy_sends == 0 and st.enobufs_fallbacks > 0:
        pytest.skip("the kernel refused MSG_ZEROCOPY (ENOBUFS: locked-memory limit)")
    assert st.zerocopy_sends > 0


# -- byte-exact streams --------------------------------------------------------


def _buffers(seed: int) -> tuple[list[Any], bytes]:
    """Random sizes (below, at and above the threshold; up to 3 MiB), mixed types."""
    rng = random.Random(seed)
    sizes = [1, THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 3 * 1024 * 1024]
    sizes += [rng.randint(1, THRESHOLD - 1) for _ in range(8)]
    sizes += [rng.randint(THRESHOLD, 256 * 1024) for _ in range(8)]
    sizes += [rng.randint(256 * 1024, 2 * 1024 * 1024) for _ in range(3)]
    rng.shuffle(sizes)
    out: list[Any] = []
    for i, n in enumerate(sizes):
        raw = rand_bytes(n, seed * 1000 + i)
        kind = i % 6
        if kind == 0:
            out.append(raw)
        elif kind == 1:
            out.append(bytearray(raw))
        elif kind == 2:
            out.append(memoryview(b"\0\0\0" + raw + b"\0")[3:-1])  # a slice
        elif kind == 3:
            m = mmap.mmap(-1, n)
            m.write(raw)
            out.append(m)
        elif kind == 4:
            out.append(array.array("B", raw))
        else:  # itemsize 4: whole items only
            out.append(array.array("I", raw[: n - n % 4] or b"\0\0\0\0"))
    expected = b"".join(memoryview(o).tobytes() for o in out)
    return out, expected


@pytest.mark.parametrize("adaptive", [False, True], ids=["zerocopy-on", "adaptive"])
@pytest.mark.parametrize("kind", ["tcp4", "tcp6"])
def test_stream_byte_exact(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector], kind: str, adaptive: bool
) -> None:
    s, r = make_pair(kind)
    col = collect(r)
    bufs, expected = _buffers(7 if adaptive else 8)
    z = zerocopy.Socket(s, adaptive=adaptive)
    assert z.zerocopy_supported and z.zerocopy_active
    assert z.zerocopy_unsupported_reason is None
    handles = [z.sendall(b) for b in bufs]
    assert z.flush(timeout=10)
    assert all(h.done() for h in handles)
    assert all(h.wait(0) for h in handles)
    st = z.stats
    assert z.pending == 0 and z.pending_bytes == 0 and st.pinned_bytes == 0
    small = sum(1 for b in bufs if memoryview(b).nbytes < THRESHOLD)
    assert st.plain_sends >= small
    # every completion reaped: one sequence number per zero-copy send
    assert st.completions == st.zerocopy_sends
    assert st.copied_completions <= st.completions
    if st.zerocopy_sends:
        assert st.peak_pinned_bytes >= THRESHOLD
    if not adaptive:
        big = len(bufs) - small
        # each large buffer's first send tried the flag (ENOBUFS: resent plain)
        assert st.zerocopy_sends + st.enobufs_fallbacks >= big
        assert z.zerocopy_active  # stayed on for the whole stream
    elif st.copied_completions:
        assert not z.zerocopy_active
    z.close()
    assert s.fileno() == -1  # close() closes the socket
    assert col.result() == expected
    for b in bufs:
        if isinstance(b, mmap.mmap):
            b.close()  # raises BufferError if still exported


# -- buffer lifetime -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["timeout", "nonblocking"])
def test_buffer_alive_until_completion(stalled: Callable[..., Pair], mode: str) -> None:
    s, r = stalled()
    if mode == "timeout":
        s.settimeout(5.0)
    else:
        s.setblocking(False)
    z = zerocopy.Socket(s, adaptive=False)
    buf = Buf(rand_bytes(64 * 1024, 1))
    expected = bytes(buf)
    h = z.sendall(buf)
    _need_zerocopy(z)
    assert z.stats.zerocopy_sends == 1 and z.stats.plain_sends == 0
    with pytest.raises(BufferError):
        buf.append(0)  # exported while in flight
    with pytest.raises(BufferError):
        del buf[:1]
    ref = weakref.ref(buf)
    del buf
    gc.collect()
    assert ref() is not None  # the Socket keeps it
    assert z.reap() == 0
    assert z.pending == 1 and z.pending_bytes == len(expected)
    assert not h.done()
    assert not z.flush(timeout=0.05)
    assert not h.wait(0.01)
    # the receiver reads: the kernel lets go, the Socket does too
    assert recv_exactly(r, len(FILLER) + len(expected)) == FILLER + expected
    assert z.flush(timeout=10)
    assert h.done() and h.wait(0)
    assert z.pending == 0 and z.pending_bytes == 0
    gc.collect()
    assert ref() is None
    st = z.stats
    assert st.completions == 1 and st.peak_pinned_bytes == len(expected)
    z.close()


def test_blocking_io_error_reports_progress(stalled: Callable[..., Pair]) -> None:
    s, r = stalled()
    s.setblocking(False)
    z = zerocopy.Socket(s, adaptive=False)
    data = bytearray(rand_bytes(4 * 1024 * 1024, 2))
    with pytest.raises(BlockingIOError) as ei:
        z.sendall(data)
    n = ei.value.characters_written
    assert 0 < n < len(data)
    assert ei.value.bytes_sent == n  # type: ignore[attr-defined]
    if z.stats.zerocopy_sends:
        assert z.pending == 1
        with pytest.raises(BufferError):
            data.append(0)
    got = recv_exactly(r, len(FILLER) + n)
    assert got == FILLER + data[:n]
    assert z.flush(timeout=10)
    assert z.pending == 0
    data.append(0)  # released: resizable again
    z.close()
    assert recv_to_eof(r, 0) == b""  # nothing beyond what was reported


def test_send_like_socket_send(make_pair: Callable[..., Pair]) -> None:
    s, r = make_pair("tcp4")
    z = zerocopy.Socket(s, adaptive=False)
    assert z.send(b"") == 0
    assert z.send(b"hello") == 5
    big = rand_bytes(100_000, 3)
    n = z.send(big)
    assert 0 < n <= len(big)
    assert recv_exactly(r, 5 + n) == b"hello" + big[:n]
    assert z.flush(timeout=10)
    z.close()


# -- policies ------------------------------------------------------------------


def test_copied_turns_zerocopy_off(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    s, r = make_pair("tcp4")
    col = collect(r)
    z = zerocopy.Socket(s)  # adaptive by default
    assert z.adaptive
    small = [rand_bytes(n, n) for n in (1, 100, THRESHOLD - 1)]
    for b in small:
        z.sendall(b)
    assert z.stats.zerocopy_sends == 0 and z.stats.plain_sends == 3
    big = rand_bytes(1024 * 1024, 4)
    z.sendall(big)
    _need_zerocopy(z)
    assert z.flush(timeout=10)
    st = z.stats
    assert st.completions >= 1
    assert st.copied_completions > 0  # loopback: always copied
    assert not z.zerocopy_active
    assert z.zerocopy_supported
    z.sendall(big)  # now plain
    st2 = z.stats
    assert st2.zerocopy_sends == st.zerocopy_sends
    assert st2.plain_sends > st.plain_sends
    assert z.pending == 0
    z.close()
    assert col.result() == b"".join(small) + big + big


def test_below_threshold_never_zerocopy(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    s, r = make_pair("tcp4")
    col = collect(r)
    z = zerocopy.Socket(s, zerocopy_threshold=1000, adaptive=False)
    sent = [rand_bytes(n, n) for n in (1, 10, 999, 500, 999)]
    for b in sent:
        h = z.sendall(b)
        assert h.done()
    st = z.stats
    assert st.zerocopy_sends == 0 and st.completions == 0
    assert st.plain_sends == len(sent)
    assert z.zerocopy_active and z.pending == 0 and st.peak_pinned_bytes == 0
    at = rand_bytes(1000, 1000)  # the threshold itself goes zero-copy
    z.sendall(at)
    st = z.stats
    assert st.zerocopy_sends + st.enobufs_fallbacks == 1
    assert z.flush(timeout=10)
    z.close()
    assert col.result() == b"".join(sent) + at


def test_max_pinned_nonblocking_sends_plain(stalled: Callable[..., Pair]) -> None:
    s, r = stalled()
    s.setblocking(False)
    bound, size = 48 * 1024, 20 * 1024
    z = zerocopy.Socket(s, max_pinned_bytes=bound, adaptive=False)
    bufs = [bytearray(rand_bytes(size, 100 + i)) for i in range(8)]
    for b in bufs:
        z.sendall(b)
        assert z.pending_bytes <= bound + size
    _need_zerocopy(z)
    st = z.stats
    assert st.zerocopy_sends >= 1
    assert st.plain_sends >= 1  # past the bound: plain, not waiting
    assert st.peak_pinned_bytes <= bound + size
    assert st.zerocopy_sends + st.plain_sends >= len(bufs)
    expected = FILLER + b"".join(bufs)
    assert recv_exactly(r, len(expected)) == expected
    assert z.flush(timeout=10)
    assert z.pending_bytes == 0
    z.close()


def test_max_pinned_blocking_waits(stalled: Callable[..., Pair]) -> None:
    s, r = stalled()
    s.settimeout(10.0)
    size = 64 * 1024
    z = zerocopy.Socket(s, max_pinned_bytes=size, adaptive=False)
    go = threading.Event()
    col = Collector(r, start=go, start_timeout=0.3)  # reads a little later
    try:
        bufs = [bytes(rand_bytes(size, 200 + i)) for i in range(3)]
        for b in bufs:
            z.sendall(b)  # waits for the previous buffer's completion
            assert z.pending_bytes <= size
        _need_zerocopy(z)
        st = z.stats
        assert st.plain_sends == 0
        assert st.zerocopy_sends + st.enobufs_fallbacks == len(bufs)
        assert st.peak_pinned_bytes == size
        assert z.flush(timeout=10)
        z.close()
        assert col.result() == FILLER + b"".join(bufs)
    finally:
        go.set()
        col.thread.join(1)


@pytest.mark.parametrize("timeout", [2.0, None], ids=["timeout", "blocking"])
def test_sendall_buffer_larger_than_pin_bound_does_not_wait_per_part(
    make_pair: Callable[..., Pair],
    collect: Callable[..., Collector],
    big_data: bytes,
    timeout: float | None,
) -> None:
    """Regression: past max_pinned_bytes each part waited out the timeout (blocking: forever)."""
    sender, receiver = make_pair("tcp4")
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # many partial sends
    sender.settimeout(timeout)
    c = collect(receiver)
    zs = zerocopy.Socket(sender, adaptive=False, max_pinned_bytes=64 * 1024)
    assert len(big_data) > zs.max_pinned_bytes
    call = Call(lambda: zs.sendall(big_data))
    # Correct: done in well under a second.  Broken: each partial send waits
    # the 2 s timeout (dozens of them), or forever on a blocking socket.
    call.value(20.0)
    assert zs.flush(5)
    eof(sender)
    assert c.result() == big_data


def test_sendall_buffer_larger_than_pin_bound_cut_short_by_a_signal(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector], big_data: bytes
) -> None:
    """Regression: a send cut short by a signal waited forever for pinned room for the rest."""
    # A blocking socket: a signal whose handler returns cuts the first send
    # short.  The rest of the buffer is already on loan and must still go; only
    # its own completion could free the room it waited for.
    sender, receiver = make_pair("tcp4", small=True)
    go = threading.Event()
    c = collect(receiver, start=go, start_timeout=DEADLINE)
    zs = zerocopy.Socket(sender, adaptive=False, max_pinned_bytes=64 * 1024)
    hits = [0]

    def handler(signum: int, frame: object) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        call = Call(lambda: zs.sendall(big_data))
        wait_until(lambda: outq(sender) > 0 or not call.thread.is_alive(), 10, pause=0.005)
        # The sender thread is now blocked inside its first send (the peer
        # does not read yet): interrupt that send, then let the peer drain.
        if call.thread.is_alive() and call.thread.ident is not None:
            signal.pthread_kill(call.thread.ident, signal.SIGUSR1)
        go.set()
        call.value(20.0)
    finally:
        go.set()
        signal.signal(signal.SIGUSR1, old)
    assert zs.flush(5)
    eof(sender)
    assert c.result() == big_data
    assert zs.stats.zerocopy_sends >= 2, "the send was not cut short: the test proved nothing"


def test_sendall_to_a_stalled_peer_times_out(make_pair: Callable[..., Pair]) -> None:
    """Regression: with a timeout, a sendall waiting for room on a peer that read a little
    and stalled spun at full CPU and never timed out: the completions of the parts the
    peer took kept POLLERR up, and each wake-up was taken for writability."""
    s, r = make_pair("tcp4", sndbuf=64 * 1024, rcvbuf=32 * 1024)
    s.settimeout(0.5)
    z = zerocopy.Socket(s, adaptive=False)
    data = rand_bytes(4 * 1024 * 1024, 21)
    taken = bytearray()
    returned = threading.Event()

    def peer() -> None:
        time.sleep(0.1)
        r.settimeout(1)
        while len(taken) < 128 * 1024:
            taken.extend(r.recv(64 * 1024))
        if not returned.wait(8):  # still in sendall: a reset ends it (and the test fails)
            reset(r)

    t = threading.Thread(target=peer, daemon=True)
    t.start()
    with pytest.raises(TimeoutError) as ei:
        try:
            z.sendall(data)
        finally:
            returned.set()
    t.join(DEADLINE)
    _need_zerocopy(z)
    sent = ei.value.bytes_sent  # type: ignore[attr-defined]
    assert len(taken) < sent < len(data)
    assert bytes(taken) == data[: len(taken)]
    z.close(timeout=0)  # resets the stalled connection: the buffers come back
    assert z.pending == 0


def test_max_sends_in_flight(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    s, r = make_pair("tcp4")
    col = collect(r)
    z = zerocopy.Socket(s, max_sends_in_flight=1, adaptive=False)
    bufs = [rand_bytes(32 * 1024, 300 + i) for i in range(20)]
    for b in bufs:
        z.sendall(b)  # blocking: waits for the one record to free up
        assert z.pending <= 1
    st = z.stats
    assert st.plain_sends == 0
    assert st.zerocopy_sends + st.enobufs_fallbacks == len(bufs)
    assert z.flush(timeout=10)
    z.close()
    assert col.result() == b"".join(bufs)


def test_peer_reset_releases_loans(stalled: Callable[..., Pair]) -> None:
    s, r = stalled()
    s.setblocking(False)
    z = zerocopy.Socket(s, adaptive=False)
    buf = Buf(rand_bytes(64 * 1024, 12))
    h = z.sendall(buf)
    _need_zerocopy(z)
    assert z.pending == 1
    reset(r)  # RST: the kernel drops the queued data and lets go of the buffer
    assert z.flush(timeout=5)
    assert h.done() and z.pending == 0
    buf.append(0)
    with pytest.raises(OSError):
        z.sendall(bytearray(64 * 1024))
    z.close()


# -- ENOBUFS for real, in a network namespace ------------------------------------


def test_enobufs_resends_plain_in_netns() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a network namespace")
    cmd = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    host_optmem = "/proc/sys/net/core/optmem_max"
    with open(host_optmem) as f:
        before = f.read()
    netns = os.stat("/proc/self/ns/net").st_ino
    try:
        proc = subprocess.run(
            [*cmd, sys.executable, CHILD, str(netns)],
            capture_output=True, text=True, timeout=25,
        )
    finally:
        with open(host_optmem) as f:
            after = f.read()
        if after != before:  # never leave the host changed
            with open(host_optmem, "w") as f:
                f.write(before)
            pytest.fail(f"the child changed the host's optmem_max ({before!r} -> {after!r})")
    if proc.returncode != 0 and proc.stderr.startswith("unshare:"):
        pytest.skip(f"cannot make a network namespace here: {proc.stderr.strip()}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child printed nothing (rc {proc.returncode}): {proc.stderr}"
    out = json.loads(lines[-1])
    if proc.returncode == 77:
        pytest.skip(out["skip"])
    assert proc.returncode == 0, proc.stderr
    assert out["intact"], out
    assert out["received"] == out["expected"]
    st = out["stats"]
    assert st["enobufs_fallbacks"] > 0, out
    assert st["pinned_bytes"] == 0 and out["pending"] == 0
    assert out["zerocopy_active"]  # ENOBUFS does not turn zero-copy off


# -- AF_UNIX: plain ------------------------------------------------------------


def test_unix_socketpair_plain(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    a, b = make_pair("unix")
    col = collect(b)
    z = zerocopy.Socket(a)
    assert not z.zerocopy_supported and not z.zerocopy_active
    assert isinstance(z.zerocopy_unsupported_reason, str)
    assert z.zerocopy_unsupported_reason
    bufs, expected = _buffers(9)
    for buf in bufs:
        h = z.sendall(buf)
        assert h.done() and h.wait(0)
    ba = bytearray(rand_bytes(2 * 1024 * 1024, 5))
    z.sendall(ba)
    ba.append(1)  # plain sends keep nothing exported
    st = z.stats
    assert st.zerocopy_sends == 0 and st.completions == 0 and st.enobufs_fallbacks == 0
    assert st.plain_sends >= len(bufs) + 1
    assert z.pending == 0 and z.reap() == 0 and z.flush(0)
    z.close()
    assert col.result() == expected + bytes(ba[:-1])
    for buf in bufs:
        if isinstance(buf, mmap.mmap):
            buf.close()


# -- close and GC with completions outstanding ---------------------------------


def test_close_with_completions_outstanding(stalled: Callable[..., Pair]) -> None:
    """A stalled peer at close(): after the timeout the connection is reset, so the
    kernel lets go of the buffer and it is released (it used to stay pinned forever)."""
    s, r = stalled()
    s.setblocking(False)
    z = zerocopy.Socket(s, adaptive=False)
    buf = Buf(rand_bytes(64 * 1024, 6))
    expected = bytes(buf)
    z.sendall(buf)
    _need_zerocopy(z)
    ref = weakref.ref(buf)
    del buf
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # nothing is kept forever
        z.close(timeout=0.1)
    assert s.fileno() == -1
    gc.collect()
    assert ref() is None  # released: the completion came after the reset
    z.close()  # twice is harmless
    with pytest.raises(OSError):
        z.sendall(b"x")
    # the receiver reads what had reached it, then the reset
    got = bytearray()
    r.settimeout(10)
    with pytest.raises(ConnectionResetError):
        while len(got) <= len(FILLER) + len(expected):
            b = r.recv(1 << 20)
            if not b:
                break
            got += b
    assert len(got) < len(FILLER) + len(expected)
    assert (FILLER + expected).startswith(got)


def test_gc_of_unclosed_socket_keeps_buffers(stalled: Callable[..., Pair]) -> None:
    s, r = stalled()
    s.setblocking(False)
    z = zerocopy.Socket(s, adaptive=False)
    buf = Buf(rand_bytes(64 * 1024, 8))
    expected = bytes(buf)
    h = z.sendall(buf)
    _need_zerocopy(z)
    ref = weakref.ref(buf)
    zref = weakref.ref(z)
    del buf, h
    with pytest.warns(ResourceWarning, match="on loan"):
        del z
        gc.collect()
    assert zref() is None
    gc.collect()
    assert ref() is not None
    assert recv_exactly(r, len(FILLER) + len(expected)) == FILLER + expected


def test_socket_forgets_fd_closed_behind_its_back() -> None:
    """Regression: a Socket whose socket was closed behind its back reaped the fd's next owner's."""
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(DEADLINE)
    addr = ls.getsockname()
    to_close: list[socket.socket] = [ls]
    zs1 = zs2 = None
    try:
        s1 = socket.create_connection(addr, timeout=DEADLINE)
        c1, _ = ls.accept()
        to_close += [s1, c1]
        # A stalled receiver, so zs1's zero-copy send is still queued
        # (its completion outstanding) when s1 is closed.
        c1.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s1.setblocking(False)
        for _ in range(10_000):
            try:
                s1.send(b"p" * 65536)
            except BlockingIOError:
                break
        s1.setblocking(True)
        s1.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        zs1 = zerocopy.Socket(s1, adaptive=False)
        s1.setblocking(False)
        buf1 = bytearray(b"A" * 65536)
        zs1.send(buf1)
        fd = s1.fileno()
        s1.close()  # behind zs1's back

        # A new zero-copy socket on the same fd number.
        s2 = None
        for _ in range(50):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            to_close.append(s)
            if s.fileno() == fd:
                s2 = s
                break
        assert s2 is not None, "could not get the closed fd number again"
        s2.settimeout(DEADLINE)
        s2.connect(addr)
        s2.settimeout(None)
        c2, _ = ls.accept()
        to_close.append(c2)
        zs2 = zerocopy.Socket(s2, adaptive=False)
        data = bytes(range(256)) * 1024  # 256 KiB
        zs2.sendall(data)
        assert recv_exactly(c2, len(data)) == data
        assert wait_pollerr(s2), "zs2's completions never arrived"

        # zs1 acts as closed: it takes nothing from fd's new owner.
        assert zs1.reap() == 0
        assert isinstance(zs1.flush(0.2), bool)
        assert zs2.flush(5) is True, "zs2's completions were taken by zs1"
        assert zs2.pending == 0
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            if zs2 is not None:
                zs2.close(0)
            if zs1 is not None:
                zs1.close(0)
        for s in to_close:
            s.close()


def test_socket_closed_while_sendall_waits_for_room_never_uses_a_reused_fd() -> None:
    """Regression: sendall waiting for pinned room on a closed socket sent on its fd's reuser."""
    # Another thread closes the socket while sendall waits; the fd number is
    # reused by a new connection at once.  sendall must notice and stop.
    ls = socket.create_server(("127.0.0.1", 0))
    ls2 = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(ls.getsockname())
    b, _ = ls.accept()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    zs = zerocopy.Socket(a, adaptive=False, max_pinned_bytes=1 << 20)
    if not zs.zerocopy_supported:
        pytest.skip(zs.zerocopy_unsupported_reason or "no zero-copy")
    zs.sendall(bytearray(1 << 20))  # stays on loan: b does not read yet
    if zs.pending == 0:
        pytest.skip("the kernel completed the first buffer at once")
    second = Call(lambda: zs.sendall(bytearray(1 << 20)))  # waits for room
    time.sleep(0.3)
    old = a.fileno()
    a.close()
    c = socket.create_connection(ls2.getsockname())
    d, _ = ls2.accept()
    try:
        if c.fileno() != old:
            pytest.skip("the fd number was not reused")

        def drain() -> None:
            b.settimeout(1)
            try:
                while b.recv(1 << 20):
                    pass
            except OSError:
                pass

        threading.Thread(target=drain, daemon=True).start()
        d.settimeout(1)
        try:
            stray = d.recv(1 << 20)
        except OSError:  # the timeout (socket.timeout on 3.9)
            stray = b""
        assert second.join(DEADLINE), "sendall still blocked on a closed socket"
        assert stray == b"", "bytes went out on the connection that reused the fd"
        assert isinstance(second.error, OSError), second.error or "sendall returned"
    finally:
        for s in (b, c, d, ls, ls2):
            s.close()


# -- threads -------------------------------------------------------------------


def test_concurrent_sendall_never_interleaves(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    s, r = make_pair("tcp4", small=True)  # small buffers: every large send blocks
    col = collect(r, chunk=16384)
    z = zerocopy.Socket(s, adaptive=False)
    head = struct.Struct("!cII")
    blocks: dict[tuple[bytes, int], bytes] = {}
    errors: list[BaseException] = []
    rng = random.Random(11)
    per_thread = 24
    for tag in (b"A", b"B"):
        for i in range(per_thread):
            n = rng.choice([rng.randint(1, THRESHOLD - 1), rng.randint(THRESHOLD, 400_000)])
            blocks[(tag, i)] = head.pack(tag, i, n) + rand_bytes(n, ord(tag) * 1000 + i)
    start = threading.Barrier(2, timeout=10)

    def sender(tag: bytes) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                z.sendall(blocks[(tag, i)])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=sender, args=(t,)) for t in (b"A", b"B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert z.flush(timeout=10)
    z.close()
    data = col.result()
    assert len(data) == sum(map(len, blocks.values()))
    pos, seen, order = 0, set(), {b"A": 0, b"B": 0}
    while pos < len(data):
        tag, i, n = head.unpack_from(data, pos)
        block = blocks.get((tag, i))
        assert block is not None, f"garbage header at {pos}"
        assert data[pos : pos + len(block)] == block, f"block {tag!r}{i} broken at {pos}"
        assert i == order[tag]  # each thread's blocks in its order
        order[tag] += 1
        seen.add((tag, i))
        pos += len(block)
    assert seen == set(blocks)


# -- delegation -----------------------------------------------------------------


def test_sendfile_all_and_cork_delegate(
    make_pair: Callable[..., Pair],
    collect: Callable[..., Collector],
    small_file: str,
    small_data: bytes,
) -> None:
    s, r = make_pair("tcp4")
    col = collect(r)
    z = zerocopy.Socket(s, adaptive=False)
    with open(small_file, "rb") as f:
        assert z.sendfile_all(f) == len(small_data)
        assert z.sendfile_all(f, 10, 1000) == 1000
    tail = rand_bytes(50_000, 9)
    with z.cork():
        z.sendall(b"header\r\n")
        z.sendall(tail)
    assert z.flush(timeout=10)
    z.close()
    assert col.result() == small_data + small_data[10:1010] + b"header\r\n" + tail


# -- errors ---------------------------------------------------------------------


def test_stats_fields() -> None:
    names = [f.name for f in dataclasses.fields(zerocopy.SocketStats)]
    assert names == [
        "zerocopy_sends", "plain_sends", "completions", "copied_completions",
        "enobufs_fallbacks", "pinned_bytes", "peak_pinned_bytes",
    ]


@pytest.mark.parametrize(
    "family", [socket.AF_INET, socket.AF_UNIX], ids=["udp", "unix-dgram"]
)
def test_datagram_socket_rejected(family: int) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as d:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            zerocopy.Socket(d)


@pytest.mark.parametrize(
    "bad", [0, 3, "sock", None, object()], ids=["0", "3", "'sock'", "None", "object()"]
)
def test_non_socket_rejected(bad: Any) -> None:
    with pytest.raises(TypeError):
        zerocopy.Socket(bad)


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"zerocopy_threshold": "16384"}, TypeError),
        ({"zerocopy_threshold": 16384.0}, TypeError),
        ({"zerocopy_threshold": None}, TypeError),
        ({"zerocopy_threshold": 0}, ValueError),
        ({"zerocopy_threshold": -1}, ValueError),
        ({"max_pinned_bytes": 1.5}, TypeError),
        ({"max_pinned_bytes": 0}, ValueError),
        ({"max_sends_in_flight": "4"}, TypeError),
        ({"max_sends_in_flight": 0}, ValueError),
    ],
)
def test_bad_arguments(make_pair: Callable[..., Pair], kw: dict[str, Any], exc: type) -> None:
    s, _ = make_pair("tcp4")
    with pytest.raises(exc):
        zerocopy.Socket(s, **kw)
    assert s.fileno() >= 0  # a rejected Socket leaves the socket alone


def test_closed_socket_and_bad_buffers(make_pair: Callable[..., Pair]) -> None:
    s, _ = make_pair("tcp4")
    z = zerocopy.Socket(s)
    with pytest.raises(TypeError):
        z.sendall("text")  # type: ignore[arg-type]
    assert z.pending == 0
    z.close()
    with pytest.raises(OSError):
        z.send(b"x")
    assert z.reap() == 0 and z.flush(0)
    s2, _ = make_pair("tcp4")
    s2.close()
    with pytest.raises(OSError):
        zerocopy.Socket(s2)


# -- issue 8: stalled peers, AF_UNIX peers, infinite timeouts ---------------------


def test_close_releases_buffers_of_stalled_clients(stalled: Callable[..., Pair]) -> None:
    """8.7: N stalled clients, each with a buffer on loan, then closed: every buffer is
    collected (300 such clients used to keep 301 MiB for the life of the process)."""
    refs: list[weakref.ref[Buf]] = []
    peers: list[socket.socket] = []
    for i in range(20):
        s, r = stalled()
        s.setblocking(False)
        z = zerocopy.Socket(s, adaptive=False)
        buf = Buf(rand_bytes(256 * 1024, 700 + i))
        z.sendall(buf)
        _need_zerocopy(z)
        assert z.pending == 1 and not z.flush(0)
        refs.append(weakref.ref(buf))
        del buf
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            z.close(timeout=0.02)
        assert z.pending == 0 and s.fileno() == -1
        peers.append(r)
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)
    for r in peers:
        r.settimeout(10)
        with pytest.raises(ConnectionResetError):
            while r.recv(1 << 20):
                pass


def test_close_waits_for_a_reading_peer(
    stalled: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    """No reset when the completions come within the timeout: every byte and EOF arrive."""
    s, r = stalled()
    z = zerocopy.Socket(s, adaptive=False)
    go = threading.Event()
    col = Collector(r, start=go, start_timeout=5)
    data = rand_bytes(1024 * 1024, 17)
    z.sendall(data)
    go.set()
    z.close(timeout=10)
    assert s.fileno() == -1
    assert col.result() == FILLER + data


@pytest.mark.parametrize("how", ["reap", "flush", "close", "with"])
def test_unix_peer_sent_data_and_closed(how: str) -> None:
    """8.4: AF_UNIX has no error queue: nothing raises, close() closes, and the peer's
    bytes are left for the socket's reader."""
    a, b = socket.socketpair()
    try:
        z = zerocopy.Socket(a)
        data = rand_bytes(100_000, 18)
        z.sendall(data)
        assert recv_exactly(b, len(data)) == data
        b.sendall(b"hello")
        b.close()
        if how == "reap":
            assert z.reap() == 0
            assert a.recv(10) == b"hello"
        elif how == "flush":
            assert z.flush(0) and z.flush(1.0)
            assert a.recv(10) == b"hello"
        elif how == "close":
            z.close()
            assert a.fileno() == -1
        else:
            with z:
                z.reap()
            assert a.fileno() == -1
        z.close()
        assert a.fileno() == -1
    finally:
        a.close()
        b.close()


def test_infinite_timeouts(
    make_pair: Callable[..., Pair], collect: Callable[..., Collector]
) -> None:
    """8.13: timeout=float("inf") means no timeout (it raised OverflowError)."""
    s, r = make_pair("tcp4")
    col = collect(r)
    z = zerocopy.Socket(s, adaptive=False)
    data = rand_bytes(512 * 1024, 19)
    h = z.sendall(data)
    assert h.wait(float("inf"))
    assert z.flush(float("inf"))
    z.sendall(data)
    z.close(timeout=float("inf"))
    assert s.fileno() == -1
    assert col.result() == data + data
    with pytest.raises(ValueError):
        z2 = zerocopy.Socket(make_pair("tcp4")[0])
        z2.flush(float("nan"))


# -- TLS: never plaintext under the session --------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        capture_output=True, timeout=60,
    )
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {proc.stderr[-200:]!r}")
    return cert, key


@pytest.mark.parametrize("mode", ["blocking", "timeout"])
def test_tls_socket_sends_through_the_tls_layer(tls_cert: tuple[str, str], mode: str) -> None:
    import ssl

    cert, key = tls_cert
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(10)
    data = [rand_bytes(n, 20 + n % 7) for n in (5, THRESHOLD, 1024 * 1024, 100_000)]
    got = bytearray()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with socket.create_connection(ls.getsockname(), timeout=10) as raw:
                with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c:
                    while True:
                        b = c.recv(1 << 20)
                        if not b:
                            break
                        got.extend(b)
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        raw, _ = ls.accept()
        raw.settimeout(10)
        tls = server_ctx.wrap_socket(raw, server_side=True)
        tls.settimeout(None if mode == "blocking" else 10.0)
        z = zerocopy.Socket(tls)
        assert not z.zerocopy_supported and not z.zerocopy_active
        assert "TLS" in (z.zerocopy_unsupported_reason or "")
        handles = [z.sendall(b) for b in data[:3]]
        assert all(h.done() for h in handles)
        rest = data[3]
        n = z.send(rest)
        assert 0 < n <= len(rest)
        z.sendall(rest[n:])
        assert z.flush(1) and z.pending == 0
        assert z.stats.zerocopy_sends == 0 and z.stats.plain_sends >= 4
        z.close()
        t.join(15)
    finally:
        ls.close()
    assert not errors, errors
    assert bytes(got) == b"".join(data)


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("how", ["keyboard interrupt", "nonblocking"])
def test_tls_errors_carry_the_bytes_the_client_got(how: str) -> None:
    """Regression: a TLS Socket sent through SSLSocket.sendall, whose errors carry no
    count (and OpenSSL takes a buffer all or nothing): Ctrl-C gave no bytes_sent, and a
    full non-blocking socket raised ssl.SSLWantWriteError instead of BlockingIOError."""
    from _zcutil import (
        KeyboardInterruptOnce,
        make_tls_cert,
        stall_tls_pair,
        tls_pair,
        tls_read_to_eof,
    )

    with tempfile.TemporaryDirectory() as d:
        cert = make_tls_cert(Path(d))
        if cert is None:
            pytest.skip("the openssl command is not installed")
        server, client = tls_pair(cert)
    stall_tls_pair(server, client)
    data = rand_bytes(2 * 1024 * 1024, 41)
    with server, client:
        z = zerocopy.Socket(server)
        if how == "nonblocking":
            server.setblocking(False)
            with pytest.raises(BlockingIOError) as ei:
                z.sendall(data)
            sent = ei.value.bytes_sent  # type: ignore[attr-defined]
            assert ei.value.characters_written == sent
            assert isinstance(ei.value, zerocopy.TransferError)
            # the rest of the same buffer continues the stream
            got = bytearray()
            client.settimeout(0.05)
            end = time.monotonic() + DEADLINE
            while sent < len(data) and time.monotonic() < end:
                try:
                    sent += z.send(data[sent:])
                except BlockingIOError as e:
                    assert e.bytes_sent == 0  # type: ignore[attr-defined]
                    try:  # (a record cut short waits in OpenSSL for the next send)
                        got += client.recv(1 << 20)
                    except socket.timeout:  # TimeoutError from Python 3.10 on
                        pass
            assert sent == len(data)
            server.setblocking(True)
            server.shutdown(socket.SHUT_WR)
            assert bytes(got) + tls_read_to_eof(client) == data
        else:
            old = signal.signal(signal.SIGALRM, KeyboardInterruptOnce())
            signal.setitimer(signal.ITIMER_REAL, 0.3, 0.01)
            try:
                with pytest.raises(KeyboardInterrupt) as ki:
                    z.sendall(data)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
            sent = ki.value.bytes_sent  # type: ignore[attr-defined]
            assert 0 < sent < len(data)
            server.shutdown(socket.SHUT_WR)
            assert tls_read_to_eof(client) == data[:sent]


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("how", ["keyboard interrupt", "peer closed"])
def test_plain_blocking_send_errors_carry_the_count(how: str) -> None:
    """Regression: a blocking socket without zero-copy (AF_UNIX) sent through
    socket.sendall, whose errors carry no count: Ctrl-C gave no bytes_sent, a closed peer
    a plain BrokenPipeError.  Every error must be a TransferError with bytes_sent."""
    s, r = socket.socketpair()
    with s, r:
        z = zerocopy.Socket(s)
        assert not z.zerocopy_supported
        data = rand_bytes(8 * 1024 * 1024, 42)
        if how == "peer closed":
            r.close()
            with pytest.raises(BrokenPipeError) as ei:
                z.sendall(data)
            assert isinstance(ei.value, zerocopy.TransferError)
            assert ei.value.bytes_sent == 0  # type: ignore[attr-defined]
            return
        old = signal.signal(signal.SIGALRM, raise_keyboard_interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        try:
            with pytest.raises(KeyboardInterrupt) as ki:
                z.sendall(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        sent = ki.value.bytes_sent  # type: ignore[attr-defined]
        assert 0 < sent < len(data)
        s.shutdown(socket.SHUT_WR)
        assert recv_to_eof(r) == data[:sent]


@pytest.mark.timeout(60, method="thread")
def test_close_cut_short_by_a_signal_keeps_the_loan(stalled: Callable[..., Pair]) -> None:
    """Regression (review): a handler that raised while close() waited for completions
    left the loans with the Socket object, which could be collected while the kernel
    still read the buffer; they are kept for the life of the process instead."""
    s, r = stalled()
    s.setblocking(False)
    z = zerocopy.Socket(s, adaptive=False)
    buf = Buf(rand_bytes(256 * 1024, 901))
    z.sendall(buf)
    _need_zerocopy(z)
    ref = weakref.ref(buf)
    del buf
    with itimer(raise_keyboard_interrupt, 0.2), pytest.raises(KeyboardInterrupt):
        with pytest.warns(ResourceWarning):
            z.close(timeout=5)
    assert s.fileno() == -1  # closed all the same
    del z
    gc.collect()
    assert ref() is not None
    r.close()
