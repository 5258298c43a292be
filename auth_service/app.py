"""The HTTP service: a Starlette app with lk-jwt-service's routes, answers and CORS.

Routes (paths match exactly; a reverse proxy must strip any prefix, as with upstream):

* ``POST /sfu/get`` — legacy token endpoint, identity ``@user:server:DEVICE``;
* ``POST /get_token`` — MSC4195 token endpoint, hashed identity;
* ``POST /delegate_delayed_leave`` — hands over an MSC4140 delayed leave (no token), like
  ``delay_id``/``delay_timeout`` on the token endpoints (:mod:`auth_service.delegation`);
* ``POST /sfu_webhook`` — the SFU's webhooks (no CORS), which feed the delegations;
* ``GET|HEAD /healthz`` — liveness;
* ``GET /metrics`` — Prometheus exposition (unless disabled);
* in application-service mode (:mod:`auth_service.appservice`), the homeserver's
  ``PUT /_matrix/app/v1/transactions/{txnId}`` and ``POST /_matrix/app/v1/ping``, and the
  MSC4512 routes it proxies (:mod:`auth_service.proxied_routes`): client-server ``get_token``
  and ``delegate_delayed_leave``, federation ``get_token``; the focus user
  (:mod:`auth_service.focus`) starts and stops with the app.

In application-service mode the token endpoints issue tokens only to users joined to the Matrix
room (403 ``M_FORBIDDEN`` otherwise; 503 when the homeserver cannot say), checked after the
per-user rate limit, and every token issued is remembered for :mod:`auth_service.membership`.

The token endpoints answer ``OPTIONS`` with 200 and send upstream's CORS headers and
``Content-Type: application/json`` on every answer, errors and 405 included. A request goes
through: method → per-IP rate limit (IPv6 per /64) → size limit (64 KiB, 413) → decoding
(400 ``M_NOT_JSON``) → validation (400 ``M_BAD_JSON``) → OpenID verification (401; 503
``M_UNKNOWN`` when every outbound lookup slot is taken) → per-user rate limit (429) → delegation
check (a restricted user asking for it: 400 ``M_BAD_JSON``, 403 ``M_FORBIDDEN`` on
``/delegate_delayed_leave``) → identity length (400) → token (``roomCreate`` for full-access
homeservers only) → for a delegation, the homeserver's client-server API (400 ``M_BAD_JSON``
"Unable to resolve client-server API") → room creation for full-access homeservers (RoomService
``CreateRoom``, 500 on failure) → the delegation's job (400 ``M_BAD_JSON`` when the job table is
full).

Every cap on remote input that is hit is counted in ``sfu_limit_exceeded_total{limit}``.
Client-chosen strings are logged with ``%r``, so they cannot start a log line of their own.

Collaborators (OpenID verifier, room creator, delegations, metrics, clocks) are injectable for
tests; the delegations start (resuming stored jobs) with the app's lifespan or on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .appservice import AppServiceEndpoints
from .config import IpNetwork, Settings
from .cs_api import CsApiUnresolvable
from .delegation import DelegationLimit, Delegations
from .delegation_job import JobParams
from .focus import Focus
from .grant import Grant
from .homeserver import MembershipUnknown
from .matrix import FederationDiscovery, LookupCapacityError, OpenIdError, OpenIdVerifier
from .membership import Membership
from .metrics import Metrics
from .models import (
    BadJsonError,
    DelegateDelayedLeaveRequest,
    LegacySfuRequest,
    MatrixError,
    RequestError,
    SfuRequest,
    unauthorized,
)
from .net import DnsResolver, Resolver, Timeouts, client_tls_context, parse_ip
from .proxied import CS_DELEGATE_PATH, CS_GET_TOKEN_PATH, FEDERATION_GET_TOKEN_PATH
from .proxied_routes import ProxiedRoutes
from .ratelimit import RateLimiter, address_bucket, retry_after_ms
from .sfu_client import (
    CreateRoomRequest,
    RoomCreator,
    is_full_access,
)
from .sfu_webhook import WebhookError
from .sfu_webhook import receive as receive_webhook
from .tokens import TokenMinter, legacy_room_alias, room_alias
from .wiring import (
    build_delegations,
    build_focus,
    build_homeserver,
    build_membership,
    build_sfu_client,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_IDENTITY_LENGTH: Final = 256
"""The SFU refuses tokens whose identity is longer (LiveKit's limit too)."""
BUSY_RETRY_AFTER_SECONDS: Final = 1
ROOM_CREATION_TIMEOUT_SECONDS: Final = 10.0

OUTCOMES: Final = {
    400: "bad_json",
    401: "unauthorized",
    403: "forbidden",
    413: "too_large",
    429: "rate_limited",
    503: "busy",
}
"""The ``outcome`` label of an error answer, by status."""

CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": (
        "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token"
    ),
    "Content-Type": "application/json",
}

RESTRICTED_DELEGATION: Final = (
    "Delegation of delayed events is only supported for full access users"
)
WEBHOOK_MAX_BYTES: Final = 1024 * 1024
MAX_DELAY_ID_LENGTH: Final = 255
MAX_DELAY_TIMEOUT_MS: Final = 7 * 24 * 3600 * 1000
"""Longer than any homeserver lets a delayed event wait (Synapse's default cap is a day)."""


def check_delegation(delay_id: str, delay_timeout: int) -> None:
    """Beyond upstream: a ``delay_id`` of printable ASCII up to 255 characters, a
    ``delay_timeout`` of at most a week (homeservers issue nothing else)."""
    if len(delay_id) > MAX_DELAY_ID_LENGTH or not all("!" <= c <= "~" for c in delay_id):
        raise BadJsonError(
            f"The request body `delay_id` must be printable ASCII of at most "
            f"{MAX_DELAY_ID_LENGTH} characters",
            limit="auth_delay_id_length" if len(delay_id) > MAX_DELAY_ID_LENGTH else "",
        )
    if delay_timeout > MAX_DELAY_TIMEOUT_MS:
        raise BadJsonError(
            f"The request body `delay_timeout` must be at most {MAX_DELAY_TIMEOUT_MS} ms",
            limit="auth_delay_timeout",
        )


class UserVerifier(Protocol):
    """Turns an OpenID token into the Matrix user ID it belongs to."""

    async def verify(self, server_name: str, access_token: str) -> str:
        """The verified user ID; raises :class:`OpenIdError` otherwise.

        May raise :class:`LookupCapacityError` when no outbound lookup can start now.
        """
        ...


def _plain_json(status: int, message: str) -> Response:
    """An error answer of ``/sfu_webhook`` (not a Matrix endpoint, no CORS)."""
    content = json.dumps({"error": message}, separators=(",", ":")).encode("utf-8") + b"\n"
    return Response(content, status_code=status, headers={"Content-Type": "application/json"})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"
    return Response(content, status_code=status, headers={**CORS_HEADERS, **(headers or {})})


def _empty(status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(b"", status_code=status, headers=headers)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IpNetwork]
) -> str:
    """The client's address: the peer, or the first untrusted hop of ``X-Forwarded-For``."""
    if peer is None:
        return "unknown"
    peer_ip = parse_ip(peer)
    if not trusted or peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        hop_ip = parse_ip(hop)
        if hop_ip is None or not any(hop_ip in net for net in trusted):
            return str(hop_ip) if hop_ip is not None else hop
    return hops[0] if hops else peer


def reserved_servers(settings: Settings) -> frozenset[str]:
    """The operator's own homeservers, whose lookups get slots of their own.

    Those of ``LIVEKIT_FULL_ACCESS_HOMESERVERS`` (unless it is ``*``) and of
    ``LIVEKIT_AUTH_HOMESERVER_URLS``.
    """
    own = set(settings.homeserver_urls)
    if settings.full_access_homeservers != ("*",):
        own.update(settings.full_access_homeservers)
    return frozenset(own)


def build_verifier(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    tls_context: ssl.SSLContext | None = None,
    timeouts: Timeouts | None = None,
    metrics: Metrics | None = None,
) -> OpenIdVerifier:
    """The production OpenID verifier for ``settings``."""
    if tls_context is None:
        tls_context = client_tls_context(verify=not settings.skip_verify_tls)
    discovery = FederationDiscovery(
        resolver or DnsResolver(),
        tls_context=tls_context,
        allow_private=settings.allow_private_homeservers,
        timeouts=timeouts,
        cache_seconds=settings.discovery_cache_seconds,
        metrics=metrics,
    )
    return OpenIdVerifier(
        discovery,
        homeserver_urls=settings.homeserver_urls,
        total_timeout=settings.openid_timeout_seconds,
        cache_seconds=settings.openid_cache_seconds,
        max_concurrent_lookups=settings.max_concurrent_lookups,
        reserved_servers=reserved_servers(settings),
        metrics=metrics,
    )


class TokenService:
    """The request handlers and the state they share."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: UserVerifier,
        room_creator: RoomCreator,
        delegations: Delegations,
        metrics: Metrics,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        membership: Membership | None = None,
        focus: Focus | None = None,
    ) -> None:
        self.settings = settings
        self.membership = membership
        self.focus = focus
        self.verifier = verifier
        self.room_creator = room_creator
        self.delegations = delegations
        self.metrics = metrics
        self.minter = TokenMinter(settings.api_key, settings.api_secret)
        self.ip_limiter = RateLimiter(
            settings.ip_rate_limit,
            clock=clock,
            on_full=lambda: metrics.limit_hit("auth_ip_rate_buckets"),
        )
        self.user_limiter = RateLimiter(
            settings.user_rate_limit,
            clock=clock,
            on_full=lambda: metrics.limit_hit("auth_user_rate_buckets"),
        )
        self._wall_clock = wall_clock

    # --- plumbing ------------------------------------------------------------------------

    def answer(self, endpoint: str, outcome: str, response: Response) -> Response:
        self.metrics.requests.labels(endpoint, outcome).inc()
        return response

    def error_answer(self, endpoint: str, outcome: str, error: MatrixError) -> Response:
        headers = {}
        if error.status == 429:
            retry_ms = int(error.extra.get("retry_after_ms", 1000))
            headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
        elif error.status == 503:
            headers["Retry-After"] = str(BUSY_RETRY_AFTER_SECONDS)
        return self.answer(endpoint, outcome, _json(error.status, error.body(), headers))

    def _rate_limited(self, wait: float) -> MatrixError:
        return MatrixError(
            429,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
            {"retry_after_ms": retry_after_ms(wait)},
        )

    async def read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length", "")
        too_large = MatrixError(413, "M_TOO_LARGE", "Request body too large")
        # isascii: str.isdigit() takes "¹" and other digits int() refuses
        if (
            length.isascii()
            and length.isdigit()
            and (len(length) > 12 or int(length) > MAX_BODY_BYTES)
        ):
            self.metrics.limit_hit("auth_request_body")
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                self.metrics.limit_hit("auth_request_body")
                raise too_large
        return bytes(body)

    # --- routes --------------------------------------------------------------------------

    async def sfu_get(self, request: Request) -> Response:
        """``/sfu/get``: the legacy token endpoint."""
        return await self._token_endpoint(request, "sfu_get", self._legacy_grant)

    async def get_token(self, request: Request) -> Response:
        """``/get_token``: the MSC4195 token endpoint."""
        return await self._token_endpoint(request, "get_token", self._grant)

    async def delegate_delayed_leave(self, request: Request) -> Response:
        """``/delegate_delayed_leave``: a delayed leave handed over without a token request."""
        return await self._token_endpoint(request, "delegate_delayed_leave", self._delegate_grant)

    async def healthz(self, request: Request) -> Response:
        """Liveness: 200 to GET and HEAD."""
        return _empty(200 if request.method in ("GET", "HEAD") else 405)

    async def metrics_endpoint(self, request: Request) -> Response:
        """Prometheus exposition."""
        if request.method not in ("GET", "HEAD"):
            return _empty(405, {"Allow": "GET, HEAD"})
        return Response(self.metrics.render(), headers={"Content-Type": self.metrics.content_type})

    # --- the token flow ------------------------------------------------------------------

    @staticmethod
    def _legacy_grant(body: bytes) -> Grant:
        req = LegacySfuRequest.parse(body)
        return Grant(
            server_name=req.openid_token.matrix_server_name,
            access_token=req.openid_token.access_token,
            claimed_user_id="",
            delay_id=req.delay_id,
            delay_timeout=req.delay_timeout,
            matrix_room=req.room,
            alias=legacy_room_alias(req.room),
            device_id=req.device_id,
            member_id=None,
        )

    @classmethod
    def _grant(cls, body: bytes) -> Grant:
        return cls._grant_of(SfuRequest.parse(body))

    @staticmethod
    def _grant_of(req: SfuRequest) -> Grant:
        return Grant(
            server_name=req.openid_token.matrix_server_name,
            access_token=req.openid_token.access_token,
            claimed_user_id=req.member.claimed_user_id,
            delay_id=req.delay_id,
            delay_timeout=req.delay_timeout,
            matrix_room=req.room_id,
            alias=room_alias(req.room_id, req.slot_id),
            device_id=req.member.claimed_device_id,
            member_id=req.member.id,
        )

    @classmethod
    def _delegate_grant(cls, body: bytes) -> Grant:
        req = DelegateDelayedLeaveRequest.parse(body)
        grant = cls._grant_of(req)
        return dataclasses.replace(grant, delegate_only=True)

    async def _token_endpoint(
        self,
        request: Request,
        endpoint: str,
        parse: Callable[[bytes], Grant],
    ) -> Response:
        if request.method == "OPTIONS":
            return _empty(200, CORS_HEADERS)
        if request.method != "POST":
            headers = {**CORS_HEADERS, "Allow": "POST, OPTIONS"}
            return self.answer(endpoint, "method_not_allowed", _empty(405, headers))
        try:
            return await self._issue(request, endpoint, parse)
        except RequestError as error:
            outcome = "not_json" if error.errcode == "M_NOT_JSON" else "bad_json"
            if isinstance(error, BadJsonError) and error.limit:
                self.metrics.limit_hit(error.limit)
            log.info("%s: refused request from %r: %s", endpoint, self.client_of(request), error)
            return self.error_answer(endpoint, outcome, error)
        except MatrixError as error:
            return self.error_answer(endpoint, OUTCOMES.get(error.status, "error"), error)
        except ClientDisconnect:
            return self.answer(endpoint, "disconnected", _empty(400))
        except Exception:
            log.exception("%s: unexpected error", endpoint)
            internal = MatrixError(500, "M_UNKNOWN", "Internal Server Error")
            return self.error_answer(endpoint, "error", internal)

    def client_of(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(
            peer, request.headers.getlist("x-forwarded-for"), self.settings.trusted_proxies
        )

    async def _issue(
        self,
        request: Request,
        endpoint: str,
        parse: Callable[[bytes], Grant],
    ) -> Response:
        client = self.client_of(request)
        wait = self.ip_limiter.acquire(address_bucket(client))
        if wait > 0:
            self.metrics.limit_hit("auth_ip_rate")
            log.info("%s: rate-limiting client %r", endpoint, client)
            raise self._rate_limited(wait)

        grant = parse(await self.read_body(request))

        try:
            user_id = await self.verifier.verify(grant.server_name, grant.access_token)
        except LookupCapacityError as exc:
            log.warning("%s: refused %r, homeserver lookups are full: %s", endpoint, client, exc)
            raise MatrixError(
                503, "M_UNKNOWN", "Too many homeserver lookups in progress; try again later"
            ) from None
        except OpenIdError as exc:
            log.warning("%s: OpenID verification failed for %r: %r", endpoint, client, str(exc))
            raise unauthorized() from None
        if grant.claimed_user_id and grant.claimed_user_id != user_id:
            log.warning(
                "%s: claimed user %r does not match token subject %r",
                endpoint,
                grant.claimed_user_id,
                user_id,
            )
            raise unauthorized()

        return await self.authorised(endpoint, client, grant, user_id)

    async def authorised(
        self, endpoint: str, client: str, grant: Grant, user_id: str, *, with_url: bool = True
    ) -> Response:
        """The rest of a token request once ``user_id`` is known (OpenID or the homeserver)."""
        wait = self.user_limiter.acquire(user_id)
        if wait > 0:
            self.metrics.limit_hit("auth_user_rate")
            log.info("%s: rate-limiting user %r", endpoint, user_id)
            raise self._rate_limited(wait)

        if self.membership is not None and not grant.delegate_only:
            await self._require_joined(endpoint, grant.matrix_room, user_id)

        full_access = not grant.subscribe_only and is_full_access(
            grant.server_name, self.settings.full_access_homeservers
        )
        if grant.delay_id and not full_access:
            # 400 M_BAD_JSON on the token endpoints makes Element Call retry without the delay
            # parameters; 403 on /delegate_delayed_leave (upstream's answers).
            status, errcode = (403, "M_FORBIDDEN") if grant.delegate_only else (400, "M_BAD_JSON")
            raise MatrixError(status, errcode, RESTRICTED_DELEGATION)
        if grant.delay_id:
            check_delegation(grant.delay_id, grant.delay_timeout)

        identity = grant.identity(user_id)
        if len(identity) > MAX_IDENTITY_LENGTH:
            # Only the legacy identity ``user_id:device_id`` can get this long.
            self.metrics.limit_hit("auth_identity_length")
            raise MatrixError(
                400,
                "M_BAD_JSON",
                f"The LiveKit identity `user_id:device_id` would be longer than "
                f"{MAX_IDENTITY_LENGTH} characters; use a shorter `device_id`",
            )
        if grant.delegate_only:
            await self._delegate(endpoint, grant, user_id, identity)
            log.info(
                "%s: delegated delayed leave: user=%r identity=%r room=%r delay_id=%r",
                endpoint,
                user_id,
                identity,
                grant.alias,
                grant.delay_id,
            )
            return self.answer(endpoint, "ok", _json(200, {}))

        jwt = self.minter.join_token(
            grant.alias,
            identity,
            int(self._wall_clock()),
            room_create=full_access,
            can_publish=not grant.subscribe_only,
        )

        if full_access:
            if grant.delay_id:
                # Before the room is created, so that a refusal leaves no room behind.
                await self._resolve_cs_api(endpoint, grant)
            try:
                async with asyncio.timeout(ROOM_CREATION_TIMEOUT_SECONDS):
                    await self.room_creator.create_room(CreateRoomRequest(name=grant.alias))
            except Exception as exc:
                log.error("%s: unable to create room %r on the SFU: %r", endpoint, grant.alias, exc)
                raise MatrixError(500, "M_UNKNOWN", "Unable to create room on SFU") from None
            if grant.delay_id:
                await self._delegate(endpoint, grant, user_id, identity)

        if self.membership is not None:
            self.membership.issued(grant.matrix_room, user_id, grant.alias, identity)
            if self.focus is not None:
                self.focus.token_issued(grant.matrix_room)
            # A leave pushed while this request was under way (the cached list has it).
            await self._require_joined(endpoint, grant.matrix_room, user_id)
        access = "full" if full_access else "restricted"
        self.metrics.tokens_issued.labels(endpoint, access).inc()
        log.info(
            "%s: issued token: user=%r access=%s matrix_room=%r identity=%r room=%r "
            "delegated=%s client=%r",
            endpoint,
            user_id,
            access,
            grant.matrix_room,
            identity,
            grant.alias,
            bool(grant.delay_id),
            client,
        )
        body = {"url": self.settings.livekit_url, "jwt": jwt} if with_url else {"jwt": jwt}
        return self.answer(endpoint, "ok", _json(200, body))

    async def _require_joined(self, endpoint: str, room_id: str, user_id: str) -> None:
        assert self.membership is not None
        try:
            joined = await self.membership.is_joined(room_id, user_id)
        except MembershipUnknown as exc:
            log.warning(
                "%s: cannot check membership of %r in %r: %s", endpoint, user_id, room_id, exc
            )
            raise MatrixError(503, "M_UNKNOWN", "Unable to check room membership") from None
        if not joined:
            log.info("%s: refused %r, not joined to %r", endpoint, user_id, room_id)
            raise MatrixError(403, "M_FORBIDDEN", "User is not joined to the room")

    async def _resolve_cs_api(self, endpoint: str, grant: Grant) -> None:
        try:
            await self.delegations.deps.resolve_cs_api(grant.server_name)
        except CsApiUnresolvable as exc:
            log.warning("%s: %s", endpoint, exc)
            raise MatrixError(400, "M_BAD_JSON", "Unable to resolve client-server API") from None

    async def _delegate(self, endpoint: str, grant: Grant, user_id: str, identity: str) -> None:
        """Hand the delayed leave to a job (replacing that of the same participant)."""
        if grant.delegate_only:
            await self._resolve_cs_api(endpoint, grant)
        params = JobParams(
            delay_id=grant.delay_id,
            delay_timeout=grant.delay_timeout / 1000,
            server_name=grant.server_name,
            room=grant.alias,
            identity=identity,
        )
        try:
            await self.delegations.add(params, user_id)
        except DelegationLimit as exc:
            log.warning("%s: refused a delegation of %r: %s", endpoint, user_id, exc)
            raise MatrixError(400, "M_BAD_JSON", str(exc)) from None

    # --- /sfu_webhook --------------------------------------------------------------------

    async def sfu_webhook(self, request: Request) -> Response:
        """``POST /sfu_webhook``: the SFU's webhooks, verified with ``LIVEKIT_KEY``."""
        if request.method != "POST":
            return _empty(405, {"Allow": "POST"})
        length = request.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length[:12]) > WEBHOOK_MAX_BYTES:
            self.metrics.limit_hit("auth_webhook_body")
            return _plain_json(413, "body too large")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > WEBHOOK_MAX_BYTES:
                    self.metrics.limit_hit("auth_webhook_body")
                    return _plain_json(413, "body too large")
        except ClientDisconnect:
            return _empty(400)
        try:
            event = receive_webhook(
                bytes(body),
                request.headers.get("authorization", ""),
                self.settings.api_key,
                self.settings.api_secret,
            )
        except WebhookError as exc:
            log.warning("sfu_webhook: refused: %s", exc)
            return _plain_json(exc.status, str(exc))
        routed = self.delegations.webhook(event)
        log.debug("sfu_webhook: %s for %r routed=%s", event.event, event.room.name, routed)
        return _json(200, {})


class _AnyMethod:
    """An ASGI endpoint that hands every method to ``handler``, which answers 405 itself.

    (Starlette answers unlisted methods with a plain-text 405 that lacks upstream's headers.)
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    verifier: UserVerifier | None = None,
    room_creator: RoomCreator | None = None,
    delegations: Delegations | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the service. Anything not given is built from ``settings``."""
    metrics = metrics or Metrics()
    sfu = build_sfu_client(settings)
    delegations = delegations or build_delegations(settings, sfu, metrics=metrics)
    homeserver = build_homeserver(settings, metrics=metrics)
    membership = focus = None
    if settings.appservice_enabled:
        membership = build_membership(settings, sfu, homeserver, metrics=metrics)
        focus = build_focus(settings, homeserver, metrics=metrics, close_call=membership.close)
    service = TokenService(
        settings,
        verifier=verifier or build_verifier(settings, metrics=metrics),
        room_creator=room_creator or sfu,
        delegations=delegations,
        metrics=metrics,
        clock=clock,
        wall_clock=wall_clock,
        membership=membership,
        focus=focus,
    )
    routes = [
        Route("/sfu/get", _AnyMethod(service.sfu_get)),
        Route("/get_token", _AnyMethod(service.get_token)),
        Route("/delegate_delayed_leave", _AnyMethod(service.delegate_delayed_leave)),
        Route("/sfu_webhook", _AnyMethod(service.sfu_webhook)),
        Route("/healthz", _AnyMethod(service.healthz)),
    ]
    if settings.metrics_enabled:
        routes.append(Route("/metrics", _AnyMethod(service.metrics_endpoint)))
    if membership is not None:
        endpoints = AppServiceEndpoints(settings.hs_token, membership, metrics.limit_hit, focus)
        proxied = ProxiedRoutes(service, homeserver)
        routes += [
            Route("/_matrix/app/v1/transactions/{txn_id}", _AnyMethod(endpoints.transaction)),
            Route("/transactions/{txn_id}", _AnyMethod(endpoints.transaction)),
            Route("/_matrix/app/v1/ping", _AnyMethod(endpoints.ping)),
            Route(CS_GET_TOKEN_PATH, _AnyMethod(proxied.cs_get_token)),
            Route(CS_DELEGATE_PATH, _AnyMethod(proxied.cs_delegate)),
            Route(FEDERATION_GET_TOKEN_PATH, _AnyMethod(proxied.federation_get_token)),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await delegations.start()
        if focus is not None:
            await focus.start()
        reconcile = None
        interval = settings.membership_check_interval_seconds
        if membership is not None and interval > 0:
            reconcile = asyncio.create_task(membership.reconcile_forever(float(interval)))
        try:
            yield
        finally:
            if reconcile is not None:
                reconcile.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reconcile
            if focus is not None:
                await focus.close()
            await delegations.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.router.redirect_slashes = False
    app.state.service = service
    return app
