# SPDX-License-Identifier: MIT
"""Argument checks shared by the public functions, worded like the standard library's."""
from __future__ import annotations

import errno
import io
import socket
import sys
from typing import Any, NamedTuple, Optional, Union

from ._lowlevel import (
    FD_POSITION,
    INT_MAX,
    OFF_MAX,
    os_error,
    raw_socket_type,
    timeout_ms,
    tls_tx_offloaded,
)
from ._lowlevel import check_stream as _check_stream

SocketLike = Union[socket.socket, int]

# Where bytes go: (the socket's fd, how long to wait when it is full in ms,
# whether its SOCK_STREAM type is still unchecked, the socket object to hold
# during C calls or None for an int fd, whether bytes must go through its TLS
# layer).  A plain tuple: this is on the per-call path, where a NamedTuple costs.
Target = tuple[int, int, bool, Optional[socket.socket], bool]

__all__ = ["timeout_ms"]  # for the capability modules (defined with the C constants)


def socket_target(sock: SocketLike) -> Target:
    """Check ``sock`` and say how to send to it."""
    if type(sock) is int and 0 <= sock <= INT_MAX:  # the per-call fast path
        return (sock, 0, True, None, False)
    if isinstance(sock, socket.socket):
        fd = stream_socket_fd(sock)
        return (fd, timeout_ms(sock.gettimeout()), False, sock, needs_tls_layer(sock, fd))
    # An int fd says nothing about timeouts: a blocking fd blocks in the
    # kernel, a non-blocking one raises BlockingIOError.  Its type is left
    # unchecked (the third field): the C call checks it (ZC_CHECK_STREAM).
    return (_fd_number(sock, "sock"), 0, True, None, False)


def needs_tls_layer(sock: socket.socket, fd: int) -> bool:
    """True for a TLS socket whose records are made in user space (``ssl.SSLSocket``).

    Bytes given to its fd directly would reach the peer as plaintext in the
    middle of the TLS stream, so they must go through ``sock.send`` -- unless
    kernel TLS encrypts the fd's TX side, where zero-copy sends are safe.
    """
    if type(sock) is socket.socket:
        return False
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(sock, ssl.SSLSocket):
        return False
    if getattr(sock, "_sslobj", None) is None:  # not wrapped (yet), or unwrapped
        return False
    return not tls_tx_offloaded(fd)


def stream_socket_fd(sock: SocketLike, name: str = "sock") -> int:
    """The fd of ``sock``, a ``SOCK_STREAM`` socket object or int fd (one getsockopt)."""
    if isinstance(sock, socket.socket):
        if raw_socket_type(sock) != socket.SOCK_STREAM:
            raise ValueError(f"{name} must be a SOCK_STREAM socket")
        fd = sock.fileno()
        if fd < 0:
            closed = "the socket" if name == "sock" else name
            raise OSError(errno.EBADF, f"{closed} is closed")
        return fd
    fd = _fd_number(sock, name)
    check_stream(fd, name)
    return fd


def _fd_number(sock: Any, name: str) -> int:
    if isinstance(sock, bool):  # an int, but never meant as a file descriptor
        raise TypeError(f"{name} must be a socket.socket or an int file descriptor, not bool")
    if isinstance(sock, int):
        if sock < 0:
            raise ValueError(f"{name} must be a file descriptor >= 0, got {sock}")
        check_fd_size(sock, name)
        return sock
    raise TypeError(
        f"{name} must be a socket.socket or an int file descriptor, not {type(sock).__name__}"
    )


def check_fd_size(fd: int, name: str) -> None:
    """File descriptors are C ints: refuse a bigger number with our words, not cffi's."""
    if fd > INT_MAX:
        raise OverflowError(f"{name} is too large for a file descriptor (at most 2**31 - 1), "
                            f"got {fd}")


def check_stream(fd: int, name: str = "sock") -> None:
    """Raise unless ``fd`` is a ``SOCK_STREAM`` socket (one getsockopt)."""
    rc = _check_stream(fd)
    if rc == -errno.EPROTOTYPE:
        raise ValueError(f"{name} must be a SOCK_STREAM socket")
    if rc < 0:
        raise os_error(rc)


def check_range(offset: int | None, count: int | None) -> None:
    for name, value in (("offset", offset), ("count", count)):
        if value is None:
            continue
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an integer or None, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        if value > OFF_MAX:
            raise ValueError(f"{name} must be <= 2**63 - 1, got {value}")
    if offset is not None and count is not None and offset + count > OFF_MAX:
        raise ValueError(f"offset + count must be <= 2**63 - 1, got {offset + count}")


class Source(NamedTuple):
    """Where bytes come from.

    ``fd`` is None for objects read through Python (no usable fileno(), or a
    buffered non-seekable stream whose buffer may already hold data).
    ``start`` is an offset or FD_POSITION.  ``fileobj`` is the file object
    whose position must end at start + bytes sent (None for int fds).
    """

    fd: int | None
    start: int
    fileobj: Any


def _fileno(file: Any) -> int | None:
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def seekable(file: Any) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def file_source(file: Any, offset: int | None) -> Source:
    """Check ``file`` and find the fd and start offset to send from."""
    if isinstance(file, int):
        if isinstance(file, bool):
            raise TypeError("file must be an int file descriptor or a binary file object, not bool")
        if file < 0:
            raise ValueError(f"file must be a file descriptor >= 0, got {file}")
        check_fd_size(file, "file")
        return Source(file, FD_POSITION if offset is None else offset, None)
    check_binary(file)
    if isinstance(file, socket.socket):
        if offset is not None:
            raise ValueError("offset needs a seekable file")
        return Source(stream_socket_fd(file, "file"), FD_POSITION, None)
    if not hasattr(file, "read") and not hasattr(file, "fileno"):
        raise TypeError(
            "file must be an int file descriptor or a binary file object, "
            f"not {type(file).__name__}"
        )
    file = _unwrap(file)
    if not seekable(file):
        if offset is not None:
            raise ValueError("offset needs a seekable file")
        fd = _fileno(file) if isinstance(file, io.FileIO) else None  # no buffer to honour
        return Source(fd, FD_POSITION, None)
    if getattr(file, "closed", False):
        raise ValueError("I/O operation on closed file")
    start = file.tell() if offset is None else offset
    if not _reads_its_fd(file):
        return Source(None, start, file)  # gzip, zip members, BytesIO: read through Python
    if writable(file):
        file.flush()  # bytes still in the write buffer belong to the file
    return Source(_fileno(file), start, file)


def check_binary(file: Any, name: str = "file") -> None:
    """Refuse text streams; any other object's ``mode`` (an int for GzipFile) is its own."""
    if isinstance(file, io.TextIOBase):
        raise ValueError(f"{name} must be opened in binary mode")


def _unwrap(file: Any) -> Any:
    """The file object inside a tempfile.NamedTemporaryFile wrapper, else ``file``."""
    inner = getattr(file, "file", None)
    if type(file).__name__ == "_TemporaryFileWrapper" and isinstance(inner, io.IOBase):
        return inner
    return file


def _reads_its_fd(file: Any) -> bool:
    """True when ``file.read()`` returns the bytes of ``file.fileno()`` at ``tell()``.

    Only plain files are: a GzipFile's fileno() is the compressed file's.
    """
    if isinstance(file, io.FileIO):
        return True
    if isinstance(file, (io.BufferedReader, io.BufferedRandom, io.BufferedWriter)):
        return isinstance(getattr(file, "raw", None), io.FileIO)
    return False


def writable(file: Any) -> bool:
    try:
        return bool(file.writable())
    except (AttributeError, OSError, ValueError):
        return False
