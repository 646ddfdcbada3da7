# SPDX-License-Identifier: MIT
"""The framing ``zerocopy send`` and ``zerocopy recv`` speak (unless ``--raw``).

The sender writes, in order (integers big-endian)::

    header, 16 bytes:  magic b"\\x89ZCS" | version 1 (u8) | flags (u8) | 0 (u16) | length (u64)
    body:              the file's bytes, exactly ``length`` of them when it is known
    end mark, 48 bytes: magic b"\\x89ZCE" | version 1 (u8) | flags (u8) | 0 (u16)
                       | length (u64) | SHA-256 of the body (32 bytes; zeros without FLAG_SHA256)

then shuts down its side for writing and waits for one line from the
receiver (ASCII, at most 256 bytes)::

    ok LENGTH\\n                  everything arrived and is stored under its name
    ok LENGTH sha256=HEX\\n       the same, with the digest of what was stored
    error TEXT\\n                 the receiver refused the data (TEXT says why)

``length`` in the header is ``UNKNOWN_LENGTH`` (2**64 - 1) when the sender
cannot know it up front (a pipe, a FIFO, a ``/proc`` file, standard
input): the body then runs to the end of the stream, and its last 48 bytes
are the end mark, whose length field must equal the bytes before it.  In
both cases a transfer is complete only when a valid end mark arrives and
its length matches; a sender killed midway never writes one.  Flag bit 0
(``FLAG_SHA256``) says the end mark carries the body's SHA-256.  Unknown
flag bits or a nonzero reserved field are refused, so a later version can
use them.
"""
from __future__ import annotations

import hashlib
import os
import struct
from typing import NamedTuple

HEADER = struct.Struct(">4sBBHQ")
END = struct.Struct(">4sBBHQ32s")
HEADER_MAGIC = b"\x89ZCS"
END_MAGIC = b"\x89ZCE"
VERSION = 1
FLAG_SHA256 = 0x01
UNKNOWN_LENGTH = 2**64 - 1
REPLY_MAX = 256
_NO_DIGEST = bytes(32)


class FramingError(ValueError):
    """Bytes that are not (valid) framing."""


class Header(NamedTuple):
    length: int | None  # None: unknown, the body runs to the end of the stream
    sha256: bool  # the end mark carries the body's SHA-256


class End(NamedTuple):
    length: int
    sha256: bytes | None


def pack_header(length: int | None, *, sha256: bool) -> bytes:
    flags = FLAG_SHA256 if sha256 else 0
    return HEADER.pack(HEADER_MAGIC, VERSION, flags, 0,
                       UNKNOWN_LENGTH if length is None else length)


def pack_end(length: int, sha256: bytes | None) -> bytes:
    flags = 0 if sha256 is None else FLAG_SHA256
    return END.pack(END_MAGIC, VERSION, flags, 0, length, sha256 or _NO_DIGEST)


def unpack_header(data: bytes) -> Header:
    if len(data) < HEADER.size or data[:4] != HEADER_MAGIC:
        raise FramingError("not a zerocopy stream (no header)")
    _, version, flags, reserved, length = HEADER.unpack(data[:HEADER.size])
    _check(version, flags, reserved)
    return Header(None if length == UNKNOWN_LENGTH else length, bool(flags & FLAG_SHA256))


def unpack_end(data: bytes) -> End:
    if len(data) != END.size or data[:4] != END_MAGIC:
        raise FramingError("no end mark")
    _, version, flags, reserved, length, digest = END.unpack(data)
    _check(version, flags, reserved)
    return End(length, digest if flags & FLAG_SHA256 else None)


def _check(version: int, flags: int, reserved: int) -> None:
    if version != VERSION:
        raise FramingError(f"framing version {version} (this zerocopy speaks version "
                           f"{VERSION}): use the same zerocopy version on both sides")
    if flags & ~FLAG_SHA256 or reserved:
        raise FramingError("unknown framing flags: use the same zerocopy version on both sides")


def reply_ok(length: int, sha256: bytes | None) -> bytes:
    digest = "" if sha256 is None else f" sha256={sha256.hex()}"
    return f"ok {length}{digest}\n".encode("ascii")


def reply_error(text: str) -> bytes:
    line = " ".join(text.split())  # one line
    return f"error {line}\n".encode("ascii", "replace")[:REPLY_MAX - 1].rstrip(b"\n") + b"\n"


class Reply(NamedTuple):
    ok: bool
    length: int  # ok: the bytes stored
    sha256: str  # ok: hex digest of what was stored, or ""
    text: str  # error: the receiver's reason


def parse_reply(line: bytes) -> Reply:
    text = line.decode("ascii", "replace").strip()
    word, _, rest = text.partition(" ")
    if word == "error":
        return Reply(False, 0, "", rest or "no reason given")
    fields = rest.split()
    if word != "ok" or not fields or not fields[0].isdigit():
        raise FramingError(f"unexpected reply {text[:60]!r}")
    digest = ""
    for field in fields[1:]:
        if field.startswith("sha256="):
            digest = field[len("sha256="):]
    return Reply(True, int(fields[0]), digest, "")


class Digest:
    """SHA-256 of bytes fed to it, or read back from a file with ``pread`` as they are moved.

    sendfile and splice move the data without passing it through this
    process: :meth:`read_to` then reads back the range just moved (from the
    page cache), so the digest covers exactly those bytes, even in a file
    that keeps growing.
    """

    def __init__(self, start: int = 0) -> None:
        self.pos = start  # the next file offset read_to() digests
        self._hash = hashlib.sha256()

    def feed(self, data: bytes | memoryview) -> None:
        self._hash.update(data)

    def read_to(self, fd: int, end: int) -> None:
        """Digest the bytes of ``fd`` from where it stopped up to offset ``end``."""
        while self.pos < end:
            block = os.pread(fd, min(end - self.pos, 1024 * 1024), self.pos)
            if not block:
                raise OSError(f"the file ended at {self.pos} bytes while being digested")
            self._hash.update(block)
            self.pos += len(block)

    def digest(self) -> bytes:
        return self._hash.digest()
