"""A room: its participants, their published tracks, and who receives what.

The room owns the subscription graph: when a track binds it subscribes every auto-subscribing
participant; when a track or participant goes away it tears the subscriptions down. It never
touches packets; participants and the data plane do. A member reaches its room only through the
`RoomEvents` it was given on joining (`RoomListener`): the dependency runs one way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from livekit.protocol import models

from sfu.config import RoomConfig
from sfu.ids import ParticipantIdentity, ParticipantSid, RoomName, RoomSid, TrackSid, new_room_sid
from sfu.room import connection_quality, signalling
from sfu.room.participant import Participant
from sfu.room.publication import PublishedTrack


class RoomObserver(Protocol):
    """Told of a room's life as it happens: called synchronously, one call per change, in order;
    it must neither block nor raise (the webhook notifier implements it)."""

    def room_started(self, room: Room) -> None: ...

    def room_finished(self, room: Room) -> None: ...

    def participant_changed(self, room: Room, participant: Participant) -> None:
        """The participant's info changed (its state may now be ACTIVE)."""

    def participant_left(self, room: Room, participant: Participant) -> None: ...

    def track_published(self, room: Room, participant: Participant, track: PublishedTrack) -> None:
        """A track of the participant is now published."""

    def track_unpublished(
        self, room: Room, participant: Participant, track: PublishedTrack
    ) -> None: ...


log = logging.getLogger(__name__)

SPEAKER_INTERVAL = 0.4  # seconds between SpeakersChanged updates (LiveKit's audio update interval)
SPEAKER_LEVEL_STEP = 0.05  # level changes smaller than this are not re-sent
#: the participants scored per speaker tick: a round of connection quality per UPDATE_INTERVAL
QUALITY_SHARE = SPEAKER_INTERVAL / connection_quality.UPDATE_INTERVAL
#: tracks published in one room (each participant may publish MAX_TRACKS_PER_PARTICIPANT)
MAX_ROOM_TRACKS = 512
#: ParticipantUpdates are batched: changes within this many seconds go out as one message
UPDATE_INTERVAL = 0.05


class RoomClosedError(Exception):
    """The room closed before the participant was in it."""


class RoomFullError(Exception):
    """The room has max_participants participants."""


class Room:
    def __init__(
        self,
        name: RoomName,
        config: RoomConfig,
        *,
        on_close: Callable[[Room], None],
        empty_timeout: int | None = None,
        departure_timeout: int | None = None,
        max_participants: int | None = None,
        metadata: str = "",
    ) -> None:
        self.name = name
        self.sid: RoomSid = new_room_sid()
        self.config = config
        self.creation_time = time.time()
        self.empty_timeout = config.empty_timeout if empty_timeout is None else empty_timeout
        self.departure_timeout = (
            config.departure_timeout if departure_timeout is None else departure_timeout
        )
        self.max_participants = (
            config.max_participants if max_participants is None else max_participants
        )
        self.metadata = metadata
        self.participants: dict[ParticipantIdentity, Participant] = {}
        #: every published track by sid (UpdateSubscription looks sids up here)
        self.tracks: dict[TrackSid, PublishedTrack] = {}
        self.max_tracks = MAX_ROOM_TRACKS
        #: participants whose info changed since the last ParticipantUpdate went out
        self._changed: dict[ParticipantSid, Participant] = {}
        self._update_timer: asyncio.TimerHandle | None = None
        self._speakers: dict[str, float] = {}
        self._speaker_task: asyncio.Task[None] | None = None
        #: per participant sid: its connection quality score, sent every UPDATE_INTERVAL
        self._quality: dict[str, connection_quality.QualityScore] = {}
        self._quality_turns: list[Participant] = []  # the round's participants not yet scored
        self._quality_count = 1  # how many of them a call scores
        self._quality_due = time.monotonic() + connection_quality.UPDATE_INTERVAL
        self._on_close = on_close
        self._closer: asyncio.TimerHandle | None = None
        self.closed = False
        #: told of joins, leaves and tracks (the webhook notifier); set by the RoomManager
        self.observer: RoomObserver | None = None
        self._schedule_close(self.empty_timeout)

    # -- info ------------------------------------------------------------------------------
    def info(self) -> models.Room:
        publishers = sum(1 for p in self.participants.values() if p.published)
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=self.empty_timeout,
            departure_timeout=self.departure_timeout,
            max_participants=self.max_participants,
            creation_time=int(self.creation_time),
            creation_time_ms=int(self.creation_time * 1000),
            metadata=self.metadata,
            num_participants=len(self.participants),
            num_publishers=publishers,
        )

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]

    # -- membership --------------------------------------------------------------------------
    def is_full(self) -> bool:
        return 0 < self.max_participants <= len(self.participants)

    async def join(self, participant: Participant) -> None:
        """Add a participant: replace a same-identity one, send JoinResponse, tell the others.

        Raises `RoomClosedError` if the room closed before the participant was in it (the
        caller joins it to a new room of that name) and `RoomFullError` past max_participants.
        `RoomManager.join` serialises joins per room; the checks here hold without it too.
        """
        if self.closed:
            raise RoomClosedError(self.name)
        self._cancel_close()
        # a same-identity join that arrived during this await replaced `previous` first: loop
        while (previous := self.participants.get(participant.identity)) is not None:
            if previous is participant:
                return
            await previous.close(models.DisconnectReason.DUPLICATE_IDENTITY)
            if self.participants.get(participant.identity) is previous:  # never left: forget it
                del self.participants[participant.identity]
        if self.closed:  # the last one left during the await, and the room closed
            raise RoomClosedError(self.name)
        if self.is_full():
            raise RoomFullError("room is full")
        self._cancel_close()
        if self._speaker_task is None:
            self._speaker_task = asyncio.ensure_future(self._speaker_loop())
        self.participants[participant.identity] = participant
        participant.events = RoomListener(self, participant)
        if participant.on_joined is not None:  # admission: it counts as live from now on
            participant.on_joined()
        visible_others = [p.info() for p in self.others(participant) if not p.hidden]
        participant.send_join(self.info(), visible_others)
        self.broadcast_participant(participant)
        await participant.start([t for p in self.others(participant) for t in p.published.values()])

    def remove(self, participant: Participant) -> None:
        """Forget a participant that has closed (its `RoomEvents.participant_left`)."""
        if self.participants.get(participant.identity) is not participant:
            return  # never joined, or already replaced: nobody was told it was here
        del self.participants[participant.identity]
        self.broadcast_participant(participant)
        if self.observer is not None:
            self.observer.participant_left(self, participant)
        if not self.participants and not self.closed:
            self._schedule_close(self.departure_timeout)

    def broadcast_participant(self, participant: Participant) -> None:
        """Send a participant's full info to everyone in the room (itself included) with the next
        batch: a burst of changes (mute toggles, joins) costs one ParticipantUpdate each."""
        self._changed[participant.sid] = participant
        if self.observer is not None:
            self.observer.participant_changed(self, participant)
        if self._update_timer is None and not self.closed:
            loop = asyncio.get_running_loop()
            self._update_timer = loop.call_later(UPDATE_INTERVAL, self.flush_updates)

    def flush_updates(self) -> None:
        """Send the batched ParticipantUpdates now: one message per recipient."""
        if self._update_timer is not None:
            self._update_timer.cancel()
            self._update_timer = None
        changed, self._changed = list(self._changed.values()), {}
        if not changed:
            return
        infos = [(p, p.info()) for p in changed]
        public = [info for p, info in infos if not p.hidden]
        hidden = {p.sid: info for p, info in infos if p.hidden}  # each sees only itself
        for other in list(self.participants.values()):
            own = hidden.get(other.sid)
            if own is not None:
                other.send_participant_updates([*public, own])
            elif public:
                other.send_participant_updates(public)

    # -- tracks ---------------------------------------------------------------------------------
    def track_published(self, publisher: Participant, track: PublishedTrack) -> None:
        self.tracks[track.sid] = track
        if self.observer is not None:
            self.observer.track_published(self, publisher, track)
        # the update naming the track goes before the subscriber offers carrying it
        self.broadcast_participant(publisher)
        self.flush_updates()
        for other in self.others(publisher):
            if other.auto_subscribe and other.can_subscribe:
                other.subscribe(track)

    def track_unpublished(self, publisher: Participant, track: PublishedTrack) -> None:
        if self.tracks.get(track.sid) is track:
            del self.tracks[track.sid]
        if self.observer is not None:
            self.observer.track_unpublished(self, publisher, track)
        for other in self.others(publisher):
            other.unsubscribe(track.sid)
        self.broadcast_participant(publisher)
        self.flush_updates()

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        return self.tracks.get(TrackSid(track_sid))

    def track_count(self) -> int:
        return len(self.tracks)

    def permission_changed(self, publisher: Participant) -> None:
        """Apply a publisher's new SubscriptionPermission to everyone else."""
        for other in self.others(publisher):
            for track in publisher.published.values():
                allowed = publisher.permits(other, track)
                if not allowed and track.sid in other.subscriptions:
                    other.deny(track)
                elif allowed and track.sid in other.subscribed.denied:
                    other.subscribe(track)

    def route_data(self, sender: Participant, packet: models.DataPacket, label: str) -> None:
        destinations = set(packet.destination_identities) or set(packet.user.destination_identities)
        payload = packet.SerializeToString()
        for other in self.others(sender):
            if destinations and other.identity not in destinations:
                continue
            other.send_data(label, payload)

    # -- active speakers -------------------------------------------------------------------------
    async def _speaker_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(SPEAKER_INTERVAL)
            self.update_speakers()
            now = time.monotonic()
            if not self._quality_turns:  # the last round is done: the next one when it is due
                if now < self._quality_due:
                    continue
                self._quality_due = now + connection_quality.UPDATE_INTERVAL
            self.update_connection_quality(now, QUALITY_SHARE)

    def update_connection_quality(self, now: float, share: float = 1.0) -> None:
        """Score `share` of the participants, in turn (each once per round), and send each its
        own quality and that of the publishers it receives (ConnectionQualityUpdate, as LiveKit
        does). The speaker loop spreads a round over `UPDATE_INTERVAL`: a room of 200 scored at
        once held the event loop for 20-32 ms, every media packet waiting behind it."""
        scores = self._quality
        for sid in scores.keys() - {p.sid for p in self.participants.values()}:
            del scores[sid]  # left
        if not self._quality_turns:  # a new round: everyone here now
            self._quality_turns = list(self.participants.values())
            self._quality_count = max(1, math.ceil(len(self._quality_turns) * share))
        count = self._quality_count
        turn = [p for p in self._quality_turns[:count] if self.participants.get(p.identity) is p]
        del self._quality_turns[:count]
        for p in turn:
            last = p.subscribed.allocator.last
            reading = connection_quality.read(
                p.published.values(),
                p.subscriptions.values(),
                last.layers_missing if last is not None else 0.0,
                now,
            )
            scores.setdefault(p.sid, connection_quality.QualityScore()).update(reading)
        wanted = {
            p: {p.sid, *(s.track.publisher.sid for s in p.subscriptions.values())} for p in turn
        }
        infos = {
            sid: scores[sid].info(sid) for sid in set().union(*wanted.values()) if sid in scores
        }
        for p, sids in wanted.items():
            p.send(
                signalling.connection_quality_update([infos[s] for s in sorted(sids) if s in infos])
            )

    def update_speakers(self) -> None:
        """Send SpeakersChanged with what changed: new or louder/quieter speakers, and former
        speakers with level 0 / active false (livekit-client keeps isSpeaking from these)."""
        current: dict[str, float] = {}
        for participant in self.participants.values():
            if participant.hidden:
                continue
            level = max(
                (
                    t.receiver.take_audio_level()
                    for t in participant.published.values()
                    if not t.receiver.is_video and not t.info.muted
                ),
                default=0.0,
            )
            if level > 0:
                current[participant.sid] = level
        sent = self._speakers  # the level each speaker was last announced with
        changed: list[models.SpeakerInfo] = []
        for sid, level in current.items():
            if sid not in sent or abs(sent[sid] - level) > SPEAKER_LEVEL_STEP:
                changed.append(models.SpeakerInfo(sid=sid, level=level, active=True))
                sent[sid] = level
        for sid in [sid for sid in sent if sid not in current]:
            changed.append(models.SpeakerInfo(sid=sid, level=0.0, active=False))
            del sent[sid]
        if changed:
            for participant in self.participants.values():
                participant.send_speakers(changed)

    # -- lifetime -----------------------------------------------------------------------------------
    def _schedule_close(self, delay: int) -> None:
        self._cancel_close()
        loop = asyncio.get_running_loop()
        self._closer = loop.call_later(max(delay, 0), lambda: asyncio.ensure_future(self._expire()))

    async def _expire(self) -> None:
        """The empty/departure timer fired: close, unless someone joined since it fired."""
        if not self.participants:
            await self.close()

    def _cancel_close(self) -> None:
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None

    async def close(
        self, reason: models.DisconnectReason = models.DisconnectReason.ROOM_CLOSED
    ) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_close()
        if self._update_timer is not None:
            self._update_timer.cancel()
            self._update_timer = None
        if self._speaker_task is not None:
            self._speaker_task.cancel()
        for participant in list(self.participants.values()):
            await participant.close(reason)
        log.info("room %s (%s) closed", self.name, self.sid)
        self._on_close(self)


class RoomListener:
    """`RoomEvents` for one member: what its participant tells the room, and asks of it
    (LiveKit's localParticipantListener)."""

    def __init__(self, room: Room, participant: Participant) -> None:
        self.room = room
        self.participant = participant

    def participant_changed(self) -> None:
        self.room.broadcast_participant(self.participant)

    def track_published(self, track: PublishedTrack) -> None:
        self.room.track_published(self.participant, track)

    def track_unpublished(self, track: PublishedTrack) -> None:
        self.room.track_unpublished(self.participant, track)

    def data_received(self, packet: models.DataPacket, label: str) -> None:
        self.room.route_data(self.participant, packet, label)

    def permission_changed(self) -> None:
        self.room.permission_changed(self.participant)

    def participant_left(self) -> None:
        self.room.remove(self.participant)

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        return self.room.find_track(track_sid)

    def track_count(self) -> int:
        return self.room.track_count()

    def max_tracks(self) -> int:
        return self.room.max_tracks
