"""ICE plumbing on top of aioice: host candidates on chosen addresses and ports, remote candidates.

This module owns the two places where the SFU steps around aioice's defaults:

* gathering: aioice binds one ephemeral port per non-loopback interface.  The SFU binds one UDP
  socket per configured bind address, inside `port_range_start..port_range_end` — or, with
  `rtc.udp_port`, shares one socket per bind address with every other connection
  (`sfu.transport.udpmux`) — and advertises `node_ip` (LiveKit's `rtc.node_ip`) instead of the
  bound address when set;
* remote candidates: a browser's `RTCIceCandidateInit` JSON is validated here.  mDNS (`.local`)
  candidates are dropped rather than resolved (the SFU has no multicast; Chrome's connectivity
  checks reach us anyway and become peer-reflexive candidates), as are TCP and RTCP (component 2)
  candidates, since the SFU uses UDP with rtcp-mux only.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import random
from dataclasses import dataclass
from typing import Any

from aioice import Candidate
from aioice.candidate import candidate_foundation
from aioice.ice import StunProtocol, get_host_addresses

from sfu.transport.sockbuf import size_buffers
from sfu.transport.udpmux import open_mux

__all__ = ["HostCandidates", "gather_host_candidates", "parse_candidate_init"]

logger = logging.getLogger(__name__)

_HOST_TYPE_PREFERENCE = 126


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
                lambda: StunProtocol(connection), local_addr=(address, port)
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
) -> HostCandidates:
    """Bind the sockets of an aioice `Connection` and make it consider gathering complete.

    With `udp_port`, the connection joins each bind address's shared socket on that port
    (`sfu.transport.udpmux`) instead of binding its own in `port_range`.

    Touches aioice privates (`_protocols`, `_local_candidates`, `_local_candidates_*`), the same
    state `Connection.gather_candidates` fills in.
    """
    sdp: list[str] = []
    local_preference = 65535
    for address in bind_addresses:
        if udp_port:
            mux = await open_mux(address, udp_port)
            protocol = mux.register(connection.local_username, connection)
            transport = protocol.transport
        else:
            transport, protocol = await _bind(connection, address, *port_range)
        host, port = transport.get_extra_info("sockname")[:2]
        family = ipaddress.ip_address(host).version
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
        if node_ip:
            advertised = [node_ip]
        elif ipaddress.ip_address(host).is_unspecified:
            advertised = get_host_addresses(use_ipv4=family == 4, use_ipv6=family == 6)
        else:
            advertised = [host]
        for ip in advertised:
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
