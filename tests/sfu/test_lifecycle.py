"""Readiness (draining, event-loop lag) and drain_timeout's bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from sfu.config import ConfigError, from_mapping
from sfu.lifecycle import Readiness

KEYS = {"k": "s" * 40}


def test_ready_until_draining() -> None:
    readiness = Readiness(interval_s=0.25, max_lag_s=1.0)
    assert readiness.reason() == ""
    readiness.draining = True
    assert readiness.reason() == "draining"


def test_a_sampler_that_does_not_wake_is_a_lag() -> None:
    readiness = Readiness(interval_s=0.25, max_lag_s=1.0)
    now = time.monotonic()
    assert readiness.reason(now + 1.0) == ""
    assert readiness.reason(now + 2.0).startswith("event loop unresponsive: 1.7")
    readiness.lag_s = 1.5
    assert "1.50 s late (limit 1.00 s)" in readiness.reason()


async def test_the_sampler_measures_a_blocked_loop() -> None:
    readiness = Readiness(interval_s=0.05, max_lag_s=0.3)
    task = asyncio.create_task(readiness.run())
    try:
        await asyncio.sleep(0.15)
        assert readiness.reason() == ""
        time.sleep(0.5)  # noqa: ASYNC251 (blocks the loop, as a long synchronous step would)
        await asyncio.sleep(0)  # the sampler wakes late
        await asyncio.sleep(0.01)
        assert readiness.lag_s > 0.3
        assert readiness.reason().startswith("event loop unresponsive")
        await asyncio.sleep(0.2)
        assert readiness.reason() == ""
    finally:
        task.cancel()


def test_drain_timeout_is_bounded() -> None:
    assert from_mapping({"keys": KEYS}).drain_timeout == 30
    assert from_mapping({"keys": KEYS, "drain_timeout": "0"}).drain_timeout == 0
    for bad in (-1, 86401):
        with pytest.raises(ConfigError, match=r"drain_timeout: must be 0 to 86400 seconds"):
            from_mapping({"keys": KEYS, "drain_timeout": bad})
    with pytest.raises(ConfigError, match=r"drain_timeout: invalid value 'soon'"):
        from_mapping({"keys": KEYS, "drain_timeout": "soon"})


async def test_the_time_before_the_sampler_starts_is_no_lag() -> None:
    """Built long before it runs (media workers start in between): ready once it runs."""
    readiness = Readiness(interval_s=0.25, max_lag_s=1.0)
    readiness._sampled_at -= 10.0  # as if built 10 s before the server started
    assert readiness.reason().startswith("event loop unresponsive")
    task = asyncio.create_task(readiness.run())
    try:
        await asyncio.sleep(0)
        assert readiness.reason() == ""
    finally:
        task.cancel()
