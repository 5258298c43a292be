"""The exception hierarchy of `sfu.media.rtp`: one `PacketError` base and one subclass per packet kind.

Every parser in this package raises only its own subclass of `PacketError` (itself a `ValueError`)
on malformed input, so a caller on the receive path can drop a bad packet with one
`except PacketError`.
"""

from __future__ import annotations

__all__ = [
    "ExtensionError",
    "H264Error",
    "PacketError",
    "RedError",
    "RtcpError",
    "RtpError",
    "Vp8Error",
]


class PacketError(ValueError):
    """A packet, or a value inside one, is malformed or cannot be represented."""


class RtpError(PacketError):
    """A malformed RTP packet or header (RFC 3550 §5.1, RFC 8285)."""


class ExtensionError(PacketError):
    """A malformed RTP header-extension value or an extension block that cannot be built."""


class RtcpError(PacketError):
    """A malformed RTCP packet or compound packet (RFC 3550 §6, RFC 4585, RFC 3611, ...)."""


class Vp8Error(PacketError):
    """A malformed VP8 payload descriptor (RFC 7741 §4.2)."""


class H264Error(PacketError):
    """A malformed H.264 RTP payload (RFC 6184 §5)."""


class RedError(PacketError):
    """A malformed RED payload (RFC 2198 §3)."""
