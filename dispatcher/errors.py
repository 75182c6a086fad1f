"""Every error the dispatcher answers with, one class per error code.

Each class carries the HTTP status and the ``code`` of the JSON error
contract::

    {"error": {"code": ..., "message": ..., "tenant": ..., "request_id": ...}}

Messages are lowercase, say which rule was broken, and never hold a secret
value: they go to the client verbatim.
"""

from __future__ import annotations


class DispatchError(Exception):
    """Base of every error that becomes a JSON error response."""

    status = 500
    code = "internal_error"
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MissingTenantId(DispatchError):
    status = 400
    code = "missing_tenant_id"


class InvalidTenantId(DispatchError):
    status = 400
    code = "invalid_tenant_id"


class TenantNotFound(DispatchError):
    status = 404
    code = "tenant_not_found"


class RequestTimeout(DispatchError):
    """The client did not send its whole body in time."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(DispatchError):
    status = 413
    code = "payload_too_large"
    # Whether the rest of the body was read, so the connection can be reused.
    keep_connection = False


class TenantError(DispatchError):
    """The tenant's script raised, or returned something unusable."""

    status = 500
    code = "tenant_error"


class WorkerCrashed(DispatchError):
    status = 502
    code = "worker_crashed"


class WorkerMemoryExceeded(DispatchError):
    """The worker died for lack of memory under its ``memory_mb`` limit."""

    status = 502
    code = "worker_memory_exceeded"


class ProtocolError(DispatchError):
    """A worker sent a frame that is too large or does not decode."""

    status = 502
    code = "protocol_error"


class RateLimited(DispatchError):
    """The tenant's inbound rate limit is spent; headers say when to retry."""

    status = 429
    code = "rate_limited"


class TenantBusy(DispatchError):
    status = 503
    code = "tenant_busy"
    headers = (("retry-after", "1"),)


class DispatcherBusy(DispatchError):
    """The host-wide budget for request bodies in transit is spent."""

    status = 503
    code = "dispatcher_busy"
    headers = (("retry-after", "1"),)


class WorkerBootFailed(DispatchError):
    """The tenant cannot start: bad script, missing secret, confinement.

    ``detail`` says why in the script's own words (file, line, exception),
    for whoever deployed it; clients get only the message.
    """

    status = 503
    code = "worker_boot_failed"
    headers = (("retry-after", "5"),)

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


class HostCannotStart(WorkerBootFailed):
    """The host, not the tenant, could not start a worker just now.

    Out of processes or descriptors, or the zygote gone or not answering.
    Clients see the same 503 ``worker_boot_failed``; the tenant is not
    backed off for it, so it is served as soon as the host recovers.
    """

    headers = (("retry-after", "1"),)


class WorkerTimeout(DispatchError):
    status = 504
    code = "worker_timeout"


# Codes a worker may put in a Failure frame; anything else is a protocol
# error, since frames from a worker are untrusted input.
FAILURE_CODES: dict[str, type[DispatchError]] = {
    TenantError.code: TenantError,
}
