# SPDX-License-Identifier: MIT
"""``python -m zerocopy bench``: every way of sending, side by side, with honest figures.

Modes (``bench MODE``, or ``bench --MODE`` as before): ``file`` (the default: a 256 MiB
page-cached file with every method), ``small`` (per-call cost at 4 KiB), ``memory``
(MSG_ZEROCOPY against ``socket.sendall``), ``relay`` (relays and proxies), ``serve``
(HTTP file servers: ``zerocopy.FileServer`` against nginx and others), ``all``.
``bench --quick`` alone runs every mode once, briefly: the smoke test.

The harness (``_harness``) owns everything the modes share, and its docstring says how to
add a mode: one module in this package that defines ``MODE``.
"""

from ._harness import main, parse_size

__all__ = ["main", "parse_size"]
