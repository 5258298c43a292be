"""The RTCP common header (RFC 3550 §6.4.1): packet type numbers, splitting and framing one packet.

Private to `sfu.media.rtp`; shared by `rtcp` and `twcc`.
"""

from __future__ import annotations

import struct

from .errors import RtcpError

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206
PT_XR = 207

_HEADER = struct.Struct("!BBH")


def split_packet(data: bytes, packet_type: int | None) -> tuple[int, bytes]:
    """`(count_or_fmt, body)` of exactly one RTCP packet, padding removed.

    Raises `RtcpError` unless `data` is one well-formed packet of `packet_type` (any when None).
    """
    n = len(data)
    if n < 4:
        raise RtcpError("RTCP packet shorter than its 4-byte header")
    b0, pt, words = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtcpError("RTCP version is not 2")
    if packet_type is not None and pt != packet_type:
        raise RtcpError(f"RTCP packet type {pt}, expected {packet_type}")
    if 4 + 4 * words != n:
        raise RtcpError("RTCP length field does not match the packet size")
    end = n
    if b0 & 0x20:
        padding = data[n - 1]
        if padding == 0 or padding > n - 4:
            raise RtcpError("invalid RTCP padding")
        end -= padding
    return b0 & 0x1F, data[4:end]


def packet_bytes(count: int, packet_type: int, body: bytes, padding: int = 0) -> bytes:
    """A packet with the common header; `body` must be a multiple of 4 bytes.

    With `padding` (1..255, making the total a multiple of 4) the P bit is set and padding bytes
    ending in their count are appended.
    """
    size = len(body) + padding
    if size & 3:
        raise RtcpError("RTCP packet body is not a multiple of 4 bytes")
    if size > 0x3FFFC:
        raise RtcpError("RTCP packet longer than 65535 words")
    b0 = 0x80 | count
    if padding:
        b0 |= 0x20
        body = body + bytes(padding - 1) + bytes((padding,))
    return _HEADER.pack(b0, packet_type, size >> 2) + body
