"""Rooms, participants, published tracks and subscriptions: the control plane above the data plane."""

from sfu.room.manager import RoomManager, RoomNotFoundError
from sfu.room.participant import Participant, ParticipantOptions
from sfu.room.room import Room

__all__ = ["Participant", "ParticipantOptions", "Room", "RoomManager", "RoomNotFoundError"]
