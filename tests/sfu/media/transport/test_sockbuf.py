"""Socket buffer sizing: what the kernel grants, and the one warning when it grants less."""

from __future__ import annotations

import logging
import socket

import pytest

from sfu.media.transport import sockbuf


def test_buffers_are_granted_up_to_the_request() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        granted = sockbuf.size_buffers(sock, 64 * 1024)
        assert granted >= 64 * 1024  # below Debian's default cap (208 KiB), so always granted


def test_a_buffer_capped_below_the_request_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    huge = 1 << 30  # beyond any rmem_max, and beyond what SO_RCVBUFFORCE grants
    sockbuf._warned = False
    with caplog.at_level(logging.WARNING, logger="sfu.media.transport.sockbuf"):
        for _ in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                assert sockbuf.size_buffers(sock, huge) < huge
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "net.core.rmem_max" in warnings[0]
