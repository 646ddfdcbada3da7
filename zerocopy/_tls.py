# SPDX-License-Identifier: MIT
"""Writing through an ``ssl.SSLSocket``'s TLS layer with exact counts.

Python's ``SSLSocket.send`` is all or nothing: OpenSSL takes the whole
buffer or reports an error, and an error that comes after some records went
out (a signal handler that raises, a timeout) loses their count, while the
peer has them.  Offered at most one record's plaintext at a time, a send
that fails took nothing the peer can decrypt: the count is exact.  (A record
OpenSSL had begun to write stays pending in it; offering the same bytes
again, as every caller here does, finishes it.)
"""
from __future__ import annotations

import math
import socket
import time
from typing import Any

from . import _lowlevel as _c

RECORD = 16384  # the most plaintext one TLS record carries
# The longest one slice of wait_for_room holds its socket (a close() waits that long).
WAIT_SLICE_MS = 100


def send_some(sock: socket.socket, data: Any) -> int | None:
    """Offer at most one record of ``data``; the bytes taken, or None when the socket is full.

    A full socket must later be offered the same bytes again (OpenSSL's rule).
    """
    import ssl  # an SSLSocket exists, so ssl is imported already

    try:
        return sock.send(memoryview(data)[:RECORD])
    except (ssl.SSLWantWriteError, BlockingIOError):
        return None


def wait_for_room(sock: socket.socket, timeout_ms: int, sent: int) -> None:
    """Wait until ``sock`` takes bytes again, for up to ``timeout_ms`` (WAIT_FOREVER).

    For the loops that write a socket object from Python (TLS or not).  The
    socket is held for each slice of the wait, so its number cannot go to
    another file under the wait, and the wait ends with ``EBADF`` (carrying
    ``sent``) within a slice when another thread closes it: a close() waits
    for the slice, never for the peer to read.
    """
    deadline = None if timeout_ms == _c.WAIT_FOREVER else (
        time.monotonic() + timeout_ms / 1000)
    while True:
        if deadline is None:
            wait = WAIT_SLICE_MS
        else:
            left = max(math.ceil((deadline - time.monotonic()) * 1000), 0)
            if left == 0 and timeout_ms > 0:  # 0 would mean "just look": -EAGAIN
                raise _c.error(_c.ETIMEDOUT, sent)
            wait = min(left, WAIT_SLICE_MS)
        _c.hold(sock)
        try:
            if not _c.is_open(sock):  # closed, perhaps while a hold deferred it
                raise _c.error(_c.EBADF, sent)
            rc = _c.wait_writable(sock.fileno(), wait)
        finally:
            _c.release(sock)
        if rc == 0:
            return
        if rc == _c.ETIMEDOUT and wait == WAIT_SLICE_MS and (
                deadline is None or time.monotonic() < deadline):
            continue  # a slice ended, not the wait
        if rc != _c.EINTR:  # after -EINTR the signal's handler ran: wait on
            raise _c.error(rc, sent)
