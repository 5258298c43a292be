"""The application service's own client-server API calls to its homeserver (``as_token``).

:class:`Homeserver` acts as the registration's sender user (no ``user_id`` query parameter) on
the homeserver ``LIVEKIT_HS_SERVER_NAME``, whose client-server API is found as for delegation
(``LIVEKIT_CS_API_URL_OVERRIDES``, else its ``.well-known/matrix/client``):

* ``GET /rooms/{roomId}/joined_members`` — who is joined, as the application service sees it
  (403 or 404: no user of its namespace is in the room, so nobody counts as joined);
* MSC4502 ``GET /_matrix/client/unstable/io.element.msc4502/rooms/{roomId}/is_joined`` with
  ``mxid`` or ``server_name`` (needs the registration's ``io.element.msc4502.scopes`` and
  Synapse's ``msc4502_enabled``); a homeserver that does not answer it (404, 400
  ``M_UNRECOGNIZED``, or 403 for a missing scope) is remembered as not having it;
* MSC4140 ``GET /delayed_events/{delayId}?user_id=`` (a proxied delegation's delay);
* ``GET /joined_rooms``, ``POST /rooms/{roomId}/join`` and ``/leave``, and ``GET
  /rooms/{roomId}/state``, which the focus user needs (:mod:`auth_service.focus`).

Every call has 3 s to connect and 10 s in all, and a bounded answer. A failure raises
:class:`MembershipUnknown` (the homeserver could not say).
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, urlencode

from .cs_api import CsApiResolver, CsApiUnresolvable
from .net import (
    HttpResponse,
    NetError,
    Request,
    Resolver,
    ResponseTooLarge,
    Timeouts,
    request_base_url,
)

log = logging.getLogger(__name__)

ANSWER_MAX_BYTES: Final = 16 * 1024 * 1024
TIMEOUTS: Final = Timeouts(connect=3.0, request=10.0)
IS_JOINED_SCOPE: Final = "urn:matrix:client:io.element.msc4502:rooms:is_joined"
IS_JOINED_PATH: Final = "/_matrix/client/unstable/io.element.msc4502/rooms/{room}/is_joined"


class MembershipUnknown(Exception):
    """The homeserver could not say (unreachable, an error, or an answer we cannot read)."""


def _room_path(room_id: str, action: str) -> str:
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/{action}"


class Homeserver:
    """Client-server calls as the application service's sender user."""

    def __init__(
        self,
        cs_api: CsApiResolver,
        server_name: str,
        as_token: str,
        *,
        resolver: Resolver,
        tls_context: ssl.SSLContext,
        limit_hit: Callable[[str], None] = lambda _limit: None,
    ) -> None:
        self._limit_hit = limit_hit
        self._cs_api = cs_api
        self.server_name = server_name
        self._as_token = as_token
        self._resolver = resolver
        self._tls_context = tls_context
        self.msc4502: bool | None = None
        """Whether the homeserver answers MSC4502 ``is_joined`` (``None``: not asked yet)."""

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            api = await self._cs_api.resolve(self.server_name)
        except CsApiUnresolvable as exc:
            raise MembershipUnknown(str(exc)) from None
        headers = [("Authorization", f"Bearer {self._as_token}")]
        content = b""
        if body is not None:
            content = json.dumps(body).encode("utf-8")
            headers.append(("Content-Type", "application/json"))
        try:
            return await request_base_url(
                self._resolver,
                api.base_url,
                Request(method, path, content, tuple(headers)),
                tls_context=self._tls_context,
                forbidden=None if api.trusted else self._cs_api.forbidden,
                max_body=ANSWER_MAX_BYTES,
                timeouts=TIMEOUTS,
            )
        except NetError as exc:
            if isinstance(exc, ResponseTooLarge):
                self._limit_hit("auth_joined_members_response")
            raise MembershipUnknown(f"{method} {path.split('?', 1)[0]}: {exc}") from None

    @staticmethod
    def _json(response: HttpResponse, what: str) -> Any:
        try:
            return json.loads(response.body)
        except (ValueError, RecursionError):
            raise MembershipUnknown(f"{what}: not JSON") from None

    @staticmethod
    def _errcode(response: HttpResponse) -> str:
        try:
            document = json.loads(response.body)
        except (ValueError, RecursionError):
            return ""
        return str(document.get("errcode", "")) if isinstance(document, dict) else ""

    async def joined_members(self, room_id: str) -> frozenset[str]:
        """The users joined to ``room_id`` (none when the homeserver hides the room from us)."""
        what = f"joined_members of {room_id!r}"
        response = await self._call("GET", _room_path(room_id, "joined_members"))
        if response.status in (403, 404):
            return frozenset()
        if response.status != 200:
            raise MembershipUnknown(f"{what}: HTTP {response.status}")
        document = self._json(response, what)
        joined = document.get("joined") if isinstance(document, dict) else None
        if not isinstance(joined, dict):
            raise MembershipUnknown(f"{what}: not a member list")
        return frozenset(user for user in joined if isinstance(user, str))

    async def is_joined(
        self, room_id: str, *, user_id: str = "", server_name: str = ""
    ) -> bool | None:
        """MSC4502: whether ``user_id`` (or some user of ``server_name``) is joined to
        ``room_id``; ``None`` when the homeserver does not answer MSC4502."""
        if self.msc4502 is False:
            return None
        query = urlencode({"mxid": user_id} if user_id else {"server_name": server_name})
        path = IS_JOINED_PATH.format(room=quote(room_id, safe="")) + "?" + query
        response = await self._call("GET", path)
        what = f"is_joined in {room_id!r}"
        if response.status == 200:
            document = self._json(response, what)
            joined = document.get("joined") if isinstance(document, dict) else None
            if not isinstance(joined, bool):
                raise MembershipUnknown(f"{what}: no `joined` boolean")
            self.msc4502 = True
            return joined
        errcode = self._errcode(response)
        if response.status == 404 or (response.status, errcode) in (
            (400, "M_UNRECOGNIZED"),
            (403, "M_FORBIDDEN"),
        ):
            if self.msc4502 is None:
                log.info(
                    "homeserver: no MSC4502 is_joined (HTTP %d %s); using joined_members",
                    response.status,
                    errcode,
                )
            self.msc4502 = False
            return None
        raise MembershipUnknown(f"{what}: HTTP {response.status} {errcode}")

    async def joined_rooms(self) -> list[str]:
        """The rooms the sender user is joined to."""
        response = await self._call("GET", "/_matrix/client/v3/joined_rooms")
        if response.status != 200:
            raise MembershipUnknown(f"joined_rooms: HTTP {response.status}")
        document = self._json(response, "joined_rooms")
        rooms = document.get("joined_rooms") if isinstance(document, dict) else None
        if not isinstance(rooms, list):
            raise MembershipUnknown("joined_rooms: not a room list")
        return [room for room in rooms if isinstance(room, str)]

    async def join(self, room_id: str) -> None:
        """Join ``room_id`` as the sender user (it was invited, or the room is public)."""
        response = await self._call("POST", _room_path(room_id, "join"), {})
        if response.status != 200:
            raise MembershipUnknown(
                f"join {room_id!r}: HTTP {response.status} {self._errcode(response)}"
            )

    async def leave(self, room_id: str) -> None:
        """Leave ``room_id`` as the sender user."""
        response = await self._call("POST", _room_path(room_id, "leave"), {})
        if response.status != 200:
            raise MembershipUnknown(
                f"leave {room_id!r}: HTTP {response.status} {self._errcode(response)}"
            )

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        """The current state events of ``room_id``."""
        response = await self._call("GET", _room_path(room_id, "state"))
        if response.status != 200:
            raise MembershipUnknown(f"state of {room_id!r}: HTTP {response.status}")
        document = self._json(response, f"state of {room_id!r}")
        if not isinstance(document, list):
            raise MembershipUnknown(f"state of {room_id!r}: not a list")
        return [event for event in document if isinstance(event, dict)]

    async def delay_of(self, user_id: str, delay_id: str) -> tuple[str, int] | None:
        """MSC4140: the room and delay (ms) of ``user_id``'s delayed event ``delay_id``, read
        as that user (the application service may act for the users of its namespace);
        ``None`` when the homeserver knows no such event of theirs."""
        path = (
            f"/_matrix/client/unstable/org.matrix.msc4140/delayed_events/"
            f"{quote(delay_id, safe='')}?{urlencode({'user_id': user_id})}"
        )
        response = await self._call("GET", path)
        if response.status in (400, 403, 404):
            return None
        if response.status != 200:
            raise MembershipUnknown(f"delayed event {delay_id!r}: HTTP {response.status}")
        document = self._json(response, f"delayed event {delay_id!r}")
        if not isinstance(document, dict):
            raise MembershipUnknown(f"delayed event {delay_id!r}: not an object")
        room_id = document.get("room_id")
        delay = document.get("delay_ms", document.get("delay"))
        if not isinstance(room_id, str) or not isinstance(delay, int) or delay <= 0:
            raise MembershipUnknown(f"delayed event {delay_id!r}: no room or delay")
        return room_id, delay
