"""The receive fast path: SRTP/SRTCP from the socket straight to the caller's callbacks.

Left alone, every media datagram takes aioice's and aiortc's general path: a failed STUN parse,
an `asyncio.Queue` hop into the DTLS transport's receive task, a task wake-up and two awaits
before the packet is even decrypted.  Once DTLS is connected, `SrtpIngress` sits in front of the
nominated pair's `StunProtocol.datagram_received` and demultiplexes by the first byte (RFC 7983
§7): 128-191 is RTP or RTCP, unprotected in place and handed on synchronously; anything else
(STUN consent checks, DTLS records carrying SCTP data channels, alerts) goes to aioice as before.
RTCP is told from RTP by the second byte (RFC 5761 §4: packet types 192-223).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pylibsrtp import Session

from sfu.transport.srtp import SrtpError, SrtpUnprotector

__all__ = ["SrtpIngress"]

logger = logging.getLogger(__name__)


class SrtpIngress:
    """Decrypt and dispatch one transport's SRTP/SRTCP; pass everything else to `fallback`."""

    __slots__ = (
        "_fallback",
        "_on_rtcp",
        "_on_rtp",
        "_protocol",
        "_unprotect",
        "_unprotect_rtcp",
        "bytes_received",
        "rtcp_packets_received",
        "rtp_packets_received",
        "unprotect_failures",
    )

    def __init__(self, on_rtp: Callable[[bytes], None], on_rtcp: Callable[[bytes], None]) -> None:
        self._unprotect: Callable[[bytes], bytes] | None = None
        self._unprotect_rtcp: Callable[[bytes], bytes] | None = None
        self._on_rtp = on_rtp
        self._on_rtcp = on_rtcp
        self._protocol: Any = None
        self._fallback: Callable[[bytes, Any], None] | None = None
        self.rtp_packets_received = 0
        self.rtcp_packets_received = 0
        self.bytes_received = 0
        self.unprotect_failures = 0

    def attach(self, protocol: Any, session: Session) -> None:
        """Sit in front of `protocol.datagram_received` (an aioice `StunProtocol`), decrypting
        with `session` (the receive side of the transport's DTLS-SRTP keys)."""
        self.detach()
        self._unprotect = SrtpUnprotector(session, rtcp=False)
        self._unprotect_rtcp = SrtpUnprotector(session, rtcp=True)
        self._protocol = protocol
        self._fallback = protocol.datagram_received
        protocol.datagram_received = self.datagram_received

    def detach(self) -> None:
        """Give the protocol its own `datagram_received` back.  Idempotent."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.__dict__.pop("datagram_received", None)
        self._fallback = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        unprotect, unprotect_rtcp = self._unprotect, self._unprotect_rtcp
        if unprotect is None or unprotect_rtcp is None or not 127 < (data[0] if data else 0) < 192:
            fallback = self._fallback
            if fallback is not None:
                fallback(data, addr)
            return
        try:
            if len(data) > 1 and 191 < data[1] < 224:
                self.deliver_rtcp(unprotect_rtcp(data))
            else:
                self.deliver_rtp(unprotect(data))
        except SrtpError:
            self.unprotect_failures += 1  # replayed, forged or truncated: dropped like aiortc does

    def deliver_rtp(self, plain: bytes) -> None:
        """Count one decrypted RTP packet and hand it on (also aiortc's path, before `attach`)."""
        self.rtp_packets_received += 1
        self.bytes_received += len(plain)
        try:
            self._on_rtp(plain)
        except Exception:
            logger.exception("on_rtp failed")

    def deliver_rtcp(self, plain: bytes) -> None:
        """Count one decrypted RTCP compound and hand it on."""
        self.rtcp_packets_received += 1
        self.bytes_received += len(plain)
        try:
            self._on_rtcp(plain)
        except Exception:
            logger.exception("on_rtcp failed")
