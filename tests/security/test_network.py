"""A worker has no network: no socket of any family, by any route."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import DispatcherProcess
from tests.security.conftest import attack, refusal_of

FAMILIES = ["inet", "inet6", "unix", "netlink", "packet", "socketpair"]


@pytest.mark.parametrize("family", FAMILIES)
async def test_socket_module_cannot_open_a_socket(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, family: str
) -> None:
    """A tenant could reach the host's loopback services or sniff packets."""
    response = await attack(client, dispatcher, "socket-opener", f"/python/{family}")

    assert refusal_of(response).startswith("PermissionError")


@pytest.mark.parametrize("family", FAMILIES)
async def test_libc_cannot_open_a_socket_past_the_audit_hook(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, family: str
) -> None:
    """ctypes skips Python's checks; the kernel must still say EPERM."""
    response = await attack(client, dispatcher, "socket-opener", f"/libc/{family}")

    assert refusal_of(response) == "EPERM"
