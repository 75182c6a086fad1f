"""Outbound calls and durable deliveries, against fake upstreams on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from dispatcher.webhook_signing import slack_headers
from tests.conftest import ROOT, DispatcherProcess, metric_samples, sample
from tests.upstream import FakeUpstream

TOKEN = "delivery-admin-token-0123456789"
DELIVERER = {"x-customer-id": "deliverer"}
# Backoff runs a hundred times faster: seconds of policy, tens of ms here.
TIME_SCALE = "0.01"
API = "/accounts/local/workers/dispatch/namespaces/default/scripts/deliverer"
KEYHOLDER_API = API.replace("/deliverer", "/keyholder")
# A webhook URL's token: the secret travels in the URL itself.
HOOK_TOKEN = "T0KEN-hook-secret-98765"


def start(base: Path) -> DispatcherProcess:
    tenants = base / "tenants"
    if not tenants.exists():
        source = ROOT / "tests" / "tenants" / "deliverer"
        shutil.copytree(source, tenants / "deliverer")
        # The same code with a patient policy: it outlasts a long outage.
        shutil.copytree(source, tenants / "patient")
        toml = (source / "tenant.toml").read_text()
        patient = toml.replace("max_attempts = 3", "max_attempts = 1000")
        (tenants / "patient" / "tenant.toml").write_text(patient)
        shutil.copytree(source, tenants / "throttled")
        (tenants / "throttled" / "tenant.toml").write_text(
            'script = "worker.py"\n[egress]\nallow = ["127.0.0.1"]\n'
            'max_subrequests = 20\nrate_limits = {"127.0.0.1" = 2}\n'
            "[retry]\nmax_attempts = 50\n"
        )
        keyholder = shutil.copytree(source, tenants / "keyholder")
        (keyholder / "tenant.toml").write_text('secrets = ["HOOK_TOKEN"]\n' + toml)
        (keyholder / "secrets.demo.toml").write_text(f'HOOK_TOKEN = "{HOOK_TOKEN}"\n')
        for region in ("eu", "us"):
            shutil.copytree(source, tenants / f"{region}-tenant")
            placed = f'region = "{region}"\n' + toml
            (tenants / f"{region}-tenant" / "tenant.toml").write_text(placed)
    return DispatcherProcess(
        tenants,
        base / "state",
        base / f"log-{time.monotonic_ns()}",
        extra_args=[
            "--allow-private-egress", "127.0.0.0/8",
            "--delivery-time-scale", TIME_SCALE,
            "--egress-region", "127.0.0.1=us",
        ],
        extra_env={"SWITCHYARD_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deliveries")


@pytest.fixture(scope="module")
def delivering(base_dir: Path) -> Iterator[DispatcherProcess]:
    process = start(base_dir)
    yield process
    process.stop()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
async def http(delivering: DispatcherProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=delivering.url, headers=DELIVERER, timeout=20
    ) as client:
        yield client


async def deliver(http: httpx.AsyncClient, target: str, body: bytes) -> str:
    response = await http.post("/deliver", params={"to": target}, content=body)
    assert response.status_code == 200, response.text
    delivery_id: str = response.json()["delivery"]
    return delivery_id


async def state_of(
    dispatcher: DispatcherProcess, delivery_id: str, script: str = "deliverer"
) -> dict[str, object]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    path = f"{API.rsplit('/', 1)[0]}/{script}/deliveries/{delivery_id}"
    async with httpx.AsyncClient(base_url=dispatcher.admin_url or "") as admin:
        response = await admin.get(path, headers=headers)
    result: dict[str, object] = response.json()
    return result


async def wait_for_state(
    dispatcher: DispatcherProcess,
    delivery_id: str,
    wanted: str,
    within_s: float = 10,
    script: str = "deliverer",
) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        state = await state_of(dispatcher, delivery_id, script)
        if state.get("state") == wanted:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"{delivery_id} is {state}, not {wanted}")


async def test_delivery_retries_until_it_succeeds_with_the_same_key_and_body(
    http: httpx.AsyncClient, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """500, 500, 200: three attempts, one key, byte-identical bodies."""
    upstream.answer(500, 500, 200)

    delivery = await deliver(http, f"{upstream.url}/pages", b'{"title": "hello"}')
    await wait_for_state(delivering, delivery, "succeeded")

    attempts = upstream.requests_to("/pages")
    assert [a.answered for a in attempts] == [500, 500, 200]
    assert len({a.headers["idempotency-key"] for a in attempts}) == 1
    assert len({a.body_sha256 for a in attempts}) == 1
    assert [a.headers["switchyard-attempt"] for a in attempts] == ["1", "2", "3"]


async def test_out_of_attempts_is_dead_lettered_and_replay_delivers_once(
    http: httpx.AsyncClient, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """Always 503 with max_attempts=3: 3 attempts, a dead letter; replay works."""
    upstream.default_status = 503

    delivery = await deliver(http, f"{upstream.url}/down", b"payload")
    dead = await wait_for_state(delivering, delivery, "dead")
    assert dead["attempts"] == 3
    assert len(upstream.requests_to("/down")) == 3

    upstream.default_status = 200
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=delivering.admin_url or "") as admin:
        replay = await admin.post(
            f"{API}/deliveries/{delivery}/replay", headers=headers
        )
    assert replay.json() == {"replayed": 1}
    await wait_for_state(delivering, delivery, "succeeded")
    assert [a.answered for a in upstream.requests_to("/down")] == [503] * 3 + [200]


async def test_closed_port_is_retried_then_dead_lettered(
    http: httpx.AsyncClient, delivering: DispatcherProcess
) -> None:
    """Nobody listening: three attempts, then a dead letter naming the error."""
    closed = FakeUpstream()
    url = f"{closed.url}/nobody"
    closed.close()

    delivery = await deliver(http, url, b"x")
    dead = await wait_for_state(delivering, delivery, "dead")

    assert dead["attempts"] == 3
    assert "ConnectError" in str(dead["last_error"])


async def test_forbidden_is_final_after_one_attempt(
    http: httpx.AsyncClient, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """403 cannot be fixed by retrying: one attempt, dead, with the reason."""
    upstream.answer(403)

    delivery = await deliver(http, f"{upstream.url}/forbidden", b"x")
    dead = await wait_for_state(delivering, delivery, "dead")

    assert len(upstream.requests_to("/forbidden")) == 1
    assert dead["last_status"] == 403
    assert "403" in str(dead["last_error"])


async def test_retry_after_is_honoured(
    http: httpx.AsyncClient, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """429 with Retry-After: 2 - the next attempt waits two real seconds."""
    upstream.answer(429, headers={"retry-after": "2"})
    upstream.answer(200)

    delivery = await deliver(http, f"{upstream.url}/limited", b"x")
    await wait_for_state(delivering, delivery, "succeeded")

    first, second = upstream.requests_to("/limited")
    assert second.at - first.at >= 2.0


async def test_backoff_follows_the_policy(
    http: httpx.AsyncClient, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """Gaps between attempts stay under base * 2^n (time compressed 100x)."""
    upstream.default_status = 500

    delivery = await deliver(http, f"{upstream.url}/backoff", b"x")
    await wait_for_state(delivering, delivery, "dead")

    times = [a.at for a in upstream.requests_to("/backoff")]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    ceilings = [1.0 * 2**n * float(TIME_SCALE) for n in range(len(gaps))]
    slack = 0.25
    assert all(
        gap <= ceiling + slack for gap, ceiling in zip(gaps, ceilings, strict=True)
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://192.0.2.10/x", "not in the tenant's egress allowlist"),
        ("http://169.254.169.254/latest/meta-data", "non-public address"),
        ("http://10.1.2.3/x", "non-public address"),
        ("ftp://127.0.0.1/x", "is not http or https"),
    ],
)
async def test_egress_outside_the_policy_raises_in_tenant_code(
    http: httpx.AsyncClient, target: str, reason: str
) -> None:
    """Hosts off the allowlist and private addresses never reach the network."""
    response = await http.post("/fetch", params={"to": target})

    assert response.status_code == 200
    assert reason in response.json()["refused"]


async def test_fetch_reaches_an_allowed_upstream(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """An allowed destination answers through ctx.fetch."""
    response = await http.post("/fetch", params={"to": f"{upstream.url}/echo"})

    assert response.json() == {"status": 200, "body": {"ok": True}}
    assert upstream.requests_to("/echo")[0].body == b"ping"


async def test_subrequest_budget_is_enforced(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """Past max_subrequests, calls raise and never reach the upstream."""
    response = await http.post(
        "/fetch-many", params={"to": f"{upstream.url}/many", "n": "5"}
    )

    results = response.json()["results"]
    assert results[:3] == ["ok", "ok", "ok"]
    assert all("budget_exceeded" in r for r in results[3:])
    assert len(upstream.requests_to("/many")) == 3


def write_declarative_tenant(folder: Path, notion_url: str) -> None:
    """The seed's Slack-to-Notion adapter as a tenant, aimed at a fake Notion."""
    folder.mkdir(parents=True)
    shutil.copy(
        ROOT / "examples" / "adapter_slack_to_notion.json", folder / "adapter.json"
    )
    (folder / "secrets.demo.toml").write_text(
        'SLACK_SIGNING_SECRET = "adapter-test-signing-secret"\n'
        'NOTION_TOKEN = "secret_adapter_test_token"\n'
    )
    (folder / "tenant.toml").write_text(
        'script = "adapter.json"\n'
        'secrets = ["SLACK_SIGNING_SECRET", "NOTION_TOKEN"]\n'
        "[vars]\n"
        f'NOTION_API_URL = "{notion_url}"\n'
        'NOTION_DATABASE_ID = "db-123"\n'
        "[egress]\n"
        'allow = ["127.0.0.1"]\n'
        "[retry]\n"
        "base_delay_s = 1.0\n"
    )


async def wait_until_served(http: httpx.AsyncClient, tenant: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = await http.post("/", headers={"x-customer-id": tenant}, content=b"")
        if response.status_code != 404:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{tenant} was never served")


async def test_declarative_slack_to_notion_delivers_the_page_once(
    base_dir: Path, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """The seed's adapter, fed the signed Slack sample, survives two failures."""
    write_declarative_tenant(base_dir / "tenants" / "declarative", upstream.url)
    upstream.answer(500, 502)
    body = (ROOT / "examples" / "slack_message_event.json").read_bytes()
    signed = slack_headers("adapter-test-signing-secret", body)

    async with httpx.AsyncClient(base_url=delivering.url, timeout=20) as http:
        await wait_until_served(http, "declarative")
        unsigned = await http.post(
            "/slack", headers={"x-customer-id": "declarative"}, content=body
        )
        accepted = await http.post(
            "/slack",
            headers=[("x-customer-id", "declarative"), *signed],
            content=body,
        )
    assert unsigned.status_code == 401
    assert accepted.status_code == 202

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pages = upstream.requests_to("/v1/pages")
        if any(page.answered == 200 for page in pages):
            break
        await asyncio.sleep(0.05)
    pages = upstream.requests_to("/v1/pages")
    assert [page.answered for page in pages] == [500, 502, 200]
    page = json.loads(pages[-1].body)
    assert page["parent"] == {"database_id": "db-123"}
    title = page["properties"]["title"]["title"][0]["text"]["content"]
    assert title.startswith("Deploy of billing-service finished")
    assert page["properties"]["created_by"]["rich_text"][0]["text"]["content"] == (
        "U01USER0001"
    )
    assert pages[-1].headers["authorization"] == "Bearer secret_adapter_test_token"


async def test_adapter_with_a_bad_mapping_path_is_refused_at_deploy(
    delivering: DispatcherProcess,
) -> None:
    """A mapping source the trigger does not have is a 400 naming it."""
    adapter = {
        "name": "broken",
        "trigger": "slack_webhook",
        "target": "notion_api",
        "mapping": {"slack.mesage": "notion.title"},
    }
    metadata = {"main_module": "adapter.json"}
    files = {
        "metadata": (None, json.dumps(metadata), "application/json"),
        "adapter.json": ("adapter.json", json.dumps(adapter), "application/json"),
    }
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=delivering.admin_url or "") as admin:
        response = await admin.put(
            API.replace("deliverer", "broken-adapter"),
            files=files,
            headers=headers,
        )

    assert response.status_code == 400
    assert "'slack.mesage'" in response.json()["error"]["message"]


async def put_http_adapter(
    dispatcher: DispatcherProcess, script: str, target: str, egress: object
) -> httpx.Response:
    """Deploy a JSON-to-http adapter through the API with this egress."""
    adapter = {
        "name": "to ledger",
        "trigger": "generic_json",
        "target": "http",
        "mapping": {"json.amount": "http.total"},
    }
    metadata = {
        "main_module": "adapter.json",
        "vars": {"TARGET_URL": target},
        "egress": egress,
    }
    files = {
        "metadata": (None, json.dumps(metadata), "application/json"),
        "adapter.json": ("adapter.json", json.dumps(adapter), "application/json"),
    }
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=dispatcher.admin_url or "") as admin:
        return await admin.put(
            API.replace("deliverer", script), files=files, headers=headers
        )


async def test_adapter_deployed_through_the_api_delivers_within_its_egress(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """The egress allowlist sent at deploy lets the adapter's target through."""
    deployed = await put_http_adapter(
        delivering, "api-adapter", f"{upstream.url}/ledger", {"allow": ["127.0.0.1"]}
    )
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["egress"] == {"allow": ["127.0.0.1"]}

    async with httpx.AsyncClient(base_url=delivering.url, timeout=20) as http:
        accepted = await http.post(
            "/", headers={"x-customer-id": "api-adapter"}, json={"amount": 42}
        )
    assert accepted.status_code == 202, accepted.text

    deadline = time.monotonic() + 10
    while not upstream.requests_to("/ledger") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [json.loads(r.body) for r in upstream.requests_to("/ledger")] == [
        {"total": 42}
    ]


async def test_egress_settings_out_of_range_are_refused_at_deploy(
    delivering: DispatcherProcess,
) -> None:
    """An egress policy the dispatcher cannot enforce is a 400 naming the field."""
    response = await put_http_adapter(
        delivering, "bad-egress", "http://127.0.0.1:9/", {"max_subrequests": -1}
    )

    assert response.status_code == 400
    assert "egress" in response.json()["error"]["message"]
    assert "max_subrequests" in response.json()["error"]["message"]


async def test_circuit_opens_on_a_failing_host_and_closes_when_it_recovers(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """A failing host gets a few tries, then rest; after it recovers, all arrive."""
    upstream.default_status = 500
    patient = {"x-customer-id": "patient"}
    async with httpx.AsyncClient(
        base_url=delivering.url, headers=patient, timeout=20
    ) as http:
        ids = [
            await deliver(http, f"{upstream.url}/flaky", b"%d" % i) for i in range(10)
        ]

    headers = {"authorization": f"Bearer {TOKEN}"}
    path = API.replace("deliverer", "patient") + "/deliveries/circuits"
    async with httpx.AsyncClient(base_url=delivering.admin_url or "") as admin:
        deadline = time.monotonic() + 5
        states: list[str] = []
        while time.monotonic() < deadline and "open" not in states:
            circuits = (await admin.get(path, headers=headers)).json()["circuits"]
            states = [c["state"] for c in circuits]
            await asyncio.sleep(0.02)
        assert "open" in states
        tried_while_open = len(upstream.requests_to("/flaky"))
        await asyncio.sleep(0.2)
        assert len(upstream.requests_to("/flaky")) <= tried_while_open + 1

        upstream.default_status = 200
        for delivery in ids:
            await wait_for_state_by(admin, headers, "patient", delivery, "succeeded")
        circuits = (await admin.get(path, headers=headers)).json()["circuits"]
    assert [c["state"] for c in circuits] == ["closed"]


async def wait_for_state_by(
    admin: httpx.AsyncClient,
    headers: dict[str, str],
    tenant: str,
    delivery_id: str,
    wanted: str,
) -> None:
    path = API.replace("deliverer", tenant) + f"/deliveries/{delivery_id}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (await admin.get(path, headers=headers)).json().get("state") == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{delivery_id} never became {wanted}")


async def test_delivery_outside_the_tenants_region_is_refused_and_dead_lettered(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """An eu tenant cannot deliver to a host declared us; a us tenant can."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=delivering.url, timeout=20) as http:
        eu = await http.post(
            "/deliver",
            params={"to": f"{upstream.url}/regional"},
            headers={"x-customer-id": "eu-tenant"},
            content=b"eu data",
        )
        us = await http.post(
            "/deliver",
            params={"to": f"{upstream.url}/regional"},
            headers={"x-customer-id": "us-tenant"},
            content=b"us data",
        )
    assert eu.status_code == 500  # the tenant's code did not catch the refusal
    assert us.status_code == 200
    await wait_for_state_by_path(
        delivering, headers, "us-tenant", us.json()["delivery"], "succeeded"
    )

    path = API.replace("deliverer", "eu-tenant") + "/deliveries?state=dead"
    async with httpx.AsyncClient(base_url=delivering.admin_url or "") as admin:
        dead = (await admin.get(path, headers=headers)).json()["deliveries"]
    assert len(dead) == 1
    assert dead[0]["last_error"].startswith("region_denied")
    assert dead[0]["attempts"] == 0
    assert [r.body for r in upstream.requests_to("/regional")] == [b"us data"]

    # Replayed while the rule still stands, it is refused again, unsent.
    replay = f"{path.split('?')[0]}/{dead[0]['id']}/replay"
    async with httpx.AsyncClient(base_url=delivering.admin_url or "") as admin:
        assert (await admin.post(replay, headers=headers)).status_code == 200
    again = await wait_for_state(delivering, dead[0]["id"], "dead", script="eu-tenant")
    assert str(again["last_error"]).startswith("region_denied")
    assert [r.body for r in upstream.requests_to("/regional")] == [b"us data"]


async def wait_for_state_by_path(
    dispatcher: DispatcherProcess,
    headers: dict[str, str],
    tenant: str,
    delivery_id: str,
    wanted: str,
) -> None:
    async with httpx.AsyncClient(base_url=dispatcher.admin_url or "") as admin:
        await wait_for_state_by(admin, headers, tenant, delivery_id, wanted)


THROTTLED = {"x-customer-id": "throttled"}


def most_in_any_second(times: list[float]) -> int:
    """The largest number of requests inside any one-second window."""
    return max(
        sum(1 for other in times if start <= other < start + 0.98) for start in times
    )


async def test_outbound_rate_limit_spreads_fetches(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """2 calls/s to a host: ten fetches all succeed, never 3 in one second."""
    async with httpx.AsyncClient(base_url=delivering.url, timeout=30) as http:
        response = await http.post(
            "/fetch-many",
            params={"to": f"{upstream.url}/paced", "n": "10"},
            headers=THROTTLED,
        )

    assert response.json()["results"] == ["ok"] * 10
    assert most_in_any_second([r.at for r in upstream.requests_to("/paced")]) <= 2


async def test_deliveries_over_the_rate_limit_arrive_later(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """Deliveries past the limit are put back, never dropped."""
    async with httpx.AsyncClient(
        base_url=delivering.url, headers=THROTTLED, timeout=30
    ) as http:
        for number in range(6):
            await deliver(http, f"{upstream.url}/later", b"%d" % number)

    deadline = time.monotonic() + 10
    while len(upstream.requests_to("/later")) < 6 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    times = [r.at for r in upstream.requests_to("/later")]
    assert len(times) == 6
    assert most_in_any_second(times) <= 2


async def test_upstream_retry_after_pauses_the_tenant_for_that_host(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """A 429 with Retry-After: 3 - nothing more to that host for 3 s."""
    upstream.answer(429, headers={"retry-after": "3"})
    async with httpx.AsyncClient(
        base_url=delivering.url, headers=THROTTLED, timeout=30
    ) as http:
        first = await http.post("/fetch", params={"to": f"{upstream.url}/busy"})
        second = await http.post("/fetch", params={"to": f"{upstream.url}/busy"})

    assert first.json()["status"] == 429
    assert second.json()["status"] == 200
    earlier, later = upstream.requests_to("/busy")
    assert later.at - earlier.at >= 2.9


@pytest.mark.parametrize("call", ["deliver", "fetch"])
@pytest.mark.parametrize(
    "odd",
    ["header", "url", "port", "port0", "ipv6", "userinfo", "host", "length"],
)
async def test_a_call_http_cannot_carry_is_refused_at_once(
    delivering: DispatcherProcess,
    http: httpx.AsyncClient,
    upstream: FakeUpstream,
    call: str,
    odd: str,
) -> None:
    """No stored poison, no hang: tenant code hears why, and deliveries go on."""
    started = time.monotonic()
    answer = await http.post(
        f"/{call}-odd", params={"to": f"{upstream.url}/odd", "odd": odd}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["refused"], answer.json()
    assert time.monotonic() - started < 2

    after = await deliver(http, f"{upstream.url}/after-odd-{call}-{odd}", b"x")
    await wait_for_state(delivering, after, "succeeded")


async def test_a_fetch_with_a_timeout_of_nan_is_refused(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    answer = await http.post("/fetch-odd", params={"to": upstream.url, "odd": "nan"})
    assert "positive number of seconds" in answer.json()["refused"]


async def test_a_fetch_gives_up_at_the_tenants_timeout(
    http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """timeout= covers waiting for the answer's headers, not the body alone."""
    upstream.delays["/late"] = 3.0
    started = time.monotonic()
    answer = await http.post(
        "/fetch-within", params={"to": f"{upstream.url}/late", "s": "0.5"}
    )
    assert answer.json()["failed"].startswith("upstream_error: ")
    assert time.monotonic() - started < 2


async def test_a_wrongly_typed_argument_raises_in_tenant_code(
    http: httpx.AsyncClient,
) -> None:
    """A TypeError the tenant can read, not a frame that ends its worker."""
    answer = await http.post("/fetch-typed-wrong", params={"to": "x"})
    assert answer.status_code == 200  # not 502: the worker lives on
    assert answer.json() == {"type_error": "url must be a str, not int"}


async def test_a_slow_upstream_holds_back_no_other_delivery(
    delivering: DispatcherProcess, http: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    """Each attempt goes on by itself: a 3 s upstream delays only its own."""
    upstream.delays["/slow-one"] = 3.0
    slow = await deliver(http, f"{upstream.url}/slow-one", b"x")
    await asyncio.sleep(0.3)  # the slow attempt is under way
    started = time.monotonic()
    quick = await deliver(http, f"{upstream.url}/quick-one", b"x")
    await wait_for_state(delivering, quick, "succeeded")
    assert time.monotonic() - started < 1.5
    await wait_for_state(delivering, slow, "succeeded")


async def test_a_secret_in_a_delivery_url_is_hidden_from_logs_and_the_api(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    async with httpx.AsyncClient(base_url=delivering.url, timeout=20) as public:
        answer = await public.post(
            "/deliver-secret",
            params={"to": upstream.url},
            headers={"x-customer-id": "keyholder"},
        )
    delivery = answer.json()["delivery"]
    state = await wait_for_state(delivering, delivery, "succeeded", script="keyholder")

    assert state["url"] == f"{upstream.url}/hooks/[secret HOOK_TOKEN]"
    assert upstream.requests_to(f"/hooks/{HOOK_TOKEN}")  # the real URL was called
    listing = await operator_view(delivering, f"{KEYHOLDER_API}/deliveries")
    assert HOOK_TOKEN not in listing.decode()
    assert HOOK_TOKEN not in delivering.log()


async def deliver_outside_the_eu(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """A delivery the eu-only tenant may not make: upstream is in region us."""
    async with httpx.AsyncClient(base_url=delivering.url, timeout=20) as public:
        await public.post(
            "/deliver",
            params={"to": f"{upstream.url}/outside-the-eu"},
            headers={"x-customer-id": "eu-tenant"},
            content=b"x",
        )


async def operator_view(delivering: DispatcherProcess, path: str) -> bytes:
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=delivering.admin_url or "") as admin:
        return (await admin.get(path, headers=headers)).content


async def test_status_shows_each_tenants_region_limits_and_counts(
    delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """Operators see region, rate limits and outbound outcomes per tenant."""
    await deliver_outside_the_eu(delivering, upstream)
    report = orjson.loads(await operator_view(delivering, "/status"))

    by_id = {t["tenant"]: t for t in report["tenants"]}
    assert by_id["eu-tenant"]["region"] == "eu"
    assert by_id["eu-tenant"]["outbound"]["region_denied"] >= 1
    assert by_id["eu-tenant"]["requests"]["tenant_error"] >= 1
    assert by_id["throttled"]["egress_rate_limits"] == {"127.0.0.1": 2}
    assert by_id["deliverer"]["state"] in ("warm", "idle")


async def test_metrics_show_region_refusals_rate_limits_and_deliveries(
    delivering: DispatcherProcess, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    """Region rules, outbound limits and delivery states reach Prometheus."""
    delivery = await deliver(http, f"{upstream.url}/metrics-ok", b"x")
    await wait_for_state(delivering, delivery, "succeeded")
    await deliver_outside_the_eu(delivering, upstream)
    text = (await operator_view(delivering, "/metrics")).decode()

    samples = metric_samples(text)
    calls = "switchyard_outbound_calls_total"
    refused = sample(samples, calls, tenant="eu-tenant", outcome="region_denied")
    assert refused is not None and refused >= 1
    dead = sample(samples, "switchyard_deliveries", tenant="eu-tenant", state="dead")
    assert dead is not None and dead >= 1
    info = [labels for name, labels in samples if name == "switchyard_tenant_info"]
    assert ("region", "eu") in next(x for x in info if ("tenant", "eu-tenant") in x)
    done = sample(
        samples, "switchyard_deliveries", tenant="deliverer", state="succeeded"
    )
    assert done is not None and done >= 1


# Last: it ends the module's dispatcher with kill -9.
async def test_pending_deliveries_survive_kill_9_and_arrive_once(
    base_dir: Path, delivering: DispatcherProcess, upstream: FakeUpstream
) -> None:
    """100 deliveries, upstream down, kill -9, restart, upstream up: each once."""
    upstream.default_status = 503
    patient = {"x-customer-id": "patient"}
    async with httpx.AsyncClient(
        base_url=delivering.url, headers=patient, timeout=20
    ) as http:
        ids = [
            await deliver(http, f"{upstream.url}/durable", b"%d" % i)
            for i in range(100)
        ]
    delivering.process.send_signal(signal.SIGKILL)
    delivering.process.wait(timeout=10)

    upstream.default_status = 200
    restarted = start(base_dir)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            delivered = [
                r for r in upstream.requests_to("/durable") if r.answered == 200
            ]
            if len(delivered) >= 100:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
    finally:
        restarted.stop()

    delivered = [r for r in upstream.requests_to("/durable") if r.answered == 200]
    keys = [r.headers["idempotency-key"] for r in delivered]
    assert len(ids) == 100
    assert sorted(keys) == sorted(set(keys))
    assert len(keys) == 100
