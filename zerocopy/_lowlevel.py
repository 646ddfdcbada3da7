# SPDX-License-Identifier: MIT
"""The C boundary: the only module that imports ``zerocopy._native``.

The public modules normalise arguments and keep the little policy that must
be Python; everything that crosses into C goes through here, by these rules:

- A C function returns a count or 0, or ``-errno``.  :func:`run` is the one
  loop that calls C: after ``-EINTR`` the signal's Python handler has already
  run (cffi checks for pending signals when a call returns), so it calls
  again; a handler that raised ends the transfer with its exception, and any
  other ``-errno`` becomes a typed exception built by ``_errors.build`` that
  carries the progress (``bytes_sent`` by default).  Whatever is raised on
  the way, ``KeyboardInterrupt`` included, leaves with the progress attached.
- cdata stays here.  The capability sections below hand out ints and small
  classes that own their C structs; ``ffi.new`` results that every call
  needs (progress counters, response structs) are pooled, because a 4 KiB
  send costs about 3 us and an allocation a tenth of that.
- While C works on a socket object's fd, the object is held (its
  ``_io_refs``, the count ``socket.makefile`` uses): a ``close()`` from
  another thread is deferred until the call returns, so the fd number cannot
  be reused under the transfer.  A transfer resumed after a signal, or a
  response sent in several steps, stops with ``EBADF`` if the socket was
  closed meanwhile.  Nothing holds an int fd: its identity
  (``struct zc_fd_id``) is taken before the first call and checked before
  every later one, so a number that another thread closed and
  ``accept()`` reused ends the transfer with ``EBADF`` instead of sending the
  rest to the new connection.  The C core separately holds a socket across
  its own waits (``struct zc__hold``).
- Every C capability has its own banner below; a new capability adds its
  cdef to ``_build.py`` and a section here, and nothing else imports
  ``_native``.
"""
from __future__ import annotations

import _socket
import errno
import math
import os
import socket
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from . import _errors
from ._native import ffi as ffi  # re-exported to the modules that still need cdata
from ._native import lib as lib

# --------------------------------------------------------------------------- constants

EINTR = -errno.EINTR
EAGAIN = -errno.EAGAIN
ETIMEDOUT = -errno.ETIMEDOUT
ENODATA = -errno.ENODATA
EPROTOTYPE = -errno.EPROTOTYPE
EBADF = -errno.EBADF
ENOBUFS = -errno.ENOBUFS
ENOSPC = -errno.ENOSPC

TO_EOF: int = lib.ZC_TO_EOF  # count: up to the end of the source
FD_POSITION: int = lib.ZC_FD_POSITION  # offset: the fd's own position (used and advanced)
WAIT_FOREVER: int = lib.ZC_WAIT_FOREVER  # timeout_ms
OFF_MAX = 2**63 - 1  # off_t
INT_MAX = 2**31 - 1  # C int (poll's timeouts)


def timeout_ms(timeout: float | None) -> int:
    """A socket-style timeout in seconds (None or inf: no bound) as C's milliseconds."""
    if timeout is None or timeout == math.inf:
        return WAIT_FOREVER
    if not timeout >= 0:  # negative or NaN
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return min(math.ceil(timeout * 1000), INT_MAX)  # ~25 days: as good as forever


# socket.socket.type converts to an enum on every read; the raw getter does not.
raw_socket_type = _socket.socket.type.__get__
_SOCK_STREAM = int(socket.SOCK_STREAM)
_SOCKET = socket.socket


# --------------------------------------------------------------------------- the call protocol


def error(rc: int, done: _errors.Progress, attr: str = "bytes_sent",
          what: str | None = None) -> OSError:
    """The exception for a negative return ``rc`` after ``done`` bytes moved."""
    return _errors.build(-rc, done, attr, what)


def attach(exc: BaseException, done: _errors.Progress, attr: str = "bytes_sent") -> BaseException:
    """``exc`` (caught during a transfer) with the progress on it; see ``_errors.with_progress``."""
    return _errors.with_progress(exc, done, attr)


def run(
    call: Callable[[], int],
    done: Callable[[], _errors.Progress],
    *,
    rc: int | None = None,
    attr: str = "bytes_sent",
    what: str | None = None,
    alive: Callable[[], bool] | None = None,
) -> int:
    """Call ``call()`` until it returns >= 0 and return that; raise with ``done()`` otherwise.

    ``rc`` is the result of a first call the caller already made (a fast
    path tries once inline and hands over only when that did not finish).
    After ``-EINTR``, ``alive()`` (when given) says whether the target is
    still there; if not, ``EBADF`` ends the transfer instead of a resume.
    """
    try:
        while True:
            if rc is None:
                rc = call()
            if rc >= 0:
                return rc
            if rc != EINTR:
                raise error(rc, done(), attr, what)
            if alive is not None and not alive():
                raise error(EBADF, done(), attr, what)
            rc = None  # the handler returned: resume
    except BaseException as exc:
        raise attach(exc, done(), attr) from None


# uint64_t[1] progress counters, reused: list.pop/append are atomic.
_U64 = ffi.typeof("uint64_t[1]")
_counters: list[Any] = []


def counter() -> Any:
    """A ``uint64_t[1]`` set to 0; give it back with ``_counters.append``."""
    c = _counters.pop() if _counters else ffi.new(_U64)
    c[0] = 0
    return c


# --------------------------------------------------------------------------- sockets


def hold(sock: socket.socket) -> None:
    """Defer a ``close()`` of ``sock`` from another thread until :func:`release`."""
    sock._io_refs += 1  # type: ignore[attr-defined]


def release(sock: socket.socket) -> None:
    sock._decref_socketios()  # type: ignore[attr-defined]  # closes now if close() came


def is_open(sock: socket.socket) -> bool:
    """False once ``close()`` was called (even while it is deferred by :func:`hold`)."""
    return not sock._closed  # type: ignore[attr-defined]


_FD_ID_T = ffi.typeof("struct zc_fd_id *")
_fd_ids: list[Any] = []  # reused, as the counters are


def fd_id(fd: int) -> Any:
    """A new ``struct zc_fd_id`` naming the file ``fd`` names now (all zeros if not open)."""
    ident = ffi.new(_FD_ID_T)
    lib.zc_fd_id_get(fd, ident)
    return ident


def same_fd(fd: int, ident: Any) -> bool:
    """True while ``fd`` still names the file ``ident`` was taken from."""
    return bool(lib.zc_fd_id_check(fd, ident) == 0)


def check_stream(fd: int) -> int:
    """0 for a SOCK_STREAM socket; -EPROTOTYPE, -ENOTSOCK or another -errno otherwise."""
    rc: int = lib.zc_check_stream(fd)
    return rc


def wait_writable(fd: int, timeout_ms: int) -> int:
    """0 once ``fd`` is writable; -ETIMEDOUT, -EAGAIN (timeout 0), -EINTR."""
    rc: int = lib.zc_wait_writable(fd, timeout_ms)
    return rc


def tls_tx_offloaded(fd: int) -> bool:
    """True when the kernel encrypts what is written to ``fd`` (kernel TLS, TX side)."""
    return bool(lib.zc_tls_tx_offloaded(fd) == 1)


# --------------------------------------------------------------------------- sendfile

_CHECK_STREAM: int = lib.ZC_CHECK_STREAM
_ID_TAKE: int = lib.ZC_ID_TAKE
_ID_CHECK: int = lib.ZC_ID_CHECK
_FAST_FLAGS = _CHECK_STREAM | _ID_TAKE


def sendfile_range(sock: int, file: int, offset: int, count: int) -> int:
    """``count`` bytes of ``file`` at ``offset`` to the socket fd ``sock``: the per-call fast path.

    The caller checked that all four are ints >= 0 with offset + count <=
    OFF_MAX.  C checks that ``sock`` is a stream socket (-EPROTOTYPE) in the
    same call.  Never waits: a non-blocking socket raises BlockingIOError.
    """
    sent = _counters.pop() if _counters else ffi.new(_U64)
    sent[0] = 0
    ident = _fd_ids.pop() if _fd_ids else ffi.new(_FD_ID_T)
    try:  # the same call records which socket ``sock`` names, for a resume
        rc = lib.zc_sendfile_id(sock, file, offset, count, 0, _FAST_FLAGS, sent, ident)
    except BaseException as exc:  # a signal handler raised as the call returned
        raise attach(exc, int(sent[0])) from None
    if rc == 0:
        _counters.append(sent)
        _fd_ids.append(ident)
        return count
    return _sendfile_rest(rc, sock, file, offset, count, 0, True, sent, None, ident)


def sendfile(sock: int, file: int, start: int, count: int, timeout_ms: int,
             check: bool, owner: socket.socket | None = None) -> int:
    """The C sendfile loop (resumed after signals); returns the bytes sent.

    ``start`` is an offset or FD_POSITION, ``count`` bytes or TO_EOF;
    ``check`` asks C to refuse a non-stream socket; ``owner`` is the socket
    object of ``sock``, held for the call.
    """
    sent = counter()
    try:
        return sendfile_into(sent, sock, file, start, count, timeout_ms, check, owner)
    finally:
        _counters.append(sent)


def sendfile_into(sent: Any, sock: int, file: int, start: int, count: int, timeout_ms: int,
                  check: bool, owner: socket.socket | None = None) -> int:
    """:func:`sendfile` counting in the caller's ``sent`` (at 0 on entry; kept on errors)."""
    ident = None
    flags = _CHECK_STREAM if check else 0
    if owner is not None:
        hold(owner)
    else:  # an int fd: nothing holds it, so C records which socket it names
        ident = ffi.new(_FD_ID_T)
        flags |= _ID_TAKE
    try:
        try:
            rc = lib.zc_sendfile_id(sock, file, start, count, timeout_ms, flags, sent,
                                    ident if ident is not None else ffi.NULL)
        except BaseException as exc:
            raise attach(exc, int(sent[0])) from None
        if rc == 0:
            return int(sent[0])
        return _sendfile_rest(rc, sock, file, start, count, timeout_ms, check, sent, owner,
                              ident)
    finally:
        if owner is not None:
            release(owner)


def _sendfile_rest(rc: int, sock: int, file: int, start: int, count: int, timeout_ms: int,
                   check: bool, sent: Any, owner: socket.socket | None, ident: Any) -> int:
    """After a first call that did not finish: resume, or raise.

    A socket object ``owner`` is held by the caller, and the resume stops
    when it was closed meanwhile; an int fd's resumed calls check ``ident``,
    recorded by the first one (ZC_ID_CHECK: -EBADF when the number names
    another socket now).
    """
    if rc == EPROTOTYPE and check:
        raise ValueError("sock must be a SOCK_STREAM socket")
    flags = 0 if owner is not None else _ID_CHECK
    idp = ident if ident is not None else ffi.NULL

    def again() -> int:
        # resume where the interrupted call stopped (``sent`` counts from 0)
        done = int(sent[0])
        offset = start if start == FD_POSITION else start + done
        left = count if count == TO_EOF else count - done
        result: int = lib.zc_sendfile_id(sock, file, offset, left, timeout_ms, flags, sent,
                                         idp)
        return result

    run(again, lambda: int(sent[0]), rc=rc,
        alive=None if owner is None else lambda: is_open(owner))
    return int(sent[0])


# --------------------------------------------------------------------------- cork


class Cork:
    """``TCP_CORK`` set for a while on one socket fd (``zc_cork_begin``/``zc_cork_end``)."""

    __slots__ = ("_fd", "_state")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._state = ffi.new("struct zc_cork_state *")
        rc = lib.zc_cork_begin(fd, self._state)
        if rc < 0:
            raise error(rc, 0)

    def end(self) -> None:
        rc = lib.zc_cork_end(self._fd, self._state)
        if rc < 0:
            raise error(rc, 0)


# --------------------------------------------------------------------------- response

_RESPONSE_T = ffi.typeof("struct zc_response *")


class Response:
    """Owner of one ``struct zc_response``: header + file range + trailer, resumable.

    ``FileSender`` is this class plus argument normalisation and the policy
    that must be Python (file positions, TLS).  A server makes one per
    request, so the common response -- a plain socket object, an int file
    descriptor, an explicit range, a ``bytes`` header and no trailer -- is
    checked and set up by this class's own ``__init__`` and sent by its own
    ``send``, without further frames; every other combination of arguments
    goes to the subclass's ``_setup``, and every other step to its
    ``_drive``.  ``_slow`` is None exactly for the common response.

    ``bytes`` headers and trailers go to C as they are (cffi hands C the
    object's own buffer, which CPython never moves, and the object stays
    referenced in ``_keep``); other bytes-like objects are exported with
    ``ffi.from_buffer`` until :meth:`_c_release`, so a ``bytearray`` cannot
    be resized while C may read it.  A response that may cork the socket or
    holds exports gets a finalizer that restores the socket if its owner
    forgets ``close()``; ``_extra`` (exports, finalizer) is None otherwise.
    """

    __slots__ = ("_c", "_closed", "_done", "_extra", "_fd", "_ident", "_keep", "_owner",
                 "_slow")

    _c: Any  # struct zc_response *
    _closed: bool
    _done: bool
    _fd: int
    _extra: tuple[list[Any], Any] | None
    _owner: socket.socket | None
    _ident: Any  # for an int fd (no _owner): its struct zc_fd_id from _c_init
    _keep: Any  # the header (bytes), or (header, trailer) as passed to C
    _slow: Any  # the subclass's state for uncommon responses, or None

    def __init__(
        self,
        sock: Any,
        file: Any,
        offset: int | None = None,
        count: int | None = None,
        *,
        headers: Any = b"",
        trailers: Any = b"",
    ) -> None:
        try:  # ints and nothing else: `|` raises TypeError for None, floats, str
            common = (
                type(sock) is _SOCKET
                and type(file) is int  # not a bool
                and type(headers) is bytes
                and type(trailers) is bytes  # not 0, None or []: the general path refuses those
                and not trailers
                and file | offset | count >= 0  # type: ignore[operator]
                and raw_socket_type(sock) == _SOCK_STREAM
            )
        except TypeError:
            common = False
        if common:
            fd = sock.fileno()
            if fd >= 0:
                self._fd = fd
                self._slow = None
                self._owner = sock
                self._keep = headers
                self._done = False
                self._extra = None
                self._c = c = ffi.new(_RESPONSE_T)
                # never corks (MSG_MORE on the header does it), exports nothing
                try:
                    rc = lib.zc_response_init(c, fd, file, offset, count, headers,
                                              len(headers), b"", 0)
                except OverflowError:  # past 64 bits: _setup says what is wrong
                    rc = -1
                self._closed = rc != 0
                if rc == 0:
                    return
        # the rest, and the errors (a closed socket, a range past off_t: -EINVAL above)
        self._closed = True
        self._setup(sock, file, offset, count, headers, trailers)
        self._closed = False

    def _setup(self, sock: Any, file: Any, offset: int | None, count: int | None,
               headers: Any, trailers: Any) -> None:
        raise NotImplementedError  # the subclass normalises everything else

    def _drive(self, timeout_ms: int, stop_on_again: bool) -> int:
        raise NotImplementedError  # the subclass steps uncommon responses

    def _close_slow(self) -> None:
        raise NotImplementedError

    def send(self) -> int:
        """Make progress; return the bytes sent by this call.

        Non-blocking socket: sends until the kernel would block (may return 0).
        Blocking socket or one with a timeout: finishes, or raises.
        """
        wait = self._wait_ms()
        if self._slow is None and not self._closed:
            return self._c_send(wait, wait == 0)
        return self._drive(wait, True)

    def send_all(self) -> int:
        """Finish the response on any socket (waiting for a non-blocking one); return bytes sent."""
        wait = self._wait_ms() or WAIT_FOREVER  # a non-blocking socket waits too
        if self._slow is None and not self._closed:
            return self._c_send(wait, False)
        return self._drive(wait, False)

    def _wait_ms(self) -> int:
        """How long a step may wait for room: the socket's timeout as it is now (a server
        may make it non-blocking after making the response); 0 for an int fd, which the
        kernel blocks on or not."""
        owner = self._owner
        if owner is None:
            return 0
        timeout = owner.gettimeout()
        if timeout is None:
            return WAIT_FOREVER
        return timeout_ms(timeout) if timeout else 0

    def close(self) -> None:
        """Restore the socket options the response changed; idempotent."""
        if not self._closed:
            self._closed = True
            if self._slow is not None or self._extra is not None:
                self._close_slow()  # the common response never corks, exports nothing

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._closed:  # close(), inlined: a `with` block per response
            self._closed = True
            if self._slow is not None or self._extra is not None:
                self._close_slow()

    def _c_init(self, sock: int, file: int, start: int, count: int,
                header: Any, trailer: Any, owner: socket.socket | None) -> None:
        self._owner = owner
        if owner is None:  # nothing holds an int fd: know whose it is at each step
            self._ident = fd_id(sock)
        self._done = False
        self._extra = None
        exports: list[Any] = []
        if type(header) is not bytes:
            header = _export(header, "headers", exports)
        if type(trailer) is not bytes:
            trailer = _export(trailer, "trailers", exports)
        self._keep = header, trailer
        self._c = c = ffi.new(_RESPONSE_T)
        rc = lib.zc_response_init(c, sock, file, start, count, header, len(header),
                                  trailer, len(trailer))
        if rc < 0:
            _release_exports(exports)
            raise error(rc, 0)
        if owner is None:  # resumed steps send through a duplicate checked against it
            lib.zc_response_bind_id(c, self._ident)
        if exports or len(trailer) or count == TO_EOF:
            # it may cork, or it pins buffers: undo that if close() never comes
            finalizer = weakref.finalize(self, _abandon_response, c, owner, sock, exports,
                                         type(self).__name__, self._ident if owner is None
                                         else None)
            self._extra = (exports, finalizer)

    @property
    def sent(self) -> int:
        """Bytes of the whole response sent so far."""
        return int(self._c.sent)

    @property
    def trailer_len(self) -> int:
        keep: Any = self._keep
        return len(keep[1]) if isinstance(keep, tuple) else 0

    def _total(self) -> int:
        return int(self._c.total)

    def _c_send(self, timeout_ms: int, stop_on_again: bool) -> int:
        """Progress until done or, with ``stop_on_again``, until the socket is full;
        return the bytes this call sent.

        Raises with ``bytes_sent`` = bytes of the whole response sent; a
        failed step leaves the socket uncorked.
        """
        if self._done:
            return 0
        c = self._c
        before = c.sent
        owner = self._owner
        if not self._ours():  # closed since the last step: its number may be another's now
            raise error(EBADF, int(c.sent))
        if owner is not None:
            owner._io_refs += 1  # type: ignore[attr-defined]  # hold(), inlined
        try:
            try:
                rc = lib.zc_response_send(c, timeout_ms, ffi.NULL)
            except BaseException as exc:  # a signal handler raised as the call returned
                lib.zc_response_end(c)
                raise attach(exc, int(c.sent)) from None
            if rc != 0 and not (rc == EAGAIN and stop_on_again):
                # -EINTR (sendfile(2) says so even on a non-blocking socket)
                # or an error: resume after the handler; a full socket met on
                # the way ends a step that stops there, as it would have
                # without the signal
                def again() -> int:
                    r = int(lib.zc_response_send(c, timeout_ms, ffi.NULL))
                    return 1 if r == EAGAIN and stop_on_again else r

                try:
                    rc = run(again, lambda: int(c.sent), rc=rc, alive=self._ours)
                except BaseException:
                    lib.zc_response_end(c)  # a failed step never leaves the cork set
                    raise
            self._done = rc == 0
            return int(c.sent - before)
        finally:
            if owner is not None:  # release(), inlined
                owner._io_refs -= 1  # type: ignore[attr-defined]
                if owner._closed:  # type: ignore[attr-defined]
                    owner.close()  # a close() from another thread came meanwhile

    def _ours(self) -> bool:
        """The socket object is still open and owns the fd (a close() deferred by the hold
        counts as closed).  A bare fd's identity is C's to check: every step after the
        first and the end go through a duplicate checked against it (zc_response_bind_id)."""
        owner = self._owner
        return owner is None or (not owner._closed  # type: ignore[attr-defined]
                                 and owner.fileno() == self._fd)

    def _c_end(self) -> None:
        """Restore what the response changed on the socket (the cork); idempotent.

        A socket closed meanwhile is left alone: its number may be another's now
        (a bare fd's is checked in C).
        """
        if not self._ours():
            return
        rc = lib.zc_response_end(self._c)
        if rc < 0:
            raise error(rc, int(self._c.sent))

    def _c_release(self) -> None:
        """Let go of the exported buffers (after :meth:`_c_end`); ``sent`` stays readable."""
        extra, self._extra = self._extra, None
        if extra is not None:
            extra[1].detach()
            _release_exports(extra[0])


def _export(data: Any, name: str, exports: list[Any]) -> Any:
    try:
        view = ffi.from_buffer(data)
    except TypeError:
        raise TypeError(f"{name} must be a bytes-like object, not {type(data).__name__}") from None
    exports.append(view)
    return view


def _release_exports(exports: list[Any] | None) -> None:
    for view in exports or ():
        ffi.release(view)  # a bytearray header may be resized again


def _abandon_response(c: Any, owner: socket.socket | None, fd: int, exports: list[Any] | None,
                      name: str, ident: Any) -> None:
    """A response collected without ``close()``: restore its socket, warn.

    ``ident``: a bare fd's identity, bound to ``c`` (kept alive here): C
    uncorks only the socket it names, never the next owner of the number.
    """
    warnings.warn(f"unclosed {name}", ResourceWarning, stacklevel=2)
    if owner is None or owner.fileno() == fd:
        lib.zc_response_end(c)
    _release_exports(exports)


# ---------------------------------------------------------- MSG_ZEROCOPY policy: struct zc_zsock

_ZSOCK_T = ffi.typeof("struct zc_zsock *")
_ZSOCK_OPTS_T = ffi.typeof("struct zc_zsock_opts *")
_ZSOCK_ONCE: int = lib.ZC_ZSOCK_ONCE
_ZSOCK_RESUME: int = lib.ZC_ZSOCK_RESUME
_TOKENS = 64  # tokens taken per zc_zsock_collect() call


class Loan:
    """A buffer on loan to the kernel: the object and its export, until ``done``."""

    __slots__ = ("_view", "done", "nbytes", "obj")

    def __init__(self, obj: Any, view: Any, nbytes: int) -> None:
        self.obj = obj
        self._view = view
        self.nbytes = nbytes
        self.done = False


class ZSock:
    """Owner of one ``struct zc_zsock``: the whole ``MSG_ZEROCOPY`` policy runs in C.

    What stays here is what must be Python: each buffer C reports on loan
    stays referenced and exported (a ``bytearray`` cannot be resized) under
    its token until C reports the token free, and then only.  Not
    thread-safe: the caller serialises every method but :meth:`poll`.

    Only :meth:`reap` holds ``owner`` (see :func:`hold`): sends and
    :meth:`end` may wait, and a wait must end when another thread closes the
    socket (a server closing a stalled client), not defer that close until
    the peer reads.  C checks instead that the fd still names the socket it
    was given, before using it and after each wait slice (100 ms), and waits
    on its own duplicate: ``EBADF`` then, never a byte to the fd's next owner.
    """

    __slots__ = ("_c", "_loans", "_next_token", "_owner", "_recs", "_threshold", "_tokens")

    def __init__(self, owner: socket.socket, fd: int, *, threshold: int, max_pinned: int,
                 adaptive: bool, max_in_flight: int) -> None:
        self._owner = owner
        self._threshold = threshold
        self._loans: dict[int, Loan] = {}
        self._next_token = 1
        opts = ffi.new(_ZSOCK_OPTS_T)
        opts.threshold = threshold
        opts.max_pinned_bytes = max_pinned
        opts.adaptive = 1 if adaptive else 0
        self._recs = ffi.new("struct zc_track_rec[]", max_in_flight)
        self._tokens = ffi.new("uint64_t[]", _TOKENS)
        self._c = ffi.new(_ZSOCK_T)
        rc = lib.zc_zsock_init(self._c, fd, self._recs, max_in_flight, opts)
        if rc < 0:
            raise error(rc, 0)

    # -- state (the C struct's public fields) ---------------------------------

    @property
    def supported(self) -> bool:
        return bool(self._c.supported)

    @property
    def unsupported_errno(self) -> int:
        return int(self._c.unsupported)

    @property
    def active(self) -> bool:
        return bool(self._c.active)

    @property
    def pending(self) -> int:
        """Buffers still referenced here (on loan, or free and not yet collected)."""
        return len(self._loans)

    def stats(self) -> tuple[int, int, int, int, int, int, int]:
        s = self._c.stats
        return (int(s.zerocopy_sends), int(s.plain_sends), int(s.completions),
                int(s.copied_completions), int(s.enobufs_fallbacks), int(s.pinned_bytes),
                int(s.peak_pinned_bytes))

    # -- sending ----------------------------------------------------------------

    def send(self, data: Any, once: bool, timeout_ms: int) -> tuple[int, Loan | None]:
        """Send ``data`` (all of it, or like ``socket.send`` with ``once``).

        Returns the bytes sent and the loan (None when the buffer is free
        already).  Raises with ``bytes_sent``; whatever happens, a buffer C
        still reads stays referenced until its token is collected.
        """
        view: Any = None
        c = self._c
        if type(data) is bytes:
            size = len(data)
            buf: Any = data  # cffi hands C the object's own buffer, which never moves
        else:
            try:
                buf = view = ffi.from_buffer(data)  # exported: a bytearray cannot resize now
            except TypeError:
                raise TypeError(
                    f"a bytes-like object is required, not '{type(data).__name__}'") from None
            size = len(view)
        token = self._next_token
        self._next_token = token + 1
        sent = _counters.pop() if _counters else ffi.new(_U64)
        sent[0] = 0
        flags = _ZSOCK_ONCE if once else 0
        try:
            try:
                rc = lib.zc_zsock_send(c, buf, size, token, flags, timeout_ms, sent)
                if rc != 0:
                    self._send_rest(rc, data, view, size, token, flags, timeout_ms, sent)
            except BaseException as exc:
                lib.zc_zsock_send_end(c)  # a buffer left open by -EINTR ends here
                raise attach(exc, int(sent[0])) from None
            n = int(sent[0])
        except BaseException as exc:
            loan = self._settle(token, data, view, size)
            if loan is not None:
                # what went out zero-copy before the error stays on loan: say which
                exc.loan = loan  # type: ignore[attr-defined]
            if c.freed:
                self._collect()
            raise
        finally:
            _counters.append(sent)
        loan = self._settle(token, data, view, size)
        if c.freed:
            self._collect()
        return n, loan

    def _send_rest(self, rc: int, data: Any, view: Any, size: int, token: int, flags: int,
                   timeout_ms: int, sent: Any) -> None:
        """Resume after -EINTR (the handler returned) until done; raise otherwise."""
        c, owner = self._c, self._owner
        p = view if view is not None else ffi.from_buffer(data)

        def again() -> int:
            done = int(sent[0])
            result: int = lib.zc_zsock_send(c, p + done, size - done, token,
                                            flags | _ZSOCK_RESUME, timeout_ms, sent)
            return result

        run(again, lambda: int(sent[0]), rc=rc, alive=lambda: is_open(owner))

    def _settle(self, token: int, data: Any, view: Any, size: int) -> Loan | None:
        """After a send: keep the buffer under its token while C says it is on loan."""
        if not self._c.loaned:
            if view is not None:
                ffi.release(view)  # every byte went plain, or its completions came already
            return None
        loan = self._loans[token] = Loan(data, view, size)
        return loan

    # -- completions ------------------------------------------------------------

    def _collect(self) -> int:
        c, tokens, loans = self._c, self._tokens, self._loans
        released = 0
        while True:
            n = lib.zc_zsock_collect(c, tokens, _TOKENS)
            for i in range(n):
                loan = loans.pop(int(tokens[i]), None)
                if loan is not None:
                    if loan._view is not None:
                        ffi.release(loan._view)
                    loan._view = loan.obj = None
                    loan.done = True
                    released += 1
            if n < _TOKENS:
                return released

    def reap(self) -> int:
        """Read completions (never blocks); return how many buffers became free."""
        hold(self._owner)
        try:
            rc = lib.zc_zsock_reap(self._c)
        finally:
            release(self._owner)
        released = self._collect()
        if rc < 0:
            raise error(rc, 0)
        return released

    def poll(self, timeout_ms: int) -> int:
        """Wait for completions to reap: 0, -ETIMEDOUT, -EAGAIN, -EINTR, -EBADF.

        The one method any thread may call without the caller's lock.
        """
        rc: int = lib.zc_zsock_poll(self._c, timeout_ms)
        return rc

    def end(self, timeout_ms: int) -> list[Loan]:
        """Get every buffer back (resetting a stalled connection; see ``zc_zsock_end``).

        Returns the loans whose completions never came: the kernel may still
        read them.  The socket is left open: close it next.
        """
        c = self._c
        run(lambda: int(lib.zc_zsock_end(c, timeout_ms)), lambda: 0)
        return self._leftovers()

    def abandon(self) -> list[Loan]:
        """Stop using the socket (it was closed); the loans that never completed."""
        lib.zc_zsock_abandon(self._c)
        return self._leftovers()

    def _leftovers(self) -> list[Loan]:
        self._collect()
        left = list(self._loans.values())
        self._loans.clear()
        return left


# --------------------------------------------------------------------------- HTTP file server

_HTTP_CONFIG_T = ffi.typeof("struct zc_http_config *")
_HTTP_SERVER_T = ffi.typeof("struct zc_http_server *")
_HTTP_LOOP_T = ffi.typeof("struct zc_http_loop *")

HTTP_FOLLOW_SYMLINKS: int = lib.ZC_HTTP_FOLLOW_SYMLINKS
HTTP_NO_LISTING: int = lib.ZC_HTTP_NO_LISTING
HTTP_NO_OPENAT2: int = lib.ZC_HTTP_NO_OPENAT2

# struct zc_http_config's fields, in order; root_fd, flags and log_fd are the caller's.
HTTP_CONFIG_FIELDS = (
    "root_fd", "flags", "max_conns", "head_max", "max_headers", "header_timeout_ms",
    "idle_timeout_ms", "send_timeout_ms", "linger_ms", "cache_entries", "cache_valid_ms",
    "small_file_max", "log_fd",
)
# struct zc_http_stats's counters, in order; "responses" is six counters (index: status // 100).
HTTP_STATS_FIELDS = (
    "accepted", "closed", "requests", "responses", "bytes", "body_bytes", "bad_requests",
    "header_timeouts", "idle_timeouts", "send_timeouts", "resets", "truncated",
    "accept_errors", "fd_exhausted", "conn_limit", "cache_hits", "cache_misses",
    "cache_stale", "log_errors",
)


def http_defaults() -> dict[str, int]:
    """``zc_http_config_init``'s configuration, field by field."""
    cfg = ffi.new(_HTTP_CONFIG_T)
    lib.zc_http_config_init(cfg)
    return {name: int(getattr(cfg, name)) for name in HTTP_CONFIG_FIELDS}


def os_error(rc: int, filename: Any = None) -> OSError:
    """``OSError`` for ``-errno`` ``rc``, of the class the stdlib would pick
    (``-ENOENT`` -> ``FileNotFoundError``): for set-up calls, which move no bytes."""
    if filename is None:
        return OSError(-rc, os.strerror(-rc))
    return OSError(-rc, os.strerror(-rc), filename)


class HttpServer:
    """Owner of one ``struct zc_http_server``: the configuration and the stop switch.

    The cdata stays in place while this object lives, and the loops made on
    it keep a reference to it, so it outlives them.  :meth:`stop` is what a
    signal handler or another thread calls: one atomic store and one
    ``write`` to an eventfd in C, no lock in Python.
    """

    __slots__ = ("__weakref__", "_c", "_open")

    def __init__(self, config: dict[str, int]) -> None:
        self._open = False
        cfg = ffi.new(_HTTP_CONFIG_T)
        lib.zc_http_config_init(cfg)
        for name, value in config.items():
            setattr(cfg, name, value)
        self._c = ffi.new(_HTTP_SERVER_T)
        rc = lib.zc_http_server_init(self._c, cfg)
        if rc < 0:
            raise os_error(rc)
        self._open = True

    def loop_size(self) -> int:
        """Bytes of memory one loop maps (most of it stays untouched until needed)."""
        size = ffi.new("size_t *")
        rc = lib.zc_http_loop_size(ffi.addressof(self._c, "config"), size)
        if rc < 0:
            raise os_error(rc)
        return int(size[0])

    def stop(self, grace_ms: int) -> None:
        """Ask every loop to stop (0: close all at once; else drain for ``grace_ms``).

        A second call may shorten the grace.  The switch stays on until :meth:`rearm`.
        """
        if self._open:
            rc = lib.zc_http_server_stop(self._c, grace_ms)
            if rc < 0:
                raise os_error(rc)

    def rearm(self) -> None:
        """Undo :meth:`stop`; only while no loop runs."""
        rc = lib.zc_http_server_rearm(self._c)
        if rc < 0:
            raise os_error(rc)

    def close(self) -> None:
        """Release the eventfd; only once every loop is closed.  Idempotent."""
        if self._open:
            self._open = False
            lib.zc_http_server_close(self._c)

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            self.close()


class HttpLoop:
    """Owner of one ``struct zc_http_loop``: an epoll loop on ``listen_fd``, run by one thread.

    Its memory (``HttpServer.loop_size()`` bytes) is mapped by C, so pages
    of connection buffers never used are never resident.
    """

    __slots__ = ("_c", "_open", "_server", "_stats")

    def __init__(self, server: HttpServer, listen_fd: int) -> None:
        self._open = False
        self._server = server  # the loop keeps a pointer to its struct
        self._c = ffi.new(_HTTP_LOOP_T)
        rc = lib.zc_http_loop_init(self._c, server._c, listen_fd, ffi.NULL, 0)
        if rc < 0:
            raise os_error(rc)
        self._stats = ffi.addressof(self._c, "stats")
        self._open = True

    def run(self, timeout_ms: int) -> int:
        """Serve (the GIL released) for up to ``timeout_ms`` (WAIT_FOREVER: no bound).

        Returns 0 once stopped, EINTR after a signal (its Python handler runs
        when this returns), ETIMEDOUT; raises OSError for anything else.
        """
        rc: int = lib.zc_http_loop_run(self._c, timeout_ms)
        if rc < 0 and rc != EINTR and rc != ETIMEDOUT:
            raise os_error(rc)
        return rc

    def stats(self) -> list[int]:
        """The counters in ``HTTP_STATS_FIELDS`` order, ``responses`` flattened (six of
        them); a moment old when the loop runs in another thread."""
        s = self._stats
        return [int(s.accepted), int(s.closed), int(s.requests),
                *(int(s.responses[i]) for i in range(6)),
                int(s.bytes), int(s.body_bytes), int(s.bad_requests), int(s.header_timeouts),
                int(s.idle_timeouts), int(s.send_timeouts), int(s.resets), int(s.truncated),
                int(s.accept_errors), int(s.fd_exhausted), int(s.conn_limit),
                int(s.cache_hits), int(s.cache_misses), int(s.cache_stale),
                int(s.log_errors)]

    def close(self) -> None:
        """Close every connection of the loop and unmap its memory; never while it runs.
        Idempotent."""
        if self._open:
            self._open = False
            lib.zc_http_loop_close(self._c)

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            self.close()


# ----------------------------------------------------------------------- pipes and the pipe pool

PIPE_SIZE: int = lib.ZC_PIPE_SIZE  # what pooled pipes are grown to (1 MiB)
_PIPE_T = ffi.typeof("struct zc_pipe *")


class PipePool:
    """A bounded pool of empty pipes, grown to ``pipe_size`` bytes with ``F_SETPIPE_SZ``.

    Pipes are made on demand (``O_CLOEXEC | O_NONBLOCK``); a pipe that cannot
    be grown (``/proc/sys/fs/pipe-max-size``, ``pipe-user-pages-soft``) keeps
    its smaller size.  At most ``max_idle`` empty pipes are kept; a pipe that
    still holds bytes after an error is closed, never reused.  Thread-safe.
    """

    def __init__(self, pipe_size: int = PIPE_SIZE, max_idle: int = 16) -> None:
        if pipe_size < 0 or max_idle < 0:
            raise ValueError("pipe_size and max_idle must be >= 0")
        self._slots = ffi.new("struct zc_pipe[]", max(max_idle, 1))
        self._pool = ffi.new("struct zc_pipe_pool *")
        rc = lib.zc_pipe_pool_init(self._pool, self._slots, max_idle, pipe_size)
        if rc < 0:
            raise error(rc, 0)
        self._lock = threading.Lock()
        self._closed = False
        self.max_idle = max_idle

    @property
    def cdata(self) -> Any:
        """The ``struct zc_pipe_pool *`` (for the C calls of this module)."""
        return self._pool

    def stats(self) -> dict[str, int]:
        """Counters: pipes ``created``, gets ``reused``, puts ``discarded``, ``small`` pipes."""
        p = self._pool
        return {
            "created": int(p.created),
            "reused": int(p.reused),
            "discarded": int(p.discarded),
            "small": int(p.small),
        }

    @property
    def idle(self) -> int:
        """Empty pipes waiting in the pool (two descriptors each)."""
        return int(lib.zc_pipe_pool_idle(self._pool))

    def take(self) -> Any:
        """An empty ``struct zc_pipe *``; give it back with :meth:`give`."""
        pipe = ffi.new(_PIPE_T)
        with self._lock:  # not while close() empties the pool
            rc = lib.zc_pipe_get(self._pool if not self._closed else ffi.NULL, pipe)
        if rc < 0:
            raise error(rc, 0)
        return pipe

    def give(self, pipe: Any) -> None:
        """Put ``pipe`` back (it is closed when it holds bytes, or the pool is closed or full)."""
        # Under the lock: a pipe pooled after close() emptied the pool would
        # never be closed (two descriptors leaked).
        with self._lock:
            lib.zc_pipe_put(self._pool if not self._closed else ffi.NULL, pipe)

    def close(self) -> None:
        """Close the idle pipes; pipes given back later are closed too."""
        with self._lock:
            self._closed = True
            lib.zc_pipe_pool_destroy(self._pool)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            lib.zc_pipe_pool_destroy(self._pool)


_default_pool: PipePool | None = None
_default_lock = threading.Lock()


def default_pool() -> PipePool:
    """The process-wide pool used by ``splice_all``, ``recvfile`` and ``relay``."""
    global _default_pool
    pool = _default_pool
    if pool is None:
        with _default_lock:
            if _default_pool is None:
                _default_pool = PipePool()
            pool = _default_pool
    return pool


# --------------------------------------------------------------------------- splice

_I64 = ffi.typeof("int64_t[1]")


class Splice:
    """One ``zc_splice`` transfer: its progress and explicit offsets, readable after it failed.

    C applies the rules about bytes already read into the pipe: they are
    delivered even to a non-blocking destination, and on any error a
    seekable source is given back those it could not deliver (its offset or
    position moves back), so :attr:`src_pos` matches :attr:`moved`.
    """

    __slots__ = ("_dst_off", "_ids", "_moved", "_src_off")

    def __init__(self, src_pos: int | None = None, dst_pos: int | None = None) -> None:
        self._ids: list[tuple[int, Any]] | None = None  # the watched fds, from the first run
        self._moved = ffi.new(_U64)
        self._src_off = ffi.NULL if src_pos is None else ffi.new(_I64, [src_pos])
        self._dst_off = ffi.NULL if dst_pos is None else ffi.new(_I64, [dst_pos])

    @property
    def moved(self) -> int:
        """Bytes delivered to the destination so far."""
        return int(self._moved[0])

    @property
    def src_pos(self) -> int | None:
        """The source's explicit offset now (None: the fd's own position was used)."""
        return None if self._src_off == ffi.NULL else int(self._src_off[0])

    @property
    def dst_pos(self) -> int | None:
        return None if self._dst_off == ffi.NULL else int(self._dst_off[0])

    def run(self, src: int, dst: int, count: int, timeout_ms: int, pool: PipePool | None, *,
            attr: str, what: str, owners: tuple[socket.socket, ...] = (),
            watch: tuple[int, ...] = (), preload: Any = b"") -> int:
        """Deliver bytes until :attr:`moved` reaches ``count`` (TO_EOF: until ``src`` ends).

        ``pool`` gives the pipe between two fds that are not pipes (None when
        one of them is a pipe).  ``owners``: socket objects of ``src`` and
        ``dst``, held for the call (see :func:`hold`).  ``watch``: the ends
        nothing holds (int fds, a file object's fd): the first run of the
        transfer takes their identity (:func:`fd_id`), and every later call,
        a resume after a signal or the next run, first checks it (``EBADF``
        when a number was closed and now names another file).  ``preload``:
        bytes delivered before anything is read from ``src`` (a Python
        buffer's): they are written into the pipe and this call delivers what
        fitted, ignoring ``count``.  Resumes after signals; raises with ``attr``.
        """
        ids = self._ids
        later = ids is not None
        if ids is None:
            ids = self._ids = [(fd, fd_id(fd)) for fd in watch]

        def alive() -> bool:
            return all(map(is_open, owners)) and all(same_fd(fd, i) for fd, i in ids)

        moved, src_off, dst_off = self._moved, self._src_off, self._dst_off
        if later and not alive():  # a step of the same transfer: nothing resumes elsewhere
            raise error(EBADF, int(moved[0]), attr, what)
        via = ffi.NULL if pool is None else pool.take()
        for owner in owners:
            hold(owner)
        try:
            if preload:
                via.buffered = os.write(via.wfd, preload)  # the pipe is empty: no wait
                count = int(moved[0]) + int(via.buffered)

            fresh = [not later]  # the first call uses the numbers whose identity it just took
            by_fd = dict(ids)
            src_id = by_fd.get(src, ffi.NULL)
            dst_id = by_fd.get(dst, ffi.NULL)

            def call() -> int:
                left = count if count == TO_EOF else count - int(moved[0])
                if fresh[0] or not ids:
                    fresh[0] = False
                    rc: int = lib.zc_splice(src, src_off, dst, dst_off, left, via, timeout_ms,
                                            moved)
                    return rc
                # later calls go to the files whose identity was taken, through checked
                # duplicates in C: a number checked and then used could change hands between
                rc = lib.zc_splice_id(src, src_off, dst, dst_off, left, via, timeout_ms, moved,
                                      src_id, dst_id)
                return rc

            run(call, lambda: int(moved[0]), attr=attr, what=what,
                alive=alive if owners or ids else None)
            return int(moved[0])
        finally:
            for owner in owners:
                release(owner)
            if pool is not None:
                pool.give(via)  # closes it when it still holds bytes


# ----------------------------------------------------------------------- relays and the proxy

PROXY_CONNECT_MS: int = lib.ZC_PROXY_CONNECT_MS
PROXY_IDLE_MS: int = lib.ZC_PROXY_IDLE_MS
PROXY_STALL_MS: int = lib.ZC_PROXY_STALL_MS
# The longest the C loop runs without returning to Python, so that signal
# handlers run promptly even while bytes flow (a busy loop never sleeps in
# epoll_wait, where a signal would interrupt it).
_SLICE_MS = 250


def _relay_add_error(rc: int) -> BaseException:
    if rc == -errno.EINVAL:  # zc_relay_add: a == b (an OSError, as it always was)
        return OSError(errno.EINVAL, "a and b must be two different sockets")
    return os_error(rc)


class Pins:
    """Checked duplicates of int fds nothing holds (:func:`fd_id` taken earlier).

    Calls given the duplicates reach the files the numbers named when their
    identity was taken, whatever another thread does with the numbers
    meanwhile (checking a number and then using it leaves a window for a
    close and an accept() that gets the number back).  C writes each
    duplicate into memory this object owns before returning, and closes them
    all in one call, so a signal handler that raises as a call returns
    cannot lose one: make it before the ``try`` whose ``finally`` closes it.
    """

    __slots__ = ("_fds", "_n")

    def __init__(self, n: int) -> None:
        self._n = n
        self._fds = ffi.new("int[]", [-1] * max(n, 1))

    def pin(self, ids: list[tuple[int, Any]]) -> dict[int, int] | None:
        """{number: its duplicate}, or None when a number names another file (or none) now.

        Without a descriptor to spare (EMFILE) a number is used itself, checked.
        """
        fds: dict[int, int] = {}
        for i, (fd, ident) in enumerate(ids):
            rc = lib.zc_fd_dup_checked(fd, ident, self._fds + i)
            if rc == 0:
                fds[fd] = int(self._fds[i])
            elif not ((rc == -errno.EMFILE or rc == -errno.ENFILE) and same_fd(fd, ident)):
                self.close()
                return None
        return fds

    def close(self) -> None:
        lib.zc_fd_close_each(self._fds, self._n)


def _relay_fds(a: int, b: int, ids: list[tuple[int, Any]], pins: Pins) -> tuple[int, int]:
    """(a, b) with each watched int fd replaced by a checked duplicate (:class:`Pins`), so
    the C loop works on the sockets the numbers named at the start; the checks between
    slices stay on the numbers."""
    if a == b:  # the duplicates would be two numbers: say it as zc_relay_add does
        raise _relay_add_error(-errno.EINVAL)
    fds = pins.pin(ids)
    if fds is None:  # a number changed hands since its id was taken
        raise error(EBADF, (0, 0), "bytes_relayed")
    return fds.get(a, a), fds.get(b, b)


def relay(a: int, b: int, pool: PipePool, idle_ms: int,
          owners: tuple[socket.socket, ...] = (), watch: tuple[int, ...] = ()) -> tuple[int, int]:
    """Relay two stream sockets both ways to the end; return (a->b, b->a) bytes.

    ``idle_ms``: the relay's idle timeout in C (WAIT_FOREVER: none).
    ``owners`` are held while it runs; closing one from another thread ends
    the relay with ``EBADF`` within a slice.  ``watch``: the int fds among
    ``a`` and ``b`` (nothing holds them): the C loop works on duplicates
    (:class:`Pins`), and the numbers' identity, taken now, is checked
    each time it returns (a slice, a signal), so a number closed and reused
    by another connection ends the relay with ``EBADF``, no byte of the new
    connection moved.  Raises with ``bytes_relayed``.
    """
    job = LoopRelay(a, b, pool, idle_ms, owners, watch)
    try:
        try:
            while not job.step(_SLICE_MS):
                pass  # a slice ended, or a signal's handler ran (it would have raised)
        except BaseException as exc:
            raise attach(exc, job.moved, "bytes_relayed") from None
        return job.result()
    finally:
        job.close()


class LoopRelay:
    """One relay in a ``struct zc_relay_loop`` of its own, driven by another event loop.

    The caller watches :meth:`fileno` (the C loop's epoll descriptor) for
    reading and calls :meth:`step` when it is readable or when
    :meth:`next_ms` has passed (``zc_relay_loop_fd``); :meth:`step` does not
    block unless given a timeout (as :func:`relay` does).  ``owners`` are
    held until :meth:`close`: a ``close()`` from elsewhere takes effect then,
    and the next step raises ``EBADF``.
    """

    __slots__ = ("_done", "_idle_ms", "_ids", "_loop", "_next", "_owners", "_pins", "_r",
                 "closed")

    def __init__(self, a: int, b: int, pool: PipePool, idle_ms: int,
                 owners: tuple[socket.socket, ...] = (), watch: tuple[int, ...] = ()) -> None:
        self._ids = [(fd, fd_id(fd)) for fd in watch]  # int fds: checked before each step
        self._pins = pins = Pins(len(self._ids))  # C works on duplicates of those
        self._owners: tuple[socket.socket, ...] = ()
        self.closed = True
        self._loop = ffi.new("struct zc_relay_loop *")
        self._r = r = ffi.new("struct zc_relay *")
        self._done = ffi.new("struct zc_relay *[1]")
        self._next = ffi.new("int[1]")
        self._idle_ms = idle_ms
        inited = False
        try:
            a, b = _relay_fds(a, b, self._ids, pins)
            rc = lib.zc_relay_loop_init(self._loop, pool.cdata)
            if rc < 0:
                raise os_error(rc)
            inited = True
            rc = lib.zc_relay_add(self._loop, r, a, b)
            if rc < 0:
                raise _relay_add_error(rc)
            if idle_ms != WAIT_FOREVER:
                rc = lib.zc_relay_set_timeout(r, idle_ms)
                if rc < 0:
                    raise os_error(rc)
        except BaseException:
            if inited:
                lib.zc_relay_remove(r)
                lib.zc_relay_loop_close(self._loop)
            pins.close()
            raise
        self.closed = False
        self._owners = owners
        for owner in owners:
            hold(owner)

    def fileno(self) -> int:
        return int(lib.zc_relay_loop_fd(self._loop, ffi.NULL))

    def next_ms(self) -> int:
        """When :meth:`step` is due without an event: 0 now, -1 not, else milliseconds."""
        lib.zc_relay_loop_fd(self._loop, self._next)
        return int(self._next[0])

    @property
    def moved(self) -> tuple[int, int]:
        return int(self._r.bytes[0]), int(self._r.bytes[1])

    def step(self, timeout_ms: int = 0) -> bool:
        """Move what can move now (waiting up to ``timeout_ms`` for it); True once the
        relay ended (then :meth:`result`)."""
        if not (all(map(is_open, self._owners))
                and all(same_fd(fd, i) for fd, i in self._ids)):
            raise error(EBADF, self.moved, "bytes_relayed")
        rc = lib.zc_relay_run(self._loop, timeout_ms, self._done, 1)
        if rc < 0 and rc != EINTR:  # after -EINTR a handler ran: the caller steps again
            raise error(rc, self.moved, "bytes_relayed")
        return bool(self._r.done)

    def result(self) -> tuple[int, int]:
        """The counts of an ended relay, or its error raised (with ``bytes_relayed``)."""
        r, moved = self._r, self.moved
        if r.error == ETIMEDOUT:
            timed_out = _errors.typed_class(TimeoutError, "bytes_relayed")(
                errno.ETIMEDOUT,
                f"relay timed out: no byte moved for {self._idle_ms / 1000:g} s")
            setattr(timed_out, "bytes_relayed", moved)  # noqa: B010
            raise timed_out
        if r.error:
            raise error(r.error, moved, "bytes_relayed")
        return moved

    def close(self) -> None:
        """Stop (bytes in flight in the pipes are dropped), restore the sockets' flags."""
        if self.closed:
            return
        self.closed = True
        lib.zc_relay_remove(self._r)  # a no-op once it ended
        lib.zc_relay_loop_close(self._loop)
        self._pins.close()
        for owner in self._owners:
            release(owner)


class ProxyLoop:
    """Owner of a ``struct zc_relay_loop`` running one ``struct zc_proxy`` and its slots.

    Accepting, connecting, relaying, the timeouts and the answer to clients
    beyond the slots all happen in C; the caller (``Proxy``) keeps the
    threads, the locks and the signal handling.
    """

    __slots__ = ("_done", "_loop", "_px", "_slots", "_target", "closed")

    def __init__(self, pool: PipePool, listen_fd: int, target: bytes, slots: int,
                 timeouts_ms: tuple[int, int, int]) -> None:
        self._loop = ffi.new("struct zc_relay_loop *")
        rc = lib.zc_relay_loop_init(self._loop, pool.cdata)
        if rc < 0:
            raise os_error(rc)
        self.closed = False
        self._slots = ffi.new("struct zc_relay[]", slots)
        self._px = ffi.new("struct zc_proxy *")
        self._target = ffi.new("char[]", target)
        rc = lib.zc_proxy_init(self._px, self._loop, listen_fd,
                               ffi.cast("struct sockaddr *", self._target), len(target),
                               self._slots, slots)
        if rc == -errno.EINVAL:
            # zc_proxy_init: the caller checked the target and the slots, so the
            # listener is what is wrong (no longer listening, or not a stream socket)
            self.close()
            raise ValueError("listen must be a listening SOCK_STREAM socket")
        if rc == 0:
            rc = lib.zc_proxy_set_timeouts(self._px, *timeouts_ms)
            if rc == -errno.EINVAL:
                self.close()
                raise ValueError("connect, idle and stall timeouts must be > 0 ms or "
                                 f"{WAIT_FOREVER} (none), got {timeouts_ms}")
        if rc < 0:
            self.close()
            raise os_error(rc)
        self._done = ffi.new("struct zc_relay *[1]")

    def stats(self) -> tuple[int, int, int, int, int, int, int, int]:
        """(accepted, active, completed, failed, bytes up, bytes down, refused, timed out);
        the byte counts include running connections."""
        px, loop = self._px, self._loop
        return (int(px.accepted), int(px.active), int(px.completed), int(px.failed),
                int(loop.bytes[0]), int(loop.bytes[1]), int(px.refused), int(px.timed_out))

    def run(self, timeout_ms: int) -> None:
        """Serve for up to ``timeout_ms`` (less after a wake-up or a signal)."""
        rc = lib.zc_relay_run(self._loop, timeout_ms, self._done, 1)
        if rc < 0 and rc != EINTR:
            raise os_error(rc)

    def wake(self) -> None:
        """Make :meth:`run` in another thread return soon; async-signal-safe in C."""
        lib.zc_relay_wake(self._loop)

    def close(self) -> None:
        """Reset the running connections and free the loop; idempotent."""
        if not self.closed:
            self.closed = True
            lib.zc_relay_loop_close(self._loop)
