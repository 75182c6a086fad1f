"""Start-up and shutdown of the dispatcher: prewarm, stop, no leftovers."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DispatcherProcess

SPINNER = textwrap.dedent(
    """
    import asyncio
    import os

    async def fetch(request, env, ctx):
        if request.path == "/spin":
            while True:
                pass
        if request.path == "/slow":
            await asyncio.sleep(3)
        return {"pid": os.getpid()}
    """
)


@pytest.fixture
def own_dispatcher(tmp_path: Path) -> DispatcherProcess:
    """A dispatcher of this test's own, with one prewarmed tenant."""
    tenant = tmp_path / "tenants" / "spinner"
    tenant.mkdir(parents=True)
    (tenant / "worker.py").write_text(SPINNER)
    (tenant / "tenant.toml").write_text(
        'script = "worker.py"\nprewarm = true\n[limits]\ntimeout_ms = 60000\n'
    )
    return DispatcherProcess(tmp_path / "tenants", tmp_path / "state", tmp_path / "log")


def wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """The pids still alive (and not zombies) after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if is_running(pid)}
        time.sleep(0.05)
    return alive


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_prewarmed_tenant_has_a_worker_before_any_request(
    own_dispatcher: DispatcherProcess,
) -> None:
    """A tenant marked prewarm is warm as soon as start-up completes."""
    try:
        assert len(own_dispatcher.worker_pids()) == 1
    finally:
        own_dispatcher.stop()


async def test_sigterm_lets_requests_finish_and_leaves_no_worker(
    own_dispatcher: DispatcherProcess,
) -> None:
    """Stopping the dispatcher finishes what is in flight, then ends workers."""
    workers = own_dispatcher.worker_pids()
    headers = {"x-customer-id": "spinner"}

    async with httpx.AsyncClient(base_url=own_dispatcher.url, timeout=10) as http:
        in_flight = [
            asyncio.create_task(http.get("/slow", headers=headers)) for _ in range(3)
        ]
        await asyncio.sleep(0.5)
        own_dispatcher.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        late = await late_request(own_dispatcher.url)
        responses = await asyncio.gather(*in_flight)

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert late in ("refused", 503)
    # uvicorn re-raises the signal it caught once shutdown is complete.
    assert own_dispatcher.process.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "stopped 1 workers" in own_dispatcher.log()
    assert wait_gone(workers, 3) == set()


async def late_request(url: str) -> str | int:
    """What a new connection gets from a dispatcher that is stopping."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            response = await http.get("/", headers={"x-customer-id": "spinner"})
    except httpx.TransportError:
        return "refused"
    return response.status_code


async def test_worker_busy_in_a_loop_dies_with_a_killed_dispatcher(
    own_dispatcher: DispatcherProcess,
) -> None:
    """Even a worker that never reads its pipe does not outlive SIGKILL."""
    workers = own_dispatcher.worker_pids()

    async with httpx.AsyncClient(base_url=own_dispatcher.url, timeout=1) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get("/spin", headers={"x-customer-id": "spinner"})
    own_dispatcher.process.kill()
    own_dispatcher.process.wait(timeout=5)

    assert wait_gone(workers, 3) == set()


def test_doctor_reports_every_layer_a_worker_gets(tmp_path: Path) -> None:
    """An operator can see which confinement layers are active, from a real worker."""
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "doctor", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "  - seccomp" in result.stdout
    assert "  - landlock v" in result.stdout
    assert "  - rlimits" in result.stdout
