"""The warm pool: every tenant's workers, started on demand, kept warm.

A tenant's first request starts a worker (start-up does, for tenants
marked ``prewarm``); later requests go to the least busy of its workers.
When every one of them has ``max_concurrency`` requests in flight, another
is started, up to ``max_workers``. Concurrent callers share one start.

Workers are replaced before they rot: after ``max_requests`` (with some
jitter, so that a tenant's workers do not all retire at once) and when
their resident memory passes ``memory_ceiling_mb``. The replacement is
started first; the retiring worker stops taking requests once it is ready
(or its quota is spent), and finishes the ones it has. A worker idle for
``idle_timeout_s`` is reclaimed (a prewarmed tenant keeps one).

Host-wide, at most ``max_warm_workers`` live at once and their memory
stays under ``max_workers_memory_mb``: past either, the least recently used
idle worker is evicted. No tenant setting can lift those bounds.

A tenant whose worker fails to boot backs off, doubling from
``boot_retry_after_s`` up to a minute, and meanwhile answers 503
``worker_boot_failed`` with the reason instead of respawning in a loop.
A worker the host could not start (``HostCannotStart``) is no reason to
back the tenant off: its next request tries again.

A removed tenant is forgotten at once: its workers drain and stop without
being counted, its counts and backoff go, and a start under way for it
ends in a 404. A tenant created later under the same id starts afresh.

One supervision loop, once a second, does the periodic part: heartbeats
(a worker quiet for ``heartbeat_s`` is pinged; one that leaves the ping
unanswered past its time limit is stopped and replaced), idle reclaim and
memory checks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil

from dispatcher.errors import (
    HostCannotStart,
    TenantBusy,
    TenantNotFound,
    WorkerBootFailed,
    WorkerCrashed,
)
from dispatcher.gate import TenantGate
from dispatcher.launcher import Launcher
from dispatcher.outbound import NO_OUTBOUND, OutboundGateway
from dispatcher.sandbox import SandboxPolicy
from dispatcher.settings import Settings
from dispatcher.tenant_log import TenantLog
from dispatcher.tenants import Tenant
from dispatcher.worker import Worker
from sandbox_runner import frames

log = logging.getLogger("dispatcher.pool")

MiB = 1024 * 1024
MAX_BOOT_BACKOFF_S = 60.0
RECYCLE_JITTER = 0.1


@dataclass
class BootFailure:
    """Why a tenant could not start, and until when not to try again."""

    error: WorkerBootFailed
    retry_at: float
    failures: int


@dataclass
class RequestTrace:
    """Which worker served a request, and whether it had to boot one."""

    pid: int = 0
    cold: bool = False


@dataclass
class TenantWorkers:
    """The live workers of one tenant, and the start under way, if any."""

    workers: list[Worker] = field(default_factory=list)
    starting: asyncio.Task[Worker] | None = None
    starting_version: Tenant | None = None


class WorkerPool:
    """Every warm worker of this dispatcher, all tenants together."""

    def __init__(
        self,
        settings: Settings,
        tenant_log: TenantLog,
        sandbox: SandboxPolicy,
        launcher: Launcher,
        gateway: OutboundGateway = NO_OUTBOUND,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.sandbox = sandbox
        self.launcher = launcher
        self.tenant_log = tenant_log
        self.groups: dict[str, TenantWorkers] = {}
        # Workers of removed tenants, until they have drained and stopped.
        self.leaving: set[Worker] = set()
        self.gates: dict[str, TenantGate] = {}
        self.boot_failures: dict[str, BootFailure] = {}
        self.closing = False
        # Since start-up, for the metrics: workers booted per tenant, and
        # workers that left service per tenant and reason.
        self.starts: Counter[str] = Counter()
        self.exits: Counter[tuple[str, str]] = Counter()

    @property
    def workers(self) -> list[Worker]:
        """Every live worker, all tenants, removed ones' still draining too."""
        serving = [w for group in self.groups.values() for w in group.workers]
        return serving + list(self.leaving)

    def workers_of(self, tenant_id: str) -> list[Worker]:
        """The live workers of one tenant that is served."""
        group = self.groups.get(tenant_id)
        return list(group.workers) if group else []

    async def dispatch(
        self,
        tenant: Tenant,
        request: frames.Request,
        trace: RequestTrace | None = None,
    ) -> frames.Response:
        """Run one request on one of the tenant's warm workers."""
        raise_if_removed(tenant)
        if tenant.problem is not None:
            raise WorkerBootFailed(f"the tenant cannot start: {tenant.problem}")
        async with self.gate_for(tenant):
            worker = await self.worker_for(tenant, trace)
            if trace is not None:
                trace.pid = worker.pid
            worker.served += 1
            self.recycle_if_due(worker)
            return await worker.call(request)

    def gate_for(self, tenant: Tenant) -> TenantGate:
        gate = self.gates.get(tenant.id)
        if gate is None or gate.tenant is not tenant:
            limits = tenant.config.limits
            capacity = limits.max_concurrency * limits.max_workers
            wait_s = limits.timeout_ms / 1000
            gate = TenantGate(capacity, limits.max_queue, wait_s)
            gate.tenant = tenant
            self.gates[tenant.id] = gate
        return gate

    async def worker_for(
        self, tenant: Tenant, trace: RequestTrace | None = None
    ) -> Worker:
        """The least busy serving worker, starting another when all are full."""
        raise_if_removed(tenant)  # before its group is made again
        group = self.groups.setdefault(tenant.id, TenantWorkers())
        limits = tenant.config.limits
        while True:
            serving = [w for w in group.workers if w.serving and w.tenant is tenant]
            best = min(serving, key=lambda w: w.in_flight, default=None)
            if best is not None and (
                best.in_flight < limits.max_concurrency
                or len(serving) >= limits.max_workers
            ):
                return best

            starting = self.start_worker(tenant, group)
            if best is not None:
                return best  # busy, but answers sooner than a worker yet to boot
            # shield: one caller giving up must not cancel the shared start.
            # Then choose again: others may have used up the new worker.
            if trace is not None:
                trace.cold = True
            await asyncio.shield(starting)

    def start_worker(
        self, tenant: Tenant, group: TenantWorkers
    ) -> asyncio.Task[Worker]:
        """The tenant's start under way, or a new one."""
        self.raise_if_failed_recently(tenant)
        if group.starting is not None and group.starting_version is not tenant:
            group.starting = None  # an older version's start: let it finish alone
        if group.starting is None:
            group.starting_version = tenant
            group.starting = asyncio.create_task(self.spawn_worker(tenant, group))
        return group.starting

    def raise_if_failed_recently(self, tenant: Tenant) -> None:
        if tenant.problem is not None:
            raise WorkerBootFailed(f"the tenant cannot start: {tenant.problem}")
        failure = self.boot_failures.get(tenant.id)
        if failure is not None and time.monotonic() < failure.retry_at:
            raise WorkerBootFailed(failure.error.message)

    async def spawn_worker(self, tenant: Tenant, group: TenantWorkers) -> Worker:
        """Start a worker for the tenant, within the host's budget."""
        try:
            await self.make_room()
            worker = await Worker.spawn(
                tenant, self.settings, self.tenant_log, self.sandbox, self.launcher
            )
        except HostCannotStart:
            raise  # the host's failure: the tenant is not to wait for it
        except WorkerBootFailed as exc:
            self.note_boot_failure(tenant, exc)
            raise
        finally:
            if group.starting_version is tenant:
                group.starting = None

        if self.closing:
            await worker.shutdown()
            raise WorkerCrashed("the dispatcher is shutting down")
        if tenant.removed:
            await worker.shutdown("retired")
            raise TenantNotFound(f"no tenant named {tenant.id!r}")
        self.take_into_service(worker, group)
        return worker

    async def adopt_new_version(self, tenant: Tenant) -> Worker:
        """Boot a first worker for a new version of a tenant, as its trial.

        A failure here is the deploy's to report, not a reason to back off
        the version that is serving.
        """
        await self.make_room()
        worker = await Worker.spawn(
            tenant, self.settings, self.tenant_log, self.sandbox, self.launcher
        )
        # The group now: a removal during the boot let go of the one before.
        group = self.groups.setdefault(tenant.id, TenantWorkers())
        self.take_into_service(worker, group)
        return worker

    def take_into_service(self, worker: Worker, group: TenantWorkers) -> None:
        """A worker that said Ready starts taking the tenant's requests."""
        tenant = worker.tenant
        self.boot_failures.pop(tenant.id, None)
        self.starts[tenant.id] += 1
        worker.on_exit = self.forget_worker
        worker.outbound_gateway = self.gateway
        worker.recycle_after = recycle_after(tenant.config.limits.max_requests)
        group.workers.append(worker)

    async def retire_version(self, tenant: Tenant) -> None:
        """Drain and stop the workers of a version no longer served."""
        group = self.groups.get(tenant.id)
        if group is None:
            return
        for worker in [w for w in group.workers if w.tenant is tenant]:
            retire(worker)

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop a removed tenant: its workers drain uncounted, its counts go."""
        group = self.groups.pop(tenant_id, None)
        if group is not None and group.starting_version is not None:
            group.starting_version.removed = True  # its start ends in a 404
        for worker in group.workers if group else []:
            worker.tenant.removed = True  # an older version may still drain
            worker.on_exit = self.leaving.discard
            self.leaving.add(worker)
            if not worker.retiring:
                retire(worker)

        self.gates.pop(tenant_id, None)
        self.boot_failures.pop(tenant_id, None)
        self.starts.pop(tenant_id, None)
        for key in [key for key in self.exits if key[0] == tenant_id]:
            del self.exits[key]

    def note_boot_failure(self, tenant: Tenant, error: WorkerBootFailed) -> None:
        """Back off a tenant that cannot start: 5 s, 10 s, ... up to a minute."""
        previous = self.boot_failures.get(tenant.id)
        failures = previous.failures + 1 if previous else 1
        backoff = self.settings.boot_retry_after_s * 2 ** (failures - 1)
        backoff = min(backoff, MAX_BOOT_BACKOFF_S)
        retry_at = time.monotonic() + backoff
        self.boot_failures[tenant.id] = BootFailure(error, retry_at, failures)
        log.warning(
            "tenant %s: boot failure %d, next try in %.0f s",
            tenant.id,
            failures,
            backoff,
        )

    def forget_worker(self, worker: Worker) -> None:
        """Drop a worker that left service; its tenant starts afresh."""
        self.exits[worker.tenant.id, worker.exit_reason or "crash"] += 1
        group = self.groups.get(worker.tenant.id)
        if group is not None and worker in group.workers:
            group.workers.remove(worker)

    async def make_room(self) -> None:
        """Evict least recently used idle workers until one more fits."""
        while len(self.workers) >= self.settings.max_warm_workers:
            victim = self.least_recently_used_idle()
            if victim is None:
                raise TenantBusy("the host is at its limit of warm workers")
            log.info(
                "evicting idle worker pid %d of tenant %s: host at %d workers",
                victim.pid,
                victim.tenant.id,
                self.settings.max_warm_workers,
            )
            await victim.shutdown("evicted")

    def least_recently_used_idle(self) -> Worker | None:
        idle = [w for w in self.workers if w.serving and w.in_flight == 0]
        return min(idle, key=lambda w: w.last_used, default=None)

    def recycle_if_due(self, worker: Worker) -> None:
        """Start replacing a worker near the end of its request quota.

        The replacement starts at 80% of the quota, so that it is usually
        ready by the time the old worker has served its last request.
        """
        quota = worker.recycle_after
        if quota is None or worker.recycling:
            return
        if worker.served >= max(1, quota * 4 // 5):
            served = f"{worker.served} of {quota} requests served"
            self.begin_recycle(worker, served, "recycle")

    def begin_recycle(self, worker: Worker, reason: str, kind: str) -> None:
        worker.recycling = True
        task = asyncio.create_task(self.recycle(worker, reason, kind))
        worker.tasks.append(task)

    async def recycle(self, worker: Worker, reason: str, kind: str) -> None:
        """Replace ``worker``: the new one first, then drain the old one."""
        tenant = worker.tenant
        log.info(
            "recycling worker pid %d of tenant %s: %s", worker.pid, tenant.id, reason
        )
        group = self.groups.get(tenant.id)
        if group is None or tenant.removed:
            return  # removed: the worker is draining already
        try:
            await asyncio.shield(self.start_worker(tenant, group))
        except (WorkerBootFailed, TenantBusy, WorkerCrashed, TenantNotFound) as exc:
            log.warning(
                "tenant %s: no replacement for pid %d: %s", tenant.id, worker.pid, exc
            )
            worker.recycling = False
            return
        await worker.shutdown(kind)

    async def supervise(self) -> None:
        """Once a second: reclaim idle workers, recycle those over memory."""
        while not self.closing:
            await asyncio.sleep(self.settings.supervise_interval_s)
            now = time.monotonic()
            for worker in self.workers:
                if not worker.check_heartbeat(now, self.settings.heartbeat_s):
                    error = WorkerCrashed("the worker stopped answering heartbeats")
                    worker.exit_reason = "heartbeat"
                    worker.tasks.append(
                        asyncio.create_task(worker.stop_after_failure(error))
                    )
                elif self.is_idle_too_long(worker, now):
                    log.info(
                        "reclaiming worker pid %d of tenant %s: idle",
                        worker.pid,
                        worker.tenant.id,
                    )
                    worker.tasks.append(asyncio.create_task(worker.shutdown("idle")))
                elif self.is_over_memory(worker):
                    self.begin_recycle(worker, "over its memory ceiling", "memory")
            await self.keep_within_memory_budget()

    def is_idle_too_long(self, worker: Worker, now: float) -> bool:
        limits = worker.tenant.config.limits
        if not worker.serving or worker.in_flight:
            return False
        if now - worker.last_used < limits.idle_timeout_s:
            return False
        group = self.groups.get(worker.tenant.id)
        keep_one = worker.tenant.config.prewarm and group is not None
        return not (keep_one and group is not None and len(group.workers) == 1)

    def is_over_memory(self, worker: Worker) -> bool:
        """Measure a worker that served since last look; True when too big."""
        if (
            not worker.serving
            or worker.recycling
            or worker.served == worker.measured_at
        ):
            return False
        worker.measured_at = worker.served
        try:
            # USS, the memory only this worker holds: a forked worker
            # shares most of its pages with the zygote, and counting those
            # once per worker (RSS) would evict warm workers long before
            # memory runs short. Read from smaps_rollup, so it is cheap.
            worker.rss = psutil.Process(worker.pid).memory_full_info().uss
        except psutil.Error:
            return False
        return worker.rss > memory_ceiling_bytes(worker.tenant)

    async def keep_within_memory_budget(self) -> None:
        """Evict idle workers, least recently used first, past the budget."""
        budget = self.memory_budget_bytes()
        while sum(w.rss for w in self.workers) > budget:
            victim = self.least_recently_used_idle()
            if victim is None:
                return
            log.info(
                "evicting worker pid %d: workers over their memory budget", victim.pid
            )
            await victim.shutdown("evicted")

    def memory_budget_bytes(self) -> int:
        """The private memory all workers together may hold."""
        return self.settings.max_workers_memory_mb * MiB or half_of_memory()

    async def prewarm(self, tenants: list[Tenant]) -> None:
        """Start workers for the tenants marked ``prewarm``, side by side."""
        chosen = [t for t in tenants if t.config.prewarm and t.problem is None]
        results = await asyncio.gather(
            *(self.worker_for(t) for t in chosen), return_exceptions=True
        )
        for tenant, result in zip(chosen, results, strict=True):
            if isinstance(result, BaseException):
                log.error("tenant %s: prewarm failed: %s", tenant.id, result)

    async def close(self) -> None:
        """Stop every worker; requests in flight get their time to finish."""
        self.closing = True
        for group in self.groups.values():
            if group.starting is not None:
                group.starting.cancel()
        workers = self.workers
        await asyncio.gather(*(w.shutdown() for w in workers))
        log.info("stopped %d workers", len(workers))
        await self.launcher.close()


def raise_if_removed(tenant: Tenant) -> None:
    """A request that reached a tenant just removed is answered 404."""
    if tenant.removed:
        raise TenantNotFound(f"no tenant named {tenant.id!r}")


def retire(worker: Worker) -> None:
    """Stop giving the worker requests; it stops once it has none."""
    worker.retiring = True
    worker.tasks.append(asyncio.create_task(worker.shutdown("retired")))


def half_of_memory() -> int:
    """The default budget for all workers: half of the machine's memory."""
    return int(psutil.virtual_memory().total // 2)


def recycle_after(max_requests: int) -> int | None:
    """A worker's request quota, jittered; None when recycling is off."""
    if max_requests <= 0:
        return None
    jitter = int(max_requests * RECYCLE_JITTER)
    return max_requests + random.randint(0, jitter)


def memory_ceiling_bytes(tenant: Tenant) -> int:
    """The resident size past which a worker is recycled."""
    limits = tenant.config.limits
    ceiling_mb = limits.memory_ceiling_mb or limits.memory_mb * 3 // 4
    return ceiling_mb * MiB
