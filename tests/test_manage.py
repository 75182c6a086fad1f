"""The management commands of the ``switchyard`` CLI, run against a dispatcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher.cli import build_parser, run_command
from tests.conftest import ROOT, DispatcherProcess

TOKEN = "manage-test-token-0123456789abcdef"
SECRET_VALUE = "sk-live-cli-secret-never-printed"
DEMO_VALUE = "demo-value-that-stays-on-disk"

WORKER = """
import json
from pathlib import Path

from helper import VERSION

async def fetch(request, env, ctx):
    data = json.loads(Path("data.json").read_text())
    token = env.get("API_TOKEN", "")
    return {"version": VERSION, "data": data, "token": token == SECRET}
"""


@pytest.fixture(scope="module")
def api_dispatcher(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DispatcherProcess]:
    base = tmp_path_factory.mktemp("manage")
    (base / "tenants").mkdir()
    process = DispatcherProcess(
        base / "tenants",
        base / "state",
        base / "dispatcher.log",
        extra_env={"SWITCHYARD_ADMIN_TOKEN": TOKEN},
    )
    yield process
    process.stop()


def make_tenant(parent: Path, name: str, version: int, secrets: bool = False) -> Path:
    """A tenant folder: tenant.toml, a script, a helper module and data."""
    folder = parent / name
    folder.mkdir(exist_ok=True)
    toml = 'script = "worker.py"\n[vars]\nREGION = "eu"\n[limits]\ntimeout_ms = 4000\n'
    if secrets:
        toml = 'secrets = ["API_TOKEN"]\n' + toml
        (folder / "secrets.demo.toml").write_text(f'API_TOKEN = "{DEMO_VALUE}"\n')
    (folder / "tenant.toml").write_text(toml)
    (folder / "worker.py").write_text(WORKER.replace("SECRET", repr(SECRET_VALUE)))
    (folder / "helper.py").write_text(f"VERSION = {version}\n")
    (folder / "data.json").write_text('{"kind": "fixture"}')
    return folder


def switchyard(
    api_url: str | None,
    *args: str,
    stdin: str = "",
    token: str | None = TOKEN,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    if token is not None:
        env["SWITCHYARD_ADMIN_TOKEN"] = token
    api = ["--api", api_url] if api_url else []
    command = [sys.executable, "-m", "dispatcher", *args, *api]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, env=env, cwd=cwd
    )


def deploy(
    dispatcher: DispatcherProcess, folder: Path, *options: str
) -> dict[str, str]:
    """``switchyard deploy``, checked; its ``key: value`` lines as a dict."""
    done = switchyard(dispatcher.admin_url, "deploy", str(folder), *options)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines)


def served(dispatcher: DispatcherProcess, script: str) -> httpx.Response:
    return httpx.get(dispatcher.url, headers={"x-customer-id": script}, timeout=30)


def test_deploy_uploads_the_folder_and_it_serves(
    api_dispatcher: DispatcherProcess, tmp_path: Path
) -> None:
    """A deployed folder answers on the public port with all its modules."""
    folder = make_tenant(tmp_path, "greeter", 1)

    done = switchyard(api_dispatcher.admin_url, "deploy", str(folder))

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deployed greeter as version 1\n")
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines()[1:])
    assert set(fields) == {"id", "sha256", "startup_time_ms"}
    assert len(fields["sha256"]) == 64
    assert float(fields["startup_time_ms"]) > 0
    answer = served(api_dispatcher, "greeter")
    assert answer.json() == {"version": 1, "data": {"kind": "fixture"}, "token": False}


def test_secret_put_reads_stdin_and_its_value_is_never_printed(
    api_dispatcher: DispatcherProcess, tmp_path: Path
) -> None:
    """Secrets go in through stdin only; list and every output show names."""
    folder = make_tenant(tmp_path, "vault", 1, secrets=True)
    deployed = switchyard(api_dispatcher.admin_url, "deploy", str(folder))
    assert "switchyard secrets put vault API_TOKEN" in deployed.stderr
    waiting = served(api_dispatcher, "vault")
    assert waiting.json()["error"]["code"] == "worker_boot_failed"

    put = switchyard(
        api_dispatcher.admin_url,
        *("secrets", "put", "vault", "API_TOKEN"),
        stdin=SECRET_VALUE + "\n",
    )
    listed = switchyard(api_dispatcher.admin_url, "secrets", "list", "vault")
    answer = served(api_dispatcher, "vault")
    deleted = switchyard(
        api_dispatcher.admin_url, "secrets", "delete", "vault", "API_TOKEN"
    )
    after = switchyard(api_dispatcher.admin_url, "secrets", "list", "vault")

    assert (put.returncode, listed.returncode, deleted.returncode) == (0, 0, 0)
    assert listed.stdout == "API_TOKEN\n"
    assert answer.json()["token"] is True
    assert after.stdout == ""
    for done in [deployed, put, listed, deleted, after]:
        assert SECRET_VALUE not in done.stdout + done.stderr
        assert DEMO_VALUE not in done.stdout + done.stderr
    assert DEMO_VALUE not in api_dispatcher.log()


def test_versions_lists_newest_first_and_rollback_serves_the_old_one(
    api_dispatcher: DispatcherProcess, tmp_path: Path
) -> None:
    """Two deploys make two versions; rollback brings the first one back."""
    first = deploy(api_dispatcher, make_tenant(tmp_path, "swapper", 1))
    deploy(api_dispatcher, make_tenant(tmp_path, "swapper", 2))
    before = switchyard(api_dispatcher.admin_url, "versions", "swapper")
    assert served(api_dispatcher, "swapper").json()["version"] == 2

    rolled = switchyard(api_dispatcher.admin_url, "rollback", "swapper", first["id"])
    after = switchyard(api_dispatcher.admin_url, "versions", "swapper")

    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.startswith("swapper serves version 1 again\n")
    assert served(api_dispatcher, "swapper").json()["version"] == 1
    rows = [line.split() for line in before.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["*", "2"], ["1", first["id"]]]
    rows = [line.split() for line in after.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["2", "*"]
    assert rows[1][:3] == ["*", "1", first["id"]]


def test_tenants_lists_every_script_and_filters_by_tag(
    api_dispatcher: DispatcherProcess, tmp_path: Path
) -> None:
    """Both deployed scripts are listed; --tag keeps the tagged one."""
    deploy(api_dispatcher, make_tenant(tmp_path, "tagged", 1), "--tag", "beta")
    deploy(api_dispatcher, make_tenant(tmp_path, "plain", 1), "--name", "untagged")

    every = switchyard(api_dispatcher.admin_url, "tenants")
    beta = switchyard(api_dispatcher.admin_url, "tenants", "--tag", "beta")

    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines()[0].split() == [
        *("SCRIPT", "VERSION", "VERSION", "ID", "TAGS")
    ]
    scripts = {line.split()[0]: line.split() for line in every.stdout.splitlines()}
    assert scripts["tagged"][-1] == "beta"
    assert scripts["untagged"][1] == "1"
    assert [line.split()[0] for line in beta.stdout.splitlines()[1:]] == ["tagged"]


def test_api_error_prints_its_code_and_message(
    api_dispatcher: DispatcherProcess,
) -> None:
    """An error answer becomes one 'switchyard: code: message' line, exit 1."""
    done = switchyard(api_dispatcher.admin_url, "versions", "no-such-script")

    assert done.returncode == 1
    assert done.stderr == "switchyard: script_not_found: no script 'no-such-script'\n"


@pytest.mark.parametrize("name", ["..", "."])
def test_dot_names_are_refused_before_any_request(
    api_dispatcher: DispatcherProcess, tmp_path: Path, name: str
) -> None:
    """A secret named '..' must not turn into a DELETE of the whole script."""
    deploy(api_dispatcher, make_tenant(tmp_path, "dotted", 1))

    done = switchyard(api_dispatcher.admin_url, "secrets", "delete", "dotted", name)

    assert done.returncode == 1
    assert done.stderr == f"switchyard: {name!r} is not a valid name\n"
    assert served(api_dispatcher, "dotted").json()["version"] == 1


def test_wrong_token_is_refused_as_forbidden(
    api_dispatcher: DispatcherProcess,
) -> None:
    """A wrong token exits 1 with the API's forbidden message."""
    done = switchyard(api_dispatcher.admin_url, "tenants", token="x" * 32)

    assert done.returncode == 1
    assert done.stderr == "switchyard: forbidden: the bearer token is not valid\n"


def test_unreachable_api_names_the_url() -> None:
    """Nothing listening on the API's port: exit 1, saying where it looked."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()

    done = switchyard(url, "tenants")

    assert done.returncode == 1
    assert done.stderr.startswith(
        f"switchyard: cannot reach the management API at {url} "
    )
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 20


def test_missing_token_says_how_to_set_one(tmp_path: Path) -> None:
    """Without the variable or the token file, the error says how to set one."""
    done = switchyard(None, "tenants", token=None, cwd=tmp_path)

    assert done.returncode == 1
    assert "no admin token: state/admin.token is missing" in done.stderr
    assert "SWITCHYARD_ADMIN_TOKEN" in done.stderr


def test_dev_is_run_with_debug_logs() -> None:
    """``dev`` takes run's options and defaults to debug logs."""
    dev = build_parser().parse_args(["dev", "--port", "0"])
    quiet = build_parser().parse_args(["dev", "--log-level", "info"])
    run = build_parser().parse_args(["run"])

    assert dev.handler is run_command
    assert (dev.log_level, dev.port, dev.no_watch) == ("debug", 0, False)
    assert quiet.log_level == "info"
    assert run.log_level == "info"
