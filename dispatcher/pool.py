"""The warm pool: one worker per tenant, started on demand, kept warm.

A tenant's first request starts its worker (or start-up does, for tenants
marked ``prewarm``); later requests reuse it. Concurrent first requests
share one start. A worker that dies is dropped from the pool, and the next
request starts a fresh one.

Each tenant has a gate: at most ``max_concurrency`` requests in flight, at
most ``max_queue`` waiting behind them; past that the answer is 503
``tenant_busy`` at once, so one busy tenant cannot pile up unbounded memory.

A tenant whose worker failed to boot is not retried until
``boot_retry_after_s`` has passed; meanwhile it answers 503
``worker_boot_failed`` with the reason, instead of respawning in a loop.

XXX: one worker per tenant; a tenant cannot yet spread over several
workers, idle workers are never reclaimed, and there is no host-wide budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from dispatcher.errors import TenantBusy, WorkerBootFailed, WorkerCrashed
from dispatcher.launcher import Launcher
from dispatcher.sandbox import SandboxPolicy
from dispatcher.settings import Settings
from dispatcher.tenant_log import TenantLog
from dispatcher.tenants import Tenant
from dispatcher.worker import Worker
from sandbox_runner import frames

log = logging.getLogger("dispatcher.pool")


class TenantGate:
    """Bounds the requests in flight and waiting for one tenant.

    A request waits at most as long as it would be given to run: past that
    the client learns the tenant is busy instead of waiting without end.
    """

    def __init__(self, max_concurrency: int, max_queue: int, max_wait_s: float) -> None:
        self.slots = asyncio.Semaphore(max_concurrency)
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.waiting = 0

    async def __aenter__(self) -> None:
        if not self.slots.locked():
            await self.slots.acquire()
            return
        if self.waiting >= self.max_queue:
            raise TenantBusy("the tenant has too many requests waiting")

        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self.slots.acquire()
        except TimeoutError:
            raise TenantBusy("the tenant stayed busy for the whole wait") from None
        finally:
            self.waiting -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.slots.release()


@dataclass
class BootFailure:
    """Why a tenant could not start, and until when not to try again."""

    error: WorkerBootFailed
    retry_at: float


class WorkerPool:
    """Every warm worker of this dispatcher, all tenants together."""

    def __init__(
        self,
        settings: Settings,
        tenant_log: TenantLog,
        sandbox: SandboxPolicy,
        launcher: Launcher,
    ) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.launcher = launcher
        self.tenant_log = tenant_log
        self.workers: dict[str, Worker] = {}
        self.starting: dict[str, asyncio.Task[Worker]] = {}
        self.gates: dict[str, TenantGate] = {}
        self.boot_failures: dict[str, BootFailure] = {}
        self.closing = False

    async def dispatch(
        self, tenant: Tenant, request: frames.Request
    ) -> frames.Response:
        """Run one request on the tenant's warm worker."""
        async with self.gate_for(tenant):
            worker = await self.worker_for(tenant)
            return await worker.call(request)

    def gate_for(self, tenant: Tenant) -> TenantGate:
        gate = self.gates.get(tenant.id)
        if gate is None:
            limits = tenant.config.limits
            gate = TenantGate(
                limits.max_concurrency, limits.max_queue, limits.timeout_ms / 1000
            )
            self.gates[tenant.id] = gate
        return gate

    async def worker_for(self, tenant: Tenant) -> Worker:
        """The tenant's live worker, starting one if there is none."""
        worker = self.workers.get(tenant.id)
        if worker is not None and worker.alive:
            return worker
        self.raise_if_failed_recently(tenant)

        starting = self.starting.get(tenant.id)
        if starting is None:
            starting = asyncio.create_task(self.spawn_worker(tenant))
            self.starting[tenant.id] = starting
        # shield: one caller giving up must not cancel the shared start.
        return await asyncio.shield(starting)

    def raise_if_failed_recently(self, tenant: Tenant) -> None:
        if tenant.problem is not None:
            raise WorkerBootFailed(f"the tenant cannot start: {tenant.problem}")
        failure = self.boot_failures.get(tenant.id)
        if failure is not None and time.monotonic() < failure.retry_at:
            raise WorkerBootFailed(failure.error.message)

    async def spawn_worker(self, tenant: Tenant) -> Worker:
        """Start a worker and make it the tenant's; remember a boot failure."""
        try:
            worker = await Worker.spawn(
                tenant, self.settings, self.tenant_log, self.sandbox, self.launcher
            )
        except WorkerBootFailed as exc:
            retry_at = time.monotonic() + self.settings.boot_retry_after_s
            self.boot_failures[tenant.id] = BootFailure(exc, retry_at)
            raise
        finally:
            self.starting.pop(tenant.id, None)

        self.boot_failures.pop(tenant.id, None)
        if self.closing:
            await worker.shutdown()
            raise WorkerCrashed("the dispatcher is shutting down")
        worker.on_exit = self.forget_worker
        self.workers[tenant.id] = worker
        return worker

    def forget_worker(self, worker: Worker) -> None:
        """Drop a worker that left service; its tenant starts afresh."""
        if self.workers.get(worker.tenant.id) is worker:
            del self.workers[worker.tenant.id]

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
        for task in list(self.starting.values()):
            task.cancel()
        workers = list(self.workers.values())
        await asyncio.gather(*(w.shutdown() for w in workers))
        log.info("stopped %d workers", len(workers))
        await self.launcher.close()
