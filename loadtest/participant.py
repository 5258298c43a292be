"""Load-test participants: the subscriber side every participant has, and the two roles.

`Participant` joins, answers the SFU's subscriber offers (ICE controlled, DTLS client), takes
trickled ICE candidates for either transport (before or after the SDP they belong to), trickles
its own when the server's SDP carries none, and keeps the room's track list. `Subscriber` counts
every RTP packet from its clear header (sequence gaps → loss, bytes → bitrate) in a
`loadtest.rx` table, batched off the socket, decrypts one in `sample_every` to read the latency
trailer (which also names the simulcast layer the octets in between belong to), and sends
`UpdateTrackSettings` for its layout. `Publisher` (see `publisher.py`) adds a sending transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.protocol import models, rtc

from loadtest import rx
from loadtest.packets import Trailer
from loadtest.signal import SignalClient
from loadtest.webrtc import (
    LocalParameters,
    Sdp,
    SdpError,
    Transport,
    answer_subscriber_offer,
    candidate_init,
    parse_candidate_init,
)

__all__ = ["Layering", "Participant", "StreamStats", "Subscriber", "TileRequest"]

MAX_LATENCY_SAMPLES = 20_000


@dataclass(slots=True)
class Layering:
    """What the sampled trailers of one SSRC said: its track and simulcast layer."""

    track: int = -1
    layer: int = -1
    layer_switches: int = 0
    octets_by_layer: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class StreamStats:
    """One SSRC the SFU sends this subscriber: the table's counters and the trailers' layering."""

    base: int
    highest: int
    received: int = 1
    octets: int = 0
    track: int = -1
    layer: int = -1
    layer_switches: int = 0
    octets_by_layer: dict[int, int] = field(default_factory=dict)

    @property
    def expected(self) -> int:
        return self.highest - self.base + 1


@dataclass(frozen=True)
class TileRequest:
    """What the layout wants from one video track."""

    disabled: bool
    width: int = 0
    height: int = 0


class Participant:
    """Signalling plus the subscriber transport."""

    def __init__(self, url: str, token: str, identity: str, *, auto_subscribe: bool) -> None:
        self.identity = identity
        self.signal = SignalClient(url, token, auto_subscribe=auto_subscribe, on_message=self._on)
        self.sub_transport = Transport(controlling=False)
        self.error: str | None = None
        self.join_time_ms: float | None = None
        #: track sid -> (publisher identity, TrackType)
        self.tracks: dict[str, tuple[str, int]] = {}
        self._sub_local_ready = False
        self._sub_trickled = False
        self._answering = asyncio.Lock()
        #: trickled candidates that could not be read (counted, never fatal)
        self.bad_candidates = 0

    async def join(self) -> None:
        start = time.perf_counter()
        join = await self.signal.connect()
        self._learn(list(join.other_participants))
        self.join_time_ms = (time.perf_counter() - start) * 1000.0

    def _learn(self, participants: list[models.ParticipantInfo]) -> None:
        for p in participants:
            if p.identity == self.identity:
                continue
            sids = {t.sid for t in p.tracks}
            for sid in [s for s, (who, _) in self.tracks.items() if who == p.identity]:
                if sid not in sids or p.state == models.ParticipantInfo.DISCONNECTED:
                    del self.tracks[sid]
            if p.state != models.ParticipantInfo.DISCONNECTED:
                for t in p.tracks:
                    self.tracks[t.sid] = (p.identity, t.type)
        self.tracks_changed()

    def tracks_changed(self) -> None:
        """Hook: the room's published tracks changed."""

    async def _on(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "offer":
            await self._answer(response.offer)
        elif kind == "update":
            self._learn(list(response.update.participants))
        elif kind == "trickle":
            await self._on_trickle(response.trickle)
        elif kind == "leave":
            self.error = self.error or "the server sent leave"
        else:
            await self.on_signal(kind, response)

    def transport_for(self, target: int) -> Transport | None:
        """The transport a `SignalTarget` names (publishers override for PUBLISHER)."""
        return self.sub_transport if target == rtc.SignalTarget.SUBSCRIBER else None

    async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        transport = self.transport_for(trickle.target)
        try:
            candidate = parse_candidate_init(trickle.candidateInit)
            if transport is None or candidate is None:
                return
            await transport.add_remote_candidate(candidate)
        except SdpError:
            self.bad_candidates += 1

    async def trickle_local(
        self, local: LocalParameters, target: rtc.SignalTarget, mid: str, mline_index: int
    ) -> None:
        """Send our candidates as `TrickleRequest`s (for a server whose SDP had none of its own,
        which is a server that expects them trickled; they stay in our SDP too)."""
        for candidate in local.candidates:
            init = candidate_init(candidate, mid, mline_index, local.ufrag)
            trickle = rtc.TrickleRequest(candidateInit=init, target=target)
            await self.signal.send(rtc.SignalRequest(trickle=trickle))

    async def on_signal(self, kind: str | None, response: rtc.SignalResponse) -> None:
        """Hook for messages the base class does not handle."""

    async def _answer(self, offer: rtc.SessionDescription) -> None:
        async with self._answering:
            try:
                parsed = Sdp.parse(offer.sdp)
                local = await self.sub_transport.local_parameters()

                sdp = answer_subscriber_offer(parsed, local)
                remote = parsed.first_bundled()
            except SdpError as exc:
                self.error = f"subscriber offer: {exc}"
                return
            answer = rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id)
            await self.signal.send(rtc.SignalRequest(answer=answer))
            if not parsed.has_candidates and not self._sub_trickled:
                self._sub_trickled = True
                index = parsed.media.index(remote)
                await self.trickle_local(local, rtc.SignalTarget.SUBSCRIBER, remote.mid, index)
            # The SFU offered actpass; we answered active: DTLS client.
            self.sub_transport.start(remote, "client")

    async def close(self) -> None:
        await self.signal.close()
        await self.sub_transport.close()


class Subscriber(Participant):
    """A cheap receiver: counts everything, decrypts a sample, follows a layout."""

    def __init__(
        self,
        url: str,
        token: str,
        identity: str,
        *,
        sample_every: int,
        layout: Callable[[dict[str, tuple[str, int]]], dict[str, TileRequest]],
        rx_mode: str = "auto",
    ) -> None:
        super().__init__(url, token, identity, auto_subscribe=True)
        if rx_mode not in rx.RX_MODES:
            raise ValueError(f"rx_mode {rx_mode!r} is not one of {rx.RX_MODES}")
        self.sample_every = max(1, sample_every)
        self.layout = layout
        compiled = {"c": True, "python": False}.get(rx_mode)
        self.table = rx.new_table(self.sample_every, compiled=compiled)
        #: per SSRC that had a sample (bounded by the table's capacity)
        self.layering: dict[int, Layering] = {}
        self.latency_ms: list[float] = []
        self.new_latency_ms: list[float] = []
        self.decrypt_errors = 0
        self._settings: dict[str, TileRequest] = {}
        if rx_mode != "per-datagram":
            self.sub_transport.rx_table = self.table
        self.sub_transport.on_samples = self._on_samples
        self.sub_transport.on_rtp = self._on_rtp
        self.sub_transport.on_rtp_clear = self._on_rtp_clear

    @property
    def packets(self) -> int:
        return self.table.packets

    @property
    def octets(self) -> int:
        return self.table.octets

    @property
    def streams(self) -> dict[int, StreamStats]:
        """A snapshot of every stream: the table's counters, the layering of its samples, and
        the octets since the last sample attributed to the layer that sample named."""
        out: dict[int, StreamStats] = {}
        for ssrc, base, highest, received, octets, pending in self.table.streams():
            info = self.layering.get(ssrc) or Layering()
            by_layer = dict(info.octets_by_layer)
            if info.layer >= 0 and pending:
                by_layer[info.layer] = by_layer.get(info.layer, 0) + pending
            out[ssrc] = StreamStats(
                base, highest, received, octets, info.track, info.layer, info.layer_switches,
                by_layer,
            )  # fmt: skip
        return out

    def _on_rtp(self, data: bytes) -> None:
        """The per-datagram path: one encrypted RTP packet."""
        samples, _ = self.table.feed(((data, None),))
        if samples:
            self._on_samples(samples)

    def _on_samples(self, samples: list[rx.Sample]) -> None:
        realtime_offset_ns = time.time_ns() - time.monotonic_ns()
        unprotect = self.sub_transport.unprotect
        for ssrc, pending, data, arrival_ns in samples:
            info = self.layering.get(ssrc)
            if info is None:
                info = self.layering[ssrc] = Layering()
            if info.layer >= 0 and pending:
                by_layer = info.octets_by_layer
                by_layer[info.layer] = by_layer.get(info.layer, 0) + pending
            try:
                clear = unprotect(data)
            except Exception:
                self.decrypt_errors += 1
            else:
                # the kernel's receive time when known: our own scheduling delay is not the SFU's
                now_ns = arrival_ns - realtime_offset_ns if arrival_ns else time.monotonic_ns()
                self._read_trailer(info, clear, now_ns)

    def _on_rtp_clear(self, data: bytes) -> None:
        ssrc = self.table.count_clear(data)
        if ssrc is None:
            return
        info = self.layering.get(ssrc)
        if info is None:
            info = self.layering[ssrc] = Layering()
        self._read_trailer(info, data, time.monotonic_ns())

    def _read_trailer(self, stream: Layering, clear: bytes, now_ns: int) -> None:
        fields = Trailer.read(clear)
        if fields is None:
            return
        track, layer, sent_ns = fields
        latency = (now_ns - sent_ns) / 1e6
        if len(self.latency_ms) < MAX_LATENCY_SAMPLES:
            self.latency_ms.append(latency)
        if len(self.new_latency_ms) < MAX_LATENCY_SAMPLES:
            self.new_latency_ms.append(latency)
        if stream.layer != layer:
            if stream.layer >= 0:
                stream.layer_switches += 1
            stream.layer = layer
        stream.track = track

    def tracks_changed(self) -> None:
        self.apply_layout()

    def apply_layout(self) -> None:
        wanted = self.layout(self.tracks)
        changed = [sid for sid, tile in wanted.items() if self._settings.get(sid) != tile]
        for sid in changed:
            tile = wanted[sid]
            self._settings[sid] = tile
            settings = rtc.UpdateTrackSettings(
                track_sids=[sid], disabled=tile.disabled, width=tile.width, height=tile.height
            )
            asyncio.get_running_loop().create_task(
                self.signal.send(rtc.SignalRequest(track_setting=settings))
            )
