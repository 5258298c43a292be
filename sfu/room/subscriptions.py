"""What one participant receives: its subscriptions to others' tracks, the settings it asked for
them, the ones their publishers deny it, and the stream states it was told (LiveKit's
subscriptionmanager).

A subscription is a `DownTrack` on an m-line of the subscriber PC, a sink of the publisher's
`TrackReceiver` and a member of the `FeedbackRouter`. Media flows on it only once the client
has answered the offer carrying it (`answered`) and the PC is connected (`start_negotiated`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from livekit.protocol import models, rtc

from sfu.ids import ParticipantIdentity, ParticipantSid, TrackSid, new_ssrc
from sfu.media.transport import TrackSlotLimitError
from sfu.metrics import COUNTERS
from sfu.room import signalling
from sfu.room.allocation import StreamAllocator
from sfu.room.media import LOCAL_MEDIA, Forwarding, MediaFactory
from sfu.room.publication import PublishedTrack, Subscription
from sfu.room.types import NullRoomEvents, Peer, RoomEvents

log = logging.getLogger(__name__)

MAX_TRACK_SETTINGS = 1024
#: track sids one UpdateSubscription may name (the rest are ignored, counted)
MAX_SUBSCRIPTION_SIDS = 512
#: bytes of a track sid a client may name (ours are "TR_" + 12 characters)
MAX_SID_BYTES = 64


class Subscriptions:
    """One participant's subscriptions, keyed by track sid."""

    def __init__(
        self,
        identity: ParticipantIdentity,
        sid: ParticipantSid,
        send: Callable[[rtc.SignalResponse], None],
        renegotiate: Callable[[], None],
        *,
        adaptive_stream: bool = False,
        can_subscribe: bool = True,
        media: MediaFactory = LOCAL_MEDIA,
    ) -> None:
        self.identity = identity
        self.media = media
        self.sid = sid
        self._send = send
        self._renegotiate = renegotiate
        self.adaptive_stream = adaptive_stream
        self.can_subscribe = can_subscribe
        self.events: RoomEvents = NullRoomEvents()
        #: the subscriber PC; None until the participant starts
        self.peer: Peer | None = None
        #: the subscriber transport's link (transport-cc, REMB, estimate) and its allocation
        self.bandwidth = media.bandwidth()
        self.feedback = media.feedback(self.bandwidth)
        self.allocator = StreamAllocator(
            self.bandwidth,
            lambda: self.by_sid.values(),
            on_paused_changed=self.send_stream_states,
            clock=time.monotonic,
        )
        self.bandwidth.on_estimate = self.allocator.on_feedback
        self.by_sid: dict[TrackSid, Subscription] = {}
        #: subscriptions dropped before the client answered the offer carrying them: kept (off
        #: the receiver) until the next offer, so subscribe/unsubscribe toggles reuse them
        self._parked: dict[TrackSid, Subscription] = {}
        #: tracks this participant wants but their publisher does not allow it
        self.denied: set[TrackSid] = set()
        #: the latest UpdateTrackSettings per track; may arrive before the subscription binds
        self.track_settings: dict[TrackSid, rtc.UpdateTrackSettings] = {}
        self.closed = False

    # -- subscribe / unsubscribe -------------------------------------------------------------
    def subscribe(self, track: PublishedTrack) -> None:
        if self.add(track):
            self._renegotiate()

    def add(self, track: PublishedTrack) -> bool:
        """Bind a subscription without asking for an offer; whether one was bound."""
        if self.peer is None or track.sid in self.by_sid or self.closed:
            return False
        if not track.permits(self.identity, self.sid):
            # LiveKit keeps the wish and tells the client it is not allowed (for now)
            if track.sid not in self.denied:
                self.denied.add(track.sid)
                self.send_permission(track, allowed=False)
            return False
        if self.denied and track.sid in self.denied:
            self.denied.discard(track.sid)
            self.send_permission(track, allowed=True)
        parked = self._parked.pop(track.sid, None)
        if parked is not None:
            if parked.track is track:  # re-subscribed before the client answered: same slot
                self._apply_initial_settings(track, parked.downtrack)
                self._attach(parked)
                return True
            self._release(parked)
        receiver = track.receiver
        ssrc = new_ssrc()
        # PA_|TR_ (LiveKit's default, not the PA_|camera sync form): clients then read the track
        # sid from the stream id, which stays right when an m-line is recycled for a new track.
        stream_id = f"{track.publisher.sid}|{track.sid}"
        try:
            mid = self.peer.add_track(
                receiver.kind, receiver.codec_for_subscribers(), ssrc, stream_id, track.sid
            )
        except TrackSlotLimitError:  # counted by the transport; the others still subscribe
            log.info("participant %r: no m-line left for track %s", self.identity, track.sid)
            return False
        downtrack = self.media.downtrack(
            receiver,
            self.peer,
            ssrc=ssrc,
            payload_type=self.peer.track_codec(mid).payload_type,
            cname=self.sid,
            bandwidth=self.bandwidth,
        )
        self._apply_initial_settings(track, downtrack)
        self._attach(Subscription(track, downtrack, mid, stream_id))
        return True

    def unsubscribe(self, track_sid: str, *, renegotiate: bool = True, park: bool = False) -> None:
        """Stop forwarding a track. With ``park``, a subscription the client has not answered yet
        keeps its DownTrack and m-line until the next offer, for a re-subscribe to reuse."""
        sid = TrackSid(track_sid)
        self.denied.discard(sid)
        sub = self.by_sid.pop(sid, None)
        if sub is None:
            parked = self._parked.pop(sid, None)
            if parked is not None and not park:
                self._release(parked)
            elif parked is not None:
                self._parked[sid] = parked
            return
        self._detach(sub)
        if park and not sub.negotiated and not self.closed:
            self._parked[sid] = sub
        else:
            self._release(sub)
        if renegotiate and not self.closed:
            self._renegotiate()

    def deny(self, track: PublishedTrack) -> None:
        """Its publisher no longer allows this participant the track: drop it, keep the wish."""
        self.unsubscribe(track.sid)
        self.denied.add(track.sid)
        self.send_permission(track, allowed=False)

    def close(self) -> None:
        """Drop every subscription, parked and denied ones too; no offer follows."""
        self.closed = True
        for track_sid in list(self.by_sid):
            self.unsubscribe(track_sid, renegotiate=False)
        self._release_parked()
        self.denied.clear()
        self.allocator.close()

    def send_permission(self, track: PublishedTrack, *, allowed: bool) -> None:
        self._send(
            signalling.subscription_permission_update(
                track.publisher.sid, track.sid, allowed=allowed
            )
        )

    def _attach(self, sub: Subscription) -> None:
        self.by_sid[sub.track.sid] = sub
        sub.track.receiver.add_sink(sub.downtrack)
        self.feedback.add(sub.downtrack)
        sub.track.receiver.demand_changed()

    def _detach(self, sub: Subscription) -> None:
        sub.track.receiver.remove_sink(sub.downtrack)
        self.feedback.remove(sub.downtrack)
        sub.track.receiver.demand_changed()

    def _release(self, sub: Subscription) -> None:
        """Drop a detached subscription for good: its m-line goes inactive in the next offer."""
        sub.downtrack.close()
        self.allocator.forget(sub.downtrack)
        if self.peer is not None:
            self.peer.remove_track(sub.mid)

    def _release_parked(self) -> None:
        parked, self._parked = self._parked, {}
        for sub in parked.values():
            self._release(sub)

    # -- the subscriber offers (`OfferedTracks`) --------------------------------------------
    def before_offer(self) -> None:
        self._release_parked()

    def offered(self, offer_id: int) -> None:
        for sub in self.by_sid.values():
            if sub.offer_id == 0:
                sub.offer_id = offer_id

    def answered(self, offer_id: int) -> None:
        if self.peer is not None:  # copies carry transport-wide sequence numbers if it kept them
            self.bandwidth.sequence.ext_id = self.peer.transport_cc_id
            self.bandwidth.enabled = self.peer.congestion_control
        for sub in self.by_sid.values():
            if 0 < sub.offer_id <= offer_id:
                sub.negotiated = True
        self.start_negotiated()

    def start_negotiated(self) -> None:
        """Let media flow on subscriptions the client knows about, once the PC is up: a key
        frame sent before the client has applied the offer carrying its SSRC would be lost."""
        if self.peer is None or self.peer.state != "connected":
            return
        for sub in self.by_sid.values():
            if sub.negotiated:
                sub.downtrack.start()

    # -- requests -----------------------------------------------------------------------------
    def update_subscription(self, request: rtc.UpdateSubscription) -> None:
        track_sids = list(request.track_sids[:MAX_SUBSCRIPTION_SIDS])
        for pt in request.participant_tracks:
            if len(track_sids) >= MAX_SUBSCRIPTION_SIDS:
                break
            track_sids += pt.track_sids[: MAX_SUBSCRIPTION_SIDS - len(track_sids)]
        total = len(request.track_sids) + sum(
            len(pt.track_sids) for pt in request.participant_tracks
        )
        if total > len(track_sids):
            COUNTERS.limit_exceeded("subscription_sids")
            log.info("participant %r: UpdateSubscription with %d sids cut", self.identity, total)
        for track_sid in track_sids:
            if not sane_sid(track_sid):
                continue
            if request.subscribe:
                track = self.events.find_track(track_sid)
                if track is None or track.publisher.sid == self.sid:
                    error = rtc.SubscriptionResponse(
                        track_sid=track_sid, err=models.SubscriptionError.SE_TRACK_NOTFOUND
                    )
                    self._send(rtc.SignalResponse(subscription_response=error))
                    continue
                if self.can_subscribe:
                    self.subscribe(track)
            else:
                self.unsubscribe(track_sid, park=True)

    def update_track_settings(self, settings: rtc.UpdateTrackSettings) -> None:
        """Adaptive stream: the subscriber's tile size (or quality), or disabled when hidden."""
        # kept per sid without the (client-sized) sid list
        settings = rtc.UpdateTrackSettings(
            track_sids=[sid for sid in settings.track_sids if sane_sid(sid)],
            disabled=settings.disabled,
            quality=settings.quality,
            width=settings.width,
            height=settings.height,
            fps=settings.fps,
            priority=settings.priority,
        )
        track_sids = list(settings.track_sids)
        del settings.track_sids[:]
        for track_sid in track_sids:
            if (
                len(self.track_settings) >= MAX_TRACK_SETTINGS
                and track_sid not in self.track_settings
            ):
                COUNTERS.limit_exceeded("track_settings")
                continue  # a client cannot grow this without bound with made-up track sids
            self.track_settings[TrackSid(track_sid)] = settings
            sub = self.by_sid.get(TrackSid(track_sid))
            if sub is None:
                continue
            downtrack = sub.downtrack
            if not sub.track.receiver.is_video:
                downtrack.set_enabled(not settings.disabled)
                continue
            layer = sub.track.preferred_layer(settings)
            if layer >= 0:
                downtrack.set_max_layer(layer)
            downtrack.set_enabled(not settings.disabled and layer >= 0)

    def _apply_initial_settings(self, track: PublishedTrack, downtrack: Forwarding) -> None:
        """LiveKit's defaults when a subscription binds: LOW for adaptive-stream clients (they
        report their tile size once the video plays), HIGH otherwise; settings sent earlier
        apply, except that an adaptive-stream client is never started disabled (it only
        attaches, and so reports its size, once frames arrive)."""
        settings = self.track_settings.get(track.sid)
        if not track.receiver.is_video:
            downtrack.enabled = settings is None or not settings.disabled
            return
        if settings is None:
            quality = models.VideoQuality.LOW if self.adaptive_stream else models.VideoQuality.HIGH
            settings = rtc.UpdateTrackSettings(quality=quality)
        layer = track.preferred_layer(settings)
        downtrack.max_layer = max(layer, 0)
        downtrack.enabled = (self.adaptive_stream or not settings.disabled) and layer >= 0

    # -- periodic reports ---------------------------------------------------------------------
    def sender_reports(self) -> list[bytes]:
        """One SR + SDES per forwarded stream that has sent anything and is due one."""
        reports = [sub.downtrack.due_sender_report() for sub in self.by_sid.values()]
        return [r for r in reports if r]

    def tick(self) -> None:
        """Once per RTCP round: allocate the link again (REMB-only links have no other cue),
        then tell the client what paused or resumed."""
        self.allocator.run()
        self.send_stream_states()

    def speakers_changed(self, speakers: Iterable[models.SpeakerInfo]) -> None:
        """The SpeakersChanged this participant is sent: who speaks, for the allocation."""
        for speaker in speakers:
            if speaker.active:
                self.allocator.speakers.add(speaker.sid)
            else:
                self.allocator.speakers.discard(speaker.sid)

    def send_stream_states(self) -> None:
        """StreamStateUpdate for subscriptions that became paused (the publisher sends no layer
        they may take, e.g. paused by dynacast or muted) or active again."""
        changed: list[rtc.StreamStateInfo] = []
        for sub in self.by_sid.values():
            paused = sub.downtrack.paused
            if paused != sub.paused:
                sub.paused = paused
                state = rtc.StreamState.PAUSED if paused else rtc.StreamState.ACTIVE
                changed.append(
                    rtc.StreamStateInfo(
                        participant_sid=sub.track.publisher.sid,
                        track_sid=sub.track.sid,
                        state=state,
                    )
                )
        if changed:
            self._send(signalling.stream_state_update(changed))


def sane_sid(sid: str) -> bool:
    """Whether a client-named sid is short enough to look up, store or echo (counted if not)."""
    # characters ≤ bytes: the cheap bound first, so a huge sid is never encoded
    if len(sid) <= MAX_SID_BYTES and len(sid.encode()) <= MAX_SID_BYTES:
        return True
    COUNTERS.limit_exceeded("track_sid_bytes")
    return False
