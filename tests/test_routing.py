"""Routing: which tenant a request reaches, and what a bad tenant id gets."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.conftest import DispatcherProcess, error_of, raw_exchange


async def test_unknown_tenant_is_404_and_starts_no_process(
    client: httpx.AsyncClient, dispatcher: DispatcherProcess
) -> None:
    """A request for a tenant that does not exist never costs a process."""
    before = dispatcher.worker_pids()

    response = await client.get("/", headers={"x-customer-id": "no-such-tenant"})

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "tenant_not_found"
    assert error["tenant"] == "no-such-tenant"
    assert dispatcher.worker_pids() == before


@pytest.mark.parametrize(
    "header", [b"", b"x-customer-id: \r\n", b"x-customer-id:   \r\n"]
)
async def test_missing_tenant_id_is_400(
    dispatcher: DispatcherProcess, header: bytes
) -> None:
    """Without a tenant named, the client is told which header to send."""
    request = b"POST /anything HTTP/1.1\r\nHost: t\r\n%sContent-Length: 2\r\n\r\n{}"

    answer = await asyncio.to_thread(raw_exchange, dispatcher.url, request % header)

    status, error = parse_error(answer)
    assert status == 400
    assert error["code"] == "missing_tenant_id"
    assert "x-customer-id" in error["message"]


def parse_error(answer: bytes) -> tuple[int, dict[str, str]]:
    """Status and error object of a raw HTTP answer in the JSON shape."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    error: dict[str, str] = json.loads(body)["error"]
    assert set(error) == {"code", "message", "tenant", "request_id"}
    return status, error


@pytest.mark.parametrize(
    "tenant_id",
    [
        "..",
        "../customer-a",
        "customer-a/..",
        "customer%2Fa",
        "Customer-A",
        "-leading-dash",
        "a" * 64,
        "customer_a",
        "customer a",
        "caf\xe9",
    ],
)
async def test_invalid_tenant_ids_are_400(
    dispatcher: DispatcherProcess, tenant_id: str
) -> None:
    """Ids that could name a path, or are not ids at all, are refused."""
    request = b"GET / HTTP/1.1\r\nHost: t\r\nx-customer-id: %s\r\n\r\n"

    answer = await asyncio.to_thread(
        raw_exchange, dispatcher.url, request % tenant_id.encode("latin-1")
    )

    status, error = parse_error(answer)
    assert status == 400
    assert error["code"] == "invalid_tenant_id"


async def test_nul_in_tenant_id_is_refused_as_malformed_http(
    dispatcher: DispatcherProcess,
) -> None:
    """A NUL byte never reaches routing: the HTTP parser refuses it, in JSON."""
    request = b"GET / HTTP/1.1\r\nHost: t\r\nx-customer-id: customer\x00a\r\n\r\n"

    answer = await asyncio.to_thread(raw_exchange, dispatcher.url, request)

    status, error = parse_error(answer)
    assert status == 400
    assert error["code"] == "malformed_request"


async def test_longest_valid_tenant_id_is_looked_up(client: httpx.AsyncClient) -> None:
    """63 characters is still a well-formed id: unknown, not invalid."""
    response = await client.get("/", headers={"x-customer-id": "a" * 63})

    assert response.status_code == 404


async def test_two_different_tenant_ids_are_400(client: httpx.AsyncClient) -> None:
    """A request may not name two tenants and get either one."""
    headers = [("x-customer-id", "customer-a"), ("x-customer-id", "customer-b")]

    response = await client.get("/", headers=headers)

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_tenant_id"


async def test_same_tenant_id_twice_is_served(client: httpx.AsyncClient) -> None:
    """Proxies that repeat a header do not break routing."""
    headers = [("x-customer-id", "echo"), ("x-customer-id", "echo")]

    response = await client.post("/", headers=headers, content=b"twice")

    assert response.status_code == 200
    assert response.content == b"twice"


async def test_every_response_carries_a_request_id(client: httpx.AsyncClient) -> None:
    """Success and error alike can be traced by x-request-id."""
    ok = await client.get("/pid", headers={"x-customer-id": "echo"})
    missing = await client.get("/pid")

    assert len(ok.headers["x-request-id"]) == 16
    assert missing.headers["x-request-id"] != ok.headers["x-request-id"]


async def test_healthz_answers_without_a_tenant(client: httpx.AsyncClient) -> None:
    """Operators can probe the dispatcher itself."""
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_tenant_owns_healthz_path_when_named(client: httpx.AsyncClient) -> None:
    """A tenant's own /healthz route is not swallowed by the dispatcher."""
    response = await client.get("/healthz?x=1", headers={"x-customer-id": "echo"})

    assert response.status_code == 200
    assert response.content == b""
