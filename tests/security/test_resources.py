"""Threads, memory and CPU: a tenant that takes too much hurts only itself."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import DispatcherProcess, error_of
from tests.security.conftest import (
    KILL_GRACE_S,
    attack,
    neighbour_watched,
    outcome_of,
    pid_of,
    replaced_worker_of,
)

THREAD_FAILURES = ("RuntimeError", "MemoryError", "PermissionError", "OSError")
WORKER_STOPPED = ("worker_crashed", "worker_memory_exceeded")
# 2 MiB a request: 140 MiB in all, past the leaker's memory_mb of 128.
LEAKING_REQUESTS = 70
LEAKER_MEMORY_MIB = 128
# Each leaking request answers within its 1 s limit, plus the kill grace.
LEAK_ANSWER_S = 3.0
SPIN_LIMIT_S = 1.0


async def test_thread_bomb_fails_clearly_and_the_tenant_serves_on(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """Threads without end could exhaust the host's process table."""
    response = await attack(client, dispatcher, "thread-bomber", "/bomb")

    assert outcome_of(response).startswith((*THREAD_FAILURES, *WORKER_STOPPED))
    await pid_of(client, "thread-bomber")


@pytest.mark.parametrize("path", ["/huge", "/many-small"])
async def test_memory_bomb_is_a_memory_error_inside_the_tenant(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, path: str
) -> None:
    """An allocation past memory_mb would grow until the host swaps or dies."""
    response = await attack(client, dispatcher, "memory-bomber", path)

    assert outcome_of(response).startswith(("MemoryError", *WORKER_STOPPED))
    await pid_of(client, "memory-bomber")


async def test_leaking_tenant_gets_answers_or_errors_never_a_hang(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A leak of 2 MiB per request past memory_mb must not wedge anything."""
    outcomes, kept_mib = [], []
    async with neighbour_watched(client):
        for _ in range(LEAKING_REQUESTS):
            started = time.monotonic()
            response = await client.get(
                "/leak", headers={"x-customer-id": "memory-leaker"}
            )
            assert time.monotonic() - started < LEAK_ANSWER_S
            if response.status_code == 200:
                kept_mib.append(response.json()["kept_mib"])
            else:
                outcomes.append(error_of(response)["code"])

    assert set(outcomes) <= {"tenant_error", *WORKER_STOPPED}
    assert kept_mib[0] == 2
    # Memory errors, or recycling, kept every worker under its limit.
    assert max(kept_mib) < LEAKER_MEMORY_MIB
    assert dispatcher.process.poll() is None


@pytest.mark.parametrize(
    ("path", "codes"),
    [
        ("/python-loop", {"worker_timeout"}),
        ("/hash-loop", {"worker_timeout", *WORKER_STOPPED}),
        ("/regex-loop", {"worker_timeout", *WORKER_STOPPED}),
    ],
)
async def test_endless_loop_is_cut_off_and_the_worker_replaced(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, path: str, codes: set[str]
) -> None:
    """A spinning script would hold its worker, and a CPU, forever."""
    old = await pid_of(client, "cpu-spinner")

    started = time.monotonic()
    response = await attack(client, dispatcher, "cpu-spinner", path)
    elapsed = time.monotonic() - started

    assert error_of(response)["code"] in codes
    assert elapsed < SPIN_LIMIT_S + KILL_GRACE_S + 1.5
    await replaced_worker_of(client, "cpu-spinner", old)
