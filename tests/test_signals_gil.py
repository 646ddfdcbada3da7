"""Signals during a blocked transfer, and the GIL being released.

Tests that use SIGALRM themselves run pytest-timeout in "thread" mode so the
two do not fight over the one ITIMER_REAL.  Each of them also has its own
escape hatch (a receiver that starts draining after a while), so a broken
implementation fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from _zcutil import (
    DEADLINE,
    Call,
    Ticker,
    eof,
    itimer,
    outq,
    raise_keyboard_interrupt,
    wait_until,
)

import zerocopy


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_sigalrm_handler_that_returns_does_not_disturb(
    make_pair, collect, big_file: str, big_data: bytes, kind: str
) -> None:
    sender, receiver = make_pair(kind, small=True)
    start, count = 12345, 1 << 20
    ticks = [0]
    give_up = time.monotonic() + 40

    def handler(signum, frame) -> None:
        ticks[0] += 1
        if time.monotonic() > give_up:
            signal.setitimer(signal.ITIMER_REAL, 0)
            raise RuntimeError("transfer still running at the test's deadline")

    # A slow reader: the sender blocks again and again on a full socket.
    c = collect(receiver, delay=0.003, chunk=16384)
    with itimer(handler, 0.005, 0.005), open(big_file, "rb") as f:
        f.seek(start)
        n = zerocopy.sendfile_all(sender, f, count=count)
        pos = f.tell()
    assert n == count
    assert pos == start + count
    eof(sender)
    assert c.result() == big_data[start : start + count]
    assert ticks[0] > 0, "the timer never fired: the test proved nothing"


# Child process used by the KeyboardInterrupt test.  It needs none of our GIL:
# optionally sends SIGINT to the parent after 0.3 s (a Ctrl-C), then, if still
# alive after 20 s, drains the receiving socket (inherited fd) so a call that
# ignored the signal returns and the test fails instead of hanging.
_WATCHDOG = """
import os, signal, socket, sys, time
fd, send_int = int(sys.argv[1]), sys.argv[2] == "1"
time.sleep(0.3)
if send_int:
    os.kill(os.getppid(), signal.SIGINT)
time.sleep(20)
s = socket.socket(fileno=fd)
s.settimeout(30)
while s.recv(1 << 20):
    pass
"""


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("how", ["alarm_handler_raises", "sigint_default_handler"])
@pytest.mark.parametrize("flavour", ["fileobj", "fd_position"])
@pytest.mark.parametrize("kind", ["tcp4", "unix"])
@pytest.mark.parametrize("mode", ["blocking", "timeout"])
def test_keyboard_interrupt_while_blocked(
    make_pair,
    collect,
    big_file: str,
    big_data: bytes,
    how: str,
    flavour: str,
    kind: str,
    mode: str,
) -> None:
    sender, receiver = make_pair(kind, small=True)
    if mode == "timeout":
        sender.settimeout(25)
    start = 4096
    go = threading.Event()
    c = collect(receiver, start=go, start_timeout=40)
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WATCHDOG,
            str(receiver.fileno()),
            str(int(how != "alarm_handler_raises")),
        ],
        pass_fds=(receiver.fileno(),),
    )

    f = open(big_file, "rb")
    f.seek(start)
    src = f if flavour == "fileobj" else f.fileno()

    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # first=0: the handler is set, the timer not armed (the watchdog sends SIGINT).
        alarm = 0.3 if how == "alarm_handler_raises" else 0
        with itimer(raise_keyboard_interrupt, alarm), pytest.raises(KeyboardInterrupt) as ei:
            zerocopy.sendfile_all(sender, src)
        pos = f.tell() if flavour == "fileobj" else os.lseek(f.fileno(), 0, os.SEEK_CUR)
    finally:
        watchdog.kill()
        watchdog.wait(DEADLINE)
        signal.signal(signal.SIGINT, old_int)
        f.close()
    sent = pos - start
    assert 0 < sent < len(big_data) - start, "transfer was not stalled when interrupted"
    assert getattr(ei.value, "bytes_sent", None) == sent
    sender.settimeout(5)
    eof(sender)
    go.set()
    assert c.result() == big_data[start : start + sent]


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_gil_released_while_blocked(
    make_pair, collect, big_file: str, big_data: bytes, kind: str
) -> None:
    """Other threads run while sendfile_all waits for a stalled peer.

    The peer only starts reading after a watcher thread has seen the send
    queue fill (so the call is in progress) and a counter thread advance.
    The call cannot complete before that, so if it holds the GIL it can only
    end by the 20 s socket timeout: TimeoutError, and the test fails.
    """
    sender, receiver = make_pair(kind, small=True)
    sender.settimeout(20)
    seen: dict[str, int] = {}
    go = threading.Event()
    ticker = Ticker(pause=0)

    def watch() -> None:
        wait_until(lambda: outq(sender) > 0, pause=0.002)
        c0 = ticker.count
        ticker.wait_for(c0 + 10_000)
        seen["queued"] = outq(sender)
        seen["advanced"] = ticker.count - c0
        go.set()

    c = collect(receiver, start=go, start_timeout=DEADLINE)
    watcher = Call(watch)
    try:
        with open(big_file, "rb") as f:
            n = zerocopy.sendfile_all(sender, f)
    finally:
        ticker.stop()
        go.set()
        watcher.value(DEADLINE)
    assert n == len(big_data)
    eof(sender)
    assert c.result() == big_data
    assert seen["queued"] > 0
    assert seen["advanced"] >= 10_000
