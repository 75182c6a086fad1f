"""Sign a webhook body the way Slack, Teams or Stripe would.

The demo client and the tests use these to send requests that a tenant's
script will accept, without a real sender. Each ``*_headers`` function takes
the secret and the raw body and returns the header pairs to send with it.

``SIGNERS`` maps a sender name to a signer that picks its own secret out of a
tenant's secrets, and ``sender_for_secrets`` guesses the sender from the
secret names a tenant declares in its ``tenant.toml``.

Nothing here keeps, logs or returns a secret's value: only the signature
derived from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from sandbox_runner.signatures import (
    slack_signature,
    stripe_signature,
    teams_signature,
)

HeaderPairs = list[tuple[str, str]]
Signer = Callable[[Mapping[str, str], bytes], HeaderPairs]

# The secret each sender signs with, by the name tenants give it.
SECRET_NAMES: Mapping[str, str] = {
    "slack": "SLACK_SIGNING_SECRET",
    "teams": "TEAMS_SHARED_SECRET",
    "stripe": "STRIPE_WEBHOOK_SECRET",
}


def slack_headers(
    secret: str, body: bytes, timestamp: int | None = None
) -> HeaderPairs:
    """Slack's v0 signature: HMAC-SHA256 over ``v0:<timestamp>:<body>``.

    ``timestamp`` defaults to now; pass an old one to test replay checks.
    """
    stamp = str(_now() if timestamp is None else timestamp)
    return [
        ("X-Slack-Request-Timestamp", stamp),
        ("X-Slack-Signature", slack_signature(secret, stamp, body)),
    ]


def teams_headers(secret_b64: str, body: bytes) -> HeaderPairs:
    """Teams' outgoing-webhook signature: ``Authorization: HMAC <base64>``.

    Teams hands out the shared secret base64-encoded and keys the HMAC with
    the decoded bytes, so ``secret_b64`` must be valid base64.
    """
    return [("Authorization", teams_signature(secret_b64, body))]


def stripe_headers(
    secret: str, body: bytes, timestamp: int | None = None
) -> HeaderPairs:
    """Stripe's signature: ``Stripe-Signature: t=<timestamp>,v1=<hex>``.

    ``timestamp`` defaults to now; pass an old one to test replay checks.
    """
    stamp = str(_now() if timestamp is None else timestamp)
    digest = stripe_signature(secret, stamp, body)
    return [("Stripe-Signature", f"t={stamp},v1={digest}")]


def sender_for_secrets(secret_names: Iterable[str]) -> str | None:
    """The sender whose signing secret is among ``secret_names``.

    ``None`` when there is none, and also when there are several: a guess
    between two senders would sign half the requests wrongly, so the caller
    has to name the sender itself.
    """
    declared = set(secret_names)
    senders = [name for name, secret in SECRET_NAMES.items() if secret in declared]
    return senders[0] if len(senders) == 1 else None


def _sign_slack(secrets: Mapping[str, str], body: bytes) -> HeaderPairs:
    return slack_headers(_secret_for("slack", secrets), body)


def _sign_teams(secrets: Mapping[str, str], body: bytes) -> HeaderPairs:
    return teams_headers(_secret_for("teams", secrets), body)


def _sign_stripe(secrets: Mapping[str, str], body: bytes) -> HeaderPairs:
    return stripe_headers(_secret_for("stripe", secrets), body)


SIGNERS: Mapping[str, Signer] = {
    "slack": _sign_slack,
    "teams": _sign_teams,
    "stripe": _sign_stripe,
}


def _secret_for(sender: str, secrets: Mapping[str, str]) -> str:
    name = SECRET_NAMES[sender]
    try:
        return secrets[name]
    except KeyError:
        # The name only: the message may end up in a log.
        raise KeyError(f"the {sender} signer needs a secret named {name}") from None


def _now() -> int:
    # Wall-clock time, not monotonic: the receiver compares it with its own
    # clock to refuse replays.
    return int(time.time())
