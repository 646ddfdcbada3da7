"""zerocopy.sendfile_all: successful transfers, offsets, counts, positions."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import socket
import time
from collections.abc import Iterator

import pytest
from _zcutil import (
    DEADLINE,
    Call,
    KeyboardInterruptOnce,
    eof,
    feed,
    itimer,
    make_file,
    recv_exactly,
    recv_to_eof,
    stall_tls_pair,
    tls_read_to_eof,
)

import zerocopy


def test_whole_file_object(pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    with open(small_file, "rb") as f:
        n = zerocopy.sendfile_all(sender, f)
        assert n == len(small_data)
        assert f.tell() == len(small_data)
        assert f.read(1) == b""
    eof(sender)
    assert c.result() == small_data


def test_big_file_every_kind(pair, collect, big_file: str, big_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    with open(big_file, "rb") as f:
        assert zerocopy.sendfile_all(sender, f) == len(big_data)
        assert f.tell() == len(big_data)
    eof(sender)
    assert c.result() == big_data


def test_socket_given_as_int_fd(pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    with open(small_file, "rb") as f:
        assert zerocopy.sendfile_all(sender.fileno(), f, offset=7, count=1000) == 1000
        assert f.tell() == 1007
    eof(sender)
    assert c.result() == small_data[7:1007]


def test_unbuffered_file_object(make_pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    with open(small_file, "rb", buffering=0) as f:
        f.seek(100)
        assert zerocopy.sendfile_all(sender, f, count=5000) == 5000
        assert f.tell() == 5100
        assert f.read(4) == small_data[5100:5104]
    eof(sender)
    assert c.result() == small_data[100:5100]


def test_file_object_mid_file_to_eof(pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    with open(small_file, "rb") as f:
        f.seek(12345)
        n = zerocopy.sendfile_all(sender, f)
        assert n == len(small_data) - 12345
        assert f.tell() == len(small_data)
    eof(sender)
    assert c.result() == small_data[12345:]


def test_buffered_reader_position_after_read(
    make_pair, collect, small_file: str, small_data: bytes
) -> None:
    """offset=None means the file object's tell(), not the fd's read-ahead position."""
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    with open(small_file, "rb") as f:
        assert f.read(10) == small_data[:10]  # BufferedReader reads ahead on the fd
        n = zerocopy.sendfile_all(sender, f, count=2000)
        assert n == 2000
        assert f.tell() == 2010
        # The object's own buffer must not serve stale bytes afterwards.
        assert f.read(5) == small_data[2010:2015]
    eof(sender)
    assert c.result() == small_data[10:2010]


def test_file_object_explicit_offset_sets_position(
    make_pair, collect, small_file: str, small_data: bytes
) -> None:
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    with open(small_file, "rb") as f:
        f.seek(123)
        n = zerocopy.sendfile_all(sender, f, offset=1000, count=5000)
        assert n == 5000
        # File objects: position ends at start + bytes sent.
        assert f.tell() == 6000
        assert f.read(3) == small_data[6000:6003]
    eof(sender)
    assert c.result() == small_data[1000:6000]


def test_int_fd_offset_none_advances_position(
    pair, collect, small_file: str, small_data: bytes, open_fds: list[int]
) -> None:
    sender, receiver = pair
    c = collect(receiver)
    fd = os.open(small_file, os.O_RDONLY)
    open_fds.append(fd)
    os.lseek(fd, 1000, os.SEEK_SET)
    n = zerocopy.sendfile_all(sender, fd, count=20000)
    assert n == 20000
    assert os.lseek(fd, 0, os.SEEK_CUR) == 21000
    n2 = zerocopy.sendfile_all(sender, fd)
    assert n2 == len(small_data) - 21000
    assert os.lseek(fd, 0, os.SEEK_CUR) == len(small_data)
    eof(sender)
    assert c.result() == small_data[1000:]


def test_int_fd_explicit_offset_leaves_position(
    pair, collect, small_file: str, small_data: bytes, open_fds: list[int]
) -> None:
    sender, receiver = pair
    c = collect(receiver)
    fd = os.open(small_file, os.O_RDONLY)
    open_fds.append(fd)
    os.lseek(fd, 77, os.SEEK_SET)
    assert zerocopy.sendfile_all(sender, fd, offset=5000, count=12345) == 12345
    assert os.lseek(fd, 0, os.SEEK_CUR) == 77
    assert zerocopy.sendfile_all(sender, fd, offset=len(small_data) - 999) == 999
    assert os.lseek(fd, 0, os.SEEK_CUR) == 77
    eof(sender)
    assert c.result() == small_data[5000:17345] + small_data[-999:]


def test_count_zero_sends_nothing(
    make_pair, small_file: str, small_data: bytes, open_fds: list[int]
) -> None:
    sender, receiver = make_pair("tcp4")
    with open(small_file, "rb") as f:
        f.seek(50)
        assert zerocopy.sendfile_all(sender, f, count=0) == 0
        assert f.tell() == 50
        fd = os.open(small_file, os.O_RDONLY)
        open_fds.append(fd)
        os.lseek(fd, 9, os.SEEK_SET)
        assert zerocopy.sendfile_all(sender, fd, count=0) == 0
        assert zerocopy.sendfile_all(sender, fd, offset=3, count=0) == 0
        assert os.lseek(fd, 0, os.SEEK_CUR) == 9
    sender.sendall(b"END")
    eof(sender)
    assert recv_to_eof(receiver) == b"END"


def test_empty_file_and_at_eof(make_pair, collect, tmp_path, small_file: str) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with open(empty, "rb") as f:
        assert zerocopy.sendfile_all(sender, f) == 0
        assert f.tell() == 0
    with open(small_file, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        assert zerocopy.sendfile_all(sender, f) == 0
        assert f.tell() == end
    eof(sender)
    assert c.result() == b""


def test_truncated_file_object(pair, collect, small_file: str, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    size = len(small_data)
    with open(small_file, "rb") as f:
        f.seek(size - 1000)
        with pytest.raises(zerocopy.TruncatedFileError) as ei:
            zerocopy.sendfile_all(sender, f, count=5000)
        assert isinstance(ei.value, OSError)
        assert ei.value.bytes_sent == 1000
        assert f.tell() == size
    eof(sender)
    assert c.result() == small_data[-1000:]


def test_truncated_int_fd(
    make_pair, collect, small_file: str, small_data: bytes, open_fds: list[int]
) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    size = len(small_data)
    fd = os.open(small_file, os.O_RDONLY)
    open_fds.append(fd)
    os.lseek(fd, size - 700, os.SEEK_SET)
    with pytest.raises(zerocopy.TruncatedFileError) as ei:
        zerocopy.sendfile_all(sender, fd, count=701)
    assert ei.value.bytes_sent == 700
    assert os.lseek(fd, 0, os.SEEK_CUR) == size
    # Explicit offset: the fd position stays where it was.
    os.lseek(fd, 5, os.SEEK_SET)
    with pytest.raises(zerocopy.TruncatedFileError) as ei:
        zerocopy.sendfile_all(sender, fd, offset=size - 300, count=100_000)
    assert ei.value.bytes_sent == 300
    assert os.lseek(fd, 0, os.SEEK_CUR) == 5
    # Offset past the end: nothing to send.
    with pytest.raises(zerocopy.TruncatedFileError) as ei:
        zerocopy.sendfile_all(sender, fd, offset=size + 10, count=1)
    assert ei.value.bytes_sent == 0
    eof(sender)
    assert c.result() == small_data[-700:] + small_data[-300:]


def test_offset_past_eof_to_eof_sends_nothing(make_pair, collect, small_file: str) -> None:
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    with open(small_file, "rb") as f:
        assert zerocopy.sendfile_all(sender, f.fileno(), offset=10**9) == 0
    eof(sender)
    assert c.result() == b""


def test_file_grown_since_open_count_none(make_pair, collect, tmp_path) -> None:
    """count=None sends what the file holds at call time."""
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    p = tmp_path / "grow"
    p.write_bytes(b"a" * 1000)
    with open(p, "rb") as f:
        with open(p, "ab") as w:
            w.write(b"b" * 500)
        assert zerocopy.sendfile_all(sender, f) == 1500
    eof(sender)
    assert c.result() == b"a" * 1000 + b"b" * 500


FOUR_GIB = 2**32


@pytest.fixture
def sparse_file(tmp_path) -> Iterator[tuple[str, int, bytes, int]]:
    """A sparse file just over 4 GiB with a marker a few bytes past 2**32."""
    p = tmp_path / "sparse.bin"
    size = FOUR_GIB + 8192
    marker = b"MARKER-past-4GiB-0123456789"
    marker_at = FOUR_GIB + 100
    try:
        with open(p, "wb") as w:
            w.truncate(size)
            w.seek(marker_at)
            w.write(marker)
        st = os.stat(p)
    except OSError as e:
        pytest.skip(f"filesystem refuses a sparse 4 GiB file: {e}")
    if st.st_size != size or st.st_blocks * 512 > 64 * 1024 * 1024:
        p.unlink()
        pytest.skip("filesystem does not keep the file sparse")
    yield str(p), marker_at, marker, size
    p.unlink()


def test_offset_over_4gib(make_pair, collect, sparse_file, open_fds: list[int]) -> None:
    path, marker_at, marker, size = sparse_file
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    start = marker_at - 20
    expected = b"\0" * 20 + marker + b"\0" * 53
    n = len(expected)
    # explicit offset, int fd
    fd = os.open(path, os.O_RDONLY)
    open_fds.append(fd)
    assert zerocopy.sendfile_all(sender, fd, offset=start, count=n) == n
    assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    # offset=None, int fd positioned past 4 GiB
    os.lseek(fd, start, os.SEEK_SET)
    assert zerocopy.sendfile_all(sender, fd, count=n) == n
    assert os.lseek(fd, 0, os.SEEK_CUR) == start + n
    # file object, to EOF from past 4 GiB
    with open(path, "rb") as f:
        f.seek(start)
        assert zerocopy.sendfile_all(sender, f) == size - start
        assert f.tell() == size
    eof(sender)
    tail = b"\0" * 20 + marker + b"\0" * (size - marker_at - len(marker))
    assert c.result() == expected + expected + tail


def test_offset_over_4gib_truncated(make_pair, collect, sparse_file) -> None:
    path, _, _, size = sparse_file
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    with open(path, "rb") as f:
        with pytest.raises(zerocopy.TruncatedFileError) as ei:
            zerocopy.sendfile_all(sender, f, offset=size - 10, count=11)
        assert ei.value.bytes_sent == 10
        assert f.tell() == size
    eof(sender)
    assert c.result() == b"\0" * 10


def test_receives_via_recv_into_small_chunks(make_pair, small_file: str, small_data: bytes) -> None:
    """A transfer larger than the socket buffers, with the reader in this thread."""
    sender, receiver = make_pair("unix", small=True)
    # Reader in the main thread, sender in a helper thread.

    def run() -> int:
        try:
            with open(small_file, "rb") as f:
                return zerocopy.sendfile_all(sender, f)
        finally:
            eof(sender)

    # A timeout bounds the sender's waits even if it held the GIL (which would
    # starve this reader): the test then fails instead of hanging the run.
    sender.settimeout(10)
    call = Call(run)
    receiver.settimeout(10)
    buf = bytearray()
    for _ in range(100_000):
        b = receiver.recv(4096)
        if not b:
            break
        buf += b
    assert call.value(10) == len(small_data)
    assert bytes(buf) == small_data


def test_socket_with_timeout_slow_reader(
    small_pair, collect, big_file: str, big_data: bytes
) -> None:
    """A timeout bounds each wait, not the whole transfer: a slow reader is fine."""
    sender, receiver = small_pair
    sender.settimeout(10)
    c = collect(receiver, delay=0.001)
    with open(big_file, "rb") as f:
        assert zerocopy.sendfile_all(sender, f, offset=99, count=2_000_000) == 2_000_000
        assert f.tell() == 2_000_099
    sender.settimeout(None)
    eof(sender)
    assert c.result() == big_data[99:2_000_099]


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_huge_socket_timeout(make_pair, tmp_path, kind: str) -> None:
    """Regression: a socket timeout of more milliseconds than a C int holds overflowed."""
    a, b = make_pair(kind)
    a.settimeout(1e7)  # ~116 days
    data = b"x0123456789" * 10
    with open(make_file(tmp_path, data), "rb") as f:
        assert zerocopy.sendfile_all(a, f) == len(data)
    assert recv_exactly(b, len(data)) == data


# --------------------------------------------------------------------------- TLS


def test_tls_socket_gets_the_file_through_tls(tls, collect, big_file: str, big_data: bytes) -> None:
    """Regression: an ssl.SSLSocket got raw file bytes (plaintext inside the TLS stream)."""
    server, client = tls
    c = collect(client)
    with open(big_file, "rb") as f:
        f.seek(100)
        assert zerocopy.sendfile_all(server, f, count=1_000_000) == 1_000_000
        assert f.tell() == 1_000_100
    server.sendall(b"--end")  # the TLS stream is still in step after the file
    eof_tls(server)
    assert c.result() == big_data[100:1_000_100] + b"--end"


def test_tls_socket_int_fd_source_positions(tls, collect, big_file: str, big_data: bytes) -> None:
    server, client = tls
    c = collect(client)
    fd = os.open(big_file, os.O_RDONLY)
    try:
        assert zerocopy.sendfile_all(server, fd, 10, 5000) == 5000
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # an explicit offset leaves it alone
        os.lseek(fd, 7, os.SEEK_SET)
        assert zerocopy.sendfile_all(server, fd, count=3000) == 3000
        assert os.lseek(fd, 0, os.SEEK_CUR) == 3007
    finally:
        os.close(fd)
    eof_tls(server)
    assert c.result() == big_data[10:5010] + big_data[7:3007]


def test_tls_nonblocking_socket_resumes_with_the_same_bytes(
    tls, big_file: str, big_data: bytes
) -> None:
    """A non-blocking TLS socket raises BlockingIOError with bytes_sent; calling again
    from there offers OpenSSL the same bytes it could not write, and the stream stays valid."""
    server, client = tls
    server.setblocking(False)
    sent = 0
    received = bytearray()
    client.settimeout(5)
    with open(big_file, "rb") as f:
        for _ in range(10_000):
            if sent == len(big_data):
                break
            try:
                sent += zerocopy.sendfile_all(server, f, sent, len(big_data) - sent)
            except BlockingIOError as exc:
                pass
                sent += exc.bytes_sent
                received += client.recv(1 << 20)
        assert sent == len(big_data)
    server.setblocking(True)
    eof_tls(server)
    while True:
        chunk = client.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    assert bytes(received) == big_data


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("mode", ["blocking", "timeout"])
def test_tls_keyboard_interrupt_carries_the_bytes_the_client_got(
    tls, big_file: str, big_data: bytes, mode: str
) -> None:
    """Regression: through the TLS layer each write offered OpenSSL 256 KiB, which it takes
    all or nothing; Ctrl-C in the middle left bytes_sent (and the file position) short of
    the records the client had already decrypted."""
    server, client = tls
    stall_tls_pair(server, client)
    if mode == "timeout":
        server.settimeout(30)
    with open(big_file, "rb") as f:
        f.seek(5)
        with itimer(KeyboardInterruptOnce(), 0.3, 0.01), pytest.raises(KeyboardInterrupt) as ei:
            zerocopy.sendfile_all(server, f)
        sent = ei.value.bytes_sent  # type: ignore[attr-defined]
        assert 0 < sent < len(big_data) - 5
        assert f.tell() == 5 + sent
    eof_tls(server)
    assert tls_read_to_eof(client) == big_data[5 : 5 + sent]


@pytest.mark.timeout(60, method="thread")
def test_tls_pipe_source_wait_ends_when_another_thread_closes_the_socket(
    tls, big_data: bytes
) -> None:
    """Regression: from a pipe (what was read cannot go back) a non-blocking TLS socket
    that filled was waited on for ever while held: a close() from another thread waited
    for the peer to read.  The wait ends with EBADF (and bytes_sent) now, and the close
    takes effect."""
    server, client = tls
    stall_tls_pair(server, client)
    server.setblocking(False)
    r, w = os.pipe()
    feeder = feed(w, big_data)
    try:
        with open(r, "rb", buffering=0) as f:
            call = Call(lambda: zerocopy.sendfile_all(server, f))
            time.sleep(0.3)  # stalled by now: the client reads nothing
            server.close()
            assert call.join(DEADLINE), "sendfile_all kept waiting on the closed socket"
            assert isinstance(call.error, OSError) and call.error.errno == errno.EBADF
            assert 0 < call.error.bytes_sent < len(big_data)  # type: ignore[attr-defined]
    finally:
        feeder.join(DEADLINE)
    assert server.fileno() == -1  # the close() deferred by the hold came


def eof_tls(sock) -> None:
    """End the stream with a TCP FIN (the client's ssl module takes it as EOF)."""
    sock.shutdown(socket.SHUT_WR)


# ---------------------------------------------------------------- closed by another thread


@pytest.mark.parametrize(
    ("mode", "target"),
    [("timeout", "socket"), ("signals", "socket"), ("signals", "int fd"),
     ("timeout", "socket, Python route"), ("signals", "int fd, Python route")],
)
def test_socket_closed_by_another_thread_never_feeds_a_new_connection(
    make_pair, big_file: str, big_data: bytes, mode: str, target: str
) -> None:
    """Regression (issue 8.1): a server thread closes a connection another thread is
    sending to, and the next accept() gets the same fd number.  The transfer must finish
    to the original peer or stop with EBADF (with bytes_sent); the new client gets nothing.
    With an int fd nothing defers the close: the resume after a signal sent the rest of the
    file to the new client (so did the Python route, used for objects without a file
    descriptor, with a socket object and a timeout)."""
    sender, receiver = make_pair("tcp4", small=True)
    if mode == "timeout":
        sender.settimeout(10)
    old_fd = sender.fileno()
    newcomers: list[tuple[socket.socket, socket.socket]] = []
    got = bytearray()

    listener = socket.create_server(("127.0.0.1", 0))

    def meddle() -> None:
        time.sleep(0.2)  # the sender is stalled on the full socket by now
        if target.startswith("int fd"):
            os.close(sender.detach())  # the owner of an int fd closes it
        else:
            sender.close()
        # a new client: its socket takes the lowest free number, the old one if it was freed
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        newcomers.append((client, server))
        receiver.settimeout(5)
        while True:
            chunk = receiver.recv(1 << 16)
            if not chunk:
                return
            got.extend(chunk)

    reader = Call(meddle)
    handler_calls = [0]

    def tick(signum, frame) -> None:
        handler_calls[0] += 1

    timer = itimer(tick, 0.005, 0.005) if mode == "signals" else contextlib.nullcontext()
    dest = old_fd if target.startswith("int fd") else sender
    with timer, open(big_file, "rb") as f:
        source = io.BytesIO(big_data) if target.endswith("Python route") else f
        try:
            sent = zerocopy.sendfile_all(dest, source)
            assert sent == len(big_data)  # finished to the original peer
        except OSError as exc:
            assert exc.errno == errno.EBADF
            assert isinstance(exc, zerocopy.TransferError)
            sent = exc.bytes_sent
    assert 0 < sent <= len(big_data)
    assert sender.fileno() == -1
    reader.value()  # to EOF: the deferred close sends FIN after the queued bytes
    assert bytes(got) == big_data[: len(got)] and len(got) == sent
    new_client, new_server = newcomers[0]
    try:
        new_server.setblocking(False)
        with pytest.raises(BlockingIOError):
            new_server.recv(1)  # not one byte reached the newcomer
        if not target.startswith("int fd"):
            assert new_client.fileno() != old_fd  # the number was not free while in use
    finally:
        new_client.close()
        new_server.close()
        listener.close()
