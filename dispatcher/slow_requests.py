"""Slow requests as a tenant's log keeps them: where each one spent its time.

A worker reports a request that ran past the tenant's ``slowlog_ms`` with
the stack of the tenant's code (a ``SlowRequest`` frame, taken by
``sandbox_runner/slowlog.py``). ``TenantLog.record_slow_request`` cleans the
stack with ``bounded_stack`` and keeps the last few records per tenant; the
status page and live tails read them as JSON-ready dicts (``as_dict``), the
tenant's log as one block of text (``as_text``)::

    slow request 5f0c3a9e1d2b4c6a: 2013 ms
      worker.py:12 in fetch: time.sleep(2)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox_runner.frames import MAX_STACK_ENTRIES, MAX_STACK_TEXT, StackEntry

# Slow requests kept per tenant, newest last.
KEPT_PER_TENANT = 20


@dataclass(frozen=True)
class StackLine:
    """One frame of tenant code: file (relative to its folder), line, source."""

    file: str
    line: int
    function: str
    code: str

    def as_text(self) -> str:
        return f"  {self.file}:{self.line} in {self.function}: {self.code}"


@dataclass(frozen=True)
class SlowRequestRecord:
    """One slow request: when it was reported, by which worker, its stack."""

    at: float
    request_id: str
    pid: int
    elapsed_ms: float
    stack: tuple[StackLine, ...]

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON types, stack innermost last."""
        return {
            "at": self.at,
            "request_id": self.request_id,
            "pid": self.pid,
            "elapsed_ms": self.elapsed_ms,
            "stack": [
                {
                    "file": entry.file,
                    "line": entry.line,
                    "function": entry.function,
                    "code": entry.code,
                }
                for entry in self.stack
            ],
        }

    def as_text(self) -> str:
        """A heading, then one indented line per frame, innermost last."""
        heading = f"slow request {self.request_id}: {self.elapsed_ms:.0f} ms"
        if not self.stack:
            # Waiting before its first line ran, or in code outside the
            # tenant's folder only (a declarative adapter, say).
            return f"{heading}\n  (no frame of the tenant's own code)"
        return "\n".join([heading, *(entry.as_text() for entry in self.stack)])


def bounded_stack(
    stack: Sequence[StackEntry], clean: Callable[[str], str]
) -> tuple[StackLine, ...]:
    """The innermost entries of a worker's stack, every text ``clean``-ed.

    ``clean`` redacts the tenant's secrets and replaces control characters;
    each field is cut after that, so that no cut splits a secret's value.
    """

    def field(text: str) -> str:
        return clean(text)[:MAX_STACK_TEXT]

    return tuple(
        StackLine(field(e.file), max(e.line, 0), field(e.function), field(e.code))
        for e in stack[-MAX_STACK_ENTRIES:]
    )
