"""Slow requests: the stack of the tenant's code, in its log, without secrets."""

from __future__ import annotations

import asyncio
import re
from itertools import takewhile
from pathlib import Path

import httpx
import msgspec
import pytest

from dispatcher.tenant_log import TenantLog
from dispatcher.tenants import Limits, Tenant, TenantConfig
from sandbox_runner.frames import StackEntry
from tests.conftest import ROOT, DispatcherProcess, error_of

SLOWPOKE = {"x-customer-id": "slowpoke"}
SECRET = "sk-live-slowpoke-do-not-leak"
SCRIPT = ROOT / "tests" / "tenants" / "slowpoke" / "worker.py"
STACK_LINE = re.compile(r"^.* tenant slowpoke pid \d+:   (.*)$")


def line_of(text: str) -> int:
    """The number of the one line of slowpoke's script that starts with ``text``."""
    lines = SCRIPT.read_text().splitlines()
    [number] = [n for n, line in enumerate(lines, 1) if line.strip().startswith(text)]
    return number


AWAITING = [
    f"worker.py:{line_of('await wait_for')} in fetch: await wait_for_upstream(token)",
    f"worker.py:{line_of('await asyncio.sleep(0.5)')} in wait_for_upstream: "
    "await asyncio.sleep(0.5)  # as if calling with [secret API_TOKEN]",
]
BLOCKING = [
    f"worker.py:{line_of('crunch_numbers(token)')} in fetch: crunch_numbers(token)",
    f"worker.py:{line_of('time.sleep(0.5)')} in crunch_numbers: "
    "time.sleep(0.5)  # as if hashing [secret API_TOKEN]",
]


def heading_of(request_id: str) -> re.Pattern[str]:
    return re.compile(rf"tenant slowpoke pid \d+: slow request {request_id}: (\d+) ms$")


async def logged_stack(dispatcher: DispatcherProcess, request_id: str) -> list[str]:
    """The stack logged for ``request_id``, waited for up to two seconds."""
    heading = heading_of(request_id)
    for _ in range(40):
        lines = dispatcher.log().splitlines()
        for index, line in enumerate(lines):
            found = heading.search(line)
            if found:
                assert int(found.group(1)) >= 150
                stack = takewhile(STACK_LINE.match, lines[index + 1 :])
                return [STACK_LINE.sub(r"\1", line) for line in stack]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no slow request {request_id} in the log")


@pytest.mark.parametrize(
    ("path", "stack"), [("/await", AWAITING), ("/block", BLOCKING)]
)
async def test_slow_request_logs_the_tenant_line_it_spends_its_time_on(
    client: httpx.AsyncClient,
    dispatcher: DispatcherProcess,
    path: str,
    stack: list[str],
) -> None:
    """Awaiting or blocking the loop, the tenant sees where its time went."""
    response = await client.get(path, headers=SLOWPOKE)

    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert await logged_stack(dispatcher, request_id) == stack


async def test_requests_in_flight_together_each_get_their_own_stack(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A request waiting beside one that blocks the loop is not blamed for it."""
    waiting = asyncio.create_task(client.get("/await", headers=SLOWPOKE))
    await asyncio.sleep(0.05)
    blocking = await client.get("/block", headers=SLOWPOKE)
    waited = await waiting

    assert blocking.status_code == waited.status_code == 200
    blocking_id = blocking.headers["x-request-id"]
    assert await logged_stack(dispatcher, blocking_id) == BLOCKING
    assert await logged_stack(dispatcher, waited.headers["x-request-id"]) == AWAITING


async def test_fast_request_logs_no_stack(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """Only requests past slowlog_ms cost a stack and a block in the log."""
    response = await client.get("/", headers=SLOWPOKE)
    await asyncio.sleep(0.4)

    assert response.status_code == 200
    assert not heading_of(response.headers["x-request-id"]).search(dispatcher.log())


async def test_request_stuck_past_its_time_limit_still_logs_its_stack(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """The stack goes out while the loop is blocked, before the worker is killed."""
    response = await client.get("/stuck", headers=SLOWPOKE)

    assert error_of(response)["code"] == "worker_timeout"
    assert await logged_stack(dispatcher, response.headers["x-request-id"]) == [
        f"worker.py:{line_of('time.sleep(5)')} in fetch: time.sleep(5)"
    ]


async def test_secret_in_a_slow_line_or_a_local_never_reaches_the_log(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A stack names the secret where its value stands, and holds no locals."""
    response = await client.get("/block", headers=SLOWPOKE)

    stack = await logged_stack(dispatcher, response.headers["x-request-id"])
    assert "[secret API_TOKEN]" in stack[-1]
    assert SECRET not in dispatcher.log()


def tenant_with_secret() -> Tenant:
    config = TenantConfig(secrets=["API_TOKEN"])
    return Tenant("slowpoke", Path("/t"), config, bindings={"API_TOKEN": SECRET})


def test_tenant_log_keeps_the_last_slow_requests_redacted_and_bounded() -> None:
    """Status pages and tails read recent stacks, never a secret or a flood."""
    tenant_log = TenantLog()
    tenant = tenant_with_secret()
    line = StackEntry("worker.py", 7, "fetch", f"call({SECRET!r})" + "x" * 1000)

    for number in range(25):
        stack = [StackEntry("deep.py", n, "f", "f()") for n in range(100)] + [line]
        tenant_log.record_slow_request(tenant, 42, f"r{number}", 300.0, stack)
    kept = tenant_log.slow_requests("slowpoke")

    assert [record["request_id"] for record in kept] == [f"r{n}" for n in range(5, 25)]
    newest = kept[-1]
    assert set(newest) == {"at", "request_id", "pid", "elapsed_ms", "stack"}
    assert (newest["pid"], newest["elapsed_ms"]) == (42, 300.0)
    assert len(newest["stack"]) == 32
    innermost = newest["stack"][-1]
    assert innermost["code"].startswith("call('[secret API_TOKEN]')xxx")
    assert len(innermost["code"]) == 256
    assert (innermost["file"], innermost["line"], innermost["function"]) == (
        "worker.py",
        7,
        "fetch",
    )
    assert tenant_log.slow_requests("nobody") == []


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"slowlog_ms": -1}, "Expected `int` >= 0"),
        ({"slowlog_ms": 10_000}, "slowlog_ms (10000) must be below timeout_ms"),
        ({"timeout_ms": 500, "slowlog_ms": 600}, "must be below timeout_ms (500)"),
    ],
)
def test_slowlog_must_be_positive_and_below_the_time_limit(
    limits: dict[str, int], message: str
) -> None:
    """A threshold the time limit always beats would never log a thing."""
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(limits, Limits)


def test_slowlog_is_off_by_default() -> None:
    """A tenant that sets nothing pays for no watch thread."""
    assert Limits().slowlog_ms == 0
