"""Regression tests for bugs found in review (reproductions in the review notes).

Each test states the correct behaviour.  Calls that hung when broken run in a
helper thread joined with a deadline, so a regression fails the test instead
of hanging the run; nothing here asserts a duration.
"""

from __future__ import annotations

import fcntl
import io
import re
import select
import socket
import struct
import termios
import threading
import time
from typing import Any, Callable

from _zcutil import DEADLINE, recv_exactly

import zerocopy
from zerocopy.commands import send_main

# --------------------------------------------------------------------------- helpers


class _Call:
    """Run fn() in a daemon thread; .join(deadline) says whether it finished."""

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

    def value(self, deadline: float) -> Any:
        assert self.join(deadline), f"the call did not finish within {deadline} s (hung)"
        if self.error is not None:
            raise self.error
        return self.result


def _cork_of(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


def _wait_pollerr(sock: socket.socket, deadline: float = 5.0) -> bool:
    """Wait (bounded) until the socket's error queue has something (POLLERR)."""
    p = select.poll()
    p.register(sock.fileno(), 0)  # POLLERR is always reported
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if any(ev & select.POLLERR for _, ev in p.poll(50)):
            return True
    return False


def _tiny_file(tmp_path, data: bytes = b"0123456789") -> str:
    p = tmp_path / "tiny.bin"
    p.write_bytes(data)
    return str(p)


# ---------------------------------------------- 1. one buffer > max_pinned_bytes


def _outq(sock: socket.socket) -> int:
    """Bytes in the socket's send queue (SIOCOUTQ == TIOCOUTQ)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


# ---------------------------------------------- 2. the wrapped socket closed behind Socket's back


# ---------------------------------------------- 4. EAGAIN from a buffered pipe is not EOF


# ---------------------------------------------- 7. FileSender uncorks when send_all fails


# ---------------------------------------------- 9. huge socket timeouts


# ---------------------------------------------- 10. binary mode check


# ---------------------------------------------- 11. a socket as the source


# ---------------------------------------------- 12. range limits


# ---------------------------------------------- 13. `send` reports what went out


def test_send_command_failure_counts_the_current_chunk(tmp_path) -> None:
    size = 7 * 1024 * 1024  # one chunk (< commands.CHUNK), far more than the buffers hold
    assert size < zerocopy.commands.CHUNK
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * (size // 256))
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(DEADLINE)
    got = [0]
    want = 200_000

    def receiver() -> None:
        conn, _ = ls.accept()
        try:
            got[0] = len(recv_exactly(conn, want))
            # Close with unread data (and linger 0): the sender gets a reset.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            conn.close()

    rx = _Call(receiver)
    err = io.StringIO()
    try:
        rc = send_main(["--timeout", "10", str(path), f"127.0.0.1:{ls.getsockname()[1]}"],
                       stderr=err)
        rx.value(DEADLINE)
    finally:
        ls.close()
    text = err.getvalue()
    assert rc == 1, text
    m = re.search(r"failed after (\d+) bytes", text)
    assert m, text
    reported = int(m.group(1))
    assert got[0] == want
    assert want <= reported <= size, f"reported {reported}, the receiver got {want}: {text}"


# ---------------------------------------------- 14. FileSender and io.BytesIO positions


