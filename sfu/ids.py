"""Identifiers: LiveKit-style prefixed sids (``RM_``, ``PA_``, ``TR_``) and the names that key rooms."""

from __future__ import annotations

import secrets
import string
from typing import NewType

RoomName = NewType("RoomName", str)
RoomSid = NewType("RoomSid", str)
ParticipantIdentity = NewType("ParticipantIdentity", str)
ParticipantSid = NewType("ParticipantSid", str)
TrackSid = NewType("TrackSid", str)
NodeId = NewType("NodeId", str)

ROOM_PREFIX = "RM_"
PARTICIPANT_PREFIX = "PA_"
TRACK_PREFIX = "TR_"
NODE_PREFIX = "ND_"
EVENT_PREFIX = "EV_"

_ALPHABET = string.ascii_letters + string.digits
_SID_LENGTH = 12  # LiveKit's guid length after the prefix


def _random_suffix() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(_SID_LENGTH))


def new_room_sid() -> RoomSid:
    return RoomSid(ROOM_PREFIX + _random_suffix())


def new_participant_sid() -> ParticipantSid:
    return ParticipantSid(PARTICIPANT_PREFIX + _random_suffix())


def new_track_sid() -> TrackSid:
    return TrackSid(TRACK_PREFIX + _random_suffix())


def new_node_id() -> NodeId:
    return NodeId(NODE_PREFIX + _random_suffix())


def new_event_id() -> str:
    """A webhook event id (LiveKit's ``EV_`` guid)."""
    return EVENT_PREFIX + _random_suffix()


def new_ssrc() -> int:
    """A random non-zero 32-bit SSRC for an outgoing stream (RFC 3550 §8)."""
    return secrets.randbelow(0xFFFFFFFE) + 1
