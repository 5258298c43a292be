"""What the server API (RoomService) may do to rooms and participants, and what rooms report.

Owns the operations behind LiveKit's RoomService: create, list and delete rooms, read, remove,
mute and update participants, change their subscriptions, send them data, set room metadata.
Each works through the public methods of `RoomManager`, `Room` and `Participant` and raises
`AdminError` with the Twirp code the API answers with. (What a room reports about its life, to
the webhook notifier, is `sfu.room.room.RoomObserver`.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from sfu.auth import TRACK_SOURCES
from sfu.ids import ParticipantIdentity, TrackSid
from sfu.media.transport import LOSSY_LABEL, RELIABLE_LABEL

if TYPE_CHECKING:
    from sfu.room.manager import RoomManager
    from sfu.room.participant import Participant
    from sfu.room.room import Room

#: data-channel labels by DataPacket kind
_LABELS = {
    models.DataPacket.Kind.RELIABLE: RELIABLE_LABEL,
    models.DataPacket.Kind.LOSSY: LOSSY_LABEL,
}
_SOURCE_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}


class AdminError(Exception):
    """A refused operation; ``code`` is the Twirp error code (``not_found``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- rooms ------------------------------------------------------------------------------------------
def live_room(rooms: RoomManager, name: str) -> Room:
    room = rooms.get(name)
    if room is None or room.closed:
        raise AdminError("not_found", "requested room does not exist")
    return room


def create_room(
    rooms: RoomManager,
    name: str,
    *,
    empty_timeout: int = 0,
    departure_timeout: int = 0,
    max_participants: int = 0,
    metadata: str = "",
) -> models.Room:
    """LiveKit's CreateRoom: 0 means the configured default; an open room is returned as it is."""
    room = rooms.get(name)
    if room is not None and not room.closed:
        return room.info()
    room = rooms.create(
        name,
        empty_timeout=empty_timeout or None,
        departure_timeout=departure_timeout or None,
        max_participants=max_participants or None,
        metadata=metadata,
    )
    return room.info()


def list_rooms(rooms: RoomManager, names: Iterable[str] = ()) -> list[models.Room]:
    wanted = set(names)
    return [
        room.info()
        for room in list(rooms.rooms.values())
        if not room.closed and (not wanted or room.name in wanted)
    ]


async def delete_room(rooms: RoomManager, name: str) -> None:
    """Close the room: everyone in it gets ``leave{ROOM_DELETED}``."""
    await live_room(rooms, name).close(models.DisconnectReason.ROOM_DELETED)


def update_room_metadata(rooms: RoomManager, name: str, metadata: str) -> models.Room:
    room = live_room(rooms, name)
    room.metadata = metadata
    info = room.info()
    update = rtc.SignalResponse(room_update=rtc.RoomUpdate(room=info))
    for participant in list(room.participants.values()):
        participant.send(update)
    return info


def send_data(
    rooms: RoomManager,
    name: str,
    data: bytes,
    kind: models.DataPacket.Kind,
    destination_identities: Iterable[str] = (),
    topic: str | None = None,
    nonce: bytes = b"",
) -> int:
    """A user packet from the server to everyone (or the named identities); returns how many
    participants it was sent to."""
    room = live_room(rooms, name)
    destinations = list(destination_identities)
    user = models.UserPacket(payload=data, destination_identities=destinations, nonce=nonce)
    if topic is not None:
        user.topic = topic
    packet = models.DataPacket(kind=kind, destination_identities=destinations, user=user)
    payload = packet.SerializeToString()
    label = _LABELS.get(kind, RELIABLE_LABEL)
    wanted = set(destinations)
    sent = 0
    for participant in list(room.participants.values()):
        if wanted and participant.identity not in wanted:
            continue
        participant.send_data(label, payload)
        sent += 1
    return sent


# -- participants ---------------------------------------------------------------------------------
def find_participant(rooms: RoomManager, room_name: str, identity: str) -> Participant:
    room = rooms.get(room_name)
    participant = None if room is None else room.participants.get(ParticipantIdentity(identity))
    if participant is None or participant.closed:
        raise AdminError("not_found", "participant does not exist")
    return participant


def list_participants(rooms: RoomManager, room_name: str) -> list[models.ParticipantInfo]:
    room = rooms.get(room_name)
    if room is None:
        return []
    return [p.info() for p in list(room.participants.values()) if not p.closed]


async def remove_participant(rooms: RoomManager, room_name: str, identity: str) -> None:
    """Disconnect the participant: it gets ``leave{PARTICIPANT_REMOVED}``."""
    participant = find_participant(rooms, room_name, identity)
    await participant.close(models.DisconnectReason.PARTICIPANT_REMOVED)


def mute_published_track(
    rooms: RoomManager,
    room_name: str,
    identity: str,
    track_sid: str,
    muted: bool,
    *,
    allow_unmute: bool,
) -> models.TrackInfo:
    """Mute (or, with ``room.enable_remote_unmute``, unmute) a published track: the publisher
    is asked to do the same (``SignalResponse.mute``), everyone sees the new state."""
    participant = find_participant(rooms, room_name, identity)
    track = participant.published.get(TrackSid(track_sid))
    if track is None:
        raise AdminError("not_found", "track is not found")
    if not muted and not allow_unmute:
        raise AdminError("failed_precondition", "remote unmute not enabled")
    participant.set_track_muted(track_sid, muted)
    participant.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=track_sid, muted=muted)))
    return track.info


def update_participant(
    rooms: RoomManager,
    room_name: str,
    identity: str,
    *,
    metadata: str = "",
    name: str = "",
    attributes: Mapping[str, str] | None = None,
    permission: models.ParticipantPermission | None = None,
) -> models.ParticipantInfo:
    """LiveKit's UpdateParticipant: empty metadata/name leave them as they are; attributes are
    merged (an empty value removes the key); a permission replaces the old one and binds at
    once (tracks it no longer allows are unpublished, subscriptions it no longer allows end).
    The new grants go into the participant's token refreshes too. Everyone is told."""
    room = live_room(rooms, room_name)
    participant = find_participant(rooms, room_name, identity)
    if metadata:
        participant.metadata = metadata
    if name:
        participant.name = name
    if attributes:
        merged = dict(participant.attributes)
        for key, value in attributes.items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        participant.attributes = merged
    if permission is not None:
        _set_permission(room, participant, permission)
    participant.grants = dataclasses.replace(
        participant.grants,
        name=participant.name,
        metadata=participant.metadata,
        attributes=dict(participant.attributes),
    )
    room.broadcast_participant(participant)
    room.flush_updates()
    return participant.info()


def _set_permission(
    room: Room, participant: Participant, permission: models.ParticipantPermission
) -> None:
    was_subscriber = participant.can_subscribe
    new = models.ParticipantPermission()
    new.CopyFrom(permission)
    participant.permission = new
    sources = tuple(_SOURCE_NAMES[s] for s in new.can_publish_sources if s in _SOURCE_NAMES)
    participant.grants = dataclasses.replace(
        participant.grants,
        video=dataclasses.replace(
            participant.grants.video,
            can_publish=new.can_publish,
            can_subscribe=new.can_subscribe,
            can_publish_data=new.can_publish_data,
            can_publish_sources=tuple(s for s in TRACK_SOURCES if s in sources),
            can_update_own_metadata=new.can_update_metadata,
            hidden=new.hidden,
            recorder=new.recorder,
        ),
    )
    for track in list(participant.published.values()):
        allowed = new.can_publish and (
            not new.can_publish_sources or track.info.source in new.can_publish_sources
        )
        if not allowed:
            participant.unpublish_track(track.sid)
    if was_subscriber and not new.can_subscribe:
        for track_sid in list(participant.subscriptions):
            participant.unsubscribe(track_sid)
    elif new.can_subscribe and not was_subscriber and participant.auto_subscribe:
        for other in room.others(participant):
            for track in list(other.published.values()):
                participant.subscribe(track)


def update_subscriptions(
    rooms: RoomManager,
    room_name: str,
    identity: str,
    track_sids: Iterable[str],
    participant_tracks: Iterable[models.ParticipantTracks],
    subscribe: bool,
) -> None:
    """Subscribe (or unsubscribe) the participant as if it had sent UpdateSubscription."""
    participant = find_participant(rooms, room_name, identity)
    participant.update_subscription(
        rtc.UpdateSubscription(
            track_sids=list(track_sids),
            subscribe=subscribe,
            participant_tracks=list(participant_tracks),
        )
    )
