"""The console: one static page on the management API, for operators.

The page (``dispatcher/console/``: HTML, plain JavaScript modules, CSS; no
build step, nothing loaded from elsewhere) lists the tenants, shows one with its
log, deliveries and dead letters, and edits a declarative adapter. It is
served by the management listener at ``/console`` and reads everything
through the same JSON API as any other client, with the bearer token the
operator types in.

These files hold no data, so they are the only paths served without
the token (``CONSOLE_PATHS``, exempted in ``BearerAuth``): a browser has
to load the page before the page can ask for a token. The page is sent
with a content security policy that allows its own script and style and
nothing else, so even a tenant's string that slipped into markup could
not run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

STATIC = Path(__file__).resolve().parent / "console"
CONSOLE_FILES = {
    "/console": ("index.html", "text/html; charset=utf-8"),
    "/console/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console/common.js": ("common.js", "text/javascript; charset=utf-8"),
    "/console/editor.js": ("editor.js", "text/javascript; charset=utf-8"),
    "/console/console.css": ("console.css", "text/css; charset=utf-8"),
}
CONSOLE_PATHS = frozenset(CONSOLE_FILES)
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def add_console_routes(app: FastAPI) -> None:
    """Serve the console's files at ``CONSOLE_PATHS``, read once here."""
    for path, (name, media_type) in CONSOLE_FILES.items():
        body = (STATIC / name).read_bytes()
        app.add_api_route(
            path,
            static_file(body, media_type),
            methods=["GET"],
            include_in_schema=False,
        )


def static_file(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    """A route handler that answers ``body``, with the console's headers."""

    async def serve() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return serve
