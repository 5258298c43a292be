"""A participant: its identity and permissions, its two peer connections, what it publishes and
what it receives. Signalling calls in; ``send`` carries SignalResponses out.

Publisher PC: the client offers, we answer (echoing the offer id) and bind each sending m-line to
the AddTrackRequest with the same cid. Subscriber PC: we offer, one at a time, whenever the set
of subscribed tracks changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from livekit.protocol import models, rtc

from sfu.auth import ClaimGrants
from sfu.ids import ParticipantIdentity, ParticipantSid, TrackSid, new_participant_sid, new_ssrc
from sfu.media.forwarder import DownTrack, FeedbackRouter
from sfu.media.receiver import RtpDemuxer, TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.transport import PeerTransport, PublishedMedia, TrackSlotLimitError, TransportConfig
from sfu.metrics import COUNTERS
from sfu.room.dynacast import Dynacast
from sfu.room.join import PROTOCOL_VERSION, join_response
from sfu.room.layer_selection import QUALITY_HIGH, layer_sizes
from sfu.room.permission import SubscriptionPermissions, forwardable
from sfu.room.publication import PublishedTrack as PublishedTrack  # re-exported
from sfu.room.publication import Subscription as Subscription
from sfu.room.publication import close_transports
from sfu.room.room import Room
from sfu.room.track import PendingTrack, TrackRequestError, bind_layers, track_info_from_request

log = logging.getLogger(__name__)

RTCP_INTERVAL = 1.0
TOKEN_REFRESH_INTERVAL = 300
#: tracks a participant may publish, pending ones included (LiveKit clients publish ~4)
MAX_TRACKS_PER_PARTICIPANT = 16
MAX_TRACK_SETTINGS = 1024
#: track sids one UpdateSubscription may name (the rest are ignored, counted)
MAX_SUBSCRIPTION_SIDS = 512
#: bytes of a track sid a client may name (ours are "TR_" + 12 characters)
MAX_SID_BYTES = 64
#: publisher candidates kept from before the first offer (the transport's own cap is also 64)
MAX_EARLY_CANDIDATES = 64
MAX_CANDIDATE_INIT_BYTES = 1024  # a real candidateInit is about 150 bytes
DATA_LABELS = frozenset({"_reliable", "_lossy"})


@dataclass(frozen=True)
class ParticipantOptions:
    auto_subscribe: bool = True
    adaptive_stream: bool = False
    protocol: int = PROTOCOL_VERSION
    client_protocol: int = 0
    sdk: str = ""
    ice_servers: tuple[rtc.ICEServer, ...] = ()
    node_id: str = ""


class Participant:
    def __init__(
        self,
        room: Room,
        grants: ClaimGrants,
        options: ParticipantOptions,
        transport_config: TransportConfig,
        send: Callable[[rtc.SignalResponse], None],
        refresh_token: Callable[[ClaimGrants], str] | None = None,
        *,
        make_transport: Callable[..., PeerTransport] = PeerTransport,
    ) -> None:
        self.room = room
        self.grants = grants
        self.options = options
        self.transport_config = transport_config
        self._send = send
        self._refresh_token = refresh_token
        self._make_transport = make_transport
        #: called once when the participant closes, after its leave was sent: the session
        #: flushes its outbox and closes the WebSocket
        self.on_close: Callable[[], None] | None = None
        self._negotiation_task: asyncio.Task[None] | None = None
        #: called once the room holds this participant (before its transports start)
        self.on_joined: Callable[[], None] | None = None
        self.sid: ParticipantSid = new_participant_sid()
        self.identity = ParticipantIdentity(grants.identity)
        self.name = grants.name
        self.metadata = grants.metadata
        self.attributes = dict(grants.attributes)
        self.permission = models.ParticipantPermission(
            can_subscribe=grants.video.can_subscribe,
            can_publish=grants.video.can_publish,
            can_publish_data=grants.video.can_publish_data,
            can_publish_sources=[_SOURCE_BY_NAME[s] for s in grants.video.can_publish_sources],
            hidden=grants.video.hidden,
            recorder=grants.video.recorder,
            can_update_metadata=grants.video.can_update_own_metadata,
        )
        self.state = models.ParticipantInfo.State.JOINING
        self.joined_at = time.time()
        self.version = 0
        self.disconnect_reason = models.DisconnectReason.UNKNOWN_REASON
        self.pending: dict[str, PendingTrack] = {}
        #: publisher candidates trickled before the first offer (applied once it arrives)
        self._early_candidates: list[str] = []
        self.published: dict[TrackSid, PublishedTrack] = {}
        self.subscriptions: dict[TrackSid, Subscription] = {}
        #: subscriptions dropped before the client answered the offer carrying them: kept (off
        #: the receiver) until the next offer, so subscribe/unsubscribe toggles reuse them
        self._parked: dict[TrackSid, Subscription] = {}
        #: tracks this participant wants but their publisher does not allow it
        self.denied: set[TrackSid] = set()
        self.subscription_permission = SubscriptionPermissions()
        #: the latest UpdateTrackSettings per track; may arrive before the subscription binds
        self.track_settings: dict[TrackSid, rtc.UpdateTrackSettings] = {}
        self.publisher: PeerTransport | None = None
        self.subscriber: PeerTransport | None = None
        self.demuxer = RtpDemuxer()
        self.feedback = FeedbackRouter()
        self._offer_id = 0
        self._awaiting_answer = False
        self._renegotiate = False
        self._negotiation_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rtcp_error_logged = False
        self.closed = False

    # -- properties -----------------------------------------------------------------------------
    @property
    def hidden(self) -> bool:
        return self.permission.hidden

    @property
    def can_subscribe(self) -> bool:
        return self.permission.can_subscribe

    @property
    def auto_subscribe(self) -> bool:
        return self.options.auto_subscribe

    def info(self) -> models.ParticipantInfo:
        self.version += 1
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            state=self.state,
            tracks=[t.info for t in self.published.values()],
            metadata=self.metadata,
            joined_at=int(self.joined_at),
            joined_at_ms=int(self.joined_at * 1000),
            name=self.name,
            version=self.version,
            permission=self.permission,
            is_publisher=bool(self.published),
            kind=_KIND_BY_NAME.get(self.grants.kind, models.ParticipantInfo.Kind.STANDARD),
            attributes=self.attributes,
            disconnect_reason=self.disconnect_reason,
            client_protocol=self.options.client_protocol,
        )

    # -- outgoing signalling ------------------------------------------------------------------------
    def send(self, response: rtc.SignalResponse) -> None:
        if not self.closed:
            self._send(response)

    def send_join(self, room: models.Room, others: list[models.ParticipantInfo]) -> None:
        self.state = models.ParticipantInfo.State.JOINED
        join = join_response(
            room,
            self.info(),
            others,
            self.options.ice_servers,
            node_id=self.options.node_id,
            subscriber_primary=self.can_subscribe,
            fast_publish=self.permission.can_publish,
        )
        self.send(rtc.SignalResponse(join=join))

    def send_participant_updates(self, infos: list[models.ParticipantInfo]) -> None:
        self.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=infos)))

    def send_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self.send(rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers)))

    def send_data(self, label: str, payload: bytes) -> None:
        if self.subscriber is not None and self.can_subscribe:
            self.subscriber.send_data(label, payload)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, existing_tracks: Iterable[PublishedTrack]) -> None:
        """Create the subscriber PC (with data channels and the existing tracks) and offer it."""
        if self.closed:  # closed while joining (room closed, replaced): nothing to start
            return
        self.subscriber = self._make_transport(
            "subscriber",
            self.transport_config,
            on_rtp=_ignore_rtp,
            on_rtcp=self.feedback.on_rtcp,
            on_data=self._on_data,
            on_state=self._on_subscriber_state,
        )
        if self.auto_subscribe and self.can_subscribe:
            for track in existing_tracks:
                self._add_subscription(track)
        self._spawn(self._rtcp_loop())
        if self._refresh_token is not None:
            self._spawn(self._refresh_loop())
        await self.negotiate()

    async def close(
        self, reason: models.DisconnectReason = models.DisconnectReason.CLIENT_INITIATED
    ) -> None:
        if self.closed:
            return
        self.disconnect_reason = reason
        if reason not in (models.DisconnectReason.CLIENT_INITIATED,):
            action = rtc.LeaveRequest.Action.DISCONNECT
            if reason == models.DisconnectReason.SERVER_SHUTDOWN:  # drained: join again
                action = rtc.LeaveRequest.Action.RECONNECT
            self.send(rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=action)))
        self.closed = True
        self.state = models.ParticipantInfo.State.DISCONNECTED
        for track in list(self.published.values()):
            self._unpublish(track)
        for track_sid in list(self.subscriptions):
            self.unsubscribe(track_sid, renegotiate=False)
        self._release_parked()
        self.denied.clear()
        self.room.remove(self)
        if self.on_close is not None:
            self.on_close()
        # A close spawned from a transport callback runs in one of our own tasks: cancelling it
        # would stop the transports' close half way and leak their sockets.
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await close_transports(self.publisher, self.subscriber)
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_subscriber_state(self, state: str) -> None:
        if state == "connected":
            if self.state != models.ParticipantInfo.State.ACTIVE:
                self.state = models.ParticipantInfo.State.ACTIVE
                self.room.broadcast_participant(self)
            self._start_negotiated()
        elif state in ("failed", "closed") and not self.closed:
            log.info("participant %r: subscriber transport %s", self.identity, state)
            self._spawn(self.close(models.DisconnectReason.CONNECTION_TIMEOUT))

    def _on_publisher_state(self, state: str) -> None:
        if state == "connected" and self.state != models.ParticipantInfo.State.ACTIVE:
            self.state = models.ParticipantInfo.State.ACTIVE
            self.room.broadcast_participant(self)
        elif state in ("failed", "closed") and not self.closed:
            # "closed": the client sent DTLS close_notify; its tracks must not stay advertised
            log.info("participant %r: publisher transport %s", self.identity, state)
            self._spawn(self.close(models.DisconnectReason.CONNECTION_TIMEOUT))

    # -- subscriber negotiation -------------------------------------------------------------------
    def _schedule_negotiation(self) -> None:
        """`negotiate` soon, in one task however many changes ask for it meanwhile (a client
        toggling a subscription 100k times gets one offer, not 100k tasks queued on the lock)."""
        if self._negotiation_task is not None and not self._negotiation_task.done():
            self._renegotiate = True  # the pending offer may be built before this change
            return
        self._negotiation_task = asyncio.ensure_future(self.negotiate())
        self._tasks.add(self._negotiation_task)
        self._negotiation_task.add_done_callback(self._tasks.discard)

    async def negotiate(self) -> None:
        """Send a subscriber offer now, or as soon as the outstanding one is answered."""
        if self.subscriber is None or self.closed:
            return
        if self._awaiting_answer:
            self._renegotiate = True
            return
        async with self._negotiation_lock:
            if self._awaiting_answer or self.closed:
                self._renegotiate = True
                return
            self._renegotiate = False
            self._release_parked()
            sdp = await self.subscriber.create_offer()
            self._offer_id += 1
            self._awaiting_answer = True
            for sub in self.subscriptions.values():
                if sub.offer_id == 0:
                    sub.offer_id = self._offer_id
            offer = rtc.SessionDescription(type="offer", sdp=sdp, id=self._offer_id)
            self.send(rtc.SignalResponse(offer=offer))

    async def handle_answer(self, answer: rtc.SessionDescription) -> None:
        if self.subscriber is None or not self._awaiting_answer:
            raise SignalStateError("answer received but no subscriber offer is outstanding")
        if self.subscriber.state in ("failed", "closed"):
            # e.g. ICE gave up before the client's answer arrived: nothing left to negotiate
            raise SignalStateError(f"answer received for a {self.subscriber.state} subscriber")
        if answer.id not in (0, self._offer_id):
            log.debug(
                "participant %r: answer id %d for offer %d",
                self.identity,
                answer.id,
                self._offer_id,
            )
        await self.subscriber.handle_answer(answer.sdp)
        self._awaiting_answer = False
        for sub in self.subscriptions.values():
            if 0 < sub.offer_id <= self._offer_id:
                sub.negotiated = True
        self._start_negotiated()
        if self._renegotiate:
            await self.negotiate()

    # -- publishing ----------------------------------------------------------------------------
    def add_track(self, request: rtc.AddTrackRequest) -> None:
        if self.closed:
            raise SignalStateError("AddTrackRequest after the participant closed")
        if not self.permission.can_publish:
            raise TrackRequestError(
                rtc.RequestResponse.Reason.NOT_ALLOWED, "not allowed to publish"
            )
        if request.sid:  # backup codec for an existing track: not supported, answer with the track
            track = self.published.get(TrackSid(request.sid))
            if track is None:
                raise TrackRequestError(rtc.RequestResponse.Reason.NOT_FOUND, "unknown track sid")
            published = rtc.TrackPublishedResponse(cid=request.cid, track=track.info)
            self.send(rtc.SignalResponse(track_published=published))
            return
        pending = self.pending.get(request.cid)
        if pending is None:
            if len(self.published) + len(self.pending) >= MAX_TRACKS_PER_PARTICIPANT:
                COUNTERS.limit_exceeded("tracks_per_participant")
                raise TrackRequestError(
                    rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                    f"at most {MAX_TRACKS_PER_PARTICIPANT} tracks per participant",
                )
            if self.room.track_count() + len(self.pending) >= self.room.max_tracks:
                COUNTERS.limit_exceeded("tracks_per_room")
                raise TrackRequestError(
                    rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                    f"at most {self.room.max_tracks} tracks per room",
                )
            sources = self.grants.video.can_publish_sources
            pending = PendingTrack(request.cid, track_info_from_request(request, sources))
            self.pending[request.cid] = pending
        published = rtc.TrackPublishedResponse(cid=request.cid, track=pending.info)
        self.send(rtc.SignalResponse(track_published=published))

    def keep_early_candidate(self, candidate_init: str) -> bool:
        """Keep a publisher candidate trickled before the publisher PC exists; False when the
        participant already holds MAX_EARLY_CANDIDATES of them (counted)."""
        if self.closed or self.publisher is not None:
            return False
        if (
            len(self._early_candidates) >= MAX_EARLY_CANDIDATES
            or len(candidate_init) > MAX_CANDIDATE_INIT_BYTES
        ):
            COUNTERS.limit_exceeded("early_candidates")
            return False
        self._early_candidates.append(candidate_init)
        return True

    async def handle_offer(self, offer: rtc.SessionDescription) -> None:
        if self.closed:
            raise SignalStateError("publisher offer after the participant closed")
        if self.publisher is None:
            self.publisher = self._make_transport(
                "publisher",
                self.transport_config,
                on_rtp=self.demuxer.on_rtp,
                on_rtcp=self.demuxer.on_rtcp,
                on_data=self._on_data,
                on_state=self._on_publisher_state,
            )
        log.debug("participant %r: publisher offer %d:\n%s", self.identity, offer.id, offer.sdp)
        sdp, medias = await self.publisher.handle_offer(offer.sdp)
        if self.closed:  # closed while answering: close() has closed the publisher too
            raise SignalStateError("participant closed while its offer was answered")
        log.debug("participant %r: publisher answer:\n%s", self.identity, sdp)
        self.send(
            rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id))
        )
        for candidate in self._early_candidates:
            self.publisher.add_remote_candidate(candidate)
        self._early_candidates.clear()
        self.demuxer.set_extension_ids(m.extension_ids for m in medias)
        for media in medias:
            self._reconcile_media(media)

    def _reconcile_media(self, media: PublishedMedia) -> None:
        if media.kind not in ("audio", "video"):
            return
        bound = next((t for t in self.published.values() if t.mid == media.mid), None)
        sending = media.direction in ("sendonly", "sendrecv")
        if bound is not None:
            if not sending:
                self._unpublish(bound)
            return
        if not sending:
            return
        track_id = media.msid[1] if media.msid else ""
        pending = self.pending.get(track_id) or next(
            (p for p in self.pending.values() if p.kind == media.kind), None
        )
        if pending is None:
            log.info("participant %r: m-line %s has no AddTrackRequest", self.identity, media.mid)
            return
        del self.pending[pending.cid]
        if self.room.track_count() >= self.room.max_tracks:  # others' pending tracks bound first
            COUNTERS.limit_exceeded("tracks_per_room")
            log.info("participant %r: room %s is full of tracks", self.identity, self.room.name)
            return
        self._publish(pending, media)

    def _publish(self, pending: PendingTrack, media: PublishedMedia) -> None:
        assert self.publisher is not None
        codec = media.codec
        mime = f"{media.kind}/{codec.name}"
        spatial_by_rid = bind_layers(pending.info, list(media.rids), mime, media.mid)
        if codec.name.lower() == "vp8" and pending.info.codecs:
            pending.info.codecs[0].mime_type = "video/VP8"
        receiver = TrackReceiver(
            kind=media.kind,
            mime_type=mime,
            clock_rate=codec.clock_rate,
            layer_count=len(spatial_by_rid),
            send_rtcp=self.publisher.send_rtcp,
            codec=codec,
        )
        receiver.muted = pending.info.muted
        self.demuxer.bind(media.mid, receiver, spatial_by_rid, payload_type=codec.payload_type)
        track = PublishedTrack(info=pending.info, publisher=self, receiver=receiver, mid=media.mid)
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
                track.sid, mime, track.layer_qualities, lambda: receiver.sinks, self.send
            )
            receiver.on_demand_change = track.dynacast.update
        self.published[track.sid] = track
        log.info("participant %r published %s track %s", self.identity, media.kind, track.sid)
        self.room.track_published(self, track)
        if track.dynacast is not None:
            track.dynacast.start()

    def _unpublish(self, track: PublishedTrack) -> None:
        self.published.pop(track.sid, None)
        self.demuxer.unbind(track.mid)
        if track.dynacast is not None:
            track.dynacast.close()
        track.receiver.close()
        self.room.track_unpublished(self, track)

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
        self.room.broadcast_participant(self)

    # -- subscribing ---------------------------------------------------------------------------
    def subscribe(self, track: PublishedTrack) -> None:
        if self._add_subscription(track):
            self._schedule_negotiation()

    def permits(self, subscriber: Participant, track: PublishedTrack) -> bool:
        """Whether this publisher's SubscriptionPermission lets ``subscriber`` have ``track``."""
        return self.subscription_permission.allows(subscriber.identity, subscriber.sid, track.sid)

    def _add_subscription(self, track: PublishedTrack) -> bool:
        if self.subscriber is None or track.sid in self.subscriptions or self.closed:
            return False
        if not track.publisher.permits(self, track):
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
            mid = self.subscriber.add_track(
                receiver.kind, receiver.codec_for_subscribers(), ssrc, stream_id, track.sid
            )
        except TrackSlotLimitError:  # counted by the transport; the others still subscribe
            log.info("participant %r: no m-line left for track %s", self.identity, track.sid)
            return False
        downtrack = DownTrack(
            receiver,
            ssrc=ssrc,
            payload_type=self.subscriber.track_codec(mid).payload_type,
            send_rtp=self.subscriber.send_rtp,
            cname=self.sid,
        )
        self._apply_initial_settings(track, downtrack)
        self._attach(Subscription(track, downtrack, mid, stream_id))
        return True

    def _attach(self, sub: Subscription) -> None:
        self.subscriptions[sub.track.sid] = sub
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
        if self.subscriber is not None:
            self.subscriber.remove_track(sub.mid)

    def _release_parked(self) -> None:
        parked, self._parked = self._parked, {}
        for sub in parked.values():
            self._release(sub)

    def send_permission(self, track: PublishedTrack, *, allowed: bool) -> None:
        update = rtc.SubscriptionPermissionUpdate(
            participant_sid=track.publisher.sid, track_sid=track.sid, allowed=allowed
        )
        self.send(rtc.SignalResponse(subscription_permission_update=update))

    def _start_negotiated(self) -> None:
        """Let media flow on subscriptions the client knows about, once the PC is up: a key
        frame sent before the client has applied the offer carrying its SSRC would be lost."""
        if self.subscriber is None or self.subscriber.state != "connected":
            return
        for sub in self.subscriptions.values():
            if sub.negotiated:
                sub.downtrack.start()

    def _apply_initial_settings(self, track: PublishedTrack, downtrack: DownTrack) -> None:
        """LiveKit's defaults when a subscription binds: LOW for adaptive-stream clients (they
        report their tile size once the video plays), HIGH otherwise; settings sent earlier
        apply, except that an adaptive-stream client is never started disabled (it only
        attaches, and so reports its size, once frames arrive)."""
        if not track.receiver.is_video:
            settings = self.track_settings.get(track.sid)
            downtrack.enabled = settings is None or not settings.disabled
            return
        settings = self.track_settings.get(track.sid)
        if settings is None:
            quality = (
                models.VideoQuality.LOW
                if self.options.adaptive_stream
                else models.VideoQuality.HIGH
            )
            settings = rtc.UpdateTrackSettings(quality=quality)
        layer = track.preferred_layer(settings)
        downtrack.max_layer = max(layer, 0)
        downtrack.enabled = (self.options.adaptive_stream or not settings.disabled) and layer >= 0

    def unsubscribe(self, track_sid: str, *, renegotiate: bool = True, park: bool = False) -> None:
        """Stop forwarding a track. With ``park``, a subscription the client has not answered yet
        keeps its DownTrack and m-line until the next offer, for a re-subscribe to reuse."""
        sid = TrackSid(track_sid)
        self.denied.discard(sid)
        sub = self.subscriptions.pop(sid, None)
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
            self._schedule_negotiation()

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
            if not _sane_sid(track_sid):
                continue
            if request.subscribe:
                track = self.room.find_track(track_sid)
                if track is None or track.publisher is self:
                    error = rtc.SubscriptionResponse(
                        track_sid=track_sid, err=models.SubscriptionError.SE_TRACK_NOTFOUND
                    )
                    self.send(rtc.SignalResponse(subscription_response=error))
                    continue
                if self.can_subscribe:
                    self.subscribe(track)
            else:
                self.unsubscribe(track_sid, park=True)

    def update_subscription_permission(self, request: rtc.SubscriptionPermission) -> None:
        """A publisher's SubscriptionPermission: drop the subscriptions it no longer allows and
        grant the waiting ones it now allows (LiveKit's SubscriptionPermissionUpdate both ways)."""
        self.subscription_permission.update(request)
        self.room.permission_changed(self)

    def update_track_settings(self, settings: rtc.UpdateTrackSettings) -> None:
        """Adaptive stream: the subscriber's tile size (or quality), or disabled when hidden."""
        # kept per sid without the (client-sized) sid list
        settings = rtc.UpdateTrackSettings(
            track_sids=[sid for sid in settings.track_sids if _sane_sid(sid)],
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
            sub = self.subscriptions.get(TrackSid(track_sid))
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

    # -- data ------------------------------------------------------------------------------------
    def _on_data(self, label: str, payload: bytes) -> None:
        if label not in DATA_LABELS or not self.permission.can_publish_data:
            return
        try:
            packet = models.DataPacket.FromString(payload)
        except Exception:  # protobuf DecodeError
            log.info("participant %r: malformed DataPacket dropped", self.identity)
            return
        if not forwardable(packet):
            log.debug(
                "participant %r: %s packet dropped", self.identity, packet.WhichOneof("value")
            )
            return
        packet.participant_identity = self.identity
        packet.participant_sid = self.sid
        if packet.HasField("user"):
            packet.user.participant_sid = self.sid
            packet.user.participant_identity = self.identity
        self.room.route_data(self, packet, label)

    # -- periodic work ---------------------------------------------------------------------------
    async def _rtcp_loop(self) -> None:
        """Receiver reports + REMB to the publisher, sender reports to the subscriber, every second."""
        while not self.closed:
            await asyncio.sleep(RTCP_INTERVAL)
            try:
                self._send_rtcp_reports()
            except Exception:  # one bad report must not end the loop; say so, once
                COUNTERS.signal_errors += 1
                if not self._rtcp_error_logged:
                    self._rtcp_error_logged = True
                    log.exception("participant %r: RTCP reports failed", self.identity)

    def _send_rtcp_reports(self) -> None:
        if self.publisher is not None and self.publisher.state == "connected":
            report = self.demuxer.rtcp_reports()
            if report:
                self.publisher.send_rtcp(report)
        if self.subscriber is not None and self.subscriber.state == "connected":
            # one SR + SDES per forwarded stream, packed into as few datagrams as fit
            reports = [sub.downtrack.sender_report() for sub in self.subscriptions.values()]
            for compound in rtcp.pack_compounds(r for r in reports if r):
                self.subscriber.send_rtcp(compound)
            self._send_stream_states()

    def _send_stream_states(self) -> None:
        """StreamStateUpdate for subscriptions that became paused (the publisher sends no layer
        they may take, e.g. paused by dynacast or muted) or active again."""
        changed: list[rtc.StreamStateInfo] = []
        for sub in self.subscriptions.values():
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
            self.send(
                rtc.SignalResponse(stream_state_update=rtc.StreamStateUpdate(stream_states=changed))
            )

    async def _refresh_loop(self) -> None:
        assert self._refresh_token is not None
        while not self.closed:
            await asyncio.sleep(TOKEN_REFRESH_INTERVAL)
            self.send(rtc.SignalResponse(refresh_token=self._refresh_token(self.grants)))


class SignalStateError(Exception):
    """A request that is valid protobuf but arrives in the wrong state."""


def _sane_sid(sid: str) -> bool:
    """Whether a client-named sid is short enough to look up, store or echo (counted if not)."""
    # characters ≤ bytes: the cheap bound first, so a huge sid is never encoded
    if len(sid) <= MAX_SID_BYTES and len(sid.encode()) <= MAX_SID_BYTES:
        return True
    COUNTERS.limit_exceeded("track_sid_bytes")
    return False


def _ignore_rtp(_data: bytes) -> None:
    """The subscriber PC receives no media (sendonly m-lines)."""


_SOURCE_BY_NAME = {
    "camera": models.TrackSource.CAMERA,
    "microphone": models.TrackSource.MICROPHONE,
    "screen_share": models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}
_KIND_BY_NAME = {
    "standard": models.ParticipantInfo.Kind.STANDARD,
    "ingress": models.ParticipantInfo.Kind.INGRESS,
    "egress": models.ParticipantInfo.Kind.EGRESS,
    "sip": models.ParticipantInfo.Kind.SIP,
    "agent": models.ParticipantInfo.Kind.AGENT,
}
