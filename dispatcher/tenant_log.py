"""Each tenant's log: what its code printed, and what the runner reported.

Lines arrive raw from a worker's log pipe (anything tenant code wrote to
fds 1 and 2, bytes included) or from ``Log`` frames. Before a line goes
anywhere it is decoded, stripped of control characters, cut to a bounded
length, and every secret value of that tenant is replaced by the secret's
name. Lines go to the ``tenant`` logger and to a short in-memory history per
tenant.

XXX: a tenant that prints without pause floods the dispatcher's log; a
per-tenant line budget (drop and count past it) would bound that.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass

from dispatcher.tenants import Tenant

log = logging.getLogger("tenant")

MAX_LINE_CHARS = 4096
HISTORY_LINES = 200
# Secrets shorter than this would redact ordinary words; they are weak
# secrets anyway, and the redaction would give their value away by context.
MIN_REDACTED_LENGTH = 4

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class LogLine:
    """One line of a tenant's log, already redacted."""

    at: float
    pid: int
    text: str


class TenantLog:
    """Redacts and records the log lines of every tenant."""

    def __init__(self) -> None:
        self.history: dict[str, deque[LogLine]] = {}

    def emit(self, tenant: Tenant, pid: int, raw: bytes | str) -> None:
        """Record one line (or a multi-line message) from a tenant's worker."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = redact(text, tenant)
        lines = self.history.setdefault(tenant.id, deque(maxlen=HISTORY_LINES))
        for line in text.rstrip("\n").split("\n"):
            line = _CONTROL.sub("?", line)[:MAX_LINE_CHARS]
            lines.append(LogLine(time.time(), pid, line))
            log.info("tenant %s pid %d: %s", tenant.id, pid, line)

    def recent(self, tenant_id: str) -> list[LogLine]:
        """The last lines of a tenant's log, oldest first."""
        return list(self.history.get(tenant_id, ()))


def redact(text: str, tenant: Tenant) -> str:
    """Replace every secret value of ``tenant`` in ``text`` by its name."""
    for name in tenant.config.secrets:
        value = tenant.bindings.get(name)
        if isinstance(value, str) and len(value) >= MIN_REDACTED_LENGTH:
            text = text.replace(value, f"[secret {name}]")
    return text
