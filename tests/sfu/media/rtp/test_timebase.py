"""Sender-report based timebase translation between RTP sources."""

from __future__ import annotations

from sfu.media.rtp.timebase import MAX_SENDER_REPORTS, SenderReportTranslator

A, B, C = 0xA, 0xB, 0xC


# --- SenderReportTranslator -----------------------------------------------------------------------

NTP_1S = 1 << 32


def test_sr_translation() -> None:
    t = SenderReportTranslator(90_000)
    assert t.translate(A, 0) is None and not t.has_report(A)
    t.on_sender_report(A, 1000 * NTP_1S, 500_000)
    assert t.has_report(A)
    assert t.translate(A, 400_000) == (1000 * NTP_1S, 100_000)
    assert t.translate(A, 600_000) == (1000 * NTP_1S, (100_000 - 200_000) & 0xFFFFFFFF)
    assert t.translate(A, 0, now_ntp=1000 * NTP_1S + NTP_1S // 2) == (
        1000 * NTP_1S + NTP_1S // 2,
        545_000,
    )
    assert t.rtp_timestamp_at(A, 999 * NTP_1S) == 410_000
    t.forget(A)
    assert t.translate(A, 0) is None


def test_layer_switch_with_sender_reports() -> None:
    """Two layers with unrelated RTP bases: the switch lands on the same media clock."""
    t = SenderReportTranslator(90_000)
    base_a, base_b = 1_000_000, 4_000_000_000

    def ts_a(sec: float) -> int:
        return (base_a + int(sec * 90_000)) & 0xFFFFFFFF

    def ts_b(sec: float) -> int:
        return (base_b + int(sec * 90_000)) & 0xFFFFFFFF

    t.on_sender_report(A, 10 * NTP_1S, ts_a(10))
    t.on_sender_report(B, 11 * NTP_1S, ts_b(11))
    assert t.translate_timestamp(ts_b(12), B, A) == ts_a(12)
    assert t.translate_timestamp(ts_b(12), C, A) is None

    # forwarding layer A unchanged (offset 0), then switching to B at 11.6 s
    expected = t.expected_timestamp(ts_b(11.6), B, A, 0)
    assert expected == ts_a(11.6)
    offset_b = (ts_b(11.6) - expected) & 0xFFFFFFFF  # outgoing = incoming − offset
    assert (ts_b(11.6) - offset_b) & 0xFFFFFFFF == ts_a(11.6)
    assert t.translate(B, offset_b) == (11 * NTP_1S, ts_a(11))


def test_reports_are_kept_for_a_bounded_number_of_sources() -> None:
    tr = SenderReportTranslator(90000)
    evicted = [tr.on_sender_report(ssrc, 1 << 60, ssrc) for ssrc in range(1, 1001)]
    assert evicted == [False] * MAX_SENDER_REPORTS + [True] * (1000 - MAX_SENDER_REPORTS)
    assert len(tr._reports) == MAX_SENDER_REPORTS
    assert tr.has_report(1000) and not tr.has_report(1)
    assert tr.on_sender_report(1000, 1 << 61, 5) is False  # an update evicts nothing
