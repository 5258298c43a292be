"""Fixtures shared by the SFU's unit tests: a controllable clock for the data plane's `clock`."""

from __future__ import annotations

import pytest

__all__ = ["FakeClock", "clock"]


class FakeClock:
    """A controllable monotonic clock: pass it where `time.monotonic` is the default."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
