"""Tests for sfu.media.rtp.twcc: transport-wide CC feedback chunk coding and `from_arrivals`."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.errors import RtcpError
from sfu.media.rtp.rtcp import parse_compound
from sfu.media.rtp.twcc import TransportCcFeedback

PROPERTY = settings(max_examples=150, deadline=None)

HEAD = bytes.fromhex("00 00 00 01 00 00 00 02")  # sender SSRC 1, media SSRC 2


def _packet(fixed_and_rest: bytes) -> bytes:
    body = HEAD + fixed_and_rest
    pad = -len(body) & 3
    if pad:
        body += bytes(pad - 1) + bytes((pad,))
    b0 = 0x8F | (0x20 if pad else 0)
    return bytes((b0, 205)) + (len(body) // 4).to_bytes(2) + body


def _chunks(fb: TransportCcFeedback) -> bytes:
    data = bytes(fb)
    return data[20:]


def test_run_length_chunk() -> None:
    fb = TransportCcFeedback(1, 2, 0, 0, 0, (4,) * 20)
    assert _chunks(fb)[:2] == b"\x20\x14"  # run length, symbol 1, 20 packets
    assert TransportCcFeedback.parse(bytes(fb)) == fb


def test_all_lost_run() -> None:
    fb = TransportCcFeedback(1, 2, 10, 0, 0, (None,) * 9000)
    chunks = _chunks(fb)
    assert chunks[:4] == bytes.fromhex("1fff 0329")  # 8191 + 809, symbol 0
    assert TransportCcFeedback.parse(bytes(fb)) == fb


def test_one_bit_vector_chunk() -> None:
    deltas = (1, None, 2, 3, None, None, 4, 5, 6, None, 7, 8, 9, 10, 11)
    fb = TransportCcFeedback(1, 2, 0, 0, 0, deltas)
    chunk = int.from_bytes(_chunks(fb)[:2])
    assert chunk >> 14 == 0b10
    assert f"{chunk & 0x3FFF:014b}" == "10110011101111"
    assert TransportCcFeedback.parse(bytes(fb)) == fb


def test_two_bit_vector_chunk_with_large_and_negative_deltas() -> None:
    fb = TransportCcFeedback(1, 2, 65533, -1, 255, (1, 1000, None, -1, 0, 300))
    chunk = int.from_bytes(_chunks(fb)[:2])
    assert chunk >> 14 == 0b11
    assert [(chunk >> s) & 3 for s in range(12, 0, -2)] == [1, 2, 0, 2, 1, 2]
    parsed = TransportCcFeedback.parse(bytes(fb))
    assert parsed == fb
    assert list(parsed.arrivals()) == [65533, 65534, 65535, 0, 1, 2]


def test_parse_ignores_vector_symbols_past_the_status_count() -> None:
    # 3 packets in a 1-bit vector whose other 11 slots are set; reserved 2-bit slots likewise.
    data = _packet(bytes.fromhex("0000 0003 000000 00") + bytes.fromhex("bfff") + b"\x01\x02\x03")
    assert TransportCcFeedback.parse(data).deltas == (1, 2, 3)
    data = _packet(bytes.fromhex("0000 0002 000000 00") + bytes.fromhex("d7ff") + b"\x01\x02")
    assert TransportCcFeedback.parse(data).deltas == (1, 2)


@pytest.mark.parametrize(
    "rest",
    [
        "0000 0001 000000 00",  # no chunk
        "0000 0002 000000 00 2002 01",  # a delta missing
        "0000 0001 000000 00 4001",  # reserved symbol 3 in a run
        "0000 0001 000000 00 f000",  # reserved symbol 3 in a 2-bit vector
        "0000 0001 000000 00 2001 01 00000000",  # trailing bytes
    ],
)
def test_malformed_feedback(rest: str) -> None:
    with pytest.raises(RtcpError):
        TransportCcFeedback.parse(_packet(bytes.fromhex(rest)))


def test_builder_rejects_out_of_range() -> None:
    for fb in (
        TransportCcFeedback(1, 2, 0, 1 << 23, 0, ()),
        TransportCcFeedback(1, 2, 0, 0, 256, ()),
        TransportCcFeedback(1, 2, 0, 0, 0, (1 << 15,)),
        TransportCcFeedback(1, 2, 1 << 16, 0, 0, ()),
    ):
        with pytest.raises(RtcpError):
            bytes(fb)


def test_from_arrivals_basic() -> None:
    (fb,) = TransportCcFeedback.from_arrivals(
        1, 2, {10: 1_000_000, 11: 1_000_250, 13: 999_000, 14: None}, feedback_packet_count=255
    )
    assert fb.received_arrivals() == [(10, 1_000_000), (11, 1_000_250), (13, 999_000)]
    assert (fb.base_sequence_number, fb.reference_time, fb.feedback_packet_count) == (10, 15, 255)
    assert fb.deltas == (160, 1, None, -5, None)
    assert fb.arrivals() == {10: 1_000_000, 11: 1_000_250, 12: None, 13: 999_000, 14: None}
    assert TransportCcFeedback.from_arrivals(1, 2, {}) == []


def test_from_arrivals_wraps_and_splits_on_long_gaps() -> None:
    arrivals = {65534: 0, 65535: 1000, 65536: 20_000_000, 65537: 20_000_500}
    first, second = TransportCcFeedback.from_arrivals(1, 2, arrivals, feedback_packet_count=3)
    assert (first.base_sequence_number, first.deltas) == (65534, (0, 4))
    assert (second.base_sequence_number, second.deltas) == (0, (128, 2))
    assert (first.feedback_packet_count, second.feedback_packet_count) == (3, 4)


def test_from_arrivals_respects_max_size() -> None:
    arrivals = {seq: seq * 37_000 if seq % 3 else None for seq in range(3000)}
    packets = TransportCcFeedback.from_arrivals(1, 2, arrivals, max_size=1200)
    assert len(packets) > 1
    assert all(len(bytes(p)) <= 1200 for p in packets)
    assert sum(p.packet_status_count for p in packets) == 3000


@PROPERTY
@given(
    st.integers(0, 200_000),
    st.integers(0, 10**10),
    st.lists(st.none() | st.integers(-50_000, 10_000_000), min_size=1, max_size=200),
    st.sampled_from([100, 300, 1200]),
)
def test_from_arrivals_reconstructs_times(
    first_seq: int, t0: int, steps: list[int | None], max_size: int
) -> None:
    arrivals: dict[int, int | None] = {}
    t = t0
    for k, step in enumerate(steps):
        if step is None:
            if k % 2:
                arrivals[first_seq + k] = None  # else: simply absent
        else:
            t = max(0, t + step)
            arrivals[first_seq + k] = t
    if not arrivals:
        return
    packets = TransportCcFeedback.from_arrivals(7, 8, arrivals, max_size=max_size)
    seen: dict[int, int | None] = {}
    for p in packets:
        data = bytes(p)
        assert len(data) <= max(max_size, 40)
        assert parse_compound(data) == [p]
        seen.update(p.arrivals())
    lo, hi = min(arrivals), max(arrivals)
    assert len(seen) == min(hi - lo + 1, 65536)
    for seq in range(lo, hi + 1):
        expected = arrivals.get(seq)
        got = seen[seq & 0xFFFF]
        if expected is None:
            assert got is None
        else:
            assert got is not None and abs(got - expected) <= 125


@PROPERTY
@given(
    st.lists(st.none() | st.integers(0, 255) | st.integers(-0x8000, 0x7FFF), max_size=600),
    st.integers(0, 0xFFFF),
)
def test_long_feedback_round_trips(deltas: list[int | None], base: int) -> None:
    fb = TransportCcFeedback(1, 2, base, -0x800000, 9, tuple(deltas))
    assert TransportCcFeedback.parse(bytes(fb)) == fb


# --- hostile feedback (audit 2026-12 finding 2) ---------------------------------------------------

#: 65,535 "not received" statuses in nine run-length chunks: 40 bytes, 30 to a 1,200-byte datagram
ALL_LOST_BLOB = (
    bytes((0x8F, 205, 0, 9))
    + struct.pack("!IIHHI", 1, 2, 0, 65535, 0)
    + struct.pack("!H", 8191) * 9
    + b"\0\0"
)


def test_a_datagram_of_maximal_run_length_feedback_parses_in_bounded_time() -> None:
    start = time.perf_counter()
    packets = parse_compound(ALL_LOST_BLOB * 30)
    elapsed = time.perf_counter() - start
    assert len(packets) == 30
    assert all(p == packets[0] for p in packets)
    assert isinstance(packets[0], TransportCcFeedback)
    assert packets[0].packet_status_count == 65535 and packets[0].received == ()
    assert packets[0].received_arrivals() == []
    assert elapsed < 0.005  # was about 40-250 ms: one Python step and one slot per status


def test_the_status_count_is_capped_by_what_the_chunks_describe() -> None:
    # 65,535 statuses announced, one 1-bit vector chunk present: refused before any expansion
    data = _packet(bytes.fromhex("0000 ffff 000000 00") + bytes.fromhex("8000"))
    with pytest.raises(RtcpError):
        TransportCcFeedback.parse(data)
    # received packets need a delta byte each: 8,191 small deltas announced, none present
    data = _packet(bytes.fromhex("0000 1fff 000000 00") + bytes.fromhex("3fff"))
    start = time.perf_counter()
    with pytest.raises(RtcpError):
        TransportCcFeedback.parse(data)
    assert time.perf_counter() - start < 0.01


def test_python_work_follows_the_bytes_not_the_status_count() -> None:
    # the cost of a run of "not received" must not grow with its length
    short = _packet(bytes.fromhex("0000 0001 000000 00") + bytes.fromhex("0001"))
    long = ALL_LOST_BLOB

    def cost(data: bytes) -> float:
        start = time.perf_counter()
        for _ in range(200):
            TransportCcFeedback.parse(data)
        return time.perf_counter() - start

    assert cost(long) < 20 * cost(short) + 0.05
