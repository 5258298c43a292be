"""A synthetic publisher: AddTrackRequest, its own SDP offer (simulcast rids), paced RTP.

Each publisher announces a camera (VP8, simulcast `q`/`h`/`f` or one layer) and a microphone
(Opus), offers them on its publisher transport (ICE controlling), and once DTLS-SRTP is up sends
the cached loops at their frame rates. Every payload ends with a `Trailer` stamped at send time.
A PLI makes the next frame of that layer the next cached key frame.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

from livekit.protocol import models, rtc

from loadtest.media import AUDIO_FRAME_MS, LAYERS, MediaSet
from loadtest.packets import Trailer, rtp_header, vp8_descriptor, vp8_packetize
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
            await asyncio.gather(*self._published.values())
        local = await self.pub_transport.local_parameters()
        cids = {("video" if c.startswith("video") else "audio"): c for c, _ in requests}
        offer_sdp = self._offer(local, cids)
        self._pub_answer = loop.create_future()
        offer = rtc.SessionDescription(type="offer", sdp=offer_sdp, id=self._offer_id)
        await self.signal.send(rtc.SignalRequest(offer=offer))
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            answer = await self._pub_answer
        try:
            remote = Sdp.parse(answer.sdp).first_bundled()
        except SdpError as exc:
            raise ConnectionError(f"publisher answer: {exc}") from exc
        # We offered actpass: the answerer's `active` makes us the DTLS server.
        self.pub_transport.start(remote, "server" if remote.setup == "active" else "client")
        async with asyncio.timeout(PUBLISH_TIMEOUT_S * 2):
            while not self.pub_transport.connected.is_set():
                if self.pub_transport.failed:
                    raise ConnectionError(self.pub_transport.failed)
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
        if self.pub_transport.send_rtp(header + payload):
            stream.sequence_number = (stream.sequence_number + 1) & 0xFFFF
            stream.packets += 1

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
            if stream.key_requested:
                stream.key_requested = False
                later = [k for k in keys if k >= stream.frame_index]
                stream.frame_index = later[0] if later else keys[0]
            key, frame = frames[stream.frame_index]
            chunks = vp8_packetize(frame, MAX_PAYLOAD)
            now_ns = time.monotonic_ns()
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
            trailer = Trailer(self.number, 255, 0, time.monotonic_ns())
            self._send(stream, body + bytes(trailer), OPUS_PT, False, mid)
            stream.timestamp = (stream.timestamp + ts_step) & 0xFFFFFFFF
            stream.frame_index = (stream.frame_index + 1) % len(frames)
            deadline += interval_ms / 1000.0
            delay = deadline - loop.time()
            if delay < -RESYNC_S:
                deadline = loop.time()
            await asyncio.sleep(max(0.0, delay))

    def _on_rtcp(self, data: bytes) -> None:
        """Find PLIs (RFC 4585 §6.3.1: PT 206, FMT 1) and FIRs (RFC 5104: PT 206, FMT 4)."""
        offset = 0
        now = time.monotonic()
        while offset + 12 <= len(data):
            fmt, pt = data[offset] & 0x1F, data[offset + 1]
            length = (int.from_bytes(data[offset + 2 : offset + 4], "big") + 1) * 4
            if pt == 206 and fmt in (1, 4):
                media_ssrc = int.from_bytes(data[offset + 8 : offset + 12], "big")
                if fmt == 4 and offset + 16 <= len(data):
                    media_ssrc = int.from_bytes(data[offset + 12 : offset + 16], "big")
                stream = self.streams.get(media_ssrc)
                if stream is not None and now - stream.last_pli >= PLI_MIN_INTERVAL_S:
                    stream.last_pli = now
                    stream.key_requested = True
                    self.plis += 1
            offset += length

    async def close(self) -> None:
        await self.stop_media()
        await self.pub_transport.close()
        await super().close()
