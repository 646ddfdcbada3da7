# SPDX-License-Identifier: MIT
"""``zerocopy send FILE HOST:PORT``: send a file with sendfile(2).

A regular file's length is fixed when it is opened: exactly that many
bytes go out even if the file grows meanwhile, and ``--sha256`` digests
exactly them (read back from the page cache after each chunk).  Pipes,
FIFOs, ``/proc`` files and standard input are sent to their end, with
the "unknown length" framing (see :mod:`zerocopy.cli_framing`); their
``--sha256`` is computed on the bytes read through this process, which
then sends them itself (there is no file to read them back from).

Success means: framed, the receiver replied that it stored every byte;
``--raw``, the receiving host acknowledged every byte (the socket's send
queue drained, see :func:`wait_delivered`), whether or not the listener
closes the connection.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import socket
import stat
import struct
import termios
import time
from typing import NamedTuple

from . import cli_framing as framing
from ._errors import TruncatedFileError
from ._lowlevel import os_error
from .cli import (
    CHUNK,
    DEFAULT_HOST,
    CommandError,
    Console,
    close_quietly,
    error_text,
    parse_address,
    rate,
    resolve,
    show,
    stream_name,
)
from .sendfile import sendfile_all

_TCP_CLOSE = 7  # include/net/tcp_states.h
# A stream's count is known only between calls: smaller chunks keep the progress line current.
STREAM_CHUNK = 1024 * 1024


class Source(NamedTuple):
    fd: int
    name: str
    start: int  # the fd's position when opened
    length: int | None  # a regular file's bytes from start; None: send to the end


class _Tally:
    """Bytes sent so far: ``done`` counts whole chunks; ``live()`` also the current one."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.done = 0

    def live(self) -> int:
        if self.src.length is None:
            return self.done
        # sendfile advances the fd's position as the kernel takes the bytes.
        return max(self.done, os.lseek(self.src.fd, 0, os.SEEK_CUR) - self.src.start)

    def total(self, exc: BaseException) -> int:
        return self.done + int(getattr(exc, "bytes_sent", 0))


def run(args: argparse.Namespace, con: Console) -> int:
    address = parse_address(args.address, DEFAULT_HOST, lowest_port=1)
    resolve(address)
    src = open_source(args.file)
    try:
        sock = _connect(address, args.timeout)
        with sock:
            return _send(sock, src, address, args, con)
    finally:
        if args.file != "-":
            close_quietly(src.fd)


def open_source(path: str) -> Source:
    """Open ``path`` ('-': standard input) and find how much of it to send."""
    name = stream_name(path)
    if path == "-":
        fd = 0
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # a FIFO waits for its writer here
        except OSError as e:
            raise CommandError(f"cannot open {path}: {error_text(e)}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CommandError(f"{path} is a directory: send one file, or a stream of it, "
                               f"e.g. tar -c {path} | zerocopy send - HOST:PORT")
        # /proc files say 0 bytes and have more; pipes and devices have no size.
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return Source(fd, name, 0, None)
        start = os.lseek(fd, 0, os.SEEK_CUR)  # standard input may be a file read halfway
        return Source(fd, name, start, max(st.st_size - start, 0))
    except BaseException:
        if path != "-":
            close_quietly(fd)
        raise


def _connect(address: tuple[str, int], timeout: float) -> socket.socket:
    try:
        return socket.create_connection(address, timeout=timeout)
    except OSError as e:
        raise CommandError(f"cannot connect to {show(address)}: {error_text(e)}") from None


def _send(
    sock: socket.socket, src: Source, address: tuple[str, int], args: argparse.Namespace,
    con: Console,
) -> int:
    tally = _Tally(src)
    digest: bytes | None = None
    reply: framing.Reply | None = None
    start = time.monotonic()
    try:
        if not args.raw:
            sock.sendall(framing.pack_header(src.length, sha256=args.sha256))
        with con.progress(src.length, tally.live):
            if src.length is not None:
                digest = _send_file(sock, src, tally, args.sha256)
            elif args.sha256:
                digest = _send_stream_digested(sock, src, tally)
            else:
                _send_stream(sock, src, tally)
        if not args.raw:
            sock.sendall(framing.pack_end(tally.done, digest))
        sock.shutdown(socket.SHUT_WR)
        if args.raw:
            wait_delivered(sock, args.timeout)
        else:
            reply = _read_reply(sock)
    except KeyboardInterrupt as e:
        con.say(f"interrupted after {tally.total(e)} bytes")
        return 130
    except TruncatedFileError as e:
        raise CommandError(
            f"{src.name} ended after {tally.total(e)} of {src.length} bytes: it shrank while "
            "being sent (a pseudo file? send it as a stream: cat FILE | zerocopy send - "
            "HOST:PORT)") from None
    except framing.FramingError as e:
        raise CommandError(f"{show(address)} answered {e}: is it 'zerocopy recv'? "
                           "(for netcat and other plain listeners, use --raw)") from None
    except OSError as e:
        refusal = None if args.raw else _refusal(sock)
        if refusal is not None:
            raise CommandError(f"the receiver stopped the transfer after {tally.total(e)} "
                               f"bytes: {refusal}") from None
        raise CommandError(f"sending to {show(address)} failed after {tally.total(e)} bytes: "
                           f"{error_text(e)}") from None
    elapsed = time.monotonic() - start
    sent = tally.done
    took = f"sent {sent} bytes in {elapsed:.2f} s ({rate(sent, elapsed)})"
    if args.raw:
        con.say(f"{took}; the receiving host acknowledged every byte (--raw: whether the "
                "listener stored them is not known)")
        if digest is not None:
            con.say(f"sha256 {digest.hex()} of the bytes sent")
        return 0
    assert reply is not None
    if not reply.ok:
        raise CommandError(f"the receiver refused the data: {reply.text}")
    if reply.length != sent:
        raise CommandError(f"the receiver stored {reply.length} of the {sent} bytes sent")
    con.say(f"{took}; the receiver stored them all")
    if digest is not None:
        if reply.sha256 != digest.hex():
            raise CommandError(f"sha256 mismatch: sent {digest.hex()}, the receiver stored "
                               f"{reply.sha256 or 'no digest'}")
        con.say(f"sha256 {digest.hex()} verified by the receiver")
    return 0


def _send_file(sock: socket.socket, src: Source, tally: _Tally, sha256: bool) -> bytes | None:
    """Exactly ``src.length`` bytes with sendfile, in chunks; their digest when asked."""
    assert src.length is not None
    hasher = framing.Digest(src.start) if sha256 else None
    while tally.done < src.length:
        n = min(CHUNK, src.length - tally.done)
        sendfile_all(sock, src.fd, count=n)  # from the fd's position, which it advances
        tally.done += n
        if hasher is not None:
            hasher.read_to(src.fd, src.start + tally.done)
    return None if hasher is None else hasher.digest()


def _send_stream(sock: socket.socket, src: Source, tally: _Tally) -> None:
    """Everything up to the end of a stream (pipe, FIFO, /proc file), chunk by chunk."""
    while True:
        try:
            sendfile_all(sock, src.fd, count=STREAM_CHUNK)
        except TruncatedFileError as e:  # the end of the stream, within this chunk
            tally.done += int(getattr(e, "bytes_sent", 0))
            return
        tally.done += STREAM_CHUNK


def _send_stream_digested(sock: socket.socket, src: Source, tally: _Tally) -> bytes:
    """A stream through this process, to digest it: read, hash, sendall."""
    hasher = framing.Digest()
    while True:
        block = os.read(src.fd, 1024 * 1024)
        if not block:
            return hasher.digest()
        hasher.feed(block)
        sock.sendall(block)
        tally.done += len(block)


def _read_reply(sock: socket.socket) -> framing.Reply:
    """The receiver's one-line answer (the socket's timeout bounds the wait)."""
    data = b""
    try:
        while b"\n" not in data and len(data) < framing.REPLY_MAX:
            chunk = sock.recv(framing.REPLY_MAX)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, TimeoutError):  # distinct before Python 3.10
        raise CommandError("every byte was sent but the receiver did not answer in time: is "
                           "it 'zerocopy recv'? (for netcat and other plain listeners, use "
                           "--raw)") from None
    if not data:
        raise CommandError("the receiver closed without answering: is it 'zerocopy recv' "
                           "without --raw? (for netcat and other plain listeners, use --raw)")
    return framing.parse_reply(data.partition(b"\n")[0])


def _refusal(sock: socket.socket) -> str | None:
    """After sending failed: the reason the receiver gave, if it sent an error line.

    A receiver that fails (a full disk) says why and closes; the close resets
    the connection under the sender, but the line it sent is still queued here.
    """
    try:
        sock.settimeout(0.5)
        data = sock.recv(framing.REPLY_MAX)
        reply = framing.parse_reply(data.partition(b"\n")[0]) if data else None
    except (OSError, framing.FramingError):
        return None
    return reply.text if reply is not None and not reply.ok else None


def unacknowledged(sock: socket.socket) -> int:
    """Bytes in the send queue that the peer has not acknowledged (``SIOCOUTQ``)."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


def wait_delivered(sock: socket.socket, timeout: float) -> None:
    """Wait until the peer has acknowledged every byte (and our FIN) sent on ``sock``.

    It does not wait for the peer to close.  Raises ``TimeoutError`` when
    no byte is acknowledged for ``timeout`` seconds, and the connection's
    error when it is reset.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    before: int | None = None
    while True:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise os_error(-err)
        # the state first, then the count: an ACK that lands between the two
        # must not make a finished transfer look cut short
        closed = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE
        left = unacknowledged(sock)
        if left == 0:
            return
        if closed:
            raise ConnectionResetError(errno.ECONNRESET,
                                       f"the connection closed with {left} bytes unacknowledged")
        if before is not None and left < before:
            deadline = time.monotonic() + timeout  # progress: the bound is for a stall
        before = left
        if time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT,
                               f"{left} bytes still unacknowledged after {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
