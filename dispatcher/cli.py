"""The ``switchyard`` command: ``run`` the dispatcher, ``sign`` a sample.

``switchyard run`` serves the tenants of a folder on one public listener;
``switchyard dev`` is the same with debug logs.
``switchyard sign TENANT FILE`` prints a ``curl`` command that sends FILE to
TENANT signed the way its webhook sender would sign it, using the tenant's
own secret - a quick way to try an example tenant by hand. ``deploy``,
``tenants``, ``secrets``, ``versions`` and ``rollback`` manage a running
dispatcher through its management API.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shlex
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn

from dispatcher.app import Dispatcher
from dispatcher.doctor import run_doctor
from dispatcher.eject import eject
from dispatcher.http_protocol import SwitchyardHttpProtocol
from dispatcher.log_format import configure_logging
from dispatcher.manage import add_manage_commands
from dispatcher.registry import RegistryError, load_secret_key
from dispatcher.registry_sqlite import SqliteRegistry
from dispatcher.sandbox import SandboxUnavailable, build_sandbox_policy
from dispatcher.settings import Settings
from dispatcher.tenants import load_tenant
from dispatcher.webhook_signing import SIGNERS, sender_for_secrets

log = logging.getLogger("dispatcher.cli")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand."""
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchyard", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve the tenants of a folder")
    add_run_arguments(run)
    run.set_defaults(handler=run_command)

    dev = commands.add_parser(
        "dev", help="the same as run, with debug logs (takes run's options)"
    )
    add_run_arguments(dev)
    # A parser's own default overrides the argument's: --log-level still wins.
    dev.set_defaults(handler=run_command, log_level="debug")

    doctor = commands.add_parser(
        "doctor", help="show which confinement layers workers get here"
    )
    doctor.add_argument("--state", type=Path, default=Path("state"))
    doctor.set_defaults(handler=doctor_command)

    ejecting = commands.add_parser(
        "eject", help="write a declarative adapter out as Python to edit"
    )
    ejecting.add_argument("folder", type=Path, help="the tenant's folder")
    ejecting.set_defaults(handler=eject_command)

    sign = commands.add_parser("sign", help="print a signed curl for a sample")
    sign.add_argument("tenant")
    sign.add_argument("file", type=Path)
    sign.add_argument("--tenants", type=Path, default=Path("tenants"))
    sign.add_argument("--state", type=Path, default=Path("state"))
    sign.add_argument("--url", default="http://127.0.0.1:8787/webhook")
    sign.set_defaults(handler=sign_command)

    add_manage_commands(commands)
    return parser


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The options of ``run``, shared with ``dev``."""
    run.add_argument("--tenants", type=Path, default=Path("tenants"))
    run.add_argument("--state", type=Path, default=Path("state"))
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    run.add_argument("--log-level", default="info")
    run.add_argument(
        "--log-format",
        choices=["plain", "json"],
        default="plain",
        help="plain lines, or one JSON object per line for a log pipeline",
    )
    run.add_argument(
        "--admin-port",
        type=int,
        default=8788,
        help="port of the management API (0 picks a free one)",
    )
    run.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the management API's bearer token "
        "(or set SWITCHYARD_ADMIN_TOKEN)",
    )
    run.add_argument("--no-access-log", action="store_true")
    run.add_argument(
        "--max-warm-workers",
        type=int,
        default=Settings.max_warm_workers,
        help="warm workers on this host, all tenants (default %(default)s)",
    )
    run.add_argument(
        "--max-workers-memory-mb",
        type=int,
        default=Settings.max_workers_memory_mb,
        help="private memory of all workers together (default: half of RAM)",
    )
    run.add_argument(
        "--heartbeat",
        type=float,
        default=Settings.heartbeat_s,
        help="seconds of quiet before a worker is pinged (default %(default)s)",
    )
    run.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload tenants when their folders change",
    )
    run.add_argument(
        "--allow-private-egress",
        action="append",
        default=[],
        metavar="CIDR",
        help="a private network tenants may call (repeatable; default none)",
    )
    run.add_argument(
        "--egress-region",
        action="append",
        default=[],
        metavar="HOST=REGION",
        help="the region a host serves from, for tenants' region rules (repeatable)",
    )
    run.add_argument(
        "--delivery-time-scale",
        type=float,
        default=1.0,
        help=argparse.SUPPRESS,  # tests compress backoff schedules with it
    )
    run.add_argument(
        "--no-zygote",
        action="store_true",
        help="start each worker as a fresh interpreter instead of a fork",
    )
    run.add_argument(
        "--body-timeout",
        type=float,
        default=Settings.body_timeout_s,
        help="seconds a request body may take to arrive (default %(default)s)",
    )


def run_command(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; workers are stopped on the way out."""
    configure_logging(args.log_level, args.log_format)
    settings = Settings(
        tenants_dir=args.tenants,
        state_dir=args.state,
        host=args.host,
        port=args.port,
        access_log=not args.no_access_log,
        body_timeout_s=args.body_timeout,
        zygote=not args.no_zygote,
        max_warm_workers=args.max_warm_workers,
        max_workers_memory_mb=args.max_workers_memory_mb,
        heartbeat_s=args.heartbeat,
        watch=not args.no_watch,
        private_egress=tuple(args.allow_private_egress),
        egress_regions=tuple(parse_region(item) for item in args.egress_region),
        delivery_time_scale=args.delivery_time_scale,
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        sandbox = build_sandbox_policy(settings.state_dir)
    except SandboxUnavailable as exc:
        log.error("%s", exc)
        return 1

    listener = socket.create_server((settings.host, settings.port))
    host, port = listener.getsockname()[:2]
    log.info("dispatcher listening on http://%s:%d", host, port)

    raise_open_files_limit()
    try:
        registry = SqliteRegistry(
            settings.state_dir / "registry.sqlite3",
            load_secret_key(settings.state_dir),
        )
    except RegistryError as exc:
        log.error("cannot open the registry: %s", exc)
        return 1
    dispatcher = Dispatcher(settings, sandbox, registry)
    sockets = [listener]
    admin = open_admin_listener(args, dispatcher)
    if admin is not None:
        sockets.append(admin)
    config = uvicorn.Config(
        dispatcher,
        http=SwitchyardHttpProtocol,
        log_config=None,
        access_log=False,
        # Tenants may name their own server; two Server headers help nobody.
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    DispatcherServer(config, dispatcher).run(sockets=sockets)
    registry.close()
    return 0


class DispatcherServer(uvicorn.Server):
    """uvicorn's server, telling the dispatcher the moment shutdown begins.

    uvicorn waits for open connections to finish before the application's
    shutdown runs, and a live tail never finishes by itself: told first,
    the dispatcher ends every tail, so a stop takes no longer for them.
    """

    def __init__(self, config: uvicorn.Config, dispatcher: Dispatcher) -> None:
        super().__init__(config)
        self.dispatcher = dispatcher

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.dispatcher.begin_shutdown()


def open_admin_listener(
    args: argparse.Namespace, dispatcher: Dispatcher
) -> socket.socket | None:
    """The management API's own listener, or None when no token is set.

    An API without a token would be open to anyone who reaches the port,
    so without one it does not start at all.
    """
    token = admin_token(args.admin_token_file)
    if token is None:
        log.warning(
            "management API disabled: set SWITCHYARD_ADMIN_TOKEN or "
            "--admin-token-file to enable it"
        )
        return None
    listener = socket.create_server((args.host, args.admin_port))
    host, port = listener.getsockname()[:2]
    dispatcher.enable_admin(token, port)
    log.info("management API listening on http://%s:%d", host, port)
    return listener


def admin_token(token_file: Path | None) -> str | None:
    """The bearer token, from the environment or a file; None if neither."""
    token = os.environ.get("SWITCHYARD_ADMIN_TOKEN", "").strip()
    if not token and token_file is not None and token_file.is_file():
        token = token_file.read_text().strip()
    if token and len(token) < 16:
        raise SystemExit("switchyard: the admin token must be 16 characters or more")
    return token or None


def parse_region(item: str) -> tuple[str, str]:
    host, _, region = item.partition("=")
    if not host or not region:
        raise SystemExit(f"switchyard: --egress-region wants HOST=REGION, not {item!r}")
    return host, region


def raise_open_files_limit() -> None:
    """Lift the soft open-files limit to the hard one.

    Every connection and every worker (three pipes each) holds descriptors;
    the common soft default of 1024 runs out long before memory does.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open-files limit raised from %d to %d", soft, hard)


def doctor_command(args: argparse.Namespace) -> int:
    """Boot a trial worker and report its confinement; 1 without seccomp."""
    configure_logging("warning")
    return run_doctor(args.state)


def eject_command(args: argparse.Namespace) -> int:
    """Replace a folder's adapter.json by the equivalent worker.py."""
    try:
        script = eject(args.folder)
    except (OSError, ValueError) as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {script}; tenant.toml now runs it")
    return 0


def sign_command(args: argparse.Namespace) -> int:
    """Print a curl command that delivers FILE to TENANT, signed."""
    configure_logging("error")
    tenant = load_tenant(args.tenants / args.tenant, args.state)
    if tenant is None:
        print(
            f"switchyard: no tenant {args.tenant!r} in {args.tenants}", file=sys.stderr
        )
        return 2
    sender = sender_for_secrets(tenant.config.secrets)
    if sender is None:
        print(f"switchyard: tenant {tenant.id} uses no known signer", file=sys.stderr)
        return 2

    body = args.file.read_bytes()
    secrets = {
        name: str(tenant.bindings.get(name, "")) for name in tenant.config.secrets
    }
    headers = [("x-customer-id", tenant.id), ("content-type", "application/json")]
    headers += SIGNERS[sender](secrets, body)

    words = ["curl", "-sS", args.url]
    for name, value in headers:
        words += ["-H", f"{name}: {value}"]
    words += ["--data-binary", f"@{args.file}"]
    print(shlex.join(words))
    return 0
