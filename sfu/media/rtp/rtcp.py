"""RTCP packets (RFC 3550 §6, RFC 4585, RFC 5104, RFC 3611, REMB and transport-cc drafts).

Owns parsing of compound RTCP (`parse_compound`) into one dataclass per packet, and building them
back (`bytes(packet)`, `build_compound`). Handled: SR, RR (with report blocks), SDES, BYE, generic
NACK, PLI, FIR, REMB, transport-wide congestion control feedback (in `sfu.media.rtp.twcc`, re-exported
here) and XR with RRTR/DLRR blocks. Any other packet is kept whole as `UnknownRtcp`.

Every parser raises only `RtcpError`. Each class's `parse(data)` takes exactly one packet.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Self, TypeAlias

from ._rtcp import (
    PT_APP,
    PT_BYE,
    PT_PSFB,
    PT_RR,
    PT_RTPFB,
    PT_SDES,
    PT_SR,
    PT_XR,
    packet_bytes,
    split_packet,
)
from .errors import RtcpError
from .seqnum import seq_diff
from .twcc import TransportCcFeedback

__all__ = [
    "PT_APP",
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "PT_XR",
    "SDES_CNAME",
    "Bye",
    "Dlrr",
    "DlrrItem",
    "ExtendedReport",
    "Fir",
    "FirEntry",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "Rrtr",
    "RtcpPacket",
    "Sdes",
    "SdesChunk",
    "SenderReport",
    "TransportCcFeedback",
    "UnknownRtcp",
    "UnknownXrBlock",
    "XrBlock",
    "build_compound",
    "is_rtcp",
    "pack_compounds",
    "parse_compound",
]

SDES_CNAME = 1

_HEADER = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")
_SR_INFO = struct.Struct("!IQIII")
_REPORT = struct.Struct("!IIIIII")
_FIR = struct.Struct("!IB3x")
_NACK = struct.Struct("!HH")
_XR_BLOCK = struct.Struct("!BBH")
_DLRR = struct.Struct("!III")
_U64 = struct.Struct("!Q")


def _pack(s: struct.Struct, *values: int) -> bytes:
    try:
        return s.pack(*values)
    except struct.error:
        raise RtcpError(f"field out of range in {values!r}") from None


def _check_count(n: int, what: str) -> int:
    if n > 31:
        raise RtcpError(f"at most 31 {what} fit one packet")
    return n


# --- reports --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReportBlock:
    """A reception report block (RFC 3550 §6.4.1), 24 bytes.

    `packets_lost` is the signed 24-bit cumulative loss, `highest_sequence_number` the extended
    highest sequence number received, `last_sr` the middle 32 bits of the last SR's NTP timestamp
    and `delay_since_last_sr` in units of 1/65536 s.
    """

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence_number: int = 0
    jitter: int = 0
    last_sr: int = 0
    delay_since_last_sr: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Self:
        if len(data) != 24:
            raise RtcpError("a report block is 24 bytes")
        return cls._from(data, 0)

    @classmethod
    def _from(cls, data: bytes, offset: int) -> Self:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        if not (0 <= self.fraction_lost <= 255 and -0x800000 <= self.packets_lost <= 0x7FFFFF):
            raise RtcpError("fraction_lost or packets_lost out of range")
        word = (self.fraction_lost << 24) | (self.packets_lost & 0xFFFFFF)
        return _pack(
            _REPORT,
            self.ssrc,
            word,
            self.highest_sequence_number,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )


def _report_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    if len(body) < offset + 24 * count:
        raise RtcpError("report blocks overrun the packet")
    return tuple(ReportBlock._from(body, offset + 24 * k) for k in range(count))


@dataclass(slots=True)
class SenderReport:
    """SR (PT 200): sender info and report blocks. `ntp_timestamp` is 64-bit NTP (32.32).

    Profile-specific extensions after the report blocks are ignored.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls._from_body(*split_packet(data, PT_SR))

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        if len(body) < 24:
            raise RtcpError("SR shorter than its sender info")
        ssrc, ntp, rtp, packets, octets = _SR_INFO.unpack_from(body)
        return cls(ssrc, ntp, rtp, packets, octets, _report_blocks(body, 24, count))

    def __bytes__(self) -> bytes:
        info = _pack(
            _SR_INFO,
            self.ssrc,
            self.ntp_timestamp,
            self.rtp_timestamp,
            self.packet_count,
            self.octet_count,
        )
        n = _check_count(len(self.reports), "report blocks")
        return packet_bytes(n, PT_SR, info + b"".join(bytes(r) for r in self.reports))


@dataclass(slots=True)
class ReceiverReport:
    """RR (PT 201): the reporter's SSRC and report blocks (profile extensions are ignored)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls._from_body(*split_packet(data, PT_RR))

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        if len(body) < 4:
            raise RtcpError("RR without SSRC")
        return cls(_U32.unpack_from(body)[0], _report_blocks(body, 4, count))

    def __bytes__(self) -> bytes:
        n = _check_count(len(self.reports), "report blocks")
        body = _pack(_U32, self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return packet_bytes(n, PT_RR, body)


# --- SDES, BYE ------------------------------------------------------------------------------------


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: an SSRC and its `(item_type, value)` items (type 1 is CNAME)."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item decoded as UTF-8 (invalid bytes replaced), if any."""
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None

    def __bytes__(self) -> bytes:
        parts = [_pack(_U32, self.ssrc)]
        for item_type, value in self.items:
            if not (1 <= item_type <= 255 and len(value) <= 255):
                raise RtcpError("SDES item type must be 1..255 and its value at most 255 bytes")
            parts.append(bytes((item_type, len(value))))
            parts.append(value)
        size = sum(len(p) for p in parts)
        parts.append(bytes(4 - (size & 3)))  # the terminating null octet(s), to 32-bit alignment
        return b"".join(parts)


@dataclass(slots=True)
class Sdes:
    """SDES (PT 202): a list of chunks."""

    chunks: tuple[SdesChunk, ...] = ()

    @classmethod
    def for_cname(cls, ssrc: int, cname: str) -> Self:
        """An SDES with one chunk carrying only the CNAME, as senders emit with every report."""
        return cls((SdesChunk(ssrc, ((SDES_CNAME, cname.encode()),)),))

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls._from_body(*split_packet(data, PT_SDES))

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        chunks = []
        i, n = 0, len(body)
        for _ in range(count):
            if i + 4 > n:
                raise RtcpError("SDES chunk overruns the packet")
            ssrc = _U32.unpack_from(body, i)[0]
            i += 4
            items = []
            while True:
                if i >= n:
                    raise RtcpError("SDES chunk without terminating null item")
                item_type = body[i]
                if item_type == 0:
                    i = min((i + 4) & ~3, n)
                    break
                if i + 2 > n or i + 2 + body[i + 1] > n:
                    raise RtcpError("SDES item overruns the packet")
                end = i + 2 + body[i + 1]
                items.append((item_type, body[i + 2 : end]))
                i = end
            chunks.append(SdesChunk(ssrc, tuple(items)))
        return cls(tuple(chunks))

    def __bytes__(self) -> bytes:
        n = _check_count(len(self.chunks), "SDES chunks")
        return packet_bytes(n, PT_SDES, b"".join(bytes(c) for c in self.chunks))


@dataclass(slots=True)
class Bye:
    """BYE (PT 203): the SSRCs leaving and an optional reason (b"" for none)."""

    ssrcs: tuple[int, ...] = ()
    reason: bytes = b""

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls._from_body(*split_packet(data, PT_BYE))

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        end = 4 * count
        if len(body) < end:
            raise RtcpError("BYE SSRC list overruns the packet")
        ssrcs = struct.unpack_from(f"!{count}I", body)
        reason = b""
        if len(body) > end:
            size = body[end]
            if end + 1 + size > len(body):
                raise RtcpError("BYE reason overruns the packet")
            reason = body[end + 1 : end + 1 + size]
        return cls(ssrcs, reason)

    def __bytes__(self) -> bytes:
        n = _check_count(len(self.ssrcs), "BYE SSRCs")
        if len(self.reason) > 255:
            raise RtcpError("BYE reason longer than 255 bytes")
        try:
            body = struct.pack(f"!{n}I", *self.ssrcs)
        except struct.error:
            raise RtcpError("SSRC out of range") from None
        if self.reason:
            body += bytes((len(self.reason),)) + self.reason
            body += bytes(-len(body) & 3)
        return packet_bytes(n, PT_BYE, body)


# --- feedback (RFC 4585, RFC 5104, REMB) ----------------------------------------------------------


@dataclass(slots=True)
class Nack:
    """Generic NACK (RTPFB, FMT 1): `(pid, blp)` pairs naming lost sequence numbers."""

    sender_ssrc: int
    media_ssrc: int
    pairs: tuple[tuple[int, int], ...] = ()

    FMT = 1

    @classmethod
    def from_sequence_numbers(
        cls, sender_ssrc: int, media_ssrc: int, sequence_numbers: Iterable[int]
    ) -> Self:
        """A NACK for the given lost sequence numbers, packed into as few pairs as possible.

        The numbers are taken mod 2**16, de-duplicated and put in wrap-aware order (they should
        span less than half the sequence space), in any order given.
        """
        seqs = list(dict.fromkeys(s & 0xFFFF for s in sequence_numbers))
        pairs: list[tuple[int, int]] = []
        if seqs:
            first = seqs[0]
            oldest = min(seqs, key=lambda s: seq_diff(s, first))
            seqs.sort(key=lambda s: (s - oldest) & 0xFFFF)
            pid, blp = seqs[0], 0
            for s in seqs[1:]:
                d = (s - pid) & 0xFFFF
                if d <= 16:
                    blp |= 1 << (d - 1)
                else:
                    pairs.append((pid, blp))
                    pid, blp = s, 0
            pairs.append((pid, blp))
        return cls(sender_ssrc, media_ssrc, tuple(pairs))

    @property
    def lost(self) -> list[int]:
        """The sequence numbers reported lost, in packet order (duplicates removed)."""
        out: dict[int, None] = {}
        for pid, blp in self.pairs:
            out[pid] = None
            for bit in range(16):
                if blp >> bit & 1:
                    out[(pid + bit + 1) & 0xFFFF] = None
        return list(out)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count, body = split_packet(data, PT_RTPFB)
        if count != cls.FMT:
            raise RtcpError("not a generic NACK")
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        if len(body) < 8 or len(body) & 3:
            raise RtcpError("malformed generic NACK")
        sender, media = _U32X2.unpack_from(body)
        pairs = tuple(_NACK.unpack_from(body, i) for i in range(8, len(body), 4))
        return cls(sender, media, pairs)

    def __bytes__(self) -> bytes:
        body = [_pack(_U32X2, self.sender_ssrc, self.media_ssrc)]
        body.extend(_pack(_NACK, pid, blp) for pid, blp in self.pairs)
        return packet_bytes(self.FMT, PT_RTPFB, b"".join(body))


@dataclass(slots=True)
class Pli:
    """Picture Loss Indication (PSFB, FMT 1, RFC 4585 §6.3.1)."""

    sender_ssrc: int
    media_ssrc: int

    FMT = 1

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count, body = split_packet(data, PT_PSFB)
        if count != cls.FMT:
            raise RtcpError("not a PLI")
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        if len(body) < 8:
            raise RtcpError("PLI shorter than 12 bytes")
        sender, media = _U32X2.unpack_from(body)
        return cls(sender, media)

    def __bytes__(self) -> bytes:
        return packet_bytes(self.FMT, PT_PSFB, _pack(_U32X2, self.sender_ssrc, self.media_ssrc))


@dataclass(slots=True)
class FirEntry:
    """One FIR FCI entry: the SSRC asked for a key frame and the command sequence number."""

    ssrc: int
    sequence_number: int


@dataclass(slots=True)
class Fir:
    """Full Intra Request (PSFB, FMT 4, RFC 5104 §4.3.1); `media_ssrc` is 0 by the RFC."""

    sender_ssrc: int
    entries: tuple[FirEntry, ...] = ()
    media_ssrc: int = 0

    FMT = 4

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count, body = split_packet(data, PT_PSFB)
        if count != cls.FMT:
            raise RtcpError("not a FIR")
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        if len(body) < 8 or (len(body) - 8) & 7:
            raise RtcpError("malformed FIR")
        sender, media = _U32X2.unpack_from(body)
        entries = tuple(FirEntry(*_FIR.unpack_from(body, i)) for i in range(8, len(body), 8))
        return cls(sender, entries, media)

    def __bytes__(self) -> bytes:
        body = [_pack(_U32X2, self.sender_ssrc, self.media_ssrc)]
        body.extend(_pack(_FIR, e.ssrc, e.sequence_number) for e in self.entries)
        return packet_bytes(self.FMT, PT_PSFB, b"".join(body))


@dataclass(slots=True)
class Remb:
    """Receiver Estimated Max Bitrate (PSFB, FMT 15, "REMB"; draft-alvestrand-rmcat-remb).

    `bitrate` is in bits per second; on the wire it is an 18-bit mantissa and a 6-bit exponent, so
    `bytes()` rounds it down to the nearest representable value.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: tuple[int, ...] = ()
    media_ssrc: int = 0

    FMT = 15

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count, body = split_packet(data, PT_PSFB)
        if count != cls.FMT:
            raise RtcpError("not an application-layer feedback packet")
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        if len(body) < 16 or body[8:12] != b"REMB":
            raise RtcpError("not a REMB")
        sender, media = _U32X2.unpack_from(body)
        num = body[12]
        if len(body) < 16 + 4 * num:
            raise RtcpError("REMB SSRC list overruns the packet")
        exponent = body[13] >> 2
        mantissa = ((body[13] & 3) << 16) | (body[14] << 8) | body[15]
        ssrcs = struct.unpack_from(f"!{num}I", body, 16)
        return cls(sender, mantissa << exponent, ssrcs, media)

    def __bytes__(self) -> bytes:
        if self.bitrate < 0 or len(self.ssrcs) > 255:
            raise RtcpError("negative REMB bitrate or more than 255 SSRCs")
        exponent = max(0, self.bitrate.bit_length() - 18)
        if exponent > 63:
            raise RtcpError("REMB bitrate too large")
        mantissa = self.bitrate >> exponent
        try:
            body = struct.pack(
                f"!II4sBBH{len(self.ssrcs)}I",
                self.sender_ssrc,
                self.media_ssrc,
                b"REMB",
                len(self.ssrcs),
                (exponent << 2) | (mantissa >> 16),
                mantissa & 0xFFFF,
                *self.ssrcs,
            )
        except struct.error:
            raise RtcpError("REMB SSRC out of range") from None
        return packet_bytes(self.FMT, PT_PSFB, body)


# --- XR (RFC 3611) --------------------------------------------------------------------------------


@dataclass(slots=True)
class Rrtr:
    """Receiver Reference Time report block (XR BT=4): a 64-bit NTP timestamp."""

    ntp_timestamp: int

    BLOCK_TYPE = 4

    def __bytes__(self) -> bytes:
        return _pack(_XR_BLOCK, self.BLOCK_TYPE, 0, 2) + _pack(_U64, self.ntp_timestamp)


@dataclass(slots=True)
class DlrrItem:
    """One DLRR sub-block: the receiver's SSRC, its last RR (middle 32 NTP bits) and the delay
    since (1/65536 s)."""

    ssrc: int
    last_rr: int
    delay_since_last_rr: int


@dataclass(slots=True)
class Dlrr:
    """Delay since Last Receiver Report block (XR BT=5)."""

    items: tuple[DlrrItem, ...] = ()

    BLOCK_TYPE = 5

    def __bytes__(self) -> bytes:
        head = _pack(_XR_BLOCK, self.BLOCK_TYPE, 0, 3 * len(self.items))
        return head + b"".join(
            _pack(_DLRR, i.ssrc, i.last_rr, i.delay_since_last_rr) for i in self.items
        )


@dataclass(slots=True)
class UnknownXrBlock:
    """An XR report block of another type, kept as its type, type-specific byte and contents."""

    block_type: int
    type_specific: int
    contents: bytes

    def __bytes__(self) -> bytes:
        if len(self.contents) & 3:
            raise RtcpError("XR block contents must be a multiple of 4 bytes")
        head = _pack(_XR_BLOCK, self.block_type, self.type_specific, len(self.contents) >> 2)
        return head + self.contents


XrBlock: TypeAlias = Rrtr | Dlrr | UnknownXrBlock


@dataclass(slots=True)
class ExtendedReport:
    """XR (PT 207): the reporter's SSRC and report blocks."""

    ssrc: int
    blocks: tuple[XrBlock, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> Self:
        return cls._from_body(*split_packet(data, PT_XR))

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        n = len(body)
        if n < 4:
            raise RtcpError("XR without SSRC")
        blocks: list[XrBlock] = []
        i = 4
        while i < n:
            if i + 4 > n:
                raise RtcpError("XR block header overruns the packet")
            block_type, specific, words = _XR_BLOCK.unpack_from(body, i)
            start, i = i + 4, i + 4 + 4 * words
            if i > n:
                raise RtcpError("XR block overruns the packet")
            if block_type == Rrtr.BLOCK_TYPE and words == 2:
                blocks.append(Rrtr(_U64.unpack_from(body, start)[0]))
            elif block_type == Dlrr.BLOCK_TYPE and words % 3 == 0:
                items = (DlrrItem(*_DLRR.unpack_from(body, k)) for k in range(start, i, 12))
                blocks.append(Dlrr(tuple(items)))
            else:
                blocks.append(UnknownXrBlock(block_type, specific, body[start:i]))
        return cls(_U32.unpack_from(body)[0], tuple(blocks))

    def __bytes__(self) -> bytes:
        body = _pack(_U32, self.ssrc) + b"".join(bytes(b) for b in self.blocks)
        return packet_bytes(0, PT_XR, body)


# --- anything else, compound ----------------------------------------------------------------------


@dataclass(slots=True)
class UnknownRtcp:
    """A packet of a type (or feedback format) not handled here, kept byte for byte."""

    packet_type: int
    data: bytes

    @property
    def count(self) -> int:
        """The 5-bit count / FMT field."""
        return self.data[0] & 0x1F

    @classmethod
    def parse(cls, data: bytes) -> Self:
        split_packet(data, None)
        return cls(data[1], bytes(data))

    def __bytes__(self) -> bytes:
        return bytes(self.data)


_KnownRtcp: TypeAlias = (
    SenderReport
    | ReceiverReport
    | Sdes
    | Bye
    | Nack
    | Pli
    | Fir
    | Remb
    | TransportCcFeedback
    | ExtendedReport
)
RtcpPacket: TypeAlias = _KnownRtcp | UnknownRtcp

_BY_TYPE: dict[int, type[_KnownRtcp]] = {
    PT_SR: SenderReport,
    PT_RR: ReceiverReport,
    PT_SDES: Sdes,
    PT_BYE: Bye,
    PT_XR: ExtendedReport,
}


def is_rtcp(packet: bytes) -> bool:
    """Whether a datagram on an rtcp-mux transport is RTCP rather than RTP: its second byte is
    an RTCP packet type, 192-223 (RFC 5761 §4; SR is 200, RR 201...)."""
    return len(packet) > 1 and 191 < packet[1] < 224


def _parser(count: int, packet_type: int, body: bytes) -> type[_KnownRtcp] | None:
    """The class that parses this packet (from its header and, for AFB, its REMB tag)."""
    if packet_type == PT_RTPFB:
        if count == Nack.FMT:
            return Nack
        if count == TransportCcFeedback.FMT:
            return TransportCcFeedback
        return None
    if packet_type == PT_PSFB:
        if count == Pli.FMT:
            return Pli
        if count == Fir.FMT:
            return Fir
        if count == Remb.FMT and body[8:12] == b"REMB":
            return Remb
        return None
    return _BY_TYPE.get(packet_type)


def parse_compound(
    data: bytes, only: Collection[type[RtcpPacket]] | None = None
) -> list[RtcpPacket]:
    """The packets of a compound RTCP packet (or of a single one), in order.

    Checks each packet's version and that its length and padding fit; raises `RtcpError` otherwise.
    Reduced-size RTCP (RFC 5506) is accepted: the first packet need not be an SR or RR.

    With `only`, packets of other types are not parsed but kept as `UnknownRtcp` (bytes only):
    the receive path names the types it acts on, so what it ignores costs it nothing.
    """
    n = len(data)
    if n == 0:
        raise RtcpError("empty RTCP packet")
    packets: list[RtcpPacket] = []
    i = 0
    while i < n:
        if i + 4 > n:
            raise RtcpError("RTCP header overruns the compound packet")
        b0, packet_type, words = _HEADER.unpack_from(data, i)
        if b0 >> 6 != 2:
            raise RtcpError("RTCP version is not 2")
        end = i + 4 + 4 * words
        if end > n:
            raise RtcpError("RTCP packet overruns the compound packet")
        body_end = end
        if b0 & 0x20:
            padding = data[end - 1]
            if padding == 0 or padding > 4 * words:
                raise RtcpError("invalid RTCP padding")
            body_end -= padding
        count = b0 & 0x1F
        body = data[i + 4 : body_end]
        cls = _parser(count, packet_type, body)
        if cls is None or (only is not None and cls not in only):
            packets.append(UnknownRtcp(packet_type, data[i:end]))
        else:
            packets.append(cls._from_body(count, body))
        i = end
    return packets


def build_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """The compound packet made of `packets`, concatenated."""
    return b"".join(bytes(p) for p in packets)


def pack_compounds(groups: Iterable[bytes], limit: int = 1200) -> list[bytes]:
    """Concatenate already-built RTCP groups (e.g. one stream's SR + SDES) into as few compound
    packets of at most `limit` bytes as fit; a group is never split, and one longer than `limit`
    goes out alone.  Each result starts with its first group's first packet (RFC 3550 §6.1: send
    SR/RR first)."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for group in groups:
        if current and size + len(group) > limit:
            out.append(b"".join(current))
            current, size = [], 0
        current.append(group)
        size += len(group)
    if current:
        out.append(b"".join(current))
    return out
