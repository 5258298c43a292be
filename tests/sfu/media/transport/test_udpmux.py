"""The single-port ICE demultiplexer: routing by STUN ufrag and by address, with byte fixtures."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import pytest
from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import CandidatePair, Connection
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.transport.udpmux import MAX_ADDRESSES, UdpMux, open_mux, stun_request_ufrag
from sfu.metrics import COUNTERS, Metrics
from tests.harness.sfu import free_udp_port

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)
C = ("127.0.0.1", 40003)
PASSWORD = "p" * 22  # every connection's local ICE password here


def binding_request(username: str, password: str = PASSWORD) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1234
    message.add_message_integrity(password.encode())
    message.add_fingerprint()
    return bytes(message)


def malformed_stun(username: str) -> bytes:
    """The audit's fixture (a PRIORITY attribute one byte long: aioice raises struct.error),
    with a USERNAME so that the mux routes it by ufrag."""
    name = username.encode()
    attrs = struct.pack("!HH", 0x0006, len(name)) + name + bytes(-len(name) % 4)
    attrs += struct.pack("!HH", 0x24, 1) + b"X\0\0\0"
    return struct.pack("!HHI12s", 1, len(attrs), 0x2112A442, b"0123456789ab") + attrs


def binding_response() -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    message.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 5000)
    return bytes(message)


DTLS = bytes([22, 0xFE, 0xFD]) + bytes(30)
SRTP = bytes([0x80, 0x60]) + bytes(40)


def test_ufrag_from_binding_requests_only() -> None:
    assert stun_request_ufrag(binding_request("ourufrag:theirs")) == "ourufrag"
    assert stun_request_ufrag(binding_request("nocolon")) is None
    assert stun_request_ufrag(binding_request(":theirs")) is None
    assert stun_request_ufrag(binding_response()) is None
    assert stun_request_ufrag(DTLS) is None
    assert stun_request_ufrag(SRTP) is None
    assert stun_request_ufrag(binding_request("ours:theirs")[:25]) is None  # truncated


@given(st.binary(max_size=200))
def test_ufrag_reader_never_raises(data: bytes) -> None:
    result = stun_request_ufrag(data)
    assert result is None or isinstance(result, str)


class Rig:
    """A mux with two real aioice connections; what reaches their protocols is recorded, then
    handled by aioice itself (which answers a request only if its integrity checks out)."""

    def __init__(self) -> None:
        self.mux = UdpMux()
        self.received: dict[str, list[tuple[bytes, Any]]] = {"x": [], "y": []}
        self.protocols = {}
        self.connections = {}
        for name in ("x", "y"):
            connection = Connection(ice_controlling=False, local_password=PASSWORD)
            protocol: Any = self.mux.register(connection.local_username, connection)
            protocol.local_candidate = Candidate("1", 1, "udp", 1, "127.0.0.1", 3478, "host")
            real = protocol.datagram_received

            def record(d: bytes, a: Any, n: str = name, real: Any = real) -> None:
                self.received[n].append((d, a))
                real(d, a)

            protocol.datagram_received = record
            self.protocols[name] = (connection.local_username, protocol)
            self.connections[name] = connection

    def ufrag(self, name: str) -> str:
        return str(self.protocols[name][0])

    def nominate(self, name: str, addr: tuple[str, int]) -> None:
        """As aioice does once ICE completed: the pair towards `addr` is the nominated one."""
        remote = Candidate("1", 1, "udp", 1, addr[0], addr[1], "host")
        pair = CandidatePair(self.protocols[name][1], remote)
        self.connections[name]._nominated[1] = pair


async def test_requests_route_by_ufrag_then_everything_by_address() -> None:
    rig = Rig()
    rig.mux.datagram_received(DTLS, A)  # unknown address: dropped
    assert rig.mux.dropped == 1
    request = binding_request(f"{rig.ufrag('x')}:peer")
    rig.mux.datagram_received(request, A)
    rig.mux.datagram_received(DTLS, A)
    rig.mux.datagram_received(SRTP, A)
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('y')}:peer"), B)
    rig.mux.datagram_received(SRTP, B)
    assert rig.received["x"] == [(request, A), (DTLS, A), (SRTP, A)]
    assert [d for d, _ in rig.received["y"]][1:] == [SRTP]
    rig.mux.datagram_received(binding_request("unknown:peer"), C)
    assert rig.mux.dropped == 2


async def test_a_request_teaches_its_address_only_once_aioice_accepted_it() -> None:
    rig = Rig()
    forged = binding_request(f"{rig.ufrag('x')}:peer", password="q" * 22)
    rig.mux.datagram_received(forged, A)  # reaches x, which answers 401
    rig.mux.datagram_received(SRTP, A)
    assert rig.received["x"] == [(forged, A)] and rig.mux.dropped == 1
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('y')}:peer"), A)
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('x')}:peer", password="q" * 22), A)
    rig.mux.datagram_received(SRTP, A)  # the forged request did not re-point y's address
    assert [d for d, _ in rig.received["y"]][-1] == SRTP and len(rig.received["x"]) == 2


async def test_a_check_we_send_teaches_the_address_and_a_request_can_repoint_it() -> None:
    rig = Rig()
    _, protocol = rig.protocols["x"]
    protocol.transport.sendto(b"check", C)  # our connectivity check towards a remote candidate
    rig.mux.datagram_received(binding_response(), C)
    assert len(rig.received["x"]) == 1
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('y')}:peer"), C)
    rig.mux.datagram_received(SRTP, C)
    assert [d for d, _ in rig.received["y"]][-1] == SRTP


async def test_a_nominated_address_is_not_taken_by_another_connection() -> None:
    rig = Rig()
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('x')}:peer"), C)
    rig.nominate("x", C)
    # y's own valid credentials, from x's media address (a spoofed source)
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('y')}:peer"), C)
    rig.mux.datagram_received(SRTP, C)
    assert rig.received["x"][-1] == (SRTP, C)
    assert rig.mux.refused == 1


async def test_malformed_stun_never_escapes_and_logs_nothing_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    caplog.set_level(logging.DEBUG)
    data = malformed_stun(f"{rig.ufrag('x')}:peer")
    with pytest.raises(struct.error):
        stun.parse_message(data)  # aioice 0.13.0 raises what StunProtocol does not catch
    for _ in range(3):
        rig.mux.datagram_received(data, A)
    assert len(rig.received["x"]) == 3 and rig.mux.malformed == 3
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    rig.mux.datagram_received(SRTP, A)  # and it taught nothing
    assert rig.mux.dropped == 1


async def test_addresses_per_connection_are_bounded_and_unregister_forgets() -> None:
    rig = Rig()
    _, protocol = rig.protocols["x"]
    hits = COUNTERS.limits_exceeded.get("mux_addresses", 0)
    for n in range(MAX_ADDRESSES + 5):
        protocol.transport.sendto(b"check", ("127.0.0.1", 41000 + n))
    rig.mux.datagram_received(SRTP, ("127.0.0.1", 41000))  # the oldest was forgotten
    rig.mux.datagram_received(SRTP, ("127.0.0.1", 41000 + MAX_ADDRESSES + 4))
    assert len(rig.received["x"]) == 1 and rig.mux.dropped == 1
    assert COUNTERS.limits_exceeded.get("mux_addresses", 0) == hits + 5
    protocol.transport.close()
    protocol.transport.close()
    await asyncio.sleep(0)
    rig.mux.datagram_received(SRTP, ("127.0.0.1", 41000 + MAX_ADDRESSES + 4))
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('x')}:peer"), A)
    assert len(rig.received["x"]) == 1 and rig.mux.dropped == 3
    assert rig.mux.connections == 1


async def test_one_shared_socket_per_address_and_port() -> None:
    port = free_udp_port()
    first = await open_mux("127.0.0.1", port, None)
    assert await open_mux("127.0.0.1", port, None) is first
    assert first.get_extra_info("sockname")[1] == port
    first.close()


@settings(deadline=None)
@given(st.binary(max_size=300), st.sampled_from([A, B, C]))
def test_any_datagram_is_routed_or_dropped(data: bytes, addr: tuple[str, int]) -> None:
    async def run() -> None:
        rig = Rig()
        rig.mux.datagram_received(data, addr)
        routed = len(rig.received["x"]) + len(rig.received["y"])
        assert routed + rig.mux.dropped == 1  # malformed ones are routed, then contained

    asyncio.run(run())


async def test_drops_are_counted_by_reason_in_the_metrics() -> None:
    """A datagram from an address no connection used is an `unknown_address` drop: the part of
    `livekit_packet_dropped_total` that `sfu_packets_dropped_total{reason}` names."""
    rig = Rig()
    before = COUNTERS.dropped_by_reason.get("unknown_address", 0)
    total = COUNTERS.packets_dropped
    rig.mux.datagram_received(SRTP, C)
    rig.mux.datagram_received(DTLS, C)
    assert COUNTERS.dropped_by_reason["unknown_address"] == before + 2
    assert COUNTERS.packets_dropped == total + 2
    text = Metrics("ND_test").render().decode()
    line = next(x for x in text.splitlines() if x.startswith("sfu_packets_dropped_total{"))
    assert 'reason="unknown_address"' in text and float(line.rsplit(" ", 1)[1]) >= 2
