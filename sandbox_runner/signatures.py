"""How Slack, Teams and Stripe sign webhook bodies - both sides of it.

The declarative adapters verify incoming webhooks with these; the demo and
test helpers in ``dispatcher/webhook_signing.py`` sign with the same
functions, so the two can never disagree. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

# Senders refuse a timestamp further than this from now: a captured request
# cannot be replayed later.
MAX_CLOCK_SKEW_S = 300


def slack_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature: ``v0=`` HMAC-SHA256 of ``v0:<timestamp>:<body>``."""
    signed = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def teams_signature(secret_b64: str, body: bytes) -> str:
    """Teams' outgoing-webhook signature, keyed by the decoded secret."""
    key = base64.b64decode(secret_b64, validate=True)
    digest = hmac.new(key, body, hashlib.sha256).digest()
    return "HMAC " + base64.b64encode(digest).decode()


def stripe_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Stripe's ``v1`` value: HMAC-SHA256 of ``<timestamp>.<body>``."""
    signed = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def fresh(timestamp: str, now: float | None = None) -> bool:
    """An integer timestamp within the allowed skew of now."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    return abs(current - int(timestamp)) <= MAX_CLOCK_SKEW_S


def same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def slack_valid(secret: str, timestamp: str, signature: str, body: bytes) -> bool:
    return fresh(timestamp) and same(
        signature, slack_signature(secret, timestamp, body)
    )


def teams_valid(secret_b64: str, authorization: str, body: bytes) -> bool:
    try:
        expected = teams_signature(secret_b64, body)
    except (binascii.Error, ValueError):
        return False
    return authorization.lower().startswith("hmac ") and same(
        "HMAC " + authorization[5:], expected
    )


def stripe_valid(secret: str, header: str, body: bytes) -> bool:
    """A ``t=...,v1=...`` header: fresh, and any v1 value matching."""
    fields = [part.split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [value for key, value in fields if key.strip() == "t"]
    if len(stamps) != 1 or not fresh(stamps[0]):
        return False
    expected = stripe_signature(secret, stamps[0], body)
    return any(same(value, expected) for key, value in fields if key.strip() == "v1")
