"""Helpers for the event-loop adapter tests (asyncio, uvloop, trio, anyio, frameworks).

Every wait is bounded: coroutines run under a deadline, clients are the
thread-based readers of _zcutil with their own deadlines.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from _zcutil import DEADLINE

T = TypeVar("T")

LOOPS = ["asyncio", "uvloop"]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def run(kind: str, main: Callable[[], Awaitable[T]], deadline: float = DEADLINE) -> T:
    """Run main() on a fresh loop of ``kind``, failing after ``deadline`` seconds."""
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), deadline))  # type: ignore[arg-type]
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def small_client(port: int, rcvbuf: int = 32 * 1024, host: str = "127.0.0.1") -> socket.socket:
    """A blocking client socket with a small receive buffer, connected to ``port``."""
    c = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(DEADLINE)
    c.connect((host, port))
    c.settimeout(None)
    return c


def tls_contexts(cert: tuple[str, str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for the test certificate."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*cert)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert[0])
    return server, client


def tls_client(port: int, ctx: ssl.SSLContext, rcvbuf: int | None = None) -> ssl.SSLSocket:
    """A blocking TLS client connected to 127.0.0.1:port, handshake done (run it in a thread)."""
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(DEADLINE)
    raw.connect(("127.0.0.1", port))
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.settimeout(None)
    return tls


async def in_thread(fn: Callable[[], T]) -> T:
    """fn() in the default executor (for blocking test clients)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def expect(before: bytes, headers: bytes, data: bytes, trailers: bytes, after: bytes) -> bytes:
    return before + headers + data + trailers + after


__all__ = [
    "LOOPS",
    "Any",
    "expect",
    "in_thread",
    "new_loop",
    "run",
    "small_client",
    "tls_client",
    "tls_contexts",
]
