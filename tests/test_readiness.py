"""``GET /readyz``: what it checks, how fast it answers, what it never stalls.

One dispatcher of its own, since these tests lock its state databases
and stop its zygote.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from dispatcher.readiness import STATE_DATABASES
from tests.conftest import (
    DispatcherProcess,
    Listeners,
    add_tenant,
    dispatcher_in,
    listener_clients,
    stopped,
    zygote_pid,
)

TOKEN = "readiness-token-0123456789abcdef"
TENANT = {"x-customer-id": "steady"}
WORKER = "async def fetch(request, env, ctx):\n    return {'ok': True}\n"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readiness") / "state"


@pytest.fixture(scope="module")
def ready_dispatcher(state_dir: Path) -> Iterator[DispatcherProcess]:
    tenants = state_dir.parent / "tenants"
    tenants.mkdir()
    add_tenant(tenants / "steady", 'script = "worker.py"\n', WORKER)
    process = dispatcher_in(state_dir.parent, TOKEN)
    yield process
    process.stop()


@pytest.fixture
async def clients(ready_dispatcher: DispatcherProcess) -> AsyncIterator[Listeners]:
    async with listener_clients(ready_dispatcher) as both:
        yield both


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    """The response, and how many seconds it took."""
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another writer on ``path`` that holds its lock until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """The files can be neither written nor opened for writing, even by root."""
    present = [str(path) for path in paths if path.exists()]
    made = subprocess.run(["chattr", "+i", *present], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {made.stderr.decode()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *present], check=True)


async def test_readyz_is_ready_when_every_check_passes(
    clients: Listeners,
) -> None:
    """A healthy dispatcher says ready; a load balancer sends it traffic."""
    _, admin = clients
    answer = await admin.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["checks"]["state_database"] == "writable"


@pytest.mark.parametrize("database", STATE_DATABASES)
async def test_readyz_answers_at_once_and_stalls_no_tenant_while_state_is_locked(
    clients: Listeners,
    state_dir: Path,
    database: str,
) -> None:
    """A backup holding a state database would otherwise stall every tenant."""
    public, admin = clients
    assert (await public.get("/", headers=TENANT)).status_code == 200  # warm

    with write_lock_held(state_dir / database):
        probe = asyncio.ensure_future(timed(admin.get("/readyz")))
        await asyncio.sleep(0.1)  # the probe is waiting on the lock now
        request = await timed(public.get("/", headers=TENANT))
        (ready, ready_s), (answer, answer_s) = await probe, request

    assert answer.status_code == 200
    assert answer_s < 0.5, f"a tenant request took {answer_s:.2f} s"
    assert ready.status_code == 503
    assert ready.json()["checks"]["state_database"] == "not writable"
    assert ready_s < 1.5, f"readyz took {ready_s:.2f} s"
    assert (await admin.get("/readyz")).status_code == 200


@pytest.mark.parametrize("database", STATE_DATABASES)
async def test_readyz_is_503_when_a_state_database_cannot_be_written(
    clients: Listeners,
    state_dir: Path,
    database: str,
) -> None:
    """Taking the lock is not writing: an immutable database is not ready."""
    _, admin = clients
    path = state_dir / database
    with immutable(path, path.with_name(f"{database}-wal")):
        answer = await admin.get("/readyz")

    assert answer.status_code == 503
    assert answer.json()["checks"]["state_database"] == "not writable"
    assert (await admin.get("/readyz")).status_code == 200


async def test_readyz_replaces_a_zygote_that_stopped_answering(
    clients: Listeners,
    ready_dispatcher: DispatcherProcess,
) -> None:
    """A hung zygote is reported, then replaced: cold starts work again."""
    public, admin = clients
    assert (await admin.get("/readyz")).status_code == 200
    hung = zygote_pid(ready_dispatcher)

    with stopped(ready_dispatcher, hung):
        answer, seconds = await timed(admin.get("/readyz"))

    assert answer.status_code == 503
    assert answer.json()["checks"]["zygote"] == "not answering; replaced"
    assert seconds < 2.5, f"readyz took {seconds:.2f} s"
    assert not psutil.pid_exists(hung)
    assert zygote_pid(ready_dispatcher) != hung
    again = await admin.get("/readyz")
    assert again.status_code == 200
    assert again.json()["checks"]["zygote"] == "up"
    assert (await public.get("/", headers=TENANT)).status_code == 200
