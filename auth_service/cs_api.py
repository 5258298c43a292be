"""The homeserver's client-server API, as delayed-leave delegation needs it (MSC4140).

* :class:`CsApiResolver` finds a server name's client-server API base URL:
  ``LIVEKIT_CS_API_URL_OVERRIDES`` first, then a cache (4 h, bounded), then
  ``https://<server_name>/.well-known/matrix/client`` → ``m.homeserver.base_url`` (upstream's
  order). The well-known is fetched under the SSRF policy unless private homeservers are
  allowed, without following redirects, and must name an ``http(s)`` URL.
* :class:`DelayedEvents` POSTs ``{}`` to
  ``{base_url}/_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/{action}``
  (``restart`` or ``send``, unauthenticated as MSC4140 allows, the ``delay_id`` percent-escaped,
  5 s per attempt) and classifies the answer as upstream does: 200 and 204 succeed, as does 404
  on ``send`` (already sent or cancelled); 404 on ``restart`` is :attr:`Outcome.NOT_FOUND`
  (the event is gone); 429 waits for ``Retry-After`` (seconds or an HTTP date) or the body's
  ``retry_after_ms`` (rounded up to whole seconds); 5xx, a hint-less 429, network errors and
  every other status are transient.

The homeserver that discovery names is whoever the well-known says; the SSRF policy applies to
its base URL too, unless it came from the operator's overrides.
"""

from __future__ import annotations

import email.utils
import enum
import json
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

from .matrix import TtlCache, parse_server_name
from .net import (
    AddressPolicy,
    NetError,
    Request,
    Resolver,
    Timeouts,
    http_get,
    is_forbidden_address,
    request_base_url,
)

log = logging.getLogger(__name__)

DELAYED_EVENTS_PATH: Final = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
WELL_KNOWN_CLIENT_PATH: Final = "/.well-known/matrix/client"
CACHE_SECONDS: Final = 4 * 3600.0
MAX_CACHE_ENTRIES: Final = 10_000
WELL_KNOWN_MAX_BYTES: Final = 64 * 1024
ANSWER_MAX_BYTES: Final = 64 * 1024
ACTION_TIMEOUTS: Final = Timeouts(connect=3.0, request=5.0)
WELL_KNOWN_TIMEOUTS: Final = Timeouts(connect=3.0, request=10.0)


class CsApiUnresolvable(Exception):
    """No client-server API URL could be found for a server name."""


class Action(enum.Enum):
    """What can be done to a delayed event on the homeserver's behalf."""

    RESTART = "restart"
    SEND = "send"


class Outcome(enum.Enum):
    """How an attempt ended, for the retry loop."""

    OK = "ok"
    NOT_FOUND = "not_found"
    RETRY_AFTER = "retry_after"
    TRANSIENT = "transient"


@dataclass(frozen=True)
class ActionResult:
    """One attempt's result: the outcome, the HTTP status (0: no answer), a server wait hint."""

    outcome: Outcome
    status: int = 0
    retry_after: float = 0.0
    detail: str = ""


def _retry_after_seconds(headers: Mapping[str, str], body: bytes, now: float) -> float | None:
    value = headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit():
        return float(int(value[:9]))
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return float(max(0, math.floor(when.timestamp() - now)))
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    millis = document.get("retry_after_ms") if isinstance(document, dict) else None
    if isinstance(millis, int) and not isinstance(millis, bool) and millis > 0:
        return float(math.ceil(min(millis, 10**9) / 1000))
    return None


def classify(
    action: Action, status: int, headers: Mapping[str, str], body: bytes, now: float
) -> ActionResult:
    """Upstream's reading of a delayed-event action's HTTP answer."""
    if status in (200, 204) or (status == 404 and action is Action.SEND):
        return ActionResult(Outcome.OK, status)
    if status == 404:
        return ActionResult(Outcome.NOT_FOUND, status, detail="delayed event not found")
    if status == 429:
        wait = _retry_after_seconds(headers, body, now)
        if wait is not None:
            return ActionResult(Outcome.RETRY_AFTER, status, wait, "rate limited")
        return ActionResult(Outcome.TRANSIENT, status, detail="rate limited, no hint")
    return ActionResult(Outcome.TRANSIENT, status, detail=f"HTTP {status}")


def action_path(delay_id: str, action: Action) -> str:
    """The path of ``action`` on ``delay_id``, the ID escaped so it stays one path segment."""
    return f"{DELAYED_EVENTS_PATH}/{quote(delay_id, safe='')}/{action.value}"


def parse_client_well_known(body: bytes) -> str:
    """``m.homeserver.base_url`` of a ``/.well-known/matrix/client`` body, without a trailing
    slash; raises :class:`CsApiUnresolvable` when there is none that is an http(s) URL."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise CsApiUnresolvable("the client well-known is not JSON") from None
    homeserver = document.get("m.homeserver") if isinstance(document, dict) else None
    base_url = homeserver.get("base_url") if isinstance(homeserver, dict) else None
    if not isinstance(base_url, str) or not base_url:
        raise CsApiUnresolvable("the client well-known has no m.homeserver.base_url")
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise CsApiUnresolvable(f"{base_url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise CsApiUnresolvable(f"{base_url!r} is not an http(s) base URL")
    return base_url.rstrip("/")


@dataclass(frozen=True)
class CsApi:
    """A resolved client-server API: its base URL, and whether the operator named it."""

    base_url: str
    trusted: bool


class CsApiResolver:
    """Server name → client-server API base URL (overrides, cache, well-known)."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        tls_context: ssl.SSLContext,
        overrides: Mapping[str, str],
        allow_private: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver = resolver
        self.tls_context = tls_context
        self.overrides = {name: url.rstrip("/") for name, url in overrides.items() if url}
        self.forbidden: AddressPolicy | None = None if allow_private else is_forbidden_address
        self._cache: TtlCache[str, str] = TtlCache(MAX_CACHE_ENTRIES, clock)

    async def resolve(self, server_name: str) -> CsApi:
        """The client-server API of ``server_name``; raises :class:`CsApiUnresolvable`."""
        override = self.overrides.get(server_name)
        if override is not None:
            return CsApi(override, trusted=True)
        cached = self._cache.get(server_name)
        if cached is not None:
            return CsApi(cached, trusted=False)
        try:
            parsed = parse_server_name(server_name)
        except ValueError as exc:
            raise CsApiUnresolvable(str(exc)) from None
        try:
            response = await http_get(
                self.resolver,
                scheme="https",
                host=parsed.bare_host,
                port=parsed.port or 443,
                path=WELL_KNOWN_CLIENT_PATH,
                host_header=server_name,
                tls_server_name=parsed.bare_host,
                tls_context=self.tls_context,
                forbidden=self.forbidden,
                max_body=WELL_KNOWN_MAX_BYTES,
                timeouts=WELL_KNOWN_TIMEOUTS,
            )
        except NetError as exc:
            raise CsApiUnresolvable(f"client well-known of {server_name}: {exc}") from None
        if response.status != 200:
            raise CsApiUnresolvable(f"client well-known of {server_name}: HTTP {response.status}")
        base_url = parse_client_well_known(response.body)
        self._cache.put(server_name, base_url, CACHE_SECONDS)
        return CsApi(base_url, trusted=False)


class DelayedEvents:
    """Restarts and sends delayed events on a homeserver (one attempt per call)."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        tls_context: ssl.SSLContext,
        allow_private: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.tls_context = tls_context
        self.forbidden: AddressPolicy | None = None if allow_private else is_forbidden_address
        self._wall_clock = wall_clock

    async def execute(self, cs_api: CsApi, delay_id: str, action: Action) -> ActionResult:
        """POST ``action`` for ``delay_id``; never raises for network or HTTP failures."""
        request = Request(
            "POST",
            action_path(delay_id, action),
            b"{}",
            (("Content-Type", "application/json"),),
        )
        try:
            response = await request_base_url(
                self.resolver,
                cs_api.base_url,
                request,
                tls_context=self.tls_context,
                forbidden=None if cs_api.trusted else self.forbidden,
                max_body=ANSWER_MAX_BYTES,
                timeouts=ACTION_TIMEOUTS,
            )
        except NetError as exc:
            return ActionResult(Outcome.TRANSIENT, 0, detail=str(exc))
        return classify(
            action, response.status, response.headers, response.body, self._wall_clock()
        )
