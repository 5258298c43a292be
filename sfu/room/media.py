"""The media objects a participant drives, declared by their consumer (LiveKit's
MediaTrackReceiver / DownTrack seam): a publisher PC's demuxer, a track's receiver, one
subscription's down track and the subscriber PC's feedback router, made by a `MediaFactory`.

`LocalMedia` makes the real ones (`sfu.media.receiver`, `sfu.media.forwarder`) in this
process: ``rtc.workers: 1``. With media workers, `sfu.workers` makes proxies that drive the
same objects in a worker process. The room reads back only what is declared here; arguments
that are the factory's own objects (a receiver given to a demuxer, a down track given to a
receiver) are typed `Any`: each factory gets back what it made.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.feedback import FeedbackRouter
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import RtpDemuxer, TrackReceiver
from sfu.media.sdp import Codec


@dataclass(frozen=True)
class ReceiverSpec:
    """A published track's receiver, as its m-line and AddTrackRequest describe it."""

    kind: str
    mime_type: str
    clock_rate: int
    layer_count: int
    codec: Codec
    muted: bool = False


class MediaPeer(Protocol):
    """What a receiver or down track needs of its peer connection (`types.Peer` has it)."""

    def send_rtp(self, data: bytes) -> None: ...

    def send_rtcp(self, data: bytes) -> None: ...

    def fast_sender(self) -> tuple[Any, Any, Any] | None: ...

    def takes_red(self, ssrc: int) -> bool: ...


class LayerStats(Protocol):
    @property
    def bitrate(self) -> int: ...

    @property
    def last_arrival(self) -> float: ...


class Forwarding(Protocol):
    """One subscription's down track."""

    ssrc: int
    enabled: bool
    max_layer: int
    started: bool
    closed: bool
    #: what the subscriber's stream allocation holds it to (`sfu.room.allocation`)
    allocation_paused: bool
    allocated_layer: int
    #: the subscriber's receiver reports: loss, jitter (seconds), round-trip time (None: unknown)
    fraction_lost: float
    jitter: float
    rtt: float | None

    @property
    def subscribed_layer(self) -> int: ...

    @property
    def paused(self) -> bool: ...

    def start(self) -> None: ...

    def set_enabled(self, enabled: bool) -> None: ...

    def set_max_layer(self, layer: int) -> None: ...

    def set_allocation(self, layer: int) -> None: ...

    def send_padding(self, count: int) -> int: ...

    def due_sender_report(self) -> bytes: ...

    def close(self) -> None: ...


class Receiver(Protocol):
    """A published track's receiver."""

    kind: str
    is_video: bool
    mime_type: str
    muted: bool
    on_demand_change: Callable[[], None] | None
    #: the publisher's loss on this track, from its receiver reports (0..1)
    loss_fraction: float

    def clock(self) -> float: ...

    def is_active(self, layer: int, now: float) -> bool: ...

    @property
    def layers(self) -> Sequence[LayerStats]: ...

    @property
    def sinks(self) -> Sequence[Any]: ...

    def codec_for_subscribers(self) -> Codec: ...

    def add_sink(self, sink: Any) -> None: ...

    def remove_sink(self, sink: Any) -> None: ...

    def demand_changed(self) -> None: ...

    def request_keyframe_all(self) -> None: ...

    def take_audio_level(self) -> float: ...

    def close(self) -> None: ...


class Demuxer(Protocol):
    """The publisher PC's ingress: which m-line and layer a packet belongs to."""

    def on_rtp(self, data: bytes) -> None: ...

    def on_rtcp(self, data: bytes) -> None: ...

    def set_extension_ids(self, sections: Iterable[Mapping[str, int]]) -> None: ...

    def bind(
        self, mid: str, receiver: Any, layer_by_rid: dict[str, int], *, payload_type: int
    ) -> None: ...

    def unbind(self, mid: str) -> None: ...

    def rtcp_reports(self) -> bytes: ...


class Feedback(Protocol):
    """The subscriber PC's RTCP, routed to its down tracks."""

    def on_rtcp(self, data: bytes) -> None: ...

    def add(self, downtrack: Any) -> None: ...

    def remove(self, downtrack: Any) -> None: ...


class MediaFactory(Protocol):
    """Makes one participant's media objects."""

    def bandwidth(self) -> SubscriberBandwidth:
        """The subscriber transport's link, which the participant's `StreamAllocator` reads
        (with media workers, a mirror of the one on the worker)."""
        ...

    def demuxer(self) -> Demuxer: ...

    def feedback(self, bandwidth: SubscriberBandwidth | None = None) -> Feedback: ...

    def receiver(self, peer: MediaPeer, spec: ReceiverSpec) -> Receiver: ...

    def downtrack(
        self,
        receiver: Any,
        peer: MediaPeer,
        *,
        ssrc: int,
        payload_type: int,
        cname: str,
        bandwidth: SubscriberBandwidth | None = None,
    ) -> Forwarding: ...


class LocalMedia:
    """The real media objects, in this process (``rtc.workers: 1``)."""

    def bandwidth(self) -> SubscriberBandwidth:
        return SubscriberBandwidth(time.monotonic)

    def demuxer(self) -> Demuxer:
        return RtpDemuxer()

    def feedback(self, bandwidth: SubscriberBandwidth | None = None) -> Feedback:
        return FeedbackRouter(bandwidth)

    def receiver(self, peer: MediaPeer, spec: ReceiverSpec) -> Receiver:
        receiver = TrackReceiver(
            kind=spec.kind,
            mime_type=spec.mime_type,
            clock_rate=spec.clock_rate,
            layer_count=spec.layer_count,
            send_rtcp=peer.send_rtcp,
            codec=spec.codec,
        )
        receiver.muted = spec.muted
        return receiver

    def downtrack(
        self,
        receiver: Any,
        peer: MediaPeer,
        *,
        ssrc: int,
        payload_type: int,
        cname: str,
        bandwidth: SubscriberBandwidth | None = None,
    ) -> Forwarding:
        return DownTrack(
            receiver,
            ssrc=ssrc,
            payload_type=payload_type,
            send_rtp=peer.send_rtp,
            cname=cname,
            fast_sender=peer.fast_sender,
            bandwidth=bandwidth,
            takes_red=functools.partial(peer.takes_red, ssrc),
        )


LOCAL_MEDIA = LocalMedia()
