"""Session admission: the node's session caps and the reservations that hold them.

A session is one `/rtc` WebSocket, from the moment `Sfu.admit` lets it through until it ends.
`SessionLedger` counts sessions in total, per remote address, and, while a join is in flight,
per (room, identity). `admit` checks and reserves in one synchronous step, so handshakes that run
concurrently (the await on `websocket.accept()`) cannot together overshoot a cap.

Caps (each hit answered 503 with a reason and counted in `sfu_limit_exceeded_total`):

* ``max_sessions``: `limits.max_sessions`, by default derived at start-up from RLIMIT_NOFILE and
  the UDP port range (`derived_max_sessions`);
* ``max_sessions_per_ip``: `limits.max_sessions_per_ip` per remote address;
* ``sessions_per_identity``: one live participant plus the join that replaces it, per identity
  and room (a third concurrent join of the same identity is refused);
* ``max_participants``: `room.max_participants`, counting joins in flight.

The load gates (`limits.max_cpu_load` in `sfu.cpuload`, `limits.max_forward_latency_ms` here as
`LatencyHold`) refuse newcomers while the node is busy; they are counted in their own counters.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = [
    "FD_RESERVE",
    "LATENCY_RELEASE",
    "SESSIONS_PER_IDENTITY",
    "LatencyHold",
    "Reservation",
    "SessionLedger",
    "address_key",
    "derived_max_sessions",
]

#: peer connections per session (publisher and subscriber); each binds one UDP port per bind
#: address from the port range, and a connected one duplicates its socket's descriptor for its
#: send queue (`sfu.media.transport.batch`)
PEER_CONNECTIONS_PER_SESSION = 2
#: descriptors kept out of the session budget: listening sockets, the event loop, logs, shared
#: UDP sockets, libraries; at least this many, or a tenth of the limit if that is more
FD_RESERVE = 64
#: one live participant per identity and room, plus the join that replaces it
SESSIONS_PER_IDENTITY = 2
#: IPv6 clients are counted per /64: one host usually holds a whole /64
IPV6_PREFIX = 64
#: a node holding newcomers back for latency takes them again once the p99 is under this share
#: of `limits.max_forward_latency_ms`
LATENCY_RELEASE = 0.8


def address_key(host: str) -> str:
    """What `max_sessions_per_ip` counts by: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def fds_per_session(bind_addresses: int, shared_udp_port: bool) -> int:
    """Descriptors one fully connected session holds: its WebSocket, and per peer connection a
    UDP socket per bind address (none with `rtc.udp_port`) plus the send queue's duplicate."""
    per_pc = (0 if shared_udp_port else bind_addresses) + 1
    return 1 + PEER_CONNECTIONS_PER_SESSION * per_pc


def derived_max_sessions(
    *,
    bind_addresses: int,
    port_range: tuple[int, int],
    udp_port: int,
    nofile: Callable[[], int] | None = None,
) -> tuple[int, str]:
    """The default `limits.max_sessions`: what the descriptors and the ports can carry.

    Returns the cap and a sentence saying how it was derived (logged at start-up).
    """
    limit = nofile() if nofile is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    per_session = fds_per_session(bind_addresses, bool(udp_port))
    reserve = max(FD_RESERVE, limit // 10)
    by_fds = max(1, (limit - reserve) // per_session)
    why = (
        f"RLIMIT_NOFILE {limit}, less {reserve} kept in reserve, at {per_session} descriptors "
        f"per session: {by_fds}"
    )
    cap = by_fds
    start, end = port_range
    if not udp_port and (start or end):
        ports = end - start + 1
        by_ports = max(1, ports // PEER_CONNECTIONS_PER_SESSION)
        why += (
            f"; rtc.port_range {start}-{end}, {PEER_CONNECTIONS_PER_SESSION} ports per session: "
            f"{by_ports}"
        )
        cap = min(cap, by_ports)
    return cap, why


class LatencyHold:
    """`limits.max_forward_latency_ms` with hysteresis, so that admission does not flap.

    The node starts holding newcomers back when the forwarding latency's p99 (as admission
    predicts it) is above the bound, and lets them in again only once it is back under
    `LATENCY_RELEASE` of the bound. A participant's latency shows only seconds after its
    admission (it connects, then subscribes) and latency rises steeply near saturation: without
    the margin, each newcomer admitted just under the bound would push the node over it. The
    state changes only when admission asks."""

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s  # 0: no limit
        self.holding = False

    @property
    def release_s(self) -> float:
        return self.bound_s * LATENCY_RELEASE

    def refuses(self, p99_s: float) -> bool:
        """Whether a newcomer is refused at this p99 (seconds); updates the state."""
        if not self.bound_s:
            return False
        self.holding = p99_s > (self.release_s if self.holding else self.bound_s)
        return self.holding


@dataclass
class Reservation:
    """What one admitted session holds; `release` gives it all back (idempotent)."""

    ledger: SessionLedger
    address: str
    room: str
    identity: str
    joining: bool = True
    released: bool = False

    def joined(self) -> None:
        """The join finished (or failed): the identity counts through the room from now on."""
        if self.joining:
            self.joining = False
            self.ledger._end_join(self.room, self.identity)

    def release(self) -> None:
        if self.released:
            return
        self.joined()
        self.released = True
        self.ledger._end_session(self.address)


class SessionLedger:
    """Sessions held in total and per remote address; joins in flight per room and identity.

    Sizes: `by_address` has an entry per address with a live session (at most `sessions`
    entries), `joining` one per room and identity with a join in flight (likewise).
    """

    def __init__(self, max_sessions: int, max_per_address: int) -> None:
        self.max_sessions = max_sessions
        self.max_per_address = max_per_address
        self.sessions = 0
        self.by_address: dict[str, int] = {}
        self.joining: dict[str, dict[str, int]] = {}

    def joining_identities(self, room: str) -> dict[str, int]:
        return self.joining.get(room, {})

    def check_sessions(self, address: str) -> str | None:
        """The refusal (limit name) for one more session from `address`, or None."""
        if self.max_sessions and self.sessions >= self.max_sessions:
            return "max_sessions"
        if self.max_per_address and self.by_address.get(address, 0) >= self.max_per_address:
            return "max_sessions_per_ip"
        return None

    def reserve(self, address: str, room: str, identity: str) -> Reservation:
        """Take the slots `check_sessions` (and the identity/room checks) just allowed."""
        self.sessions += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        in_room = self.joining.setdefault(room, {})
        in_room[identity] = in_room.get(identity, 0) + 1
        return Reservation(self, address, room, identity)

    def _end_join(self, room: str, identity: str) -> None:
        in_room = self.joining.get(room)
        if in_room is None:
            return
        left = in_room.get(identity, 0) - 1
        if left > 0:
            in_room[identity] = left
        else:
            in_room.pop(identity, None)
            if not in_room:
                del self.joining[room]

    def _end_session(self, address: str) -> None:
        self.sessions -= 1
        left = self.by_address.get(address, 0) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)
