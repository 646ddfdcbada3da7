# SPDX-License-Identifier: MIT
"""``python -m zerocopy COMMAND``: the command line."""
from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m zerocopy COMMAND [ARGS]

commands:
  bench    compare read/write with sendfile and zerocopy side by side (--help for options)
  proxy    relay TCP connections with splice: proxy LISTEN TARGET
  send     send a file: send FILE HOST:PORT
  recv     receive a file: recv [HOST:]PORT -o FILE
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "bench":
        from . import bench

        return bench.main(rest)
    if command in ("proxy", "send", "recv"):
        from . import commands

        entry = {"proxy": commands.proxy_main, "send": commands.send_main,
                 "recv": commands.recv_main}[command]
        return entry(rest)
    print(f"zerocopy: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
