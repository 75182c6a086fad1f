"""The delivery store: claims with leases keep two dispatchers apart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from dispatcher.deliveries import LEASE_S, DeliveryLoop, DeliveryStore
from dispatcher.tenants import Tenant, TenantConfig
from sandbox_runner import frames
from tests.upstream import FakeUpstream


def outbound(number: int) -> frames.Outbound:
    return frames.Outbound(
        id=number,
        request_id="r",
        kind="deliver",
        method="POST",
        url="http://127.0.0.1:9/x",
        headers=[],
        body=b"%d" % number,
        timeout_s=10,
    )


def test_two_stores_on_one_file_never_claim_the_same_delivery(tmp_path: Path) -> None:
    """Two dispatchers sharing a database each get their own deliveries."""
    path = tmp_path / "deliveries.sqlite3"
    first, second = DeliveryStore(path), DeliveryStore(path)
    tenant = Tenant("t", tmp_path, TenantConfig())
    ids = {first.add(tenant, outbound(n)) for n in range(100)}
    now = time.time() + 1

    claimed_first = {d.id for d in first.claim_due(now)}
    claimed_second = {d.id for d in second.claim_due(now)}
    more_first = {d.id for d in first.claim_due(now)}

    assert claimed_first and claimed_second
    assert claimed_first.isdisjoint(claimed_second)
    assert (claimed_first | claimed_second | more_first) <= ids
    assert not (more_first & (claimed_first | claimed_second))


def test_an_expired_lease_is_claimed_again(tmp_path: Path) -> None:
    """A delivery held by a dispatcher that died is picked up after its lease."""
    path = tmp_path / "deliveries.sqlite3"
    crashed, survivor = DeliveryStore(path), DeliveryStore(path)
    tenant = Tenant("t", tmp_path, TenantConfig())
    delivery_id = crashed.add(tenant, outbound(1))
    now = time.time() + 1

    assert [d.id for d in crashed.claim_due(now)] == [delivery_id]
    assert survivor.claim_due(now + 1) == []
    assert [d.id for d in survivor.claim_due(now + LEASE_S + 1)] == [delivery_id]


def test_only_the_lease_holder_records_an_outcome(tmp_path: Path) -> None:
    """A late answer from a lost lease cannot overwrite the new holder's."""
    path = tmp_path / "deliveries.sqlite3"
    old, new = DeliveryStore(path), DeliveryStore(path)
    tenant = Tenant("t", tmp_path, TenantConfig())
    delivery_id = old.add(tenant, outbound(1))
    now = time.time() + 1
    (stale,) = old.claim_due(now)
    (fresh,) = new.claim_due(now + LEASE_S + 1)

    old.record(stale, "dead", now, 500, "late")
    new.record(fresh, "succeeded", now, 200, None)

    stored = new.get(delivery_id)
    assert stored is not None
    assert stored.state == "succeeded"
    assert stored.attempts == 1


def test_old_succeeded_deliveries_are_forgotten_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Pruning keeps pending deliveries, dead letters and recent successes."""
    store = DeliveryStore(tmp_path / "deliveries.sqlite3")
    tenant = Tenant("t", tmp_path, TenantConfig())
    ids = [store.add(tenant, outbound(n)) for n in range(4)]
    claimed = {d.id: d for d in store.claim_due(time.time() + 1)}
    long_ago = time.time() - 30 * 24 * 3600
    store.record(claimed[ids[0]], "succeeded", long_ago, 200, None)
    store.record(claimed[ids[1]], "succeeded", time.time(), 200, None)
    store.record(claimed[ids[2]], "dead", long_ago, 503, "gave up")

    pruned = store.prune_succeeded(before=time.time() - 7 * 24 * 3600, batch=1)
    again = store.prune_succeeded(before=time.time() - 7 * 24 * 3600)

    assert (pruned, again) == (1, 0)
    assert store.get(ids[0]) is None
    assert [store.get(i).state for i in ids[1:]] == ["succeeded", "dead", "pending"]


async def test_a_locked_database_pauses_deliveries_but_never_ends_them(
    tmp_path: Path,
) -> None:
    """Another writer holding the file makes the loop wait, then it goes on."""
    path = tmp_path / "deliveries.sqlite3"
    store = DeliveryStore(path)
    store.db.execute("PRAGMA busy_timeout=50")  # fail fast instead of in 5 s
    upstream = FakeUpstream()
    loop = DeliveryLoop(store, asyncio.Event(), poll_s=0.05)
    running = asyncio.create_task(loop.run())
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(0.3)  # claims fail while the lock is held
        assert not running.done()
        holder.execute("ROLLBACK")

        tenant = Tenant("t", tmp_path, TenantConfig())
        delivery = frames.Outbound(
            id=1, request_id="r", kind="deliver", method="POST",
            url=f"{upstream.url}/after", headers=[], body=b"x", timeout_s=5,
        )  # fmt: skip
        store.add(tenant, delivery)
        loop.wake.set()
        for _ in range(100):
            if upstream.requests_to("/after"):
                break
            await asyncio.sleep(0.05)
        assert len(upstream.requests_to("/after")) == 1
    finally:
        holder.close()
        running.cancel()
        await loop.close()
        upstream.close()
        store.close()
