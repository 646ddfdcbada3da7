"""zerocopy.FileServer: the C HTTP engine end to end, from real clients over loopback.

The protocol tests read every response through h11, a strict HTTP/1.1
parser of its own (a test dependency), so a malformed status line, header or
body length fails the test whatever the test looks at; the tests that cut a
response short (truncation, resets) read raw bytes, and the load for the
resource tests uses a quick reader.  curl (skipped when missing) and urllib
are the everyday clients.  Servers run in a thread of the test process (their stats
are read directly), or in a child process where the test measures the
server's file descriptors and RSS.  Every wait is bounded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
from _zcutil import (
    DEADLINE,
    HAVE_IPV6,
    Call,
    fd_count,
    itimer,
    rand_bytes,
    reset,
    wait_until,
)

import zerocopy
from zerocopy import FileServer, ServerStats

SECRET = b"TOP-SECRET-e1b3f0"  # in files outside the root: no response may carry it
BIG_SIZE = 24 * 1024 * 1024
HOST = "127.0.0.1"
Serve = Callable[..., "tuple[FileServer, int]"]  # the serve fixture

# --------------------------------------------------------------------------- the site


@dataclass
class Site:
    top: Path  # holds the root and the secrets beside it
    root: Path
    big: bytes  # root/big.bin
    four: bytes  # root/four.bin, 4 KiB


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A read-only tree: the root, and secrets outside it that symlinks point to."""
    top = tmp_path_factory.mktemp("site")
    root = top / "root"
    root.mkdir()
    (top / "secret.txt").write_bytes(SECRET + b"\n")
    (top / "outside").mkdir()
    (top / "outside" / "secret2.txt").write_bytes(SECRET + b" 2\n")
    big = rand_bytes(BIG_SIZE, 99)
    four = big[:4096]
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(big)
    (root / "four.bin").write_bytes(four)
    (root / "quarter.bin").write_bytes(big[: 256 * 1024])
    (root / "page.html").write_bytes(b"<p>page</p>\n")
    (root / "empty").write_bytes(b"")
    (root / "dir").mkdir()
    (root / "dir" / "index.html").write_bytes(b"<p>index of dir</p>\n")
    (root / "list").mkdir()
    for name in ('<b>&"x".txt', "space name.txt", "\u00fc.txt", "%41.txt"):
        (root / "list" / name).write_bytes(b"listed\n")
    (root / "list" / "sub").mkdir()
    (root / "%2e%2e").mkdir()  # a real directory named like an encoded ".."
    (root / "%2e%2e" / "secret.txt").write_bytes(b"decoy, not the secret\n")
    os.symlink("a.txt", root / "link_in")
    os.symlink("../secret.txt", root / "link_out")
    os.symlink(str(top / "secret.txt"), root / "link_abs")
    os.symlink("../outside", root / "linkdir_out")
    os.symlink("dir", root / "linkdir_in")
    os.mkfifo(root / "fifo")
    return Site(top, root, big, four)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Factory: serve(root, **FileServer options) -> (server, port), serving in a thread."""
    started: list[tuple[FileServer, threading.Thread]] = []

    def start(root: Any, **kw: Any) -> tuple[FileServer, int]:
        address = kw.pop("address", (HOST, 0))
        server = FileServer(root, address, **kw)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return server, int(server.server_address[1])

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(DEADLINE)
        assert not thread.is_alive(), "serve_forever did not return after shutdown()"
        server.close()


@pytest.fixture
def port(site: Site, serve: Serve) -> int:
    """A default server on the site."""
    return serve(site.root)[1]


# --------------------------------------------------------------------------- a strict client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header would fail the test
    body: bytes
    version: str

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


def request(target: str, method: str = "GET", version: str = "HTTP/1.1",
            headers: Sequence[tuple[str, str]] = (("Host", "test"),)) -> bytes:
    """A request head as raw bytes (nothing checked: tests send what they like)."""
    head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n"


class Client:
    """One connection; every response is parsed by h11 (strict, independent of ours).

    The bytes on the wire are the test's own (any target, any header); h11
    is told of a plain request with the same method, so that it knows
    whether a body follows.
    """

    def __init__(self, port: int, host: str = HOST, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(DEADLINE)
        self.sock.connect((host, port))
        self.h11 = h11.Connection(h11.CLIENT)
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        self.eof = not data
        self.h11.receive_data(data)

    def reply(self, method: str = "GET") -> Reply:
        """Parse the next response (to a request with ``method``)."""
        c = self.h11
        if c.our_state is h11.DONE and c.their_state is h11.DONE:
            c.start_next_cycle()
        c.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        c.send(h11.EndOfMessage())
        response: Any = None
        body = bytearray()
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            event = c.next_event()
            if event is h11.NEED_DATA:
                self._recv()
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                names = [k.decode().lower() for k, _ in response.headers]
                dup = {n for n in names if names.count(n) > 1}
                assert not dup, f"repeated headers {dup}"
                return Reply(response.status_code,
                             {k.decode().lower(): v.decode() for k, v in response.headers},
                             bytes(body), response.http_version.decode())
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a response")
        raise AssertionError("no complete response within the deadline")

    def peek(self) -> bytes:
        """Receive what has arrived (at least a byte) and keep it for :meth:`reply`."""
        data = self.sock.recv(65536)
        assert data, "EOF"
        self.h11.receive_data(data)
        return data

    def get(self, target: str, method: str = "GET", **kw: Any) -> Reply:
        self.send(request(target, method, **kw))
        return self.reply(method)

    def closed(self) -> bool:
        """True once the server closes (EOF or reset), waiting up to DEADLINE; no data allowed."""
        end = time.monotonic() + DEADLINE
        self.sock.settimeout(0.2)
        try:
            while time.monotonic() < end:
                try:
                    data = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    return True
                assert not data, f"unexpected bytes {data[:80]!r}"
                return True
            return False
        finally:
            self.sock.settimeout(DEADLINE)


def fetch(port: int, target: str, method: str = "GET", **kw: Any) -> Reply:
    """One request on a connection of its own."""
    with Client(port) as c:
        return c.get(target, method, **kw)


def stats_when(server: FileServer, cond: Callable[[ServerStats], bool]) -> ServerStats:
    """The server's stats once cond holds (the workers count after they answer)."""
    assert wait_until(lambda: cond(server.stats)), server.stats
    return server.stats


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- GET and HEAD


def test_get_small_and_big_files(site: Site, port: int) -> None:
    with Client(port) as c:
        r = c.get("/a.txt")
        assert (r.status, r.body, r.version) == (200, b"hello\n", "1.1")
        assert r.header("content-type").startswith("text/plain")
        assert r.header("content-length") == "6"
        assert r.header("accept-ranges") == "bytes"
        assert re.fullmatch(r'"[0-9a-f]+-6-[0-9a-f]+"', r.header("etag"))
        mtime = os.stat(site.root / "a.txt").st_mtime
        assert r.header("last-modified") == time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(mtime))
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", r.header("date"))
        r = c.get("/big.bin")  # same connection: keep-alive
        assert r.status == 200 and sha(r.body) == sha(site.big)
        assert r.header("content-type") == "application/octet-stream"
        r = c.get("/four.bin")
        assert r.body == site.four
        r = c.get("/empty")
        assert (r.status, r.body, r.header("content-length")) == (200, b"", "0")
        r = c.get("/page.html")
        assert r.header("content-type").startswith("text/html") and r.body == b"<p>page</p>\n"


def test_head_has_the_headers_and_no_body(site: Site, port: int) -> None:
    with Client(port) as c:
        get = c.get("/big.bin")
        head = c.get("/big.bin", "HEAD")
        assert head.status == 200 and head.body == b""
        assert head.header("content-length") == str(BIG_SIZE)
        for name in ("etag", "last-modified", "content-type", "accept-ranges"):
            assert head.header(name) == get.header(name)
        assert c.get("/a.txt").body == b"hello\n"  # the connection is still in step


def test_urllib_big_file_by_sha256(site: Site, port: int) -> None:
    with urllib.request.urlopen(f"http://{HOST}:{port}/big.bin", timeout=DEADLINE) as f:
        assert f.status == 200
        assert sha(f.read()) == sha(site.big)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{HOST}:{port}/missing", timeout=DEADLINE)
    assert info.value.code == 404


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    "spec, first, last",
    [
        ("bytes=0-0", 0, 0),  # first byte
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),  # middle
        ("bytes=-500", BIG_SIZE - 500, BIG_SIZE - 1),  # suffix
        ("bytes=5000000-", 5000000, BIG_SIZE - 1),  # open-ended
        (f"bytes={BIG_SIZE - 10}-{BIG_SIZE + 100}", BIG_SIZE - 10, BIG_SIZE - 1),  # clipped
        (f"bytes=-{BIG_SIZE * 2}", 0, BIG_SIZE - 1),  # a suffix longer than the file
    ],
)
def test_single_ranges(site: Site, port: int, spec: str, first: int, last: int) -> None:
    r = fetch(port, "/big.bin", headers=[("Host", "t"), ("Range", spec)])
    assert r.status == 206
    assert r.header("content-range") == f"bytes {first}-{last}/{BIG_SIZE}"
    assert r.body == site.big[first:last + 1]


@pytest.mark.parametrize("spec", [f"bytes={BIG_SIZE}-", f"bytes={BIG_SIZE + 5}-{BIG_SIZE + 9}",
                                  "bytes=-0"])
def test_unsatisfiable_ranges_are_416(port: int, spec: str) -> None:
    with Client(port) as c:
        r = c.get("/big.bin", headers=[("Host", "t"), ("Range", spec)])
        assert r.status == 416
        assert r.header("content-range") == f"bytes */{BIG_SIZE}"
        assert c.get("/a.txt").body == b"hello\n"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=5-1", "items=0-1", "bytes=x-y"])
def test_other_ranges_get_the_whole_file(site: Site, port: int, spec: str) -> None:
    r = fetch(port, "/four.bin", headers=[("Host", "t"), ("Range", spec)])
    assert (r.status, r.body) == (200, site.four)


def test_if_range(site: Site, port: int) -> None:
    etag = fetch(port, "/four.bin").header("etag")
    ranged = [("Host", "t"), ("Range", "bytes=10-19")]
    r = fetch(port, "/four.bin", headers=[*ranged, ("If-Range", etag)])
    assert (r.status, r.body) == (206, site.four[10:20])
    r = fetch(port, "/four.bin", headers=[*ranged, ("If-Range", '"other"')])
    assert (r.status, r.body) == (200, site.four)


def test_ranges_past_4_gib_of_a_sparse_file(tmp_path: Path,
                                            serve: Serve) -> None:
    size = 5 * 1024**3 + 12345
    marks = {4 * 1024**3 - 3: b"across-4GiB", 4 * 1024**3 + 777: b"past-4GiB", size - 4: b"end!"}
    path = tmp_path / "sparse.bin"
    try:
        with open(path, "wb") as f:
            f.truncate(size)
            for offset, mark in marks.items():
                f.seek(offset)
                f.write(mark)
    except OSError as e:
        pytest.skip(f"no sparse 5 GiB file here: {e}")
    _, port = serve(tmp_path)
    with Client(port) as c:
        head = c.get("/sparse.bin", "HEAD")
        assert head.header("content-length") == str(size)
        for offset, mark in marks.items():
            spec = f"bytes={offset - 2}-{offset + len(mark) + 1}"
            r = c.get("/sparse.bin", headers=[("Host", "t"), ("Range", spec)])
            assert r.status == 206
            assert r.header("content-range") == (
                f"bytes {offset - 2}-{min(offset + len(mark) + 1, size - 1)}/{size}")
            assert r.body == (b"\0\0" + mark + b"\0\0")[: size - offset + 2]
        r = c.get("/sparse.bin", headers=[("Host", "t"), ("Range", "bytes=-4")])
        assert r.body == b"end!"


# --------------------------------------------------------------------------- conditional requests


def test_not_modified(port: int) -> None:
    with Client(port) as c:
        first = c.get("/four.bin")
        etag, modified = first.header("etag"), first.header("last-modified")
        for headers in ([("If-None-Match", etag)], [("If-None-Match", f"W/{etag}")],
                        [("If-None-Match", f'"nope", {etag}')], [("If-None-Match", "*")],
                        [("If-Modified-Since", modified)],
                        [("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")]):
            r = c.get("/four.bin", headers=[("Host", "t"), *headers])
            assert (r.status, r.body) == (304, b""), headers
            assert r.header("etag") == etag
        for headers in ([("If-None-Match", '"nope"')],
                        [("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")],
                        # If-None-Match wins over If-Modified-Since
                        [("If-None-Match", '"nope"'), ("If-Modified-Since", modified)]):
            r = c.get("/four.bin", headers=[("Host", "t"), *headers])
            assert r.status == 200 and len(r.body) == 4096, headers
        head = c.get("/four.bin", "HEAD", headers=[("Host", "t"), ("If-None-Match", etag)])
        assert (head.status, head.body) == (304, b"")


# --------------------------------------------------------------------------- connections


def test_keep_alive_counts_one_connection(site: Site,
                                          serve: Serve) -> None:
    server, port = serve(site.root)
    with Client(port) as c:
        for _ in range(20):
            assert c.get("/a.txt").body == b"hello\n"
    st = stats_when(server, lambda s: s.closed == 1)
    assert (st.accepted, st.requests, st.responses_2xx, st.active) == (1, 20, 20, 0)


def test_pipelined_requests_are_answered_in_order(site: Site, port: int) -> None:
    plan = [("GET", "/a.txt", ()), ("HEAD", "/big.bin", ()), ("GET", "/missing", ()),
            ("GET", "/four.bin", (("Range", "bytes=1-3"),)), ("GET", "/dir", ()),
            ("GET", "/page.html", ())] * 5
    with Client(port) as c:
        c.send(b"".join(request(t, m, headers=[("Host", "t"), *h]) for m, t, h in plan))
        replies = [c.reply(m) for m, _, _ in plan]
    for reply, (method, target, _) in zip(replies, plan):
        want = {"/a.txt": (200, b"hello\n"), "/big.bin": (200, b""), "/missing": (404, None),
                "/four.bin": (206, site.four[1:4]), "/dir": (301, None),
                "/page.html": (200, b"<p>page</p>\n")}[target]
        assert reply.status == want[0], (method, target)
        if want[1] is not None:
            assert reply.body == want[1]
    assert replies[4].header("location") == "/dir/"


def test_http_1_0(port: int) -> None:
    with Client(port) as c:  # no keep-alive unless asked
        c.send(request("/a.txt", version="HTTP/1.0", headers=()))
        r = c.reply()
        assert (r.status, r.body) == (200, b"hello\n")
        assert c.closed()
    with Client(port) as c:
        for _ in range(3):
            c.send(request("/a.txt", version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
            r = c.reply()
            assert r.body == b"hello\n"
            assert r.header("connection").lower() == "keep-alive"


def test_connection_close(port: int) -> None:
    with Client(port) as c:
        c.send(request("/a.txt", headers=[("Host", "t"), ("Connection", "close")])
               + request("/four.bin"))  # pipelined after close: never answered
        r = c.reply()
        assert r.body == b"hello\n" and r.header("connection") == "close"
        assert c.closed()


# --------------------------------------------------------------------------- directories


def test_directory_redirect_stays_on_this_host(site: Site, serve: Serve) -> None:
    """The 301 to a directory's '/' names the resolved path, never the target as sent.

    Echoed back, "//evil.example/../dir" would be a network-path reference: a
    browser would follow it to evil.example (CPython's CVE-2021-28861)."""
    _, port = serve(site.root)
    with Client(port) as c:
        for target, location in [
            ("//evil.example/../dir", "/dir/"),
            ("//evil.example/%2e%2e/dir?q=1", "/dir/?q=1"),
            ("///dir", "/dir/"),
            ("http://test//evil.example/../dir", "/dir/"),
            ("/./list/../dir", "/dir/"),
            ("/list/sub", "/list/sub/"),
            ("/%25%32e%25%32e", "/%252e%252e/"),  # the directory named "%2e%2e"
        ]:
            c.send(request(target))
            r = c.reply()
            assert (r.status, r.header("location")) == (301, location), target
            assert not r.header("location").startswith("//")
    with Client(port) as c:  # and the Location leads to the directory
        assert c.get("/%252e%252e/").status == 200


def test_directories(site: Site, serve: Serve) -> None:
    _, port = serve(site.root)
    with Client(port) as c:
        r = c.get("/dir")
        assert r.status == 301 and r.header("location") == "/dir/"
        assert c.get("/dir/").body == b"<p>index of dir</p>\n"
        assert c.get("/dir/index.html").body == b"<p>index of dir</p>\n"
        listing = c.get("/list/")
        assert listing.status == 200 and listing.header("content-type").startswith("text/html")
        text = listing.body.decode()
        assert "&lt;b&gt;&amp;&quot;x&quot;.txt" in text  # names are escaped
        assert '<b>&"x"' not in text
        assert 'href="%3Cb%3E%26%22x%22.txt"' in text or 'href="%3cb%3e%26%22x%22.txt"' in text
        assert 'href="space%20name.txt"' in text and 'href="%2541.txt"' in text
        assert 'href="sub/"' in text
        assert c.get("/list/%3Cb%3E%26%22x%22.txt").body == b"listed\n"  # its link works
        assert c.get("/list/%C3%BC.txt").body == b"listed\n"
        root_listing = c.get("/").body.decode()
        assert 'href="a.txt"' in root_listing and "secret" not in root_listing
    _, port = serve(site.root, listing=False)
    with Client(port) as c:
        assert c.get("/list/").status == 403
        assert c.get("/dir/").body == b"<p>index of dir</p>\n"  # index.html still served


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "raw, status",
    [
        (request("/a.txt", "POST", headers=[("Host", "t"), ("Content-Length", "0")]), 405),
        (request("/a.txt", "get"), 405),  # methods are case-sensitive
        (request("/a.txt", "DELETE"), 405),
        (request("/a.txt", "OPTIONS"), 405),
        (request("/a.txt", "G@T"), 400),
        (request("/a.txt", version="HTTP/2.0"), 505),
        (request("/a.txt", version="HTTP/1.x"), 400),
        (request("/a.txt", version="http/1.1"), 400),
        (request("/a.txt", version="HTTP/1.1 "), 400),
        (b"GET /a.txt\r\n\r\n", 400),  # HTTP/0.9
        (b"GET  /a.txt HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET /a.txt HTTP/1.1\nHost: t\n\n", 400),  # bare LF
        (request("/a.txt", headers=()), 400),  # HTTP/1.1 without Host
        (request("/a.txt", headers=[("Host", "a"), ("Host", "b")]), 400),
        (request("/a.txt", headers=[("Host", "t"), ("Content-Length", "5")]) + b"hello", 400),
        (request("/a.txt", headers=[("Host", "t"), ("Transfer-Encoding", "chunked")])
         + b"0\r\n\r\n", 400),
        (b"GET /a.txt HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", 400),  # obs-fold
        (b"GET /a.txt HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        (request("/a.txt", headers=[("Host", "t"), ("Expect", "100-continue")]), 417),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40, 400),  # TLS hello
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ],
)
def test_bad_requests(site: Site, serve: Serve, raw: bytes,
                      status: int) -> None:
    server, port = serve(site.root)
    with Client(port) as c:
        c.send(raw)
        r = c.reply()
        assert r.status == status, raw
        assert len(r.body) < 1024 and b"hello" not in r.body
        if status == 405:
            assert r.header("allow") == "GET, HEAD"
        if status != 405:
            assert c.closed()  # what follows a refused head cannot be trusted
    assert fetch(port, "/a.txt").body == b"hello\n"  # the server goes on
    st = stats_when(server, lambda s: s.requests == 2)
    assert (st.responses_2xx, st.responses_4xx + st.responses_5xx) == (1, 1)


def test_oversized_heads(site: Site, serve: Serve) -> None:
    server, port = serve(site.root)
    cases = [
        (request("/" + "a" * 9000), 414),  # request line
        (request("/a.txt", headers=[("Host", "t"), ("X-Big", "v" * 9000)]), 431),  # a header
        (request("/a.txt", headers=[("Host", "t")] + [(f"X-{i}", "v") for i in range(101)]),
         431),  # too many
        (request("/a.txt", headers=[("Host", "t")] + [(f"X-{i}", "v" * 90) for i in range(95)]),
         431),  # in all
    ]
    for raw, status in cases:
        with Client(port) as c:
            try:
                c.send(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before it was all sent: the answer is still there to read
            assert c.reply().status == status
            assert c.closed()
    _, port2 = serve(site.root, max_header_bytes=100_000, max_headers=500)
    with Client(port2) as c:  # raised limits let them through
        for raw, _ in cases[1:]:
            c.send(raw)
            assert c.reply().body == b"hello\n"
    assert stats_when(server, lambda s: s.requests == len(cases)).bad_requests == len(cases)


def test_traversal_corpus_never_leaves_the_root(
        site: Site, serve: Serve) -> None:
    server, port = serve(site.root)
    refused = [
        "/../secret.txt", "/a/../../secret.txt", "/..", "/../", "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt", "/.%2e/secret.txt", "/%2e./secret.txt", "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt", "/%2e%2e%2f%2e%2e%2fsecret.txt", "/dir/..%2f..%2fsecret.txt",
        "/..%5csecret.txt", "/%5c..%5csecret.txt", "/..\\secret.txt", "/dir\\..\\..\\secret.txt",
        "/a.txt%00.html", "/%00", "/%c0%ae%c0%ae/secret.txt", "/%c0%af", "/%e0%80%ae%e0%80%ae/x",
        "/%c1%9c", "/%ff", "/%2", "/%zz", "/a.txt#frag", "*", "secret.txt",
        "http://evil/../secret.txt", "http://h/%2e%2e/secret.txt", "ftp://h/a.txt",
        "//../secret.txt", "/%01", "/%7f",
    ]
    not_found = ["/etc/passwd", "//etc/passwd", "/secret.txt", "/%252e%252e%252fsecret.txt",
                 "/outside/secret2.txt"]
    symlinks_out = ["/link_out", "/link_abs", "/linkdir_out/secret2.txt", "/linkdir_out/"]
    allowed = {"/./a.txt": b"hello\n", "/dir/../a.txt": b"hello\n", "/a.txt?x=/../../": b"hello\n",
               "//a.txt": b"hello\n", "/%61.txt": b"hello\n", "http://h/a.txt": b"hello\n",
               "HTTP://h/dir/../a.txt": b"hello\n", "/link_in": b"hello\n",
               "/linkdir_in/index.html": b"<p>index of dir</p>\n",
               "/%252e%252e/secret.txt": b"decoy, not the secret\n",  # a name, decoded once
               "/%252e%252e/x/%2e%2e/secret.txt": b"decoy, not the secret\n"}
    with Client(port) as keep:
        for target in refused + not_found + symlinks_out + list(allowed):
            with Client(port) as c:
                c.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode("latin-1"))
                r = c.reply()
            assert SECRET not in r.body, target
            if target in allowed:
                assert (r.status, r.body) == (200, allowed[target]), target
            elif target in refused:
                assert r.status == 400, (target, r.status)
            elif target in not_found:
                assert r.status == 404, (target, r.status)
            else:
                assert r.status == 403, (target, r.status)
        # raw bytes no encoding carries
        for raw in (b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /\xc0\xae HTTP/1.1\r\n\r\n",
                    b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /\x7f HTTP/1.1\r\n\r\n"):
            with Client(port) as c:
                c.send(raw)
                assert c.reply().status == 400, raw
        assert keep.get("/a.txt").body == b"hello\n"
    assert server.stats.responses_5xx == 0


def test_symlinks_out_of_the_root_when_allowed(
        site: Site, serve: Serve) -> None:
    _, port = serve(site.root, follow_symlinks=True)
    assert fetch(port, "/link_out").body == SECRET + b"\n"
    assert fetch(port, "/linkdir_out/secret2.txt").body == SECRET + b" 2\n"
    assert fetch(port, "/../secret.txt").status == 400  # '..' is never followed


def test_fifo_is_refused_without_blocking(site: Site, port: int) -> None:
    with Client(port) as c:
        for _ in range(3):  # an open for reading would block the loop: the next one proves not
            assert c.get("/fifo").status == 403
            assert c.get("/a.txt").body == b"hello\n"


# --------------------------------------------------------------------------- hostile clients


def test_slowloris_is_timed_out(site: Site, serve: Serve) -> None:
    server, port = serve(site.root, header_timeout=0.5)
    slow = [Client(port) for _ in range(20)]
    try:
        head = request("/a.txt")
        stop = threading.Event()

        def trickle() -> None:  # one byte per 0.1 s on every connection
            for i in range(len(head)):
                for c in slow:
                    try:
                        c.send(head[i:i + 1])
                    except OSError:
                        pass
                if stop.wait(0.1):
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        assert fetch(port, "/a.txt").body == b"hello\n"  # others are served meanwhile
        for c in slow:
            assert c.closed()
        stop.set()
        thread.join(DEADLINE)
    finally:
        for c in slow:
            c.close()
    assert stats_when(server, lambda s: s.header_timeouts == 20).requests == 1


def test_idle_keep_alive_is_closed(site: Site, serve: Serve) -> None:
    server, port = serve(site.root, keepalive_timeout=0.3)
    with Client(port) as c:
        assert c.get("/a.txt").body == b"hello\n"
        assert c.closed()
    stats_when(server, lambda s: s.idle_timeouts == 1 and s.active == 0)


def test_client_reset_mid_response(site: Site, serve: Serve) -> None:
    server, port = serve(site.root)
    for _ in range(5):
        c = Client(port, rcvbuf=16384)
        c.send(request("/big.bin"))
        assert c.sock.recv(4096)  # the response has started
        reset(c.sock)
    st = stats_when(server, lambda s: s.resets == 5 and s.active == 0)
    assert st.responses_2xx == 5 and st.body_bytes_sent < 5 * BIG_SIZE
    with Client(port) as c:
        assert sha(c.get("/big.bin").body) == sha(site.big)


def test_stalled_reader_hits_send_timeout(site: Site,
                                          serve: Serve) -> None:
    server, port = serve(site.root, send_timeout=0.3)
    with Client(port, rcvbuf=16384) as c:
        c.send(request("/big.bin"))
        stats_when(server, lambda s: s.send_timeouts == 1)
        got = 0
        try:
            while chunk := c.sock.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < BIG_SIZE


def test_thousands_of_idle_connections(site: Site,
                                       serve: Serve) -> None:
    n = 2000
    _raise_own_nofile(4 * n + 256)
    server, port = serve(site.root, max_connections=n + 100)
    clients: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, port), timeout=DEADLINE)
            clients.append(s)
        st = stats_when(server, lambda s: s.accepted == n)
        assert st.active == n
        r = fetch(port, "/four.bin")  # still served at once
        assert r.body == site.four
    finally:
        for s in clients:
            s.close()
    assert stats_when(server, lambda s: s.active == 0).header_timeouts == 0


def test_connection_limit_closes_the_longest_idle(
        site: Site, serve: Serve) -> None:
    server, port = serve(site.root, max_connections=4)
    clients = [Client(port) for _ in range(4)]
    try:
        for c in clients:
            assert c.get("/a.txt").status == 200  # now idle keep-alive connections
        with Client(port) as extra:
            assert extra.get("/a.txt").body == b"hello\n"
        assert clients[0].closed()  # the oldest idle one made room
        assert clients[1].get("/a.txt").body == b"hello\n"
    finally:
        for c in clients:
            c.close()
    assert server.stats.connection_limit >= 1


def test_truncated_while_served(tmp_path: Path,
                                serve: Serve) -> None:
    data = rand_bytes(32 * 1024 * 1024, 5)
    path = tmp_path / "shrinks.bin"
    path.write_bytes(data)
    server, port = serve(tmp_path)
    with Client(port, rcvbuf=65536) as c:
        c.send(request("/shrinks.bin"))
        first = b""
        while b"\r\n\r\n" not in first:
            first += c.sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        new_size = 1024 * 1024
        os.truncate(path, new_size)
        got = bytearray(first[first.index(b"\r\n\r\n") + 4:])
        try:
            while chunk := c.sock.recv(1 << 20):
                got += chunk
        except ConnectionResetError:
            pass
    # The body ends short: never padded, never completed.  Bytes before the
    # new end are the file's; sendfile may already have queued pages past
    # it, which the truncation zeroes in place (zero-copy cannot take them
    # back): those may only be the file's or zeros.
    assert len(got) < len(data)
    assert got[:new_size] == data[: min(new_size, len(got))]
    tail = bytes(got[new_size:])
    assert all(b == 0 or b == d for b, d in zip(tail[:4096], data[new_size:new_size + 4096]))
    stats_when(server, lambda s: s.truncated == 1 and s.active == 0)


def test_replaced_while_served(tmp_path: Path,
                               serve: Serve) -> None:
    old, new = rand_bytes(16 * 1024 * 1024, 6), rand_bytes(3000, 7)
    path = tmp_path / "f.bin"
    path.write_bytes(old)
    server, port = serve(tmp_path, open_file_cache_valid=0.05)
    with Client(port, rcvbuf=65536) as slow:
        slow.send(request("/f.bin"))
        slow.peek()  # its response has started, from the old file
        tmp = tmp_path / "f.bin.new"
        tmp.write_bytes(new)
        os.replace(tmp, path)  # atomic: the old inode lives on for the response in flight
        assert wait_until(lambda: fetch(port, "/f.bin").body == new)  # revalidated
        fresh = fetch(port, "/f.bin")
        assert fresh.header("content-length") == "3000"
        r = slow.reply()  # the old response, whole and the old file's
        assert r.header("content-length") == str(len(old)) and sha(r.body) == sha(old)
        assert r.header("etag") != fresh.header("etag")
    st = stats_when(server, lambda s: s.active == 0)
    assert st.truncated == 0 and st.cache_stale >= 1


# --------------------------------------------------------------------------- stop, signals, stats


@pytest.mark.timeout(60, method="thread")
def test_shutdown_from_a_signal_handler(site: Site) -> None:
    server = FileServer(site.root, (HOST, 0))
    port = server.server_address[1]
    got: list[bytes] = []

    def client() -> None:
        got.append(fetch(port, "/a.txt").body)

    def handler(signum: int, frame: Any) -> None:
        if got:
            server.shutdown()

    client_thread = threading.Thread(target=client, daemon=True)
    with server, itimer(handler, 0.05, 0.05):
        client_thread.start()
        server.serve_forever()  # in the main thread, stopped by the handler
    client_thread.join(DEADLINE)
    assert got == [b"hello\n"]


@pytest.mark.timeout(60, method="thread")
def test_graceful_shutdown_lets_a_response_finish(site: Site) -> None:
    server = FileServer(site.root, (HOST, 0), workers=2)
    port = server.server_address[1]
    ready, stopping = threading.Event(), threading.Event()

    def client() -> tuple[bytes, Client]:
        with Client(port, rcvbuf=65536) as slow, Client(port) as idle:
            slow.send(request("/big.bin"))
            slow.peek()  # in flight: the rest waits for this reader
            assert idle.get("/a.txt").status == 200  # now idle
            ready.set()
            assert stopping.wait(DEADLINE)
            assert idle.closed()  # idle connections close as the stop begins
            late = Client(port)  # queued in the backlog: never served
            late.send(request("/a.txt"))
            return slow.reply().body, late

    def handler(signum: int, frame: Any) -> None:
        if ready.is_set() and not stopping.is_set():
            server.shutdown(grace=DEADLINE)
            stopping.set()

    with server, itimer(handler, 0.05, 0.05):
        call = Call(client)
        server.serve_forever()  # returns once the response has gone out
    body, late = call.value()
    assert sha(body) == sha(site.big)
    with late:
        assert late.closed()  # the listener closed with it queued: reset, no response


@pytest.mark.timeout(90, method="thread")
def test_signals_during_transfers_never_cut_them_short(site: Site) -> None:
    """sendfile(2) returns EINTR for a signal even on a non-blocking socket: the
    engine must go on with the response, not close the connection (which cut
    bodies short with a clean FIN: a client without Content-Length checking
    takes a short file for whole)."""
    server = FileServer(site.root, (HOST, 0))
    port = server.server_address[1]
    done = threading.Event()
    ticks = [0]

    def client() -> list[bytes]:
        try:
            with Client(port, rcvbuf=64 * 1024) as c:
                return [c.get("/big.bin").body for _ in range(16)]
        finally:
            done.set()

    def handler(signum: int, frame: Any) -> None:
        ticks[0] += 1
        if done.is_set():
            server.shutdown()

    with server, itimer(handler, 0.0002, 0.0002):  # 5 kHz
        call = Call(client)
        server.serve_forever()  # in the main thread: the signals interrupt its syscalls
        st = server.stats
    bodies = call.value()
    assert [sha(b) for b in bodies] == [sha(site.big)] * 16
    assert st.resets == 0 and st.truncated == 0 and st.responses_2xx == 16
    assert ticks[0] > 10


def test_shutdown_from_another_thread_and_serve_again(site: Site) -> None:
    with FileServer(site.root, (HOST, 0), workers=3) as server:
        port = server.server_address[1]
        for _ in range(2):
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            for _ in range(10):
                assert fetch(port, "/a.txt").body == b"hello\n"
            server.shutdown()  # waits for serve_forever to return
            thread.join(DEADLINE)
            assert not thread.is_alive()
        assert server.stats.requests == 20
    server.shutdown()  # closed: nothing happens


def test_shutdown_before_serve_forever(site: Site) -> None:
    with FileServer(site.root, (HOST, 0)) as server:
        server.shutdown()
        server.serve_forever()  # returns at once: the stop was for it


@pytest.mark.timeout(60, method="thread")
def test_a_handler_that_raises_ends_serve_forever(site: Site) -> None:
    server = FileServer(site.root, (HOST, 0), workers=2)
    port = server.server_address[1]
    ready = threading.Event()

    def client() -> Client:
        idle = Client(port)
        assert idle.get("/a.txt").status == 200
        ready.set()
        return idle

    def handler(signum: int, frame: Any) -> None:
        if ready.is_set():
            raise KeyboardInterrupt

    with server:
        call = Call(client)
        with itimer(handler, 0.05, 0.05), pytest.raises(KeyboardInterrupt):
            server.serve_forever()
        with call.value() as idle:
            assert idle.closed()  # every connection closed at once
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()  # still usable
        assert fetch(port, "/a.txt").body == b"hello\n"
    thread.join(DEADLINE)
    assert not thread.is_alive()


def test_close_from_another_thread_while_serving(site: Site) -> None:
    server = FileServer(site.root, (HOST, 0), workers=2)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with Client(port) as c:
        assert c.get("/a.txt").status == 200
        server.close()
        assert c.closed()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    with pytest.raises(ValueError, match="closed"):
        server.serve_forever()
    server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=DEADLINE)


def test_serve_forever_twice_is_an_error(site: Site,
                                         serve: Serve) -> None:
    server, port = serve(site.root)
    fetch(port, "/a.txt")  # it runs
    with pytest.raises(RuntimeError, match="already running"):
        server.serve_forever()


def test_stats_count_what_happened(site: Site,
                                   serve: Serve) -> None:
    server, port = serve(site.root, workers=2)
    assert server.stats == ServerStats(*[0] * len(ServerStats._fields))
    with Client(port) as c:
        for _ in range(3):
            c.get("/four.bin")
        c.get("/missing")
        c.get("/dir")
        c.get("/four.bin", headers=[("Host", "t"), ("If-None-Match", "*")])
        c.get("/big.bin", "HEAD")
    with Client(port) as c:
        c.send(b"BAD\r\n\r\n")
        c.reply()
    st = stats_when(server, lambda s: s.closed == 2)
    assert (st.accepted, st.active, st.requests) == (2, 0, 8)
    assert (st.responses_2xx, st.responses_3xx, st.responses_4xx) == (4, 2, 2)
    assert st.bad_requests == 1
    assert st.body_bytes_sent >= 3 * 4096 and st.bytes_sent > st.body_bytes_sent
    assert st.cache_misses >= 2 and st.cache_hits >= 2


def test_workers_share_the_load(site: Site, serve: Serve) -> None:
    server, port = serve(site.root, workers=4)
    assert server.workers == 4
    clients = [Client(port) for _ in range(40)]
    try:
        for c in clients:
            assert c.get("/four.bin").body == site.four
    finally:
        for c in clients:
            c.close()
    st = stats_when(server, lambda s: s.closed == 40)
    assert st.requests == 40
    names = {t.name for t in threading.enumerate()}
    assert {"zerocopy-http-1", "zerocopy-http-2", "zerocopy-http-3"} <= names


def test_access_log(site: Site, serve: Serve,
                    tmp_path: Path) -> None:
    with open(tmp_path / "access.log", "w") as log:
        server, port = serve(site.root, access_log=log)
        fetch(port, "/a.txt")
        fetch(port, "/missing")
        fetch(port, '/q"uote', "HEAD")
        assert wait_until(lambda: (tmp_path / "access.log").read_text().count("\n") == 3)
    lines = (tmp_path / "access.log").read_text().splitlines()
    clf = r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "%s" %s'
    assert re.fullmatch(clf % ("GET /a.txt HTTP/1.1", "200 6"), lines[0]), lines[0]
    assert re.fullmatch(clf % ("GET /missing HTTP/1.1", r"404 \d+"), lines[1]), lines[1]
    assert re.fullmatch(clf % (r'HEAD /q\\x22uote HTTP/1.1', "404 -"), lines[2]), lines[2]
    assert server.stats.log_errors == 0


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1)")
def test_ipv6(site: Site, serve: Serve) -> None:
    server, port = serve(site.root, address=("::1", 0))
    assert server.server_address[:2] == ("::1", port)
    with Client(port, host="::1") as c:
        assert c.get("/four.bin").body == site.four


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1)")
def test_dual_stack_wildcard(site: Site, serve: Serve) -> None:
    _, port = serve(site.root, address=("::", 0))
    assert fetch(port, "/a.txt").body == b"hello\n"  # IPv4 too
    with Client(port, host="::1") as c:
        assert c.get("/a.txt").body == b"hello\n"


# --------------------------------------------------------------------------- API errors


def test_bad_roots(tmp_path: Path, site: Site) -> None:
    before = fd_count()
    with pytest.raises(FileNotFoundError):
        FileServer(tmp_path / "missing", (HOST, 0))
    with pytest.raises(NotADirectoryError):
        FileServer(site.root / "a.txt", (HOST, 0))
    assert fd_count() == before


@pytest.mark.parametrize(
    "kw, exc, words",
    [
        ({"workers": 0}, ValueError, "workers must be between 1 and"),
        ({"workers": "2"}, TypeError, "cannot be interpreted as an integer"),
        ({"workers": True}, TypeError, "workers must be an integer, not bool"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_header_bytes": 10}, ValueError, "max_header_bytes must be between 64"),
        ({"max_headers": 0}, ValueError, "max_headers"),
        ({"header_timeout": 0}, ValueError, "header_timeout must be > 0"),
        ({"keepalive_timeout": -1}, ValueError, "keepalive_timeout"),
        ({"send_timeout": float("nan")}, ValueError, "send_timeout"),
        ({"send_timeout": "5"}, TypeError, "number of seconds"),
        ({"linger": -0.5}, ValueError, "linger must be >= 0"),
        ({"open_file_cache": -1}, ValueError, "open_file_cache"),
        ({"open_file_cache_valid": -1}, ValueError, "open_file_cache_valid"),
        ({"small_file_max": 2 << 20}, ValueError, "small_file_max"),
        ({"access_log": "log.txt"}, TypeError, "access_log must be"),
        ({"access_log": 999_999}, OSError, "Bad file descriptor"),
        ({"sock": 5}, TypeError, "sock must be a socket.socket"),
        ({"backlog": -1}, ValueError, "backlog"),
    ],
)
def test_bad_options(site: Site, kw: dict[str, Any], exc: type[Exception], words: str) -> None:
    before = fd_count()
    with pytest.raises(exc, match=re.escape(words)):
        FileServer(site.root, (HOST, 0), **kw)
    assert fd_count() == before


def test_address_in_use_leaves_nothing_open(site: Site) -> None:
    with socket.create_server((HOST, 0)) as busy:
        before = fd_count()
        with pytest.raises(OSError) as info:
            FileServer(site.root, busy.getsockname())
        assert info.value.errno == errno.EADDRINUSE
        assert fd_count() == before


def test_a_given_socket_stays_the_callers(site: Site) -> None:
    with socket.create_server((HOST, 0)) as lst:
        assert lst.getblocking()
        with FileServer(site.root, sock=lst) as server:
            assert server.server_address == lst.getsockname()
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            assert fetch(lst.getsockname()[1], "/a.txt").body == b"hello\n"
            server.shutdown()
        thread.join(DEADLINE)
        assert lst.fileno() >= 0 and lst.getblocking()
    with socket.socket() as unbound, pytest.raises(ValueError, match="listening"):
        FileServer(site.root, sock=unbound)


@pytest.mark.timeout(30, method="thread")
def test_a_given_socket_closed_by_its_owner_is_held_until_the_server_closes(
        site: Site) -> None:
    """Regression: the server did not hold a given listening socket, so another thread's
    close() freed its fd number while the C loops accepted on it (the next socket made
    would get the number, and the loops would accept on whatever it was)."""
    lst = socket.create_server((HOST, 0))
    fd, port = lst.fileno(), lst.getsockname()[1]
    server = FileServer(site.root, sock=lst)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        thread.start()
        lst.close()  # the owner closes it while the server runs: deferred
        with socket.socket() as newcomer:
            assert newcomer.fileno() != fd  # the number is not free
        assert os.fstat(fd)  # still the listener
        assert fetch(port, "/a.txt").body == b"hello\n"
    finally:
        server.close()
        thread.join(DEADLINE)
    assert lst.fileno() == -1
    with pytest.raises(OSError) as info:  # the deferred close() came with the server's
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def test_close_is_idempotent_and_repr(site: Site) -> None:
    server = FileServer(site.root, (HOST, 0))
    assert "1 worker" in repr(server)
    server.close()
    server.close()
    assert repr(server) == "<FileServer closed>"
    assert server.stats.requests == 0
    assert zerocopy.FileServer is FileServer


# --------------------------------------------------------------------------- curl


CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run([CURL, "-sS", "--max-time", str(int(DEADLINE)), *args],
                          capture_output=True, timeout=DEADLINE + 5)


@needs_curl
def test_curl(site: Site, port: int, tmp_path: Path) -> None:
    base = f"http://{HOST}:{port}"
    out = tmp_path / "big"
    r = curl("-o", str(out), "-w", "%{http_code}", f"{base}/big.bin")
    assert r.stdout == b"200" and sha(out.read_bytes()) == sha(site.big)
    r = curl("-r", "1000-1999", f"{base}/big.bin")
    assert r.stdout == site.big[1000:2000]
    r = curl("-I", f"{base}/big.bin")
    assert re.search(rb"(?i)^content-length: %d\r$" % BIG_SIZE, r.stdout, re.M), r.stdout
    r = curl("--http1.0", f"{base}/a.txt")
    assert r.stdout == b"hello\n"
    # keep-alive: the second transfer reuses the first one's connection
    r = curl("-w", "[%{num_connects}]", f"{base}/a.txt", f"{base}/four.bin")
    assert r.stdout == b"hello\n[1]" + site.four + b"[0]"
    # conditional: -z sends If-Modified-Since from the file's date
    (tmp_path / "ref").write_bytes(b"")
    os.utime(tmp_path / "ref", (time.time() + 3600, time.time() + 3600))
    r = curl("-w", "%{http_code}", "-z", str(tmp_path / "ref"), f"{base}/four.bin")
    assert r.stdout == b"304"
    r = curl("-w", "%{http_code}", f"{base}/../secret.txt", "--path-as-is")
    assert r.stdout.endswith(b"400") and SECRET not in r.stdout
    r = curl("-w", "%{http_code}", "-o", "/dev/null", f"{base}/list/")
    assert r.stdout == b"200"


# --------------------------------------------------------------------------- the server's resources


_CHILD = r"""
import signal, sys
import zerocopy
server = zerocopy.FileServer(sys.argv[1], ("127.0.0.1", 0), max_connections=int(sys.argv[2]))
signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
print(server.server_address[1], flush=True)
server.serve_forever()
server.close()
"""


@dataclass
class Child:
    proc: subprocess.Popen[str]
    port: int

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def sockets(self) -> int:
        """Its open sockets: the listener and the connections."""
        count = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                count += os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith("socket:")
            except FileNotFoundError:
                pass
        return count


@pytest.fixture
def child(site: Site) -> Iterator[Callable[[int], Child]]:
    """Factory: a FileServer in a child process (max_connections) whose RSS and fds we read."""
    procs: list[subprocess.Popen[str]] = []

    def start(max_connections: int) -> Child:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(site.root),
                                 str(max_connections)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = _readline(proc)
        return Child(proc, int(line))

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(DEADLINE) == 0
        finally:
            proc.kill()
            proc.wait()


def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    assert ready, "the server did not start"
    return proc.stdout.readline()


def _raise_own_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


_RESPONSE_END = re.compile(rb"\r\n\r\n")
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: (\d+)\r\n")


def hammer(port: int, total: int) -> dict[int, int]:
    """``total`` requests: pipelined batches on keep-alive connections, new connections, resets.

    A quick reader, not a strict one (the strict tests are above): it finds
    each response's end from its Content-Length.  Returns the count per status.
    """
    targets = [b"/a.txt", b"/four.bin", b"/quarter.bin", b"/missing", b"/dir", b"/list/"]
    statuses: dict[int, int] = {}
    done = 0
    batch = 0
    while done < total:
        batch += 1
        n = min(50, total - done)
        reqs = []
        for i in range(n):
            target = targets[(batch + i) % len(targets)]
            method = b"HEAD" if i % 7 == 3 else b"GET"
            extra = b"Range: bytes=5-99\r\n" if i % 11 == 5 else b""
            reqs.append(b"%s %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, target, extra))
        with socket.create_connection((HOST, port), timeout=DEADLINE) as s:
            s.sendall(b"".join(reqs))
            if batch % 10 == 0:  # a client that resets with responses on the way
                reset(s)
                done += n
                continue
            buf = b""
            for i in range(n):
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    chunk = s.recv(1 << 20)
                    assert chunk, "EOF in a response head"
                    buf += chunk
                head = buf[: end + 2]
                status = int(head[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                m = _LENGTH.search(head)
                length = 0 if reqs[i].startswith(b"HEAD") or m is None else int(m.group(1))
                while len(buf) < end + 4 + length:
                    chunk = s.recv(1 << 20)
                    assert chunk, "EOF in a response body"
                    buf += chunk
                buf = buf[end + 4 + length:]
        done += n
    return statuses


def test_no_fd_or_memory_growth(child: Callable[[int], Child]) -> None:
    """20k requests (ZC_SERVE_REQUESTS to change it: 100k by hand) leave the server's fds and
    RSS as they were."""
    total = int(os.environ.get("ZC_SERVE_REQUESTS", "20000"))
    server = child(1024)
    hammer(server.port, 2000)  # warm up: the cache, the pools, Python's own
    assert wait_until(lambda: server.sockets() == 1)  # the listener only
    fds, rss = server.fds(), server.rss()
    statuses = hammer(server.port, total)
    assert statuses.get(200, 0) > total // 3 and statuses.get(404, 0) > 0
    assert statuses.get(206, 0) > 0 and statuses.get(301, 0) > 0
    assert wait_until(lambda: server.sockets() == 1)
    grown = server.rss() - rss
    print(f"\n{total} requests: server fds {fds} -> {server.fds()}, "
          f"RSS {rss / 2**20:.1f} MiB -> {server.rss() / 2**20:.1f} MiB")
    assert server.fds() == fds
    assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_rss_per_idle_keep_alive_connection(child: Callable[[int], Child]) -> None:
    """2000 idle keep-alive connections (ZC_SERVE_IDLE to change it) within the 10k-in-64-MiB
    budget; the figure is printed (run with -s).  Each connection makes one request first, so
    it is an idle keep-alive connection, not a fresh one."""
    n = int(os.environ.get("ZC_SERVE_IDLE", "2000"))
    _raise_own_nofile(n + 256)
    server = child(n + 100)
    hammer(server.port, 200)
    base = server.rss()
    clients = []
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, server.port), timeout=DEADLINE)
            clients.append(s)
            s.sendall(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while not data.endswith(b"hello\n"):
                chunk = s.recv(4096)
                assert chunk
                data += chunk
        assert server.sockets() == n + 1
        grown = server.rss() - base
    finally:
        for s in clients:
            s.close()
    print(f"\n{n} idle keep-alive connections: server RSS +{grown / 2**20:.2f} MiB, "
          f"{grown / n:.0f} bytes each")
    assert grown < n * (64 * 2**20 // 10_000), f"{grown / n:.0f} bytes per connection"
