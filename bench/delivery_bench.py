"""How many deliveries SQLite sustains, and how fast a backlog drains.

Two numbers, on this machine, with the real store and delivery loop:

- deliveries stored per second (``DeliveryStore.add``, one transaction
  each, WAL mode) - the rate ``ctx.deliver`` can sustain;
- the time to drain a backlog of N deliveries (default 10,000) once their
  upstream answers, the upstream being the raw ASGI app on uvicorn in a
  child process on 127.0.0.1, so the loop's own cost is what is measured.

Prints a markdown table; ``--append PATH`` adds it to a report.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dispatcher.deliveries import DeliveryLoop, DeliveryStore
from dispatcher.tenants import Tenant, TenantConfig
from sandbox_runner import frames

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--append", type=Path, help="add the table to this file")
    args = parser.parse_args(argv)

    port = free_port()
    upstream = start_upstream(port)
    try:
        with tempfile.TemporaryDirectory(prefix="switchyard-deliveries-") as folder:
            store = DeliveryStore(Path(folder) / "deliveries.sqlite3")
            url = f"http://127.0.0.1:{port}/pages"
            stored_per_s = fill(store, url, args.backlog)
            drain_s = asyncio.run(drain(store, args.backlog))
            store.close()
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)

    table = render(args.backlog, stored_per_s, drain_s)
    print(table)
    if args.append:
        with args.append.open("a") as report:
            report.write("\n" + table)
    return 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    """The raw ASGI app as the deliveries' upstream; waits until it listens."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "raw_asgi:app",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
        ],
        cwd=BENCH_DIR,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.terminate()
    raise SystemExit("the upstream did not start")


def fill(store: DeliveryStore, url: str, count: int) -> float:
    """Store ``count`` deliveries; return how many per second were stored."""
    tenant = Tenant("bench", Path("."), TenantConfig())
    started = time.perf_counter()
    for number in range(count):
        frame = frames.Outbound(
            id=number, request_id="r", kind="deliver", method="POST", url=url,
            headers=[("content-type", "application/json")],
            body=b'{"n": %d}' % number, timeout_s=10,
        )  # fmt: skip
        store.add(tenant, frame)
    return count / (time.perf_counter() - started)


async def drain(store: DeliveryStore, count: int) -> float:
    """Run the delivery loop until every delivery succeeded; seconds taken."""
    loop = DeliveryLoop(store, asyncio.Event())
    runner = asyncio.create_task(loop.run())
    started = time.perf_counter()
    try:
        while store.count("succeeded") < count:
            await asyncio.sleep(0.25)
    finally:
        runner.cancel()
        await loop.close()
    return time.perf_counter() - started


def render(count: int, stored_per_s: float, drain_s: float) -> str:
    return "\n".join(
        [
            "## Deliveries through SQLite",
            "",
            "Measured by `bench/delivery_bench.py`: the real store and loop, "
            "the raw ASGI app as upstream on 127.0.0.1.",
            "",
            "| measure | result |",
            "| --- | ---: |",
            "| deliveries stored per second (one transaction each) | "
            f"{stored_per_s:,.0f} |",
            f"| backlog of {count:,} drained once the upstream answers | "
            f"{drain_s:.1f} s ({count / drain_s:,.0f}/s) |",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
