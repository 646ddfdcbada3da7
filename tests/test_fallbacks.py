"""Sources sendfile(2) refuses or must not use: BytesIO, gzip, zip, pipes, sockets, /proc."""

from __future__ import annotations

import gzip
import io
import os
import select
import socket
import time
import zipfile
from typing import Any

import pytest
from _zcutil import DEADLINE, Call, eof, feed, recv_exactly, recv_to_eof

import zerocopy

# -- BytesIO -------------------------------------------------------------------


def test_bytesio_whole(pair, collect, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    b = io.BytesIO(small_data)
    assert zerocopy.sendfile_all(sender, b) == len(small_data)
    assert b.tell() == len(small_data)
    eof(sender)
    assert c.result() == small_data


def test_bytesio_offset_count_position(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    b = io.BytesIO(small_data)
    b.seek(100)
    assert zerocopy.sendfile_all(sender, b, count=1000) == 1000
    assert b.tell() == 1100
    assert zerocopy.sendfile_all(sender, b, offset=50_000, count=7) == 7
    assert b.tell() == 50_007
    assert zerocopy.sendfile_all(sender, b) == len(small_data) - 50_007
    assert b.tell() == len(small_data)
    eof(sender)
    assert c.result() == small_data[100:1100] + small_data[50_000:50_007] + small_data[50_007:]


def test_bytesio_truncated(make_pair, collect) -> None:
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    b = io.BytesIO(b"0123456789")
    b.seek(4)
    with pytest.raises(zerocopy.TruncatedFileError) as ei:
        zerocopy.sendfile_all(sender, b, count=10)
    assert ei.value.bytes_sent == 6
    assert b.tell() == 10
    eof(sender)
    assert c.result() == b"456789"


def test_bytesio_nonblocking_stalled(make_pair, collect, big_data: bytes) -> None:
    sender, receiver = make_pair("tcp4", small=True)
    sender.setblocking(False)
    b = io.BytesIO(big_data)
    with pytest.raises(BlockingIOError) as ei:
        zerocopy.sendfile_all(sender, b)
    sent = ei.value.bytes_sent
    assert ei.value.characters_written == sent
    assert 0 < sent < len(big_data)
    assert b.tell() == sent
    sender.setblocking(True)
    c = collect(receiver)
    assert zerocopy.sendfile_all(sender, b) == len(big_data) - sent
    eof(sender)
    assert c.result() == big_data


# -- file objects read through Python: gzip, zip members --------------------


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
    """Regression: GzipFile and zip members (no "b" in mode) were refused or sent compressed."""
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


# -- pipes -------------------------------------------------------------------


def test_pipe_fd_to_eof(pair, collect, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    r, w = os.pipe()
    try:
        t = feed(w, small_data)
        assert zerocopy.sendfile_all(sender, r) == len(small_data)
        t.join(DEADLINE)
    finally:
        os.close(r)
    eof(sender)
    assert c.result() == small_data


def test_pipe_fd_exact_count_leaves_rest(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    r, w = os.pipe()
    try:
        t = feed(w, small_data)
        assert zerocopy.sendfile_all(sender, r, count=123_457) == 123_457
        # The rest is still in the pipe, nothing was swallowed.
        rest = recv_to_eof(r)
        t.join(DEADLINE)
    finally:
        os.close(r)
    eof(sender)
    assert c.result() == small_data[:123_457]
    assert rest == small_data[123_457:]


def test_pipe_fd_truncated(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    r, w = os.pipe()
    try:
        t = feed(w, small_data[:5000])
        with pytest.raises(zerocopy.TruncatedFileError) as ei:
            zerocopy.sendfile_all(sender, r, count=5001)
        assert ei.value.bytes_sent == 5000
        t.join(DEADLINE)
    finally:
        os.close(r)
    eof(sender)
    assert c.result() == small_data[:5000]


def test_pipe_file_object(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    r, w = os.pipe()
    t = feed(w, small_data)
    with open(r, "rb", buffering=0) as f:
        assert zerocopy.sendfile_all(sender, f) == len(small_data)
    t.join(DEADLINE)
    eof(sender)
    assert c.result() == small_data


@pytest.mark.parametrize("count", [None, 5])
def test_nonblocking_buffered_pipe_eagain_is_not_eof(make_pair, count: int | None) -> None:
    """Regression: read() -> None from a non-blocking buffered pipe was taken for EOF."""
    a, b = make_pair("unix")
    r, w = os.pipe()
    os.set_blocking(r, False)
    f = open(r, "rb")
    try:
        call = Call(lambda: zerocopy.sendfile_all(a, f, count=count))
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


@pytest.mark.parametrize("source", ["pipe", "socket"])
@pytest.mark.parametrize("resume", ["nonblocking", "timeout"])
def test_stream_source_to_stalled_nonblocking_socket(
    make_pair, collect, big_data: bytes, source: str, resume: str
) -> None:
    """Bytes taken from a pipe or socket are never lost or doubled when the target would block."""
    sender, receiver = make_pair("tcp4", small=True)
    sender.setblocking(False)
    data = big_data[:2_000_000]
    if source == "pipe":
        r, w = os.pipe()
        t = feed(w, data)
        src_fd, closer = r, (lambda: os.close(r))
    else:
        src_r, src_w = socket.socketpair()
        t = feed(src_w, data, close=True)
        src_fd, closer = src_r.fileno(), src_r.close
    try:
        total = 0
        c = None
        end = time.monotonic() + DEADLINE
        for _ in range(100_000):
            assert time.monotonic() < end, f"sent {total} of {len(data)}"
            try:
                total += zerocopy.sendfile_all(sender, src_fd)
                break
            except BlockingIOError as e:
                assert e.bytes_sent == e.characters_written
                total += e.bytes_sent
                if c is None:
                    c = collect(receiver)
                    if resume == "timeout":
                        sender.settimeout(5)
                else:
                    select.select([], [sender], [], 0.5)
        t.join(DEADLINE)
    finally:
        closer()
    assert c is not None, "a non-reading peer must stall a 2 MB transfer"
    assert total == len(data)
    eof(sender)
    assert c.result() == data


# -- sockets as the source ----------------------------------------------------


def test_socket_source_to_eof(pair, collect, small_data: bytes) -> None:
    sender, receiver = pair
    c = collect(receiver)
    src_r, src_w = socket.socketpair()
    try:
        t = feed(src_w, small_data, close=True)
        assert zerocopy.sendfile_all(sender, src_r.fileno()) == len(small_data)
        t.join(DEADLINE)
    finally:
        src_r.close()
    eof(sender)
    assert c.result() == small_data


def test_socket_source_exact_count_leaves_rest(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    src_r, src_w = socket.socketpair()
    try:
        t = feed(src_w, small_data, close=True)
        assert zerocopy.sendfile_all(sender, src_r.fileno(), count=77_777) == 77_777
        rest = recv_to_eof(src_r)
        t.join(DEADLINE)
    finally:
        src_r.close()
    eof(sender)
    assert c.result() == small_data[:77_777]
    assert rest == small_data[77_777:]


def test_tcp_socket_source_truncated(make_pair, collect, small_data: bytes) -> None:
    sender, receiver = make_pair("unix")
    src_w, src_r = make_pair("tcp4")
    c = collect(receiver)
    t = feed(src_w, small_data[:9000], close=True)
    with pytest.raises(zerocopy.TruncatedFileError) as ei:
        zerocopy.sendfile_all(sender, src_r.fileno(), count=10_000)
    assert ei.value.bytes_sent == 9000
    t.join(DEADLINE)
    eof(sender)
    assert c.result() == small_data[:9000]


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_socket_object_as_source(make_pair, collect, small_data: bytes, kind: str) -> None:
    """Regression: a socket object (not its fileno()) was refused as the source."""
    feeder, src = make_pair(kind)
    dst, receiver = make_pair(kind)
    count = len(small_data) - 1000
    feeding = Call(lambda: feeder.sendall(small_data))
    c = collect(receiver)
    n = Call(lambda: zerocopy.sendfile_all(dst, src, count=count)).value(DEADLINE)
    assert n == count
    eof(dst)
    assert c.result() == small_data[:count]
    feeding.value(DEADLINE)
    # The rest is still in the source socket, untouched.
    assert recv_exactly(src, 1000) == small_data[count:]


# -- /proc files ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc/version", "/proc/self/cmdline"])
def test_proc_file_to_eof(make_pair, collect, path: str) -> None:
    """st_size is 0 for /proc files: count=None must still send to EOF."""
    if not os.path.exists(path):
        pytest.skip(f"no {path}")
    with open(path, "rb") as f:
        expected = f.read()
    assert expected
    sender, receiver = make_pair("tcp4")
    c = collect(receiver)
    with open(path, "rb") as f:
        n = zerocopy.sendfile_all(sender, f)
        assert n == len(expected)
    eof(sender)
    assert c.result() == expected


def test_proc_file_explicit_count(make_pair, collect) -> None:
    path = "/proc/version"
    if not os.path.exists(path):
        pytest.skip(f"no {path}")
    with open(path, "rb") as f:
        expected = f.read()
    assert len(expected) > 20
    sender, receiver = make_pair("unix")
    c = collect(receiver)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert zerocopy.sendfile_all(sender, fd, count=10) == 10
        assert zerocopy.sendfile_all(sender, fd, offset=5, count=5) == 5
        with pytest.raises(zerocopy.TruncatedFileError) as ei:
            zerocopy.sendfile_all(sender, fd, count=len(expected))
        assert ei.value.bytes_sent == len(expected) - 10
    finally:
        os.close(fd)
    eof(sender)
    assert c.result() == expected[:10] + expected[5:10] + expected[10:]
