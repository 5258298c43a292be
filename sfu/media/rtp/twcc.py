"""Transport-wide congestion control feedback (RTPFB FMT 15), as specified in
draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1.

Owns `TransportCcFeedback`: parsing (run-length, 1-bit and 2-bit status-vector chunks, 8-bit and
16-bit receive deltas), building, and `from_arrivals`, which turns the arrival times a receiver
recorded per transport-wide sequence number into feedback packets. Re-exported by `sfu.media.rtp.rtcp`,
whose `parse_compound` yields these packets.

The dataclass keeps the semantic content — one receive delta (in 250 µs ticks) or None per
packet — not the chunk layout, so `bytes()` picks its own chunk encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Self

from ._rtcp import PT_RTPFB, packet_bytes, split_packet
from .errors import RtcpError

__all__ = ["DELTA_TICK_US", "REFERENCE_TIME_TICK_US", "TransportCcFeedback"]

DELTA_TICK_US = 250  # receive deltas are multiples of 250 µs
REFERENCE_TIME_TICK_US = 64_000  # the reference time is a multiple of 64 ms

_FIXED = struct.Struct("!IIHHI")
_U16 = struct.Struct("!H")
_I16 = struct.Struct("!h")

_NOT_RECEIVED, _SMALL, _LARGE = 0, 1, 2
_MAX_RUN = 0x1FFF


def _encode_chunks(symbols: list[int]) -> bytearray:
    """Packet status chunks for `symbols` (0 not received, 1 small delta, 2 large delta)."""
    out = bytearray()
    n = len(symbols)
    i = 0
    while i < n:
        s = symbols[i]
        j = i + 1
        limit = min(n, i + _MAX_RUN)
        while j < limit and symbols[j] == s:
            j += 1
        run = j - i
        if run >= 14 or j == n:
            out += _U16.pack((s << 13) | run)
            i = j
            continue
        window = symbols[i : i + 14]
        if _LARGE not in window:  # 1-bit status vector, 14 symbols (extra slots ignored)
            chunk = 0x8000
            for k, sym in enumerate(window):
                chunk |= sym << (13 - k)
            out += _U16.pack(chunk)
            i += len(window)
        elif run >= 7:
            out += _U16.pack((s << 13) | run)
            i = j
        else:  # 2-bit status vector, 7 symbols
            chunk = 0xC000
            for k, sym in enumerate(symbols[i : i + 7]):
                chunk |= sym << (12 - 2 * k)
            out += _U16.pack(chunk)
            i += 7
    return out


def _wrap24(value: int) -> int:
    return ((value + 0x800000) & 0xFFFFFF) - 0x800000


@dataclass(slots=True, init=False)
class TransportCcFeedback:
    """Transport-wide CC feedback for packets `base_sequence_number`, `base_sequence_number + 1`, …

    Built from `deltas`: `deltas[k]` is None when packet `base + k` was not received, else its
    receive delta in 250 µs ticks (signed 16-bit) from the previous received packet — or, for the
    first one, from `reference_time`, a signed 24-bit count of 64 ms units.

    Kept sparse, as libwebrtc keeps it: `packet_status_count` and one `(k, delta)` pair per
    received packet. A packet can announce 65,535 statuses in a few bytes of run-length chunks,
    but each received one needs a delta byte on the wire, so what a parsed packet holds is
    bounded by its size. `deltas` expands on demand.
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence_number: int
    reference_time: int
    feedback_packet_count: int
    packet_status_count: int
    #: `(k, delta)` for each received packet `base + k`, in increasing k
    received: tuple[tuple[int, int], ...]

    FMT = 15

    def __init__(
        self,
        sender_ssrc: int,
        media_ssrc: int,
        base_sequence_number: int,
        reference_time: int,
        feedback_packet_count: int,
        deltas: Sequence[int | None] = (),
    ) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self.base_sequence_number = base_sequence_number
        self.reference_time = reference_time
        self.feedback_packet_count = feedback_packet_count
        self.packet_status_count = len(deltas)
        self.received = tuple((k, d) for k, d in enumerate(deltas) if d is not None)

    @property
    def deltas(self) -> tuple[int | None, ...]:
        """One receive delta or None per packet covered (`packet_status_count` entries)."""
        out: list[int | None] = [None] * self.packet_status_count
        for k, d in self.received:
            out[k] = d
        return tuple(out)

    def received_arrivals(self) -> list[tuple[int, int]]:
        """`(sequence_number (uint16), arrival time in µs)` of the received packets only, on the
        time base of `arrivals`: bounded by the packet's size, unlike `arrivals`."""
        t = self.reference_time * REFERENCE_TIME_TICK_US
        base = self.base_sequence_number
        out: list[tuple[int, int]] = []
        for k, d in self.received:
            t += d * DELTA_TICK_US
            out.append(((base + k) & 0xFFFF, t))
        return out

    def arrivals(self) -> dict[int, int | None]:
        """`{sequence_number (uint16): arrival time in µs or None}` on the feedback's time base.

        The time is `reference_time * 64000 + (sum of deltas so far) * 250`; only differences
        between times (also across feedback packets from one sender) are meaningful.
        """
        t = self.reference_time * REFERENCE_TIME_TICK_US
        out: dict[int, int | None] = {}
        for k, d in enumerate(self.deltas):
            seq = (self.base_sequence_number + k) & 0xFFFF
            if d is None:
                out[seq] = None
            else:
                t += d * DELTA_TICK_US
                out[seq] = t
        return out

    @classmethod
    def from_arrivals(
        cls,
        sender_ssrc: int,
        media_ssrc: int,
        arrivals: Mapping[int, int | None],
        feedback_packet_count: int = 0,
        max_size: int = 1200,
    ) -> list[Self]:
        """Feedback packets covering every sequence number from the lowest to the highest key.

        `arrivals` maps unwrapped (extended) transport-wide sequence numbers to arrival times in
        µs (any epoch, one clock) or None; numbers missing between the lowest and highest key are
        reported as not received. A new packet is started when a delta does not fit 16 bits or when
        the packet could exceed `max_size` bytes; the packets get consecutive feedback counts
        starting at `feedback_packet_count` (mod 256). Returns [] for an empty mapping.
        """
        if not arrivals:
            return []
        max_statuses = max(1, (max_size - 28) * 7 // 16)
        keys = sorted(arrivals)
        last = keys[-1]
        out: list[Self] = []
        count = feedback_packet_count
        base = keys[0]
        deltas: list[int | None] = []
        ref: int | None = None
        prev_ticks = 0

        def flush() -> None:
            nonlocal count
            out.append(
                cls(
                    sender_ssrc,
                    media_ssrc,
                    base & 0xFFFF,
                    _wrap24(ref if ref is not None else 0),
                    count & 0xFF,
                    tuple(deltas),
                )
            )
            count += 1

        seq = base
        while seq <= last:
            t = arrivals.get(seq)
            if t is None:
                deltas.append(None)
            else:
                if ref is None:
                    ref = t // REFERENCE_TIME_TICK_US
                ticks = (t - ref * REFERENCE_TIME_TICK_US + DELTA_TICK_US // 2) // DELTA_TICK_US
                d = ticks - prev_ticks
                if not -0x8000 <= d <= 0x7FFF:
                    flush()
                    base, deltas = seq, []
                    ref = t // REFERENCE_TIME_TICK_US
                    d = (t - ref * REFERENCE_TIME_TICK_US + DELTA_TICK_US // 2) // DELTA_TICK_US
                    ticks = d
                deltas.append(d)
                prev_ticks = ticks
            seq += 1
            if len(deltas) >= max_statuses and seq <= last:
                flush()
                base, deltas, ref, prev_ticks = seq, [], None, 0
        flush()
        return out

    @classmethod
    def parse(cls, data: bytes) -> Self:
        count, body = split_packet(data, PT_RTPFB)
        if count != cls.FMT:
            raise RtcpError("not a transport-wide CC feedback")
        return cls._from_body(count, body)

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> Self:
        """Parse the fields after the common header.

        The work is bounded by the bytes present, not by `packet_status_count`: a run-length
        chunk of "not received" (2 bytes for up to 8,191 packets) is expanded in one step, and
        every received packet needs a receive-delta byte in the packet, so Python-level steps
        are at most 7 per chunk byte plus one per delta byte. A status count that the chunks
        present cannot describe is refused before anything is expanded.
        """
        n = len(body)
        if n < 16:
            raise RtcpError("transport-cc feedback shorter than its fixed fields")
        sender, media, base, status_count, word = _FIXED.unpack_from(body)
        # Pass 1: walk the chunks (O(chunks)), counting statuses and the delta bytes they need.
        i = 16
        described = 0
        delta_bytes = 0
        while described < status_count:
            if i + 2 > n:
                raise RtcpError("transport-cc status chunks overrun the packet")
            chunk = (body[i] << 8) | body[i + 1]
            i += 2
            if chunk < 0x8000:  # run length
                symbol = chunk >> 13
                if symbol == 3:
                    raise RtcpError("reserved transport-cc packet status symbol")
                run = min(chunk & _MAX_RUN, status_count - described)
                described += run
                delta_bytes += run * symbol
            elif chunk < 0xC000:  # 1-bit vector
                take = min(14, status_count - described)
                described += take
                delta_bytes += ((chunk & 0x3FFF) >> (14 - take)).bit_count()
            else:  # 2-bit vector
                take = min(7, status_count - described)
                described += take
                for b in range(12, 12 - 2 * take, -2):
                    symbol = (chunk >> b) & 3
                    if symbol == 3:
                        raise RtcpError("reserved transport-cc packet status symbol")
                    delta_bytes += symbol
            if i + delta_bytes > n:
                raise RtcpError("transport-cc receive deltas overrun the packet")
        chunks_end = i
        if n - chunks_end - delta_bytes > 3:
            raise RtcpError("unexpected bytes after transport-cc receive deltas")
        # Pass 2: the received packets. A run of "not received" costs one step; every other
        # status consumes a delta byte that pass 1 proved present.
        received: list[tuple[int, int]] = []
        d = chunks_end
        i = 16
        k = 0
        while k < status_count:
            chunk = (body[i] << 8) | body[i + 1]
            i += 2
            if chunk < 0x8000:
                symbol = chunk >> 13
                run = min(chunk & _MAX_RUN, status_count - k)
                if symbol == _SMALL:
                    received += zip(range(k, k + run), body[d : d + run], strict=True)
                    d += run
                elif symbol == _LARGE:
                    values = (v for (v,) in _I16.iter_unpack(body[d : d + 2 * run]))
                    received += zip(range(k, k + run), values, strict=True)
                    d += 2 * run
                k += run
                continue
            if chunk < 0xC000:
                symbols = [(chunk >> b) & 1 for b in range(13, 13 - min(14, status_count - k), -1)]
            else:
                symbols = [
                    (chunk >> b) & 3 for b in range(12, 12 - 2 * min(7, status_count - k), -2)
                ]
            for s in symbols:
                if s == _SMALL:
                    received.append((k, body[d]))
                    d += 1
                elif s == _LARGE:
                    received.append((k, _I16.unpack_from(body, d)[0]))
                    d += 2
                k += 1
        feedback = cls(sender, media, base, _wrap24(word >> 8), word & 0xFF)
        feedback.packet_status_count = status_count
        feedback.received = tuple(received)
        return feedback

    def __bytes__(self) -> bytes:
        deltas = self.deltas
        if len(deltas) > 0xFFFF:
            raise RtcpError("at most 65535 packets per transport-cc feedback")
        if not -0x800000 <= self.reference_time <= 0x7FFFFF:
            raise RtcpError("reference time out of the signed 24-bit range")
        if not 0 <= self.feedback_packet_count <= 255:
            raise RtcpError("feedback packet count out of range")
        symbols: list[int] = []
        delta_bytes = bytearray()
        for d in deltas:
            if d is None:
                symbols.append(_NOT_RECEIVED)
            elif 0 <= d <= 255:
                symbols.append(_SMALL)
                delta_bytes.append(d)
            elif -0x8000 <= d <= 0x7FFF:
                symbols.append(_LARGE)
                delta_bytes += _I16.pack(d)
            else:
                raise RtcpError("receive delta out of the signed 16-bit range")
        try:
            fixed = _FIXED.pack(
                self.sender_ssrc,
                self.media_ssrc,
                self.base_sequence_number,
                len(deltas),
                ((self.reference_time & 0xFFFFFF) << 8) | self.feedback_packet_count,
            )
        except struct.error:
            raise RtcpError("transport-cc field out of range") from None
        body = fixed + _encode_chunks(symbols) + delta_bytes
        return packet_bytes(self.FMT, PT_RTPFB, body, -len(body) & 3)
