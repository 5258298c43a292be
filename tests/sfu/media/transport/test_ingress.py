"""The receive fast path: SRTP/SRTCP decrypted and dispatched in front of aioice's protocol."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

import pytest
from aioice import stun
from aioice.candidate import Candidate
from aioice.ice import CandidatePair, StunProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from sfu.media.transport.ingress import GuardedStunProtocol, SrtpIngress
from sfu.media.transport.srtp import SrtpError, SrtpUnprotector
from sfu.metrics import COUNTERS
from tests.sfu.packets import rtp

KEY = os.urandom(30)
ADDR = ("127.0.0.1", 5000)  # the nominated pair's remote address
OTHER = ("127.0.0.1", 5001)
#: the audit's STUN fixture: a PRIORITY attribute one byte long (aioice raises struct.error)
MALFORMED_STUN = (
    struct.pack("!HHI12s", 1, 8, 0x2112A442, b"0123456789ab")
    + struct.pack("!HH", 0x24, 1)
    + b"X\0\0\0"
)


def session(direction: int) -> Session:
    return Session(Policy(key=KEY, ssrc_type=direction))


def sender_report() -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 1, 2, 3, 4, 5)


class Receiver:
    """What aioice's Connection gives a StunProtocol: where non-STUN datagrams go."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.requests: list[Any] = []
        self._nominated: dict[int, CandidatePair] = {}
        self._check_list: list[CandidatePair] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.data.append(data)

    def request_received(self, message: Any, addr: Any, protocol: Any) -> None:
        self.requests.append(message)


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
    def __init__(self, remote_addr: Any = ADDR) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.receiver = Receiver()
        self.protocol = stun_protocol(self.receiver)
        self.ingress = SrtpIngress(self.rtp.append, self.rtcp.append)
        self.ingress.attach(
            self.protocol, session(Policy.SSRC_ANY_INBOUND), remote_addr=remote_addr
        )
        self.sender = session(Policy.SSRC_ANY_OUTBOUND)


def test_rtp_and_rtcp_are_decrypted_and_dispatched_synchronously() -> None:
    rig = Rig()
    packets = [rtp(bytes(200), sequence_number=seq) for seq in range(1, 6)]
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
    protected = rig.sender.protect(rtp(bytes(200), sequence_number=1))
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
    rig.protocol.datagram_received(rig.sender.protect(rtp(bytes(200), sequence_number=1)), ADDR)


def test_detach_gives_the_protocol_its_own_method_back() -> None:
    rig = Rig()
    rig.ingress.detach()
    rig.ingress.detach()
    protected = rig.sender.protect(rtp(bytes(200), sequence_number=1))
    rig.protocol.datagram_received(protected, ADDR)
    assert rig.rtp == [] and rig.receiver.data == [protected]


def test_unprotector_matches_pylibsrtp() -> None:
    sender = session(Policy.SSRC_ANY_OUTBOUND)
    ours = SrtpUnprotector(session(Policy.SSRC_ANY_INBOUND), rtcp=False)
    theirs = session(Policy.SSRC_ANY_INBOUND)
    for seq in range(1, 20):
        protected = sender.protect(rtp(bytes(50 * seq), sequence_number=seq))
        assert (
            ours(protected)
            == theirs.unprotect(protected)
            == rtp(bytes(50 * seq), sequence_number=seq)
        )
    try:
        ours(b"\x80\x60" + bytes(30))
    except SrtpError:
        pass
    else:  # pragma: no cover
        raise AssertionError("garbage was accepted")


def _is_stun(data: bytes) -> bool:
    try:
        stun.parse_message(data)
    except Exception:  # whatever aioice refuses is not STUN
        return False
    return True


@settings(deadline=None)
@given(st.binary(max_size=2100), st.sampled_from([ADDR, OTHER]))
def test_any_datagram_is_handled_exactly_once(data: bytes, addr: tuple[str, int]) -> None:
    """Decrypted, refused by libsrtp, dropped (wrong source, or aioice raised), or passed on to
    aioice; only a STUN message may end as nothing (a response to no transaction of ours)."""
    rig = Rig()
    rig.protocol.datagram_received(data, addr)
    ingress = rig.ingress
    handled = (
        len(rig.rtp)
        + len(rig.rtcp)
        + len(rig.receiver.data)
        + len(rig.receiver.requests)
        + ingress.unprotect_failures
        + ingress.malformed
        + ingress.wrong_source
    )
    if _is_stun(data):
        assert handled <= 1
    else:
        assert handled == 1


def test_malformed_stun_is_contained_and_logs_nothing_above_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(struct.error):
        stun.parse_message(MALFORMED_STUN)  # aioice 0.13.0: not a ValueError, so not caught
    for _ in range(3):
        rig.protocol.datagram_received(MALFORMED_STUN, ADDR)
    assert rig.ingress.malformed == 3
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    rig.protocol.datagram_received(bytes(request), OTHER)  # STUN from anywhere still reaches ICE
    assert len(rig.receiver.requests) == 1


def test_media_from_another_address_is_dropped_before_unprotect() -> None:
    rig = Rig()
    protected = rig.sender.protect(rtp(bytes(200), sequence_number=1))
    rig.protocol.datagram_received(protected, OTHER)
    rig.protocol.datagram_received(rig.sender.protect_rtcp(sender_report()), OTHER)
    dtls_record = bytes([23, 0xFE, 0xFD]) + bytes(20)
    rig.protocol.datagram_received(dtls_record, OTHER)
    assert rig.rtp == rig.rtcp == rig.receiver.data == []
    assert rig.ingress.wrong_source == 3 and rig.ingress.unprotect_failures == 0
    # libsrtp never saw it: the same packet from the peer is not a replay
    rig.protocol.datagram_received(protected, ADDR)
    rig.protocol.datagram_received(dtls_record, ADDR)
    assert rig.rtp == [rtp(bytes(200), sequence_number=1)] and rig.receiver.data == [dtls_record]


def test_the_remote_address_is_taken_from_the_nominated_pair() -> None:
    receiver = Receiver()
    protocol = stun_protocol(receiver)
    remote = Candidate("1", 1, "udp", 1, OTHER[0], OTHER[1], "host")
    receiver._nominated[1] = CandidatePair(protocol, remote)
    rtp_in: list[bytes] = []
    ingress = SrtpIngress(rtp_in.append, rtp_in.append)
    ingress.attach(protocol, session(Policy.SSRC_ANY_INBOUND))
    sender = session(Policy.SSRC_ANY_OUTBOUND)
    protocol.datagram_received(sender.protect(rtp(bytes(200), sequence_number=1)), ADDR)
    protocol.datagram_received(
        sender.protect(rtp(bytes(200), sequence_number=2)), (OTHER[0], OTHER[1], 0, 0)
    )  # IPv6 form
    assert rtp_in == [rtp(bytes(200), sequence_number=2)] and ingress.wrong_source == 1


def test_media_follows_the_peer_to_another_pair_ice_validated() -> None:
    """Chrome nominates a second pair after DTLS is up (or sends on another valid pair) on
    hosts with several interfaces: its media must not be dropped as a forgery."""
    rig = Rig()
    moved = Candidate("2", 1, "udp", 1, OTHER[0], OTHER[1], "host")
    pair = CandidatePair(rig.protocol, moved)
    rig.receiver._check_list.append(pair)
    rig.protocol.datagram_received(rig.sender.protect(rtp(bytes(200), sequence_number=1)), OTHER)
    assert rig.rtp == [] and rig.ingress.wrong_source == 1  # checked, not yet succeeded
    pair.state = CandidatePair.State.SUCCEEDED
    rig.protocol.datagram_received(rig.sender.protect(rtp(bytes(200), sequence_number=2)), OTHER)
    rig.protocol.datagram_received(rig.sender.protect(rtp(bytes(200), sequence_number=3)), OTHER)
    assert (
        rig.rtp == [rtp(bytes(200), sequence_number=2), rtp(bytes(200), sequence_number=3)]
        and rig.ingress.wrong_source == 1
    )
    # the old address is validated too (its pair was the first one): media may come back
    first = CandidatePair(rig.protocol, Candidate("1", 1, "udp", 1, ADDR[0], ADDR[1], "host"))
    first.state = CandidatePair.State.SUCCEEDED
    rig.receiver._check_list.append(first)
    rig.protocol.datagram_received(rig.sender.protect(rtp(bytes(200), sequence_number=4)), ADDR)
    assert rig.rtp[-1] == rtp(bytes(200), sequence_number=4)
    # a pair of another protocol (another local candidate) validates nothing here
    stranger = Candidate("3", 1, "udp", 1, "127.0.0.9", 9, "host")
    other_pair = CandidatePair(stun_protocol(Receiver()), stranger)
    other_pair.state = CandidatePair.State.SUCCEEDED
    rig.receiver._check_list.append(other_pair)
    rig.protocol.datagram_received(
        rig.sender.protect(rtp(bytes(200), sequence_number=5)), ("127.0.0.9", 9)
    )
    assert rig.rtp[-1] == rtp(bytes(200), sequence_number=4) and rig.ingress.wrong_source == 2


def test_a_guarded_stun_protocol_contains_what_aioice_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver()

    async def make() -> Any:
        protocol: Any = GuardedStunProtocol(receiver)  # type: ignore[arg-type]
        protocol.local_candidate = type("C", (), {"component": 1})()
        return protocol

    loop = asyncio.new_event_loop()
    try:
        protocol = loop.run_until_complete(make())
    finally:
        loop.close()
    caplog.set_level(logging.DEBUG)
    dropped = COUNTERS.packets_dropped
    protocol.datagram_received(MALFORMED_STUN, OTHER)
    assert COUNTERS.packets_dropped == dropped + 1
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    protocol.datagram_received(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), OTHER)
    protocol.datagram_received(b"\x17\xfe\xfd", OTHER)
    assert len(receiver.requests) == 1 and receiver.data == [b"\x17\xfe\xfd"]
