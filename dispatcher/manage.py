"""Management subcommands of ``switchyard``: deploy, list, secrets, roll back.

Each one is a thin client of the management API (``dispatcher/admin.py``)
over HTTP. They share four options: ``--api`` (the API's base URL),
``--token-file``, ``--account`` and ``--namespace``. The bearer token comes
from ``SWITCHYARD_ADMIN_TOKEN`` when it is set, else from the token file -
never from the command line, where ``ps`` would show it to every user.

Any failure - an error answer of the API, an unreachable API, a missing
token, a bad tenant folder - prints one ``switchyard: ...`` line to stderr
and exits 1. An API error keeps the API's own code: ``switchyard: <code>:
<message>``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx

from dispatcher.admin import SCRIPTS
from dispatcher.tenants import read_tenant_config

DEFAULT_API = "http://127.0.0.1:8788"
DEFAULT_TOKEN_FILE = Path("state") / "admin.token"
UPLOADED_SUFFIXES = {".py": "text/x-python", ".json": "application/json"}
# A deploy waits for a trial worker to load the script, so reads get longer
# than a connect needs.
TIMEOUT = httpx.Timeout(60.0, connect=5.0)

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command = Callable[["ApiClient", argparse.Namespace], None]


class ManageError(Exception):
    """A failure shown as ``switchyard: <message>``; the command exits 1."""


def add_manage_commands(commands: Subcommands) -> None:
    """Register deploy, tenants, secrets, versions and rollback."""
    common = common_options()
    add_deploy_command(commands, common)
    add_tenants_command(commands, common)
    add_secrets_commands(commands, common)
    add_versions_commands(commands, common)
    add_tail_command(commands, common)


def common_options() -> argparse.ArgumentParser:
    """The options every management command takes, as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--api",
        metavar="URL",
        help=f"management API base URL (default $SWITCHYARD_API or {DEFAULT_API})",
    )
    common.add_argument(
        "--token-file",
        metavar="PATH",
        type=Path,
        default=DEFAULT_TOKEN_FILE,
        help="file holding the API's bearer token (default %(default)s); "
        "SWITCHYARD_ADMIN_TOKEN, when set, wins",
    )
    common.add_argument(
        "--account", default="local", help="account (default %(default)s)"
    )
    common.add_argument(
        "--namespace",
        default="default",
        help="dispatch namespace (default %(default)s)",
    )
    return common


def add_deploy_command(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    deploy = commands.add_parser(
        "deploy",
        parents=[common],
        help="upload a tenant folder as a new version of a script",
        description="Upload tenant.toml's settings and the folder's top-level "
        ".py and .json files. Secret values are never uploaded: set them with "
        "'switchyard secrets put'. tenant.toml's prewarm has no API "
        "counterpart and is not sent.",
    )
    deploy.add_argument(
        "path", type=Path, help="a tenant folder (tenant.toml + script)"
    )
    deploy.add_argument("--name", help="script name (default: the folder's name)")
    deploy.add_argument(
        "--tag",
        action="append",
        default=[],
        help="tag the script (repeat for several)",
    )
    deploy.set_defaults(handler=managed(deploy_command))


def add_tenants_command(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    tenants = commands.add_parser(
        "tenants", parents=[common], help="list the deployed scripts"
    )
    tenants.add_argument("--tag", help="only scripts with this tag")
    tenants.set_defaults(handler=managed(tenants_command))


def add_secrets_commands(
    commands: Subcommands, common: argparse.ArgumentParser
) -> None:
    secrets = commands.add_parser(
        "secrets", help="set, list or delete a script's secrets"
    )
    actions = secrets.add_subparsers(required=True, metavar="ACTION")

    put = actions.add_parser(
        "put",
        parents=[common],
        help="set a secret; its value is read from stdin",
        description="The value is read from stdin (a prompt that does not "
        "echo, on a terminal), never from the command line: arguments are "
        "visible to every user through ps. One trailing newline is dropped.",
    )
    put.add_argument("script", help="script name")
    put.add_argument("name", help="secret name, an identifier")
    put.set_defaults(handler=managed(put_secret_command))

    listing = actions.add_parser(
        "list", parents=[common], help="list a script's secret names (no values)"
    )
    listing.add_argument("script", help="script name")
    listing.set_defaults(handler=managed(list_secrets_command))

    delete = actions.add_parser("delete", parents=[common], help="delete a secret")
    delete.add_argument("script", help="script name")
    delete.add_argument("name", help="secret name")
    delete.set_defaults(handler=managed(delete_secret_command))


def add_versions_commands(
    commands: Subcommands, common: argparse.ArgumentParser
) -> None:
    versions = commands.add_parser(
        "versions",
        parents=[common],
        help="list a script's versions, newest first; * marks the active one",
    )
    versions.add_argument("script", help="script name")
    versions.set_defaults(handler=managed(versions_command))

    rollback = commands.add_parser(
        "rollback", parents=[common], help="serve an earlier version of a script"
    )
    rollback.add_argument("script", help="script name")
    rollback.add_argument("version_id", help="a version id from 'switchyard versions'")
    rollback.set_defaults(handler=managed(rollback_command))


def add_tail_command(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="follow a script's log live: what it prints, requests, errors",
    )
    tail.add_argument("script", help="script name")
    tail.add_argument(
        "--recent",
        type=int,
        default=20,
        metavar="N",
        help="first show the last N lines already logged (default %(default)s)",
    )
    tail.add_argument(
        "--json", action="store_true", help="print each event as one JSON line"
    )
    tail.set_defaults(handler=managed(tail_command))


def managed(command: Command) -> Callable[[argparse.Namespace], int]:
    """A handler that runs ``command`` with a client and maps failures to 1."""

    def handler(args: argparse.Namespace) -> int:
        try:
            with ApiClient(args) as api:
                command(api, args)
        except ManageError as exc:
            print(f"switchyard: {exc}", file=sys.stderr)
            return 1
        return 0

    return handler


class ApiClient:
    """The management API of one dispatcher, for one account and namespace."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.url = api_url(args.api)
        token = read_token(args.token_file)
        self.scripts_path = SCRIPTS.format(
            account=path_segment(args.account),
            namespace=path_segment(args.namespace),
        )
        self.http = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.http.close()

    def call(self, method: str, *segments: str, **kwargs: Any) -> dict[str, Any]:
        """Send one request below ``.../scripts``; the JSON answer, or raise."""
        with self.reaching_api():
            response = self.http.request(method, self.path_of(segments), **kwargs)
        if response.is_error:
            raise ManageError(error_message(response))
        answer: dict[str, Any] = response.json()
        return answer

    def follow(self, *segments: str, **params: Any) -> Iterator[tuple[str, Any]]:
        """Server-Sent Events from a path below ``.../scripts``, until closed."""
        path = self.path_of(segments)
        with self.reaching_api():
            # No read timeout: a quiet tenant's tail is quiet for long.
            timeout = httpx.Timeout(None, connect=5.0)
            with self.http.stream(
                "GET", path, params=params, timeout=timeout
            ) as answer:
                if answer.is_error:
                    answer.read()
                    raise ManageError(error_message(answer))
                yield from server_sent_events(sse_lines(answer.iter_bytes()))

    def path_of(self, segments: tuple[str, ...]) -> str:
        return self.scripts_path + "".join("/" + path_segment(s) for s in segments)

    @contextlib.contextmanager
    def reaching_api(self) -> Iterator[None]:
        """Turn transport failures into one line that says what to check."""
        try:
            yield
        except httpx.ConnectError as exc:
            raise ManageError(
                f"cannot reach the management API at {self.url} ({exc}); "
                "is 'switchyard run' serving it, with an admin token set?"
            ) from None
        except httpx.HTTPError as exc:
            raise ManageError(f"request to {self.url} failed: {exc!r}") from None


def sse_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Lines of an event stream, cut at LF only.

    Text helpers also cut at U+2028, U+0085 and other Unicode line ends,
    which a tenant's output may hold inside one JSON string.
    """
    held = b""
    for chunk in chunks:
        *lines, held = (held + chunk).split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
    if held:
        yield held.decode("utf-8", "replace")


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event name, decoded JSON data) for each event; comments skipped."""
    kind, data = "message", ""
    for line in lines:
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


def path_segment(name: str) -> str:
    """``name`` as one quoted URL path segment; dot segments are refused.

    The URL is normalized before it is sent, so ``..`` would climb a level:
    ``secrets delete SCRIPT ..`` would become a DELETE of the script itself.
    """
    if name in ("", ".", ".."):
        raise ManageError(f"{name!r} is not a valid name")
    return quote(name, safe="")


def api_url(given: str | None) -> str:
    """The API's base URL: --api, else $SWITCHYARD_API, else the default."""
    url = given or os.environ.get("SWITCHYARD_API") or DEFAULT_API
    if not url.startswith(("http://", "https://")):
        raise ManageError(
            f"the API URL must start with http:// or https://, not {url!r}"
        )
    return url.rstrip("/")


def read_token(token_file: Path) -> str:
    """The bearer token: $SWITCHYARD_ADMIN_TOKEN first, then the file."""
    token = os.environ.get("SWITCHYARD_ADMIN_TOKEN", "").strip()
    if token:
        return token
    try:
        token = token_file.read_text().strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ManageError(f"cannot read the token file {token_file}: {exc}") from None
    if not token:
        raise ManageError(
            f"no admin token: {token_file} is missing or empty; set "
            "SWITCHYARD_ADMIN_TOKEN or pass --token-file PATH "
            "(the token the dispatcher was started with)"
        )
    return token


def error_message(response: httpx.Response) -> str:
    """``code: message`` from the API's JSON error, or from the HTTP status.

    Answers not made by the API's error handler (a route that does not
    exist, say) carry no code, so the status stands in for one.
    """
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        reason = response.reason_phrase.lower() or "error"
        return f"http_{response.status_code}: {reason}"


def deploy_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Upload a tenant folder; print the new version and a hint on secrets."""
    name = args.name or args.path.resolve().name
    metadata, files = read_tenant_folder(args.path, args.tag)
    parts: list[tuple[str, tuple[str | None, bytes | str, str]]] = [
        ("metadata", (None, json.dumps(metadata), "application/json"))
    ]
    for filename, data in files.items():
        content_type = UPLOADED_SUFFIXES[Path(filename).suffix]
        parts.append((filename, (filename, data, content_type)))

    version = api.call("PUT", name, files=parts)
    print(f"deployed {name} as version {version['number']}")
    print(f"id: {version['id']}")
    print(f"sha256: {version['sha256']}")
    print(f"startup_time_ms: {version['startup_time_ms']}")

    for secret in metadata["secrets"]:
        print(
            f"note: deploy never uploads secret values; set {secret} with: "
            f"switchyard secrets put {name} {secret} < FILE",
            file=sys.stderr,
        )


def read_tenant_folder(
    folder: Path, tags: list[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The ``metadata`` part and the files to upload for one tenant folder.

    Only the limits and egress settings tenant.toml sets are sent, so that
    the dispatcher's defaults keep applying to the rest.
    """
    toml_path = folder / "tenant.toml"
    if not toml_path.is_file():
        raise ManageError(f"{folder} is not a tenant folder: it has no tenant.toml")
    try:
        config = read_tenant_config(folder)
        table = tomllib.loads(toml_path.read_text())
    except ValueError as exc:
        raise ManageError(f"{toml_path}: {exc}") from None

    files = module_files(folder)
    if config.script not in files:
        raise ManageError(
            f"script {config.script!r} must be a .py file at the top of {folder}"
        )
    metadata = {
        "main_module": config.script,
        "vars": config.vars,
        "secrets": config.secrets,
        "limits": table.get("limits", {}),
        "tags": tags,
        "egress": table.get("egress", {}),
    }
    return metadata, files


def module_files(folder: Path) -> dict[str, bytes]:
    """The folder's top-level .py and .json files, by name.

    Nothing else is sent: not tenant.toml (its settings go as metadata),
    and above all not secrets.demo.toml. A link that leads out of the
    folder is skipped, as the dispatcher's own loader refuses one.
    """
    root = folder.resolve()
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix not in UPLOADED_SUFFIXES or not path.is_file():
            continue
        if path.resolve().is_relative_to(root):
            files[path.name] = path.read_bytes()
    return files


def tenants_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Print the scripts, each with its active version, as a table."""
    params = {"tag": args.tag} if args.tag else None
    scripts = api.call("GET", params=params)["scripts"]
    if not scripts:
        print("no scripts deployed", file=sys.stderr)
        return
    rows = [
        [s["script"], str(s["number"]), s["id"], ",".join(s["tags"])] for s in scripts
    ]
    print_table(["SCRIPT", "VERSION", "VERSION ID", "TAGS"], rows)


def put_secret_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Set a secret from stdin; its value is never printed."""
    value = read_secret_value(args.name)
    api.call("PUT", args.script, "secrets", args.name, json={"text": value})
    print(f"secret {args.name} set on {args.script}")


def read_secret_value(name: str) -> str:
    """The value on stdin, less one trailing newline; a prompt on a terminal."""
    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
    else:
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        raise ManageError(f"no value for {name} on stdin")
    return value


def list_secrets_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Print the names of a script's secrets, one a line."""
    secrets = api.call("GET", args.script, "secrets")["secrets"]
    for secret in secrets:
        print(secret["name"])
    if not secrets:
        print(f"{args.script} has no secrets", file=sys.stderr)


def delete_secret_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Delete one secret of a script."""
    api.call("DELETE", args.script, "secrets", args.name)
    print(f"secret {args.name} deleted from {args.script}")


def versions_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Print a script's versions, newest first, the active one starred."""
    versions = api.call("GET", args.script, "versions")["versions"]
    rows = [
        [
            "*" if v["active"] else "",
            str(v["number"]),
            v["id"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v["created_at"])),
            v["sha256"][:12],
        ]
        for v in versions
    ]
    print_table(["ACTIVE", "VERSION", "VERSION ID", "CREATED (UTC)", "SHA256"], rows)


def rollback_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Make an earlier version the active one again."""
    version = api.call("POST", args.script, "versions", args.version_id, "rollback")
    print(f"{args.script} serves version {version['number']} again")
    print(f"id: {version['id']}")
    print(f"startup_time_ms: {version['startup_time_ms']}")


def tail_command(api: ApiClient, args: argparse.Namespace) -> None:
    """Print the script's events as they happen, until interrupted."""
    try:
        for kind, event in api.follow(args.script, "tail", recent=max(args.recent, 0)):
            if args.json:
                print(json.dumps(event), flush=True)
            elif kind != "slow":  # its stack arrives as log lines as well
                print(describe_event(event), flush=True)
    except KeyboardInterrupt:
        pass


def describe_event(event: dict[str, Any]) -> str:
    """One event as a human reads it in a terminal."""
    kind = event.get("type")
    at = time.strftime("%H:%M:%S", time.localtime(event.get("at", time.time())))
    if kind == "log":
        return f"{at} [pid {event['pid']}] {event['text']}"
    if kind == "request":
        code = f" {event['code']}" if event.get("code") else ""
        return (
            f"{at} {event['method']} {event['path']} -> {event['status']}{code} "
            f"{event['duration_ms']} ms ({event['start']}, pid {event['pid']})"
        )
    if kind == "end":
        return f"{at} tail ended: {event['reason']}"
    if kind == "dropped":
        return f"{at} ... {event['dropped']} events dropped: this tail read too slowly"
    return f"{at} {json.dumps(event)}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns, two spaces apart, the header first."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
