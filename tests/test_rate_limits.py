"""Inbound rate limits: a token bucket per tenant, answered before any worker."""

from __future__ import annotations

import asyncio
import collections

import httpx

from tests.conftest import DispatcherProcess, error_of, raw_exchange


async def burst(
    client: httpx.AsyncClient, tenant: str, count: int
) -> list[httpx.Response]:
    headers = {"x-customer-id": tenant}
    return await asyncio.gather(
        *(client.get("/", headers=headers) for _ in range(count))
    )


async def test_burst_over_the_limit_gets_429_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    """5 req/s, burst 5: of 20 at once, 5 are served and 15 refused."""
    responses = await burst(client, "limited", 20)

    statuses = collections.Counter(r.status_code for r in responses)
    assert statuses == {200: 5, 429: 15}
    refused = next(r for r in responses if r.status_code == 429)
    assert error_of(refused)["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"] == "5;w=1;burst=5"
    assert "remaining=0" in refused.headers["ratelimit"]


async def test_requests_pass_again_after_the_refill(client: httpx.AsyncClient) -> None:
    """Once the bucket refills, the tenant is served again."""
    await burst(client, "limited", 10)
    await asyncio.sleep(1.1)

    responses = await burst(client, "limited", 5)

    assert [r.status_code for r in responses] == [200] * 5


async def test_a_tenant_without_limits_is_unaffected(client: httpx.AsyncClient) -> None:
    """Another tenant's limit never slows this one."""
    limited, free = await asyncio.gather(
        burst(client, "limited", 30), burst(client, "echo", 30)
    )

    assert {r.status_code for r in free} == {200}
    assert 429 in {r.status_code for r in limited}


async def test_a_route_prefix_has_a_limit_of_its_own(client: httpx.AsyncClient) -> None:
    """1 req/s under /slow-lane: one of five passes, though the tenant allows 5."""
    await asyncio.sleep(1.1)  # earlier tests may have spent the tenant's bucket
    headers = {"x-customer-id": "limited"}

    responses = await asyncio.gather(
        *(client.get("/slow-lane/x", headers=headers) for _ in range(5))
    )

    assert sorted(r.status_code for r in responses) == [200, 429, 429, 429, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["ratelimit-policy"] == "1;w=1;burst=1"


async def test_a_flooded_route_does_not_spend_the_tenants_own_budget(
    client: httpx.AsyncClient,
) -> None:
    """Requests the route limit refuses leave the tenant's tokens alone."""
    await asyncio.sleep(1.1)
    headers = {"x-customer-id": "limited"}

    flooded = [await client.get("/slow-lane", headers=headers) for _ in range(5)]
    others = [await client.get("/other", headers=headers) for _ in range(3)]

    assert [r.status_code for r in flooded] == [200, 429, 429, 429, 429]
    assert [r.status_code for r in others] == [200, 200, 200]


async def test_route_limit_holds_for_paths_written_differently(
    dispatcher: DispatcherProcess,
) -> None:
    """//slow-lane, /./slow-lane and /x/../slow-lane are the same route."""
    await asyncio.sleep(1.1)
    statuses = []
    for path in (b"/slow-lane", b"//slow-lane", b"/./slow-lane", b"/x/../slow-lane"):
        request = b"GET %s HTTP/1.1\r\nHost: t\r\nx-customer-id: limited\r\n\r\n" % path
        answer = await asyncio.to_thread(raw_exchange, dispatcher.url, request)
        statuses.append(int(answer.split(b" ")[1]))

    assert statuses == [200, 429, 429, 429]
