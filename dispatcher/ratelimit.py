"""Inbound rate limits: one token bucket per tenant, before any worker.

A tenant's ``[rate_limit]`` gives a rate and a burst, and optionally a rate
per route prefix (the longest matching prefix applies, beside the tenant's
own limit). Each request takes a
token; an empty bucket is a 429 ``rate_limited`` with ``Retry-After`` and
the ``RateLimit-Policy``/``RateLimit`` headers, answered by the dispatcher
without touching a worker. Buckets are keyed by tenant id, not by version,
so a hot reload neither refills nor empties them; a reload that changes the
numbers applies them to the tokens already there.

On the hot path this is a dict lookup and a few float operations: the
event loop is single-threaded, so no lock is needed.
"""

from __future__ import annotations

import math
import posixpath
import time

from dispatcher.errors import RateLimited
from dispatcher.tenants import Tenant


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self, now: float) -> float:
        """Take a token; 0 when taken, else the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """The buckets of every tenant that has a limit."""

    def __init__(self) -> None:
        self.buckets: dict[str, TokenBucket] = {}

    def check(self, tenant: Tenant, path: str = "/") -> None:
        """Let the request through, or raise RateLimited."""
        limit = tenant.config.rate_limit
        # The route's bucket first: a request it refuses must not spend the
        # tenant's own budget, or one flooded route would starve the rest.
        if limit.routes:
            prefix = longest_prefix(path, limit.routes)
            if prefix is not None:
                rate = limit.routes[prefix]
                self.take(f"{tenant.id} {prefix}", rate, max(1, math.ceil(rate)))
        if limit.requests_per_second > 0:
            burst = limit.burst or max(1, math.ceil(limit.requests_per_second))
            self.take(tenant.id, limit.requests_per_second, burst)

    def forget(self, tenant_id: str) -> None:
        """Drop a removed tenant's buckets, its routes' ones too."""
        # Keys are the tenant id, or the id and a route prefix after a space.
        for key in [k for k in self.buckets if k.split(" ", 1)[0] == tenant_id]:
            del self.buckets[key]

    def take(self, key: str, rate: float, burst: int) -> None:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(rate, burst)
        elif (bucket.rate, bucket.burst) != (rate, burst):
            bucket.rate, bucket.burst = rate, burst
        wait_s = bucket.take(time.monotonic())
        if wait_s:
            raise rate_limited(rate, burst, wait_s)


def longest_prefix(path: str, routes: dict[str, float]) -> str | None:
    """The longest route prefix ``path`` falls under, whole segments only.

    The path is normalised first (``//a``, ``/./a``, ``/x/../a`` are ``/a``):
    a tenant's code may well treat them alike, so the limit must too.
    """
    path = "/" + posixpath.normpath(path).lstrip("/")
    matches = [
        prefix
        for prefix in routes
        if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")
    ]
    return max(matches, key=len, default=None)


def rate_limited(rate: float, burst: int, wait_s: float) -> RateLimited:
    reset = max(1, math.ceil(wait_s))
    error = RateLimited(f"over the limit of {rate:g} requests a second")
    error.headers = (
        ("retry-after", str(reset)),
        ("ratelimit-policy", f"{rate:g};w=1;burst={burst}"),
        ("ratelimit", f"limit={burst}, remaining=0, reset={reset}"),
    )
    return error
