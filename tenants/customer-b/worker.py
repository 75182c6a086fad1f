"""customer-b: Teams messages to an outgoing webhook become Airtable records.

Teams signs every request with ``Authorization: HMAC <base64>``, keyed with
the base64-decoded shared secret; a request without a matching signature gets
401. Teams sends no timestamp in the signature, so replays cannot be refused
here.

Outbound calls are not wired up yet, so a message is answered with the base,
table and body of the Airtable "create records" request it maps to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from sandbox_runner import Response
from sandbox_runner.runtime import Context, Env, Request

# An @-mention of the bot (or anyone) with the whitespace around it; Teams
# puts the bot's own mention in front of every message it forwards.
MENTION = re.compile(r"\s*<at>.*?</at>\s*", re.DOTALL)


async def fetch(request: Request, env: Env, ctx: Context) -> Response | dict[str, Any]:
    """Verify a Teams message and map it to an Airtable record."""
    problem = signature_problem(request, str(env.TEAMS_SHARED_SECRET))
    if problem is not None:
        return Response.json({"error": problem}, status=401)

    try:
        message = request.json()
    except ValueError:
        return Response.json({"error": "body is not valid JSON"}, status=400)
    if not isinstance(message, dict):
        return Response.json({"error": "body is not a JSON object"}, status=400)

    return {
        "base_id": str(env.AIRTABLE_BASE_ID),
        "table": str(env.AIRTABLE_TABLE),
        "body": {
            "records": [{"fields": record_fields(message, env)}],
            "typecast": True,
        },
    }


def signature_problem(request: Request, secret_b64: str) -> str | None:
    """Why ``request`` is not signed with the shared secret; None if it is."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, received = authorization.partition(" ")
    # Authentication schemes are case-insensitive (RFC 9110).
    if scheme.lower() != "hmac" or not received.strip():
        return "Authorization must be 'HMAC <base64 signature>'"

    key = base64.b64decode(secret_b64, validate=True)
    digest = hmac.new(key, request.body, hashlib.sha256).digest()
    # Bytes, not str: compare_digest refuses str with non-ASCII characters.
    expected = base64.b64encode(digest)
    if not hmac.compare_digest(expected, received.strip().encode("utf-8", "replace")):
        return "Authorization signature does not match the body"
    return None


def record_fields(message: dict[str, Any], env: Env) -> dict[str, Any]:
    """The Airtable fields for one Teams message."""
    sender = message.get("from") or {}
    return {
        "Title": without_mentions(str(message.get("text", ""))),
        "Reporter": sender.get("name"),
        "Channel": channel_id(message),
        "Received": message.get("timestamp"),
        "Region": str(env.REGION),
    }


def without_mentions(text: str) -> str:
    """``text`` with every ``<at>...</at>`` mention and its whitespace gone."""
    return MENTION.sub(" ", text).strip()


def channel_id(message: dict[str, Any]) -> str | None:
    """The Teams channel the message was posted in.

    ``channelData`` names the channel itself; the conversation id is the
    fallback, and it also names the thread (``;messageid=...``).
    """
    channel = (message.get("channelData") or {}).get("channel") or {}
    conversation = message.get("conversation") or {}
    return channel.get("id") or conversation.get("id")
