"""Whether the state databases take writes, checked for ``GET /readyz``.

A probe that only begins a transaction and rolls it back proves little:
SQLite takes its write lock without touching the file, so a database made
read-only or immutable still passes. Each check here writes one row and
commits it, so it fails exactly when a delivery or a deploy would.

The check never runs on the event loop and never takes the stores' own
locks: it opens a connection of its own, with a short busy timeout, in a
thread. A writer holding the database for seconds (a backup, another
process) then makes readiness answer "not writable" within about a second,
while tenant requests go on being answered.

A thread cannot be cancelled: a check stuck in the file system (a hung
network mount, say) runs on after the probe has answered. At most one
check per database is in flight; probes that come meanwhile wait for that
one (up to the same second) instead of starting threads of their own.

XXX: this knows the SQLite files under the state folder. A registry kept
in PostgreSQL would need a check of its own here, writing the same row.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("dispatcher.readiness")

# The databases the dispatcher keeps under its state folder.
STATE_DATABASES = ("deliveries.sqlite3", "registry.sqlite3")
# How long one check waits for another writer, and for the whole check.
BUSY_TIMEOUT_S = 0.5
CHECK_TIMEOUT_S = 1.0

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS readiness ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), checked_at REAL NOT NULL)"
)
WRITE_ROW = (
    "INSERT INTO readiness (id, checked_at) VALUES (1, ?)"
    " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at"
)


class StateWriteCheck:
    """Checks that every state database commits a write; see the module note."""

    def __init__(self, state_dir: Path) -> None:
        self.paths = [state_dir.resolve() / name for name in STATE_DATABASES]
        self.running: dict[Path, asyncio.Task[None]] = {}

    async def check(self) -> str:
        """``writable``, or ``not writable`` with each reason logged."""
        problems = await asyncio.gather(*(self.check_one(p) for p in self.paths))
        for path, problem in zip(self.paths, problems, strict=True):
            if problem:
                log.error("readiness: %s takes no writes: %s", path.name, problem)
        return "not writable" if any(problems) else "writable"

    async def check_one(self, path: Path) -> str:
        """Why ``path`` took no write, or "" when it did."""
        # Probes that overlap (two load balancers, say) share the check in
        # flight: its answer is theirs too, and threads never pile up.
        task = self.running.get(path)
        if task is None or task.done():
            task = asyncio.create_task(asyncio.to_thread(write_row, path))
            task.add_done_callback(consume_outcome)
            self.running[path] = task
        try:
            # shield: a timeout must leave the task to say when the thread
            # is done, or the next probe would start a second one.
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT_S:g} s"
        except (sqlite3.Error, OSError) as exc:
            return str(exc)
        return ""


def write_row(path: Path) -> None:
    """Write and commit the one row of the ``readiness`` table."""
    # mode=rw: a database that is missing is not writable, not created.
    uri = f"{path.as_uri()}?mode=rw"
    db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(CREATE_TABLE)
        db.execute(WRITE_ROW, (time.time(),))
        db.execute("COMMIT")
    finally:
        db.close()


def consume_outcome(task: asyncio.Task[None]) -> None:
    """Retrieve a late check's error, which nobody awaits any more."""
    if not task.cancelled():
        task.exception()
