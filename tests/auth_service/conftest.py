"""Fixtures of the auth service tests: the shared Synapse, test TLS files, fake servers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.synapse import synapse, write_self_signed_cert

__all__ = ["TlsFiles", "synapse", "tls_files"]

TEST_NAMES = [
    "localhost",
    "hs.test",
    "delegated.test",
    "fed.test",
    "legacy.test",
    "backup.test",
    "evil.test",
    "redirect.test",
]


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate valid for the ``*.test`` names and loopback addresses."""

    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Certificate and key shared by every fake HTTPS server of the session."""
    directory = tmp_path_factory.mktemp("tls")
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    write_self_signed_cert(files.cert, files.key, TEST_NAMES, ["127.0.0.1", "127.0.0.2", "::1"])
    return files
