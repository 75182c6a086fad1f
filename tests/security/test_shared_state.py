"""What the interpreters of two tenants' workers share, and what they do not.

Workers forked from the zygote share the zygote's hash key and memory
layout: that is the price of forking from a pre-imported interpreter, and
``--no-zygote`` is the deployment choice that avoids it (README,
Limitations). Random number state is reseeded on fork either way.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DispatcherProcess
from tests.security.conftest import attack

PROBERS = Path(__file__).parent / "tenants"
INTERPRETER_SECRETS = [
    "str_hash",
    "bytes_hash",
    "random",
    "interpreter_address",
    "libc_address",
]


async def test_forked_workers_never_share_random_state(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """One tenant cannot predict another's random numbers."""
    first = await attack(client, dispatcher, "hash-prober", "/")
    twin = await attack(client, dispatcher, "hash-prober-twin", "/")

    assert first.json()["pid"] != twin.json()["pid"]
    assert first.json()["random"] != twin.json()["random"]


@pytest.fixture(scope="module")
def exec_dispatcher(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DispatcherProcess]:
    """A dispatcher that starts every worker as a fresh interpreter."""
    base = tmp_path_factory.mktemp("no-zygote")
    shutil.copytree(PROBERS / "hash-prober", base / "tenants" / "hash-prober")
    shutil.copytree(PROBERS / "hash-prober", base / "tenants" / "hash-prober-twin")
    shutil.copytree(
        Path(__file__).parent.parent / "tenants" / "echo", base / "tenants" / "echo"
    )
    process = DispatcherProcess(
        base / "tenants", base / "state", base / "log", extra_args=["--no-zygote"]
    )
    yield process
    process.stop()


@pytest.mark.parametrize("secret", INTERPRETER_SECRETS)
async def test_without_zygote_workers_share_no_interpreter_secret(
    exec_dispatcher: DispatcherProcess, secret: str
) -> None:
    """--no-zygote: no shared hash key to collide dict keys, no shared layout."""
    async with httpx.AsyncClient(base_url=exec_dispatcher.url, timeout=10) as http:
        first = await http.get("/", headers={"x-customer-id": "hash-prober"})
        twin = await http.get("/", headers={"x-customer-id": "hash-prober-twin"})

    assert first.json()[secret] != twin.json()[secret]
