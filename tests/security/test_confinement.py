"""Every worker reports each confinement layer; none goes missing silently."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import DispatcherProcess
from tests.security.conftest import assert_fully_confined


@pytest.mark.parametrize("tenant", ["customer-a", "customer-b", "customer-c"])
async def test_example_tenant_worker_is_confined_by_every_layer(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess, tenant: str
) -> None:
    """A change that drops a sandbox layer would still pass the webhook tests."""
    # Any answer will do: what matters is that a worker started.
    await client.get("/", headers={"x-customer-id": tenant})

    assert_fully_confined(dispatcher, tenant)
