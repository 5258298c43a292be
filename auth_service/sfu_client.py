"""Who may create LiveKit rooms, and the auth service's client of the SFU's RoomService.

Users of full-access homeservers may create rooms, users of other homeservers only join rooms
that exist. :func:`is_full_access` is that decision. Like upstream, the service calls the SFU's
RoomService ``CreateRoom`` for a full-access user before handing out the token, so that "token
issued ⇒ room exists ⇒ membership published" holds; with ``room.auto_create: false`` on the SFU
a restricted user's token then admits them only to a room that exists.

:class:`TwirpRoomService` speaks LiveKit's server API (Twirp, protobuf bodies) at the HTTP form
of ``LIVEKIT_URL`` (``ws``→``http``, ``wss``→``https``, a path prefix kept), each call
authorised by an API-key JWT carrying only the grant it needs: ``roomCreate`` for
``CreateRoom``, ``roomAdmin`` for the one room for ``GetParticipant`` and ``ListParticipants``
(which delayed-leave delegation uses to see who is connected) and ``RemoveParticipant``
(which the application service uses to eject those who left the Matrix room), and
``DeleteRoom`` with ``roomCreate`` (when the Matrix room is tombstoned). A Twirp
``not_found`` is :class:`RoomNotFound`; every other failure (a network error, a timeout, another Twirp error, an
answer that does not decode) is :class:`RoomServiceError`.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as room_pb

from .net import NetError, Request, Resolver, Timeouts, request_base_url
from .tokens import TokenMinter

log = logging.getLogger(__name__)

EMPTY_TIMEOUT_SECONDS: Final = 300
"""Keep a created room this long while nobody has joined it (upstream's value)."""
DEPARTURE_TIMEOUT_SECONDS: Final = 20
"""Keep a room this long after the last participant left (upstream's value)."""
MAX_PARTICIPANTS: Final = 0
"""No participant limit."""
API_TOKEN_TTL_SECONDS: Final = 600
TWIRP_PREFIX: Final = "/twirp/livekit.RoomService/"
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
"""Largest RoomService answer read (a ListParticipants of a full room fits)."""
DEFAULT_TIMEOUTS: Final = Timeouts(connect=3.0, request=10.0)

_M = TypeVar("_M", bound=Message)


def is_full_access(matrix_server_name: str, full_access_homeservers: Sequence[str]) -> bool:
    """Whether users of ``matrix_server_name`` may create rooms.

    ``*`` means everyone, but only as the sole entry of the list (upstream's rule). The server
    name is the one from the OpenID token, which verification has tied to the user's ID.
    """
    if len(full_access_homeservers) == 1 and full_access_homeservers[0] == "*":
        return True
    return matrix_server_name in full_access_homeservers


def http_url(livekit_url: str) -> str:
    """The HTTP base URL of the SFU's server API for a client-facing ``LIVEKIT_URL``."""
    for websocket, plain in (("ws://", "http://"), ("wss://", "https://")):
        if livekit_url.startswith(websocket):
            return plain + livekit_url[len(websocket) :]
    return livekit_url


@dataclass(frozen=True)
class CreateRoomRequest:
    """What the auth service asks the SFU for: RoomService ``CreateRoom`` fields."""

    name: str
    empty_timeout: int = EMPTY_TIMEOUT_SECONDS
    departure_timeout: int = DEPARTURE_TIMEOUT_SECONDS
    max_participants: int = MAX_PARTICIPANTS


class RoomServiceError(Exception):
    """A RoomService call failed; ``str()`` says why (for logs only)."""


class RoomNotFound(RoomServiceError):
    """The SFU answered Twirp ``not_found`` (no such room, or no such participant)."""


RoomCreationError = RoomServiceError
"""The SFU could not create (or reuse) the room; the client gets 500."""


class RoomCreator(Protocol):
    """Creates a LiveKit room, or reuses an existing one of that name."""

    async def create_room(self, request: CreateRoomRequest) -> None:
        """Create or reuse ``request.name``; raise :class:`RoomServiceError` on failure."""
        ...


class ParticipantDirectory(Protocol):
    """Who is connected to the SFU: what delayed-leave delegation asks."""

    async def participant_exists(self, room: str, identity: str) -> bool:
        """Whether ``identity`` is in ``room`` now; raises :class:`RoomServiceError` when the
        SFU could not say."""
        ...

    async def participant_identities(self, room: str) -> frozenset[str]:
        """The identities in ``room`` now (empty for a room that does not exist); raises
        :class:`RoomServiceError` when the SFU could not say."""
        ...


class ParticipantRemover(ParticipantDirectory, Protocol):
    """What membership enforcement needs: who is connected, ejecting one of them, and closing
    a room."""

    async def remove_participant(self, room: str, identity: str) -> bool:
        """Disconnect ``identity`` from ``room``; ``False`` when it was not there; raises
        :class:`RoomServiceError` when the SFU could not say."""
        ...

    async def delete_room(self, room: str) -> None:
        """Close ``room``, disconnecting everyone in it (nothing when there is no such room);
        raises :class:`RoomServiceError` on failure."""
        ...


class TwirpRoomService:
    """The SFU's RoomService over Twirp (protobuf), with API-key JWTs minted per call."""

    def __init__(
        self,
        livekit_url: str,
        minter: TokenMinter,
        *,
        resolver: Resolver,
        tls_context: ssl.SSLContext,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        wall_clock: Any = time.time,
    ) -> None:
        self.base_url = http_url(livekit_url).rstrip("/")
        self._minter = minter
        self._resolver = resolver
        self._tls_context = tls_context
        self._timeouts = timeouts
        self._wall_clock = wall_clock

    def _token(self, video: dict[str, Any]) -> str:
        now = int(self._wall_clock())
        claims = {
            "exp": now + API_TOKEN_TTL_SECONDS,
            "iss": self._minter.api_key,
            "nbf": now,
            "video": video,
        }
        return self._minter.sign(claims)

    async def _call(
        self, method: str, video: dict[str, Any], request: Message, answer: type[_M]
    ) -> _M:
        http_request = Request(
            "POST",
            TWIRP_PREFIX + method,
            request.SerializeToString(),
            (
                ("Authorization", f"Bearer {self._token(video)}"),
                ("Content-Type", "application/protobuf"),
            ),
            accept="application/protobuf",
        )
        try:
            response = await request_base_url(
                self._resolver,
                self.base_url,
                http_request,
                tls_context=self._tls_context,
                forbidden=None,  # the operator's own SFU
                max_body=MAX_ANSWER_BYTES,
                timeouts=self._timeouts,
            )
        except NetError as exc:
            raise RoomServiceError(f"{method}: {exc}") from None
        if response.status != 200:
            code, msg = _twirp_error(response.body)
            text = f"{method}: HTTP {response.status} {code}: {msg}"
            raise RoomNotFound(text) if code == "not_found" else RoomServiceError(text)
        try:
            return answer.FromString(response.body)
        except DecodeError as exc:
            raise RoomServiceError(f"{method}: undecodable answer: {exc}") from None

    async def create_room(self, request: CreateRoomRequest) -> None:
        """``CreateRoom`` with upstream's settings; an existing room of that name is reused."""
        room = await self._call(
            "CreateRoom",
            {"roomCreate": True},
            room_pb.CreateRoomRequest(
                name=request.name,
                empty_timeout=request.empty_timeout,
                departure_timeout=request.departure_timeout,
                max_participants=request.max_participants,
            ),
            models.Room,
        )
        log.debug("room %r ready on the SFU (sid %s)", room.name, room.sid)

    async def _participant_call(
        self, method: str, room: str, identity: str, answer: type[_M]
    ) -> bool:
        """``method`` on one participant: ``False`` on ``not_found`` (no room or participant)."""
        try:
            await self._call(
                method,
                {"roomAdmin": True, "room": room},
                room_pb.RoomParticipantIdentity(room=room, identity=identity),
                answer,
            )
        except RoomNotFound:
            return False
        return True

    async def participant_exists(self, room: str, identity: str) -> bool:
        """``GetParticipant``: ``not_found`` (no room or no participant) is ``False``."""
        return await self._participant_call(
            "GetParticipant", room, identity, models.ParticipantInfo
        )

    async def participant_identities(self, room: str) -> frozenset[str]:
        """``ListParticipants``: a room that does not exist has nobody in it."""
        try:
            answer = await self._call(
                "ListParticipants",
                {"roomAdmin": True, "room": room},
                room_pb.ListParticipantsRequest(room=room),
                room_pb.ListParticipantsResponse,
            )
        except RoomNotFound:
            return frozenset()
        return frozenset(p.identity for p in answer.participants)

    async def remove_participant(self, room: str, identity: str) -> bool:
        """``RemoveParticipant``: ``False`` when the room or the participant is not there."""
        return await self._participant_call(
            "RemoveParticipant", room, identity, room_pb.RemoveParticipantResponse
        )

    async def delete_room(self, room: str) -> None:
        """``DeleteRoom`` (a ``roomCreate`` grant); a room that does not exist is no error."""
        try:
            await self._call(
                "DeleteRoom",
                {"roomCreate": True},
                room_pb.DeleteRoomRequest(room=room),
                room_pb.DeleteRoomResponse,
            )
        except RoomNotFound:
            return


def _twirp_error(body: bytes) -> tuple[str, str]:
    """``code`` and ``msg`` of a Twirp error body (``"", ""`` if it is not one)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return "", ""
    if not isinstance(document, dict):
        return "", ""
    code, msg = document.get("code", ""), document.get("msg", "")
    return (code if isinstance(code, str) else "", msg[:200] if isinstance(msg, str) else "")
