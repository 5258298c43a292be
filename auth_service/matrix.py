"""Matrix OpenID verification over federation: server discovery, userinfo lookup, caches.

A client proves who it is with an OpenID token from its homeserver. The service asks that
homeserver — named by the token's ``matrix_server_name`` — for
``/_matrix/federation/v1/openid/userinfo`` and gets back ``{"sub": "@user:server"}``.

The homeserver is found with the federation server-discovery rules, as gomatrixserverlib (used by
lk-jwt-service) applies them:

1. an IP literal → that address, with the given port or 8448;
2. a hostname with an explicit port → that host and port;
3. ``https://<name>/.well-known/matrix/server`` → ``m.server``, resolved again by rules 1, 2, 4, 5;
4. SRV ``_matrix-fed._tcp.<name>``, then the legacy ``_matrix._tcp.<name>``;
5. otherwise ``<name>:8448``.

The Host header is the server name (the delegated one after a well-known) and TLS verifies the
certificate for it (for an SRV target, for the server name, not the target). Results are cached;
when every destination of a cached result fails to connect, the name is resolved once more.

Beyond upstream: the SSRF policy of :mod:`auth_service.net` applies to every connection, a
``server name → base URL`` map (``LIVEKIT_AUTH_HOMESERVER_URLS``) short-cuts discovery for private
or test deployments (plain HTTP allowed there), and concurrent lookups of the same token or server
share one request.

Like upstream, every token is checked with its homeserver (an expired token is refused at once);
a result cache exists but is off by default. Because anyone can name any server, outbound work is
bounded: at most ``max_concurrent_lookups`` lookups run at a time (the next one fails at once with
:class:`LookupCapacityError`), and as many again for the operator's own homeservers, so that a
flood of lookups for other servers cannot lock their users out. Another homeserver that could not
be reached is not asked again for ``unreachable_seconds``. Every cache has a maximum size.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from .metrics import Metrics
from .net import (
    AddressPolicy,
    HttpResponse,
    IpAddress,
    NetError,
    Resolver,
    ResponseTooLarge,
    SrvRecord,
    Timeouts,
    http_get,
    is_forbidden_address,
    parse_ip,
)

log = logging.getLogger(__name__)

USERINFO_PATH: Final = "/_matrix/federation/v1/openid/userinfo"
WELL_KNOWN_PATH: Final = "/.well-known/matrix/server"
DEFAULT_FEDERATION_PORT: Final = 8448
WELL_KNOWN_MAX_BYTES: Final = 50 * 1024
USERINFO_MAX_BYTES: Final = 64 * 1024
MAX_SERVER_NAME_LENGTH: Final = 255
MAX_USER_ID_LENGTH: Final = 255
MAX_REDIRECTS: Final = 5
MAX_DISCOVERY_ENTRIES: Final = 10_000
MAX_OPENID_CACHE_ENTRIES: Final = 100_000
MAX_UNREACHABLE_ENTRIES: Final = 10_000
DEFAULT_MAX_CONCURRENT_LOOKUPS: Final = 64
UNREACHABLE_SECONDS: Final = 30.0
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class InvalidServerName(ValueError):
    """Not a Matrix server name (``host[:port]``)."""


class InvalidWellKnown(ValueError):
    """A ``.well-known/matrix/server`` body without a usable ``m.server``."""


class InvalidUserInfo(ValueError):
    """A userinfo answer that does not name a user of the expected server."""


class OpenIdError(Exception):
    """The OpenID token could not be verified; ``str()`` says why (for logs only)."""


class LookupCapacityError(Exception):
    """Every outbound lookup slot is taken; the request should be retried later (503)."""


# --- server names ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerName:
    """A parsed server name: ``host`` as written (IPv6 in brackets), optional ``port``."""

    host: str
    port: int | None
    ip: IpAddress | None

    @property
    def bare_host(self) -> str:
        """The host without IPv6 brackets, for connecting and for TLS."""
        return str(self.ip) if self.ip is not None else self.host


def _is_dns_name(host: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "-.") for c in host)


def parse_server_name(name: str) -> ServerName:
    """Parse and validate a server name the way gomatrixserverlib does."""
    if not name or len(name) > MAX_SERVER_NAME_LENGTH:
        raise InvalidServerName(f"invalid server name length: {len(name)}")
    host, port = name, None
    head, sep, tail = name.rpartition(":")
    if sep and tail.isascii() and tail.isdigit() and int(tail) <= 65535:
        host, port = head, int(tail)
    if not host:
        raise InvalidServerName(f"no host in server name {name!r}")
    if host.startswith("["):
        ip = parse_ip(host) if host.endswith("]") else None
        if ip is None or ip.version != 6:
            raise InvalidServerName(f"invalid IPv6 literal in server name {name!r}")
        return ServerName(host, port, ip)
    ip = parse_ip(host)
    if ip is not None and ip.version == 4:
        return ServerName(host, port, ip)
    if not _is_dns_name(host):
        raise InvalidServerName(f"invalid host in server name {name!r}")
    return ServerName(host, port, None)


def parse_well_known(body: bytes) -> str:
    """The delegated server name of a ``/.well-known/matrix/server`` body."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidWellKnown(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidWellKnown("not a JSON object")
    delegated = document.get("m.server")
    if not isinstance(delegated, str) or not delegated:
        raise InvalidWellKnown("no m.server string")
    try:
        parse_server_name(delegated)
    except InvalidServerName as exc:
        raise InvalidWellKnown(str(exc)) from None
    return delegated


def parse_userinfo(body: bytes, server_name: str) -> str:
    """The ``sub`` of a userinfo answer, checked to be a user of ``server_name``."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidUserInfo(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidUserInfo("not a JSON object")
    sub = document.get("sub")
    if not isinstance(sub, str):
        raise InvalidUserInfo("no sub string")
    _localpart, sep, server = sub.partition(":")
    if not sep or server != server_name:
        raise InvalidUserInfo(f"user {sub!r} does not belong to {server_name!r}")
    # Beyond upstream: a user ID, short and printable ASCII, so tokens stay ASCII.
    if not sub.startswith("@") or len(sub) > MAX_USER_ID_LENGTH:
        raise InvalidUserInfo(f"{sub!r} is not a user ID")
    if not all("!" <= c <= "~" for c in sub):
        raise InvalidUserInfo(f"{sub!r} has characters outside printable ASCII")
    return sub


# --- caching helpers -------------------------------------------------------------------------


class TtlCache(Generic[_K, _V]):
    """A size-bounded mapping whose entries expire."""

    def __init__(
        self,
        max_entries: int,
        clock: Callable[[], float],
        on_full: Callable[[], None] | None = None,
    ) -> None:
        self._entries: dict[_K, tuple[float, _V]] = {}
        self._max_entries = max_entries
        self._clock = clock
        self._on_full = on_full

    def get(self, key: _K) -> _V | None:
        """The live value of ``key``, if any."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: _K, value: _V, ttl: float) -> None:
        """Remember ``value`` for ``ttl`` seconds (not at all if ``ttl <= 0``)."""
        if ttl <= 0:
            return
        now = self._clock()
        self._entries.pop(key, None)
        self._entries[key] = (now + ttl, value)
        if len(self._entries) > self._max_entries:
            if self._on_full is not None:
                self._on_full()
            # Prune to 90 % so that a full cache is not rebuilt on every insertion.
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            excess = len(self._entries) - self._max_entries * 9 // 10
            for stale in list(self._entries)[: max(excess, 0)]:
                del self._entries[stale]

    def discard(self, key: _K) -> None:
        """Forget ``key``."""
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class SingleFlight(Generic[_K, _V]):
    """Concurrent calls with one key share one running coroutine.

    A waiter that is cancelled does not cancel the call the others wait for; when the last
    waiter is cancelled, the call is cancelled too, so no lookup outlives everyone who wanted it
    (and its sockets close).
    """

    def __init__(self) -> None:
        self._running: dict[_K, asyncio.Future[_V]] = {}
        self._keys: dict[asyncio.Future[_V], _K] = {}
        self._waiters: dict[asyncio.Future[_V], int] = {}

    def running(self, key: _K) -> asyncio.Future[_V] | None:
        """The call running for ``key``, if any."""
        return self._running.get(key)

    def start(self, key: _K, factory: Callable[[], Awaitable[_V]]) -> asyncio.Future[_V]:
        """The running call for ``key``, or ``factory()`` started as that call."""
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(factory())
            self._running[key] = future
            self._keys[future] = key
            future.add_done_callback(lambda done: self._finished(key, done))
        return future

    async def wait(self, future: asyncio.Future[_V]) -> _V:
        """Await ``future`` (from :meth:`start`) as one of its waiters."""
        self._waiters[future] = self._waiters.get(future, 0) + 1
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if self._waiters[future] == 1 and not future.done():
                # Nobody else wants it: cancel it, and let the next caller start afresh.
                key = self._keys.get(future)
                if key is not None and self._running.get(key) is future:
                    del self._running[key]
                future.cancel()
            raise
        finally:
            left = self._waiters[future] - 1
            if left:
                self._waiters[future] = left
            else:
                del self._waiters[future]

    async def run(self, key: _K, factory: Callable[[], Awaitable[_V]]) -> _V:
        """Await the running call for ``key``, or start ``factory()`` as that call."""
        return await self.wait(self.start(key, factory))

    def __len__(self) -> int:
        return len(self._running)

    def _finished(self, key: _K, future: asyncio.Future[_V]) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        self._keys.pop(future, None)
        if not future.cancelled():
            future.exception()  # retrieved, so asyncio does not warn when nobody awaits it


# --- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where to send a federation request for a server name."""

    host: str
    port: int
    host_header: str
    tls_server_name: str


def order_srv(records: list[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority, weighted random order within a priority."""
    rng = rng or random.Random()
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        group = [record for record in records if record.priority == priority]
        while group:
            total = sum(record.weight for record in group)
            pick = rng.uniform(0, total) if total > 0 else 0.0
            index = 0
            for index, record in enumerate(group):  # noqa: B007 - index is used after the loop
                pick -= record.weight
                if pick <= 0:
                    break
            ordered.append(group.pop(index))
    return ordered


class FederationDiscovery:
    """Resolves server names to federation destinations, with a TTL cache."""

    def __init__(
        self,
        resolver: Resolver,
        *,
        tls_context: ssl.SSLContext,
        allow_private: bool = False,
        address_policy: AddressPolicy = is_forbidden_address,
        timeouts: Timeouts | None = None,
        cache_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        well_known_port: int = 443,
        default_port: int = DEFAULT_FEDERATION_PORT,
        metrics: Metrics | None = None,
    ) -> None:
        self.resolver = resolver
        self.tls_context = tls_context
        self.forbidden: AddressPolicy | None = None if allow_private else address_policy
        self.timeouts = timeouts or Timeouts()
        self.cache_seconds = cache_seconds
        self.well_known_port = well_known_port
        self.default_port = default_port
        self._metrics = metrics
        self._cache: TtlCache[str, tuple[Destination, ...]] = TtlCache(
            MAX_DISCOVERY_ENTRIES, clock, lambda: self._limit_hit("auth_discovery_cache")
        )
        # Bounded by the verifier's lookup slots: discovery runs only inside a lookup.
        self._flight: SingleFlight[str, tuple[Destination, ...]] = SingleFlight()

    def _limit_hit(self, name: str) -> None:
        if self._metrics:
            self._metrics.limit_hit(name)

    async def resolve(self, server_name: str) -> tuple[tuple[Destination, ...], bool]:
        """The destinations of ``server_name`` and whether they came from the cache."""
        cached = self._cache.get(server_name)
        if cached is not None:
            if self._metrics:
                self._metrics.discovery.labels("hit").inc()
            return cached, True
        destinations = await self._flight.run(server_name, lambda: self._resolve(server_name))
        return destinations, False

    def forget(self, server_name: str) -> None:
        """Drop the cached result for ``server_name``."""
        self._cache.discard(server_name)

    async def _resolve(self, server_name: str) -> tuple[Destination, ...]:
        parsed = parse_server_name(server_name)
        destinations = await self._resolve_parsed(server_name, parsed, check_well_known=True)
        if self._metrics:
            self._metrics.discovery.labels("resolved").inc()
        log.debug("resolved %s to %s", server_name, destinations)
        self._cache.put(server_name, destinations, self.cache_seconds)
        return destinations

    async def _resolve_parsed(
        self, server_name: str, parsed: ServerName, *, check_well_known: bool
    ) -> tuple[Destination, ...]:
        if parsed.ip is not None:
            port = parsed.port if parsed.port is not None else self.default_port
            return (Destination(parsed.bare_host, port, server_name, parsed.bare_host),)
        if parsed.port is not None:
            return (Destination(parsed.host, parsed.port, server_name, parsed.host),)
        if check_well_known:
            delegated = await self._well_known(parsed.host)
            if delegated is not None:
                log.debug("%s delegates federation to %s", server_name, delegated)
                return await self._resolve_parsed(
                    delegated, parse_server_name(delegated), check_well_known=False
                )
        return await self._srv_destinations(server_name)

    async def _srv_destinations(self, server_name: str) -> tuple[Destination, ...]:
        records: list[SrvRecord] = []
        try:
            records = await self.resolver.resolve_srv(f"_matrix-fed._tcp.{server_name}")
            if not records:
                records = await self.resolver.resolve_srv(f"_matrix._tcp.{server_name}")
        except NetError as exc:
            log.debug("SRV lookup for %s failed: %r", server_name, str(exc))
            records = []
        if records:
            usable = [r for r in records if r.target.rstrip(".") and 0 < r.port <= 65535]
            if not usable:
                raise NetError(f"SRV records say {server_name} offers no federation service")
            return tuple(
                Destination(r.target.rstrip("."), r.port, server_name, server_name)
                for r in order_srv(usable)
            )
        return (Destination(server_name, self.default_port, server_name, server_name),)

    async def _well_known(self, host: str) -> str | None:
        """The ``m.server`` of ``host``'s well-known, or None when there is no usable one."""
        scheme, target_host, port, path = "https", host, self.well_known_port, WELL_KNOWN_PATH
        host_header = host
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = await http_get(
                    self.resolver,
                    scheme=scheme,
                    host=target_host,
                    port=port,
                    path=path,
                    host_header=host_header,
                    tls_server_name=target_host,
                    tls_context=self.tls_context,
                    forbidden=self.forbidden,
                    max_body=WELL_KNOWN_MAX_BYTES,
                    timeouts=self.timeouts,
                )
            except NetError as exc:
                if isinstance(exc, ResponseTooLarge):
                    self._limit_hit("auth_homeserver_response")
                log.debug("no well-known for %s: %r", host, str(exc))
                return None
            if response.status in _REDIRECT_STATUSES:
                location = _redirect_target(response, f"https://{host_header}{path}")
                if location is None:
                    return None
                target_host, port, path, host_header = location
                continue
            if response.status != 200:
                return None
            try:
                return parse_well_known(response.body)
            except InvalidWellKnown as exc:
                log.debug("ignoring the well-known of %s: %r", host, str(exc))
                return None
        self._limit_hit("auth_well_known_redirects")
        log.debug("the well-known of %s redirects more than %d times", host, MAX_REDIRECTS)
        return None


def _redirect_target(response: HttpResponse, base: str) -> tuple[str, int, str, str] | None:
    """Host, port, path and Host header of an HTTPS redirect, or None if it is not usable."""
    location = response.headers.get("location", "")
    if not location:
        return None
    try:
        parts = urlsplit(urljoin(base, location))
        port = parts.port or 443
    except ValueError:
        return None
    if parts.scheme != "https" or not parts.hostname:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, path, parts.netloc.rpartition("@")[2]


# --- OpenID verification ---------------------------------------------------------------------


class OpenIdVerifier:
    """Exchanges OpenID tokens for Matrix user IDs (``sub``), with bounded outbound work.

    ``cache_seconds`` > 0 remembers verified tokens that long (off by default: like upstream,
    each request asks the homeserver, so a token it expired is refused at once). Concurrent
    requests with the same token share one lookup. At most ``max_concurrent_lookups`` lookups
    run at once; beyond that :meth:`verify` raises :class:`LookupCapacityError` without waiting.
    Lookups for ``reserved_servers`` (the operator's own homeservers) count in a pool of the same
    size of their own, so lookups for everyone else cannot use up their slots.
    A server name whose homeserver could not be reached (network error or time-out, not a
    refused token) is refused without a lookup for ``unreachable_seconds``, unless it is one of
    the operator's (``reserved_servers`` or ``homeserver_urls``).
    """

    def __init__(
        self,
        discovery: FederationDiscovery,
        *,
        homeserver_urls: Mapping[str, str] | None = None,
        total_timeout: float = 10.0,
        cache_seconds: float = 0.0,
        max_concurrent_lookups: int = DEFAULT_MAX_CONCURRENT_LOOKUPS,
        reserved_servers: Iterable[str] = (),
        unreachable_seconds: float = UNREACHABLE_SECONDS,
        max_unreachable_entries: int = MAX_UNREACHABLE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.discovery = discovery
        self.homeserver_urls = dict(homeserver_urls or {})
        self.total_timeout = total_timeout
        self.cache_seconds = cache_seconds
        self.max_concurrent_lookups = max_concurrent_lookups
        self.unreachable_seconds = unreachable_seconds
        self._clock = clock
        self._metrics = metrics
        self._cache: TtlCache[tuple[str, bytes], str] = TtlCache(
            MAX_OPENID_CACHE_ENTRIES, clock, lambda: self._limit_hit("auth_openid_cache")
        )
        self._unreachable: TtlCache[str, str] = TtlCache(
            max_unreachable_entries, clock, lambda: self._limit_hit("auth_unreachable_cache")
        )
        self._flight: SingleFlight[tuple[str, bytes], str] = SingleFlight()
        self.reserved_servers = frozenset(reserved_servers)
        self._lookups = 0  # for any server
        self._reserved_lookups = 0  # for reserved_servers

    def _limit_hit(self, name: str) -> None:
        if self._metrics:
            self._metrics.limit_hit(name)

    @property
    def lookups_in_progress(self) -> int:
        """Outbound lookups running now (at most ``max_concurrent_lookups`` per pool)."""
        return self._lookups + self._reserved_lookups

    def unreachable_count(self) -> int:
        """Server names remembered as unreachable."""
        return len(self._unreachable)

    async def verify(self, server_name: str, access_token: str) -> str:
        """The user the token belongs to; raises :class:`OpenIdError` if it cannot be verified.

        Raises :class:`LookupCapacityError` when every lookup slot is taken.
        """
        key = (server_name, hashlib.sha256(access_token.encode("utf-8", "replace")).digest())
        if self.cache_seconds > 0:
            cached = self._cache.get(key)
            if cached is not None:
                if self._metrics:
                    self._metrics.openid_cache.labels("hit").inc()
                return cached
            if self._metrics:
                self._metrics.openid_cache.labels("miss").inc()
        reason = self._unreachable.get(server_name)
        if reason is not None:
            raise OpenIdError(f"{server_name} was unreachable recently: {reason}")
        future = self._flight.running(key)
        if future is None:
            reserved = server_name in self.reserved_servers
            running = self._reserved_lookups if reserved else self._lookups
            if running >= self.max_concurrent_lookups:
                self._limit_hit("auth_homeserver_lookups")
                raise LookupCapacityError(f"{running} homeserver lookups in progress")
            if reserved:
                self._reserved_lookups += 1
            else:
                self._lookups += 1
            future = self._flight.start(key, lambda: self._lookup(key, server_name, access_token))
            future.add_done_callback(
                self._release_reserved_slot if reserved else self._release_slot
            )
        return await self._flight.wait(future)

    def _release_slot(self, _future: asyncio.Future[str]) -> None:
        self._lookups -= 1

    def _release_reserved_slot(self, _future: asyncio.Future[str]) -> None:
        self._reserved_lookups -= 1

    def _mark_unreachable(self, server_name: str, reason: str) -> None:
        if server_name in self.homeserver_urls or server_name in self.reserved_servers:
            return  # the operator's own servers: a blip must not lock their users out
        self._unreachable.put(server_name, reason, self.unreachable_seconds)

    async def _lookup(self, key: tuple[str, bytes], server_name: str, access_token: str) -> str:
        started = self._clock()
        result = "error"
        try:
            async with asyncio.timeout(self.total_timeout):
                sub = await self._userinfo(server_name, access_token)
            result = "ok"
        except TimeoutError:
            self._mark_unreachable(server_name, "timed out")
            raise OpenIdError(f"OpenID lookup at {server_name} timed out") from None
        except NetError as exc:
            if isinstance(exc, ResponseTooLarge):
                self._limit_hit("auth_homeserver_response")
            self._mark_unreachable(server_name, str(exc))
            raise OpenIdError(f"OpenID lookup at {server_name} failed: {exc}") from None
        except (InvalidServerName, InvalidUserInfo) as exc:
            raise OpenIdError(f"OpenID lookup at {server_name} failed: {exc}") from None
        except Exception as exc:
            # Like upstream, any failure to verify is a 401; log it loudly, it is a bug.
            log.exception("unexpected error during the OpenID lookup at %s", server_name)
            raise OpenIdError(f"OpenID lookup at {server_name} failed: {exc!r}") from None
        finally:
            if self._metrics:
                self._metrics.openid_lookup_seconds.labels(result).observe(self._clock() - started)
        self._cache.put(key, sub, self.cache_seconds)
        return sub

    async def _userinfo(self, server_name: str, access_token: str) -> str:
        query = urlencode({"access_token": access_token})
        base_url = self.homeserver_urls.get(server_name)
        if base_url is not None:
            response = await self._get_override(base_url, f"{USERINFO_PATH}?{query}")
        else:
            parse_server_name(server_name)
            response = await self._get_federation(server_name, f"{USERINFO_PATH}?{query}")
        if not 200 <= response.status < 300:
            # The homeserver answered: the token is refused, the server is not unreachable.
            raise InvalidUserInfo(f"userinfo answered HTTP {response.status}")
        return parse_userinfo(response.body, server_name)

    async def _get_override(self, base_url: str, path: str) -> HttpResponse:
        parts = urlsplit(base_url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or ""
        return await http_get(
            self.discovery.resolver,
            scheme=scheme,
            host=host,
            port=port,
            path=parts.path.rstrip("/") + path,
            host_header=parts.netloc.rpartition("@")[2],
            tls_server_name=host,
            tls_context=self.discovery.tls_context,
            forbidden=None,  # the operator named this URL
            max_body=USERINFO_MAX_BYTES,
            timeouts=self.discovery.timeouts,
        )

    async def _get_federation(self, server_name: str, path: str) -> HttpResponse:
        for attempt in range(2):
            destinations, cached = await self.discovery.resolve(server_name)
            errors: list[str] = []
            for destination in destinations:
                try:
                    return await http_get(
                        self.discovery.resolver,
                        scheme="https",
                        host=destination.host,
                        port=destination.port,
                        path=path,
                        host_header=destination.host_header,
                        tls_server_name=destination.tls_server_name,
                        tls_context=self.discovery.tls_context,
                        forbidden=self.discovery.forbidden,
                        max_body=USERINFO_MAX_BYTES,
                        timeouts=self.discovery.timeouts,
                    )
                except NetError as exc:
                    if isinstance(exc, ResponseTooLarge):
                        self._limit_hit("auth_homeserver_response")
                    errors.append(str(exc))
            self.discovery.forget(server_name)
            if not cached or attempt == 1:
                raise NetError("; ".join(errors) or f"no destination for {server_name}")
            log.debug("cached destinations of %s failed; resolving again", server_name)
        raise NetError(f"no destination for {server_name}")  # pragma: no cover - loop returns
