"""PeerTransport against a hostile remote peer (audit 2026-12 findings 5, 6, 12, 17, 22).

Real transports on 127.0.0.1 (aiortc's RTCPeerConnection or a second PeerTransport as the peer);
the helpers are those of tests/sfu/media/transport/test_peer.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import time
from typing import Any

import aioice.stun
import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG as FIRST,
)
from aiortc.rtcsctptransport import (
    SCTP_DATA_LAST_FRAG,
    AbortChunk,
    DataChunk,
    RTCSctpTransport,
    serialize_packet,
)
from aiortc.rtcsctptransport import (
    SCTP_DATA_UNORDERED as UNORDERED,
)

from sfu.config import from_mapping
from sfu.media.sdp import SessionDescription
from sfu.media.transport import PeerTransport, TransportConfig
from sfu.media.transport import peer as peer_module
from sfu.media.transport.datachannel import (
    MAX_BUFFERED_AMOUNT,
    MAX_CHANNELS,
    MAX_MESSAGE_SIZE,
    GuardedSctpTransport,
)
from sfu.media.transport.ice import MAX_QUEUED_BYTES, MAX_REMOTE_CANDIDATES, CandidatePolicy
from sfu.media.transport.peer import TrackSlotLimitError
from sfu.metrics import COUNTERS
from tests.sfu.media.transport.test_peer import (  # noqa: F401 (loopback_only: an autouse fixture)
    Recorder,
    aiortc_peer,
    loopback_only,
    publish,
    wait_for,
)


def limit_count(name: str) -> int:
    return COUNTERS.limits_exceeded.get(name, 0)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def queued_bytes(transport: PeerTransport) -> int:
    """What aioice holds for the DTLS transport (asyncio.Queue's own deque)."""
    return sum(len(item[0]) for item in transport._connection._queue._queue if item is not None)


async def connected_pair() -> tuple[PeerTransport, PeerTransport, Recorder, Recorder]:
    down, up = Recorder(), Recorder()
    subscriber = down.transport("subscriber")
    publisher = up.transport("publisher")
    subscriber.add_track("audio", "audio/opus", 1, "PA_a|camera", "TR_a")
    answer, _ = await publisher.handle_offer(await subscriber.create_offer())
    await subscriber.handle_answer(answer)
    await wait_for(lambda: "connected" == subscriber.state == publisher.state, what="both")
    return subscriber, publisher, down, up


# -- finding 6: an unanswered offer ------------------------------------------------------------


async def test_unanswered_offer_flooded_holds_little_and_fails_in_time() -> None:
    rec = Recorder()
    transport = rec.transport("subscriber", TransportConfig(connect_timeout=0.8))
    offer = SessionDescription.parse(await transport.create_offer())
    fields = offer.media[0].candidates[0].split()
    address = (fields[4], int(fields[5]))
    before = rss()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        flood.setblocking(False)
        datagram = b"\x17\xfe\xfd" + bytes(997)  # 1,000 bytes that look like a DTLS record
        for i in range(30000):
            try:
                flood.sendto(datagram, address)
            except BlockingIOError:
                await asyncio.sleep(0)
            if i % 2 == 0:
                await asyncio.sleep(0)  # asyncio reads a datagram or two per loop iteration
    await asyncio.sleep(0.05)
    try:
        assert queued_bytes(transport) <= MAX_QUEUED_BYTES
        received = transport._receive_queue.dropped + len(transport._connection._queue._queue)
        assert received > 5000, received  # the kernel drops some: the loop reads as it can
        assert rss() - before < 10 * 1024 * 1024
        await wait_for(lambda: transport.state == "failed", 3, "the unanswered offer to fail")
        assert rec.states == ["failed"]
    finally:
        await transport.close()


async def test_answered_offer_does_not_time_out() -> None:
    rec = Recorder()
    transport = rec.transport("subscriber", TransportConfig(connect_timeout=0.5))
    publisher = Recorder().transport("publisher")
    try:
        answer, _ = await publisher.handle_offer(await transport.create_offer())
        await transport.handle_answer(answer)
        await wait_for(lambda: transport.state == "connected", what="connected")
        await asyncio.sleep(0.6)
        assert rec.states == ["connecting", "connected"]
    finally:
        await transport.close()
        await publisher.close()


# -- finding 12: remote candidates ------------------------------------------------------------


def test_candidate_policy_by_address() -> None:
    local = CandidatePolicy.for_addresses(["127.0.0.1"], allow_private=False)
    public = CandidatePolicy.for_addresses(["203.0.113.7"], allow_private=False)
    lan = CandidatePolicy.for_addresses(["192.168.1.10"], allow_private=False)
    configured = CandidatePolicy.for_addresses(["203.0.113.7"], allow_private=True)
    always_refused = ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255",
                      "169.254.169.254", "fe80::1", "240.0.0.1", "::ffff:169.254.169.254"]  # fmt: skip
    private = ["10.0.0.5", "172.16.0.1", "192.168.0.1", "100.64.0.1", "fd00::1", "::ffff:10.0.0.1"]
    for policy in (local, public, lan, configured):
        assert all(policy.refusal(a) for a in always_refused)
        assert policy.refusal("198.51.100.9") is None and policy.refusal("2001:db8::9") is None
    assert local.refusal("127.0.0.1") is None and local.refusal("::1") is None
    assert public.refusal("127.0.0.1") and lan.refusal("127.0.0.2")
    assert all(public.refusal(a) and local.refusal(a) for a in private)
    assert all(lan.refusal(a) is None and configured.refusal(a) is None for a in private)


def _candidate(host: str, port: int) -> str:
    return json.dumps({"candidate": f"candidate:1 1 udp 2122260223 {host} {port} typ host"})


def remote_hosts(transport: PeerTransport) -> list[str]:
    return [c.host for c in transport._connection._remote_candidates]


async def test_remote_candidates_are_filtered_and_capped() -> None:
    transport = Recorder().transport("publisher")
    private = Recorder().transport("publisher", TransportConfig(allow_private_candidates=True))
    try:
        for host in ["0.0.0.0", "224.0.0.1", "169.254.169.254", "fe80::1", "10.0.0.5",
                     "fd00::1", "100.64.0.1", "127.0.0.1", "198.51.100.1"]:  # fmt: skip
            transport.add_remote_candidate(_candidate(host, 9))
            private.add_remote_candidate(_candidate(host, 9))
        assert remote_hosts(transport) == ["127.0.0.1", "198.51.100.1"]
        assert remote_hosts(private) == ["10.0.0.5", "fd00::1", "100.64.0.1", "127.0.0.1",
                                         "198.51.100.1"]  # fmt: skip
        # a flood of trickled candidates: aioice pairs each in time linear in those before it
        before = limit_count("ice_remote_candidates")
        start = time.perf_counter()
        for port in range(1, 3001):
            transport.add_remote_candidate(_candidate("198.51.100.2", port))
        assert time.perf_counter() - start < 0.5  # seconds when aioice took every one
        assert len(remote_hosts(transport)) == MAX_REMOTE_CANDIDATES
        assert limit_count("ice_remote_candidates") == before + 3000 - MAX_REMOTE_CANDIDATES + 2
    finally:
        await transport.close()
        await private.close()


async def test_candidates_after_ice_completed_are_ignored() -> None:
    subscriber, publisher, _, _ = await connected_pair()
    try:
        known = remote_hosts(publisher)
        publisher.add_remote_candidate(_candidate("198.51.100.3", 9))
        assert remote_hosts(publisher) == known
    finally:
        await subscriber.close()
        await publisher.close()


async def test_wildcard_bind_advertises_one_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit 24: 0.0.0.0 without node_ip no longer advertises every interface's address."""
    monkeypatch.setattr(
        "sfu.media.transport.ice.get_host_addresses",
        lambda use_ipv4, use_ipv6: ["127.0.0.1", "10.9.9.9"],
    )
    transport = Recorder().transport("subscriber", TransportConfig(bind_addresses=("0.0.0.0",)))
    try:
        offer = SessionDescription.parse(await transport.create_offer())
        assert len(offer.media[0].candidates) == 1
    finally:
        await transport.close()


# -- finding 17: subscriber m-line slots --------------------------------------------------------


async def test_resubscribing_before_an_answer_reuses_the_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = Recorder().transport("subscriber")
    try:
        mid = transport.add_track("video", "video/VP8", 1, "PA_a|TR_v", "TR_v")
        await transport.create_offer()  # never answered
        for ssrc in range(2, 2002):
            transport.remove_track(mid)
            assert transport.add_track("video", "video/VP8", ssrc, "PA_a|TR_v", "TR_v") == mid
        # slots no offer carried yet are reused for any track
        for ssrc in range(2002, 2102):
            other = transport.add_track("audio", "audio/opus", ssrc, "PA_b|TR_a", f"TR_{ssrc}")
            transport.remove_track(other)
        assert len(transport._slots) == 2
        # and a PC never has more than MAX_TRACK_SLOTS m-lines
        monkeypatch.setattr(peer_module, "MAX_TRACK_SLOTS", 3)
        transport.add_track("audio", "audio/opus", 7, "PA_c|TR_c", "TR_c")  # the unoffered slot
        transport.add_track("audio", "audio/opus", 8, "PA_d|TR_d", "TR_d")
        before = limit_count("subscriber_track_slots")
        with pytest.raises(TrackSlotLimitError):
            transport.add_track("audio", "audio/opus", 9, "PA_e|TR_e", "TR_e")
        assert limit_count("subscriber_track_slots") == before + 1
        assert len(transport._slots) == 3
    finally:
        await transport.close()


# -- finding 22: a publisher PC whose DTLS ends ---------------------------------------------------


async def test_close_notify_reports_closed() -> None:
    subscriber, publisher, _, up = await connected_pair()
    try:
        await subscriber._dtls.stop()  # sends close_notify
        await wait_for(lambda: publisher.state == "closed", 5, "closed")
        assert up.states == ["connecting", "connected", "closed"]
    finally:
        await subscriber.close()
        await publisher.close()


async def test_dead_dtls_task_reports_closed() -> None:
    subscriber, publisher, _, up = await connected_pair()
    try:
        publisher._dtls._task.cancel()
        await wait_for(lambda: publisher.state == "closed", 5, "closed")
        assert up.states == ["connecting", "connected", "closed"]
    finally:
        await subscriber.close()
        await publisher.close()


# -- finding 5: data channels --------------------------------------------------------------------


async def test_data_channel_message_size_reassembly_and_channel_caps() -> None:
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    channel = pc.createDataChannel("_reliable")
    extra = [pc.createDataChannel(f"extra{i}") for i in range(MAX_CHANNELS + 2)]
    transport, _ = await publish(rec, pc)
    try:
        await wait_for(lambda: transport.state == "connected" and channel.readyState == "open")
        await wait_for(lambda: len(transport._channels) == MAX_CHANNELS, what="channels")
        await asyncio.sleep(0.1)
        assert len(transport._channels) == MAX_CHANNELS
        assert sum(c.readyState == "open" for c in extra) == MAX_CHANNELS - 1
        client_sctp: Any = pc.sctp
        client_sctp._remote_max_message_size = 0  # the client ignores our a=max-message-size
        before = limit_count("data_message_size")
        channel.send(bytes(MAX_MESSAGE_SIZE + 1000))
        channel.send(b"after")
        await wait_for(lambda: ("_reliable", b"after") in rec.data, what="the small message")
        assert [len(d) for _, d in rec.data] == [5]
        assert limit_count("data_message_size") == before + 1
        # a message that never fits the window: the association is aborted, media goes on
        before = limit_count("data_reassembly")
        channel.send(bytes(8 * MAX_MESSAGE_SIZE))
        await wait_for(lambda: limit_count("data_reassembly") == before + 1, what="abort")
        assert transport._sctp.held_bytes == 0
        assert [len(d) for _, d in rec.data] == [5]
        assert transport.state == "connected"
    finally:
        await pc.close()
        await transport.close()


async def test_send_is_dropped_while_the_peer_leaves_too_much_unacknowledged() -> None:
    class Stuck:
        readyState = "open"
        bufferedAmount = MAX_BUFFERED_AMOUNT + 1
        sent = 0

        def send(self, data: bytes) -> None:
            self.sent += 1

    transport = Recorder().transport("subscriber")
    stuck = Stuck()
    transport._channels["_reliable"] = stuck
    before = limit_count("data_send_buffer")
    transport.send_data("_reliable", b"x")
    assert stuck.sent == 0 and transport.stats.data_dropped == 1
    assert limit_count("data_send_buffer") == before + 1
    stuck.bufferedAmount = 0
    transport.send_data("_reliable", b"x")
    assert stuck.sent == 1
    await transport.close()


async def test_offer_with_twenty_thousand_candidates_is_answered_quickly() -> None:
    """Audit 12: 80 m-lines of 250 candidates each (the parser's per-m-line cap is 256)."""
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    offer = SessionDescription.parse(pc.localDescription.sdp)
    await pc.close()
    audio = offer.media[0]
    for index in range(80):
        section = copy.deepcopy(audio)
        section.mid = f"x{index}"
        section.port = 0 if index else audio.port
        section.candidates = [
            f"{index} 1 udp 2122260223 198.51.100.{index % 250} {port} typ host"
            for port in range(1, 251)
        ]
        offer.media.append(section)
    transport = rec.transport("publisher")
    try:
        start = time.perf_counter()
        await transport.handle_offer(str(offer))
        assert time.perf_counter() - start < 1.0  # minutes before: aioice pairs in O(n²)
        assert len(remote_hosts(transport)) <= MAX_REMOTE_CANDIDATES
    finally:
        await transport.close()


def test_allow_private_candidates_is_a_config_key() -> None:
    secret = "s" * 40
    config = from_mapping({"keys": {"k": secret}, "rtc": {"allow_private_candidates": True}})
    assert config.rtc.allow_private_candidates is True
    assert from_mapping({"keys": {"k": secret}}).rtc.allow_private_candidates is False


async def test_peer_reflexive_candidates_stop_at_the_cap() -> None:
    """Authenticated checks from ever new source ports: aioice would learn (and check) each."""
    transport = Recorder().transport("publisher")
    try:
        await transport._ensure_local()
        connection = transport._connection
        protocol = connection._protocols[0]
        before = limit_count("ice_remote_candidates")
        for port in range(40000, 40000 + MAX_REMOTE_CANDIDATES + 36):
            request = aioice.stun.Message(
                message_method=aioice.stun.Method.BINDING,
                message_class=aioice.stun.Class.REQUEST,
            )
            request.attributes["PRIORITY"] = 1
            connection.check_incoming(request, ("127.0.0.2", port), protocol)
        assert len(connection._remote_candidates) == MAX_REMOTE_CANDIDATES
        assert limit_count("ice_remote_candidates") == before + 36
        # a known address is still answered
        connection.check_incoming(request, ("127.0.0.2", 40000), protocol)
        assert limit_count("ice_remote_candidates") == before + 36
    finally:
        await transport.close()


WHOLE = FIRST | SCTP_DATA_LAST_FRAG


def _data_packet(sctp: Any, tsn: int, stream_id: int, flags: int, seq: int = 0) -> bytes:
    chunk = DataChunk(flags=flags)
    chunk.tsn, chunk.stream_id, chunk.stream_seq, chunk.protocol = tsn, stream_id, seq, 53
    chunk.user_data = b"x"
    return serialize_packet(
        sctp._remote_port, sctp._local_port, sctp._local_verification_tag, chunk
    )


@pytest.mark.parametrize(
    ("limit", "packets"),
    [
        # an endless message: tiny fragments, none the last (aiortc rescans them all each time)
        ("data_reassembly", lambda first: [(first + i, 1, FIRST if i == 0 else 0) for i in range(1100)]),
        # complete unordered messages past a gap that is never filled (aiortc sorts them each time)
        ("data_reassembly", lambda first: [(first + 1 + i, 1, WHOLE | UNORDERED) for i in range(600)]),
        # data on ever new streams
        ("data_streams", lambda first: [(first + i, 100 + i, WHOLE | UNORDERED) for i in range(70)]),
    ],
)  # fmt: skip
async def test_crafted_sctp_data_aborts_the_association(limit: str, packets: Any) -> None:
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    channel = pc.createDataChannel("_reliable")
    transport, _ = await publish(rec, pc)
    try:
        await wait_for(lambda: transport.state == "connected" and channel.readyState == "open")
        sctp = transport._sctp
        before = limit_count(limit)
        first = (sctp._last_received_tsn + 1) % 2**32
        start = time.process_time()
        for tsn, stream_id, flags in packets(first):
            await sctp._handle_data(_data_packet(sctp, tsn % 2**32, stream_id, flags))
        assert time.process_time() - start < 0.5
        assert limit_count(limit) == before + 1
        assert sctp.held_bytes == 0 and sctp.state == "closed"
        assert transport.state == "connected"  # media goes on
    finally:
        await pc.close()
        await transport.close()


async def test_a_chunk_sent_after_dtls_closed_is_dropped_not_raised() -> None:
    """aiortc sends from fire-and-forget tasks (INIT and SHUTDOWN retransmissions, `_transmit`): on a DTLS transport
    that is not connected (any more), the plain association's task dies with ConnectionError
    ("Task exception was never retrieved"); the guarded one drops the chunk."""
    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    plain, guarded = RTCSctpTransport(dtls), GuardedSctpTransport(dtls)
    plain._remote_port = guarded._remote_port = 5000  # as `start` sets it
    with pytest.raises(ConnectionError, match="not connected"):
        await plain._send_chunk(AbortChunk())
    await asyncio.ensure_future(guarded._send_chunk(AbortChunk()))
