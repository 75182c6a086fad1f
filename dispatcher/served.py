"""What a script serves now - its main module and settings - for editors.

Scripts deployed through the management API have their active version in
the registry; a tenant served from the tenants folder has none there, so
its folder is read instead. Either way the answer is what an API deploy
must send to keep the tenant as it is: a deploy of a folder tenant takes
it over (the deployed version serves from then on).

XXX: a folder tenant's region, inbound rate limits and retry settings
have no place in API settings yet, so a takeover drops them; its secret
values stay in the folder's files and must be set through the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from dispatcher.deployments import Deployments
from dispatcher.registry import ScriptVersion
from dispatcher.tenants import Tenant

CONTENT_TYPES = {".json": "application/json", ".py": "text/x-python"}


@dataclass(frozen=True)
class ServedScript:
    """A script as it serves now, from the registry or the tenants folder."""

    script: str
    source: str  # "api" or "folder"
    main_module: str
    settings: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """The ``GET .../settings`` answer: the metadata a deploy would send."""
        return {
            "script": self.script,
            "source": self.source,
            "main_module": self.main_module,
            **self.settings,
        }

    @property
    def content_type(self) -> str:
        suffix = "." + self.main_module.rpartition(".")[2]
        return CONTENT_TYPES.get(suffix, "application/octet-stream")


def served_script(deployments: Deployments, name: str) -> ServedScript | None:
    """The script named ``name`` as it serves now; None when nothing does."""
    version = deployments.registry.active_version(deployments.namespace, name)
    if version is not None:
        return from_version(version)
    tenant = deployments.directory.get(name)
    return from_folder(tenant) if tenant is not None else None


def served_code(deployments: Deployments, name: str) -> bytes | None:
    """The main module's bytes: the active version's, or the folder's file."""
    version = deployments.registry.active_version(deployments.namespace, name)
    if version is not None:
        return version.files[version.main_module]
    tenant = deployments.directory.get(name)
    if tenant is None:
        return None
    # The file as it is on disk now: after a failed reload that is not
    # the version serving, which the tenant's problem then explains.
    try:
        return (tenant.dir / tenant.config.script).read_bytes()
    except OSError:
        return None


def from_version(version: ScriptVersion) -> ServedScript:
    settings = version.settings
    return ServedScript(
        version.script,
        "api",
        version.main_module,
        {
            "vars": settings.vars,
            "secrets": settings.secret_names,
            "limits": settings.limits,
            "tags": settings.tags,
            "egress": settings.egress,
        },
    )


def from_folder(tenant: Tenant) -> ServedScript:
    config = tenant.config
    return ServedScript(
        tenant.id,
        "folder",
        config.script,
        {
            "vars": config.vars,
            "secrets": config.secrets,
            "limits": msgspec.to_builtins(config.limits),
            "tags": [],
            "egress": msgspec.to_builtins(config.egress),
        },
    )
