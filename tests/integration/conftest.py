"""Fixtures for end-to-end tests against the real SFU process (tests/harness/sfu.py).

API keys are generated once per test session; every test gets its own SFU process on free
loopback ports, stopped by PID at teardown, and fails the test if it logged an undeclared error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness.sfu import SfuInstance, running_sfu
from tests.harness.tokens import new_api_key_pair


@pytest.fixture(scope="session")
def sfu_keys() -> tuple[str, str]:
    return new_api_key_pair()


@pytest.fixture
async def sfu(
    request: pytest.FixtureRequest, tmp_path: Path, sfu_keys: tuple[str, str]
) -> AsyncIterator[SfuInstance]:
    """The SFU; its log must show no error except those the test declares with
    `@pytest.mark.expect_sfu_log_errors(regex, ...)` (each must then appear)."""
    api_key, api_secret = sfu_keys
    expected = [p for m in request.node.iter_markers("expect_sfu_log_errors") for p in m.args]
    async with running_sfu(
        tmp_path / "sfu", api_key=api_key, api_secret=api_secret, expect_log_errors=expected
    ) as instance:
        yield instance
