# SPDX-License-Identifier: MIT
"""``zerocopy recv [HOST:]PORT -o FILE``: receive one file with splice(2).

The data goes to ``FILE.partial`` (in FILE's directory) and becomes FILE
by a rename once it is complete: the length and end mark ``zerocopy send``
announces (see :mod:`zerocopy.cli_framing`) have arrived, the SHA-256 it
sent matches, and the file is flushed to disk (``fsync``).  Only then does
the sender hear ``ok``.  Without ``--force`` an existing FILE is never
replaced; with it, FILE stays as it was until that rename.  FILE must be a
regular file (or a symlink, which the rename replaces itself): a device or
a FIFO is refused, even with ``--force`` (``-o - > /dev/null`` writes into
one).  ``FILE.partial`` is always created new, never opened through a
symlink.

A transfer that ends short, is refused, interrupted or fails here (a full
disk: the sender is told why) exits non-zero and says what happened to the
data: kept in ``FILE.partial`` (never renamed), or removed when nothing
arrived.  A ``FILE.partial`` left by an earlier
transfer is replaced only with ``--force``.  SIGTERM is handled like
Ctrl-C (exit status 143); a process killed outright (SIGKILL) also leaves
its data under the ``.partial`` name.

With ``--raw`` the sender's close ends the data, as with netcat: a sender
that stopped early cannot be told from one that finished, and the final
message says so.  ``-o -`` writes to standard output (no partial file:
check the exit status).
"""
from __future__ import annotations

import argparse
import os
import socket
import stat
import time
from typing import Any

from . import cli_framing as framing
from ._errors import TruncatedFileError
from .cli import (
    CHUNK,
    DEFAULT_HOST,
    CommandError,
    Console,
    UsageError,
    close_quietly,
    error_text,
    parse_address,
    rate,
    resolve,
    show,
)
from .splice import recvfile


class _Incomplete(Exception):
    """The data stopped before its end (no reply: the sender is gone or failed)."""


class _Refused(Exception):
    """All the data came but fails a check; the sender is told why."""


class Output:
    """Where the data goes: ``FILE.partial``, renamed to FILE once complete; or stdout."""

    def __init__(self, path: str, force: bool) -> None:
        self.path = path
        self.force = force
        self.to_stdout = path == "-"
        self.partial = path + ".partial"
        self.done = 0  # bytes written, counted between calls
        self.fd = 1 if self.to_stdout else self._create()

    def _create(self) -> int:
        if os.path.isdir(self.path):
            raise CommandError(f"{self.path} is a directory: name the file to write, "
                               f"e.g. -o {os.path.join(self.path, 'FILE')}")
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as e:
            raise CommandError(f"cannot look at {self.path}: {error_text(e)}") from None
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            # --force would put a regular file in the place of /dev/null
            raise CommandError(f"{self.path} is not a regular file: to write the data into "
                               f"it, use -o - > {self.path}")
        if mode is not None and not self.force:
            raise CommandError(f"{self.path} exists (use --force to replace it once the new "
                               "one is complete)")
        if self.force:  # a leftover FILE.partial goes, whatever it is (a symlink too)
            try:
                os.unlink(self.partial)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise CommandError(f"cannot replace {self.partial}: {error_text(e)}") from None
        # a new file, never one reached through a symlink planted under the name
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.partial, flags, 0o666)  # read back for digests
        except FileExistsError:
            raise CommandError(f"{self.partial} exists, left by an earlier transfer: remove "
                               "it, or use --force to replace it") from None
        except OSError as e:
            raise CommandError(f"cannot create {self.partial}: {error_text(e)}") from None

    def live(self) -> int:
        """Bytes written so far, also during a call (splice advances the file's position)."""
        if self.to_stdout or self.fd < 0:
            return self.done
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def received(self) -> int:
        """Bytes that reached FILE.partial (or standard output)."""
        if self.to_stdout:
            return self.done
        try:
            return os.fstat(self.fd).st_size if self.fd >= 0 else os.stat(self.partial).st_size
        except OSError:
            return self.done

    def commit(self) -> None:
        """Flush FILE.partial to disk and rename it FILE (replacing FILE only with --force)."""
        if self.to_stdout:
            return
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.force:
            os.replace(self.partial, self.path)
            return
        try:
            os.link(self.partial, self.path)  # fails, unlike rename, if FILE appeared meanwhile
        except FileExistsError:
            raise _Refused(f"{self.path} appeared during the transfer") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(self.path):
                raise _Refused(f"{self.path} appeared during the transfer") from None
            os.rename(self.partial, self.path)
            return
        os.unlink(self.partial)

    def fate(self) -> str:
        """Close after a failure; say what became of the data."""
        n = self.received()
        if self.to_stdout:
            return f"{n} bytes went to standard output"
        if self.fd >= 0:
            close_quietly(self.fd)
            self.fd = -1
        if n == 0:
            try:
                os.unlink(self.partial)
            except OSError:
                pass
            return f"nothing was written (removed {self.partial})"
        return f"kept the {n} bytes received in {self.partial}"

    def discard(self) -> None:
        """Undo the creation of FILE.partial (nothing was received)."""
        if not self.to_stdout:
            self.fate()


def run(args: argparse.Namespace, con: Console) -> int:
    address = parse_address(args.address, DEFAULT_HOST)
    family, _, _, _, sockaddr = resolve(address, passive=True)[0]
    if not args.output:
        raise UsageError("-o needs a file name, or '-' for standard output")
    out = Output(args.output, args.force)
    try:
        conn, peer = _accept(family, sockaddr, address, args.timeout, con)
    except KeyboardInterrupt:
        con.say(f"interrupted while waiting for a sender; {out.fate()}")
        return 130
    except BaseException:
        out.discard()
        raise
    with conn:
        conn.settimeout(args.timeout)
        return _receive(conn, show(peer), out, args, con)


def _accept(
    family: int, sockaddr: Any, address: tuple[str, int], timeout: float | None, con: Console
) -> tuple[socket.socket, Any]:
    """Listen, and accept one sender."""
    try:
        listener = socket.create_server(  # [::] takes IPv4 too, as the proxy's does
            sockaddr, family=family,
            dualstack_ipv6=address[0] == "::" and socket.has_dualstack_ipv6())
    except OSError as e:
        raise CommandError(f"cannot listen on {show(address)}: {error_text(e)}") from None
    with listener:
        con.say(f"listening on {show(listener.getsockname())}")
        listener.settimeout(timeout)
        try:
            return listener.accept()
        except (socket.timeout, TimeoutError):  # distinct before Python 3.10
            raise CommandError(f"no sender came within {timeout:g} s") from None
        except OSError as e:
            raise CommandError(f"cannot accept a sender: {error_text(e)}") from None


def _receive(
    conn: socket.socket, peer: str, out: Output, args: argparse.Namespace, con: Console
) -> int:
    start = time.monotonic()
    header: framing.Header | None = None
    try:
        if args.raw:
            digest = _recv_raw(conn, out, args.sha256, con)
        else:
            header = _recv_header(conn)
            con.say(f"receiving from {peer}: "
                    + ("length unknown until the end" if header.length is None
                       else f"{header.length} bytes announced"))
            digest = _recv_framed(conn, out, header, args.sha256, con)
        out.commit()
    except KeyboardInterrupt as e:
        con.say(f"interrupted after {_count(out, e)} bytes; {out.fate()}")
        return 130
    except _Incomplete as e:
        return con.error(f"{e}; {out.fate()}")
    except (_Refused, framing.FramingError) as e:
        _tell(conn, framing.reply_error(str(e)))
        return con.error(f"{e}; {out.fate()}")
    except OSError as e:
        if not args.raw:  # a disk that filled up, say: the sender should know why
            _tell(conn, framing.reply_error(f"storing the data failed: {error_text(e)}"))
        return con.error(f"receiving from {peer} failed after {_count(out, e)} bytes: "
                         f"{error_text(e)}; {out.fate()}")
    elapsed = time.monotonic() - start
    n = out.done
    if not args.raw:
        _tell(conn, framing.reply_ok(n, digest))
    where = "written to standard output" if out.to_stdout else f"saved as {out.path}"
    took = f"received {n} bytes from {peer} in {elapsed:.2f} s ({rate(n, elapsed)})"
    if args.raw:
        con.say(f"{took}; {where} (--raw: the sender's close ended the data, so a sender "
                "that stopped early looks the same)")
        if _starts_framed(out):
            con.say("note: the data starts with a zerocopy header: the sender did not use "
                    "--raw (run recv without --raw for 'zerocopy send')")
    else:
        checked = "length and end mark" + (", sha256" if header and header.sha256 else "")
        con.say(f"{took}: complete ({checked} checked); {where}")
    if digest is not None:
        mark = " (matches the sender's)" if header is not None and header.sha256 else ""
        con.say(f"sha256 {digest.hex()}{mark}")
    return 0


def _starts_framed(out: Output) -> bool:
    if out.to_stdout:
        return False
    try:
        with open(out.path, "rb") as f:
            return f.read(len(framing.HEADER_MAGIC)) == framing.HEADER_MAGIC
    except OSError:
        return False


def _count(out: Output, exc: BaseException) -> int:
    """Bytes received when ``exc`` stopped the transfer (a file knows; stdout counts)."""
    if out.to_stdout:
        return out.done + int(getattr(exc, "bytes_received", 0))
    return out.received()


def _tell(conn: socket.socket, line: bytes) -> None:
    """Send the reply line; a sender that is gone does not need it.

    Then read what the sender may still send (an end mark) until it closes,
    for a second at most: closing with unread bytes would reset the
    connection, and the reset can discard the reply before the sender reads it.
    """
    try:
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        for _ in range(16):
            if not conn.recv(65536):
                break
    except OSError:
        pass


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only when the stream ends first."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _recv_header(conn: socket.socket) -> framing.Header:
    data = _recv_exactly(conn, framing.HEADER.size)
    if not data:
        raise _Incomplete("the sender closed the connection without sending anything")
    if len(data) < framing.HEADER.size or data[:4] != framing.HEADER_MAGIC:
        raise framing.FramingError("not a zerocopy stream: the sender is not 'zerocopy send', or "
                                   "runs with --raw (for netcat and other plain senders, run "
                                   "recv with --raw too)")
    return framing.unpack_header(data)


def _recv_framed(
    conn: socket.socket, out: Output, header: framing.Header, want_digest: bool, con: Console
) -> bytes | None:
    """The body and its end mark; returns the digest of the body (None if not computed)."""
    hasher = framing.Digest() if header.sha256 or want_digest else None
    with con.progress(header.length, out.live):
        if out.to_stdout:
            end = _recv_to_stdout(conn, out, header.length, hasher)
        elif header.length is not None:
            end = _recv_known(conn, out, header.length, hasher)
        else:
            end = _recv_unknown(conn, out, hasher)
    if header.sha256 and end.sha256 is None:
        raise _Refused("the header announced a SHA-256 but the end mark carries none")
    if end.sha256 is not None:
        if hasher is None:
            raise _Refused("the end mark carries a digest the header did not announce")
        if end.sha256 != hasher.digest():
            raise _Refused(f"sha256 mismatch: the sender sent {end.sha256.hex()}, the data "
                           f"received has {hasher.digest().hex()}")
    return None if hasher is None else hasher.digest()


def _recv_known(
    conn: socket.socket, out: Output, length: int, hasher: framing.Digest | None
) -> framing.End:
    """Exactly ``length`` bytes spliced to FILE.partial, then the end mark."""
    while out.done < length:
        n = min(CHUNK, length - out.done)
        try:
            recvfile(conn, out.fd, count=n)
        except TruncatedFileError as e:
            out.done += int(getattr(e, "bytes_received", 0))
            raise _Incomplete(f"the sender stopped after {out.done} of {length} "
                              "bytes") from None
        out.done += n
        if hasher is not None:
            hasher.read_to(out.fd, out.done)
    return _end_mark(_recv_exactly(conn, framing.END.size), length)


def _end_mark(data: bytes, length: int) -> framing.End:
    if len(data) < framing.END.size:
        raise _Incomplete(f"the sender stopped after all {length} bytes but before the end "
                          "mark")
    try:
        end = framing.unpack_end(data)
    except framing.FramingError as e:
        raise _Refused(f"the {length} bytes were followed by a bad end mark ({e})") from None
    if end.length != length:
        raise _Refused(f"the end mark says {end.length} bytes, the header {length}")
    return end


def _recv_unknown(conn: socket.socket, out: Output, hasher: framing.Digest | None) -> framing.End:
    """Everything to the end of the stream; its last 48 bytes must be a matching end mark."""
    while True:
        try:
            recvfile(conn, out.fd, count=CHUNK)
        except TruncatedFileError as e:  # the end of the stream, within this chunk
            out.done += int(getattr(e, "bytes_received", 0))
            break
        out.done += CHUNK
        if hasher is not None:  # the end mark may have begun: digest what is surely data
            hasher.read_to(out.fd, out.done - framing.END.size)
    body = out.done - framing.END.size
    cut = _Incomplete(f"the data ended after {out.done} bytes without an end mark: the "
                      "sender stopped early")
    if body < 0:
        raise cut
    try:
        end = framing.unpack_end(os.pread(out.fd, framing.END.size, body))
    except framing.FramingError:
        raise cut from None
    if end.length != body:
        raise cut
    os.ftruncate(out.fd, body)
    out.done = body
    if hasher is not None:
        hasher.read_to(out.fd, body)
    return end


def _recv_to_stdout(
    conn: socket.socket, out: Output, length: int | None, hasher: framing.Digest | None
) -> framing.End:
    """Framed data to standard output, through this process (a pipe cannot be truncated).

    With an unknown length the last 48 bytes are held back until the end of
    the stream shows whether they are the end mark.
    """
    hold = framing.END.size if length is None else 0
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    held = b""
    while length is None or out.done < length:
        want = len(buf) if length is None else min(len(buf), length - out.done)
        n = conn.recv_into(view, want)
        if n == 0:
            if length is not None:
                raise _Incomplete(f"the sender stopped after {out.done} of {length} bytes")
            break
        data = held + view[:n]
        cut = max(len(data) - hold, 0)
        _write_all(out.fd, data[:cut])
        if hasher is not None:
            hasher.feed(data[:cut])
        out.done += cut
        held = data[cut:]
    if length is not None:
        return _end_mark(_recv_exactly(conn, framing.END.size), length)
    try:
        end = framing.unpack_end(held)
    except framing.FramingError:
        raise _Incomplete(f"the data ended after {out.done + len(held)} bytes without an end "
                          "mark: the sender stopped early") from None
    if end.length != out.done:
        raise _Incomplete(f"the data ended after {out.done + len(held)} bytes without a "
                          "matching end mark: the sender stopped early")
    return end


def _recv_raw(conn: socket.socket, out: Output, sha256: bool, con: Console) -> bytes | None:
    """Everything until the sender closes; its digest with --sha256."""
    hasher = framing.Digest() if sha256 else None
    with con.progress(None, out.live):
        if out.to_stdout and hasher is not None:
            _recv_to_stdout_raw(conn, out, hasher)
        else:
            while True:
                try:
                    recvfile(conn, out.fd, count=CHUNK)
                except TruncatedFileError as e:
                    out.done += int(getattr(e, "bytes_received", 0))
                    break
                out.done += CHUNK
                if hasher is not None:
                    hasher.read_to(out.fd, out.done)
            if hasher is not None:
                hasher.read_to(out.fd, out.done)
    return None if hasher is None else hasher.digest()


def _recv_to_stdout_raw(conn: socket.socket, out: Output, hasher: framing.Digest) -> None:
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    while n := conn.recv_into(view):
        _write_all(out.fd, view[:n])
        hasher.feed(view[:n])
        out.done += n


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
