"""Helpers shared by the zerocopy tests (conftest.py holds the fixtures built on them).

Every wait here is bounded: a helper that waits on a peer gives up at a
deadline and fails the test instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DEADLINE = 30.0

# Buffer sizes that make a socket stall quickly when its peer does not read.
SMALL_BUF = 32 * 1024

# Size of the shared random file: far more than a "small" socket pair can
# hold in its buffers (a few hundred KiB at most), so a non-reading peer
# always stalls the sender.
BIG_SIZE = 4 * 1024 * 1024

Pair = tuple[socket.socket, socket.socket]

# --------------------------------------------------------------------------- data and files


def rand_bytes(n: int, seed: int) -> bytes:
    """n reproducible random bytes."""
    return random.Random(seed).randbytes(n)


def make_file(tmp_path: Path, data: bytes = b"0123456789", name: str = "tiny.bin") -> str:
    """Write data to tmp_path/name and return the path as a str."""
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- socket pairs


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


def _tcp_pair(family: int, host: str, sndbuf: int | None, rcvbuf: int | None) -> Pair:
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


def _unix_pair(sndbuf: int | None, rcvbuf: int | None) -> Pair:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if rcvbuf:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return a, b


def new_pair(
    kind: str, *, small: bool = False, sndbuf: int | None = None, rcvbuf: int | None = None
) -> Pair:
    """Return (sender, receiver), both blocking, connected to each other.

    kind is "tcp4", "tcp6" (skips without an IPv6 loopback) or "unix".
    small=True gives both SMALL_BUF; sndbuf and rcvbuf set one side each
    (on TCP before connecting, so the window is advertised accordingly).
    """
    if small:
        sndbuf, rcvbuf = sndbuf or SMALL_BUF, rcvbuf or SMALL_BUF
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


def closed_port() -> int:
    """A loopback TCP port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset(sock: socket.socket) -> None:
    """Close with a reset (RST, SO_LINGER 0) on TCP; a plain close elsewhere."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def eof(sock: socket.socket) -> None:
    """Signal end of stream to the receiver."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# --------------------------------------------------------------------------- socket state


def cork_of(sock: socket.socket) -> int:
    """The socket's TCP_CORK setting."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


def nodelay_of(sock: socket.socket) -> int:
    """The socket's TCP_NODELAY setting."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _ioctl_int(sock: socket.socket, request: int) -> int:
    raw = fcntl.ioctl(sock.fileno(), request, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


def outq(sock: socket.socket) -> int:
    """Bytes in the socket's send queue, sent or not (SIOCOUTQ == TIOCOUTQ)."""
    return _ioctl_int(sock, termios.TIOCOUTQ)


SIOCOUTQNSD = 0x894B


def unsent(sock: socket.socket) -> int:
    """Bytes in a TCP socket's send queue not yet sent (SIOCOUTQNSD)."""
    return _ioctl_int(sock, SIOCOUTQNSD)


def wait_pollerr(sock: socket.socket, deadline: float = 5.0) -> bool:
    """Wait (bounded) until the socket's error queue has something (POLLERR)."""
    p = select.poll()
    p.register(sock.fileno(), 0)  # POLLERR is always reported
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if any(ev & select.POLLERR for _, ev in p.poll(50)):
            return True
    return False


def wait_until(cond: Callable[[], object], deadline: float = DEADLINE, pause: float = 0.01) -> bool:
    """Poll cond() until it is true or the deadline passes; return its last value's truth."""
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() >= end:
            return False
        time.sleep(pause)
    return True


# --------------------------------------------------------------------------- readers


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


def recv_to_eof(
    src: socket.socket | int, limit: int | None = None, deadline: float = DEADLINE
) -> bytes:
    """Read a socket or a file descriptor (a pipe) to EOF, bounded in time.

    limit: stop early once more than limit bytes came (a stream that should
    have ended then cannot keep the reader going).
    """
    fd = src.fileno() if isinstance(src, socket.socket) else src
    buf = bytearray()
    end = time.monotonic() + deadline
    while limit is None or len(buf) <= limit:
        assert time.monotonic() < end, f"no EOF after {len(buf)} bytes"
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        b = src.recv(65536) if isinstance(src, socket.socket) else os.read(fd, 65536)
        if not b:
            break
        buf += b
    return bytes(buf)


def recv_then_reset(sock: socket.socket, n: int, deadline: float = DEADLINE) -> bytes:
    """Read until n bytes (or EOF, or the deadline), then reset() with data still queued.

    The peer's next send then fails (ECONNRESET or EPIPE).  Returns what was read.
    """
    got = bytearray()
    sock.settimeout(0.2)
    end = time.monotonic() + deadline
    while len(got) < n and time.monotonic() < end:
        try:
            b = sock.recv(65536)
        except socket.timeout:
            continue
        if not b:
            break
        got.extend(b)
    reset(sock)
    return bytes(got)


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


# --------------------------------------------------------------------------- threads


class Call:
    """Run fn() in a daemon thread; join(deadline) says whether it finished.

    A call that hangs when the code is broken runs here, so the test fails
    at the deadline instead of hanging the run.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as e:  # reported to the test
            self.error = e

    def join(self, deadline: float) -> bool:
        self.thread.join(deadline)
        return not self.thread.is_alive()

    def value(self, deadline: float = DEADLINE) -> Any:
        """fn's return value; re-raises its exception; fails if it is still running."""
        assert self.join(deadline), f"the call did not finish within {deadline} s (hung)"
        if self.error is not None:
            raise self.error
        return self.result


def feed(
    dst: socket.socket | int,
    data: bytes,
    *,
    delay: float = 0.0,
    close: bool = False,
    chunk: int = 65536,
) -> threading.Thread:
    """Write data into a socket or a pipe's write end from a thread, after delay.

    Then the end of stream: a socket is shut down for writing (closed with
    close=True); an fd is closed (a pipe has no other EOF).  A reader that
    went away ends the thread quietly: the test reports the missing bytes.
    """

    def run() -> None:
        try:
            if delay:
                time.sleep(delay)
            view = memoryview(data)
            while view:
                if isinstance(dst, socket.socket):
                    dst.sendall(view[:chunk])
                    view = view[chunk:]
                else:
                    view = view[os.write(dst, view[:chunk]) :]
            if isinstance(dst, socket.socket) and not close:
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            if isinstance(dst, int):
                os.close(dst)
            elif close:
                dst.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class Ticker:
    """Counts in a background thread; a count that advances while a C call
    blocks in this thread proves the call released the GIL.

    pause: sleep between counts (0 counts as fast as the GIL allows).
    """

    def __init__(self, pause: float = 0.001, deadline: float = 2 * DEADLINE) -> None:
        self.count = 0
        self._pause = pause
        self._deadline = deadline
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        end = time.monotonic() + self._deadline
        while not self._stop.is_set() and time.monotonic() < end:
            self.count += 1
            if self._pause:
                time.sleep(self._pause)

    def wait_for(self, n: int, deadline: float = DEADLINE) -> bool:
        """Wait until the count reached n (bounded)."""
        return wait_until(lambda: self.count >= n, deadline, pause=0.001)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(DEADLINE)

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LibHook:
    """Stands in for ``lib`` in a module, running ``before()`` ahead of each call of one function.

    monkeypatch.setattr(module, "lib", LibHook(lib, "zc_name", before)).
    """

    def __init__(self, real: object, name: str, before: Callable[[], object]) -> None:
        self._real, self._name, self._before = real, name, before

    def __getattr__(self, attr: str) -> Any:
        fn = getattr(self._real, attr)
        if attr != self._name:
            return fn

        def call(*args: Any) -> Any:
            self._before()
            return fn(*args)

        return call


# --------------------------------------------------------------------------- signals


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """A signal handler that acts like Ctrl-C."""
    raise KeyboardInterrupt


class KeyboardInterruptOnce:
    """A signal handler that acts like Ctrl-C the first time, then returns.

    For a repeating timer where a single signal may go unseen: OpenSSL retries
    a partial write inside SSL_write, so a signal that cuts a blocking write
    short (rather than interrupting it before any byte) gets its Python
    handler run only when a later signal makes the write fail with EINTR.
    """

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: object) -> None:
        if not self.raised:
            self.raised = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def itimer(
    handler: Callable[[int, Any], object], first: float, interval: float = 0.0
) -> Iterator[None]:
    """SIGALRM goes to handler, first after `first` s then every `interval` s (0: once).

    first=0 installs the handler without arming the timer.  On leaving, the
    timer is disarmed and the old handler restored.  Tests using this run
    pytest-timeout with method="thread" (the two would share ITIMER_REAL).
    """
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, first, interval)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- servers


class EchoServer:
    """Echoes each connection (a thread each), half-closing after the client's EOF."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]  # type: ignore[no-any-return]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        try:
            c.settimeout(DEADLINE)
            while chunk := c.recv(65536):
                c.sendall(chunk)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        self.sock.close()


# --------------------------------------------------------------------------- TLS


def make_tls_cert(directory: Path) -> tuple[str, str] | None:
    """A self-signed certificate for 127.0.0.1 made with the openssl CLI; None without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def tls_pair(cert: tuple[str, str]) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """(server, client): TLS sockets over TCP loopback, handshake done, both blocking.

    The server side is the one a server author would send with; the client
    verifies the certificate, as a real client would.
    """
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*cert)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert[0])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        raw_client = socket.create_connection(listener.getsockname(), timeout=DEADLINE)
        raw_server, _ = listener.accept()
    raw_server.settimeout(DEADLINE)
    hello = Call(lambda: client_ctx.wrap_socket(raw_client, server_hostname="127.0.0.1"))
    server = server_ctx.wrap_socket(raw_server, server_side=True)
    client: ssl.SSLSocket = hello.value()
    server.settimeout(None)
    client.settimeout(None)
    return server, client


def tls_read_to_eof(client: ssl.SSLSocket, deadline: float = DEADLINE) -> bytes:
    """Every byte the TLS client can decrypt until the stream ends (a TCP FIN, or a
    record cut short by it, which the ssl module reports as an error), bounded in time."""
    buf = bytearray()
    client.settimeout(deadline)
    while True:
        try:
            chunk = client.recv(1 << 20)
        except ssl.SSLError:  # EOF inside a record: what came before it is all there is
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def stall_tls_pair(server: ssl.SSLSocket, client: ssl.SSLSocket) -> None:
    """Small buffers both ways, so a server that sends to a client that does not read
    blocks after a few records."""
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
