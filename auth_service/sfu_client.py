"""Who may create LiveKit rooms, and the seam through which the auth service creates them.

Users of full-access homeservers may create rooms, users of other homeservers only join rooms
that exist. :func:`is_full_access` is that decision. What enforces it today is the token: only
full-access users' tokens carry ``roomCreate``, and the SFU creates a room on join only for such a
token (``room.auto_create`` is off by default).

Upstream also calls LiveKit's RoomService ``CreateRoom`` (Twirp) for full-access users before
handing out their token, so that "token issued ⇒ room exists ⇒ membership published" holds.
:class:`RoomCreator` is the seam for that call; the real Twirp client comes with the SFU's admin
API. Until then :class:`LoggingRoomCreator` only records the request, and the room comes into
being on the first full-access join.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

log = logging.getLogger(__name__)

EMPTY_TIMEOUT_SECONDS: Final = 300
"""Keep a created room this long while nobody has joined it (upstream's value)."""
DEPARTURE_TIMEOUT_SECONDS: Final = 20
"""Keep a room this long after the last participant left (upstream's value)."""
MAX_PARTICIPANTS: Final = 0
"""No participant limit."""


def is_full_access(matrix_server_name: str, full_access_homeservers: Sequence[str]) -> bool:
    """Whether users of ``matrix_server_name`` may create rooms.

    ``*`` means everyone, but only as the sole entry of the list (upstream's rule). The server
    name is the one from the OpenID token, which verification has tied to the user's ID.
    """
    if len(full_access_homeservers) == 1 and full_access_homeservers[0] == "*":
        return True
    return matrix_server_name in full_access_homeservers


@dataclass(frozen=True)
class CreateRoomRequest:
    """What the auth service asks the SFU for: RoomService ``CreateRoom`` fields."""

    name: str
    empty_timeout: int = EMPTY_TIMEOUT_SECONDS
    departure_timeout: int = DEPARTURE_TIMEOUT_SECONDS
    max_participants: int = MAX_PARTICIPANTS


class RoomCreationError(Exception):
    """The SFU could not create (or reuse) the room; the client gets 500."""


class RoomCreator(Protocol):
    """Creates a LiveKit room, or reuses an existing one of that name."""

    async def create_room(self, request: CreateRoomRequest) -> None:
        """Create or reuse ``request.name``; raise :class:`RoomCreationError` on failure."""
        ...


class LoggingRoomCreator:
    """Stand-in until the SFU's RoomService exists: logs and remembers what it was asked."""

    def __init__(self, history: int = 100) -> None:
        self.requests: list[CreateRoomRequest] = []
        self._history = history

    async def create_room(self, request: CreateRoomRequest) -> None:
        """Record the request; always succeeds."""
        log.info("room creation requested (no SFU client configured yet): %s", request.name)
        self.requests.append(request)
        del self.requests[: -self._history]
