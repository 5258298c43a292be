"""A synthetic publisher: AddTrackRequest, its own SDP offer (simulcast rids), paced RTP.

Each publisher announces a camera (VP8, simulcast `q`/`h`/`f` or one layer) and a microphone
(Opus), offers them on its publisher transport (ICE controlling), and once DTLS-SRTP is up sends
the cached loops at their frame rates. Every payload ends with a `Trailer` stamped at send time.

Like Element Call's publishers (dynacast on), a `SubscribedQualityUpdate` pauses the layers whose
quality nobody watches — the layer's clock runs on, but no packets and no sequence numbers are
spent — and a re-enabled layer resumes with a key frame. A PLI or FIR makes the next frame of that
layer the next cached key frame. Every `SR_INTERVAL_S` each stream that is sending gets an RTCP
SR + SDES CNAME whose NTP ↔ RTP mapping comes from the monotonic clock the frames are paced by.
A generic NACK is answered from a short history of the datagrams already sent (re-sent as they
were, already protected: no RTX, as none is negotiated).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field

from livekit.protocol import models, rtc

from loadtest.media import AUDIO_FRAME_MS, LAYERS, MediaSet
from loadtest.packets import (
    PT_PSFB,
    PT_RTPFB,
    Feedback,
    PacketError,
    SdesCname,
    SenderReport,
    Trailer,
    ntp_timestamp,
    rtp_header,
    split_rtcp,
    vp8_descriptor,
    vp8_packetize,
)
from loadtest.participant import Participant
from loadtest.webrtc import LocalParameters, Sdp, SdpError, Transport

__all__ = ["Publisher"]

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
MID_EXT_ID, RID_EXT_ID = 4, 10
VP8_PT, OPUS_PT = 96, 111
MAX_PAYLOAD = 1100
PUBLISH_TIMEOUT_S = 10.0
PLI_MIN_INTERVAL_S = 0.5
DTX_INTERVAL_MS = 400
RESYNC_S = 1.0
SR_INTERVAL_S = 1.0
VIDEO_HISTORY = 512  # datagrams kept per video stream for NACKs (≈ 1 s of 720p)
AUDIO_HISTORY = 64
VIDEO_CLOCK, AUDIO_CLOCK = 90_000, 48_000
#: Unix time minus monotonic time, fixed once: SR NTP times follow the pacing clock.
_UNIX_MINUS_MONOTONIC_NS = time.time_ns() - time.monotonic_ns()


@dataclass
class _Stream:
    """One outgoing RTP stream (a simulcast layer or the microphone)."""

    ssrc: int
    rid: str
    layer: int
    sequence_number: int
    timestamp: int
    frame_index: int = 0
    picture_id: int = 0
    key_requested: bool = False
    last_pli: float = 0.0
    packets: int = 0
    octets: int = 0  # payload octets, for the SR
    #: False while dynacast has this layer paused (nobody subscribes to its quality)
    active: bool = True
    #: the RTP timestamp of the last frame sent, and the monotonic time it was captured (sent)
    sent_timestamp: int = 0
    sent_ns: int = 0
    history: list[bytes | None] = field(default_factory=list)

    @property
    def clock_rate(self) -> int:
        return AUDIO_CLOCK if not self.rid else VIDEO_CLOCK

    def remember(self, sequence_number: int, datagram: bytes) -> None:
        if not self.history:
            self.history = [None] * (VIDEO_HISTORY if self.rid else AUDIO_HISTORY)
        self.history[sequence_number % len(self.history)] = datagram

    def recall(self, sequence_number: int) -> bytes | None:
        """The datagram sent with `sequence_number`, if still in the history."""
        if not self.history:
            return None
        datagram = self.history[sequence_number % len(self.history)]
        # SRTP leaves the RTP header in clear: check it is this sequence number, not an older one.
        if datagram is None or int.from_bytes(datagram[2:4], "big") != sequence_number:
            return None
        return datagram

    def sender_report(self, now_ns: int) -> SenderReport:
        """NTP now ↔ the RTP timestamp now, extrapolated from the last frame's capture time."""
        elapsed_ns = now_ns - self.sent_ns
        rtp_now = self.sent_timestamp + elapsed_ns * self.clock_rate // 1_000_000_000
        return SenderReport(
            self.ssrc,
            ntp_timestamp(now_ns + _UNIX_MINUS_MONOTONIC_NS),
            rtp_now & 0xFFFFFFFF,
            self.packets,
            self.octets,
        )


class Publisher(Participant):
    """Publishes a camera and/or a microphone made of cached media."""

    def __init__(
        self,
        url: str,
        token: str,
        identity: str,
        *,
        number: int,
        media: MediaSet,
        video_rids: tuple[str, ...],
        audio: bool,
        talking: bool,
    ) -> None:
        super().__init__(url, token, identity, auto_subscribe=False)
        self.number = number
        self.media = media
        self.video_rids = video_rids
        self.audio = audio
        self.talking = talking
        self.pub_transport = Transport(controlling=True)
        self.pub_transport.on_rtcp = self._on_rtcp
        self.streams: dict[int, _Stream] = {}
        self.plis = 0
        self.quality_updates = 0
        self.sender_reports = 0
        self.nacked = 0  # sequence numbers NACKed
        self.retransmitted = 0  # of those, re-sent from the history
        self.video_sid: str | None = None
        self._published: dict[str, asyncio.Future[models.TrackInfo]] = {}
        self._pub_answer: asyncio.Future[rtc.SessionDescription] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._offer_id = 1
        self.sending = False

    @property
    def packets_sent(self) -> int:
        return sum(s.packets for s in self.streams.values())

    async def on_signal(self, kind: str | None, response: rtc.SignalResponse) -> None:
        if kind == "track_published":
            future = self._published.get(response.track_published.cid)
            if future is not None and not future.done():
                future.set_result(response.track_published.track)
        elif kind == "answer" and self._pub_answer is not None and not self._pub_answer.done():
            self._pub_answer.set_result(response.answer)
        elif kind == "subscribed_quality_update":
            self.on_quality_update(response.subscribed_quality_update)

    def transport_for(self, target: int) -> Transport | None:
        if target == rtc.SignalTarget.PUBLISHER:
            return self.pub_transport
        return super().transport_for(target)

    def on_quality_update(self, update: rtc.SubscribedQualityUpdate) -> None:
        """Dynacast: pause the layers nobody watches, resume the others with a key frame.

        Reads `subscribed_codecs` (the entry for vp8), falling back to the deprecated
        `subscribed_qualities`, as LiveKit's Rust SDK does; qualities not listed are left as
        they are.
        """
        if self.video_sid is None or update.track_sid != self.video_sid:
            return
        qualities = next(
            (list(c.qualities) for c in update.subscribed_codecs if c.codec.lower() == "vp8"),
            list(update.subscribed_qualities),
        )
        enabled: dict[int, bool] = {int(q.quality): q.enabled for q in qualities}
        self.quality_updates += 1
        for stream in self.streams.values():
            if not stream.rid or stream.layer not in enabled:
                continue
            on = enabled[stream.layer]
            if on and not stream.active:
                stream.key_requested = True  # an encoder layer restarts with a key frame
            stream.active = on

    async def publish(self) -> None:
        """Announce the tracks, negotiate, connect; raises on failure or timeout."""
        loop = asyncio.get_running_loop()
        requests: list[tuple[str, rtc.AddTrackRequest]] = []
        if self.video_rids:
            top = LAYERS[self.video_rids[-1]]
            layers = [
                models.VideoLayer(
                    quality=models.VideoQuality.Name(LAYERS[r].quality),
                    width=LAYERS[r].width,
                    height=LAYERS[r].height,
                    bitrate=LAYERS[r].bitrate,
                )
                for r in self.video_rids
            ]
            cid = f"video-{secrets.token_hex(6)}"
            requests.append(
                (
                    cid,
                    rtc.AddTrackRequest(
                        cid=cid,
                        name="camera",
                        type=models.TrackType.VIDEO,
                        source=models.TrackSource.CAMERA,
                        width=top.width,
                        height=top.height,
                        layers=layers,
                        simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid=cid)],
                    ),
                )
            )
        if self.audio:
            cid = f"audio-{secrets.token_hex(6)}"
            requests.append(
                (
                    cid,
                    rtc.AddTrackRequest(
                        cid=cid,
                        name="microphone",
                        type=models.TrackType.AUDIO,
                        source=models.TrackSource.MICROPHONE,
                    ),
                )
            )
        for cid, request in requests:
            self._published[cid] = loop.create_future()
            await self.signal.send(rtc.SignalRequest(add_track=request))
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            infos = await asyncio.gather(*self._published.values())
        self.video_sid = next((t.sid for t in infos if t.type == models.TrackType.VIDEO), None)
        local = await self.pub_transport.local_parameters()
        cids = {("video" if c.startswith("video") else "audio"): c for c, _ in requests}
        offer_sdp = self._offer(local, cids)
        self._pub_answer = loop.create_future()
        offer = rtc.SessionDescription(type="offer", sdp=offer_sdp, id=self._offer_id)
        await self.signal.send(rtc.SignalRequest(offer=offer))
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            answer = await self._pub_answer
        try:
            parsed = Sdp.parse(answer.sdp)
            remote = parsed.first_bundled()
        except SdpError as exc:
            raise ConnectionError(f"publisher answer: {exc}") from exc
        # We offered actpass: the answerer's `active` makes us the DTLS server.
        self.pub_transport.start(remote, "server" if remote.setup == "active" else "client")
        if not parsed.has_candidates:  # a trickling server: it wants ours trickled too
            await self.trickle_local(local, rtc.SignalTarget.PUBLISHER, remote.mid, 0)
        deadline = loop.time() + PUBLISH_TIMEOUT_S * 2
        while not self.pub_transport.connected.is_set():
            if self.pub_transport.failed:
                raise ConnectionError(self.pub_transport.failed)
            if loop.time() > deadline:
                raise TimeoutError(
                    f"publisher transport not connected after {PUBLISH_TIMEOUT_S * 2:.0f} s "
                    f"({self.pub_transport.describe()})"
                )
            await asyncio.sleep(0.05)

    def _offer(self, local: LocalParameters, cids: dict[str, str]) -> str:
        stream_id = f"{self.identity}-stream"
        mids: list[str] = []
        sections: list[str] = []
        candidates = [f"a={c}" for c in local.candidates] + ["a=end-of-candidates"]
        common = [
            "c=IN IP4 127.0.0.1",
            f"a=ice-ufrag:{local.ufrag}",
            f"a=ice-pwd:{local.pwd}",
            f"a=fingerprint:{local.fingerprint}",
            "a=setup:actpass",
            "a=sendonly",
            "a=rtcp-mux",
            "a=rtcp-rsize",
        ]
        if "audio" in cids:
            mid = str(len(mids))
            mids.append(mid)
            ssrc = secrets.randbits(32) | 1
            self.streams[ssrc] = _Stream(ssrc, "", 255, secrets.randbits(16), secrets.randbits(32))
            sections += [
                f"m=audio 9 UDP/TLS/RTP/SAVPF {OPUS_PT}",
                *common,
                f"a=mid:{mid}",
                f"a=msid:{stream_id} {cids['audio']}",
                f"a=extmap:{MID_EXT_ID} {EXT_MID}",
                f"a=rtpmap:{OPUS_PT} opus/48000/2",
                f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1",
                f"a=ssrc:{ssrc} cname:{self.identity}",
                *(candidates if len(mids) == 1 else []),
            ]
        if "video" in cids:
            mid = str(len(mids))
            mids.append(mid)
            lines = [
                f"m=video 9 UDP/TLS/RTP/SAVPF {VP8_PT}",
                *common,
                f"a=mid:{mid}",
                f"a=msid:{stream_id} {cids['video']}",
                f"a=extmap:{MID_EXT_ID} {EXT_MID}",
                f"a=extmap:{RID_EXT_ID} {EXT_RID}",
                f"a=rtpmap:{VP8_PT} VP8/90000",
                f"a=rtcp-fb:{VP8_PT} nack",
                f"a=rtcp-fb:{VP8_PT} nack pli",
                f"a=rtcp-fb:{VP8_PT} ccm fir",
                *(candidates if len(mids) == 1 else []),
            ]
            for rid in self.video_rids:
                ssrc = secrets.randbits(32) | 1
                self.streams[ssrc] = _Stream(
                    ssrc, rid, LAYERS[rid].quality, secrets.randbits(16), secrets.randbits(32)
                )
                self.streams[ssrc].picture_id = secrets.randbits(15)
            if len(self.video_rids) > 1:
                lines += [f"a=rid:{rid} send" for rid in self.video_rids]
                lines.append(f"a=simulcast:send {';'.join(self.video_rids)}")
            else:
                ssrc = next(s.ssrc for s in self.streams.values() if s.rid)
                lines.append(f"a=ssrc:{ssrc} cname:{self.identity}")
            sections += lines
        self._mids = dict(
            zip(("audio", "video") if "audio" in cids else ("video",), mids, strict=False)
        )
        head = [
            "v=0",
            f"o=- {secrets.randbits(62)} 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {' '.join(mids)}",
            "a=msid-semantic: WMS *",
        ]
        return "\r\n".join(head + sections) + "\r\n"

    # -- media ------------------------------------------------------------------------------
    def start_media(self) -> None:
        self.sending = True
        for stream in self.streams.values():
            if stream.rid:
                self._tasks.append(asyncio.create_task(self._video_loop(stream)))
            else:
                self._tasks.append(asyncio.create_task(self._audio_loop(stream)))
        self._tasks.append(asyncio.create_task(self._rtcp_loop()))

    async def stop_media(self) -> None:
        self.sending = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _send(self, stream: _Stream, payload: bytes, pt: int, marker: bool, mid: str) -> None:
        extensions = [(MID_EXT_ID, mid.encode())]
        if stream.rid and len(self.video_rids) > 1:
            extensions.append((RID_EXT_ID, stream.rid.encode()))
        header = rtp_header(
            payload_type=pt,
            sequence_number=stream.sequence_number,
            timestamp=stream.timestamp,
            ssrc=stream.ssrc,
            marker=marker,
            extensions=extensions,
        )
        datagram = self.pub_transport.send_rtp(header + payload)
        if datagram is not None:
            stream.remember(stream.sequence_number, datagram)
            stream.sequence_number = (stream.sequence_number + 1) & 0xFFFF
            stream.packets += 1
            stream.octets += len(payload)

    async def _video_loop(self, stream: _Stream) -> None:
        spec = LAYERS[stream.rid]
        frames = self.media.video[stream.rid]
        keys = [i for i, (key, _) in enumerate(frames) if key]
        interval = 1.0 / spec.fps
        ts_step = 90000 // spec.fps
        mid = self._mids["video"]
        loop = asyncio.get_running_loop()
        # Spread publishers' frame boundaries so key frames do not all land at once.
        stream.frame_index = (self.number * 7) % len(frames)
        stream.frame_index = max(k for k in keys if k <= stream.frame_index)
        deadline = loop.time()
        while self.sending:
            if not stream.active:  # paused by dynacast: the clock runs on, nothing is sent
                stream.timestamp = (stream.timestamp + ts_step) & 0xFFFFFFFF
                stream.frame_index = (stream.frame_index + 1) % len(frames)
                deadline += interval
                delay = deadline - loop.time()
                if delay < -RESYNC_S:
                    deadline = loop.time()
                await asyncio.sleep(max(0.0, delay))
                continue
            if stream.key_requested:
                stream.key_requested = False
                later = [k for k in keys if k >= stream.frame_index]
                stream.frame_index = later[0] if later else keys[0]
            key, frame = frames[stream.frame_index]
            chunks = vp8_packetize(frame, MAX_PAYLOAD)
            now_ns = time.monotonic_ns()
            stream.sent_timestamp, stream.sent_ns = stream.timestamp, now_ns
            for n, chunk in enumerate(chunks):
                trailer = Trailer(self.number, stream.layer, int(key), now_ns)
                payload = vp8_descriptor(stream.picture_id, n == 0) + chunk + bytes(trailer)
                self._send(stream, payload, VP8_PT, n == len(chunks) - 1, mid)
            stream.picture_id = (stream.picture_id + 1) & 0x7FFF
            stream.timestamp = (stream.timestamp + ts_step) & 0xFFFFFFFF
            stream.frame_index = (stream.frame_index + 1) % len(frames)
            deadline += interval
            delay = deadline - loop.time()
            if delay < -RESYNC_S:
                deadline = loop.time()
            await asyncio.sleep(max(0.0, delay))

    async def _audio_loop(self, stream: _Stream) -> None:
        frames = self.media.speech
        mid = self._mids["audio"]
        loop = asyncio.get_running_loop()
        interval_ms = AUDIO_FRAME_MS if self.talking else DTX_INTERVAL_MS
        ts_step = 48 * interval_ms
        stream.frame_index = (self.number * 13) % len(frames)
        deadline = loop.time()
        while self.sending:
            body = frames[stream.frame_index] if self.talking else self.media.silence
            now_ns = time.monotonic_ns()
            stream.sent_timestamp, stream.sent_ns = stream.timestamp, now_ns
            trailer = Trailer(self.number, 255, 0, now_ns)
            self._send(stream, body + bytes(trailer), OPUS_PT, False, mid)
            stream.timestamp = (stream.timestamp + ts_step) & 0xFFFFFFFF
            stream.frame_index = (stream.frame_index + 1) % len(frames)
            deadline += interval_ms / 1000.0
            delay = deadline - loop.time()
            if delay < -RESYNC_S:
                deadline = loop.time()
            await asyncio.sleep(max(0.0, delay))

    async def _rtcp_loop(self) -> None:
        """An SR + SDES CNAME per sending stream every `SR_INTERVAL_S` (RFC 3550 §6.4.1)."""
        while self.sending:
            await asyncio.sleep(SR_INTERVAL_S)
            now_ns = time.monotonic_ns()
            for stream in self.streams.values():
                if stream.active and stream.packets:
                    compound = bytes(stream.sender_report(now_ns)) + bytes(
                        SdesCname(stream.ssrc, self.identity)
                    )
                    if self.pub_transport.send_rtcp(compound):
                        self.sender_reports += 1

    def _on_rtcp(self, data: bytes) -> None:
        """PLI (RFC 4585 §6.3.1) and FIR (RFC 5104 §4.3.1) → a key frame; NACK → re-send."""
        now = time.monotonic()
        with contextlib.suppress(PacketError):  # an unreadable tail: keep what was read
            for _, pt, packet in split_rtcp(data):
                if pt not in (PT_RTPFB, PT_PSFB):
                    continue
                feedback = Feedback.parse(packet)
                for ssrc in feedback.key_frame_ssrcs():
                    stream = self.streams.get(ssrc)
                    if stream is not None and now - stream.last_pli >= PLI_MIN_INTERVAL_S:
                        stream.last_pli = now
                        stream.key_requested = True
                        self.plis += 1
                if feedback.is_nack:
                    self._answer_nack(feedback)

    def _answer_nack(self, nack: Feedback) -> None:
        stream = self.streams.get(nack.media_ssrc)
        if stream is None:
            return
        for sequence_number in nack.nack_sequence_numbers():
            self.nacked += 1
            datagram = stream.recall(sequence_number)
            if datagram is not None and self.pub_transport.resend(datagram):
                self.retransmitted += 1

    async def close(self) -> None:
        await self.stop_media()
        await self.pub_transport.close()
        await super().close()
