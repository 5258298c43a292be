"""The receive fast path: SRTP/SRTCP from the socket straight to the caller's callbacks.

Left alone, every media datagram takes aioice's and aiortc's general path: a failed STUN parse,
an `asyncio.Queue` hop into the DTLS transport's receive task, a task wake-up and two awaits
before the packet is even decrypted.  Once DTLS is connected, `SrtpIngress` sits in front of the
nominated pair's `StunProtocol.datagram_received` and demultiplexes by the first byte (RFC 7983
§7): 128-191 is RTP or RTCP, unprotected in place and handed on synchronously; anything else
(STUN consent checks, DTLS records carrying SCTP data channels, alerts) goes to aioice as before.
RTCP is told from RTP by the second byte (`sfu.media.rtp.rtcp.is_rtcp`, RFC 5761 §4).

Once attached, only STUN (0-3) is taken from an address other than the current pair's remote
one. SRTP, SRTCP and DTLS from another address that ICE validated (a pair whose connectivity
check succeeded: the peer nominated another pair, or sends on another valid one) make that
address the current one; from anywhere else they are dropped before libsrtp or OpenSSL see them
(counted in `wrong_source`), so a forged datagram costs a scan of the bounded check list, not
an authentication.
On a shared socket read by the compiled receive path (`rtc.udp_port` with rtc.fast_path,
`sfu.media.transport.udpmux`), the ingress also registers a route for its remote address: once
an SSRC's first packet came through here (so `SrtpUnprotector` knows libsrtp's stream for it),
the reader unprotects that SSRC's packets from that address itself and calls `deliver_rtp`
directly (whose result, the `Stream` that `on_rtp` returned, lets the reader take the SSRC's
later packets without calling back at all: `sfu.media.fastrecv_py`; those are counted in
`rtp_packets_received` and `bytes_received` too); the stream's removal takes it off the route
again. Everything else still comes here.
Whatever aioice raises on a datagram (0.13.0's STUN parser raises `struct.error` for an attribute
of the wrong length) is counted in `malformed` and logged at DEBUG only: it never reaches the
event loop, which would log a traceback per datagram.

Every datagram `SrtpIngress` reads may be a forwarding-latency sample: while the loop's probe is
armed (`sfu.media.transport.latency`, at most one datagram per 5 ms), the next
one asks its socket when the kernel received it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aioice.ice import CandidatePair, StunProtocol
from pylibsrtp import Session

from sfu.media.rtp.rtcp import is_rtcp
from sfu.media.transport.batch import flusher_for
from sfu.media.transport.latency import ForwardLatency, enable_timestamps
from sfu.media.transport.srtp import SrtpError, SrtpUnprotector
from sfu.metrics import COUNTERS

__all__ = ["GuardedStunProtocol", "SrtpIngress"]

logger = logging.getLogger(__name__)

#: the probe of an ingress outside a running loop, or whose socket has no timestamps: never armed
_NO_PROBE = ForwardLatency(None, lambda: None)


class GuardedStunProtocol(StunProtocol):
    """aioice's `StunProtocol` for a socket of its own, whose `datagram_received` never raises.

    Before DTLS is up nothing fronts the protocol, and aioice 0.13.0's STUN parser raises
    `struct.error` (not the `ValueError` it catches) for an attribute of the wrong length: the
    event loop would log a traceback per such datagram. Here it is counted as a dropped packet
    and logged at DEBUG.
    """

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        try:
            super().datagram_received(data, addr)
        except Exception as exc:  # one bad datagram must not reach the loop
            COUNTERS.drop("malformed")
            logger.debug("datagram from %s dropped: %r", addr, exc)


def _nominated_remote(protocol: Any) -> Any:
    """The remote address of the pair aioice nominated on `protocol`, or None."""
    nominated = getattr(getattr(protocol, "receiver", None), "_nominated", None) or {}
    for pair in nominated.values():
        if pair.protocol is protocol:
            return pair.remote_addr
    return None


def _validated_remote(protocol: Any, addr: tuple[Any, Any]) -> bool:
    """Whether `addr` is the remote address of a candidate pair on `protocol` whose
    connectivity check succeeded (RFC 8445 §7.2.5.3: the pair is in the valid list).

    The peer may send media on any valid pair, and moves to another one when it nominates it
    later (Chrome does, on hosts with several interfaces): such datagrams are the peer's. The
    check list is bounded by the candidate caps (`sfu.media.transport.ice`)."""
    connection = getattr(protocol, "receiver", None)
    for pair in getattr(connection, "_check_list", None) or ():
        remote = pair.remote_addr
        if (
            pair.protocol is protocol
            and pair.state == CandidatePair.State.SUCCEEDED
            and remote[1] == addr[1]
            and remote[0] == addr[0]
        ):
            return True
    return False


def _probe_for(protocol: Any) -> tuple[ForwardLatency, int]:
    """The running loop's latency probe and the descriptor of `protocol`'s socket (its own, or
    the shared one of `rtc.udp_port`), with timestamps on; a probe that never samples if there
    is no loop or no such socket."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _NO_PROBE, -1
    transport = getattr(protocol, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    fd = sock.fileno() if sock is not None else -1
    if fd < 0 or not enable_timestamps(fd):
        return _NO_PROBE, -1
    return flusher_for(loop).latency, fd


class SrtpIngress:
    """Decrypt and dispatch one transport's SRTP/SRTCP; pass everything else to `fallback`."""

    __slots__ = (
        "_bytes",
        "_failures",
        "_fallback",
        "_fd",
        "_latency",
        "_mux",
        "_on_rtcp",
        "_on_rtp",
        "_protocol",
        "_remote",
        "_route",
        "_rtp_packets",
        "_session",
        "_taken",
        "_unprotect",
        "_unprotect_rtcp",
        "malformed",
        "rtcp_packets_received",
        "wrong_source",
    )

    def __init__(self, on_rtp: Callable[[bytes], Any], on_rtcp: Callable[[bytes], None]) -> None:
        self._unprotect: Callable[[bytes], bytes] | None = None
        self._unprotect_rtcp: Callable[[bytes], bytes] | None = None
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._protocol: Any = None
        self._fallback: Callable[[bytes, Any], None] | None = None
        self._remote: tuple[Any, Any] | None = None
        self._latency = _NO_PROBE
        self._fd = -1
        self._mux: Any = None  # the shared socket's UdpMux, when the protocol is on one
        self._route: Any = None  # its compiled receive path's route for `_remote`
        self._session: Session | None = None
        self._rtp_packets = 0
        self.rtcp_packets_received = 0
        self._bytes = 0
        #: (packets, bytes) that earlier routes took without calling `deliver_rtp`
        self._taken = (0, 0)
        self._failures = 0
        self.malformed = 0  # datagrams aioice raised on
        self.wrong_source = 0  # SRTP/SRTCP/DTLS from an address ICE never validated

    def attach(self, protocol: Any, session: Session, *, remote_addr: Any = None) -> None:
        """Sit in front of `protocol.datagram_received` (an aioice `StunProtocol`), decrypting
        with `session` (the receive side of the transport's DTLS-SRTP keys).

        Media is taken only from `remote_addr` (host, port); by default the remote address of
        the pair aioice nominated on `protocol` (`Connection._nominated`), if any.
        """
        self.detach()
        if remote_addr is None:
            remote_addr = _nominated_remote(protocol)
        self._remote = None if remote_addr is None else (remote_addr[0], remote_addr[1])
        self._unprotect = SrtpUnprotector(session, rtcp=False)
        self._unprotect_rtcp = SrtpUnprotector(session, rtcp=True)
        self._protocol = protocol
        self._fallback = protocol.datagram_received
        protocol.datagram_received = self.datagram_received
        self._latency, self._fd = _probe_for(protocol)
        self._session = session
        self._mux = getattr(getattr(protocol, "transport", None), "mux", None)
        self._reroute(self._remote)

    def detach(self) -> None:
        """Give the protocol its own `datagram_received` back.  Idempotent."""
        self._reroute(None)
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.__dict__.pop("datagram_received", None)
        self._fallback = None
        self._mux = self._session = None

    @property
    def rtp_packets_received(self) -> int:
        """Decrypted RTP packets handed on (here, or taken by the route's armed streams)."""
        route = self._route
        return self._rtp_packets + self._taken[0] + (0 if route is None else route.taken)

    @property
    def bytes_received(self) -> int:
        """Their decrypted bytes, and the RTCP compounds'."""
        route = self._route
        return self._bytes + self._taken[1] + (0 if route is None else route.taken_octets)

    @property
    def unprotect_failures(self) -> int:
        """Packets libsrtp refused (replayed, forged, truncated), here or on the route."""
        route = self._route
        return self._failures + (0 if route is None else route.unprotect_failures)

    def _reroute(self, remote: tuple[Any, Any] | None) -> None:
        """The compiled receive path's route onto `remote` (None: none), keeping what it knew."""
        old, self._route = self._route, None
        mux, unprotect = self._mux, self._unprotect
        if old is not None:
            self._failures += old.unprotect_failures
            self._taken = (self._taken[0] + old.taken, self._taken[1] + old.taken_octets)
            mux.drop_route(old)
        if isinstance(unprotect, SrtpUnprotector):
            unprotect.on_remove = None
        if mux is None or remote is None or unprotect is None:
            return
        route = mux.media_route(remote, self.deliver_rtp, self._session)
        if route is None:
            return
        for ssrc in unprotect.streams if isinstance(unprotect, SrtpUnprotector) else ():
            route.learn(ssrc)
        self._route = route
        if isinstance(unprotect, SrtpUnprotector):
            unprotect.on_remove = route.forget

    def datagram_received(self, data: bytes, addr: Any) -> None:
        latency = self._latency
        if latency.armed:
            latency.start(self._fd)
        unprotect, unprotect_rtcp = self._unprotect, self._unprotect_rtcp
        first = data[0] if data else 0
        remote = self._remote
        if remote is not None and first > 3 and (addr[1] != remote[1] or addr[0] != remote[0]):
            if not _validated_remote(self._protocol, addr):
                self.wrong_source += 1
                COUNTERS.drop("wrong_source")
                return
            # the peer sends on another pair ICE validated: follow it
            logger.debug("media source moved from %s to %s", remote, addr)
            self._remote = (addr[0], addr[1])
            self._reroute(self._remote)
        if unprotect is None or unprotect_rtcp is None or not 127 < first < 192:
            fallback = self._fallback
            if fallback is not None:
                try:
                    fallback(data, addr)
                except Exception as exc:  # one bad datagram must not reach the loop
                    self.malformed += 1
                    COUNTERS.drop("malformed")
                    logger.debug("datagram from %s dropped: %r", addr, exc)
            return
        try:
            if is_rtcp(data):
                self.deliver_rtcp(unprotect_rtcp(data))
                return
            plain = unprotect(data)
        except SrtpError:
            self._failures += 1  # replayed, forged or truncated: dropped like aiortc does
            return
        route = self._route
        if route is not None:  # libsrtp has this SSRC's stream now: the route may take it
            route.learn(int.from_bytes(data[8:12], "big"))
        self.deliver_rtp(plain)

    def deliver_rtp(self, plain: bytes) -> Any:
        """Count one decrypted RTP packet and hand it on (also aiortc's path, before `attach`);
        returns what `on_rtp` did (for the route: the `Stream` to take the SSRC's next packets)."""
        self._rtp_packets += 1
        self._bytes += len(plain)
        try:
            return self._on_rtp(plain)
        except Exception:
            logger.exception("on_rtp failed")
            return None

    def deliver_rtcp(self, plain: bytes) -> None:
        """Count one decrypted RTCP compound and hand it on."""
        self.rtcp_packets_received += 1
        self._bytes += len(plain)
        try:
            self._on_rtcp(plain)
        except Exception:
            logger.exception("on_rtcp failed")
