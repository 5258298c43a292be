"""The auth service's collaborators built from its `Settings`: the SFU's RoomService client,
delayed-leave delegation, and in application-service mode the homeserver client, membership
and the focus user (`create_app` wires them)."""

from __future__ import annotations

import ssl

from .appservice import SENDER_LOCALPART
from .config import Settings
from .cs_api import CsApiResolver, DelayedEvents
from .delegation import Delegations, ServiceDeps
from .focus import CloseCall, Focus, FocusSettings
from .homeserver import Homeserver
from .job_store import JobStore, RedisJobStore
from .membership import Membership
from .metrics import Metrics
from .net import DnsResolver, Resolver, client_tls_context
from .sfu_client import ParticipantDirectory, TwirpRoomService
from .tokens import TokenMinter

__all__ = [
    "build_delegations",
    "build_focus",
    "build_homeserver",
    "build_membership",
    "build_sfu_client",
]


def build_sfu_client(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> TwirpRoomService:
    """The SFU's RoomService at ``LIVEKIT_SFU_API_URL``, or else the HTTP form of ``LIVEKIT_URL``."""
    return TwirpRoomService(
        settings.sfu_api_url or settings.livekit_url,
        TokenMinter(settings.api_key, settings.api_secret),
        resolver=resolver or DnsResolver(),
        tls_context=tls_context or client_tls_context(verify=not settings.skip_verify_tls),
    )


def build_delegations(
    settings: Settings,
    sfu: ParticipantDirectory,
    *,
    resolver: Resolver | None = None,
    tls_context: ssl.SSLContext | None = None,
    metrics: Metrics | None = None,
    store: JobStore | None = None,
) -> Delegations:
    """Delayed-leave delegation for ``settings`` (Redis when ``LIVEKIT_REDIS_URL`` is set)."""
    resolver = resolver or DnsResolver()
    tls_context = tls_context or client_tls_context(verify=not settings.skip_verify_tls)
    deps = ServiceDeps(
        sfu,
        CsApiResolver(
            resolver,
            tls_context=tls_context,
            overrides=settings.cs_api_url_overrides,
            allow_private=settings.allow_private_homeservers,
        ),
        DelayedEvents(
            resolver, tls_context=tls_context, allow_private=settings.allow_private_homeservers
        ),
    )
    if store is None and settings.redis_url:
        store = RedisJobStore(settings.redis_url)
    return Delegations(
        deps,
        store=store,
        sanity_interval=float(settings.sanity_check_interval_seconds),
        max_jobs=settings.max_delegated_leaves,
        max_jobs_per_user=settings.max_delegated_leaves_per_user,
        metrics=metrics,
    )


def build_homeserver(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    tls_context: ssl.SSLContext | None = None,
    metrics: Metrics | None = None,
) -> Homeserver:
    """The application service's calls to the homeserver ``LIVEKIT_HS_SERVER_NAME``, whose
    client-server API is found as for delegation (``LIVEKIT_CS_API_URL_OVERRIDES``, else its
    ``.well-known/matrix/client``)."""
    resolver = resolver or DnsResolver()
    tls_context = tls_context or client_tls_context(verify=not settings.skip_verify_tls)
    cs_api = CsApiResolver(
        resolver,
        tls_context=tls_context,
        overrides=settings.cs_api_url_overrides,
        allow_private=settings.allow_private_homeservers,
    )
    return Homeserver(
        cs_api,
        settings.hs_server_name,
        settings.as_token,
        resolver=resolver,
        tls_context=tls_context,
        limit_hit=metrics.limit_hit if metrics else lambda _limit: None,
    )


def build_membership(
    settings: Settings,
    sfu: TwirpRoomService,
    homeserver: Homeserver,
    *,
    metrics: Metrics | None = None,
) -> Membership:
    """Membership checks and enforcement through ``homeserver``."""
    return Membership(
        homeserver,
        sfu,
        server_name=settings.hs_server_name,
        limit_hit=metrics.limit_hit if metrics else lambda _limit: None,
    )


def build_focus(
    settings: Settings,
    homeserver: Homeserver,
    *,
    metrics: Metrics | None = None,
    close_call: CloseCall | None = None,
) -> Focus:
    """The focus user: the registration's sender on ``LIVEKIT_HS_SERVER_NAME``; ``close_call``
    ends a room's call on the SFU when the focus leaves it."""
    return Focus(
        homeserver,
        FocusSettings(
            user_id=f"@{SENDER_LOCALPART}:{settings.hs_server_name}",
            empty_call_seconds=float(settings.focus_empty_call_seconds),
            no_call_seconds=float(settings.focus_no_call_seconds),
            join_on_call=settings.focus_join_on_call,
        ),
        limit_hit=metrics.limit_hit if metrics else lambda _limit: None,
        close_call=close_call,
    )
