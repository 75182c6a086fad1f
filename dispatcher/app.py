"""The public listener: a raw ASGI dispatch path inside one FastAPI app.

Tenant traffic - any method, any path, with an ``x-customer-id`` header -
goes straight to ``Dispatcher.handle``, a plain ASGI callable. FastAPI's
per-route machinery costs several times the whole dispatch path (measured:
~6-7k req/s through a FastAPI route against ~25k through raw ASGI on the
same machine), so it serves only the operator's paths (``/healthz``) and
the application's lifespan, where its conveniences matter and speed does
not.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from prometheus_client import generate_latest

from dispatcher.admin import build_admin_app
from dispatcher.bodies import BodyBudget, read_body
from dispatcher.deliveries import AsyncDeliverySink, DeliveryLoop, DeliveryStore
from dispatcher.deployments import Deployments
from dispatcher.directory import TenantDirectory
from dispatcher.errors import (
    DispatchError,
    InvalidTenantId,
    MissingTenantId,
    PayloadTooLarge,
    TenantNotFound,
)
from dispatcher.launcher import ExecLauncher, ZygoteLauncher
from dispatcher.metrics import MetricsSnapshot, metrics_registry
from dispatcher.outbound import EgressDenied, EgressGateway, EgressPolicy
from dispatcher.outbound_limits import OutboundLimits
from dispatcher.pool import RequestTrace, WorkerPool
from dispatcher.ratelimit import RateLimiter
from dispatcher.readiness import StateWriteCheck
from dispatcher.registry import Registry
from dispatcher.reloader import watch_tenants_folder
from dispatcher.sandbox import SandboxPolicy
from dispatcher.settings import Settings
from dispatcher.status import (
    RequestStats,
    outbound_by_tenant,
    status_report,
    tenant_status,
    usage_of,
)
from dispatcher.tenant_log import TenantLog, redact, redact_path
from dispatcher.tenants import Tenant, is_valid_tenant_id, load_tenants
from sandbox_runner import frames
from sandbox_runner.responses import NO_BODY_STATUSES

log = logging.getLogger("dispatcher.app")
access_log = logging.getLogger("dispatcher.access")

Scope = dict[str, Any]
Receive = Any
Send = Any

TENANT_HEADER = b"x-customer-id"
OPERATOR_PATHS = frozenset({"/healthz"})
# Headers the dispatcher owns on every response; a tenant's are dropped.
OWNED_HEADERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"date",
        b"x-request-id",
    }
)


class Dispatcher:
    """Routes each request to its tenant's worker; see the module note."""

    def __init__(
        self, settings: Settings, sandbox: SandboxPolicy, registry: Registry
    ) -> None:
        self.settings = settings
        self.tenant_log = TenantLog()
        self.launcher = ZygoteLauncher() if settings.zygote else ExecLauncher()
        self.delivery_store = DeliveryStore(settings.state_dir / "deliveries.sqlite3")
        self.state_check = StateWriteCheck(settings.state_dir)
        self.delivery_wake = asyncio.Event()
        sink = AsyncDeliverySink(self.delivery_store, self.delivery_wake)
        networks = [ipaddress.ip_network(n) for n in settings.private_egress]
        regions = dict(settings.egress_regions)
        self.outbound_limits = OutboundLimits()
        policy = EgressPolicy(networks, regions)
        self.gateway = EgressGateway(policy, sink, self.outbound_limits)
        self.delivery_loop = DeliveryLoop(
            self.delivery_store,
            self.delivery_wake,
            time_scale=settings.delivery_time_scale,
            limits=self.outbound_limits,
            rate_of=self.outbound_rate,
            refusal_of=self.delivery_refusal,
        )
        # Set when serving starts: a signal handler schedules work on it.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool = WorkerPool(
            settings, self.tenant_log, sandbox, self.launcher, self.gateway
        )
        self.directory = TenantDirectory(self.pool)
        self.rate_limiter = RateLimiter()
        self.stats = RequestStats()
        self.directory.forget_hooks += [
            self.gateway.forget,
            self.outbound_limits.forget,
            self.rate_limiter.forget,
            self.stats.forget,
            self.tenant_log.forget,
        ]
        self.metrics = metrics_registry(self)
        self.metrics_snapshot = MetricsSnapshot({}, {})
        self.deployments = Deployments(
            registry,
            self.directory,
            settings.state_dir,
            tenants_dir=settings.tenants_dir,
        )
        self.background: list[asyncio.Task[None]] = []
        # The management API, answered only on its own listener's port.
        self.admin_app: Any = None
        self.admin_port: int | None = None
        self.body_budget = BodyBudget(settings.max_held_body_bytes)
        self.operator_app = build_operator_app(self)

    def enable_admin(self, token: str, port: int) -> None:
        """Serve the management API to requests that arrive on ``port``."""
        self.admin_app = build_admin_app(self.deployments, token, self)
        self.admin_port = port

    def has_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self.directory.tenants

    def redact(self, tenant_id: str, text: str) -> str:
        """``text`` with the secret values of the tenant, if it exists, hidden."""
        tenant = self.directory.get(tenant_id)
        return redact(text, tenant) if tenant is not None else text

    async def status(self) -> dict[str, Any]:
        """Every tenant's state, counts and limits, for ``GET /status``."""
        usage = await usage_of(self.pool.workers)
        return status_report(self.directory, self.pool, self.stats, self.gateway, usage)

    async def tenant_detail(self, tenant_id: str) -> dict[str, Any] | None:
        """One tenant's status with its recent log lines; None if unknown."""
        if tenant_id not in self.directory.tenants:
            return None
        usage = await usage_of(self.pool.workers_of(tenant_id))
        tenant = self.directory.get(tenant_id)
        if tenant is None:
            return None  # deleted while its usage was read
        outbound = outbound_by_tenant(self.gateway.counts).get(tenant_id, {})
        detail = tenant_status(
            tenant,
            self.pool.workers_of(tenant_id),
            self.stats.of(tenant_id),
            outbound,
            usage,
        )
        detail["logs"] = [
            {"at": line.at, "pid": line.pid, "text": line.text}
            for line in self.tenant_log.recent(tenant_id)
        ]
        detail["slow_requests"] = self.tenant_log.slow_requests(tenant_id)
        detail["circuits"] = self.circuits_of(tenant_id)
        return detail

    async def metrics_text(self) -> bytes:
        """Every metric in Prometheus' text format.

        What takes time to read - the workers' memory, the deliveries'
        counts - is read on threads first; the text is then written from
        that snapshot and the in-memory counts, on the loop, in one go.
        """
        usage = await usage_of(self.pool.workers)
        deliveries = await asyncio.to_thread(self.delivery_store.counts_by_tenant)
        self.metrics_snapshot = MetricsSnapshot(usage, deliveries)
        return generate_latest(self.metrics)

    def circuit_counts(self) -> Counter[tuple[str, str]]:
        """Target hosts per tenant and circuit state."""
        return self.delivery_loop.circuits.counts(time.time())

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Can this dispatcher take traffic: workers can start, state saves."""
        zygote, state = await asyncio.gather(
            self.launcher.readiness(), self.state_check.check()
        )
        checks = {"zygote": zygote, "state_database": state}
        ready = zygote in ("up", "started", "not used") and state == "writable"
        return ready, checks

    async def delivery_refusal(self, tenant_id: str, url: str) -> str | None:
        """Why a stored delivery may not be sent now, or None if it may."""
        tenant = self.directory.get(tenant_id)
        try:
            await self.gateway.policy.check_destination(tenant, url)
        except EgressDenied as exc:
            reason = redact(str(exc), tenant) if tenant else str(exc)
            return f"{exc.code}: {reason}"
        return None

    def outbound_rate(self, tenant_id: str, host: str) -> float:
        """Calls per second the tenant may make to ``host`` (0: no limit)."""
        tenant = self.directory.get(tenant_id)
        return tenant.config.egress.rate_limits.get(host, 0.0) if tenant else 0.0

    def circuits_of(self, tenant: str) -> list[dict[str, object]]:
        """The tenant's circuit breakers."""
        return self.delivery_loop.circuits.of_tenant(tenant, time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if self.admin_port is not None and server and server[1] == self.admin_port:
            await self.admin_app(scope, receive, send)
            return
        if scope["type"] != "http" or self.is_operator_request(scope):
            await self.operator_app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    def is_operator_request(self, scope: Scope) -> bool:
        """Paths of the dispatcher itself, asked for without a tenant."""
        if scope["path"] not in OPERATOR_PATHS:
            return False
        return all(name != TENANT_HEADER for name, _ in scope["headers"])

    async def start(self) -> None:
        """Read the tenants, warm the prewarm ones, then freeze the heap."""
        self.loop = asyncio.get_running_loop()
        tenants = load_tenants(self.settings.tenants_dir, self.settings.state_dir)
        self.directory.tenants = tenants
        names = list(tenants)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        log.info(
            "serving %d tenants from %s: %s",
            len(tenants),
            self.settings.tenants_dir,
            shown or "none",
        )
        await self.deployments.restore_all()
        await self.pool.prewarm(list(tenants.values()))
        self.background.append(asyncio.create_task(self.pool.supervise()))
        self.background.append(asyncio.create_task(self.delivery_loop.run()))
        if self.settings.watch:
            watcher = watch_tenants_folder(
                self.settings.tenants_dir, self.settings.state_dir, self.directory
            )
            self.background.append(asyncio.create_task(watcher))

        # Objects alive now live as long as the process: moving them out of
        # the collector's reach cut full-collection pauses from tens of
        # milliseconds at p99 to a few.
        gc.collect()
        gc.freeze()

    def begin_shutdown(self) -> None:
        """Called from a signal handler: end the live tails on the loop."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(
                self.tenant_log.end_all_tails, "the dispatcher is shutting down"
            )

    async def stop(self) -> None:
        for task in self.background:
            task.cancel()
        await self.pool.close()
        await self.gateway.close()
        await self.delivery_loop.close()
        self.delivery_store.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one tenant request, always in the documented shape."""
        started = time.perf_counter()
        request_id = os.urandom(8).hex()
        tenant_id = ""
        trace = RequestTrace()
        try:
            tenant_id = tenant_id_of(scope)
            tenant = self.find_tenant(tenant_id)
            self.rate_limiter.check(tenant, scope["path"])
            request = await self.read_request(scope, receive, request_id)
            response = await self.pool.dispatch(tenant, request, trace)
            status, code = response.status, ""
            await send_tenant_response(send, response, request_id)
        except DispatchError as exc:
            status, code = exc.status, exc.code
            await send_error(send, exc, tenant_id, request_id)
        except Exception:
            log.exception("request %s for tenant %s failed", request_id, tenant_id)
            status, code = 500, "internal_error"
            await send_error(
                send, DispatchError("internal error"), tenant_id, request_id
            )
        access = AccessRecord(
            tenant_id, status, code, time.perf_counter() - started, request_id, trace
        )
        self.record(scope, access)

    def record(self, scope: Scope, access: AccessRecord) -> None:
        """Count an answered request, log it, and show it in the tenant's tail."""
        tenant = self.directory.get(access.tenant_id)
        if tenant is not None:
            self.stats.record(
                tenant.id,
                access.status,
                access.code,
                access.duration_s,
                served=access.trace.pid != 0,
                cold=access.trace.cold,
            )
        elif access.code:  # not a tenant deleted while its request ran
            self.stats.record_unrouted(access.code)
        if self.settings.access_log or self.tenant_log.is_tailed(access.tenant_id):
            fields = access_fields(scope, access, tenant)
            if self.settings.access_log:
                log_access(fields)
            if tenant is not None:
                self.tenant_log.publish_request(tenant, fields)

    def find_tenant(self, tenant_id: str) -> Tenant:
        """The tenant by id; unknown ids never start a process."""
        tenant = self.directory.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(f"no tenant named {tenant_id!r}")
        return tenant

    async def read_request(
        self, scope: Scope, receive: Receive, request_id: str
    ) -> frames.Request:
        """The request as a frame, its body read whole and size-checked."""
        body = await read_body(
            scope,
            receive,
            self.settings.max_body_bytes,
            self.settings.body_timeout_s,
            self.body_budget,
        )
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
        ]
        return frames.Request(
            id=0,
            request_id=request_id,
            method=scope["method"],
            url=url_of(scope),
            headers=headers,
            body=body,
        )


@dataclass
class AccessRecord:
    """What the access log, the counts and the tail need of one request."""

    tenant_id: str
    status: int
    code: str
    duration_s: float
    request_id: str
    trace: RequestTrace


def access_fields(
    scope: Scope, access: AccessRecord, tenant: Tenant | None
) -> dict[str, Any]:
    """One request as the access log and the tail show it, secrets hidden."""
    # The raw path, still percent-encoded: a decoded one could carry a line
    # break into a plain log.
    path = raw_path_of(scope)
    started = None
    if access.trace.pid:
        started = "cold" if access.trace.cold else "warm"
    return {
        "tenant": access.tenant_id or None,
        "method": scope["method"],
        "path": redact_path(path, tenant) if tenant is not None else path,
        "status": access.status,
        "code": access.code or None,
        "duration_ms": round(access.duration_s * 1000, 2),
        "pid": access.trace.pid or None,
        "start": started,
        "request_id": access.request_id,
    }


def log_access(fields: dict[str, Any]) -> None:
    """One access line: plain text, or JSON fields with ``--log-format json``."""
    access_log.info(
        "%s %s %s %d %s %.1fms pid=%s %s %s",
        fields["tenant"] or "-",
        fields["method"],
        fields["path"],
        fields["status"],
        fields["code"] or "-",
        fields["duration_ms"],
        fields["pid"] or "-",
        fields["start"] or "-",
        fields["request_id"],
        extra={"fields": fields},
    )


def tenant_id_of(scope: Scope) -> str:
    """The tenant named by the request's headers, checked before any use."""
    values = {v for k, v in scope["headers"] if k == TENANT_HEADER}
    if len(values) > 1:
        raise InvalidTenantId("x-customer-id was sent twice with different values")
    raw = values.pop() if values else b""
    if not raw.strip():
        raise MissingTenantId("the x-customer-id header names no tenant")

    tenant_id = raw.decode("latin-1")
    if not is_valid_tenant_id(tenant_id):
        raise InvalidTenantId("x-customer-id must match ^[a-z0-9][a-z0-9-]{0,62}$")
    return tenant_id


def raw_path_of(scope: Scope) -> str:
    """The path as the client sent it, percent-encoding kept."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.decode("latin-1")


def url_of(scope: Scope) -> str:
    """The request URL as the client sent it, path encoding kept."""
    host = "localhost"
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            break
    path = raw_path_of(scope)
    query = scope["query_string"].decode("latin-1")
    url = f"{scope['scheme']}://{host}{path}"
    return f"{url}?{query}" if query else url


async def send_tenant_response(
    send: Send, response: frames.Response, request_id: str
) -> None:
    """Send a worker's answer; the worker checked it against HTTP's rules."""
    headers = [(b"x-request-id", request_id.encode())]
    for name, value in response.headers:
        raw_name = name.lower().encode("latin-1")
        if raw_name not in OWNED_HEADERS:
            headers.append((raw_name, value.encode("latin-1")))
    if response.status not in NO_BODY_STATUSES:
        headers.append((b"content-length", str(len(response.body)).encode()))

    start = {"type": "http.response.start", "status": response.status}
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def send_error(
    send: Send, error: DispatchError, tenant_id: str, request_id: str
) -> None:
    """Send ``error`` in the JSON shape every client can rely on."""
    body = orjson.dumps(
        {
            "error": {
                "code": error.code,
                "message": error.message,
                "tenant": tenant_id or None,
                "request_id": request_id,
            }
        }
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in error.headers]
    if isinstance(error, PayloadTooLarge) and not error.keep_connection:
        # The rest of the body is still on the wire; do not reuse it.
        headers.append((b"connection", b"close"))
    await send(
        {"type": "http.response.start", "status": error.status, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})


def build_operator_app(dispatcher: Dispatcher) -> FastAPI:
    """The FastAPI app for the dispatcher's own paths and its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await dispatcher.start()
        yield
        await dispatcher.stop()

    app = FastAPI(
        title="Switchyard dispatcher",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Alive. Anyone can reach this port: it says no more than that."""
        return {"status": "ok"}

    return app
