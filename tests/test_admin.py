"""The management API: deploy, secrets, settings, versions, auth, restarts."""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from dispatcher.admin import build_admin_app
from dispatcher.console import CONSOLE_PATHS
from tests.conftest import DispatcherProcess, error_of

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BASE = "/accounts/acme/workers/dispatch/namespaces/default/scripts"
SECRET_VALUE = "sk-live-api-secret-never-shown"

VERSIONED = """
import asyncio

async def fetch(request, env, ctx):
    if request.path == "/slow":
        await asyncio.sleep(1.5)
    return {"version": VERSION, "token": env.get("API_TOKEN", "") == "SECRET"}
"""


def source(version: int) -> bytes:
    script = VERSIONED.replace("VERSION", str(version))
    return script.replace("SECRET", SECRET_VALUE).encode()


def start_dispatcher(base: Path) -> DispatcherProcess:
    (base / "tenants").mkdir(parents=True, exist_ok=True)
    return DispatcherProcess(
        base / "tenants",
        base / "state",
        base / f"log-{time.monotonic_ns()}",
        extra_env={"SWITCHYARD_ADMIN_TOKEN": TOKEN},
    )


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("admin")


@pytest.fixture(scope="module")
def api_dispatcher(base_dir: Path) -> Iterator[DispatcherProcess]:
    process = start_dispatcher(base_dir)
    yield process
    process.stop()


@pytest.fixture
async def admin(api_dispatcher: DispatcherProcess) -> AsyncIterator[httpx.AsyncClient]:
    assert api_dispatcher.admin_url is not None
    async with httpx.AsyncClient(
        base_url=api_dispatcher.admin_url, headers=AUTH, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def public(api_dispatcher: DispatcherProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_dispatcher.url, timeout=30) as client:
        yield client


async def upload(admin: httpx.AsyncClient, script: str, body: bytes) -> httpx.Response:
    headers = {"content-type": "text/x-python"}
    return await admin.put(f"{BASE}/{script}", content=body, headers=headers)


async def version_served(public: httpx.AsyncClient, script: str) -> int | None:
    response = await public.get("/", headers={"x-customer-id": script})
    return response.json()["version"] if response.status_code == 200 else None


async def test_put_serves_at_once_and_swaps_versions_without_errors(
    admin: httpx.AsyncClient, public: httpx.AsyncClient
) -> None:
    """v1 serves right after its 200; v2 takes over; v1's own requests end on v1."""
    first = await upload(admin, "swapper", source(1))
    assert first.status_code == 200, first.text
    assert first.json()["startup_time_ms"] > 0
    assert await version_served(public, "swapper") == 1

    slow = asyncio.create_task(
        public.get("/slow", headers={"x-customer-id": "swapper"})
    )
    await asyncio.sleep(0.2)
    second = await upload(admin, "swapper", source(2))
    assert second.status_code == 200
    assert await version_served(public, "swapper") == 2
    in_flight = await slow
    assert in_flight.status_code == 200
    assert in_flight.json()["version"] == 1

    rolled = await admin.post(f"{BASE}/swapper/versions/{first.json()['id']}/rollback")
    assert rolled.status_code == 200
    assert await version_served(public, "swapper") == 1
    versions = (await admin.get(f"{BASE}/swapper/versions")).json()["versions"]
    assert [v["number"] for v in versions] == [2, 1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"async def fetch(request, env, ctx)\n    return 1\n", "worker.py, line 1"),
        (b"def handler():\n    return 1\n", "defines no 'async def fetch'"),
        (b"raise RuntimeError('at import')\n", "failed to load"),
    ],
)
async def test_bad_upload_is_400_and_the_live_version_keeps_serving(
    admin: httpx.AsyncClient, public: httpx.AsyncClient, body: bytes, message: str
) -> None:
    """A script that does not compile, has no fetch or fails at import is refused."""
    assert (await upload(admin, "steadfast", source(1))).status_code == 200

    response = await upload(admin, "steadfast", body)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_script"
    assert message in error["message"]
    assert await version_served(public, "steadfast") == 1


async def test_secret_reaches_env_but_never_an_answer_or_log(
    admin: httpx.AsyncClient,
    public: httpx.AsyncClient,
    api_dispatcher: DispatcherProcess,
) -> None:
    """A secret set through the API is in env; its value shows up nowhere else."""
    metadata = {"main_module": "worker.py", "secrets": ["API_TOKEN"], "tags": ["beta"]}
    files = {
        "metadata": (None, json.dumps(metadata), "application/json"),
        "worker.py": ("worker.py", source(1), "text/x-python"),
    }
    deployed = await admin.put(f"{BASE}/secretive", files=files)
    assert deployed.status_code == 200, deployed.text
    waiting = await public.get("/", headers={"x-customer-id": "secretive"})
    assert error_of(waiting)["code"] == "worker_boot_failed"
    assert "API_TOKEN" in error_of(waiting)["message"]

    answers = [
        await admin.put(
            f"{BASE}/secretive/secrets/API_TOKEN", json={"text": SECRET_VALUE}
        ),
        await admin.get(f"{BASE}/secretive/secrets"),
        await admin.get(f"{BASE}/secretive"),
        await admin.get(f"{BASE}?tag=beta"),
        await admin.put(f"{BASE}/secretive/secrets/bad-name", content=SECRET_VALUE),
    ]
    served = await public.get("/", headers={"x-customer-id": "secretive"})

    assert served.json() == {"version": 1, "token": True}
    assert answers[1].json()["secrets"] == [
        {"name": "API_TOKEN", "type": "secret_text"}
    ]
    assert [s["script"] for s in answers[3].json()["scripts"]] == ["secretive"]
    assert answers[4].status_code == 400
    for answer in answers:
        assert SECRET_VALUE not in answer.text
    assert SECRET_VALUE not in api_dispatcher.log()


async def test_a_secret_sent_as_a_file_loses_its_trailing_newline(
    admin: httpx.AsyncClient,
    public: httpx.AsyncClient,
    api_dispatcher: DispatcherProcess,
) -> None:
    """curl --data-binary @token.txt sends the file's newline; it is not kept."""
    script = b"async def fetch(request, env, ctx):\n"
    script += b"    print('token is', env['API_TOKEN'])\n"
    script += b"    return {'newline': env['API_TOKEN'].endswith('\\n')}\n"
    metadata = {"main_module": "worker.py", "secrets": ["API_TOKEN"]}
    files = {
        "metadata": (None, json.dumps(metadata), "application/json"),
        "worker.py": ("worker.py", script, "text/x-python"),
    }
    assert (await admin.put(f"{BASE}/filed", files=files)).status_code == 200
    value = "xoxb-from-a-file-0123456789"
    put = await admin.put(
        f"{BASE}/filed/secrets/API_TOKEN",
        content=f"{value}\n".encode(),
        headers={"content-type": "text/plain"},
    )
    assert put.status_code == 200

    served = await public.get("/", headers={"x-customer-id": "filed"})
    await asyncio.sleep(0.2)

    assert served.json() == {"newline": False}
    assert "token is [secret API_TOKEN]" in api_dispatcher.log()
    assert value not in api_dispatcher.log()


async def test_a_secret_that_is_not_utf8_is_a_400(admin: httpx.AsyncClient) -> None:
    await upload(admin, "binary", source(6))
    answer = await admin.put(
        f"{BASE}/binary/secrets/KEY",
        content=b"\xff\xfe",
        headers={"content-type": "text/plain"},
    )
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "invalid_secret"


async def test_status_names_the_version_the_api_gave(
    admin: httpx.AsyncClient, public: httpx.AsyncClient
) -> None:
    """One version id everywhere: the deploy's answer, /status, the metrics."""
    deployed = (await upload(admin, "labelled", source(5))).json()
    await public.get("/", headers={"x-customer-id": "labelled"})

    status = (await admin.get("/status/labelled")).json()
    metrics = (await admin.get("/metrics")).text

    assert status["version"] == deployed["id"]
    assert f'tenant="labelled",version="{deployed["id"]}"' in metrics


async def test_deleting_the_api_version_brings_back_the_folder_one(
    admin: httpx.AsyncClient, public: httpx.AsyncClient, base_dir: Path
) -> None:
    """An API deploy over a folder tenant, then deleted: the folder serves,
    with no gap, and whoever follows its tail goes on following it."""
    folder = base_dir / "tenants" / "layered"
    folder.mkdir()
    (folder / "worker.py").write_text(source(7).decode())
    (folder / "tenant.toml").write_text('script = "worker.py"\n')
    assert await eventually_served(public, "layered", 7)
    assert (await upload(admin, "layered", source(8))).status_code == 200
    assert await version_served(public, "layered") == 8

    async with admin.stream("GET", f"{BASE}/layered/tail") as tail:
        assert (await admin.delete(f"{BASE}/layered")).status_code == 200
        assert await version_served(public, "layered") == 7
        events = []
        async for line in tail.aiter_lines():
            if line.startswith("event:"):
                events.append(line.removeprefix("event: "))
            if "request" in events:
                break
    assert events == ["request"], events  # no "end" before it


async def eventually_served(
    public: httpx.AsyncClient, script: str, version: int, within_s: float = 10
) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await version_served(public, script) == version:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_settings_patch_and_delete(
    admin: httpx.AsyncClient, public: httpx.AsyncClient
) -> None:
    """Settings change without new code; a deleted script answers 404."""
    await upload(admin, "patched", source(3))
    patched = await admin.patch(
        f"{BASE}/patched/settings", json={"vars": {"REGION": "eu"}, "tags": ["x"]}
    )
    assert patched.status_code == 200
    assert patched.json()["vars"] == {"REGION": "eu"}
    assert await version_served(public, "patched") == 3

    deleted = await admin.delete(f"{BASE}/patched")
    gone = await public.get("/", headers={"x-customer-id": "patched"})

    assert deleted.status_code == 200
    assert error_of(gone)["code"] == "tenant_not_found"
    assert (await admin.get(f"{BASE}/patched")).status_code == 404


@pytest.mark.parametrize(
    "tags", [[f"t{n}" for n in range(9)], ["x" * 65], [""], ["new\nline"]]
)
async def test_too_many_or_odd_tags_are_refused(
    admin: httpx.AsyncClient, tags: list[str]
) -> None:
    """At most 8 tags of up to 64 word characters, dots, colons or dashes."""
    await upload(admin, "tagged", source(4))
    response = await admin.patch(f"{BASE}/tagged/settings", json={"tags": tags})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_settings"
    fine = await admin.patch(f"{BASE}/tagged/settings", json={"tags": ["v1.2:beta"]})
    assert fine.status_code == 200 and fine.json()["tags"] == ["v1.2:beta"]


async def test_slowlog_set_through_the_api_logs_where_requests_wait(
    admin: httpx.AsyncClient,
    public: httpx.AsyncClient,
    api_dispatcher: DispatcherProcess,
) -> None:
    """limits.slowlog_ms reaches the worker; one it could never reach is refused."""
    script = b"import asyncio\n\nasync def fetch(request, env, ctx):\n"
    script += b"    await asyncio.sleep(0.4)\n    return {}\n"
    assert (await upload(admin, "laggard", script)).status_code == 200
    settings = f"{BASE}/laggard/settings"

    refused = await admin.patch(
        settings, json={"limits": {"timeout_ms": 1000, "slowlog_ms": 1000}}
    )
    patched = await admin.patch(settings, json={"limits": {"slowlog_ms": 150}})
    slow = await public.get("/", headers={"x-customer-id": "laggard"})
    await asyncio.sleep(0.1)

    assert error_of(refused)["code"] == "invalid_settings"
    assert "slowlog_ms (1000) must be below timeout_ms" in error_of(refused)["message"]
    assert patched.status_code == 200
    log = api_dispatcher.log()
    assert f"slow request {slow.headers['x-request-id']}: " in log
    assert "  worker.py:4 in fetch: await asyncio.sleep(0.4)" in log


@pytest.mark.parametrize("name", ["Upper", "../etc", "a" * 64, "-dash", "a_b"])
async def test_invalid_script_names_are_400(
    admin: httpx.AsyncClient, name: str
) -> None:
    """Names that could reach the file system are refused before anything."""
    response = await upload(admin, name, source(1))

    assert response.status_code in (400, 404)
    if response.status_code == 400:
        assert error_of(response)["code"] == "invalid_name"


def admin_routes() -> list[tuple[str, str]]:
    """Every method and path of the management app, parameters filled in."""
    stand_in = types.SimpleNamespace(registry=None, namespace="default")
    app = build_admin_app(stand_in, TOKEN).app  # type: ignore[arg-type]
    filled = {
        "{account}": "acme",
        "{namespace}": "default",
        "{script}": "probe",
        "{secret}": "NAME",
        "{version_id}": "v",
        "{tenant}": "probe",
    }
    routes = []
    for route in app.routes:
        path = getattr(route, "path", "")
        if path in CONSOLE_PATHS:
            continue  # the console's files hold no data: tests/console/test_routes.py
        for key, value in filled.items():
            path = path.replace(key, value)
        methods = route.methods if isinstance(route, APIRoute) else {"GET"}
        routes += [(method, path) for method in sorted(methods - {"HEAD"})]
    return routes


async def test_every_management_route_needs_the_token(
    api_dispatcher: DispatcherProcess,
) -> None:
    """No token is 401, a wrong one 403, on every route, docs included."""
    routes = admin_routes()
    assert len(routes) >= 12
    async with httpx.AsyncClient(base_url=api_dispatcher.admin_url or "") as client:
        for method, path in routes:
            missing = await client.request(method, path)
            wrong = await client.request(
                method, path, headers={"authorization": "Bearer not-the-token-at-all"}
            )
            assert missing.status_code == 401, (method, path)
            assert wrong.status_code == 403, (method, path)
            assert error_of(wrong)["code"] == "forbidden"


async def test_public_port_never_serves_the_management_api(
    public: httpx.AsyncClient,
) -> None:
    """Management paths on the public listener are tenant traffic, not admin."""
    response = await public.get(BASE, headers=AUTH)

    assert error_of(response)["code"] == "missing_tenant_id"


@pytest.mark.parametrize("suffix", ["/secrets", "/versions"])
async def test_routes_on_a_missing_script_answer_404(
    admin: httpx.AsyncClient, suffix: str
) -> None:
    """Every route that needs a script says so the same way."""
    response = await admin.get(f"{BASE}/never-deployed{suffix}")

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "script_not_found"
    assert error["tenant"] == "never-deployed"


async def test_deployed_tenants_survive_a_restart_with_their_secrets(
    base_dir: Path, api_dispatcher: DispatcherProcess, admin: httpx.AsyncClient
) -> None:
    """After a restart every API-deployed tenant serves, secrets included."""
    metadata = {"main_module": "worker.py", "secrets": ["API_TOKEN"]}
    files = {
        "metadata": (None, json.dumps(metadata), "application/json"),
        "worker.py": ("worker.py", source(9), "text/x-python"),
    }
    assert (await admin.put(f"{BASE}/survivor", files=files)).status_code == 200
    secret = await admin.put(f"{BASE}/survivor/secrets/API_TOKEN", content=SECRET_VALUE)
    assert secret.status_code == 200
    api_dispatcher.stop()

    restarted = start_dispatcher(base_dir)
    try:
        async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as http:
            survivor = await http.get("/", headers={"x-customer-id": "survivor"})
    finally:
        restarted.stop()

    assert survivor.json() == {"version": 9, "token": True}
