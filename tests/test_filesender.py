"""zerocopy.FileSender (header + file range + trailer) and zerocopy.cork."""

from __future__ import annotations

import array
import errno
import gc
import io
import os
import random
import selectors
import socket
import threading
import time
from typing import Any

import pytest
from _zcutil import (
    DEADLINE,
    Call,
    KeyboardInterruptOnce,
    cork_of,
    eof,
    feed,
    itimer,
    make_file,
    nodelay_of,
    raise_keyboard_interrupt,
    recv_exactly,
    recv_then_reset,
    recv_to_eof,
    stall_tls_pair,
    tls_read_to_eof,
)

import zerocopy

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
TAIL = b"\r\n--trailer--\r\n"


# -- basic responses ------------------------------------------------------------


def test_blocking_send_finishes(pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    with open(small_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, 100, 50_000, headers=HEAD, trailers=TAIL)
        assert fs.total == len(HEAD) + 50_000 + len(TAIL)
        assert fs.sent == 0
        assert not fs.done
        assert fs.fileno() == sender.fileno()
        n = fs.send()
        assert n == fs.total
        assert fs.sent == fs.total
        assert fs.done
        fs.close()
    eof(sender)
    assert c.result() == HEAD + small_data[100:50_100] + TAIL


def test_send_all_to_eof_context_manager(pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    with open(small_file, "rb") as f:
        f.seek(777)
        with zerocopy.FileSender(sender, f, headers=HEAD) as fs:
            assert fs.total == len(HEAD) + len(small_data) - 777
            fs.send_all()
            assert fs.done
            assert fs.sent == fs.total
    eof(sender)
    assert c.result() == HEAD + small_data[777:]


def test_int_fd_and_no_headers(make_pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    fd = os.open(small_file, os.O_RDONLY)
    try:
        with zerocopy.FileSender(sender, fd, offset=10, count=1000) as fs:
            assert fs.total == 1000
            fs.send_all()
        with zerocopy.FileSender(sender, fd, offset=0, count=5, trailers=TAIL) as fs:
            assert fs.total == 5 + len(TAIL)
            fs.send_all()
    finally:
        os.close(fd)
    eof(sender)
    assert c.result() == small_data[10:1010] + small_data[:5] + TAIL


@pytest.mark.parametrize(
    "wrap",
    [
        bytes,
        bytearray,
        memoryview,
        lambda b: array.array("B", b),
        lambda b: memoryview(b"xx" + b)[2:],
    ],
    ids=["bytes", "bytearray", "memoryview", "array", "memoryview-slice"],
)
def test_headers_trailers_bytes_like(
    make_pair, collect, small_file: str, small_data: bytes, wrap
) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    h, t = wrap(HEAD), wrap(TAIL)
    with (
        open(small_file, "rb") as f,
        zerocopy.FileSender(sender, f, 0, 4000, headers=h, trailers=t) as fs,
    ):
        assert fs.total == len(HEAD) + 4000 + len(TAIL)
        fs.send_all()
    eof(sender)
    assert c.result() == HEAD + small_data[:4000] + TAIL


def test_headers_only_count_zero(make_pair, collect, small_file: str) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    with (
        open(small_file, "rb") as f,
        zerocopy.FileSender(sender, f, count=0, headers=HEAD, trailers=TAIL) as fs,
    ):
        assert fs.total == len(HEAD) + len(TAIL)
        fs.send_all()
        assert fs.done
    assert cork_of(sender) == 0
    eof(sender)
    assert c.result() == HEAD + TAIL


def test_truncated_file_raises(make_pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    size = len(small_data)
    with open(small_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, size - 100, 200, headers=HEAD, trailers=TAIL)
        with pytest.raises(OSError) as ei:
            fs.send_all()
        assert isinstance(ei.value, zerocopy.TruncatedFileError)
        fs.close()
    assert cork_of(sender) == 0
    eof(sender)
    got = c.result()
    # Header and the 100 bytes that exist went out; nothing invented.
    assert got == HEAD + small_data[-100:]


# -- non-blocking behaviour -------------------------------------------------------


def test_nonblocking_send_never_raises_would_block(
    make_pair, collect, big_file: str, big_data: bytes
) -> None:
    sender, receiver = make_pair("tcp4", small=True)
    sender.setblocking(False)
    with open(big_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, 5, 3_000_000, headers=HEAD, trailers=TAIL)
        steps = []
        for _ in range(50):
            n = fs.send()  # peer does not read: must return, never raise
            assert isinstance(n, int)
            assert n >= 0
            steps.append(n)
            if n == 0:
                break
        assert not fs.done
        assert steps[0] > 0
        assert steps[-1] == 0, "a stalled peer never made send() return 0"
        assert fs.sent == sum(steps)
        c = collect(receiver)
        fs.send_all()  # waits for writability on a non-blocking socket
        assert fs.done
        assert fs.sent == fs.total == len(HEAD) + 3_000_000 + len(TAIL)
        fs.close()
    assert cork_of(sender) == 0
    eof(sender)
    assert c.result() == HEAD + big_data[5:3_000_005] + TAIL


def test_nonblocking_send_all_slow_reader(
    small_pair, collect, big_file: str, big_data: bytes
) -> None:
    sender, receiver = small_pair
    sender.setblocking(False)
    c = collect(receiver, delay=0.001)
    with (
        open(big_file, "rb") as f,
        zerocopy.FileSender(sender, f, 1, 2_000_000, headers=HEAD, trailers=TAIL) as fs,
    ):
        fs.send_all()
        assert fs.done
    eof(sender)
    assert c.result() == HEAD + big_data[1:2_000_001] + TAIL


def test_abandoned_response_restores_cork(make_pair, big_file: str) -> None:
    sender, _ = make_pair("tcp4", small=True)
    sender.setblocking(False)
    assert cork_of(sender) == 0
    with open(big_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, headers=HEAD, trailers=TAIL)
        for _ in range(50):
            if fs.send() == 0:
                break
        assert not fs.done
        assert fs.sent > 0
        fs.close()
        fs.close()  # idempotent
    assert cork_of(sender) == 0


@pytest.mark.parametrize("reused", [False, True])
def test_collected_int_fd_response_uncorks_only_its_own_socket(
        make_pair, big_file: str, reused: bool) -> None:
    """Regression: a FileSender on an int fd collected without close() left its cork set
    (its finalizer could not tell whether the number was still that socket).  C now
    uncorks through the bound identity: the socket itself, never the number's next
    owner."""
    sender, _ = make_pair("tcp4", small=True)
    sender.setblocking(False)
    other, _other_peer = make_pair("tcp4")
    fd = sender.fileno()
    with open(big_file, "rb") as f:
        fs = zerocopy.FileSender(fd, f.fileno(), 0, 4 << 20, headers=HEAD, trailers=TAIL)
        for _ in range(50):
            if fs.send() == 0:
                break
        assert not fs.done and cork_of(sender) == 1
        if reused:  # another thread closed the number and its new owner corks
            keep = socket.socket(fileno=os.dup(fd))
            other.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            os.dup2(other.fileno(), fd)
        with pytest.warns(ResourceWarning):
            del fs
            gc.collect()
    if reused:
        assert cork_of(other) == 1
        assert cork_of(keep) == 1  # not ours to reach any more: left alone
        keep.close()
    else:
        assert cork_of(sender) == 0


# -- socket options ----------------------------------------------------------------


def test_cork_restored_after_close(make_pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = collect(receiver)
    assert cork_of(sender) == 0
    with open(small_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, 0, 10_000, headers=HEAD, trailers=TAIL)
        fs.send_all()
        fs.close()
    assert cork_of(sender) == 0
    assert nodelay_of(sender) == 1
    eof(sender)
    assert c.result() == HEAD + small_data[:10_000] + TAIL


def test_user_cork_stays(make_pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    c = collect(receiver)
    with (
        open(small_file, "rb") as f,
        zerocopy.FileSender(sender, f, 0, 10_000, headers=HEAD, trailers=TAIL) as fs,
    ):
        fs.send_all()
    assert cork_of(sender) == 1
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
    eof(sender)
    assert c.result() == HEAD + small_data[:10_000] + TAIL


@pytest.mark.parametrize("use_with", [False, True])
def test_cork_restored_after_peer_reset(
    make_pair, big_file: str, big_data: bytes, use_with: bool
) -> None:
    sender, receiver = make_pair("tcp4", small=True)
    sender.settimeout(DEADLINE)
    peer = Call(lambda: recv_then_reset(receiver, 100_000))
    with open(big_file, "rb") as f:
        if use_with:
            with (
                pytest.raises((ConnectionResetError, BrokenPipeError)),
                zerocopy.FileSender(sender, f, headers=HEAD, trailers=TAIL) as fs,
            ):
                fs.send_all()
        else:
            fs = zerocopy.FileSender(sender, f, headers=HEAD, trailers=TAIL)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                fs.send_all()
            fs.close()
    got = peer.value(DEADLINE)
    assert cork_of(sender) == 0
    assert got == (HEAD + big_data)[: len(got)]


@pytest.mark.parametrize("kind", ["tcp4", "tcp6"])
def test_filesender_uncorks_after_timeout(make_pair, big_file: str, kind: str) -> None:
    """Regression: a send_all that failed with TimeoutError left TCP_CORK set."""
    sender, _receiver = make_pair(kind, small=True)  # the receiver never reads
    sender.settimeout(0.3)
    with open(big_file, "rb") as f:
        fs = zerocopy.FileSender(sender, f, headers=b"H" * 100, trailers=b"T" * 10)
        try:
            with pytest.raises(TimeoutError):
                fs.send_all()
            assert cork_of(sender) == 0, "TCP_CORK left set after TimeoutError"
        finally:
            fs.close()


@pytest.mark.timeout(60, method="thread")
def test_filesender_uncorks_after_keyboard_interrupt(make_pair, collect, big_file: str) -> None:
    """Regression: a send_all interrupted by KeyboardInterrupt left TCP_CORK set."""
    sender, receiver = make_pair("tcp4", small=True)
    # Escape hatch: if the interrupt is lost, the receiver drains after 20 s,
    # send_all completes, and the test fails instead of hanging.
    go = threading.Event()
    collect(receiver, start=go, start_timeout=20)
    f = open(big_file, "rb")
    fs = zerocopy.FileSender(sender, f, headers=b"H" * 100, trailers=b"T")
    try:
        with itimer(raise_keyboard_interrupt, 0.3), pytest.raises(KeyboardInterrupt):
            fs.send_all()
        assert cork_of(sender) == 0, "TCP_CORK left set after KeyboardInterrupt"
    finally:
        go.set()
        fs.close()
        f.close()


def test_unix_socket_no_cork_needed(make_pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    with (
        open(small_file, "rb") as f,
        zerocopy.FileSender(sender, f, 3, 3, headers=b"<", trailers=b">") as fs,
    ):
        assert fs.send() == 5
    eof(sender)
    assert c.result() == b"<" + small_data[3:6] + b">"


# -- zerocopy.cork -------------------------------------------------------------------


def test_cork_context_manager(make_pair, collect) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    assert cork_of(sender) == 0
    with zerocopy.cork(sender):
        assert cork_of(sender) == 1
        sender.sendall(b"abc")
    assert cork_of(sender) == 0
    eof(sender)
    assert c.result() == b"abc"


def test_cork_restored_when_body_raises(make_pair) -> None:
    sender, _ = make_pair("tcp4")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), zerocopy.cork(sender):
        assert cork_of(sender) == 1
        raise Boom
    assert cork_of(sender) == 0


def test_cork_keeps_user_cork(make_pair) -> None:
    sender, _ = make_pair("tcp4")
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    with zerocopy.cork(sender):
        assert cork_of(sender) == 1
    assert cork_of(sender) == 1
    with pytest.raises(KeyError), zerocopy.cork(sender):
        raise KeyError("x")
    assert cork_of(sender) == 1


# -- many concurrent non-blocking responses ------------------------------------------


N_CONN = 36


def test_many_concurrent_nonblocking_with_selectors(big_file: str, big_data: bytes) -> None:
    rng = random.Random(99)
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(N_CONN)
    lst.settimeout(DEADLINE)
    socks: list[socket.socket] = [lst]
    fds: list[int] = []
    files = []
    sel = selectors.DefaultSelector()
    try:
        senders: list[zerocopy.FileSender] = []
        clis: list[socket.socket] = []
        expected: list[bytes] = []
        received: list[bytearray] = []
        step_sum = [0] * N_CONN
        for i in range(N_CONN):
            cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(cli)
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384 + 1024 * i)
            cli.settimeout(DEADLINE)
            cli.connect(lst.getsockname())
            srv, _ = lst.accept()
            socks.append(srv)
            cli.setblocking(False)
            srv.setblocking(False)

            offset = rng.randrange(0, len(big_data) // 2)
            count = rng.randrange(20_000, 400_000) if i % 5 else None
            body_len = len(big_data) - offset if count is None else count
            if i % 5 == 1:
                count = body_len = 0
            head = f"HTTP/1.1 200 OK\r\nX-Conn: {i}\r\nContent-Length: {body_len}\r\n\r\n"
            tail = b"" if i % 4 == 0 else f"\r\n-- end of {i} --\r\n".encode()
            if i % 3 == 0:  # int fd positioned at offset, offset=None
                fd = os.open(big_file, os.O_RDONLY)
                fds.append(fd)
                os.lseek(fd, offset, os.SEEK_SET)
                src, off = fd, None
            elif i % 3 == 1:  # file object, explicit offset
                f = open(big_file, "rb")
                files.append(f)
                src, off = f, offset
            else:  # file object positioned at offset, offset=None
                f = open(big_file, "rb")
                files.append(f)
                f.seek(offset)
                src, off = f, None
            fs = zerocopy.FileSender(cli, src, off, count, headers=head.encode(), trailers=tail)
            assert fs.total == len(head) + body_len + len(tail)
            assert fs.fileno() == cli.fileno()
            senders.append(fs)
            clis.append(cli)
            expected.append(head.encode() + big_data[offset : offset + body_len] + tail)
            received.append(bytearray())
            sel.register(fs, selectors.EVENT_WRITE, ("send", i))
            sel.register(srv, selectors.EVENT_READ, ("recv", i))

        open_readers = N_CONN
        open_senders = N_CONN
        end = time.monotonic() + 40
        for _ in range(1_000_000):
            if open_readers == 0:
                break
            assert time.monotonic() < end, f"{open_senders} senders / {open_readers} readers left"
            for key, _mask in sel.select(timeout=1.0):
                kind, i = key.data
                if kind == "send":
                    fs = key.fileobj
                    n = fs.send()
                    assert n >= 0
                    step_sum[i] += n
                    if fs.done:
                        sel.unregister(fs)
                        fs.close()
                        assert cork_of(clis[i]) == 0
                        clis[i].shutdown(socket.SHUT_WR)
                        open_senders -= 1
                else:
                    sock = key.fileobj
                    for _ in range(64):
                        try:
                            b = sock.recv(65536)
                        except BlockingIOError:
                            break
                        if not b:
                            sel.unregister(sock)
                            open_readers -= 1
                            break
                        received[i] += b
        assert open_senders == 0
        assert open_readers == 0
        for i in range(N_CONN):
            assert senders[i].sent == senders[i].total == step_sum[i], i
            assert bytes(received[i]) == expected[i], f"connection {i} got wrong bytes"
    finally:
        sel.close()
        for f in files:
            f.close()
        for fd in fds:
            os.close(fd)
        for s in socks:
            s.close()


@pytest.mark.parametrize("trailers", [b"", TAIL], ids=["no-trailer", "trailer"])
def test_file_object_position_after_response(
    make_pair, collect, small_file: str, small_data: bytes, trailers: bytes
) -> None:
    """As with sendfile_all, a file object's position ends at start + file bytes sent."""
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    with open(small_file, "rb") as f:
        with zerocopy.FileSender(sender, f, 100, 1000, headers=HEAD, trailers=trailers) as fs:
            fs.send_all()
        assert f.tell() == 1100
        f.seek(5000)
        with zerocopy.FileSender(sender, f, count=10, headers=HEAD, trailers=trailers) as fs:
            fs.send_all()
        assert f.tell() == 5010
    eof(sender)
    expected = HEAD + small_data[100:1100] + trailers + HEAD + small_data[5000:5010] + trailers
    assert c.result() == expected


@pytest.mark.parametrize(
    "seek,offset,count", [(100, None, 1000), (0, 100, 1000), (100, None, None), (7, 50, None)]
)
@pytest.mark.parametrize("source", ["bytesio", "file"])
def test_filesender_position_rule(
    make_pair, collect, tmp_path, small_data: bytes, seek: int, offset: int | None,
    count: int | None, source: str
) -> None:
    """Regression: FileSender moved an io.BytesIO source's position before any byte went out."""
    data = small_data[:20_000]
    a, b = make_pair("unix")
    if source == "bytesio":
        f: Any = io.BytesIO(data)
    else:
        f = open(make_file(tmp_path, data), "rb")
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


# -- sources and arguments shared with sendfile_all ------------------------------------


def test_bytesio_source(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    with zerocopy.FileSender(
        sender, io.BytesIO(small_data), 1000, 20_000, headers=HEAD, trailers=TAIL
    ) as fs:
        assert fs.total == len(HEAD) + 20_000 + len(TAIL)
        fs.send_all()
        assert fs.done
    eof(sender)
    assert c.result() == HEAD + small_data[1000:21_000] + TAIL


def test_pipe_source_with_count(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    r, w = os.pipe()
    t = feed(w, small_data[:50_000])  # fits in a default 64 KiB pipe, then EOF
    try:
        with zerocopy.FileSender(sender, r, count=30_000, headers=HEAD, trailers=TAIL) as fs:
            assert fs.total == len(HEAD) + 30_000 + len(TAIL)
            fs.send_all()
            assert fs.done
        t.join(DEADLINE)
        assert os.read(r, 100_000) == small_data[30_000:50_000]
    finally:
        os.close(r)
    eof(sender)
    assert c.result() == HEAD + small_data[:30_000] + TAIL


def test_filesender_waits_for_a_non_blocking_buffered_source(make_pair) -> None:
    """Regression: read() -> None from a non-blocking source was taken for EOF (a short body)."""
    # A non-blocking pipe whose writer is still open: neither cut short nor failed.
    a, b = make_pair("unix")
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"x" * 1000)
    writer = feed(w, b"y" * 10, delay=0.2)  # then closes w
    try:
        with open(r, "rb") as f, zerocopy.FileSender(a, f, headers=b"H") as fs:
            fs.send_all()
            assert fs.sent == fs.total == 1011
        eof(a)
        assert recv_to_eof(b) == b"H" + b"x" * 1000 + b"y" * 10
    finally:
        writer.join(5)


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_huge_socket_timeout(make_pair, tmp_path, kind: str) -> None:
    """Regression: a socket timeout of more milliseconds than a C int holds overflowed."""
    a, b = make_pair(kind)
    a.settimeout(1e7)  # ~116 days
    data = b"x0123456789" * 10
    with open(make_file(tmp_path, data), "rb") as f, zerocopy.FileSender(a, f, headers=b"H:") as fs:
        assert fs.send_all() == len(data) + 2
    assert recv_exactly(b, len(data) + 2) == b"H:" + data


def test_argument_checks(make_pair, small_file: str) -> None:
    sender, _ = make_pair("tcp4")
    with open(small_file, "rb") as f:
        with (
            pytest.raises(ValueError, match="SOCK_STREAM"),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as d,
        ):
            zerocopy.FileSender(d, f, headers=HEAD)
        with pytest.raises(ValueError, match=r"offset|count|>= 0|negative"):
            zerocopy.FileSender(sender, f, -1, 10)
        with pytest.raises(TypeError):
            zerocopy.FileSender(sender, f, 0, 1.5)
    with (
        open(small_file, encoding="latin-1") as text,
        pytest.raises(ValueError, match="binary mode"),
    ):
        zerocopy.FileSender(sender, text)
    assert cork_of(sender) == 0


# ---------------------------------------------------------------- header only, TLS, errors


def test_header_only_response_without_a_file(pair, collect) -> None:
    """file=None: a 304 or a HEAD answer needs no stand-in file."""
    sender, receiver = pair
    c = collect(receiver)
    with zerocopy.FileSender(sender, None, headers=HEAD, trailers=TAIL) as fs:
        assert fs.total == len(HEAD) + len(TAIL)
        assert fs.send() == len(HEAD) + len(TAIL)
        assert fs.done
    eof(sender)
    assert c.result() == HEAD + TAIL
    with pytest.raises(ValueError, match="file=None"):
        zerocopy.FileSender(sender, None, 0, 10, headers=HEAD)


@pytest.mark.parametrize("bad", ["text", 5, [1, 2], 3.0, 0, None, [], "", False])
def test_headers_and_trailers_must_be_bytes_like(make_pair, small_file: str, bad) -> None:
    """Regression: a str header raised cffi's message; trailers=5 sent five NUL bytes on
    the Python route and raised TypeError on the file route (issue 8.10).  Then the fast
    path (an fd, an explicit range) took any false value (0, None, [], "") for "no
    trailers", which every other path refused."""
    sender, _ = make_pair("tcp4")
    for file in (open(small_file, "rb"), io.BytesIO(b"abc")):
        with file:
            with pytest.raises(TypeError, match="headers must be a bytes-like object"):
                zerocopy.FileSender(sender, file, headers=bad)
            with pytest.raises(TypeError, match="trailers must be a bytes-like object"):
                zerocopy.FileSender(sender, file, trailers=bad)
    fd = os.open(small_file, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match="headers must be a bytes-like object"):
            zerocopy.FileSender(sender, fd, 0, 10, headers=bad)
        with pytest.raises(TypeError, match="trailers must be a bytes-like object"):
            zerocopy.FileSender(sender, fd, 0, 10, trailers=bad)
    finally:
        os.close(fd)


def test_fast_path_errors_match_the_general_path(make_pair, small_file: str) -> None:
    sender, _ = make_pair("tcp4")
    fd = os.open(small_file, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="2\\*\\*63"):
            zerocopy.FileSender(sender, fd, 2**62, 2**62, headers=HEAD)
        with pytest.raises(ValueError, match=">= 0"):
            zerocopy.FileSender(sender, fd, -1, 10, headers=HEAD)
        closed = socket.socket()
        closed.close()
        with pytest.raises(OSError, match="closed"):
            zerocopy.FileSender(closed, fd, 0, 10, headers=HEAD)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with udp, pytest.raises(ValueError, match="SOCK_STREAM"):
            zerocopy.FileSender(udp, fd, 0, 10, headers=HEAD)
    finally:
        os.close(fd)


def test_bytes_header_stays_valid_across_resumed_steps(small_pair, collect) -> None:
    """A bytes header is handed to C without a copy: a large one sent over many
    non-blocking steps must arrive intact."""
    sender, receiver = small_pair
    head = os.urandom(3 << 20)
    sender.setblocking(False)
    c = collect(receiver, delay=0.001)
    fd = os.open(__file__, os.O_RDONLY)
    body = open(__file__, "rb").read(1000)
    try:
        fs = zerocopy.FileSender(sender, fd, 0, 1000, headers=head)
        sel = selectors.DefaultSelector()
        sel.register(fs, selectors.EVENT_WRITE)
        steps = 0
        end = time.monotonic() + DEADLINE
        while not fs.done and time.monotonic() < end:
            sel.select(1.0)
            fs.send()
            steps += 1
        fs.close()
        sel.close()
        assert fs.done and steps > 1
    finally:
        os.close(fd)
    sender.setblocking(True)
    eof(sender)
    assert c.result() == head + body


def test_tls_response_goes_through_tls(tls, collect, big_file: str, big_data: bytes) -> None:
    """Regression: over an ssl.SSLSocket the file went out raw, as plaintext."""
    server, client = tls
    c = collect(client)
    with open(big_file, "rb") as f:
        f.seek(3)
        with zerocopy.FileSender(server, f, count=200_000, headers=HEAD, trailers=TAIL) as fs:
            assert fs.send_all() == len(HEAD) + 200_000 + len(TAIL)
            assert fs.done and fs.sent == fs.total
        assert f.tell() == 200_003
    server.shutdown(socket.SHUT_WR)
    assert c.result() == HEAD + big_data[3:200_003] + TAIL


def test_tls_nonblocking_steps(tls, collect, big_file: str, big_data: bytes) -> None:
    server, client = tls
    server.setblocking(False)
    c = collect(client, delay=0.001)
    fd = os.open(big_file, os.O_RDONLY)
    try:
        fs = zerocopy.FileSender(server, fd, 0, len(big_data), headers=HEAD)
        sel = selectors.DefaultSelector()
        sel.register(fs, selectors.EVENT_WRITE)
        end = time.monotonic() + DEADLINE
        while not fs.done and time.monotonic() < end:
            sel.select(1.0)
            fs.send()
        fs.close()
        sel.close()
        assert fs.done
    finally:
        os.close(fd)
    server.setblocking(True)
    server.shutdown(socket.SHUT_WR)
    assert c.result() == HEAD + big_data


# -- the socket closed and its number reused -------------------------------------


@pytest.mark.parametrize("target", ["socket", "int fd"])
@pytest.mark.parametrize("path", ["fast", "general"])
def test_step_after_the_socket_was_closed_never_reaches_its_reuser(
    big_file: str, target: str, path: str
) -> None:
    """Regression: a response made for a connection that was then closed (and whose fd
    number accept() gave to a new client) sent its next step to the new client."""
    listener = socket.create_server(("127.0.0.1", 0))
    old = socket.create_connection(listener.getsockname())
    old_peer, _ = listener.accept()
    fd = old.fileno()
    with open(big_file, "rb") as f:
        range_ = (0, 100_000) if path == "fast" else (None, None)
        fs = zerocopy.FileSender(old if target == "socket" else fd, f.fileno(), *range_,
                                 headers=HEAD if path == "fast" else bytearray(HEAD))
        if target == "socket":
            old.close()
        else:
            os.close(old.detach())
        new = socket.create_connection(listener.getsockname())
        new_peer, _ = listener.accept()
        try:
            assert new.fileno() == fd  # the number was free, and was reused
            with pytest.raises(OSError) as ei:
                fs.send_all()
            assert ei.value.errno == errno.EBADF
            assert ei.value.bytes_sent == 0  # type: ignore[attr-defined]
            fs.close()
            new_peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                new_peer.recv(1)  # not a byte reached the new client
        finally:
            for s in (new, new_peer, old_peer, listener):
                s.close()


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("target", ["int fd", "socket"])
def test_closed_by_another_thread_during_send_all(
    big_file: str, big_data: bytes, target: str
) -> None:
    """Regression (issue 8.1, int fds): the owner of an int fd closes it while send_all
    blocks, accept() reuses the number, and a signal interrupts the send: the resumed step
    sent the rest of the response to the new client.  It must stop with EBADF or finish
    to the original peer (a socket object's close waits for the step to return)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fd = sender.fileno()
    newcomers: list[tuple[socket.socket, socket.socket]] = []
    got = bytearray()

    def meddle() -> None:
        time.sleep(0.2)  # send_all is stalled in the kernel by now
        if target == "socket":
            sender.close()
        else:
            os.close(sender.detach())
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        newcomers.append((client, server))
        receiver.settimeout(5)
        while chunk := receiver.recv(1 << 16):
            got.extend(chunk)

    reader = Call(meddle)
    with itimer(lambda signum, frame: None, 0.005, 0.005), open(big_file, "rb") as f:
        dest = sender if target == "socket" else fd
        with zerocopy.FileSender(dest, f.fileno(), 0, len(big_data), headers=HEAD) as fs:
            try:
                fs.send_all()
                sent = fs.sent
            except OSError as exc:
                assert exc.errno == errno.EBADF
                sent = exc.bytes_sent  # type: ignore[attr-defined]
    reader.value()
    assert bytes(got) == (HEAD + big_data)[: len(got)] and len(got) == sent
    client, server = newcomers[0]
    try:
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.recv(1)
    finally:
        for s in (client, server, receiver, listener):
            s.close()


@pytest.mark.timeout(60, method="thread")
def test_tls_keyboard_interrupt_carries_the_bytes_the_client_got(
    tls, big_file: str, big_data: bytes
) -> None:
    """Regression: the TLS route offered OpenSSL 64 KiB at a time, all or nothing; Ctrl-C in
    the middle left bytes_sent short of what the client had decrypted."""
    server, client = tls
    stall_tls_pair(server, client)
    with open(big_file, "rb") as f, zerocopy.FileSender(server, f, headers=HEAD) as fs:
        with itimer(KeyboardInterruptOnce(), 0.3, 0.01), pytest.raises(KeyboardInterrupt) as ei:
            fs.send_all()
        sent = ei.value.bytes_sent  # type: ignore[attr-defined]
        assert sent == fs.sent
        assert len(HEAD) < sent < len(HEAD) + len(big_data)
        assert f.tell() == sent - len(HEAD)
    server.shutdown(socket.SHUT_WR)
    assert tls_read_to_eof(client) == (HEAD + big_data)[:sent]


@pytest.mark.timeout(60, method="thread")
def test_tls_wait_for_room_ends_when_another_thread_closes_the_socket(
    tls, big_file: str, big_data: bytes
) -> None:
    """Regression: send_all through TLS waited for room on ``sock.fileno()`` taken once,
    unheld: a close() from another thread left it polling a closed (or reused) number
    until the peer read.  It ends with EBADF now, and the close takes effect."""
    server, client = tls
    stall_tls_pair(server, client)
    server.setblocking(False)  # send_all waits for room in Python's TLS route
    with open(big_file, "rb") as f, zerocopy.FileSender(server, f, headers=HEAD) as fs:
        call = Call(fs.send_all)
        time.sleep(0.3)  # stalled by now: the client reads nothing
        server.close()
        assert call.join(DEADLINE), "send_all kept waiting on the closed socket"
        assert isinstance(call.error, OSError) and call.error.errno == errno.EBADF
        sent = call.error.bytes_sent  # type: ignore[attr-defined]
        assert sent == fs.sent and len(HEAD) < sent < len(HEAD) + len(big_data)
    assert server.fileno() == -1  # the close() deferred by the wait came


@pytest.mark.parametrize("path", ["fast", "general"])
def test_socket_mode_is_read_at_each_step(small_pair, big_file: str, path: str) -> None:
    """Regression: the socket's timeout was read once, when the sender was made: a server
    that made the socket non-blocking afterwards (to hand it to selectors) had send() block
    its event loop until the client read, and a timeout set later was never applied."""
    sender, _ = small_pair
    with open(big_file, "rb") as f:
        fs = (zerocopy.FileSender(sender, f.fileno(), 0, 4 << 20, headers=HEAD)
              if path == "fast" else zerocopy.FileSender(sender, f, headers=bytearray(HEAD)))
        with fs:
            sender.setblocking(False)
            step = Call(fs.send)
            assert step.join(5), "send() blocked on a non-blocking socket"
            assert 0 < step.value() < fs.total
            sender.settimeout(0.2)
            with pytest.raises(TimeoutError) as ei:
                fs.send_all()
            assert ei.value.bytes_sent == fs.sent  # type: ignore[attr-defined]
