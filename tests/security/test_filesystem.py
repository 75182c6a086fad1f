"""A worker reads its own folder and writes its scratch space, nothing else."""

from __future__ import annotations

import errno
from pathlib import Path

import httpx
import pytest

from tests.conftest import CANARY, DispatcherProcess
from tests.security.conftest import UNREADABLE, attack, pid_of, refusal_of

# Writes outside the scratch folder meet Landlock (EACCES), or a read-only
# bind mount of the tenant's own folder (EROFS).
UNWRITABLE = (*UNREADABLE, f"OSError: [Errno {errno.EROFS}]")
SCRATCH_MIB = 64


@pytest.mark.parametrize("name", ["environ", "cmdline", "mem"])
@pytest.mark.parametrize("who", ["init", "parent", "dispatcher", "neighbour"])
async def test_tenant_cannot_read_another_processs_memory_or_environment(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, who: str, name: str
) -> None:
    """The dispatcher's environment and workers' memory hold tenants' secrets."""
    pids = {
        "init": "1",
        "parent": "parent",
        "dispatcher": str(dispatcher.process.pid),
        "neighbour": str(await pid_of(client, "echo")),
    }

    response = await attack(
        client, dispatcher, "host-snooper", f"/{name}?pid={pids[who]}"
    )

    assert refusal_of(response).startswith("PermissionError")
    assert CANARY[1] not in response.text


@pytest.mark.parametrize("name", ["shadow", "passwd"])
async def test_tenant_cannot_read_the_hosts_user_files(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, name: str
) -> None:
    """Password hashes, or the list of the host's accounts, would leak."""
    response = await attack(client, dispatcher, "host-snooper", f"/etc/{name}")

    assert refusal_of(response).startswith("PermissionError")


@pytest.mark.parametrize(
    "target",
    [
        "relative-secrets",
        "absolute-secrets",
        "example-secrets",
        "checkout-secrets",
        "other-script",
        "state-secrets",
        "dispatcher-log",
        "list-tenants",
        "list-echo",
        "list-state",
        "list-other-scratch",
    ],
)
async def test_tenant_cannot_read_or_list_beyond_its_folder(
    client: httpx.AsyncClient,
    dispatcher: DispatcherProcess,
    planted_secret: Path,
    target: str,
) -> None:
    """One tenant's code could read another's secrets, code or state."""
    response = await attack(client, dispatcher, "neighbour-snooper", f"/{target}")

    assert refusal_of(response).startswith(UNREADABLE)


@pytest.mark.parametrize("kind", ["symlink", "relative-symlink", "hardlink"])
async def test_link_in_scratch_does_not_reach_another_tenants_secrets(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, kind: str
) -> None:
    """A link made where the tenant may write must not carry its rights."""
    response = await attack(client, dispatcher, "link-maker", f"/{kind}")

    # A hard link cannot even be made: scratch is a file system of its own.
    refusal = refusal_of(response)
    assert refusal.startswith((*UNREADABLE, f"OSError: [Errno {errno.EXDEV}]"))


@pytest.mark.parametrize(
    "target",
    [
        "own-folder",
        "own-script",
        "other-tenant",
        "tmp",
        "runner-code",
        "stdlib",
        "site-packages",
    ],
)
async def test_tenant_cannot_write_outside_its_scratch_folder(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, target: str
) -> None:
    """A tenant could rewrite code that other tenants and the host run."""
    response = await attack(client, dispatcher, "disk-filler", f"/{target}")

    assert refusal_of(response).startswith(UNWRITABLE)
    assert not Path("/tmp/switchyard-disk-filler.txt").exists()


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/fill-scratch", f"OSError: [Errno {errno.ENOSPC}]"),
        ("/one-huge-file", f"OSError: [Errno {errno.EFBIG}]"),
    ],
)
async def test_filling_scratch_stops_at_its_cap(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, path: str, refusal: str
) -> None:
    """A tenant could fill the host's disk through its scratch folder."""
    response = await attack(client, dispatcher, "disk-filler", path)

    assert refusal_of(response).startswith(refusal)
    assert response.json()["written_mib"] <= SCRATCH_MIB


@pytest.mark.parametrize(
    "module", ["dispatcher", "dispatcher.tenants", "dispatcher.sandbox", "host-source"]
)
async def test_tenant_cannot_import_the_dispatchers_code(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, module: str
) -> None:
    """With the host's modules a tenant would learn where secrets live."""
    response = await attack(client, dispatcher, "host-importer", f"/{module}")

    refusal = refusal_of(response)
    assert refusal.startswith(("PermissionError", "ImportError", "ModuleNotFound"))


async def test_worker_holds_no_descriptor_of_a_host_file_or_folder(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A descriptor left open by the host is read past every path rule."""
    response = await attack(client, dispatcher, "fd-snooper", "/")

    assert refusal_of(response) == "no file or folder open"
