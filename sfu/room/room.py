"""A room: its participants, their published tracks, and who receives what.

The room owns the subscription graph: when a track binds it subscribes every auto-subscribing
participant; when a track or participant goes away it tears the subscriptions down. It never
touches packets; participants and the data plane do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from livekit.protocol import models

from sfu.config import RoomConfig
from sfu.ids import ParticipantIdentity, RoomName, RoomSid, TrackSid, new_room_sid

if TYPE_CHECKING:
    from sfu.room.participant import Participant, PublishedTrack

log = logging.getLogger(__name__)

SPEAKER_INTERVAL = 0.4  # seconds between SpeakersChanged updates (LiveKit's audio update interval)
SPEAKER_LEVEL_STEP = 0.05  # level changes smaller than this are not re-sent


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
        self._speakers: dict[str, float] = {}
        self._speaker_task: asyncio.Task[None] | None = None
        self._on_close = on_close
        self._closer: asyncio.TimerHandle | None = None
        self.closed = False
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
        visible_others = [p.info() for p in self.others(participant) if not p.hidden]
        participant.send_join(self.info(), visible_others)
        self.broadcast_participant(participant)
        await participant.start([t for p in self.others(participant) for t in p.published.values()])

    def remove(self, participant: Participant) -> None:
        """Forget a participant that has closed (called by Participant.close)."""
        if self.participants.get(participant.identity) is participant:
            del self.participants[participant.identity]
        if not participant.hidden:
            update = participant.info()
            for other in self.participants.values():
                other.send_participant_updates([update])
        if not self.participants and not self.closed:
            self._schedule_close(self.departure_timeout)

    def broadcast_participant(self, participant: Participant) -> None:
        """Send a participant's full info to everyone in the room, itself included."""
        update = participant.info()
        for other in list(self.participants.values()):
            if other is participant or not participant.hidden:
                other.send_participant_updates([update])

    # -- tracks ---------------------------------------------------------------------------------
    def track_published(self, publisher: Participant, track: PublishedTrack) -> None:
        self.broadcast_participant(publisher)
        for other in self.others(publisher):
            if other.auto_subscribe and other.can_subscribe:
                other.subscribe(track)

    def track_unpublished(self, publisher: Participant, track: PublishedTrack) -> None:
        for other in self.others(publisher):
            other.unsubscribe(track.sid)
        self.broadcast_participant(publisher)

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        for participant in self.participants.values():
            track = participant.published.get(TrackSid(track_sid))
            if track is not None:
                return track
        return None

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
            if abs(sent.get(sid, 0.0) - level) > SPEAKER_LEVEL_STEP:
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
        if self._speaker_task is not None:
            self._speaker_task.cancel()
        for participant in list(self.participants.values()):
            await participant.close(reason)
        log.info("room %s (%s) closed", self.name, self.sid)
        self._on_close(self)
