"""The port-range sockets `gather_host_candidates` binds: hostile datagrams before DTLS."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import aioice
import pytest

from sfu.media.transport.ice import gather_host_candidates
from sfu.media.transport.ingress import GuardedStunProtocol

#: the audit's STUN fixture: a PRIORITY attribute one byte long (aioice raises struct.error)
MALFORMED_STUN = (
    struct.pack("!HHI12s", 1, 8, 0x2112A442, b"0123456789ab")
    + struct.pack("!HH", 0x24, 1)
    + b"X\0\0\0"
)


async def test_malformed_stun_at_a_port_range_socket_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = aioice.Connection(ice_controlling=False)
    await gather_host_candidates(connection, ("127.0.0.1",), None, (0, 0))
    try:
        protocols = list(connection._protocols)
        assert protocols and all(isinstance(p, GuardedStunProtocol) for p in protocols)
        port = protocols[0].transport.get_extra_info("sockname")[1]
        with caplog.at_level(logging.DEBUG), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(5):
                s.sendto(MALFORMED_STUN, ("127.0.0.1", port))
            await asyncio.sleep(0.2)
        assert not [r for r in caplog.records if r.levelno > logging.DEBUG]
    finally:
        await connection.close()
