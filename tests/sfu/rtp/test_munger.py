"""Tests for sfu.rtp.munger: sequence/timestamp continuity, VP8 field continuity, SR translation."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.rtp.header import RtpHeader, RtpPacket, rewrite
from sfu.rtp.munger import RtpMunger, SenderReportTranslator, Vp8Fields, Vp8Munger
from sfu.rtp.seqnum import seq_diff, ts_diff
from sfu.rtp.vp8 import Vp8PayloadDescriptor, munged_descriptor

PROPERTY = settings(max_examples=200, deadline=None)

A, B, C = 0xA, 0xB, 0xC


# --- RtpMunger ------------------------------------------------------------------------------------


def test_first_source_is_identity_by_default() -> None:
    m = RtpMunger()
    assert m.update(A, 100, 5000) is None  # no source yet
    m.switch_source(A, 100, 5000)
    assert m.source_ssrc == A
    assert [m.update(A, s, 5000 + 3000 * (s - 100)) for s in (100, 101, 102)] == [
        (100, 5000),
        (101, 8000),
        (102, 11000),
    ]
    assert (m.last_sequence_number, m.last_timestamp) == (102, 11000)
    assert m.sequence_number_offset == 0 and m.timestamp_offset == 0


def test_start_sequence_number_and_expected_ts() -> None:
    m = RtpMunger(start_sequence_number=65535)
    m.switch_source(A, 7, 1000, expected_ts=0xFFFFFFFF)
    assert m.update(A, 7, 1000) == (65535, 0xFFFFFFFF)
    assert m.update(A, 8, 4000) == (0, 2999)  # both wrap
    assert m.timestamp_offset == 1001


def test_switch_keeps_sequence_numbers_continuous() -> None:
    m = RtpMunger()
    m.switch_source(A, 1000, 90_000)
    for s in range(1000, 1010):
        m.update(A, s, 90_000 + (s - 1000) * 3000)
    assert m.last_sequence_number == 1009 and m.last_timestamp == 117_000
    m.switch_source(B, 50_000, 7_000_000, expected_ts=120_000)
    assert m.update(A, 1010, 120_000) is None  # the old source is not forwarded any more
    assert m.update(B, 50_000, 7_000_000) == (1010, 120_000)
    assert m.update(B, 50_001, 7_003_000) == (1011, 123_000)
    m.switch_source(C, 3, 42, expected_ts=100)  # expected_ts in the past: last + 1
    assert m.update(C, 3, 42) == (1012, 123_001)


def test_switch_without_expected_ts() -> None:
    m = RtpMunger()
    m.switch_source(A, 0, 10)
    m.update(A, 0, 10)
    m.switch_source(B, 500, 77)
    assert m.update(B, 500, 77) == (1, 11)


def test_sequence_wraparound() -> None:
    m = RtpMunger(start_sequence_number=65533)
    m.switch_source(A, 70_000, 0)
    out = [m.update(A, s, 0) for s in range(70_000, 70_006)]
    assert [o[0] for o in out if o] == [65533, 65534, 65535, 0, 1, 2]
    m.switch_source(B, 131_070, 0, expected_ts=1)  # extended numbers of another source
    assert m.update(B, 131_070, 0) == (3, 1)


def test_reordering_within_source() -> None:
    m = RtpMunger(start_sequence_number=0)
    m.switch_source(A, 10, 0)
    got = [m.update(A, s, s) for s in (10, 11, 13, 12, 15, 14)]
    assert [g[0] for g in got if g] == [0, 1, 3, 2, 5, 4]
    assert m.last_sequence_number == 5


def test_packets_before_switch_are_dropped() -> None:
    m = RtpMunger()
    m.switch_source(A, 100, 0)
    assert m.update(A, 99, 0) is None
    m.update(A, 100, 0)
    m.update(A, 101, 0)
    m.switch_source(B, 10, 0, expected_ts=5)
    m.update(B, 10, 0)
    m.switch_source(A, 200, 0, expected_ts=10)  # back to A, from a later key frame
    assert m.update(A, 150, 0) is None  # late packet of A from before this switch
    assert m.update(A, 200, 0) == (103, 10)


def test_dropped_packets_leave_no_gap() -> None:
    m = RtpMunger(start_sequence_number=0)
    m.switch_source(A, 1, 0)
    assert m.update(A, 1, 0) == (0, 0)
    m.drop(A, 2)
    m.drop(A, 3)
    assert m.update(A, 4, 0) == (1, 0)
    m.drop(A, 6)  # 5 is still in flight
    assert m.update(A, 7, 0) == (3, 0)
    assert m.update(A, 5, 0) == (2, 0)  # late, gets the slot reserved before the drop
    assert m.update(A, 6, 0) is None  # a duplicate of a dropped packet
    assert m.update(A, 2, 0) is None
    m.drop(A, 4)  # not newer than the newest: its number is already used
    assert m.update(A, 8, 0) == (4, 0)
    m.drop(B, 9)  # another source: ignored
    assert m.update(A, 9, 0) == (5, 0)


def test_many_drops_forget_old_ranges() -> None:
    m = RtpMunger(start_sequence_number=0)
    m.switch_source(A, 0, 0)
    m.update(A, 0, 0)
    m.update(A, 1, 0)  # hole at 2..? no: 2 is lost in transit
    for s in range(3, 300, 2):
        m.drop(A, s)
        assert m.update(A, s + 1, 0) is not None
    assert m.update(A, 2, 0) is None  # too old to map any more
    assert m.update(A, 298, 0) == ((298 - 148) & 0xFFFF, 0)


@st.composite
def in_order_streams(draw: st.DrawFn) -> list[tuple[str, int, int, int]]:
    """Events: ("switch", ssrc, first_seq, first_ts), ("pkt"|"drop", ssrc, seq, ts)."""
    events: list[tuple[str, int, int, int]] = []
    seqs = {s: draw(st.integers(0, 1 << 20)) for s in (A, B, C)}
    tss = {s: draw(st.integers(0, 0xFFFFFFFF)) for s in (A, B, C)}
    current = None
    for _ in range(draw(st.integers(1, 8))):
        ssrc = draw(st.sampled_from([A, B, C]))
        if ssrc != current:
            events.append(("switch", ssrc, seqs[ssrc], tss[ssrc]))
            current = ssrc
        for _ in range(draw(st.integers(1, 30))):
            kind = "drop" if draw(st.integers(0, 4)) == 0 else "pkt"
            events.append((kind, ssrc, seqs[ssrc], tss[ssrc]))
            seqs[ssrc] += 1
            tss[ssrc] = (tss[ssrc] + draw(st.integers(0, 3000))) & 0xFFFFFFFF
        # the source keeps running while it is not forwarded
        for s in (A, B, C):
            if s != current:
                seqs[s] += draw(st.integers(0, 100))
            tss[s] = (tss[s] + 9000) & 0xFFFFFFFF
    return events


@PROPERTY
@given(in_order_streams(), st.none() | st.integers(0, 0xFFFF))
def test_in_order_output_is_gapless(
    events: list[tuple[str, int, int, int]], start: int | None
) -> None:
    m = RtpMunger(start_sequence_number=start)
    out: list[tuple[int, int]] = []
    source_first: list[int] = []
    for kind, ssrc, seq, ts in events:
        if kind == "switch":
            expected = None if m.last_timestamp is None else (m.last_timestamp + 3000)
            m.switch_source(ssrc, seq, ts, expected_ts=expected)
            source_first.append(len(out))
        elif kind == "drop":
            m.drop(ssrc, seq)
        else:
            r = m.update(ssrc, seq, ts)
            assert r is not None
            out.append(r)
    for prev, cur in itertools.pairwise(out):
        assert seq_diff(cur[0], prev[0]) == 1
        assert ts_diff(cur[1], prev[1]) >= 0
    for i in source_first:
        if 0 < i < len(out):
            assert ts_diff(out[i][1], out[i - 1][1]) > 0


@PROPERTY
@given(
    st.integers(0, 1 << 20),
    st.lists(st.booleans(), min_size=1, max_size=80),
    st.lists(st.integers(0, 6), min_size=80, max_size=80),
)
def test_reordered_output_is_consistent(first: int, dropped: list[bool], delay: list[int]) -> None:
    n = len(dropped)
    arrival = sorted(range(n), key=lambda k: k + delay[k])  # bounded reordering
    m = RtpMunger(start_sequence_number=0)
    m.switch_source(A, first, 0)
    highest = -1
    late_drops = 0
    forwarded: dict[int, int] = {}
    for k in arrival:
        if dropped[k]:
            if k <= highest:
                late_drops += 1
            m.drop(A, first + k)
        else:
            r = m.update(A, first + k, 0)
            assert r is not None
            forwarded[k] = r[0]
        highest = max(highest, k)
    outs = [forwarded[k] for k in sorted(forwarded)]
    assert len(set(outs)) == len(outs)
    assert all(seq_diff(b, a) > 0 for a, b in itertools.pairwise(outs))
    if outs:
        span = seq_diff(outs[-1], outs[0]) + 1
        assert span - len(outs) <= late_drops


# --- Vp8Munger ------------------------------------------------------------------------------------


def vp8(
    picture_id: int | None,
    tl0: int | None = None,
    tid: int | None = None,
    key_idx: int | None = None,
    *,
    wide: bool = True,
    start: bool = False,
) -> Vp8PayloadDescriptor:
    return Vp8PayloadDescriptor(
        start_of_partition=start,
        picture_id=picture_id,
        picture_id_15bit=wide and picture_id is not None,
        tl0_pic_idx=tl0,
        tid=tid,
        key_idx=key_idx,
        extended=True,
    )


def test_vp8_fields_continue_across_switch() -> None:
    v = Vp8Munger()
    v.switch_source(vp8(100, 10, 0, 3, start=True))
    for pid in range(100, 106):
        f = v.update(vp8(pid, 10 + (pid - 100), 0, 3))
    assert f == Vp8Fields(105, 15, 3, True)
    v.switch_source(vp8(7000, 200, 0, 30, start=True))
    assert v.update(vp8(7000, 200, 0, 30)) == Vp8Fields(106, 16, 4, True)
    assert v.update(vp8(7001, 201, 1, 30)) == Vp8Fields(107, 17, 4, True)
    assert v.update(vp8(6999, 199, 0, 29)) is None  # picture from before the switch


def test_vp8_wraparound() -> None:
    v = Vp8Munger()
    v.switch_source(vp8(0x7FFE, 255, key_idx=31))
    got = [
        v.update(vp8(p & 0x7FFF, (255 + i) & 0xFF, key_idx=31))
        for i, p in enumerate(range(0x7FFE, 0x8002))
    ]
    assert [g.picture_id for g in got if g] == [0x7FFE, 0x7FFF, 0, 1]
    assert [g.tl0_pic_idx for g in got if g] == [255, 0, 1, 2]
    v.switch_source(vp8(5, 9, key_idx=0))
    assert v.update(vp8(5, 9, key_idx=0)) == Vp8Fields(2, 3, 0, True)


def test_vp8_7bit_source_stays_7bit_and_wraps() -> None:
    v = Vp8Munger()
    v.switch_source(vp8(126, wide=False))
    got = [v.munge(vp8(p % 128, wide=False)) for p in (126, 127, 128, 129)]
    assert [g[2] if g else None for g in got] == [126, 127, 0, 1]
    assert all(g is not None and len(g) == 3 for g in got)


def test_vp8_7bit_after_15bit_is_repacked() -> None:
    v = Vp8Munger()
    v.switch_source(vp8(300, 1, 0))
    v.update(vp8(300, 1, 0))
    seven = Vp8PayloadDescriptor.parse(bytes.fromhex("80 e0 05 09 40 aa bb"))
    assert seven.picture_id == 5 and not seven.picture_id_15bit
    v.switch_source(seven)
    head = v.munge(seven)
    assert head is not None
    assert head == bytes.fromhex("80 e0 81 2d 02 40")  # PictureID 301 in 15 bits, TL0PICIDX 2
    assert v.picture_id_15bit
    # in the outgoing packet the payload after the descriptor is untouched
    data = bytes(RtpHeader(96, 1, 2, 3)) + bytes.fromhex("80 e0 05 09 40 aa bb")
    p = RtpPacket.parse(data)
    out = rewrite(
        p,
        payload_type=96,
        sequence_number=1,
        timestamp=2,
        ssrc=3,
        payload_header=head,
        payload_header_size=seven.size,
    )
    assert RtpPacket.parse(out).payload == head + b"\xaa\xbb"
    assert v.munge(Vp8PayloadDescriptor.parse(bytes.fromhex("80 e0 06 0a 40"))) == bytes.fromhex(
        "80 e0 81 2e 03 40"
    )


def test_vp8_dropped_pictures_leave_no_gap() -> None:
    v = Vp8Munger()
    v.switch_source(vp8(10, 0, 0))
    assert v.update(vp8(10, 0, 0)) == Vp8Fields(10, 0, None, True)
    v.drop(vp8(11, 0, 2))  # two packets of a TID 2 picture
    v.drop(vp8(11, 0, 2))
    assert v.update(vp8(12, 0, 1)) == Vp8Fields(11, 0, None, True)
    v.drop(vp8(14, 0, 2))  # picture 13 not seen yet
    assert v.update(vp8(15, 1, 0)) == Vp8Fields(13, 1, None, True)
    assert v.update(vp8(13, 0, 1)) == Vp8Fields(12, 0, None, True)  # late: reserved slot
    assert v.update(vp8(12, 0, 1)) == Vp8Fields(11, 0, None, True)


def test_vp8_fields_missing_at_switch_are_aligned_later() -> None:
    v = Vp8Munger()
    v.switch_source(vp8(50, 7))
    v.update(vp8(50, 7))
    v.switch_source(vp8(None))
    assert v.update(vp8(None)) == Vp8Fields(None, None, None, False)
    assert v.update(vp8(900, 100)) == Vp8Fields(51, 8, None, True)
    assert v.munge(vp8(None)) == b"\x80\x00"
    plain = Vp8PayloadDescriptor(start_of_partition=True)
    assert v.munge(plain) == b"\x10"


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(0, 0x7FFF), st.integers(0, 255), st.integers(0, 31), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 40),
)
def test_vp8_output_is_continuous(sources: list[tuple[int, int, int, bool]], pictures: int) -> None:
    """Every picture is a TL0 picture: outgoing PictureID and TL0PICIDX advance by one per picture
    across all switches, KEYIDX by one per switch; `munge` matches `update` + `munged_descriptor`."""
    v, w = Vp8Munger(), Vp8Munger()
    last: Vp8Fields | None = None
    for pid0, tl00, key, wide in sources:
        mask = 0x7FFF if wide else 0x7F
        for i in range(pictures):
            d = vp8((pid0 + i) & mask, (tl00 + i) & 0xFF, 0, key, wide=wide, start=i == 0)
            if i == 0:
                v.switch_source(d)
                w.switch_source(d)
            f = v.update(d)
            head = w.munge(d)
            assert f is not None and f.picture_id is not None and head is not None
            assert head == munged_descriptor(
                d,
                picture_id=f.picture_id,
                tl0_pic_idx=f.tl0_pic_idx,
                key_idx=f.key_idx,
                picture_id_15bit=f.picture_id_15bit,
            )
            parsed = Vp8PayloadDescriptor.parse(head)
            assert parsed.picture_id == f.picture_id
            assert parsed.picture_id_15bit == (f.picture_id_15bit or f.picture_id > 127)
            if last is not None:
                assert last.picture_id is not None
                assert (f.picture_id - last.picture_id) & 0x7F == 1
                if last.picture_id_15bit:
                    assert (f.picture_id - last.picture_id) & 0x7FFF == 1
                assert ((f.tl0_pic_idx or 0) - (last.tl0_pic_idx or 0)) & 0xFF == 1
                assert ((f.key_idx or 0) - (last.key_idx or 0)) & 0x1F == (1 if i == 0 else 0)
            last = f


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

    m = RtpMunger()
    m.switch_source(A, 0, ts_a(11.0))
    m.update(A, 0, ts_a(11.0))
    m.update(A, 1, ts_a(11.5))
    expected = t.expected_timestamp(ts_b(11.6), B, A, m.timestamp_offset)
    assert expected is not None
    m.switch_source(B, 9000, ts_b(11.6), expected_ts=expected)
    r = m.update(B, 9000, ts_b(11.6))
    assert r is not None and r[1] == ts_a(11.6)
    assert t.translate(B, m.timestamp_offset) == (11 * NTP_1S, ts_a(11))
