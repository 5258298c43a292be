"""Per-subscriber renumbering of a forwarded track: sequence numbers, timestamps, VP8 fields, SRs.

Owns the state that lets one outgoing stream (one subscriber, one track, one SSRC) continue
seamlessly while the SFU switches between publisher sources (simulcast layers) and drops packets
on purpose:

- `RtpMunger`: extended incoming sequence number → gapless outgoing sequence number, and RTP
  timestamp → outgoing timestamp with a per-source offset;
- `Vp8Munger`: PictureID, TL0PICIDX and KEYIDX kept continuous across switches;
- `SenderReportTranslator`: the NTP↔RTP mapping for the subscriber's sender reports, from the
  publisher's reports and the munger's timestamp offset.

Sequence numbers given to `RtpMunger` are extended (unwrapped, e.g. with
`sfu.rtp.seqnum.SequenceUnwrapper`, one per publisher SSRC).
"""

from __future__ import annotations

from typing import NamedTuple

from .seqnum import ts_diff
from .vp8 import Vp8PayloadDescriptor

__all__ = ["RtpMunger", "SenderReportTranslator", "Vp8Fields", "Vp8Munger"]

_MAX_RANGES = 64


class _OffsetMap:
    """Incoming (extended) value → offset, by ranges; a None offset marks values dropped on purpose.

    The newest range's offset is `offset`; older ranges serve late (reordered) packets. Values below
    the first range, or older than the last `_MAX_RANGES` ranges, have no mapping.
    """

    __slots__ = ("_offsets", "_starts", "highest", "offset")

    def __init__(self, first: int, offset: int) -> None:
        self._starts = [first]
        self._offsets: list[int | None] = [offset]
        self.offset = offset
        self.highest = first - 1

    def _push(self, start: int, offset: int | None) -> None:
        self._starts.append(start)
        self._offsets.append(offset)
        if len(self._starts) > _MAX_RANGES:
            del self._starts[0], self._offsets[0]

    def lookup(self, value: int) -> int | None:
        starts = self._starts
        for k in range(len(starts) - 1, -1, -1):
            if value >= starts[k]:
                return self._offsets[k]
        return None

    def forward(self, value: int) -> int | None:
        """The offset for a packet to forward; advances `highest` for a new value."""
        if value > self.highest:
            if self._offsets[-1] is None:
                self._push(self.highest + 1, self.offset)
            self.highest = value
            return self.offset
        return self.lookup(value)

    def drop(self, value: int) -> bool:
        """Exclude a new value from the output numbering; False if it is not newer than `highest`
        (its slot has been reserved already and stays a hole)."""
        if value <= self.highest:
            return False
        if self._offsets[-1] is None:
            if value > self.highest + 1:
                self._push(self.highest + 1, self.offset)
                self._push(value, None)
        else:
            self._push(value, None)
        self.offset += 1
        self.highest = value
        return True


class RtpMunger:
    """Maps the packets of the currently forwarded source to one continuous outgoing stream.

    Call `switch_source` before the first packet of each source (the first one of a key frame for
    video), then `update` for every packet to forward and `drop` for every packet of the current
    source that is dropped on purpose (padding, filtered temporal layers), so that the outgoing
    sequence numbers have no holes. Late packets of the current source get the number they would
    have had; packets of other sources, and of the current source from before the switch, get None.
    """

    __slots__ = (
        "_first_in",
        "_last_out_seq",
        "_last_out_ts",
        "_map",
        "_ssrc",
        "_start_sequence_number",
        "_ts_offset",
    )

    def __init__(self, start_sequence_number: int | None = None) -> None:
        """`start_sequence_number`: the first outgoing sequence number (default: the first
        incoming one)."""
        self._start_sequence_number = start_sequence_number
        self._ssrc: int | None = None
        self._first_in = 0
        self._map = _OffsetMap(0, 0)
        self._ts_offset = 0
        self._last_out_seq: int | None = None  # extended
        self._last_out_ts: int | None = None

    @property
    def source_ssrc(self) -> int | None:
        """The SSRC being forwarded, None before the first switch."""
        return self._ssrc

    @property
    def sequence_number_offset(self) -> int:
        """`in_ext - out_ext` for the next new packet of the current source."""
        return self._map.offset

    @property
    def timestamp_offset(self) -> int:
        """`(in_ts - out_ts) mod 2**32` for the current source."""
        return self._ts_offset

    @property
    def last_sequence_number(self) -> int | None:
        """The newest outgoing sequence number (uint16), None before any packet."""
        return None if self._last_out_seq is None else self._last_out_seq & 0xFFFF

    @property
    def last_timestamp(self) -> int | None:
        """The outgoing timestamp of the newest packet, None before any packet."""
        return self._last_out_ts

    def switch_source(
        self, new_ssrc: int, first_seq: int, first_ts: int, expected_ts: int | None = None
    ) -> None:
        """Start forwarding `new_ssrc` from its packet `(first_seq, first_ts)` on.

        That packet gets the sequence number after the last one sent. Its outgoing timestamp is
        `expected_ts` — the caller's estimate in the outgoing timebase, e.g. the last outgoing
        timestamp plus the elapsed wall-clock time times the clock rate, or a translation through
        sender reports (`SenderReportTranslator.expected_timestamp`) — but at least one tick
        after the last timestamp sent. Without `expected_ts` it is the last one plus 1, or, for
        the very first source, `first_ts` itself.
        """
        last_seq, last_ts = self._last_out_seq, self._last_out_ts
        if last_seq is None:
            start = self._start_sequence_number
            out_seq = first_seq & 0xFFFF if start is None else start & 0xFFFF
        else:
            out_seq = last_seq + 1
        if last_ts is None:
            out_ts = first_ts if expected_ts is None else expected_ts
        elif expected_ts is not None and ts_diff(expected_ts, last_ts) > 0:
            out_ts = expected_ts
        else:
            out_ts = last_ts + 1
        self._ssrc = new_ssrc
        self._first_in = first_seq
        self._map = _OffsetMap(first_seq, first_seq - out_seq)
        self._ts_offset = (first_ts - out_ts) & 0xFFFFFFFF

    def update(self, ssrc: int, extended_seq: int, timestamp: int) -> tuple[int, int] | None:
        """`(sequence_number, timestamp)` to send for a packet, or None when it must be dropped."""
        if ssrc != self._ssrc or extended_seq < self._first_in:
            return None
        m = self._map
        if extended_seq > m.highest:
            if m._offsets[-1] is None:
                m._push(m.highest + 1, m.offset)
            m.highest = extended_seq
            out = extended_seq - m.offset
            ts = (timestamp - self._ts_offset) & 0xFFFFFFFF
            self._last_out_seq = out
            self._last_out_ts = ts
            return out & 0xFFFF, ts
        offset = m.lookup(extended_seq)
        if offset is None:
            return None
        return (extended_seq - offset) & 0xFFFF, (timestamp - self._ts_offset) & 0xFFFFFFFF

    def drop(self, ssrc: int, extended_seq: int) -> None:
        """A packet of the current source is dropped on purpose: keep it out of the numbering.

        Only possible for a packet newer than every packet seen so far; an older one has had its
        outgoing number reserved and leaves a hole.
        """
        if ssrc == self._ssrc and extended_seq >= self._first_in:
            self._map.drop(extended_seq)


class Vp8Fields(NamedTuple):
    """The VP8 descriptor fields to send (None where the received descriptor has none)."""

    picture_id: int | None
    tl0_pic_idx: int | None
    key_idx: int | None
    picture_id_15bit: bool


class Vp8Munger:
    """Keeps PictureID, TL0PICIDX and KEYIDX continuous on one outgoing VP8 stream.

    Call `switch_source` with the descriptor of the new source's first packet (its key frame),
    `update`/`munge` for each packet to forward and `drop` for each packet of a picture dropped on
    purpose (temporal layer filtering), so PictureIDs stay gapless. At a switch each field's offset
    is `new_in - last_out - 1` (mod 2**15, 2**8, 2**5); every packet then gets `in - offset`.

    Once a 15-bit PictureID has been sent, every later one is sent 15-bit, re-packing 7-bit
    descriptors (`munge` returns the new descriptor bytes, which may be one byte longer).
    """

    __slots__ = (
        "_key_offset",
        "_key_pending",
        "_last_key",
        "_last_pid",
        "_last_tl0",
        "_pending",
        "_pid_map",
        "_pid_pending",
        "_tl0_offset",
        "_tl0_pending",
        "_wide",
    )

    def __init__(self) -> None:
        self._pid_map = _OffsetMap(0, 0)
        self._last_pid: int | None = None  # extended outgoing PictureID
        self._last_tl0: int | None = None
        self._last_key: int | None = None
        self._tl0_offset = 0
        self._key_offset = 0
        self._pending = self._pid_pending = self._tl0_pending = self._key_pending = True
        self._wide = False

    @property
    def picture_id_15bit(self) -> bool:
        """Whether PictureIDs are now always sent 15-bit."""
        return self._wide

    def switch_source(self, descriptor: Vp8PayloadDescriptor) -> None:
        """The next packet, described by `descriptor`, is the first of a new source.

        Fields the descriptor lacks are aligned at the first later packet that has them.
        """
        self._pending = self._pid_pending = self._tl0_pending = self._key_pending = True
        self._init_fields(descriptor)

    def _init_fields(self, d: Vp8PayloadDescriptor) -> None:
        if self._pid_pending and d.picture_id is not None:
            self._pid_pending = False
            last = self._last_pid
            self._pid_map = _OffsetMap(d.picture_id, 0 if last is None else d.picture_id - last - 1)
        if self._tl0_pending and d.tl0_pic_idx is not None:
            self._tl0_pending = False
            last = self._last_tl0
            self._tl0_offset = 0 if last is None else (d.tl0_pic_idx - last - 1) & 0xFF
        if self._key_pending and d.key_idx is not None:
            self._key_pending = False
            last = self._last_key
            self._key_offset = 0 if last is None else (d.key_idx - last - 1) & 0x1F
        self._pending = self._pid_pending or self._tl0_pending or self._key_pending

    def _fields(self, d: Vp8PayloadDescriptor) -> tuple[int | None, int | None, int | None] | None:
        if self._pending:
            self._init_fields(d)
        pid = d.picture_id
        if pid is not None and not self._pid_pending:
            m = self._pid_map
            hi = m.highest
            if d.picture_id_15bit:
                self._wide = True
                diff = (pid - hi) & 0x7FFF
                if diff >= 0x4000:
                    diff -= 0x8000
            else:
                diff = (pid - hi) & 0x7F
                if diff >= 0x40:
                    diff -= 0x80
            ext = hi + diff
            if ext >= m._starts[-1] and m._offsets[-1] is not None:
                # The common case (the newest range), m.forward inlined.
                if ext > hi:
                    m.highest = ext
                out = ext - m.offset
            else:
                offset = m.forward(ext)
                if offset is None:
                    return None
                out = ext - offset
            last = self._last_pid
            if last is None or out > last:
                self._last_pid = out
            pid = out & (0x7FFF if self._wide else 0x7F)
        tl0 = d.tl0_pic_idx
        if tl0 is not None:
            tl0 = (tl0 - self._tl0_offset) & 0xFF
            last = self._last_tl0
            if last is None or 0 < (tl0 - last) & 0xFF < 0x80:
                self._last_tl0 = tl0
        key = d.key_idx
        if key is not None:
            key = (key - self._key_offset) & 0x1F
            last = self._last_key
            if last is None or 0 < (key - last) & 0x1F < 0x10:
                self._last_key = key
        return pid, tl0, key

    def update(self, descriptor: Vp8PayloadDescriptor) -> Vp8Fields | None:
        """The fields to send for a forwarded packet, or None when it must be dropped (its
        picture precedes the switch or is too old to map)."""
        fields = self._fields(descriptor)
        if fields is None:
            return None
        return Vp8Fields(*fields, self._wide and fields[0] is not None)

    def munge(self, descriptor: Vp8PayloadDescriptor) -> bytes | None:
        """The descriptor bytes to send in place of the received `descriptor.size` bytes, or None
        when the packet must be dropped. Equal to `munged_descriptor(descriptor, **update())`."""
        d = descriptor
        fields = self._fields(d)
        if fields is None:
            return None
        pid, tl0, key = fields
        tid = d.tid
        b0 = d.partition_index | (0x10 if d.start_of_partition else 0)
        if d.non_reference:
            b0 |= 0x20
        head: tuple[int, ...]
        if pid is None:
            if tl0 is None and tid is None and key is None:
                return bytes((b0 | 0x80, 0)) if d.extended else bytes((b0,))
            xb = 0
            head = ()
        elif self._wide or pid > 0x7F:
            xb = 0x80
            head = (0x80 | pid >> 8, pid & 0xFF)
        else:
            xb = 0x80
            head = (pid,)
        if tl0 is not None:
            xb |= 0x40
            head += (tl0,)
        if tid is not None:
            tk = tid << 6 | (0x20 if d.layer_sync else 0)
            if key is not None:
                return bytes((b0 | 0x80, xb | 0x30, *head, tk | key))
            return bytes((b0 | 0x80, xb | 0x20, *head, tk))
        if key is not None:
            return bytes((b0 | 0x80, xb | 0x10, *head, key))
        return bytes((b0 | 0x80, xb, *head))

    def drop(self, descriptor: Vp8PayloadDescriptor) -> None:
        """A packet of the current source is dropped on purpose; the first packet seen of a newer
        picture removes that picture's id from the outgoing numbering."""
        if self._pending:
            self._init_fields(descriptor)
        pid = descriptor.picture_id
        if pid is not None and not self._pid_pending:
            m = self._pid_map
            modulus = 0x8000 if descriptor.picture_id_15bit else 0x80
            diff = (pid - m.highest) % modulus
            if diff >= modulus >> 1:
                diff -= modulus
            m.drop(m.highest + diff)


class SenderReportTranslator:
    """Publisher sender reports → the NTP/RTP pair of a subscriber's sender report.

    Keeps the last `(ntp_timestamp, rtp_timestamp)` reported per publisher SSRC (all sharing
    `clock_rate`). NTP timestamps are 64-bit (32.32 fixed point).
    """

    __slots__ = ("_clock_rate", "_reports")

    def __init__(self, clock_rate: int) -> None:
        self._clock_rate = clock_rate
        self._reports: dict[int, tuple[int, int]] = {}

    def on_sender_report(self, ssrc: int, ntp_timestamp: int, rtp_timestamp: int) -> None:
        """Record a publisher SR for `ssrc`."""
        self._reports[ssrc] = (ntp_timestamp, rtp_timestamp & 0xFFFFFFFF)

    def has_report(self, ssrc: int) -> bool:
        """Whether an SR has been seen for `ssrc` (LiveKit switches only then)."""
        return ssrc in self._reports

    def forget(self, ssrc: int) -> None:
        """Drop the report of a source that went away."""
        self._reports.pop(ssrc, None)

    def _ticks(self, ntp_delta: int) -> int:
        # NTP delta (32.32 seconds) → RTP ticks, rounded to nearest.
        return (ntp_delta * self._clock_rate + (1 << 31)) >> 32

    def rtp_timestamp_at(self, ssrc: int, ntp_timestamp: int) -> int | None:
        """`ssrc`'s RTP timestamp at the NTP time `ntp_timestamp`, extrapolated from its SR."""
        report = self._reports.get(ssrc)
        if report is None:
            return None
        ntp, rtp = report
        return (rtp + self._ticks(ntp_timestamp - ntp)) & 0xFFFFFFFF

    def translate_timestamp(self, timestamp: int, from_ssrc: int, to_ssrc: int) -> int | None:
        """A timestamp of `from_ssrc` expressed in `to_ssrc`'s RTP timebase (same instant)."""
        a = self._reports.get(from_ssrc)
        b = self._reports.get(to_ssrc)
        if a is None or b is None:
            return None
        return (b[1] + ts_diff(timestamp, a[1]) + self._ticks(a[0] - b[0])) & 0xFFFFFFFF

    def expected_timestamp(
        self, first_ts: int, new_ssrc: int, current_ssrc: int, timestamp_offset: int
    ) -> int | None:
        """The outgoing timestamp for `new_ssrc`'s packet `first_ts` when switching from
        `current_ssrc` whose munger offset is `timestamp_offset` (`RtpMunger.timestamp_offset`):
        the `expected_ts` for `RtpMunger.switch_source`. None without both SRs."""
        ts = self.translate_timestamp(first_ts, new_ssrc, current_ssrc)
        return None if ts is None else (ts - timestamp_offset) & 0xFFFFFFFF

    def translate(
        self, ssrc: int, timestamp_offset: int, now_ntp: int | None = None
    ) -> tuple[int, int] | None:
        """`(ntp_timestamp, rtp_timestamp)` for an outgoing SR of a stream forwarding `ssrc`.

        `timestamp_offset` is the munger's `(in - out) mod 2**32`. With `now_ntp` the RTP time
        is extrapolated to that instant; otherwise the publisher's SR instant is used. None when
        no SR is known for `ssrc` (sending no SR is safer than a wrong one).
        """
        report = self._reports.get(ssrc)
        if report is None:
            return None
        ntp, rtp = report
        if now_ntp is not None:
            rtp += self._ticks(now_ntp - ntp)
            ntp = now_ntp
        return ntp, (rtp - timestamp_offset) & 0xFFFFFFFF
