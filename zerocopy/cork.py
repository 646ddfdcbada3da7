# SPDX-License-Identifier: MIT
"""``cork``: hold partial TCP segments back for the length of a ``with`` block."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import _lowlevel as _c
from ._args import SocketLike, socket_target


@contextmanager
def cork(sock: SocketLike) -> Iterator[None]:
    """Cork a TCP socket for the block; always restore its state on the way out.

    Writes inside the block are coalesced into full segments; leaving the
    block uncorks (which pushes what is queued) unless the socket was corked
    already, in which case it stays corked.  Sockets other than TCP (AF_UNIX)
    are left alone.
    """
    corked = _c.Cork(socket_target(sock)[0])
    try:
        yield
    finally:
        corked.end()
