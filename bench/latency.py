"""Latency of single requests - cold starts and warm hits - one at a time.

wrk says how many requests a server answers; it cannot say how long one
particular request took. This module sends one GET at a time over a
kept-alive HTTP/1.1 connection and times it from the first byte written
to the last byte read, which is what a client of a tenant sees. It speaks
just enough HTTP for the benchmark's own servers: a status line, headers,
and a body by ``content-length`` or in chunks.

Requests to the servers being compared are interleaved - tenant 1 on each
server, then tenant 2 on each - so that a disturbance of the machine lands
on all of them alike and their ratio stays fair.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from throughput import BenchFailed

REQUEST = "GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nx-customer-id: {tenant}\r\n\r\n"
REQUEST_TIMEOUT_S = 30.0
# A pass over many tenants that takes longer than this has gone wrong.
PASS_TIMEOUT_S = 300.0


@dataclass
class Latencies:
    """The times of the requests of one kind, in ms, and the failures."""

    samples_ms: list[float] = field(default_factory=list)
    failed: int = 0

    def add(self, status: int, elapsed_ms: float) -> None:
        if status == 200:
            self.samples_ms.append(elapsed_ms)
        else:
            self.failed += 1

    def percentile(self, share: float) -> float:
        """Nearest-rank percentile; NaN when nothing answered."""
        if not self.samples_ms:
            return math.nan
        ordered = sorted(self.samples_ms)
        rank = max(1, math.ceil(share * len(ordered)))
        return ordered[rank - 1]


class Connection:
    """One kept-alive HTTP/1.1 connection to a server on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, tenant: str) -> tuple[int, float]:
        """GET / for ``tenant``: the status (0: no answer) and the ms it took."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                reader, writer = await self.open()
                started = time.perf_counter()
                writer.write(REQUEST.format(tenant=tenant).encode())
                status, keep_alive = await read_response(reader)
                elapsed_ms = (time.perf_counter() - started) * 1000
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError):
            self.close()
            return 0, math.nan
        if not keep_alive:
            self.close()
        return status, elapsed_ms

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port
            )
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one whole response: its status, and whether the connection stays."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    status = int(status_line.split()[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()

    if headers.get("transfer-encoding") == "chunked":
        await skip_chunks(reader)
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection") != "close"


async def skip_chunks(reader: asyncio.StreamReader) -> None:
    """Read a chunked body to its end (the benchmark servers send no trailers)."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        await reader.readexactly(size + 2)  # the chunk and its CRLF
        if size == 0:
            return


def warm_tenants(port: int, tenants: list[str], lanes: int = 8) -> Latencies:
    """One request to each tenant, ``lanes`` at a time; fails unless all 200."""
    latencies = asyncio.run(_warm_tenants(port, tenants, lanes))
    if latencies.failed:
        raise BenchFailed(
            f"{latencies.failed} of {len(tenants)} tenants did not answer 200 "
            f"while warming the server on port {port}"
        )
    return latencies


async def _warm_tenants(port: int, tenants: list[str], lanes: int) -> Latencies:
    latencies = Latencies()

    async def lane(share: list[str]) -> None:
        connection = Connection(port)
        for tenant in share:
            latencies.add(*await connection.get(tenant))
        connection.close()

    async with asyncio.timeout(PASS_TIMEOUT_S):
        await asyncio.gather(*(lane(tenants[i::lanes]) for i in range(lanes)))
    return latencies


def interleaved(ports: dict[str, int], tenants: list[str]) -> dict[str, Latencies]:
    """Each tenant's request to every server in turn, one request at a time."""
    return asyncio.run(_interleaved(ports, tenants))


async def _interleaved(
    ports: dict[str, int], tenants: list[str]
) -> dict[str, Latencies]:
    connections = {name: Connection(port) for name, port in ports.items()}
    results = {name: Latencies() for name in ports}
    async with asyncio.timeout(PASS_TIMEOUT_S):
        for tenant in tenants:
            for name, connection in connections.items():
                results[name].add(*await connection.get(tenant))
    for connection in connections.values():
        connection.close()
    return results


def warm_hits(port: int, many: list[str], one: str) -> tuple[Latencies, Latencies]:
    """Warm requests spread over ``many`` tenants, each paired with one to ``one``."""
    return asyncio.run(_warm_hits(port, many, one))


async def _warm_hits(
    port: int, many: list[str], one: str
) -> tuple[Latencies, Latencies]:
    connection = Connection(port)
    spread, single = Latencies(), Latencies()
    async with asyncio.timeout(PASS_TIMEOUT_S):
        for tenant in many:
            spread.add(*await connection.get(tenant))
            single.add(*await connection.get(one))
    connection.close()
    return spread, single
