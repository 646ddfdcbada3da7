"""Shared fixtures for the zerocopy test suite.

Everything runs over loopback (127.0.0.1, ::1) or AF_UNIX socketpairs.  Every
wait is bounded: receivers give up at a deadline, connects and accepts have
timeouts, so a hung peer fails a test instead of hanging the run.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Make tests/_zcutil.py importable whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _zcutil import (
    BIG_SIZE,
    STREAM_KINDS,
    Collector,
    EchoServer,
    Pair,
    make_tls_cert,
    new_pair,
    rand_bytes,
    tls_pair,
)


@pytest.fixture
def make_pair() -> Iterator[Callable[..., Pair]]:
    """Factory: make_pair(kind="tcp4", small=False, sndbuf=None, rcvbuf=None) -> (sender, receiver).

    The arguments are new_pair's.  All sockets made are closed at teardown.
    """
    made: list[socket.socket] = []

    def factory(kind: str = "tcp4", **kw: Any) -> Pair:
        s, r = new_pair(kind, **kw)
        made.extend((s, r))
        return s, r

    yield factory
    for s in made:
        s.close()


@pytest.fixture(params=STREAM_KINDS)
def stream_kind(request: pytest.FixtureRequest) -> str:
    """Each stream kind in turn (a tcp6 pair skips without an IPv6 loopback)."""
    return str(request.param)


@pytest.fixture
def pair(make_pair: Callable[..., Pair], stream_kind: str) -> Pair:
    """A connected (sender, receiver) pair of every stream kind."""
    return make_pair(stream_kind)


@pytest.fixture
def small_pair(make_pair: Callable[..., Pair], stream_kind: str) -> Pair:
    """Like ``pair`` but with small buffers, so a non-reading peer stalls it."""
    return make_pair(stream_kind, small=True)


@pytest.fixture
def collect() -> Iterator[Callable[..., Collector]]:
    """Factory: collect(sock, **kw) -> Collector (joined at teardown)."""
    started: list[Collector] = []

    def factory(sock: socket.socket, **kw: object) -> Collector:
        c = Collector(sock, **kw)  # type: ignore[arg-type]
        started.append(c)
        return c

    yield factory
    for c in started:
        if c._start is not None:
            c._start.set()
        # Sockets are closed by their own fixture; a daemon thread that is
        # still blocked ends at its deadline.
        c.thread.join(0.5)


@pytest.fixture(scope="session")
def big_data() -> bytes:
    """BIG_SIZE bytes of reproducible random data."""
    return rand_bytes(BIG_SIZE, 20240611)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory, big_data: bytes) -> str:
    """Path of a file holding big_data (read-only use!)."""
    p = tmp_path_factory.mktemp("data") / "big.bin"
    p.write_bytes(big_data)
    return str(p)


@pytest.fixture(scope="session")
def small_data(big_data: bytes) -> bytes:
    return big_data[:300_000]


@pytest.fixture(scope="session")
def small_file(tmp_path_factory: pytest.TempPathFactory, small_data: bytes) -> str:
    p = tmp_path_factory.mktemp("data") / "small.bin"
    p.write_bytes(small_data)
    return str(p)


@pytest.fixture
def open_fds() -> Iterator[list[int]]:
    """A list the test appends raw fds to; they are closed at teardown."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(certfile, keyfile) of a self-signed certificate for 127.0.0.1."""
    cert = make_tls_cert(tmp_path_factory.mktemp("tls"))
    if cert is None:
        pytest.skip("the openssl command is not installed")
    return cert


@pytest.fixture
def tls(tls_cert: tuple[str, str]) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """(server, client) TLS sockets over loopback; the server side sends."""
    server, client = tls_pair(tls_cert)
    yield server, client
    server.close()
    client.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """An echo server on 127.0.0.1 (EchoServer), closed at teardown."""
    server = EchoServer()
    yield server
    server.close()
