# SPDX-License-Identifier: MIT
"""asyncio adapters: kernel ``sendfile`` on any event loop, uvloop included.

- :func:`sendfile`: headers + a file range + trailers to a StreamWriter, a
  transport or a non-blocking socket (TLS through the TLS layer);
- :func:`recvfile`: a socket or a StreamReader into a file with splice;
- :func:`relay`: two sockets both ways, the C relay loop driven by this loop;
- :class:`Socket`: ``MSG_ZEROCOPY`` sends with awaitable ``sendall``, ``flush``
  and handles, completions reaped when the error queue has them.

The rule (DESIGN.md, "Async adapters"): the event loop waits, the C core
sends.  :func:`sendfile` steps a :class:`zerocopy.FileSender` on the
socket's fd with the C loop in non-blocking mode (it sends until the kernel
would block and never waits) and, between steps, waits for writability
through the running loop.

A transport keeps its socket.  To send past it without breaking its stream:

- the transport's own buffer goes out first: when it holds bytes, its write
  buffer limits are lowered to 0 and ``resume_writing`` says when it is
  empty (the transport's public flow control; the original limits come back);
- while the transfer has to wait, the transport's protocol is swapped for a
  stand-in (``transport.set_protocol``, as ``loop.sendfile``'s own fallback
  does) and reading is paused: the protocol gets no ``data_received`` in the
  middle of a response, and ``connection_lost`` wakes the transfer.  What
  arrives meanwhile is handed to the protocol when it gets its transport
  back, in order;
- the wait is ``loop.add_writer`` on a duplicate of the fd: loops refuse an
  fd that a transport owns (asyncio and uvloop alike), never a second
  descriptor of the same socket.  Only uvloop's and asyncio's public loop
  API is used, so the same code runs on both.

The socket is given back clean on success, error and cancellation: cork
undone, protocol, reading and buffer limits restored, the duplicate closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, Union

from . import _errors
from . import _lowlevel as _c
from ._async import Chunks, Progress, dup
from .sender import FileSender

Target = Union[asyncio.StreamWriter, asyncio.Transport, socket.socket]

__all__ = ["Progress", "SendHandle", "Socket", "recvfile", "relay", "sendfile"]


async def sendfile(
    target: Target,
    file: Any,
    offset: int | None = None,
    count: int | None = None,
    *,
    headers: Any = b"",
    trailers: Any = b"",
    progress: Progress | None = None,
) -> int:
    """Send ``headers``, ``count`` bytes of ``file`` from ``offset``, then ``trailers``.

    ``target`` is an ``asyncio.StreamWriter``, an ``asyncio.Transport`` (a
    protocol's own, on the default loop or uvloop), or a non-blocking
    ``socket.socket``.  ``file``, ``offset`` and ``count`` are those of
    :func:`zerocopy.sendfile_all` (``count=None``: to the end of the file;
    ``offset=None``: from the file's position).  Returns the bytes sent,
    headers and trailers included.

    Bytes already written to the transport go out first, in order.  The
    call waits through the running loop and never blocks it on the network.

    Positions: a file object's position ends at start + file bytes sent, on
    success and on every exception.  Exceptions carry ``bytes_sent`` (bytes
    of the whole response sent): ``OSError`` subclasses are also
    :class:`zerocopy.TransferError`, and a cancellation's
    ``asyncio.CancelledError`` has the attribute too (as raised in the
    cancelled task; before Python 3.11 a task awaiting that task gets a
    fresh ``CancelledError``: pass ``progress`` to learn the count there).  A file shorter than
    ``count`` raises :class:`zerocopy.TruncatedFileError`.  After an error
    or a cancellation part of the response is on the wire: the transport is
    usable (its protocol and reading are restored) but the stream is
    mid-response, so a protocol like HTTP should close it.

    TLS: a transport with an ``ssl_object`` (asyncio's and uvloop's TLS,
    made in user space with memory BIOs) and an ``ssl.SSLSocket`` never get
    plaintext: the file is read in chunks and written through the TLS layer,
    as ``loop.sendfile`` does.  An ``ssl.SSLSocket`` whose fd has kernel TLS
    gets the zero-copy route.  ``bytes_sent`` then counts the bytes the TLS
    layer accepted.

    ``progress`` (a :class:`Progress`) is kept up to date as bytes go out.

    While the call runs, nothing else may write to the target (as for
    ``loop.sendfile``): a ``write``, ``writelines`` or ``write_eof`` from
    another task raises ``RuntimeError`` (as ``loop.sendfile`` makes it)
    on the ``StreamWriter`` given and on the default loop's transports;
    uvloop's transports cannot refuse it, and such a write would land in the
    middle of the file.  A second ``sendfile`` on the same transport raises
    ``RuntimeError`` on both loops.
    """
    if isinstance(target, asyncio.StreamWriter):
        with _refusing_writes(target):
            return await _send_transport(target.transport,  # type: ignore[arg-type]
                                         file, offset, count, headers, trailers, progress)
    if isinstance(target, socket.socket):
        return await _send_socket(target, file, offset, count, headers, trailers, progress)
    if isinstance(target, asyncio.BaseTransport) or _is_transport(target):
        # uvloop's transports implement the interface without subclassing it
        return await _send_transport(target, file, offset, count,
                                     headers, trailers, progress)
    raise TypeError(
        "target must be an asyncio.StreamWriter, an asyncio.Transport or a socket.socket, "
        f"not {type(target).__name__}"
    )


# --------------------------------------------------------------------------- transports

_TRANSPORT_METHODS = ("get_extra_info", "get_protocol", "set_protocol", "is_closing", "write",
                      "pause_reading", "resume_reading", "get_write_buffer_size")


def _is_transport(obj: object) -> bool:
    return all(callable(getattr(obj, name, None)) for name in _TRANSPORT_METHODS)



def _socket_fd(transport: asyncio.BaseTransport) -> int | None:
    """The fd to send to directly, or None when bytes must go through the transport."""
    if transport.get_extra_info("ssl_object") is not None:
        return None  # TLS records are made in user space: never write past them
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        if sock.type != socket.SOCK_STREAM:
            return None
        fd = sock.fileno()
    except (AttributeError, OSError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


_WRITES = ("write", "writelines", "write_eof")


def _refuse_write(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("unable to write; sendfile is in progress")  # loop.sendfile's words


@contextlib.contextmanager
def _refusing_writes(obj: Any) -> Iterator[None]:
    """Make ``obj``'s writes raise while the transfer owns the socket, where its class
    lets an instance override them (not uvloop's extension types)."""
    done: list[str] = []
    try:
        for name in _WRITES:
            if name in vars(obj):
                break  # overridden already (a nested guard): leave it alone
            try:
                setattr(obj, name, _refuse_write)
            except (AttributeError, TypeError):
                break
            done.append(name)
    except TypeError:  # no __dict__
        pass
    try:
        yield
    finally:
        for name in done:
            vars(obj).pop(name, None)


def _check_open(transport: asyncio.BaseTransport, sent: int) -> None:
    if transport.is_closing():
        raise _c.attach(ConnectionResetError(
            errno.ECONNRESET, "the transport was closed during the transfer"), sent)


async def _send_transport(transport: asyncio.Transport, file: Any, offset: int | None,
                          count: int | None, headers: Any, trailers: Any,
                          progress: Progress | None) -> int:
    if transport.is_closing():
        raise ConnectionResetError(errno.ECONNRESET, "the transport is closed")
    lessee = transport.get_protocol()
    if isinstance(lessee, _Lease) and lessee.sending:
        # another sendfile owns the socket (it writes past the transport, where
        # no guard on write() sees it): ours would land in the middle of its file
        _refuse_write()
    fd = _socket_fd(transport)
    if fd is None:
        return await _send_through(transport, Chunks(file, offset, count, headers, trailers),
                                   progress)
    sender = FileSender(fd, file, offset, count, headers=headers, trailers=trailers)
    lease: _Lease | None = None
    pump: _Pump | None = None
    try:
        if transport.get_write_buffer_size() == 0:
            # Nothing queued ahead of us, and no await until the step
            # returns: no callback can run in between (the fast path; a
            # response that fits in the socket buffer needs no more).
            sender.send()
            if sender.done:
                return sender.sent
        if progress is not None:
            progress.bytes_sent = sender.sent
        loop = asyncio.get_running_loop()
        lease = _Lease(transport, loop)
        lease.sending = True
        await lease.flush()
        lease.refuse_writes()
        pump = _Pump(loop, fd, transport, sender, progress)
        if pump.step():
            return sender.sent
        await pump.run(lease)
        return sender.sent
    except BaseException as exc:
        raise _c.attach(exc, sender.sent) from None
    finally:
        try:
            sender.close()
        finally:
            if pump is not None:
                pump.close()
            if lease is not None:
                lease.restore()


async def _send_through(transport: asyncio.Transport, body: Chunks,
                        progress: Progress | None) -> int:
    """Write the response through the transport (its TLS layer), with its flow control."""
    # No flush first: what the transport holds goes out ahead of these
    # bytes anyway (and a TLS layer may hold records, such as session
    # tickets, that only a write or a read pushes out).
    loop = asyncio.get_running_loop()
    lease = _Lease(transport, loop)
    lease.sending = True
    try:
        lease.set_limits(2 * _CHUNK_TLS, _CHUNK_TLS // 2)
        while True:
            _check_open(transport, body.sent)
            chunk = body.next(_CHUNK_TLS)
            if not chunk:
                return body.sent
            transport.write(chunk)
            body.advance(len(chunk))
            if progress is not None:
                progress.bytes_sent = body.sent
            await lease.writable()
    except BaseException as exc:
        raise _c.attach(exc, body.sent) from None
    finally:
        try:
            body.close()
        finally:
            lease.restore()


_CHUNK_TLS = 64 * 1024


class _Pump:
    """Steps a FileSender from the loop's writer callback until it is done.

    The callback sends (one C call) each time the socket is writable, so a
    response that needs many waits costs no task switch per wait; only the
    end (done, an error, the connection lost) wakes the awaiting task.  The
    callback is registered on a duplicate of the transport's fd: loops
    refuse ``add_writer`` on an fd that a transport owns.
    """

    __slots__ = ("_dup", "_fd", "_fut", "_loop", "_progress", "_sender", "_transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, transport: asyncio.Transport,
                 sender: FileSender, progress: Progress | None) -> None:
        self._loop = loop
        self._fd = fd
        self._dup = -1
        self._transport = transport
        self._sender = sender
        self._progress = progress
        self._fut: asyncio.Future[None] | None = None

    def step(self) -> bool:
        """One send; True when the response is complete."""
        _check_open(self._transport, self._sender.sent)
        self._sender.send()
        if self._progress is not None:
            self._progress.bytes_sent = self._sender.sent
        return self._sender.done

    def _writable(self) -> None:
        fut = self._fut
        if fut is None or fut.done():
            return
        try:
            if self.step():
                fut.set_result(None)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)

    async def run(self, lease: _Lease) -> None:
        self._dup = dup(self._fd)
        self._loop.add_writer(self._dup, self._writable)
        try:
            while not self._sender.done:
                lease._check()
                self._fut = fut = self._loop.create_future()
                lease.waiter = fut  # connection_lost ends the wait (and flow calls wake it)
                try:
                    await fut
                finally:
                    lease.waiter = None
                    self._fut = None
        finally:
            self._loop.remove_writer(self._dup)

    def close(self) -> None:
        fd, self._dup = self._dup, -1
        if fd >= 0:
            os.close(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Lease(asyncio.Protocol):
    """Stands in for a transport's protocol while a transfer owns its socket.

    Reading is paused; data and EOF that come anyway are kept and handed to
    the protocol when it is restored.  ``connection_lost`` goes to it at
    once (after what was kept) and ends the transfer.  Flow-control calls
    are tracked so that the protocol's idea of "paused" matches the
    transport's after :meth:`restore`.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.proto = transport.get_protocol()
        self.sending = False  # a sendfile's: another one on the transport is refused
        self.waiter: asyncio.Future[None] | None = None
        self.lost: tuple[Exception | None] | None = None
        self._kept: list[bytes] = []
        self._eof = False
        self._first_flow: str | None = None
        self._paused = False  # as far as this stand-in knows
        self._limits: tuple[int, int] | None = None
        self._high = 0
        self._restored = False
        self._unguard: contextlib.ExitStack | None = None
        self._resume_reading = transport.is_reading()
        if self._resume_reading:
            transport.pause_reading()
        transport.set_protocol(self)

    # -- what the transport calls -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise RuntimeError("Invalid state: the connection is already made")

    def data_received(self, data: bytes) -> None:
        self._kept.append(bytes(data))

    def eof_received(self) -> bool:
        self._eof = True
        return True  # keep the transport open; the protocol decides at restore()

    def pause_writing(self) -> None:
        if self._first_flow is None:
            self._first_flow = "pause"
        self._paused = True

    def resume_writing(self) -> None:
        if self._first_flow is None:
            self._first_flow = "resume"  # the protocol was paused before the lease
        self._paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)
        self._wake(exc)
        self.restore()

    def _wake(self, exc: BaseException | None) -> None:
        fut = self.waiter
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

    # -- what the transfer calls --------------------------------------------

    def set_limits(self, high: int, low: int) -> None:
        """Set the transport's write buffer limits until :meth:`restore`."""
        if self._limits is None:
            try:
                self._limits = self.transport.get_write_buffer_limits()
            except NotImplementedError:  # a transport without the getter (3.9's TLS)
                self._limits = (-1, -1)
        self._high = high
        self.transport.set_write_buffer_limits(high=high, low=low)

    async def flush(self) -> None:
        """Wait until the transport's own buffer is empty."""
        transport = self.transport
        if transport.get_write_buffer_size() == 0:
            return
        self.set_limits(0, 0)
        await self._wait_while(lambda: transport.get_write_buffer_size() > 0)

    async def writable(self) -> None:
        """Wait while the transport's buffer is above the high-water mark :meth:`set_limits` set."""
        transport, high = self.transport, self._high
        # Before any flow-control call, a buffer above the mark means the
        # transport was paused before the lease: resume_writing will come.
        await self._wait_while(lambda: self._paused or (
            self._first_flow is None and transport.get_write_buffer_size() > high))

    async def _wait_while(self, blocked: Callable[[], bool]) -> None:
        """Wake on each flow-control or connection event until ``blocked()`` is false."""
        while blocked():
            self._check()
            self.waiter = self.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self._check()

    def refuse_writes(self) -> None:
        """Writes to the transport raise RuntimeError until :meth:`restore`."""
        if self._unguard is None:
            self._unguard = contextlib.ExitStack()
            self._unguard.enter_context(_refusing_writes(self.transport))

    def _check(self) -> None:
        if self.lost is not None:
            exc = self.lost[0]
            raise exc if exc is not None else ConnectionResetError(
                errno.ECONNRESET, "the connection was closed during the transfer")

    def restore(self) -> None:
        """Give the protocol its transport back (idempotent)."""
        if self._restored:
            return
        self._restored = True
        if self._unguard is not None:
            self._unguard.close()
        transport, proto = self.transport, self.proto
        if transport.get_protocol() is self:
            transport.set_protocol(proto)
        if self._first_flow == "resume" and not self._paused:
            proto.resume_writing()
        elif self._first_flow == "pause" and self._paused:
            proto.pause_writing()
        for data in self._kept:
            _deliver(proto, data)
        self._kept.clear()
        if self._eof:
            keep_open = proto.eof_received()  # type: ignore[attr-defined]
            if not keep_open and self.lost is None:
                transport.close()
        if self.lost is not None:
            proto.connection_lost(self.lost[0])
            return
        if transport.is_closing():
            return
        if self._limits is not None:
            low, high = self._limits
            if high < 0:
                transport.set_write_buffer_limits()
            else:
                transport.set_write_buffer_limits(high=high, low=low)
        if self._resume_reading:
            transport.resume_reading()


def _deliver(proto: Any, data: bytes) -> None:
    """``data`` to a protocol, plain or buffered."""
    if isinstance(proto, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(proto.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]
    else:
        proto.data_received(data)


# --------------------------------------------------------------------------- sockets


async def _send_socket(sock: socket.socket, file: Any, offset: int | None, count: int | None,
                       headers: Any, trailers: Any, progress: Progress | None) -> int:
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")
    loop = asyncio.get_running_loop()
    sender = FileSender(sock, file, offset, count, headers=headers, trailers=trailers)
    ssl_mod = sys.modules.get("ssl")
    want_read: type[BaseException] | None = (
        ssl_mod.SSLWantReadError if ssl_mod is not None else None
    )
    try:
        while True:
            try:
                sender.send()
            except BaseException as exc:
                if want_read is None or not isinstance(exc, want_read):
                    raise
                await _wait_fd(loop, sock, reading=True)  # TLS wants the peer's bytes first
                continue
            if progress is not None:
                progress.bytes_sent = sender.sent
            if sender.done:
                return sender.sent
            await _wait_fd(loop, sock, reading=False)
    except BaseException as exc:
        raise _c.attach(exc, sender.sent) from None
    finally:
        sender.close()


async def _wait_fd(loop: asyncio.AbstractEventLoop, sock: socket.socket, reading: bool) -> None:
    fd = sock.fileno()
    if fd < 0:
        raise OSError(errno.EBADF, "the socket was closed during the transfer")
    fut = loop.create_future()
    if reading:
        loop.add_reader(fd, _wake, fut)
    else:
        loop.add_writer(fd, _wake, fut)
    try:
        await fut
    finally:
        # as asyncio's sock_sendall does: closing a socket while a task
        # waits on it is the caller's error
        if reading:
            loop.remove_reader(fd)
        else:
            loop.remove_writer(fd)
    if not _c.is_open(sock):
        raise OSError(errno.EBADF, "the socket was closed during the transfer")


# --------------------------------------------------------------------------- MSG_ZEROCOPY


_SLICE = 0.1  # seconds: a wait for completions re-checks at least this often


class _ErrorQueue:
    """Wakes waiters when a socket's error queue gets something (MSG_ZEROCOPY completions).

    The loop's reader callback is on a private epoll instance that watches
    the socket for ``EPOLLERR`` only, edge-triggered: an event loop's own
    reader on the socket would also fire for every byte the peer sends.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        import select

        self._loop = loop
        self._ep = select.epoll()
        self._waiters: list[asyncio.Future[None]] = []
        try:
            self._ep.register(fd, select.EPOLLERR | select.EPOLLET)
            loop.add_reader(self._ep.fileno(), self._ready)
        except BaseException:
            self._ep.close()
            raise

    def _ready(self) -> None:
        try:
            self._ep.poll(0)  # take the edge off
        except OSError:
            pass
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self) -> None:
        """Until the error queue has something, or one slice passed."""
        fut = self._loop.create_future()
        self._waiters.append(fut)
        timer = self._loop.call_later(_SLICE, self._wake)
        try:
            await fut
        finally:
            timer.cancel()

    def close(self) -> None:
        if not self._ep.closed:
            self._loop.remove_reader(self._ep.fileno())
            self._ep.close()
        self._wake()


class SendHandle:
    """Says when every part of a buffer given to :meth:`Socket.sendall` is free again."""

    __slots__ = ("_owner", "_parts")

    def __init__(self, owner: Socket, parts: list[Any]) -> None:
        self._owner = owner
        self._parts = parts

    def done(self) -> bool:
        """True when the kernel no longer reads the buffer (reaps first, never waits)."""
        return all(part.done() for part in self._parts)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (through the loop) until :meth:`done`; False when ``timeout`` passed first."""
        return await self._owner._wait_until(self.done, timeout)


class Socket:
    """:class:`zerocopy.Socket` on the running event loop: awaitable ``sendall`` and ``flush``.

    ``sock`` is a connected, non-blocking stream socket that no transport
    owns (from ``loop.sock_accept`` or ``loop.sock_connect``); the keyword
    arguments are :class:`zerocopy.Socket`'s.  ``sendall`` waits for room
    with the loop's writer callback; completions are reaped when the
    socket's error queue gets them, through a reader callback on a private
    epoll instance that watches only the error queue (with a re-check every
    100 ms as a backstop).  Nothing blocks the loop.

    A TLS socket without kernel TLS is refused: its bytes must go through
    the TLS layer, use a transport (``asyncio.open_connection(ssl=...)``).
    Not for use from several threads; several tasks may share it (their
    ``sendall`` calls do not interleave).
    """

    def __init__(self, sock: socket.socket, **options: Any) -> None:
        from .msg_zerocopy import Socket as _ZSocket

        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
        if sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        ssl_mod = sys.modules.get("ssl")
        if ssl_mod is not None and isinstance(sock, ssl_mod.SSLSocket) and \
                not _c.tls_tx_offloaded(sock.fileno()):
            raise ValueError("a TLS socket without kernel TLS: send through a transport")
        self._zs = _ZSocket(sock, **options)
        self._queue: _ErrorQueue | None = None
        self._send_lock = asyncio.Lock()

    @property
    def zsocket(self) -> Any:
        """The :class:`zerocopy.Socket` underneath (stats, ``zerocopy_active``, ...)."""
        return self._zs

    @property
    def pending(self) -> int:
        """Buffers still on loan to the kernel."""
        return int(self._zs.pending)

    def fileno(self) -> int:
        return int(self._zs.fileno())

    async def sendall(self, data: Any) -> SendHandle:
        """Send all of ``data``, waiting for room through the loop; a handle for its buffer.

        Do not change or free ``data`` until the handle says it is done
        (``await handle.wait()``).  Exceptions carry ``bytes_sent``.
        """
        async with self._send_lock:
            view = data if type(data) is bytes else memoryview(data).cast("B")
            total = len(view)
            parts: list[Any] = []
            sent = 0
            loop = asyncio.get_running_loop()
            try:
                while True:
                    try:
                        parts.append(self._zs.sendall(view[sent:] if sent else data))
                        sent = total
                        break
                    except BlockingIOError as exc:
                        sent += exc.characters_written
                        handle = getattr(exc, "handle", None)
                        if handle is not None:
                            parts.append(handle)
                    await _wait_fd(loop, self._zs.socket, reading=False)
            except BaseException as exc:
                raise _c.attach(exc, sent) from None
            return SendHandle(self, parts)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until no buffer is on loan; False when ``timeout`` seconds passed first."""
        return await self._wait_until(lambda: self._zs.pending == 0, timeout)

    async def _wait_until(self, ready: Any, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._zs.reap()
            if ready():
                return True
            if deadline is not None and loop.time() >= deadline:
                return False
            if self._queue is None:
                self._queue = _ErrorQueue(loop, self._zs.fileno())
            await self._queue.wait()

    async def aclose(self, timeout: float | None = 1.0) -> None:
        """Wait up to ``timeout`` seconds for the buffers on loan, then close
        (see :meth:`zerocopy.Socket.close`: a stalled peer's connection is reset)."""
        try:
            if self._zs.pending:
                await self.flush(timeout)
        finally:
            self.close(0)

    def close(self, timeout: float | None = 1.0) -> None:
        """``zerocopy.Socket.close(timeout)``: it blocks while buffers are on loan (up to
        ``timeout``, then a stalled peer's connection is reset); prefer :meth:`aclose`,
        which waits on the loop."""
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()
        self._zs.close(timeout)


# --------------------------------------------------------------------------- recvfile


async def recvfile(
    source: asyncio.StreamReader | socket.socket,
    file: Any,
    count: int | None = None,
    offset: int | None = None,
) -> int:
    """Receive from ``source`` into ``file`` with splice(2); return the bytes received.

    ``source`` is a non-blocking ``socket.socket`` or an
    ``asyncio.StreamReader`` (bytes it holds already are written first, then
    its transport's socket is read directly, with the transport's reading
    paused and its protocol stood in for, as :func:`sendfile` does).
    ``file``, ``count`` and ``offset`` are those of :func:`zerocopy.recvfile`:
    ``count=None`` receives until the peer's EOF, an explicit ``count`` the
    peer does not deliver raises :class:`zerocopy.TruncatedFileError`;
    exceptions (a cancellation's ``CancelledError`` too) carry
    ``bytes_received``, and a file object's position ends at start + bytes
    received.  A TLS stream is read through its TLS layer (``reader.read``).
    """
    from .splice import recvfile as _recvfile

    if count is not None and (not isinstance(count, int) or count < 0):
        raise ValueError(f"count must be an integer >= 0 or None, got {count!r}")
    if isinstance(source, asyncio.StreamReader):
        return await _recv_stream(source, file, count, offset, _recvfile)
    if not isinstance(source, socket.socket):
        raise TypeError("source must be an asyncio.StreamReader or a socket.socket, "
                        f"not {type(source).__name__}")
    if source.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")
    loop = asyncio.get_running_loop()

    async def readable() -> None:
        await _wait_fd(loop, source, reading=True)

    return await _recv_loop(source, file, count, offset, 0, readable, _recvfile)


async def _recv_loop(sock: Any, file: Any, count: int | None, offset: int | None, got: int,
                     readable: Any, recv: Any) -> int:
    """zerocopy.recvfile steps (the kernel's pipe is empty after each EAGAIN: nothing is lost)."""
    try:
        while True:
            left = None if count is None else count - got
            at = None if offset is None else offset + got
            try:
                got += recv(sock, file, left, at)
                return got
            except BlockingIOError as exc:
                got += getattr(exc, "bytes_received", 0)
            except OSError as exc:
                done = got + getattr(exc, "bytes_received", 0)
                if isinstance(exc, _errors.TruncatedFileError):
                    raise _c.error(_c.ENODATA, done, "bytes_received", "the stream") from None
                exc.bytes_received = done  # type: ignore[attr-defined]
                raise
            await readable()
    except BaseException as exc:
        raise _c.attach(exc, got, "bytes_received") from None


async def _recv_stream(reader: asyncio.StreamReader, file: Any, count: int | None,
                       offset: int | None, recv: Any) -> int:
    transport = getattr(reader, "_transport", None)
    buffer = getattr(reader, "_buffer", None)
    if transport is None or not isinstance(buffer, bytearray):
        raise TypeError("this StreamReader has no transport (or asyncio changed its internals)")
    got = 0
    lease = _Lease(transport, asyncio.get_running_loop())
    dup_fd = -1
    try:
        # what the reader holds already goes first, through Python
        take = len(buffer) if count is None else min(len(buffer), count)
        if take:
            head = bytes(buffer[:take])
            del buffer[:take]
            got = _write_head(file, offset, head)
        if count is not None and got == count:
            return got
        fd = _socket_fd(transport)
        if fd is None or reader.at_eof() or getattr(reader, "_eof", False):
            return await _recv_through_reader(reader, file, count, offset, got, lease)
        loop = lease.loop
        dup_fd = dup(fd)

        async def readable() -> None:
            lease._check()
            fut = loop.create_future()
            lease.waiter = fut
            loop.add_reader(dup_fd, _wake, fut)
            try:
                await fut
            finally:
                lease.waiter = None
                loop.remove_reader(dup_fd)
            _check_open(transport, got)

        return await _recv_loop(fd, file, count, offset, got, readable, recv)
    except BaseException as exc:
        raise _c.attach(exc, got, "bytes_received") from None
    finally:
        if dup_fd >= 0:
            os.close(dup_fd)
        lease.restore()


def _write_head(file: Any, offset: int | None, data: bytes) -> int:
    if isinstance(file, int):
        if offset is None:
            return os.write(file, data)
        return os.pwrite(file, data, offset)
    if offset is not None:
        file.seek(offset)
    file.write(data)
    file.flush()
    return len(data)


async def _recv_through_reader(reader: asyncio.StreamReader, file: Any, count: int | None,
                               offset: int | None, got: int, lease: _Lease) -> int:
    """Through the reader (TLS, or the reader saw EOF): the lease gives the protocol back first."""
    lease.restore()
    at = None if offset is None else offset + got
    while count is None or got < count:
        want = _CHUNK_TLS if count is None else min(_CHUNK_TLS, count - got)
        data = await reader.read(want)
        if not data:
            if count is None:
                return got
            raise _c.error(_c.ENODATA, got, "bytes_received", "the stream")
        n = _write_head(file, at, data)
        got += n
        at = None if at is None else at + n
    return got


# --------------------------------------------------------------------------- relay


_RELAY_CHECK = 0.25  # seconds: how soon a relay notices its socket was closed elsewhere


async def relay(a: socket.socket | int, b: socket.socket | int, *,
                timeout: float | None = None) -> tuple[int, int]:
    """:func:`zerocopy.relay` on the running loop: both ways through pipes until both end.

    Returns ``(bytes a->b, bytes b->a)``; a half-close is passed on, a reset
    or other error on either socket ends both (they are reset) and is raised
    with ``bytes_relayed``, ``timeout`` bounds a stretch with no byte moved
    (``TimeoutError``), as for :func:`zerocopy.relay`.  ``a`` and ``b`` are
    connected stream sockets (objects or fds) that no transport owns.

    The C relay loop moves the bytes; its epoll descriptor is watched by the
    event loop's reader callback, and each readiness runs one non-blocking
    pass (``zc_relay_loop_fd``, ``zc_relay_run`` with timeout 0), so nothing
    blocks the loop and no thread is used.  Cancelling the task stops the
    relay (bytes in flight in its pipes are dropped) and raises the
    ``CancelledError`` with ``bytes_relayed``; the sockets stay open, with
    their flags restored: close them.
    """
    from ._args import stream_socket_fd, timeout_ms
    from ._lowlevel import WAIT_FOREVER, default_pool

    ssl_mod = sys.modules.get("ssl")
    for name, sock in (("a", a), ("b", b)):
        if isinstance(sock, bool):
            raise TypeError(f"{name} must be a socket.socket or an int file descriptor, not bool")
        if ssl_mod is not None and isinstance(sock, ssl_mod.SSLSocket):
            raise ValueError(f"{name} is an ssl.SSLSocket: a relay moves raw bytes, which on a "
                             "TLS socket are its records; relay the plain sockets")
    fa = stream_socket_fd(a, "a")
    fb = stream_socket_fd(b, "b")
    idle_ms = WAIT_FOREVER if timeout is None or timeout == float("inf") else max(
        1, timeout_ms(timeout))
    owners = tuple(s for s in (a, b) if isinstance(s, socket.socket))
    watch = tuple(fd for s, fd in ((a, fa), (b, fb)) if not isinstance(s, socket.socket))
    loop = asyncio.get_running_loop()
    step = _c.LoopRelay(fa, fb, default_pool(), idle_ms, owners, watch)
    # a close elsewhere is noticed by a step: of a socket object (its close() is
    # deferred), or of an int fd's number (the C loop holds a duplicate of it)
    checked = bool(owners or watch)
    fut: asyncio.Future[None] = loop.create_future()
    timer: list[asyncio.Handle | None] = [None]

    def pump() -> None:
        handle, timer[0] = timer[0], None
        if handle is not None:
            handle.cancel()
        if fut.done():
            return
        try:
            if step.step():
                fut.set_result(None)
                return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        due = step.next_ms()
        if due == 0:
            timer[0] = loop.call_soon(pump)
        elif due > 0 or checked:
            wait = due / 1000 if due > 0 else _RELAY_CHECK
            timer[0] = loop.call_later(min(wait, _RELAY_CHECK) if checked else wait, pump)

    fd = step.fileno()
    try:
        loop.add_reader(fd, pump)
        try:
            pump()
            await fut
            return step.result()
        finally:
            loop.remove_reader(fd)
    except BaseException as exc:
        raise _c.attach(exc, step.moved, "bytes_relayed") from None
    finally:
        handle = timer[0]
        if handle is not None:
            handle.cancel()
        step.close()
