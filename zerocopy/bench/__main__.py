# SPDX-License-Identifier: MIT
"""``python -m zerocopy.bench``: the same as ``python -m zerocopy bench``."""

import sys

from ._harness import main

sys.exit(main(sys.argv[1:]))
