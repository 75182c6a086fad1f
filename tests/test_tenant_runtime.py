"""What tenant code sees: its bindings, its environment, its headers, logs."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import CANARY, DispatcherProcess


async def test_env_holds_exactly_the_tenants_own_bindings(
    client: httpx.AsyncClient,
) -> None:
    """One tenant's env never holds another tenant's vars or secrets."""
    response = await client.get("/env", headers={"x-customer-id": "echo"})

    body = response.json()
    assert sorted(body["bindings"]) == ["ECHO_TOKEN", "GREETING", "REGION"]
    assert "SLACK_SIGNING_SECRET" not in body["bindings"]


async def test_tenant_sees_none_of_the_dispatchers_environment(
    client: httpx.AsyncClient,
) -> None:
    """os.environ inside a worker holds only its scratch folder: no leak."""
    response = await client.get("/env", headers={"x-customer-id": "echo"})

    environ = response.json()["environ"]
    assert CANARY[0] not in environ
    assert CANARY[1] not in str(environ)
    assert list(environ) == ["TMPDIR"]
    assert environ["TMPDIR"].endswith("/scratch/echo")


async def test_worker_runs_in_its_tenant_folder(client: httpx.AsyncClient) -> None:
    """Relative paths in tenant code resolve inside its own folder."""
    response = await client.get("/env", headers={"x-customer-id": "echo"})

    assert response.json()["cwd"].endswith("/echo")


async def test_duplicate_request_headers_arrive_in_order(
    client: httpx.AsyncClient,
) -> None:
    """Repeated headers reach the tenant as separate values, in order."""
    headers = [
        ("x-customer-id", "echo"),
        ("x-dup", "1"),
        ("x-dup", "2"),
        ("x-dup", "3"),
    ]

    response = await client.get("/headers", headers=headers)

    assert response.json()["x_dup"] == ["1", "2", "3"]


async def test_two_set_cookie_headers_reach_the_client(
    client: httpx.AsyncClient,
) -> None:
    """Set-Cookie lines are never folded into one."""
    response = await client.get("/cookies", headers={"x-customer-id": "echo"})

    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


async def test_method_path_and_query_reach_the_tenant(
    client: httpx.AsyncClient,
) -> None:
    """The tenant sees the request as the client sent it."""
    response = await client.request(
        "PATCH", "/query?a=1&a=2&b=", headers={"x-customer-id": "echo"}
    )

    body = response.json()
    assert body["method"] == "PATCH"
    assert body["query"] == {"a": ["1", "2"], "b": [""]}
    assert body["url"].endswith("/query?a=1&a=2&b=")


async def test_prints_and_binary_junk_go_to_the_tenant_log_not_the_frames(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """Output of tenant code never corrupts framing; it lands in its log."""
    headers = {"x-customer-id": "noisy"}

    responses = [await client.get("/", headers=headers) for _ in range(100)]

    assert [r.status_code for r in responses] == [200] * 100
    await asyncio.sleep(0.3)
    log = dispatcher.log()
    assert "tenant noisy: worker pid" not in log  # no worker was lost
    assert "tenant noisy pid" in log
    assert "noisy tenant imported" in log
    assert log.count("noisy fetch says hi") >= 100
    assert "noisy to stderr" in log
