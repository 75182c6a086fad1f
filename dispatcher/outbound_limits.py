"""Outbound rate limits per tenant and target host.

A tenant's ``[egress] rate_limits`` names hosts and calls per second (the
published limits of Slack's or Notion's APIs are the model). One bucket per
tenant and host holds at most one call's worth, so calls are spread evenly
rather than bunched. ``ctx.fetch`` waits its turn (up to a bound, then it
raises); a delivery over the limit is put back for later, never dropped.
An upstream's own 429 with ``Retry-After`` slows that tenant's bucket for
that host: nothing is sent there until it has passed.
"""

from __future__ import annotations

import time

from dispatcher.ratelimit import TokenBucket


class OutboundLimits:
    """Buckets per (tenant, host), shared by fetches and deliveries."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self.paused_until: dict[tuple[str, str], float] = {}

    def wait_for(self, tenant: str, host: str, rate: float) -> float:
        """Take a turn now (0) or say how many seconds until there is one."""
        now = time.monotonic()
        pause = self.paused_until.get((tenant, host), 0.0) - now
        if pause > 0:
            return pause
        if rate <= 0:
            return 0.0
        bucket = self.buckets.get((tenant, host))
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[tenant, host] = TokenBucket(rate, 1)
        return bucket.take(now)

    def forget(self, tenant: str) -> None:
        """Drop a removed tenant's buckets and pauses."""
        for table in (self.buckets, self.paused_until):
            for key in [key for key in table if key[0] == tenant]:
                del table[key]

    def slow_down(self, tenant: str, host: str, seconds: float) -> None:
        """The upstream asked for a pause (429 with Retry-After): keep it."""
        until = time.monotonic() + seconds
        key = (tenant, host)
        self.paused_until[key] = max(self.paused_until.get(key, 0.0), until)
