"""Outbound HTTP for tenant code: ``ctx.fetch`` and ``ctx.deliver``.

A worker has no network of its own (the sandbox refuses sockets). Tenant
code asks the host instead: each call becomes an ``Outbound`` frame, and
the host - which checks the tenant's egress policy and budget - answers
with an ``OutboundResult``. Calls are multiplexed like requests: each has
an id, and many may be under way at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from sandbox_runner import frames
from sandbox_runner.runtime import Headers

DEFAULT_TIMEOUT_S = 10.0


class OutboundRefused(PermissionError):
    """The host refused the call: egress policy, region, budget, or a malformed call."""


class OutboundFailed(ConnectionError):
    """The call was allowed but did not get an answer (network, timeout)."""


class FetchResponse:
    """An upstream's answer to ``ctx.fetch``."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class Delivery:
    """A delivery the host has stored; it is attempted and retried there."""

    __slots__ = ("id",)

    def __init__(self, delivery_id: str) -> None:
        self.id = delivery_id

    def __repr__(self) -> str:
        return f"Delivery({self.id!r})"


class OutboundChannel:
    """Sends Outbound frames and matches the host's answers to them."""

    def __init__(
        self, send: Callable[[object], None], max_body_bytes: int = 2**62
    ) -> None:
        self.send = send
        # A frame over the host's limit would end the worker; a body over
        # this one is refused here instead, in the tenant's own code.
        self.max_body_bytes = max_body_bytes
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[frames.OutboundResult]] = {}

    async def call(self, frame: frames.Outbound) -> frames.OutboundResult:
        if len(frame.body) > self.max_body_bytes:
            raise ValueError(
                f"an outbound body is limited to {self.max_body_bytes} bytes"
            )
        frame.id = next(self.ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[frames.OutboundResult] = loop.create_future()
        self.waiting[frame.id] = future
        try:
            self.send(frame)
            return await future
        finally:
            self.waiting.pop(frame.id, None)

    def settle(self, result: frames.OutboundResult) -> None:
        future = self.waiting.get(result.id)
        if future is not None and not future.done():
            future.set_result(result)


def request_body(
    body: bytes | str | None, json: Any
) -> tuple[bytes, list[tuple[str, str]]]:
    """The bytes to send, and the content type implied by ``json=``."""
    if json is not None and body is not None:
        raise TypeError("pass body= or json=, not both")
    if json is not None:
        return msgspec.json.encode(json), [("content-type", "application/json")]
    if isinstance(body, str):
        return body.encode(), []
    if body is None:
        return b"", []
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes or str, not {type(body).__name__}")
    return bytes(body), []


def header_pairs(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> list[tuple[str, str]]:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    checked = []
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {name!r}: names and values must be str")
        checked.append((name, value))
    return checked


def raise_for_refusal(result: frames.OutboundResult) -> None:
    """Turn a refused or failed call into the exception tenant code sees."""
    if not result.error:
        return
    refusals = (
        "egress_denied",
        "budget_exceeded",
        "region_denied",
        "rate_limited",
        "invalid_request",
    )
    if result.error in refusals:
        raise OutboundRefused(f"{result.error}: {result.message}")
    raise OutboundFailed(f"{result.error}: {result.message}")
