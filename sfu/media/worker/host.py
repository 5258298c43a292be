"""A media worker's objects and the commands that drive them.

The control process names everything by number: peers, participants ("parts": one publisher
PC's demuxer and one subscriber PC's feedback router), tracks and down tracks. A track has one
home worker (its publisher's), where a `HomeReceiver` is fed by the publisher PC's demuxer;
every other worker with subscribers of it holds a `ReplicaReceiver` fed by the relay. Down
tracks are the real `DownTrack`s over whichever of the two this worker holds.

What the control process reads back comes as events: peer states, data-channel messages, the
layer each down track forwards (dynacast), stream pauses, audio levels and the worker's load.
RTCP reports (RR/REMB upstream, SR downstream) are sent here, every second, per participant.

Congestion control runs here too, as far as it needs packets: each participant's subscriber
transport has its `SubscriberBandwidth` (stamps, transport-cc/REMB feedback, the GCC estimate,
probe clusters, the NACK budget), and its estimate goes to the control process's
`StreamAllocator` at most every `ESTIMATE_INTERVAL` (at once when it falls by a tenth: the
allocator's own cadence), with what the allocator reads of it (overuse, loss, probing). The
allocator's decisions come back as commands: a down track's allocated layer or pause, the
bits per second it committed (the NACK budget), probe clusters and their padding. The
subscriber's receiver reports (loss, jitter, RTT per down track) and each published track's
loss go up once a second, for connection quality.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.feedback import FeedbackRouter
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import RtpDemuxer, TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.header import RtpPacket
from sfu.media.sdp import Codec, SdpError
from sfu.media.transport import PeerTransport, PublishedMedia, TransportConfig
from sfu.media.transport.batch import flusher_for
from sfu.media.worker.relay import HomeReceiver, Relay, RelaySink, ReplicaReceiver
from sfu.media.worker.wire import Message, b64, unb64
from sfu.metrics import COUNTERS

log = logging.getLogger(__name__)

RTCP_INTERVAL = 1.0
LEVEL_INTERVAL = 0.2
STATS_INTERVAL = 1.0
#: seconds between a subscriber link's estimate reports (`StreamAllocator`'s ALLOCATE_INTERVAL)
ESTIMATE_INTERVAL = 0.25
#: an estimate this far under the last one reported goes up at once
ESTIMATE_DROP = 0.9
#: padding packets one probe tick may ask of a part (the allocator asks for a few dozen)
PAD_MAX = 256
#: objects of each kind one worker holds (a control process bug must not grow it unbounded)
MAX_OBJECTS = 65536


def codec_to_wire(codec: Codec) -> dict[str, Any]:
    return {
        "pt": codec.payload_type,
        "name": codec.name,
        "rate": codec.clock_rate,
        "ch": codec.channels,
        "fmtp": codec.fmtp,
        "fb": codec.rtcp_fb,
    }


def codec_from_wire(wire: dict[str, Any]) -> Codec:
    return Codec(
        int(wire["pt"]),
        str(wire["name"]),
        int(wire["rate"]),
        None if wire.get("ch") is None else int(wire["ch"]),
        dict(wire.get("fmtp") or {}),
        list(wire.get("fb") or []),
    )


def media_to_wire(media: PublishedMedia) -> dict[str, Any]:
    return {
        "mid": media.mid,
        "kind": media.kind,
        "direction": media.direction,
        "msid": list(media.msid) if media.msid else None,
        "rids": list(media.rids),
        "paused_rids": list(media.paused_rids),
        "codec": codec_to_wire(media.codec),
        "ext": media.extension_ids,
        "ssrcs": list(media.ssrcs),
        "rtx": {str(k): v for k, v in media.rtx_ssrcs.items()},
    }


def media_from_wire(wire: dict[str, Any]) -> PublishedMedia:
    msid = wire.get("msid")
    return PublishedMedia(
        mid=str(wire["mid"]),
        kind=str(wire["kind"]),
        direction=str(wire["direction"]),
        msid=(str(msid[0]), str(msid[1])) if msid else None,
        rids=tuple(wire["rids"]),
        paused_rids=tuple(wire["paused_rids"]),
        codec=codec_from_wire(wire["codec"]),
        extension_ids={str(k): int(v) for k, v in wire["ext"].items()},
        ssrcs=tuple(int(s) for s in wire["ssrcs"]),
        rtx_ssrcs={int(k): int(v) for k, v in wire["rtx"].items()},
    )


@dataclass
class _Part:
    """One participant's media objects on this worker."""

    demuxer: RtpDemuxer = field(default_factory=RtpDemuxer)
    #: the subscriber transport's link (`sfu.media.bandwidth`), fed by `feedback`
    bandwidth: SubscriberBandwidth = field(
        default_factory=lambda: SubscriberBandwidth(time.monotonic)
    )
    feedback: FeedbackRouter = field(init=False)
    publisher: PeerTransport | None = None
    subscriber: PeerTransport | None = None
    downtracks: dict[int, DownTrack] = field(default_factory=dict)
    paused: dict[int, bool] = field(default_factory=dict)
    #: receiver reports last told per down track: (fraction lost, jitter, RTT or None)
    reports: dict[int, tuple[float, float, float | None]] = field(default_factory=dict)
    #: the last estimate report: when (monotonic), what; probe clusters the control started
    estimate_at: float = -1.0
    estimate_sent: int = 0
    probing_sent: bool = False
    probes: int = 0

    def __post_init__(self) -> None:
        self.feedback = FeedbackRouter(self.bandwidth)


class WorkerHost:
    """Everything one worker runs; `handle` takes one control message."""

    def __init__(
        self,
        index: int,
        config: TransportConfig,
        relay: Relay,
        emit: Callable[[Message], None],
        reply: Callable[[int, Any, BaseException | None], None],
    ) -> None:
        self.index = index
        self.config = config
        self.relay = relay
        self._emit = emit
        self._reply = reply
        self.peers: dict[int, PeerTransport] = {}
        self.parts: dict[int, _Part] = {}
        self.receivers: dict[int, TrackReceiver] = {}
        self.downtracks: dict[int, DownTrack] = {}
        self._dt_track: dict[int, int] = {}
        self._slots: dict[tuple[int, str], str] = {}  # (peer, key) -> mid
        self._layers: dict[int, int] = {}  # down track -> current layer last told
        self._demand_dirty = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cpu = (time.monotonic(), time.process_time())
        relay.on_rtp = self._relay_rtp
        relay.on_sender_report = self._relay_sender_report
        relay.on_keyframe = self._relay_keyframe
        self._ops: dict[str, Callable[[Message], Any]] = {
            name.removeprefix("op_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("op_")
        }

    # -- dispatch ---------------------------------------------------------------------------------
    def handle(self, message: Message) -> None:
        op = self._ops.get(str(message.get("op")))
        rid = message.get("rid")
        if op is None:
            log.warning("unknown control op %r", message.get("op"))
            if rid is not None:
                self._reply(int(rid), None, ValueError(f"unknown op {message.get('op')!r}"))
            return
        try:
            result = op(message)
        except Exception as exc:
            if rid is not None:
                self._reply(int(rid), None, exc)
            elif not isinstance(exc, (KeyError, SdpError)):
                log.exception("control op %s failed", message.get("op"))
            return
        if asyncio.iscoroutine(result):
            self._spawn(self._finish(result, rid))
        elif rid is not None:
            self._reply(int(rid), result, None)

    async def _finish(self, coro: Coroutine[Any, Any, Any], rid: Any) -> None:
        try:
            result = await coro
        except Exception as exc:
            if rid is not None:
                self._reply(int(rid), None, exc)
            return
        if rid is not None:
            self._reply(int(rid), result, None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- peers ------------------------------------------------------------------------------------
    def op_peer_new(self, m: Message) -> None:
        peer_id, part_id = int(m["peer"]), int(m["part"])
        role = cast(Literal["publisher", "subscriber"], m["role"])
        if len(self.peers) >= MAX_OBJECTS:
            raise RuntimeError("too many peers")
        part = self.parts.setdefault(part_id, _Part())

        def on_state(state: str) -> None:
            self._emit({"op": "state", "peer": peer_id, "state": state})
            if state == "connected" and role == "subscriber":
                for dt in part.downtracks.values():
                    dt.receiver.fanout_changed()

        def on_data(label: str, data: bytes) -> None:
            self._emit({"op": "data", "peer": peer_id, "label": label, "data": b64(data)})

        peer = PeerTransport(
            role,
            self.config,
            on_rtp=part.demuxer.on_rtp if role == "publisher" else _ignore,
            on_rtcp=part.demuxer.on_rtcp if role == "publisher" else part.feedback.on_rtcp,
            on_data=on_data,
            on_state=on_state,
        )
        self.peers[peer_id] = peer
        if role == "publisher":
            part.publisher = peer
        else:
            part.subscriber = peer
            part.bandwidth.on_estimate = lambda: self._estimate_changed(part_id, part)

    async def op_handle_offer(self, m: Message) -> dict[str, Any]:
        red = frozenset(str(cid) for cid in m.get("red", ()))
        sdp, medias = await self.peers[int(m["peer"])].handle_offer(str(m["sdp"]), red)
        return {"sdp": sdp, "medias": [media_to_wire(x) for x in medias]}

    async def op_create_offer(self, m: Message) -> str:
        return await self.peers[int(m["peer"])].create_offer()

    async def op_handle_answer(self, m: Message) -> dict[str, Any]:
        """The answer's outcome for congestion control: the transport-cc extension id it kept
        (0: none) and whether rtc.congestion_control is on; a subscriber link stamps from now."""
        peer = self.peers[int(m["peer"])]
        await peer.handle_answer(str(m["sdp"]))
        for part in self.parts.values():
            if part.subscriber is peer:
                part.bandwidth.sequence.ext_id = peer.transport_cc_id
                part.bandwidth.enabled = peer.congestion_control
        return {"transport_cc_id": peer.transport_cc_id, "cc": peer.congestion_control}

    def op_add_track(self, m: Message) -> None:
        peer_id = int(m["peer"])
        mid = self.peers[peer_id].add_track(
            str(m["kind"]),
            codec_from_wire(m["codec"]),
            int(m["ssrc"]),
            str(m["stream_id"]),
            str(m["track_id"]),
        )
        self._slots[(peer_id, str(m["key"]))] = mid

    def op_remove_track(self, m: Message) -> None:
        peer_id = int(m["peer"])
        mid = self._slots.pop((peer_id, str(m["key"])), None)
        if mid is not None:
            self.peers[peer_id].remove_track(mid)

    def op_add_candidate(self, m: Message) -> None:
        self.peers[int(m["peer"])].add_remote_candidate(str(m["candidate"]))

    def op_send_data(self, m: Message) -> None:
        peer = self.peers.get(int(m["peer"]))
        if peer is not None:
            peer.send_data(str(m["label"]), unb64(str(m["data"])))

    async def op_peer_close(self, m: Message) -> None:
        peer_id = int(m["peer"])
        peer = self.peers.pop(peer_id, None)
        for key in [k for k in self._slots if k[0] == peer_id]:
            del self._slots[key]
        if peer is not None:
            await peer.close()

    def op_part_close(self, m: Message) -> None:
        part = self.parts.pop(int(m["part"]), None)
        if part is not None:
            for dt_id in list(part.downtracks):
                self._close_downtrack(dt_id)
            part.bandwidth.on_estimate = None
            part.bandwidth.abandon_probe()

    # -- tracks -----------------------------------------------------------------------------------
    def op_receiver_new(self, m: Message) -> None:
        """A track published on this worker (`home`), or a replica of another worker's."""
        track = int(m["track"])
        if len(self.receivers) >= MAX_OBJECTS:
            raise RuntimeError("too many receivers")
        home = int(m.get("home", self.index))
        kwargs: dict[str, Any] = {
            "kind": str(m["kind"]),
            "mime_type": str(m["mime"]),
            "clock_rate": int(m["rate"]),
            "layer_count": int(m["layers"]),
            "codec": codec_from_wire(m["codec"]) if m.get("codec") else None,
        }
        receiver: TrackReceiver
        if home == self.index:
            part = self.parts[int(m["part"])]
            publisher = part.publisher
            home_receiver = HomeReceiver(
                send_rtcp=publisher.send_rtcp if publisher is not None else _ignore, **kwargs
            )
            home_receiver.relay, home_receiver.track = self.relay, track
            home_receiver.relay_sinks = {}
            receiver = home_receiver
        else:
            replica = ReplicaReceiver(send_rtcp=_ignore, **kwargs)
            replica.relay, replica.track, replica.home = self.relay, track, home
            receiver = replica
        receiver.muted = bool(m.get("muted", False))
        receiver.on_demand_change = self._demand_changed
        self.receivers[track] = receiver

    def op_demux_ext(self, m: Message) -> None:
        self.parts[int(m["part"])].demuxer.set_extension_ids(m["sections"])

    def op_demux_bind(self, m: Message) -> None:
        receiver = self.receivers[int(m["track"])]
        layer_by_rid = {str(k): int(v) for k, v in m["rids"].items()}
        demuxer = self.parts[int(m["part"])].demuxer
        demuxer.bind(str(m["mid"]), receiver, layer_by_rid, payload_type=int(m["pt"]))

    def op_demux_unbind(self, m: Message) -> None:
        part = self.parts.get(int(m["part"]))
        if part is not None:
            part.demuxer.unbind(str(m["mid"]))

    def op_receiver_muted(self, m: Message) -> None:
        receiver = self.receivers.get(int(m["track"]))
        if receiver is not None:
            receiver.muted = bool(m["muted"])

    def op_keyframe_all(self, m: Message) -> None:
        receiver = self.receivers.get(int(m["track"]))
        if receiver is not None:
            receiver.request_keyframe_all()

    def op_receiver_close(self, m: Message) -> None:
        receiver = self.receivers.pop(int(m["track"]), None)
        if receiver is not None:
            receiver.close()

    def op_relay_add(self, m: Message) -> None:
        receiver = self.receivers.get(int(m["track"]))
        if isinstance(receiver, HomeReceiver):
            to = int(m["to"])
            if to not in receiver.relay_sinks:
                sink = RelaySink(self.relay, to, receiver.track)
                receiver.relay_sinks[to] = sink
                receiver.add_sink(sink)
                receiver.request_keyframe_all()

    def op_relay_remove(self, m: Message) -> None:
        receiver = self.receivers.get(int(m["track"]))
        if isinstance(receiver, HomeReceiver):
            sink = receiver.relay_sinks.pop(int(m["to"]), None)
            if sink is not None:
                receiver.remove_sink(sink)

    # -- relay in ---------------------------------------------------------------------------------
    def _relay_rtp(self, track: int, layer: int, data: bytes) -> None:
        receiver = self.receivers.get(track)
        if not isinstance(receiver, ReplicaReceiver) or not 0 <= layer < len(receiver.layers):
            return
        try:
            packet = RtpPacket.parse(data)
        except PacketError:
            return
        state = receiver.layers[layer]
        if state.ssrc != packet.ssrc:
            if state.ssrc:
                receiver.sender_reports.forget(state.ssrc)
                state.new_stream(packet.ssrc)
            state.ssrc = packet.ssrc
        receiver.on_rtp(packet, layer)

    def _relay_sender_report(self, track: int, layer: int, report: rtcp.SenderReport) -> None:
        receiver = self.receivers.get(track)
        if isinstance(receiver, ReplicaReceiver) and 0 <= layer < len(receiver.layers):
            receiver.on_sender_report(layer, report)

    def _relay_keyframe(self, track: int, layer: int) -> None:
        receiver = self.receivers.get(track)
        if isinstance(receiver, HomeReceiver):
            receiver.request_keyframe(layer)

    # -- down tracks ------------------------------------------------------------------------------
    def op_dt_new(self, m: Message) -> None:
        dt_id, part_id = int(m["dt"]), int(m["part"])
        if len(self.downtracks) >= MAX_OBJECTS:
            raise RuntimeError("too many down tracks")
        part = self.parts[part_id]
        peer = part.subscriber
        if peer is None:
            raise RuntimeError("a down track before its subscriber PC")
        downtrack = DownTrack(
            self.receivers[int(m["track"])],
            ssrc=int(m["ssrc"]),
            payload_type=int(m["pt"]),
            send_rtp=peer.send_rtp,
            cname=str(m["cname"]),
            fast_sender=peer.fast_sender,
            bandwidth=part.bandwidth,
            takes_red=functools.partial(peer.takes_red, int(m["ssrc"])),
        )
        downtrack.enabled = bool(m["enabled"])
        downtrack.max_layer = int(m["max_layer"])
        self.downtracks[dt_id] = part.downtracks[dt_id] = downtrack
        self._dt_track[dt_id] = int(m["track"])

    def op_dt_attach(self, m: Message) -> None:
        dt_id = int(m["dt"])
        downtrack = self.downtracks[dt_id]
        part = self.parts[int(m["part"])]
        if m["on"]:
            downtrack.receiver.add_sink(downtrack)
            part.feedback.add(downtrack)
        else:
            downtrack.receiver.remove_sink(downtrack)
            part.feedback.remove(downtrack)
        downtrack.receiver.demand_changed()

    def op_dt_start(self, m: Message) -> None:
        self.downtracks[int(m["dt"])].start()

    def op_dt_set(self, m: Message) -> None:
        downtrack = self.downtracks[int(m["dt"])]
        if "enabled" in m:
            downtrack.set_enabled(bool(m["enabled"]))
        if "max_layer" in m:
            downtrack.set_max_layer(int(m["max_layer"]))
        if "init_enabled" in m:  # before it starts: plain attributes, as Subscriptions sets them
            downtrack.enabled = bool(m["init_enabled"])
        if "init_max_layer" in m:
            downtrack.max_layer = int(m["init_max_layer"])
        if "allocation" in m:  # the control process's StreamAllocator
            downtrack.set_allocation(int(m["allocation"]))

    # -- congestion control -----------------------------------------------------------------------
    def op_link_set(self, m: Message) -> None:
        """What the subscriber's allocation commits (bits per second): the NACK budget's base."""
        part = self.parts.get(int(m["part"]))
        if part is not None:
            part.bandwidth.committed = max(int(m["committed"]), 0)

    def op_probe(self, m: Message) -> None:
        """A probe cluster of the subscriber link: ``start``, ``end`` or ``abandon``."""
        part = self.parts.get(int(m["part"]))
        if part is None:
            return
        action = m["action"]
        if action == "start":
            part.probes = int(m["n"])
            part.bandwidth.start_probe()
        elif action == "end":
            part.bandwidth.end_probe()
        elif action == "abandon":
            part.bandwidth.abandon_probe()

    def op_pad(self, m: Message) -> None:
        """One probe tick: up to ``count`` padding-only packets over the part's video down
        tracks, in their order (as `StreamAllocator` spreads them in one process)."""
        part = self.parts.get(int(m["part"]))
        if part is None:
            return
        left = min(int(m["count"]), PAD_MAX)
        for downtrack in part.downtracks.values():
            if left <= 0:
                break
            if downtrack.receiver.is_video:
                left -= downtrack.send_padding(left)

    def _estimate_changed(self, part_id: int, part: _Part) -> None:
        """After each feedback on the part's subscriber link: its estimate to the control
        process every ESTIMATE_INTERVAL, or at once when it fell or a probe was measured
        (see the module doc)."""
        bandwidth = part.bandwidth
        estimate = bandwidth.estimate
        if estimate is None:
            return
        now = time.monotonic()
        if not (
            bandwidth.probing != part.probing_sent
            or now - part.estimate_at >= ESTIMATE_INTERVAL
            or estimate < ESTIMATE_DROP * part.estimate_sent
        ):
            return
        part.estimate_at, part.estimate_sent = now, estimate
        part.probing_sent = bandwidth.probing
        acked = bandwidth.gcc.acked_rate()
        self._emit(
            {
                "op": "estimate",
                "part": part_id,
                "estimate": estimate,
                "overusing": bandwidth.overusing,
                "loss": round(bandwidth.gcc.loss_fraction, 4),
                "acked": None if acked is None else int(acked),
                "probing": bandwidth.probing,
                "probes": part.probes,
                "stamping": bandwidth.stamping,
            }
        )

    def op_dt_close(self, m: Message) -> None:
        self._close_downtrack(int(m["dt"]))

    def _close_downtrack(self, dt_id: int) -> None:
        downtrack = self.downtracks.pop(dt_id, None)
        self._dt_track.pop(dt_id, None)
        self._layers.pop(dt_id, None)
        if downtrack is None:
            return
        for part in self.parts.values():
            if part.downtracks.pop(dt_id, None) is not None:
                part.paused.pop(dt_id, None)
                part.reports.pop(dt_id, None)
                part.feedback.remove(downtrack)
        downtrack.receiver.remove_sink(downtrack)
        downtrack.close()

    # -- events -----------------------------------------------------------------------------------
    def _demand_changed(self) -> None:
        if not self._demand_dirty:
            self._demand_dirty = True
            asyncio.get_running_loop().call_soon(self._send_layers)

    def _send_layers(self) -> None:
        """The current layer of each down track whose changed (dynacast adds them up)."""
        self._demand_dirty = False
        changed: dict[str, int] = {}
        for dt_id, downtrack in self.downtracks.items():
            layer = downtrack.current_layer
            if self._layers.get(dt_id) != layer:
                self._layers[dt_id] = layer
                changed[str(dt_id)] = layer
        if changed:
            self._emit({"op": "layers", "layers": changed})

    async def run_timers(self) -> None:
        """RTCP reports and stream states every second, audio levels, the worker's load."""
        next_rtcp = next_stats = time.monotonic()
        while True:
            await asyncio.sleep(LEVEL_INTERVAL)
            now = time.monotonic()
            with contextlib.suppress(Exception):
                self._send_levels()
                self._send_layers()
            if now >= next_rtcp:
                next_rtcp = now + RTCP_INTERVAL
                try:
                    self._send_reports()
                except Exception:
                    log.exception("RTCP reports failed")
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL
                self._send_stats(now)

    def _send_levels(self) -> None:
        levels = {
            str(track): level
            for track, receiver in self.receivers.items()
            if isinstance(receiver, HomeReceiver) and not receiver.is_video
            for level in (receiver.take_audio_level(),)
            if level > 0
        }
        if levels:
            self._emit({"op": "levels", "levels": levels})

    def _send_reports(self) -> None:
        paused: dict[str, bool] = {}
        told: dict[str, list[float | None]] = {}
        for part in self.parts.values():
            publisher, subscriber = part.publisher, part.subscriber
            if publisher is not None and publisher.state == "connected":
                report = part.demuxer.rtcp_reports()
                if report:
                    publisher.send_rtcp(report)
            if subscriber is not None and subscriber.state == "connected":
                reports = [r for dt in part.downtracks.values() if (r := dt.due_sender_report())]
                for compound in rtcp.pack_compounds(reports):
                    subscriber.send_rtcp(compound)
            for dt_id, downtrack in part.downtracks.items():
                state = downtrack.paused
                if part.paused.get(dt_id, False) != state:
                    part.paused[dt_id] = state
                    paused[str(dt_id)] = state
                received = (downtrack.fraction_lost, downtrack.jitter, downtrack.rtt)
                if part.reports.get(dt_id) != received:
                    part.reports[dt_id] = received
                    told[str(dt_id)] = list(received)
        if paused:
            self._emit({"op": "paused", "paused": paused})
        if told:  # the subscribers' receiver reports, for connection quality
            self._emit({"op": "reports", "reports": told})
        bitrates = {
            str(track): [layer.bitrate for layer in receiver.layers]
            for track, receiver in self.receivers.items()
            if isinstance(receiver, HomeReceiver) and receiver.is_video
        }
        loss = {
            str(track): round(receiver.loss_fraction, 4)
            for track, receiver in self.receivers.items()
            if isinstance(receiver, HomeReceiver)
        }
        if bitrates or loss:  # measured by the receiver reports just made
            self._emit({"op": "bitrates", "bitrates": bitrates, "loss": loss})

    def _send_stats(self, now: float) -> None:
        wall, cpu = self._cpu
        cpu_now = time.process_time()
        self._cpu = (now, cpu_now)
        share = (cpu_now - cpu) / (now - wall) if now > wall else 0.0
        self._emit(
            {
                "op": "stats",
                "pid": os.getpid(),
                "cpu": round(share, 4),
                "cpu_seconds": cpu_now,
                "packets_in": COUNTERS.packets_in,
                "packets_out": COUNTERS.packets_out,
                "bytes_out": COUNTERS.bytes_out,
                "retransmits_out": COUNTERS.retransmits_out,
                "nack_in": COUNTERS.nack_in,
                "pli_in": COUNTERS.pli_in,
                "pli_out": COUNTERS.pli_out,
                "relay_sent": self.relay.sent,
                "relay_received": self.relay.received,
                "relay_dropped": self.relay.dropped,
                "peers": len(self.peers),
                "latency_p99": flusher_for(asyncio.get_running_loop()).latency.p99(),
                "objects": self.object_counts(),
                "counters": dataclasses.asdict(COUNTERS),
            }
        )

    def object_counts(self) -> dict[str, int]:
        """What this worker holds: all zero once every participant on it has left."""
        return {
            "peers": len(self.peers),
            "parts": len(self.parts),
            "receivers": len(self.receivers),
            "downtracks": len(self.downtracks),
            "slots": len(self._slots),
        }

    async def close(self) -> None:
        for dt_id in list(self.downtracks):
            self._close_downtrack(dt_id)
        await asyncio.gather(*(p.close() for p in self.peers.values()), return_exceptions=True)
        self.peers.clear()


def _ignore(_data: bytes) -> None:
    pass
