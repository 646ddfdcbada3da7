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

import socket
from typing import Any

RECORD = 16384  # the most plaintext one TLS record carries


def send_some(sock: socket.socket, data: Any) -> int | None:
    """Offer at most one record of ``data``; the bytes taken, or None when the socket is full.

    A full socket must later be offered the same bytes again (OpenSSL's rule).
    """
    import ssl  # an SSLSocket exists, so ssl is imported already

    try:
        return sock.send(memoryview(data)[:RECORD])
    except (ssl.SSLWantWriteError, BlockingIOError):
        return None
