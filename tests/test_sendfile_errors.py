"""zerocopy.sendfile_all on stalled, timed-out, non-blocking and closed peers."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest
from _zcutil import DEADLINE, Call, eof, recv_then_reset, recv_to_eof
from _zcutil import reset as reset_peer

import zerocopy


class Source:
    """A file source in one of three flavours, with a way to read its position."""

    def __init__(self, path: str, flavour: str, start: int) -> None:
        self.flavour = flavour
        self.start = start
        self.f = open(path, "rb")
        self.fd = self.f.fileno()
        self.f.seek(start)
        if flavour == "fd_offset":
            os.lseek(self.fd, 3, os.SEEK_SET)  # must stay untouched

    def call(self, sock: socket.socket, sent_so_far: int = 0) -> int:
        if self.flavour == "fileobj":
            return zerocopy.sendfile_all(sock, self.f)
        if self.flavour == "fd_position":
            return zerocopy.sendfile_all(sock, self.fd)
        return zerocopy.sendfile_all(sock, self.fd, offset=self.start + sent_so_far)

    def position(self) -> int:
        if self.flavour == "fileobj":
            return self.f.tell()
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def check_position(self, sent: int) -> None:
        if self.flavour == "fd_offset":
            assert self.position() == 3
        else:
            assert self.position() == self.start + sent

    def close(self) -> None:
        self.f.close()


FLAVOURS = ["fileobj", "fd_position", "fd_offset"]


@pytest.fixture
def source_factory():
    made: list[Source] = []

    def factory(path: str, flavour: str, start: int) -> Source:
        s = Source(path, flavour, start)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_timeout_with_stalled_peer(
    small_pair, collect, big_file: str, big_data: bytes, flavour: str, source_factory
) -> None:
    sender, receiver = small_pair
    start = 1000
    src = source_factory(big_file, flavour, start)
    sender.settimeout(0.2)
    with pytest.raises(TimeoutError) as ei:
        src.call(sender)
    sent = ei.value.bytes_sent
    assert isinstance(sent, int)
    assert 0 < sent < len(big_data) - start
    src.check_position(sent)
    sender.settimeout(None)
    eof(sender)
    assert collect(receiver).result() == big_data[start : start + sent]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_nonblocking_stalled_then_resumed(
    small_pair, collect, big_file: str, big_data: bytes, flavour: str, source_factory
) -> None:
    sender, receiver = small_pair
    start = 333
    src = source_factory(big_file, flavour, start)
    sender.setblocking(False)
    with pytest.raises(BlockingIOError) as ei:
        src.call(sender)
    err = ei.value
    assert err.bytes_sent == err.characters_written
    assert 0 < err.bytes_sent < len(big_data) - start
    total = err.bytes_sent
    src.check_position(total)

    # The peer starts draining; keep calling until the whole file went out.
    c = collect(receiver)
    end = time.monotonic() + DEADLINE
    finished = False
    for _ in range(100_000):
        assert time.monotonic() < end, f"resume did not finish, sent {total}"
        select.select([], [sender], [], 0.5)
        try:
            n = src.call(sender, total)
        except BlockingIOError as e:
            assert e.bytes_sent == e.characters_written
            assert e.bytes_sent >= 0
            total += e.bytes_sent
            src.check_position(total)
            continue
        total += n
        finished = True
        break
    assert finished
    assert total == len(big_data) - start
    src.check_position(total)
    eof(sender)
    assert c.result() == big_data[start:]


def test_nonblocking_with_explicit_count(
    make_pair, collect, big_file: str, big_data: bytes, source_factory
) -> None:
    """Resuming with offset/count recomputed by the caller sends exactly the range."""
    sender, receiver = make_pair("tcp4", small=True)
    start, count = 4096, 3_000_000
    sender.setblocking(False)
    src = source_factory(big_file, "fd_offset", start)
    total = 0
    c = None
    end = time.monotonic() + DEADLINE
    for _ in range(100_000):
        assert time.monotonic() < end
        try:
            total += zerocopy.sendfile_all(
                sender, src.fd, offset=start + total, count=count - total
            )
            break
        except BlockingIOError as e:
            total += e.bytes_sent
            if c is None:
                c = collect(receiver)
            select.select([], [sender], [], 0.5)
    assert c is not None, "a non-reading small-buffer peer must stall a 3 MB send"
    assert total == count
    eof(sender)
    assert c.result() == big_data[start : start + count]


def test_peer_resets_mid_transfer(
    small_pair, big_file: str, big_data: bytes, stream_kind: str
) -> None:
    sender, receiver = small_pair
    # Unread data is queued when the peer goes: the sender gets reset / EPIPE.
    peer = Call(lambda: recv_then_reset(receiver, 200_000))
    sender.settimeout(DEADLINE)
    with open(big_file, "rb") as f:
        f.seek(10)
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as ei:
            zerocopy.sendfile_all(sender, f)
        sent = ei.value.bytes_sent
        assert isinstance(sent, int)
        got = peer.value(DEADLINE)
        assert len(got) <= sent < len(big_data) - 10
        assert f.tell() == 10 + sent
    assert got == big_data[10 : 10 + len(got)]


def test_peer_closed_before_call(make_pair, small_file: str) -> None:
    sender, receiver = make_pair("unix")
    receiver.close()
    with open(small_file, "rb") as f, pytest.raises(BrokenPipeError) as ei:
        zerocopy.sendfile_all(sender, f)
    assert ei.value.bytes_sent == 0


def test_sender_shut_down_for_writing(make_pair, small_file: str) -> None:
    sender, _ = make_pair("tcp4")
    sender.shutdown(socket.SHUT_WR)
    with open(small_file, "rb") as f:
        with pytest.raises(BrokenPipeError) as ei:
            zerocopy.sendfile_all(sender, f, offset=5)
        assert ei.value.bytes_sent == 0
        assert f.tell() == 5


def test_unconnected_tcp_socket(small_file: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with open(small_file, "rb") as f, pytest.raises(OSError) as ei:
            zerocopy.sendfile_all(s, f)
        assert not isinstance(ei.value, zerocopy.TruncatedFileError)
    finally:
        s.close()


def test_closed_file_descriptor(make_pair, tmp_path) -> None:
    sender, _ = make_pair("unix")
    p = tmp_path / "x"
    p.write_bytes(b"x" * 10)
    fd = os.open(p, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as ei:
        zerocopy.sendfile_all(sender, fd, count=10)
    assert not isinstance(ei.value, zerocopy.TruncatedFileError)


def test_directory_as_source(make_pair, tmp_path) -> None:
    sender, _ = make_pair("unix")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as ei:
            zerocopy.sendfile_all(sender, fd, count=10)
        assert not isinstance(ei.value, zerocopy.TruncatedFileError)
    finally:
        os.close(fd)


SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
MSG_ZEROCOPY = getattr(socket, "MSG_ZEROCOPY", 0x4000000)


def _queue_completion(sock: socket.socket) -> None:
    """Leave one MSG_ZEROCOPY completion unread on the socket's error queue (as a
    zerocopy.Socket on the same connection would): POLLERR stays up until it is read."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        sock.send(b"z" * 4096, MSG_ZEROCOPY)
    except OSError as e:
        pytest.skip(f"no MSG_ZEROCOPY here: {e}")
    p = select.poll()
    p.register(sock, 0)
    if not any(ev & select.POLLERR for _, ev in p.poll(5000)):
        pytest.skip("the completion did not come")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", ["sendfile_all", "FileSender"])
def test_timeout_with_messages_on_the_error_queue(
    small_pair, big_file: str, big_data: bytes, call: str
) -> None:
    """Regression: a completion on the error queue keeps POLLERR up, so every wait for
    room returned at once; the transfer spun at full CPU and the timeout never came."""
    sender, receiver = small_pair
    if sender.family == socket.AF_UNIX:
        pytest.skip("AF_UNIX has no error queue")
    _queue_completion(sender)
    sender.settimeout(0.3)
    # a hung transfer ends with a reset after 10 s (and fails) instead of hanging
    rescue = threading.Timer(10, reset_peer, (receiver,))
    rescue.start()
    try:
        with open(big_file, "rb") as f, pytest.raises(TimeoutError) as ei:
            if call == "sendfile_all":
                zerocopy.sendfile_all(sender, f.fileno(), 0, len(big_data))
            else:
                with zerocopy.FileSender(sender, f.fileno(), 0, len(big_data)) as fs:
                    fs.send_all()
    finally:
        rescue.cancel()
    sent = ei.value.bytes_sent
    assert 0 < sent < len(big_data)
    sender.settimeout(None)
    eof(sender)
    got = recv_to_eof(receiver)
    assert got == b"z" * 4096 + big_data[:sent]
