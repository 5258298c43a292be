"""RTP timebases of different sources, related through the publisher's RTCP sender reports.

Simulcast layers (and any two publisher SSRCs) have unrelated random RTP timestamp bases; each
sender report pairs one of them with the publisher's NTP clock. `SenderReportTranslator` keeps the
last report per SSRC and uses them to express one source's timestamp in another's timebase (so a
layer switch continues the old layer's timeline) and to build the NTP↔RTP pair of an outgoing
sender report for a stream whose timestamps are offset from the source's.
"""

from __future__ import annotations

from .seqnum import ts_diff

__all__ = ["MAX_SENDER_REPORTS", "SenderReportTranslator"]

#: sources one translator keeps a report for (a track has at most 3 layers; the rest is slack
#: for SSRC changes); beyond it the oldest is forgotten
MAX_SENDER_REPORTS = 8


class SenderReportTranslator:
    """Publisher sender reports → the NTP/RTP pair of a subscriber's sender report.

    Keeps the last `(ntp_timestamp, rtp_timestamp)` reported per publisher SSRC (all sharing
    `clock_rate`). NTP timestamps are 64-bit (32.32 fixed point).
    """

    __slots__ = ("_clock_rate", "_reports")

    def __init__(self, clock_rate: int) -> None:
        self._clock_rate = clock_rate
        self._reports: dict[int, tuple[int, int]] = {}

    def on_sender_report(self, ssrc: int, ntp_timestamp: int, rtp_timestamp: int) -> bool:
        """Record a publisher SR for `ssrc`; True if that made it forget the oldest source's
        (more than `MAX_SENDER_REPORTS` sources)."""
        reports = self._reports
        evicted = False
        if ssrc not in reports and len(reports) >= MAX_SENDER_REPORTS:
            del reports[next(iter(reports))]
            evicted = True
        reports[ssrc] = (ntp_timestamp, rtp_timestamp & 0xFFFFFFFF)
        return evicted

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
        `current_ssrc` whose stream offset is `timestamp_offset` (outgoing = incoming − offset):
        None without both SRs."""
        ts = self.translate_timestamp(first_ts, new_ssrc, current_ssrc)
        return None if ts is None else (ts - timestamp_offset) & 0xFFFFFFFF

    def translate(
        self, ssrc: int, timestamp_offset: int, now_ntp: int | None = None
    ) -> tuple[int, int] | None:
        """`(ntp_timestamp, rtp_timestamp)` for an outgoing SR of a stream forwarding `ssrc`.

        `timestamp_offset` is the stream's `(in - out) mod 2**32`. With `now_ntp` the RTP time
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
