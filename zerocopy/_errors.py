# SPDX-License-Identifier: MIT
"""Turning the C core's -errno returns into Python exceptions."""
from __future__ import annotations

import errno
import os


class TruncatedFileError(OSError):
    """The file ended before ``count`` bytes were sent (it was shorter, or shrank).

    ``bytes_sent`` says how many bytes went out before the end was met.
    """

    bytes_sent: int


def with_progress(exc: BaseException, bytes_sent: int) -> BaseException:
    """Attach ``bytes_sent`` to an exception (keeps an existing value)."""
    if not hasattr(exc, "bytes_sent"):
        try:
            exc.bytes_sent = bytes_sent  # type: ignore[attr-defined]
        except AttributeError:  # exceptions with __slots__ cannot carry it
            pass
    return exc


def error_for(rc: int, bytes_sent: int) -> OSError:
    """The exception for a negative return ``rc`` after ``bytes_sent`` bytes went out."""
    code = -rc
    exc: OSError
    if code == errno.ENODATA:
        exc = TruncatedFileError(f"the file ended after {bytes_sent} bytes were sent")
    elif code == errno.EAGAIN:
        exc = BlockingIOError(
            errno.EAGAIN, "the socket would block; call again to continue", bytes_sent
        )
    elif code == errno.ETIMEDOUT:
        exc = TimeoutError(errno.ETIMEDOUT, "timed out waiting for the socket to accept data")
    else:
        exc = OSError(code, os.strerror(code))  # picks the subclass: EPIPE -> BrokenPipeError
    exc.bytes_sent = bytes_sent  # type: ignore[attr-defined]
    return exc
