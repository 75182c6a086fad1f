"""What operators see: metrics, status, health, access log and the live tail.

One dispatcher serves tenants made for this module, so every count it
reports can be checked exactly against the requests the tests sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher.tenant_log import HISTORY_CHARS, TenantLog
from dispatcher.tenants import Tenant, TenantConfig
from tests.conftest import (
    ZYGOTE_STARTED,
    DispatcherProcess,
    Samples,
    add_tenant,
    metric_samples,
    sample,
)

TOKEN = "observability-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SCRIPTS = "/accounts/local/workers/dispatch/namespaces/default/scripts"
SECRET = "sk-observed-secret-value-42"
PEM_LINES = [
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu",
    "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm",
]
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(PEM_LINES)
    + "\n-----END RSA PRIVATE KEY-----\n"
)

WORKER = """
import asyncio
import os

async def fetch(request, env, ctx):
    if request.path == "/raise":
        raise RuntimeError("boom " + env["API_KEY"])
    if request.path == "/sleep":
        await asyncio.sleep(30)
    if request.path == "/crash":
        os._exit(3)
    if request.path == "/dawdle":
        await asyncio.sleep(0.3)
    if request.path == "/pem":
        print("key:", env["PEM"], flush=True)
    if request.path == "/odd":
        print("one\u2028two\x85three\u202eright", flush=True)
    if request.path == "/print":
        marker = request.query.get("marker", [""])[0]
        print("printed", marker, env["API_KEY"], flush=True)
    return {"ok": True}
"""
TENANT_TOML = """
script = "worker.py"
secrets = ["API_KEY", "PEM"]

[limits]
timeout_ms = 400
slowlog_ms = 150
"""
LIMITED_TOML = """
script = "worker.py"
region = "eu"

[rate_limit]
requests_per_second = 0.5
burst = 1
"""
RECYCLED_TOML = """
script = "worker.py"

[limits]
max_requests = 2
"""


def make_tenants(folder: Path) -> Path:
    folder.mkdir()
    for name in ("obs-a", "obs-b"):
        tenant = add_tenant(folder / name, TENANT_TOML, WORKER)
        (tenant / "secrets.demo.toml").write_text(
            f'API_KEY = "{SECRET}"\nPEM = """{PEM}"""\n'
        )
    add_tenant(folder / "obs-recycled", RECYCLED_TOML, WORKER)
    add_tenant(folder / "obs-limited", LIMITED_TOML, WORKER)
    return folder


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DispatcherProcess]:
    base = tmp_path_factory.mktemp("observed")
    process = DispatcherProcess(
        make_tenants(base / "tenants"),
        base / "state",
        base / "dispatcher.log",
        extra_args=["--log-format", "json"],
        extra_env={"SWITCHYARD_ADMIN_TOKEN": TOKEN},
    )
    yield process
    process.stop()


def send(process: DispatcherProcess, tenant: str, path: str) -> httpx.Response:
    headers = {"x-customer-id": tenant}
    return httpx.get(process.url + path, headers=headers, timeout=10)


def api(process: DispatcherProcess, path: str) -> httpx.Response:
    assert process.admin_url is not None
    return httpx.get(process.admin_url + path, headers=AUTH, timeout=10)


def scrape(process: DispatcherProcess) -> Samples:
    """Every sample of /metrics, keyed by name and labels."""
    answer = api(process, "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return metric_samples(answer.text)


def test_metrics_count_exactly_the_requests_sent(observed: DispatcherProcess) -> None:
    # A cold start, two warm answers, a raise, a timeout (which stops the
    # worker), a crash on a fresh worker, then a third cold start.
    outcomes = [send(observed, "obs-a", path).status_code for path in (
        "/", "/", "/", "/raise", "/sleep", "/crash", "/",
    )]  # fmt: skip
    assert outcomes == [200, 200, 200, 500, 504, 502, 200]
    assert send(observed, "obs-b", "/").status_code == 200
    assert send(observed, "nobody-here", "/").status_code == 404

    samples = scrape(observed)
    requests = "switchyard_requests_total"
    assert sample(samples, requests, tenant="obs-a", status="200", code="ok") == 4
    assert (
        sample(samples, requests, tenant="obs-a", status="500", code="tenant_error")
        == 1
    )
    assert (
        sample(samples, requests, tenant="obs-a", status="504", code="worker_timeout")
        == 1
    )
    assert (
        sample(samples, requests, tenant="obs-a", status="502", code="worker_crashed")
        == 1
    )
    assert sample(samples, requests, tenant="obs-b", status="200", code="ok") == 1
    assert sample(samples, "switchyard_cold_starts_total", tenant="obs-a") == 3
    assert sample(samples, "switchyard_cold_starts_total", tenant="obs-b") == 1
    assert sample(samples, "switchyard_worker_starts_total", tenant="obs-a") == 3
    exits = "switchyard_worker_exits_total"
    assert sample(samples, exits, tenant="obs-a", reason="timeout") == 1
    assert sample(samples, exits, tenant="obs-a", reason="crash") == 1
    assert (
        sample(samples, "switchyard_request_duration_seconds_count", tenant="obs-a")
        == 7
    )
    slowest = sample(
        samples, "switchyard_request_duration_seconds_bucket", tenant="obs-a", le="0.25"
    )
    assert slowest == 6  # all but the one that ran into its 400 ms limit
    assert sample(samples, "switchyard_warm_workers", tenant="obs-a") == 1
    warm = [v for (n, _), v in samples.items() if n == "switchyard_warm_workers"]
    assert sample(samples, "switchyard_host_warm_workers") == sum(warm)
    memory = sample(samples, "switchyard_worker_memory_bytes", tenant="obs-a")
    assert memory is not None and memory > 1024 * 1024
    assert (
        sample(samples, "switchyard_unrouted_requests_total", code="tenant_not_found")
        == 1
    )


def test_metric_labels_are_bounded(observed: DispatcherProcess) -> None:
    send(observed, "obs-b", "/some/unique/path-123?id=abc")
    samples = scrape(observed)
    label_values = {value for _, labels in samples for _, value in labels}
    assert not any("path-123" in value for value in label_values)
    assert "nobody-here" not in label_values
    label_names = {name for _, labels in samples for name, _ in labels}
    assert label_names <= {"tenant", "status", "code", "reason", "le", "outcome",
                           "state", "version", "region"}  # fmt: skip


def test_recycled_workers_are_counted_by_reason(observed: DispatcherProcess) -> None:
    for _ in range(4):
        assert send(observed, "obs-recycled", "/").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = scrape(observed)
        exits = "switchyard_worker_exits_total"
        if sample(samples, exits, tenant="obs-recycled", reason="recycle"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("no worker exit with reason recycle was counted")


def test_status_shows_counts_latency_and_memory(observed: DispatcherProcess) -> None:
    send(observed, "obs-b", "/")
    entries = {t["tenant"]: t for t in api(observed, "/status").json()["tenants"]}
    tenant = entries["obs-b"]
    assert tenant["state"] == "warm"
    assert tenant["requests_total"] >= 1
    assert tenant["latency_ms"]["p50"] > 0
    assert tenant["latency_ms"]["p99"] >= tenant["latency_ms"]["p50"]
    assert tenant["memory_bytes"] > 1024 * 1024
    assert entries["obs-recycled"]["errors_total"] == 0


def test_tenant_detail_keeps_recent_logs_redacted(observed: DispatcherProcess) -> None:
    send(observed, "obs-a", "/print?marker=detail-check")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        detail = api(observed, "/status/obs-a")
        texts = [line["text"] for line in detail.json()["logs"]]
        if any("detail-check" in text for text in texts):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the printed line is not in the tenant's detail: {texts}")
    assert "printed detail-check [secret API_KEY]" in texts
    assert api(observed, "/status/no-such-tenant").status_code == 404


def test_secrets_never_appear_in_metrics_or_status(observed: DispatcherProcess) -> None:
    send(observed, "obs-a", "/raise")
    send(observed, "obs-a", "/print?marker=leak-check")
    time.sleep(0.2)
    for path in ("/metrics", "/status", "/status/obs-a"):
        assert SECRET not in api(observed, path).text


def test_probes_answer_without_a_token(observed: DispatcherProcess) -> None:
    assert observed.admin_url is not None
    health = httpx.get(observed.admin_url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(observed.admin_url + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"]["state_database"] == "writable"
    assert httpx.get(observed.admin_url + "/metrics", timeout=5).status_code == 401
    assert httpx.get(observed.admin_url + "/status", timeout=5).status_code == 401


def test_readyz_brings_back_a_lost_zygote(observed: DispatcherProcess) -> None:
    api(observed, "/readyz")  # the zygote is up from here on
    first = ZYGOTE_STARTED.findall(observed.log())
    os.kill(int(first[-1]), signal.SIGKILL)
    deadline = time.monotonic() + 10
    checks: list[str] = []
    while time.monotonic() < deadline:
        answer = api(observed, "/readyz")
        checks.append(answer.json()["checks"]["zygote"])
        if checks[-1] == "started":
            break
        time.sleep(0.05)
    assert checks[-1] == "started", checks
    assert answer.status_code == 200
    assert ZYGOTE_STARTED.findall(observed.log())[-1] != first[-1]
    assert send(observed, "obs-b", "/").status_code == 200


def test_access_log_lines_are_json_with_request_fields(
    observed: DispatcherProcess,
) -> None:
    answer = send(observed, "obs-b", "/json-log-check")
    request_id = answer.headers["x-request-id"]
    time.sleep(0.1)
    lines = [json.loads(line) for line in observed.log().splitlines()
             if line.startswith("{")]  # fmt: skip
    access = [line for line in lines if line.get("request_id") == request_id]
    assert len(access) == 1
    entry = access[0]
    assert entry["logger"] == "dispatcher.access"
    assert entry["tenant"] == "obs-b"
    assert entry["method"] == "GET" and entry["path"] == "/json-log-check"
    assert entry["status"] == 200 and entry["code"] is None
    assert entry["start"] in ("cold", "warm") and entry["pid"] > 0
    assert entry["duration_ms"] > 0
    printed = send(observed, "obs-b", "/print?marker=json-fields")
    assert printed.status_code == 200
    time.sleep(0.2)
    tenant_lines = [json.loads(line) for line in observed.log().splitlines()
                    if line.startswith("{") and "json-fields" in line]  # fmt: skip
    assert tenant_lines and tenant_lines[0]["logger"] == "tenant"
    assert tenant_lines[0]["tenant"] == "obs-b" and tenant_lines[0]["pid"] > 0


class TailReader:
    """Reads a tail's Server-Sent Events on a thread, for the test to wait on."""

    def __init__(self, process: DispatcherProcess, tenant: str) -> None:
        assert process.admin_url is not None
        self.url = f"{process.admin_url}{SCRIPTS}/{tenant}/tail"
        self.events: list[dict] = []
        self.opened = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()
        assert self.opened.wait(5), "the tail did not open"

    def read(self) -> None:
        timeout = httpx.Timeout(5, read=1)
        with httpx.stream("GET", self.url, headers=AUTH, timeout=timeout) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            self.opened.set()
            try:
                for line in answer.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))
                    if self.stop.is_set():
                        return
            except httpx.ReadTimeout:
                return

    def wait_for(self, predicate, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.01)
        pytest.fail(f"no matching tail event within {timeout_s} s: {self.events}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_tail_streams_printed_lines_within_a_second(
    observed: DispatcherProcess,
) -> None:
    tail = TailReader(observed, "obs-a")
    try:
        started = time.monotonic()
        send(observed, "obs-a", "/print?marker=tail-check")
        line = tail.wait_for(
            lambda e: e["type"] == "log" and "tail-check" in e["text"], 1.0
        )
        assert time.monotonic() - started < 1.0
        assert SECRET not in line["text"] and "[secret API_KEY]" in line["text"]
        request = tail.wait_for(
            lambda e: e["type"] == "request" and e["path"].startswith("/print"), 1.0
        )
        assert request["status"] == 200 and request["tenant"] == "obs-a"

        send(observed, "obs-a", "/raise")
        tail.wait_for(lambda e: e["type"] == "log" and "Traceback" in e["text"], 2.0)
        tail.wait_for(
            lambda e: (
                e["type"] == "log"
                and e["text"] == "RuntimeError: boom [secret API_KEY]"
            ),
            2.0,
        )
        # Another tenant's activity never reaches this tail.
        send(observed, "obs-b", "/print?marker=other-tenant")
        time.sleep(0.3)
        assert not any("other-tenant" in json.dumps(e) for e in tail.events)
        assert not any(SECRET in json.dumps(e) for e in tail.events)
    finally:
        tail.close()


def test_tail_of_an_unknown_script_is_404(observed: DispatcherProcess) -> None:
    answer = api(observed, f"{SCRIPTS}/no-such-tenant/tail")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "script_not_found"


def test_cli_tail_follows_a_tenant(observed: DispatcherProcess) -> None:
    command = [sys.executable, "-m", "dispatcher", "tail", "obs-b",
               "--api", observed.admin_url or "", "--recent", "0"]  # fmt: skip
    env = {**os.environ, "SWITCHYARD_ADMIN_TOKEN": TOKEN}
    tail = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(tail.stdout.readline, "")), daemon=True
        )
        reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            send(observed, "obs-b", "/print?marker=cli-tail")
            time.sleep(0.2)
            summaries = [line for line in lines if "GET /print -> 200" in line]
            if summaries and any("cli-tail" in line for line in lines):
                break
        printed = [line for line in lines if "printed cli-tail" in line]
        assert printed, lines
        assert "[secret API_KEY]" in printed[0] and SECRET not in "".join(lines)
        assert re.search(
            r"GET /print -> 200 [\d.]+ ms \((cold|warm), pid \d+\)", summaries[0]
        )
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(10)


async def test_tails_are_bounded_and_released_when_clients_leave(
    observed: DispatcherProcess,
) -> None:
    url = f"{observed.admin_url}{SCRIPTS}/obs-b/tail"
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        for _ in range(16):
            opened = await stack.enter_async_context(
                http.stream("GET", url, headers=AUTH)
            )
            assert opened.status_code == 200
        refused = await http.get(url, headers=AUTH)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_tails"

    # The followers went away with their connections: a new one is welcome.
    deadline = time.monotonic() + 5
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            async with http.stream("GET", url, headers=AUTH) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed tails were never released"
            await asyncio.sleep(0.1)


def test_slow_requests_reach_the_tail_and_the_status(
    observed: DispatcherProcess,
) -> None:
    tail = TailReader(observed, "obs-b")
    try:
        answer = send(observed, "obs-b", "/dawdle")
        request_id = answer.headers["x-request-id"]
        slow = tail.wait_for(lambda e: e["type"] == "slow", 2.0)
        assert slow["request_id"] == request_id
        innermost = slow["stack"][-1]
        assert innermost["file"] == "worker.py"
        assert innermost["function"] == "fetch"
        assert innermost["code"] == "await asyncio.sleep(0.3)"
    finally:
        tail.close()
    detail = api(observed, "/status/obs-b").json()
    assert request_id in [s["request_id"] for s in detail["slow_requests"]]


def test_a_secret_of_several_lines_is_hidden_line_by_line(
    observed: DispatcherProcess,
) -> None:
    send(observed, "obs-a", "/pem")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        texts = [line["text"] for line in api(observed, "/status/obs-a").json()["logs"]]
        if texts.count("[secret PEM]") >= 3:  # two lines of key, and the end
            break
        time.sleep(0.05)
    assert "key: [secret PEM]" in texts, texts
    for line in PEM_LINES:
        assert line not in observed.log()
        assert line not in "".join(texts)


def test_a_secret_in_the_path_is_hidden_in_the_access_log(
    observed: DispatcherProcess,
) -> None:
    encoded = SECRET.replace("-", "%2D")
    plain = send(observed, "obs-b", f"/hook/{SECRET}").headers["x-request-id"]
    hidden = send(observed, "obs-b", f"/hook/{encoded}").headers["x-request-id"]
    time.sleep(0.2)
    lines = [json.loads(line) for line in observed.log().splitlines()
             if line.startswith("{")]  # fmt: skip
    paths = {line.get("request_id"): line.get("path") for line in lines}
    assert paths[plain] == "/hook/[secret API_KEY]"
    assert paths[hidden] == "/hook/[secret API_KEY]"
    assert SECRET not in observed.log() and encoded not in observed.log()


def test_line_separators_in_tenant_output_break_no_tail(
    observed: DispatcherProcess,
) -> None:
    tail = TailReader(observed, "obs-a")
    try:
        send(observed, "obs-a", "/odd")
        line = tail.wait_for(lambda e: e["type"] == "log" and "one" in e["text"], 2.0)
        assert line["text"] == "one?two?three?right"
    finally:
        tail.close()

    command = [sys.executable, "-m", "dispatcher", "tail", "obs-a",
               "--api", observed.admin_url or "", "--recent", "5"]  # fmt: skip
    env = {**os.environ, "SWITCHYARD_ADMIN_TOKEN": TOKEN}
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.0)
        send(observed, "obs-a", "/print?marker=after-odd")
        deadline = time.monotonic() + 5
        seen = ""
        while "after-odd" not in seen and time.monotonic() < deadline:
            seen += cli.stdout.readline()
        assert "one?two?three?right" in seen and "after-odd" in seen
        assert cli.poll() is None
    finally:
        cli.send_signal(signal.SIGINT)
        cli.wait(10)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"{SCRIPTS}/obs-a/tail?recent=many", 400, "invalid_request"),
        ("/status/obs-a/", 404, "invalid_request"),
        (f"{SCRIPTS}/obs-a/deliveries?state=zzz", 400, "invalid_request"),
    ],
)
def test_odd_api_requests_answer_in_the_documented_shape(
    observed: DispatcherProcess, path: str, status: int, code: str
) -> None:
    answer = api(observed, path)
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert answer.headers["x-request-id"] == answer.json()["error"]["request_id"]


def test_history_is_bounded_in_characters_not_only_lines() -> None:
    """Long lines of wide characters cannot make one tenant's history huge."""
    tenant = Tenant("wide", Path("/t"), TenantConfig(), bindings={})
    tenant_log = TenantLog()
    tenant_log.emit_lines(tenant, 1, ["\U0001f600" * 4000] * 150)
    kept = tenant_log.recent("wide")
    assert 0 < len(kept) < 150
    assert sum(len(line.text) for line in kept) <= HISTORY_CHARS


def test_stopping_the_dispatcher_ends_open_tails_at_once(
    tmp_path: Path,
) -> None:
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    add_tenant(tenants / "quiet", 'script = "worker.py"\n', WORKER)
    process = DispatcherProcess(
        tenants,
        tmp_path / "state",
        tmp_path / "dispatcher.log",
        extra_env={"SWITCHYARD_ADMIN_TOKEN": TOKEN},
    )
    try:
        tail = TailReader(process, "quiet")
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        end = tail.wait_for(lambda e: e["type"] == "end", 5.0)
        assert end["reason"] == "the dispatcher is shutting down"
        # uvicorn ends by raising the signal it caught again: -SIGTERM.
        assert process.process.wait(timeout=10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 5
        assert "Waiting for connections to close" not in process.log()
        assert "stopped 0 workers" in process.log()
    finally:
        if process.process.poll() is None:
            process.stop()


def test_lines_over_the_budget_are_reported_where_the_tenant_looks() -> None:
    """Lines lost to the budget are said in the tenant's own log, not only ours."""
    tenant = Tenant("chatty", Path("/t"), TenantConfig(), bindings={})
    tenant_log = TenantLog()
    tenant_log.emit_lines(tenant, 7, [f"line {n}" for n in range(1500)])
    time.sleep(0.02)  # the budget refills a few lines
    tenant_log.emit_lines(tenant, 7, ["after the flood"])

    texts = [line.text for line in tenant_log.recent("chatty")]
    assert "[switchyard: 500 log lines dropped, over 200 lines/s]" in texts
    assert texts[-1] == "after the flood"


async def test_overlapping_readiness_probes_all_see_a_healthy_host(
    observed: DispatcherProcess,
) -> None:
    url = f"{observed.admin_url}/readyz"
    async with httpx.AsyncClient(timeout=10) as http:
        answers = await asyncio.gather(*(http.get(url) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20


def test_rate_limits_and_region_show_in_the_metrics(
    observed: DispatcherProcess,
) -> None:
    statuses = [send(observed, "obs-limited", "/").status_code for _ in range(3)]
    assert statuses == [200, 429, 429]

    samples = scrape(observed)
    requests = "switchyard_requests_total"
    assert (
        sample(
            samples, requests, tenant="obs-limited", status="429", code="rate_limited"
        )
        == 2
    )
    rate = "switchyard_tenant_rate_limit_requests_per_second"
    assert sample(samples, rate, tenant="obs-limited") == 0.5
    assert (
        sample(samples, "switchyard_tenant_rate_limit_burst", tenant="obs-limited") == 1
    )
    info = [labels for name, labels in samples if name == "switchyard_tenant_info"]
    limited = next(dict(x) for x in info if ("tenant", "obs-limited") in x)
    assert limited["region"] == "eu" and limited["state"] == "ok"
