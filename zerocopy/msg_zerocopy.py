# SPDX-License-Identifier: MIT
"""``Socket``: ``MSG_ZEROCOPY`` sends whose buffers stay alive until the kernel lets go.

With ``MSG_ZEROCOPY`` the kernel keeps reading the sender's memory after
``send()`` returns and says when it is done only later, on the socket's error
queue.  The policy lives in the C core (``struct zc_zsock`` in ``zc.h``): a
threshold below which the flag costs more than it saves, a bound on the bytes
pinned at any time, giving zero-copy up when the kernel copies anyway, a
plain resend at once on ``ENOBUFS``, and a connection reset when a stalled
peer would keep buffers pinned past ``close()``.  What stays here is what
must be Python: every buffer C reports on loan stays referenced (and
exported, so a ``bytearray`` cannot be resized) until C reports it free,
signal handlers run between C calls, and a lock makes the object
thread-safe.
"""
from __future__ import annotations

import errno
import math
import os
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from . import _lowlevel as _c
from . import _tls
from ._args import stream_socket_fd, timeout_ms
from .cork import cork as _cork
from .sendfile import sendfile_all as _sendfile_all

_WAIT_SLICE_MS = 100

# Buffers whose completions never came before their Socket was closed or
# collected: the kernel may still read them, so they live as long as the
# process.  close() resets a stalled connection first, so only sockets
# closed behind the Socket's back (or completions held up in the stack past
# the reset's grace time) leave buffers here.
_NEVER_RELEASED: list[Any] = []


@dataclass(frozen=True)
class SocketStats:
    """Counters of a :class:`Socket` (a snapshot)."""

    zerocopy_sends: int = 0
    plain_sends: int = 0
    completions: int = 0  # sends the kernel reported done
    copied_completions: int = 0  # of those, sends it had to copy after all
    enobufs_fallbacks: int = 0  # zero-copy sends refused with ENOBUFS, resent plain
    pinned_bytes: int = 0
    peak_pinned_bytes: int = 0


def _wait_ms(timeout: float | None) -> int:
    """A wait bound for C: None and +inf wait forever, a negative one not at all."""
    if timeout is not None and timeout < 0:
        return 0
    return timeout_ms(timeout)  # ValueError for NaN


def _deadline(timeout: float | None) -> float | None:
    """The monotonic time a wait ends at; None (and +inf) for no end."""
    if timeout is None or timeout == math.inf:
        return None
    if math.isnan(timeout):
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


class SendHandle:
    """Tells when a buffer given to :meth:`Socket.sendall` may be changed or freed."""

    __slots__ = ("_loan", "_owner")

    def __init__(self, owner: Socket | None, loan: _c.Loan | None) -> None:
        self._owner = owner
        self._loan = loan

    def done(self) -> bool:
        """True when the kernel no longer reads the buffer (reaps first, without blocking)."""
        if self._loan is None or self._loan.done or self._owner is None:
            return True
        self._owner.reap()
        return self._loan.done

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`done`; False when ``timeout`` seconds passed first.

        ``None`` or ``float("inf")`` waits as long as it takes.
        """
        if self._loan is None or self._owner is None:
            return True
        loan = self._loan
        return self._owner._wait_until(lambda: loan.done, timeout)


_ALREADY_FREE = SendHandle(None, None)  # for buffers that went without the flag


class Socket:
    """A connected stream socket whose large sends use ``MSG_ZEROCOPY`` safely.

    ``sock`` keeps its blocking, timeout or non-blocking mode; ``send`` and
    ``sendall`` behave as ``socket.send``/``sendall`` in that mode.  Sends of
    at least ``zerocopy_threshold`` bytes use ``MSG_ZEROCOPY`` while
    ``zerocopy_active``; the buffer stays referenced until the kernel reports
    it done.  At most ``max_pinned_bytes`` stay pinned: past that a blocking
    socket waits for completions, a non-blocking one sends without the flag.
    At most ``max_sends_in_flight`` zero-copy sends are outstanding.

    ``adaptive=True`` turns zero-copy off for good at the first completion
    the kernel flags as copied (always the case on loopback and veth), since
    a deferred copy costs more than a plain one.  ``adaptive=False`` keeps
    the flag on (for measuring).

    Sockets that cannot do zero-copy (``AF_UNIX``, old kernels) work as plain
    sockets: ``zerocopy_supported`` is False and ``zerocopy_unsupported_reason``
    says why.  An ``ssl.SSLSocket`` sends through its TLS layer (never a
    byte of plaintext under the session), unless the kernel encrypts for it
    (kernel TLS): then the socket itself is used.

    All methods are thread-safe; concurrent ``sendall`` calls are serialised
    and never interleave bytes.  ``close()`` closes ``sock``.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        zerocopy_threshold: int = 16384,
        max_pinned_bytes: int = 64 * 1024 * 1024,
        adaptive: bool = True,
        max_sends_in_flight: int = 4096,
    ) -> None:
        self._closed = True
        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
        fd = stream_socket_fd(sock)
        for name, value, low, high in (
            ("zerocopy_threshold", zerocopy_threshold, 1, 2**64 - 1),
            ("max_pinned_bytes", max_pinned_bytes, 1, 2**64 - 1),
            ("max_sends_in_flight", max_sends_in_flight, 1, 2**32 - 1),
        ):
            if not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        self._sock = sock
        self._fd = fd
        self._zerocopy_threshold = zerocopy_threshold
        self._max_pinned_bytes = max_pinned_bytes
        self._adaptive = bool(adaptive)
        self._lock = threading.RLock()
        # TLS without kernel offload: the bytes must go through the TLS layer.
        self._tls: ssl.SSLSocket | None = None
        self._tls_plain_sends = 0
        if isinstance(sock, ssl.SSLSocket) and not _c.tls_tx_offloaded(fd):
            self._tls = sock
            self._zs: _c.ZSock | None = None
            self.zerocopy_unsupported_reason: str | None = (
                "a TLS socket without kernel TLS: its bytes go through the TLS layer"
            )
        else:
            self._zs = _c.ZSock(sock, fd, threshold=zerocopy_threshold,
                                max_pinned=max_pinned_bytes, adaptive=self._adaptive,
                                max_in_flight=max_sends_in_flight)
            code = self._zs.unsupported_errno
            self.zerocopy_unsupported_reason = (
                f"this socket cannot send with MSG_ZEROCOPY ({os.strerror(code)})"
                if code else None
            )
        self._closed = False

    # -- state ---------------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The wrapped socket."""
        return self._sock

    def fileno(self) -> int:
        return self._fd

    @property
    def zerocopy_threshold(self) -> int:
        """Sends of fewer bytes never use ``MSG_ZEROCOPY``."""
        return self._zerocopy_threshold

    @property
    def max_pinned_bytes(self) -> int:
        """The bound on the bytes of buffers on loan."""
        return self._max_pinned_bytes

    @property
    def adaptive(self) -> bool:
        """Whether a COPIED completion turns zero-copy off."""
        return self._adaptive

    @property
    def zerocopy_supported(self) -> bool:
        """Whether the socket accepted ``SO_ZEROCOPY``."""
        return self._zs is not None and self._zs.supported

    @property
    def zerocopy_active(self) -> bool:
        """Whether sends of ``zerocopy_threshold`` bytes or more use ``MSG_ZEROCOPY`` now."""
        return self._zs is not None and self._zs.active

    @property
    def pending(self) -> int:
        """Buffers still on loan to the kernel."""
        return 0 if self._zs is None else self._zs.pending

    @property
    def pending_bytes(self) -> int:
        """Bytes of the buffers still on loan."""
        return 0 if self._zs is None else self._zs.stats()[5]

    @property
    def stats(self) -> SocketStats:
        with self._lock:
            if self._zs is None:
                return SocketStats(plain_sends=self._tls_plain_sends)
            return SocketStats(*self._zs.stats())

    # -- sending -------------------------------------------------------------

    def send(self, data: Any) -> int:
        """Send some of ``data`` as ``socket.send`` does; return the bytes sent."""
        with self._lock:
            zs = self._zsock()
            if zs is None:
                return self._tls_send(data, True)
            return zs.send(data, True, timeout_ms(self._sock.gettimeout()))[0]

    def sendall(self, data: Any) -> SendHandle:
        """Send all of ``data`` as ``socket.sendall`` does; return a handle for its buffer.

        A non-blocking socket that fills raises ``BlockingIOError`` whose
        ``characters_written`` (and ``bytes_sent``) say how much went out;
        the buffer stays on loan as far as it was sent zero-copy, and the
        exception's ``handle`` (a :class:`SendHandle`) says when that part
        is free.
        """
        with self._lock:
            zs = self._zsock()
            if zs is None:
                self._tls_send(data, False)
                return _ALREADY_FREE
            try:
                loan = zs.send(data, False, timeout_ms(self._sock.gettimeout()))[1]
            except BlockingIOError as exc:
                loan = getattr(exc, "loan", None)
                exc.handle = _ALREADY_FREE if loan is None else SendHandle(self, loan)  # type: ignore[attr-defined]
                raise
            return _ALREADY_FREE if loan is None else SendHandle(self, loan)

    def _tls_send(self, data: Any, once: bool) -> int:
        """Through the TLS layer, a record at a time, so that errors carry exact counts.

        A full non-blocking socket raises ``BlockingIOError`` (with
        ``bytes_sent``), as it does without TLS; offering the rest of the
        same buffer again continues the stream.
        """
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(
                f"a bytes-like object is required, not '{type(data).__name__}'") from None
        self._tls_plain_sends += 1
        sent = 0
        try:
            with view:
                while True:
                    n = _tls.send_some(self._sock, view[sent:])
                    if n is None:
                        raise _c.error(_c.EAGAIN, sent)
                    sent += n
                    if once or sent >= len(view):
                        return sent
        except BaseException as exc:
            raise _c.attach(exc, sent) from None

    # -- completions ---------------------------------------------------------

    def reap(self) -> int:
        """Process completions without blocking; return how many buffers became free."""
        with self._lock:
            if not self._usable() or self._zs is None:
                return 0
            return self._zs.reap()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no buffer is on loan; False when ``timeout`` seconds passed first.

        ``None`` or ``float("inf")`` waits as long as it takes.
        """
        return self._wait_until(lambda: self.pending == 0, timeout)

    def _wait_until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Reap and wait until ``ready()``; False when the socket closed or time ran out.

        The wait itself runs without the lock (zc_zsock_poll() may), so
        other threads keep sending meanwhile.
        """
        deadline = _deadline(timeout)
        idle = False
        while True:
            with self._lock:
                usable = self._usable()
                zs = self._zs
                seen = 0
                if usable and zs is not None:
                    seen = zs.stats()[2]
                    zs.reap()
                if ready():
                    return True
                if not usable or zs is None:
                    return False
                idle = idle and zs.stats()[2] == seen
            wait = _WAIT_SLICE_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, max(1, math.ceil(left * 1000)))
            if idle:
                # POLLERR and nothing to reap: a socket error (a reset) is
                # pending, not a completion; pace instead of spinning
                time.sleep(wait / 1000 / 10)
            rc = zs.poll(wait)
            idle = rc == 0
            if rc == _c.EBADF:
                with self._lock:
                    self._usable()  # abandons what the closed socket had on loan
                return False
            if rc < 0 and rc not in (_c.EINTR, _c.ETIMEDOUT, _c.EAGAIN):
                raise _c.error(rc, 0)

    # -- the rest of the socket ---------------------------------------------

    def sendfile_all(self, file: Any, offset: int | None = None, count: int | None = None) -> int:
        """:func:`zerocopy.sendfile_all` on this socket, serialised with the other sends."""
        with self._lock:
            self._check_open()
            return _sendfile_all(self._sock, file, offset, count)

    def cork(self) -> Any:
        """:func:`zerocopy.cork` on this socket."""
        return _cork(self._sock)

    def close(self, timeout: float | None = 1.0) -> None:
        """Get the buffers on loan back, then close the socket.

        Waits up to ``timeout`` seconds (``None`` or ``float("inf")``: as
        long as it takes) for the peer to take the bytes still queued.  If
        buffers are still on loan then (a peer that stopped reading), the
        connection is reset: the kernel drops the bytes it has not delivered
        and lets go of the buffers.  The peer reads what had reached it, then
        gets ``ECONNRESET``.  Without the reset the kernel would keep the
        buffers pinned for as long as the peer stalls, and a closed socket
        never reports them free.

        A buffer whose completion still does not come within two seconds of
        the reset (or that was on loan when the socket was closed behind this
        object's back) stays referenced for the life of the process; a
        ``ResourceWarning`` says how many.  The socket is always closed.
        """
        if self._closed:
            return
        wait_ms = _wait_ms(timeout)
        with self._lock:
            ended = False
            try:
                if self._usable() and self._zs is not None:
                    self._keep_forever(self._zs.end(wait_ms), "closed")
                ended = True
            finally:
                if not ended and self._zs is not None and not self._closed:
                    # end() was cut short (a signal handler raised): the
                    # kernel may still read what is on loan, so it stays ours
                    self._keep_forever(self._zs.abandon(), "closed")
                self._closed = True
                self._sock.close()

    def _keep_forever(self, loans: list[_c.Loan], how: str) -> None:
        if not loans:
            return
        _NEVER_RELEASED.extend(loans)
        warnings.warn(
            f"zerocopy.Socket {how} with {len(loans)} buffer(s) "
            f"({sum(loan.nbytes for loan in loans)} bytes) still on loan "
            "to the kernel; they stay referenced for the life of the process",
            ResourceWarning,
            stacklevel=3,
        )

    def _zsock(self) -> _c.ZSock | None:
        """The C policy object, after checking the Socket is usable (lock held)."""
        self._check_open()
        return self._zs

    def _check_open(self) -> None:
        if not self._usable():
            raise OSError(errno.EBADF, "the zerocopy.Socket is closed")

    def _usable(self) -> bool:
        """Open, and its socket still owns the fd (call with the lock held).

        A socket closed behind our back frees its fd number for reuse: from
        then on no C call may touch it, and what is on loan stays so.
        """
        if self._closed:
            return False
        if self._sock.fileno() != self._fd:
            self._closed = True
            if self._zs is not None:
                self._keep_forever(self._zs.abandon(), "found its socket closed")
            return False
        return True

    def __enter__(self) -> Socket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or not self._usable():
            return
        zs = self._zs
        if zs is None:
            return
        try:
            zs.reap()
        except OSError:
            pass
        self._keep_forever(zs.abandon(), "collected unclosed")

    def __repr__(self) -> str:
        mode = "zerocopy" if self.zerocopy_active else "plain"
        return f"<zerocopy.Socket fd={self._fd} {mode} pending={self.pending}>"
