"""The zerocopy command line: subcommands, send/recv framing, partial files, proxy.

The commands run as processes over loopback (stderr read line by line with
deadlines); argument mistakes run in-process.  Every transfer compares the
bytes (sha256) and the exit status.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _zcutil import DEADLINE, HAVE_IPV6, Call, closed_port, recv_exactly, reset

import zerocopy
from zerocopy import cli, cli_framing
from zerocopy.cli import CHUNK, UsageError, parse_address

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs the command line as `python -m zerocopy` does, with Ctrl-C raising
# KeyboardInterrupt even when the test runner's parent ignores SIGINT (a
# background job), which the child would inherit.
_PRELUDE = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from zerocopy.cli import main; sys.exit(main(prog='python -m zerocopy'))"
)
LONG_LABEL = "a" * 64 + ".example"  # one label over the 63 characters DNS allows


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", _PRELUDE, *args]


def _run(*args: str, timeout: float = DEADLINE, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, **kw)  # type: ignore[call-overload]


def _start(*args: str, **kw: object) -> subprocess.Popen[str]:
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.Popen(_cmd(*args), stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            **kw)  # type: ignore[call-overload]


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


def _finish(proc: subprocess.Popen[str]) -> str:
    """Wait for proc (bounded); return the rest of its stderr."""
    try:
        return proc.communicate(timeout=DEADLINE)[1]
    finally:
        proc.kill()
        proc.wait()


def _one_clear_line(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "error" in lines[0] and words in lines[0], lines[0]


def _wait_for_size(path: Path, size: int, proc: subprocess.Popen[str] | None = None) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size >= size:
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {size} bytes")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[object]:
    """Factory: receiver(*args) -> (recv process, port); killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, **kw: object) -> tuple[subprocess.Popen[str], int]:
        proc = _start("recv", "0", *args, **kw)
        procs.append(proc)
        port = int(_line(proc, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        return proc, port

    yield start
    for p in procs:
        p.kill()
        p.wait()


class FakeSender:
    """A sender driven by the test, speaking the framing byte by byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        self.sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := self.sock.recv(4096):
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ the command line


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "zerocopy", "--version"], capture_output=True,
                            text=True, timeout=DEADLINE, cwd=ROOT)
    assert result.returncode == 0, result
    assert result.stdout == f"zerocopy {zerocopy.__version__}\n"


def test_console_script_is_declared_and_runs() -> None:
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert 'zerocopy = "zerocopy.cli:main"' in f.read()
    script = os.path.join(os.path.dirname(sys.executable), "zerocopy")
    if not os.path.exists(script):
        pytest.skip("the package is not installed with its scripts in this environment")
    result = subprocess.run([script, "send", "--help"], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.returncode == 0, result
    assert result.stdout.startswith("usage: zerocopy send ")


def test_no_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "zerocopy"], capture_output=True, text=True,
                            timeout=DEADLINE, cwd=ROOT)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: python -m zerocopy ")
    assert "required: COMMAND" in result.stderr


@pytest.mark.parametrize("command", ["proxy", "send", "recv"])
def test_help_per_subcommand(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"], prog="python -m zerocopy") == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"usage: python -m zerocopy {command} ")
    assert "example" in out.out and out.err == ""


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("bench", "proxy", "send", "recv"):
        assert re.search(rf"^\s+{command}\s", text, re.M), text


def test_bench_gets_its_arguments_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 7

    import zerocopy.bench

    monkeypatch.setattr(zerocopy.bench, "main", fake_main)
    args = ["--small", "-h", "--methods", "a,b", "--", "x"]
    assert cli.main(["bench", *args]) == 7
    assert seen == [args]


def test_bench_help_is_the_benchmarks_own() -> None:
    result = subprocess.run([sys.executable, "-m", "zerocopy", "bench", "--help"],
                            capture_output=True, text=True, timeout=DEADLINE, cwd=ROOT)
    assert result.returncode == 0, result
    assert "bench" in result.stdout.splitlines()[0] and "--size" in result.stdout


def test_a_new_subcommand_is_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_SUBCOMMANDS", dict(cli._SUBCOMMANDS))

    @cli.subcommand("hello", "say hello")
    def _hello(parser: object) -> str:
        parser.add_argument("name")  # type: ignore[attr-defined]
        return "tests._hello_cmd"

    module = type(sys)("tests._hello_cmd")
    module.run = lambda args, con: (con.say(f"hello {args.name}"), 3)[1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests._hello_cmd", module)
    err = io.StringIO()
    assert cli.main(["hello", "you"], stderr=err) == 3
    assert err.getvalue() == "zerocopy hello: hello you\n"


@pytest.mark.parametrize(
    "args, words",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["send", "only-one"], "required: HOST:PORT"),
        (["send", "f", "example.org"], "write [HOST:]PORT, e.g. example.org:9000"),
        (["send", "f", "example.org:"], "write example.org:PORT, e.g. example.org:9000"),
        (["send", "f", "::1:80"], "brackets: [::1]:80"),
        (["send", "f", "::1"], "write [::1]:PORT"),
        (["send", "f", "[::1]"], "write [::1]:PORT, e.g. [::1]:9000"),
        (["send", "f", "[example.org]:80"], "not an IPv6 address"),
        (["send", "f", "host:http"], "port must be a number 1-65535, not 'http'"),
        (["send", "f", "host:0"], "port must be 1-65535, got 0"),
        (["send", "f", "host:70000"], "port must be 1-65535, got 70000"),
        (["send", "f", "1", "--timeout", "0"], "more than 0 seconds"),
        (["send", "f", "1", "--timeout", "soon"], "a number of seconds"),
        (["recv", "1234"], "required: -o/--output"),
        (["recv", "0", "-o", ""], "-o needs a file name, or '-'"),
        (["recv", "70000", "-o", "x"], "port must be 0-65535, got 70000"),
        (["recv", "-5", "-o", "x"], "port must be a number 0-65535, not '-5'"),
        (["recv", "example.org", "-o", "x"], "e.g. example.org:9000"),
        (["proxy", "1", "x:y"], "port must be a number 1-65535, not 'y'"),
        (["proxy", "1", "2"], "missing host in '2': write HOST:PORT, e.g. 127.0.0.1:2"),
        (["proxy", "99999", "h:1"], "port must be 0-65535, got 99999"),
        (["proxy", "1", "h:1", "--max-connections", "0"], "at least 1"),
    ],
)
def test_usage_errors_say_what_to_type(args: list[str], words: str) -> None:
    err = io.StringIO()
    assert cli.main(args, stderr=err) == 2
    text = err.getvalue()
    assert text.startswith("usage: zerocopy"), text
    assert "Traceback" not in text
    assert words in text, text


def test_parse_address() -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address(":9") == ("127.0.0.1", 9)
    assert parse_address("example.org:80") == ("example.org", 80)
    assert parse_address("[::1]:443") == ("::1", 443)
    assert parse_address("[fe80::1%lo]:443") == ("fe80::1%lo", 443)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    for bad in ("x:y", "[::1]443", "::1:80", "70000", "host:", "host", "[::1", "-1"):
        with pytest.raises(UsageError):
            parse_address(bad)
    with pytest.raises(UsageError):
        parse_address("80", None)
    with pytest.raises(UsageError):
        parse_address("h:0", None, lowest_port=1)


@pytest.mark.parametrize(
    "args",
    [
        ["send", "FILE", f"{LONG_LABEL}:80"],
        ["send", "FILE", "a..b:80"],
        ["proxy", "0", f"{LONG_LABEL}:80"],
        ["proxy", f"{LONG_LABEL}:0", "127.0.0.1:80"],
        ["recv", f"{LONG_LABEL}:0", "-o", "OUT"],
    ],
)
def test_bad_host_names_give_one_line(tmp_path: Path, args: list[str]) -> None:
    args = [str(tmp_path / a) if a in ("FILE", "OUT") else a for a in args]
    (tmp_path / "FILE").write_bytes(b"x")
    result = _run(*args)
    _one_clear_line(result, "bad host name")
    assert not (tmp_path / "OUT.partial").exists()


# ------------------------------------------------------------------ the framing


def test_framing_bytes() -> None:
    digest = hashlib.sha256(b"abc").digest()
    head = cli_framing.pack_header(3, sha256=True)
    assert head == b"\x89ZCS\x01\x01\x00\x00" + (3).to_bytes(8, "big")
    assert cli_framing.unpack_header(head) == cli_framing.Header(3, True)
    unknown = cli_framing.pack_header(None, sha256=False)
    assert unknown == b"\x89ZCS\x01\x00\x00\x00" + b"\xff" * 8
    assert cli_framing.unpack_header(unknown) == cli_framing.Header(None, False)
    end = cli_framing.pack_end(3, digest)
    assert end == b"\x89ZCE\x01\x01\x00\x00" + (3).to_bytes(8, "big") + digest
    assert cli_framing.unpack_end(end) == cli_framing.End(3, digest)
    plain = cli_framing.pack_end(3, None)
    assert len(plain) == 48 and plain.endswith(bytes(32))
    assert cli_framing.unpack_end(plain) == cli_framing.End(3, None)
    for bad in (head[:15], b"GET / HTTP/1.1\r\n", head[:4] + b"\x02" + head[5:],
                head[:5] + b"\x80" + head[6:], head[:6] + b"\x00\x01" + head[8:]):
        with pytest.raises(cli_framing.FramingError):
            cli_framing.unpack_header(bad)
    for bad_end in (end[:47], head + bytes(32), end[:4] + b"\x07" + end[5:]):
        with pytest.raises(cli_framing.FramingError):
            cli_framing.unpack_end(bad_end)


def test_reply_lines() -> None:
    assert cli_framing.reply_ok(5, None) == b"ok 5\n"
    assert cli_framing.reply_ok(5, b"\x01" * 32) == b"ok 5 sha256=" + b"01" * 32 + b"\n"
    assert cli_framing.parse_reply(b"ok 5 sha256=ab") == cli_framing.Reply(True, 5, "ab", "")
    line = cli_framing.reply_error("disk\nfull " + "x" * 500)
    assert line.startswith(b"error disk full ") and line.endswith(b"\n")
    assert len(line) <= cli_framing.REPLY_MAX and line.count(b"\n") == 1
    assert cli_framing.parse_reply(line[:-1]).text.startswith("disk full")
    with pytest.raises(cli_framing.FramingError):
        cli_framing.parse_reply(b"HTTP/1.1 400 Bad Request")


# ------------------------------------------------------------------ send and recv


@pytest.mark.parametrize("flags", [[], ["--sha256"], ["--raw"], ["--raw", "--sha256"]])
def test_round_trip(tmp_path: Path, receiver, big_file: str, big_data: bytes,
                    flags: list[str]) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out), *flags, "--timeout", "30")
    sent = _run("send", big_file, f"127.0.0.1:{port}", *flags)
    rest = _finish(recv)
    assert sent.returncode == 0, sent.stderr
    assert recv.returncode == 0, rest
    assert sha(out.read_bytes()) == sha(big_data)
    assert not Path(f"{out}.partial").exists()
    assert f"sent {len(big_data)} bytes" in sent.stderr
    assert f"received {len(big_data)} bytes" in rest
    if "--raw" in flags:
        assert "--raw: the sender's close ended the data" in rest
        assert "acknowledged every byte" in sent.stderr
    else:
        assert "complete (length and end mark" in rest
        assert "the receiver stored them all" in sent.stderr
    if "--sha256" in flags:
        assert f"sha256 {sha(big_data)}" in rest
        assert f"sha256 {sha(big_data)}" in sent.stderr
        if "--raw" not in flags:
            assert "verified by the receiver" in sent.stderr


def test_sender_digest_is_checked_without_recv_flag(tmp_path: Path, receiver, small_file: str,
                                                   small_data: bytes) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    sent = _run("send", small_file, str(port), "--sha256")
    rest = _finish(recv)
    assert sent.returncode == 0 and recv.returncode == 0, (sent.stderr, rest)
    assert f"sha256 {sha(small_data)} verified by the receiver" in sent.stderr
    assert f"sha256 {sha(small_data)} (matches the sender's)" in rest
    assert out.read_bytes() == small_data


@pytest.mark.parametrize("digest", [False, True])
def test_fifo_source_is_sent_to_its_end(tmp_path: Path, receiver, small_data: bytes,
                                        digest: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "got.bin"
    flags = ["--sha256"] if digest else []
    recv, port = receiver("-o", str(out))
    send = _start("send", str(fifo), str(port), *flags)
    try:
        with open(fifo, "wb") as w:  # opens once send opened its end
            w.write(small_data)
        rest_send = _finish(send)
    finally:
        send.kill()
    rest = _finish(recv)
    assert send.returncode == 0, rest_send
    assert recv.returncode == 0, rest
    assert f"sent {len(small_data)} bytes" in rest_send
    assert "length unknown until the end" in rest
    assert sha(out.read_bytes()) == sha(small_data)
    if digest:
        assert f"sha256 {sha(small_data)} verified by the receiver" in rest_send


def test_stdin_pipe_and_proc_file(tmp_path: Path, receiver, small_data: bytes) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    sent = _run("send", "-", str(port), input=small_data.hex())
    rest = _finish(recv)
    assert sent.returncode == 0 and recv.returncode == 0, (sent.stderr, rest)
    assert out.read_bytes() == small_data.hex().encode()

    out2 = tmp_path / "version.txt"
    recv, port = receiver("-o", str(out2))
    sent = _run("send", "/proc/version", str(port))
    rest = _finish(recv)
    assert sent.returncode == 0 and recv.returncode == 0, (sent.stderr, rest)
    with open("/proc/version", "rb") as f:
        want = f.read()
    assert want and out2.read_bytes() == want
    assert f"sent {len(want)} bytes" in sent.stderr


def _to_stdout(receiver, send_args: list[str], stdin: bytes | None = None) -> tuple[bytes, str]:
    """Run recv -o - and send SEND_ARGS PORT; return (recv's stdout, recv's stderr)."""
    recv, port = receiver("-o", "-")
    send = subprocess.Popen(_cmd("send", *send_args[:1], str(port), *send_args[1:]),
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        if stdin is not None:
            pipe = send.stdin
            assert pipe is not None

            def feed() -> None:
                with pipe:
                    pipe.write(stdin)

            threading.Thread(target=feed, daemon=True).start()
        assert recv.stdout is not None and send.stderr is not None
        data = recv.stdout.buffer.read()  # until recv exits
        send_err = send.stderr.read().decode()
        send.wait(DEADLINE)
    finally:
        send.kill()
        send.wait()
    rest = _finish(recv)
    assert send.returncode == 0 and recv.returncode == 0, (send_err, rest)
    return data, rest


@pytest.mark.parametrize("flags", [[], ["--sha256"]])
def test_recv_to_stdout(receiver, small_file: str, small_data: bytes, flags: list[str]) -> None:
    data, rest = _to_stdout(receiver, [small_file, *flags])
    assert sha(data) == sha(small_data)
    assert "written to standard output" in rest


def test_stream_to_stdout_holds_back_the_end_mark(receiver, small_data: bytes) -> None:
    data, rest = _to_stdout(receiver, ["-"], stdin=small_data)
    assert sha(data) == sha(small_data)
    assert "length unknown until the end" in rest


# ------------------------------------------------------------------ cut short, refused


def test_sender_killed_midway_known_length(tmp_path: Path, receiver) -> None:
    size, part = 4 * 1024 * 1024, 1024 * 1024
    data = os.urandom(part)
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    head = cli_framing.pack_header(size, sha256=False)
    code = (
        "import os, signal, socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}))\n"
        "s.sendall(bytes.fromhex(sys.argv[1]) + sys.stdin.buffer.read())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, head.hex()], input=data,
                            timeout=DEADLINE)
    assert killed.returncode == -signal.SIGKILL
    rest = _finish(recv)
    assert recv.returncode == 1, rest
    assert f"the sender stopped after {part} of {size} bytes" in rest
    assert f"kept the {part} bytes received in {out}.partial" in rest
    assert not out.exists()
    assert Path(f"{out}.partial").read_bytes() == data


def test_send_killed_midway_stream(tmp_path: Path, receiver) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "got.bin"
    data = os.urandom(1024 * 1024)
    recv, port = receiver("-o", str(out))
    send = _start("send", str(fifo), str(port))
    try:
        with open(fifo, "wb") as w:
            w.write(data)
            w.flush()
            _wait_for_size(Path(f"{out}.partial"), len(data), recv)
            send.kill()  # SIGKILL: no end mark
            send.wait()
    finally:
        send.kill()
        send.wait()
    rest = _finish(recv)
    assert recv.returncode == 1, rest
    assert f"the data ended after {len(data)} bytes without an end mark" in rest
    assert f"kept the {len(data)} bytes received in {out}.partial" in rest
    assert not out.exists()
    assert Path(f"{out}.partial").read_bytes() == data


def test_ctrl_c_on_send_reports_what_went_out(tmp_path: Path, receiver) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "got.bin"
    data = os.urandom(300_000)
    recv, port = receiver("-o", str(out))
    send = _start("send", str(fifo), str(port))
    try:
        with open(fifo, "wb") as w:
            w.write(data)
            w.flush()
            _wait_for_size(Path(f"{out}.partial"), len(data), recv)
            send.send_signal(signal.SIGINT)  # send is waiting for more from the FIFO
            send_rest = _finish(send)
    finally:
        send.kill()
        send.wait()
    rest = _finish(recv)
    assert send.returncode == 130, send_rest
    assert f"interrupted after {len(data)} bytes" in send_rest
    assert recv.returncode == 1, rest
    assert Path(f"{out}.partial").read_bytes() == data


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_transfer_keeps_the_partial_file(tmp_path: Path, receiver,
                                                       signum: int) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    data = os.urandom(100_000)
    fake = FakeSender(port)
    try:
        fake.send(cli_framing.pack_header(10 * len(data), sha256=False) + data)
        _wait_for_size(Path(f"{out}.partial"), len(data), recv)
        recv.send_signal(signum)
        rest = _finish(recv)
    finally:
        fake.close()
    assert recv.returncode == 128 + signum, rest
    assert f"interrupted after {len(data)} bytes; kept the {len(data)} bytes received in " \
           f"{out}.partial" in rest
    assert "Traceback" not in rest
    assert Path(f"{out}.partial").read_bytes() == data
    assert not out.exists()


def test_ctrl_c_while_waiting_removes_the_empty_partial_file(tmp_path: Path, receiver) -> None:
    out = tmp_path / "got.bin"
    recv, _ = receiver("-o", str(out))
    assert Path(f"{out}.partial").exists()
    recv.send_signal(signal.SIGINT)
    rest = _finish(recv)
    assert recv.returncode == 130, rest
    assert f"interrupted while waiting for a sender; nothing was written (removed {out}.partial)" \
           in rest
    assert not Path(f"{out}.partial").exists() and not out.exists()


@pytest.mark.parametrize("complete", [True, False])
def test_force_keeps_the_old_file_until_the_new_one_is_complete(
    tmp_path: Path, receiver, complete: bool
) -> None:
    out = tmp_path / "got.bin"
    out.write_bytes(b"old contents")
    new = os.urandom(200_000)
    recv, port = receiver("-o", str(out), "--force")
    fake = FakeSender(port)
    try:
        fake.send(cli_framing.pack_header(len(new), sha256=False) + new[:100_000])
        _wait_for_size(Path(f"{out}.partial"), 100_000, recv)
        assert out.read_bytes() == b"old contents"  # still there, mid-transfer
        if complete:
            fake.send(new[100_000:] + cli_framing.pack_end(len(new), None))
            assert fake.reply() == f"ok {len(new)}\n".encode()
    finally:
        fake.close()
    rest = _finish(recv)
    if complete:
        assert recv.returncode == 0, rest
        assert out.read_bytes() == new
        assert not Path(f"{out}.partial").exists()
    else:
        assert recv.returncode == 1, rest
        assert out.read_bytes() == b"old contents"
        assert Path(f"{out}.partial").read_bytes() == new[:100_000]


def test_digest_mismatch_is_refused(tmp_path: Path, receiver) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    data = b"the data" * 1000
    fake = FakeSender(port)
    try:
        fake.send(cli_framing.pack_header(len(data), sha256=True) + data
                  + cli_framing.pack_end(len(data), hashlib.sha256(b"other").digest()))
        reply = fake.reply()
    finally:
        fake.close()
    rest = _finish(recv)
    assert reply.startswith(b"error sha256 mismatch"), reply
    assert recv.returncode == 1, rest
    assert "sha256 mismatch" in rest and f"kept the {len(data)} bytes" in rest
    assert not out.exists()
    assert Path(f"{out}.partial").read_bytes() == data


def test_unframed_sender_is_told_to_use_raw(tmp_path: Path, receiver) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    fake = FakeSender(port)
    try:
        fake.send(b"plain text from netcat\n" * 10)
        reply = fake.reply()
    finally:
        fake.close()
    rest = _finish(recv)
    assert reply.startswith(b"error not a zerocopy stream")
    assert recv.returncode == 1, rest
    assert "run recv with --raw" in rest and "nothing was written" in rest
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_framed_send_to_a_raw_recv(tmp_path: Path, receiver, small_file: str,
                                   small_data: bytes) -> None:
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out), "--raw")
    sent = _run("send", small_file, str(port))
    rest = _finish(recv)
    assert recv.returncode == 0, rest  # --raw takes what comes, and says what it saw
    assert "the sender did not use --raw" in rest
    _one_clear_line(sent, "use --raw")
    got = out.read_bytes()
    assert got[16:-48] == small_data
    assert cli_framing.unpack_header(got[:16]) == cli_framing.Header(len(small_data), False)


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1)")
def test_recv_on_every_ipv6_interface_takes_ipv4_too(tmp_path: Path, small_file: str,
                                                     small_data: bytes) -> None:
    out = tmp_path / "got.bin"
    recv = _start("recv", "[::]:0", "-o", str(out))
    try:
        port = _line(recv, r"listening on \[::\]:(\d+)").group(1)
        sent = _run("send", small_file, f"127.0.0.1:{port}")
        rest = _finish(recv)
    finally:
        recv.kill()
        recv.wait()
    assert sent.returncode == 0 and recv.returncode == 0, (sent.stderr, rest)
    assert out.read_bytes() == small_data


def test_recv_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "exists"
    out.write_bytes(b"precious")
    _one_clear_line(_run("recv", "0", "-o", str(out)), "use --force")
    assert out.read_bytes() == b"precious"
    leftover = tmp_path / "new.partial"
    leftover.write_bytes(b"earlier")
    _one_clear_line(_run("recv", "0", "-o", str(tmp_path / "new")), "left by an earlier transfer")
    assert leftover.read_bytes() == b"earlier"
    _one_clear_line(_run("recv", "0", "-o", str(tmp_path)), "is a directory")


def test_recv_never_replaces_a_device_or_fifo(tmp_path: Path) -> None:
    """Regression: 'exists (use --force ...)' for -o /dev/null, and then --force put a
    regular file with the data in the place of the device.  (A FIFO stands in for it.)"""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for extra in ([], ["--force"]):
        result = _run("recv", "0", "-o", str(fifo), "--timeout", "1", *extra)
        _one_clear_line(result, "is not a regular file")
        assert f"-o - > {fifo}" in result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not Path(f"{fifo}.partial").exists()


def test_force_never_writes_through_a_symlink_at_the_partial_name(
    tmp_path: Path, receiver
) -> None:
    """Regression: with --force, FILE.partial was opened with O_TRUNC and followed a
    symlink planted under that name: the data went into the file it pointed to, and FILE
    became that symlink."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    out = tmp_path / "got.bin"
    os.symlink(victim, f"{out}.partial")
    data = os.urandom(100_000)
    recv, port = receiver("-o", str(out), "--force")
    fake = FakeSender(port)
    try:
        fake.send(cli_framing.pack_header(len(data), sha256=False) + data
                  + cli_framing.pack_end(len(data), None))
        assert fake.reply() == f"ok {len(data)}\n".encode()
    finally:
        fake.close()
    rest = _finish(recv)
    assert recv.returncode == 0, rest
    assert victim.read_bytes() == b"not yours"
    assert not out.is_symlink() and out.read_bytes() == data
    assert not os.path.lexists(f"{out}.partial")


def test_announced_digest_missing_from_the_end_mark_is_refused(tmp_path: Path, receiver) -> None:
    """Regression: a header that announced a SHA-256 and an end mark without one were
    accepted, and recv printed 'sha256 checked' and '(matches the sender's)'."""
    out = tmp_path / "got.bin"
    recv, port = receiver("-o", str(out))
    data = b"the data" * 1000
    fake = FakeSender(port)
    try:
        fake.send(cli_framing.pack_header(len(data), sha256=True) + data
                  + cli_framing.pack_end(len(data), None))
        reply = fake.reply()
    finally:
        fake.close()
    rest = _finish(recv)
    assert reply.startswith(b"error the header announced a SHA-256"), reply
    assert recv.returncode == 1, rest
    assert "matches" not in rest and not out.exists()
    assert Path(f"{out}.partial").read_bytes() == data


def test_receiver_failure_is_told_to_the_sender(tmp_path: Path, receiver, big_file: str) -> None:
    """Regression: a receiver whose disk filled up closed without a word; the sender said
    'Transport endpoint is not connected'.  (A file size limit stands in for the full disk.)"""
    out = tmp_path / "got.bin"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    recv, port = receiver("-o", str(out), preexec_fn=small_files)
    result = _run("send", big_file, str(port))
    rest = _finish(recv)
    assert recv.returncode == 1, rest
    assert "File too large" in rest
    _one_clear_line(result, "the receiver")
    assert "File too large" in result.stderr


def test_recv_address_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = _run("recv", str(port), "-o", str(tmp_path / "o"))
    assert "listening on" not in result.stderr
    _one_clear_line(result, "in use")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_send_errors(tmp_path: Path, small_file: str) -> None:
    _one_clear_line(_run("send", small_file, f"127.0.0.1:{closed_port()}"), "refused")
    _one_clear_line(_run("send", str(tmp_path / "missing"), "127.0.0.1:9"), "cannot open")
    result = _run("send", str(tmp_path), "127.0.0.1:9")
    _one_clear_line(result, "is a directory")
    assert "| zerocopy send - HOST:PORT" in result.stderr


# ------------------------------------------------------------------ send against other peers


def _listener() -> socket.socket:
    lst = socket.create_server(("127.0.0.1", 0))
    lst.settimeout(DEADLINE)
    return lst


def test_raw_send_succeeds_when_the_listener_never_closes(big_file: str,
                                                          big_data: bytes) -> None:
    lst = _listener()
    got = bytearray()
    done = threading.Event()
    release = threading.Event()

    def serve() -> None:
        c, _ = lst.accept()
        with c:
            c.settimeout(DEADLINE)
            while chunk := c.recv(65536):
                got.extend(chunk)
            done.set()
            release.wait(DEADLINE)  # keeps the connection open until send has exited

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        result = _run("send", big_file, str(lst.getsockname()[1]), "--raw")
    finally:
        release.set()
        t.join(DEADLINE)
        lst.close()
    assert result.returncode == 0, result.stderr
    assert done.is_set() and sha(bytes(got)) == sha(big_data)
    assert f"sent {len(big_data)} bytes" in result.stderr


def test_framed_send_to_a_silent_listener_suggests_raw(small_file: str) -> None:
    lst = _listener()
    release = threading.Event()

    def serve() -> None:
        c, _ = lst.accept()
        with c:
            c.settimeout(DEADLINE)
            while c.recv(65536):
                pass
            release.wait(DEADLINE)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        result = _run("send", small_file, str(lst.getsockname()[1]), "--timeout", "1")
    finally:
        release.set()
        t.join(DEADLINE)
        lst.close()
    _one_clear_line(result, "use --raw")


def test_send_reports_the_receivers_refusal(small_file: str) -> None:
    lst = _listener()

    def serve() -> None:
        c, _ = lst.accept()
        with c:
            c.settimeout(DEADLINE)
            while c.recv(65536):
                pass
            c.sendall(cli_framing.reply_error("No space left on device"))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        result = _run("send", small_file, str(lst.getsockname()[1]))
    finally:
        t.join(DEADLINE)
        lst.close()
    _one_clear_line(result, "the receiver refused the data: No space left on device")


def test_send_sha256_of_a_growing_file_covers_exactly_the_bytes_sent(
    tmp_path: Path, big_data: bytes
) -> None:
    path = tmp_path / "log"
    path.write_bytes(big_data)
    lst = _listener()
    seen: dict[str, object] = {}

    def serve() -> None:
        c, _ = lst.accept()
        with c:
            c.settimeout(DEADLINE)
            header = cli_framing.unpack_header(recv_exactly(c, 16))
            with open(path, "ab") as f:  # the file grows after send fixed its length
                f.write(b"appended later" * 1000)
            assert header.length is not None
            body = recv_exactly(c, header.length)
            end = cli_framing.unpack_end(recv_exactly(c, 48))
            seen.update(header=header, body=body, end=end)
            c.sendall(cli_framing.reply_ok(len(body), hashlib.sha256(body).digest()))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        result = _run("send", str(path), str(lst.getsockname()[1]), "--sha256")
    finally:
        t.join(DEADLINE)
        lst.close()
    assert result.returncode == 0, result.stderr
    assert seen["header"] == cli_framing.Header(len(big_data), True)
    assert seen["body"] == big_data
    assert seen["end"] == cli_framing.End(len(big_data), hashlib.sha256(big_data).digest())
    assert f"sha256 {sha(big_data)} verified by the receiver" in result.stderr


# ------------------------------------------------------------------ progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_is_cleared_and_a_message_starts_a_new_line() -> None:
    term = _Terminal()
    con = cli.Console("send", term)
    progress = cli.Progress(con, 4 * cli.MiB, lambda: cli.MiB, clock=lambda: 2.0)
    progress.start = 0.0
    progress.draw()
    con.say("done")
    text = term.getvalue()
    assert text.startswith("\r")
    line, rest = text[1:].split("\x1b[K", 1)
    assert "1.0 MiB of 4.0 MiB  25%" in line and "0.5 MiB/s" in line
    assert rest == "\nzerocopy send: done\n"
    con.say("again")  # no progress line on screen: no blank line
    assert term.getvalue().endswith("zerocopy send: done\nzerocopy send: again\n")


def test_progress_is_redrawn_by_time_not_by_progress() -> None:
    term = _Terminal()
    con = cli.Console("recv", term)
    calls = []

    def count() -> int:
        calls.append(1)
        return 42  # a stalled transfer: the count never moves

    progress = cli.Progress(con, None, count)
    progress.interval = 0.01
    with progress:
        end = time.monotonic() + DEADLINE
        while term.getvalue().count("\r") < 3 and time.monotonic() < end:
            time.sleep(0.01)
    assert term.getvalue().count("\x1b[K") >= 3
    n = len(calls)
    time.sleep(0.05)
    assert len(calls) == n  # the thread stopped with the block


def test_progress_is_silent_off_a_terminal() -> None:
    err = io.StringIO()
    con = cli.Console("recv", err)
    with cli.Progress(con, 10, lambda: 5) as p:
        assert not p.enabled
    assert err.getvalue() == ""


def test_send_progress_on_a_terminal(small_file: str, small_data: bytes) -> None:
    import pty

    lst = _listener()
    got = bytearray()

    def serve() -> None:
        c, _ = lst.accept()
        with c:
            c.settimeout(DEADLINE)
            while chunk := c.recv(65536):
                got.extend(chunk)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    master, slave = pty.openpty()
    proc = subprocess.Popen(_cmd("send", small_file, str(lst.getsockname()[1]), "--raw"),
                            stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT)
    os.close(slave)
    out = b""
    try:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(DEADLINE)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        t.join(DEADLINE)
        lst.close()
    assert proc.returncode == 0, out
    assert bytes(got) == small_data
    text = out.decode()
    final = r"\r +0\.3 MiB of 0\.3 MiB 100%[^\r\n]*\x1b\[K\r?\nzerocopy send: sent"
    assert re.search(final, text), text


# ------------------------------------------------------------------ proxy


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
        rest = _finish(proxy)
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
        _finish(proxy)
    finally:
        proxy.kill()
        proxy.wait()
        lst.close()
    assert proxy.returncode == 0


def test_send_command_failure_counts_the_current_chunk(tmp_path: Path) -> None:
    """Regression: send's "failed after N bytes" left out the part of the chunk being sent."""
    size = 7 * 1024 * 1024  # one chunk, far more than the buffers hold
    assert size < CHUNK
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
        rc = cli.main(["send", "--raw", "--timeout", "10", str(path),
                       f"127.0.0.1:{ls.getsockname()[1]}"], stderr=err)
        got = rx.value(DEADLINE)
    finally:
        ls.close()
    text = err.getvalue()
    assert rc == 1, text
    m = re.search(r"after (\d+) bytes", text)
    assert m, text
    reported = int(m.group(1))
    assert got == want
    assert want <= reported <= size, f"reported {reported}, the receiver got {want}: {text}"


# ------------------------------------------------------------------ serve


def _serve(*args: str, cwd: Path | str = ROOT, **kw: object) -> tuple[subprocess.Popen[str], int]:
    """Start `serve ... --port 0`; return it and the port from the URL line it prints."""
    kw.setdefault("stdout", subprocess.PIPE)
    proc = subprocess.Popen(_cmd("serve", "--port", "0", *args), stderr=subprocess.PIPE,
                            text=True, cwd=cwd, **kw)  # type: ignore[call-overload]
    m = _line(proc, r"serving (.+) at http://(\S+):(\d+)/")
    return proc, int(m.group(3))


def _http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as f:
            return f.status, f.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_serve_help() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["serve", "--help"], prog="python -m zerocopy") == 0
    text = out.getvalue()
    assert text.startswith("usage: python -m zerocopy serve ")
    for option in ("--port", "--bind", "--workers", "--log", "--no-listing",
                   "--follow-symlinks", "--grace", "example"):
        assert option in text, option
    top = io.StringIO()
    with contextlib.redirect_stdout(top):
        cli.main(["--help"])
    assert re.search(r"^\s+serve\s", top.getvalue(), re.M)


@pytest.mark.parametrize(
    "args, words",
    [
        (["serve", "--port", "http"], "port must be a number 0-65535, not 'http'"),
        (["serve", "--port", "70000"], "port must be 0-65535, got 70000"),
        (["serve", "--port", "-1"], "port must be a number 0-65535"),
        (["serve", "--workers", "0"], "must be 1-1024, got 0"),
        (["serve", "--workers", "two"], "expected a whole number"),
        (["serve", "--grace", "0"], "more than 0 seconds"),
        (["serve", "--max-connections", "0"], "must be 1-"),
        (["serve", "a", "b"], "unrecognized arguments: b"),
    ],
)
def test_serve_usage_errors(args: list[str], words: str) -> None:
    err = io.StringIO()
    assert cli.main(args, stderr=err) == 2
    text = err.getvalue()
    assert text.startswith("usage: zerocopy"), text
    assert words in text and "Traceback" not in text, text


def test_serve_defaults_to_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hi there\n")
    (tmp_path / "sub").mkdir()
    proc, port = _serve(cwd=tmp_path)
    try:
        assert _http_get(port, "/hello.txt") == (200, b"hi there\n")
        status, listing = _http_get(port, "/")
        assert status == 200 and b'href="hello.txt"' in listing and b'href="sub/"' in listing
        assert _http_get(port, "/../etc/passwd")[0] == 400
        proc.send_signal(signal.SIGINT)
        rest = _finish(proc)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, rest
    assert "stopping (SIGINT)" in rest and "Traceback" not in rest
    assert "stopped (SIGINT): 3 requests on 3 connections" in rest, rest


def test_serve_prints_the_url_it_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen(_cmd("serve", str(tmp_path), "--port", "0"),
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        m = _line(proc, r"^zerocopy serve: serving (.+) at http://127\.0\.0\.1:(\d+)/ "
                        r"\(Ctrl-C to stop\)$")
        assert m.group(1) == str(tmp_path)
        proc.send_signal(signal.SIGTERM)
        _finish(proc)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0


def test_serve_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        result = _run("serve", "--port", str(busy.getsockname()[1]))
    _one_clear_line(result, "cannot listen on 127.0.0.1:")
    assert "in use" in result.stderr


@pytest.mark.parametrize("what, words", [("missing", "No such file or directory"),
                                         ("file", "Not a directory")])
def test_serve_bad_directory(tmp_path: Path, what: str, words: str) -> None:
    (tmp_path / "file").write_bytes(b"x")
    result = _run("serve", str(tmp_path / what), "--port", "0")
    _one_clear_line(result, words)
    assert f"cannot serve '{tmp_path / what}'" in result.stderr


def test_serve_bad_bind_address() -> None:
    result = _run("serve", "--bind", LONG_LABEL, "--port", "0")
    _one_clear_line(result, "bad host name")
    result = _run("serve", "--bind", "192.0.2.1", "--port", "0")  # not an address of ours
    _one_clear_line(result, "cannot listen on 192.0.2.1:0")


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1)")
def test_serve_ipv6_wildcard_takes_both(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"both\n")
    proc = subprocess.Popen(_cmd("serve", str(tmp_path), "--bind", "::", "--port", "0"),
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = int(_line(proc, r"at http://\[::\]:(\d+)/").group(1))
        assert _http_get(port, "/f", "::1") == (200, b"both\n")
        assert _http_get(port, "/f", "127.0.0.1") == (200, b"both\n")
        proc.send_signal(signal.SIGTERM)
        _finish(proc)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0


def test_serve_options_log_listing_workers(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f.txt").write_bytes(b"file\n")
    os.symlink(str(tmp_path / "f.txt"), tmp_path / "d" / "link")
    root = tmp_path / "d"
    proc, port = _serve(str(root), "--log", "--no-listing", "--workers", "3")
    try:
        assert _http_get(port, "/")[0] == 403  # no listing
        assert _http_get(port, "/link")[0] == 403  # leaves the root
        assert _http_get(port, "/nothing")[0] == 404
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=DEADLINE)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, rest
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^]]+\] "GET / HTTP/1\.1" 403 \d+', lines[0]), lines
    assert '"GET /nothing HTTP/1.1" 404' in lines[2]
    proc, port = _serve(str(root), "--follow-symlinks")
    try:
        assert _http_get(port, "/link") == (200, b"file\n")
        proc.send_signal(signal.SIGTERM)
        _finish(proc)
    finally:
        proc.kill()
        proc.wait()


def test_serve_stops_gracefully_with_a_response_in_flight(tmp_path: Path) -> None:
    data = os.urandom(16 * 1024 * 1024)
    (tmp_path / "big").write_bytes(data)
    proc, port = _serve(str(tmp_path), "--grace", "20")
    try:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.settimeout(DEADLINE)
        c.connect(("127.0.0.1", port))
        with c:
            c.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            got = c.recv(65536)  # started; the rest waits for us
            proc.send_signal(signal.SIGTERM)
            _line(proc, r"stopping \(SIGTERM\): letting responses finish for up to 20 s")
            while chunk := c.recv(1 << 20):
                got += chunk
        rest = _finish(proc)
    finally:
        proc.kill()
        proc.wait()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and sha(body) == sha(data)
    assert proc.returncode == 0, rest
    assert "stopped (SIGTERM): 1 requests on 1 connections, 16.0 MiB sent" in rest, rest


def test_serve_second_signal_stops_at_once(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(bytes(16 * 1024 * 1024))
    proc, port = _serve(str(tmp_path), "--grace", "600")
    try:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.settimeout(DEADLINE)
        c.connect(("127.0.0.1", port))
        with c:
            c.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            got = len(c.recv(65536))
            proc.send_signal(signal.SIGINT)
            _line(proc, r"stopping \(SIGINT\)")
            proc.send_signal(signal.SIGINT)  # a stalled reader: do not wait 600 s
            rest = _finish(proc)
            try:
                while chunk := c.recv(1 << 20):
                    got += len(chunk)
            except ConnectionResetError:
                pass
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, rest
    assert got < 16 * 1024 * 1024
    assert "stopped (SIGINT)" in rest


def test_proxy_refuses_the_excess_at_once_and_says_so(echo) -> None:
    """Issue 8.3: past its slots the proxy answers new clients at once (a reset), counted
    and logged with -v, instead of leaving them in the backlog."""
    proxy = _start("proxy", "0", f"127.0.0.1:{echo.address[1]}", "-v", "--max-connections", "1")
    try:
        m = _line(proxy, r"listening on 127\.0\.0\.1:(\d+).*up to 1 connections")
        port = int(m.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as first:
            first.sendall(b"held")
            assert recv_exactly(first, 4) == b"held"  # relayed: the one slot is taken
            try:  # answered at once, not left queued: the reset may even beat connect()
                with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as second:
                    second.settimeout(DEADLINE)
                    assert second.recv(1) == b""
            except ConnectionResetError:
                pass
            _line(proxy, r"refused 1 client\(s\)")
        proxy.send_signal(signal.SIGTERM)
        rest = _finish(proxy)
    finally:
        proxy.kill()
        proxy.wait()
    assert "1 refused" in rest, rest


def test_proxy_idle_timeout_ends_a_silent_connection(echo) -> None:
    proxy = _start("proxy", "0", f"127.0.0.1:{echo.address[1]}", "--idle-timeout", "0.3")
    try:
        port = int(_line(proxy, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
            c.sendall(b"hi")
            assert recv_exactly(c, 2) == b"hi"
            c.settimeout(DEADLINE)
            try:
                assert c.recv(1) == b""  # ended by the proxy, well before DEADLINE
            except ConnectionResetError:
                pass
        proxy.send_signal(signal.SIGTERM)
        _finish(proxy)
    finally:
        proxy.kill()
        proxy.wait()


@pytest.mark.parametrize("value", ["-1", "0", "soon"])
def test_proxy_timeout_options_are_checked(value: str) -> None:
    result = _run("proxy", "0", "127.0.0.1:9", "--stall-timeout", value)
    assert result.returncode == 2
    assert "--stall-timeout" in result.stderr


def test_raw_send_success_when_the_last_ack_lands_between_two_probes(monkeypatch) -> None:
    """Regression: wait_delivered read "1 byte unacknowledged" (our FIN), then the ACK
    arrived and the state read CLOSE, and a complete transfer was reported as cut short."""
    from zerocopy import cli_send

    probes = [0]
    acked_at = 1  # the ACK lands right after the first probe

    def unacknowledged(sock: object) -> int:
        probes[0] += 1
        return 0 if probes[0] - 1 >= acked_at else 1

    class Sock:
        def getsockopt(self, level: int, name: int, size: int = 0) -> object:
            if name == socket.SO_ERROR:
                return 0
            probes[0] += 1
            return bytes([7 if probes[0] - 1 >= acked_at else 4])  # TCP_CLOSE / FIN_WAIT1

    monkeypatch.setattr(cli_send, "unacknowledged", unacknowledged)
    cli_send.wait_delivered(Sock(), 5.0)  # type: ignore[arg-type]
