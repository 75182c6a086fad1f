"""Shared by the console's tests: a dispatcher with the management API,
the tenants the console is shown with, and a recording upstream.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, DispatcherProcess
from tests.upstream import FakeUpstream

TOKEN = "console-admin-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SCRIPTS = "/accounts/local/workers/dispatch/namespaces/default/scripts"
LEDGER_ADAPTER = {
    "name": "PayPal captures to the ledger",
    "trigger": "generic_json",
    "target": "http",
    "mapping": {
        "json.event_type": "http.event",
        "json.raw.resource.amount.value": "http.amount",
    },
    "retry_policy": {"max": 2, "backoff": "exponential"},
}
PRINTER = "async def fetch(request, env, ctx):\n    print(request.text())\n"
# A tenant that does everything it can to show its secret: prints it, and
# raises with it. The console must show only "[secret API_KEY]".
SECRET_VALUE = "sk-console-secret-4f9a2b7c"
TELLTALE = """
async def fetch(request, env, ctx):
    print("my key is", env["API_KEY"])
    raise RuntimeError("failed with " + env["API_KEY"])
"""


def write_console_tenants(folder: Path, ledger_url: str) -> Path:
    """An adapter tenant aimed at ``ledger_url``, one that logs bodies, one
    that cannot start, and the example adapter tenant, customer-d, aimed at
    a closed port of ours.
    """
    example = shutil.copytree(ROOT / "tenants" / "customer-d", folder / "customer-d")
    closed = FakeUpstream()
    closed.close()
    toml = (example / "tenant.toml").read_text()
    toml = toml.replace("http://127.0.0.1:9/", f"{closed.url}/")
    (example / "tenant.toml").write_text(toml)

    ledger = folder / "ledger"
    ledger.mkdir()
    (ledger / "adapter.json").write_text(json.dumps(LEDGER_ADAPTER, indent=2))
    (ledger / "tenant.toml").write_text(
        'script = "adapter.json"\n'
        f'[vars]\nTARGET_URL = "{ledger_url}"\n'
        '[egress]\nallow = ["127.0.0.1"]\n'
    )
    printer = folder / "printer"
    printer.mkdir()
    (printer / "worker.py").write_text(PRINTER)
    (printer / "tenant.toml").write_text('script = "worker.py"\n')
    unpaid = shutil.copytree(printer, folder / "unpaid")
    (unpaid / "tenant.toml").write_text('script = "worker.py"\nsecrets = ["API_KEY"]\n')
    telltale = shutil.copytree(unpaid, folder / "telltale")
    (telltale / "worker.py").write_text(TELLTALE)
    (telltale / "secrets.demo.toml").write_text(f'API_KEY = "{SECRET_VALUE}"\n')
    return folder


def start_console_dispatcher(base: Path) -> DispatcherProcess:
    """A dispatcher with the management API, delivering to loopback fast."""
    return DispatcherProcess(
        base / "tenants",
        base / "state",
        base / f"log-{time.monotonic_ns()}",
        extra_args=[
            "--allow-private-egress", "127.0.0.0/8",
            "--delivery-time-scale", "0.01",
        ],
        extra_env={"SWITCHYARD_ADMIN_TOKEN": TOKEN},
    )  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def console_dispatcher(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[DispatcherProcess]:
    base = tmp_path_factory.mktemp("console")
    write_console_tenants(base / "tenants", f"{upstream.url}/ledger")
    process = start_console_dispatcher(base)
    yield process
    process.stop()


@pytest.fixture
async def anonymous(
    console_dispatcher: DispatcherProcess,
) -> AsyncIterator[httpx.AsyncClient]:
    url = console_dispatcher.admin_url or ""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client
