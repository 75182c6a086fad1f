"""The management API: deploy scripts, set secrets and settings, roll back.

It listens on its own port (default 127.0.0.1:8788) so that it is never
reachable through the public one by accident, and every request to it -
the OpenAPI docs included - needs ``Authorization: Bearer <token>``: the
check wraps the whole app, so a route added later cannot forget it.
Without a configured token the API does not start at all.

Paths follow the seed platform's shape::

    /accounts/{account}/workers/dispatch/namespaces/{namespace}/scripts/{script}

The account segment is accepted for compatibility; one dispatcher serves
one account. Only the dispatch namespace (``default``) is served.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, Literal, Protocol

import msgspec
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from dispatcher.console import CONSOLE_PATHS, add_console_routes
from dispatcher.deliveries import Delivery, DeliveryStore
from dispatcher.deployments import Deployments
from dispatcher.directory import DeployRefused
from dispatcher.registry import (
    EgressValue,
    InvalidInput,
    RegistryError,
    ScriptNotFound,
    ScriptSettings,
    ScriptVersion,
    VersionNotFound,
)
from dispatcher.served import served_code, served_script
from dispatcher.tenant_log import LogLine, Tail, TenantLog
from dispatcher.tenants import BINDING_NAME, is_valid_tenant_id

log = logging.getLogger("dispatcher.admin")

SCRIPTS = "/accounts/{account}/workers/dispatch/namespaces/{namespace}/scripts"
SCRIPT = SCRIPTS + "/{script}"
JSON = "application/json"
DeliveryState = Literal["pending", "succeeded", "dead"]
METRICS_TYPE = CONTENT_TYPE_LATEST
# Followers of one script's log at once; each holds a bounded queue.
MAX_TAILS_PER_SCRIPT = 16
# A comment line this often keeps proxies from closing a quiet tail.
TAIL_KEEPALIVE_S = 15.0
PYTHON_TYPES = ("text/x-python", "text/plain", "application/octet-stream")
MAX_REQUEST_BYTES = 2 * 1024 * 1024


class AdminError(Exception):
    """An error answer of the management API, in the documented shape."""

    def __init__(self, status: int, code: str, message: str, script: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.script = script


# A script's tags: few and short, since every listing by tag reads them all.
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=8)]


class Metadata(msgspec.Struct, forbid_unknown_fields=True):
    """The ``metadata`` part of a multipart upload."""

    main_module: str = "worker.py"
    vars: dict[str, str | int | float | bool] = {}
    secrets: list[str] = []
    limits: dict[str, int | float] = {}
    tags: Tags = []
    # Where the script may call out: allow, max_subrequests, rate_limits.
    egress: dict[str, EgressValue] = {}


class SettingsPatch(msgspec.Struct, forbid_unknown_fields=True):
    """A PATCH of settings: each field given replaces the current one."""

    vars: dict[str, str | int | float | bool] | None = None
    secrets: list[str] | None = None
    limits: dict[str, int | float] | None = None
    tags: Tags | None = None
    egress: dict[str, EgressValue] | None = None


def error_response(error: AdminError, request_id: str) -> Response:
    body = {
        "error": {
            "code": error.code,
            "message": error.message,
            "tenant": error.script or None,
            "request_id": request_id,
        }
    }
    headers = {"x-request-id": request_id}
    if error.status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(orjson.dumps(body), error.status, headers, "application/json")


# Probes a load balancer or an orchestrator sends without credentials. They
# answer with states only ("ok", "ready"), never a tenant's name or data.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class BearerAuth:
    """ASGI wrapper: no token 401, a wrong one 403, compared in constant time.

    ``public_paths`` are answered to a GET without a token: exact paths,
    nothing below them. Only two kinds are there: the console's page,
    script and style - files that hold no data, and that a browser must
    load before the page can ask for the token at all - and the health
    probes, which answer with states only.
    """

    def __init__(
        self, app: Any, token: str, public_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.public_paths = public_paths

    def is_public(self, scope: Any) -> bool:
        return scope["method"] == "GET" and scope["path"] in self.public_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.is_public(scope):
            given = dict(scope["headers"]).get(b"authorization")
            if given is None:
                error = AdminError(401, "unauthorized", "a bearer token is required")
            elif not hmac.compare_digest(given, self.expected):
                error = AdminError(403, "forbidden", "the bearer token is not valid")
            else:
                error = None
            if error is not None:
                await error_response(error, os.urandom(8).hex())(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Operations(Protocol):
    """What the API asks of the running dispatcher beyond the registry."""

    delivery_store: DeliveryStore
    delivery_wake: asyncio.Event
    tenant_log: TenantLog

    def circuits_of(self, tenant: str) -> list[dict[str, object]]: ...

    def has_tenant(self, tenant_id: str) -> bool: ...

    def redact(self, tenant_id: str, text: str) -> str: ...

    async def status(self) -> dict[str, Any]: ...

    async def tenant_detail(self, tenant_id: str) -> dict[str, Any] | None: ...

    async def metrics_text(self) -> bytes: ...

    async def readiness(self) -> tuple[bool, dict[str, str]]: ...


def build_admin_app(
    deployments: Deployments, token: str, operations: Operations | None = None
) -> BearerAuth:
    """The management API, wrapped in its bearer-token check."""
    # No redirect to the slash-less path: a 307 with an empty body is no
    # answer in the documented shape; the path is simply not found.
    app = FastAPI(
        title="Switchyard management API", version="1", redirect_slashes=False
    )

    @app.exception_handler(AdminError)
    async def on_admin_error(request: Request, exc: AdminError) -> Response:
        return error_response(exc, os.urandom(8).hex())

    # What the framework refuses itself (a multipart part over its size,
    # say) is answered in the same shape as everything else.
    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        script = str(request.path_params.get("script", ""))
        error = AdminError(exc.status_code, "invalid_request", str(exc.detail), script)
        return error_response(error, os.urandom(8).hex())

    # Registry errors a caller can act on, for every route at once.
    @app.exception_handler(ScriptNotFound)
    async def on_missing_script(request: Request, exc: ScriptNotFound) -> Response:
        script = str(request.path_params.get("script", ""))
        return error_response(script_not_found(script), os.urandom(8).hex())

    @app.exception_handler(RequestValidationError)
    async def on_bad_parameter(
        request: Request, exc: RequestValidationError
    ) -> Response:
        script = str(request.path_params.get("script", ""))
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        error = AdminError(400, "invalid_request", problems[:500], script)
        return error_response(error, os.urandom(8).hex())

    # The state database failed under a route (a full disk, a read-only
    # file): the operator's problem, not the caller's; say so in the shape.
    @app.exception_handler(RegistryError)
    async def on_registry_error(request: Request, exc: RegistryError) -> Response:
        log.error("management API: the registry failed: %s", exc)
        error = AdminError(
            503, "state_unavailable", "the state database cannot be used now"
        )
        return error_response(error, os.urandom(8).hex())

    @app.exception_handler(InvalidInput)
    async def on_invalid_input(request: Request, exc: InvalidInput) -> Response:
        script = str(request.path_params.get("script", ""))
        error = AdminError(400, "invalid_input", str(exc), script)
        return error_response(error, os.urandom(8).hex())

    add_script_routes(app, deployments)
    add_serving_routes(app, deployments)
    add_secret_routes(app, deployments)
    add_version_routes(app, deployments)
    if operations is not None:
        add_delivery_routes(app, deployments, operations)
        add_operations_routes(app, deployments, operations)
    add_console_routes(app)
    return BearerAuth(app, token, CONSOLE_PATHS | PROBE_PATHS)


def add_operations_routes(
    app: FastAPI, deployments: Deployments, operations: Operations
) -> None:
    """Health, readiness, metrics, status and the live tail."""

    @app.get("/healthz", summary="Alive: the dispatcher answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready: workers can start, state can be saved")
    async def readyz() -> Response:
        ready, checks = await operations.readiness()
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return Response(orjson.dumps(body), 200 if ready else 503, None, JSON)

    @app.get("/metrics", summary="Prometheus metrics, per tenant and host")
    async def metrics() -> Response:
        return Response(await operations.metrics_text(), 200, None, METRICS_TYPE)

    @app.get("/status", summary="Every tenant: version, state, counts, limits")
    async def get_status() -> dict[str, Any]:
        return await operations.status()

    @app.get("/status/{script}", summary="One tenant: status, recent logs, slow stacks")
    async def get_tenant_status(script: str) -> dict[str, Any]:
        name = checked_script(deployments.namespace, script, deployments)
        detail = await operations.tenant_detail(name)
        if detail is None:
            raise script_not_found(name)
        return detail

    @app.get(SCRIPT + "/tail", summary="Follow the script's log (Server-Sent Events)")
    async def tail(
        account: str, namespace: str, script: str, recent: int = 0
    ) -> StreamingResponse:
        name = checked_script(namespace, script, deployments)
        if not operations.has_tenant(name):
            raise script_not_found(name)
        tenant_log = operations.tenant_log
        if len(tenant_log.tails.get(name, ())) >= MAX_TAILS_PER_SCRIPT:
            raise AdminError(
                429, "too_many_tails", f"{MAX_TAILS_PER_SCRIPT} tails follow it", name
            )
        history = tenant_log.recent(name)[-recent:] if recent > 0 else []
        follower = tenant_log.follow(name)
        return StreamingResponse(
            tail_events(name, tenant_log, follower, history),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )


async def tail_events(
    name: str, tenant_log: TenantLog, follower: Tail, history: list[LogLine]
) -> AsyncIterator[bytes]:
    """The SSE stream of one follower; it stops following when the client goes."""
    try:
        yield b": following " + name.encode() + b"\n\n"
        for line in history:
            yield sse_event("log", {"type": "log", **asdict(line)})
        while True:
            try:
                async with asyncio.timeout(TAIL_KEEPALIVE_S):
                    event = await follower.events.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            dropped = follower.take_dropped()
            if dropped:
                yield sse_event("dropped", {"type": "dropped", "dropped": dropped})
            yield sse_event(str(event["type"]), event)
            if event["type"] == "end":
                return
    finally:
        tenant_log.unfollow(name, follower)


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event; JSON has no raw line breaks, so one data line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def script_not_found(script: str) -> AdminError:
    return AdminError(404, "script_not_found", f"no script {script!r}", script)


def checked_script(namespace: str, script: str, deployments: Deployments) -> str:
    """Refuse bad names before any file-system or database access."""
    if not is_valid_tenant_id(script):
        raise AdminError(
            400, "invalid_name", "script names match ^[a-z0-9][a-z0-9-]{0,62}$"
        )
    if namespace != deployments.namespace:
        raise AdminError(404, "namespace_not_found", f"no namespace {namespace[:64]!r}")
    return script


def describe(version: ScriptVersion, startup_ms: float | None = None) -> dict[str, Any]:
    """A version as the API shows it: never a secret value."""
    settings = version.settings
    answer: dict[str, Any] = {
        "id": version.version_id,
        "script": version.script,
        "number": version.number,
        "sha256": version.sha256,
        "main_module": version.main_module,
        "files": sorted(version.files),
        "vars": settings.vars,
        "secrets": settings.secret_names,
        "limits": settings.limits,
        "tags": settings.tags,
        "egress": settings.egress,
        "created_at": version.created_at,
        "active": version.active,
    }
    if startup_ms is not None:
        answer["startup_time_ms"] = round(startup_ms, 2)
    return answer


async def read_upload(
    request: Request, previous: ScriptVersion | None
) -> tuple[str, dict[str, bytes], ScriptSettings]:
    """The files and settings of an upload: plain source or multipart."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type in PYTHON_TYPES:
        source = await read_limited(request)
        settings = previous.settings if previous else ScriptSettings({}, [], {}, [])
        main = previous.main_module if previous else "worker.py"
        return main, {main: source}, settings
    if content_type == "multipart/form-data":
        return await read_multipart(request)
    raise AdminError(
        415, "unsupported_media_type", "send text/x-python or multipart/form-data"
    )


async def read_limited(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_REQUEST_BYTES:
        raise AdminError(
            413,
            "payload_too_large",
            f"uploads are limited to {MAX_REQUEST_BYTES} bytes",
        )
    return body


async def read_multipart(
    request: Request,
) -> tuple[str, dict[str, bytes], ScriptSettings]:
    """A ``metadata`` JSON part plus one part per module file."""
    form = await request.form(
        max_files=64, max_fields=16, max_part_size=MAX_REQUEST_BYTES
    )
    metadata = Metadata()
    files: dict[str, bytes] = {}
    for key, value in form.multi_items():
        raw = await value.read() if hasattr(value, "read") else str(value).encode()
        if key == "metadata":
            metadata = decode_metadata(raw)
        else:
            name = getattr(value, "filename", None) or key
            files[str(name)] = raw
    settings = ScriptSettings(
        metadata.vars,
        metadata.secrets,
        metadata.limits,
        metadata.tags,
        metadata.egress,
    )
    check_binding_names(settings)
    return metadata.main_module, files, settings


def decode_metadata(raw: bytes) -> Metadata:
    try:
        return msgspec.json.decode(raw, type=Metadata)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise AdminError(400, "invalid_metadata", f"metadata: {exc}") from None


def check_binding_names(settings: ScriptSettings) -> None:
    for name in [*settings.vars, *settings.secret_names]:
        if not BINDING_NAME.fullmatch(name):
            raise AdminError(
                400, "invalid_name", f"binding name {name[:64]!r} is not an identifier"
            )


def add_script_routes(app: FastAPI, deployments: Deployments) -> None:
    registry = deployments.registry

    @app.put(SCRIPT, summary="Upload a script (new version, trial-loaded)")
    async def put_script(
        request: Request, account: str, namespace: str, script: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        previous = registry.active_version(namespace, name)
        main, files, settings = await read_upload(request, previous)
        try:
            version, startup_ms = await deployments.deploy(name, main, files, settings)
        except DeployRefused as exc:
            raise AdminError(400, "invalid_script", str(exc), name) from None
        return describe(version, startup_ms)

    @app.get(SCRIPT, summary="The script's active version")
    async def get_script(account: str, namespace: str, script: str) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        version = registry.active_version(namespace, name)
        if version is None:
            raise script_not_found(name)
        return describe(version)

    @app.get(SCRIPTS, summary="Every script, optionally those with a tag")
    async def list_scripts(
        account: str, namespace: str, tag: str | None = None
    ) -> dict[str, Any]:
        checked_script(namespace, "x", deployments)
        versions = registry.list_scripts(namespace, tag)
        return {"scripts": [describe(v) for v in versions]}

    @app.delete(SCRIPT, summary="Delete a script; its workers drain and stop")
    async def delete_script(
        account: str, namespace: str, script: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        if not await deployments.remove(name):
            raise script_not_found(name)
        return {"deleted": name}

    @app.patch(SCRIPT + "/settings", summary="Change vars, secret names, limits, tags")
    async def patch_settings(
        request: Request, account: str, namespace: str, script: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        current = registry.active_version(namespace, name)
        if current is None:
            raise script_not_found(name)
        settings = merged_settings(current.settings, await read_patch(request))
        check_binding_names(settings)
        try:
            await deployments.serve_changed_settings(current, settings)
        except DeployRefused as exc:
            raise AdminError(400, "invalid_settings", str(exc), name) from None
        version = registry.update_settings(namespace, name, settings)
        deployments.label(name, version.version_id)
        return describe(version)


async def read_patch(request: Request) -> SettingsPatch:
    try:
        return msgspec.json.decode(await read_limited(request), type=SettingsPatch)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise AdminError(400, "invalid_settings", f"settings: {exc}") from None


def merged_settings(current: ScriptSettings, patch: SettingsPatch) -> ScriptSettings:
    return ScriptSettings(
        vars=current.vars if patch.vars is None else patch.vars,
        secret_names=current.secret_names if patch.secrets is None else patch.secrets,
        limits=current.limits if patch.limits is None else patch.limits,
        tags=current.tags if patch.tags is None else patch.tags,
        egress=current.egress if patch.egress is None else patch.egress,
    )


def add_serving_routes(app: FastAPI, deployments: Deployments) -> None:
    """What a script serves now, whether deployed here or from the folder."""

    @app.get(SCRIPT + "/settings", summary="The settings the script serves with")
    async def get_settings(account: str, namespace: str, script: str) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        served = served_script(deployments, name)
        if served is None:
            raise script_not_found(name)
        return served.describe()

    @app.get(SCRIPT + "/content", summary="The main module the script serves")
    async def get_content(account: str, namespace: str, script: str) -> Response:
        name = checked_script(namespace, script, deployments)
        served = served_script(deployments, name)
        code = served_code(deployments, name)
        if served is None or code is None:
            raise script_not_found(name)
        # As uploaded: no charset is added, since none was declared.
        return Response(code, headers={"content-type": served.content_type})


def add_secret_routes(app: FastAPI, deployments: Deployments) -> None:
    registry = deployments.registry

    @app.put(
        SCRIPT + "/secrets/{secret}", summary="Set a secret (value never returned)"
    )
    async def put_secret(
        request: Request, account: str, namespace: str, script: str, secret: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        check_secret_name(secret)
        value = secret_value_of(await read_limited(request), request)
        registry.put_secret(namespace, name, secret, value)
        await deployments.reload_secrets(name)
        return {"name": secret, "type": "secret_text"}

    @app.get(SCRIPT + "/secrets", summary="The names of the script's secrets")
    async def list_secrets(account: str, namespace: str, script: str) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        names = registry.secret_names(namespace, name)
        return {"secrets": [{"name": n, "type": "secret_text"} for n in names]}

    @app.delete(SCRIPT + "/secrets/{secret}", summary="Delete a secret")
    async def delete_secret(
        account: str, namespace: str, script: str, secret: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        check_secret_name(secret)
        try:
            deleted = registry.delete_secret(namespace, name, secret)
        except ScriptNotFound:
            deleted = False
        if not deleted:
            raise AdminError(404, "secret_not_found", f"no secret {secret!r}", name)
        await deployments.reload_secrets(name)
        return {"deleted": secret}


def check_secret_name(secret: str) -> None:
    if not BINDING_NAME.fullmatch(secret):
        raise AdminError(400, "invalid_name", "secret names are identifiers")


def secret_value_of(body: bytes, request: Request) -> str:
    """The value from ``{"text": ...}`` JSON or a plain-text body."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            value = msgspec.json.decode(body, type=dict[str, str])["text"]
        except (msgspec.ValidationError, msgspec.DecodeError, KeyError):
            # Never echo the body: it is a secret.
            raise AdminError(
                400, "invalid_secret", 'send {"text": "..."} or plain text'
            ) from None
        return value
    # A file sent as the body (curl --data-binary @token.txt) ends with the
    # newline its editor added; that newline is no part of the secret.
    try:
        text = body.decode("utf-8", "strict")
    except UnicodeDecodeError:
        raise AdminError(400, "invalid_secret", "a secret must be UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")


def add_version_routes(app: FastAPI, deployments: Deployments) -> None:
    registry = deployments.registry

    @app.get(SCRIPT + "/versions", summary="Every version, newest first")
    async def list_versions(
        account: str, namespace: str, script: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        versions = registry.versions(namespace, name)
        return {"versions": [describe(v) for v in versions]}

    @app.post(
        SCRIPT + "/versions/{version_id}/rollback",
        summary="Serve an earlier version again",
    )
    async def rollback(
        account: str, namespace: str, script: str, version_id: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        try:
            target = next(
                v
                for v in registry.versions(namespace, name)
                if v.version_id == version_id
            )
        except (ScriptNotFound, StopIteration):
            raise AdminError(
                404, "version_not_found", f"no version {version_id[:40]!r}", name
            ) from None
        try:
            startup_ms = await deployments.serve_version(target)
            version = registry.activate(namespace, name, version_id)
        except DeployRefused as exc:
            raise AdminError(400, "invalid_script", str(exc), name) from None
        except (VersionNotFound, RegistryError) as exc:
            raise AdminError(404, "version_not_found", str(exc), name) from None
        return describe(version, startup_ms)


def add_delivery_routes(
    app: FastAPI, deployments: Deployments, operations: Operations
) -> None:
    """Deliveries and dead letters of a script: list, inspect, replay, discard."""
    store = operations.delivery_store
    wake = operations.delivery_wake

    def shown(delivery: Delivery, name: str) -> dict[str, Any]:
        """A delivery as the API shows it: a secret in its URL is hidden."""
        summary = delivery.summary()
        for field in ("url", "last_error"):
            if summary[field]:
                summary[field] = operations.redact(name, summary[field])
        return summary

    @app.get(SCRIPT + "/deliveries", summary="Deliveries, optionally by state")
    async def list_deliveries(
        account: str, namespace: str, script: str, state: DeliveryState | None = None
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        found = await asyncio.to_thread(store.list, name, state)
        return {"deliveries": [shown(d, name) for d in found]}

    @app.get(SCRIPT + "/deliveries/circuits", summary="Circuit breakers by host")
    async def circuits(account: str, namespace: str, script: str) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        return {"circuits": operations.circuits_of(name)}

    @app.get(SCRIPT + "/deliveries/{delivery_id}", summary="One delivery")
    async def get_delivery(
        account: str, namespace: str, script: str, delivery_id: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        delivery = await asyncio.to_thread(store.get, delivery_id)
        if delivery is None or delivery.tenant != name:
            raise AdminError(404, "delivery_not_found", "no such delivery", name)
        return shown(delivery, name)

    @app.post(SCRIPT + "/deliveries/replay", summary="Replay every dead letter")
    async def replay_all(account: str, namespace: str, script: str) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        count = await asyncio.to_thread(store.replay, name, None)
        wake.set()
        return {"replayed": count}

    @app.post(
        SCRIPT + "/deliveries/{delivery_id}/replay", summary="Replay one dead letter"
    )
    async def replay_one(
        account: str, namespace: str, script: str, delivery_id: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        count = await asyncio.to_thread(store.replay, name, delivery_id)
        if not count:
            raise AdminError(404, "delivery_not_found", "no such dead letter", name)
        wake.set()
        return {"replayed": count}

    @app.delete(SCRIPT + "/deliveries/{delivery_id}", summary="Discard a dead letter")
    async def discard(
        account: str, namespace: str, script: str, delivery_id: str
    ) -> dict[str, Any]:
        name = checked_script(namespace, script, deployments)
        if not await asyncio.to_thread(store.discard, name, delivery_id):
            raise AdminError(404, "delivery_not_found", "no such dead letter", name)
        return {"discarded": delivery_id}
