"""The console's files and the API routes it reads, without a browser.

``test_browser.py`` drives the same page in Chromium, on the same tenants
(``conftest.py``).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import EXAMPLES, DispatcherProcess, error_of
from tests.console.conftest import AUTH, LEDGER_ADAPTER, PRINTER, SCRIPTS


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/common.js", "text/javascript"),
        ("/console/editor.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ],
)
async def test_console_files_are_served_without_the_token(
    anonymous: httpx.AsyncClient, path: str, content_type: str
) -> None:
    """A browser can load the page that then asks for the token."""
    response = await anonymous.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/console/"),
        ("GET", "/console/index.html"),
        ("GET", "/console/../status"),
        ("POST", "/console"),
        ("GET", "/status"),
        ("GET", "/status/ledger"),
        ("GET", f"{SCRIPTS}/ledger/content"),
    ],
)
async def test_everything_else_still_needs_the_token(
    anonymous: httpx.AsyncClient, method: str, path: str
) -> None:
    """Only the console's own files are exempt, and only for GET."""
    response = await anonymous.request(method, path)

    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


async def test_content_is_the_folder_file_until_a_deploy_replaces_it(
    anonymous: httpx.AsyncClient,
) -> None:
    """An editor reads the adapter that serves, from the folder or the API."""
    url = f"{SCRIPTS}/ledger/content"
    from_folder = await anonymous.get(url, headers=AUTH)
    assert from_folder.status_code == 200
    assert from_folder.headers["content-type"] == "application/json"
    assert from_folder.json() == LEDGER_ADAPTER

    files = {"worker.py": ("worker.py", PRINTER, "text/x-python")}
    deployed = await anonymous.put(f"{SCRIPTS}/coded", files=files, headers=AUTH)
    assert deployed.status_code == 200, deployed.text
    coded = await anonymous.get(f"{SCRIPTS}/coded/content", headers=AUTH)
    assert coded.headers["content-type"] == "text/x-python"
    assert coded.text == PRINTER


async def test_content_of_a_missing_script_is_404(
    anonymous: httpx.AsyncClient,
) -> None:
    """The editor of a script that does not exist says so, in the error shape."""
    response = await anonymous.get(f"{SCRIPTS}/never-deployed/content", headers=AUTH)

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "script_not_found"
    assert error["tenant"] == "never-deployed"


async def test_settings_of_a_folder_tenant_are_what_a_deploy_must_keep(
    anonymous: httpx.AsyncClient,
) -> None:
    """A folder tenant's vars and egress are shown, to be sent with a deploy."""
    response = await anonymous.get(f"{SCRIPTS}/ledger/settings", headers=AUTH)

    settings = response.json()
    assert settings["source"] == "folder"
    assert settings["main_module"] == "adapter.json"
    assert settings["vars"]["TARGET_URL"].endswith("/ledger")
    assert settings["egress"]["allow"] == ["127.0.0.1"]
    assert settings["secrets"] == []


async def test_tenant_status_has_its_recent_log(
    console_dispatcher: DispatcherProcess, anonymous: httpx.AsyncClient
) -> None:
    """What a tenant prints shows up in its detail, next to its counts."""
    async with httpx.AsyncClient(base_url=console_dispatcher.url) as public:
        await public.post(
            "/", headers={"x-customer-id": "printer"}, content=b"hello console"
        )

    detail = (await anonymous.get("/status/printer", headers=AUTH)).json()

    assert detail["tenant"] == "printer"
    assert detail["requests"] == {"ok": 1}
    assert "hello console" in [line["text"] for line in detail["logs"]]
    assert detail["slow_requests"] == []


async def test_status_of_an_unknown_tenant_is_404(
    anonymous: httpx.AsyncClient,
) -> None:
    """Asking for a tenant that is not served is a 404 naming it."""
    response = await anonymous.get("/status/nobody-here", headers=AUTH)

    assert response.status_code == 404
    assert error_of(response)["code"] == "script_not_found"
    assert "'nobody-here'" in error_of(response)["message"]


async def test_example_adapter_tenant_retries_then_keeps_a_dead_letter(
    console_dispatcher: DispatcherProcess, anonymous: httpx.AsyncClient
) -> None:
    """customer-d takes PayPal's event; with nobody listening, it dead-letters."""
    body = (EXAMPLES / "paypal_capture_completed.json").read_bytes()
    async with httpx.AsyncClient(base_url=console_dispatcher.url) as public:
        accepted = await public.post(
            "/", headers={"x-customer-id": "customer-d"}, content=body
        )
    assert accepted.status_code == 202, accepted.text
    path = f"{SCRIPTS}/customer-d/deliveries/{accepted.json()['delivery']}"

    deadline = time.monotonic() + 15
    delivery = (await anonymous.get(path, headers=AUTH)).json()
    while delivery["state"] != "dead" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        delivery = (await anonymous.get(path, headers=AUTH)).json()

    assert delivery["state"] == "dead"
    assert delivery["attempts"] == 3
    assert "ConnectError" in delivery["last_error"]
