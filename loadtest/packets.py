"""Wire formats the load tester writes and reads: RTP headers, the VP8 payload descriptor, the
latency trailer every synthetic payload ends with, and the RTCP a publisher sends (sender reports
with an SDES CNAME) and reads (PLI, FIR, generic NACK).

The trailer (`Trailer`, 16 bytes at the very end of each RTP payload) carries the send time
(`time.monotonic_ns()`, comparable across processes on one machine), the publisher's track number
and the simulcast layer. The SFU forwards payload bytes untouched, so a receiver that decrypts a
packet reads when it left and which layer it belongs to. The VP8 descriptor (RFC 7741 §4.2, with a
15-bit PictureID) stays valid in front of the data, so an SFU's key-frame detection still works.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

__all__ = [
    "NTP_EPOCH_OFFSET_S",
    "PT_PSFB",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "TRAILER_SIZE",
    "Feedback",
    "PacketError",
    "SdesCname",
    "SenderReport",
    "Trailer",
    "ntp_timestamp",
    "rtp_header",
    "split_rtcp",
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

    @staticmethod
    def read(payload: bytes) -> tuple[int, int, int] | None:
        """`(track, layer, sent_ns)` of the trailer, None when there is none: `parse` without
        building a `Trailer` (a subscriber reads thousands a second)."""
        if len(payload) < TRAILER_SIZE:
            return None
        magic, track, layer, _, sent_ns = _TRAILER.unpack_from(payload, len(payload) - 16)
        return (track, layer, sent_ns) if magic == TRAILER_MAGIC else None

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
    # an even split, no runt last packet: the first `longer` bodies are one byte longer
    size, longer = divmod(len(frame), count)
    bodies, start = [], 0
    for index in range(count):
        end = start + size + (index < longer)
        bodies.append(frame[start:end])
        start = end
    return bodies


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


# -- RTCP (RFC 3550 §6, RFC 4585 §6, RFC 5104 §4.3.1) -----------------------------------------

PT_SR, PT_SDES, PT_RTPFB, PT_PSFB = 200, 202, 205, 206
FMT_NACK, FMT_PLI, FMT_FIR = 1, 1, 4
NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 → 1970-01-01
_SR = struct.Struct("!BBHIIIIII")
_RTCP_HEADER = struct.Struct("!BBH")


def ntp_timestamp(unix_ns: int) -> int:
    """The 64-bit NTP timestamp (RFC 3550 §4) of a Unix time in nanoseconds."""
    seconds, rest = divmod(unix_ns, 1_000_000_000)
    fraction = (rest << 32) // 1_000_000_000
    return (((seconds + NTP_EPOCH_OFFSET_S) & 0xFFFFFFFF) << 32) | fraction


def split_rtcp(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The packets of a compound RTCP datagram as (count/FMT, packet type, whole packet).

    Lazy: the packets before a bad one are yielded, then `PacketError` (the only error) for a
    version other than 2 or a length running past the end.
    """
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise PacketError("truncated RTCP header")
        first, pt, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != 2:
            raise PacketError(f"RTCP version {first >> 6}")
        end = offset + (words + 1) * 4
        if end > len(data):
            raise PacketError("RTCP length runs past the datagram")
        yield first & 0x1F, pt, data[offset:end]
        offset = end


@dataclass(frozen=True, slots=True)
class SenderReport:
    """An RTCP SR without report blocks (a sender that receives nothing on this SSRC)."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Read the sender info of an SR; raises only `PacketError`."""
        if len(data) < _SR.size:
            raise PacketError("SR shorter than 28 bytes")
        first, pt, _, ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets = _SR.unpack_from(data)
        if first >> 6 != 2 or pt != PT_SR:
            raise PacketError("not an RTCP SR")
        return cls(ssrc, (ntp_hi << 32) | ntp_lo, rtp_ts, packets, octets)

    def __bytes__(self) -> bytes:
        return _SR.pack(
            0x80,
            PT_SR,
            6,
            self.ssrc,
            (self.ntp_timestamp >> 32) & 0xFFFFFFFF,
            self.ntp_timestamp & 0xFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )


@dataclass(frozen=True, slots=True)
class SdesCname:
    """An RTCP SDES packet with one chunk holding one CNAME item (RFC 3550 §6.5)."""

    ssrc: int
    cname: str

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Read the first chunk's CNAME; raises only `PacketError`."""
        if len(data) < 10:
            raise PacketError("SDES too short")
        first, pt, _ = _RTCP_HEADER.unpack_from(data)
        if first >> 6 != 2 or pt != PT_SDES or first & 0x1F < 1:
            raise PacketError("not an RTCP SDES with a chunk")
        ssrc = int.from_bytes(data[4:8], "big")
        item, length = data[8], data[9]
        if item != 1 or 10 + length > len(data):
            raise PacketError("first SDES item is not a whole CNAME")
        try:
            cname = data[10 : 10 + length].decode()
        except UnicodeDecodeError as exc:
            raise PacketError("CNAME is not UTF-8") from exc
        return cls(ssrc, cname)

    def __bytes__(self) -> bytes:
        text = self.cname.encode()[:255]
        chunk = self.ssrc.to_bytes(4, "big") + bytes((1, len(text))) + text + b"\x00"
        chunk += b"\x00" * (-len(chunk) % 4)
        return _RTCP_HEADER.pack(0x81, PT_SDES, (4 + len(chunk)) // 4 - 1) + chunk


@dataclass(frozen=True, slots=True)
class Feedback:
    """A transport-layer (205) or payload-specific (206) feedback message (RFC 4585 §6.1)."""

    fmt: int
    payload_type: int
    sender_ssrc: int
    media_ssrc: int
    fci: bytes

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Raises only `PacketError`."""
        if len(data) < 12:
            raise PacketError("feedback shorter than 12 bytes")
        first, pt, _ = _RTCP_HEADER.unpack_from(data)
        if first >> 6 != 2 or pt not in (PT_RTPFB, PT_PSFB):
            raise PacketError("not an RTCP feedback message")
        sender, media = struct.unpack_from("!II", data, 4)
        return cls(first & 0x1F, pt, sender, media, bytes(data[12:]))

    def __bytes__(self) -> bytes:
        body = struct.pack("!II", self.sender_ssrc, self.media_ssrc) + self.fci
        body += b"\x00" * (-len(body) % 4)
        header = _RTCP_HEADER.pack(0x80 | (self.fmt & 0x1F), self.payload_type, len(body) // 4)
        return header + body

    @property
    def is_pli(self) -> bool:
        return self.payload_type == PT_PSFB and self.fmt == FMT_PLI

    @property
    def is_nack(self) -> bool:
        return self.payload_type == PT_RTPFB and self.fmt == FMT_NACK

    def key_frame_ssrcs(self) -> list[int]:
        """The SSRCs a PLI or FIR asks a key frame of (FIR names them in its FCI entries)."""
        if self.is_pli:
            return [self.media_ssrc]
        if self.payload_type == PT_PSFB and self.fmt == FMT_FIR:
            return [
                int.from_bytes(self.fci[i : i + 4], "big") for i in range(0, len(self.fci) - 7, 8)
            ]
        return []

    def nack_sequence_numbers(self) -> list[int]:
        """The sequence numbers a generic NACK lists (PID + BLP per FCI entry, RFC 4585 §6.2.1)."""
        if not self.is_nack:
            return []
        lost: list[int] = []
        for i in range(0, len(self.fci) - 3, 4):
            pid, blp = struct.unpack_from("!HH", self.fci, i)
            lost.append(pid)
            lost += [(pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1]
        return lost
