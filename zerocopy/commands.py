# SPDX-License-Identifier: MIT
"""The ``proxy``, ``send`` and ``recv`` commands of ``python -m zerocopy``.

Each ``*_main(argv)`` returns an exit status: 0 on success, 1 on a runtime
error (one line on stderr, never a traceback), 2 on a usage error, 130 when
interrupted.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import IO, Any, Callable

from ._errors import TruncatedFileError
from .relay import Proxy, ProxyStats
from .sendfile import sendfile_all
from .splice import recvfile

__all__ = ["parse_address", "proxy_main", "recv_main", "send_main"]

DEFAULT_HOST = "127.0.0.1"  # everything binds to loopback unless told otherwise
CHUNK = 8 * 1024 * 1024  # bytes between two progress updates
MiB = 1024 * 1024


class UsageError(Exception):
    """A bad command-line argument (exit status 2)."""


def parse_address(text: str, default_host: str | None = DEFAULT_HOST) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port).

    Without a host, ``default_host`` is used (``None``: the host is required).
    """
    host: str | None
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise UsageError(f"bad address {text!r} (expected [IPV6]:PORT)")
        host, port_text = text[1:end], text[end + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise UsageError(f"bad address {text!r} (write IPv6 addresses as [ADDR]:PORT)")
    else:
        host, port_text = None, text
    if not host:
        if default_host is None:
            raise UsageError(f"bad address {text!r} (expected HOST:PORT)")
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"port out of range in {text!r}")
    return host, port


def _show(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB / seconds:.1f} MiB/s" if seconds > 0 else "-"


class _Command:
    """Shared plumbing: argument parsing and one-line errors."""

    def __init__(self, name: str, stderr: IO[str] | None = None) -> None:
        self.name = name
        self.err = stderr if stderr is not None else sys.stderr

    def say(self, text: str) -> None:
        print(f"zerocopy {self.name}: {text}", file=self.err, flush=True)

    def fail(self, text: str) -> int:
        self.say(f"error: {text}")
        return 1

    def usage(self, parser: argparse.ArgumentParser, text: str) -> int:
        parser.print_usage(self.err)
        self.say(f"error: {text}")
        return 2

    def parse(
        self, parser: argparse.ArgumentParser, argv: Sequence[str]
    ) -> argparse.Namespace | int:
        try:
            return parser.parse_args(list(argv))
        except SystemExit as e:  # argparse printed its message
            return e.code if isinstance(e.code, int) else 2


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, stream: IO[str], total: int | None) -> None:
        self.stream = stream
        self.total = total
        self.enabled = stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.1:
            return
        self.last = now
        text = f"{done / MiB:10.1f} MiB"
        if self.total:
            frac = min(done / self.total, 1.0)
            filled = int(frac * 30)
            text += f" [{'#' * filled}{'.' * (30 - filled)}] {frac * 100:5.1f}%"
        text += f"  {_rate(done, now - self.start)}"
        self.stream.write("\r" + text + ("\n" if final else ""))
        self.stream.flush()


# --------------------------------------------------------------------------- proxy


def proxy_main(argv: Sequence[str], *, stderr: IO[str] | None = None) -> int:
    """``python -m zerocopy proxy LISTEN TARGET``: relay TCP connections with splice."""
    cmd = _Command("proxy", stderr)
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy proxy",
        description="Relay every TCP connection accepted on LISTEN to TARGET, "
        "in the kernel (splice), from one thread.",
    )
    parser.add_argument("listen", metavar="LISTEN",
                        help=f"[HOST:]PORT to listen on (default host {DEFAULT_HOST}; "
                             "0.0.0.0 or [::] for all interfaces)")
    parser.add_argument("target", metavar="TARGET", help="HOST:PORT to connect each client to")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print a one-line summary every second")
    parser.add_argument("--max-connections", type=int, default=1024, metavar="N",
                        help="relay at most N connections at once (default 1024)")
    args = cmd.parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        listen = parse_address(args.listen)
        target = parse_address(args.target, None)
        if args.max_connections < 1:
            raise UsageError("--max-connections must be at least 1")
    except UsageError as e:
        return cmd.usage(parser, str(e))
    try:
        socket.getaddrinfo(target[0], target[1], 0, socket.SOCK_STREAM)
    except OSError as e:
        return cmd.fail(f"cannot resolve target {_show(target)}: {_error_text(e)}")
    try:
        proxy = Proxy(listen, target, max_connections=args.max_connections)
    except OSError as e:
        return cmd.fail(f"cannot listen on {_show(listen)}: {_error_text(e)}")
    stopped: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.append(signal.Signals(signum).name)
        proxy.close()

    last: list[ProxyStats] = [proxy.stats()]

    def summary(st: ProxyStats) -> None:
        prev = last[0]
        last[0] = st
        cmd.say(
            f"{st.active} active, {st.accepted} accepted, {st.completed} done, "
            f"{st.failed} failed; up {(st.bytes_up - prev.bytes_up) / MiB:.1f} MiB/s, "
            f"down {(st.bytes_down - prev.bytes_down) / MiB:.1f} MiB/s"
        )

    cmd.say(f"listening on {_show(proxy.address)}, relaying to {_show(target)}")
    with _handlers(stop, (signal.SIGINT, signal.SIGTERM)):
        try:
            proxy.serve_forever(callback=summary if args.verbose else None, interval=1.0)
        except OSError as e:
            proxy.close()
            return cmd.fail(_error_text(e))
        finally:
            proxy.close()
    st = proxy.stats()
    cmd.say(
        f"stopped ({stopped[0] if stopped else 'closed'}): {st.accepted} connections, "
        f"{st.failed} failed, {st.bytes_up} bytes up, {st.bytes_down} bytes down"
    )
    return 0


@contextmanager
def _handlers(
    handler: Callable[[int, FrameType | None], None], signums: Sequence[int]
) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- send


def send_main(argv: Sequence[str], *, stderr: IO[str] | None = None) -> int:
    """``python -m zerocopy send FILE HOST:PORT``: send a file with sendfile."""
    cmd = _Command("send", stderr)
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy send",
        description="Send FILE to a `python -m zerocopy recv` (or any TCP listener) "
        "with sendfile(2).",
    )
    parser.add_argument("file", metavar="FILE")
    parser.add_argument("address", metavar="HOST:PORT",
                        help=f"where to connect ([HOST:]PORT, default host {DEFAULT_HOST})")
    parser.add_argument("--sha256", action="store_true",
                        help="verify end to end: compare with the digest the receiver "
                             "(recv --sha256) reports")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up when the network stalls this long (default 30)")
    args = cmd.parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        address = parse_address(args.address)
    except UsageError as e:
        return cmd.usage(parser, str(e))
    try:
        f = open(args.file, "rb")
    except OSError as e:
        return cmd.fail(f"cannot open {args.file}: {_error_text(e)}")
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            digest = _sha256_of(f) if args.sha256 else ""
        except OSError as e:
            return cmd.fail(f"cannot read {args.file}: {_error_text(e)}")
        try:
            sock = socket.create_connection(address, timeout=args.timeout)
        except OSError as e:
            return cmd.fail(f"cannot connect to {_show(address)}: {_error_text(e)}")
        with sock:
            progress = _Progress(cmd.err, size)
            start = time.monotonic()
            sent = 0
            try:
                while sent < size:
                    sent += sendfile_all(sock, f, offset=sent, count=min(CHUNK, size - sent))
                    progress.update(sent)
                progress.update(sent, final=True)
                sock.shutdown(socket.SHUT_WR)
                reply = _read_reply(sock)
            except TruncatedFileError:
                return cmd.fail(f"{args.file} shrank while it was being sent")
            except KeyboardInterrupt as e:  # bytes_sent: what the current chunk got out
                cmd.say(f"interrupted after {sent + getattr(e, 'bytes_sent', 0)} bytes")
                return 130
            except OSError as e:
                done = sent + getattr(e, "bytes_sent", 0)
                return cmd.fail(f"sending to {_show(address)} failed after {done} bytes: "
                                f"{_error_text(e)}")
            elapsed = time.monotonic() - start
    cmd.say(f"sent {sent} bytes in {elapsed:.2f} s ({_rate(sent, elapsed)})")
    if args.sha256:
        theirs = reply.decode("ascii", "replace").strip()
        if not theirs.startswith("sha256 "):
            return cmd.fail("cannot verify: the receiver sent no digest "
                            "(run recv with --sha256 too)")
        if theirs.split()[1] != digest:
            return cmd.fail(f"sha256 mismatch: sent {digest}, receiver got {theirs.split()[1]}")
        cmd.say(f"sha256 {digest} verified by the receiver")
    return 0


def _sha256_of(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    pos = f.tell()
    while block := f.read(1024 * 1024):
        h.update(block)
    f.seek(pos)
    return h.hexdigest()


def _read_reply(sock: socket.socket) -> bytes:
    """Wait for the receiver to close (it got everything); return what it said."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
        if len(data) > 4096:
            break
    return data


# --------------------------------------------------------------------------- recv


def recv_main(argv: Sequence[str], *, stderr: IO[str] | None = None) -> int:
    """``python -m zerocopy recv [HOST:]PORT -o FILE``: receive one file with splice."""
    cmd = _Command("recv", stderr)
    parser = argparse.ArgumentParser(
        prog="python -m zerocopy recv",
        description="Accept one connection and write what it sends to FILE with splice(2).",
    )
    parser.add_argument("address", metavar="[HOST:]PORT",
                        help=f"where to listen (default host {DEFAULT_HOST}; port 0 picks one)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="file to create ('-' for standard output)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("--sha256", action="store_true",
                        help="print the received data's digest and report it to the sender")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up when no sender comes or the network stalls this long")
    args = cmd.parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        address = parse_address(args.address)
        if args.sha256 and args.output == "-":
            raise UsageError("--sha256 needs an output file, not standard output")
    except UsageError as e:
        return cmd.usage(parser, str(e))
    out: IO[bytes]
    if args.output == "-":
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    else:
        try:
            out = open(args.output, "wb" if args.force else "xb")
        except FileExistsError:
            return cmd.fail(f"{args.output} exists (use --force to overwrite)")
        except OSError as e:
            return cmd.fail(f"cannot create {args.output}: {_error_text(e)}")
    with out:
        try:
            listener = socket.create_server(
                address,
                family=socket.AF_INET6 if ":" in address[0] else socket.AF_INET,
            )
        except OSError as e:
            _discard(args.output)
            return cmd.fail(f"cannot listen on {_show(address)}: {_error_text(e)}")
        with listener:
            cmd.say(f"listening on {_show(listener.getsockname())}")
            listener.settimeout(args.timeout)
            try:
                conn, peer = listener.accept()
            except (OSError, KeyboardInterrupt) as e:
                _discard(args.output)
                if isinstance(e, KeyboardInterrupt):
                    cmd.say("interrupted")
                    return 130
                return cmd.fail(f"no sender: {_error_text(e)}")
        with conn:
            conn.settimeout(args.timeout)
            progress = _Progress(cmd.err, None)
            start = time.monotonic()
            got = 0
            try:
                if progress.enabled:
                    while True:
                        try:
                            got += recvfile(conn, out, count=CHUNK)
                        except TruncatedFileError as e:
                            got += e.bytes_received  # type: ignore[attr-defined]
                            break
                        progress.update(got)
                    progress.update(got, final=True)
                else:
                    got = recvfile(conn, out)
                out.flush()
                elapsed = time.monotonic() - start
                digest = ""
                if args.sha256:
                    digest = _digest_written(args.output, got)
                    conn.sendall(f"sha256 {digest}\n".encode())
            except KeyboardInterrupt:
                cmd.say("interrupted")
                return 130
            except OSError as e:
                done = got + int(getattr(e, "bytes_received", 0))
                return cmd.fail(f"receiving from {_show(peer)} failed after {done} bytes: "
                                f"{_error_text(e)}")
    cmd.say(f"received {got} bytes from {_show(peer)} in {elapsed:.2f} s "
            f"({_rate(got, elapsed)})")
    if digest:
        cmd.say(f"sha256 {digest}")
    return 0


def _discard(path: str) -> None:
    """Remove the empty file made for a transfer that never started."""
    if path != "-":
        try:
            if os.path.getsize(path) == 0:
                os.unlink(path)
        except OSError:
            pass


def _digest_written(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left and (block := f.read(min(left, 1024 * 1024))):
            h.update(block)
            left -= len(block)
    return h.hexdigest()
