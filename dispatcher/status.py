"""What every tenant is doing, for operators: counts, latency, ``/status``.

The dispatch path records each answered request once, in ``RequestStats``:
a Counter increment by (status, error code), one histogram bucket, and the
duration in a short ring of recent ones. That is a few hundred nanoseconds,
so it stays on the hot path; everything else (percentiles, memory, the
Prometheus text) is worked out when someone asks.

Only tenants that exist are counted per tenant, so unknown ids cannot grow
the tables; requests that name no known tenant are counted by error code
alone.
"""

from __future__ import annotations

import asyncio
import bisect
import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import psutil

from dispatcher.directory import TenantDirectory
from dispatcher.outbound import EgressGateway
from dispatcher.pool import WorkerPool
from dispatcher.tenants import Tenant
from dispatcher.worker import Worker

# Upper bounds of the latency histogram, in seconds: from a warm answer
# (about a millisecond) to the longest time limit worth telling apart.
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Percentiles on the status page come from this many latest requests that
# reached a worker.
RECENT_REQUESTS = 1024


@dataclass
class TenantRequests:
    """One tenant's requests since start-up."""

    outcomes: Counter[tuple[int, str]] = field(default_factory=Counter)
    bucket_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1)
    )
    duration_sum_s: float = 0.0
    recent_s: deque[float] = field(
        default_factory=lambda: deque(maxlen=RECENT_REQUESTS)
    )
    cold: int = 0

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return sum(n for (_, code), n in self.outcomes.items() if code)

    def by_code(self) -> dict[str, int]:
        """Requests by outcome, ``ok`` for a tenant's own answer."""
        counts: Counter[str] = Counter()
        for (_, code), number in self.outcomes.items():
            counts[code or "ok"] += number
        return dict(sorted(counts.items()))

    def percentiles_ms(self) -> dict[str, float] | None:
        """p50 and p99 of the recent requests, None before the first."""
        if not self.recent_s:
            return None
        if len(self.recent_s) == 1:
            only = round(self.recent_s[0] * 1000, 2)
            return {"p50": only, "p99": only}
        cuts = statistics.quantiles(self.recent_s, n=100, method="inclusive")
        return {"p50": round(cuts[49] * 1000, 2), "p99": round(cuts[98] * 1000, 2)}


class RequestStats:
    """Requests per tenant, and those that reached no tenant."""

    def __init__(self) -> None:
        self.tenants: dict[str, TenantRequests] = {}
        self.unrouted: Counter[str] = Counter()

    def record(
        self,
        tenant_id: str,
        status: int,
        code: str,
        duration_s: float,
        served: bool,
        cold: bool,
    ) -> None:
        """Count one answered request of a known tenant.

        ``served``: a worker answered it. Only those count towards the
        percentiles, which would otherwise drop to near nothing under a
        flood of refusals (429s take microseconds).
        """
        stats = self.tenants.get(tenant_id)
        if stats is None:
            stats = self.tenants[tenant_id] = TenantRequests()
        stats.outcomes[status, code] += 1
        stats.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_S, duration_s)] += 1
        stats.duration_sum_s += duration_s
        if served:
            stats.recent_s.append(duration_s)
        if cold:
            stats.cold += 1

    def record_unrouted(self, code: str) -> None:
        """Count a request refused before it reached a tenant."""
        self.unrouted[code] += 1

    def of(self, tenant_id: str) -> TenantRequests:
        return self.tenants.get(tenant_id) or TenantRequests()

    def forget(self, tenant_id: str) -> None:
        """Drop a removed tenant's counts."""
        self.tenants.pop(tenant_id, None)


@dataclass(frozen=True)
class Usage:
    """What one worker process has used: CPU seconds, private memory (USS)."""

    cpu_s: float = 0.0
    uss: int = 0


NO_USAGE = Usage()


async def usage_of(workers: list[Worker]) -> dict[int, Usage]:
    """Each worker's usage by pid, read on a thread.

    Reading a process's private memory (``/proc/<pid>/smaps_rollup``) costs
    0.3-0.5 ms, more for a worker with many mappings: for a host of workers
    that is far too long to hold the event loop that serves requests.
    """
    return await asyncio.to_thread(read_usage, [worker.pid for worker in workers])


def read_usage(pids: list[int]) -> dict[int, Usage]:
    usage = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            usage[pid] = Usage(
                times.user + times.system, process.memory_full_info().uss
            )
        except psutil.Error:
            continue  # gone since the list was taken
    return usage


def status_report(
    directory: TenantDirectory,
    pool: WorkerPool,
    stats: RequestStats,
    gateway: EgressGateway,
    usage: dict[int, Usage],
) -> dict[str, Any]:
    """Every tenant, with what an operator asks about it first."""
    outbound = outbound_by_tenant(gateway.counts)
    tenants = [
        tenant_status(
            tenant,
            pool.workers_of(tenant_id),
            stats.of(tenant_id),
            outbound.get(tenant_id, {}),
            usage,
        )
        for tenant_id, tenant in sorted(directory.tenants.items())
    ]
    return {"tenants": tenants, "warm_workers": len(pool.workers)}


def outbound_by_tenant(
    counts: Counter[tuple[str, str]],
) -> dict[str, dict[str, int]]:
    """The gateway's counts grouped by tenant, in one pass over them."""
    grouped: dict[str, dict[str, int]] = {}
    for (tenant_id, outcome), number in sorted(counts.items()):
        grouped.setdefault(tenant_id, {})[outcome] = number
    return grouped


def tenant_status(
    tenant: Tenant,
    workers: list[Worker],
    requests: TenantRequests,
    outbound: dict[str, int],
    usage: dict[int, Usage],
) -> dict[str, Any]:
    """One tenant's entry of the status answer, from what was gathered."""
    config = tenant.config
    state = "failed" if tenant.problem else ("warm" if workers else "idle")
    return {
        "tenant": tenant.id,
        "version": tenant.version,
        "state": state,
        "problem": tenant.problem,
        "region": config.region or None,
        "warm_workers": len(workers),
        "worker_pids": [w.pid for w in workers],
        "memory_bytes": sum(usage.get(w.pid, NO_USAGE).uss for w in workers),
        "requests": requests.by_code(),
        "requests_total": requests.total,
        "errors_total": requests.errors,
        "cold_starts": requests.cold,
        "latency_ms": requests.percentiles_ms(),
        "rate_limit": {
            "requests_per_second": config.rate_limit.requests_per_second,
            "burst": config.rate_limit.burst,
        },
        "egress_rate_limits": config.egress.rate_limits,
        "outbound": outbound,
    }
