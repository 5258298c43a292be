"""ICE plumbing on top of aioice: host candidates on chosen addresses and ports, remote candidates.

This module owns the two places where the SFU steps around aioice's defaults:

* gathering: aioice binds one ephemeral port per non-loopback interface.  The SFU binds one UDP
  socket per configured bind address, inside `port_range_start..port_range_end` — or, with
  `rtc.udp_port`, shares one socket per bind address with every other connection
  (`sfu.media.transport.udpmux`) — and advertises `node_ip` (LiveKit's `rtc.node_ip`) instead of the
  bound address when set;
* remote candidates: a browser's `RTCIceCandidateInit` JSON is validated here.  mDNS (`.local`)
  candidates are dropped rather than resolved (the SFU has no multicast; Chrome's connectivity
  checks reach us anyway and become peer-reflexive candidates), as are TCP and RTCP (component 2)
  candidates, since the SFU uses UDP with rtcp-mux only;
* what a remote peer may make the SFU do: `CandidatePolicy` refuses candidate addresses the SFU
  must never send STUN to (unspecified, multicast, broadcast, link-local such as a cloud
  metadata address, reserved), loopback unless the SFU itself advertises a loopback address, and
  private ranges (RFC 1918, CGNAT, ULA) unless it advertises one or `rtc.allow_private_candidates`
  is set; a peer connection takes at most `MAX_REMOTE_CANDIDATES` signalled ones, and learns
  peer-reflexive ones only while it knows fewer (aioice pairs each one in time linear in those
  before it, and checks each);
* the receive queue: aioice queues every non-STUN datagram for the DTLS transport in an
  unbounded `asyncio.Queue`, read only once DTLS runs.  `bound_receive_queue` replaces it with
  `DatagramQueue`, which holds at most `MAX_QUEUED_BYTES` and only what may be DTLS or SRTP
  (RFC 7983 §7).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import random
import socket
from dataclasses import dataclass
from typing import Any

from aioice import Candidate
from aioice.candidate import candidate_foundation
from aioice.ice import get_host_addresses

from sfu.media.transport.ingress import GuardedStunProtocol
from sfu.media.transport.sockbuf import size_buffers
from sfu.media.transport.udpmux import open_mux
from sfu.metrics import COUNTERS

__all__ = [
    "MAX_QUEUED_BYTES",
    "MAX_REMOTE_CANDIDATES",
    "CandidatePolicy",
    "DatagramQueue",
    "HostCandidates",
    "advertised_addresses",
    "bound_peer_reflexive",
    "bound_receive_queue",
    "gather_host_candidates",
    "parse_candidate_init",
]

logger = logging.getLogger(__name__)

_HOST_TYPE_PREFERENCE = 126
#: remote candidates one peer connection takes, from SDP and trickle together
MAX_REMOTE_CANDIDATES = 64
#: bytes of datagrams waiting for the DTLS transport (it reads them as they come once it runs)
MAX_QUEUED_BYTES = 256 * 1024
_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _scope(address: _IPAddress) -> str:
    """ "unusable", "loopback", "private" or "global" (anything else may be a peer's address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "loopback"
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_link_local
        or address.is_reserved
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        return "unusable"
    if any(address in network for network in _PRIVATE_NETWORKS):
        return "private"
    return "global"


@dataclass(frozen=True)
class CandidatePolicy:
    """Which remote candidate addresses a peer connection sends connectivity checks to."""

    allow_loopback: bool = False
    allow_private: bool = False

    @classmethod
    def for_addresses(cls, advertised: list[str], allow_private: bool) -> CandidatePolicy:
        """The policy of an SFU advertising `advertised`: a peer may name addresses of the
        kinds the SFU itself is reachable on."""
        scopes = {_scope(ipaddress.ip_address(a)) for a in advertised}
        return cls("loopback" in scopes, allow_private or "private" in scopes)

    def refusal(self, host: str) -> str | None:
        """Why a candidate at `host` (an IP address) is refused, or None if it is allowed."""
        scope = _scope(ipaddress.ip_address(host))
        if scope == "unusable":
            return "unspecified, multicast, broadcast, link-local or reserved address"
        if scope == "loopback" and not self.allow_loopback:
            return "loopback address (the SFU does not advertise one)"
        if scope == "private" and not self.allow_private:
            return "private address (rtc.allow_private_candidates is off)"
        return None


class DatagramQueue(asyncio.Queue[tuple[bytes, int] | None]):
    """aioice's receive queue with a bound: datagrams over `MAX_QUEUED_BYTES`, and those that are
    neither DTLS (first byte 20-63) nor SRTP/SRTCP (128-191), are dropped; the end-of-stream
    marker (None) always gets in."""

    def __init__(self) -> None:
        super().__init__()
        self.queued_bytes = 0
        self.dropped = 0

    def put_nowait(self, item: tuple[bytes, int] | None) -> None:
        if item is not None:
            first = item[0][0] if item[0] else 0
            if not (19 < first < 64 or 127 < first < 192):
                self.dropped += 1
                return
            if self.queued_bytes + len(item[0]) > MAX_QUEUED_BYTES:
                self.dropped += 1
                COUNTERS.limit_exceeded("ice_receive_queue")
                return
        super().put_nowait(item)

    def _put(self, item: tuple[bytes, int] | None) -> None:
        if item is not None:
            self.queued_bytes += len(item[0])
        super()._put(item)

    def _get(self) -> tuple[bytes, int] | None:
        item: tuple[bytes, int] | None = super()._get()
        if item is not None:
            self.queued_bytes -= len(item[0])
        return item


def bound_receive_queue(connection: Any) -> DatagramQueue:
    """Give an aioice `Connection` (before it receives anything) a `DatagramQueue`."""
    queue = DatagramQueue()
    connection._queue = queue
    return queue


def bound_peer_reflexive(connection: Any) -> None:
    """Stop an aioice `Connection` learning peer-reflexive candidates (from authenticated checks
    arriving from new source addresses, RFC 8445 §7.3.1.3) once it knows
    `MAX_REMOTE_CANDIDATES` remote candidates: aioice pairs and checks each one it learns."""
    check_incoming = connection.check_incoming

    def guarded(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        known = connection._remote_candidates
        if len(known) >= MAX_REMOTE_CANDIDATES and not any(
            c._network_host == addr[0] and c.port == addr[1] for c in known
        ):
            COUNTERS.limit_exceeded("ice_remote_candidates")
            return
        check_incoming(message, addr, protocol)

    connection.check_incoming = guarded


def _route_address(family: int) -> str | None:
    """The source address of this host's route to the Internet (no packet is sent)."""
    probe = "192.0.2.1" if family == 4 else "2001:db8::1"
    try:
        with socket.socket(
            socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM
        ) as s:
            s.connect((probe, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def advertised_addresses(bind_address: str, node_ip: str | None) -> list[str]:
    """The host candidate addresses written into SDP for a socket bound to `bind_address`:
    `node_ip` when set, else the bound address, else (a wildcard bind) one address of this host:
    that of the default route, or the first interface address if there is none."""
    if node_ip:
        return [node_ip]
    address = ipaddress.ip_address(bind_address)
    if not address.is_unspecified:
        return [bind_address]
    hosts = get_host_addresses(use_ipv4=address.version == 4, use_ipv6=address.version == 6)
    route = _route_address(address.version)
    if route is not None and route in hosts:
        return [route]
    return hosts[:1]


@dataclass
class HostCandidates:
    """The candidates to write into SDP (`a=candidate:` values) and the default address/port."""

    sdp: list[str]
    address: str
    port: int


def _priority(local_preference: int, component: int = 1) -> int:
    return (_HOST_TYPE_PREFERENCE << 24) | (local_preference << 8) | (256 - component)


async def _bind(
    connection: Any, address: str, port_start: int, port_end: int
) -> tuple[asyncio.DatagramTransport, Any]:
    loop = asyncio.get_running_loop()
    if port_start == 0 and port_end == 0:
        ports = [0]
    else:
        count = port_end - port_start + 1
        first = random.randrange(count)
        ports = [port_start + (first + i) % count for i in range(count)]
    last_error: OSError | None = None
    for port in ports:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: GuardedStunProtocol(connection), local_addr=(address, port)
            )
        except OSError as exc:
            # uvloop wraps the bind error (errno None) with the real one as __cause__
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            if cause.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            last_error = exc
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            size_buffers(sock)
        return transport, protocol
    raise OSError(
        errno.EADDRINUSE,
        f"no free UDP port in {port_start}-{port_end} on {address}",
    ) from last_error


async def gather_host_candidates(
    connection: Any,
    bind_addresses: tuple[str, ...],
    node_ip: str | None,
    port_range: tuple[int, int],
    udp_port: int = 0,
    receive: Any = None,
) -> HostCandidates:
    """Bind the sockets of an aioice `Connection` and make it consider gathering complete.

    With `udp_port`, the connection joins each bind address's shared socket on that port
    (`sfu.media.transport.udpmux`) instead of binding its own in `port_range`; `receive` (the
    fast path's implementation, or None) is what reads that socket when it is first bound.

    Touches aioice privates (`_protocols`, `_local_candidates`, `_local_candidates_*`), the same
    state `Connection.gather_candidates` fills in.
    """
    sdp: list[str] = []
    local_preference = 65535
    for address in bind_addresses:
        if udp_port:
            mux = await open_mux(address, udp_port, receive)
            protocol = mux.register(connection.local_username, connection)
            transport = protocol.transport
        else:
            transport, protocol = await _bind(connection, address, *port_range)
        host, port = transport.get_extra_info("sockname")[:2]
        candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=1,
            transport="udp",
            priority=_priority(local_preference),
            host=host,
            port=port,
            type="host",
        )
        protocol.local_candidate = candidate
        connection._protocols.append(protocol)
        connection._local_candidates.append(candidate)
        for ip in advertised_addresses(host, node_ip):
            shown = Candidate(
                foundation=candidate_foundation("host", "udp", ip),
                component=1,
                transport="udp",
                priority=_priority(local_preference),
                host=ip,
                port=port,
                type="host",
                generation=0,
            )
            sdp.append(shown.to_sdp())
            local_preference -= 1
    connection._local_candidates_start = True
    connection._local_candidates_end = True
    if not sdp:
        raise OSError("no ICE candidate to advertise")
    first = Candidate.from_sdp(sdp[0])
    return HostCandidates(sdp=sdp, address=first.host, port=first.port)


def parse_candidate_init(text: str) -> tuple[Candidate | None, str | None, str]:
    """Parse a browser `RTCIceCandidateInit` JSON string (or a bare `candidate:` line).

    Returns (candidate or None when it is to be ignored, usernameFragment, reason).
    Never raises.
    """
    try:
        value: Any = json.loads(text)
    except (ValueError, TypeError):
        value = {"candidate": text}
    if not isinstance(value, dict):
        return None, None, "not a JSON object"
    line = value.get("candidate")
    ufrag = value.get("usernameFragment")
    if not isinstance(ufrag, str):
        ufrag = None
    if not isinstance(line, str):
        return None, ufrag, "no candidate string"
    line = line.strip()
    if line.startswith("a="):
        line = line[2:]
    if line.startswith("candidate:"):
        line = line[len("candidate:") :]
    if not line:
        return None, ufrag, "end-of-candidates"
    try:
        candidate = Candidate.from_sdp(line)
    except (ValueError, IndexError) as exc:
        return None, ufrag, f"unparsable candidate: {exc}"
    if candidate.transport.lower() != "udp":
        return None, ufrag, "not UDP"
    if candidate.component != 1:
        return None, ufrag, "not component 1 (rtcp-mux)"
    if not 0 < candidate.port < 65536:
        return None, ufrag, "bad port"
    if candidate.host.lower().endswith(".local"):
        return None, ufrag, "mDNS candidate (left to peer-reflexive discovery)"
    try:
        ipaddress.ip_address(candidate.host)
    except ValueError:
        return None, ufrag, "host is not an IP address"
    return candidate, ufrag, ""
