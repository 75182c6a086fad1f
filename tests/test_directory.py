"""Removing a tenant: nothing of it stays behind to greet its successor.

A tenant deleted through the API or by removing its folder is forgotten
by every part of the dispatcher that kept something per tenant id, so a
tenant created again under the same name starts with no counts, no log,
full rate-limit buckets and no backoff; whoever followed its log is told.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    DispatcherProcess,
    Listeners,
    add_tenant,
    dispatcher_in,
    listener_clients,
)

TOKEN = "directory-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SCRIPTS = "/accounts/acme/workers/dispatch/namespaces/default/scripts"
SCRIPT = b"""
async def fetch(request, env, ctx):
    if request.path == "/print":
        print("first life", request.query["marker"][0], flush=True)
    if request.path == "/egress":
        try:
            await ctx.fetch("http://127.0.0.1:9/")
        except Exception as exc:
            return {"refused": type(exc).__name__}
    return {"ok": True}
"""
LIMITED_TOML = """
script = "worker.py"

[rate_limit]
requests_per_second = 0.1
burst = 1
"""


@pytest.fixture(scope="module")
def tenants_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("directory") / "tenants"


@pytest.fixture(scope="module")
def removing(tenants_dir: Path) -> Iterator[DispatcherProcess]:
    tenants_dir.mkdir()
    process = dispatcher_in(tenants_dir.parent, TOKEN)
    yield process
    process.stop()


@pytest.fixture
async def clients(removing: DispatcherProcess) -> AsyncIterator[Listeners]:
    async with listener_clients(removing, AUTH) as both:
        yield both


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


async def samples_of(admin: httpx.AsyncClient, tenant: str) -> dict[str, float]:
    """The tenant's samples in /metrics, by name and labels."""
    answer = await admin.get("/metrics")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.labels.get("tenant") == tenant:
                labels = sorted(sample.labels.items())
                found[f"{sample.name}{labels}"] = sample.value
    return found


async def follow_until_end(admin: httpx.AsyncClient, name: str) -> list[str]:
    """The tail's lines, up to the stream's own end."""
    lines = []
    async with admin.stream("GET", f"{SCRIPTS}/{name}/tail") as answer:
        async for line in answer.aiter_lines():
            lines.append(line)
    return lines


async def test_a_script_deleted_and_deployed_again_starts_afresh(
    clients: Listeners,
) -> None:
    """No counts, log lines or worker figures of the old script reach the new one."""
    public, admin = clients
    name, headers = "reborn", {"x-customer-id": "reborn"}
    put = {"content-type": "text/x-python"}
    assert (
        await admin.put(f"{SCRIPTS}/{name}", content=SCRIPT, headers=put)
    ).is_success
    for path in ("/", "/print?marker=old-marker", "/egress"):
        assert (await public.get(path, headers=headers)).status_code == 200

    async def logged() -> bool:
        detail = (await admin.get(f"/status/{name}")).json()
        return any("old-marker" in line["text"] for line in detail["logs"])

    await eventually(logged, 5, "the printed line in the tenant's log")
    before = (await admin.get(f"/status/{name}")).json()
    assert before["requests_total"] == 3 and before["outbound"]

    tail = asyncio.ensure_future(follow_until_end(admin, name))
    await asyncio.sleep(0.2)  # following now
    assert (await admin.delete(f"{SCRIPTS}/{name}")).status_code == 200
    async with asyncio.timeout(5):
        lines = await tail
    event, data = lines[-3:-1]  # the stream closes after the end event
    assert event == "event: end"
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "end",
        "reason": "the script was deleted",
    }

    assert (
        await admin.put(f"{SCRIPTS}/{name}", content=SCRIPT, headers=put)
    ).is_success
    await asyncio.sleep(0.3)  # the old worker has drained and stopped
    after = (await admin.get(f"/status/{name}")).json()
    assert after["requests"] == {} and after["requests_total"] == 0
    assert after["cold_starts"] == 0 and after["outbound"] == {}
    assert not any("old-marker" in line["text"] for line in after["logs"])
    samples = await samples_of(admin, name)
    assert not [key for key in samples if key.startswith("switchyard_requests_")]
    assert not [key for key in samples if key.startswith("switchyard_worker_exits")]
    assert samples["switchyard_worker_starts_total[('tenant', 'reborn')]"] == 1


async def test_a_folder_removed_and_made_again_has_a_full_rate_limit_bucket(
    clients: Listeners, tenants_dir: Path
) -> None:
    """The new tenant is not refused for what the old one spent."""
    public, admin = clients
    headers = {"x-customer-id": "limited"}
    add_tenant(tenants_dir / "limited", LIMITED_TOML, SCRIPT.decode())

    async def status_is(code: int) -> bool:
        last = await public.get("/", headers=headers)
        statuses.append(last.status_code)
        return last.status_code == code

    statuses: list[int] = []
    await eventually(lambda: status_is(200), 5, "the tenant serving")
    assert (await public.get("/", headers=headers)).status_code == 429

    shutil.rmtree(tenants_dir / "limited")
    await eventually(lambda: status_is(404), 5, "the tenant removed")
    add_tenant(tenants_dir / "limited", LIMITED_TOML, SCRIPT.decode())
    statuses.clear()
    await eventually(lambda: status_is(200), 5, "the tenant serving again")

    assert statuses[-1] == 200 and 429 not in statuses, statuses
    after = (await admin.get("/status/limited")).json()
    assert after["requests_total"] == 1
