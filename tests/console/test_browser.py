"""The console in a real headless Chromium, against a real dispatcher.

Opt-in: ``make test-browser`` runs these tests and fails when Debian's
Chromium or the ``browser`` extra (Playwright) is missing; ``make test``
leaves them out, and a bare ``pytest`` skips them where either is missing.
Playwright only drives the system's ``/usr/bin/chromium`` here; it never
downloads a browser of its own.

The tests share one logged-in page and run in file order, as an operator
would go: log in, list the tenants, open one, replay a dead letter, edit
its adapter and deploy it. ``CONSOLE_SCREENSHOTS=docs`` saves a PNG of
each view there (the README shows them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import EXAMPLES, DispatcherProcess
from tests.console.conftest import SCRIPTS, SECRET_VALUE, TOKEN
from tests.upstream import FakeUpstream

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# As root, Chromium's own sandbox cannot start; the rest keeps it from
# reaching anything but the dispatcher on loopback.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRED = os.environ.get("SWITCHYARD_BROWSER_TESTS") == "required"
XSS = '<img src=x onerror="window.__pwned = 1">'
PAYPAL = (EXAMPLES / "paypal_capture_completed.json").read_bytes()
WAIT_MS = 15_000


def missing_browser() -> str | None:
    """Why the browser tests cannot run here; None when they can."""
    if not CHROMIUM.is_file():
        return f"Debian's chromium is not installed ({CHROMIUM})"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: pip install -e '.[browser]'"
    return None


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, console_dispatcher: DispatcherProcess
) -> Iterator[Any]:
    """One Chromium tab on the console; Chromium ends with the module."""
    reason = missing_browser()
    if reason is not None:
        (pytest.fail if REQUIRED else pytest.skip)(reason)
    from playwright.sync_api import sync_playwright

    before = {child.pid for child in psutil.Process().children()}
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        started = browser_processes(before)
        tab = context.pages[0] if context.pages else context.new_page()
        tab.set_default_timeout(WAIT_MS)
        tab.script_errors = []
        tab.on("pageerror", lambda error: tab.script_errors.append(str(error)))
        yield tab
        context.close()
    end_processes(started)


def browser_processes(before: set[int]) -> list[psutil.Process]:
    """The Playwright driver started since ``before``, and its Chromium."""
    found = []
    for child in psutil.Process().children():
        if child.pid not in before:
            found += [child, *child.children(recursive=True)]
    return found


def end_processes(processes: list[psutil.Process]) -> None:
    """Stop, by pid, any of them that outlived the browser's close."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        process.terminate()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    """Save a full-page PNG of the tab, also to $CONSOLE_SCREENSHOTS if set."""
    folder = tmp_path_factory.mktemp("screenshots")
    keep = os.environ.get("CONSOLE_SCREENSHOTS")

    def shoot(tab: Any, name: str) -> Path:
        path = folder / f"console-{name}.png"
        tab.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 5_000, f"{path} looks empty"
        if keep:
            shutil.copy(path, Path(keep) / path.name)
        return path

    return shoot


def api(dispatcher: DispatcherProcess, method: str, path: str) -> Any:
    headers = {"authorization": f"Bearer {TOKEN}"}
    url = f"{dispatcher.admin_url}{path}"
    return httpx.request(method, url, headers=headers, timeout=10).json()


def send(dispatcher: DispatcherProcess, tenant: str, body: bytes) -> httpx.Response:
    headers = {"x-customer-id": tenant, "content-type": "application/json"}
    return httpx.post(dispatcher.url, headers=headers, content=body, timeout=10)


def wait_until(check: Callable[[], bool], what: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_wrong_token_is_refused_at_the_login_form(
    page: Any, console_dispatcher: DispatcherProcess, shots: Callable[[Any, str], Path]
) -> None:
    """A wrong token gets a clear error and no view of the tenants."""
    page.goto(f"{console_dispatcher.admin_url}/console")
    page.wait_for_selector("#login")
    shots(page, "login")

    page.fill("#token", "not-the-token-at-all-0000")
    page.click("#login button[type=submit]")

    error = page.locator("#login-error")
    error.wait_for(state="visible")
    assert "refused this token (403 forbidden)" in error.inner_text()
    assert page.locator("#tenants").count() == 0
    assert page.evaluate("sessionStorage.length") == 0


def test_tenants_list_shows_every_tenant_with_its_state(
    page: Any, console_dispatcher: DispatcherProcess, shots: Callable[[Any, str], Path]
) -> None:
    """After logging in, each tenant is a row: name, version, state, counts."""
    assert send(console_dispatcher, "printer", b"warming up").status_code == 204

    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    page.wait_for_selector("tr[data-tenant=ledger]")
    page.wait_for_selector("tr[data-tenant=printer] .state-warm")

    printer = page.locator("tr[data-tenant=printer] td").all_inner_texts()
    assert printer[0] == "printer"
    assert printer[2].startswith("warm")
    assert printer[3:5] == ["1", "0"]
    unpaid = page.locator("tr[data-tenant=unpaid] td").nth(2).inner_text()
    assert unpaid == "failed\nsecrets without a value: API_KEY"
    assert page.evaluate("sessionStorage.getItem('switchyard.token')") == TOKEN
    shots(page, "tenants")


def test_tenant_log_shows_markup_as_plain_text(
    page: Any, console_dispatcher: DispatcherProcess
) -> None:
    """A log line holding HTML is shown as those characters, never run."""
    assert send(console_dispatcher, "printer", XSS.encode()).status_code == 204

    page.click("tr[data-tenant=printer] a")
    page.wait_for_selector(f"#logs td.log-text:text-is('{XSS}')")

    assert page.locator("#logs img, #summary img").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_replay_button_moves_a_dead_letter_back(
    page: Any,
    console_dispatcher: DispatcherProcess,
    upstream: FakeUpstream,
    shots: Callable[[Any, str], Path],
) -> None:
    """A delivery out of attempts shows as a dead letter; Replay delivers it."""
    upstream.default_status = 503
    accepted = send(console_dispatcher, "ledger", PAYPAL)
    assert accepted.status_code == 202, accepted.text
    delivery = accepted.json()["delivery"]
    path = f"{SCRIPTS}/ledger/deliveries/{delivery}"
    wait_until(
        lambda: api(console_dispatcher, "GET", path)["state"] == "dead", "a dead letter"
    )
    upstream.default_status = 200

    page.goto(f"{console_dispatcher.admin_url}/console#/tenants/ledger")
    row = page.locator(f"#dead-letters tr[data-delivery='{delivery}']")
    row.wait_for()
    assert "503" in row.inner_text()
    shots(page, "tenant")
    row.locator("button.replay").click()

    page.wait_for_selector("#dead-letters :text('No dead letter.')")
    page.wait_for_selector(f"[role=status]:has-text('{delivery} is queued again')")
    wait_until(
        lambda: api(console_dispatcher, "GET", path)["state"] == "succeeded",
        "the replayed delivery to succeed",
    )
    assert [r.answered for r in upstream.requests_to("/ledger")] == [503, 503, 200]


def test_adapter_edit_is_checked_deployed_and_serves_the_next_request(
    page: Any,
    console_dispatcher: DispatcherProcess,
    upstream: FakeUpstream,
    shots: Callable[[Any, str], Path],
) -> None:
    """Client checks, then the server's refusal, then a deploy that serves."""
    page.goto(f"{console_dispatcher.admin_url}/console#/tenants/ledger")
    page.click("#edit-adapter")
    amount = page.locator(".mapping-row").nth(1)
    amount.wait_for()
    source = amount.locator("input.source").input_value()
    assert source == "json.raw.resource.amount.value"
    result = page.locator("#deploy-result")

    page.click("#add-row")
    page.click("#deploy")
    assert "Row 3" in result.inner_text()
    page.locator(".mapping-row").nth(2).locator("button.remove").click()

    amount.locator("input.destination").fill("notion.total")
    page.click("#deploy")
    page.wait_for_selector("#deploy-result .error:has-text('invalid_script')")
    assert "must be http.<field>" in result.inner_text()

    amount.locator("input.destination").fill("http.total")
    page.click("#deploy")
    page.wait_for_selector("#deploy-result .ok:has-text('Deployed as version 1')")
    assert '"json.raw.resource.amount.value": "http.total"' in (
        page.inner_text("#adapter-json")
    )
    shots(page, "adapter")

    before = len(upstream.requests_to("/ledger"))
    assert send(console_dispatcher, "ledger", PAYPAL).status_code == 202
    wait_until(lambda: len(upstream.requests_to("/ledger")) > before, "the delivery")
    delivered = json.loads(upstream.requests_to("/ledger")[-1].body)
    assert delivered == {"event": "PAYMENT.CAPTURE.COMPLETED", "total": "120.00"}


def test_a_tenants_secret_never_reaches_the_page(
    page: Any, console_dispatcher: DispatcherProcess
) -> None:
    """Printed or raised, the value shows as its name only, on every view."""
    assert send(console_dispatcher, "telltale", b"{}").status_code == 500

    page.goto(f"{console_dispatcher.admin_url}/console#/tenants/telltale")
    page.wait_for_selector("#logs td.log-text:text-is('my key is [secret API_KEY]')")
    page.wait_for_selector(
        "#logs td.log-text:text-is('RuntimeError: failed with [secret API_KEY]')"
    )
    assert SECRET_VALUE not in page.content()
    page.goto(f"{console_dispatcher.admin_url}/console#/tenants")
    page.wait_for_selector("tr[data-tenant=telltale]")
    assert SECRET_VALUE not in page.content()


def test_no_script_error_on_any_page(page: Any) -> None:
    """The console's own code threw nothing along the way."""
    assert page.script_errors == []
