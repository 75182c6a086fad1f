"""Durable deliveries: outbound calls kept until they succeed, or give up.

``ctx.deliver`` stores a delivery here before it answers the tenant, so a
delivery survives a crash of the dispatcher (at least once). The delivery
loop then attempts it at once and afterwards by the tenant's retry policy:
exponential backoff with full jitter, ``Retry-After`` honoured for 429 and
503, statuses that retrying cannot fix (400, 401, 403, 404, 422) ending it
at once. Every attempt carries the same ``Idempotency-Key`` and a
``Switchyard-Attempt`` number, with the same bytes. A delivery out of
attempts or past its age moves to the dead letters, which the management
API lists, replays and discards.

Several dispatchers may share one database: a delivery is *claimed* with a
lease before it is attempted, and only the holder of an unexpired lease
may record its outcome, so two processes never attempt it at once. A
lease left by a process that died runs out and the delivery is claimed
again.

Times in the database are wall-clock seconds: they must survive a restart.
A due time further ahead than any policy can schedule (a clock that jumped
back) counts as due, so nothing freezes; a clock that jumps ahead makes
the deliveries already scheduled due early, once each - every next attempt
is scheduled from the time the last one ran.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec

from dispatcher.circuits import CircuitBreakers
from dispatcher.outbound_limits import OutboundLimits
from dispatcher.tenants import RetryPolicy, Tenant
from sandbox_runner import frames

log = logging.getLogger("dispatcher.deliveries")

FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413, 414, 422, 431, 501})
RETRY_AFTER_STATUSES = frozenset({429, 503})
LEASE_S = 60.0
# Succeeded deliveries are kept this long for the API and the console to
# show, then forgotten: without it the table grows with every delivery.
# Dead letters are kept until replayed or discarded.
SUCCEEDED_RETENTION_S = 7 * 24 * 3600.0
PRUNE_EVERY_S = 600.0
# After the state database fails, the loop tries again this much later.
STORE_RETRY_S = 1.0
# No policy schedules further ahead than this (max_delay_s is capped at a
# day): a due time beyond it means the clock jumped back, and it is due now.
MAX_SCHEDULE_AHEAD_S = 86_400.0 + LEASE_S
CLAIM_BATCH = 64
# Attempts in flight at once, all tenants; past it the loop claims no more.
MAX_IN_FLIGHT = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    -- The tenant's data region when stored: a multi-region deployment
    -- keeps each region's rows in a database in that region.
    region TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    policy BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due
    ON deliveries (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_tenant
    ON deliveries (tenant, state);
"""
COLUMNS = (
    "id, tenant, method, url, headers, body, idempotency_key, policy, state, "
    "attempts, created_at, next_attempt_at, last_status, last_error"
)

_pairs = msgspec.msgpack.Decoder(list[tuple[str, str]])
_policy = msgspec.msgpack.Decoder(RetryPolicy)
_encode = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class Delivery:
    """One stored delivery, as the loop and the API see it."""

    id: str
    tenant: str
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    idempotency_key: str
    policy: RetryPolicy
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_status: int | None
    last_error: str | None

    def summary(self) -> dict[str, Any]:
        """The delivery for the management API: no body, no headers."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "method": self.method,
            "url": self.url,
            "state": self.state,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "next_attempt_at": self.next_attempt_at,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


def delivery_from_row(row: tuple[Any, ...]) -> Delivery:
    return Delivery(
        id=row[0],
        tenant=row[1],
        method=row[2],
        url=row[3],
        headers=_pairs.decode(row[4]),
        body=row[5],
        idempotency_key=row[6],
        policy=_policy.decode(row[7]),
        state=row[8],
        attempts=row[9],
        created_at=row[10],
        next_attempt_at=row[11],
        last_status=row[12],
        last_error=row[13],
    )


class DeliveryStore:
    """Deliveries in one SQLite file (WAL), claimed with leases."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.owner = secrets.token_hex(8)
        self.path = path
        self.reader: sqlite3.Connection | None = None
        self.reader_lock = threading.Lock()

    def add(
        self, tenant: Tenant, frame: frames.Outbound, refused_because: str = ""
    ) -> str:
        """Store a delivery, due now; returns its id.

        A delivery refused before any attempt (``refused_because``, say a
        region rule) is stored straight into the dead letters with that
        reason, so the tenant can see and replay it once the rule allows.
        """
        delivery_id = "dlv_" + secrets.token_hex(10)
        key = frame.idempotency_key or delivery_id
        now = time.time()
        state = "dead" if refused_because else "pending"
        row = (
            delivery_id, tenant.id, tenant.config.region, frame.method, frame.url,
            _encode.encode(frame.headers), frame.body, key,
            _encode.encode(tenant.config.retry), state, 0, now, now,
            refused_because or None,
        )  # fmt: skip
        with self.lock:
            self.db.execute(
                "INSERT INTO deliveries (id, tenant, region, method, url, headers, "
                "body, idempotency_key, policy, state, attempts, created_at, "
                "next_attempt_at, last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
        return delivery_id

    def next_due(self) -> float | None:
        """When the earliest pending delivery is due, if there is one."""
        with self.lock:
            row = self.db.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'"
            ).fetchone()
        return row[0] if row else None

    def claim_due(self, now: float, lease_s: float = LEASE_S) -> list[Delivery]:
        """Lease the deliveries due now that nobody else holds."""
        with self.lock:
            rows = self.db.execute(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ? "
                "WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending' "
                "AND (next_attempt_at <= ? OR next_attempt_at > ?) "
                "AND (lease_until IS NULL OR lease_until < ?) "
                f"ORDER BY next_attempt_at LIMIT ?) RETURNING {COLUMNS}",
                (
                    self.owner,
                    now + lease_s,
                    now,
                    now + MAX_SCHEDULE_AHEAD_S,
                    now,
                    CLAIM_BATCH,
                ),
            ).fetchall()
        return [delivery_from_row(row) for row in rows]

    def record(
        self,
        delivery: Delivery,
        state: str,
        next_attempt_at: float,
        status: int | None,
        error: str | None,
    ) -> None:
        """Record an attempt's outcome; only the lease holder may."""
        with self.lock:
            self.db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, "
                "next_attempt_at = ?, last_status = ?, last_error = ?, "
                "lease_owner = NULL, lease_until = NULL "
                "WHERE id = ? AND lease_owner = ?",
                (state, next_attempt_at, status, error, delivery.id, self.owner),
            )

    def prune_succeeded(self, before: float, batch: int = 5000) -> int:
        """Forget up to ``batch`` deliveries that succeeded before ``before``.

        In batches, so that the write lock is never held for long.
        """
        with self.lock:
            cursor = self.db.execute(
                "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries "
                "WHERE state = 'succeeded' AND next_attempt_at < ? LIMIT ?)",
                (before, batch),
            )
        return cursor.rowcount

    def postpone(self, delivery: Delivery, until: float) -> None:
        """Put a claimed delivery back, untried, due at ``until``."""
        with self.lock:
            self.db.execute(
                "UPDATE deliveries SET next_attempt_at = ?, lease_owner = NULL, "
                "lease_until = NULL WHERE id = ? AND lease_owner = ?",
                (until, delivery.id, self.owner),
            )

    def list(
        self, tenant: str | None, state: str | None, limit: int = 100
    ) -> list[Delivery]:
        query = f"SELECT {COLUMNS} FROM deliveries WHERE 1=1"
        params: list[Any] = []
        if tenant:
            query += " AND tenant = ?"
            params.append(tenant)
        if state:
            query += " AND state = ?"
            params.append(state)
        query += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        with self.lock:
            rows = self.db.execute(query, params).fetchall()
        return [delivery_from_row(row) for row in rows]

    def count(self, state: str) -> int:
        """How many deliveries are in ``state``, all tenants."""
        with self.lock:
            row = self.db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = ?", (state,)
            ).fetchone()
        return int(row[0])

    def counts_by_tenant(self) -> dict[tuple[str, str], int]:
        """How many deliveries each tenant has in each state.

        Counting scans an index of every delivery kept (tens of ms per
        million), so it reads on a connection of its own: in WAL mode a
        reader never waits for the delivery loop's writes, nor they for it.
        """
        with self.reader_lock:
            if self.reader is None:
                self.reader = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
            rows = self.reader.execute(
                "SELECT tenant, state, COUNT(*) FROM deliveries"
                " GROUP BY tenant, state ORDER BY tenant, state"
            ).fetchall()
        return {(tenant, state): int(number) for tenant, state, number in rows}

    def get(self, delivery_id: str) -> Delivery | None:
        with self.lock:
            row = self.db.execute(
                f"SELECT {COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
            ).fetchone()
        return delivery_from_row(row) if row else None

    def replay(self, tenant: str, delivery_id: str | None) -> int:
        """Make dead deliveries pending again, with fresh attempts; how many."""
        query = (
            "UPDATE deliveries SET state = 'pending', attempts = 0, "
            "created_at = ?, next_attempt_at = ? WHERE tenant = ? AND state = 'dead'"
        )
        now = time.time()
        params: list[Any] = [now, now, tenant]
        if delivery_id:
            query += " AND id = ?"
            params.append(delivery_id)
        with self.lock:
            return self.db.execute(query, params).rowcount

    def discard(self, tenant: str, delivery_id: str) -> bool:
        with self.lock:
            cursor = self.db.execute(
                "DELETE FROM deliveries WHERE tenant = ? AND id = ? AND state = 'dead'",
                (tenant, delivery_id),
            )
        return cursor.rowcount > 0

    def close(self) -> None:
        self.db.close()
        with self.reader_lock:
            if self.reader is not None:
                self.reader.close()


class AsyncDeliverySink:
    """The store, as the outbound gateway sees it (off the event loop)."""

    def __init__(self, store: DeliveryStore, wake: asyncio.Event) -> None:
        self.store = store
        self.wake = wake

    async def add(
        self, tenant: Tenant, frame: frames.Outbound, refused_because: str = ""
    ) -> str:
        delivery_id = await asyncio.to_thread(
            self.store.add, tenant, frame, refused_because
        )
        self.wake.set()  # attempt it at once
        return delivery_id


class DeliveryLoop:
    """Attempts due deliveries, concurrently, until cancelled."""

    def __init__(
        self,
        store: DeliveryStore,
        wake: asyncio.Event,
        time_scale: float = 1.0,
        poll_s: float = 0.5,
        limits: OutboundLimits | None = None,
        rate_of: Callable[[str, str], float] = lambda tenant, host: 0.0,
        refusal_of: Callable[[str, str], Awaitable[str | None]] | None = None,
    ) -> None:
        self.store = store
        self.wake = wake
        self.limits = limits or OutboundLimits()
        # Calls per second a tenant may make to a host (0: no limit).
        self.rate_of = rate_of
        # Why the tenant may not call a URL now (egress rules, region, the
        # address it resolves to), or None: asked before every attempt.
        self.refusal_of = refusal_of
        self.client = httpx.AsyncClient(follow_redirects=False, timeout=30)
        # Below 1, every delay shrinks by that factor: tests compress hours
        # of backoff into seconds through configuration, not by waiting.
        self.time_scale = time_scale
        self.poll_s = poll_s
        self.circuits = CircuitBreakers(time_scale)
        self.pruned_at = 0.0
        # Attempts under way, and the delivery each is for.
        self.in_flight: dict[asyncio.Task[None], str] = {}
        # A lease must outlast an attempt (30 s at most); compressed time
        # shortens it too, so that a test's restart need not wait a minute.
        self.lease_s = LEASE_S if time_scale >= 1 else max(2.0, LEASE_S * time_scale)

    async def run(self) -> None:
        """Attempt what is due, forever; a failing database pauses, never ends it."""
        while True:
            try:
                await self.run_once()
            except sqlite3.Error as exc:
                # Deliveries claimed before the failure are attempted again
                # once their lease runs out, with the same idempotency key.
                log.error(
                    "deliveries paused for %.0f s: the state database failed: %s",
                    STORE_RETRY_S,
                    exc,
                )
                await asyncio.sleep(STORE_RETRY_S)
            except Exception:
                # A bug must not stop every tenant's deliveries for good.
                log.exception("deliveries paused for %.0f s by an error", STORE_RETRY_S)
                await asyncio.sleep(STORE_RETRY_S)

    async def run_once(self) -> None:
        """Prune when it is time, then attempt what is due or wait for it."""
        now = time.time()
        if now - self.pruned_at > PRUNE_EVERY_S:
            await self.prune(now)
            self.pruned_at = now
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            await asyncio.wait(
                list(self.in_flight), return_when=asyncio.FIRST_COMPLETED
            )
            return
        due = await asyncio.to_thread(self.store.claim_due, now, self.lease_s)
        # Each attempt goes on by itself: one slow upstream (30 s to time
        # out) must not hold back the next claim, nor other tenants.
        for delivery in due:
            if delivery.id in self.in_flight.values():
                continue  # its lease ran out while its attempt is still going
            task = asyncio.create_task(self.attempt_unless_open(delivery))
            self.in_flight[task] = delivery.id
            task.add_done_callback(self.attempt_done)
        if len(due) == CLAIM_BATCH:
            return  # more may be due already
        self.wake.clear()
        await self.sleep_until_due()

    def attempt_done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("a delivery attempt failed", exc_info=task.exception())

    async def prune(self, now: float) -> None:
        """Forget deliveries that succeeded more than the retention ago."""
        before = now - SUCCEEDED_RETENTION_S
        pruned = 0
        while True:
            batch = await asyncio.to_thread(self.store.prune_succeeded, before)
            pruned += batch
            if batch == 0:
                break
        if pruned:
            log.info("forgot %d deliveries that succeeded over a week ago", pruned)

    async def sleep_until_due(self) -> None:
        """Until the next delivery is due, one is added, or the poll ends."""
        next_due = await asyncio.to_thread(self.store.next_due)
        wait_s = self.poll_s
        if next_due is not None:
            wait_s = min(wait_s, max(0.0, next_due - time.time()))
        try:
            async with asyncio.timeout(wait_s):
                await self.wake.wait()
        except TimeoutError:
            pass

    async def attempt_unless_open(self, delivery: Delivery) -> None:
        """Attempt a delivery, or hold it: circuit open, or over the rate.

        A delivery the tenant may no longer send (its rules or region
        changed, its host now resolves to a private address) becomes a
        dead letter with the reason, unsent; a replay asks again.
        """
        if self.refusal_of is not None:
            refusal = await self.refusal_of(delivery.tenant, delivery.url)
            if refusal is not None:
                await asyncio.to_thread(
                    self.store.record, delivery, "dead", time.time(), None, refusal
                )
                log.info("delivery %s refused: %s", delivery.id, refusal)
                return
        parts = urlsplit(delivery.url)
        host = parts.hostname or ""
        # A circuit per host and port: a service down on one port says
        # nothing of another on the same host.
        endpoint = parts.netloc.lower()
        blocked = self.circuits.blocked_until(delivery.tenant, endpoint, time.time())
        if blocked is None:
            rate = self.rate_of(delivery.tenant, host)
            wait_s = self.limits.wait_for(delivery.tenant, host, rate)
            blocked = time.time() + wait_s if wait_s else None
        if blocked is not None:
            await asyncio.to_thread(self.store.postpone, delivery, blocked)
            return
        succeeded = await self.attempt(delivery)
        self.circuits.record(delivery.tenant, endpoint, succeeded, time.time())

    async def attempt(self, delivery: Delivery) -> bool:
        """One attempt, and what follows from its outcome; True on success."""
        number = delivery.attempts + 1
        headers = [
            *delivery.headers,
            ("idempotency-key", delivery.idempotency_key),
            ("switchyard-attempt", str(number)),
        ]
        status: int | None = None
        retry_after: float | None = None
        try:
            response = await self.client.request(
                delivery.method, delivery.url, headers=headers, content=delivery.body
            )
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if status == 429 and retry_after:
                host = urlsplit(delivery.url).hostname or ""
                self.limits.slow_down(delivery.tenant, host, retry_after)
            error = None if status < 300 else f"upstream answered {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        except Exception as exc:  # noqa: BLE001 - the delivery's fault, not the loop's
            # A call HTTP cannot carry (stored before calls were checked, or
            # by a check that missed a case): no retry can send it.
            error = f"cannot be sent: {type(exc).__name__}"
            await asyncio.to_thread(
                self.store.record, delivery, "dead", time.time(), None, error
            )
            log.warning(
                "delivery %s of tenant %s %s", delivery.id, delivery.tenant, error
            )
            return True  # the request's fault, not the host's

        state, next_at = self.outcome(delivery, number, status, retry_after)
        # XXX: each outcome is its own transaction and thread hop, which
        # holds a drain near 500 deliveries/s here; recording a batch's
        # outcomes in one transaction would lift that.
        await asyncio.to_thread(
            self.store.record, delivery, state, next_at, status, error
        )
        log.info(
            "delivery %s of tenant %s: attempt %d -> %s (%s)",
            delivery.id,
            delivery.tenant,
            number,
            state,
            status if status is not None else error,
        )
        # A final refusal (403...) is the request's fault, not the host's.
        return status is not None and (status < 300 or status in FINAL_STATUSES)

    def outcome(
        self,
        delivery: Delivery,
        number: int,
        status: int | None,
        retry_after: float | None,
    ) -> tuple[str, float]:
        """The state after attempt ``number`` and when to try next."""
        now = time.time()
        if status is not None and status < 300:
            return "succeeded", now
        if status in FINAL_STATUSES:
            return "dead", now
        policy = delivery.policy
        age = (now - delivery.created_at) / self.time_scale
        if number >= policy.max_attempts or age >= policy.max_age_s:
            return "dead", now
        delay = backoff_delay(policy, number)
        if status in RETRY_AFTER_STATUSES and retry_after is not None:
            delay = max(delay, retry_after / self.time_scale)
        return "pending", now + delay * self.time_scale

    async def close(self) -> None:
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*list(self.in_flight), return_exceptions=True)
        await self.client.aclose()


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    return random.uniform(0, ceiling)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form only)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None
