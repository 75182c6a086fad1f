"""customer-c: paid Stripe invoices become revenue entries in a ledger.

Stripe signs every event with ``Stripe-Signature: t=<time>,v1=<hex>``; one
without a matching v1 signature, or older than five minutes, gets 401. Stripe
lists several v1 signatures while an endpoint secret is being rolled, and any
one of them may match.

Outbound calls are not wired up yet, so an ``invoice.paid`` event is answered
with the ledger entry it maps to; every other event type is acknowledged and
ignored, so Stripe does not retry it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from decimal import Decimal
from typing import Any

from sandbox_runner import Response
from sandbox_runner.runtime import Context, Env, Request

# Stripe's default tolerance: a signature older than five minutes is refused,
# so a captured event cannot be replayed later.
MAX_CLOCK_SKEW_S = 300

# Stripe counts these currencies in whole units, and these in thousandths;
# every other currency in hundredths.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


async def fetch(request: Request, env: Env, ctx: Context) -> Response | dict[str, Any]:
    """Verify a Stripe event and map a paid invoice to a ledger entry."""
    problem = signature_problem(request, str(env.STRIPE_WEBHOOK_SECRET))
    if problem is not None:
        return Response.json({"error": problem}, status=401)

    try:
        event = request.json()
    except ValueError:
        return Response.json({"error": "body is not valid JSON"}, status=400)
    if not isinstance(event, dict):
        return Response.json({"error": "body is not a JSON object"}, status=400)

    if event.get("type") != "invoice.paid":
        return {"ignored": event.get("type")}
    try:
        return {"ledger_entry": ledger_entry(event)}
    except (KeyError, TypeError, ValueError) as exc:
        message = f"invoice.paid event lacks a usable field: {exc}"
        return Response.json({"error": message}, status=400)


def signature_problem(request: Request, secret: str) -> str | None:
    """Why ``request`` is not a fresh event signed by Stripe; None if it is."""
    header = request.headers.get("Stripe-Signature", "")
    fields = [item.strip().partition("=") for item in header.split(",")]
    stamps = [value for key, _, value in fields if key == "t"]
    signatures = [value for key, _, value in fields if key == "v1"]

    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()):
        return "Stripe-Signature must hold one integer t="
    if abs(time.time() - int(stamps[0])) > MAX_CLOCK_SKEW_S:
        return f"Stripe-Signature t= is more than {MAX_CLOCK_SKEW_S} s from now"

    signed = stamps[0].encode() + b"." + request.body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
    # Bytes, not str: compare_digest refuses str with non-ASCII characters.
    if not any(
        hmac.compare_digest(digest, value.encode("utf-8", "replace"))
        for value in signatures
    ):
        return "Stripe-Signature has no v1 signature that matches the body"
    return None


def ledger_entry(event: dict[str, Any]) -> dict[str, Any]:
    """The revenue entry for one ``invoice.paid`` event."""
    invoice = event["data"]["object"]
    currency = str(invoice["currency"]).lower()
    amount = int(invoice["amount_paid"])
    return {
        # Prefixed with the source, so a ledger fed by several senders
        # cannot mix up two ids that happen to be equal.
        "entry_id": f"stripe:{invoice['id']}",
        "customer": invoice.get("customer"),
        "amount_minor": amount,
        "amount": decimal_amount(amount, currency),
        "currency": currency.upper(),
        "account": "revenue",
        "memo": invoice.get("number"),
        "paid_at": paid_at(invoice, event),
    }


def decimal_amount(minor: int, currency: str) -> str:
    """``minor`` units of ``currency`` as an exact decimal string: "49.00"."""
    digits = 2
    if currency in ZERO_DECIMAL_CURRENCIES:
        digits = 0
    elif currency in THREE_DECIMAL_CURRENCIES:
        digits = 3
    return format(Decimal(minor).scaleb(-digits), "f")


def paid_at(invoice: dict[str, Any], event: dict[str, Any]) -> str:
    """When the invoice was paid, as an ISO 8601 UTC time.

    Invoices carry ``status_transitions.paid_at``; when it is missing, the
    time Stripe created the event is the nearest stand-in.
    """
    transitions = invoice.get("status_transitions") or {}
    stamp = transitions.get("paid_at") or event["created"]
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(stamp)))
