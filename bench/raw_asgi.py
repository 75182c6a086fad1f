"""The ceiling of the dispatch benchmark: the least an ASGI app can do.

It answers every HTTP request with the small JSON body a benchmark tenant
sends, without looking at headers or body, so what it costs is uvicorn's
own HTTP handling and nothing more. No Python server on the same machine,
with the same event loop and parser, can answer faster.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"tenant":"c0","ok":true}'
# Built once: uvicorn only reads these messages, and building them per
# request would add the app's own cost to what should be uvicorn's alone.
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ],
}
END = {"type": "http.response.body", "body": BODY}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with ``BODY``."""
    if scope["type"] == "http":
        await send(START)
        await send(END)
