"""PeerTransport against aiortc's RTCPeerConnection as the remote peer (a real WebRTC endpoint).

Everything runs over 127.0.0.1: aioice (inside aiortc) is told to gather on loopback only.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import aioice.ice
import aioice.stun
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from sfu.media.sdp import SessionDescription
from sfu.media.transport import IceRestartError, PeerTransport, SendMode, TransportConfig
from sfu.media.transport.peer import SEND_MODES
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.metrics import COUNTERS
from tests.harness.sfu import free_udp_port, free_udp_range
from tests.sfu.packets import rtp


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


def aiortc_peer() -> RTCPeerConnection:
    return RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )


class Recorder:
    """Callbacks for one PeerTransport."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.data: list[tuple[str, bytes]] = []
        self.states: list[str] = []

    def transport(self, role: Any, config: TransportConfig | None = None) -> PeerTransport:
        return PeerTransport(
            role,
            config or TransportConfig(),
            on_rtp=self.rtp.append,
            on_rtcp=self.rtcp.append,
            on_data=lambda label, data: self.data.append((label, data)),
            on_state=self.states.append,
        )

    def rtp_ssrcs(self) -> set[int]:
        return {struct.unpack_from("!I", p, 8)[0] for p in self.rtp}


async def wait_for(predicate: Callable[[], bool], within: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def inbound_rtp(pc: RTCPeerConnection) -> dict[int, int]:
    """ssrc -> packetsReceived from aiortc's receiver statistics."""
    report = await pc.getStats()
    return {s.ssrc: s.packetsReceived for s in report.values() if s.type == "inbound-rtp"}


async def publish(
    rec: Recorder, pc: RTCPeerConnection, config: TransportConfig | None = None
) -> tuple[PeerTransport, list[Any]]:
    transport = rec.transport("publisher", config)
    await pc.setLocalDescription(await pc.createOffer())
    answer, published = await transport.handle_offer(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return transport, published


async def test_publisher_receives_rtp_rtcp_and_data_from_aiortc() -> None:
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    channel = pc.createDataChannel("_reliable")
    lossy = pc.createDataChannel("_lossy", ordered=False, maxRetransmits=0)
    received: list[bytes] = []
    channel.on("message", received.append)
    transport, published = await publish(rec, pc)
    try:
        assert [(p.kind, p.direction, p.codec.name) for p in published] == [
            ("audio", "sendrecv", "opus"),
            ("video", "sendrecv", "VP8"),
        ]
        sender_ssrcs = {s._ssrc for s in pc.getSenders()}
        assert {p.ssrcs[0] for p in published} == sender_ssrcs
        await wait_for(lambda: transport.state == "connected", what="connected")
        assert transport.ice_role == "controlled" and transport.dtls_role == "client"
        await wait_for(lambda: rec.rtp_ssrcs() == sender_ssrcs, what="RTP on both SSRCs")
        # aiortc's senders send an SR about every second: it reaches on_rtcp decrypted.
        await wait_for(lambda: any(p[1] == 200 for p in rec.rtcp), 5, "an RTCP SR")
        await wait_for(lambda: channel.readyState == "open" and lossy.readyState == "open")
        channel.send(b"hello")
        lossy.send("text")
        await wait_for(lambda: len(rec.data) == 2, what="data from aiortc")
        assert sorted(rec.data) == [("_lossy", b"text"), ("_reliable", b"hello")]
        transport.send_data("_reliable", b"back")
        await wait_for(lambda: received == [b"back"], what="data to aiortc")
        stats = transport.stats
        assert stats.rtp_packets_received == len(rec.rtp) > 0
        assert stats.data_received == 2 and stats.data_sent == 1
        # the remote side going away is reported
        await pc.close()
        await wait_for(lambda: transport.state in ("closed", "failed"), what="remote close")
    finally:
        await pc.close()
        await transport.close()
    assert rec.states[:2] == ["connecting", "connected"]
    assert rec.states[-1] in ("closed", "failed")


@pytest.mark.parametrize("send_mode", SEND_MODES)
async def test_subscriber_sends_rtp_and_data_to_aiortc(send_mode: SendMode) -> None:
    rec = Recorder()
    transport = rec.transport("subscriber", TransportConfig(send_mode=send_mode))
    audio_mid = transport.add_track("audio", "audio/opus", 1111, "PA_x|camera", "TR_a")
    video_mid = transport.add_track("video", "video/VP8", 2222, "PA_x|camera", "TR_v")
    assert (audio_mid, video_mid) == ("1", "2")
    offer = await transport.create_offer()
    pc = aiortc_peer()
    channels: dict[str, Any] = {}
    messages: list[tuple[str, bytes]] = []
    tracks: list[Any] = []
    pc.on("track", tracks.append)

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        channels[channel.label] = channel
        channel.on("message", lambda m, label=channel.label: messages.append((label, m)))

    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await transport.handle_answer(pc.localDescription.sdp)
        assert [t.kind for t in tracks] == ["audio", "video"]
        await wait_for(lambda: transport.state == "connected", what="connected")
        assert transport.ice_role == "controlling" and transport.dtls_role == "server"
        audio_pt = transport.track_codec(audio_mid).payload_type
        video_pt = transport.track_codec(video_mid).payload_type
        assert (audio_pt, video_pt) == (111, 96)
        audio = {"payload_type": audio_pt, "ssrc": 1111}
        video = {"payload_type": video_pt, "ssrc": 2222}
        for seq in range(40):
            ts = seq * 3000
            transport.send_rtp(rtp(b"\xfc" + bytes(40), sequence_number=seq, timestamp=ts, **audio))
            transport.send_rtp(
                rtp(b"\x10" + bytes(100), sequence_number=seq, timestamp=ts, **video)
            )
            await asyncio.sleep(0.005)
        # a frame's worth of equal-size packets in one loop iteration: one GSO send in "gso" mode
        gso_before = COUNTERS.send_gso_datagrams
        for seq in range(40, 60):
            ts = seq * 3000
            transport.send_rtp(
                rtp(b"\x10" + bytes(1000), sequence_number=seq, timestamp=ts, **video)
            )
        await wait_for(lambda: transport.stats.rtp_packets_sent == 100, what="sent")
        await asyncio.sleep(0)  # the end of this loop iteration: the burst has left
        assert (COUNTERS.send_gso_datagrams - gso_before >= 20) == (send_mode == "gso")

        async def counts() -> dict[int, int]:
            return await inbound_rtp(pc)

        deadline = time.monotonic() + 5
        while (got := await counts()) != {1111: 40, 2222: 60}:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        # aiortc's receivers answer with RTCP (RR, NACK/PLI) on the bundle.
        await wait_for(lambda: len(rec.rtcp) > 0, 5, "RTCP from aiortc")
        await wait_for(lambda: {"_reliable", "_lossy"} <= set(channels), what="channels")
        assert channels["_reliable"].ordered and not channels["_lossy"].ordered
        assert channels["_lossy"].maxRetransmits == 0
        await wait_for(lambda: all(c.readyState == "open" for c in channels.values()))
        transport.send_data("_reliable", b"r")
        transport.send_data("_lossy", b"l")
        channels["_reliable"].send(b"up")
        await wait_for(lambda: len(messages) == 2 and len(rec.data) == 1, what="data")
        assert sorted(messages) == [("_lossy", b"l"), ("_reliable", b"r")]
        assert rec.data == [("_reliable", b"up")]
    finally:
        await pc.close()
        await transport.close()


async def test_publisher_renegotiation_adds_and_deactivates_tracks() -> None:
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    pc.createDataChannel("_reliable")
    transport, published = await publish(rec, pc)
    try:
        await wait_for(lambda: transport.state == "connected", what="connected")
        local_ufrag = transport._local.ice_ufrag if transport._local else None
        # the client publishes a camera: a new m-line on the same transport
        pc.addTrack(VideoStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        answer, published = await transport.handle_offer(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        assert [p.kind for p in published] == ["audio", "video"]
        video_ssrc = published[1].ssrcs[0]
        await wait_for(lambda: video_ssrc in rec.rtp_ssrcs(), what="video after renegotiation")
        parsed = SessionDescription.parse(answer)
        assert parsed.media[0].ice_ufrag == local_ufrag
        assert parsed.session_version == 2
        # the client unpublishes the camera: its m-line goes inactive
        video = next(t for t in pc.getTransceivers() if t.kind == "video")
        video.direction = "inactive"
        await pc.setLocalDescription(await pc.createOffer())
        answer, published = await transport.handle_offer(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        assert [(p.kind, p.direction) for p in published] == [
            ("audio", "sendrecv"),
            ("video", "inactive"),
        ]
        assert SessionDescription.parse(answer).media[2].direction == "inactive"
        assert transport.state == "connected"
        assert rec.states == ["connecting", "connected"]  # no ICE/DTLS restart
    finally:
        await pc.close()
        await transport.close()


async def test_subscriber_renegotiation_removes_and_recycles_m_lines() -> None:
    rec = Recorder()
    transport = rec.transport("subscriber")
    video_mid = transport.add_track("video", "video/VP8", 2222, "PA_x|TR_v", "TR_v")
    pc = aiortc_peer()

    async def negotiate() -> SessionDescription:
        offer = await transport.create_offer()
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await transport.handle_answer(pc.localDescription.sdp)
        return SessionDescription.parse(offer)

    try:
        first = await negotiate()
        await wait_for(lambda: transport.state == "connected", what="connected")
        transport.remove_track(video_mid)
        # not answered yet: a new track gets a new m-line
        audio_mid = transport.add_track("audio", "audio/opus", 1111, "PA_x|TR_a", "TR_a")
        second = await negotiate()
        assert second.session_version > first.session_version
        removed = second.media_by_mid(video_mid)
        assert removed is not None and removed.direction == "inactive" and not removed.ssrcs
        assert removed.msid is None
        # once the inactive m-line was answered, the next video track recycles it
        assert transport.add_track("video", "video/VP8", 3333, "PA_y|TR_w", "TR_w") == video_mid
        third = await negotiate()
        assert [m.mid for m in third.media] == ["0", video_mid, audio_mid]
        recycled = third.media_by_mid(video_mid)
        assert recycled is not None and recycled.direction == "sendonly"
        assert list(recycled.ssrcs) == [3333]
        for seq in range(20):
            transport.send_rtp(
                rtp(
                    b"\x10" + bytes(50),
                    payload_type=96,
                    sequence_number=seq,
                    timestamp=seq * 3000,
                    ssrc=3333,
                )
            )
        deadline = time.monotonic() + 5
        while (await inbound_rtp(pc)).get(3333, 0) < 20:
            assert time.monotonic() < deadline, await inbound_rtp(pc)
            await asyncio.sleep(0.05)
        assert rec.states == ["connecting", "connected"]
        with pytest.raises(KeyError):
            transport.remove_track("99")
    finally:
        await pc.close()
        await transport.close()


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


async def test_close_releases_sockets_and_tasks() -> None:
    gc.collect()
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    pc.createDataChannel("_reliable")
    transport, _ = await publish(rec, pc)
    await wait_for(lambda: transport.state == "connected", what="connected")
    assert len(open_fds()) > len(fds_before)
    await transport.close()
    await transport.close()  # idempotent
    await pc.close()
    assert transport.state == "closed"
    assert rec.states == ["connecting", "connected", "closed"]
    transport.send_rtp(rtp(b"x", payload_type=111, sequence_number=1, timestamp=3000, ssrc=1))
    transport.send_data("_reliable", b"x")
    assert transport.stats.send_dropped == 1 and transport.stats.data_dropped == 1
    deadline = time.monotonic() + 3
    while True:
        await asyncio.sleep(0.05)
        leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
        leftover.discard(asyncio.current_task())  # type: ignore[arg-type]
        fds = open_fds()
        if not leftover and fds <= fds_before:
            break
        assert time.monotonic() < deadline, (leftover, fds - fds_before)
    with pytest.raises(RuntimeError):
        await transport.handle_offer("v=0")


async def test_single_udp_port_is_shared_and_released() -> None:
    port = free_udp_port()
    config = TransportConfig(udp_port=port)
    peers = []
    for _ in range(3):
        rec, pc = Recorder(), aiortc_peer()
        pc.addTrack(AudioStreamTrack())
        transport, _ = await publish(rec, pc, config)
        peers.append((rec, pc, transport))
    try:
        for rec, _, transport in peers:
            candidates = [aioice.Candidate.from_sdp(c) for c in transport.local_candidates]
            assert candidates and {c.port for c in candidates} == {port}
            await wait_for(lambda t=transport: t.state == "connected", what="connected")
            await wait_for(lambda r=rec: len(r.rtp) > 5, what="RTP through the shared port")
        mux = await open_mux("127.0.0.1", port, None)
        assert mux.connections == 3
        rec, pc, transport = peers.pop(0)
        await transport.close()
        await pc.close()
        assert mux.connections == 2
        for rec, _, _ in peers:  # the others keep receiving
            count = len(rec.rtp)
            await wait_for(lambda r=rec, n=count: len(r.rtp) > n + 5, what="RTP after a close")
    finally:
        for _, pc, transport in peers:
            await transport.close()
            await pc.close()
    assert mux.connections == 0
    close_muxes()


async def test_unused_transport_closes_cleanly() -> None:
    fds_before = open_fds()
    rec = Recorder()
    transport = rec.transport("subscriber")
    await transport.create_offer()
    await transport.close()
    assert open_fds() <= fds_before
    assert rec.states == ["closed"]


async def test_remote_candidates_garbage_mdns_and_early_arrival() -> None:
    rec = Recorder()
    pc = aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    offer = SessionDescription.parse(pc.localDescription.sdp)
    candidates = [c for m in offer.media for c in m.candidates]
    for m in offer.media:  # the candidates only arrive trickled, some before the offer
        m.candidates = []
        m.end_of_candidates = False
    transport = rec.transport("publisher")
    try:
        for garbage in [
            "",
            "{",
            "null",
            "[1,2]",
            '{"candidate": 5}',
            '{"candidate": ""}',
            '{"candidate": "candidate:1 1 udp 1 2001:db8::zz 9 typ host"}',
            '{"candidate": "candidate:1 1 udp x 1.2.3.4 9 typ host"}',
            '{"candidate": "candidate:1 1 tcp 1 127.0.0.1 9 typ host tcptype active"}',
            '{"candidate": "candidate:1 2 udp 1 127.0.0.1 9 typ host"}',
            '{"candidate": "candidate:1 1 udp 1 8e3c-aa.local 9 typ host", "sdpMid": "0"}',
            '{"candidate": "candidate:1 1 udp 1 127.0.0.1 70000 typ host"}',
            "\x00\xff",
        ]:
            transport.add_remote_candidate(garbage)
        transport.add_remote_candidate(
            json.dumps(
                {"candidate": f"candidate:{candidates[0]}", "sdpMid": "0", "sdpMLineIndex": 0}
            )
        )
        answer, _ = await transport.handle_offer(str(offer))
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        for candidate in candidates[1:]:  # and after
            transport.add_remote_candidate(f'{{"candidate": "candidate:{candidate}"}}')
        await wait_for(lambda: transport.state == "connected", what="connected")
        assert rec.states == ["connecting", "connected"]
    finally:
        await pc.close()
        await transport.close()


async def test_peer_reflexive_only() -> None:
    """No remote candidate at all: the peer's checks alone (as with Chrome's mDNS) connect."""
    rec = Recorder()
    transport = rec.transport("subscriber")
    transport.add_track("audio", "audio/opus", 1111, "PA_x|camera", "TR_a")
    offer = await transport.create_offer()
    pc = aiortc_peer()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = SessionDescription.parse(pc.localDescription.sdp)
        for m in answer.media:
            m.candidates = []
        await transport.handle_answer(str(answer))
        await wait_for(lambda: transport.state == "connected", what="connected via prflx")
    finally:
        await pc.close()
        await transport.close()


async def test_port_range_node_ip_and_connect_timeout() -> None:
    recs = [Recorder() for _ in range(3)]
    rec = recs[0]
    low, high = free_udp_range(10)  # outside the kernel's ephemeral range, free now
    config = TransportConfig(port_range_start=low, port_range_end=high,
                             node_ip="203.0.113.7", connect_timeout=1.0)  # fmt: skip
    transports = [r.transport("subscriber", config) for r in recs]
    try:
        offers = [SessionDescription.parse(await t.create_offer()) for t in transports]
        ports = set()
        for offer in offers:
            media = offer.media[0]
            candidate = media.candidates[0].split()
            assert candidate[4] == "203.0.113.7"
            assert low <= int(candidate[5]) <= high
            assert media.connection == "IN IP4 203.0.113.7"
            ports.add(int(candidate[5]))
        assert len(ports) == 3
        # an answer from nobody: ICE cannot complete, the transport reports "failed"
        pc = aiortc_peer()
        await pc.setRemoteDescription(RTCSessionDescription(str(offers[0]), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        await pc.close()
        await transports[0].handle_answer(answer)
        await wait_for(lambda: transports[0].state == "failed", 5, "failed")
        assert rec.states == ["connecting", "failed"]
        transports[0].send_rtp(b"\x80" + bytes(20))
        assert transports[0].stats.send_dropped == 1
        # the two offers nobody answered fail too, after the same timeout
        await wait_for(lambda: all(r.states == ["failed"] for r in recs[1:]), 5, "unanswered")
    finally:
        for t in transports:
            await t.close()
    with pytest.raises(ValueError):
        TransportConfig(port_range_start=5, port_range_end=4)


async def test_bad_sdp_is_rejected_with_sdp_error() -> None:
    from sfu.media.sdp import SdpError

    rec = Recorder()
    transport = rec.transport("publisher")
    try:
        with pytest.raises(SdpError):
            await transport.handle_offer("garbage")
        with pytest.raises(SdpError):  # no ICE credentials
            await transport.handle_offer(
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
            )
        with pytest.raises(RuntimeError):
            transport.add_track("audio", "audio/opus", 1, "a", "b")
    finally:
        await transport.close()


async def test_two_peer_transports_connect_to_each_other() -> None:
    """Our subscriber offer answered by our publisher transport (e.g. a relay between SFUs)."""
    down, up = Recorder(), Recorder()
    subscriber = down.transport("subscriber")
    publisher = up.transport("publisher")
    subscriber.add_track("video", "video/VP8", 4242, "PA_a|camera", "TR_v")
    try:
        answer, published = await publisher.handle_offer(await subscriber.create_offer())
        await subscriber.handle_answer(answer)
        assert [(p.kind, p.ssrcs, p.direction) for p in published] == [
            ("video", (4242,), "sendonly")
        ]
        await wait_for(lambda: "connected" == subscriber.state == publisher.state, what="both")
        for seq in range(50):
            subscriber.send_rtp(
                rtp(
                    bytes(200),
                    payload_type=96,
                    sequence_number=seq,
                    timestamp=seq * 3000,
                    ssrc=4242,
                )
            )
        subscriber.send_rtcp(struct.pack("!BBHI", 0x80, 200, 6, 4242) + bytes(20))  # an SR
        publisher.send_rtcp(struct.pack("!BBHII", 0x81, 206, 2, 1, 4242))  # a PLI back
        await wait_for(lambda: len(up.rtp) == 50 and len(up.rtcp) == 1 and len(down.rtcp) == 1)
        assert up.rtp[7] == rtp(
            bytes(200), payload_type=96, sequence_number=7, timestamp=21000, ssrc=4242
        )  # byte-exact, payload untouched
        await wait_for(lambda: subscriber._channels["_reliable"].readyState == "open")
        subscriber.send_data("_lossy", b"x")
        await wait_for(lambda: up.data == [("_lossy", b"x")], what="data")
        # an ICE restart in a later offer is refused, not half-applied
        offer = SessionDescription.parse(await subscriber.create_offer())
        for m in offer.media:
            m.ice_ufrag = "zzzz"
        with pytest.raises(IceRestartError):
            await publisher.handle_offer(str(offer))
        assert publisher.state == "connected"
    finally:
        await subscriber.close()
        await publisher.close()


async def test_consent_expiry_reports_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer vanishes without a DTLS close_notify: consent checks expire (RFC 7675)."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.05)
    down, up = Recorder(), Recorder()
    subscriber = down.transport("subscriber")
    publisher = up.transport("publisher")
    subscriber.add_track("audio", "audio/opus", 1, "PA_a|camera", "TR_a")
    try:
        answer, _ = await publisher.handle_offer(await subscriber.create_offer())
        await subscriber.handle_answer(answer)
        await wait_for(lambda: "connected" == subscriber.state == publisher.state, what="both")
        for protocol in publisher._connection._protocols:  # the peer goes silent
            protocol.datagram_received = lambda data, addr: None
        await wait_for(lambda: "failed" == subscriber.state == publisher.state, 10, "expiry")
        assert down.states == ["connecting", "connected", "failed"]
        assert up.states == ["connecting", "connected", "failed"]
        subscriber.send_rtp(rtp(b"x", payload_type=111, sequence_number=1, timestamp=3000, ssrc=1))
        assert subscriber.stats.send_dropped == 1
    finally:
        await subscriber.close()
        await publisher.close()
    assert down.states[-1] == "closed"


async def test_datagrams_refused_at_flush_time_are_uncounted_and_dropped() -> None:
    transport = Recorder().transport("subscriber")
    try:
        transport.rtp_packets_sent, transport.rtcp_packets_sent, transport.bytes_sent = 5, 2, 900
        transport._on_send_failed(
            rtp(bytes(88), payload_type=96, sequence_number=1, timestamp=3000, ssrc=1)
        )  # 100 bytes of SRTP
        transport._on_send_failed(b"\x80\xc8" + bytes(48))  # 50 bytes of SRTCP (an SR)
        stats = transport.stats
        assert (stats.rtp_packets_sent, stats.rtcp_packets_sent) == (4, 1)
        assert stats.bytes_sent == 750 and stats.send_dropped == 2
    finally:
        await transport.close()
