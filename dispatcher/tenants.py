"""Tenants as the dispatcher knows them: read from ``tenants/<id>/``.

Each tenant folder holds ``tenant.toml``::

    script = "worker.py"       # the module that defines async def fetch
    prewarm = true             # start a worker at start-up, not on demand
    secrets = ["SLACK_SIGNING_SECRET"]   # names only; values come elsewhere

    [vars]
    REGION = "eu"

    [limits]
    timeout_ms = 5000
    memory_mb = 256
    max_concurrency = 64
    slowlog_ms = 1000          # log the stack of requests slower than this

Secret values never live in ``tenant.toml``. They are read, first found
wins, from:

1. ``<state>/secrets/<tenant>.toml`` - the production source: written by the
   operator or a secret manager, never committed, readable by the
   dispatcher's user only;
2. ``tenants/<tenant>/secrets.demo.toml`` - committed demo values for the
   example tenants; using them logs a warning.

A tenant whose secret has no value is kept, marked failed with the names
that are missing, and answers 503 ``worker_boot_failed``; others serve.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from sandbox_runner import adapters
from sandbox_runner.frames import BindingValue

log = logging.getLogger("dispatcher.tenants")

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BINDING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
DEMO_SECRETS_FILE = "secrets.demo.toml"


class Limits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-tenant limits the dispatcher enforces, with their allowed ranges.

    ``memory_mb`` starts at 128: below that an interpreter with the runner
    loaded cannot take a request of any size.
    """

    timeout_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 10_000
    memory_mb: Annotated[int, Meta(ge=128, le=65_536)] = 256
    max_concurrency: Annotated[int, Meta(ge=1, le=10_000)] = 64
    max_queue: Annotated[int, Meta(ge=0, le=100_000)] = 256
    # A worker's lifetime CPU budget; spent, the worker is replaced.
    cpu_seconds: Annotated[int, Meta(ge=1, le=86_400)] = 3600
    # Workers a tenant may have at once; more start when all are busy.
    max_workers: Annotated[int, Meta(ge=1, le=64)] = 4
    # An idle worker is reclaimed after this long.
    idle_timeout_s: Annotated[float, Meta(gt=0)] = 300.0
    # A worker is replaced after this many requests (plus up to 10%); 0: never.
    max_requests: Annotated[int, Meta(ge=0)] = 0
    # A worker whose resident memory passes this is replaced; 0: 3/4 of
    # memory_mb.
    memory_ceiling_mb: Annotated[int, Meta(ge=0, le=65_536)] = 0
    # The stack of a request running longer than this goes to the tenant's
    # log; 0: never. Below timeout_ms, or it would never fire.
    slowlog_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 0

    def __post_init__(self) -> None:
        """Check what spans fields, which Meta cannot express."""
        if self.slowlog_ms >= self.timeout_ms:
            raise ValueError(
                f"slowlog_ms ({self.slowlog_ms}) must be below "
                f"timeout_ms ({self.timeout_ms})"
            )


class Egress(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where the tenant's code may call out to, and how often per request.

    ``allow`` lists host names, exact or ``*.example.com``; nothing else is
    reachable. Private addresses stay refused unless the operator allows
    their network (``--allow-private-egress``).
    """

    allow: list[str] = []
    max_subrequests: Annotated[int, Meta(ge=0, le=1000)] = 50
    # Calls per second to a host, e.g. {"api.notion.com" = 3}; none: no limit.
    rate_limits: dict[str, Annotated[float, Meta(gt=0)]] = {}


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a delivery is retried: attempts, age, exponential backoff."""

    max_attempts: Annotated[int, Meta(ge=1, le=1000)] = 10
    max_age_s: Annotated[float, Meta(gt=0)] = 6 * 3600.0
    base_delay_s: Annotated[float, Meta(gt=0)] = 1.0
    max_delay_s: Annotated[float, Meta(gt=0, le=86_400)] = 3600.0


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Inbound requests a second (0: no limit) and how many may come at once.

    ``routes`` adds a limit of its own, in requests a second, for paths
    under a prefix: ``routes = {"/webhooks/slack" = 2}``.
    """

    requests_per_second: Annotated[float, Meta(ge=0)] = 0.0
    burst: Annotated[int, Meta(ge=0)] = 0
    routes: dict[str, Annotated[float, Meta(gt=0)]] = {}


class TenantConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The contents of one ``tenant.toml``."""

    script: str = "worker.py"
    # Where the tenant's data must stay ("eu", "us"): its calls reach only
    # hosts the operator declared in it (or declared nowhere).
    region: str = ""
    prewarm: bool = False
    secrets: list[str] = []
    vars: dict[str, BindingValue] = {}
    limits: Limits = Limits()
    egress: Egress = Egress()
    retry: RetryPolicy = RetryPolicy()
    rate_limit: RateLimit = RateLimit()


@dataclass
class Tenant:
    """One tenant, ready to start workers for (or failed, with the reason)."""

    id: str
    dir: Path
    config: TenantConfig
    bindings: dict[str, BindingValue] = field(default_factory=dict)
    problem: str | None = None
    # What is deployed: a short hash of tenant.toml and the script.
    version: str = ""
    # Set once the tenant is removed: nothing may start a worker for it.
    removed: bool = False


def is_valid_tenant_id(tenant_id: str) -> bool:
    """True when ``tenant_id`` may name a tenant (and a folder)."""
    return TENANT_ID.fullmatch(tenant_id) is not None


def load_tenants(tenants_dir: Path, state_dir: Path) -> dict[str, Tenant]:
    """Read every tenant folder; a broken one is logged and skipped."""
    tenants: dict[str, Tenant] = {}
    if not tenants_dir.is_dir():
        log.warning("tenants folder %s does not exist; no tenant serves", tenants_dir)
        return tenants
    for folder in sorted(tenants_dir.iterdir()):
        tenant = load_tenant(folder, state_dir)
        if tenant is not None:
            tenants[tenant.id] = tenant
    return tenants


def load_tenant(folder: Path, state_dir: Path) -> Tenant | None:
    """Read one tenant folder, or None when it is not a tenant folder.

    A folder whose ``tenant.toml`` is invalid is still a tenant: it is
    marked failed with the reason, so that its requests say why (503)
    rather than claim it does not exist (404).
    """
    if not is_tenant_folder(folder):
        return None
    try:
        config = read_tenant_config(folder)
    except ValueError as exc:
        log.error("tenant %s: tenant.toml is invalid: %s", folder.name, exc)
        return Tenant(folder.name, folder, TenantConfig(), problem=str(exc))

    tenant = Tenant(folder.name, folder.resolve(), config)
    tenant.bindings = dict(config.vars)
    tenant.version = version_of(folder, config)
    resolve_secrets(tenant, state_dir)
    return tenant


def version_of(folder: Path, config: TenantConfig) -> str:
    """A short content hash naming what the folder holds now."""
    digest = hashlib.sha256((folder / "tenant.toml").read_bytes())
    digest.update((folder / config.script).read_bytes())
    return digest.hexdigest()[:12]


def is_tenant_folder(folder: Path) -> bool:
    """A real folder (not a link to another tenant's) with a valid id."""
    if folder.is_symlink() or not (folder / "tenant.toml").is_file():
        return False
    if not is_valid_tenant_id(folder.name):
        log.warning("skipping folder %s: not a valid tenant id", folder)
        return False
    return True


def read_tenant_config(folder: Path) -> TenantConfig:
    """Parse and check ``tenant.toml``; raise ValueError saying what is wrong."""
    raw = (folder / "tenant.toml").read_bytes()
    try:
        config = msgspec.toml.decode(raw, type=TenantConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(str(exc)) from None

    # Resolved, so that a symlink cannot point the script at another
    # tenant's code.
    script = (folder / config.script).resolve()
    if not script.is_relative_to(folder.resolve()):
        raise ValueError(f"script {config.script!r} must be a file inside the folder")
    if not script.is_file():
        raise ValueError(f"script {config.script!r} does not exist")
    if script.suffix == ".json":
        config = with_adapter_policy(config, adapters.load_config(script))
    for name in [*config.vars, *config.secrets]:
        if not BINDING_NAME.fullmatch(name):
            raise ValueError(f"binding name {name!r} is not a valid identifier")
    return config


def with_adapter_policy(
    config: TenantConfig, adapter: adapters.AdapterConfig
) -> TenantConfig:
    """An adapter's retry policy becomes the tenant's: attempts from ``max``."""
    retry = msgspec.structs.replace(config.retry, max_attempts=adapter.retry_policy.max)
    return msgspec.structs.replace(config, retry=retry)


def resolve_secrets(tenant: Tenant, state_dir: Path) -> None:
    """Add secret values to the tenant's bindings, or mark it failed."""
    wanted = tenant.config.secrets
    if not wanted:
        return
    production = read_secrets_file(state_dir / "secrets" / f"{tenant.id}.toml")
    demo = read_secrets_file(tenant.dir / DEMO_SECRETS_FILE)

    missing = []
    for name in wanted:
        if name in production:
            tenant.bindings[name] = production[name]
        elif name in demo:
            tenant.bindings[name] = demo[name]
            log.warning("tenant %s: secret %s uses its demo value", tenant.id, name)
        else:
            missing.append(name)
    if missing:
        tenant.problem = f"secrets without a value: {', '.join(missing)}"
        log.error("tenant %s cannot start: %s", tenant.id, tenant.problem)


def read_secrets_file(path: Path) -> dict[str, str]:
    """Name-to-value pairs from a TOML file; empty when there is none."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The error text may quote a line, and a line may hold a value.
        log.error("secrets file %s does not parse (%s)", path, type(exc).__name__)
        return {}
    return {str(k): str(v) for k, v in data.items()}
