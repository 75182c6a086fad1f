"""Declarative adapters: a trigger, a target and a field mapping, as data.

A tenant folder may hold ``adapter.json`` instead of code (``script =
"adapter.json"`` in ``tenant.toml``)::

    {"name": "Slack to Notion", "trigger": "slack_webhook",
     "target": "notion_api",
     "mapping": {"slack.message": "notion.title", "slack.user": "notion.created_by"},
     "retry_policy": {"max": 3, "backoff": "exponential"}}

The worker runs it like code: the *trigger* verifies and parses what its
sender posts (``slack_webhook``, ``teams_webhook``, ``stripe_webhook``,
``generic_json``) into named fields; the *mapping* copies fields - or any
dotted path under ``<prefix>.raw`` - to the target's fields; the *target*
(``notion_api``, ``airtable_api``, ``http``) builds its API's request, with
credentials from the tenant's secrets, and the call is a delivery retried by
the retry policy. The dispatcher checks a config with ``load_config`` before
it deploys it, so a bad path is a deploy error that names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sandbox_runner import signatures
from sandbox_runner.runtime import Env, Request, Response

Fields = dict[str, Any]


class RetrySpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max: int = 5
    backoff: str = "exponential"


class AdapterConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The contents of ``adapter.json``."""

    name: str
    trigger: str
    target: str
    mapping: dict[str, str]
    retry_policy: RetrySpec = RetrySpec()


@dataclass(frozen=True)
class Trigger:
    """How one sender's webhooks are verified and read."""

    prefix: str
    secret: str | None
    fields: tuple[str, ...]
    verify: Callable[[Request, Env], bool]
    read: Callable[[Any], Fields]

    def check(self, request: Request, env: Env) -> Response | None:
        """A 401 or 400 answer for a request that cannot be used, else None."""
        if not self.verify(request, env):
            return Response.json({"error": "signature check failed"}, status=401)
        try:
            payload = request.json()
        except ValueError:
            return Response.json({"error": "body is not JSON"}, status=400)
        if not isinstance(payload, dict):
            return Response.json({"error": "body is not a JSON object"}, status=400)
        return None

    def early_answer(self, payload: Any) -> Response | None:
        """An answer needing no delivery (Slack's endpoint check)."""
        if self.prefix == "slack" and payload.get("type") == "url_verification":
            return Response.json({"challenge": payload.get("challenge")})
        return None


def verify_slack(request: Request, env: Env) -> bool:
    return signatures.slack_valid(
        str(env.get("SLACK_SIGNING_SECRET", "")),
        request.headers.get("x-slack-request-timestamp", ""),
        request.headers.get("x-slack-signature", ""),
        request.body,
    )


def verify_teams(request: Request, env: Env) -> bool:
    return signatures.teams_valid(
        str(env.get("TEAMS_SHARED_SECRET", "")),
        request.headers.get("authorization", ""),
        request.body,
    )


def verify_stripe(request: Request, env: Env) -> bool:
    return signatures.stripe_valid(
        str(env.get("STRIPE_WEBHOOK_SECRET", "")),
        request.headers.get("stripe-signature", ""),
        request.body,
    )


def read_slack(payload: Any) -> Fields:
    event = payload.get("event") or {}
    return {
        "message": event.get("text", ""),
        "user": event.get("user", ""),
        "channel": event.get("channel", ""),
        "ts": event.get("ts", ""),
        "thread_ts": event.get("thread_ts") or event.get("ts", ""),
        "team": payload.get("team_id", ""),
        "raw": payload,
    }


def read_teams(payload: Any) -> Fields:
    text = str(payload.get("text", ""))
    while "<at>" in text and "</at>" in text:
        start, end = text.index("<at>"), text.index("</at>") + len("</at>")
        text = text[:start] + text[end:]
    return {
        "message": text.strip(),
        "user": (payload.get("from") or {}).get("name", ""),
        "channel": (payload.get("conversation") or {}).get("id", ""),
        "timestamp": payload.get("timestamp", ""),
        "raw": payload,
    }


def read_stripe(payload: Any) -> Fields:
    invoice = (payload.get("data") or {}).get("object") or {}
    return {
        "type": payload.get("type", ""),
        "invoice": invoice.get("id", ""),
        "customer": invoice.get("customer", ""),
        "amount": invoice.get("amount_paid", 0),
        "currency": str(invoice.get("currency", "")).upper(),
        "email": invoice.get("customer_email", ""),
        "raw": payload,
    }


def read_generic(payload: Any) -> Fields:
    return {**payload, "raw": payload}


TRIGGERS: Mapping[str, Trigger] = {
    "slack_webhook": Trigger(
        "slack",
        "SLACK_SIGNING_SECRET",
        ("message", "user", "channel", "ts", "thread_ts", "team", "raw"),
        verify_slack,
        read_slack,
    ),
    "teams_webhook": Trigger(
        "teams",
        "TEAMS_SHARED_SECRET",
        ("message", "user", "channel", "timestamp", "raw"),
        verify_teams,
        read_teams,
    ),
    "stripe_webhook": Trigger(
        "stripe",
        "STRIPE_WEBHOOK_SECRET",
        ("type", "invoice", "customer", "amount", "currency", "email", "raw"),
        verify_stripe,
        read_stripe,
    ),
    # Any JSON object; no signature. Its fields are its top-level keys.
    "generic_json": Trigger("json", None, (), lambda request, env: True, read_generic),
}


@dataclass(frozen=True)
class Target:
    """How one API's request is built from mapped fields."""

    prefix: str
    build: Callable[[Fields, Env], tuple[str, list[tuple[str, str]], Any]]


def notion_request(mapped: Fields, env: Env) -> tuple[str, list[tuple[str, str]], Any]:
    """A Notion "create page": ``title`` is the title, the rest rich text."""
    properties: dict[str, Any] = {}
    for name, value in mapped.items():
        text = [{"type": "text", "text": {"content": str(value)[:2000]}}]
        kind = "title" if name == "title" else "rich_text"
        properties[name] = {kind: text}
    base = str(env.get("NOTION_API_URL", "https://api.notion.com"))
    headers = [
        ("authorization", f"Bearer {env.get('NOTION_TOKEN', '')}"),
        ("notion-version", "2022-06-28"),
    ]
    parent = {"database_id": env.get("NOTION_DATABASE_ID", "")}
    return f"{base}/v1/pages", headers, {"parent": parent, "properties": properties}


def airtable_request(
    mapped: Fields, env: Env
) -> tuple[str, list[tuple[str, str]], Any]:
    """An Airtable "create records" with one record of the mapped fields."""
    base = str(env.get("AIRTABLE_API_URL", "https://api.airtable.com"))
    url = f"{base}/v0/{env.get('AIRTABLE_BASE_ID', '')}/{env.get('AIRTABLE_TABLE', '')}"
    headers = [("authorization", f"Bearer {env.get('AIRTABLE_TOKEN', '')}")]
    return url, headers, {"records": [{"fields": mapped}], "typecast": True}


def http_request(mapped: Fields, env: Env) -> tuple[str, list[tuple[str, str]], Any]:
    """The mapped fields as JSON, to the tenant's ``TARGET_URL``."""
    return str(env.get("TARGET_URL", "")), [], mapped


TARGETS: Mapping[str, Target] = {
    "notion_api": Target("notion", notion_request),
    "airtable_api": Target("airtable", airtable_request),
    "http": Target("http", http_request),
}


def load_config(path: Path) -> AdapterConfig:
    """Read and check ``adapter.json``; ValueError names what is wrong."""
    try:
        config = msgspec.json.decode(path.read_bytes(), type=AdapterConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    trigger = TRIGGERS.get(config.trigger)
    target = TARGETS.get(config.target)
    if trigger is None:
        raise ValueError(f"{path.name}: trigger {config.trigger!r} is unknown")
    if target is None:
        raise ValueError(f"{path.name}: target {config.target!r} is unknown")
    for source, destination in config.mapping.items():
        check_source(path.name, trigger, source)
        check_destination(path.name, target, destination)
    if config.retry_policy.max < 1 or config.retry_policy.backoff != "exponential":
        raise ValueError(
            f"{path.name}: retry_policy needs max >= 1, exponential backoff"
        )
    return config


def check_source(file: str, trigger: Trigger, source: str) -> None:
    parts = source.split(".")
    known = trigger.fields
    if parts[0] != trigger.prefix or len(parts) < 2:
        raise ValueError(
            f"{file}: mapping source {source!r} must start with {trigger.prefix}."
        )
    if known and parts[1] not in known:
        raise ValueError(
            f"{file}: mapping source {source!r}: {parts[1]!r} is not a field of "
            f"this trigger ({', '.join(known)})"
        )
    if len(parts) > 2 and parts[1] != "raw":
        raise ValueError(f"{file}: mapping source {source!r}: only raw has sub-paths")


def check_destination(file: str, target: Target, destination: str) -> None:
    parts = destination.split(".")
    if len(parts) != 2 or parts[0] != target.prefix or not parts[1]:
        wanted = f"{target.prefix}.<field>"
        raise ValueError(
            f"{file}: mapping destination {destination!r} must be {wanted}"
        )


def resolve(fields: Fields, source: str) -> Any:
    """The value at ``<prefix>.<field>[.<path>...]``; None when absent."""
    value: Any = fields
    for part in source.split(".")[1:]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def load_fetch(path: Path) -> Callable[..., Any]:
    """The ``fetch`` of an adapter: what the worker runs in place of code."""
    config = load_config(path)
    trigger, target = TRIGGERS[config.trigger], TARGETS[config.target]

    async def fetch(request: Request, env: Env, ctx: Any) -> Response:
        rejection = trigger.check(request, env)
        if rejection is not None:
            return rejection
        payload = request.json()
        early = trigger.early_answer(payload)
        if early is not None:
            return early
        fields = trigger.read(payload)
        mapped = {
            destination.split(".", 1)[1]: resolve(fields, source)
            for source, destination in config.mapping.items()
        }
        url, headers, body = target.build(mapped, env)
        delivery = await ctx.deliver(url, json=body, headers=headers)
        return Response.json({"delivery": delivery.id}, status=202)

    return fetch
