"""Tenant code that misbehaves gets a clear error, and hurts nobody else."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import DispatcherProcess, error_of, raw_exchange

MISBEHAVER = {"x-customer-id": "misbehaver"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/no-content-with-body", "a 204 response cannot have a body"),
        ("/newline-in-header-name", "is not a valid HTTP token"),
        ("/control-in-header-value", "has a character HTTP cannot carry"),
        ("/non-latin1-header", "has a character HTTP cannot carry"),
        ("/float-status", "status must be an int, not float"),
        ("/list-body", "body must be bytes, not list"),
    ],
)
async def test_unsendable_response_is_tenant_error_for_that_request(
    client: httpx.AsyncClient, path: str, message: str
) -> None:
    """A response HTTP cannot carry is a 500 naming the rule it broke."""
    before = (await client.get("/pid", headers=MISBEHAVER)).json()["pid"]

    response = await client.get(path, headers=MISBEHAVER)

    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "tenant_error"
    assert message in error["message"]
    after = (await client.get("/pid", headers=MISBEHAVER)).json()["pid"]
    assert after == before


async def test_204_body_never_reaches_the_next_response_on_the_connection(
    dispatcher: DispatcherProcess,
) -> None:
    """A tenant cannot smuggle a response into a shared keep-alive connection."""
    request = (
        b"GET /no-content-with-body HTTP/1.1\r\n"
        b"Host: t\r\nx-customer-id: misbehaver\r\n\r\n"
    )

    answer = await asyncio.to_thread(raw_exchange, dispatcher.url, request)

    assert answer.startswith(b"HTTP/1.1 500")
    assert b"forged" not in answer


@pytest.mark.parametrize(
    "path", ["/raise-cancelled", "/await-cancelled", "/system-exit", "/base-exception"]
)
async def test_exotic_exceptions_are_a_prompt_tenant_error(
    client: httpx.AsyncClient, path: str
) -> None:
    """CancelledError, SystemExit and BaseException end only the request."""
    started = time.monotonic()

    response = await client.get(path, headers=MISBEHAVER)

    assert response.status_code == 500
    assert error_of(response)["code"] == "tenant_error"
    assert time.monotonic() - started < 1


async def test_unparseable_host_header_does_not_cost_the_worker(
    dispatcher: DispatcherProcess,
) -> None:
    """Any client can send Host: [ ; the tenant still answers normally."""
    request = b"GET /pid HTTP/1.1\r\nHost: [\r\nx-customer-id: echo\r\n\r\n"

    answer = await asyncio.to_thread(raw_exchange, dispatcher.url, request)

    assert answer.startswith(b"HTTP/1.1 200")


async def test_log_flood_is_capped_and_does_not_stall_other_tenants(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """Two million empty lines from one tenant: others keep their latency."""
    flood = asyncio.create_task(client.get("/flood-log", headers=MISBEHAVER))
    latencies = []
    for _ in range(20):
        started = time.monotonic()
        response = await client.get("/pid", headers={"x-customer-id": "echo"})
        latencies.append(time.monotonic() - started)
        assert response.status_code == 200

    assert (await flood).status_code == 200
    assert max(latencies) < 1.0
    await asyncio.sleep(0.5)
    await client.get("/pid", headers=MISBEHAVER)
    await asyncio.sleep(0.3)
    assert "log lines dropped" in dispatcher.log()


async def test_closed_frame_pipe_gets_the_tenant_a_fresh_worker(
    client: httpx.AsyncClient,
) -> None:
    """A worker that cut its own frame pipe is replaced, not kept forever."""
    old = (await client.get("/pid", headers=MISBEHAVER)).json()["pid"]
    await client.get("/close-frame-pipe", headers=MISBEHAVER)

    statuses = []
    for _ in range(3):
        response = await client.get("/pid", headers=MISBEHAVER)
        statuses.append(response.status_code)
        if response.status_code == 200:
            break

    assert statuses[-1] == 200
    assert response.json()["pid"] != old


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        ("bad-limits", "timeout_ms"),
        ("linked-script", "must be a file inside the folder"),
    ],
)
async def test_invalid_tenant_folder_is_503_with_the_reason(
    client: httpx.AsyncClient, tenant: str, message: str
) -> None:
    """A tenant with a broken tenant.toml says why, instead of 404."""
    response = await client.get("/", headers={"x-customer-id": tenant})

    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "worker_boot_failed"
    assert message in error["message"]


async def test_worker_that_spends_its_cpu_budget_is_stopped_and_replaced(
    client: httpx.AsyncClient,
) -> None:
    """cpu_seconds is a lifetime budget: spent, the worker dies and is replaced."""
    headers = {"x-customer-id": "cpu-budget"}
    old = (await client.get("/pid", headers=headers)).json()["pid"]

    response = await client.get("/burn", headers=headers)

    assert response.status_code == 502
    assert "cpu_seconds" in error_of(response)["message"]
    assert (await client.get("/pid", headers=headers)).json()["pid"] != old


async def test_refused_call_is_named_once_per_worker_in_the_tenant_log(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """The operator sees what a tenant tried, once, not once per attempt."""
    headers = {"x-customer-id": "cpu-budget"}
    pid = (await client.get("/pid", headers=headers)).json()["pid"]

    for _ in range(3):
        refused = (await client.get("/socket", headers=headers)).json()["refused"]
        assert "does not allow creating a socket" in refused
    await asyncio.sleep(0.3)

    line = f"tenant cpu-budget pid {pid}: sandbox refused socket.__new__"
    assert dispatcher.log().count(line) == 1
