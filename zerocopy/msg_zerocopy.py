# SPDX-License-Identifier: MIT
"""``Socket``: ``MSG_ZEROCOPY`` sends whose buffers stay alive until the kernel lets go.

With ``MSG_ZEROCOPY`` the kernel keeps reading the sender's memory after
``send()`` returns and says when it is done only later, on the socket's error
queue.  ``Socket`` keeps every buffer sent that way referenced (and exported,
so a ``bytearray`` cannot be resized) until its completion is reaped, and
applies the policies production systems learned: give up zero-copy when the
kernel copies anyway, resend at once without the flag on ``ENOBUFS``, and
bound the memory pinned at any time.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from . import _lowlevel as _c
from ._args import stream_socket_fd, timeout_ms
from ._lowlevel import ffi, lib
from .cork import cork as _cork
from .sendfile import sendfile_all as _sendfile_all

_NO_ZEROCOPY = (-errno.EOPNOTSUPP, -errno.ENOPROTOOPT, -errno.EINVAL)
_REAP_BATCH = 64
_WAIT_SLICE_MS = 100
_FREED_BATCH = 256

# Buffers whose completions never came before their Socket was closed or
# collected: the kernel may still read them, so they live as long as the process.
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


class _Loan:
    """A buffer on loan to the kernel: the object, its export, its size."""

    __slots__ = ("cdata", "done", "nbytes", "obj")

    def __init__(self, obj: Any, cdata: Any, nbytes: int) -> None:
        self.obj = obj
        self.cdata = cdata
        self.nbytes = nbytes
        self.done = False


class SendHandle:
    """Tells when a buffer given to :meth:`Socket.sendall` may be changed or freed."""

    __slots__ = ("_loan", "_owner")

    def __init__(self, owner: Socket | None, loan: _Loan | None) -> None:
        self._owner = owner
        self._loan = loan

    def done(self) -> bool:
        """True when the kernel no longer reads the buffer (reaps first, without blocking)."""
        if self._loan is None or self._loan.done or self._owner is None:
            return True
        self._owner.reap()
        return self._loan.done

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`done`; False when ``timeout`` seconds passed first."""
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

    ``adaptive=True`` turns zero-copy off for good at the first completion
    the kernel flags as copied (always the case on loopback and veth), since
    a deferred copy costs more than a plain one.  ``adaptive=False`` keeps
    the flag on (for measuring).

    Sockets that cannot do zero-copy (``AF_UNIX``, old kernels) work as plain
    sockets: ``zerocopy_supported`` is False and ``zerocopy_unsupported_reason``
    says why.  All methods are thread-safe; concurrent ``sendall`` calls are
    serialised and never interleave bytes.  ``close()`` closes ``sock``.
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
        for name, value, low in (
            ("zerocopy_threshold", zerocopy_threshold, 1),
            ("max_pinned_bytes", max_pinned_bytes, 1),
            ("max_sends_in_flight", max_sends_in_flight, 1),
        ):
            if not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        self._sock = sock
        self._fd = fd
        self.zerocopy_threshold = zerocopy_threshold
        self.max_pinned_bytes = max_pinned_bytes
        self.adaptive = adaptive
        rc = lib.zc_zerocopy_enable(self._fd)
        self.zerocopy_unsupported_reason: str | None = None
        if rc in _NO_ZEROCOPY:
            self.zerocopy_unsupported_reason = (
                f"this socket cannot send with MSG_ZEROCOPY ({os.strerror(-rc)})"
            )
        elif rc < 0:
            raise _c.error(rc, 0)
        self.zerocopy_supported = rc == 0
        self.zerocopy_active = self.zerocopy_supported
        self._recs = ffi.new("struct zc_track_rec[]", max_sends_in_flight)
        self._tracker = ffi.new("struct zc_tracker *")
        lib.zc_tracker_init(self._tracker, self._recs, max_sends_in_flight)
        self._completions = ffi.new("struct zc_completion[]", _REAP_BATCH)
        self._freed = ffi.new("uint64_t[]", _FREED_BATCH)
        self._reaped = ffi.new("size_t[1]")
        self._loans: dict[int, _Loan] = {}
        self._next_token = 1
        self._lock = threading.RLock()
        self._counts = dict.fromkeys(
            ("zerocopy_sends", "plain_sends", "completions", "copied_completions",
             "enobufs_fallbacks", "pinned_bytes", "peak_pinned_bytes"), 0)
        self._closed = False

    # -- state ---------------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The wrapped socket."""
        return self._sock

    def fileno(self) -> int:
        return self._fd

    @property
    def pending(self) -> int:
        """Buffers still on loan to the kernel."""
        return len(self._loans)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the buffers still on loan."""
        return self._counts["pinned_bytes"]

    @property
    def stats(self) -> SocketStats:
        with self._lock:
            return SocketStats(**self._counts)

    # -- sending -------------------------------------------------------------

    def send(self, data: Any) -> int:
        """Send some of ``data`` as ``socket.send`` does; return the bytes sent."""
        with self._lock:
            self._check_open()
            if self._loans:
                self._reap_locked()  # learn of COPIED early, free what is done
            if self._plain_will_do(data):
                self._counts["plain_sends"] += 1
                return self._sock.send(data)
            return self._send(data, stop_after_one=True)[0]

    def sendall(self, data: Any) -> SendHandle:
        """Send all of ``data`` as ``socket.sendall`` does; return a handle for its buffer.

        A non-blocking socket that fills raises ``BlockingIOError`` whose
        ``characters_written`` (and ``bytes_sent``) say how much went out;
        the buffer stays on loan as far as it was sent zero-copy.
        """
        with self._lock:
            self._check_open()
            if self._loans:
                self._reap_locked()  # learn of COPIED early, free what is done
            if self._plain_will_do(data):
                self._counts["plain_sends"] += 1
                self._sock.sendall(data)
                return _ALREADY_FREE
            return self._send(data, stop_after_one=False)[1]

    def _plain_will_do(self, data: Any) -> bool:
        """True when ``data`` goes without the flag and the socket's own send serves.

        Only on a blocking socket: with a timeout or none, ``socket.sendall``
        would not say how much went out before it raised.
        """
        if self.zerocopy_active and not (
            type(data) is bytes and len(data) < self.zerocopy_threshold
        ):
            return False
        return self._sock.gettimeout() is None

    def _send(self, data: Any, stop_after_one: bool) -> tuple[int, SendHandle]:
        cdata = ffi.from_buffer(data)  # exports data: a bytearray cannot resize now
        size = len(cdata)
        loan = _Loan(data, cdata, size)
        token = self._next_token
        self._next_token += 1
        sent = 0
        loaned = False
        wait_ms = timeout_ms(self._sock.gettimeout())
        resend_plain = False
        try:
            while sent < size:
                if sent:
                    self._check_open()  # a wait may have let its socket close: not another's fd
                zc = not resend_plain and self._want_zerocopy(size - sent, loaned, size, wait_ms)
                resend_plain = False
                rc = lib.zc_send_tracked(
                    self._fd, self._tracker if zc else ffi.NULL,
                    cdata + sent, size - sent, token, 0,
                )
                if rc > 0:
                    sent += rc
                    if zc:
                        self._count("zerocopy_sends")
                        if not loaned:
                            loaned = True
                            self._loans[token] = loan
                            self._pin(size)
                    else:
                        self._count("plain_sends")
                    if stop_after_one:
                        break
                elif rc == _c.ENOBUFS:  # the kernel cannot track it: resend plain, now
                    self._count("enobufs_fallbacks")
                    resend_plain = True
                elif rc == _c.EAGAIN:
                    rc = lib.zc_wait_writable(self._fd, wait_ms)
                    if rc < 0 and rc != _c.EINTR:
                        raise _c.error(rc, sent)
                elif rc != _c.EINTR and rc != _c.ENOSPC:
                    raise _c.error(rc, sent)
        except BaseException as exc:
            raise _c.attach(exc, sent) from None
        finally:
            self._settle(token, loan, loaned)
        return sent, SendHandle(self, loan if loaned else None)

    def _want_zerocopy(self, left: int, loaned: bool, size: int, wait_ms: int) -> bool:
        """Decide the flag for the next send, waiting for room where the mode allows."""
        if not self.zerocopy_active or left < self.zerocopy_threshold:
            return False
        need = 0 if loaned else size
        if self._has_room(need):
            return True
        self._reap_locked()
        if wait_ms == 0:  # non-blocking: never wait, send plain instead
            return self._has_room(need)
        timeout = None if wait_ms < 0 else wait_ms / 1000
        room = self._wait_until(lambda: self._has_room(need) or not self._loans, timeout)
        self._check_open()  # closed behind our back while waiting: not another's fd
        # past the bound: this part goes plain
        return room and self._has_room(need) and self.zerocopy_active

    def _has_room(self, need: int) -> bool:
        """Room for one more zero-copy send that pins ``need`` more bytes.

        ``need`` is 0 for the rest of a buffer already on loan: its bytes are
        counted, so only the tracker's records can run out.
        """
        in_flight: int = lib.zc_tracker_pending(self._tracker)
        if in_flight >= len(self._recs):
            return False
        if need == 0 or not self._loans:
            return True  # already pinned, or alone (a buffer over the bound may go)
        return self._counts["pinned_bytes"] + need <= self.max_pinned_bytes

    def _settle(self, token: int, loan: _Loan, loaned: bool) -> None:
        """After a buffer's last send: make sure its loan ends when its sends complete."""
        if not loaned:
            ffi.release(loan.cdata)  # plain sends only: done with the buffer now
            return
        if not lib.zc_tracker_seal(self._tracker, token):
            self._release(token)  # every zero-copy part of it completed already

    # -- completions ---------------------------------------------------------

    def reap(self) -> int:
        """Process completions without blocking; return how many buffers became free."""
        with self._lock:
            if not self._usable():
                return 0
            return self._reap_locked()

    def _reap_locked(self) -> int:
        released = 0
        while True:
            rc = lib.zc_reap_completions(self._fd, self._completions, _REAP_BATCH, self._reaped)
            n: int = self._reaped[0]
            for i in range(n):
                c = self._completions[i]
                sends = ((c.hi - c.lo) & 0xFFFFFFFF) + 1
                self._count("completions", sends)
                if c.copied:
                    self._count("copied_completions", sends)
                    if self.adaptive:
                        self.zerocopy_active = False
            batch, count = self._completions, n
            while True:
                k: int = lib.zc_tracker_complete(
                    self._tracker, batch, count, self._freed, _FREED_BATCH
                )
                for i in range(k):
                    self._release(int(self._freed[i]))
                released += k
                if k < _FREED_BATCH:
                    break
                batch, count = ffi.NULL, 0  # more free tokens than fit: collect the rest
            if rc < 0:  # a message that was no completion: after using those before it
                raise _c.error(rc, 0)
            if n < _REAP_BATCH:
                return released

    def _release(self, token: int) -> None:
        loan = self._loans.pop(token, None)
        if loan is None:
            return
        self._counts["pinned_bytes"] -= loan.nbytes
        ffi.release(loan.cdata)
        loan.obj = None
        loan.done = True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no buffer is on loan; False when ``timeout`` seconds passed first."""
        return self._wait_until(lambda: not self._loans, timeout)

    def _wait_until(self, ready: Any, timeout: float | None) -> bool:
        """Reap and wait until ``ready()``; False when the socket closed or time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        woke = False
        while True:
            with self._lock:
                usable = self._usable()
                seen = self._counts["completions"]
                if usable:
                    self._reap_locked()
                if ready():
                    return True
                if not usable:
                    return False
                idle_wake = woke and self._counts["completions"] == seen
            # Wait in slices, so a socket closed meanwhile by another thread
            # is noticed (its fd number may be reused) at the next check.
            wait = _WAIT_SLICE_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, max(1, int(left * 1000)))
            if idle_wake:
                # POLLERR and nothing to reap: a socket error (a reset) is
                # pending, not a completion; pace instead of spinning
                time.sleep(wait / 1000 / 10)
            rc = lib.zc_wait_completions(self._fd, wait)
            woke = rc == 0
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
        """Wait up to ``timeout`` for outstanding completions, then close the socket.

        Buffers whose completions did not come stay referenced for the life
        of the process (the kernel may still read them); a ``ResourceWarning``
        says how many.
        """
        if self._closed:
            return
        self.flush(timeout)
        with self._lock:
            if self._usable():
                self._abandon_loans("closed")
                self._closed = True
            self._sock.close()

    def _abandon_loans(self, how: str) -> None:
        if not self._loans:
            return
        count, nbytes = len(self._loans), self._counts["pinned_bytes"]
        _NEVER_RELEASED.extend(self._loans.values())
        self._loans.clear()
        warnings.warn(
            f"zerocopy.Socket {how} with {count} buffer(s) ({nbytes} bytes) still on loan "
            "to the kernel; they stay referenced for the life of the process",
            ResourceWarning,
            stacklevel=3,
        )

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
            self._abandon_loans("found its socket closed")
            self._closed = True
            return False
        return True

    def _count(self, key: str, n: int = 1) -> None:
        self._counts[key] += n

    def _pin(self, nbytes: int) -> None:
        pinned = self._counts["pinned_bytes"] + nbytes
        self._counts["pinned_bytes"] = pinned
        if pinned > self._counts["peak_pinned_bytes"]:
            self._counts["peak_pinned_bytes"] = pinned

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
        try:
            self._reap_locked()
        except OSError:
            pass
        self._abandon_loans("collected unclosed")

    def __repr__(self) -> str:
        mode = "zerocopy" if self.zerocopy_active else "plain"
        return f"<zerocopy.Socket fd={self._fd} {mode} pending={self.pending}>"
