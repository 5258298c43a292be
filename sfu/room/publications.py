"""What one participant publishes (LiveKit's uptrackmanager): AddTrackRequests waiting for their
m-line, tracks bound to an m-line of the publisher's offer, their mute state, and unpublishing.

Each sending m-line of an offer binds to the AddTrackRequest with the same cid (its msid's track
id), else to the oldest pending request of its kind. Binding builds the track's `TrackReceiver`
(in the `RtpDemuxer` under the m-line's mid) and, for video, its layers and `Dynacast`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from livekit.protocol import models, rtc

from sfu.ids import TrackSid
from sfu.media.transport import PublishedMedia
from sfu.metrics import COUNTERS
from sfu.room.dynacast import Dynacast
from sfu.room.layer_selection import QUALITY_HIGH, layer_sizes
from sfu.room.media import LOCAL_MEDIA, MediaFactory, ReceiverSpec
from sfu.room.publication import PublishedTrack, TrackPublisher
from sfu.room.track import PendingTrack, TrackRequestError, bind_layers, track_info_from_request
from sfu.room.types import NullRoomEvents, Peer, RoomEvents

log = logging.getLogger(__name__)

#: tracks a participant may publish, pending ones included (LiveKit clients publish ~4)
MAX_TRACKS_PER_PARTICIPANT = 16


class Publications:
    """One participant's pending and published tracks."""

    def __init__(
        self,
        owner: TrackPublisher,
        send: Callable[[rtc.SignalResponse], None],
        *,
        can_publish: bool = True,
        sources: Sequence[str] = (),
        media: MediaFactory = LOCAL_MEDIA,
    ) -> None:
        self.owner = owner
        self.media = media
        self._send = send
        self.can_publish = can_publish
        #: the sources the token lets it publish (empty: any)
        self.sources = tuple(sources)
        self.events: RoomEvents = NullRoomEvents()
        #: the publisher PC; None until the client's first offer
        self.peer: Peer | None = None
        self.demuxer = media.demuxer()
        self.pending: dict[str, PendingTrack] = {}
        self.published: dict[TrackSid, PublishedTrack] = {}

    def add_track(self, request: rtc.AddTrackRequest) -> None:
        """Answer an AddTrackRequest with the TrackInfo its m-line will publish."""
        if not self.can_publish:
            raise TrackRequestError(
                rtc.RequestResponse.Reason.NOT_ALLOWED, "not allowed to publish"
            )
        if request.sid:  # backup codec for an existing track: not supported, answer with the track
            track = self.published.get(TrackSid(request.sid))
            if track is None:
                raise TrackRequestError(rtc.RequestResponse.Reason.NOT_FOUND, "unknown track sid")
            self._published_response(request.cid, track.info)
            return
        pending = self.pending.get(request.cid)
        if pending is None:
            if len(self.published) + len(self.pending) >= MAX_TRACKS_PER_PARTICIPANT:
                COUNTERS.limit_exceeded("tracks_per_participant")
                raise TrackRequestError(
                    rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                    f"at most {MAX_TRACKS_PER_PARTICIPANT} tracks per participant",
                )
            max_tracks = self.events.max_tracks()
            if self.events.track_count() + len(self.pending) >= max_tracks:
                COUNTERS.limit_exceeded("tracks_per_room")
                raise TrackRequestError(
                    rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                    f"at most {max_tracks} tracks per room",
                )
            pending = PendingTrack(request.cid, track_info_from_request(request, self.sources))
            self.pending[request.cid] = pending
        self._published_response(request.cid, pending.info)

    def _published_response(self, cid: str, info: models.TrackInfo) -> None:
        published = rtc.TrackPublishedResponse(cid=cid, track=info)
        self._send(rtc.SignalResponse(track_published=published))

    def red_tracks(self) -> frozenset[str]:
        """The track ids (cids: the offer's msid) whose audio is answered with RED where offered:
        announced without `disable_red` and unencrypted (E2EE seals the block headers), or
        already published with RED (a renegotiation keeps a bound m-line's codec)."""
        plain = models.Encryption.Type.NONE
        pending = (
            p.cid
            for p in self.pending.values()
            if p.kind == "audio" and not p.info.disable_red and p.info.encryption == plain
        )
        published = (
            codec.cid
            for t in self.published.values()
            if t.info.mime_type.lower() == "audio/red"
            for codec in t.info.codecs[:1]
        )
        return frozenset((*pending, *published))

    def bind_offer(self, medias: Iterable[PublishedMedia]) -> None:
        """Follow an answered publisher offer: bind new sending m-lines, unpublish stopped ones."""
        medias = list(medias)
        self.demuxer.set_extension_ids(m.extension_ids for m in medias)
        for media in medias:
            self._reconcile(media)

    def _reconcile(self, media: PublishedMedia) -> None:
        if media.kind not in ("audio", "video"):
            return
        bound = next((t for t in self.published.values() if t.mid == media.mid), None)
        sending = media.direction in ("sendonly", "sendrecv")
        if bound is not None:
            if not sending:
                self.unpublish(bound)
            return
        if not sending:
            return
        track_id = media.msid[1] if media.msid else ""
        pending = self.pending.get(track_id) or next(
            (p for p in self.pending.values() if p.kind == media.kind), None
        )
        if pending is None:
            log.info(
                "participant %r: m-line %s has no AddTrackRequest", self.owner.identity, media.mid
            )
            return
        del self.pending[pending.cid]
        if self.events.track_count() >= self.events.max_tracks():  # others' pending bound first
            COUNTERS.limit_exceeded("tracks_per_room")
            log.info("participant %r: its room is full of tracks", self.owner.identity)
            return
        self._publish(pending, media)

    def _publish(self, pending: PendingTrack, media: PublishedMedia) -> None:
        assert self.peer is not None
        codec = media.codec
        mime = f"{media.kind}/{codec.name}"
        spatial_by_rid = bind_layers(pending.info, list(media.rids), mime, media.mid)
        if codec.name.lower() == "vp8" and pending.info.codecs:
            pending.info.codecs[0].mime_type = "video/VP8"
        spec = ReceiverSpec(
            media.kind, mime, codec.clock_rate, len(spatial_by_rid), codec, pending.info.muted
        )
        receiver = self.media.receiver(self.peer, spec)
        self.demuxer.bind(media.mid, receiver, spatial_by_rid, payload_type=codec.payload_type)
        track = PublishedTrack(
            info=pending.info, publisher=self.owner, receiver=receiver, mid=media.mid
        )
        if receiver.is_video:
            by_spatial = sorted(pending.info.layers, key=lambda layer: layer.spatial_layer)
            count = len(receiver.layers)
            declared = [(layer.width, layer.height) for layer in by_spatial]
            track.layer_sizes = layer_sizes(
                declared, count, pending.info.width, pending.info.height
            )
            track.layer_qualities = [int(layer.quality) for layer in by_spatial][:count] or (
                [QUALITY_HIGH] if count == 1 else list(range(count))
            )
            track.dynacast = Dynacast(
                track.sid, mime, track.layer_qualities, lambda: receiver.sinks, self._send
            )
            receiver.on_demand_change = track.dynacast.update
        self.published[track.sid] = track
        log.info("participant %r published %s track %s", self.owner.identity, media.kind, track.sid)
        self.events.track_published(track)
        if track.dynacast is not None:
            track.dynacast.start()

    def unpublish(self, track: PublishedTrack) -> None:
        self.published.pop(track.sid, None)
        self.demuxer.unbind(track.mid)
        if track.dynacast is not None:
            track.dynacast.close()
        track.receiver.close()
        self.events.track_unpublished(track)

    def close(self) -> None:
        """Unpublish everything (the participant is leaving)."""
        for track in list(self.published.values()):
            self.unpublish(track)

    def set_track_muted(self, track_sid: str, muted: bool) -> None:
        track = self.published.get(TrackSid(track_sid))
        if track is None:
            pending = next((p for p in self.pending.values() if p.info.sid == track_sid), None)
            if pending is None:
                raise TrackRequestError(rtc.RequestResponse.Reason.NOT_FOUND, "unknown track sid")
            pending.info.muted = muted
            return
        if track.info.muted == muted:
            return
        track.info.muted = muted
        track.receiver.muted = muted
        if not muted:
            track.receiver.request_keyframe_all()
        self.events.participant_changed()
