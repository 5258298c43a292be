"""The rooms of this node: lookup, creation, joins (one at a time per room name), and closing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sfu.config import RoomConfig
from sfu.ids import RoomName
from sfu.metrics import Gauges, LayerGauge
from sfu.room.participant import Participant
from sfu.room.room import Room, RoomClosedError, RoomObserver

log = logging.getLogger(__name__)


QUALITY_NAMES = {0: "low", 1: "medium", 2: "high"}


class RoomNotFoundError(Exception):
    pass


class RoomManager:
    def __init__(self, config: RoomConfig) -> None:
        self.config = config
        self.rooms: dict[RoomName, Room] = {}
        #: a lock per room name with joins in flight, and how many hold or wait for it
        self._join_locks: dict[RoomName, tuple[asyncio.Lock, int]] = {}
        #: handed to every room it creates (the webhook notifier)
        self.observer: RoomObserver | None = None
        #: told the name of each room that closed (the cluster releases it in Redis)
        self.on_room_closed: Callable[[str], None] | None = None

    def get(self, name: str) -> Room | None:
        return self.rooms.get(RoomName(name))

    def get_or_create(self, name: str, *, create: bool | None = None) -> Room:
        """The named room; created when auto_create (or ``create``) allows, else RoomNotFoundError."""
        room = self.rooms.get(RoomName(name))
        if room is not None and not room.closed:
            return room
        if not (self.config.auto_create if create is None else create):
            raise RoomNotFoundError("requested room does not exist")
        return self.create(name)

    def create(
        self,
        name: str,
        *,
        empty_timeout: int | None = None,
        departure_timeout: int | None = None,
        max_participants: int | None = None,
        metadata: str = "",
    ) -> Room:
        existing = self.rooms.get(RoomName(name))
        if existing is not None and not existing.closed:
            return existing
        room = Room(
            RoomName(name),
            self.config,
            on_close=self._closed,
            empty_timeout=empty_timeout,
            departure_timeout=departure_timeout,
            max_participants=max_participants,
            metadata=metadata,
        )
        self.rooms[room.name] = room
        log.info("room %s (%s) created", room.name, room.sid)
        room.observer = self.observer
        if self.observer is not None:
            self.observer.room_started(room)
        return room

    async def join(self, participant: Participant, name: RoomName | str) -> Room:
        """Join `participant` to the live room named ``name``, one join at a time per name (a same-identity replacement completes before the next join looks).

        A room that closed while the join was admitted and handshaking is replaced by a new
        room of that name (admission already allowed joining it), so the joiner never lands in
        a room the manager has forgotten. Raises RoomFullError.
        """
        name = RoomName(name)
        lock, holders = self._join_locks.get(name, (asyncio.Lock(), 0))
        self._join_locks[name] = (lock, holders + 1)
        try:
            async with lock:
                for _ in range(3):  # a room closes at most once under a join; bounded anyway
                    room = self.rooms.get(name)
                    if room is None or room.closed:
                        room = self.create(name)
                    try:
                        await room.join(participant)
                    except RoomClosedError:
                        continue
                    return room
                raise RoomClosedError(name)
        finally:
            lock, holders = self._join_locks[name]
            if holders > 1:
                self._join_locks[name] = (lock, holders - 1)
            else:
                del self._join_locks[name]

    def _closed(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            if self.on_room_closed is not None:
                self.on_room_closed(room.name)
        if self.observer is not None:
            self.observer.room_finished(room)

    def gauges(self) -> Gauges:
        participants = [p for r in self.rooms.values() for p in r.participants.values()]
        return Gauges(
            rooms=len(self.rooms),
            participants=len(participants),
            tracks_published=sum(len(p.published) for p in participants),
            tracks_subscribed=sum(len(p.subscriptions) for p in participants),
            layers=tuple(
                LayerGauge(track.sid, QUALITY_NAMES.get(quality, str(quality)), w, h, state.bitrate)
                for p in participants
                for track in p.published.values()
                for (w, h), quality, state in zip(
                    track.layer_sizes, track.layer_qualities, track.receiver.layers, strict=False
                )
            ),
        )

    async def close_all(self) -> None:
        for room in list(self.rooms.values()):
            await room.close()
