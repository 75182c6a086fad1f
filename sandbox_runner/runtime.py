"""What tenant code sees: ``Request``, ``Response``, ``Env`` and ``Context``.

A tenant's script defines ``async def fetch(request, env, ctx)``. The runner
builds these objects from a ``Request`` frame and turns whatever ``fetch``
returns into a ``Response`` frame:

- a ``Response`` gives full control of status, headers and body;
- a ``dict`` or ``list`` becomes a JSON body with status 200;
- a ``str`` becomes ``text/plain``, ``bytes`` become
  ``application/octet-stream``; ``None`` is an empty 204.

Everything here is plain Python on purpose: tenant code may hold on to these
objects, and nothing in them reaches back into the runner.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

HeaderPairs = list[tuple[str, str]]
BindingValue = str | int | float | bool


class Headers(Mapping[str, str]):
    """Request or response headers: case-insensitive, every value kept.

    ``headers["x"]`` and ``headers.get("x")`` give the first value;
    ``get_all("x")`` gives every value in the order they arrived.
    """

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._pairs: HeaderPairs = [(k, v) for k, v in pairs]

    def __getitem__(self, name: str) -> str:
        wanted = name.lower()
        for key, value in self._pairs:
            if key.lower() == wanted:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for key, _ in self._pairs:
            lowered = key.lower()
            if lowered not in seen:
                seen.add(lowered)
                yield lowered

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self._pairs})

    def __repr__(self) -> str:
        return f"Headers({self._pairs!r})"

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in arrival order."""
        wanted = name.lower()
        return [value for key, value in self._pairs if key.lower() == wanted]

    def pairs(self) -> HeaderPairs:
        """All headers as (name, value) pairs, duplicates and order kept."""
        return list(self._pairs)


class Request:
    """One inbound HTTP request, fully read: the body is already bytes."""

    __slots__ = ("body", "headers", "method", "path", "query_string", "url")

    def __init__(
        self, method: str, url: str, headers: HeaderPairs, body: bytes
    ) -> None:
        path, query = _path_and_query(url)
        self.method = method
        self.url = url
        self.path = path or "/"
        self.query_string = query
        self.headers = Headers(headers)
        self.body = body

    @property
    def query(self) -> dict[str, list[str]]:
        """Query parameters, each name with all its values."""
        return parse_qs(self.query_string, keep_blank_values=True)

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as text; undecodable bytes are replaced."""
        return self.body.decode(encoding, errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` if it is not."""
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as exc:
            raise ValueError(f"request body is not valid JSON: {exc}") from None


def _path_and_query(url: str) -> tuple[str, str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        # The client's Host header made the URL unparseable (``Host: [``);
        # path and query are still whatever follows the authority.
        after_scheme = url.partition("://")[2]
        target = after_scheme[after_scheme.find("/") :] if "/" in after_scheme else ""
        path, _, query = target.partition("?")
        return path, query
    return parts.path, parts.query


class Response:
    """A full HTTP response: body, status and headers.

    ``headers`` may be a mapping or a list of pairs; use pairs to send one
    header twice (two ``Set-Cookie`` lines, say).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.status = status
        self.headers = _header_pairs(headers)

    @classmethod
    def json(
        cls,
        data: Any,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> Response:
        """A JSON response; ``content-type`` is set unless given."""
        pairs = _header_pairs(headers)
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("content-type", "application/json"))
        return cls(msgspec.json.encode(data), status, pairs)


def _header_pairs(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> HeaderPairs:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


class Env:
    """A tenant's bindings, read-only: ``env.REGION`` or ``env["REGION"]``.

    It holds exactly the vars and secrets of this tenant and nothing else.
    """

    __slots__ = ("_bindings",)
    _bindings: dict[str, BindingValue]

    def __init__(self, bindings: Mapping[str, BindingValue]) -> None:
        object.__setattr__(self, "_bindings", dict(bindings))

    def __getattr__(self, name: str) -> BindingValue:
        try:
            return self._bindings[name]
        except KeyError:
            raise AttributeError(f"no binding named {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("bindings are read-only")

    def __getitem__(self, name: str) -> BindingValue:
        return self._bindings[name]

    def __contains__(self, name: object) -> bool:
        return name in self._bindings

    def __iter__(self) -> Iterator[str]:
        return iter(self._bindings)

    def __repr__(self) -> str:
        # Names only: a repr ends up in logs and tracebacks.
        return f"Env({sorted(self._bindings)})"

    def get(self, name: str, default: Any = None) -> Any:
        """The binding ``name``, or ``default`` when there is none."""
        return self._bindings.get(name, default)

    def keys(self) -> list[str]:
        """The names of every binding of this tenant."""
        return list(self._bindings)


class Context:
    """Per-request facts and services that are not part of the request.

    ``await ctx.fetch(url, ...)`` makes an HTTP call through the host and
    returns its response; ``await ctx.deliver(url, ...)`` hands the host a
    call that must eventually succeed: it is stored durably, attempted at
    once and retried by the tenant's retry policy, and this returns as soon
    as it is stored. Both raise ``PermissionError`` when the tenant's egress
    policy refuses the destination.
    """

    __slots__ = ("_outbound", "request_id", "tenant")

    def __init__(self, tenant: str, request_id: str, outbound: Any = None) -> None:
        self.tenant = tenant
        self.request_id = request_id
        self._outbound = outbound

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | str | None = None,
        json: Any = None,
        timeout: float = 10.0,
    ) -> Any:
        """Call ``url`` now and return its response (a ``FetchResponse``)."""
        from sandbox_runner import outbound

        result = await self._send("fetch", method, url, headers, body, json, timeout)
        response_headers = Headers(result.headers)
        return outbound.FetchResponse(result.status, response_headers, result.body)

    async def deliver(
        self,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | str | None = None,
        json: Any = None,
        idempotency_key: str = "",
    ) -> Any:
        """Store a call to be made until it succeeds; returns a ``Delivery``."""
        from sandbox_runner import outbound

        result = await self._send(
            "deliver", method, url, headers, body, json, 30.0, idempotency_key
        )
        return outbound.Delivery(result.delivery_id)

    async def _send(
        self,
        kind: str,
        method: str,
        url: str,
        headers: Any,
        body: bytes | str | None,
        json: Any,
        timeout: float,
        idempotency_key: str = "",
    ) -> Any:
        from sandbox_runner import frames, outbound

        if self._outbound is None:
            raise RuntimeError("outbound calls are only possible inside fetch")
        for name, value in (("url", url), ("method", method), ("key", idempotency_key)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
        payload, implied = outbound.request_body(body, json)
        frame = frames.Outbound(
            id=0,
            request_id=self.request_id,
            kind=kind,
            method=method.upper(),
            url=url,
            headers=implied + outbound.header_pairs(headers),
            body=payload,
            timeout_s=float(timeout),
            idempotency_key=idempotency_key,
        )
        result = await self._outbound.call(frame)
        outbound.raise_for_refusal(result)
        return result
