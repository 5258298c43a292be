"""PeerTransport against real Chromium (a raw RTCPeerConnection in a page, no LiveKit).

Proves SDP, ICE (trickled candidates, peer-reflexive discovery), DTLS and SRTP interop with the
browser: Chrome publishes a simulcast camera (rids q/h/f) to the SFU's publisher transport, and
the SFU forwards Chrome's own `q` layer back to it over a subscriber transport, where Chrome
decodes the frames.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page

from sfu.media.rtp import extensions as ext
from sfu.media.transport import PeerTransport, PublishedMedia, TransportConfig
from tests.harness.chromium import launch_chromium, secure_page

pytestmark = pytest.mark.slow  # starts Chromium

PAGE_JS = """
window.startPublisher = async () => {
  const pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
  window.pubPc = pc;
  pc.onicecandidate = e => { if (e.candidate) window.sfuTrickle('pub', JSON.stringify(e.candidate)); };
  const stream = await navigator.mediaDevices.getUserMedia(
      {video: {width: 1280, height: 720, frameRate: 30}, audio: true});
  pc.addTransceiver(stream.getAudioTracks()[0], {direction: 'sendonly', streams: [stream]});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly', streams: [stream],
    sendEncodings: [{rid: 'q', scaleResolutionDownBy: 4}, {rid: 'h', scaleResolutionDownBy: 2},
                    {rid: 'f', scaleResolutionDownBy: 1}]});
  window.pubData = pc.createDataChannel('_reliable');
  window.pubData.onopen = () => window.pubData.send('hello from chrome');
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  return offer.sdp;
};
window.unpublishVideo = async () => {
  const pc = window.pubPc;
  pc.removeTrack(pc.getSenders().find(s => s.track && s.track.kind === 'video'));
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  return offer.sdp;
};
window.startSubscriber = async (offer) => {
  const pc = new RTCPeerConnection({bundlePolicy: 'max-bundle'});
  window.subPc = pc;
  window.subTracks = [];
  window.subMessages = [];
  pc.onicecandidate = e => { if (e.candidate) window.sfuTrickle('sub', JSON.stringify(e.candidate)); };
  pc.ontrack = e => {
    window.subTracks.push({kind: e.track.kind, streams: e.streams.map(s => s.id)});
    const video = document.createElement('video');
    video.muted = true; video.autoplay = true; video.playsInline = true;
    video.srcObject = e.streams[0];
    document.body.appendChild(video);
    video.play().catch(() => {});
  };
  pc.ondatachannel = e => {
    e.channel.binaryType = 'arraybuffer';
    e.channel.onmessage = m => window.subMessages.push(
        [e.channel.label, new TextDecoder().decode(m.data)]);
    e.channel.onopen = () => e.channel.send('sub ' + e.channel.label);
    if (e.channel.readyState === 'open') e.channel.send('sub ' + e.channel.label);
  };
  await pc.setRemoteDescription({type: 'offer', sdp: offer});
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  return answer.sdp;
};
window.subVideoStats = async () => {
  const out = {framesDecoded: 0, packetsReceived: 0, ssrc: 0};
  (await window.subPc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.framesDecoded = s.framesDecoded || 0;
      out.packetsReceived = s.packetsReceived || 0;
      out.ssrc = s.ssrc;
    }
  });
  return out;
};
"""


def rtp_ssrc(packet: bytes) -> int:
    return int(struct.unpack_from("!I", packet, 8)[0])


def rtp_extensions(packet: bytes) -> dict[int, bytes]:
    """One-byte (RFC 8285 §4.2) and two-byte (§4.3) header extension elements of an RTP packet."""
    if len(packet) < 12 or not packet[0] & 0x10:
        return {}
    offset = 12 + 4 * (packet[0] & 0x0F)
    profile, length = struct.unpack_from("!HH", packet, offset)
    data = packet[offset + 4 : offset + 4 + 4 * length]
    elements: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        if profile == 0xBEDE:
            if data[i] == 0:
                i += 1
                continue
            ext_id, size = data[i] >> 4, (data[i] & 0x0F) + 1
            if ext_id == 15:
                break
            elements[ext_id] = data[i + 1 : i + 1 + size]
            i += 1 + size
        elif profile & 0xFFF0 == 0x1000:
            if data[i] == 0:
                i += 1
                continue
            ext_id, size = data[i], data[i + 1]
            elements[ext_id] = data[i + 2 : i + 2 + size]
            i += 2 + size
        else:
            break
    return elements


def strip_extensions(packet: bytes) -> bytes:
    """The packet without its header extension block (extension ids differ between PCs)."""
    if not packet[0] & 0x10:
        return packet
    offset = 12 + 4 * (packet[0] & 0x0F)
    (length,) = struct.unpack_from("!H", packet, offset + 2)
    return bytes([packet[0] & ~0x10]) + packet[1:offset] + packet[offset + 4 + 4 * length :]


def remb(bitrate: int, ssrcs: list[int]) -> bytes:
    """RTCP REMB (draft-alvestrand-rmcat-remb): PSFB, FMT 15, from sender SSRC 1."""
    exponent = 0
    while bitrate >= 1 << 18:
        bitrate >>= 1
        exponent += 1
    fci = b"REMB" + struct.pack("!BBH", len(ssrcs), (exponent << 2) | (bitrate >> 16),
                                bitrate & 0xFFFF)  # fmt: skip
    fci += b"".join(struct.pack("!I", s) for s in ssrcs)
    length = (8 + len(fci)) // 4
    return struct.pack("!BBHII", 0x80 | 15, 206, length, 1, 0) + fci


def pli(media_ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80 | 1, 206, 2, 1, media_ssrc)


def rtcp_plis(compound: bytes) -> int:
    """How many PLI/FIR packets a compound RTCP packet holds."""
    count, offset = 0, 0
    while offset + 4 <= len(compound):
        first, packet_type, length = struct.unpack_from("!BBH", compound, offset)
        if packet_type == 206 and (first & 0x1F) in (1, 4):
            count += 1
        offset += 4 * (length + 1)
    return count


async def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Publisher:
    """Chrome's simulcast publisher PC against a publisher-role PeerTransport."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.states: list[str] = []
        self.data: list[tuple[str, bytes]] = []
        self.rid_of_ssrc: dict[int, str] = {}
        self.packets: dict[int, int] = {}
        self.on_packet: Callable[[bytes], None] | None = None
        self.rid_id: int | None = None
        self.transport = PeerTransport(
            "publisher",
            TransportConfig(),
            on_rtp=self._on_rtp,
            on_rtcp=lambda data: None,
            on_data=lambda label, data: self.data.append((label, data)),
            on_state=self.states.append,
        )
        self.published: list[PublishedMedia] = []

    def _on_rtp(self, packet: bytes) -> None:
        ssrc = rtp_ssrc(packet)
        self.packets[ssrc] = self.packets.get(ssrc, 0) + 1
        if self.rid_id is not None and ssrc not in self.rid_of_ssrc:
            rid = rtp_extensions(packet).get(self.rid_id)
            if rid:
                self.rid_of_ssrc[ssrc] = rid.decode()
        if self.on_packet is not None:
            self.on_packet(packet)

    async def start(self) -> None:
        offer = await self.page.evaluate("window.startPublisher()")
        answer, self.published = await self.transport.handle_offer(offer)
        video = next(m for m in self.published if m.kind == "video")
        self.rid_id = video.extension_ids[ext.RTP_STREAM_ID]
        await self.page.evaluate(
            "a => window.pubPc.setRemoteDescription({type: 'answer', sdp: a})", answer
        )
        await wait_for(lambda: self.transport.state == "connected", 10, "publisher connected")

    def ssrc_of(self, rid: str) -> int | None:
        for ssrc, value in self.rid_of_ssrc.items():
            if value == rid:
                return ssrc
        return None

    def send_remb(self) -> None:
        ssrcs = [s for s in self.rid_of_ssrc]
        if ssrcs:
            self.transport.send_rtcp(remb(10_000_000, ssrcs))


async def _open_page(transports: dict[str, PeerTransport], browser: Any) -> Page:
    page = await secure_page(browser)

    def trickle(target: str, candidate: str) -> None:
        transports[target].add_remote_candidate(candidate)

    await page.expose_function("sfuTrickle", trickle)
    await page.add_script_tag(content=PAGE_JS)
    return page


async def test_chrome_publishes_three_simulcast_layers() -> None:
    async with launch_chromium() as browser:
        transports: dict[str, PeerTransport] = {}
        page = await _open_page(transports, browser)
        publisher = Publisher(page)
        transports["pub"] = publisher.transport
        try:
            await publisher.start()
            video = next(m for m in publisher.published if m.kind == "video")
            assert video.rids == ("q", "h", "f")
            assert video.codec.name == "VP8"
            assert [m.kind for m in publisher.published] == ["audio", "video"]

            deadline = time.monotonic() + 20
            while set(publisher.rid_of_ssrc.values()) != {"q", "h", "f"}:
                assert time.monotonic() < deadline, f"layers seen: {publisher.rid_of_ssrc}"
                publisher.send_remb()  # lets Chrome's bandwidth estimate reach the top layer
                await asyncio.sleep(0.2)
            assert len(publisher.rid_of_ssrc) == 3  # three distinct SSRCs, one per rid
            audio = next(m for m in publisher.published if m.kind == "audio")
            await wait_for(lambda: any(s in publisher.packets for s in audio.ssrcs), 5, "audio")
            await wait_for(lambda: ("_reliable", b"hello from chrome") in publisher.data, 5, "dc")
            assert publisher.transport.stats.rtcp_packets_sent > 0

            # renegotiation on the live transport: Chrome unpublishes the camera
            offer = await page.evaluate("window.unpublishVideo()")
            answer, published = await publisher.transport.handle_offer(offer)
            await page.evaluate(
                "a => window.pubPc.setRemoteDescription({type: 'answer', sdp: a})", answer
            )
            assert [(m.kind, m.direction) for m in published] == [
                ("audio", "sendonly"),
                ("video", "inactive"),
            ]
            assert await page.evaluate("window.pubPc.signalingState") == "stable"
            audio_ssrc = audio.ssrcs[0]
            before = publisher.packets[audio_ssrc]
            await wait_for(lambda: publisher.packets[audio_ssrc] > before + 10, 5, "audio")
            assert publisher.states == ["connecting", "connected"]
        finally:
            await publisher.transport.close()
        assert publisher.states == ["connecting", "connected", "closed"]


async def test_chrome_decodes_its_own_q_layer_forwarded_by_subscriber_transport() -> None:
    async with launch_chromium() as browser:
        transports: dict[str, PeerTransport] = {}
        page = await _open_page(transports, browser)
        publisher = Publisher(page)
        transports["pub"] = publisher.transport
        sub_states: list[str] = []
        sub_data: list[tuple[str, bytes]] = []
        plis: list[int] = []
        subscriber = PeerTransport(
            "subscriber",
            TransportConfig(),
            on_rtp=lambda data: None,
            on_rtcp=lambda data: plis.append(rtcp_plis(data)),
            on_data=lambda label, data: sub_data.append((label, data)),
            on_state=sub_states.append,
        )
        transports["sub"] = subscriber
        try:
            await publisher.start()
            await wait_for(lambda: publisher.ssrc_of("q") is not None, 10, "the q layer")
            q_ssrc = publisher.ssrc_of("q")
            assert q_ssrc is not None

            down_ssrc = 0x5F0_0001
            mid = subscriber.add_track(
                "video", "video/VP8", down_ssrc, "PA_chrome|TR_cam", "TR_cam"
            )
            payload_type = subscriber.track_codec(mid).payload_type
            offer = await subscriber.create_offer()
            answer = await page.evaluate("o => window.startSubscriber(o)", offer)
            await subscriber.handle_answer(answer)
            await wait_for(lambda: subscriber.state == "connected", 10, "subscriber connected")

            def forward(packet: bytes) -> None:
                if rtp_ssrc(packet) != q_ssrc:
                    return
                out = bytearray(strip_extensions(packet))
                out[1] = (out[1] & 0x80) | payload_type
                struct.pack_into("!I", out, 8, down_ssrc)
                subscriber.send_rtp(bytes(out))

            publisher.on_packet = forward
            deadline = time.monotonic() + 20
            stats: dict[str, int] = {}
            while True:
                if sum(plis):  # forward the subscriber's key frame requests to the publisher
                    plis.clear()
                    publisher.transport.send_rtcp(pli(q_ssrc))
                publisher.send_remb()
                stats = await page.evaluate("window.subVideoStats()")
                if stats["framesDecoded"] >= 10:
                    break
                assert time.monotonic() < deadline, f"subscriber stats: {stats}"
                await asyncio.sleep(0.2)
            assert stats["ssrc"] == down_ssrc
            assert subscriber.stats.rtp_packets_sent > 0
            tracks = await page.evaluate("window.subTracks")
            assert tracks == [{"kind": "video", "streams": ["PA_chrome|TR_cam"]}]

            subscriber.send_data("_reliable", b"to chrome")
            # whether the channels come up, not how fast: once, in a full `make test`, the
            # reliable one took over 5 s after the video (a lost SCTP INIT or COOKIE is resent
            # after 3 s, RFC 4960's RTO.Initial and aiortc's, then after 6 s)
            await wait_for(lambda: ("_reliable", b"sub _reliable") in sub_data, 15, "dc up")
            await wait_for(lambda: ("_lossy", b"sub _lossy") in sub_data, 15, "lossy dc up")

            async def delivered() -> bool:
                messages = await page.evaluate("window.subMessages")
                return ["_reliable", "to chrome"] in messages

            deadline = time.monotonic() + 5
            while not await delivered():
                assert time.monotonic() < deadline, "data channel message to Chrome"
                await asyncio.sleep(0.05)
        finally:
            publisher.on_packet = None
            await subscriber.close()
            await publisher.transport.close()
        assert sub_states == ["connecting", "connected", "closed"]
