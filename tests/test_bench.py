"""The benchmark harness: statistics, tables, JSON, the command line, and a --quick run.

No timing is asserted: only the arithmetic on given samples, the shapes of what is
printed, and that a real (quick) run completes and delivers every byte it claims.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

from zerocopy.bench import _harness as harness
from zerocopy.bench._harness import (
    BYTES,
    CALLS,
    GiB,
    Group,
    Report,
    Result,
    Runs,
    Sample,
    Target,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("file", "small", "memory", "relay", "serve", "aio")


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerocopy", "bench", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def _gib_sample(cpu_seconds: float, seconds: float) -> Sample:
    return Sample(seconds=seconds, cpu_seconds=cpu_seconds, size=GiB)


def _report(groups: list[Group], targets: list[Target] | None = None) -> Report:
    return Report(
        mode="file", heading="heading", unit=BYTES, measured="sender", settings={"size": GiB},
        groups=groups, targets=targets or [], notes=["Notes:", "- a note"],
        isolation="isolation: none", load=(0.5, 0.75), seconds=1.0,
    )


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("values", "median", "spread"),
    [
        ([], None, None),
        ([4.0], 4.0, None),
        ([1.0, 2.0, 3.0], 2.0, 1.0),
        ([3.0, 1.0, 2.0, 10.0], 2.5, 3.6),
        ([0.0, 0.0, 0.0], 0.0, None),  # no spread around a zero median
    ],
)
def test_median_and_spread(values: list[float], median: float | None,
                           spread: float | None) -> None:
    got_median, got_spread = harness.median_and_spread(values)
    assert got_median == median
    assert got_spread == (None if spread is None else pytest.approx(spread))


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    # Per round: 2/1, 4/2, 9/3 -> 2, 2, 3; the ratio of medians would be 4/2 = 2 as well,
    # so use rounds where they differ: 1/1, 10/2, 3/3 -> 1, 5, 1 (median 1; medians 3/2).
    assert harness.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert harness.paired_ratio([1.0, 10.0, 3.0], [1.0, 2.0, 3.0]) == 1.0


def test_paired_ratio_pairs_rounds_in_order_and_skips_zero_references() -> None:
    # A method that failed after two rounds has two samples: only those rounds pair.
    assert harness.paired_ratio([3.0, 6.0], [1.0, 2.0, 100.0]) == 3.0
    assert harness.paired_ratio([5.0, 8.0], [0.0, 2.0]) == 4.0
    assert harness.paired_ratio([], [1.0]) is None
    assert harness.paired_ratio([1.0], [0.0]) is None


def test_per_unit_figures() -> None:
    sample = Sample(seconds=0.5, cpu_seconds=0.25, size=2 * GiB)
    assert harness.cpu_per_unit(sample, BYTES) == 0.125  # CPU s per GiB
    assert harness.value_of(sample, BYTES) == 4 * GiB  # bytes per second
    calls = Sample(seconds=0.002, cpu_seconds=0.001, size=1000)
    assert harness.cpu_per_unit(calls, CALLS) == pytest.approx(1.0)  # CPU us per call
    assert harness.value_of(calls, CALLS) == pytest.approx(2.0)  # wall us per call
    assert harness.peer_cpu_per_unit(calls, CALLS) is None
    calls.peer_cpu_seconds = 0.003
    assert harness.peer_cpu_per_unit(calls, CALLS) == pytest.approx(3.0)


def test_summarize_medians_ratios_and_groups() -> None:
    runs = [
        Runs("a", "base", [_gib_sample(1.0, 1.0), _gib_sample(2.0, 1.0), _gib_sample(3.0, 2.0)]),
        Runs("a", "fast", [_gib_sample(0.5, 0.5), _gib_sample(1.0, 0.5), _gib_sample(1.5, 1.0)]),
        Runs("b", "base", [_gib_sample(1.0, 1.0)]),
    ]
    groups = harness.summarize(runs, BYTES, "base", columns=lambda s: {"n": str(len(s))})
    assert [group.title for group in groups] == ["a", "b"]
    base, fast = groups[0].results
    assert groups[0].baseline == "base"
    assert base.cpu == 2.0
    assert base.cpu_spread == pytest.approx(1.0)
    assert base.cpu_ratio == 1.0
    assert base.value == GiB  # median of 1, 1, 0.5 GiB/s
    assert fast.cpu == 1.0
    assert fast.cpu_ratio == 0.5  # 0.5 in every round
    assert fast.value_ratio == 2.0
    assert fast.columns == {"n": "3"}
    assert groups[1].results[0].cpu_ratio == 1.0


def test_summarize_falls_back_to_the_first_method_with_samples() -> None:
    runs = [
        Runs("", "base", [], error="OSError: boom"),
        Runs("", "other", [_gib_sample(2.0, 1.0)]),
        Runs("", "third", [_gib_sample(1.0, 1.0)]),
    ]
    (group,) = harness.summarize(runs, BYTES, "base")
    assert group.baseline == "other"
    failed, other, third = group.results
    assert failed.error == "OSError: boom"
    assert failed.cpu is None and failed.value is None and failed.cpu_ratio is None
    assert other.cpu_ratio == 1.0
    assert third.cpu_ratio == 0.5


def test_summarize_without_any_sample_has_no_baseline() -> None:
    (group,) = harness.summarize([Runs("", "x", [], error="boom")], BYTES, "x")
    assert group.baseline is None


@pytest.mark.parametrize(
    ("ours", "at_most", "at_least", "met"),
    [
        (0.5, 0.6, None, True),
        (0.7, 0.6, None, False),
        (1.1, None, 1.0, True),
        (0.9, None, 1.0, False),
        (0.55, 0.6, 0.5, True),
    ],
)
def test_evaluate_target(ours: float, at_most: float | None, at_least: float | None,
                         met: bool) -> None:
    runs = [
        Runs("", "ref", [_gib_sample(1.0, 1.0)] * 3),
        Runs("", "new", [_gib_sample(ours, 1.0)] * 3),
    ]
    target = Target("new / ref", "new", "ref", "cpu", at_most=at_most, at_least=at_least)
    done = harness.evaluate(target, runs, BYTES)
    assert done.ratio == pytest.approx(ours)
    assert done.met is met
    assert target.ratio is None  # the declared target is left alone
    assert ("met" if met else "NOT MET") in done.describe()


def test_evaluate_target_without_the_methods() -> None:
    done = harness.evaluate(Target("x", "a", "b", "value", at_least=1.0), [], BYTES)
    assert done.ratio is None and done.met is None
    assert "not measured" in done.describe()


# --------------------------------------------------------------------------- interleaving


def test_interleave_runs_rounds_in_order_and_drops_a_failed_method() -> None:
    calls: list[str] = []

    def good(name: str) -> Any:
        def run() -> Sample:
            calls.append(name)
            return _gib_sample(1.0, 1.0)
        return run

    def bad() -> Sample:
        calls.append("bad")
        raise OSError("no route")

    runners = {("", "a"): good("a"), ("", "bad"): bad, ("", "b"): good("b")}
    progress = harness.Progress(stream=io.StringIO())
    runs = harness.interleave(runners, 3, harness.describe_bytes, progress)
    assert calls == ["a", "bad", "b", "a", "b", "a", "b"]
    by_name = {run.method: run for run in runs}
    assert len(by_name["a"].samples) == 3
    assert by_name["bad"].samples == []
    assert by_name["bad"].error == "OSError: no route"


def test_progress_without_a_terminal_prints_lasting_lines_only(tmp_path: Any) -> None:
    path = tmp_path / "progress.txt"
    with open(path, "w") as stream:
        progress = harness.Progress(stream=stream)
        progress.show("working ...", transient=True)
        progress.show("done")
        progress.finish()
    assert path.read_text() == "done\n"


# --------------------------------------------------------------------------- formatting


def test_render_table_aligns_and_keeps_failure_rows_narrow() -> None:
    table = harness.render_table(
        ["method", "value", "ratio"],
        [["a", "1.00", "1.00x"], ["longer name", "10.00", "10.00x"],
         ["x", "FAILED: a long message here"]],
    )
    assert table.splitlines() == [
        "method       value   ratio",
        "-----------  -----  ------",
        "a             1.00   1.00x",
        "longer name  10.00  10.00x",
        "x            FAILED: a long message here",
    ]


def test_report_text_puts_cpu_first_and_aligns_groups() -> None:
    results = [
        Result("read+sendall", cpu=0.4, cpu_spread=0.1, cpu_ratio=1.0, value=2 * GiB,
               value_spread=0.2, value_ratio=1.0),
        Result("zerocopy.sendfile_all", cpu=0.2, cpu_spread=None, cpu_ratio=0.5,
               value=3 * GiB, value_spread=0.05, value_ratio=1.5, columns={"zc": "1/2"}),
        Result("broken", error="TransferError: receiver got 1 bytes"),
    ]
    other = [Result("x", cpu=1.0, cpu_ratio=1.0, value=512 * 1024 * 1024, value_ratio=1.0)]
    target = Target("sendfile_all / read+sendall, CPU", "zerocopy.sendfile_all",
                    "read+sendall", "cpu", at_most=0.6, ratio=0.5, met=True)
    text = harness.report_text(
        _report([Group("one", "read+sendall", results), Group("two", "x", other)], [target])
    )
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.index("CPU s/GiB") < header.index("throughput")
    assert "vs read+sendall" in header and header.rstrip().endswith("zc")
    row = next(line for line in lines if line.startswith("zerocopy.sendfile_all"))
    assert row.split() == ["zerocopy.sendfile_all", "0.200", "-", "0.50x", "3.00", "GiB/s",
                           "5%", "1.50x", "1/2"]
    assert any(line.startswith("broken") and "FAILED: TransferError" in line for line in lines)
    headers = [line for line in lines if line.startswith("method")]
    assert len(headers) == 2 and len({len(h.split("  ")[0]) for h in headers}) == 1
    assert "one" in lines and "two" in lines
    assert "- sendfile_all / read+sendall, CPU: 0.50x, met (target at most 0.60x)" in lines
    assert "isolation: none" in lines


def test_calls_table_columns() -> None:
    report = _report([Group("", "os.sendfile", [
        Result("os.sendfile", cpu=2.0, cpu_ratio=1.0, value=2.5, value_ratio=1.0)
    ])])
    report.unit = CALLS
    header = harness.report_tables(report).splitlines()[0].split("  ")
    assert [cell.strip() for cell in header if cell.strip()] == [
        "method", "CPU us/call", "spread", "vs os.sendfile", "us/call", "spread",
        "vs os.sendfile",
    ]


def test_json_document_shape() -> None:
    sample = Sample(seconds=1.0, cpu_seconds=0.5, size=GiB, peer_cpu_seconds=0.25,
                    counters={"zerocopy_sends": 3})
    result = Result("m", cpu=0.5, value=float(GiB), samples=[sample])
    isolation = harness.Isolation(0, 1, True, "2")
    document = harness.json_document(
        [_report([Group("", "m", [result])])], {"cpu": "test"}, isolation, 2.0
    )
    parsed = json.loads(json.dumps(document))  # plain JSON types only
    assert parsed["format"] == "zerocopy-bench/1"
    assert parsed["isolation"] == {"measured_cpu": 0, "peer_cpu": 1, "netns": True,
                                   "rps_cpus": "2", "reason": None, "mtu": None}
    assert parsed["failed"] is False
    (report,) = parsed["reports"]
    assert report["mode"] == "file" and report["unit"] == BYTES
    assert set(report["units"]) >= {"cpu", "value", "ratios", "spread", "sample.size"}
    (result_json,) = report["groups"][0]["results"]
    assert result_json["samples"][0] == {
        "seconds": 1.0, "cpu_seconds": 0.5, "size": GiB, "peer_cpu_seconds": 0.25,
        "counters": {"zerocopy_sends": 3},
    }


def test_isolation_descriptions_say_what_the_figures_include() -> None:
    full = harness.Isolation(0, 1, True, "2").describe()
    assert "CPU 0" in full and "CPU 1" in full and "not in the sender's system calls" in full
    pinned = harness.Isolation(0, 1, False, None, "needs root").describe()
    assert "needs root" in pinned and "CPU figures include it" in pinned
    none = harness.Isolation(reason="--isolate none").describe("relay", "sender and receiver")
    assert none.startswith("isolation: none") and "relay's CPU figures include it" in none


# --------------------------------------------------------------------------- small helpers


@pytest.mark.parametrize(
    ("text", "size"), [("4096", 4096), ("64K", 65536), ("256M", 256 << 20), ("1.5GiB", 3 << 29)]
)
def test_parse_size(text: str, size: int) -> None:
    assert harness.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "0", "1X", "-5"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(Exception, match="size"):
        harness.parse_size(text)


def test_sigpipe_ignored_restores_the_handler_even_on_error() -> None:
    before = signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # CPython starts with SIG_IGN
    try:
        with pytest.raises(KeyError), harness.sigpipe_ignored():
            assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
            raise KeyError("x")
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGPIPE, before)


def test_tree_rss_and_cpu_count_descendants() -> None:
    # a shell whose child holds 64 MiB resident: the shell alone is far smaller
    code = ("b = bytearray(64 << 20); b[::4096] = b'x' * (len(b) // 4096);"
            " print(1, flush=True); input()")
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{code}"; :'],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert shell.stdout is not None and shell.stdout.readline() == "1\n"
        assert harness.tree_rss(shell.pid) >= 64 << 20
        assert harness.tree_cpu(shell.pid) >= 0
        assert harness.tree_rss(2**22 + 1) == 0  # above pid_max's default: no such process
    finally:
        shell.communicate("\n", timeout=10)


def test_cpu_mask_and_cpu_list() -> None:
    assert harness.cpu_mask(0) == "00000001"
    assert harness.cpu_mask(5) == "00000020"
    assert harness.cpu_mask(40) == "00000100,00000000"
    assert harness._cpu_list("0-2,8\n") == {0, 1, 2, 8}


def test_choose_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert harness.choose_cpus() is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 2})
    measured, peer = harness.choose_cpus() or (None, None)
    assert measured == 2 and peer == 5


def test_select_methods() -> None:
    available = ["read+sendall", "zerocopy.sendfile_all", "zerocopy.FileSender+header"]
    assert harness.select_methods(available, None) == available
    assert harness.select_methods(available, ["filesender", "read+sendall"]) == [
        "read+sendall", "zerocopy.FileSender+header",
    ]
    with pytest.raises(ValueError, match="no method matches 'nope'"):
        harness.select_methods(available, ["nope"])


def test_modes_are_discovered_in_order() -> None:
    modes = harness.discover_modes()
    assert tuple(modes) == MODES
    for mode in modes.values():
        assert mode.methods and mode.summary


@pytest.mark.parametrize(
    ("argv", "mode", "rest"),
    [
        ([], None, []),
        (["--quick"], None, ["--quick"]),
        (["small", "--repeat", "2"], "small", ["--repeat", "2"]),
        (["--repeat", "2", "--small"], "small", ["--repeat", "2"]),
        (["--memory", "--quick"], "memory", ["--quick"]),
        (["--relay"], "relay", []),
        (["all", "--quick"], "all", ["--quick"]),
        (["--methods", "small"], None, ["--methods", "small"]),  # a value, not a mode
    ],
)
def test_split_mode(argv: list[str], mode: str | None, rest: list[str]) -> None:
    assert harness.split_mode(argv, harness.discover_modes()) == (mode, rest)


def test_split_mode_refuses_two_modes() -> None:
    with pytest.raises(harness.UsageError, match="choose one mode"):
        harness.split_mode(["--small", "--memory"], harness.discover_modes())


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["small", "--size", "1M"], "unrecognized arguments: --size"),
        (["--methods", "nope"], "no method matches 'nope'"),
        (["--small", "--relay"], "choose one mode"),
        (["--repeat", "0"], "must be at least 1"),
        (["all", "--size", "1M"], "unrecognized arguments: --size"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_help_lists_modes_and_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(["small", "--help"]) == 0
    out = capsys.readouterr().out
    assert "hand-written send+sendfile" in out and "zerocopy.FileSender+header" in out
    for mode in MODES:
        assert f"  {mode} " in out


def test_plot_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    target = tmp_path / "plot.png"
    assert harness.main(["--quick", "--plot", str(target)]) == 2
    captured = capsys.readouterr()
    assert "--plot needs matplotlib" in captured.err
    assert "zerocopy-net[plot]" in captured.err
    assert captured.out == ""  # refused before measuring anything
    assert not target.exists()


def test_plot_draws_a_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    samples = [_gib_sample(0.5, 1.0), _gib_sample(0.7, 0.8)]
    results = [
        Result("read+sendall", cpu=0.6, cpu_ratio=1.0, value=GiB, value_ratio=1.0,
               samples=samples),
        Result("zerocopy.sendfile_all", cpu=0.6, cpu_ratio=1.0, value=GiB, value_ratio=1.0,
               samples=samples),
        Result("broken", error="OSError: x"),
    ]
    path = tmp_path / "out.png"
    harness.plot([_report([Group("", "read+sendall", results)])], str(path), "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- real runs


@pytest.mark.timeout(240)
def test_quick_runs_every_mode_and_delivers_every_byte() -> None:
    done = _bench("--quick", "--json", timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["failed"] is False
    assert [report["mode"] for report in document["reports"]] == list(MODES)
    for report in document["reports"]:
        assert report["groups"]
        assert report["isolation"].startswith("isolation: ")
        for group in report["groups"]:
            for result in group["results"]:
                assert result["error"] is None, result
                assert len(result["samples"]) == 1  # --quick: one round
                assert result["cpu"] is not None and result["value"] is not None
    isolation = document["isolation"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert isolation["measured_cpu"] != isolation["peer_cpu"]
    if isolation["netns"]:
        assert isolation["rps_cpus"].replace(",", "").lstrip("0") == format(
            1 << isolation["peer_cpu"], "x"
        )
    else:
        assert isolation["reason"]
    by_mode = {report["mode"]: report for report in document["reports"]}
    small = {r["method"] for g in by_mode["small"]["groups"] for r in g["results"]}
    assert {"hand-written send+sendfile", "zerocopy.FileSender+header"} <= small
    assert [t["method"] for t in by_mode["small"]["targets"]] == [
        "zerocopy.FileSender+header", "zerocopy.sendfile_all(fd)",
    ]
    assert all(t["ratio"] is not None for t in by_mode["file"]["targets"])


@pytest.mark.timeout(120)
def test_old_spellings_and_text_output_without_a_namespace() -> None:
    done = _bench("--small", "--quick", "--isolate", "pin", "--methods", "os.sendfile,hand",
                  "--verify", timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    words = " ".join(out.split())  # the notes are wrapped
    assert "zerocopy bench small" in words
    assert "no private network namespace (--isolate pin)" in words or "isolation: none" in words
    assert "figures include it" in words
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.index("CPU us/call") < header.index("us/call  ")
    rows = [line.split("  ")[0] for line in out.splitlines()
            if line.startswith(("os.sendfile", "hand-written"))]
    assert rows == ["os.sendfile", "hand-written send+sendfile"]


@pytest.mark.timeout(120)
def test_a_failing_transfer_is_reported_and_the_exit_code_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from zerocopy.bench import file as file_mode

    def short(sock: socket.socket, path: str, size: int) -> int:
        sock.sendall(b"x" * 10)
        return 10

    _, what, header = file_mode._METHODS["mmap+sendall"]
    monkeypatch.setitem(file_mode._METHODS, "mmap+sendall", (short, what, header))
    code = harness.main(["file", "--size", "64K", "--repeat", "2", "--isolate", "none",
                         "--methods", "read+sendall,mmap+sendall"])
    out = capsys.readouterr().out
    assert code == 1
    assert "mmap+sendall  FAILED: TransferError: sender reported 10 bytes sent" in out
    assert "isolation: none (--isolate none)" in " ".join(out.split())
    row = next(line for line in out.splitlines() if line.startswith("read+sendall"))
    assert row.split()[3] == "1.00x"


def _quick_small_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = harness.main(["small", "--quick", "--calls", "200", "--methods", "os.sendfile",
                         "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    document: dict[str, Any] = json.loads(captured.out)
    return document


@pytest.mark.timeout(120)
def test_without_root_the_run_is_pinned_only_and_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    before = os.sched_getaffinity(0)
    isolation = _quick_small_json(capsys)["isolation"]
    assert os.sched_getaffinity(0) == before  # the caller's affinity is given back
    assert isolation["netns"] is False
    if len(before) >= 2:
        assert isolation["reason"] == "needs root"
        assert isolation["measured_cpu"] != isolation["peer_cpu"]
    else:
        assert isolation["reason"] == "fewer than 2 usable CPUs"


@pytest.mark.timeout(120)
def test_when_the_namespace_cannot_be_made_the_run_falls_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(peer_cpu: int, mtu: int | None = None) -> str:
        raise PermissionError(1, "unshare(CLONE_NEWNET): Operation not permitted")

    monkeypatch.setattr(harness, "enter_private_network", refuse)  # the fork inherits it
    isolation = _quick_small_json(capsys)["isolation"]
    assert isolation["netns"] is False
    if os.geteuid() == 0 and len(os.sched_getaffinity(0)) >= 2:
        assert isolation["reason"] == "unshare(CLONE_NEWNET): Operation not permitted"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("load", ["c", "python"])
def test_serve_mode_with_its_own_load_generators(load: str) -> None:
    """The C generator (compiled on the fly) and the Python one load the server for real."""
    if load == "c" and not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler")
    done = _bench("serve", "--quick", "--json", "--load", load, "--sizes", "4K,64K",
                  "--duration", "0.5", "--idle", "20", "--methods", "zerocopy,http.server")
    assert done.returncode == 0, done.stderr[-3000:]
    (report,) = json.loads(done.stdout)["reports"]
    assert report["settings"]["load"] == {"c": "loadgen.c", "python": "python"}[load]
    assert [g["title"] for g in report["groups"]] == ["4 KiB file", "64 KiB file"]
    for group in report["groups"]:
        assert [r["method"] for r in group["results"]] == ["zerocopy FileServer", "http.server"]
        for result in group["results"]:
            assert result["error"] is None, result
            (sample,) = result["samples"]
            assert sample["size"] > 0 and sample["cpu_seconds"] >= 0
            per_request = 4096 if group["title"].startswith("4") else 65536
            assert sample["counters"]["body_bytes"] == sample["size"] * per_request
    assert any("zerocopy FileServer: +" in note for note in report["notes"])


def test_serve_mode_parses_wrk(monkeypatch: pytest.MonkeyPatch) -> None:
    from zerocopy.bench import serve

    out = ("Running 5s test @ http://127.0.0.1:1/f\n  1 threads and 64 connections\n"
           "  396000 requests in 5.00s, 1.62GB read\n"
           "  Socket errors: connect 0, read 2, write 0, timeout 1\n"
           "  Non-2xx or 3xx responses: 5\nRequests/sec:  79200.00\n")

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["wrk", "-t1", "-c64"]
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(serve.subprocess, "run", fake_run)
    load = serve.Wrk().run(1, "/f", 4096, 64, 5.0)
    assert (load.requests, load.seconds, load.errors, load.non2xx) == (396000, 5.0, 3, 5)
    assert load.body_bytes == (396000 - 5) * 4096


@pytest.mark.timeout(120)
def test_namespace_lo_mtu_option(capsys: pytest.CaptureFixture[str]) -> None:
    """lo keeps loopback's own MTU unless --mtu sets one (recorded in the isolation)."""
    isolation = _quick_small_json(capsys)["isolation"]
    if not isolation["netns"]:
        pytest.skip(f"no private network namespace here: {isolation['reason']}")
    assert isolation["mtu"] is None
    code = harness.main(["small", "--quick", "--calls", "200", "--methods", "os.sendfile",
                         "--json", "--mtu", "1500"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert json.loads(captured.out)["isolation"]["mtu"] == 1500


@pytest.mark.parametrize("value", ["100", "70000", "-1", "x"])
def test_mtu_option_is_checked(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(["small", "--mtu", value]) == 2
    assert "--mtu" in capsys.readouterr().err
