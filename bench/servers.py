"""The servers the dispatch benchmark measures, started and stopped by pid.

Every server is a child process listening on 127.0.0.1, its output going to
a log file in the run's temporary folder - a file rather than a pipe,
because a pipe nobody drains would stall a server that logs each request.
``Servers`` is a context manager: leaving it stops every server it started,
and whatever those started (the dispatcher's workers, the peer's installer),
each by pid, also when the benchmark fails half way.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psutil

BENCH_DIR = Path(__file__).resolve().parent
SWITCHYARD = Path(sys.executable).with_name("switchyard")
LISTENING = re.compile(r"dispatcher listening on http://127\.0\.0\.1:(\d+)")
STARTED = re.compile(r"Application startup complete")
ZYGOTE = re.compile(r"zygote started, pid (\d+)")
START_TIMEOUT_S = 30.0
# The peer's first start installs workerd from the npm registry.
PEER_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0

TENANT_SCRIPT = """\
async def fetch(request, env, ctx):
    return {"tenant": ctx.tenant, "ok": True}
"""


class ServerFailed(Exception):
    """A server did not start, or did not answer as a benchmark server must."""


@dataclass
class Server:
    """A server process this benchmark started, and the port it listens on."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    # What it had started when it was stopped: stopped after it if left over.
    descendants: list[psutil.Process] = field(default_factory=list)
    # A folder it made outside the run's own, removed once it is stopped.
    scratch: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def last_log_line(self) -> str:
        """The last non-empty line the server wrote, for error messages."""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1].strip()[:160] if lines else "no output"

    def processes(self) -> list[psutil.Process]:
        """The server's process and every process it started, while alive."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the server, and by what it started."""
        totals = [0.0, 0.0]
        for index, process in enumerate(self.processes()):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                totals[min(index, 1)] += times.user + times.system
        return totals[0], totals[1]


class Servers:
    """Every server of one benchmark run; leaving the block stops them all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Server] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for server in reversed(self.started):
            stop_server(server)

    def start(self, name: str, command: list[str], port: int = 0) -> Server:
        """Start ``command``, remembered at once so that it is always stopped."""
        log_path = self.folder / f"{len(self.started)}-{slug(name)}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command,
                env=server_environment(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = Server(name, process, log_path, port)
        self.started.append(server)
        return server

    def start_uvicorn(self, name: str, app: str) -> Server:
        """``app`` (``module:attribute`` in bench/) on uvicorn, as a baseline.

        Both baselines get the same settings: uvloop, httptools, no access
        log, no lifespan - the fastest uvicorn has.
        """
        port = free_port()
        command = [
            sys.executable, "-m", "uvicorn", app,
            "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1",
            "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        server = self.start(name, command, port)
        wait_for_port(server, START_TIMEOUT_S)
        check_answer(server, "c0")
        return server

    def start_switchyard(
        self,
        name: str,
        tenants_dir: Path,
        options: list[str],
        check_tenant: str = "c0",
    ) -> Server:
        """``switchyard run`` on a free port, with a state folder of its own.

        ``options`` go on its command line as they are (``--no-access-log``,
        ``--no-zygote``, ...). ``check_tenant`` answers one request before
        the server counts as started, so its worker is warm afterwards.
        """
        state_dir = self.folder / f"state-{len(self.started)}"
        command = [
            str(SWITCHYARD), "run", "--port", "0",
            "--tenants", str(tenants_dir), "--state", str(state_dir), *options,
        ]  # fmt: skip
        server = self.start(name, command)

        deadline = time.monotonic() + START_TIMEOUT_S
        listening = wait_for_log(server, LISTENING, deadline)
        server.port = int(listening.group(1))
        # Start-up completes once the prewarm tenants' workers are ready.
        wait_for_log(server, STARTED, deadline)
        check_answer(server, check_tenant)
        return server

    def start_peer(
        self, serve_sh: Path, tenants: int, mode: str = "dispatch"
    ) -> Server:
        """The peer's ``serve.sh N PORT MODE``; its first start installs workerd.

        The check request goes to the last tenant, so that in ``loader``
        mode the others are still to be loaded.
        """
        port = free_port()
        command = ["bash", str(serve_sh), str(tenants), str(port), mode]
        server = self.start(f"workerd {mode} {tenants}", command, port)
        wait_for_port(server, PEER_START_TIMEOUT_S)
        server.scratch = peer_scratch(server)
        check_answer(server, f"c{tenants - 1}")
        return server

    def stop(self, server: Server) -> None:
        """Stop one server before the others, to quieten the machine."""
        stop_server(server)


def server_environment() -> dict[str, str]:
    """Our environment, less any management API token.

    With a token, every dispatcher would open its API on the same fixed
    port, and only the first could start.
    """
    return {
        name: value
        for name, value in os.environ.items()
        if name != "SWITCHYARD_ADMIN_TOKEN"
    }


def stop_server(server: Server) -> None:
    """TERM, then KILL after a grace period, then any process it left behind."""
    if server.process.poll() is None:
        server.descendants = server.processes()[1:]
        server.process.terminate()
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()

    # psutil refuses to signal a pid that now belongs to another process,
    # so this can only reach what this server itself started.
    for process in server.descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if server.scratch is not None:
        shutil.rmtree(server.scratch, ignore_errors=True)


def peer_scratch(server: Server) -> Path | None:
    """The folder serve.sh wrote workerd's config to, read from workerd's argv.

    serve.sh makes it with mktemp under /tmp and leaves it behind. Reading it
    from the process that uses it finds this server's folder and no other.
    """
    with contextlib.suppress(psutil.NoSuchProcess):
        for word in psutil.Process(server.pid).cmdline():
            path = Path(word)
            if path.name == "config.capnp" and path.parent.name.startswith(
                "workerd-peer."
            ):
                return path.parent
    return None


def free_port() -> int:
    """A port free on 127.0.0.1 now; the server binds it a moment later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_log(
    server: Server, pattern: re.Pattern[str], deadline: float
) -> re.Match[str]:
    """Wait until the server's log holds ``pattern``; fail if it exits first."""
    while time.monotonic() < deadline:
        found = pattern.search(server.log_path.read_text(errors="replace"))
        if found:
            return found
        raise_if_exited(server)
        time.sleep(0.05)
    raise ServerFailed(f"{server.name} did not log {pattern.pattern!r} in time")


def wait_for_port(server: Server, timeout_s: float) -> None:
    """Wait until the server accepts connections; fail if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", server.port), 0.5).close()
            return
        raise_if_exited(server)
        time.sleep(0.1)
    raise ServerFailed(f"{server.name} did not listen within {timeout_s:.0f} s")


def raise_if_exited(server: Server) -> None:
    code = server.process.poll()
    if code is not None:
        raise ServerFailed(
            f"{server.name} exited with code {code}: {server.last_log_line()}"
        )


def check_answer(server: Server, tenant: str) -> None:
    """One request by hand: a server that answers wrongly is not measured."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/", headers={"x-customer-id": tenant})
        response = connection.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ServerFailed(f"{server.name} did not answer: {exc}") from None
    finally:
        connection.close()

    if status != 200 or b'"ok":true' not in body.replace(b" ", b""):
        raise ServerFailed(
            f"{server.name} answered {status} {body[:160]!r}, "
            'expected 200 and {"ok": true}'
        )


def write_tenants(folder: Path, count: int, max_requests: int = 0) -> None:
    """Tenants c0 .. c<count-1>, none prewarmed: a first request warms each.

    ``max_requests`` above 0 recycles each worker after that many requests.
    """
    config = 'script = "worker.py"\n'
    if max_requests:
        config += f"\n[limits]\nmax_requests = {max_requests}\n"
    for index in range(count):
        tenant_dir = folder / f"c{index}"
        tenant_dir.mkdir(parents=True)
        (tenant_dir / "worker.py").write_text(TENANT_SCRIPT)
        (tenant_dir / "tenant.toml").write_text(config)


def zygote_pid(server: Server) -> int | None:
    """The pid of a dispatcher's zygote, as its log names it, if started."""
    found = ZYGOTE.search(server.log_path.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
