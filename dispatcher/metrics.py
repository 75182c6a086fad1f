"""Prometheus metrics, per tenant and for the host, at ``GET /metrics``.

Nothing here sits on the dispatch path. The counts already live where the
work happens (``RequestStats``, the pool's start and exit Counters, the
gateway's outbound Counter, the delivery store); at scrape time a custom
collector reads them and prometheus-client writes the text format. That
keeps the per-request cost at a few Counter increments, and a deleted
tenant simply stops appearing.

Labels are bounded on purpose: a tenant id (only tenants that exist), an
error code, an HTTP status, a reason or state from a fixed set. Never a
path, a host name or a request id: those would grow without bound.

CPU and memory are read from each live worker with psutil at scrape time,
on a thread (0.3-0.5 ms per worker); CPU seconds are those of the workers
alive now, so the gauge drops when a worker is replaced.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dispatcher.status import LATENCY_BUCKETS_S, NO_USAGE, Usage

if TYPE_CHECKING:
    from dispatcher.app import Dispatcher

TENANT = ["tenant"]


@dataclass(frozen=True)
class MetricsSnapshot:
    """What a scrape read on threads before the text is written."""

    usage: dict[int, Usage]
    deliveries: dict[tuple[str, str], int]


class DispatcherCollector:
    """Reads the dispatcher's counts into metric families at each scrape."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Metric]:
        known = set(self.dispatcher.directory.tenants)
        yield from self.request_metrics(known)
        yield from self.worker_metrics(known)
        yield from self.outbound_metrics(known)
        yield from self.tenant_settings()
        yield from self.host_metrics()

    def request_metrics(self, known: set[str]) -> Iterator[Metric]:
        stats = self.dispatcher.stats
        requests = CounterMetricFamily(
            "switchyard_requests",
            "Requests answered, by tenant, HTTP status and error code "
            "(ok: the tenant's own answer)",
            labels=["tenant", "status", "code"],
        )
        latency = HistogramMetricFamily(
            "switchyard_request_duration_seconds",
            "Time from the request's arrival to its answer, by tenant",
            labels=TENANT,
        )
        cold = CounterMetricFamily(
            "switchyard_cold_starts",
            "Requests that waited for a worker to boot, by tenant",
            labels=TENANT,
        )
        for tenant_id in sorted(known & set(stats.tenants)):
            counts = stats.tenants[tenant_id]
            for (status, code), number in sorted(counts.outcomes.items()):
                requests.add_metric([tenant_id, str(status), code or "ok"], number)
            latency.add_metric(
                [tenant_id],
                cumulative_buckets(counts.bucket_counts),
                counts.duration_sum_s,
            )
            cold.add_metric([tenant_id], counts.cold)
        unrouted = CounterMetricFamily(
            "switchyard_unrouted_requests",
            "Requests refused before reaching a tenant, by error code",
            labels=["code"],
        )
        for code, number in sorted(stats.unrouted.items()):
            unrouted.add_metric([code], number)
        yield from (requests, latency, cold, unrouted)

    def worker_metrics(self, known: set[str]) -> Iterator[Metric]:
        pool = self.dispatcher.pool
        starts = CounterMetricFamily(
            "switchyard_worker_starts",
            "Workers booted, by tenant",
            labels=TENANT,
        )
        for tenant_id, number in sorted(pool.starts.items()):
            if tenant_id in known:
                starts.add_metric([tenant_id], number)
        exits = CounterMetricFamily(
            "switchyard_worker_exits",
            "Workers that left service, by tenant and reason (crash, timeout, "
            "memory, heartbeat, recycle, idle, evicted, retired, shutdown)",
            labels=["tenant", "reason"],
        )
        for (tenant_id, reason), number in sorted(pool.exits.items()):
            if tenant_id in known:
                exits.add_metric([tenant_id, reason], number)
        yield from (starts, exits)
        yield from self.live_worker_metrics(known)

    def live_worker_metrics(self, known: set[str]) -> Iterator[Metric]:
        warm: Counter[str] = Counter()
        cpu: dict[str, float] = defaultdict(float)
        memory: Counter[str] = Counter()
        usage = self.dispatcher.metrics_snapshot.usage
        for worker in self.dispatcher.pool.workers:
            tenant_id = worker.tenant.id
            used = usage.get(worker.pid, NO_USAGE)
            warm[tenant_id] += 1
            cpu[tenant_id] += used.cpu_s
            memory[tenant_id] += used.uss
        queued = {
            tenant_id: gate.waiting
            for tenant_id, gate in self.dispatcher.pool.gates.items()
        }
        yield per_tenant_gauge(
            "switchyard_warm_workers", "Live workers, by tenant", warm, known
        )
        yield per_tenant_gauge(
            "switchyard_worker_cpu_seconds",
            "CPU seconds used by the tenant's live workers",
            cpu,
            known,
        )
        yield per_tenant_gauge(
            "switchyard_worker_memory_bytes",
            "Private memory (USS) of the tenant's live workers",
            memory,
            known,
        )
        yield per_tenant_gauge(
            "switchyard_queued_requests",
            "Requests waiting for a free slot, by tenant",
            queued,
            known,
        )

    def outbound_metrics(self, known: set[str]) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "switchyard_outbound_calls",
            "ctx.fetch and ctx.deliver calls, by tenant and outcome (made, "
            "failed, stored, or the code of a refusal such as region_denied)",
            labels=["tenant", "outcome"],
        )
        for (tenant_id, outcome), number in sorted(
            self.dispatcher.gateway.counts.items()
        ):
            if tenant_id in known:
                calls.add_metric([tenant_id, outcome], number)
        deliveries = by_tenant_and_state(
            "switchyard_deliveries",
            "Durable deliveries, by tenant and state (pending, succeeded, dead)",
            self.dispatcher.metrics_snapshot.deliveries,
            known,
        )
        circuits = by_tenant_and_state(
            "switchyard_circuits",
            "Target hosts of the tenant's deliveries, by circuit-breaker state",
            self.dispatcher.circuit_counts(),
            known,
        )
        yield from (calls, deliveries, circuits)

    def tenant_settings(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "switchyard_tenant_info",
            "1 per tenant; its version, data region and state as labels",
            labels=["tenant", "version", "region", "state"],
        )
        rate = GaugeMetricFamily(
            "switchyard_tenant_rate_limit_requests_per_second",
            "The tenant's inbound rate limit (0: none)",
            labels=TENANT,
        )
        burst = GaugeMetricFamily(
            "switchyard_tenant_rate_limit_burst",
            "Requests the tenant may send at once above its rate",
            labels=TENANT,
        )
        for tenant_id, tenant in sorted(self.dispatcher.directory.tenants.items()):
            config = tenant.config
            state = "failed" if tenant.problem else "ok"
            region = config.region or "any"
            info.add_metric([tenant_id, tenant.version, region, state], 1)
            rate.add_metric([tenant_id], config.rate_limit.requests_per_second)
            burst.add_metric([tenant_id], config.rate_limit.burst)
        yield from (info, rate, burst)

    def host_metrics(self) -> Iterator[Metric]:
        dispatcher = self.dispatcher
        settings = dispatcher.settings
        pool = dispatcher.pool
        yield GaugeMetricFamily(
            "switchyard_host_warm_workers",
            "Live workers, all tenants",
            value=len(pool.workers),
        )
        yield GaugeMetricFamily(
            "switchyard_host_max_warm_workers",
            "The host's cap on live workers",
            value=settings.max_warm_workers,
        )
        yield GaugeMetricFamily(
            "switchyard_host_workers_memory_bytes",
            "Private memory of all workers, as last measured by the pool",
            value=sum(w.rss for w in pool.workers),
        )
        yield GaugeMetricFamily(
            "switchyard_host_workers_memory_budget_bytes",
            "The memory budget of all workers together",
            value=pool.memory_budget_bytes(),
        )
        yield GaugeMetricFamily(
            "switchyard_host_held_body_bytes",
            "Bytes of request bodies held at once, all clients",
            value=dispatcher.body_budget.held,
        )
        yield GaugeMetricFamily(
            "switchyard_host_queued_requests",
            "Requests waiting for a free slot, all tenants",
            value=sum(gate.waiting for gate in pool.gates.values()),
        )


def cumulative_buckets(bucket_counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus wants them: cumulative, +Inf last."""
    bounds = [repr(bound) for bound in LATENCY_BUCKETS_S] + ["+Inf"]
    running = 0
    buckets = []
    for bound, number in zip(bounds, bucket_counts, strict=True):
        running += number
        buckets.append((bound, float(running)))
    return buckets


def per_tenant_gauge(
    name: str, documentation: str, values: Mapping[str, float], known: set[str]
) -> GaugeMetricFamily:
    """A gauge labelled by tenant, with 0 for known tenants without a value."""
    gauge = GaugeMetricFamily(name, documentation, labels=TENANT)
    for tenant_id in sorted(known):
        gauge.add_metric([tenant_id], values.get(tenant_id, 0))
    return gauge


def by_tenant_and_state(
    name: str,
    documentation: str,
    counts: Mapping[tuple[str, str], int],
    known: set[str],
) -> GaugeMetricFamily:
    """A gauge labelled by tenant and state, for the tenants that exist."""
    gauge = GaugeMetricFamily(name, documentation, labels=["tenant", "state"])
    for (tenant_id, state), number in sorted(counts.items()):
        if tenant_id in known:
            gauge.add_metric([tenant_id, state], number)
    return gauge


def metrics_registry(dispatcher: Dispatcher) -> CollectorRegistry:
    """A registry of this dispatcher's metrics alone (not the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DispatcherCollector(dispatcher))
    return registry
