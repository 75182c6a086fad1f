"""Slow requests: the stack of the tenant's code, in its log, without secrets."""

from __future__ import annotations

import re

import msgspec
import pytest

from dispatcher.tenants import Limits


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
