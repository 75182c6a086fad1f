"""The dispatch benchmark's results, and the markdown that reports them.

A ``Case`` is one row of the table: a server, the traffic wrk sends it, and
its runs, one per round. The table shows medians over the rounds; a ratio
between two rows is the median of their per-round ratios, so that each one
compares runs made side by side.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil
from servers import Server

RAW = "raw ASGI"
SWITCHYARD_1 = "switchyard, 1 tenant"
PEER_1 = "workerd, 1 tenant"
PEER_10 = "workerd, 10 tenants round-robin"
# What a process holds in memory, by what it is, in MiB.
Memory = dict[str, float]


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
    """One row of the table: a server and the traffic wrk sends it."""

    name: str
    server: Server | None
    wrk_args: list[str]
    peer: str = ""
    optional: bool = False
    unavailable: str = ""
    runs: list[Run] = field(default_factory=list)


def render_memory(started: Memory, finished: Memory) -> str:
    """Memory after start-up beside memory after the runs, as a table."""
    lines = ["| process | after start-up | after the runs |", "| --- | ---: | ---: |"]
    for what, mib in started.items():
        later = finished.get(what)
        later_cell = "-" if later is None else f"{later:.1f} MiB"
        lines.append(f"| {what} | {mib:.1f} MiB | {later_cell} |")
    return "\n".join(lines)


def render_table(cases: list[Case]) -> str:
    """The results as one markdown table, one row per case."""
    by_name = {case.name: case for case in cases}
    lines = [
        "| server | req/s | p50 | p99 | vs raw ASGI | vs workerd "
        "| server CPU per request | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in cases:
        lines.append(render_row(case, by_name))
    return "\n".join(lines)


def render_row(case: Case, by_name: dict[str, Case]) -> str:
    if not case.runs:
        reason = case.unavailable or "not measured"
        return f"| {case.name} | not available ({reason}) | | | | | | |"

    runs = case.runs
    rps = statistics.median(run.requests_per_s for run in runs)
    p50 = statistics.median(run.p50_ms for run in runs)
    p99 = statistics.median(run.p99_ms for run in runs)
    cpu = statistics.median(run.cpu_us_per_request for run in runs)
    in_workers = statistics.median(run.worker_cpu_us_per_request for run in runs)

    vs_raw = format_ratio(ratio(case, by_name[RAW]))
    vs_peer = ""
    if case.peer and (peer_ratio := ratio(case, by_name[case.peer])) is not None:
        vs_peer = f"{format_ratio(peer_ratio)} (workerd: one thread)"
    cells = [case.name, f"{rps:,.0f}", f"{p50:.2f} ms", f"{p99:.2f} ms"]
    cpu_cell = f"{cpu:.0f} µs"
    if in_workers >= 0.5:
        cpu_cell += f" ({in_workers:.0f} in workers)"
    cells += [vs_raw, vs_peer, cpu_cell, notes(case, by_name)]
    return "| " + " | ".join(cells) + " |"


def ratio(case: Case, other: Case) -> float | None:
    """The median of the per-round ratios of req/s, when both ran each round."""
    if not case.runs or len(case.runs) != len(other.runs):
        return None
    pairs = zip(case.runs, other.runs, strict=True)
    return statistics.median(a.requests_per_s / b.requests_per_s for a, b in pairs)


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def notes(case: Case, by_name: dict[str, Case]) -> str:
    """Failed requests, and what a reader needs to compare the row fairly."""
    words = []
    failed = sum(run.failed for run in case.runs)
    if failed:
        words.append(f"{failed:,} failed or non-2xx requests")
    if case.name.startswith("workerd"):
        words.append("all tenants on one thread")
    elif case.name.startswith("switchyard with access log"):
        plain = format_ratio(ratio(case, by_name[SWITCHYARD_1]))
        words.append(f"{plain} the same without the log")
    elif case.name.startswith("switchyard"):
        words.append("dispatcher + a worker process per tenant")
    return "; ".join(words)


def render_document(
    table: str, memory: str, setup: list[str], started: datetime
) -> str:
    """The markdown document: what ran, where, when, the table, how to read it."""
    lines = [
        "# Dispatch benchmark",
        "",
        f"Written by `{command_line()}`.",
        "",
        f"- machine: {machine()}",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        *(f"- {line}" for line in setup),
        "",
        table,
        "",
        "Memory of the warm processes:",
        "",
        memory,
        "",
        "## How to read it",
        "",
        *reading_notes(os.cpu_count() or 1),
    ]
    return "\n".join(lines) + "\n"


def reading_notes(cores: int) -> list[str]:
    return [
        "- Trust the ratios more than the absolute numbers: each ratio is the"
        " median of per-round ratios between runs made side by side, while"
        " req/s alone moves by up to 1.5x between runs and machines.",
        f"- wrk shares the machine's {cores} cores with the server it measures:"
        " a server that needs more CPU also slows its own load generator."
        " *Server CPU per request* (the dispatcher and its workers, the"
        " workers' share in brackets, or workerd's whole process) shows the"
        " cost apart from that.",
        "- raw ASGI is the ceiling for a Python server here; a switchyard row"
        " adds routing, a frame each way over a pipe, and the worker's turn.",
        "- workerd serves every tenant from one thread, so it uses about one"
        " core; switchyard spreads over the dispatcher and a process per"
        " tenant, which its ratio to workerd includes.",
    ]


def command_line() -> str:
    python = Path(sys.executable)
    with_venv = os.path.relpath(python) if python.is_relative_to(Path.cwd()) else python
    return shlex.join([str(with_venv), *sys.argv])


def machine() -> str:
    memory_gib = psutil.virtual_memory().total / 1024**3
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {memory_gib:.1f} GiB memory,"
        f" {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()
