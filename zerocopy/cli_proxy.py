# SPDX-License-Identifier: MIT
"""``zerocopy proxy LISTEN TARGET``: relay TCP connections with :class:`zerocopy.Proxy`.

Both addresses are checked before anything starts (ports 0-65535, 1-65535
for TARGET; host names resolved), each mistake in one line.  ``-v``
prints a summary every second.  Ctrl-C or SIGTERM stops it: the running
connections are reset and the totals printed; the exit status is 0.
"""
from __future__ import annotations

import argparse
import signal
from types import FrameType

from .cli import (
    DEFAULT_HOST,
    CommandError,
    Console,
    MiB,
    error_text,
    parse_address,
    resolve,
    show,
    signal_handlers,
)
from .relay import Proxy, ProxyStats


def run(args: argparse.Namespace, con: Console) -> int:
    listen = parse_address(args.listen, DEFAULT_HOST)
    target = parse_address(args.target, None, lowest_port=1)
    resolve(listen, passive=True)
    resolve(target)
    try:
        proxy = Proxy(listen, target, max_connections=args.max_connections,
                      connect_timeout=args.connect_timeout, idle_timeout=args.idle_timeout,
                      stall_timeout=args.stall_timeout)
    except (OSError, ValueError, OverflowError) as e:
        raise CommandError(f"cannot listen on {show(listen)}: {error_text(e)}") from None
    stopped: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.append(signal.Signals(signum).name)
        proxy.close()

    last: list[ProxyStats] = [proxy.stats()]

    def summary(st: ProxyStats) -> None:
        prev = last[0]
        last[0] = st
        con.say(
            f"{st.active} active, {st.accepted} accepted, {st.completed} done, "
            f"{st.failed} failed ({st.timed_out} timed out), {st.refused} refused; "
            f"up {(st.bytes_up - prev.bytes_up) / MiB:.1f} MiB/s, "
            f"down {(st.bytes_down - prev.bytes_down) / MiB:.1f} MiB/s"
        )
        if st.refused > prev.refused:
            con.say(f"refused {st.refused - prev.refused} client(s): all "
                    f"{proxy.max_connections} slots taken or no descriptor left")

    con.say(f"listening on {show(proxy.address)}, relaying to {show(target)} "
            f"(up to {proxy.max_connections} connections; open-files limit {proxy.fd_limit})")
    with signal_handlers(stop, (signal.SIGINT, signal.SIGTERM)):
        try:
            proxy.serve_forever(callback=summary if args.verbose else None, interval=1.0)
        except OSError as e:
            raise CommandError(error_text(e)) from None
        finally:
            proxy.close()
    st = proxy.stats()
    con.say(
        f"stopped ({stopped[0] if stopped else 'closed'}): {st.accepted} connections, "
        f"{st.failed} failed, {st.refused} refused, {st.bytes_up} bytes up, "
        f"{st.bytes_down} bytes down"
    )
    return 0
