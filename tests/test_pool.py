"""The warm pool: admission, recycling, reclaim, host budget, boot backoff."""

from __future__ import annotations

import asyncio
import collections
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DispatcherProcess, error_of

POOLED = textwrap.dedent(
    """
    import asyncio
    import os
    import time

    LEAK = []

    async def fetch(request, env, ctx):
        if request.path == "/slow":
            await asyncio.sleep(float(request.query["s"][0]))
        if request.path == "/leak":
            LEAK.append(bytearray(2 * 1024 * 1024))
        if request.path == "/wedge":
            # Answer, then block the event loop while no request is in flight.
            asyncio.get_running_loop().call_later(0.1, time.sleep, 60)
        return {"pid": os.getpid()}
    """
)

TENANTS = {
    "single-file": "max_concurrency = 1\nmax_queue = 2\nmax_workers = 1\n",
    "quota-five": "max_requests = 5\n",
    "no-quota": "max_requests = 0\n",
    "quota-two": "max_requests = 2\ntimeout_ms = 10000\n",
    "leaker": "memory_mb = 512\nmemory_ceiling_mb = 80\n",
    "dozer": "idle_timeout_s = 1\n",
    "steady": "",
    "wedged": "timeout_ms = 1000\n",
}


def write_tenant(folder: Path, limits: str, script: str = POOLED) -> None:
    folder.mkdir(parents=True)
    (folder / "worker.py").write_text(script)
    (folder / "tenant.toml").write_text(f'script = "worker.py"\n[limits]\n{limits}')


@pytest.fixture(scope="module")
def pool_dispatcher(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[DispatcherProcess]:
    """A dispatcher serving tenants with the pool settings under test."""
    base = tmp_path_factory.mktemp("pool")
    for name, limits in TENANTS.items():
        write_tenant(base / "tenants" / name, limits)
    write_tenant(base / "tenants" / "import-raiser", "", "raise RuntimeError('no')\n")
    process = DispatcherProcess(
        base / "tenants",
        base / "state",
        base / "log",
        extra_args=["--heartbeat", "0.5"],
    )
    yield process  # type: ignore[misc]
    process.stop()


@pytest.fixture
async def http(pool_dispatcher: DispatcherProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(
        base_url=pool_dispatcher.url, timeout=30, limits=limits
    ) as client:
        yield client


def tenant(name: str) -> dict[str, str]:
    return {"x-customer-id": name}


async def test_queue_bounds_a_busy_tenant_with_503_and_retry_after(
    http: httpx.AsyncClient,
) -> None:
    """One in flight and two waiting are served in turn; more get 503 at once."""
    three = await asyncio.gather(
        *(http.get("/slow?s=0.3", headers=tenant("single-file")) for _ in range(3))
    )
    five = await asyncio.gather(
        *(http.get("/slow?s=0.3", headers=tenant("single-file")) for _ in range(5))
    )

    assert [r.status_code for r in three] == [200, 200, 200]
    statuses = collections.Counter(r.status_code for r in five)
    assert statuses == {200: 3, 503: 2}
    for refused in (r for r in five if r.status_code == 503):
        assert error_of(refused)["code"] == "tenant_busy"
        assert refused.headers["retry-after"] == "1"


async def run_at_concurrency(
    http: httpx.AsyncClient, name: str, total: int, concurrency: int
) -> list[httpx.Response]:
    slots = asyncio.Semaphore(concurrency)

    async def one() -> httpx.Response:
        async with slots:
            return await http.get("/pid", headers=tenant(name))

    return await asyncio.gather(*(one() for _ in range(total)))


async def test_workers_are_recycled_after_their_request_quota(
    http: httpx.AsyncClient,
) -> None:
    """max_requests=5: every request succeeds, no worker serves more than 5."""
    responses = await run_at_concurrency(http, "quota-five", 200, 10)

    assert {r.status_code for r in responses} == {200}
    per_worker = collections.Counter(r.json()["pid"] for r in responses)
    assert max(per_worker.values()) <= 5
    assert len(per_worker) >= 40


async def test_without_a_quota_one_worker_serves_everything(
    http: httpx.AsyncClient,
) -> None:
    """max_requests=0: 100 requests, one worker."""
    responses = await run_at_concurrency(http, "no-quota", 100, 10)

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["pid"] for r in responses}) == 1


async def test_retiring_worker_finishes_the_request_it_has(
    http: httpx.AsyncClient,
) -> None:
    """A 5-second request on a worker being recycled still succeeds."""
    slow = asyncio.create_task(http.get("/slow?s=5", headers=tenant("quota-two")))
    await asyncio.sleep(0.3)
    quick = [await http.get("/pid", headers=tenant("quota-two")) for _ in range(4)]

    assert (await slow).status_code == 200
    assert {r.status_code for r in quick} == {200}
    assert len({r.json()["pid"] for r in quick}) >= 2


async def test_leaking_tenant_is_recycled_at_its_memory_ceiling(
    http: httpx.AsyncClient, pool_dispatcher: DispatcherProcess
) -> None:
    """2 MB leaked per request: the worker is replaced, no request fails."""
    pids = set()
    for _ in range(60):
        response = await http.get("/leak", headers=tenant("leaker"))
        assert response.status_code == 200
        pids.add(response.json()["pid"])
        await asyncio.sleep(0.05)

    assert len(pids) >= 2
    assert "over its memory ceiling" in pool_dispatcher.log()


async def test_idle_worker_is_reclaimed_and_cold_started_again(
    http: httpx.AsyncClient,
) -> None:
    """Past idle_timeout_s the worker is gone; the next request starts one."""
    first = (await http.get("/pid", headers=tenant("dozer"))).json()["pid"]

    deadline = time.monotonic() + 5
    while psutil.pid_exists(first) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    second = (await http.get("/pid", headers=tenant("dozer"))).json()["pid"]

    assert not psutil.pid_exists(first)
    assert second != first


async def test_sequential_requests_keep_exactly_one_worker(
    http: httpx.AsyncClient, pool_dispatcher: DispatcherProcess
) -> None:
    """2,000 requests one after another: one warm worker, never a second."""
    pids = set()
    for _ in range(2000):
        response = await http.get("/pid", headers=tenant("steady"))
        pids.add(response.json()["pid"])

    assert len(pids) == 1


async def test_tenant_failing_at_import_is_throttled(
    http: httpx.AsyncClient, pool_dispatcher: DispatcherProcess
) -> None:
    """A crash-looping tenant gets a few spawns, not one per request."""
    statuses = []
    for _ in range(30):
        response = await http.get("/", headers=tenant("import-raiser"))
        statuses.append(error_of(response)["code"])
        await asyncio.sleep(0.1)
    steady = await http.get("/pid", headers=tenant("steady"))

    assert set(statuses) == {"worker_boot_failed"}
    assert pool_dispatcher.log().count("tenant import-raiser: worker pid") <= 2
    assert steady.status_code == 200


async def test_host_cap_evicts_the_least_recently_used_worker(tmp_path: Path) -> None:
    """With room for 3 workers, 9 tenants in turn never hold more than 3."""
    names = [f"t{i}" for i in range(9)]
    for name in names:
        write_tenant(tmp_path / "tenants" / name, "")
    process = DispatcherProcess(
        tmp_path / "tenants",
        tmp_path / "state",
        tmp_path / "log",
        extra_args=["--max-warm-workers", "3"],
    )
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            pids = {}
            for name in names * 2:
                response = await client.get("/pid", headers=tenant(name))
                assert response.status_code == 200
                pids[name] = response.json()["pid"]
                assert len(process.worker_pids()) <= 3
            alive = process.worker_pids()
    finally:
        process.stop()

    assert alive == {pids["t6"], pids["t7"], pids["t8"]}


async def test_worker_that_stops_answering_heartbeats_is_replaced(
    http: httpx.AsyncClient, pool_dispatcher: DispatcherProcess
) -> None:
    """An idle worker whose event loop is stuck is found and replaced."""
    wedged = (await http.get("/wedge", headers=tenant("wedged"))).json()["pid"]

    deadline = time.monotonic() + 6
    while psutil.pid_exists(wedged) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    after = await http.get("/pid", headers=tenant("wedged"))

    assert not psutil.pid_exists(wedged)
    assert after.json()["pid"] != wedged
    assert "stopped answering heartbeats" in pool_dispatcher.log()
