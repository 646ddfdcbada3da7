"""relay() and Proxy: byte-exact both ways, half-closes, resets, many connections, signals."""

from __future__ import annotations

import errno
import gc
import math
import os
import random
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _zcutil import (
    DEADLINE,
    HAVE_IPV6,
    Call,
    EchoServer,
    LibHook,
    Pair,
    Ticker,
    closed_port,
    fd_count,
    itimer,
    new_pair,
    recv_exactly,
    recv_to_eof,
    reset,
    wait_until,
)

from zerocopy.relay import Proxy, default_max_connections, relay
from zerocopy.splice import default_pool


class Peer:
    """One end of a relayed stream: sends ``data`` then half-closes, reads to EOF."""

    def __init__(self, sock: socket.socket, data: bytes, *, send_after_eof: bool = False) -> None:
        self.sock = sock
        self.data = data
        self.got = bytearray()
        self.error: BaseException | None = None
        self._after_eof = send_after_eof
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        self.sock.sendall(self.data)
        self.sock.shutdown(socket.SHUT_WR)

    def _run(self) -> None:
        try:
            self.sock.settimeout(DEADLINE)
            sender = None
            if not self._after_eof:
                sender = threading.Thread(target=self._send, daemon=True)
                sender.start()
            while chunk := self.sock.recv(65536):
                self.got += chunk
            if self._after_eof:  # request/response: answer after the peer's EOF
                self._send()
            if sender is not None:
                sender.join(DEADLINE)
        except BaseException as e:
            self.error = e

    def result(self) -> bytes:
        self.thread.join(DEADLINE + 5)
        assert not self.thread.is_alive(), "peer did not finish"
        if self.error is not None:
            raise self.error
        return bytes(self.got)


@pytest.fixture
def chain(make_pair: Callable[..., Pair]) -> Callable[..., tuple[Pair, Pair]]:
    """Factory: chain(kind_a="tcp4", kind_b="tcp4") -> ((x, a), (b, y)), closed at teardown.

    x <-> a  and  b <-> y: relay(a, b) joins x and y.
    """

    def factory(kind_a: str = "tcp4", kind_b: str = "tcp4") -> tuple[Pair, Pair]:
        return make_pair(kind_a), make_pair(kind_b)

    return factory


@pytest.mark.parametrize(
    "kinds", [("tcp4", "tcp4"), ("unix", "unix"), ("tcp4", "unix"), ("tcp6", "tcp6")]
)
def test_both_directions_at_once_with_half_close(chain, big_data: bytes, kinds) -> None:
    (x, a), (b, y) = chain(*kinds)
    up, down = big_data, big_data[::-1][: len(big_data) // 3]
    px, py = Peer(x, up), Peer(y, down)
    assert relay(a, b, timeout=DEADLINE) == (len(up), len(down))
    assert py.result() == up
    assert px.result() == down
    assert a.getblocking() and b.getblocking()  # flags restored


def test_half_close_then_answer(chain, small_data: bytes) -> None:
    """The client half-closes after its request; the server answers after EOF."""
    (x, a), (b, y) = chain()
    request = b"GET / please\n" * 100
    client = Peer(x, request)
    server = Peer(y, small_data, send_after_eof=True)
    assert relay(a, b, timeout=DEADLINE) == (len(request), len(small_data))
    assert server.result() == request
    assert client.result() == small_data


def test_empty_streams(chain) -> None:
    (x, a), (b, y) = chain("unix", "tcp4")
    px, py = Peer(x, b""), Peer(y, b"")
    assert relay(a, b) == (0, 0)
    assert px.result() == b"" and py.result() == b""


@pytest.mark.parametrize("side", ["x", "y"])
def test_reset_on_either_side_ends_both(chain, side: str) -> None:
    (x, a), (b, y) = chain()
    x.sendall(b"hello")
    y.sendall(b"world!")
    call = Call(lambda: relay(a, b, timeout=DEADLINE))
    assert recv_exactly(y, 5) == b"hello"
    assert recv_exactly(x, 6) == b"world!"
    victim, other = (x, y) if side == "x" else (y, x)
    reset(victim)
    assert call.join(DEADLINE)
    exc = call.error
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
    assert exc.bytes_relayed == (5, 6)  # type: ignore[attr-defined]
    other.settimeout(DEADLINE)
    with pytest.raises(ConnectionResetError):
        other.recv(10)  # the relay reset this side too


def test_idle_timeout(chain) -> None:
    (x, a), (b, y) = chain()
    x.sendall(b"abc")
    with pytest.raises(TimeoutError) as ei:
        relay(a, b, timeout=0.3)
    assert ei.value.bytes_relayed == (3, 0)  # type: ignore[attr-defined]
    assert recv_exactly(y, 3) == b"abc"
    assert a.getblocking()


def test_argument_errors(chain) -> None:
    (_, a), (b, _) = chain()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            relay(a, udp)
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            relay(udp.fileno(), b)
    with pytest.raises(TypeError):
        relay(a, "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        relay(a, b, timeout=-1)
    with pytest.raises(OSError):
        relay(a, a)


def test_many_relays_in_threads(small_data: bytes) -> None:
    """Concurrent relay() calls share the pipe pool; every stream arrives intact."""
    n = 24
    rng = random.Random(4)
    socks: list[socket.socket] = []
    peers: list[tuple[Peer, Peer, bytes, bytes]] = []
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        for i in range(n):
            (x, a), (b, y) = new_pair("unix" if i % 2 else "tcp4"), new_pair("tcp4")
            socks += [x, a, b, y]
            up = small_data[: rng.randrange(0, len(small_data))]
            down = small_data[rng.randrange(0, len(small_data)) :]
            peers.append((Peer(x, up), Peer(y, down), up, down))
            pairs.append((a, b))
        calls = [Call(lambda a=a, b=b: relay(a, b, timeout=DEADLINE)) for a, b in pairs]
        for call, (px, py, up, down) in zip(calls, peers):
            assert py.result() == up
            assert px.result() == down
            assert call.value(DEADLINE) == (len(up), len(down))
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(60, method="thread")
def test_signal_handler_that_returns_resumes_relay(chain, small_data: bytes) -> None:
    (x, a), (b, y) = chain()
    ticks = [0]

    def handler(signum, frame) -> None:
        ticks[0] += 1

    def later() -> None:
        time.sleep(0.5)
        Peer(x, small_data)

    py = Peer(y, b"")
    threading.Thread(target=later, daemon=True).start()
    with itimer(handler, 0.05, 0.05):
        moved = relay(a, b, timeout=DEADLINE)
    assert moved == (len(small_data), 0)
    assert py.result() == small_data
    assert ticks[0] > 0


@pytest.mark.timeout(60, method="thread")
def test_keyboard_interrupt_during_blocked_relay(chain) -> None:
    (x, a), (b, y) = chain()
    x.sendall(b"12345")
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as ei:
            relay(a, b)
    finally:
        timer.cancel()
        timer.join(5)
        signal.signal(signal.SIGINT, old)
    assert ei.value.bytes_relayed == (5, 0)  # type: ignore[attr-defined]
    assert recv_exactly(y, 5) == b"12345"
    assert a.getblocking() and b.getblocking()
    # the sockets still work: relay again to the end
    px, py = Peer(x, b"more"), Peer(y, b"back")
    assert relay(a, b, timeout=DEADLINE) == (4, 4)
    assert py.result() == b"more" and px.result() == b"back"


def test_gil_released_during_relay(chain) -> None:
    (x, a), (b, y) = chain()
    with Ticker() as ticker:

        def finish_when_counted() -> None:  # the ticker ran while relay waited
            ticker.wait_for(50)
            x.shutdown(socket.SHUT_WR)
            y.shutdown(socket.SHUT_WR)

        finishing = Call(finish_when_counted)
        assert relay(a, b, timeout=DEADLINE) == (0, 0)
        finishing.value(DEADLINE)
    assert ticker.count >= 50


def test_no_fd_leaks_over_many_relays() -> None:
    def once(i: int) -> None:
        (x, a), (b, y) = new_pair("unix"), new_pair("unix")
        try:
            x.sendall(bytes([i % 256]) * (1 + i % 300))
            x.shutdown(socket.SHUT_WR)
            if i % 3 == 0:
                reset(y)  # a failed relay
            else:
                y.shutdown(socket.SHUT_WR)
            try:
                relay(a, b, timeout=DEADLINE)
            except OSError:
                pass
        finally:
            for s in (x, a, b, y):
                s.close()

    once(1)
    gc.collect()
    pool = default_pool()
    before = fd_count() - 2 * pool.idle
    for i in range(1500):
        once(i)
    gc.collect()
    assert fd_count() - 2 * pool.idle == before


# --------------------------------------------------------------------------- Proxy


def _serve(proxy: Proxy) -> threading.Thread:
    t = threading.Thread(target=proxy.serve_forever, daemon=True)
    t.start()
    return t


def _echo_clients(address, payloads: list[bytes]) -> list[bytes]:
    """Many clients at once from one selector loop; returns what each got back."""
    sel = selectors.DefaultSelector()
    state = {}
    for i, data in enumerate(payloads):
        s = socket.create_connection(address, timeout=DEADLINE)
        s.setblocking(False)
        state[s] = [i, memoryview(data), bytearray(), False]
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    out: list[bytes] = [b""] * len(payloads)
    end = time.monotonic() + DEADLINE
    while state and time.monotonic() < end:
        for key, ev in sel.select(0.5):
            s = key.fileobj
            st = state[s]
            if ev & selectors.EVENT_WRITE and not st[3]:
                if st[1]:
                    try:
                        st[1] = st[1][s.send(st[1][:65536]) :]
                    except BlockingIOError:
                        pass
                if not st[1]:
                    s.shutdown(socket.SHUT_WR)
                    st[3] = True
                    sel.modify(s, selectors.EVENT_READ)
            if ev & selectors.EVENT_READ:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                if chunk:
                    st[2] += chunk
                else:
                    out[st[0]] = bytes(st[2])
                    sel.unregister(s)
                    s.close()
                    del state[s]
    for s in state:
        s.close()
    assert not state, f"{len(state)} clients did not finish"
    return out


@pytest.mark.parametrize("max_connections", [None, 1024, 64])
def test_proxy_many_concurrent_connections(
    echo: EchoServer, small_data: bytes, max_connections: int
) -> None:
    n = 64
    payloads = [small_data[i * 997 : i * 997 + 1000 + i * 2000] for i in range(n)]
    with Proxy(("127.0.0.1", 0), echo.address, max_connections=max_connections) as proxy:
        t = _serve(proxy)
        got = _echo_clients(proxy.address, payloads)
        assert got == payloads
        wait_until(lambda: proxy.stats().completed >= n)
        st = proxy.stats()
        proxy.close()
        t.join(DEADLINE)
        assert not t.is_alive()
    total = sum(map(len, payloads))
    assert (st.accepted, st.completed, st.failed, st.active) == (n, n, 0, 0)
    assert (st.bytes_up, st.bytes_down) == (total, total)


def test_proxy_failures_stay_per_connection(echo: EchoServer, small_data: bytes) -> None:
    dead_address = ("127.0.0.1", closed_port())  # nothing listens there
    with Proxy(("127.0.0.1", 0), dead_address) as bad:
        tb = _serve(bad)
        try:  # the reset may even beat connect() back to the caller
            with socket.create_connection(bad.address, timeout=DEADLINE) as c:
                assert c.recv(10) == b""
        except ConnectionResetError:
            pass
        wait_until(lambda: bad.stats().failed >= 1)
        bad.close()
        tb.join(DEADLINE)
        assert bad.stats().failed == 1

    with Proxy(("127.0.0.1", 0), echo.address) as proxy:
        t = _serve(proxy)
        keeper = socket.create_connection(proxy.address, timeout=DEADLINE)
        keeper.sendall(b"first half ")
        assert recv_exactly(keeper, 11) == b"first half "
        # another client resets mid-stream
        rude = socket.create_connection(proxy.address, timeout=DEADLINE)
        rude.sendall(b"x" * 1000)
        recv_exactly(rude, 1000)
        reset(rude)
        wait_until(lambda: proxy.stats().failed >= 1)
        # the first client is unaffected
        keeper.sendall(b"second half")
        keeper.shutdown(socket.SHUT_WR)
        assert recv_exactly(keeper, 11) == b"second half"
        assert keeper.recv(10) == b""
        keeper.close()
        wait_until(lambda: proxy.stats().completed >= 1)
        st = proxy.stats()
        assert (st.accepted, st.completed, st.failed) == (2, 1, 1)
        proxy.close()
        t.join(DEADLINE)


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1)")
def test_proxy_ipv6(small_data: bytes) -> None:
    server = EchoServer(socket.AF_INET6, "::1")
    try:
        with Proxy(("::1", 0), ("::1", server.address[1])) as proxy:
            t = _serve(proxy)
            assert _echo_clients(proxy.address[:2], [small_data, b"v6"]) == [small_data, b"v6"]
            proxy.close()
            t.join(DEADLINE)
    finally:
        server.close()


def test_proxy_close_ends_running_connections(echo: EchoServer) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = Proxy(listener, echo.address)
    t = _serve(proxy)
    c = socket.create_connection(proxy.address, timeout=DEADLINE)
    c.sendall(b"ping")
    assert recv_exactly(c, 4) == b"ping"
    proxy.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    with pytest.raises(ConnectionResetError):
        c.recv(10)
    c.close()
    assert listener.fileno() >= 0 and listener.getblocking()  # the caller's, left open
    listener.close()
    with pytest.raises(ValueError):
        proxy.serve_forever()


@pytest.mark.timeout(60, method="thread")
def test_proxy_closed_from_a_signal_handler(echo: EchoServer) -> None:
    proxy = Proxy(("127.0.0.1", 0), echo.address)
    ticks: list[object] = []

    def handler(signum, frame) -> None:
        proxy.close()

    with itimer(handler, 0.3):
        proxy.serve_forever(callback=ticks.append, interval=0.05)  # returns after close()
    assert "closed" in repr(proxy)
    assert ticks  # the progress callback ran


def test_proxy_argument_errors(echo: EchoServer) -> None:
    with pytest.raises(ValueError):
        Proxy(("127.0.0.1", 0), echo.address, max_connections=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(ValueError):
        Proxy(udp, echo.address)
    with pytest.raises(OSError):
        Proxy(("127.0.0.1", 0), ("no-such-host.invalid", 80))
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            Proxy(busy.getsockname(), echo.address)  # address in use
    finally:
        busy.close()


def test_proxy_close_never_wakes_a_freed_loop(echo: EchoServer, monkeypatch) -> None:
    """close() from another thread: the serving thread may not free the loop
    (closing its eventfd) between close() seeing it serving and the wake-up."""
    import sys

    from zerocopy._native import lib

    relay_mod = sys.modules["zerocopy._lowlevel"]  # the C loop's owner, which wakes it

    proxy = Proxy(("127.0.0.1", 0), echo.address)
    t = _serve(proxy)
    assert wait_until(lambda: proxy._serving_thread is not None)
    state_at_wake: list[bool] = []

    def before_wake() -> None:
        # give the serving thread every chance to leave (its slice ends
        # by itself) and free the loop before the wake is written
        t.join(1.0)
        state_at_wake.append(proxy._closed)

    monkeypatch.setattr(relay_mod, "lib", LibHook(lib, "zc_relay_wake", before_wake))
    proxy.close()
    monkeypatch.undo()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert state_at_wake == [False]  # before the fix: [True], a write to a closed fd
    assert "closed" in repr(proxy)


# --------------------------------------------------------------------------- issue 8 and TLS


@pytest.mark.timeout(120, method="thread")
def test_relay_survives_a_signal_storm(chain, big_data: bytes) -> None:
    """Regression (issue 8.2): splice() from the pipe to a socket returns EINTR when a
    signal is pending as it starts, and the relay took it for the stream's error (1 relay
    in 6 raised InterruptedError at 1 kHz).  Every relay now ends cleanly and exactly."""
    ticks = [0]

    def handler(signum: int, frame: object) -> None:
        ticks[0] += 1

    with itimer(handler, 0.001, 0.001):
        for i in range(6):
            (x, a), (b, y) = chain("unix" if i % 2 else "tcp4", "tcp4")
            up, down = big_data, big_data[::-1]
            px, py = Peer(x, up), Peer(y, down)
            assert relay(a, b, timeout=DEADLINE) == (len(up), len(down))
            assert py.result() == up
            assert px.result() == down
    assert ticks[0] > 0


def test_relay_timeout_counts_from_the_last_byte(chain) -> None:
    """relay(timeout=) is the C loop's idle timeout now: bytes that keep moving keep the
    relay alive past it; timeout=inf means none (issue 8.13)."""
    (x, a), (b, y) = chain()

    def trickle() -> None:
        for _ in range(25):  # 2.5 s in all, a byte every 0.1 s
            x.sendall(b".")
            time.sleep(0.1)
        x.shutdown(socket.SHUT_WR)
        y.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    assert relay(a, b, timeout=1.0) == (25, 0)
    t.join(DEADLINE)
    assert recv_exactly(y, 25) == b"." * 25
    (x, a), (b, y) = chain()
    px, py = Peer(x, b"up"), Peer(y, b"down")
    assert relay(a, b, timeout=math.inf) == (2, 4)
    assert py.result() == b"up" and px.result() == b"down"
    with pytest.raises(ValueError):
        relay(a, b, timeout=float("nan"))


@pytest.mark.timeout(30, method="thread")
def test_relay_ends_when_another_thread_closes_a_socket(chain) -> None:
    """A relay holds its socket objects: close() from another thread ends it with EBADF
    (the fd number cannot be reused under it) and takes effect then."""
    (x, a), (b, y) = chain()
    x.sendall(b"abc")
    closer = threading.Timer(0.3, a.close)
    closer.start()
    with pytest.raises(OSError) as info:
        relay(a, b, timeout=DEADLINE)
    closer.join(DEADLINE)
    assert info.value.errno == errno.EBADF
    assert info.value.bytes_relayed == (3, 0)  # type: ignore[attr-defined]
    assert a.fileno() == -1
    assert recv_exactly(y, 3) == b"abc"


@pytest.mark.timeout(30, method="thread")
def test_relay_of_int_fds_stops_when_a_number_is_reused(chain, make_pair) -> None:
    """Regression: nothing holds an int fd.  A signal's handler stands for another thread
    that closed the number and whose accept() got it back (dup2 does both): the resumed
    relay pumped the new connection's bytes.  It must end with EBADF instead."""
    (x, a), (b, y) = chain()
    new_a, new_b = make_pair("unix")
    fa, fb = os.dup(a.fileno()), os.dup(b.fileno())  # a and b keep the originals open
    fired = []

    def handler(signum: int, frame: object) -> None:
        if not fired:
            fired.append(True)
            os.dup2(new_a.fileno(), fa)
            new_b.sendall(b"EVIL")
            x.sendall(b"late")  # wakes the relay on the original connection

    x.sendall(b"hello")
    try:
        with itimer(handler, 0.3), pytest.raises(OSError) as info:
            relay(fa, fb, timeout=2)
        assert fired
        assert info.value.errno == errno.EBADF
        assert info.value.bytes_relayed[1] == 0  # type: ignore[attr-defined]
        assert info.value.bytes_relayed[0] in (5, 9)  # type: ignore[attr-defined]
        got = recv_exactly(y, info.value.bytes_relayed[0])  # type: ignore[attr-defined]
        assert got == b"hellolate"[: len(got)]  # never a byte of the new connection
        assert recv_exactly(new_a, 4) == b"EVIL"  # still there for its owner
    finally:
        os.close(fa)
        os.close(fb)


class _Interrupted(Exception):
    pass


@pytest.mark.timeout(60, method="thread")
def test_duplicates_of_int_fds_survive_a_handler_that_raises(make_pair) -> None:
    """Regression: the relay and the splice resumes pin int fds with duplicates; made in
    Python (fcntl), a signal handler raising as the call returned lost the new descriptor
    before any finally could close it (2058 leaked in 128k tries), and a leaked duplicate
    keeps its connection open for ever.  C now writes each duplicate into memory the
    caller owns, and closes them in one call."""
    from zerocopy import _lowlevel

    a, _b = make_pair("tcp4")
    ids = [(a.fileno(), _lowlevel.fd_id(a.fileno()))]
    target = os.readlink(f"/proc/self/fd/{a.fileno()}")  # "socket:[inode]"

    def naming_a() -> int:  # descriptors naming a's socket (other tests' fds may come and go)
        n = 0
        for name in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{name}") == target
            except OSError:
                pass
        return n

    before = naming_a()
    interrupted = pinned = 0
    armed = [False]

    def handler(signum: int, frame: object) -> None:
        if armed[0]:  # only while pinning (or as the call returns), once per arming
            armed[0] = False
            raise _Interrupted

    deadline = time.monotonic() + 20
    with itimer(handler, 0.0001, 0.0001):
        for _ in range(30_000):
            if time.monotonic() > deadline:
                break
            pins = _lowlevel.Pins(len(ids))
            try:
                try:
                    armed[0] = True
                    try:
                        fds = pins.pin(ids)
                    finally:
                        armed[0] = False
                    assert fds is not None and fds[a.fileno()] != a.fileno()
                    pinned += 1
                finally:
                    pins.close()
            except _Interrupted:
                interrupted += 1
    assert pinned > 0 and interrupted > 0
    assert before == 1 and naming_a() == before


@pytest.mark.timeout(30, method="thread")
def test_relay_of_int_fds_never_moves_a_reused_numbers_bytes(chain, make_pair) -> None:
    """Regression: the C loop spliced from the numbers, so between two checks (a slice)
    a number another thread closed and got back from accept() (dup2 does both) had its
    new connection's bytes relayed at once.  The loop works on duplicates now: the
    original connection's bytes still move, the new one's never, and EBADF ends it."""
    (x, a), (b, y) = chain()
    new_a, new_b = make_pair("unix")
    fa, fb = os.dup(a.fileno()), os.dup(b.fileno())  # a and b keep the originals open
    out: list[BaseException | tuple[int, int]] = []

    def run() -> None:
        try:
            out.append(relay(fa, fb, timeout=DEADLINE))
        except BaseException as exc:  # checked below
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        x.sendall(b"hello")
        assert recv_exactly(y, 5) == b"hello"  # the relay runs
        os.dup2(new_a.fileno(), fa)  # another thread's close() and accept()
        new_b.sendall(b"EVIL")
        x.sendall(b"late")  # wakes the relay on the original connection
        t.join(DEADLINE)
        assert not t.is_alive()
        exc = out[0]
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        moved = exc.bytes_relayed  # type: ignore[attr-defined]
        assert moved[1] == 0 and moved[0] in (5, 9)
        got = recv_exactly(y, moved[0] - 5)
        assert got == b"late"[: len(got)]  # never a byte of the new connection
        assert recv_exactly(new_a, 4) == b"EVIL"  # still there for its owner
    finally:
        t.join(DEADLINE)
        os.close(fa)
        os.close(fb)


def test_einval_from_c_says_what_was_wrong(chain) -> None:
    """Regression: every -EINVAL of zc_proxy_init/zc_proxy_set_timeouts was reported as a
    bad listener, and relay(a, a) raised a bare "Invalid argument"."""
    from zerocopy import _lowlevel as _c
    from zerocopy.relay import sockaddr_bytes

    _, target = sockaddr_bytes(("127.0.0.1", 9))
    pool = _c.PipePool(max_idle=1)
    try:
        with socket.create_server(("127.0.0.1", 0)) as lst:
            with pytest.raises(ValueError, match="timeouts must be > 0 ms"):
                _c.ProxyLoop(pool, lst.fileno(), target, 1, (0, 1000, 1000))
        with socket.socket() as unbound:
            with pytest.raises(ValueError, match="listen must be a listening SOCK_STREAM"):
                _c.ProxyLoop(pool, unbound.fileno(), target, 1, (1000, 1000, 1000))
    finally:
        pool.close()
    (x, a), _ = chain()
    for one in (a, a.fileno()):
        with pytest.raises(OSError, match="two different sockets") as info:
            relay(one, one)
        assert info.value.errno == errno.EINVAL
    x.sendall(b"ok")  # both still usable
    assert recv_exactly(a, 2) == b"ok"


def _answered(address: tuple[str, int], timeout: float = 5.0) -> bytes:
    """Connect, say hello, half-close; what came back before EOF (b"" when reset)."""
    with socket.create_connection(address, timeout=timeout) as c:
        try:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            return recv_to_eof(c, deadline=timeout)
        except OSError as exc:
            # reset: at recv (ECONNRESET), at send (EPIPE), or before shutdown (ENOTCONN)
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                return b""
            raise


def test_proxy_answers_clients_beyond_its_slots_at_once(echo: EchoServer) -> None:
    """Regression (issue 8.3): with every slot taken, new clients waited in the listen
    backlog with no answer (a client timed out).  They are reset at once now, counted in
    refused, while the running connections carry on."""
    with Proxy(("127.0.0.1", 0), echo.address, max_connections=2) as proxy:
        t = _serve(proxy)
        held = [socket.create_connection(proxy.address, timeout=DEADLINE) for _ in range(2)]
        for c in held:
            c.sendall(b"hi")
            assert recv_exactly(c, 2) == b"hi"
        for _ in range(20):
            try:
                assert _answered(proxy.address) == b""  # reset (or EOF), not a timeout
            except ConnectionResetError:
                pass  # the reset even beat connect() back
        st = proxy.stats()
        assert (st.accepted, st.refused, st.active) == (22, 20, 2)
        for c in held:
            c.shutdown(socket.SHUT_WR)
            assert recv_to_eof(c) == b""
            c.close()
        assert wait_until(lambda: proxy.stats().completed == 2)
        st = proxy.stats()
        assert st.accepted == st.active + st.completed + st.failed + st.refused
        proxy.close()
        t.join(DEADLINE)


_LIMITED_PROXY = r"""
import resource, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from zerocopy.relay import Proxy
with Proxy(("127.0.0.1", 0), (sys.argv[1], int(sys.argv[2]))) as proxy:
    print(proxy.address[1], proxy.max_connections, proxy.fd_limit, flush=True)
    t = threading.Thread(target=proxy.serve_forever, daemon=True)
    t.start()
    sys.stdin.read()  # until the test is done
    st = proxy.stats()
    proxy.close()
    t.join(10)
print(*st, flush=True)
"""


def _flood(address: tuple[str, int], n: int, payload: bytes, deadline: float,
           held: list[socket.socket]) -> list[str]:
    """n clients at once, each sends payload: "echo" (it came back; the client keeps its
    connection, in ``held``), "reset", or "hung" (no answer by the deadline)."""
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}
    for i in range(n):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(address)
        state[c] = [i, bytearray(), False]
        sel.register(c, selectors.EVENT_WRITE)
    out = ["hung"] * n
    end = time.monotonic() + deadline
    while state and time.monotonic() < end:
        for key, ev in sel.select(0.2):
            c = key.fileobj  # type: ignore[assignment]
            i, got, sent = state[c]
            try:
                if ev & selectors.EVENT_WRITE and not sent:
                    c.sendall(payload)  # small: it fits the socket buffer
                    state[c][2] = True
                    sel.modify(c, selectors.EVENT_READ)
                    continue
                chunk = c.recv(65536)
                got += chunk
                if chunk and len(got) < len(payload):
                    continue
                if bytes(got) == payload:
                    out[i] = "echo"
                    held.append(c)  # keeps its slot, as a long transfer would
                    sel.unregister(c)
                    del state[c]
                    continue
                out[i] = "reset"  # EOF before the echo
            except BlockingIOError:
                continue
            except OSError:  # ECONNRESET, EPIPE, ECONNREFUSED: answered with a reset
                out[i] = "reset"
            sel.unregister(c)
            c.close()
            del state[c]
    for c in state:
        c.close()
    return out


@pytest.mark.timeout(120)
def test_proxy_answers_every_client_at_a_low_fd_limit(echo: EchoServer) -> None:
    """Regression (issue 8.3): at the common soft limit of 1024 descriptors and 1000
    clients, half of them sat unanswered in the backlog.  Here a proxy process limited to
    256 descriptors (hard limit too, so it cannot raise it) sizes its table from the limit,
    and of 400 clients that keep their connections, those it has slots for get their echo
    and every other one a reset at once: none waits unanswered."""
    proc = subprocess.Popen([sys.executable, "-c", _LIMITED_PROXY, *map(str, echo.address)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port, slots, limit = map(int, proc.stdout.readline().split())
        assert limit == 256 and slots == default_max_connections(256)
        outcomes = _flood(("127.0.0.1", port), 400, b"ping" * 250, 60, held)
        proc.stdin.close()
        accepted, active, completed, failed, _, _, refused, _ = map(
            int, proc.stdout.readline().split())
        assert proc.wait(DEADLINE) == 0
    finally:
        for c in held:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert outcomes.count("hung") == 0
    assert outcomes.count("echo") == active + completed == slots
    assert outcomes.count("reset") == refused + failed
    assert accepted == 400


def _timed_out_and_freed(proxy: Proxy) -> bool:
    st = proxy.stats()
    return (st.active, st.failed, st.timed_out) == (0, 1, 1)


def test_proxy_timeouts(echo: EchoServer) -> None:
    """Regression (issue 8.6): no idle or stall timeout, so idle clients kept every slot
    and a relay whose client left while the target stalled kept its slot for ever.
    Connect, idle and stall timeouts (C) reset such connections and free their slots."""
    # idle: a quiet connection is reset on both sides
    with Proxy(("127.0.0.1", 0), echo.address, idle_timeout=0.3) as proxy:
        t = _serve(proxy)
        c = socket.create_connection(proxy.address, timeout=10)
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        with pytest.raises(ConnectionResetError):
            c.recv(10)
        c.close()
        assert wait_until(lambda: _timed_out_and_freed(proxy))
        st = proxy.stats()
        assert (st.active, st.failed, st.timed_out) == (0, 1, 1)
        proxy.close()
        t.join(DEADLINE)
    # stall: the target never reads; the client fills the way, then leaves
    with socket.create_server(("127.0.0.1", 0)) as sink:  # never accepts
        with Proxy(("127.0.0.1", 0), sink.getsockname(), stall_timeout=0.3) as proxy:
            t = _serve(proxy)
            c = socket.create_connection(proxy.address, timeout=10)
            c.setblocking(False)
            full = 0
            end = time.monotonic() + DEADLINE
            while full < 20 and time.monotonic() < end:
                try:
                    c.send(b"x" * 65536)
                except BlockingIOError:
                    full += 1
                    time.sleep(0.01)
            c.close()
            assert wait_until(lambda: _timed_out_and_freed(proxy), 10)
            st = proxy.stats()
            assert (st.active, st.failed, st.timed_out) == (0, 1, 1)
            proxy.close()
            t.join(DEADLINE)
    # connect: the target's accept queue is full, so its kernel drops our SYN
    with socket.socket() as full_target:
        full_target.bind(("127.0.0.1", 0))
        full_target.listen(0)
        filler = socket.create_connection(full_target.getsockname(), timeout=5)
        with filler, Proxy(("127.0.0.1", 0), full_target.getsockname(),
                           connect_timeout=0.3) as proxy:
            t = _serve(proxy)
            with socket.create_connection(proxy.address, timeout=10) as c:
                with pytest.raises(ConnectionResetError):
                    c.recv(10)
            assert wait_until(lambda: proxy.stats().timed_out == 1, 10)
            proxy.close()
            t.join(DEADLINE)


@pytest.mark.parametrize(
    "kw, exc",
    [({"connect_timeout": 0}, ValueError), ({"idle_timeout": -1}, ValueError),
     ({"stall_timeout": float("nan")}, ValueError), ({"idle_timeout": "5"}, TypeError),
     ({"max_connections": True}, TypeError), ({"max_connections": 2.5}, TypeError)],
)
def test_proxy_timeout_argument_errors(echo: EchoServer, kw: dict[str, Any], exc: type) -> None:
    with pytest.raises(exc):
        Proxy(("127.0.0.1", 0), echo.address, **kw)


def test_proxy_timeouts_can_be_off(echo: EchoServer) -> None:
    with Proxy(("127.0.0.1", 0), echo.address, connect_timeout=None, idle_timeout=math.inf,
               stall_timeout=None) as proxy:
        t = _serve(proxy)
        assert _answered(proxy.address) == b"hello"
        proxy.close()
        t.join(DEADLINE)


def test_proxy_refuses_a_socket_that_is_not_listening(echo: EchoServer, make_pair) -> None:
    """Regression (issue 8.8): a socket that is not listening (unbound, bound, connected,
    closed by its peer) was taken, and serve_forever() spun at 100% CPU."""
    unbound = socket.socket()
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    connected, _peer = make_pair("tcp4")
    left, gone = make_pair("tcp4")
    gone.close()
    try:
        for sock in (unbound, bound, connected, left):
            with pytest.raises(ValueError, match="listening"):
                Proxy(sock, echo.address)
        closed = socket.socket()
        closed.close()
        with pytest.raises(OSError):
            Proxy(closed, echo.address)
    finally:
        unbound.close()
        bound.close()


@pytest.mark.parametrize(
    "target, exc",
    [
        (("127.0.0.1", 70000), OverflowError),  # it became port 4464
        (("127.0.0.1", -1), OverflowError),
        (("127.0.0.1", 0), ValueError),
        (("127.0.0.1",), TypeError),  # an IndexError before
        (("127.0.0.1", 80, 0), TypeError),
        (("127.0.0.1", "80"), TypeError),
        (("127.0.0.1", True), TypeError),
        ((80, 80), TypeError),
        ("localhost:8080", ValueError),  # it was taken as an AF_UNIX path
        ("/tmp/" + "x" * 200, OSError),
        (8080, TypeError),
        ((None, 80), TypeError),
        (("::1", 80, 0, 2**40), OverflowError),
        (("::1", 80, 2**21, 0), OverflowError),
    ],
)
def test_proxy_checks_target_addresses(target: Any, exc: type) -> None:
    """Regression (issue 8.12): ports above 65535 wrapped, a 1-tuple raised IndexError, a
    str was split into characters; the errors are the standard library's now."""
    with pytest.raises(exc):
        Proxy(("127.0.0.1", 0), target)


@pytest.mark.parametrize(
    "listen, exc",
    [(("127.0.0.1", 70000), OverflowError), (("127.0.0.1",), TypeError),
     ("127.0.0.1:8080", TypeError), (("127.0.0.1", "0"), TypeError),
     (("::1", 0, -1, 0), OverflowError)],
)
def test_proxy_checks_listen_addresses(echo: EchoServer, listen: Any, exc: type) -> None:
    with pytest.raises(exc):
        Proxy(listen, echo.address)


def test_proxy_to_an_af_unix_target(tmp_path) -> None:
    path = str(tmp_path / "echo.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)

    def serve() -> None:
        c, _ = server.accept()
        with c:
            c.sendall(recv_to_eof(c))
            c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with Proxy(("127.0.0.1", 0), path) as proxy:
            st = _serve(proxy)
            assert _answered(proxy.address) == b"hello"
            proxy.close()
            st.join(DEADLINE)
    finally:
        t.join(DEADLINE)
        server.close()


def test_relay_and_proxy_refuse_tls_sockets(tls, tls_cert, chain, echo: EchoServer) -> None:
    """A relay splices raw bytes: for an ssl.SSLSocket those are its TLS records, so
    relay() and Proxy refuse it with a clear ValueError, and the TLS stream is untouched."""
    server, client = tls
    (_, a), (b, _) = chain()
    with pytest.raises(ValueError, match="SSLSocket"):
        relay(server, b)
    with pytest.raises(ValueError, match="SSLSocket"):
        relay(a, server, timeout=1)
    client.sendall(b"still tls")
    assert recv_exactly(server, 9) == b"still tls"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls_cert)
    with socket.create_server(("127.0.0.1", 0)) as raw:
        with ctx.wrap_socket(raw, server_side=True) as listener:
            with pytest.raises(ValueError, match="SSLSocket"):
                Proxy(listener, echo.address)


def test_proxy_stops_when_its_listening_socket_is_closed(echo: EchoServer) -> None:
    """The proxy holds the caller's listening socket: closing it stops serve_forever()
    and takes effect then (the number is never reused under the C loop)."""
    listener = socket.create_server(("127.0.0.1", 0))
    proxy = Proxy(listener, echo.address)
    t = _serve(proxy)
    assert _answered(proxy.address) == b"hello"
    listener.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert "closed" in repr(proxy)
    assert listener.fileno() == -1


def test_proxy_sizes_its_table_from_the_descriptor_limit(echo: EchoServer) -> None:
    """Regression (issue 8.3): the default table (1024) could never be filled at a limit of
    1024 descriptors.  The default comes from the (raised) limit now, and an explicit value
    above half of it (two descriptors a connection) is lowered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with Proxy(("127.0.0.1", 0), echo.address) as proxy:
        assert proxy.fd_limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= soft
        if hard != resource.RLIM_INFINITY:
            assert proxy.fd_limit == hard  # raised as far as the hard limit allows
        assert proxy.max_connections == default_max_connections(proxy.fd_limit)
    with Proxy(("127.0.0.1", 0), echo.address, max_connections=10**9) as proxy:
        assert proxy.max_connections == proxy.fd_limit // 2
    assert default_max_connections(1024) == 208
    assert default_max_connections(100) == 1
    assert default_max_connections(10**7) == 16384
