# SPDX-License-Identifier: MIT
"""Turning the C core's -errno returns into Python exceptions."""
from __future__ import annotations

import errno
import os
from typing import TypeVar, Union

_E = TypeVar("_E", bound=BaseException)

# Bytes moved so far: a count, or one count per direction (``relay``).
Progress = Union[int, tuple[int, int]]


class TruncatedFileError(OSError):
    """The file ended before ``count`` bytes were sent (it was shorter, or shrank).

    ``bytes_sent`` says how many bytes went out before the end was met.
    """

    bytes_sent: int


def with_progress(exc: _E, done: Progress, *, attr: str = "bytes_sent") -> _E:
    """Set ``exc.<attr> = done`` (``bytes_sent`` unless told); keeps an existing value."""
    if not hasattr(exc, attr):
        try:
            setattr(exc, attr, done)
        except AttributeError:  # exceptions with __slots__ cannot carry it
            pass
    return exc


def error_for(
    rc: int, done: Progress, *, attr: str = "bytes_sent", what: str | None = None
) -> OSError:
    """The exception for a negative return ``rc`` after ``done`` bytes moved, with ``attr`` = done.

    ``what`` names the source of a splice ("the stream"): its truncation then
    carries ``ENODATA`` and says what ended, and a timeout blames no side.
    """
    code = -rc
    n = done if isinstance(done, int) else sum(done)
    exc: OSError
    if code == errno.ENODATA:
        if what is None:
            exc = TruncatedFileError(f"the file ended after {n} bytes were sent")
        else:
            exc = TruncatedFileError(errno.ENODATA, f"{what} ended after {n} bytes")
    elif code == errno.EAGAIN:
        exc = BlockingIOError(errno.EAGAIN, "the socket would block; call again to continue", n)
    elif code == errno.ETIMEDOUT:
        exc = TimeoutError(
            errno.ETIMEDOUT,
            "timed out" if what is not None else "timed out waiting for the socket to accept data",
        )
    else:
        exc = OSError(code, os.strerror(code))  # picks the subclass: EPIPE -> BrokenPipeError
    return with_progress(exc, done, attr=attr)
