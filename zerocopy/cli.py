# SPDX-License-Identifier: MIT
"""The ``zerocopy`` command (also ``python -m zerocopy``): argparse subcommands.

``main(argv)`` parses the command line and runs one subcommand; it returns
the exit status: 0 on success, 1 on a runtime error (one line on stderr,
never a traceback), 2 on a usage error (the usage and the mistake on
stderr), 130 when interrupted (Ctrl-C), 143 when stopped by SIGTERM (which
the commands handle like Ctrl-C: they say what they did and what became
of a partial file).

A subcommand is one function decorated with :func:`subcommand`: it adds
its arguments to the parser it is given and returns the name of the module
whose ``run(args, console) -> int`` does the work, imported only when the
subcommand runs::

    @subcommand("serve", "serve the files under a directory over HTTP")
    def _serve(parser: argparse.ArgumentParser) -> str:
        parser.add_argument("root", metavar="DIR", help="the directory to serve")
        return "zerocopy.cli_serve"

This module also holds what the commands share: address parsing and name
resolution with errors that say what to type, and :class:`Console`, the
messages and progress line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import IO, Any, NamedTuple, NoReturn

__all__ = [
    "CHUNK",
    "DEFAULT_HOST",
    "CommandError",
    "Console",
    "Progress",
    "UsageError",
    "main",
    "parse_address",
    "resolve",
    "subcommand",
]

DEFAULT_HOST = "127.0.0.1"  # everything binds and connects to loopback unless told otherwise
CHUNK = 8 * 1024 * 1024  # bytes per call between two looks at a transfer (digests, counts)
MiB = 1024 * 1024


class UsageError(Exception):
    """A mistake on the command line: exit status 2, with the subcommand's usage."""


class CommandError(Exception):
    """A runtime failure, told in one line: exit status 1."""


# --------------------------------------------------------------------------- subcommands


class _Subcommand(NamedTuple):
    name: str
    summary: str
    configure: Callable[[argparse.ArgumentParser], str]
    passthrough: bool


_SUBCOMMANDS: dict[str, _Subcommand] = {}


def subcommand(
    name: str, summary: str, *, passthrough: bool = False
) -> Callable[[Callable[[argparse.ArgumentParser], str]], Callable[[argparse.ArgumentParser], str]]:
    """Register ``configure(parser) -> module name`` as subcommand ``name``.

    ``configure`` adds the arguments and returns the module whose
    ``run(args: argparse.Namespace, console: Console) -> int`` runs the
    subcommand.  With ``passthrough=True`` the subcommand parses its own
    arguments: every argument after its name goes unchanged to the module's
    ``main(argv) -> int`` (``configure`` then only describes it).
    """

    def register(
        configure: Callable[[argparse.ArgumentParser], str],
    ) -> Callable[[argparse.ArgumentParser], str]:
        _SUBCOMMANDS[name] = _Subcommand(name, summary, configure, passthrough)
        return configure

    return register


@subcommand("bench", "compare read/write, sendfile and zerocopy side by side",
            passthrough=True)
def _bench(parser: argparse.ArgumentParser) -> str:
    parser.description = ("Run the benchmark; every argument after 'bench' is the "
                          "benchmark's own (see 'bench --help').")
    return "zerocopy.bench"


@subcommand("proxy", "relay TCP connections in the kernel (splice): proxy LISTEN TARGET")
def _proxy(parser: argparse.ArgumentParser) -> str:
    parser.description = ("Relay every TCP connection accepted on LISTEN to TARGET, "
                          "in the kernel (splice), from one thread.  Stop it with Ctrl-C "
                          "or SIGTERM.")
    parser.epilog = "example:\n  zerocopy proxy 8080 example.org:80"
    parser.add_argument("listen", metavar="LISTEN",
                        help=f"[HOST:]PORT to listen on (default host {DEFAULT_HOST}; "
                             "0.0.0.0:PORT or [::]:PORT for every interface)")
    parser.add_argument("target", metavar="TARGET", help="HOST:PORT to connect each client to")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print a one-line summary every second")
    parser.add_argument("--max-connections", type=_positive_int, default=None, metavar="N",
                        help="relay at most N connections at once; more are refused at once "
                             "(default: sized from the open-files limit, raised to its "
                             "hard limit)")
    for name, what, default in (
        ("connect", "connecting to TARGET", 10),
        ("idle", "a connection on which nothing moves", 300),
        ("stall", "a side that stops reading while the other has bytes for it", 60),
    ):
        parser.add_argument(f"--{name}-timeout", type=_timeout, default=float(default),
                            metavar="SECONDS",
                            help=f"end {what} after SECONDS ('none': never; default {default})")
    return "zerocopy.cli_proxy"


def _timeout(text: str) -> float | None:
    if text.strip().lower() in ("none", "off", "inf"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0 (or 'none'): {text!r}")
    return value


@subcommand("send", "send a file to 'zerocopy recv' (or, with --raw, to any TCP listener)")
def _send(parser: argparse.ArgumentParser) -> str:
    parser.description = (
        "Send FILE with sendfile(2).  The data is framed: a 16-byte header announces its "
        "length (or that the length is unknown, for pipes and other streams) and a 48-byte "
        "end mark follows it, so 'zerocopy recv' can tell a complete file from a cut one and "
        "confirm it stored everything.  With --raw, the bytes go alone (for netcat and other "
        "plain listeners) and success means the receiving host acknowledged every byte.")
    parser.epilog = ("examples:\n"
                     "  zerocopy send big.iso 192.0.2.7:9000\n"
                     "  tar -c dir | zerocopy send - 192.0.2.7:9000\n"
                     "  zerocopy send --raw notes.txt 192.0.2.7:9000\n"
                     "      (to a plain listener, e.g. nc -l 9000 > notes.txt)")
    parser.add_argument("file", metavar="FILE",
                        help="the file to send; '-' or a pipe, FIFO or /proc file is sent "
                             "to its end")
    parser.add_argument("address", metavar="HOST:PORT",
                        help=f"where to connect ([HOST:]PORT; default host {DEFAULT_HOST})")
    parser.add_argument("--sha256", action="store_true",
                        help="send the SHA-256 of the bytes sent in the end mark; the receiver "
                             "checks it (with --raw: just print it)")
    parser.add_argument("--raw", action="store_true",
                        help="send the bytes alone, no header or end mark (netcat style)")
    parser.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                        help="give up when the network stalls this long, or the receiver "
                             "does not confirm within it (default 30)")
    return "zerocopy.cli_send"


@subcommand("recv", "receive one file from 'zerocopy send' (or, with --raw, any sender)")
def _recv(parser: argparse.ArgumentParser) -> str:
    parser.description = (
        "Accept one connection and write what it sends to FILE with splice(2).  The data "
        "goes to FILE.partial and is renamed to FILE only once it is complete (the length "
        "and end mark 'zerocopy send' announces, and its SHA-256 when it sent one): a "
        "transfer cut short, refused or interrupted exits non-zero and leaves what arrived in "
        "FILE.partial (removed when nothing did).  An existing FILE stays until the new one "
        "is complete (--force).  With --raw, the sender's close ends the data, so a sender "
        "that stopped early cannot be told from one that finished.")
    parser.epilog = ("examples:\n  zerocopy recv 0.0.0.0:9000 -o big.iso\n"
                     "  zerocopy recv 9000 -o - | tar -x\n"
                     "  zerocopy recv --raw 9000 -o notes.txt\n"
                     "      (from a plain sender, e.g. nc 127.0.0.1 9000 < notes.txt)")
    parser.add_argument("address", metavar="[HOST:]PORT",
                        help=f"where to listen (default host {DEFAULT_HOST}; port 0 picks one; "
                             "0.0.0.0:PORT or [::]:PORT for every interface)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="the file to write ('-' for standard output)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace FILE (and a leftover FILE.partial) if it exists; FILE "
                             "is replaced only when the new one is complete")
    parser.add_argument("--sha256", action="store_true",
                        help="print the SHA-256 of the data received (it is always checked "
                             "when the sender sends one)")
    parser.add_argument("--raw", action="store_true",
                        help="take the bytes as they come until the sender closes (netcat "
                             "style): no completeness check")
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="give up when no sender comes or the network stalls this long "
                             "(default: wait forever)")
    return "zerocopy.cli_recv"


@subcommand("serve", "serve the files under a directory over HTTP (like python -m http.server)")
def _serve(parser: argparse.ArgumentParser) -> str:
    parser.description = (
        "Serve the files under DIR over HTTP/1.1 (GET and HEAD, ranges, conditional requests, "
        "keep-alive) from an epoll loop in C that sends them with sendfile(2).  Nothing "
        "outside DIR is ever served: '..', encoded tricks and symlinks leading out of DIR are "
        "refused.  A directory gets its index.html, else a listing.  Ctrl-C or SIGTERM stops "
        "it: no new connection is served, and responses in flight get --grace seconds to "
        "finish (a second Ctrl-C stops at once).")
    parser.epilog = ("examples:\n"
                     "  zerocopy serve\n"
                     "      (the current directory at http://127.0.0.1:8000/)\n"
                     "  zerocopy serve ~/public --port 9000 --bind 0.0.0.0 --workers 2 --log\n"
                     "  zerocopy serve --bind :: .\n"
                     "      (every interface, IPv6 and IPv4)")
    parser.add_argument("root", metavar="DIR", nargs="?", default=".",
                        help="the directory to serve (default: the current directory)")
    parser.add_argument("-p", "--port", type=_port, default=8000,
                        help="the port to listen on (default 8000; 0 picks a free one)")
    parser.add_argument("-b", "--bind", metavar="ADDR", default=DEFAULT_HOST,
                        help=f"the address to listen on (default {DEFAULT_HOST}; 0.0.0.0 for "
                             "every IPv4 interface, :: for every interface)")
    parser.add_argument("-w", "--workers", type=_bounded_int(1, 1024), default=1, metavar="N",
                        help="event loops, each in a thread of its own (default 1)")
    parser.add_argument("--log", action="store_true",
                        help="write an access log line per request to standard output "
                             "(common log format)")
    parser.add_argument("--no-listing", action="store_true",
                        help="answer 403 for a directory without index.html instead of "
                             "listing it")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="also serve what symlinks point to outside DIR (by default "
                             "they are refused)")
    parser.add_argument("--grace", type=_seconds, default=5.0, metavar="SECONDS",
                        help="how long responses in flight may take to finish once stopped "
                             "(default 5)")
    parser.add_argument("--max-connections", type=_bounded_int(1, 1 << 24), default=1024,
                        metavar="N", help="open connections per worker (default 1024)")
    return "zerocopy.cli_serve"


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # int() takes "²" and "١٢" too
        raise argparse.ArgumentTypeError(f"port must be a number 0-65535, not {text!r}")
    port = int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, got {value}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


# --------------------------------------------------------------------------- main


class _Formatter(argparse.HelpFormatter):
    """Fills each paragraph of a description or epilog; keeps indented lines (examples) as typed."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            if any(line.startswith("  ") for line in para.splitlines()):
                out.append("\n".join(indent + line for line in para.splitlines()))
            else:
                out.append(super()._fill_text(para, width, indent))
        return "\n\n".join(out)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes raise :class:`UsageError` (``main`` prints them)."""

    def error(self, message: str) -> NoReturn:
        raise _ParserUsageError(self, message)


class _ParserUsageError(UsageError):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def _version() -> str:
    from . import __version__

    return __version__


def build_parser(prog: str = "zerocopy") -> argparse.ArgumentParser:
    """The top-level parser, with one subparser per registered subcommand."""
    parser = _Parser(
        prog=prog,
        description="Send files and memory to sockets without copying them through "
                    "user space.",
        epilog=f"'{prog} COMMAND --help' describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"zerocopy {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                     parser_class=_Parser)
    commands.required = True
    for sub in _SUBCOMMANDS.values():
        sub_parser = commands.add_parser(sub.name, help=sub.summary, description=sub.summary,
                                         add_help=not sub.passthrough,
                                         formatter_class=_Formatter)
        module = sub.configure(sub_parser)
        sub_parser.set_defaults(_module=module, _parser=sub_parser)
    return parser


def main(
    argv: Sequence[str] | None = None, *, prog: str | None = None, stderr: IO[str] | None = None
) -> int:
    """Run ``zerocopy ARGV`` (default ``sys.argv[1:]``); return the exit status.

    ``prog`` names the program in usage lines (``zerocopy``, or
    ``python -m zerocopy``).  Messages go to ``stderr`` (default
    ``sys.stderr``); ``--help`` and ``--version`` print to standard output.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    err = stderr if stderr is not None else sys.stderr
    prog = prog or "zerocopy"
    if args and args[0] in _SUBCOMMANDS and _SUBCOMMANDS[args[0]].passthrough:
        return _run_passthrough(args[0], args[1:], err)
    parser = build_parser(prog)
    try:
        ns = parser.parse_args(args)
    except UsageError as e:
        return _usage(getattr(e, "parser", parser), str(e), err)
    except SystemExit as e:  # --help or --version: already printed
        return e.code if isinstance(e.code, int) else 0
    console = Console(ns.command, err)
    terminated: list[int] = []
    try:
        run = importlib.import_module(ns._module).run
        with _sigterm_interrupts(terminated):
            status = int(run(ns, console))
        return 128 + signal.SIGTERM if terminated and status == 130 else status
    except UsageError as e:
        return _usage(ns._parser, str(e), err)
    except CommandError as e:
        return console.error(str(e))
    except OSError as e:  # not foreseen by the command, still one line
        return console.error(error_text(e))
    except KeyboardInterrupt:
        console.say("interrupted")
        return 128 + signal.SIGTERM if terminated else 130


@contextmanager
def signal_handlers(
    handler: Callable[[int, FrameType | None], None], signums: Sequence[int]
) -> Iterator[None]:
    """``handler`` for ``signums`` for the length of the block; the old ones after."""
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _sigterm_interrupts(seen: list[int]) -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so a command stopped either way says what it did.

    (A command may install its own handler inside, as ``proxy`` does.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    with signal_handlers(handler, (signal.SIGTERM,)):
        yield


def _run_passthrough(name: str, argv: list[str], err: IO[str]) -> int:
    module = _SUBCOMMANDS[name].configure(_Parser(prog=name, add_help=False))
    try:
        return int(importlib.import_module(module).main(argv))
    except KeyboardInterrupt:
        Console(name, err).say("interrupted")
        return 130


def _usage(parser: argparse.ArgumentParser, message: str, err: IO[str]) -> int:
    parser.print_usage(err)
    print(f"{parser.prog}: error: {message}", file=err, flush=True)
    return 2


# --------------------------------------------------------------------------- addresses


def parse_address(
    text: str, default_host: str | None = DEFAULT_HOST, *, lowest_port: int = 0
) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` or ``PORT`` -> ``(host, port)``.

    Without a host, ``default_host`` is used (``None``: the host is
    required).  The port must be ``lowest_port``-65535.  Host names are not
    looked up here (see :func:`resolve`).  Raises :class:`UsageError` with a
    message that shows what to type.
    """
    form = "[HOST:]PORT" if default_host else "HOST:PORT"
    text = text.strip()
    host: str
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"missing ']' in {text!r}: write an IPv6 address in brackets, "
                             "e.g. [::1]:9000")
        host, rest = text[1:end], text[end + 1:]
        if not _is_ipv6(host):
            raise UsageError(f"{host!r} is not an IPv6 address: only those go in brackets "
                             "(write HOST:PORT, e.g. example.org:9000)")
        if not rest.startswith(":") or rest == ":":
            raise UsageError(f"missing port in {text!r}: write [{host}]:PORT, "
                             f"e.g. [{host}]:9000")
        port_text = rest[1:]
    elif text.count(":") > 1:
        bare, _, last = text.rpartition(":")
        if _is_ipv6(bare) and last.isdigit():  # also when all of it could be an address
            raise UsageError(f"write an IPv6 address in brackets: [{bare}]:{last}, "
                             f"not {text!r}")
        if _is_ipv6(text):
            raise UsageError(f"missing port in {text!r}: write [{text}]:PORT, "
                             f"e.g. [{text}]:9000")
        raise UsageError(f"bad address {text!r}: write HOST:PORT, or [IPV6]:PORT for an IPv6 "
                         "address, e.g. [::1]:9000")
    elif ":" in text:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise UsageError(f"missing port in {text!r}: write {host or 'HOST'}:PORT, "
                             f"e.g. {host or DEFAULT_HOST}:9000")
    elif text.isdigit() or (text.startswith(("-", "+")) and text[1:].isdigit()):  # a port
        host, port_text = "", text
    else:
        raise UsageError(f"missing port in {text!r}: write {form}, "
                         f"e.g. {text or DEFAULT_HOST}:9000")
    if not host:
        if default_host is None:
            raise UsageError(f"missing host in {text!r}: write HOST:PORT, "
                             f"e.g. {DEFAULT_HOST}:{port_text or 9000}")
        host = default_host
    if not (port_text.isascii() and port_text.isdigit()):  # int() takes "²" and "١٢" too
        raise UsageError(f"port must be a number {lowest_port}-65535, not {port_text!r} "
                         f"(in {text!r})")
    port = int(port_text)
    if not lowest_port <= port <= 65535:
        raise UsageError(f"port must be {lowest_port}-65535, got {port} (in {text!r})")
    return host, port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.partition("%")[0])  # a scope (fe80::1%eth0) is allowed
    except ValueError:
        return False
    return True


def show(address: Any) -> str:
    """``host:port``, or ``[host]:port`` for IPv6."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(address: tuple[str, int], *, passive: bool = False) -> list[Any]:
    """``getaddrinfo`` for a stream socket, with every failure a :class:`CommandError`.

    A bad name (a label longer than 63 characters, ...) and an unknown host
    both give the one-line error, never a traceback.
    """
    host, port = address
    try:
        return socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                  socket.AI_PASSIVE if passive else 0)
    except UnicodeError:  # the idna codec: an empty label, or one over 63 characters
        raise CommandError(f"bad host name {host!r}: each part between dots must be 1-63 "
                           "characters") from None
    except OSError as e:
        raise CommandError(f"cannot resolve {host!r}: {error_text(e)}") from None


def error_text(exc: BaseException) -> str:
    """An exception as the stdlib words it, without the ``[Errno N]``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB / seconds:.1f} MiB/s" if seconds > 0 else "-"


# --------------------------------------------------------------------------- console


class Console:
    """Messages (``zerocopy NAME: ...``) and a progress line, on one text stream.

    Thread-safe.  A message first moves a progress line that is on the
    screen to a new line, so the last figures stay readable.
    """

    def __init__(self, name: str, stream: IO[str]) -> None:
        self.name = name
        self.stream = stream
        self._lock = threading.Lock()
        self._line_open = False  # a progress line is on the screen, the cursor at its end

    def say(self, text: str) -> None:
        with self._lock:
            if self._line_open:
                self.stream.write("\n")
                self._line_open = False
            self.stream.write(f"zerocopy {self.name}: {text}\n")
            self.stream.flush()

    def error(self, text: str) -> int:
        """Say ``error: text``; return 1, the exit status of a runtime error."""
        self.say(f"error: {text}")
        return 1

    def is_terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def redraw(self, text: str) -> None:
        """Replace the progress line with ``text`` (cleared to the end of the line)."""
        with self._lock:
            self.stream.write(f"\r{text}\x1b[K")
            self.stream.flush()
            self._line_open = True

    def progress(self, total: int | None, count: Callable[[], int]) -> Progress:
        """A :class:`Progress` for a transfer of ``total`` bytes (None: unknown)."""
        return Progress(self, total, count)


class Progress:
    """A progress line redrawn by time, on a terminal only; a context manager.

    A thread redraws it every ``interval`` seconds from ``count()``, the
    bytes done so far, whether or not the transfer made progress (a
    stalled transfer shows its rate falling).  ``count`` may raise
    ``OSError`` (the line then keeps its last figure).  Leaving the block
    draws the final figure once more; the next message starts a new line.
    """

    interval = 0.25

    def __init__(
        self,
        console: Console,
        total: int | None,
        count: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.total = total
        self.count = count
        self.clock = clock
        self.start = clock()
        self.enabled = console.is_terminal()
        self._last = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="zerocopy-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.draw()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw()

    def draw(self) -> None:
        """Draw the line now (the thread calls this every ``interval`` seconds)."""
        try:
            self._last = self.count()
        except OSError:
            pass
        self.console.redraw(self.text(self._last, self.clock() - self.start))

    def text(self, done: int, elapsed: float) -> str:
        line = f"{done / MiB:9.1f} MiB"
        if self.total is not None:
            line += f" of {self.total / MiB:.1f} MiB"
            if self.total > 0:
                line += f" {min(done / self.total, 1.0) * 100:3.0f}%"
        line += f"  {rate(done, elapsed)}  {elapsed:.1f} s"
        return line[:max(self._columns() - 1, 20)]

    def _columns(self) -> int:
        try:  # the terminal the line goes to (stderr), not stdout's
            columns = os.get_terminal_size(self.console.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        return columns or 80  # a terminal that does not know its size says 0


def stream_name(path: str) -> str:
    return "standard input" if path == "-" else path


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
