# SPDX-License-Identifier: MIT
"""One command each, called from Python: ``send_main(argv)`` runs ``zerocopy send ARGV``.

For scripts and tests that run a command in-process; messages go to
``stderr`` (default ``sys.stderr``).  Each returns the exit status (see
:mod:`zerocopy.cli`, where the commands are defined).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import IO

from .cli import CHUNK, UsageError, main, parse_address

__all__ = ["CHUNK", "UsageError", "parse_address", "proxy_main", "recv_main", "send_main"]


def proxy_main(argv: Sequence[str], *, stderr: IO[str] | None = None) -> int:
    """``zerocopy proxy ARGV``."""
    return main(["proxy", *argv], stderr=stderr)


def send_main(argv: Sequence[str], *, stderr: IO[str] | None = None) -> int:
    """``zerocopy send ARGV``."""
    return main(["send", *argv], stderr=stderr)


def recv_main(argv: Sequence[str], *, stderr: IO[str] | None = None) -> int:
    """``zerocopy recv ARGV``."""
    return main(["recv", *argv], stderr=stderr)
