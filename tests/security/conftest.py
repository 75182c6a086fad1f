"""Helpers for the hostile-tenant suite: attacks with a neighbour watched.

Every attack is a real tenant (``tests/security/tenants/``) served by the
session's dispatcher. While an attack's request is in flight, a probe keeps
asking the ``echo`` tenant to echo a fresh token: each answer must be right
and prompt, or the attack hurt a neighbour even though it failed itself.
Every answer an attacker gets is searched for any secret it must not see.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import CANARY, ROOT, DispatcherProcess, error_of

NEIGHBOUR = {"x-customer-id": "echo"}
NEIGHBOUR_DEADLINE_S = 2.0
PROBE_PAUSE_S = 0.05
ATTACK_DEADLINE_S = 15.0
# The dispatcher's SIGTERM-to-SIGKILL grace, and how soon a fresh worker
# must answer once its predecessor was stopped.
KILL_GRACE_S = 1.0
NEXT_WORKER_S = 3.0
# How a path a worker may not read looks from inside: Landlock refuses it,
# or the worker's mount namespace does not show it at all.
UNREADABLE = ("PermissionError", "FileNotFoundError")
# The layers every worker must report; the tests run as root, so the uid
# drop and the private mount namespace are expected too.
CONFINEMENT_LAYERS = ("seccomp", "landlock v", "uid ", "mount namespace")
# A file in the dispatcher's state folder that no tenant may read.
PLANTED_SECRET = "planted-state-secret-value"

# Anchored at the start of the line: a tenant's own log lines start with
# "tenant:", so no tenant can print a line that passes for this one.
CONFINED = re.compile(
    r"^[\d-]+ [\d:,]+ INFO dispatcher\.worker: "
    r"worker started for tenant (?P<tenant>[a-z0-9-]+), "
    r"pid (?P<pid>\d+), .*; confined by (?P<layers>.*)$",
    re.MULTILINE,
)


def secret_values() -> list[str]:
    """Every value an attacker must never see: secrets, canary, planted file."""
    found = [CANARY[1], PLANTED_SECRET]
    for pattern in ["tenants/*/secrets.demo.toml", "tests/tenants/*/secrets.demo.toml"]:
        for path in ROOT.glob(pattern):
            found += map(str, tomllib.loads(path.read_text()).values())
    return found


SECRET_VALUES = secret_values()


def assert_nothing_leaked(text: str) -> None:
    """No secret of another tenant, nor of the host, is in ``text``."""
    for value in SECRET_VALUES:
        assert value not in text, f"an attacker saw the secret value {value!r}"


class NeighbourProbe:
    """Asks the echo tenant to echo tokens and checks every answer."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def check_once(self) -> None:
        """One echo: 200, the very token sent, within the deadline."""
        token = secrets.token_hex(8).encode()
        started = time.monotonic()
        response = await self.client.post(
            "/", headers=NEIGHBOUR, content=token, timeout=NEIGHBOUR_DEADLINE_S
        )
        elapsed = time.monotonic() - started

        assert response.status_code == 200, f"neighbour got {response.text}"
        assert response.content == token
        assert elapsed < NEIGHBOUR_DEADLINE_S, f"neighbour took {elapsed:.2f} s"

    async def check_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check_once()
            await asyncio.sleep(PROBE_PAUSE_S)


@asynccontextmanager
async def neighbour_watched(client: httpx.AsyncClient) -> AsyncIterator[None]:
    """Probe the echo tenant before, throughout and after the body."""
    probe = NeighbourProbe(client)
    await probe.check_once()
    stop = asyncio.Event()
    watching = asyncio.create_task(probe.check_until(stop))
    try:
        yield
    finally:
        stop.set()
        await watching
    await probe.check_once()


async def attack(
    client: httpx.AsyncClient,
    dispatcher: DispatcherProcess,
    tenant: str,
    path: str,
    deadline_s: float = ATTACK_DEADLINE_S,
) -> httpx.Response:
    """Send one attack with the neighbour watched; check what came back."""
    async with neighbour_watched(client):
        response = await client.get(
            path, headers={"x-customer-id": tenant}, timeout=deadline_s
        )
    assert_nothing_leaked(response.text)
    assert dispatcher.process.poll() is None, "the attack killed the dispatcher"
    assert_fully_confined(dispatcher, tenant)
    return response


def assert_fully_confined(dispatcher: DispatcherProcess, tenant: str) -> None:
    """Every worker the tenant has had reported every confinement layer."""
    reported = confinement_of(dispatcher, tenant)
    assert reported, f"no worker of {tenant} reported its confinement"
    for layers in reported:
        missing = [layer for layer in CONFINEMENT_LAYERS if layer not in layers]
        assert missing == [], f"a worker of {tenant} was confined by {layers}"


def refusal_of(response: httpx.Response) -> str:
    """What stopped the attack, once sure that nothing got through."""
    assert response.status_code == 200, response.text
    report = response.json()
    assert "succeeded" not in report, f"the attack got through: {report}"
    if "echo_secrets" in report:
        assert report["echo_secrets"].startswith(UNREADABLE), report
    return str(report["refused"])


def outcome_of(response: httpx.Response) -> str:
    """The tenant's refusal, or the error code when its worker was stopped."""
    if response.status_code == 200:
        return refusal_of(response)
    return error_of(response)["code"]


async def pid_of(client: httpx.AsyncClient, tenant: str) -> int:
    """The pid of the tenant's worker, starting one if needed."""
    response = await client.get("/pid", headers={"x-customer-id": tenant})
    assert response.status_code == 200, response.text
    return int(response.json()["pid"])


async def replaced_worker_of(client: httpx.AsyncClient, tenant: str, old: int) -> int:
    """The pid of the worker that replaced ``old``, checked to answer soon."""
    started = time.monotonic()
    new = await pid_of(client, tenant)
    assert time.monotonic() - started < NEXT_WORKER_S
    assert new != old, f"tenant {tenant} still runs on worker {old}"
    return new


def confinement_of(dispatcher: DispatcherProcess, tenant: str) -> list[str]:
    """The "confined by" layers each of the tenant's workers reported."""
    return [
        found["layers"]
        for found in CONFINED.finditer(dispatcher.log())
        if found["tenant"] == tenant
    ]


def uid_of(dispatcher: DispatcherProcess, tenant: str) -> int:
    """The uid the tenant's workers run as, from the dispatcher's log."""
    layers = confinement_of(dispatcher, tenant)[-1]
    found = re.search(r"\buid (\d+)\b", layers)
    assert found is not None, f"tenant {tenant} kept the dispatcher's uid"
    return int(found.group(1))


def announced_workers(dispatcher: DispatcherProcess) -> set[int]:
    """The pid of every worker the dispatcher has logged as started."""
    return {int(found["pid"]) for found in CONFINED.finditer(dispatcher.log())}


def strays_of_uid(dispatcher: DispatcherProcess, uid: int) -> list[psutil.Process]:
    """Live processes of ``uid`` that are not a worker some dispatcher started.

    A process that tenant code started runs as the tenant's uid: if it is
    still under this dispatcher it is not one of the workers it announced,
    and if it got away it has no dispatcher above it at all. Workers of
    another dispatcher (another test session's) are left alone.
    """
    announced = announced_workers(dispatcher)
    strays = []
    for process in psutil.process_iter(["uids", "status"]):
        uids = process.info["uids"]
        if uids is None or uid not in (uids.real, uids.effective):
            continue
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if process.pid not in announced and not under_other_dispatcher(
            process, dispatcher
        ):
            strays.append(process)
    return strays


def under_other_dispatcher(
    process: psutil.Process, dispatcher: DispatcherProcess
) -> bool:
    """True for a process started by a dispatcher other than ``dispatcher``."""
    try:
        ancestors = process.parents()
        pids = {ancestor.pid for ancestor in ancestors}
        owned = any("dispatcher" in ancestor.cmdline() for ancestor in ancestors)
    except psutil.NoSuchProcess:
        return True  # gone while we looked: it left nothing behind
    return owned and dispatcher.ps.pid not in pids


@pytest.fixture(scope="session")
def planted_secret(dispatcher: DispatcherProcess) -> Path:
    """A readable-by-all secrets file in the dispatcher's state folder."""
    folder = dispatcher.log_path.parent / "state" / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    planted = folder / "planted.toml"
    planted.write_text(f'PLANTED = "{PLANTED_SECRET}"\n')
    planted.chmod(0o644)
    return planted
