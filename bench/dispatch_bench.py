"""Measure Switchyard's dispatch path beside its ceiling and its peer.

``make bench`` runs this. It starts every server itself, on 127.0.0.1 and a
free port, and measures each with wrk:

- raw ASGI: the smallest ASGI app on uvicorn (uvloop, httptools), the
  ceiling for any Python server on this machine;
- switchyard with 1 tenant, and with 10 tenants in round-robin, out of 100
  generated tenants c0 .. c99 that each answer a small JSON body;
- switchyard with its access log on, to show what that line costs;
- workerd, Cloudflare's runtime doing the same job, with 1 and 10 tenants,
  when the peer's ``serve.sh`` is found; otherwise those rows say why not.

Each round measures every server once, one after the other, each after a
short warm-up, so that every ratio compares runs made side by side under
the same conditions; the order rotates from round to round. The table
holds medians over rounds, and each ratio is the median of the per-round
ratios. With ``--write PATH`` the table goes into a markdown document that
also records the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import psutil
from report import (
    PEER_1,
    PEER_10,
    RAW,
    SWITCHYARD_1,
    Case,
    Memory,
    Run,
    render_document,
    render_memory,
    render_table,
)
from servers import Server, ServerFailed, Servers, write_tenants

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PEER = REPO.parent / "shared" / "peer-workerd" / "serve.sh"
WRK_SETTINGS = ["-t1", "-c32", "--latency"]
WARMUP_S = 1
TENANT_COUNT = 100
ROTATED_TENANTS = 10
MiB = 1024 * 1024

# wrk calls done() once at the end of a run; the one line it prints is all
# this script reads of wrk's output, so wrk's text layout does not matter.
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, and write the document if asked."""
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "dispatch_bench: wrk is missing; install the Debian package 'wrk'",
            file=sys.stderr,
        )
        return 2
    # A plain SIGTERM would skip the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    started_at = datetime.now(UTC)
    with (
        tempfile.TemporaryDirectory(prefix="switchyard-bench-") as folder,
        Servers(Path(folder)) as servers,
    ):
        cases = start_cases(servers, Path(folder), args.peer_serve)
        idle = sample_memory(cases)
        measure_rounds(cases, args.rounds, args.seconds)
        memory = render_memory(idle, sample_memory(cases))

    table = render_table(cases)
    print(table)
    log_progress(memory)
    if args.write:
        document = render_document(table, memory, describe_setup(args), started_at)
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(document)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=at_least_one, default=5, help="per measured run"
    )
    parser.add_argument("--rounds", type=at_least_one, default=3)
    parser.add_argument("--write", type=Path, metavar="PATH", help="markdown file")
    parser.add_argument(
        "--peer-serve", type=Path, default=DEFAULT_PEER, help="the peer's serve.sh"
    )
    return parser


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def start_cases(servers: Servers, folder: Path, peer_serve: Path) -> list[Case]:
    """Start every server and say what wrk sends each of them."""
    tenants_dir = folder / "tenants"
    write_tenants(tenants_dir, TENANT_COUNT, prewarm=ROTATED_TENANTS)
    one = ["-H", "x-customer-id: c0", "-s", str(folder / "report.lua")]
    many = ["-s", str(folder / "rotate.lua")]
    write_wrk_scripts(folder)

    raw = servers.start_raw_asgi()
    quiet = servers.start_switchyard("switchyard", tenants_dir, access_log=False)
    logged = servers.start_switchyard("switchyard+log", tenants_dir, access_log=True)
    cases = [
        Case(RAW, raw, one),
        Case(SWITCHYARD_1, quiet, one, peer=PEER_1),
        Case("switchyard, 10 tenants round-robin", quiet, many, peer=PEER_10),
        Case("switchyard with access log, 1 tenant", logged, one, peer=PEER_1),
    ]
    return cases + start_peer_cases(servers, peer_serve, one, many)


def write_wrk_scripts(folder: Path) -> None:
    (folder / "report.lua").write_text(REPORT_LUA)
    rotate = f"local count = {ROTATED_TENANTS}\n{ROTATE_LUA}{REPORT_LUA}"
    (folder / "rotate.lua").write_text(rotate)


def start_peer_cases(
    servers: Servers, serve_sh: Path, one: list[str], many: list[str]
) -> list[Case]:
    """The workerd rows; a peer that cannot start leaves its reason instead."""
    reason = peer_missing(serve_sh)
    cases = []
    for name, tenants, wrk_args in ((PEER_1, 1, one), (PEER_10, 10, many)):
        case = Case(name, None, wrk_args, optional=True)
        if not reason:
            log_progress(f"starting {name} (installs workerd on first use)")
            try:
                case.server = servers.start_peer(serve_sh, tenants)
            except ServerFailed as exc:
                # The second start would fail the same way, only slower.
                reason = str(exc)
        case.unavailable = "" if case.server else reason
        cases.append(case)
    return cases


def peer_missing(serve_sh: Path) -> str:
    """Why the peer cannot run here, or "" when it may."""
    if not serve_sh.is_file():
        return f"no {serve_sh}"
    for tool in ("node", "npm", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return ""


def measure_rounds(cases: list[Case], rounds: int, seconds: int) -> None:
    """Measure every server once per round, the order rotated each round."""
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
                f"round {number}/{rounds}  {case.name:<38}"
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


def sample_memory(cases: list[Case]) -> Memory:
    """RSS and USS in MiB of the processes serving tenants, read now."""
    serving = {case.name: case.server for case in cases if not case.unavailable}
    sample: Memory = {}
    dispatcher = serving.get(SWITCHYARD_1)
    if dispatcher is not None:
        root, *workers = dispatcher.processes()
        sizes = read_memory(workers)
        if sizes:
            which = f"median of {len(sizes)}"
            sample[f"switchyard worker, RSS ({which})"] = median_of(sizes, 0)
            sample[f"switchyard worker, USS ({which})"] = median_of(sizes, 1)
        sample["switchyard dispatcher, RSS"] = median_of(read_memory([root]), 0)

    for name, tenants in ((PEER_1, "1 tenant"), (PEER_10, "10 tenants")):
        peer = serving.get(name)
        if peer is not None:
            sizes = read_memory(peer.processes()[:1])
            sample[f"workerd for {tenants}, RSS"] = median_of(sizes, 0)
    return sample


def read_memory(processes: list[psutil.Process]) -> list[tuple[float, float]]:
    """RSS and USS in MiB of each of ``processes`` still running."""
    sizes = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = process.memory_full_info()
            sizes.append((info.rss / MiB, info.uss / MiB))
    return sizes


def median_of(sizes: list[tuple[float, float]], column: int) -> float:
    if not sizes:
        return float("nan")
    return statistics.median(size[column] for size in sizes)


def describe_setup(args: argparse.Namespace) -> list[str]:
    """How the load was made and what it was sent to, for the document."""
    return [
        f"load: {wrk_version()}, `wrk {' '.join(WRK_SETTINGS)}`, {args.seconds} s"
        f" per run after a {WARMUP_S} s warm-up, {args.rounds} rounds, every"
        " server once per round (order rotated), all on 127.0.0.1",
        f"tenants: {TENANT_COUNT} generated ones, c0 .. c{TENANT_COUNT - 1},"
        f" c0 .. c{ROTATED_TENANTS - 1} warm; each answers"
        ' `{"tenant": ..., "ok": true}`',
    ]


def wrk_version() -> str:
    # wrk has no version flag: -v prints the version, then usage, exit 1.
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def log_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
