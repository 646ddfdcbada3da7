"""Helpers shared by the zerocopy tests (imported by conftest and tests)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

DEADLINE = 30.0

# Buffer sizes that make a socket stall quickly when its peer does not read.
SMALL_BUF = 32 * 1024

# Size of the shared random file: far more than a "small" socket pair can
# hold in its buffers (a few hundred KiB at most), so a non-reading peer
# always stalls the sender.
BIG_SIZE = 4 * 1024 * 1024


def _ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAVE_IPV6 = _ipv6_available()


def _tcp_pair(
    family: int, host: str, sndbuf: int | None, rcvbuf: int | None
) -> tuple[socket.socket, socket.socket]:
    lst = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            # Set on the listener so the accepted socket inherits it before
            # the handshake (the advertised window depends on it).
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        lst.bind((host, 0))
        lst.listen(1)
        lst.settimeout(DEADLINE)
        cli = socket.socket(family, socket.SOCK_STREAM)
        try:
            if sndbuf:
                cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            cli.settimeout(DEADLINE)
            cli.connect(lst.getsockname()[:2])
            cli.settimeout(None)
            srv, _ = lst.accept()
        except BaseException:
            cli.close()
            raise
        srv.settimeout(None)
        return cli, srv
    finally:
        lst.close()


def _unix_pair(sndbuf: int | None, rcvbuf: int | None) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if rcvbuf:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return a, b


def new_pair(kind: str, *, small: bool = False) -> tuple[socket.socket, socket.socket]:
    """Return (sender, receiver), both blocking, connected to each other."""
    sndbuf = rcvbuf = SMALL_BUF if small else None
    if kind == "tcp4":
        return _tcp_pair(socket.AF_INET, "127.0.0.1", sndbuf, rcvbuf)
    if kind == "tcp6":
        if not HAVE_IPV6:
            pytest.skip("no IPv6 loopback (::1)")
        return _tcp_pair(socket.AF_INET6, "::1", sndbuf, rcvbuf)
    if kind == "unix":
        return _unix_pair(sndbuf, rcvbuf)
    raise AssertionError(kind)


STREAM_KINDS = ["tcp4", "tcp6", "unix"]


class Collector:
    """Background receiver: collects every byte until EOF, with a deadline.

    start: optional threading.Event; reading begins when it is set (or after
    start_timeout, so a test whose trigger never comes still finishes).
    delay: seconds to sleep after each recv (a slow reader).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        start: threading.Event | None = None,
        start_timeout: float = 20.0,
        delay: float = 0.0,
        chunk: int = 65536,
        deadline: float = DEADLINE,
    ) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._start = start
        self._start_timeout = start_timeout
        self._delay = delay
        self._chunk = chunk
        self._deadline = deadline
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if self._start is not None:
                self._start.wait(self._start_timeout)
            end = time.monotonic() + self._deadline
            self.sock.settimeout(0.2)
            while time.monotonic() < end:
                try:
                    b = self.sock.recv(self._chunk)
                except socket.timeout:
                    continue
                if not b:
                    self.eof = True
                    return
                self.buf += b
                if self._delay:
                    time.sleep(self._delay)
        except Exception as e:
            self.error = e

    def result(self, timeout: float = DEADLINE + 25.0) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "receiver thread did not finish"
        if self.error is not None:
            raise self.error
        assert self.eof, "receiver reached its deadline before EOF"
        return bytes(self.buf)


def eof(sock: socket.socket) -> None:
    """Signal end of stream to the receiver."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def recv_exactly(sock: socket.socket, n: int, deadline: float = DEADLINE) -> bytes:
    """Read exactly n bytes from a blocking socket, bounded in time."""
    buf = bytearray()
    end = time.monotonic() + deadline
    old = sock.gettimeout()
    sock.settimeout(0.2)
    try:
        while len(buf) < n:
            assert time.monotonic() < end, f"got {len(buf)} of {n} bytes"
            try:
                b = sock.recv(n - len(buf))
            except socket.timeout:
                continue
            assert b, f"EOF after {len(buf)} of {n} bytes"
            buf += b
    finally:
        sock.settimeout(old)
    return bytes(buf)
