"""Measure Switchyard beside its ceiling, a FastAPI service and its peer.

``make bench`` runs this. It starts every server itself, on 127.0.0.1 and a
free port, stops each by pid when done (also on failure), and prints one
table; with ``--write PATH`` the table goes into a markdown document that
also records the command, the machine and the date. In three phases:

1. Throughput (``throughput.py``): wrk against raw ASGI, a FastAPI hello
   world, switchyard (zygote, access log off) with 1, 100 and 1,000
   tenants in round-robin out of 2,000 generated ones, switchyard with its
   access log on, and workerd with 1 and 100 tenants. Every tenant wrk
   reaches is warmed by one request first.
2. Capacity (``memory.py``): the other 1,000 tenants of that dispatcher
   are warmed too, and warm hits spread over all 2,000 are timed beside
   hits on one tenant.
3. Cold starts and memory (``coldstart.py``): first requests to fresh
   tenants on a zygote dispatcher, a ``--no-zygote`` one and workerd's
   loader, interleaved; then the idle workers' USS and PSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from coldstart import peer_missing, run_cold_starts
from latency import warm_tenants
from memory import capacity_row, measure_capacity
from report import (
    Row,
    describe_start,
    log_progress,
    render_document,
    render_table,
)
from servers import Server, ServerFailed, Servers, write_tenants
from throughput import (
    WARMUP_S,
    WRK_SETTINGS,
    BenchFailed,
    Case,
    measure_rounds,
    throughput_rows,
    write_wrk_scripts,
    wrk_version,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PEER = REPO.parent / "shared" / "peer-workerd" / "serve.sh"
ROTATIONS = [100, 1000]
PEER_TENANTS = 100

RAW = "raw ASGI hello world (the ceiling)"
FASTAPI = "FastAPI hello world"
SWITCHYARD_1 = "switchyard, 1 tenant"
SWITCHYARD_100 = "switchyard, 100 tenants round-robin"
SWITCHYARD_1000 = "switchyard, 1,000 tenants round-robin"
SWITCHYARD_LOG = "switchyard with access log, 1 tenant"
SWITCHYARD_LIMITED = "switchyard, 1 tenant with a rate limit (not exceeded)"
LIMITED_TENANT = "limited"
PEER_1 = "workerd, 1 tenant"
PEER_100 = "workerd, 100 tenants round-robin"


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

    start = describe_start()
    with (
        tempfile.TemporaryDirectory(prefix="switchyard-bench-") as name,
        Servers(Path(name)) as servers,
    ):
        try:
            rows = run_phases(servers, Path(name), args)
        except (BenchFailed, ServerFailed) as exc:
            print(f"dispatch_bench: {exc}", file=sys.stderr)
            return 2

    table = render_table(rows)
    print(table)
    if args.write:
        setup = start + describe_setup(args)
        document = render_document(table, setup, reading_notes())
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(document)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seconds", type=at_least(1), default=5, help="per measured wrk run"
    )
    parser.add_argument("--rounds", type=at_least(1), default=3)
    parser.add_argument(
        "--warm-tenants",
        type=at_least(max(ROTATIONS)),
        default=2000,
        help="tenants warmed at once on one dispatcher (default %(default)s)",
    )
    parser.add_argument(
        "--cold-tenants",
        type=at_least(1),
        default=100,
        help="fresh tenants per cold-start mode (default %(default)s)",
    )
    parser.add_argument("--write", type=Path, metavar="PATH", help="markdown file")
    parser.add_argument(
        "--peer-serve", type=Path, default=DEFAULT_PEER, help="the peer's serve.sh"
    )
    return parser


def at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {low} or more, got {value}")
        return value

    return parse


def run_phases(servers: Servers, folder: Path, args: argparse.Namespace) -> list[Row]:
    """Throughput, then capacity on the same dispatcher, then cold starts."""
    tenants = [f"c{index}" for index in range(args.warm_tenants)]
    write_tenants(folder / "tenants", len(tenants))
    write_limited_tenant(folder / "tenants" / LIMITED_TENANT)
    cases = start_throughput_cases(servers, folder, args)
    dispatcher = next(case.server for case in cases if case.name == SWITCHYARD_1)
    assert dispatcher is not None

    log_progress(f"warming {max(ROTATIONS):,} tenants before the rounds")
    warm_tenants(dispatcher.port, [*tenants[: max(ROTATIONS)], LIMITED_TENANT])
    measure_rounds(cases, args.rounds, args.seconds)
    rows = throughput_rows(cases)

    log_progress(f"warming the other {len(tenants) - max(ROTATIONS):,} tenants")
    capacity = measure_capacity(dispatcher, tenants, max(ROTATIONS))
    rows.append(capacity_row(capacity))
    for case in cases:
        if case.server is not None:
            servers.stop(case.server)

    rows += run_cold_starts(servers, folder, args.peer_serve, args.cold_tenants)
    return rows


def start_throughput_cases(
    servers: Servers, folder: Path, args: argparse.Namespace
) -> list[Case]:
    """Start the servers wrk measures, and say what it sends each of them."""
    traffic = write_wrk_scripts(folder, ROTATIONS)
    one, hundred, thousand = traffic[1], traffic[100], traffic[1000]
    raw = servers.start_uvicorn(RAW, "raw_asgi:app")
    fastapi = servers.start_uvicorn(FASTAPI, "hello_fastapi:app")
    quiet = servers.start_switchyard(
        "switchyard", folder / "tenants", switchyard_options(args)
    )
    logged = servers.start_switchyard("switchyard+log", folder / "tenants", [])
    peer, reason = start_peer(servers, args.peer_serve)

    mode = "zygote, access log off"
    cases = [
        Case(RAW, raw, one, note="no routing, no worker", label="raw ASGI"),
        Case(FASTAPI, fastapi, one, [RAW], note="same uvicorn", label="FastAPI"),
        Case(SWITCHYARD_1, quiet, one, [RAW, FASTAPI, PEER_1], note=mode),
        Case(SWITCHYARD_100, quiet, hundred, [RAW, FASTAPI, PEER_100], 0.6, mode),
        Case(SWITCHYARD_1000, quiet, thousand, [RAW, FASTAPI], note=mode),
        Case(SWITCHYARD_LOG, logged, one, [RAW, SWITCHYARD_1], note="zygote"),
        Case(
            SWITCHYARD_LIMITED,
            quiet,
            limited_traffic(one),
            [SWITCHYARD_1],
            0.95,
            "token bucket checked on every request, never empty",
        ),
    ]
    for name, wrk_args in ((PEER_1, one), (PEER_100, hundred)):
        case = Case(name, peer, wrk_args, [RAW], note="all tenants on one thread")
        case.label, case.optional, case.unavailable = "workerd", True, reason
        cases.append(case)
    return cases


def write_limited_tenant(folder: Path) -> None:
    """A tenant like c0, with a rate limit far above what wrk can send."""
    shutil.copytree(folder.parent / "c0", folder)
    with (folder / "tenant.toml").open("a") as config:
        config.write("\n[rate_limit]\nrequests_per_second = 1e9\nburst = 1000000000\n")


def limited_traffic(one: list[str]) -> list[str]:
    """wrk arguments for the single tenant, aimed at the limited one."""
    return ["-H", f"x-customer-id: {LIMITED_TENANT}", *one[2:]]


def switchyard_options(args: argparse.Namespace) -> list[str]:
    return [
        "--no-access-log",
        "--max-warm-workers",
        # Room for every generated tenant and the rate-limited one: one
        # short, and a round-robin over them evicts on every request.
        str(max(2000, args.warm_tenants) + 1),
    ]


def start_peer(servers: Servers, serve_sh: Path) -> tuple[Server | None, str]:
    """workerd with 100 tenants, or None and the reason it is not running."""
    reason = peer_missing(serve_sh)
    if reason:
        return None, reason
    log_progress("starting workerd (installs it on first use)")
    try:
        return servers.start_peer(serve_sh, PEER_TENANTS), ""
    except ServerFailed as exc:
        return None, str(exc)


def describe_setup(args: argparse.Namespace) -> list[str]:
    """How the load was made and what it was sent to, for the document."""
    options = " ".join(switchyard_options(args))
    return [
        f"throughput: {wrk_version()}, `wrk {' '.join(WRK_SETTINGS)}`,"
        f" {args.seconds} s per run after a {WARMUP_S} s warm-up, {args.rounds}"
        " rounds, every server once per round (order rotated), all on 127.0.0.1",
        "baselines: `raw_asgi.py` and `hello_fastapi.py` on `uvicorn --loop"
        " uvloop --http httptools --no-access-log`",
        f"switchyard: `switchyard run {options}` - workers forked from the"
        f" zygote, access log off; {args.warm_tenants:,} generated tenants"
        f" c0 .. c{args.warm_tenants - 1}, each answering"
        ' `{"tenant": ..., "ok": true}`, none prewarmed: c0 .. c999 warmed by'
        " one request each before the rounds, the rest after them",
        f"cold starts: {args.cold_tenants} fresh tenants per mode, one request"
        " each from a sequential client, interleaved zygote / plain spawn /"
        " workerd loader, after one request to another tenant on each;"
        f" {confinement_note()}",
        f"workerd: `serve.sh {PEER_TENANTS} PORT` for throughput,"
        f" `serve.sh {args.cold_tenants + 1} PORT loader` for cold starts",
    ]


def confinement_note() -> str:
    if os.geteuid() == 0:
        return "run as root, so every worker gets every confinement layer"
    return "not run as root: workers lack their own uid and private mounts"


def reading_notes() -> list[str]:
    return [
        "Trust the ratios more than the absolute numbers: every ratio compares"
        " measurements made side by side in this run (for throughput, the"
        " median of per-round ratios), while absolute numbers move by up to"
        " 1.5x between runs and machines.",
        "wrk and the sequential client share the machine's cores with the"
        " server they measure. *Server CPU* (the dispatcher and its workers,"
        " the workers' share in brackets) shows the cost apart from that.",
        "raw ASGI is the ceiling for a Python server here; a switchyard row"
        " adds routing, a frame each way over a pipe, and the worker's turn.",
        "workerd serves every tenant from one thread, so it uses about one"
        " core; switchyard spreads over the dispatcher and a process per"
        " tenant, which its ratios to workerd include.",
        "USS is what one more worker adds; PSS divides shared pages among"
        " their sharers. *Warm tenants that fit* divides MemAvailable by USS;"
        " the open-files limit and pid_max are walls of their own.",
    ]


if __name__ == "__main__":
    sys.exit(main())
