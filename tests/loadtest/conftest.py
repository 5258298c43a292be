"""Fixtures for the load tester's tests: one media cache per test session (encoding is slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.media import load_media


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media-cache")
    load_media(path)
    return path
