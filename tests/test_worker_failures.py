"""What clients get when tenant code misbehaves, and how the pool recovers."""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil

from tests.conftest import DispatcherProcess, error_of

CRASHER = {"x-customer-id": "crasher"}


async def test_raising_tenant_gets_500_without_trace_or_secret(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """The client learns the script raised; only the tenant's log has why."""
    response = await client.get("/", headers={"x-customer-id": "raiser"})

    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "tenant_error"
    assert "ValueError" in error["message"]
    assert "sk-live-raiser-do-not-leak" not in response.text
    assert "Traceback" not in response.text
    await asyncio.sleep(0.2)
    log = dispatcher.log()
    assert "could not call the API with token [secret API_TOKEN]" in log
    assert "sk-live-raiser-do-not-leak" not in log


async def test_crash_mid_request_is_502_and_next_request_gets_fresh_worker(
    client: httpx.AsyncClient,
) -> None:
    """A worker that exits mid-request fails fast and is replaced."""
    first_pid = (await client.get("/pid", headers=CRASHER)).json()["pid"]

    started = time.monotonic()
    crashed = await client.get("/exit", headers=CRASHER)
    elapsed = time.monotonic() - started
    after = await client.get("/pid", headers=CRASHER)

    assert crashed.status_code == 502
    assert error_of(crashed)["code"] == "worker_crashed"
    assert elapsed < 2
    assert after.status_code == 200
    assert after.json()["pid"] != first_pid


async def test_fifty_crashes_leave_no_zombies_and_no_leaked_fds(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """Crash after crash, the dispatcher's process table and fds stay clean."""
    await client.get("/pid", headers=CRASHER)
    baseline_fds = dispatcher.ps.num_fds()

    for _ in range(50):
        response = await client.get("/exit", headers=CRASHER)
        assert response.status_code == 502
    await client.get("/pid", headers=CRASHER)
    await asyncio.sleep(0.5)

    assert dispatcher.zombies() == []
    assert dispatcher.ps.num_fds() <= baseline_fds


async def test_request_over_time_limit_is_504_and_worker_replaced(
    client: httpx.AsyncClient,
) -> None:
    """A script that outlasts timeout_ms is cut off, and its worker with it."""
    headers = {"x-customer-id": "sleeper"}
    old_pid = (await client.get("/pid", headers=headers)).json()["pid"]

    started = time.monotonic()
    response = await client.get("/sleep", headers=headers)
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert error_of(response)["code"] == "worker_timeout"
    assert 0.5 <= elapsed < 3
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() in (
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    )
    new_pid = (await client.get("/pid", headers=headers)).json()["pid"]
    assert new_pid != old_pid


async def test_garbage_frame_is_protocol_error_and_worker_replaced(
    client: httpx.AsyncClient,
) -> None:
    """Tenant code writing junk on the frame pipe cannot confuse the host."""
    headers = {"x-customer-id": "forger"}
    old_pid = (await client.get("/pid", headers=headers)).json()["pid"]

    response = await client.get("/garbage", headers=headers)

    assert response.status_code == 502
    assert error_of(response)["code"] == "protocol_error"
    assert (await client.get("/pid", headers=headers)).json()["pid"] != old_pid


async def test_oversized_frame_length_is_protocol_error(
    client: httpx.AsyncClient,
) -> None:
    """A 2 GiB length prefix is refused at once, not buffered."""
    response = await client.get("/huge", headers={"x-customer-id": "forger"})

    assert response.status_code == 502
    assert error_of(response)["code"] == "protocol_error"


async def test_script_that_does_not_compile_is_503_boot_failed(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A broken script is reported, not respawned on every request."""
    first = await client.get("/", headers={"x-customer-id": "broken"})
    second = await client.get("/", headers={"x-customer-id": "broken"})

    assert first.status_code == 503
    assert error_of(first)["code"] == "worker_boot_failed"
    assert "failed to load" in error_of(first)["message"]
    assert second.status_code == 503
    assert "retry-after" in second.headers
    assert dispatcher.log().count("tenant broken: worker pid") == 1
    assert "SyntaxError" in dispatcher.log()


async def test_tenant_missing_a_secret_fails_alone(
    client: httpx.AsyncClient,
) -> None:
    """A tenant without its secret value is named failed; others serve."""
    failed = await client.get("/", headers={"x-customer-id": "missing-secret"})
    other = await client.get("/pid", headers={"x-customer-id": "echo"})

    assert failed.status_code == 503
    error = error_of(failed)
    assert error["code"] == "worker_boot_failed"
    assert "NEVER_SET" in error["message"]
    assert other.status_code == 200
