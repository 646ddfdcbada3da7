"""Child of test_msg_zerocopy.test_enobufs_resends_plain_in_netns; run under `unshare -n`.

Usage: python _enobufs_child.py HOST_NETNS_INODE

In a fresh network namespace: bring lo up, set net.core.optmem_max to 0 so
the kernel cannot allocate the notification for any MSG_ZEROCOPY send
(ENOBUFS), send large buffers through zerocopy.Socket(adaptive=False) over
127.0.0.1 and print one JSON line: the stats, whether the receiver got the
exact bytes.  Exit 77 with {"skip": reason} when the setup is impossible.
It refuses to touch anything unless it really is in a namespace other than
the host's (optmem_max is per namespace only since Linux 6.9).
"""

from __future__ import annotations

import array
import dataclasses
import fcntl
import json
import os
import random
import socket
import struct
import sys
import threading
from typing import Any, NoReturn

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
OPTMEM = "/proc/sys/net/core/optmem_max"


def skip(reason: str) -> NoReturn:
    print(json.dumps({"skip": reason}), flush=True)
    sys.exit(77)


def lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def main() -> None:
    if len(sys.argv) != 2 or os.stat("/proc/self/ns/net").st_ino == int(sys.argv[1]):
        skip("not in a network namespace of its own")
    try:
        lo_up()
    except OSError as e:
        skip(f"cannot bring lo up in the namespace: {e}")
    try:
        with open(OPTMEM, "w") as f:
            f.write("0\n")
        with open(OPTMEM) as f:
            value = int(f.read())
    except OSError as e:
        skip(f"cannot write {OPTMEM} in the namespace (per-namespace since Linux 6.9): {e}")
    if value != 0:
        skip(f"{OPTMEM} reads {value} after writing 0")

    import zerocopy

    lst = socket.create_server(("127.0.0.1", 0))
    snd = socket.create_connection(lst.getsockname(), timeout=10)
    rcv, _ = lst.accept()
    lst.close()
    rcv.settimeout(10)
    got = bytearray()
    failure: list[BaseException] = []

    def receive() -> None:
        try:
            while True:
                b = rcv.recv(1 << 20)
                if not b:
                    return
                got.extend(b)
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    rng = random.Random(5)
    raw = [rng.randbytes(n) for n in (1 << 20, 3 << 19, 1 << 21, 70_000)]
    bufs: list[Any] = [raw[0], bytearray(raw[1]), memoryview(raw[2]), array.array("B", raw[3])]
    z = zerocopy.Socket(snd, adaptive=False)
    for b in bufs:
        z.sendall(b)
    flushed = z.flush(timeout=10)
    stats = dataclasses.asdict(z.stats)
    pending, active = z.pending, z.zerocopy_active
    z.close()
    t.join(15)
    expected = b"".join(raw)
    print(json.dumps({
        "stats": stats,
        "flushed": flushed,
        "pending": pending,
        "zerocopy_active": active,
        "received": len(got),
        "expected": len(expected),
        "intact": not failure and bytes(got) == expected,
        "error": repr(failure[0]) if failure else None,
    }), flush=True)


if __name__ == "__main__":
    main()
