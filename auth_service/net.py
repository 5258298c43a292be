"""Outbound network of the auth service: DNS, the SSRF address policy, guarded HTTP requests.

The server name in an OpenID token is chosen by whoever sends the request, so every connection
the service makes goes through :func:`http_request` (:func:`http_get` for GETs), which

* resolves the host with an injectable :class:`Resolver` (tests supply their own DNS answers);
* refuses addresses that are not globally routable — loopback, private, shared (CGNAT),
  link-local, multicast, reserved, unspecified, and IPv6 forms that embed such an IPv4 address —
  unless the caller allows private targets;
* connects to an address it checked (no second lookup that could answer differently), sends the
  Host header and TLS server name it was given, and reads at most ``max_body`` bytes;
* keeps each step under a timeout and never follows redirects itself.

HTTP/1.1 is spoken with ``h11``; one connection per request (``Connection: close``), so a
connection made for one TLS server name is never reused for another.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.rdtypes.IN.SRV
import dns.resolver
import h11

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

USER_AGENT: Final = "matrix-sfu-auth"
MAX_ADDRESSES_TRIED: Final = 3

_SHARED_ADDRESS_SPACE: Final = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64_PREFIXES: Final = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


class NetError(Exception):
    """A lookup, connection or HTTP exchange failed."""


class ResponseTooLarge(NetError):
    """An answer was larger than the caller's ``max_body``."""


class ForbiddenAddressError(NetError):
    """Every address of a target is refused by the SSRF policy."""


class ConnectError(NetError):
    """No connection could be made (refused, unreachable, TLS failure, timeout)."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    for prefix in _NAT64_PREFIXES:
        if address in prefix:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_forbidden_address(address: IpAddress) -> bool:
    """Whether the SSRF policy refuses ``address`` (anything not public unicast)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and is_forbidden_address(embedded):
            return True
        if address.scope_id:
            return True
    if address.is_multicast or address.is_unspecified or address.is_loopback:
        return True
    if address.is_link_local or address.is_private or address.is_reserved:
        return True
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return True
    return not address.is_global


def parse_ip(host: str) -> IpAddress | None:
    """``host`` as an IP address (brackets allowed for IPv6), or None for a hostname."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class SrvRecord:
    """One DNS SRV answer."""

    priority: int
    weight: int
    port: int
    target: str


class Resolver(Protocol):
    """DNS as the auth service needs it; tests inject their own answers."""

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        """SRV records of ``name``; ``[]`` if the name or record does not exist.

        Raises :class:`NetError` when the answer could not be had (timeout, server failure).
        """
        ...

    async def resolve_addresses(self, host: str) -> list[IpAddress]:
        """The IPv4/IPv6 addresses of ``host``; raises :class:`NetError` when there are none."""
        ...


class DnsResolver:
    """The system resolver for addresses (``/etc/hosts`` included), dnspython for SRV."""

    def __init__(self, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self._dns: dns.asyncresolver.Resolver | None = None

    def _resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            try:
                self._dns = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise NetError(f"no DNS resolver configured: {exc}") from None
            self._dns.lifetime = self.timeout
        return self._dns

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        """SRV lookup; NXDOMAIN and empty answers are ``[]``."""
        try:
            answer = await self._resolver().resolve(name, "SRV", lifetime=self.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise NetError(f"SRV lookup of {name} failed: {exc}") from None
        records = []
        for rdata in answer:
            if not isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
                continue
            records.append(
                SrvRecord(rdata.priority, rdata.weight, rdata.port, rdata.target.to_text())
            )
        return records

    async def resolve_addresses(self, host: str) -> list[IpAddress]:
        """``getaddrinfo`` with a timeout."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(
                    host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise NetError(f"cannot resolve {host}: {exc or 'timeout'}") from None
        addresses: list[IpAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise NetError(f"{host} has no addresses")
        return addresses


@dataclass(frozen=True)
class HttpResponse:
    """A complete HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Timeouts:
    """Limits of one outbound request: connecting (per address) and the whole exchange."""

    connect: float = 3.0
    request: float = 5.0


AddressPolicy = Callable[[IpAddress], bool]
"""Answers whether an address is forbidden; :func:`is_forbidden_address` is the real one."""


async def _allowed_addresses(
    resolver: Resolver, host: str, forbidden: AddressPolicy | None
) -> list[IpAddress]:
    literal = parse_ip(host)
    addresses = [literal] if literal is not None else await resolver.resolve_addresses(host)
    if forbidden is None:
        return addresses
    allowed = [address for address in addresses if not forbidden(address)]
    if not allowed:
        raise ForbiddenAddressError(f"{host} resolves only to non-public addresses")
    return allowed


async def _open(
    addresses: Sequence[IpAddress],
    port: int,
    tls: ssl.SSLContext | None,
    tls_server_name: str,
    connect_timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    errors: list[str] = []
    for address in addresses[:MAX_ADDRESSES_TRIED]:
        try:
            async with asyncio.timeout(connect_timeout):
                return await asyncio.open_connection(
                    str(address),
                    port,
                    ssl=tls,
                    server_hostname=tls_server_name if tls is not None else None,
                    ssl_handshake_timeout=connect_timeout if tls is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            errors.append(f"{address}:{port}: {exc or type(exc).__name__}")
    raise ConnectError("; ".join(errors) or "no address to connect to")


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: Request,
    host_header: str,
    max_body: int,
) -> HttpResponse:
    connection = h11.Connection(our_role=h11.CLIENT)
    sent = [
        ("Host", host_header),
        ("User-Agent", USER_AGENT),
        ("Accept", request.accept),
        ("Connection", "close"),
        *request.headers,
    ]
    if request.method != "GET":
        sent.append(("Content-Length", str(len(request.body))))
    head = h11.Request(method=request.method, target=request.path, headers=sent)
    data = connection.send(head) or b""
    if request.body:
        data += connection.send(h11.Data(data=request.body)) or b""
    writer.write(data + (connection.send(h11.EndOfMessage()) or b""))
    await writer.drain()
    status = 0
    headers: dict[str, str] = {}
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in event.headers
            }
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > max_body:
                raise ResponseTooLarge(f"response of {length} bytes is larger than {max_body}")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise ResponseTooLarge(f"response is larger than {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return HttpResponse(status, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise NetError("connection closed before the response was complete")
        # h11.InformationalResponse (1xx) carries nothing we need.


@dataclass(frozen=True)
class Request:
    """What :func:`http_request` sends: a method, a path (with query) and, but for GET, a body."""

    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    accept: str = "application/json"


async def http_get(
    resolver: Resolver,
    *,
    scheme: str,
    host: str,
    port: int,
    path: str,
    host_header: str,
    tls_server_name: str,
    tls_context: ssl.SSLContext,
    forbidden: AddressPolicy | None,
    max_body: int,
    timeouts: Timeouts,
) -> HttpResponse:
    """GET ``path`` from ``host:port``: :func:`http_request` with a GET."""
    return await http_request(
        resolver,
        Request("GET", path),
        scheme=scheme,
        host=host,
        port=port,
        host_header=host_header,
        tls_server_name=tls_server_name,
        tls_context=tls_context,
        forbidden=forbidden,
        max_body=max_body,
        timeouts=timeouts,
    )


async def http_request(
    resolver: Resolver,
    request: Request,
    *,
    scheme: str,
    host: str,
    port: int,
    host_header: str,
    tls_server_name: str,
    tls_context: ssl.SSLContext,
    forbidden: AddressPolicy | None,
    max_body: int,
    timeouts: Timeouts,
) -> HttpResponse:
    """Send ``request`` to ``host:port`` under the SSRF policy; see the module docstring.

    ``forbidden`` decides which resolved addresses must not be contacted (None: any may be).

    Raises :class:`ForbiddenAddressError` or :class:`ConnectError` when nothing was sent (the
    caller may try another destination) and :class:`NetError` for everything else.
    """
    path = request.path
    if scheme not in ("http", "https"):
        raise NetError(f"unsupported scheme {scheme!r}")
    try:
        async with asyncio.timeout(timeouts.request):
            addresses = await _allowed_addresses(resolver, host, forbidden)
            tls = tls_context if scheme == "https" else None
            reader, writer = await _open(addresses, port, tls, tls_server_name, timeouts.connect)
            try:
                return await _exchange(reader, writer, request, host_header, max_body)
            finally:
                writer.transport.abort()
    except TimeoutError:
        raise NetError(f"{scheme}://{host}:{port}{path.split('?', 1)[0]} timed out") from None
    except h11.ProtocolError as exc:
        raise NetError(f"invalid HTTP from {host}:{port}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise NetError(f"{host}:{port}: {exc}") from None


def client_tls_context(*, verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    """A TLS client context: verifying (system CAs, or ``cafile``) or, if asked, not at all."""
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


async def request_base_url(
    resolver: Resolver,
    base_url: str,
    request: Request,
    *,
    tls_context: ssl.SSLContext,
    forbidden: AddressPolicy | None,
    max_body: int,
    timeouts: Timeouts,
) -> HttpResponse:
    """Send ``request`` to the server of ``base_url`` (``http(s)://host[:port][/prefix]``), its
    path appended to the URL's; raises :class:`NetError` as :func:`http_request` does."""
    try:
        parts = urlsplit(base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise NetError(f"{base_url!r} is not a valid URL") from None
    host = parts.hostname or ""
    if not host:
        raise NetError(f"{base_url!r} has no host")
    prefixed = Request(
        request.method,
        parts.path.rstrip("/") + request.path,
        request.body,
        request.headers,
        request.accept,
    )
    return await http_request(
        resolver,
        prefixed,
        scheme=parts.scheme,
        host=host,
        port=port,
        host_header=parts.netloc.rpartition("@")[2],
        tls_server_name=host,
        tls_context=tls_context,
        forbidden=forbidden,
        max_body=max_body,
        timeouts=timeouts,
    )
