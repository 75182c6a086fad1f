"""The frame channel is the tenant's too: what it writes there is untrusted."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.conftest import DispatcherProcess, error_of
from tests.security.conftest import (
    KILL_GRACE_S,
    attack,
    pid_of,
    replaced_worker_of,
)

FORGER = "frame-forger"
TIME_LIMIT_S = 1.0
FLOOD_GROWTH_LIMIT_BYTES = 100 * 1024 * 1024
LOG_GROWTH_LIMIT_BYTES = 5 * 1024 * 1024


async def test_response_forged_for_a_foreign_id_reaches_nobody(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A tenant could answer requests that are not its own."""
    worker = await pid_of(client, FORGER)

    response = await attack(client, dispatcher, FORGER, "/foreign-response")

    assert response.status_code == 200
    assert response.json() == {"pid": worker}
    assert await pid_of(client, FORGER) == worker


async def test_slow_request_forged_for_a_foreign_id_is_not_logged(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A tenant could put stacks of its choosing under requests not its own."""
    worker = await pid_of(client, FORGER)

    response = await attack(client, dispatcher, FORGER, "/foreign-slow-request")
    await asyncio.sleep(0.2)

    assert response.json() == {"pid": worker}
    assert await pid_of(client, FORGER) == worker
    assert "forged stack line" not in dispatcher.log()


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("/ready", "protocol_error", "the worker sent a second ready frame"),
        ("/garbage", "protocol_error", "the worker sent a bad frame"),
        ("/malformed-slow-request", "protocol_error", "the worker sent a bad frame"),
        ("/oversized-slow-request", "protocol_error", "the worker sent a bad frame"),
        ("/close-frame-out", "worker_crashed", "the worker closed its pipe"),
    ],
)
async def test_bad_frame_channel_is_502_and_the_worker_replaced(
    client: httpx.AsyncClient,
    dispatcher: DispatcherProcess,
    path: str,
    code: str,
    message: str,
) -> None:
    """A broken frame stream would leave the tenant's requests hanging."""
    old = await pid_of(client, FORGER)

    response = await attack(client, dispatcher, FORGER, path)

    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == code
    assert error["message"].startswith(message)
    await replaced_worker_of(client, FORGER, old)


async def test_closed_frame_input_costs_at_most_one_more_request(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A worker deaf to the host would fail every later request."""
    old = await pid_of(client, FORGER)

    closing = await attack(client, dispatcher, FORGER, "/close-frame-in")
    after = await client.get("/pid", headers={"x-customer-id": FORGER})

    assert closing.json() == {"closed": 60}
    if after.status_code != 200:
        assert error_of(after)["code"] == "worker_crashed"
    await replaced_worker_of(client, FORGER, old)


async def test_log_flood_is_cut_and_dropped_without_growing_the_dispatcher(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """20 MiB of output could bloat the dispatcher's memory or its log."""
    rss_before = dispatcher.ps.memory_info().rss
    log_before = dispatcher.log_path.stat().st_size

    response = await attack(client, dispatcher, FORGER, "/flood")
    await asyncio.sleep(0.3)
    # A line once the flood is over lets the drop count be logged.
    await pid_of(client, FORGER)
    await asyncio.sleep(0.2)

    assert response.status_code == 200
    log = dispatcher.log()
    assert re.search(r"tenant frame-forger pid \d+: x{100}.* \[line cut\]$", log, re.M)
    assert re.search(r"tenant frame-forger pid \d+: \d+ log lines dropped", log)
    assert dispatcher.ps.memory_info().rss - rss_before < FLOOD_GROWTH_LIMIT_BYTES
    assert dispatcher.log_path.stat().st_size - log_before < LOG_GROWTH_LIMIT_BYTES


async def test_half_sent_frame_is_cut_off_and_the_worker_replaced(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A frame announced but never finished would stall the host's reader."""
    old = await pid_of(client, "half-framer")

    started = time.monotonic()
    response = await attack(client, dispatcher, "half-framer", "/half-frame")
    elapsed = time.monotonic() - started

    assert error_of(response)["code"] in {"worker_timeout", "protocol_error"}
    assert elapsed < TIME_LIMIT_S + KILL_GRACE_S + 1.5
    await replaced_worker_of(client, "half-framer", old)


async def test_worker_ignoring_sigterm_is_killed_and_reaped(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A worker deaf to SIGTERM would hold its tenant, or linger as a zombie."""
    old = await pid_of(client, "term-ignorer")

    started = time.monotonic()
    response = await attack(client, dispatcher, "term-ignorer", "/block")
    elapsed = time.monotonic() - started

    log = dispatcher.log()
    assert error_of(response)["code"] == "worker_timeout"
    # It sat out the whole grace period: SIGTERM really was ignored.
    assert TIME_LIMIT_S + KILL_GRACE_S <= elapsed < TIME_LIMIT_S + KILL_GRACE_S + 1.5
    assert re.search(rf"worker pid {old} is gone \(.*, exit code -9\)$", log, re.M)
    assert old not in dispatcher.worker_pids()
    assert dispatcher.zombies() == []
    await replaced_worker_of(client, "term-ignorer", old)
