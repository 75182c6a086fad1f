"""Shared fixtures: a real dispatcher process on 127.0.0.1 with real workers.

The session's dispatcher serves the example tenants from ``tenants/`` and
the test tenants from ``tests/tenants/``, copied into a temporary folder so
that tests can add tenants of their own without touching the repo.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LISTENING = re.compile(rb"dispatcher listening on (http://[\d.]+:\d+)")
STARTED = b"Application startup complete"
ADMIN_LISTENING = re.compile(rb"management API listening on (http://[\d.]+:\d+)")
ZYGOTE_STARTED = re.compile(r"zygote started, pid (\d+)")
# Set in the dispatcher's own environment; no tenant may ever see it.
CANARY = ("SWITCHYARD_TEST_CANARY", "dispatcher-only-value")

BROKEN_SCRIPT = "async def fetch(request, env, ctx)\n    return {}\n"


class DispatcherProcess:
    """``switchyard run`` as a child process, with its log in a file."""

    def __init__(
        self,
        tenants_dir: Path,
        state_dir: Path,
        log_path: Path,
        extra_args: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        env = {**os.environ, CANARY[0]: CANARY[1], **(extra_env or {})}
        command = [
            sys.executable, "-m", "dispatcher", "run", "--port", "0",
            "--tenants", str(tenants_dir), "--state", str(state_dir),
            "--body-timeout", "3", "--admin-port", "0", *(extra_args or []),
        ]  # fmt: skip
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env
            )
        self.url = self.wait_until_started()
        admin = ADMIN_LISTENING.search(self.log_path.read_bytes())
        self.admin_url = admin.group(1).decode() if admin else None
        self.ps = psutil.Process(self.process.pid)

    def wait_until_started(self, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()
            found = LISTENING.search(text)
            if found and STARTED in text:
                return found.group(1).decode()
            if self.process.poll() is not None:
                raise RuntimeError(f"dispatcher exited:\n{text.decode()}")
            time.sleep(0.05)
        raise RuntimeError("dispatcher did not start in time")

    def log(self) -> str:
        """Everything the dispatcher has logged so far."""
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        """Pids of the dispatcher's workers (its zygote not counted)."""
        zygote = ZYGOTE_STARTED.search(self.log())
        zygote_pid = int(zygote.group(1)) if zygote else None
        children = self.ps.children(recursive=True)
        return {child.pid for child in children if child.pid != zygote_pid}

    def zombies(self) -> list[psutil.Process]:
        return [
            child
            for child in self.ps.children(recursive=True)
            if child.status() == psutil.STATUS_ZOMBIE
        ]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def make_tenants_dir(target: Path) -> Path:
    """Example, test and hostile tenants, side by side, in ``target``."""
    tests = ROOT / "tests"
    for source in [ROOT / "tenants", tests / "tenants", tests / "security" / "tenants"]:
        for folder in source.iterdir():
            if folder.is_dir():
                shutil.copytree(folder, target / folder.name)
    # Two tenants running the same script, to compare their interpreters.
    shutil.copytree(target / "hash-prober", target / "hash-prober-twin")
    add_tenant(target / "broken", 'script = "worker.py"\n', BROKEN_SCRIPT)
    add_tenant(target / "bad-limits", "[limits]\ntimeout_ms = 0\n", "")
    linked = add_tenant(target / "linked-script", 'script = "worker.py"\n', "")
    (linked / "worker.py").unlink()
    (linked / "worker.py").symlink_to(target / "echo" / "worker.py")
    return target


def add_tenant(folder: Path, toml: str, script: str) -> Path:
    """A tenant folder made on the spot, for cases a repo file cannot hold."""
    folder.mkdir()
    (folder / "tenant.toml").write_text(toml)
    (folder / "worker.py").write_text(script)
    return folder


@pytest.fixture(scope="session")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DispatcherProcess]:
    """One dispatcher for the whole session, serving every tenant."""
    base = tmp_path_factory.mktemp("dispatcher")
    tenants = make_tenants_dir(base / "tenants")
    process = DispatcherProcess(tenants, base / "state", base / "dispatcher.log")
    yield process
    process.stop()


@pytest.fixture(scope="session")
async def client(dispatcher: DispatcherProcess) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(
        base_url=dispatcher.url, timeout=30, limits=limits
    ) as http:
        yield http


def error_of(response: httpx.Response) -> dict[str, str]:
    """The ``error`` object of a JSON error response, checked for shape."""
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "message", "tenant", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def raw_exchange(url: str, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes to the dispatcher and read until it closes or answers.

    For requests an HTTP client library refuses to build (NUL in a header,
    say): the server must still answer them in the documented shape.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or not response_complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def response_complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


Listeners = tuple[httpx.AsyncClient, httpx.AsyncClient]


@contextlib.asynccontextmanager
async def listener_clients(
    process: DispatcherProcess, admin_headers: dict[str, str] | None = None
) -> AsyncIterator[Listeners]:
    """Clients of the public listener and of the management API, in that order."""
    assert process.admin_url is not None
    async with (
        httpx.AsyncClient(base_url=process.url, timeout=30) as public,
        httpx.AsyncClient(
            base_url=process.admin_url, headers=admin_headers, timeout=30
        ) as admin,
    ):
        yield public, admin


def dispatcher_in(base: Path, admin_token: str, *extra_args: str) -> DispatcherProcess:
    """A dispatcher of a test's own: ``base`` holds tenants/, state/ and its log."""
    return DispatcherProcess(
        base / "tenants",
        base / "state",
        base / "dispatcher.log",
        extra_args=list(extra_args),
        extra_env={"SWITCHYARD_ADMIN_TOKEN": admin_token},
    )


def zygote_pid(process: DispatcherProcess) -> int:
    """The pid of the dispatcher's latest zygote, from its log."""
    return int(ZYGOTE_STARTED.findall(process.log())[-1])


@contextlib.contextmanager
def stopped(process: DispatcherProcess, pid: int) -> Iterator[None]:
    """SIGSTOP the dispatcher's zygote ``pid``; SIGCONT it after, if it lives."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if psutil.Process(pid).ppid() == process.process.pid:
                os.kill(pid, signal.SIGCONT)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of a Prometheus text answer, keyed by name and labels."""
    return {
        (found.name, frozenset(found.labels.items())): found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value by name and exact labels; None if absent."""
    return samples.get((name, frozenset(labels.items())))
