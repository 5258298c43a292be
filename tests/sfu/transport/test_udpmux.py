"""The single-port ICE demultiplexer: routing by STUN ufrag and by address, with byte fixtures."""

from __future__ import annotations

import asyncio
from typing import Any

from aioice import stun
from aioice.ice import Connection
from hypothesis import given
from hypothesis import strategies as st

from sfu.transport.udpmux import MAX_ADDRESSES, UdpMux, open_mux, stun_request_ufrag
from tests.harness.sfu import free_udp_port

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)
C = ("127.0.0.1", 40003)


def binding_request(username: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1234
    message.add_message_integrity(b"password")
    message.add_fingerprint()
    return bytes(message)


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
    """A mux with two real aioice connections whose protocols record what reaches them."""

    def __init__(self) -> None:
        self.mux = UdpMux()
        self.received: dict[str, list[tuple[bytes, Any]]] = {"x": [], "y": []}
        self.protocols = {}
        for name in ("x", "y"):
            connection = Connection(ice_controlling=False)
            protocol: Any = self.mux.register(connection.local_username, connection)
            protocol.datagram_received = lambda d, a, n=name: self.received[n].append((d, a))
            self.protocols[name] = (connection.local_username, protocol)

    def ufrag(self, name: str) -> str:
        return str(self.protocols[name][0])


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


async def test_a_check_we_send_teaches_the_address_and_a_request_can_repoint_it() -> None:
    rig = Rig()
    _, protocol = rig.protocols["x"]
    protocol.transport.sendto(b"check", C)  # our connectivity check towards a remote candidate
    rig.mux.datagram_received(binding_response(), C)
    assert len(rig.received["x"]) == 1
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('y')}:peer"), C)
    rig.mux.datagram_received(SRTP, C)
    assert [d for d, _ in rig.received["y"]][-1] == SRTP


async def test_addresses_per_connection_are_bounded_and_unregister_forgets() -> None:
    rig = Rig()
    _, protocol = rig.protocols["x"]
    for n in range(MAX_ADDRESSES + 5):
        protocol.transport.sendto(b"check", ("127.0.0.1", 41000 + n))
    rig.mux.datagram_received(SRTP, ("127.0.0.1", 41000))  # the oldest was forgotten
    rig.mux.datagram_received(SRTP, ("127.0.0.1", 41000 + MAX_ADDRESSES + 4))
    assert len(rig.received["x"]) == 1 and rig.mux.dropped == 1
    protocol.transport.close()
    protocol.transport.close()
    await asyncio.sleep(0)
    rig.mux.datagram_received(SRTP, ("127.0.0.1", 41000 + MAX_ADDRESSES + 4))
    rig.mux.datagram_received(binding_request(f"{rig.ufrag('x')}:peer"), A)
    assert len(rig.received["x"]) == 1 and rig.mux.dropped == 3
    assert rig.mux.connections == 1


async def test_one_shared_socket_per_address_and_port() -> None:
    port = free_udp_port()
    first = await open_mux("127.0.0.1", port)
    assert await open_mux("127.0.0.1", port) is first
    assert first.get_extra_info("sockname")[1] == port
    first.close()


@given(st.binary(max_size=300), st.sampled_from([A, B, C]))
def test_any_datagram_is_routed_or_dropped(data: bytes, addr: tuple[str, int]) -> None:
    async def run() -> None:
        rig = Rig()
        rig.mux.datagram_received(data, addr)
        routed = len(rig.received["x"]) + len(rig.received["y"])
        assert routed + rig.mux.dropped == 1

    asyncio.run(run())
