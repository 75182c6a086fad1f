"""A worker starts no program and no process, and leaves none behind."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import DispatcherProcess
from tests.security.conftest import (
    attack,
    pid_of,
    refusal_of,
    strays_of_uid,
    uid_of,
)

# os.system: the audit hook refuses it, or (without the hook) the shell
# cannot start and the call returns exit status 127 << 8.
SHELL_REFUSALS = ("PermissionError", "exit status 32512")


@pytest.mark.parametrize(
    ("path", "refusals"),
    [
        ("/system", SHELL_REFUSALS),
        ("/libc-system", ("exit status 32512", "exit status -1")),
        ("/subprocess", ("PermissionError",)),
        ("/execv", ("PermissionError",)),
        ("/posix-spawn", ("PermissionError",)),
        ("/fork", ("PermissionError",)),
        ("/fork-bomb", ("PermissionError",)),
    ],
)
async def test_tenant_cannot_run_a_program_or_fork(
    client: httpx.AsyncClient,
    dispatcher: DispatcherProcess,
    path: str,
    refusals: tuple[str, ...],
) -> None:
    """A tenant could run any binary on the host, or fork the host to death."""
    response = await attack(client, dispatcher, "process-spawner", path)

    assert refusal_of(response).startswith(refusals)


@pytest.mark.parametrize(
    "path", ["/fork-setsid", "/libc-fork-setsid", "/popen-new-session"]
)
async def test_tenant_leaves_no_detached_process_behind(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, path: str
) -> None:
    """A process outside the worker's group would outlive every kill of it."""
    worker = await pid_of(client, "detacher")

    response = await attack(client, dispatcher, "detacher", path)
    await asyncio.sleep(0.2)

    assert refusal_of(response).startswith(("PermissionError", "libc fork"))
    assert strays_of_uid(dispatcher, uid_of(dispatcher, "detacher")) == []
    assert worker in dispatcher.worker_pids()


async def test_refused_process_calls_are_named_in_the_tenant_log(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """An operator could not tell why a tenant's subprocess call failed."""
    await attack(client, dispatcher, "process-spawner", "/subprocess")
    await asyncio.sleep(0.2)

    assert "sandbox refused subprocess.Popen" in dispatcher.log()
