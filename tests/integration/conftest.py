"""Fixtures for end-to-end tests against the real SFU process (tests/harness/sfu.py).

API keys are generated once per test session; every test gets its own SFU process on free
loopback ports, stopped by PID at teardown.
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
async def sfu(tmp_path: Path, sfu_keys: tuple[str, str]) -> AsyncIterator[SfuInstance]:
    api_key, api_secret = sfu_keys
    async with running_sfu(tmp_path / "sfu", api_key=api_key, api_secret=api_secret) as instance:
        yield instance
