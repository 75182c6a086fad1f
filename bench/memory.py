"""Memory rows: what an idle warm worker costs, and how many fit here.

USS counts the pages only that process holds: what one more worker adds.
PSS divides each shared page among the processes sharing it, so the PSS
of all workers adds up to their true share of memory. A forked worker
shares the zygote's pages until it writes to them; a fresh interpreter
shares only the files both map.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
from dataclasses import dataclass, replace

import psutil
from latency import Latencies, warm_hits, warm_tenants
from report import MiB, Row, format_ms, format_ratio, goal_cell
from servers import Server, zygote_pid

GOAL_USS_BYTES = 2_000_000
GOAL_WARM_TENANTS = 2000
EVICTED = "evicting"


@dataclass(frozen=True)
class WorkerMemory:
    """Median sizes, in bytes, of a set of idle worker processes."""

    count: int
    uss: float
    pss: float
    rss: float


@dataclass(frozen=True)
class Capacity:
    """What actually warming many tenants on one dispatcher showed."""

    warmed: int
    spread: Latencies
    single: Latencies
    available_drop_per_worker: float
    fds_per_worker: float
    workers_within_fd_limit: int
    evictions: int


def worker_processes(server: Server, zygote: bool) -> list[psutil.Process]:
    """A dispatcher's workers: its zygote's children, or its own children."""
    try:
        if not zygote:
            return psutil.Process(server.pid).children()
        pid = zygote_pid(server)
        return [] if pid is None else psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def measure_workers(processes: list[psutil.Process]) -> WorkerMemory | None:
    """Median USS, PSS and RSS of the processes still running."""
    sizes = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = process.memory_full_info()
            sizes.append((info.uss, info.pss, info.rss))
    if not sizes:
        return None
    uss, pss, rss = (statistics.median(column) for column in zip(*sizes, strict=True))
    return WorkerMemory(len(sizes), uss, pss, rss)


def mem_available() -> int:
    return psutil.virtual_memory().available


def measure_capacity(server: Server, tenants: list[str], warm: int) -> Capacity:
    """Warm ``tenants`` past the first ``warm``, then time warm hits over all.

    Each hit on one of the many tenants is paired with one on the first, so
    the two latencies compare a worker hot in every cache with workers
    visited once per pass.
    """
    dispatcher = psutil.Process(server.pid)
    available_before, fds_before = mem_available(), dispatcher.num_fds()
    if len(tenants) > warm:
        warm_tenants(server.port, tenants[warm:])
    added = max(1, len(tenants) - warm)
    drop = (available_before - mem_available()) / added
    fds_after = dispatcher.num_fds()
    fds_per_worker = (fds_after - fds_before) / added

    spread, single = warm_hits(server.port, tenants, tenants[0])
    _, fd_limit = dispatcher.rlimit(resource.RLIMIT_NOFILE)
    more = (fd_limit - fds_after) / fds_per_worker if fds_per_worker > 0 else 0
    log = server.log_path.read_text(errors="replace")
    return Capacity(
        warmed=len(tenants),
        spread=spread,
        single=single,
        available_drop_per_worker=drop,
        fds_per_worker=fds_per_worker,
        workers_within_fd_limit=len(tenants) + int(more),
        evictions=log.count(EVICTED),
    )


def idle_worker_rows(
    forked: WorkerMemory | None,
    spawned: WorkerMemory | None,
    peer_per_tenant: float | None,
) -> list[Row]:
    """Forked beside spawned workers, and workerd's cost of one more tenant."""
    ratios, goal = [], ""
    if forked and spawned:
        ratios.append(f"{format_ratio(forked.uss / spawned.uss)} plain spawn (USS)")
    if forked and peer_per_tenant:
        ratios.append(f"{format_ratio(forked.uss / peer_per_tenant)} workerd")
    if forked:
        goal = goal_cell("USS <= 2 MB (1.91 MiB)", forked.uss <= GOAL_USS_BYTES)

    forked_row = worker_row("idle warm worker, zygote (fork)", forked)
    rows = [
        replace(forked_row, ratio="; ".join(ratios), goal=goal),
        worker_row("idle warm worker, plain spawn (--no-zygote)", spawned),
    ]
    if peer_per_tenant is not None:
        rows.append(
            Row(
                "workerd loader, memory per tenant isolate",
                f"RSS +{peer_per_tenant / MiB:.2f} MiB per tenant",
                notes="growth of workerd's RSS over the cold-start pass, per tenant",
            )
        )
    return rows


def worker_row(name: str, memory: WorkerMemory | None) -> Row:
    if memory is None:
        return Row(name, "skipped: no worker processes found")
    return Row(
        name,
        f"USS {memory.uss / MiB:.2f} MiB, PSS {memory.pss / MiB:.2f} MiB",
        notes=f"median of {memory.count} workers after one request each;"
        f" RSS {memory.rss / MiB:.1f} MiB",
    )


def fit_row(forked: WorkerMemory | None, spawned: WorkerMemory | None) -> Row:
    """How many idle workers MemAvailable holds, by USS per worker."""
    available = mem_available()
    fits = {
        name: int(available / memory.uss)
        for name, memory in (("zygote", forked), ("plain spawn", spawned))
        if memory is not None and memory.uss > 0
    }
    result = ", ".join(f"{count:,} ({name})" for name, count in fits.items())
    goal = ""
    if "zygote" in fits:
        goal = goal_cell("2,000 (zygote)", fits["zygote"] >= GOAL_WARM_TENANTS)
    return Row(
        "warm tenants that fit in memory",
        result or "skipped: no worker measured",
        goal=goal,
        notes=f"MemAvailable {available / MiB / 1024:.1f} GiB / USS per worker",
    )


def capacity_row(capacity: Capacity) -> Row:
    """The warm-hit latency over all warmed tenants beside one tenant's."""
    spread, single = capacity.spread, capacity.single
    p50 = spread.percentile(0.5) / single.percentile(0.5)
    p99 = spread.percentile(0.99) / single.percentile(0.99)
    warm = capacity.warmed - spread.failed
    notes = [
        f"1 tenant: p50 {format_ms(single.percentile(0.5))},"
        f" p99 {format_ms(single.percentile(0.99))}",
        f"{capacity.evictions} evictions",
    ]
    if capacity.fds_per_worker > 0:
        notes += [
            f"MemAvailable fell {capacity.available_drop_per_worker / MiB:.2f}"
            " MiB per added worker",
            f"{capacity.fds_per_worker:.1f} dispatcher fds per worker: its"
            f" open-files limit allows ~{capacity.workers_within_fd_limit:,}",
        ]
    failed = spread.failed + single.failed
    if failed:
        notes.append(f"{failed} requests failed")
    return Row(
        f"{capacity.warmed:,} warm tenants, warm hit (sequential)",
        f"{warm:,} answered warm",
        format_ms(spread.percentile(0.5)),
        format_ms(spread.percentile(0.99)),
        f"{format_ratio(p50)} 1 tenant (p50); {format_ratio(p99)} (p99)",
        goal_cell(
            f"{GOAL_WARM_TENANTS:,} warm tenants",
            warm >= GOAL_WARM_TENANTS and not capacity.evictions,
        ),
        "; ".join(notes),
    )
