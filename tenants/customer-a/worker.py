"""customer-a: Slack channel messages become pages in a Notion database.

Slack signs every request with the v0 scheme; one that is unsigned, signed
with another secret or older than five minutes gets 401. Slack's endpoint
check (``url_verification``) is answered with its challenge.

Outbound calls are not wired up yet, so a message is answered with the body
of the Notion "create page" request it maps to, for the caller to inspect.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from sandbox_runner import Response
from sandbox_runner.runtime import Context, Env, Request

# Slack's advice: refuse a request whose timestamp is further than five
# minutes from now, so a captured request cannot be replayed later.
MAX_CLOCK_SKEW_S = 300

# Notion refuses a text object longer than this many characters.
NOTION_TEXT_LIMIT = 2000


async def fetch(request: Request, env: Env, ctx: Context) -> Response | dict[str, Any]:
    """Verify a Slack event and map a channel message to a Notion page."""
    problem = signature_problem(request, str(env.SLACK_SIGNING_SECRET))
    if problem is not None:
        return Response.json({"error": problem}, status=401)

    try:
        payload = request.json()
    except ValueError:
        return Response.json({"error": "body is not valid JSON"}, status=400)
    if not isinstance(payload, dict):
        return Response.json({"error": "body is not a JSON object"}, status=400)

    kind = payload.get("type")
    if kind == "url_verification":
        return {"challenge": payload.get("challenge")}
    if kind != "event_callback":
        return {"ignored": kind}

    event = payload.get("event") or {}
    # A subtype marks edits, deletions, joins and bot posts: none of them is
    # a person's new message. XXX: file shares are skipped too; keep the
    # "file_share" subtype here once pages carry attachments.
    if event.get("type") != "message" or "subtype" in event:
        return {"ignored": event.get("subtype") or event.get("type")}
    return notion_page(event, env)


def signature_problem(request: Request, secret: str) -> str | None:
    """Why ``request`` is not a fresh request signed by Slack; None if it is."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    # isascii() too: isdigit() alone accepts digits such as "²" that int()
    # refuses.
    if not (timestamp.isascii() and timestamp.isdigit()):
        return "X-Slack-Request-Timestamp must be an integer"
    if abs(time.time() - int(timestamp)) > MAX_CLOCK_SKEW_S:
        return f"X-Slack-Request-Timestamp is more than {MAX_CLOCK_SKEW_S} s from now"

    signed = b"v0:" + timestamp.encode() + b":" + request.body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    # Bytes, not str: compare_digest refuses str with non-ASCII characters,
    # and the header is whatever the sender chose to put there.
    expected = f"v0={digest}".encode()
    if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
        return "X-Slack-Signature does not match the body"
    return None


def notion_page(event: dict[str, Any], env: Env) -> dict[str, Any]:
    """The Notion "create page" body for one Slack message event."""
    channel = str(event.get("channel", ""))
    link = thread_link(str(env.SLACK_WORKSPACE_URL), channel, event)
    return {
        "parent": {"database_id": str(env.NOTION_DATABASE_ID)},
        "properties": {
            "title": {"title": rich_text(str(event.get("text", "")))},
            "created_by": {"rich_text": rich_text(str(event.get("user", "")))},
            "workspace": {"rich_text": rich_text(channel)},
            "thread_link": {"url": link},
            "region": {"rich_text": rich_text(str(env.REGION))},
        },
    }


def thread_link(workspace_url: str, channel: str, event: dict[str, Any]) -> str:
    """A link to the message's thread: the parent message when it is a reply."""
    ts = str(event.get("thread_ts") or event.get("ts", ""))
    return f"{workspace_url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"


def rich_text(content: str) -> list[dict[str, Any]]:
    """One Notion text object, cut to the length Notion accepts."""
    return [{"type": "text", "text": {"content": content[:NOTION_TEXT_LIMIT]}}]
