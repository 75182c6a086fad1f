"""Throughput rows: wrk against every server, round by round.

A ``Case`` is one server and the traffic wrk sends it. Each round
measures every case once, each after a short warm-up, the order rotated
from round to round, so that a ratio between two cases always compares
runs made side by side. A row shows medians over the rounds; each ratio is
the median of the per-round ratios.
"""

from __future__ import annotations

import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from report import Row, format_ms, format_ratio, goal_cell, log_progress
from servers import Server

WRK_SETTINGS = ["-t1", "-c32", "--latency"]
WARMUP_S = 1

# wrk calls done() once at the end of a run; the one line it prints is all
# this module reads of wrk's output, so wrk's text layout does not matter.
REPORT_MARK = "switchyard-bench"
REPORT_LUA = f"""\
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("{REPORT_MARK} %d %d %d %d %d %d\\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    errors.connect + errors.read + errors.write + errors.timeout,
    errors.status))
end
"""
# The requests are built once, so naming the next tenant costs wrk a table
# lookup per request, not a string build.
ROTATE_LUA = """\
local requests = {}
local turn = 0

init = function(args)
  for i = 0, count - 1 do
    wrk.headers["x-customer-id"] = "c" .. i
    requests[i + 1] = wrk.format()
  end
end

request = function()
  turn = turn % count + 1
  return requests[turn]
end
"""


class BenchFailed(Exception):
    """A measurement could not be made."""


class WrkReport(NamedTuple):
    """What the report script prints at the end of one wrk run."""

    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    socket_errors: int
    non_2xx: int


@dataclass(frozen=True)
class Run:
    """One measured run of wrk against one server."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    cpu_us_per_request: float
    # The part of it spent in processes the server started: its workers.
    worker_cpu_us_per_request: float


@dataclass
class Case:
    """One server and the traffic wrk sends it; a row of the table."""

    name: str
    server: Server | None
    wrk_args: list[str]
    # Names of the cases this one's req/s is divided by, side by side.
    compare: list[str] = field(default_factory=list)
    # A goal on the ratio to the first of ``compare``, e.g. 0.6.
    goal_ratio: float | None = None
    note: str = ""
    # What the ratios of other cases call this one; its name if empty.
    label: str = ""
    optional: bool = False
    unavailable: str = ""
    runs: list[Run] = field(default_factory=list)


def write_wrk_scripts(folder: Path, counts: list[int]) -> dict[int, list[str]]:
    """wrk arguments for traffic to 1 tenant and to ``counts`` in round-robin."""
    report = folder / "report.lua"
    report.write_text(REPORT_LUA)
    traffic = {1: ["-H", "x-customer-id: c0", "-s", str(report)]}
    for count in counts:
        rotate = folder / f"rotate-{count}.lua"
        rotate.write_text(f"local count = {count}\n{ROTATE_LUA}{REPORT_LUA}")
        traffic[count] = ["-s", str(rotate)]
    return traffic


def measure_rounds(cases: list[Case], rounds: int, seconds: int) -> None:
    """Measure every case once per round, the order rotated each round."""
    for number in range(1, rounds + 1):
        ready = [case for case in cases if not case.unavailable]
        shift = (number - 1) % len(ready)
        for case in ready[shift:] + ready[:shift]:
            try:
                run = measure(case, seconds)
            except BenchFailed as exc:
                if not case.optional:
                    raise
                case.unavailable = f"failed in round {number}: {exc}"
                case.runs.clear()
                continue
            case.runs.append(run)
            log_progress(
                f"round {number}/{rounds}  {case.name:<42}"
                f"{run.requests_per_s:>9,.0f} req/s  p99 {run.p99_ms:6.2f} ms"
            )


def measure(case: Case, seconds: int) -> Run:
    """Warm the server up, then one measured run with its CPU time."""
    assert case.server is not None
    run_wrk(case.server, case.wrk_args, WARMUP_S)

    own_before, started_before = case.server.cpu_seconds()
    result = run_wrk(case.server, case.wrk_args, seconds)
    own_after, started_after = case.server.cpu_seconds()

    own_us = (own_after - own_before) * 1e6
    started_us = (started_after - started_before) * 1e6
    requests = max(result.requests, 1)
    return Run(
        requests_per_s=result.requests / (result.duration_us / 1e6),
        p50_ms=result.p50_us / 1000,
        p99_ms=result.p99_us / 1000,
        failed=result.socket_errors + result.non_2xx,
        cpu_us_per_request=(own_us + started_us) / requests,
        worker_cpu_us_per_request=started_us / requests,
    )


def run_wrk(server: Server, wrk_args: list[str], seconds: int) -> WrkReport:
    """One wrk run against ``server``; its report line, parsed."""
    url = f"http://127.0.0.1:{server.port}/"
    command = ["wrk", *WRK_SETTINGS, f"-d{seconds}s", *wrk_args, url]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith(REPORT_MARK) and done.returncode == 0:
            return WrkReport(*(int(float(word)) for word in line.split()[1:]))

    if server.process.poll() is not None:
        raise BenchFailed(f"{server.name} exited: {server.last_log_line()}")
    reason = (done.stderr or done.stdout).strip()[-200:]
    raise BenchFailed(f"wrk exited with code {done.returncode}: {reason}")


def throughput_rows(cases: list[Case]) -> list[Row]:
    """One row per case: medians over rounds, ratios to its comparisons."""
    by_name = {case.name: case for case in cases}
    rows = []
    for case in cases:
        if not case.runs:
            reason = case.unavailable or "not measured"
            rows.append(Row(case.name, f"skipped: {reason}"))
            continue
        rows.append(throughput_row(case, by_name))
    return rows


def throughput_row(case: Case, by_name: dict[str, Case]) -> Row:
    runs = case.runs
    rps = statistics.median(run.requests_per_s for run in runs)
    p50 = statistics.median(run.p50_ms for run in runs)
    p99 = statistics.median(run.p99_ms for run in runs)

    others = [by_name[name] for name in case.compare if name in by_name]
    ratios = [(other.label or other.name, ratio(case, other)) for other in others]
    shown = [f"{format_ratio(value)} {label}" for label, value in ratios if value]
    goal = ""
    label, first = ratios[0] if ratios else ("", None)
    if case.goal_ratio is not None and first is not None:
        goal = goal_cell(f">= {case.goal_ratio:.2f}x {label}", first >= case.goal_ratio)

    return Row(
        case.name,
        f"{rps:,.0f} req/s",
        format_ms(p50),
        format_ms(p99),
        "; ".join(shown),
        goal,
        case_notes(case),
    )


def ratio(case: Case, other: Case | None) -> float | None:
    """The median of the per-round ratios of req/s, when both ran each round."""
    if other is None or not case.runs or len(case.runs) != len(other.runs):
        return None
    pairs = zip(case.runs, other.runs, strict=True)
    return statistics.median(a.requests_per_s / b.requests_per_s for a, b in pairs)


def case_notes(case: Case) -> str:
    """Server CPU per request, failed requests, and the case's own note."""
    cpu = statistics.median(run.cpu_us_per_request for run in case.runs)
    in_workers = statistics.median(run.worker_cpu_us_per_request for run in case.runs)
    words = [f"server CPU {cpu:.0f} µs/request"]
    if in_workers >= 0.5:
        words[0] += f" ({in_workers:.0f} in workers)"
    failed = sum(run.failed for run in case.runs)
    if failed:
        words.append(f"{failed:,} failed or non-2xx requests")
    if case.note:
        words.append(case.note)
    return "; ".join(words)


def wrk_version() -> str:
    # wrk has no version flag: -v prints the version, then usage, exit 1.
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"
