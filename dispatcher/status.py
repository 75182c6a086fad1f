"""What every tenant is doing, for operators: the ``/status`` answer.

Counts are kept per tenant and outcome (``ok`` or an error code) by the
dispatch path - one Counter increment per request - and only for tenants
that exist, so unknown ids cannot grow the table. The answer also shows
each tenant's version, region, limits, warm workers and why it cannot
start, if it cannot.

XXX: no latency percentiles and no Prometheus text yet; a histogram per
tenant and a /metrics route through prometheus-client would add them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dispatcher.directory import TenantDirectory
from dispatcher.outbound import EgressGateway
from dispatcher.pool import WorkerPool
from dispatcher.tenant_log import LogLine


class TenantStats:
    """Requests per tenant and outcome, since start-up."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def count(self, tenant_id: str, code: str) -> None:
        self.outcomes[tenant_id, code or "ok"] += 1

    def of(self, tenant_id: str) -> dict[str, int]:
        return {
            code: number
            for (tenant, code), number in sorted(self.outcomes.items())
            if tenant == tenant_id
        }


def status_report(
    directory: TenantDirectory,
    pool: WorkerPool,
    stats: TenantStats,
    gateway: EgressGateway,
) -> dict[str, Any]:
    """Every tenant, with what an operator asks about it first."""
    tenants = []
    for tenant_id, tenant in sorted(directory.tenants.items()):
        workers = [w for w in pool.workers if w.tenant.id == tenant_id]
        config = tenant.config
        outbound = {
            outcome: number
            for (owner, outcome), number in sorted(gateway.counts.items())
            if owner == tenant_id
        }
        tenants.append(
            {
                "tenant": tenant_id,
                "version": tenant.version,
                "state": "failed"
                if tenant.problem
                else ("warm" if workers else "idle"),
                "problem": tenant.problem,
                "region": config.region or None,
                "warm_workers": len(workers),
                "worker_pids": [w.pid for w in workers],
                "requests": stats.of(tenant_id),
                "rate_limit": {
                    "requests_per_second": config.rate_limit.requests_per_second,
                    "burst": config.rate_limit.burst,
                },
                "egress_rate_limits": config.egress.rate_limits,
                "outbound": outbound,
            }
        )
    return {"tenants": tenants, "warm_workers": len(pool.workers)}


def tenant_report(
    report: dict[str, Any], tenant_id: str, lines: list[LogLine]
) -> dict[str, Any] | None:
    """One tenant's ``/status`` entry with its recent log; None if unknown."""
    for entry in report["tenants"]:
        if entry["tenant"] == tenant_id:
            logs = [
                {"at": line.at, "pid": line.pid, "text": line.text} for line in lines
            ]
            return {**entry, "logs": logs, "slow_requests": []}
    return None
