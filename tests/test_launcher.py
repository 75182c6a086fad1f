"""Starting workers when the host, not the tenant, is the trouble.

A worker the host cannot start - no descriptors left, a zygote that went
silent - is the host's failure: the client gets a 503 it may retry at once,
and the tenant is not backed off, so it is served as soon as the host is.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher.errors import HostCannotStart
from dispatcher.launcher import SPAWN_TIMEOUT_S, ZygoteLauncher
from tests.conftest import (
    DispatcherProcess,
    add_tenant,
    dispatcher_in,
    error_of,
    stopped,
    zygote_pid,
)

TOKEN = "launcher-token-0123456789abcdef"
WORKER = "async def fetch(request, env, ctx):\n    return {'ok': True}\n"
TENANTS = ("cold-a", "cold-b")


def start_dispatcher(base: Path, *extra_args: str) -> DispatcherProcess:
    (base / "tenants").mkdir()
    for name in TENANTS:
        add_tenant(base / "tenants" / name, 'script = "worker.py"\n', WORKER)
    return dispatcher_in(base, TOKEN, *extra_args)


@pytest.fixture(params=["zygote", "no-zygote"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DispatcherProcess]:
    """A dispatcher of its own, with each way of starting workers."""
    args = ["--no-zygote"] if request.param == "no-zygote" else []
    process = start_dispatcher(tmp_path, *args)
    yield process
    process.stop()


@pytest.fixture
async def public(host: DispatcherProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=host.url, timeout=30) as client:
        yield client


def tenant(name: str) -> dict[str, str]:
    return {"x-customer-id": name}


@contextlib.contextmanager
def descriptors_exhausted(pid: int) -> Iterator[None]:
    """Leave ``pid`` no descriptor to open: its limit is its lowest free one."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = min(set(range(len(used) + 1)) - used)
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)


async def test_host_out_of_descriptors_does_not_back_the_tenant_off(
    host: DispatcherProcess, public: httpx.AsyncClient
) -> None:
    """Once the host has descriptors again, the tenant's next request is served."""
    assert host.admin_url is not None
    assert httpx.get(host.admin_url + "/readyz", timeout=10).status_code == 200
    assert (await public.get("/healthz")).status_code == 200  # the connection

    with descriptors_exhausted(host.process.pid):
        refused = await public.get("/", headers=tenant("cold-a"))
    served = await public.get("/", headers=tenant("cold-a"))

    assert refused.status_code == 503
    assert error_of(refused)["code"] == "worker_boot_failed"
    assert served.status_code == 200
    assert error_of(refused)["message"] == "the host could not start a worker"
    assert refused.headers["retry-after"] == "1"


async def test_cold_start_on_a_hung_zygote_fails_once_then_a_new_zygote_serves(
    tmp_path: Path,
) -> None:
    """A zygote that went silent costs one cold start, not every one after."""
    process = start_dispatcher(tmp_path)
    try:
        assert process.admin_url is not None
        httpx.get(process.admin_url + "/readyz", timeout=10)
        hung = zygote_pid(process)
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as public:
            with stopped(process, hung):
                started = time.monotonic()
                refused = await public.get("/", headers=tenant("cold-b"))
                seconds = time.monotonic() - started
            served = await public.get("/", headers=tenant("cold-b"))
        assert zygote_pid(process) != hung
    finally:
        process.stop()

    assert refused.status_code == 503
    assert error_of(refused)["code"] == "worker_boot_failed"
    assert refused.headers["retry-after"] == "1"
    assert seconds < SPAWN_TIMEOUT_S + 2, f"the cold start took {seconds:.1f} s"
    assert served.status_code == 200


async def test_a_spawn_the_zygote_refuses_fails_at_once() -> None:
    """A fork the zygote could not make is reported, not waited out."""
    launcher = ZygoteLauncher()
    control = await launcher.started()
    read_end, write_end = os.pipe()
    try:
        started = time.monotonic()
        with pytest.raises(HostCannotStart):
            await launcher.fork_worker(control, [read_end])  # three are needed
        assert time.monotonic() - started < 1
        assert await launcher.ping(control)
    finally:
        os.close(read_end)
        os.close(write_end)
        await launcher.close()
