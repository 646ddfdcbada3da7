# SPDX-License-Identifier: MIT
"""The exceptions that say how far a transfer got.

Every ``OSError`` raised once a transfer started is an instance of one of the
three progress classes below *and* of the standard library class a caller
expects (``BrokenPipeError``, ``TimeoutError``, ``BlockingIOError`` ...): the
boundary module builds it as a small subclass of both, so ::

    except zerocopy.TransferError as exc:   # typed: exc.bytes_sent is an int
    except BrokenPipeError as exc:          # still works

Exceptions that are not ``OSError`` (a ``KeyboardInterrupt`` raised by a
signal handler during the transfer) keep their type and get the same
attribute set on them; read it with ``getattr(exc, "bytes_sent", None)``.
"""
from __future__ import annotations

import errno
import os
from typing import Any, ClassVar, Union

# Bytes moved so far: a count, or one count per direction (``relay``).
Progress = Union[int, tuple[int, int]]


class TransferError(OSError):
    """An ``OSError`` from a send that started: ``bytes_sent`` bytes went out before it."""

    bytes_sent: int
    progress_attr: ClassVar[str] = "bytes_sent"

    def __reduce__(self) -> Any:
        # The per-errno subclasses are made at run time: rebuild one from its
        # base.  OSError's own reduce gives the full arguments (with a
        # filename) and the attributes (bytes_sent, and bytes_received with
        # it); a BlockingIOError's characters_written is added to those.
        reduced: tuple[Any, ...] = OSError.__reduce__(self)  # type: ignore[assignment]
        state = dict(reduced[2]) if len(reduced) > 2 and reduced[2] else {}
        if isinstance(self, BlockingIOError):  # a subclass keeps it out of args
            try:
                state["characters_written"] = self.characters_written
            except AttributeError:
                pass
        return _rebuild, (_base_of(type(self)), type(self).progress_attr, reduced[1]), state


class ReceiveError(OSError):
    """An ``OSError`` from a receive that started: ``bytes_received`` bytes were written."""

    bytes_received: int
    progress_attr: ClassVar[str] = "bytes_received"

    __reduce__ = TransferError.__reduce__


class RelayError(OSError):
    """An ``OSError`` that ended a relay: ``bytes_relayed`` = (a->b, b->a) bytes moved."""

    bytes_relayed: tuple[int, int]
    progress_attr: ClassVar[str] = "bytes_relayed"

    __reduce__ = TransferError.__reduce__


class TruncatedFileError(TransferError):
    """The source ended before ``count`` bytes were sent (the file was shorter, or shrank).

    ``bytes_sent`` says how many bytes went out before the end was met.  From
    :func:`zerocopy.recvfile` (the peer closed early) it is also a
    :class:`ReceiveError`, and ``bytes_received`` equals ``bytes_sent``.
    """


_PROGRESS_CLASSES: dict[str, type[OSError]] = {
    "bytes_sent": TransferError,
    "bytes_received": ReceiveError,
    "bytes_relayed": RelayError,
}
_typed: dict[tuple[type[OSError], str], type[OSError]] = {}


def _base_of(cls: type[BaseException]) -> type[OSError]:
    """The class a progress subclass made by :func:`typed_class` was made for."""
    base: type[OSError] = cls.__dict__.get("_zc_base", cls)
    return base


def typed_class(base: type[OSError], attr: str) -> type[OSError]:
    """``base`` (an ``OSError`` class) made also a progress class for ``attr``."""
    key = (base, attr)
    cls = _typed.get(key)
    if cls is None:
        progress = _PROGRESS_CLASSES[attr]
        if issubclass(base, progress):
            cls = base
        else:
            cls = type(base.__name__, (progress, base), {"__module__": __name__, "_zc_base": base})
            cls.__doc__ = f"{base.__name__} raised by zerocopy, with ``{attr}``."
        _typed[key] = cls
    return cls


def _rebuild(base: type[OSError], attr: str, args: tuple[Any, ...],
             done: Progress | None = None) -> OSError:
    if base is OSError and args and type(args[0]) is int:
        # pickle protocols 0-2 store BrokenPipeError (and the other
        # errno classes) as OSError, whose constructor maps the errno back
        base = _stdlib_class(args[0])
    exc = typed_class(base, attr)(*args)
    if done is not None:  # pickled by an earlier version: the state is not there
        setattr(exc, attr, done)
    return exc


def _stdlib_class(code: int) -> type[OSError]:
    """The class ``OSError(code, ...)`` would pick (``EPIPE`` -> ``BrokenPipeError``)."""
    return type(OSError(code, ""))


def build(code: int, done: Progress, attr: str = "bytes_sent", what: str | None = None) -> OSError:
    """The exception for errno ``code`` after ``done`` bytes moved, with ``attr`` = ``done``.

    ``what`` names the source that ended ("the stream"): its truncation then
    carries ``ENODATA`` and says what ended, and a timeout blames no side.
    """
    n = done if isinstance(done, int) else sum(done)
    exc: OSError
    if code == errno.ENODATA:
        cls = TruncatedFileError if attr == "bytes_sent" else typed_class(TruncatedFileError, attr)
        if what is None:
            exc = cls(f"the file ended after {n} bytes were sent")
        else:
            exc = cls(errno.ENODATA, f"{what} ended after {n} bytes")
        if attr != "bytes_sent":
            exc.bytes_sent = n  # type: ignore[attr-defined]
    elif code == errno.EAGAIN:
        exc = typed_class(BlockingIOError, attr)(
            errno.EAGAIN, "the socket would block; call again to continue"
        )
        exc.characters_written = n  # type: ignore[attr-defined]  # the exact class only takes it as an argument
    elif code == errno.ETIMEDOUT:
        message = "timed out"
        if what is None:
            message = "timed out: the socket stayed full or the source had no data"
        exc = typed_class(TimeoutError, attr)(errno.ETIMEDOUT, message)
    else:
        exc = typed_class(_stdlib_class(code), attr)(code, os.strerror(code))
    setattr(exc, attr, done)
    return exc


def with_progress(exc: BaseException, done: Progress, attr: str = "bytes_sent") -> BaseException:
    """The exception to raise for ``exc`` caught during a transfer that moved ``done`` bytes.

    Ours (already typed) keep their count.  A plain ``OSError`` (from a
    Python-level read or write) becomes the typed equivalent, chained to the
    original; anything else (``KeyboardInterrupt``) gets the attribute set.
    """
    if hasattr(exc, attr):
        return exc
    if isinstance(exc, OSError) and not isinstance(exc, _PROGRESS_CLASSES[attr]):
        try:
            # errno and message; a third argument is the filename (set below)
            typed = typed_class(type(exc), attr)(*exc.args[:2])
        except TypeError:  # a subclass with its own constructor: leave it be
            pass
        else:
            if exc.filename is not None:
                typed.filename = exc.filename
            if exc.filename2 is not None:
                typed.filename2 = exc.filename2
            if isinstance(exc, BlockingIOError):
                try:
                    typed.characters_written = exc.characters_written  # type: ignore[attr-defined]
                except AttributeError:
                    pass
            setattr(typed, attr, done)
            typed.__cause__ = exc
            typed.__suppress_context__ = True
            return typed.with_traceback(exc.__traceback__)
    try:
        setattr(exc, attr, done)
    except AttributeError:  # exceptions with __slots__ cannot carry it
        pass
    return exc
