"""The HTTP service: a Starlette app with lk-jwt-service's routes, answers and CORS.

Routes (paths match exactly; a reverse proxy must strip any prefix, as with upstream):

* ``POST /sfu/get`` — legacy token endpoint, identity ``@user:server:DEVICE``;
* ``POST /get_token`` — MSC4195 token endpoint, hashed identity;
* ``/delegate_delayed_leave`` — 404 for now: delegation of delayed leave events needs the SFU's
  webhooks; Element Call probes this path and takes 404 as "not offered";
* ``GET|HEAD /healthz`` — liveness;
* ``GET /metrics`` — Prometheus exposition (unless disabled).

The token endpoints answer ``OPTIONS`` with 200 and send upstream's CORS headers and
``Content-Type: application/json`` on every answer, errors and 405 included. A request goes
through: method → per-IP rate limit (IPv6 per /64) → size limit (64 KiB, 413) → decoding
(400 ``M_NOT_JSON``) → validation (400 ``M_BAD_JSON``) → OpenID verification (401; 503
``M_UNKNOWN`` when every outbound lookup slot is taken) → per-user rate limit (429) → delegation
check → identity length (400) → token (``roomCreate`` for full-access homeservers only) → room
creation for full-access homeservers (500 on failure).

Every cap on remote input that is hit is counted in ``sfu_limit_exceeded_total{limit}``.
Client-chosen strings are logged with ``%r``, so they cannot start a log line of their own.

Collaborators (OpenID verifier, room creator, metrics, clocks) are injectable for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .config import IpNetwork, Settings
from .matrix import FederationDiscovery, LookupCapacityError, OpenIdError, OpenIdVerifier
from .metrics import Metrics
from .models import (
    BadJsonError,
    LegacySfuRequest,
    MatrixError,
    RequestError,
    SfuRequest,
    unauthorized,
)
from .net import DnsResolver, Resolver, Timeouts, client_tls_context, parse_ip
from .ratelimit import RateLimiter, address_bucket, retry_after_ms
from .sfu_client import (
    CreateRoomRequest,
    LoggingRoomCreator,
    RoomCreator,
    is_full_access,
)
from .tokens import (
    TokenMinter,
    legacy_participant_identity,
    legacy_room_alias,
    participant_identity,
    room_alias,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_IDENTITY_LENGTH: Final = 256
"""The SFU refuses tokens whose identity is longer (LiveKit's limit too)."""
BUSY_RETRY_AFTER_SECONDS: Final = 1
ROOM_CREATION_TIMEOUT_SECONDS: Final = 10.0

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
UNSUPPORTED_DELEGATION: Final = "Delegation of delayed events is not supported by this service"


class UserVerifier(Protocol):
    """Turns an OpenID token into the Matrix user ID it belongs to."""

    async def verify(self, server_name: str, access_token: str) -> str:
        """The verified user ID; raises :class:`OpenIdError` otherwise.

        May raise :class:`LookupCapacityError` when no outbound lookup can start now.
        """
        ...


@dataclass(frozen=True)
class _Grant:
    """What a validated token request resolves to."""

    server_name: str
    access_token: str
    claimed_user_id: str
    delay_id: str
    matrix_room: str
    alias: str
    device_id: str
    member_id: str | None  # None on the legacy endpoint

    def identity(self, user_id: str) -> str:
        """The LiveKit identity of the verified ``user_id``."""
        if self.member_id is None:
            return legacy_participant_identity(user_id, self.device_id)
        return participant_identity(user_id, self.device_id, self.member_id)


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
        metrics: Metrics,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.room_creator = room_creator
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

    def _answer(self, endpoint: str, outcome: str, response: Response) -> Response:
        self.metrics.requests.labels(endpoint, outcome).inc()
        return response

    def _error(self, endpoint: str, outcome: str, error: MatrixError) -> Response:
        headers = {}
        if error.status == 429:
            retry_ms = int(error.extra.get("retry_after_ms", 1000))
            headers["Retry-After"] = str(max(1, math.ceil(retry_ms / 1000)))
        elif error.status == 503:
            headers["Retry-After"] = str(BUSY_RETRY_AFTER_SECONDS)
        return self._answer(endpoint, outcome, _json(error.status, error.body(), headers))

    def _rate_limited(self, wait: float) -> MatrixError:
        return MatrixError(
            429,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
            {"retry_after_ms": retry_after_ms(wait)},
        )

    async def _read_body(self, request: Request) -> bytes:
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
        """``/delegate_delayed_leave``: not offered yet, so 404 (with CORS, for browsers)."""
        if request.method == "OPTIONS":
            return _empty(200, CORS_HEADERS)
        return _json(404, {"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})

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
    def _legacy_grant(body: bytes) -> _Grant:
        req = LegacySfuRequest.parse(body)
        return _Grant(
            server_name=req.openid_token.matrix_server_name,
            access_token=req.openid_token.access_token,
            claimed_user_id="",
            delay_id=req.delay_id,
            matrix_room=req.room,
            alias=legacy_room_alias(req.room),
            device_id=req.device_id,
            member_id=None,
        )

    @staticmethod
    def _grant(body: bytes) -> _Grant:
        req = SfuRequest.parse(body)
        return _Grant(
            server_name=req.openid_token.matrix_server_name,
            access_token=req.openid_token.access_token,
            claimed_user_id=req.member.claimed_user_id,
            delay_id=req.delay_id,
            matrix_room=req.room_id,
            alias=room_alias(req.room_id, req.slot_id),
            device_id=req.member.claimed_device_id,
            member_id=req.member.id,
        )

    async def _token_endpoint(
        self,
        request: Request,
        endpoint: str,
        parse: Callable[[bytes], _Grant],
    ) -> Response:
        if request.method == "OPTIONS":
            return _empty(200, CORS_HEADERS)
        if request.method != "POST":
            headers = {**CORS_HEADERS, "Allow": "POST, OPTIONS"}
            return self._answer(endpoint, "method_not_allowed", _empty(405, headers))
        try:
            return await self._issue(request, endpoint, parse)
        except RequestError as error:
            outcome = "not_json" if error.errcode == "M_NOT_JSON" else "bad_json"
            if isinstance(error, BadJsonError) and error.limit:
                self.metrics.limit_hit(error.limit)
            log.info("%s: refused request from %r: %s", endpoint, self._client(request), error)
            return self._error(endpoint, outcome, error)
        except MatrixError as error:
            outcome = {
                400: "bad_json",
                401: "unauthorized",
                413: "too_large",
                429: "rate_limited",
                503: "busy",
            }.get(error.status, "error")
            return self._error(endpoint, outcome, error)
        except ClientDisconnect:
            return self._answer(endpoint, "disconnected", _empty(400))
        except Exception:
            log.exception("%s: unexpected error", endpoint)
            internal = MatrixError(500, "M_UNKNOWN", "Internal Server Error")
            return self._error(endpoint, "error", internal)

    def _client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(
            peer, request.headers.getlist("x-forwarded-for"), self.settings.trusted_proxies
        )

    async def _issue(
        self,
        request: Request,
        endpoint: str,
        parse: Callable[[bytes], _Grant],
    ) -> Response:
        client = self._client(request)
        wait = self.ip_limiter.acquire(address_bucket(client))
        if wait > 0:
            self.metrics.limit_hit("auth_ip_rate")
            log.info("%s: rate-limiting client %r", endpoint, client)
            raise self._rate_limited(wait)

        grant = parse(await self._read_body(request))

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

        wait = self.user_limiter.acquire(user_id)
        if wait > 0:
            self.metrics.limit_hit("auth_user_rate")
            log.info("%s: rate-limiting user %r", endpoint, user_id)
            raise self._rate_limited(wait)

        full_access = is_full_access(grant.server_name, self.settings.full_access_homeservers)
        if grant.delay_id:
            # Delegation needs the SFU's webhooks and comes later. A 400 M_BAD_JSON makes
            # Element Call retry without the delay parameters, as it does for upstream's
            # refusal of restricted users.
            raise MatrixError(
                400,
                "M_BAD_JSON",
                UNSUPPORTED_DELEGATION if full_access else RESTRICTED_DELEGATION,
            )

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
        jwt = self.minter.join_token(
            grant.alias, identity, int(self._wall_clock()), room_create=full_access
        )

        if full_access:
            try:
                async with asyncio.timeout(ROOM_CREATION_TIMEOUT_SECONDS):
                    await self.room_creator.create_room(CreateRoomRequest(name=grant.alias))
            except Exception as exc:
                log.error("%s: unable to create room %r on the SFU: %r", endpoint, grant.alias, exc)
                raise MatrixError(500, "M_UNKNOWN", "Unable to create room on SFU") from None

        access = "full" if full_access else "restricted"
        self.metrics.tokens_issued.labels(endpoint, access).inc()
        log.info(
            "%s: issued token: user=%r access=%s matrix_room=%r identity=%r room=%r client=%r",
            endpoint,
            user_id,
            access,
            grant.matrix_room,
            identity,
            grant.alias,
            client,
        )
        body = {"url": self.settings.livekit_url, "jwt": jwt}
        return self._answer(endpoint, "ok", _json(200, body))


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
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the service. Anything not given is built from ``settings``."""
    metrics = metrics or Metrics()
    service = TokenService(
        settings,
        verifier=verifier or build_verifier(settings, metrics=metrics),
        room_creator=room_creator or LoggingRoomCreator(),
        metrics=metrics,
        clock=clock,
        wall_clock=wall_clock,
    )
    routes = [
        Route("/sfu/get", _AnyMethod(service.sfu_get)),
        Route("/get_token", _AnyMethod(service.get_token)),
        Route("/delegate_delayed_leave", _AnyMethod(service.delegate_delayed_leave)),
        Route("/healthz", _AnyMethod(service.healthz)),
    ]
    if settings.metrics_enabled:
        routes.append(Route("/metrics", _AnyMethod(service.metrics_endpoint)))
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False
    app.state.service = service
    return app
