"""Outbound calls of tenant code, made by the host under the tenant's policy.

Tenant code has no network: it sends ``Outbound`` frames, and the worker's
host hands them here. ``EgressGateway`` checks each call against the
tenant's egress allowlist (hosts, ``http``/``https`` only, deny by default)
and refuses private, loopback and link-local addresses - cloud metadata
among them - unless the operator allowed a network explicitly. Then a
``fetch`` is made at once with httpx (no redirects followed: a redirect
could lead anywhere, so tenant code follows it itself, checked again), and
a ``deliver`` is stored for the delivery loop to attempt and retry.

XXX: the name is resolved to check its addresses, then httpx resolves it
again to connect; a name whose answer changes in between (DNS rebinding)
could slip past the private-address check. Connecting to the checked
address, with the name only for TLS and Host, would close that gap.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import math
import re
import socket
from collections import Counter
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from dispatcher.outbound_limits import OutboundLimits
from dispatcher.tenant_log import redact
from dispatcher.tenants import Tenant
from sandbox_runner import frames

log = logging.getLogger("dispatcher.outbound")

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
MAX_TIMEOUT_S = 60.0
MAX_URL_CHARS = 8192
# How long ctx.fetch waits for its turn under a rate limit before raising.
MAX_WAIT_S = 10.0
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class OutboundGateway(Protocol):
    """Makes or stores the outbound calls of tenant code."""

    async def handle(
        self, tenant: Tenant, frame: frames.Outbound
    ) -> frames.OutboundResult: ...


class NoOutbound:
    """The gateway of a host that allows no outbound calls at all."""

    async def handle(
        self, tenant: Tenant, frame: frames.Outbound
    ) -> frames.OutboundResult:
        return refused(frame, "egress_denied", "outbound calls are disabled")


NO_OUTBOUND = NoOutbound()


class EgressDenied(Exception):
    """A destination the tenant's policy does not allow; says which rule."""

    code = "egress_denied"


class InvalidOutbound(EgressDenied):
    """A call HTTP cannot carry: a malformed URL, port or header."""

    code = "invalid_request"


class RegionDenied(EgressDenied):
    """A destination the operator placed outside the tenant's region."""

    code = "region_denied"


def refused(frame: frames.Outbound, code: str, message: str) -> frames.OutboundResult:
    return frames.OutboundResult(frame.id, error=code, message=message)


class EgressPolicy:
    """Where tenants may call: their allowlist, and the operator's networks."""

    def __init__(
        self, private_networks: list[Network], host_regions: dict[str, str]
    ) -> None:
        self.private_networks = private_networks
        # Which region each host serves from, as the operator declared.
        self.host_regions = {h.lower(): r for h, r in host_regions.items()}

    async def check(self, tenant: Tenant, frame: frames.Outbound) -> None:
        """Raise EgressDenied unless the call is well formed and allowed now."""
        check_shape(frame)
        await self.check_destination(tenant, frame.url)

    async def check_destination(self, tenant: Tenant | None, url: str) -> None:
        """Raise EgressDenied unless ``url`` may be called for ``tenant`` now.

        Checked for every call, and again before every attempt of a stored
        delivery: rules, regions and DNS answers change while it waits.
        With no tenant (one deleted since), only the operator's networks
        apply.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise EgressDenied(f"scheme {parts.scheme!r} is not http or https")
        host = parts.hostname
        if not host:
            raise EgressDenied("the URL names no host")
        if tenant is not None:
            if not host_allowed(host, tenant.config.egress.allow):
                raise EgressDenied(
                    f"host {host!r} is not in the tenant's egress allowlist"
                )
            self.check_region(tenant, host)
        port = port_of(url)
        for address in await resolve(host, port):
            self.check_address(host, address)

    def check_region(self, tenant: Tenant, host: str) -> None:
        """A tenant with a region calls only hosts declared in it, or none."""
        home = tenant.config.region
        declared = self.host_regions.get(host.lower())
        if home and declared and declared != home:
            raise RegionDenied(
                f"host {host!r} is in region {declared!r}, the tenant in {home!r}"
            )

    def check_address(self, host: str, address: str) -> None:
        ip = ipaddress.ip_address(address)
        if ip.is_global:
            return
        if any(ip in network for network in self.private_networks):
            return
        raise EgressDenied(f"host {host!r} resolves to the non-public address {ip}")


# A URL is printable ASCII, no spaces: anything else is either rejected by
# the HTTP client later (too late: a stored delivery could never be sent)
# or would carry a line break into the dispatcher's log.
_URL = re.compile(r"^[\x21-\x7e]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")


# Headers the HTTP client sets from the call itself: a tenant's own would
# contradict the body's framing (Content-Length), or name a host other than
# the one the egress rules checked (Host).
OWNED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    }
)
MAX_HEADERS = 100
MAX_HEADER_VALUE_CHARS = 8192


def check_shape(frame: frames.Outbound) -> None:
    """Raise InvalidOutbound for a call HTTP cannot carry, or should not."""
    if len(frame.url) > MAX_URL_CHARS or not _URL.match(frame.url):
        raise InvalidOutbound(
            "the URL must be printable ASCII without spaces, "
            f"at most {MAX_URL_CHARS} characters (percent-encode the rest)"
        )
    port_of(frame.url)
    if "@" in urlsplit(frame.url).netloc:
        raise InvalidOutbound(
            "credentials in the URL would be logged and listed: send them in "
            "an Authorization header"
        )
    if len(frame.method) > 32 or not _HEADER_NAME.match(frame.method):
        raise InvalidOutbound(f"method {frame.method[:32]!r} is not an HTTP token")
    if frame.method.upper() in ("CONNECT", "TRACE"):
        raise InvalidOutbound(f"method {frame.method} is not for calling an API")
    if not math.isfinite(frame.timeout_s) or frame.timeout_s <= 0:
        raise InvalidOutbound("the timeout must be a positive number of seconds")
    check_headers([*frame.headers, ("idempotency-key", frame.idempotency_key)])


def check_headers(headers: list[tuple[str, str]]) -> None:
    if len(headers) > MAX_HEADERS:
        raise InvalidOutbound(f"at most {MAX_HEADERS} headers")
    for name, value in headers:
        if not _HEADER_NAME.match(name):
            raise InvalidOutbound(f"header name {name[:64]!r} is not an HTTP token")
        if name.lower() in OWNED_HEADERS:
            raise InvalidOutbound(f"header {name!r} is set by the dispatcher")
        if len(value) > MAX_HEADER_VALUE_CHARS:
            raise InvalidOutbound(
                f"the value of header {name!r} is over {MAX_HEADER_VALUE_CHARS} "
                "characters"
            )
        if not _HEADER_VALUE.match(value):
            raise InvalidOutbound(
                f"the value of header {name!r} must be printable ASCII: encode "
                "other text first (percent-encoding, or RFC 8187's UTF-8'')"
            )


def port_of(url: str) -> int:
    """The URL's port, its scheme's default if none; InvalidOutbound if bad."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidOutbound(
            "the URL's host or port cannot be read (a port is 1 to 65535)"
        ) from None
    if port == 0:
        raise InvalidOutbound("port 0 cannot be called")
    return port or (443 if parts.scheme == "https" else 80)


def host_allowed(host: str, allow: list[str]) -> bool:
    """``host`` matches an entry: exact, or ``*.example.com`` for subdomains."""
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allow)


async def resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EgressDenied(f"host {host!r} does not resolve ({exc.strerror})") from None
    return sorted({str(info[4][0]) for info in infos})


class EgressGateway:
    """Fetches and stores deliveries for tenant code; see the module note."""

    def __init__(
        self,
        policy: EgressPolicy,
        deliveries: DeliverySink,
        limits: OutboundLimits | None = None,
    ) -> None:
        self.policy = policy
        self.deliveries = deliveries
        self.limits = limits or OutboundLimits()
        # Outbound calls per (tenant, outcome): made, refused, failed, stored.
        self.counts: Counter[tuple[str, str]] = Counter()
        self.client = httpx.AsyncClient(
            follow_redirects=False, limits=httpx.Limits(max_connections=200)
        )

    async def handle(
        self, tenant: Tenant, frame: frames.Outbound
    ) -> frames.OutboundResult:
        try:
            await self.policy.check(tenant, frame)
        except EgressDenied as exc:
            self.counts[tenant.id, exc.code] += 1
            log.info(
                "tenant %s: outbound call refused: %s",
                tenant.id,
                redact(str(exc), tenant),
            )
            result = refused(frame, exc.code, str(exc))
            if frame.kind == "deliver" and isinstance(exc, RegionDenied):
                reason = f"{exc.code}: {exc}"
                result.delivery_id = await self.deliveries.add(tenant, frame, reason)
            return result

        if frame.kind == "deliver":
            delivery_id = await self.deliveries.add(tenant, frame)
            self.counts[tenant.id, "stored"] += 1
            log.info(
                "tenant %s: delivery %s stored for %s",
                tenant.id,
                delivery_id,
                redact(frame.url, tenant),
            )
            return frames.OutboundResult(frame.id, delivery_id=delivery_id)
        result = await self.fetch(tenant, frame)
        self.counts[tenant.id, "failed" if result.error else "made"] += 1
        return result

    def forget(self, tenant_id: str) -> None:
        """Drop a removed tenant's outbound counts."""
        for key in [key for key in self.counts if key[0] == tenant_id]:
            del self.counts[key]

    async def wait_turn(self, tenant: Tenant, host: str) -> bool:
        """Wait for the tenant's turn at ``host``; False past MAX_WAIT_S."""
        rate = tenant.config.egress.rate_limits.get(host, 0.0)
        waited = 0.0
        while wait_s := self.limits.wait_for(tenant.id, host, rate):
            if waited + wait_s > MAX_WAIT_S:
                return False
            await asyncio.sleep(wait_s)
            waited += wait_s
        return True

    async def fetch(
        self, tenant: Tenant, frame: frames.Outbound
    ) -> frames.OutboundResult:
        host = urlsplit(frame.url).hostname or ""
        if not await self.wait_turn(tenant, host):
            message = (
                f"over the rate limit for {host!r} for longer than {MAX_WAIT_S:g} s"
            )
            return refused(frame, "rate_limited", message)
        timeout = min(max(frame.timeout_s, 0.1), MAX_TIMEOUT_S)
        request = self.client.build_request(
            frame.method,
            frame.url,
            headers=frame.headers,
            content=frame.body,
            timeout=timeout,
        )
        try:
            # The tenant's timeout covers the whole call: connecting, the
            # answer's headers and its body.
            async with asyncio.timeout(timeout):
                response = await self.client.send(request, stream=True)
                body = await read_capped(response)
        except (httpx.HTTPError, TimeoutError) as exc:
            url = redact(frame.url, tenant)
            failure = type(exc).__name__
            log.info("tenant %s: fetch of %s failed: %s", tenant.id, url, failure)
            return refused(frame, "upstream_error", type(exc).__name__)
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
        ]
        if response.status_code == 429:
            pause = retry_after_s(response.headers.get("retry-after"))
            if pause:
                self.limits.slow_down(tenant.id, host, pause)
        log.info(
            "tenant %s: fetch %s %s -> %d",
            tenant.id,
            frame.method,
            redact(frame.url, tenant),
            response.status_code,
        )
        return frames.OutboundResult(frame.id, response.status_code, headers, body)

    async def close(self) -> None:
        await self.client.aclose()


async def read_capped(response: httpx.Response) -> bytes:
    """The response body, refused past MAX_RESPONSE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise httpx.DecodingError("response body over the size limit")
            chunks.append(chunk)
    finally:
        await response.aclose()
    return b"".join(chunks)


def retry_after_s(value: str | None) -> float:
    """Seconds from a Retry-After header in its delta-seconds form, else 0."""
    try:
        return max(0.0, float((value or "").strip()))
    except ValueError:
        return 0.0


class DeliverySink(Protocol):
    """Stores a delivery durably and returns its id."""

    async def add(
        self, tenant: Tenant, frame: frames.Outbound, refused_because: str = ""
    ) -> str: ...
