"""Wire formats the load tester writes and reads: RTP headers, the VP8 payload descriptor and
the latency trailer every synthetic payload ends with.

The trailer (`Trailer`, 16 bytes at the very end of each RTP payload) carries the send time
(`time.monotonic_ns()`, comparable across processes on one machine), the publisher's track number
and the simulcast layer. The SFU forwards payload bytes untouched, so a receiver that decrypts a
packet reads when it left and which layer it belongs to. The VP8 descriptor (RFC 7741 §4.2, with a
15-bit PictureID) stays valid in front of the data, so an SFU's key-frame detection still works.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

__all__ = [
    "TRAILER_SIZE",
    "PacketError",
    "Trailer",
    "rtp_header",
    "vp8_descriptor",
    "vp8_packetize",
]

TRAILER_MAGIC = b"\xf7LT1"
_TRAILER = struct.Struct("!4sHBBQ")
TRAILER_SIZE = _TRAILER.size  # 16
EXT_PROFILE_ONE_BYTE = 0xBEDE


class PacketError(ValueError):
    """Bytes that are not what the load tester wrote."""


@dataclass(frozen=True, slots=True)
class Trailer:
    """Send time and origin of one payload: the last `TRAILER_SIZE` bytes of it."""

    track: int  # publisher track number (0…65535)
    layer: int  # spatial layer, 0 = q; 255 for audio
    flags: int  # bit 0: key frame
    sent_ns: int  # time.monotonic_ns() at send

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        """Read the trailer at the end of `payload`; raises only `PacketError`."""
        if len(payload) < TRAILER_SIZE:
            raise PacketError("payload shorter than the trailer")
        magic, track, layer, flags, sent_ns = _TRAILER.unpack_from(payload, len(payload) - 16)
        if magic != TRAILER_MAGIC:
            raise PacketError("no load-test trailer")
        return cls(track, layer, flags, sent_ns)

    def __bytes__(self) -> bytes:
        return _TRAILER.pack(TRAILER_MAGIC, self.track, self.layer, self.flags, self.sent_ns)

    @staticmethod
    def stamp(payload: bytearray, sent_ns: int) -> None:
        """Overwrite the send time of a payload that already ends with a trailer."""
        struct.pack_into("!Q", payload, len(payload) - 8, sent_ns)


def vp8_descriptor(picture_id: int, start: bool, key_frame_hint: bool = False) -> bytes:
    """RFC 7741 payload descriptor: X=1, S per packet, PID 0, I=1 with a 15-bit PictureID."""
    del key_frame_hint  # the key-frame bit lives in the VP8 payload header, not here
    first = 0x80 | (0x10 if start else 0)
    return bytes((first, 0x80, 0x80 | ((picture_id >> 8) & 0x7F), picture_id & 0xFF))


def vp8_packetize(frame: bytes, max_payload: int) -> list[bytes]:
    """Split one VP8 frame into payload bodies (descriptor not included) of ≤ `max_payload`."""
    if max_payload < 1:
        raise PacketError("max_payload must be positive")
    if not frame:
        raise PacketError("empty frame")
    count = -(-len(frame) // max_payload)
    size = -(-len(frame) // count)  # even split: no runt last packet
    return [frame[i : i + size] for i in range(0, len(frame), size)]


def vp8_is_key_frame(frame: bytes) -> bool:
    """Bit 0 of the VP8 frame tag (RFC 6386 §9.1) is 0 for a key frame."""
    return bool(frame) and not frame[0] & 0x01


def _one_byte_extensions(extensions: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(
        bytes(((ext_id << 4) | (len(value) - 1),)) + value for ext_id, value in extensions
    )
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", EXT_PROFILE_ONE_BYTE, len(body) // 4) + body


def rtp_header(
    *,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    marker: bool = False,
    extensions: list[tuple[int, bytes]] | None = None,
) -> bytes:
    """An RTP fixed header (RFC 3550) with optional one-byte header extensions (RFC 8285)."""
    ext = _one_byte_extensions(extensions) if extensions else b""
    first = 0x80 | (0x10 if ext else 0)
    second = (0x80 if marker else 0) | (payload_type & 0x7F)
    return (
        struct.pack("!BBHII", first, second, sequence_number & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
        + ext
    )
