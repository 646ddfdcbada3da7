"""Regression tests for bugs found in review (reproductions in the review notes).

Each test states the correct behaviour.  Calls that hung when broken run in a
helper thread joined with a deadline, so a regression fails the test instead
of hanging the run; nothing here asserts a duration.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import re
import select
import signal
import socket
import struct
import termios
import threading
import time
import warnings
import zipfile
from typing import Any, Callable

import pytest
from _zcutil import DEADLINE, eof, recv_exactly

import zerocopy
from zerocopy.commands import send_main

# --------------------------------------------------------------------------- helpers


class _Call:
    """Run fn() in a daemon thread; .join(deadline) says whether it finished."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as e:  # reported to the test
            self.error = e

    def join(self, deadline: float) -> bool:
        self.thread.join(deadline)
        return not self.thread.is_alive()

    def value(self, deadline: float) -> Any:
        assert self.join(deadline), f"the call did not finish within {deadline} s (hung)"
        if self.error is not None:
            raise self.error
        return self.result


def _cork_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


def _wait_pollerr(sock: socket.socket, deadline: float = 5.0) -> bool:
    """Wait (bounded) until the socket's error queue has something (POLLERR)."""
    p = select.poll()
    p.register(sock.fileno(), 0)  # POLLERR is always reported
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if any(ev & select.POLLERR for _, ev in p.poll(50)):
            return True
    return False


def _tiny_file(tmp_path, data: bytes = b"0123456789") -> str:
    p = tmp_path / "tiny.bin"
    p.write_bytes(data)
    return str(p)


# ---------------------------------------------- 1. one buffer > max_pinned_bytes


def _outq(sock: socket.socket) -> int:
    """Bytes in the socket's send queue (SIOCOUTQ == TIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


@pytest.mark.parametrize("timeout", [2.0, None], ids=["timeout", "blocking"])
def test_sendall_buffer_larger_than_pin_bound_does_not_wait_per_part(
    make_pair, collect, big_data: bytes, timeout: float | None
) -> None:
    sender, receiver = make_pair("tcp4")
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # many partial sends
    sender.settimeout(timeout)
    c = collect(receiver)
    zs = zerocopy.Socket(sender, adaptive=False, max_pinned_bytes=64 * 1024)
    assert len(big_data) > zs.max_pinned_bytes
    call = _Call(lambda: zs.sendall(big_data))
    # Correct: done in well under a second.  Broken: each partial send waits
    # the 2 s timeout (dozens of them), or forever on a blocking socket.
    call.value(20.0)
    assert zs.flush(5)
    eof(sender)
    assert c.result() == big_data


def test_sendall_buffer_larger_than_pin_bound_cut_short_by_a_signal(
    make_pair, collect, big_data: bytes
) -> None:
    """A blocking socket: a signal whose handler returns cuts the first send short.

    The rest of the buffer (already on loan) must still go; it used to wait
    forever for pinned-bytes room that only its own completion could free.
    """
    sender, receiver = make_pair("tcp4", small=True)
    go = threading.Event()
    c = collect(receiver, start=go, start_timeout=DEADLINE)
    zs = zerocopy.Socket(sender, adaptive=False, max_pinned_bytes=64 * 1024)
    hits = [0]

    def handler(signum, frame) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        call = _Call(lambda: zs.sendall(big_data))
        end = time.monotonic() + 10
        while _outq(sender) == 0 and time.monotonic() < end and call.thread.is_alive():
            time.sleep(0.005)
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


# ---------------------------------------------- 2. the wrapped socket closed behind Socket's back


def test_socket_forgets_fd_closed_behind_its_back() -> None:
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
        assert _wait_pollerr(s2), "zs2's completions never arrived"

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


# ---------------------------------------------- 4. EAGAIN from a buffered pipe is not EOF


@pytest.mark.parametrize("count", [None, 5])
def test_nonblocking_buffered_pipe_eagain_is_not_eof(make_pair, count: int | None) -> None:
    a, b = make_pair("unix")
    r, w = os.pipe()
    os.set_blocking(r, False)
    f = open(r, "rb")
    try:
        call = _Call(lambda: zerocopy.sendfile_all(a, f, count=count))
        early = call.join(1.0)  # the writer has written nothing yet
        os.write(w, b"hello")
        os.close(w)
        w = -1
        assert call.join(20.0), "sendfile_all did not finish after the writer closed"
        if call.error is not None:
            # Raising BlockingIOError is right; EOF (TruncatedFileError) is not.
            assert isinstance(call.error, BlockingIOError), repr(call.error)
            assert not isinstance(call.error, zerocopy.TruncatedFileError)
            return
        assert not early or call.result != 0, "reported EOF while the writer was open"
        assert call.result == 5, call.result
        assert recv_exactly(b, 5) == b"hello"
    finally:
        if w >= 0:
            os.close(w)
        f.close()


# ---------------------------------------------- 7. FileSender uncorks when send_all fails


@pytest.mark.parametrize("kind", ["tcp4", "tcp6"])
def test_filesender_uncorks_after_timeout(make_pair, big_file: str, kind: str) -> None:
    sender, _receiver = make_pair(kind, small=True)  # the receiver never reads
    sender.settimeout(0.3)
    with open(big_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, headers=b"H" * 100, trailers=b"T" * 10)
        try:
            with pytest.raises(TimeoutError):
                fs.send_all()
            assert _cork_of(sender) == 0, "TCP_CORK left set after TimeoutError"
        finally:
            fs.close()


@pytest.mark.timeout(60, method="thread")
def test_filesender_uncorks_after_keyboard_interrupt(make_pair, collect, big_file: str) -> None:
    sender, receiver = make_pair("tcp4", small=True)
    # Escape hatch: if the interrupt is lost, the receiver drains after 20 s,
    # send_all completes, and the test fails instead of hanging.
    go = threading.Event()
    collect(receiver, start=go, start_timeout=20)

    def raiser(signum, frame) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, raiser)
    f = open(big_file, "rb")
    fs = zerocopy.FileSender(sender, f, headers=b"H" * 100, trailers=b"T")
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            fs.send_all()
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert _cork_of(sender) == 0, "TCP_CORK left set after KeyboardInterrupt"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        go.set()
        fs.close()
        f.close()


# ---------------------------------------------- 9. huge socket timeouts


def _huge_sendfile_all(a, b, path, data):
    with open(path, "rb") as f:
        assert zerocopy.sendfile_all(a, f) == len(data)
    assert recv_exactly(b, len(data)) == data


def _huge_filesender(a, b, path, data):
    with open(path, "rb") as f, zerocopy.FileSender(a, f, headers=b"H:") as fs:
        assert fs.send_all() == len(data) + 2
    assert recv_exactly(b, len(data) + 2) == b"H:" + data


def _huge_recvfile(a, b, path, data):
    b.sendall(data)
    eof(b)
    out = path + ".out"
    with open(out, "wb") as f:
        assert zerocopy.recvfile(a, f, count=len(data)) == len(data)
    with open(out, "rb") as f:
        assert f.read() == data


def _huge_splice_to_socket(a, b, path, data):
    with open(path, "rb") as f:
        assert zerocopy.splice_all(f, a) == len(data)
    assert recv_exactly(b, len(data)) == data


def _huge_splice_from_socket(a, b, path, data):
    b.sendall(data)
    eof(b)
    out = path + ".out"
    with open(out, "wb") as f:
        assert zerocopy.splice_all(a, f) == len(data)
    with open(out, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize(
    "op",
    [_huge_sendfile_all, _huge_filesender, _huge_recvfile, _huge_splice_to_socket,
     _huge_splice_from_socket],
    ids=["sendfile_all", "FileSender", "recvfile", "splice_to_socket", "splice_from_socket"],
)
@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_huge_socket_timeout(make_pair, tmp_path, op, kind: str) -> None:
    a, b = make_pair(kind)
    a.settimeout(1e7)  # ~116 days: more milliseconds than a C int holds
    data = b"x0123456789" * 10
    path = _tiny_file(tmp_path, data)
    op(a, b, path, data)


# ---------------------------------------------- 10. binary mode check


def _gzip_bytesio(tmp_path, payload: bytes) -> Any:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as g:
        g.write(payload)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _gzip_on_disk(tmp_path, payload: bytes) -> Any:
    # Has a real fileno() -- of the *compressed* file: it must not be sendfile'd.
    p = tmp_path / "p.gz"
    with gzip.open(p, "wb") as g:
        g.write(payload)
    return gzip.open(p, "rb")


def _zip_member(tmp_path, payload: bytes) -> Any:
    p = tmp_path / "p.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("member", payload)
    return zipfile.ZipFile(p).open("member")


@pytest.mark.parametrize(
    "opener", [_gzip_bytesio, _gzip_on_disk, _zip_member],
    ids=["gzip_bytesio", "gzip_on_disk", "zip_member"],
)
def test_binary_objects_without_b_in_mode(make_pair, collect, tmp_path, opener) -> None:
    a, b = make_pair("unix")
    payload = bytes(range(256)) * 400  # 100 KiB, compressible
    c = collect(b)
    f = opener(tmp_path, payload)
    try:
        n = zerocopy.sendfile_all(a, f)
    finally:
        f.close()
    eof(a)
    assert c.result() == payload
    assert n == len(payload)


def test_text_file_still_rejected(make_pair, tmp_path) -> None:
    a, _ = make_pair("unix")
    with open(_tiny_file(tmp_path), "r") as f:  # noqa: UP015 - the mode is the point
        with pytest.raises(ValueError, match="binary mode"):
            zerocopy.sendfile_all(a, f)


# ---------------------------------------------- 11. a socket as the source


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_socket_object_as_source(make_pair, collect, small_data: bytes, kind: str) -> None:
    feeder, src = make_pair(kind)
    dst, receiver = make_pair(kind)
    count = len(small_data) - 1000
    feed = _Call(lambda: feeder.sendall(small_data))
    c = collect(receiver)
    n = _Call(lambda: zerocopy.sendfile_all(dst, src, count=count)).value(DEADLINE)
    assert n == count
    eof(dst)
    assert c.result() == small_data[:count]
    feed.value(DEADLINE)
    # The rest is still in the source socket, untouched.
    assert recv_exactly(src, 1000) == small_data[count:]


# ---------------------------------------------- 12. range limits


@pytest.mark.parametrize(
    "offset,count",
    [(None, 2**64 - 1), (None, 2**64), (2**63, None), (2**63 - 5, 10), (0, 2**64 - 1),
     (0, 2**64), (2**63, 1)],
)
@pytest.mark.parametrize("file_kind", ["fd", "fileobj"])
@pytest.mark.parametrize("sock_kind", ["socket", "fd"])
def test_out_of_range_offset_and_count(
    make_pair, tmp_path, offset: int | None, count: int | None, file_kind: str, sock_kind: str
) -> None:
    a, b = make_pair("unix")
    sock: Any = a if sock_kind == "socket" else a.fileno()
    with open(_tiny_file(tmp_path), "rb") as f:
        src: Any = f if file_kind == "fileobj" else f.fileno()
        with pytest.raises(ValueError):
            zerocopy.sendfile_all(sock, src, offset=offset, count=count)
    # Nothing went out (and certainly not the file "to EOF").
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(100)


# ---------------------------------------------- 13. `send` reports what went out


def test_send_command_failure_counts_the_current_chunk(tmp_path) -> None:
    size = 7 * 1024 * 1024  # one chunk (< commands.CHUNK), far more than the buffers hold
    assert size < zerocopy.commands.CHUNK
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * (size // 256))
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(DEADLINE)
    got = [0]
    want = 200_000

    def receiver() -> None:
        conn, _ = ls.accept()
        try:
            got[0] = len(recv_exactly(conn, want))
            # Close with unread data (and linger 0): the sender gets a reset.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            conn.close()

    rx = _Call(receiver)
    err = io.StringIO()
    try:
        rc = send_main(["--timeout", "10", str(path), f"127.0.0.1:{ls.getsockname()[1]}"],
                       stderr=err)
        rx.value(DEADLINE)
    finally:
        ls.close()
    text = err.getvalue()
    assert rc == 1, text
    m = re.search(r"failed after (\d+) bytes", text)
    assert m, text
    reported = int(m.group(1))
    assert got[0] == want
    assert want <= reported <= size, f"reported {reported}, the receiver got {want}: {text}"


# ---------------------------------------------- 14. FileSender and io.BytesIO positions


@pytest.mark.parametrize(
    "seek,offset,count", [(100, None, 1000), (0, 100, 1000), (100, None, None), (7, 50, None)]
)
@pytest.mark.parametrize("source", ["bytesio", "file"])
def test_filesender_position_rule(
    make_pair, collect, tmp_path, small_data: bytes, seek: int, offset: int | None,
    count: int | None, source: str
) -> None:
    data = small_data[:20_000]
    a, b = make_pair("unix")
    if source == "bytesio":
        f: Any = io.BytesIO(data)
    else:
        f = open(_tiny_file(tmp_path, data), "rb")
    try:
        f.seek(seek)
        start = seek if offset is None else offset
        end = len(data) if count is None else start + count
        c = collect(b)
        fs = zerocopy.FileSender(a, f, offset=offset, count=count)
        try:
            # Nothing is sent yet: the position is where it was, or the range's
            # start (a real file keeps its position until the first step; the
            # docs only promise start + bytes sent after each step).  Never
            # past bytes that did not go out.
            assert f.tell() in (seek, start), "the position moved before anything was sent"
            if offset is None:
                assert f.tell() == start
            fs.send_all()
        finally:
            fs.close()
        assert f.tell() == end
        eof(a)
        assert c.result() == data[start:end]
    finally:
        f.close()


def test_filesender_waits_for_a_non_blocking_buffered_source() -> None:
    """A FileSender over a non-blocking pipe whose writer is still open neither
    cuts the body short (read() returning None is not EOF) nor fails."""
    a, b = socket.socketpair()
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"x" * 1000)

    def finish_writing() -> None:
        time.sleep(0.2)
        os.write(w, b"y" * 10)
        os.close(w)

    writer = threading.Thread(target=finish_writing)
    writer.start()
    try:
        with open(r, "rb") as f, zerocopy.FileSender(a, f, headers=b"H") as fs:
            fs.send_all()
            assert fs.sent == fs.total == 1011
        a.shutdown(socket.SHUT_WR)
        got = b""
        b.settimeout(5)
        while True:
            chunk = b.recv(4096)
            if not chunk:
                break
            got += chunk
        assert got == b"H" + b"x" * 1000 + b"y" * 10
    finally:
        writer.join(5)
        a.close()
        b.close()


def test_socket_closed_while_sendall_waits_for_room_never_uses_a_reused_fd() -> None:
    """sendall waiting for pinned room must notice its socket was closed by another
    thread (the fd number reused by a new connection) and stop, sending nothing there."""
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
    result: list[BaseException | str] = []

    def second() -> None:
        try:
            zs.sendall(bytearray(1 << 20))  # waits for room
            result.append("returned")
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=second, daemon=True)
    t.start()
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
        t.join(DEADLINE)
        assert not t.is_alive(), "sendall still blocked on a closed socket"
        assert stray == b"", "bytes went out on the connection that reused the fd"
        assert len(result) == 1 and isinstance(result[0], OSError)
    finally:
        for s in (b, c, d, ls, ls2):
            s.close()
