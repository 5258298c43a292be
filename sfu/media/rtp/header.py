"""The RTP fixed header and header-extension block (RFC 3550 §5.1, RFC 8285): parse and build.

Owns three things on the packet path:

- `RtpPacket`: the ingress view, parsed once per received packet. It keeps the received bytes and
  the offsets of the payload and padding; it is read-only by convention (`bytes(packet)` is the
  received data, whatever its fields are later set to).
- `RtpHeader`: the egress builder, an RTP header with a list of `(id, value)` extensions, which
  `bytes()` lays out with the one-byte extension form when possible.
- `rewrite()`: the per-subscriber fast path, which prepends a fresh 12-byte header and an
  extension block to the original payload and padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Self

from .errors import RtpError
from .extensions import ONE_BYTE_PROFILE, build_extension_block

__all__ = ["RtpHeader", "RtpPacket", "padding_packet", "rewrite"]

_FIXED = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_CSRC = tuple(struct.Struct(f"!{n}I") for n in range(16))
_pack_fixed = _FIXED.pack
_unpack_fixed = _FIXED.unpack_from
_unpack_ext_header = _EXT_HEADER.unpack_from


def _parse_two_byte(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Elements of a 0x100X block occupying `data[start:end]` (RFC 8285 §4.3)."""
    extensions: dict[int, bytes] = {}
    i = start
    while i < end:
        ext_id = data[i]
        if ext_id == 0:  # padding byte
            i += 1
            continue
        if i + 1 >= end:
            raise RtpError("two-byte extension element header overruns the extension block")
        j = i + 2 + data[i + 1]
        if j > end:
            raise RtpError("two-byte extension element overruns the extension block")
        extensions[ext_id] = data[i + 2 : j]
        i = j
    return extensions


@dataclass(slots=True)
class RtpPacket:
    """A received RTP packet: the fixed header and extensions parsed, the payload left in place.

    `extensions` maps extension ids to values for the one-byte (`0xBEDE`) and two-byte (`0x100X`)
    forms; for any other profile it is empty and only `extension_profile` is set (None when the X
    bit is clear). When an id repeats, the last element wins. The payload is
    `data[payload_offset : len(data) - padding_size]`.
    """

    data: bytes
    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    csrc: tuple[int, ...]
    extension_profile: int | None
    extensions: dict[int, bytes]
    payload_offset: int
    padding_size: int

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a received packet; raises `RtpError` when it is not a valid RTP packet."""
        try:
            b0, b1, sequence_number, timestamp, ssrc = _unpack_fixed(data)
        except struct.error:
            raise RtpError("packet shorter than the 12-byte RTP header") from None
        if b0 & 0xC0 != 0x80:
            raise RtpError("RTP version is not 2")
        n = len(data)
        cc = b0 & 0x0F
        offset = 12 + 4 * cc
        if offset > n:
            raise RtpError("CSRC list overruns the packet")
        csrc: tuple[int, ...] = _CSRC[cc].unpack_from(data, 12) if cc else ()
        profile: int | None = None
        extensions: dict[int, bytes]
        if b0 & 0x10:
            if offset + 4 > n:
                raise RtpError("extension header overruns the packet")
            profile, words = _unpack_ext_header(data, offset)
            i = offset + 4
            offset = i + 4 * words
            if offset > n:
                raise RtpError("extension block overruns the packet")
            if profile == ONE_BYTE_PROFILE:
                # RFC 8285 §4.2, inlined: this runs for every received packet.
                extensions = {}
                while i < offset:
                    b = data[i]
                    if b:
                        if b > 0xEF or b < 0x10:  # id 15, or id 0 with a length: stop
                            break
                        j = i + 2 + (b & 0x0F)
                        if j > offset:
                            raise RtpError("one-byte extension element overruns the block")
                        extensions[b >> 4] = data[i + 1 : j]
                        i = j
                    else:  # a padding byte
                        i += 1
            elif profile & 0xFFF0 == 0x1000:
                extensions = _parse_two_byte(data, i, offset)
            else:
                extensions = {}
        else:
            extensions = {}
        padding = 0
        if b0 & 0x20:
            padding = data[n - 1]
            if padding == 0 or offset + padding > n:
                raise RtpError("invalid padding length")
        return cls(
            data,
            b1 > 0x7F,
            b1 & 0x7F,
            sequence_number,
            timestamp,
            ssrc,
            csrc,
            profile,
            extensions,
            offset,
            padding,
        )

    def __bytes__(self) -> bytes:
        return bytes(self.data)

    @property
    def payload(self) -> bytes:
        """The payload, without header, extensions and padding."""
        return self.data[self.payload_offset : len(self.data) - self.padding_size]

    @property
    def payload_size(self) -> int:
        """The length of the payload in bytes."""
        return len(self.data) - self.payload_offset - self.padding_size


@dataclass(slots=True)
class RtpHeader:
    """An RTP header to send: `bytes(header)` is the fixed header, CSRCs and extension block.

    Extensions are `(id, value)` pairs laid out in order, in the one-byte form when every id is
    1..14 and every value 1..16 bytes, otherwise in the two-byte form. `padding` only sets the P
    bit; the caller appends the padding bytes (the last one holding their count).
    """

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extensions: list[tuple[int, bytes]] = field(default_factory=list)
    padding: bool = False

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """The header of a packet (extensions of an unknown profile are dropped)."""
        p = RtpPacket.parse(data)
        return cls(
            p.payload_type,
            p.sequence_number,
            p.timestamp,
            p.ssrc,
            p.marker,
            p.csrc,
            list(p.extensions.items()),
            p.padding_size > 0,
        )

    def __bytes__(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RtpError("payload type must be 0..127")
        if len(self.csrc) > 15:
            raise RtpError("at most 15 CSRCs")
        block = build_extension_block(self.extensions)
        b0 = 0x80 | len(self.csrc)
        if block:
            b0 |= 0x10
        if self.padding:
            b0 |= 0x20
        try:
            head = _pack_fixed(
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
            csrc = _CSRC[len(self.csrc)].pack(*self.csrc) if self.csrc else b""
        except struct.error:
            raise RtpError("header field out of range") from None
        return head + csrc + block


def rewrite(
    packet: RtpPacket,
    *,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    extensions: bytes = b"",
    payload: bytes | None = None,
    payload_header: bytes | None = None,
    payload_header_size: int = 0,
) -> bytes:
    """The packet to send to one subscriber: a new header on `packet`'s payload.

    The result is a 12-byte header (V=2, the original marker and P bit, no CSRC, X set only when
    `extensions` is given) followed by `extensions` — a complete extension block as returned by
    `build_extension_block` or `ExtensionBlockTemplate.build`, or b"" — then the payload and the
    original padding.

    The payload is the original one, unless either `payload` replaces it whole, or
    `payload_header` replaces its first `payload_header_size` bytes (a munged codec payload
    descriptor, e.g. from `sfu.media.rtp.vp8`; the bytes after it are copied untouched).

    `sequence_number` and `timestamp` are taken mod 2**16 and 2**32; the other fields must be in
    range. No validation beyond that is done: this runs once per packet per subscriber.
    """
    data = packet.data
    b0 = data[0] & 0x20 | 0x80
    if extensions:
        b0 |= 0x10
    head = _pack_fixed(
        b0,
        (data[1] & 0x80) | payload_type,
        sequence_number & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc,
    )
    if payload is None:
        if payload_header is None:
            return b"".join((head, extensions, data[packet.payload_offset :]))
        return b"".join(
            (head, extensions, payload_header, data[packet.payload_offset + payload_header_size :])
        )
    padding = packet.padding_size
    if padding:
        return b"".join((head, extensions, payload, data[len(data) - padding :]))
    return b"".join((head, extensions, payload))


def padding_packet(
    b1: int, sequence_number: int, timestamp: int, ssrc: int, extensions: bytes, size: int
) -> bytes:
    """A padding-only packet (V=2, P=1, X when `extensions` is a block; `b1` is the marker and
    payload type byte): `size` padding bytes (1..255), the last holding their count."""
    b0 = 0xB0 if extensions else 0xA0
    head = _pack_fixed(b0, b1, sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    return b"".join((head, extensions, bytes(size - 1), bytes((size,))))
