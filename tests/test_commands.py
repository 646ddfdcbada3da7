"""The proxy, send and recv commands, run as processes: exit codes, messages, bytes."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
from _zcutil import DEADLINE, HAVE_IPV6, Call, closed_port, recv_exactly, reset

import zerocopy
from zerocopy.commands import UsageError, parse_address, send_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(name: str, *args: str) -> list[str]:
    code = f"import sys; from zerocopy.commands import {name}_main as m; sys.exit(m(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def _run(name: str, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(name, *args), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _start(name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        _cmd(name, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def _line(proc: subprocess.Popen[str], pattern: str, timeout: float = 20) -> re.Match[str]:
    """Read stderr lines until one matches pattern (bounded in time)."""
    assert proc.stderr is not None
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if not ready:
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r} in {seen!r}")


def _one_clear_line(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "error" in lines[0] and words in lines[0], lines[0]


def test_parse_address() -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":9") == ("127.0.0.1", 9)
    assert parse_address("example.org:80") == ("example.org", 80)
    assert parse_address("[::1]:443") == ("::1", 443)
    for bad in ("x:y", "[::1]443", "::1:80", "70000", "host:"):
        with pytest.raises(UsageError):
            parse_address(bad)
    with pytest.raises(UsageError):
        parse_address("80", None)


@pytest.mark.parametrize("verify", [True, False])
def test_send_and_recv_round_trip(tmp_path, big_file: str, big_data: bytes, verify: bool) -> None:
    out = tmp_path / "got.bin"
    flags = ["--sha256"] if verify else []
    recv = _start("recv", "0", "-o", str(out), *flags, "--timeout", "30")
    try:
        port = _line(recv, r"listening on 127\.0\.0\.1:(\d+)").group(1)
        sent = _run("send", big_file, f"127.0.0.1:{port}", *flags)
        rest = recv.communicate(timeout=DEADLINE)[1]
    finally:
        recv.kill()
        recv.wait()
    assert sent.returncode == 0, sent.stderr
    assert recv.returncode == 0, rest
    assert out.read_bytes() == big_data
    assert f"sent {len(big_data)} bytes" in sent.stderr
    assert f"received {len(big_data)} bytes" in rest
    if verify:
        assert "verified by the receiver" in sent.stderr
        assert re.search(r"sha256 [0-9a-f]{64}", rest)


def test_send_verify_needs_a_receiver_digest(tmp_path, small_file: str) -> None:
    out = tmp_path / "got.bin"
    recv = _start("recv", "0", "-o", str(out))
    try:
        port = _line(recv, r"listening on .*:(\d+)").group(1)
        sent = _run("send", small_file, port, "--sha256")
        recv.communicate(timeout=DEADLINE)
    finally:
        recv.kill()
        recv.wait()
    assert sent.returncode == 1 and "Traceback" not in sent.stderr
    assert "cannot verify" in sent.stderr


def test_recv_refuses_to_overwrite(tmp_path) -> None:
    out = tmp_path / "exists"
    out.write_bytes(b"precious")
    _one_clear_line(_run("recv", "0", "-o", str(out)), "exists")
    assert out.read_bytes() == b"precious"


def test_recv_address_in_use(tmp_path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = _run("recv", str(port), "-o", str(tmp_path / "o"))
    assert "listening on" not in result.stderr
    _one_clear_line(result, "in use")
    assert not (tmp_path / "o").exists()


def test_send_errors(tmp_path, small_file: str) -> None:
    _one_clear_line(_run("send", small_file, f"127.0.0.1:{closed_port()}"), "refused")
    _one_clear_line(_run("send", str(tmp_path / "missing"), "127.0.0.1:9"), "cannot open")


def test_usage_errors() -> None:
    for name, args in (
        ("send", ["only-one"]),
        ("recv", ["1234"]),
        ("proxy", ["1", "x:y"]),
        ("proxy", ["1", "2"]),
    ):
        result = _run(name, *args)
        assert result.returncode == 2, (name, args, result)
        assert "Traceback" not in result.stderr
        assert "usage:" in result.stderr


def test_proxy_address_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = _run("proxy", str(port), f"127.0.0.1:{port}")
    _one_clear_line(result, "in use")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_proxy_relays_then_stops_cleanly(echo, small_data: bytes, signum: int) -> None:
    target = f"127.0.0.1:{echo.address[1]}"
    proxy = _start("proxy", "0", target, "-v")
    try:
        port = int(_line(proxy, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
            c.sendall(small_data)
            c.shutdown(socket.SHUT_WR)
            assert recv_exactly(c, len(small_data)) == small_data
            assert c.recv(1) == b""
        _line(proxy, r"\d+ active, 1 accepted")  # the -v summary line
        proxy.send_signal(signum)
        _, rest = proxy.communicate(timeout=DEADLINE)
    finally:
        proxy.kill()
        proxy.wait()
    assert proxy.returncode == 0, rest
    assert "Traceback" not in rest
    assert f"stopped ({signal.Signals(signum).name})" in rest
    assert "1 connections, 0 failed" in rest


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1)")
def test_proxy_ipv6_listen_and_target() -> None:
    lst = socket.create_server(("::1", 0), family=socket.AF_INET6)
    lst.settimeout(DEADLINE)
    proxy = _start("proxy", "[::1]:0", f"[::1]:{lst.getsockname()[1]}")
    try:
        port = int(_line(proxy, r"listening on \[::1\]:(\d+)").group(1))
        with socket.create_connection(("::1", port), timeout=DEADLINE) as c:
            server, _ = lst.accept()
            with server:
                c.sendall(b"over v6")
                assert recv_exactly(server, 7) == b"over v6"
        proxy.send_signal(signal.SIGTERM)
        proxy.communicate(timeout=DEADLINE)
    finally:
        proxy.kill()
        proxy.wait()
        lst.close()
    assert proxy.returncode == 0


def test_send_command_failure_counts_the_current_chunk(tmp_path) -> None:
    """Regression: send's "failed after N bytes" left out the part of the chunk being sent."""
    size = 7 * 1024 * 1024  # one chunk (< commands.CHUNK), far more than the buffers hold
    assert size < zerocopy.commands.CHUNK
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * (size // 256))
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(DEADLINE)
    want = 200_000

    def receiver() -> int:
        conn, _ = ls.accept()
        try:
            return len(recv_exactly(conn, want))
        finally:
            reset(conn)  # with unread data: the sender gets a reset

    rx = Call(receiver)
    err = io.StringIO()
    try:
        rc = send_main(["--timeout", "10", str(path), f"127.0.0.1:{ls.getsockname()[1]}"],
                       stderr=err)
        got = rx.value(DEADLINE)
    finally:
        ls.close()
    text = err.getvalue()
    assert rc == 1, text
    m = re.search(r"failed after (\d+) bytes", text)
    assert m, text
    reported = int(m.group(1))
    assert got == want
    assert want <= reported <= size, f"reported {reported}, the receiver got {want}: {text}"
