"""Ejecting a declarative adapter gives code that does the same thing."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from dispatcher.webhook_signing import slack_headers
from sandbox_runner import adapters
from sandbox_runner.runtime import Env, Request
from tests.conftest import ROOT

SECRET = "eject-test-signing-secret"


class RecordingContext:
    """Stands in for ctx: records the deliveries instead of sending them."""

    tenant = "ejected"
    request_id = "r1"

    def __init__(self) -> None:
        self.delivered: list[tuple[str, Any, Any]] = []

    async def deliver(self, url: str, *, json: Any, headers: Any) -> Any:
        self.delivered.append((url, json, headers))
        return type("Delivery", (), {"id": "dlv_1"})()


def signed_request() -> Request:
    body = (ROOT / "examples" / "slack_message_event.json").read_bytes()
    return Request("POST", "http://t/slack", slack_headers(SECRET, body), body)


async def run(fetch: Any) -> tuple[int, list[tuple[str, Any, Any]]]:
    env = Env(
        {"SLACK_SIGNING_SECRET": SECRET, "NOTION_TOKEN": "t", "NOTION_DATABASE_ID": "d"}
    )
    ctx = RecordingContext()
    response = await fetch(signed_request(), env, ctx)
    return response.status, ctx.delivered


async def test_ejected_worker_delivers_what_the_adapter_delivered(
    tmp_path: Path,
) -> None:
    """The generated worker.py makes the same delivery as the adapter."""
    folder = tmp_path / "ejected"
    folder.mkdir()
    shutil.copy(
        ROOT / "examples" / "adapter_slack_to_notion.json", folder / "adapter.json"
    )
    (folder / "tenant.toml").write_text('script = "adapter.json"\n')

    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "eject", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr

    spec = importlib.util.spec_from_file_location("ejected", folder / "worker.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ejected = await run(module.fetch)
    original = await run(adapters.load_fetch(folder / "adapter.json"))

    assert ejected == original
    assert ejected[0] == 202
    toml = (folder / "tenant.toml").read_text()
    assert 'script = "worker.py"' in toml
    assert "max_attempts = 3" in toml
