"""Proxies of a worker's media objects, for the room layer in the control process.

Every call becomes a control message to the worker that holds the object (`sfu.media.worker`)
and nothing here sees a packet. What the room reads back is mirrored from the worker's events:
a peer's state, the layer a down track forwards (for dynacast), whether it is paused, a
track's audio level. One `RemoteMedia` per participant makes them all on the participant's
worker; a down track of a track published on another worker makes the track's receiver there
a replica, fed by that worker's relay, while any down track of it remains there.

Congestion control splits the same way: the estimator needs every packet sent and every
feedback, so it runs on the worker; the participant's `StreamAllocator` stays here and reads
a `RemoteBandwidth`, the worker's last estimate report (about every 250 ms). Its decisions
(a down track's allocated layer or pause, the committed rate that bounds NACK answers, probe
clusters and each probe tick's padding) are sent to the worker only when they change.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.gcc import GoogCc
from sfu.media.receiver import LAYER_ACTIVE_WINDOW, MAX_LAYERS
from sfu.media.sdp import Codec, SdpError
from sfu.media.transport import PublishedMedia, TrackSlotLimitError, TransportConfig
from sfu.media.transport.negotiation import subscriber_codec
from sfu.media.transport.peer import MAX_TRACK_SLOTS
from sfu.media.worker.host import codec_to_wire, media_from_wire
from sfu.media.worker.wire import (
    REQUEST_TIMEOUT,
    ChannelClosed,
    Message,
    RemoteError,
    b64,
    unb64,
)
from sfu.metrics import COUNTERS
from sfu.room.media import ReceiverSpec

log = logging.getLogger(__name__)

PEER_CLOSE_TIMEOUT = 5.0
#: a change of the committed rate smaller than this share is not sent (the NACK budget's base)
COMMITTED_STEP = 0.05
_SDP_ERRORS = frozenset({"SdpError", "SdpLimitError", "IceRestartError"})
_IDS = itertools.count(1)


class WorkerLink(Protocol):
    """The control process's end of one worker, as the proxies use it (`pool.WorkerLink`)."""

    index: int
    generation: int
    alive: bool
    peers: dict[int, RemotePeer]
    receivers: dict[int, RemoteReceiver]
    downtracks: dict[int, RemoteDownTrack]
    media: set[RemoteMedia]
    bandwidths: dict[int, RemoteBandwidth]

    def send(self, message: Message) -> None: ...

    async def request(self, message: Message, wait_s: float = ...) -> Any: ...


def new_id() -> int:
    """A number for a proxied object, unique in this control process (and so on every worker)."""
    return next(_IDS)


class _Bound:
    """An object on one worker process: messages reach it only while that process lives."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self.generation = link.generation

    @property
    def alive(self) -> bool:
        return self.link.alive and self.link.generation == self.generation

    def _send(self, message: Message) -> None:
        if self.alive:
            self.link.send(message)

    async def _request(self, message: Message, wait_s: float = REQUEST_TIMEOUT) -> Any:
        if not self.alive:
            raise RuntimeError(f"media worker {self.link.index} is gone")
        try:
            return await self.link.request(message, wait_s)
        except RemoteError as exc:
            if exc.kind in _SDP_ERRORS:
                raise SdpError(str(exc)) from None
            raise RuntimeError(f"media worker {self.link.index}: {exc}") from None
        except (ChannelClosed, TimeoutError) as exc:
            raise RuntimeError(f"media worker {self.link.index} did not answer: {exc!r}") from None
        except ValueError as exc:  # over a control frame's bound: a peer's huge description
            raise SdpError(f"too large for a media worker: {exc}") from None


class RemotePeer(_Bound):
    """A `PeerTransport` on a worker (`sfu.room.types.Peer`)."""

    def __init__(
        self,
        link: WorkerLink,
        role: Literal["publisher", "subscriber"],
        part: int,
        on_data: Callable[[str, bytes], None],
        on_state: Callable[[str], None],
    ) -> None:
        super().__init__(link)
        self.id = new_id()
        self.role = role
        self._on_data = on_data
        self._on_state = on_state
        self._state = "new"
        #: slot key -> (kind, offered codec): the worker maps each key to its m-line
        self._slots: dict[str, Codec] = {}
        self._keys = itertools.count(1)
        #: what the worker's transport made of the last answer (`RemoteBandwidth`)
        self.transport_cc_id = 0
        self.congestion_control = False
        link.peers[self.id] = self
        self._send({"op": "peer_new", "peer": self.id, "part": part, "role": role})

    @property
    def state(self) -> str:
        return self._state

    def on_event(self, message: Message) -> None:
        if message["op"] == "state":
            state = str(message["state"])
            if state != self._state and self._state != "closed":
                self._state = state
                self._on_state(state)
        elif message["op"] == "data":
            self._on_data(str(message["label"]), unb64(str(message["data"])))

    def lost(self) -> None:
        """Its worker died: the transport is gone."""
        self.link.peers.pop(self.id, None)
        if self._state != "closed":
            self._state = "failed"

    async def handle_offer(
        self, sdp: str, red_tracks: frozenset[str] = frozenset()
    ) -> tuple[str, list[PublishedMedia]]:
        request = {"op": "handle_offer", "peer": self.id, "sdp": sdp, "red": sorted(red_tracks)}
        answer = await self._request(request)
        return str(answer["sdp"]), [media_from_wire(m) for m in answer["medias"]]

    async def create_offer(self) -> str:
        return str(await self._request({"op": "create_offer", "peer": self.id}))

    async def handle_answer(self, sdp: str) -> None:
        outcome = await self._request({"op": "handle_answer", "peer": self.id, "sdp": sdp})
        if isinstance(outcome, dict):
            self.transport_cc_id = int(outcome.get("transport_cc_id") or 0)
            self.congestion_control = bool(outcome.get("cc"))

    def add_track(
        self, kind: str, codec: Codec | str, ssrc: int, stream_id: str, track_id: str
    ) -> str:
        if len(self._slots) >= MAX_TRACK_SLOTS:
            COUNTERS.limit_exceeded("subscriber_track_slots")
            raise TrackSlotLimitError(f"more than {MAX_TRACK_SLOTS} subscriber m-lines")
        key = f"k{next(self._keys)}"
        offered = subscriber_codec(kind, codec)
        self._slots[key] = offered
        self._send(
            {
                "op": "add_track",
                "peer": self.id,
                "key": key,
                "kind": kind,
                "codec": codec_to_wire(codec if isinstance(codec, Codec) else offered),
                "ssrc": ssrc,
                "stream_id": stream_id,
                "track_id": track_id,
            }
        )
        return key

    def remove_track(self, mid: str) -> None:
        if self._slots.pop(mid, None) is None:
            raise KeyError(mid)
        self._send({"op": "remove_track", "peer": self.id, "key": mid})

    def track_codec(self, mid: str) -> Codec:
        return self._slots[mid]

    def add_remote_candidate(self, candidate_init_json: str) -> None:
        self._send({"op": "add_candidate", "peer": self.id, "candidate": candidate_init_json})

    def send_rtp(self, data: bytes) -> None:
        """Never called: the down tracks that send are on the worker."""
        COUNTERS.send_dropped += 1

    def fast_sender(self) -> tuple[Any, Any, Any] | None:
        return None

    def takes_red(self, ssrc: int) -> bool:
        """Never asked: the down tracks that send, and the answer they read, are on the worker."""
        return False

    def send_rtcp(self, data: bytes) -> None:
        """Never called with a report: the worker sends RTCP itself (see `RemoteDemuxer`)."""

    def send_data(self, label: str, data: bytes) -> None:
        self._send({"op": "send_data", "peer": self.id, "label": label, "data": b64(data)})

    async def close(self) -> None:
        if self._state == "closed":
            return
        with contextlib.suppress(RuntimeError):
            if self.alive:
                await self._request({"op": "peer_close", "peer": self.id}, PEER_CLOSE_TIMEOUT)
        self.link.peers.pop(self.id, None)
        self._state = "closed"


class RemoteDemuxer(_Bound):
    """The publisher PC's demuxer on the worker. Packets and RTCP reports never pass here."""

    def __init__(self, link: WorkerLink, part: int) -> None:
        super().__init__(link)
        self.part = part

    def on_rtp(self, data: bytes) -> None:
        """Never called: the worker's publisher PC feeds the worker's demuxer."""

    def on_rtcp(self, data: bytes) -> None:
        """Never called, as `on_rtp`."""

    def set_extension_ids(self, sections: Iterable[Mapping[str, int]]) -> None:
        self._send({"op": "demux_ext", "part": self.part, "sections": [dict(s) for s in sections]})

    def bind(
        self, mid: str, receiver: Any, layer_by_rid: dict[str, int], *, payload_type: int
    ) -> None:
        assert isinstance(receiver, RemoteReceiver)
        self._send(
            {
                "op": "demux_bind",
                "part": self.part,
                "mid": mid,
                "track": receiver.id,
                "rids": layer_by_rid,
                "pt": payload_type,
            }
        )

    def unbind(self, mid: str) -> None:
        self._send({"op": "demux_unbind", "part": self.part, "mid": mid})

    def rtcp_reports(self) -> bytes:
        """Nothing: the worker sends its publishers' receiver reports every second."""
        return b""


class RemoteFeedback:
    """The subscriber PC's feedback router on the worker: `RemoteReceiver.add_sink` joins a
    down track to both there, so nothing is left to do here."""

    def on_rtcp(self, data: bytes) -> None:
        """Never called: the worker's subscriber PC feeds the worker's router."""

    def add(self, downtrack: Any) -> None:
        pass

    def remove(self, downtrack: Any) -> None:
        pass


@dataclass
class LayerMirror:
    bitrate: int = 0
    #: when the worker last reported this layer with a bitrate (monotonic seconds)
    last_arrival: float = 0.0


class RemoteReceiver(_Bound):
    """A published track's receiver on its publisher's worker (the track's home), and the
    replicas of it on the workers of its subscribers."""

    def __init__(self, link: WorkerLink, part: int, spec: ReceiverSpec) -> None:
        super().__init__(link)
        self.id = new_id()
        self.kind = spec.kind
        self.is_video = spec.kind == "video"
        self.mime_type = spec.mime_type
        self.clock_rate = spec.clock_rate
        self.codec = spec.codec
        self._layers = [LayerMirror() for _ in range(max(spec.layer_count, 1))]
        self._sinks: list[RemoteDownTrack] = []
        self._muted = spec.muted
        self.on_demand_change: Callable[[], None] | None = None
        self.closed = False
        self._level = 0.0
        self.loss_fraction = 0.0  # from the publisher's reports, read on its worker
        self.clock = time.monotonic
        #: worker index -> (link, generation, down tracks there) of each replica
        self._replicas: dict[int, tuple[WorkerLink, int, int]] = {}
        link.receivers[self.id] = self
        self._send({"op": "receiver_new", "part": part, **self._description()})

    def _description(self) -> Message:
        return {
            "track": self.id,
            "home": self.link.index,
            "kind": self.kind,
            "mime": self.mime_type,
            "rate": self.clock_rate,
            "layers": len(self._layers),
            "codec": codec_to_wire(self.codec),
            "muted": self._muted,
        }

    @property
    def layers(self) -> Sequence[LayerMirror]:
        return self._layers

    @property
    def sinks(self) -> Sequence[RemoteDownTrack]:
        return self._sinks

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, muted: bool) -> None:
        self._muted = muted
        self._send({"op": "receiver_muted", "track": self.id, "muted": muted})

    def codec_for_subscribers(self) -> Codec:
        return self.codec

    # -- replicas ---------------------------------------------------------------------------------
    def hold_replica(self, link: WorkerLink) -> None:
        """A down track on ``link``'s worker needs this track there."""
        if link is self.link or self.closed:
            return
        held = self._replicas.get(link.index)
        if held is not None and held[1] == link.generation:
            self._replicas[link.index] = (link, held[1], held[2] + 1)
            return
        self._replicas[link.index] = (link, link.generation, 1)
        if link.alive:
            link.send({"op": "receiver_new", "part": 0, **self._description()})
        self._send({"op": "relay_add", "track": self.id, "to": link.index})

    def release_replica(self, link: WorkerLink, generation: int) -> None:
        held = self._replicas.get(link.index)
        if held is None or held[1] != generation:
            return
        if held[2] > 1:
            self._replicas[link.index] = (link, generation, held[2] - 1)
            return
        del self._replicas[link.index]
        self._send({"op": "relay_remove", "track": self.id, "to": link.index})
        if link.alive and link.generation == generation:
            link.send({"op": "receiver_close", "track": self.id})

    def replica_lost(self, index: int) -> None:
        """The worker of a replica died: stop relaying there."""
        if self._replicas.pop(index, None) is not None:
            self._send({"op": "relay_remove", "track": self.id, "to": index})

    # -- sinks ------------------------------------------------------------------------------------
    def add_sink(self, sink: Any) -> None:
        assert isinstance(sink, RemoteDownTrack)
        if sink not in self._sinks:
            self._sinks.append(sink)
            sink.attach(True)

    def remove_sink(self, sink: Any) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)
            sink.attach(False)

    def demand_changed(self) -> None:
        if self.on_demand_change is not None and not self.closed:
            self.on_demand_change()

    def request_keyframe_all(self) -> None:
        self._send({"op": "keyframe_all", "track": self.id})

    def note_bitrates(self, bitrates: list[int]) -> None:
        now = time.monotonic()
        for layer, bitrate in zip(self._layers, bitrates, strict=False):
            layer.bitrate = bitrate
            if bitrate > 0:
                layer.last_arrival = now

    def note_loss(self, fraction: float) -> None:
        self.loss_fraction = min(max(fraction, 0.0), 1.0)

    def note_level(self, level: float) -> None:
        self._level = max(self._level, level)

    def is_active(self, layer: int, now: float) -> bool:
        return now - self._layers[layer].last_arrival < LAYER_ACTIVE_WINDOW

    def take_audio_level(self) -> float:
        level, self._level = self._level, 0.0
        return level

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.link.receivers.pop(self.id, None)
        self._send({"op": "receiver_close", "track": self.id})
        for link, generation, _ in self._replicas.values():
            if link.alive and link.generation == generation:
                link.send({"op": "receiver_close", "track": self.id})
        self._replicas.clear()


class RemoteDownTrack(_Bound):
    """One subscription's `DownTrack` on the subscriber's worker."""

    def __init__(
        self,
        link: WorkerLink,
        part: int,
        receiver: RemoteReceiver,
        *,
        ssrc: int,
        payload_type: int,
        cname: str,
    ) -> None:
        super().__init__(link)
        self.id = new_id()
        self.part = part
        self.receiver = receiver
        self.ssrc = ssrc
        self._enabled = True
        self._max_layer = len(receiver.layers) - 1
        self.current_layer = -1  # as the worker last told
        self._paused = False
        self.started = False
        self.closed = False
        self._attached = self._attached_sent = False  # a sink of its receiver, here / there
        # the allocator's, mirrored to the worker by set_allocation; reports from the worker
        self.allocation_paused = False
        self.allocated_layer = MAX_LAYERS
        self.fraction_lost = 0.0
        self.jitter = 0.0
        self.rtt: float | None = None
        receiver.hold_replica(link)
        link.downtracks[self.id] = self
        self._send(
            {
                "op": "dt_new",
                "dt": self.id,
                "part": part,
                "track": receiver.id,
                "ssrc": ssrc,
                "pt": payload_type,
                "cname": cname,
                "enabled": True,
                "max_layer": self._max_layer,
            }
        )

    # what `Subscriptions` sets before the down track starts: plain attributes there too
    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, enabled: bool) -> None:
        if enabled == self._enabled:  # what the worker has (a re-subscribe sets it again)
            return
        self._enabled = enabled
        self._send({"op": "dt_set", "dt": self.id, "init_enabled": enabled})

    @property
    def max_layer(self) -> int:
        return self._max_layer

    @max_layer.setter
    def max_layer(self, layer: int) -> None:
        if layer == self._max_layer:
            return
        self._max_layer = layer
        self._send({"op": "dt_set", "dt": self.id, "init_max_layer": layer})

    @property
    def subscribed_layer(self) -> int:
        """As `DownTrack.subscribed_layer`: within the allocation, or what is still sent."""
        if not self._enabled or self.closed or self.allocation_paused:
            return -1
        return max(min(self._max_layer, self.allocated_layer), self.current_layer)

    @property
    def paused(self) -> bool:
        if not self._enabled or not self.receiver.is_video:
            return False
        return self.allocation_paused or self._paused

    def on_event(self, message: Message, value: Any) -> None:
        op = message["op"]
        if op == "layers":
            self.current_layer = int(value)
            self.receiver.demand_changed()
        elif op == "paused":
            self._paused = bool(value)
        elif op == "reports" and isinstance(value, list) and len(value) == 3:
            lost, jitter, rtt = value
            self.fraction_lost = min(max(float(lost), 0.0), 1.0)
            self.jitter = max(float(jitter), 0.0)
            self.rtt = None if rtt is None else max(float(rtt), 0.0)

    def attach(self, on: bool) -> None:
        """Until it starts a down track forwards nothing, so the worker learns its attachment
        then: a subscription toggled 100k times before the client answers costs no message."""
        self._attached = on
        if self.started:
            self._send_attach()

    def _send_attach(self) -> None:
        if self._attached != self._attached_sent:
            self._attached_sent = self._attached
            self._send({"op": "dt_attach", "dt": self.id, "part": self.part, "on": self._attached})

    def start(self) -> None:
        if self.started or self.closed:
            return
        self.started = True
        self._send_attach()
        self._send({"op": "dt_start", "dt": self.id})

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self._enabled:
            return
        self._enabled = enabled
        self._send({"op": "dt_set", "dt": self.id, "enabled": enabled})
        self.receiver.demand_changed()

    def set_max_layer(self, layer: int) -> None:
        layer = min(layer, len(self.receiver.layers) - 1)
        if layer < 0:
            self.set_enabled(False)
            return
        if layer == self._max_layer:
            return
        self._max_layer = layer
        self._send({"op": "dt_set", "dt": self.id, "max_layer": layer})
        self.receiver.demand_changed()

    def set_allocation(self, layer: int) -> None:
        """The allocator's layer (-1: paused), sent to the worker's down track when it changes."""
        paused = layer < 0
        changed = paused != self.allocation_paused
        self.allocation_paused = paused
        if not paused:
            layer = min(layer, MAX_LAYERS)
            changed = changed or layer != self.allocated_layer
            self.allocated_layer = layer
        if changed:
            self._send({"op": "dt_set", "dt": self.id, "allocation": layer})
            self.receiver.demand_changed()

    def send_padding(self, count: int) -> int:
        """One probe tick of the subscriber link: the worker spreads ``count`` padding packets
        over the participant's video down tracks there, so this one answers for all of them."""
        if not self.started or not self._enabled or self.closed or not self.receiver.is_video:
            return 0
        self._send({"op": "pad", "part": self.part, "count": count})
        return count

    def due_sender_report(self) -> bytes:
        """Nothing: the worker sends its subscribers' sender reports."""
        return b""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.started = False
        self.link.downtracks.pop(self.id, None)
        self._send({"op": "dt_close", "dt": self.id})
        self.receiver.release_replica(self.link, self.generation)


class RemoteMedia:
    """One participant's media on one worker: its `PeerFactory` and `MediaFactory`."""

    def __init__(self, link: WorkerLink, room: str = "") -> None:
        self.link = link
        self.room = room  # what placement keeps together (`sfu.workers.pool`)
        self.generation = link.generation
        self.part = new_id()
        self.peers: list[RemotePeer] = []
        self.link_bandwidth: RemoteBandwidth | None = None
        #: called once if the worker dies under the participant
        self.on_lost: Callable[[], None] | None = None
        self.closed = False
        link.media.add(self)

    def __call__(
        self,
        role: Literal["publisher", "subscriber"],
        config: TransportConfig,
        *,
        on_rtp: Callable[[bytes], None],
        on_rtcp: Callable[[bytes], None],
        on_data: Callable[[str, bytes], None],
        on_state: Callable[[str], None],
    ) -> RemotePeer:
        peer = RemotePeer(self.link, role, self.part, on_data, on_state)
        self.peers.append(peer)
        return peer

    def send(self, message: Message) -> None:
        if self.link.alive and self.link.generation == self.generation and not self.closed:
            self.link.send(message)

    def bandwidth(self) -> RemoteBandwidth:
        bandwidth = RemoteBandwidth(self)
        self.link_bandwidth = bandwidth
        self.link.bandwidths[self.part] = bandwidth
        return bandwidth

    def demuxer(self) -> RemoteDemuxer:
        return RemoteDemuxer(self.link, self.part)

    def feedback(self, bandwidth: SubscriberBandwidth | None = None) -> RemoteFeedback:
        return RemoteFeedback()

    def receiver(self, peer: Any, spec: ReceiverSpec) -> RemoteReceiver:
        return RemoteReceiver(self.link, self.part, spec)

    def downtrack(
        self,
        receiver: Any,
        peer: Any,
        *,
        ssrc: int,
        payload_type: int,
        cname: str,
        bandwidth: SubscriberBandwidth | None = None,
    ) -> RemoteDownTrack:
        assert isinstance(receiver, RemoteReceiver)
        return RemoteDownTrack(
            self.link, self.part, receiver, ssrc=ssrc, payload_type=payload_type, cname=cname
        )

    def lost(self) -> None:
        """The worker died under this participant."""
        for peer in self.peers:
            peer.lost()
        if self.on_lost is not None and not self.closed:
            self.closed = True
            self.on_lost()

    def close(self) -> None:
        """The participant closed: forget what is left of it on the worker."""
        self.closed = True
        self.link.media.discard(self)
        if self.link.bandwidths.get(self.part) is self.link_bandwidth:
            self.link.bandwidths.pop(self.part, None)
        if self.link.alive and self.link.generation == self.generation:
            self.link.send({"op": "part_close", "part": self.part})


class ReportedGcc(GoogCc):
    """The estimator's state the allocator reads, as the worker last reported it (it is never
    fed feedback here)."""

    def __init__(self) -> None:
        super().__init__()
        self.acked: float | None = None

    def acked_rate(self) -> float | None:
        return self.acked


class RemoteBandwidth(SubscriberBandwidth):
    """A subscriber link whose estimator runs on the participant's worker: what the
    `StreamAllocator` here reads of it is the worker's last `estimate` report, and what the
    allocator sets or starts (the committed rate, probe clusters) goes to the worker.
    Transport-cc and REMB never reach this process; `stamping` follows the transport-cc id the
    worker's answer kept (`RemotePeer.handle_answer`), set here by `Subscriptions.answered`."""

    def __init__(self, media: RemoteMedia) -> None:
        self._media = media
        self._committed = self._committed_sent = 0
        self._estimate: int | None = None
        self._overusing = False
        #: probe clusters started here, the last one the worker had seen when it reported, and
        #: whether its cluster was still unmeasured then; True between start and end here
        self._probes_started = self._probes_seen = 0
        self._probing_reported = self._in_probe = False
        super().__init__(time.monotonic)
        self._gcc_reported = ReportedGcc()
        self.gcc = self._gcc_reported

    def note(self, message: Message) -> None:
        """A report from the worker (`WorkerHost._estimate_changed`): the allocator's cue."""
        self._estimate = max(int(message["estimate"]), 0)
        self._overusing = bool(message.get("overusing"))
        gcc = self._gcc_reported
        gcc.loss_fraction = min(max(float(message.get("loss") or 0.0), 0.0), 1.0)
        gcc.usage = "overusing" if self._overusing else "normal"
        acked = message.get("acked")
        gcc.acked = None if acked is None else max(float(acked), 0.0)
        self._probing_reported = bool(message.get("probing"))
        self._probes_seen = int(message.get("probes") or 0)
        self.transport_cc_seen = True  # the worker reports only once it has an estimate
        if self.on_estimate is not None:
            self.on_estimate()

    @property
    def estimate(self) -> int | None:
        return self._estimate if self.enabled else None

    @property
    def overusing(self) -> bool:
        return self._overusing

    @property
    def committed(self) -> int:
        return self._committed

    @committed.setter
    def committed(self, value: int) -> None:
        self._committed = value
        sent = self._committed_sent
        if abs(value - sent) > COMMITTED_STEP * sent or (value == 0) != (sent == 0):
            self._committed_sent = value
            self._media.send({"op": "link_set", "part": self._media.part, "committed": value})

    @property
    def probing(self) -> bool:
        return self._in_probe or self._probes_seen < self._probes_started or self._probing_reported

    def start_probe(self) -> None:
        self._probes_started += 1
        self._in_probe = True
        self._probe("start")

    def end_probe(self) -> None:
        if self._in_probe:
            self._in_probe = False
            self._probe("end")

    def abandon_probe(self) -> None:
        if self.probing:
            self._in_probe = self._probing_reported = False
            self._probes_seen = self._probes_started
            self._probe("abandon")

    def _probe(self, action: str) -> None:
        message: Message = {"op": "probe", "part": self._media.part, "action": action}
        self._media.send({**message, "n": self._probes_started})
