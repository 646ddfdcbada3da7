"""Shared fixtures for the zerocopy test suite.

Everything runs over loopback (127.0.0.1, ::1) or AF_UNIX socketpairs.  Every
wait is bounded: receivers give up at a deadline, connects and accepts have
timeouts, so a hung peer fails a test instead of hanging the run.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Callable, Iterator

import pytest

# Make tests/_zcutil.py importable whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _zcutil import (
    BIG_SIZE,
    HAVE_IPV6,
    STREAM_KINDS,
    Collector,
    new_pair,
)


@pytest.fixture
def make_pair() -> Iterator[Callable[..., tuple[socket.socket, socket.socket]]]:
    """Factory: make_pair(kind, small=False) -> (sender, receiver).

    All sockets made are closed at teardown.
    """
    made: list[socket.socket] = []

    def factory(kind: str = "tcp4", *, small: bool = False) -> tuple[socket.socket, socket.socket]:
        s, r = new_pair(kind, small=small)
        made.extend((s, r))
        return s, r

    yield factory
    for s in made:
        s.close()


@pytest.fixture(params=STREAM_KINDS)
def stream_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "tcp6" and not HAVE_IPV6:
        pytest.skip("no IPv6 loopback (::1)")
    return request.param


@pytest.fixture
def pair(
    make_pair: Callable[..., tuple[socket.socket, socket.socket]], stream_kind: str
) -> tuple[socket.socket, socket.socket]:
    """A connected (sender, receiver) pair of every stream kind."""
    return make_pair(stream_kind)


@pytest.fixture
def small_pair(
    make_pair: Callable[..., tuple[socket.socket, socket.socket]], stream_kind: str
) -> tuple[socket.socket, socket.socket]:
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
    return random.Random(20240611).randbytes(BIG_SIZE)


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
