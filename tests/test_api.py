"""Public surface and argument checking of zerocopy.sendfile_all."""

from __future__ import annotations

import io
import os
import socket
from typing import Any

import pytest
from _zcutil import make_file

import zerocopy

PUBLIC = ("sendfile_all", "FileSender", "cork", "TruncatedFileError")


def test_all_exports_public_names() -> None:
    for name in PUBLIC:
        assert name in zerocopy.__all__, name
        assert hasattr(zerocopy, name), name
    for name in zerocopy.__all__:
        assert hasattr(zerocopy, name), f"__all__ lists missing {name}"


def test_no_ffi_internals_reexported() -> None:
    for name in ("ffi", "lib"):
        assert name not in zerocopy.__all__


def test_truncated_file_error_is_oserror() -> None:
    assert issubclass(zerocopy.TruncatedFileError, OSError)


@pytest.mark.parametrize(
    "family",
    [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_UNIX, socket.SOCK_DGRAM),
    ],
)
@pytest.mark.parametrize("as_fd", [False, True])
def test_datagram_socket_rejected(small_file: str, family: tuple[int, int], as_fd: bool) -> None:
    s = socket.socket(*family)
    try:
        if family[0] == socket.AF_INET:
            s.bind(("127.0.0.1", 0))
            s.connect(s.getsockname())
        with open(small_file, "rb") as f:
            target = s.fileno() if as_fd else s
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                zerocopy.sendfile_all(target, f)
            assert f.tell() == 0
    finally:
        s.close()


def test_text_mode_file_rejected(
    pair: tuple[socket.socket, socket.socket], small_file: str
) -> None:
    sender, _ = pair
    text = open(small_file, encoding="latin-1")
    try:
        with pytest.raises(ValueError, match="binary mode"):
            zerocopy.sendfile_all(sender, text)
    finally:
        text.close()


def test_text_file_still_rejected(make_pair, tmp_path) -> None:
    """Regression: accepting binary objects whatever their mode must still refuse text files."""
    a, _ = make_pair("unix")
    with open(make_file(tmp_path), "r") as f:  # noqa: UP015 - the mode is the point
        with pytest.raises(ValueError, match="binary mode"):
            zerocopy.sendfile_all(a, f)


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"offset": -1}, ValueError),
        ({"count": -1}, ValueError),
        ({"offset": 1.5}, TypeError),
        ({"count": 1.5}, TypeError),
        ({"offset": "3"}, TypeError),
        ({"count": "3"}, TypeError),
    ],
)
@pytest.mark.parametrize("as_fd", [False, True])
def test_bad_offset_count(
    make_pair, small_file: str, kw: dict[str, object], exc: type[Exception], as_fd: bool
) -> None:
    sender, receiver = make_pair("unix")
    with open(small_file, "rb") as f:
        f.seek(10)
        src = f.fileno() if as_fd else f
        with pytest.raises(exc):
            zerocopy.sendfile_all(sender, src, **kw)
        # Nothing was sent and the position did not move.
        assert f.tell() == 10
        assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == 10
    sender.shutdown(socket.SHUT_WR)
    receiver.settimeout(5)
    assert receiver.recv(10) == b""


def test_bytesio_bad_count_type(make_pair) -> None:
    sender, _ = make_pair("unix")
    with pytest.raises(TypeError):
        zerocopy.sendfile_all(sender, io.BytesIO(b"abc"), count=1.5)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX], ids=["udp", "unix-dgram"])
def test_datagram_fd_rejected_all_int_arguments(small_file: str, family: int) -> None:
    """sock, file, offset and count all ints (the per-call fast path)."""
    with socket.socket(family, socket.SOCK_DGRAM) as d:
        if family == socket.AF_INET:
            d.bind(("127.0.0.1", 0))
            d.connect(d.getsockname())
        fd = os.open(small_file, os.O_RDONLY)
        try:
            for offset, count in ((0, 10), (None, 10), (0, 0)):
                with pytest.raises(ValueError, match="SOCK_STREAM"):
                    zerocopy.sendfile_all(d.fileno(), fd, offset, count)
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        finally:
            os.close(fd)
        if family == socket.AF_INET:  # no datagram may have gone out
            d.setblocking(False)
            with pytest.raises(BlockingIOError):
                d.recv(100)


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
    """Regression: offset/count past 2**63-1 got through (a count of 2**64-1 meant "to EOF")."""
    a, b = make_pair("unix")
    sock: Any = a if sock_kind == "socket" else a.fileno()
    with open(make_file(tmp_path), "rb") as f:
        src: Any = f if file_kind == "fileobj" else f.fileno()
        with pytest.raises(ValueError):
            zerocopy.sendfile_all(sock, src, offset=offset, count=count)
    # Nothing went out (and certainly not the file "to EOF").
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(100)


# --------------------------------------------------------------------------- typed progress


def test_progress_exceptions_are_typed_and_stdlib(make_pair, small_file: str) -> None:
    """Every OSError after the start is a TransferError (typed bytes_sent) and still the
    standard library class callers catch; it pickles with its count."""
    import pickle

    sender, receiver = make_pair("tcp4")
    receiver.close()
    with open(small_file, "rb") as f:
        with pytest.raises(OSError) as info:
            for _ in range(1000):  # the first sends may still be taken; then EPIPE/ECONNRESET
                zerocopy.sendfile_all(sender, f, 0, 65536)
    exc = info.value
    assert isinstance(exc, zerocopy.TransferError)
    assert isinstance(exc, (BrokenPipeError, ConnectionResetError))
    assert isinstance(exc.bytes_sent, int) and exc.bytes_sent >= 0
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc)
    assert again.bytes_sent == exc.bytes_sent
    assert again.errno == exc.errno


def test_progress_exceptions_pickle_whole() -> None:
    """Regression: pickled with protocol 0-2 a typed BrokenPipeError (TimeoutError, ...) came
    back as a plain typed OSError; with every protocol a BlockingIOError lost
    characters_written, an OSError its filename, and a TruncatedFileError from a receive
    its bytes_sent."""
    import copy
    import errno
    import pickle

    from zerocopy import _errors

    made = [
        _errors.build(errno.EPIPE, 5),
        _errors.build(errno.ETIMEDOUT, 6),
        _errors.build(errno.EAGAIN, 7),
        _errors.build(errno.ENODATA, 8),
        _errors.build(errno.ENODATA, 9, "bytes_received", "the stream"),
        _errors.build(errno.ECONNRESET, (1, 2), "bytes_relayed"),
        _errors.with_progress(FileNotFoundError(errno.ENOENT, "No such file", "a.txt"), 10),
        _errors.with_progress(BlockingIOError(errno.EAGAIN, "full", 3), 11),
    ]
    for exc in made:
        attrs = ("bytes_sent", "bytes_received", "bytes_relayed", "characters_written",
                 "errno", "strerror", "filename", "args")
        want = {a: getattr(exc, a, None) for a in attrs}
        copies = [pickle.loads(pickle.dumps(exc, p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
        for again in [*copies, copy.copy(exc), copy.deepcopy(exc)]:
            assert type(again) is type(exc), (exc, again)
            assert {a: getattr(again, a, None) for a in attrs} == want, (exc, again)
            assert str(again) == str(exc)


def test_truncated_file_error_from_recvfile_is_also_a_receive_error(make_pair, tmp_path) -> None:
    sender, receiver = make_pair("tcp4")
    sender.sendall(b"x" * 10)
    sender.close()
    with open(tmp_path / "out", "wb") as f, pytest.raises(zerocopy.TruncatedFileError) as info:
        zerocopy.recvfile(receiver, f, count=100)
    assert isinstance(info.value, zerocopy.ReceiveError)
    assert info.value.bytes_received == 10
    assert info.value.bytes_sent == 10


@pytest.mark.parametrize("where", ["sock", "file"])
def test_bool_is_not_a_file_descriptor(make_pair, small_file: str, where: str) -> None:
    """Regression (issue 8.11): True was taken as fd 1 (stdout)."""
    sender, _ = make_pair("tcp4")
    with open(small_file, "rb") as f:
        args = (True, f) if where == "sock" else (sender, True)
        with pytest.raises(TypeError, match="bool"):
            zerocopy.sendfile_all(*args)
        with pytest.raises(TypeError, match="bool"):
            zerocopy.FileSender(*args)


def test_user_code_type_checks_bytes_sent(tmp_path, monkeypatch) -> None:
    """mypy --strict accepts exc.bytes_sent / bytes_received / bytes_relayed in user code,
    run outside the repository (so it finds the installed package, py.typed included)."""
    mypy_api = pytest.importorskip("mypy.api")
    monkeypatch.chdir(tmp_path)
    code = tmp_path / "user.py"
    code.write_text(
        "import socket\n"
        "import zerocopy\n\n\n"
        "def send(sock: socket.socket, path: str) -> int:\n"
        "    try:\n"
        "        with open(path, 'rb') as f:\n"
        "            return zerocopy.sendfile_all(sock, f)\n"
        "    except zerocopy.TransferError as exc:\n"
        "        return exc.bytes_sent\n"
        "    except zerocopy.ReceiveError as exc:\n"
        "        return exc.bytes_received\n"
        "    except zerocopy.RelayError as exc:\n"
        "        return sum(exc.bytes_relayed)\n"
    )
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(code)]
    )
    assert status == 0, out + err


def test_file_descriptors_past_a_c_int_get_our_message(make_pair, small_file: str) -> None:
    """Regression: an fd of 2**31 or more raised cffi's "integer ... does not fit
    '32-bit int'" (issue 7: error messages are ours)."""
    sender, _ = make_pair("tcp4")
    big = 2**40
    fd = os.open(small_file, os.O_RDONLY)
    try:
        calls = [
            lambda: zerocopy.sendfile_all(big, fd, 0, 10),  # the per-call fast path
            lambda: zerocopy.sendfile_all(big, fd),
            lambda: zerocopy.sendfile_all(sender.fileno(), big, 0, 10),
            lambda: zerocopy.sendfile_all(sender, big),
            lambda: zerocopy.FileSender(sender, big, 0, 10),
            lambda: zerocopy.FileSender(sender, big),
            lambda: zerocopy.FileSender(big, fd, 0, 10),
            lambda: zerocopy.cork(big).__enter__(),
        ]
        for call in calls:
            with pytest.raises(OverflowError, match="too large for a file descriptor"):
                call()
    finally:
        os.close(fd)
