"""How fast a change goes live: a saved file, and an API upload.

Starts its own dispatcher on 127.0.0.1 (a free port, its own temporary
tenants and state folders, the management API on), then measures, several
times each:

- save to serve: an editor-style save of a tenant's script (temporary
  file, then rename) until the new version answers a request;
- PUT to serve: from the moment the management API answers a script
  upload until the first request served by the new version.

Prints a markdown table; ``--append PATH`` adds it to a report.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

TOKEN = "deploy-latency-benchmark-token-0001"
LISTENING = re.compile(r"dispatcher listening on (http://127\.0\.0\.1:\d+)")
ADMIN = re.compile(r"management API listening on (http://127\.0\.0\.1:\d+)")
SCRIPT = "async def fetch(request, env, ctx):\n    return {'version': VERSION}\n"
UPLOAD = "/accounts/bench/workers/dispatch/namespaces/default/scripts/uploaded"
POLL_S = 0.005


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--append", type=Path, help="add the table to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="switchyard-deploy-") as folder:
        base = Path(folder)
        write_script(base / "tenants" / "edited", 0)
        dispatcher, public, admin = start_dispatcher(base)
        try:
            saves = measure_saves(base / "tenants" / "edited", public, args.runs)
            puts = measure_puts(public, admin, args.runs)
        finally:
            dispatcher.terminate()
            dispatcher.wait(timeout=30)

    table = render(saves, puts)
    print(table)
    if args.append:
        with args.append.open("a") as report:
            report.write("\n" + table)
    return 0


def write_script(folder: Path, version: int) -> None:
    """Save worker.py the way editors do: a temporary file, then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tenant.toml").write_text('script = "worker.py"\n')
    temporary = folder / ".worker.py.tmp"
    temporary.write_text(SCRIPT.replace("VERSION", str(version)))
    os.replace(temporary, folder / "worker.py")


def start_dispatcher(base: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    log_path = base / "dispatcher.log"
    command = [
        sys.executable, "-m", "dispatcher", "run", "--port", "0",
        "--admin-port", "0", "--no-access-log",
        "--tenants", str(base / "tenants"), "--state", str(base / "state"),
    ]  # fmt: skip
    env = {**os.environ, "SWITCHYARD_ADMIN_TOKEN": TOKEN}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        public, admin = LISTENING.search(text), ADMIN.search(text)
        if public and admin and "Application startup complete" in text:
            return process, public.group(1), admin.group(1)
        time.sleep(0.05)
    process.terminate()
    raise SystemExit(f"the dispatcher did not start:\n{log_path.read_text()}")


def served_version(client: httpx.Client, tenant: str) -> int | None:
    response = client.get("/", headers={"x-customer-id": tenant})
    return response.json().get("version") if response.status_code == 200 else None


def wait_for(client: httpx.Client, tenant: str, version: int) -> float:
    """Milliseconds until ``tenant`` answers with ``version``."""
    started = time.perf_counter()
    while served_version(client, tenant) != version:
        if time.perf_counter() - started > 10:
            raise SystemExit(f"{tenant} never served version {version}")
        time.sleep(POLL_S)
    return (time.perf_counter() - started) * 1000


def measure_saves(folder: Path, public: str, runs: int) -> list[float]:
    with httpx.Client(base_url=public, timeout=10) as client:
        wait_for(client, "edited", 0)
        timings = []
        for version in range(1, runs + 1):
            started = time.perf_counter()
            write_script(folder, version)
            wait_for(client, "edited", version)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def measure_puts(public: str, admin: str, runs: int) -> list[float]:
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "text/x-python"}
    timings = []
    with (
        httpx.Client(base_url=public, timeout=10) as client,
        httpx.Client(base_url=admin, headers=headers, timeout=30) as api,
    ):
        for version in range(1, runs + 1):
            body = SCRIPT.replace("VERSION", str(version))
            api.put(UPLOAD, content=body).raise_for_status()
            timings.append(wait_for(client, "uploaded", version))
    return timings


def render(saves: list[float], puts: list[float]) -> str:
    def row(name: str, values: list[float], goal: str) -> str:
        median = statistics.median(values)
        return f"| {name} | {median:.0f} ms | {max(values):.0f} ms | {goal} |"

    return "\n".join(
        [
            "## Deploy latency",
            "",
            f"Measured by `bench/deploy_latency.py`, {len(saves)} runs each.",
            "",
            "| change | median | worst | goal |",
            "| --- | ---: | ---: | --- |",
            row("file saved -> new version answers", saves, "<= 500 ms"),
            row("PUT answered -> new version answers", puts, "at once"),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
