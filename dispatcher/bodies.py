"""Reading request bodies: whole, bounded in size, time and total memory.

A tenant is sent its request body in one frame, so the dispatcher holds the
whole body first. Three limits keep that from becoming a way to exhaust the
host: a per-request maximum (413), a deadline for the body to arrive (408,
so a client trickling bytes cannot hold memory forever), and a host-wide
budget of bytes held in bodies not yet handed to a worker (503).
"""

from __future__ import annotations

import asyncio
from typing import Any

from dispatcher.errors import DispatcherBusy, PayloadTooLarge, RequestTimeout

Scope = dict[str, Any]
Receive = Any

# How much of an over-limit body is read and dropped so that the client gets
# its 413 rather than a reset connection; past this the connection is cut.
DISCARD_LIMIT_BYTES = 64 * 1024 * 1024
DISCARD_TIMEOUT_S = 10.0


class BodyBudget:
    """Bytes held in request bodies across the dispatcher, with a ceiling."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def reserve(self, size: int) -> None:
        """Count ``size`` more bytes as held, or refuse with 503."""
        if self.held + size > self.max_bytes:
            raise DispatcherBusy("too many request bodies are being received")
        self.held += size

    def release(self, size: int) -> None:
        self.held -= size


async def read_body(
    scope: Scope,
    receive: Receive,
    max_bytes: int,
    timeout_s: float,
    budget: BodyBudget,
) -> bytes:
    """Read the whole body, refusing one over ``max_bytes`` as early as can be."""
    declared = content_length(scope)
    if declared is not None and declared > max_bytes:
        raise await payload_too_large(receive, max_bytes, declared)

    held = 0
    try:
        async with asyncio.timeout(timeout_s):
            chunks: list[bytes] = []
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                if held + len(chunk) > max_bytes:
                    raise await payload_too_large(receive, max_bytes, None)
                budget.reserve(len(chunk))
                held += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    finally:
        # Once joined, the body is the request's; the frame holds it next.
        budget.release(held)


def content_length(scope: Scope) -> int | None:
    """The declared Content-Length, if the client sent one."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def payload_too_large(
    receive: Receive, max_bytes: int, declared: int | None
) -> PayloadTooLarge:
    """The 413 for a body over the limit, after discarding what is left of it.

    A client still sending its body does not read an early answer: if the
    connection is closed under it, it sees a reset instead of the 413. So a
    body of reasonable size is read to its end (and thrown away, never
    held), and the connection stays usable; a huge one is cut off.
    """
    error = PayloadTooLarge(f"request body is over the limit of {max_bytes} bytes")
    if declared is None or declared <= DISCARD_LIMIT_BYTES:
        error.keep_connection = await discard_body(receive)
    return error


async def discard_body(receive: Receive) -> bool:
    """Read and drop the rest of a body; False if it was too long or slow."""
    discarded = 0
    try:
        async with asyncio.timeout(DISCARD_TIMEOUT_S):
            while discarded <= DISCARD_LIMIT_BYTES:
                message = await receive()
                discarded += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return bool(message["type"] == "http.request")
    except TimeoutError:
        pass
    return False
