"""Hot reload: saving a tenant's files serves the new version, safely."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DispatcherProcess, error_of

VERSIONED = """
import asyncio

async def fetch(request, env, ctx):
    if request.path == "/slow":
        await asyncio.sleep(1.5)
    return {{"version": {version}, "greeting": env.get("GREETING")}}
"""
TOML = 'script = "worker.py"\n[vars]\nGREETING = "{greeting}"\n'


def write_version(folder: Path, version: int, atomic: bool = True) -> None:
    """Save worker.py the way an editor does: temp file, then rename."""
    source = VERSIONED.format(version=version)
    target = folder / "worker.py"
    if not atomic:
        target.write_text(source)
        return
    temporary = folder / ".worker.py.tmp"
    temporary.write_text(source)
    os.replace(temporary, target)


def make_tenant(folder: Path, version: int = 1, greeting: str = "hi") -> None:
    folder.mkdir(parents=True)
    (folder / "tenant.toml").write_text(TOML.format(greeting=greeting))
    write_version(folder, version)


@pytest.fixture(scope="module")
def tenants_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reload") / "tenants"
    make_tenant(root / "editor")
    make_tenant(root / "vimmer")
    make_tenant(root / "doomed")
    return root


@pytest.fixture(scope="module")
def reload_dispatcher(tenants_root: Path) -> AsyncIterator[DispatcherProcess]:
    base = tenants_root.parent
    process = DispatcherProcess(tenants_root, base / "state", base / "log")
    yield process  # type: ignore[misc]
    process.stop()


@pytest.fixture
async def http(
    reload_dispatcher: DispatcherProcess,
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=reload_dispatcher.url, timeout=10) as client:
        yield client


async def version_of(http: httpx.AsyncClient, tenant: str) -> int | None:
    response = await http.get("/", headers={"x-customer-id": tenant})
    return response.json().get("version") if response.status_code == 200 else None


async def wait_for_version(
    http: httpx.AsyncClient, tenant: str, wanted: int, within_s: float = 2.0
) -> float:
    """Seconds until the tenant answers with ``wanted``; fails past the limit."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await version_of(http, tenant) == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{tenant} did not serve version {wanted} in {within_s} s")


async def test_each_atomic_save_is_live_within_two_seconds(
    http: httpx.AsyncClient, tenants_root: Path
) -> None:
    """Write-then-rename saves, one after another, each serve promptly."""
    assert await version_of(http, "editor") == 1

    for version in (2, 3, 4):
        write_version(tenants_root / "editor", version)
        await wait_for_version(http, "editor", version)


async def test_request_in_flight_finishes_on_the_version_it_started_on(
    http: httpx.AsyncClient, tenants_root: Path
) -> None:
    """A reload never drops a request: the old version answers its own."""
    before = await version_of(http, "editor")
    slow = asyncio.create_task(http.get("/slow", headers={"x-customer-id": "editor"}))
    await asyncio.sleep(0.2)
    write_version(tenants_root / "editor", 50)
    await wait_for_version(http, "editor", 50)

    answer = await slow
    assert answer.status_code == 200
    assert answer.json()["version"] == before


async def test_vim_style_save_works_and_its_backup_is_never_loaded(
    http: httpx.AsyncClient, tenants_root: Path
) -> None:
    """A backup copy beside the script, then an in-place write."""
    folder = tenants_root / "vimmer"
    shutil.copy(folder / "worker.py", folder / "worker.py~")
    (folder / "4913").write_text("")
    (folder / "4913").unlink()
    (folder / ".worker.py.swp").write_bytes(b"\x00swap")
    write_version(folder, 7, atomic=False)

    await wait_for_version(http, "vimmer", 7)
    (folder / "worker.py~").unlink()
    (folder / ".worker.py.swp").unlink()


async def test_syntax_error_keeps_the_last_good_version(
    http: httpx.AsyncClient, tenants_root: Path, reload_dispatcher: DispatcherProcess
) -> None:
    """A broken save is reported with its line; the tenant keeps serving."""
    folder = tenants_root / "vimmer"
    good = await version_of(http, "vimmer")
    (folder / "worker.py").write_text("async def fetch(request, env, ctx)\n")
    await asyncio.sleep(1.0)

    assert await version_of(http, "vimmer") == good
    log = reload_dispatcher.log()
    assert "tenant vimmer: change not deployed" in log
    assert "worker.py, line 1" in log
    write_version(folder, 8)
    await wait_for_version(http, "vimmer", 8)


async def test_twenty_folders_copied_in_a_burst_all_serve(
    http: httpx.AsyncClient, tenants_root: Path
) -> None:
    """cp -r of many tenants at once: each serves, with its own bindings."""
    template = tenants_root.parent / "template"
    make_tenant(template, version=1)
    names = [f"burst-{i}" for i in range(20)]
    for i, name in enumerate(names):
        shutil.copytree(template, tenants_root / name)
        (tenants_root / name / "tenant.toml").write_text(
            TOML.format(greeting=f"hello {i}")
        )

    deadline = time.monotonic() + 2.5
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in sorted(pending):
            response = await http.get("/", headers={"x-customer-id": name})
            if response.status_code == 200:
                assert response.json()["greeting"] == f"hello {names.index(name)}"
                pending.discard(name)
        await asyncio.sleep(0.05)
    assert pending == set()


async def test_deleted_folder_answers_404(
    http: httpx.AsyncClient, tenants_root: Path
) -> None:
    """Removing a tenant's folder removes the tenant."""
    assert await version_of(http, "doomed") == 1

    shutil.rmtree(tenants_root / "doomed")

    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        response = await http.get("/", headers={"x-customer-id": "doomed"})
        if response.status_code == 404:
            break
        await asyncio.sleep(0.05)
    assert response.status_code == 404
    assert error_of(response)["code"] == "tenant_not_found"
