"""A worker cannot trace, signal, or become anyone it was not started as."""

from __future__ import annotations

import asyncio
import platform
import signal

import httpx
import psutil
import pytest

from tests.conftest import ZYGOTE_STARTED, DispatcherProcess, error_of
from tests.security.conftest import (
    attack,
    neighbour_watched,
    pid_of,
    refusal_of,
    replaced_worker_of,
)


@pytest.mark.parametrize(
    ("path", "refusal"), [("/ptrace", "EPERM"), ("/kill", "PermissionError")]
)
@pytest.mark.parametrize("who", ["parent", "dispatcher"])
async def test_tenant_cannot_trace_or_kill_the_host(
    client: httpx.AsyncClient,
    dispatcher: DispatcherProcess,
    who: str,
    path: str,
    refusal: str,
) -> None:
    """A tenant could read the host's memory and secrets, or kill it."""
    target = "parent" if who == "parent" else dispatcher.process.pid

    response = await attack(
        client, dispatcher, "privilege-seeker", f"{path}?pid={target}"
    )

    assert refusal_of(response).startswith(refusal)
    assert_host_alive(dispatcher)


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/kill-everyone", "PermissionError"),
        ("/setuid-root", "PermissionError"),
        ("/unshare-net", "EPERM"),
        ("/unshare-user", "EPERM"),
        ("/unshare-mount", "EPERM"),
        ("/mount-tmpfs", "EPERM"),
    ],
)
async def test_tenant_cannot_gain_privileges_or_leave_its_namespaces(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, path: str, refusal: str
) -> None:
    """A tenant could become root, or reach a network the host never gave it."""
    worker = await pid_of(client, "privilege-seeker")

    response = await attack(client, dispatcher, "privilege-seeker", path)

    assert refusal_of(response).startswith(refusal)
    assert await pid_of(client, "privilege-seeker") == worker
    assert_host_alive(dispatcher)


@pytest.mark.parametrize("who", ["parent", "dispatcher"])
async def test_signal_armed_on_io_readiness_never_reaches_the_host(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, who: str
) -> None:
    """F_SETOWN makes the kernel signal for the tenant: it could kill the host."""
    target = "parent" if who == "parent" else dispatcher.process.pid
    path = f"/sigio?pid={target}"

    response = await attack(client, dispatcher, "privilege-seeker", path)
    assert refusal_of(response).startswith("PermissionError"), response.text

    # The next frame to reach the worker sets the signal off.
    async with neighbour_watched(client):
        await pid_of(client, "privilege-seeker")
        await asyncio.sleep(0.2)

    assert_host_alive(dispatcher)


def assert_host_alive(dispatcher: DispatcherProcess) -> None:
    """The dispatcher and its fork server, if it has one, both still run."""
    assert dispatcher.process.poll() is None
    zygote = ZYGOTE_STARTED.search(dispatcher.log())
    if zygote is not None:
        process = psutil.Process(int(zygote.group(1)))
        assert process.status() != psutil.STATUS_ZOMBIE


@pytest.mark.parametrize(
    ("syscall", "refusal"),
    [
        ("socket", "EPERM"),
        ("fork", "EPERM"),
        ("vfork", "EPERM"),
        ("clone-process", "EPERM"),
        ("execve", "EPERM"),
        ("kill", "EPERM"),
        ("tgkill", "EPERM"),
        ("ptrace-attach", "EPERM"),
        ("setuid", "EPERM"),
        ("unshare-net", "EPERM"),
        ("pidfd-open", "EPERM"),
        ("io-uring-setup", "EPERM"),
        ("bpf", "EPERM"),
        # ENOSYS by design: glibc then falls back to clone, whose flags the
        # filter can see.
        ("clone3", "ENOSYS"),
        ("keyctl", "EPERM"),
        ("userfaultfd", "EPERM"),
    ],
)
async def test_raw_system_call_is_refused_by_the_kernel(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, syscall: str, refusal: str
) -> None:
    """Past every Python check, only seccomp stops a call made by number."""
    response = await attack(client, dispatcher, "raw-syscaller", f"/{syscall}")

    assert refusal_of(response) == refusal


@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="int 0x80 exists on x86 only"
)
async def test_system_call_from_the_32_bit_abi_kills_the_worker(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """int 0x80 uses other numbers: a filter written for x86_64 misreads them."""
    old = await pid_of(client, "raw-syscaller")

    response = await attack(client, dispatcher, "raw-syscaller", "/int80-getpid")

    assert response.status_code == 502, response.text
    assert (
        error_of(response)["message"]
        == f"the worker exited (exit code -{int(signal.SIGSYS)})"
    )
    await replaced_worker_of(client, "raw-syscaller", old)
