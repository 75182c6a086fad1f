"""The tenants being served, and how a new version of one takes over.

Installing a version of a tenant never drops a request: the new version is
first booted in a worker of its own (a trial that also proves it loads);
only then do new requests go to it, while the previous version's workers
finish what they have and stop. A version that does not compile or does not
boot is refused, and the last good one keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from dispatcher.errors import WorkerBootFailed
from dispatcher.pool import WorkerPool
from dispatcher.tenants import Tenant

log = logging.getLogger("dispatcher.directory")


class DeployRefused(Exception):
    """A version of a tenant that cannot serve; the message says why."""


class TenantDirectory:
    """Tenant id to the version now serving; swaps versions safely."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.tenants: dict[str, Tenant] = {}
        # What else keeps state per tenant id, told when a tenant is removed.
        self.forget_hooks: list[Callable[[str], None]] = []

    def get(self, tenant_id: str) -> Tenant | None:
        return self.tenants.get(tenant_id)

    async def install(self, tenant: Tenant) -> float:
        """Serve ``tenant`` from now on; returns the trial's start-up in ms.

        Raises DeployRefused, leaving the serving version in place.
        """
        if tenant.problem is not None:
            raise DeployRefused(tenant.problem)
        check_compiles(tenant)
        try:
            worker = await self.pool.adopt_new_version(tenant)
        except WorkerBootFailed as exc:
            raise DeployRefused(exc.detail) from None

        previous = self.tenants.get(tenant.id)
        self.tenants[tenant.id] = tenant
        if previous is not None:
            await self.pool.retire_version(previous)
        log.info(
            "tenant %s: now serving %s (worker pid %d ready in %.1f ms)",
            tenant.id,
            tenant.version,
            worker.pid,
            worker.startup_ms,
        )
        return worker.startup_ms

    def remove(self, tenant_id: str) -> None:
        """Stop serving a tenant: new requests get 404, old ones finish.

        Everything kept about it - workers, counts, limits, log - is
        dropped at once, so that a tenant created later under the same id
        starts afresh. Nothing here awaits: a tenant installed under the
        id meanwhile could otherwise lose its own state. What a draining
        worker still prints reaches the operator's log only.
        """
        previous = self.tenants.pop(tenant_id, None)
        if previous is None:
            return
        log.info("tenant %s: removed; its workers drain and stop", tenant_id)
        previous.removed = True
        self.pool.forget_tenant(tenant_id)
        for forget in self.forget_hooks:
            forget(tenant_id)


def check_compiles(tenant: Tenant) -> None:
    """Compile the script (never run it) to report a syntax error early."""
    path = tenant.dir / tenant.config.script
    try:
        source = path.read_bytes()
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = Path(exc.filename or path).name
        raise DeployRefused(f"{where}, line {exc.lineno}: {exc.msg}") from None
    except (OSError, ValueError) as exc:
        raise DeployRefused(f"{path.name}: {exc}") from None
