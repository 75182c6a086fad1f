"""A fake upstream API on 127.0.0.1 that records requests and fails on command.

Stands in for Notion, Airtable or Salesforce in tests: every request is
recorded (path, headers, body, time), and the answers come from a script
of (status, headers) that tests set, falling back to a default.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request the upstream saw."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int

    @property
    def body_sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class FakeUpstream:
    """A threaded HTTP server on a free loopback port; see the module note."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: deque[tuple[int, dict[str, str]]] = deque()
        self.default_status = 200
        # Paths that answer only after this many seconds: a slow upstream.
        self.delays: dict[str, float] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next requests with these statuses, in order."""
        with self.lock:
            self.script.extend((status, headers or {}) for status in statuses)

    def next_answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            return self.script.popleft() if self.script else (self.default_status, {})

    def record(self, entry: Received) -> None:
        with self.lock:
            self.received.append(entry)

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                time.sleep(upstream.delays.get(self.path, 0.0))
                status, headers = upstream.next_answer()
                upstream.record(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                        status,
                    )
                )
                reply = b'{"ok": true}'
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
