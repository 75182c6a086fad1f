"""Each tenant's log: what its code printed, and what the runner reported.

Lines arrive raw from a worker's log pipe (anything tenant code wrote to
fds 1 and 2, bytes included) or in ``Log`` frames. Before a line goes
anywhere it is decoded, every secret value of that tenant is replaced by
the secret's name, control characters are replaced, and it is cut to a
bounded length. Lines go to the ``tenant`` logger and to a short in-memory
history per tenant.

Whoever follows a tenant's log live (``GET .../scripts/{script}/tail``)
holds a ``Tail``: a bounded queue of events - log lines and request
summaries - that the tenant's activity fills. A follower who reads too
slowly loses events (counted and reported to it), never memory or time of
the dispatcher.

The stacks of slow requests are logged the same way, one block each, and
the last few are kept per tenant as well (``slow_requests.py``).

Writing a log line is synchronous work on the dispatcher's event loop, so a
tenant that prints without pause could stall every other tenant. Each
tenant therefore has a line budget (a token bucket); lines over it are
dropped and counted, and the count is logged once the budget allows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote

from dispatcher.slow_requests import (
    KEPT_PER_TENANT,
    SlowRequestRecord,
    bounded_stack,
)
from dispatcher.tenants import Tenant
from sandbox_runner.frames import StackEntry

log = logging.getLogger("tenant")

MAX_LINE_CHARS = 4096
# A partial line is held up to this many bytes; the rest of an overlong line
# is dropped. It covers MAX_LINE_CHARS of 4-byte characters plus a secret of
# up to 1 KiB, so redaction always sees any secret that could be shown.
MAX_HELD_BYTES = 4 * MAX_LINE_CHARS + 1024
MAX_MESSAGE_CHARS = 64 * 1024
HISTORY_LINES = 200
HISTORY_CHARS = 64 * 1024
LINES_PER_SECOND = 200.0
LINE_BURST = 1000.0
# Events a follower of the tail may fall behind by before losing some.
TAIL_QUEUE_EVENTS = 1000
# Secrets shorter than this would redact ordinary words; they are weak
# secrets anyway, and the redaction would give their value away by context.
MIN_REDACTED_LENGTH = 4

# Characters that could make one line look like several, or rewrite what a
# terminal shows: C0 and C1 controls (tab aside), Unicode line and paragraph
# separators (JSON leaves them raw; many line splitters honour them), and
# the bidirectional overrides that reorder text on screen.
_CONTROL = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


@dataclass(frozen=True)
class LogLine:
    """One line of a tenant's log, already redacted."""

    at: float
    pid: int
    text: str


class LineBudget:
    """A token bucket of log lines for one tenant."""

    def __init__(self) -> None:
        self.tokens = LINE_BURST
        self.updated = time.monotonic()
        self.dropped = 0

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` lines may be written now; counts the rest."""
        now = time.monotonic()
        refill = (now - self.updated) * LINES_PER_SECOND
        self.tokens = min(LINE_BURST, self.tokens + refill)
        self.updated = now

        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        self.dropped += wanted - granted
        return granted


class TenantLog:
    """Redacts, bounds and records the log lines of every tenant."""

    def __init__(self) -> None:
        self.history: dict[str, History] = {}
        self.slow: dict[str, deque[SlowRequestRecord]] = {}
        self.budgets: dict[str, LineBudget] = {}
        self.tails: dict[str, set[Tail]] = {}

    def emit_message(self, tenant: Tenant, pid: int, message: str) -> None:
        """Record a message from a Log frame, one line per line of it."""
        if len(message) > MAX_MESSAGE_CHARS:
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]} [{cut} characters cut]"
        self.emit_lines(tenant, pid, message.rstrip("\n").split("\n"))

    def emit_lines(
        self, tenant: Tenant, pid: int, lines: Sequence[bytes | str]
    ) -> None:
        """Record whole lines, as far as the tenant's budget allows."""
        budget = self.budgets.setdefault(tenant.id, LineBudget())
        granted = budget.take(len(lines))
        # A removed tenant's draining workers may still print: the operator
        # log shows it, but nothing is kept under an id that may be reused.
        kept = None if tenant.removed else self.history.setdefault(tenant.id, History())
        for line in lines[:granted]:
            if isinstance(line, bytes):
                line = line.decode("utf-8", "replace")
            text = clean_line(redact(line, tenant))
            entry = LogLine(time.time(), pid, text)
            if kept is None:
                log.info("tenant %s (removed) pid %d: %s", tenant.id, pid, text)
                continue
            kept.append(entry)
            fields = {"tenant": tenant.id, "pid": pid}
            log.info(
                "tenant %s pid %d: %s", tenant.id, pid, text, extra={"fields": fields}
            )
            if tenant.id in self.tails:
                self.publish(tenant.id, {"type": "log", **asdict(entry)})
        # Said after the lines it follows, and only when the budget lets a
        # line through: a flood is reported once, not once per batch.
        if granted and budget.dropped:
            self.report_dropped(tenant, pid, budget)

    def report_dropped(self, tenant: Tenant, pid: int, budget: LineBudget) -> None:
        """Say, where the tenant looks too, that lines over its budget were lost."""
        note = f"{budget.dropped} log lines dropped, over {LINES_PER_SECOND:g} lines/s"
        budget.dropped = 0
        log.warning("tenant %s pid %d: %s", tenant.id, pid, note)
        if tenant.removed:
            return
        line = LogLine(time.time(), pid, f"[switchyard: {note}]")
        self.history.setdefault(tenant.id, History()).append(line)
        if tenant.id in self.tails:
            self.publish(tenant.id, {"type": "log", **asdict(line)})

    def record_slow_request(
        self,
        tenant: Tenant,
        pid: int,
        request_id: str,
        elapsed_ms: float,
        stack: Sequence[StackEntry],
    ) -> None:
        """Log where a slow request spends its time, and keep it for a while.

        ``stack`` comes from the worker: it is redacted and bounded here.
        """
        clean_stack = bounded_stack(
            stack, lambda text: clean_line(redact(text, tenant))
        )
        record = SlowRequestRecord(
            time.time(), request_id, pid, elapsed_ms, clean_stack
        )
        if not tenant.removed:
            kept = self.slow.setdefault(tenant.id, deque(maxlen=KEPT_PER_TENANT))
            kept.append(record)
        self.emit_message(tenant, pid, record.as_text())
        if tenant.id in self.tails:
            self.publish(tenant.id, {"type": "slow", **record.as_dict()})

    def slow_requests(self, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's last slow requests as JSON-ready dicts, newest last."""
        return [record.as_dict() for record in self.slow.get(tenant_id, ())]

    def line_splitter(self, tenant: Tenant, pid: int) -> LineSplitter:
        """A splitter that turns a worker's raw log pipe into lines here."""
        return LineSplitter(self, tenant, pid)

    def recent(self, tenant_id: str) -> list[LogLine]:
        """The last lines of a tenant's log, oldest first."""
        history = self.history.get(tenant_id)
        return list(history.lines) if history else []

    def forget(self, tenant_id: str) -> None:
        """Drop a deleted tenant's history, budget and slow requests.

        Whoever follows it is told the script is gone and their tail ends.
        """
        self.history.pop(tenant_id, None)
        self.slow.pop(tenant_id, None)
        self.budgets.pop(tenant_id, None)
        for tail in self.tails.pop(tenant_id, set()):
            tail.end("the script was deleted")

    def end_all_tails(self, reason: str) -> None:
        """End every follower's tail, each told ``reason``."""
        for followers in self.tails.values():
            for tail in followers:
                tail.end(reason)
        self.tails.clear()

    def follow(self, tenant_id: str) -> Tail:
        """Start following a tenant's log; call ``unfollow`` when done."""
        tail = Tail()
        self.tails.setdefault(tenant_id, set()).add(tail)
        return tail

    def unfollow(self, tenant_id: str, tail: Tail) -> None:
        followers = self.tails.get(tenant_id)
        if followers is not None:
            followers.discard(tail)
            if not followers:
                del self.tails[tenant_id]

    def is_tailed(self, tenant_id: str) -> bool:
        return tenant_id in self.tails

    def publish(self, tenant_id: str, event: dict[str, Any]) -> None:
        """Hand an event, already redacted, to everyone following the tenant."""
        for tail in self.tails.get(tenant_id, ()):
            tail.put(event)

    def publish_request(self, tenant: Tenant, fields: dict[str, Any]) -> None:
        """A request summary (its path already redacted) for the followers."""
        if tenant.id in self.tails:
            self.publish(tenant.id, {"type": "request", **fields})


class History:
    """A tenant's latest lines, bounded in count and in characters.

    Counting lines alone would let a tenant that prints long lines of wide
    characters hold megabytes here; 2,000 tenants times that is gigabytes.
    """

    def __init__(self) -> None:
        self.lines: deque[LogLine] = deque()
        self.chars = 0

    def append(self, line: LogLine) -> None:
        self.lines.append(line)
        self.chars += len(line.text)
        while len(self.lines) > HISTORY_LINES or self.chars > HISTORY_CHARS:
            self.chars -= len(self.lines.popleft().text)


class Tail:
    """One follower's queue of events, bounded; overflow is counted."""

    def __init__(self, max_events: int = TAIL_QUEUE_EVENTS) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_events)
        self.dropped = 0
        self.ended = ""

    def put(self, event: dict[str, Any]) -> None:
        if self.ended:
            return
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def end(self, reason: str) -> None:
        """Tell the follower the tail is over; it reads this last."""
        self.ended = reason
        event = {"type": "end", "reason": reason}
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            # A full queue still ends: make room by dropping the oldest.
            self.events.get_nowait()
            self.dropped += 1
            self.events.put_nowait(event)

    def take_dropped(self) -> int:
        """Events lost since last asked, to tell the follower."""
        dropped, self.dropped = self.dropped, 0
        return dropped


class LineSplitter:
    """Cuts a byte stream into lines, holding at most MAX_HELD_BYTES."""

    def __init__(self, tenant_log: TenantLog, tenant: Tenant, pid: int) -> None:
        self.tenant_log = tenant_log
        self.tenant = tenant
        self.pid = pid
        self.held = b""

    def feed(self, chunk: bytes) -> None:
        """Add bytes from the pipe; emit every line they complete."""
        lines = (self.held + chunk).split(b"\n")
        self.held = lines.pop()[:MAX_HELD_BYTES]
        if lines:
            self.tenant_log.emit_lines(self.tenant, self.pid, lines)

    def flush(self) -> None:
        """Emit what is left once the pipe has closed."""
        if self.held:
            self.tenant_log.emit_lines(self.tenant, self.pid, [self.held])
            self.held = b""


def clean_line(line: str) -> str:
    """Control characters replaced, cut to MAX_LINE_CHARS with a marker."""
    line = _CONTROL.sub("?", line)
    if len(line) > MAX_LINE_CHARS:
        line = f"{line[:MAX_LINE_CHARS]} [line cut]"
    return line


def redact(text: str, tenant: Tenant) -> str:
    """Replace every secret value of ``tenant`` in ``text`` by its name."""
    for needle, name in secret_needles(tenant):
        if needle in text:
            text = text.replace(needle, f"[secret {name}]")
    return text


def redact_path(path: str, tenant: Tenant) -> str:
    """A request path with the tenant's secrets hidden, encoded or not.

    A secret can hide behind percent-encoding (``%2B`` for ``+``); when the
    decoded path shows one, the decoded path is what gets redacted and shown.
    """
    if not tenant.config.secrets:
        return path
    hidden = redact(path, tenant)
    if "%" in path:
        decoded = unquote(path)
        if redact(decoded, tenant) != decoded:
            hidden = clean_line(redact(decoded, tenant))
    return hidden


def secret_needles(tenant: Tenant) -> list[tuple[str, str]]:
    """What to look for of each secret, longest first, with the secret's name.

    Redaction runs for every log line, and for every request's path when a
    tenant has secrets: the list is built once per set of secret values.
    """
    secrets = tuple(
        (name, value)
        for name in tenant.config.secrets
        if isinstance(value := tenant.bindings.get(name), str)
    )
    return needles_of(secrets) if secrets else []


@functools.lru_cache(maxsize=4096)
def needles_of(secrets: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The needles of these (name, value) pairs; see secret_needles.

    A log is cut into lines before it is redacted, so a value that holds a
    line break (a PEM key, a token pasted with its newline) would never match
    whole: each of its lines is looked for as well.
    """
    needles: dict[str, str] = {}
    for name, value in secrets:
        lines = [line.strip() for line in value.splitlines()]
        for piece in (value, value.strip(), *lines):
            if len(piece) >= MIN_REDACTED_LENGTH:
                needles.setdefault(piece, name)
    return sorted(needles.items(), key=lambda item: -len(item[0]))
