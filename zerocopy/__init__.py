# SPDX-License-Identifier: MIT
"""zerocopy: send files and memory to sockets on Linux without copying them through user space."""
import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"zerocopy works on Linux only (it wraps sendfile, splice and MSG_ZEROCOPY); "
        f"this is {sys.platform}"
    )

from ._errors import ReceiveError, RelayError, TransferError, TruncatedFileError
from .cork import cork
from .msg_zerocopy import SendHandle, Socket, SocketStats
from .relay import Proxy, ProxyStats, relay
from .sender import FileSender
from .sendfile import sendfile_all
from .server import FileServer, ServerStats
from .splice import recvfile, splice_all

__all__ = [
    "FileSender",
    "FileServer",
    "Proxy",
    "ProxyStats",
    "ReceiveError",
    "RelayError",
    "SendHandle",
    "ServerStats",
    "Socket",
    "SocketStats",
    "TransferError",
    "TruncatedFileError",
    "cork",
    "recvfile",
    "relay",
    "sendfile_all",
    "splice_all",
]
__version__ = "0.1.0"
