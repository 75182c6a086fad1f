"""uvicorn's HTTP protocol, answering unparseable requests in our JSON shape.

A request the HTTP parser refuses (a NUL byte in a header, a broken request
line) never reaches the ASGI app, so uvicorn answers it with a plain-text
400 of its own. Clients of Switchyard rely on every error being JSON in the
documented shape, so this subclass replaces that one answer.

``send_400_response`` is not part of uvicorn's public API; if a uvicorn
release renames it, these requests get uvicorn's plain-text 400 again, which
``tests/test_routing.py`` would catch.
"""

from __future__ import annotations

import os

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class SwitchyardHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose parser errors are JSON error responses."""

    def send_400_response(self, msg: str) -> None:
        request_id = os.urandom(8).hex()
        body = orjson.dumps(
            {
                "error": {
                    "code": "malformed_request",
                    "message": "the request is not valid HTTP/1.1",
                    "tenant": None,
                    "request_id": request_id,
                }
            }
        )
        head = (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"x-request-id: %s\r\n"
            b"connection: close\r\n\r\n"
        ) % (len(body), request_id.encode())
        self.transport.write(head + body)
        self.transport.close()
