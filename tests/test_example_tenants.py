"""The example tenants on the real webhook samples, through the dispatcher."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dispatcher.tenants import load_tenant
from dispatcher.webhook_signing import slack_headers, stripe_headers, teams_headers
from tests.conftest import EXAMPLES, ROOT

HeaderPairs = list[tuple[str, str]]
STALE = int(time.time()) - 6 * 60


def secret(tenant_id: str, name: str) -> str:
    """The tenant's demo secret value, read the way the dispatcher reads it."""
    tenant = load_tenant(ROOT / "tenants" / tenant_id, Path("/nonexistent"))
    assert tenant is not None
    return str(tenant.bindings[name])


def sample(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


async def post(
    client: httpx.AsyncClient, tenant: str, body: bytes, signed: HeaderPairs
) -> httpx.Response:
    headers = [("x-customer-id", tenant), ("content-type", "application/json")]
    return await client.post("/webhook", headers=headers + signed, content=body)


def slack(body: bytes, timestamp: int | None = None) -> HeaderPairs:
    return slack_headers(secret("customer-a", "SLACK_SIGNING_SECRET"), body, timestamp)


def teams(body: bytes) -> HeaderPairs:
    return teams_headers(secret("customer-b", "TEAMS_SHARED_SECRET"), body)


def stripe(body: bytes, timestamp: int | None = None) -> HeaderPairs:
    return stripe_headers(
        secret("customer-c", "STRIPE_WEBHOOK_SECRET"), body, timestamp
    )


async def test_slack_message_becomes_notion_page(client: httpx.AsyncClient) -> None:
    """customer-a maps a signed Slack message to a Notion create-page body."""
    body = sample("slack_message_event.json")

    response = await post(client, "customer-a", body, slack(body))

    assert response.status_code == 200
    page = response.json()
    props = page["properties"]
    assert page["parent"]["database_id"]
    assert props["title"]["title"][0]["text"]["content"].startswith(
        "Deploy of billing-service finished"
    )
    assert props["created_by"]["rich_text"][0]["text"]["content"] == "U01USER0001"
    assert props["workspace"]["rich_text"][0]["text"]["content"] == "C01CHAN0001"
    assert props["thread_link"]["url"].endswith(
        "/archives/C01CHAN0001/p1764856700000100"
    )
    assert props["region"]["rich_text"][0]["text"]["content"] == "eu"


async def test_slack_url_verification_echoes_challenge(
    client: httpx.AsyncClient,
) -> None:
    """Slack's endpoint check is answered with its challenge."""
    body = sample("slack_url_verification.json")

    response = await post(client, "customer-a", body, slack(body))

    assert response.json() == {"challenge": json.loads(body)["challenge"]}


@pytest.mark.parametrize(
    ("tenant", "sample_name", "sign"),
    [
        ("customer-a", "slack_message_event.json", slack),
        ("customer-b", "teams_outgoing_webhook.json", teams),
        ("customer-c", "stripe_invoice_paid.json", stripe),
    ],
)
async def test_tampered_body_is_401(
    client: httpx.AsyncClient,
    tenant: str,
    sample_name: str,
    sign: Callable[[bytes], HeaderPairs],
) -> None:
    """A body changed after signing is refused by the tenant's adapter."""
    body = sample(sample_name)
    changed = body.replace(b'"', b' "', 1)

    response = await post(client, tenant, changed, sign(body))

    assert response.status_code == 401
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("tenant", "sample_name", "sign"),
    [
        ("customer-a", "slack_message_event.json", slack),
        ("customer-c", "stripe_invoice_paid.json", stripe),
    ],
)
async def test_stale_timestamp_is_401(
    client: httpx.AsyncClient,
    tenant: str,
    sample_name: str,
    sign: Callable[[bytes, int], HeaderPairs],
) -> None:
    """A correctly signed but six-minute-old request cannot be replayed."""
    body = sample(sample_name)

    response = await post(client, tenant, body, sign(body, STALE))

    assert response.status_code == 401


async def test_unsigned_request_is_401(client: httpx.AsyncClient) -> None:
    """No signature at all is refused by every example tenant."""
    body = sample("slack_message_event.json")

    statuses = [
        (await post(client, t, body, [])).status_code
        for t in ("customer-a", "customer-b", "customer-c")
    ]

    assert statuses == [401, 401, 401]


async def test_teams_message_becomes_airtable_record(
    client: httpx.AsyncClient,
) -> None:
    """customer-b strips the bot mention and maps to an Airtable record."""
    body = sample("teams_outgoing_webhook.json")

    response = await post(client, "customer-b", body, teams(body))

    assert response.status_code == 200
    fields = response.json()["body"]["records"][0]["fields"]
    assert fields["Title"] == "create ticket: printer on floor 3 is offline"
    assert fields["Reporter"] == "Dana Example"
    assert fields["Region"] == "us"


async def test_teams_signature_with_another_secret_is_401(
    client: httpx.AsyncClient,
) -> None:
    """customer-a's secret does not open customer-b's adapter."""
    body = sample("teams_outgoing_webhook.json")
    wrong = teams_headers("c2xhY2stc2VjcmV0LW5vdC10ZWFtcw==", body)

    response = await post(client, "customer-b", body, wrong)

    assert response.status_code == 401


async def test_stripe_invoice_paid_becomes_ledger_entry(
    client: httpx.AsyncClient,
) -> None:
    """customer-c books a paid invoice as revenue in the ledger."""
    body = sample("stripe_invoice_paid.json")

    response = await post(client, "customer-c", body, stripe(body))

    assert response.status_code == 200
    entry = response.json()["ledger_entry"]
    assert entry["amount_minor"] == 4900
    assert entry["amount"] == "49.00"
    assert entry["currency"] == "EUR"
    assert entry["account"] == "revenue"
    assert entry["memo"] == "EXMPL-0042"


async def test_two_hundred_concurrent_requests_reach_their_own_tenant(
    client: httpx.AsyncClient,
) -> None:
    """Under load, no tenant ever answers for another."""
    cases = {
        "customer-a": (sample("slack_message_event.json"), slack, "properties"),
        "customer-b": (sample("teams_outgoing_webhook.json"), teams, "body"),
        "customer-c": (sample("stripe_invoice_paid.json"), stripe, "ledger_entry"),
    }
    order = [list(cases)[i % 3] for i in range(200)]

    async def send(tenant: str) -> tuple[str, httpx.Response]:
        body, sign, _ = cases[tenant]
        return tenant, await post(client, tenant, body, sign(body))

    results = await asyncio.gather(*(send(t) for t in order))

    for tenant, response in results:
        assert response.status_code == 200, response.text
        assert cases[tenant][2] in response.json()
