"""How the dispatcher's log lines look: plain for a terminal, JSON for a pipeline.

``--log-format json`` writes one JSON object per line, ready for a log
shipper: time, level, logger, message, and - on access lines - the request's
fields (tenant, method, path, status, code, duration_ms, pid, start,
request_id) as keys of their own, so nothing has to parse the message.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record's ``fields`` extra become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": format_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def format_time(created: float) -> str:
    """UTC, ISO 8601, milliseconds: what log pipelines parse without help."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(level: str, style: str = "plain") -> None:
    """Log to stderr at ``level``, as plain text or as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if style == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # httpx logs every request's full URL at INFO, and a tenant's URL may
    # hold its secret (a webhook token); the gateway logs calls redacted.
    # watchfiles logs each batch of changes, which the reloader reports.
    for chatty in ("httpx", "httpcore", "watchfiles"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
