"""Soak: switchyard at saturation for minutes while its workers recycle.

``make soak`` runs this (``make soak MINUTES=1`` for a short one). It
starts one dispatcher (zygote, access log off) on 127.0.0.1 with 200
generated tenants whose workers are replaced every 1,000 requests
(``max_requests`` in their tenant.toml), warms them all, then keeps wrk
(-t1 -c32) at full speed over the 200 in round-robin, a minute per slice,
until the time is up. After each slice it reads the dispatcher's RSS, its
open descriptors and its live workers.

The goal: no failed request, and RSS and descriptors flat. The start is
read after a short run at full speed, once the allocator and the buffers
have grown to their working size, so that growth from there on is what a
leak would add. The dispatcher and everything it started are stopped by
pid at the end, also when the soak fails. Exit status 0 when the goal was
met, 1 when not, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from latency import warm_tenants
from report import MiB
from servers import Server, ServerFailed, Servers, write_tenants, zygote_pid
from throughput import BenchFailed, WrkReport, run_wrk, write_wrk_scripts

SLICE_S = 60
SETTLE_S = 10
# RSS may grow this much past its size at the start and count as flat: the
# allocator keeps some slack, and buffers vary with the load.
RSS_SLACK = 0.10
# A worker being replaced holds three more descriptors for a moment.
FD_SLACK = 16


@dataclass(frozen=True)
class Sample:
    """The dispatcher as read between two slices."""

    rss: int
    fds: int
    workers: int
    zombies: int


@dataclass
class Totals:
    requests: int = 0
    socket_errors: int = 0
    non_2xx: int = 0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its verdict."""
    args = build_parser().parse_args(argv)
    if shutil.which("wrk") is None:
        print("soak: wrk is missing; install the Debian package 'wrk'", file=sys.stderr)
        return 2
    # A plain SIGTERM would skip the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    with (
        tempfile.TemporaryDirectory(prefix="switchyard-soak-") as name,
        Servers(Path(name)) as servers,
    ):
        try:
            return soak(servers, Path(name), args)
        except (BenchFailed, ServerFailed) as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=positive, default=10.0)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=1000)
    return parser


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected more than 0, got {value}")
    return value


def soak(servers: Servers, folder: Path, args: argparse.Namespace) -> int:
    """Start, warm, load slice by slice, and judge what the samples show."""
    write_tenants(folder / "tenants", args.tenants, args.max_requests)
    traffic = write_wrk_scripts(folder, [args.tenants])[args.tenants]
    dispatcher = servers.start_switchyard(
        "switchyard", folder / "tenants", ["--no-access-log"]
    )
    tenants = [f"c{index}" for index in range(args.tenants)]
    warm_tenants(dispatcher.port, tenants)
    totals = Totals()
    add_report(totals, run_wrk(dispatcher, traffic, SETTLE_S))

    time.sleep(0.5)  # let the dispatcher close wrk's connections
    samples = [sample(dispatcher)]
    print_header(args)
    print_slice("start", None, totals, samples[0], dispatcher)
    deadline = time.monotonic() + args.minutes * 60
    while (left := deadline - time.monotonic()) >= 1:
        report = run_wrk(dispatcher, traffic, int(min(SLICE_S, left)))
        time.sleep(0.5)  # let the dispatcher close wrk's connections
        samples.append(sample(dispatcher))
        add_report(totals, report)
        rate = report.requests / (report.duration_us / 1e6)
        print_slice(f"{len(samples) - 1}", rate, totals, samples[-1], dispatcher)

    return judge(samples, totals, dispatcher)


def add_report(totals: Totals, report: WrkReport) -> None:
    totals.requests += report.requests
    totals.socket_errors += report.socket_errors
    totals.non_2xx += report.non_2xx


def sample(server: Server) -> Sample:
    """RSS and descriptors of the dispatcher; its live and zombie workers."""
    process = psutil.Process(server.pid)
    pid = zygote_pid(server)
    workers = psutil.Process(pid).children() if pid else []
    zombies = sum(1 for worker in workers if is_zombie(worker))
    return Sample(
        process.memory_info().rss, process.num_fds(), len(workers) - zombies, zombies
    )


def is_zombie(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def print_header(args: argparse.Namespace) -> None:
    print(
        f"soak: {args.minutes:g} min of wrk -t1 -c32 over {args.tenants} tenants"
        f" (max_requests = {args.max_requests}; zygote, access log off),"
        f" after {SETTLE_S} s to settle"
    )
    print(
        f"{'slice':>6} {'req/s':>9} {'errors':>7} {'RSS MiB':>8} {'fds':>6}"
        f" {'workers':>8} {'recycled':>9}"
    )


def print_slice(
    label: str, rate: float | None, totals: Totals, now: Sample, server: Server
) -> None:
    rate_cell = "-" if rate is None else f"{rate:,.0f}"
    print(
        f"{label:>6} {rate_cell:>9} {totals.errors:>7,} {now.rss / MiB:>8.1f}"
        f" {now.fds:>6} {now.workers:>8} {recycled(server):>9,}",
        flush=True,
    )


def recycled(server: Server) -> int:
    return server.log_path.read_text(errors="replace").count("recycling worker")


def judge(samples: list[Sample], totals: Totals, server: Server) -> int:
    """Print start and end beside each other, and whether the goal was met."""
    start, end = samples[0], samples[-1]
    rss_flat = end.rss <= start.rss * (1 + RSS_SLACK)
    fds_flat = end.fds - start.fds <= FD_SLACK
    log_errors = count_error_lines(server)
    print(
        f"requests: {totals.requests:,}; errors: {totals.errors:,}"
        f" ({totals.socket_errors:,} socket, {totals.non_2xx:,} non-2xx);"
        f" dispatcher log lines at ERROR: {log_errors}"
    )
    print(
        f"dispatcher RSS: start {start.rss / MiB:.1f} MiB,"
        f" end {end.rss / MiB:.1f} MiB: {'flat' if rss_flat else 'GREW'}"
    )
    print(
        f"dispatcher fds: start {start.fds}, end {end.fds}:"
        f" {'flat' if fds_flat else 'GREW'}"
    )
    print(
        f"workers: {start.workers} at start, {end.workers} at end,"
        f" {recycled(server):,} recycled, {end.zombies} zombies at end"
    )
    met = not totals.errors and not log_errors and rss_flat and fds_flat
    print(f"goal (zero errors, RSS and fds flat): {'met' if met else 'MISSED'}")
    return 0 if met else 1


def count_error_lines(server: Server) -> int:
    lines = server.log_path.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if " ERROR " in line)


if __name__ == "__main__":
    sys.exit(main())
