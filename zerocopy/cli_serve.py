# SPDX-License-Identifier: MIT
"""``zerocopy serve [DIR]``: serve a directory over HTTP with :class:`zerocopy.FileServer`.

The address and the directory are checked before anything is served, each
mistake in one line (exit status 1).  The URL served is printed on stderr
with the other messages; ``--log`` puts the access log on standard output.
The first Ctrl-C or SIGTERM stops gracefully (``shutdown(grace)``: no new
connections, idle ones closed, responses in flight get ``--grace`` seconds);
a second one stops at once.  Exit status 0 after such a stop.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from .cli import CommandError, Console, MiB, error_text, resolve, show, signal_handlers
from .server import FileServer


def url(address: tuple[str, int]) -> str:
    return f"http://{show(address)}/"


def run(args: argparse.Namespace, con: Console) -> int:
    host = args.bind.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1] as in a URL
    resolve((host, args.port), passive=True)
    root = os.path.abspath(args.root)
    if args.log:
        sys.stdout.flush()
    try:
        server = FileServer(
            root, (host, args.port), workers=args.workers, listing=not args.no_listing,
            follow_symlinks=args.follow_symlinks, max_connections=args.max_connections,
            access_log=sys.stdout.fileno() if args.log else None,
        )
    except OSError as e:
        if e.filename is not None:  # opening the root
            raise CommandError(f"cannot serve {args.root!r}: {error_text(e)}") from None
        raise CommandError(f"cannot listen on {show((host, args.port))}: {error_text(e)}") \
            from None
    stops: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stops.append(signal.Signals(signum).name)
        if len(stops) == 1:
            server.shutdown(args.grace)
            # Safe to print: the handler runs while the main thread is in
            # serve_forever, never in the console's lock; a second signal
            # prints nothing (it may come while this handler holds that lock).
            con.say(f"stopping ({stops[0]}): letting responses finish for up to "
                    f"{args.grace:g} s (again to stop now)")
        else:
            server.shutdown(0)

    signums = (signal.SIGINT, signal.SIGTERM)
    with server, signal_handlers(stop, signums):
        where = url(server.server_address)
        workers = f", {server.workers} workers" if server.workers > 1 else ""
        # Ready once this line is out, so the handlers are in place first; a
        # signal waits until the line is written (the handler writes too).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
        try:
            con.say(f"serving {root} at {where}{workers} (Ctrl-C to stop)")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        try:
            server.serve_forever()
        except OSError as e:
            raise CommandError(error_text(e)) from None
        st = server.stats
    con.say(
        f"stopped ({stops[0] if stops else 'closed'}): {st.requests} requests on "
        f"{st.accepted} connections, {_amount(st.bytes_sent)} sent"
    )
    return 0


def _amount(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB" if nbytes >= MiB else f"{nbytes} bytes"
