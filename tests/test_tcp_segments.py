"""What goes on the wire: header + body coalesced into one segment, nothing held back.

Segments are counted with TCP_INFO.  Offsets into struct tcp_info
(include/uapi/linux/tcp.h; the layout only ever grows at the end, so they hold
for Linux 4.6+ and all of 6.x):

    offset  type  field
         0  u8    tcpi_state              (1 == TCP_ESTABLISHED)
       136  u32   tcpi_segs_out
       144  u32   tcpi_notsent_bytes
       156  u32   tcpi_data_segs_out      (Linux 4.6+)
       200  u64   tcpi_bytes_sent         (Linux 5.5+; used to check the offsets)

They follow from the 8 leading u8 fields, 24 u32 (tcpi_rto .. tcpi_total_retrans,
ending at 104), 4 u64 (pacing_rate, max_pacing_rate, bytes_acked,
bytes_received: 104..136), then u32 segs_out, segs_in, notsent_bytes, min_rtt,
data_segs_in, data_segs_out (136..160), then u64 delivery_rate, busy_time,
rwnd_limited, sndbuf_limited (160..192), u32 delivered, delivered_ce, and
u64 bytes_sent at 200.

Unsent bytes are read with ioctl SIOCOUTQNSD (0x894B): a response whose cork
was forgotten keeps its last partial segment queued (for 200 ms); right after
send_all() returns the queue must be empty.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

import pytest
from _zcutil import cork_of, make_file, nodelay_of, rand_bytes, recv_exactly, unsent

import zerocopy

TCP_INFO_LEN = 256
OFF_STATE = 0
OFF_SEGS_OUT = 136
OFF_NOTSENT = 144
OFF_DATA_SEGS_OUT = 156
OFF_BYTES_SENT = 200
TCP_ESTABLISHED = 1


class TcpInfo(NamedTuple):
    state: int
    segs_out: int
    notsent: int
    data_segs_out: int
    bytes_sent: int


def tcp_info(sock: socket.socket) -> TcpInfo:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    if len(raw) < OFF_BYTES_SENT + 8:
        pytest.skip(f"struct tcp_info too short ({len(raw)} bytes): kernel older than 5.5")
    return TcpInfo(
        raw[OFF_STATE],
        struct.unpack_from("=I", raw, OFF_SEGS_OUT)[0],
        struct.unpack_from("=I", raw, OFF_NOTSENT)[0],
        struct.unpack_from("=I", raw, OFF_DATA_SEGS_OUT)[0],
        struct.unpack_from("=Q", raw, OFF_BYTES_SENT)[0],
    )


HEADER = (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Pad: " + b"p" * 100)[:98] + b"\r\n"
assert len(HEADER) == 100


@pytest.fixture
def body_file(tmp_path) -> tuple[str, bytes]:
    body = rand_bytes(1000, 5)
    return make_file(tmp_path, body, "body.bin"), body


@pytest.fixture
def nodelay_pair(make_pair) -> tuple[socket.socket, socket.socket]:
    sender, receiver = make_pair("tcp4")
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sender, receiver


def test_tcp_info_offsets(nodelay_pair) -> None:
    """The offsets above are right: a 100 B and a 1000 B send() are 2 segments, 1100 B."""
    sender, receiver = nodelay_pair
    before = tcp_info(sender)
    assert before.state == TCP_ESTABLISHED
    sender.send(HEADER)
    sender.send(b"x" * 1000)
    after = tcp_info(sender)
    assert after.bytes_sent - before.bytes_sent == 1100
    assert after.data_segs_out - before.data_segs_out == 2
    assert after.segs_out - before.segs_out >= 2
    assert after.notsent == 0
    assert recv_exactly(receiver, 1100) == HEADER + b"x" * 1000


def test_plain_send_then_sendfile_uses_two_segments(nodelay_pair, body_file) -> None:
    """The baseline the library improves on."""
    path, body = body_file
    sender, receiver = nodelay_pair
    before = tcp_info(sender)
    fd = os.open(path, os.O_RDONLY)
    try:
        sender.sendall(HEADER)
        assert os.sendfile(sender.fileno(), fd, 0, 1000) == 1000
    finally:
        os.close(fd)
    after = tcp_info(sender)
    assert after.bytes_sent - before.bytes_sent == 1100
    assert after.data_segs_out - before.data_segs_out == 2
    assert recv_exactly(receiver, 1100) == HEADER + body


@pytest.mark.parametrize("trailers", [b"", b"\r\n-- trailer --\r\n"], ids=["no-trailer", "trailer"])
@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "nonblocking"])
def test_filesender_header_and_body_one_segment(
    nodelay_pair, body_file, trailers: bytes, blocking: bool
) -> None:
    path, body = body_file
    sender, receiver = nodelay_pair
    sender.setblocking(blocking)
    total = len(HEADER) + len(body) + len(trailers)
    with open(path, "rb") as f:
        before = tcp_info(sender)
        with zerocopy.FileSender(sender, f, headers=HEADER, trailers=trailers) as fs:
            fs.send_all()
            left = unsent(sender)  # right after send_all: nothing may be held back
            after = tcp_info(sender)
    assert left == 0, f"{left} bytes still queued after send_all (cork not undone?)"
    assert after.bytes_sent - before.bytes_sent == total
    assert after.data_segs_out - before.data_segs_out == 1
    assert cork_of(sender) == 0
    assert nodelay_of(sender) == 1
    sender.setblocking(True)
    assert recv_exactly(receiver, total) == HEADER + body + trailers


@pytest.mark.parametrize(
    ("headers", "count", "trailers"),
    [
        (HEADER, 0, b""),  # header only
        (HEADER, 0, b"TRAILER"),  # header + trailer, no file data
        (b"", None, b""),  # body only
        (b"", None, b"TRAILER"),  # body + trailer
    ],
    ids=["header-only", "header-trailer", "body-only", "body-trailer"],
)
def test_filesender_nothing_held_back(nodelay_pair, body_file, headers, count, trailers) -> None:
    path, body = body_file
    sender, receiver = nodelay_pair
    sent_body = body if count is None else body[:count]
    with open(path, "rb") as f:
        fs = zerocopy.FileSender(sender, f, count=count, headers=headers, trailers=trailers)
        fs.send_all()
        left = unsent(sender)
        fs.close()
    assert left == 0, f"{left} bytes still queued after send_all"
    expected = headers + sent_body + trailers
    assert recv_exactly(receiver, len(expected)) == expected


def test_sendfile_all_nothing_held_back(nodelay_pair, body_file) -> None:
    path, body = body_file
    sender, receiver = nodelay_pair
    with open(path, "rb") as f:
        assert zerocopy.sendfile_all(sender, f) == 1000
    assert unsent(sender) == 0
    assert recv_exactly(receiver, 1000) == body


def test_cork_coalesces_and_releases(nodelay_pair, body_file) -> None:
    path, body = body_file
    sender, receiver = nodelay_pair
    before = tcp_info(sender)
    fd = os.open(path, os.O_RDONLY)
    try:
        with zerocopy.cork(sender):
            sender.sendall(HEADER)
            assert os.sendfile(sender.fileno(), fd, 0, 1000) == 1000
            held = unsent(sender)
        left = unsent(sender)
    finally:
        os.close(fd)
    after = tcp_info(sender)
    assert held == 1100, "cork() did not hold the partial segment"
    assert left == 0, "leaving cork() did not push the queued bytes"
    assert after.data_segs_out - before.data_segs_out == 1
    assert recv_exactly(receiver, 1100) == HEADER + body
