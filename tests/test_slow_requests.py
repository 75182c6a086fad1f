"""Slow requests: the stack of the tenant's code, in its log, without secrets."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from dispatcher.tenant_log import TenantLog
from dispatcher.tenants import Limits, Tenant, TenantConfig
from sandbox_runner.frames import StackEntry

SECRET = "sk-live-slowpoke-do-not-leak"


def tenant_with_secret() -> Tenant:
    config = TenantConfig(secrets=["API_TOKEN"])
    return Tenant("slowpoke", Path("/t"), config, bindings={"API_TOKEN": SECRET})


def test_tenant_log_keeps_the_last_slow_requests_redacted_and_bounded() -> None:
    """Status pages and tails read recent stacks, never a secret or a flood."""
    tenant_log = TenantLog()
    tenant = tenant_with_secret()
    line = StackEntry("worker.py", 7, "fetch", f"call({SECRET!r})" + "x" * 1000)

    for number in range(25):
        stack = [StackEntry("deep.py", n, "f", "f()") for n in range(100)] + [line]
        tenant_log.record_slow_request(tenant, 42, f"r{number}", 300.0, stack)
    kept = tenant_log.slow_requests("slowpoke")

    assert [record["request_id"] for record in kept] == [f"r{n}" for n in range(5, 25)]
    newest = kept[-1]
    assert set(newest) == {"at", "request_id", "pid", "elapsed_ms", "stack"}
    assert (newest["pid"], newest["elapsed_ms"]) == (42, 300.0)
    assert len(newest["stack"]) == 32
    innermost = newest["stack"][-1]
    assert innermost["code"].startswith("call('[secret API_TOKEN]')xxx")
    assert len(innermost["code"]) == 256
    assert (innermost["file"], innermost["line"], innermost["function"]) == (
        "worker.py",
        7,
        "fetch",
    )
    assert tenant_log.slow_requests("nobody") == []


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"slowlog_ms": -1}, "Expected `int` >= 0"),
        ({"slowlog_ms": 10_000}, "slowlog_ms (10000) must be below timeout_ms"),
        ({"timeout_ms": 500, "slowlog_ms": 600}, "must be below timeout_ms (500)"),
    ],
)
def test_slowlog_must_be_positive_and_below_the_time_limit(
    limits: dict[str, int], message: str
) -> None:
    """A threshold the time limit always beats would never log a thing."""
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(limits, Limits)


def test_slowlog_is_off_by_default() -> None:
    """A tenant that sets nothing pays for no watch thread."""
    assert Limits().slowlog_ms == 0
