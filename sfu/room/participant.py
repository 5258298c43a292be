"""A participant: its identity, permissions and info, its two peer connections and their states,
data-channel intake, its timers (RTCP reports, token refresh) and its end. Signalling calls in;
``send`` carries SignalResponses out.

What it publishes is `sfu.room.publications`, what it receives `sfu.room.subscriptions`, the
subscriber PC's offers `sfu.room.subscriber_offers`; the participant creates them and delegates.
It knows its room only as `RoomEvents` (`sfu.room.types`), which the room implements: this
module never imports `sfu.room.room`.

Publisher PC: the client offers, we answer and bind each sending m-line to its AddTrackRequest.
Subscriber PC: we offer when the subscribed tracks change. Both PCs and their media objects come
from injected factories (`peer_factory`, `media`: here or in a worker).
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
from sfu.ids import ParticipantIdentity, ParticipantSid, TrackSid, new_participant_sid
from sfu.media.rtp import rtcp
from sfu.media.transport import PeerTransport, TransportConfig
from sfu.metrics import COUNTERS
from sfu.room import signalling
from sfu.room.media import LOCAL_MEDIA, MediaFactory
from sfu.room.peers import EarlyCandidates, close_peers
from sfu.room.permission import SubscriptionPermissions, relayable
from sfu.room.publication import PublishedTrack, Subscription
from sfu.room.publications import Publications
from sfu.room.subscriber_offers import SubscriberOffers
from sfu.room.subscriptions import Subscriptions
from sfu.room.types import Clock, NullRoomEvents, Peer, PeerFactory, RoomEvents, SignalStateError

__all__ = ["Participant", "ParticipantOptions", "SignalStateError"]

log = logging.getLogger(__name__)

RTCP_INTERVAL = 1.0
TOKEN_REFRESH_INTERVAL = 300


@dataclass(frozen=True)
class ParticipantOptions:
    auto_subscribe: bool = True
    adaptive_stream: bool = False
    protocol: int = signalling.PROTOCOL_VERSION
    client_protocol: int = 0
    sdk: str = ""
    ice_servers: tuple[rtc.ICEServer, ...] = ()
    node_id: str = ""


class Participant:
    def __init__(
        self,
        grants: ClaimGrants,
        options: ParticipantOptions,
        transport_config: TransportConfig,
        send: Callable[[rtc.SignalResponse], None],
        refresh_token: Callable[[ClaimGrants], str] | None = None,
        *,
        events: RoomEvents | None = None,
        peer_factory: PeerFactory = PeerTransport,
        media: MediaFactory = LOCAL_MEDIA,
        clock: Clock = time.time,
    ) -> None:
        self.grants = grants
        self.options = options
        self.transport_config = transport_config
        self._send = send
        self._refresh_token = refresh_token
        self.peer_factory = peer_factory
        #: called once at close, after the leave was sent (the session flushes, then closes)
        self.on_close: Callable[[], None] | None = None
        #: called once the room holds this participant (before its transports start)
        self.on_joined: Callable[[], None] | None = None
        self.sid: ParticipantSid = new_participant_sid()
        self.identity = ParticipantIdentity(grants.identity)
        self.name = grants.name
        self.metadata = grants.metadata
        self.attributes = dict(grants.attributes)
        self.permission = signalling.participant_permission(grants.video)
        self.state = models.ParticipantInfo.State.JOINING
        self.joined_at = clock()
        self.version = 0
        self.disconnect_reason = models.DisconnectReason.UNKNOWN_REASON
        #: publisher candidates trickled before the first offer (applied once it arrives)
        self._early_candidates = EarlyCandidates()
        self.subscription_permission = SubscriptionPermissions()
        self.publisher: Peer | None = None
        self.subscriber: Peer | None = None
        self.publications = Publications(
            self,
            self.send,
            can_publish=self.permission.can_publish,
            sources=grants.video.can_publish_sources,
            media=media,
        )
        self.subscribed = Subscriptions(
            self.identity,
            self.sid,
            self.send,
            lambda: self.offers.schedule(),
            adaptive_stream=options.adaptive_stream,
            can_subscribe=self.can_subscribe,
            media=media,
        )
        self.offers = SubscriberOffers(self.subscribed, self.send, self._spawn, name=self.identity)
        self._events: RoomEvents = NullRoomEvents()
        self.events = events if events is not None else NullRoomEvents()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rtcp_error_logged = False
        self.closed = False

    @property
    def events(self) -> RoomEvents:
        """The room it is in (`Room.join` sets this)."""
        return self._events

    @events.setter
    def events(self, events: RoomEvents) -> None:
        self._events = self.publications.events = self.subscribed.events = events

    @property
    def hidden(self) -> bool:
        return self.permission.hidden

    @property
    def can_subscribe(self) -> bool:
        return self.permission.can_subscribe

    @property
    def auto_subscribe(self) -> bool:
        return self.options.auto_subscribe

    @property
    def published(self) -> dict[TrackSid, PublishedTrack]:
        return self.publications.published

    @property
    def subscriptions(self) -> dict[TrackSid, Subscription]:
        return self.subscribed.by_sid

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
            kind=signalling.participant_kind(self.grants.kind),
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
        join = signalling.join_response(
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
        self.send(signalling.participant_update(infos))

    def send_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self.subscribed.speakers_changed(speakers)  # the allocation favours who speaks
        self.send(signalling.speakers_changed(speakers))

    def send_data(self, label: str, payload: bytes) -> None:
        if self.subscriber is not None and self.can_subscribe:
            self.subscriber.send_data(label, payload)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, existing_tracks: Iterable[PublishedTrack]) -> None:
        """Create the subscriber PC (with data channels and the existing tracks) and offer it."""
        if self.closed:  # closed while joining (room closed, replaced): nothing to start
            return
        self.subscriber = self.offers.peer = self.subscribed.peer = self.peer_factory(
            "subscriber",
            self.transport_config,
            on_rtp=_ignore_rtp,
            on_rtcp=self.subscribed.feedback.on_rtcp,
            on_data=self.receive_data,
            on_state=self._on_subscriber_state,
        )
        if self.auto_subscribe and self.can_subscribe:
            for track in existing_tracks:
                self.subscribed.add(track)
        self._spawn(self._rtcp_loop())
        if self._refresh_token is not None:
            self._spawn(self._refresh_loop())
        await self.offers.negotiate()

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
            self.send(signalling.leave(reason, action))
        self.closed = self.subscribed.closed = True
        self.offers.close()
        self.state = models.ParticipantInfo.State.DISCONNECTED
        self.publications.close()
        self.subscribed.close()
        self.events.participant_left()
        if self.on_close is not None:
            self.on_close()
        # A close spawned from a transport callback runs in one of our own tasks: cancelling it
        # would stop the transports' close half way and leak their sockets.
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await close_peers(self.publisher, self.subscriber)
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_subscriber_state(self, state: str) -> None:
        if state == "connected":
            if self.state != models.ParticipantInfo.State.ACTIVE:
                self.state = models.ParticipantInfo.State.ACTIVE
                self.events.participant_changed()
            self.subscribed.start_negotiated()
        elif state in ("failed", "closed") and not self.closed:
            log.info("participant %r: subscriber transport %s", self.identity, state)
            self._spawn(self.close(_END_REASONS[state]))

    def _on_publisher_state(self, state: str) -> None:
        if state == "connected" and self.state != models.ParticipantInfo.State.ACTIVE:
            self.state = models.ParticipantInfo.State.ACTIVE
            self.events.participant_changed()
        elif state in ("failed", "closed") and not self.closed:
            # "closed": the client sent DTLS close_notify; its tracks must not stay advertised
            log.info("participant %r: publisher transport %s", self.identity, state)
            self._spawn(self.close(_END_REASONS[state]))

    # -- the publisher PC -------------------------------------------------------------------------
    def keep_early_candidate(self, candidate_init: str) -> bool:
        """Keep a publisher candidate trickled before its PC exists (False past the cap)."""
        if self.closed or self.publisher is not None:
            return False
        return self._early_candidates.keep(candidate_init)

    async def handle_offer(self, offer: rtc.SessionDescription) -> None:
        if self.closed:
            raise SignalStateError("publisher offer after the participant closed")
        if self.publisher is None:
            self.publisher = self.publications.peer = self.peer_factory(
                "publisher",
                self.transport_config,
                on_rtp=self.publications.demuxer.on_rtp,
                on_rtcp=self.publications.demuxer.on_rtcp,
                on_data=self.receive_data,
                on_state=self._on_publisher_state,
            )
        log.debug("participant %r: publisher offer %d:\n%s", self.identity, offer.id, offer.sdp)
        sdp, medias = await self.publisher.handle_offer(offer.sdp, self.publications.red_tracks())
        if self.closed:  # closed while answering: close() has closed the publisher too
            raise SignalStateError("participant closed while its offer was answered")
        log.debug("participant %r: publisher answer:\n%s", self.identity, sdp)
        self.send(
            rtc.SignalResponse(answer=rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id))
        )
        self._early_candidates.apply(self.publisher)
        self.publications.bind_offer(medias)

    # -- publishing (`Publications`) ----------------------------------------------------------------
    def add_track(self, request: rtc.AddTrackRequest) -> None:
        if self.closed:
            raise SignalStateError("AddTrackRequest after the participant closed")
        self.publications.add_track(request)

    def unpublish_track(self, track_sid: str) -> None:
        """Stop publishing a track (its permission was revoked); unknown sids are ignored."""
        track = self.published.get(TrackSid(track_sid))
        if track is not None:
            self.publications.unpublish(track)

    def set_track_muted(self, track_sid: str, muted: bool) -> None:
        self.publications.set_track_muted(track_sid, muted)

    def permits(self, subscriber: Participant, track: PublishedTrack) -> bool:
        """Whether this publisher's SubscriptionPermission lets ``subscriber`` have ``track``."""
        return self.subscription_permission.allows(subscriber.identity, subscriber.sid, track.sid)

    def update_subscription_permission(self, request: rtc.SubscriptionPermission) -> None:
        """A publisher's SubscriptionPermission: subscriptions follow it, both ways."""
        self.subscription_permission.update(request)
        self.events.permission_changed()

    # -- subscribing (`Subscriptions`, `SubscriberOffers`) -------------------------------------------
    async def negotiate(self) -> None:
        """Send a subscriber offer now, or as soon as the outstanding one is answered."""
        await self.offers.negotiate()

    async def handle_answer(self, answer: rtc.SessionDescription) -> None:
        await self.offers.handle_answer(answer)

    def subscribe(self, track: PublishedTrack) -> None:
        self.subscribed.subscribe(track)

    def unsubscribe(self, track_sid: str, *, renegotiate: bool = True, park: bool = False) -> None:
        self.subscribed.unsubscribe(track_sid, renegotiate=renegotiate, park=park)

    def deny(self, track: PublishedTrack) -> None:
        self.subscribed.deny(track)

    def update_subscription(self, request: rtc.UpdateSubscription) -> None:
        self.subscribed.update_subscription(request)

    def update_track_settings(self, settings: rtc.UpdateTrackSettings) -> None:
        self.subscribed.update_track_settings(settings)

    # -- data ------------------------------------------------------------------------------------
    def receive_data(self, label: str, payload: bytes) -> None:
        """A data-channel message from the client: relayed to the others if it may be."""
        if not self.permission.can_publish_data:
            return
        packet = relayable(label, payload, self.identity, self.sid)
        if packet is not None:
            self.events.data_received(packet, label)

    # -- periodic work ---------------------------------------------------------------------------
    async def _rtcp_loop(self) -> None:
        """RR + REMB to the publisher every second; the sender reports that are due to the subscriber."""
        while not self.closed:
            await asyncio.sleep(RTCP_INTERVAL)
            try:
                self.send_rtcp_reports()
            except Exception:  # one bad report must not end the loop; say so, once
                COUNTERS.signal_errors += 1
                if not self._rtcp_error_logged:
                    self._rtcp_error_logged = True
                    log.exception("participant %r: RTCP reports failed", self.identity)

    def send_rtcp_reports(self) -> None:
        """One round of reports, to the peers that are connected, and the stream states."""
        if self.publisher is not None and self.publisher.state == "connected":
            report = self.publications.demuxer.rtcp_reports()
            if report:
                self.publisher.send_rtcp(report)
        if self.subscriber is not None and self.subscriber.state == "connected":
            # one SR + SDES per forwarded stream, packed into as few datagrams as fit
            for compound in rtcp.pack_compounds(self.subscribed.sender_reports()):
                self.subscriber.send_rtcp(compound)
            self.subscribed.tick()  # the allocation, then StreamStateUpdate

    async def _refresh_loop(self) -> None:
        assert self._refresh_token is not None
        while not self.closed:
            await asyncio.sleep(TOKEN_REFRESH_INTERVAL)
            self.send(rtc.SignalResponse(refresh_token=self._refresh_token(self.grants)))


def _ignore_rtp(_data: bytes) -> None:  # the subscriber PC receives no media (sendonly)
    pass


#: a transport that ended: DTLS close_notify is the client hanging up; ICE/DTLS failure a timeout
_END_REASONS = {
    "closed": models.DisconnectReason.CLIENT_INITIATED,
    "failed": models.DisconnectReason.CONNECTION_TIMEOUT,
}
