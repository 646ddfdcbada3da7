"""recvfile, splice_all and the pipe pool: every transfer's bytes are compared."""

from __future__ import annotations

import errno
import gc
import io
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _zcutil import (
    DEADLINE,
    Call,
    Collector,
    LibHook,
    Ticker,
    eof,
    fd_count,
    feed,
    itimer,
    make_file,
    raise_keyboard_interrupt,
    rand_bytes,
    recv_exactly,
    recv_to_eof,
)

from zerocopy import TruncatedFileError
from zerocopy._native import ffi, lib
from zerocopy.splice import PipePool, default_pool, recvfile, splice_all

# --------------------------------------------------------------------------- recvfile


def test_recvfile_to_eof(pair, big_data: bytes, tmp_path) -> None:
    sender, receiver = pair
    t = feed(sender, big_data)
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        f.write(b"HEAD")
        n = recvfile(receiver, f)
        assert f.tell() == 4 + len(big_data)
    t.join(DEADLINE)
    assert n == len(big_data)
    assert path.read_bytes() == b"HEAD" + big_data


@pytest.mark.parametrize("flavour", ["fileobj", "fd"])
def test_recvfile_at_offset(make_pair, small_data: bytes, tmp_path, flavour: str) -> None:
    sender, receiver = make_pair("tcp4")
    path = tmp_path / "out.bin"
    path.write_bytes(b"x" * 10_000)
    t = feed(sender, small_data)
    with open(path, "r+b") as f:
        f.seek(123)
        if flavour == "fileobj":
            n = recvfile(receiver, f, offset=5000)
            assert f.tell() == 5000 + len(small_data)  # start + bytes received
        else:
            n = recvfile(receiver, f.fileno(), offset=5000)
            assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == 123  # untouched
    t.join(DEADLINE)
    assert n == len(small_data)
    assert path.read_bytes() == b"x" * 5000 + small_data


def test_recvfile_fd_position_advances(make_pair, small_data: bytes, tmp_path) -> None:
    sender, receiver = make_pair("unix")
    t = feed(sender, small_data)
    fd = os.open(tmp_path / "o", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"ab")
        assert recvfile(receiver, fd) == len(small_data)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 2 + len(small_data)
    finally:
        os.close(fd)
    t.join(DEADLINE)
    assert (tmp_path / "o").read_bytes() == b"ab" + small_data


def test_recvfile_exact_count_leaves_the_rest(pair, small_data: bytes, tmp_path) -> None:
    sender, receiver = pair
    t = feed(sender, small_data)
    with open(tmp_path / "o", "wb") as f:
        assert recvfile(receiver, f, count=100_000) == 100_000
    assert (tmp_path / "o").read_bytes() == small_data[:100_000]
    assert recv_exactly(receiver, len(small_data) - 100_000) == small_data[100_000:]
    t.join(DEADLINE)


@pytest.mark.parametrize("flavour", ["fileobj", "fd", "bytesio"])
def test_recvfile_peer_sends_less_than_count(pair, small_data: bytes, tmp_path, flavour) -> None:
    sender, receiver = pair
    t = feed(sender, small_data)
    path = tmp_path / "o"
    with open(path, "w+b") as f:
        target = {"fileobj": f, "fd": f.fileno(), "bytesio": io.BytesIO()}[flavour]
        with pytest.raises(TruncatedFileError) as ei:
            recvfile(receiver, target, count=len(small_data) + 1)
        assert ei.value.bytes_received == len(small_data)  # type: ignore[attr-defined]
        if flavour == "bytesio":
            assert target.getvalue() == small_data  # type: ignore[union-attr]
            assert target.tell() == len(small_data)  # type: ignore[union-attr]
        else:
            assert os.pread(f.fileno(), len(small_data) + 10, 0) == small_data
        if flavour == "fileobj":
            assert f.tell() == len(small_data)
    t.join(DEADLINE)


def test_recvfile_bytesio_and_append_mode(make_pair, small_data: bytes, tmp_path) -> None:
    sender, receiver = make_pair("tcp4")
    t = feed(sender, small_data)
    buf = io.BytesIO(b"0123456789")
    assert recvfile(receiver, buf, offset=4) == len(small_data)
    assert buf.getvalue() == b"0123" + small_data
    assert buf.tell() == 4 + len(small_data)
    t.join(DEADLINE)

    sender, receiver = make_pair("unix")
    path = tmp_path / "log"
    path.write_bytes(b"old")
    t = feed(sender, small_data)
    with open(path, "ab") as f:  # O_APPEND: splice refuses it, copied instead
        assert recvfile(receiver, f) == len(small_data)
    t.join(DEADLINE)
    assert path.read_bytes() == b"old" + small_data


def test_recvfile_to_a_pipe(make_pair, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    r, w = os.pipe()
    reader = Call(lambda: recv_to_eof(r))
    t = feed(sender, small_data)
    try:
        assert recvfile(receiver, w) == len(small_data)
    finally:
        os.close(w)
    try:
        got = reader.value(DEADLINE)
    finally:
        os.close(r)
    t.join(DEADLINE)
    assert got == small_data


def test_recvfile_would_block_and_timeout(make_pair, tmp_path) -> None:
    sender, receiver = make_pair("tcp4")
    with open(tmp_path / "o", "wb") as f:
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError) as ei:
            recvfile(receiver, f)
        assert ei.value.bytes_received == 0  # type: ignore[attr-defined]
        sender.sendall(b"abc")
        receiver.settimeout(0.2)
        with pytest.raises(TimeoutError) as et:
            recvfile(receiver, f, count=10)
        assert et.value.bytes_received == 3  # type: ignore[attr-defined]
        assert f.tell() == 3
        sender.sendall(b"defghij")  # resume after the timeout: nothing was lost
        assert recvfile(receiver, f, count=7) == 7
    assert (tmp_path / "o").read_bytes() == b"abcdefghij"


def test_recvfile_argument_errors(make_pair, tmp_path) -> None:
    _, receiver = make_pair("tcp4")
    path = tmp_path / "o"
    path.write_bytes(b"")
    with open(path, "w") as text, pytest.raises(ValueError, match="binary mode"):
        recvfile(receiver, text)
    with open(path, "rb") as ro, pytest.raises(io.UnsupportedOperation):
        recvfile(receiver, ro)
    with open(path, "wb") as f:
        with pytest.raises(TypeError):
            recvfile(receiver, f, count=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            recvfile(receiver, f, count=-1)
        with pytest.raises(TypeError):
            recvfile("sock", f)  # type: ignore[arg-type]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                recvfile(udp, f)
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                recvfile(udp.fileno(), f)


# --------------------------------------------------------------------------- splice_all


def test_splice_all_socket_to_socket_through_the_pool(make_pair, big_data: bytes, collect) -> None:
    a_send, a_recv = make_pair("tcp4")
    b_send, b_recv = make_pair("unix")
    c = collect(b_recv)
    t = feed(a_send, big_data)
    assert splice_all(a_recv, b_send) == len(big_data)
    b_send.shutdown(socket.SHUT_WR)
    t.join(DEADLINE)
    assert c.result() == big_data


def test_splice_all_file_to_socket_and_back(
    make_pair, big_file: str, big_data: bytes, tmp_path
) -> None:
    sender, receiver = make_pair("tcp4")
    out = tmp_path / "copy"

    def receive() -> int:
        with open(out, "wb") as f:
            return recvfile(receiver, f)

    received = Call(receive)
    with open(big_file, "rb") as f:
        f.seek(1000)
        assert splice_all(f, sender, count=2_000_000) == 2_000_000
        assert f.tell() == 2_001_000  # the file object's position moved
    sender.shutdown(socket.SHUT_WR)
    assert received.value(DEADLINE) == 2_000_000
    assert out.read_bytes() == big_data[1000:2_001_000]


def test_splice_all_pipes_and_files(small_file: str, small_data: bytes, tmp_path) -> None:
    r, w = os.pipe()
    fd = os.open(small_file, os.O_RDONLY)
    try:
        writer = threading.Thread(target=lambda: (splice_all(fd, w), os.close(w)), daemon=True)
        writer.start()
        with open(tmp_path / "o", "wb") as out:
            assert splice_all(r, out) == len(small_data)
        writer.join(DEADLINE)
    finally:
        os.close(r)
        os.close(fd)
    assert (tmp_path / "o").read_bytes() == small_data
    # file -> file through the pool, and a source shorter than count
    with open(small_file, "rb") as src, open(tmp_path / "p", "wb") as dst:
        with pytest.raises(TruncatedFileError) as ei:
            splice_all(src, dst, count=len(small_data) + 5)
        assert ei.value.bytes_sent == len(small_data)  # type: ignore[attr-defined]
    assert (tmp_path / "p").read_bytes() == small_data


def test_splice_all_argument_errors() -> None:
    with pytest.raises(TypeError):
        splice_all(object(), 1)
    with pytest.raises(ValueError):
        splice_all(-1, 1)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError):
            splice_all(r, w, count=-3)
    finally:
        os.close(r)
        os.close(w)


# --------------------------------------------------------------------------- the pool


def test_pool_reuses_empty_pipes_and_drops_dirty_ones(make_pair, small_data: bytes) -> None:
    pool = PipePool(max_idle=2)
    try:
        p = pool.take()
        assert p.buffered == 0 and p.size > 0
        rfd = p.rfd
        pool.give(p)
        q = pool.take()
        assert q.rfd == rfd and pool.stats()["reused"] == 1
        os.write(q.wfd, b"left over")
        q.buffered = 9
        pool.give(q)  # holds data: closed, never reused
        with pytest.raises(OSError):
            os.fstat(rfd)
        assert pool.stats()["discarded"] == 1
    finally:
        pool.close()


def test_pool_when_pipes_cannot_grow(small_data: bytes) -> None:
    """F_SETPIPE_SZ fails for an unprivileged process asking above pipe-max-size.

    A forked child drops root (CAP_SYS_RESOURCE ignores the limit), asks for
    pipes 4x larger than allowed, and must still move every byte through the
    smaller default pipes.
    """
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            limit = int(f.read())
    except OSError:
        pytest.skip("no /proc/sys/fs/pipe-max-size")
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(status_r)
            if os.geteuid() == 0:
                try:
                    os.setgroups([])
                    os.setresgid(65534, 65534, 65534)
                    os.setresuid(65534, 65534, 65534)
                except OSError:
                    code = 77
                    raise
            pool = PipePool(pipe_size=limit * 4, max_idle=1)
            n = len(small_data)
            for _ in range(3):
                a, b = socket.socketpair()
                c, d = socket.socketpair()
                got = bytearray()
                threads = [
                    threading.Thread(target=a.sendall, args=(small_data,)),
                    threading.Thread(target=lambda d=d, got=got: got.extend(recv_exactly(d, n))),
                ]
                for t in threads:
                    t.start()
                via = pool.take()  # socket -> pooled pipe -> socket
                assert via.size < limit * 4
                moved = ffi.new("uint64_t[1]")
                rc = lib.zc_splice(b.fileno(), ffi.NULL, c.fileno(), ffi.NULL, n, via, -1, moved)
                pool.give(via)
                for t in threads:
                    t.join()
                assert rc == 0 and moved[0] == n, (rc, moved[0])
                assert bytes(got) == small_data
                for s in (a, b, c, d):
                    s.close()
            st = pool.stats()
            assert st["small"] == 1 and st["created"] == 1 and st["reused"] == 2, st
            code = 0
        except BaseException as e:
            os.write(2, f"child: {e!r}\n".encode())
        finally:
            os.write(status_w, bytes([code]))
            os._exit(code)
    os.close(status_w)
    _, status = os.waitpid(pid, 0)
    code = os.read(status_r, 1)
    os.close(status_r)
    if code == bytes([77]):
        pytest.skip("cannot drop root to uid 65534 to make F_SETPIPE_SZ fail")
    assert os.waitstatus_to_exitcode(status) == 0


# --------------------------------------------------------------------------- leaks, signals


def test_no_fd_leaks_over_thousands_of_transfers(tmp_path) -> None:
    path = tmp_path / "o"
    path.write_bytes(b"")
    ro = os.open(path, os.O_RDONLY)
    rw = os.open(path, os.O_RDWR)
    try:
        a, b = socket.socketpair()
        a.sendall(b"warm")
        a.close()
        recvfile(b, rw)  # the default pool now holds its pipe
        b.close()
        gc.collect()  # sockets and pools of earlier tests
        before = fd_count() - 2 * default_pool().idle
        created = default_pool().stats()["created"]
        failures = 0
        for i in range(3000):
            a, b = socket.socketpair()
            try:
                a.sendall(bytes([i % 256]) * (1 + i % 700))
                a.shutdown(socket.SHUT_WR)
                kind = i % 4
                try:
                    if kind == 0:
                        recvfile(b, rw, offset=0)
                    elif kind == 1:
                        recvfile(b, rw, count=10_000)  # short: TruncatedFileError
                    elif kind == 2:
                        recvfile(b, ro)  # not writable: EBADF with data in the pipe
                    else:
                        splice_all(b, rw, count=1 + i % 700)
                except OSError:
                    failures += 1
            finally:
                a.close()
                b.close()
        assert failures == 1500
        assert fd_count() - 2 * default_pool().idle == before
        # clean pipes are reused; each failure with bytes in its pipe costs one
        assert default_pool().stats()["created"] - created <= 750 + 1
    finally:
        os.close(ro)
        os.close(rw)


@pytest.mark.timeout(60, method="thread")
def test_signal_handler_that_returns_resumes_recvfile(
    make_pair, small_data: bytes, tmp_path
) -> None:
    sender, receiver = make_pair("tcp4")
    ticks = [0]

    def handler(signum, frame) -> None:
        ticks[0] += 1

    # The data arrives only after several timer ticks: the call is blocked then.
    t = feed(sender, small_data, delay=0.5)
    with itimer(handler, 0.05, 0.05), open(tmp_path / "o", "wb") as f:
        n = recvfile(receiver, f)
    t.join(DEADLINE)
    assert n == len(small_data)
    assert ticks[0] > 0
    assert (tmp_path / "o").read_bytes() == small_data


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_keyboard_interrupt_while_recvfile_blocked(make_pair, tmp_path, kind: str) -> None:
    sender, receiver = make_pair(kind)
    sender.sendall(b"early bytes")
    with open(tmp_path / "o", "wb") as f:
        with itimer(raise_keyboard_interrupt, 0.3), pytest.raises(KeyboardInterrupt) as ei:
            recvfile(receiver, f)
        assert f.tell() == 11
    assert ei.value.bytes_received == 11  # type: ignore[attr-defined]
    assert (tmp_path / "o").read_bytes() == b"early bytes"


def test_gil_released_while_recvfile_waits(make_pair, small_data: bytes, tmp_path) -> None:
    sender, receiver = make_pair("tcp4")
    with Ticker() as ticker:

        def send_when_counted() -> None:  # the ticker ran while recvfile waited
            ticker.wait_for(50)
            sender.sendall(small_data)
            sender.shutdown(socket.SHUT_WR)

        sending = Call(send_when_counted)
        with open(tmp_path / "o", "wb") as f:
            assert recvfile(receiver, f) == len(small_data)
        sending.value(DEADLINE)
    assert ticker.count >= 50


# --------------------------------------------------------------------------- review fixes


@pytest.mark.parametrize("how", ["fileobj", "intfd"])
def test_splice_all_timeout_leaves_source_at_bytes_sent(
    tmp_path, make_pair, collect, big_data: bytes, how: str
) -> None:
    """Bytes read into the pipe but not delivered are given back to the source.

    After the TimeoutError the source's position is start + bytes_sent, so a
    second call resumes exactly there and the receiver gets the file intact.
    """
    path = make_file(tmp_path, big_data, "src.bin")
    s, r = make_pair("tcp4", small=True)
    s.settimeout(0.3)
    f = open(path, "rb")
    src = f if how == "fileobj" else os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TimeoutError) as info:
            splice_all(src, s)  # nobody reads: the socket fills
        sent = info.value.bytes_sent
        pos = f.tell() if how == "fileobj" else os.lseek(src, 0, os.SEEK_CUR)
        assert 0 < sent < len(big_data)
        assert pos == sent
        c = collect(r)
        s.settimeout(DEADLINE)
        assert splice_all(src, s) == len(big_data) - sent
        eof(s)
        assert c.result() == big_data
    finally:
        f.close()
        if how == "intfd":
            os.close(src)


def test_splice_all_buffered_nonseekable_reader_sends_its_buffer_first() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    os.write(w, b"0123456789")
    os.close(w)
    with a, b, open(r, "rb") as f:
        assert f.read(1) == b"0"  # the rest sits in f's buffer
        assert splice_all(f, a, count=3) == 3
        assert recv_exactly(b, 3) == b"123"
        assert f.read(2) == b"45"  # what was not sent is still there
        assert splice_all(f, a) == 4
        a.shutdown(socket.SHUT_WR)
        assert recv_exactly(b, 4) == b"6789"
        assert b.recv(10) == b""


def test_splice_all_buffered_reader_to_file_and_beyond_its_buffer(tmp_path) -> None:
    """Buffered bytes, then the pipe's: all in order, into a buffered file object."""
    data = bytes(range(256)) * 4096  # 1 MiB, far more than the reader's buffer
    r, w = os.pipe()
    with open(r, "rb", buffering=8192) as f, open(tmp_path / "out", "wb") as out:
        writer = feed(w, data)  # then closes w
        first = f.read(100)
        out.write(b"H")  # still in out's buffer: goes first
        assert splice_all(f, out) == len(data) - 100
        writer.join(DEADLINE)
    assert first == data[:100]
    assert (tmp_path / "out").read_bytes() == b"H" + data[100:]


def test_pipe_pool_give_racing_close_does_not_pool_the_pipe(monkeypatch) -> None:
    """close() runs between give()'s check of the pool and its put: no pipe may stay pooled."""
    import zerocopy._lowlevel as splice_mod  # the pool lives at the C boundary

    pool = PipePool(4096, max_idle=4)
    pipe = pool.take()
    closer = threading.Thread(target=pool.close, daemon=True)

    def close_meanwhile() -> None:
        closer.start()
        closer.join(0.5)  # with the fix close() waits for give()'s lock

    monkeypatch.setattr(splice_mod, "lib", LibHook(lib, "zc_pipe_put", close_meanwhile))
    pool.give(pipe)
    monkeypatch.undo()
    closer.join(DEADLINE)
    assert not closer.is_alive()
    assert pool.idle == 0  # before the fix: 1, a pipe pooled after close() (two fds leaked)
    assert pipe.rfd == -1 and pipe.wfd == -1


def _huge_recvfile(a, b, path, data):
    b.sendall(data)
    eof(b)
    out = path + ".out"
    with open(out, "wb") as f:
        assert recvfile(a, f, count=len(data)) == len(data)
    with open(out, "rb") as f:
        assert f.read() == data


def _huge_splice_to_socket(a, b, path, data):
    with open(path, "rb") as f:
        assert splice_all(f, a) == len(data)
    assert recv_exactly(b, len(data)) == data


def _huge_splice_from_socket(a, b, path, data):
    b.sendall(data)
    eof(b)
    out = path + ".out"
    with open(out, "wb") as f:
        assert splice_all(a, f) == len(data)
    with open(out, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize(
    "op",
    [_huge_recvfile, _huge_splice_to_socket, _huge_splice_from_socket],
    ids=["recvfile", "splice_to_socket", "splice_from_socket"],
)
@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_huge_socket_timeout(make_pair, tmp_path, op, kind: str) -> None:
    """Regression: a socket timeout of more milliseconds than a C int holds overflowed."""
    a, b = make_pair(kind)
    a.settimeout(1e7)  # ~116 days
    data = b"x0123456789" * 10
    op(a, b, make_file(tmp_path, data), data)


# --------------------------------------------------------------------------- issue 8 and TLS


@pytest.mark.parametrize(
    "family", [(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_UNIX, socket.SOCK_DGRAM),
               (socket.AF_UNIX, socket.SOCK_SEQPACKET)], ids=["udp", "unix-dgram", "seqpacket"])
@pytest.mark.parametrize("side", ["src", "dst"])
@pytest.mark.parametrize("as_fd", [False, True], ids=["object", "fd"])
def test_splice_all_refuses_packet_sockets(tmp_path, small_file: str, family, side: str,
                                           as_fd: bool) -> None:
    """Regression (issue 8.17): a UDP or SEQPACKET destination was accepted and the call
    reported success; sendfile_all and recvfile refuse them, and so does splice_all now."""
    if family[0] == socket.AF_INET:
        a = socket.socket(*family)
        a.bind(("127.0.0.1", 0))
        a.connect(a.getsockname())
        b = a.dup()
    else:
        a, b = socket.socketpair(*family)
    with a, b, open(small_file, "rb") as f, open(tmp_path / "o", "wb") as out:
        if side == "src":
            b.send(b"one packet")
        sock = a.fileno() if as_fd else a
        args = (f, sock) if side == "dst" else (sock, out)
        with pytest.raises(ValueError, match=f"{side} must be a SOCK_STREAM socket"):
            splice_all(*args)
        assert f.tell() == 0
        a.setblocking(False)
        b.setblocking(False)
        if side == "dst":
            with pytest.raises(BlockingIOError):
                b.recv(100)  # nothing was sent
        else:
            assert a.recv(100) == b"one packet"  # nothing was read
    assert (tmp_path / "o").read_bytes() == b""


def test_bool_is_not_a_file_descriptor_for_splice(make_pair, tmp_path) -> None:
    """Regression (issue 8.11): recvfile(sock, True) wrote network data to stdout."""
    s, r = make_pair("unix")
    s.sendall(b"secret")
    with pytest.raises(TypeError, match="bool"):
        recvfile(r, True)
    with pytest.raises(TypeError, match="bool"):
        splice_all(True, r)
    with pytest.raises(TypeError, match="bool"):
        splice_all(r, False)
    assert recv_exactly(r, 6) == b"secret"  # untouched


@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize("source", ["socket", "pty"])
def test_splice_all_stalled_source_is_bounded_by_the_timeout(make_pair, source: str) -> None:
    """Regression (issue 8.16): a socket timeout did not bound a stalled blocking source
    (a silent peer, a pty): the call blocked until a signal.  Now TimeoutError, with the
    bytes that did arrive delivered."""
    s, r = make_pair("tcp4")
    s.settimeout(0.3)
    if source == "socket":
        x, y = socket.socketpair()  # y: blocking, no timeout
        x.sendall(b"abc")
        src: object = y
        closers: list[Callable[[], None]] = [x.close, y.close]
    else:
        import pty

        master, slave = pty.openpty()
        import tty

        tty.setraw(slave)
        os.write(slave, b"abc")
        src = master
        closers = [lambda: os.close(master), lambda: os.close(slave)]
    try:
        call = Call(lambda: splice_all(src, s))
        assert call.join(15), "splice_all blocked on the silent source"
        assert isinstance(call.error, TimeoutError), call.error
        assert call.error.bytes_sent == 3  # type: ignore[attr-defined]
        assert recv_exactly(r, 3) == b"abc"
    finally:
        for close in closers:
            close()


def test_splice_all_rewinds_file_and_delivers_what_it_read(tmp_path, make_pair) -> None:
    """The finish-and-rewind rules moved from Python to C: to a non-blocking socket, bytes
    read into the pipe are delivered; after BlockingIOError the file's position equals
    bytes_sent, and calls resumed from there deliver the file intact."""
    data = rand_bytes(3 << 20, 81)
    path = make_file(tmp_path, data, "src.bin")
    s, r = make_pair("tcp4", small=True)
    s.setblocking(False)
    got = Collector(r, delay=0.001, chunk=16384)
    sent = 0
    with open(path, "rb") as f:
        for _ in range(10_000):
            try:
                sent += splice_all(f, s)
                break
            except BlockingIOError as exc:
                sent += exc.bytes_sent  # type: ignore[attr-defined]
                assert f.tell() == sent
                select.select([], [s], [], DEADLINE)
        assert f.tell() == len(data)
    assert sent == len(data)
    eof(s)
    assert got.result() == data


@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
@pytest.mark.parametrize("direction", ["to_socket", "from_socket"])
def test_splice_all_fd_replaced_during_a_wait(tmp_path, make_pair, direction: str,
                                              blocking: bool) -> None:
    """Regression (issue 8.1, splice): another thread closes the fd splice_all waits on and
    the number goes to a new connection (dup2 does both at once).  The transfer stops with
    EBADF, or ends with the original peer; never a byte to or from the new connection."""
    s, r = make_pair("tcp4", small=True)
    new_a, new_b = make_pair("unix")
    data = rand_bytes(8 << 20, 82)
    path = make_file(tmp_path, data, "src.bin")
    fd = os.dup(s.fileno() if direction == "to_socket" else r.fileno())
    # blocking: an int fd, which waits in the kernel; otherwise a socket object
    # with a timeout (a Python server's), which waits in poll
    target: object = fd
    if not blocking:
        target = socket.socket(fileno=fd)
        target.settimeout(5)  # type: ignore[attr-defined]
    out = tmp_path / "out.bin"

    def replace() -> None:
        time.sleep(0.3)  # the transfer waits by now (in poll, or in the kernel)
        os.dup2(new_a.fileno(), fd)
        if direction == "to_socket":
            r.settimeout(0.2)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # make room: wakes the old connection's waiter
                try:
                    if not r.recv(1 << 20):
                        break
                except OSError:
                    pass
        else:
            new_b.sendall(b"EVIL")
            s.sendall(b"late")  # wakes the wait on the old connection
            s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=replace, daemon=True)
    try:
        if direction == "to_socket":
            t.start()
            with open(path, "rb") as f, pytest.raises(OSError) as info:
                splice_all(f, target)
            assert info.value.errno == errno.EBADF
            assert 0 < info.value.bytes_sent < len(data)  # type: ignore[attr-defined]
            new_b.setblocking(False)
            with pytest.raises(BlockingIOError):
                new_b.recv(16)  # the new client got nothing
        else:
            s.sendall(b"original")
            t.start()
            with open(out, "wb") as f, pytest.raises(OSError) as info:
                splice_all(target, f, count=1000)
            if blocking:  # it was reading the old connection, to its end
                assert isinstance(info.value, TruncatedFileError)
                assert out.read_bytes() == b"originallate"
            else:
                assert info.value.errno == errno.EBADF
                assert out.read_bytes() == b"original"
            assert recv_exactly(new_a, 4) == b"EVIL"  # still there for its owner
        t.join(DEADLINE)
    finally:
        t.join(DEADLINE)
        if blocking:
            os.close(fd)
        else:
            target.close()  # type: ignore[attr-defined]


@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize(("call", "into"), [
    ("recvfile", "int fd"), ("recvfile", "file object"), ("recvfile", "BytesIO"),
    ("splice_all", "int fd"), ("splice_all", "file object"),
])
def test_int_fd_reused_before_a_resume_is_never_read(tmp_path, make_pair, call: str,
                                                     into: str) -> None:
    """Regression: an int fd has no owner to hold it.  A signal interrupts the transfer,
    and its handler stands for another thread that closed the number and whose accept()
    got it back (dup2 does both).  The resumed call spliced from the new connection; it
    must stop with EBADF (or, reading through Python, finish from the original one)."""
    s, r = make_pair("tcp4")
    new_a, new_b = make_pair("unix")
    fd = os.dup(r.fileno())  # r keeps the original connection open
    out = tmp_path / "out.bin"
    sink: Any = io.BytesIO()
    fired = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(True)
            os.dup2(new_a.fileno(), fd)
            new_b.sendall(b"EVIL")
            new_b.shutdown(socket.SHUT_WR)
            s.sendall(b"late")
            s.shutdown(socket.SHUT_WR)

    s.sendall(b"original")
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        if into == "file object":
            sink = open(out_fd, "wb", closefd=False)
        elif into == "int fd":
            sink = out_fd
        with itimer(handler, 0.2):
            if into == "BytesIO":  # read through Python, from a duplicate of the number
                assert recvfile(fd, sink) == len(b"originallate")
                assert sink.getvalue() == b"originallate"
            else:
                with pytest.raises(OSError) as info:
                    if call == "recvfile":
                        recvfile(fd, sink)
                    else:
                        splice_all(fd, sink)
                assert fired
                assert info.value.errno == errno.EBADF
                attr = "bytes_received" if call == "recvfile" else "bytes_sent"
                assert getattr(info.value, attr) == len(b"original")
                if into == "file object":
                    sink.close()
                    assert os.lseek(out_fd, 0, os.SEEK_CUR) == len(b"original")
                assert out.read_bytes() == b"original"
        assert recv_exactly(new_a, 4) == b"EVIL"  # still there for its owner
    finally:
        if into == "file object":
            sink.close()
        os.close(out_fd)
        os.close(fd)


@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize("call", ["recvfile", "splice_all"])
def test_int_fd_reused_between_the_check_and_the_resume_is_never_read(
        tmp_path, make_pair, monkeypatch, call: str) -> None:
    """Regression: the resume after a signal checked the number's identity and then gave
    C the number; another thread that closed it and got it back from accept() between the
    two had its new connection's bytes read.  The resume now reads through a duplicate
    checked against the identity: EBADF, and the new connection's bytes stay unread."""
    from zerocopy import _lowlevel

    s, r = make_pair("tcp4")
    new_a, new_b = make_pair("unix")
    fd = os.dup(r.fileno())
    out = tmp_path / "out.bin"
    fired: list[bool] = []
    swapped: list[bool] = []
    real_same_fd = _lowlevel.same_fd

    def same_fd_then_swap(number: int, ident: Any) -> bool:
        result = real_same_fd(number, ident)
        if fired and not swapped:  # the check passed; the number changes hands right after
            swapped.append(True)
            os.dup2(new_a.fileno(), fd)
            new_b.sendall(b"EVIL")
            new_b.shutdown(socket.SHUT_WR)
            s.sendall(b"late")
            s.shutdown(socket.SHUT_WR)
        return result

    monkeypatch.setattr(_lowlevel, "same_fd", same_fd_then_swap)
    s.sendall(b"original")
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with itimer(lambda signum, frame: fired.append(True), 0.2), \
                pytest.raises(OSError) as info:
            if call == "recvfile":
                recvfile(fd, out_fd)
            else:
                splice_all(fd, out_fd)
        assert swapped
        assert info.value.errno == errno.EBADF
        attr = "bytes_received" if call == "recvfile" else "bytes_sent"
        assert getattr(info.value, attr) == len(b"original")
        assert out.read_bytes() == b"original"
        assert recv_exactly(new_a, 4) == b"EVIL"  # still there for its owner
    finally:
        os.close(out_fd)
        os.close(fd)


# TLS: a socket with a TLS session carries records, never our bytes.


def test_recvfile_from_tls_socket_reads_through_tls(tls, tmp_path) -> None:
    """recvfile on an ssl.SSLSocket gets the plaintext (splicing would write the
    ciphertext records into the file)."""
    server, client = tls
    data = rand_bytes(300_000, 83)
    # an int fd file, an offset and a count
    client.sendall(data[:1000])
    fd = os.open(tmp_path / "p", os.O_WRONLY | os.O_CREAT)
    try:
        assert recvfile(server, fd, count=600, offset=10) == 600
    finally:
        os.close(fd)
    assert (tmp_path / "p").read_bytes() == b"\0" * 10 + data[:600]
    assert recv_exactly(server, 400) == data[600:1000]
    # a file object, to the end of the stream
    t = feed(client, data)
    with open(tmp_path / "o", "wb") as f:
        assert recvfile(server, f) == len(data)
    t.join(DEADLINE)
    assert (tmp_path / "o").read_bytes() == data


def test_splice_all_refuses_tls_sockets(tls, small_file: str, tmp_path) -> None:
    """splice_all with an ssl.SSLSocket on either side: ValueError, and the TLS stream
    still works (no byte was read or written under it)."""
    server, client = tls
    with open(small_file, "rb") as f, pytest.raises(ValueError, match="SSLSocket"):
        splice_all(f, server)
    client.sendall(b"hello over tls")
    with open(tmp_path / "o", "wb") as out, pytest.raises(ValueError, match="SSLSocket"):
        splice_all(server, out)
    assert recv_exactly(server, 14) == b"hello over tls"
    server.sendall(b"still fine")
    assert recv_exactly(client, 10) == b"still fine"


def test_recvfile_int_fd_through_python_without_a_spare_descriptor() -> None:
    """Regression: recvfile of an int fd into a BytesIO reads through a duplicate,
    and without a descriptor to spare (EMFILE) it raised instead of reading from the
    number, as it did before and as the C paths do."""
    code = """
import io, os, resource, socket
from zerocopy import recvfile
a, b = socket.socketpair()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
fill = []
try:
    while True:
        fill.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
b.sendall(b"x" * 100000)
b.shutdown(socket.SHUT_WR)
sink = io.BytesIO()
n = recvfile(a.fileno(), sink)
assert (n, sink.getvalue()) == (100000, b"x" * 100000), n
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
