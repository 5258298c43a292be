"""The receive fast path: SRTP/SRTCP decrypted and dispatched in front of aioice's protocol."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from aioice.ice import StunProtocol
from hypothesis import given
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from sfu.transport.ingress import SrtpIngress
from sfu.transport.srtp import SrtpError, SrtpUnprotector

KEY = os.urandom(30)
ADDR = ("127.0.0.1", 5000)


def session(direction: int) -> Session:
    return Session(Policy(key=KEY, ssrc_type=direction))


def rtp(seq: int, size: int = 200) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 0x1234) + bytes(size)


def sender_report() -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 1, 2, 3, 4, 5)


class Receiver:
    """What aioice's Connection gives a StunProtocol: where non-STUN datagrams go."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.data.append(data)


def stun_protocol(receiver: Receiver) -> Any:
    """A real aioice StunProtocol (it wants a running loop for its close future)."""

    async def make() -> Any:
        protocol: Any = StunProtocol(receiver)  # type: ignore[arg-type]
        protocol.local_candidate = type("C", (), {"component": 1})()
        return protocol

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


class Rig:
    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.receiver = Receiver()
        self.protocol = stun_protocol(self.receiver)
        self.ingress = SrtpIngress(self.rtp.append, self.rtcp.append)
        self.ingress.attach(self.protocol, session(Policy.SSRC_ANY_INBOUND))
        self.sender = session(Policy.SSRC_ANY_OUTBOUND)


def test_rtp_and_rtcp_are_decrypted_and_dispatched_synchronously() -> None:
    rig = Rig()
    packets = [rtp(seq) for seq in range(1, 6)]
    for packet in packets:
        rig.protocol.datagram_received(rig.sender.protect(packet), ADDR)
    rig.protocol.datagram_received(rig.sender.protect_rtcp(sender_report()), ADDR)
    assert rig.rtp == packets
    assert rig.rtcp == [sender_report()]
    assert rig.receiver.data == []
    assert rig.ingress.rtp_packets_received == 5 and rig.ingress.rtcp_packets_received == 1
    assert rig.ingress.bytes_received == sum(map(len, packets)) + len(sender_report())


def test_other_datagrams_take_aioices_path() -> None:
    rig = Rig()
    dtls_record = bytes([23, 0xFE, 0xFD]) + bytes(20)  # RFC 7983: 20-63 is DTLS
    rig.protocol.datagram_received(dtls_record, ADDR)
    rig.protocol.datagram_received(b"", ADDR)
    assert rig.receiver.data == [dtls_record, b""]
    assert rig.rtp == rig.rtcp == []


def test_forged_replayed_and_truncated_packets_are_counted_and_dropped() -> None:
    rig = Rig()
    protected = rig.sender.protect(rtp(1))
    rig.protocol.datagram_received(protected, ADDR)
    rig.protocol.datagram_received(protected, ADDR)  # replay
    forged = protected[:-1] + bytes([protected[-1] ^ 1])
    rig.protocol.datagram_received(forged, ADDR)
    rig.protocol.datagram_received(b"\x80", ADDR)
    rig.protocol.datagram_received(b"\x80" * 3000, ADDR)  # longer than any datagram
    assert len(rig.rtp) == 1
    assert rig.ingress.unprotect_failures == 4


@pytest.mark.expect_log_errors(r"on_rtp failed(.|\n)*RuntimeError: bad handler")
def test_a_failing_callback_does_not_escape() -> None:
    def boom(_: bytes) -> None:
        raise RuntimeError("bad handler")

    rig = Rig()
    rig.ingress = SrtpIngress(boom, boom)
    rig.ingress.attach(rig.protocol, session(Policy.SSRC_ANY_INBOUND))
    rig.protocol.datagram_received(rig.sender.protect(rtp(1)), ADDR)


def test_detach_gives_the_protocol_its_own_method_back() -> None:
    rig = Rig()
    rig.ingress.detach()
    rig.ingress.detach()
    protected = rig.sender.protect(rtp(1))
    rig.protocol.datagram_received(protected, ADDR)
    assert rig.rtp == [] and rig.receiver.data == [protected]


def test_unprotector_matches_pylibsrtp() -> None:
    sender = session(Policy.SSRC_ANY_OUTBOUND)
    ours = SrtpUnprotector(session(Policy.SSRC_ANY_INBOUND), rtcp=False)
    theirs = session(Policy.SSRC_ANY_INBOUND)
    for seq in range(1, 20):
        protected = sender.protect(rtp(seq, 50 * seq))
        assert ours(protected) == theirs.unprotect(protected) == rtp(seq, 50 * seq)
    try:
        ours(b"\x80\x60" + bytes(30))
    except SrtpError:
        pass
    else:  # pragma: no cover
        raise AssertionError("garbage was accepted")


@given(st.binary(max_size=2100))
def test_any_datagram_is_dispatched_dropped_or_passed_on(data: bytes) -> None:
    rig = Rig()
    rig.protocol.datagram_received(data, ADDR)
    handled = len(rig.rtp) + len(rig.rtcp) + len(rig.receiver.data) + rig.ingress.unprotect_failures
    assert handled <= 1
