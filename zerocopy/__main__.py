# SPDX-License-Identifier: MIT
"""``python -m zerocopy COMMAND``: the ``zerocopy`` command (see :mod:`zerocopy.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m zerocopy"))
