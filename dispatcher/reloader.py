"""Hot reload of the tenants folder: a saved change serves within a second.

``watchfiles`` reports batches of changes (a batch closes after 50 ms of
quiet). Each batch is mapped to the tenants whose folders it touched, and
only those are reloaded: a change to one tenant never restarts another.
A reloaded tenant goes through the same safe swap as a deploy (see
``directory.py``): compiled, booted in a trial worker, then served, while
the previous version drains. A version that fails keeps the last good one
serving and logs one warning naming the file, line and error.

Editors' temporary, swap and backup files (``.swp``, ``~``, ``.#x``, vim's
``4913`` probe) never trigger a reload, and are never loaded anyway: only
the script named in ``tenant.toml`` is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import watchfiles

from dispatcher.directory import DeployRefused, TenantDirectory
from dispatcher.tenants import is_valid_tenant_id, load_tenant

log = logging.getLogger("dispatcher.reloader")

EDITOR_LEFTOVERS = re.compile(r"(\.sw[a-p]|~|\.tmp|\.bak|\.orig|^4913)$|^\.#|^#.*#$")
QUIET_MS = 50
MAX_BATCH_MS = 400


class TenantsFolderFilter(watchfiles.DefaultFilter):
    """Ignore what editors write beside the files they save."""

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if EDITOR_LEFTOVERS.search(Path(path).name):
            return False
        return super().__call__(change, path)


async def watch_tenants_folder(
    folder: Path, state_dir: Path, directory: TenantDirectory
) -> None:
    """Reload the tenants each batch of changes touches, until cancelled."""
    root = folder.resolve()
    log.info("watching %s for tenant changes", root)
    async for changes in watchfiles.awatch(
        root,
        watch_filter=TenantsFolderFilter(),
        debounce=MAX_BATCH_MS,
        step=QUIET_MS,
    ):
        for tenant_id in sorted(touched_tenants(root, changes)):
            await reload_tenant(root / tenant_id, state_dir, directory)


def touched_tenants(
    root: Path, changes: set[tuple[watchfiles.Change, str]]
) -> set[str]:
    """The tenant ids whose folders hold a changed path."""
    touched = set()
    for _, path in changes:
        relative = Path(path).relative_to(root)
        if relative.parts and is_valid_tenant_id(relative.parts[0]):
            touched.add(relative.parts[0])
    return touched


async def reload_tenant(
    folder: Path, state_dir: Path, directory: TenantDirectory
) -> None:
    """Bring one tenant in line with its folder: install, update or remove."""
    if not (folder / "tenant.toml").is_file():
        serving = directory.get(folder.name)
        if serving is not None and serving.dir.is_relative_to(folder.parent):
            directory.remove(folder.name)
        return
    tenant = load_tenant(folder, state_dir)
    if tenant is None:
        return
    serving = directory.get(tenant.id)
    if serving is not None and not serving.dir.is_relative_to(folder.parent):
        log.warning(
            "tenant %s: folder changed, but the version deployed through the "
            "API keeps serving",
            tenant.id,
        )
        return
    if serving is not None and serving.version == tenant.version:
        return  # touched, not changed (a save with the same content)

    try:
        await directory.install(tenant)
    except DeployRefused as exc:
        log.warning(
            "tenant %s: change not deployed, %s keeps serving: %s",
            tenant.id,
            serving.version if serving and not serving.problem else "nothing",
            exc,
        )
        if serving is None or serving.problem:
            # No good version to keep: requests say what is wrong now.
            tenant.problem = str(exc)
            directory.tenants[tenant.id] = tenant
