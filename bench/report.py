"""The benchmark's one table, and the markdown document that holds it.

Every measurement becomes a ``Row``: what was measured, its result, the
side-by-side ratio to what it is compared with, and the goal it is held
to, if any. The phases build their own rows; this module only lays them
out and records where and how they were measured.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

MiB = 1024 * 1024
GiB = 1024 * MiB
COLUMNS = ("measurement", "result", "p50", "p99", "side by side", "goal", "notes")


@dataclass(frozen=True)
class Row:
    """One line of the table; empty cells stay empty."""

    measurement: str
    result: str = ""
    p50: str = ""
    p99: str = ""
    ratio: str = ""
    goal: str = ""
    notes: str = ""

    def cells(self) -> list[str]:
        return [
            self.measurement,
            self.result,
            self.p50,
            self.p99,
            self.ratio,
            self.goal,
            self.notes,
        ]


def skipped(measurement: str, reason: str) -> Row:
    """The row of a measurement that could not be made here, and why."""
    return Row(measurement, f"skipped: {reason}")


def goal_cell(goal: str, met: bool) -> str:
    return f"{goal}: {'met' if met else 'missed'}"


def format_ms(value: float) -> str:
    """Milliseconds, with two decimals below 10 ms and one above."""
    if value != value:  # NaN: nothing was measured
        return "-"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(rows: list[Row]) -> str:
    """The rows as one markdown table."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in rows:
        cells = [cell.replace("|", "/") for cell in row.cells()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_document(table: str, setup: list[str], notes: list[str]) -> str:
    """The markdown document: what ran, where, when, the table, how to read it."""
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command_line()}` (`make bench`).",
        "",
        *(f"- {line}" for line in setup),
        "",
        table,
        "",
        "## How to read it",
        "",
        *(f"- {line}" for line in notes),
    ]
    return "\n".join(lines) + "\n"


def command_line() -> str:
    python = Path(sys.executable)
    with_venv = os.path.relpath(python) if python.is_relative_to(Path.cwd()) else python
    return shlex.join([str(with_venv), *sys.argv])


def describe_start() -> list[str]:
    """The machine, the date and the code, read before the run disturbs them."""
    return [
        f"machine: {machine()}",
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"code: {code_revision()}",
    ]


def machine() -> str:
    """Cores, memory, kernel and Python of this machine, in one line."""
    memory = psutil.virtual_memory()
    return (
        f"{os.cpu_count()} cores ({cpu_model()}),"
        f" {memory.total / GiB:.1f} GiB memory"
        f" ({memory.available / GiB:.1f} GiB available at the start),"
        f" {platform.system()} {platform.release()},"
        f" Python {platform.python_version()},"
        f" load average {os.getloadavg()[0]:.2f} at the start"
    )


def code_revision() -> str:
    """The commit being measured, and whether the product code differs."""
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "dispatcher", "sandbox_runner")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    if changed:
        return f"commit {commit}, with uncommitted changes to the product code"
    return f"commit {commit}"


def git(*args: str) -> str:
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
