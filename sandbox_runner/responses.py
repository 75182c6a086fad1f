"""Rules a response must follow to be sent as HTTP, checked on both sides.

The runner checks what tenant code returned, so that a mistake becomes a
clear ``tenant_error`` for that one request. The dispatcher checks every
``Response`` frame again, because frames from a worker are untrusted: a
header with a line break, or a body on a 204, would let a tenant write into
the next response on a shared keep-alive connection.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox_runner import runtime

# RFC 9110 token characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Visible ASCII, space, tab and latin-1 bytes; no control characters.
_BAD_HEADER_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")

# Statuses that may not carry a body: a client reads no body after them,
# so body bytes would be taken as the start of the next response.
NO_BODY_STATUSES = frozenset({204, 304})
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024

TEXT_PLAIN = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"


class InvalidResponse(ValueError):
    """``fetch`` returned something that is not a valid HTTP response."""


def as_response(result: Any) -> runtime.Response:
    """Map a return value of ``fetch`` to a Response, as documented."""
    if isinstance(result, runtime.Response):
        return result
    if isinstance(result, (dict, list)):
        return runtime.Response.json(result)
    if isinstance(result, str):
        return runtime.Response(result, 200, [("content-type", TEXT_PLAIN)])
    if isinstance(result, (bytes, bytearray, memoryview)):
        return runtime.Response(bytes(result), 200, [("content-type", OCTETS)])
    if result is None:
        return runtime.Response(b"", 204)
    raise InvalidResponse(
        f"fetch returned {type(result).__name__}; expected Response, dict, "
        "list, str, bytes or None"
    )


def checked_parts(
    response: runtime.Response, max_body_bytes: int
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of a Response, with types and rules checked.

    Tenant code may have replaced any attribute after construction, so the
    types are checked here, not trusted.
    """
    status, headers, body = response.status, response.headers, response.body
    if type(status) is not int:
        raise InvalidResponse(f"status must be an int, not {type(status).__name__}")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes):
        raise InvalidResponse(f"body must be bytes, not {type(body).__name__}")
    if not isinstance(headers, list) or not all(
        isinstance(pair, tuple)
        and len(pair) == 2
        and all(type(part) is str for part in pair)
        for pair in headers
    ):
        raise InvalidResponse("headers must be a list of (str, str) pairs")

    problem = response_problem(status, headers, body, max_body_bytes)
    if problem is not None:
        raise InvalidResponse(problem)
    return status, headers, body


def response_problem(
    status: int, headers: list[tuple[str, str]], body: bytes, max_body_bytes: int
) -> str | None:
    """What makes this response unsendable, or None when it is fine."""
    if not 200 <= status <= 599:
        return f"status {status} is not in 200-599"
    if status in NO_BODY_STATUSES and body:
        return f"a {status} response cannot have a body"
    if len(body) > max_body_bytes:
        return (
            f"response body of {len(body)} bytes is over the limit of {max_body_bytes}"
        )
    return headers_problem(headers)


def headers_problem(headers: list[tuple[str, str]]) -> str | None:
    """What is wrong with these response headers, or None."""
    if len(headers) > MAX_HEADERS:
        return f"{len(headers)} headers is over the limit of {MAX_HEADERS}"
    size = 0
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name):
            return f"header name {name[:40]!r} is not a valid HTTP token"
        if _BAD_HEADER_VALUE.search(value):
            return f"header {name!r} has a character HTTP cannot carry"
        size += len(name) + len(value)
    if size > MAX_HEADER_BYTES:
        return f"headers of {size} bytes are over the limit of {MAX_HEADER_BYTES}"
    return None
