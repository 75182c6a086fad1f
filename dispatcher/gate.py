"""Admission per tenant: how many requests run, how many wait, how long.

Requests past the tenant's capacity wait in a bounded queue; past the
queue, or after waiting as long as they would be given to run, the answer
is 503 ``tenant_busy`` with ``Retry-After``. One busy tenant therefore
holds a bounded amount of memory and never an unbounded line of clients.
"""

from __future__ import annotations

import asyncio

from dispatcher.errors import TenantBusy


class TenantGate:
    """Bounds the requests in flight and waiting for one tenant.

    A request waits at most as long as it would be given to run: past that
    the client learns the tenant is busy instead of waiting without end.
    """

    def __init__(self, max_concurrency: int, max_queue: int, max_wait_s: float) -> None:
        self.slots = asyncio.Semaphore(max_concurrency)
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.waiting = 0
        # The tenant version whose limits these are.
        self.tenant: object = None

    async def __aenter__(self) -> None:
        if not self.slots.locked():
            await self.slots.acquire()
            return
        if self.waiting >= self.max_queue:
            raise TenantBusy("the tenant has too many requests waiting")

        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self.slots.acquire()
        except TimeoutError:
            raise TenantBusy("the tenant stayed busy for the whole wait") from None
        finally:
            self.waiting -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.slots.release()
