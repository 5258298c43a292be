"""The MSC4512 routes the homeserver proxies to the application service, as handlers.

Each needs the ``hs_token`` (none: 401 ``M_UNAUTHORIZED``, a wrong one: 403 ``M_FORBIDDEN``) and
``url`` equal to ``LIVEKIT_URL`` (400 ``M_INVALID_PARAM``), then runs the token flow of
:class:`~auth_service.app.TokenService` (per-user rate limit, membership, token):

* client-server ``get_token``: the user Synapse authenticated (``X-Matrix-User-Identifier``,
  one of ``LIVEKIT_HS_SERVER_NAME``'s), a full-access user if that homeserver is listed;
  answers ``{"jwt"}``;
* client-server ``delegate_delayed_leave``: the same user's MSC4140 delayed leave ``delay_id``,
  whose room and delay the service reads from the homeserver as that user (an unknown one, or
  one of another room: 400 ``M_INVALID_PARAM`` "Unknown delay_id"); answers ``{}``;
* federation ``get_token``: a user of the remote server Synapse authenticated
  (``X-Matrix-Origin``; the body's ``user_id`` must be of it, else 403), joined to the room as
  our homeserver sees it (MSC4502 where answered: the user joined, and our homeserver still in
  the room); a **subscribe-only** grant (``canPublish`` false, ``canPublishData`` true, no
  ``roomCreate``, no room created); answers ``{"jwt"}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .appservice import hs_token_refusal
from .grant import Grant
from .homeserver import Homeserver, MembershipUnknown
from .models import BadJsonError, MatrixError
from .proxied import (
    ORIGIN_HEADER,
    USER_HEADER,
    ProxiedRequest,
    federated_user,
    parse_cs_delegate,
    parse_cs_get_token,
    parse_federation_get_token,
    proxied_user,
)
from .tokens import room_alias

if TYPE_CHECKING:
    from .app import TokenService

OUTCOMES: Final = {400: "bad_json", 401: "unauthorized", 403: "forbidden", 429: "rate_limited"}


class ProxiedRoutes:
    """``get_token`` (client-server and federation) and ``delegate_delayed_leave`` as the
    homeserver forwards them."""

    def __init__(self, service: TokenService, homeserver: Homeserver) -> None:
        self._service = service
        self._homeserver = homeserver

    async def _handle(
        self,
        request: Request,
        endpoint: str,
        grant_of: Callable[[Request, bytes], Awaitable[tuple[Grant, str]]],
    ) -> Response:
        service = self._service
        if request.method != "POST":
            refused = Response(b"", 405, {"Allow": "POST"})
            return service.answer(endpoint, "method_not_allowed", refused)
        try:
            refusal = hs_token_refusal(request, service.settings.hs_token.encode("utf-8"))
            if refusal is not None:
                raise MatrixError(*refusal)
            body = await service.read_body(request)
            grant, user_id = await grant_of(request, body)
            return await service.authorised(
                endpoint, service.client_of(request), grant, user_id, with_url=False
            )
        except MatrixError as error:
            if isinstance(error, BadJsonError) and error.limit:
                service.metrics.limit_hit(error.limit)
            return service.error_answer(endpoint, OUTCOMES.get(error.status, "error"), error)
        except ClientDisconnect:
            return service.answer(endpoint, "disconnected", Response(b"", 400))

    def _grant(
        self,
        req: ProxiedRequest,
        server_name: str,
        *,
        delay_timeout: int = 0,
        subscribe_only: bool = False,
    ) -> Grant:
        if req.url != self._service.settings.livekit_url:
            raise MatrixError(400, "M_INVALID_PARAM", "The requested `url` is not served here")
        return Grant(
            server_name=server_name,
            access_token="",
            claimed_user_id="",
            delay_id=req.delay_id,
            delay_timeout=delay_timeout,
            matrix_room=req.room_id,
            alias=room_alias(req.room_id, req.slot_id),
            device_id=req.member.claimed_device_id,
            member_id=req.member.id,
            delegate_only=bool(req.delay_id),
            subscribe_only=subscribe_only,
        )

    def _local_user(self, request: Request, req: ProxiedRequest) -> str:
        user_id = proxied_user(
            request.headers.get(USER_HEADER, ""), self._service.settings.hs_server_name
        )
        if req.member.claimed_user_id and req.member.claimed_user_id != user_id:
            raise MatrixError(403, "M_FORBIDDEN", "`member.claimed_user_id` is not you")
        return user_id

    async def cs_get_token(self, request: Request) -> Response:
        """``POST /_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token``."""

        async def grant_of(request: Request, body: bytes) -> tuple[Grant, str]:
            req = parse_cs_get_token(body)
            user_id = self._local_user(request, req)
            return self._grant(req, self._service.settings.hs_server_name), user_id

        return await self._handle(request, "cs_get_token", grant_of)

    async def cs_delegate(self, request: Request) -> Response:
        """``POST /_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave``."""

        async def grant_of(request: Request, body: bytes) -> tuple[Grant, str]:
            req = parse_cs_delegate(body)
            user_id = self._local_user(request, req)
            try:
                delayed = await self._homeserver.delay_of(user_id, req.delay_id)
            except MembershipUnknown as exc:
                raise MatrixError(503, "M_UNKNOWN", f"Unable to look up delay_id: {exc}") from None
            if delayed is None or delayed[0] != req.room_id:
                raise MatrixError(400, "M_INVALID_PARAM", "Unknown delay_id")
            settings = self._service.settings
            return self._grant(req, settings.hs_server_name, delay_timeout=delayed[1]), user_id

        return await self._handle(request, "cs_delegate_delayed_leave", grant_of)

    async def federation_get_token(self, request: Request) -> Response:
        """``POST /_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token``."""

        async def grant_of(request: Request, body: bytes) -> tuple[Grant, str]:
            req = parse_federation_get_token(body)
            origin = request.headers.get(ORIGIN_HEADER, "")
            user_id = federated_user(origin, req.user_id, self._service.settings.hs_server_name)
            return self._grant(req, origin, subscribe_only=True), user_id

        return await self._handle(request, "federation_get_token", grant_of)
