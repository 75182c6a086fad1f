"""The frames that the dispatcher and a worker exchange over pipes.

A frame on the wire is a 4-byte big-endian length followed by a msgpack body
that decodes to exactly one of the Structs below (a tagged union: the tag
field ``t`` names the type). One encoder and one decoder serve each pipe.

Host to worker: ``Boot`` (once, first), ``Request``, ``Cancel``,
``Shutdown``, ``Ping``, ``OutboundResult``. Worker to host: ``Ready`` (once,
first, carries the protocol version), ``Response``, ``Failure``, ``Log``,
``Pong``, ``Outbound``, ``SlowRequest``.

Requests are multiplexed: every ``Request`` carries an id chosen by the host,
and the worker answers with a ``Response`` or ``Failure`` of the same id, in
whatever order they finish.

This module is shared by both sides, so it imports nothing but msgspec.
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec

PROTOCOL_VERSION = 2

# Room for headers and framing on top of the largest body a frame may carry.
FRAME_OVERHEAD_BYTES = 1024 * 1024

LENGTH_PREFIX = struct.Struct(">I")

HeaderPairs = list[tuple[str, str]]
BindingValue = str | int | float | bool


class Boot(msgspec.Struct, tag="boot", tag_field="t"):
    """Everything a fresh worker needs to confine itself and load a script.

    Sent on the pipe rather than argv or the environment: secret values
    must not show up in ``/proc/<pid>/cmdline`` or ``environ``.
    """

    tenant: str
    tenant_dir: str
    script: str
    bindings: dict[str, BindingValue]
    secret_names: list[str]
    memory_mb: int
    cpu_seconds: int
    # Report the stack of a request running longer than this; 0: never.
    slowlog_ms: int
    max_frame_bytes: int
    # The seccomp filter, compiled once by the host (see seccomp.py).
    seccomp_program: bytes
    # Where the tenant may write; a private tmpfs when the host is root.
    scratch_dir: str
    # The uid to drop to when started as root; None keeps the host's.
    uid: int | None


class Request(msgspec.Struct, tag="request", tag_field="t"):
    """One HTTP request for the tenant's ``fetch``."""

    id: int
    request_id: str
    method: str
    url: str
    headers: HeaderPairs
    body: bytes


class Cancel(msgspec.Struct, tag="cancel", tag_field="t"):
    """The host gave up on request ``id``; the worker drops it."""

    id: int


class Shutdown(msgspec.Struct, tag="shutdown", tag_field="t"):
    """Finish the requests in flight, then exit."""


class Ping(msgspec.Struct, tag="ping", tag_field="t"):
    """Are you there? The worker answers with a Pong of the same ``seq``."""

    seq: int


class Pong(msgspec.Struct, tag="pong", tag_field="t"):
    """The worker's event loop is turning."""

    seq: int


class OutboundResult(msgspec.Struct, tag="outbound_result", tag_field="t"):
    """The host's answer to an ``Outbound`` frame of the same ``id``.

    ``error`` is empty on success, else a code (``egress_denied``,
    ``budget_exceeded``, ``upstream_error``...) with ``message`` saying why.
    For a delivery, ``delivery_id`` names the record that was stored.
    """

    id: int
    status: int = 0
    headers: HeaderPairs = []
    body: bytes = b""
    error: str = ""
    message: str = ""
    delivery_id: str = ""


class Ready(msgspec.Struct, tag="ready", tag_field="t"):
    """The script loaded; the worker takes requests from now on."""

    protocol: int
    pid: int
    startup_ms: float
    # The confinement layers in force, for the operator's log.
    layers: list[str]


class Response(msgspec.Struct, tag="response", tag_field="t"):
    """The answer to request ``id``."""

    id: int
    status: int
    headers: HeaderPairs
    body: bytes


class Failure(msgspec.Struct, tag="failure", tag_field="t"):
    """Request ``id`` did not produce a response.

    ``code`` is one of the error codes of the JSON error contract (for
    example ``tenant_error``); ``message`` is safe to show to the client.
    """

    id: int
    code: str
    message: str


class Outbound(msgspec.Struct, tag="outbound", tag_field="t"):
    """Tenant code asks the host to make an HTTP call on its behalf.

    ``kind`` is ``fetch`` (made now, answered with the response) or
    ``deliver`` (stored durably and retried; answered once stored).
    ``request_id`` names the inbound request it belongs to: the host
    refuses calls for requests not in flight on this worker.
    """

    id: int
    request_id: str
    kind: str
    method: str
    url: str
    headers: HeaderPairs
    body: bytes
    timeout_s: float
    idempotency_key: str = ""


class Log(msgspec.Struct, tag="log", tag_field="t"):
    """A line for the tenant's log that came from the runner itself."""

    level: str
    message: str


# A slow request's stack: at most this many entries, each text this long.
# The host checks both while decoding, so a hostile worker cannot make it
# decode megabytes of stack only to cut them down afterwards.
MAX_STACK_ENTRIES = 32
MAX_STACK_TEXT = 256
StackText = Annotated[str, msgspec.Meta(max_length=MAX_STACK_TEXT)]


class StackEntry(msgspec.Struct):
    """One frame of tenant code: where it is and the source line there.

    ``file`` is relative to the tenant's folder.
    """

    file: StackText
    line: Annotated[int, msgspec.Meta(ge=0)]
    function: StackText
    code: StackText


class SlowRequest(msgspec.Struct, tag="slow_request", tag_field="t"):
    """Request ``id`` has run past ``slowlog_ms``; here is where it is.

    Sent at most once per request. ``stack`` holds only frames of the
    tenant's own code, innermost last.
    """

    id: int
    elapsed_ms: Annotated[float, msgspec.Meta(ge=0, le=86_400_000)]
    stack: Annotated[list[StackEntry], msgspec.Meta(max_length=MAX_STACK_ENTRIES)]


ToWorker = Boot | Request | Cancel | Shutdown | Ping | OutboundResult
ToHost = Ready | Response | Failure | Log | Pong | Outbound | SlowRequest


class FrameTooLarge(ValueError):
    """A frame's length prefix is over the agreed maximum."""


def encode_frame(encoder: msgspec.msgpack.Encoder, frame: object) -> bytes:
    """Serialise ``frame`` with its length prefix, ready for one write."""
    body = encoder.encode(frame)
    return LENGTH_PREFIX.pack(len(body)) + body


def read_length(prefix: bytes, max_frame_bytes: int) -> int:
    """The body length announced by a 4-byte prefix, checked against a cap."""
    (length,) = LENGTH_PREFIX.unpack(prefix)
    if length > max_frame_bytes:
        raise FrameTooLarge(
            f"frame of {length} bytes is over the limit of {max_frame_bytes}"
        )
    return int(length)


def host_decoder() -> msgspec.msgpack.Decoder[ToHost]:
    """A decoder for frames that a worker sends to the host."""
    return msgspec.msgpack.Decoder(ToHost)


def worker_decoder() -> msgspec.msgpack.Decoder[ToWorker]:
    """A decoder for frames that the host sends to a worker."""
    return msgspec.msgpack.Decoder(ToWorker)


# Exit codes a worker reserves so that the host can tell "this tenant cannot
# start" from "this worker crashed" and stop respawning a broken tenant.
EXIT_LOAD_FAILED = 70
EXIT_CONFINEMENT_FAILED = 71
EXIT_OUT_OF_MEMORY = 72
