"""Tests for sfu.media.rtp.rtcp: compound parsing and building of every handled packet type."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.errors import RtcpError
from sfu.media.rtp.rtcp import (
    Bye,
    Dlrr,
    DlrrItem,
    ExtendedReport,
    Fir,
    FirEntry,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    Rrtr,
    RtcpPacket,
    Sdes,
    SdesChunk,
    SenderReport,
    TransportCcFeedback,
    UnknownRtcp,
    UnknownXrBlock,
    build_compound,
    is_rtcp,
    parse_compound,
)

PROPERTY = settings(max_examples=200, deadline=None)

# Chrome's periodic sender report for a video SSRC, compounded with its SDES CNAME.
CHROME_SR_SDES = bytes.fromhex(
    "80 c8 00 06"  # SR, RC=0, length 6
    "6b 8b 45 67"  # SSRC
    "e9 4f 3a 12 8b 43 95 81"  # NTP timestamp
    "9a 3b 3e 55"  # RTP timestamp
    "00 00 04 d2"  # packet count 1234
    "00 10 1f 4a"  # octet count
    "81 ca 00 06"  # SDES, SC=1, length 6
    "6b 8b 45 67"
    "01 10" + b"qR3l8v/1bWJm2DkA".hex() + "00 00"  # CNAME (16 chars), end, padding
)

# A receiver report as the SFU would send to a publisher: one report block.
RR_ONE_BLOCK = bytes.fromhex(
    "81 c9 00 07 00 00 00 016b 8b 45 67 05 ff ff fe 00 01 30 39 00 00 00 20 3a 12 8b 43 00 00 80 00"
)

PLI = bytes.fromhex("81 ce 00 02 00 00 00 01 6b 8b 45 67")
NACK = bytes.fromhex("81 cd 00 03 00 00 00 01 6b 8b 45 67 30 39 00 05")  # 12345, 12346, 12348
REMB = bytes.fromhex(
    "8f ce 00 05 00 00 00 01 00 00 00 00"
    "52 45 4d 42 01 12 62 5a"  # "REMB", 1 SSRC, exponent 4, mantissa 156250: 2.5 Mbps
    "6b 8b 45 67"
)
FIR = bytes.fromhex("84 ce 00 04 00 00 00 01 00 00 00 00 6b 8b 45 67 07 00 00 00")
XR_RRTR = bytes.fromhex("80 cf 00 04 00 00 00 01 04 00 00 02 e9 4f 3a 12 8b 43 95 81")
XR_DLRR = bytes.fromhex("80 cf 00 05 6b 8b 45 67 05 00 00 03 00 00 00 01 3a 12 8b 43 00 01 00 00")
BYE = bytes.fromhex("81 cb 00 03 6b 8b 45 67 05 6c 65 61 76 65 00 00")  # reason "leave"
APP = bytes.fromhex("80 cc 00 02 00 00 00 01 6e 61 6d 65")
TMMBR = bytes.fromhex("83 cd 00 04 00 00 00 01 00 00 00 00 6b 8b 45 67 04 00 00 00")
TWCC = bytes.fromhex(
    "af cd 00 06"  # P=1, FMT 15, length 6
    "00 00 00 01 6b 8b 45 67"
    "01 2c 00 05"  # base 300, 5 packets
    "00 10 00 07"  # reference time 4096 (x 64 ms), feedback count 7
    "d4 90"  # 2-bit vector: small small lost large small
    "04 01 ff f8 10"  # deltas: 1 ms, 0.25 ms, -2 ms, 4 ms
    "01"  # padding (1 byte)
)

ALL_FIXTURES = [
    CHROME_SR_SDES,
    RR_ONE_BLOCK,
    PLI,
    NACK,
    REMB,
    FIR,
    XR_RRTR,
    XR_DLRR,
    BYE,
    APP,
    TMMBR,
    TWCC,
]


def test_chrome_sr_sdes() -> None:
    sr, sdes = parse_compound(CHROME_SR_SDES)
    assert sr == SenderReport(0x6B8B4567, 0xE94F3A128B439581, 0x9A3B3E55, 1234, 0x101F4A)
    assert isinstance(sdes, Sdes)
    assert sdes.chunks[0].ssrc == 0x6B8B4567 and sdes.chunks[0].cname == "qR3l8v/1bWJm2DkA"
    assert build_compound([sr, sdes]) == CHROME_SR_SDES
    assert bytes(Sdes.for_cname(0x6B8B4567, "qR3l8v/1bWJm2DkA")) == CHROME_SR_SDES[28:]


def test_receiver_report() -> None:
    (rr,) = parse_compound(RR_ONE_BLOCK)
    assert rr == ReceiverReport(
        1, (ReportBlock(0x6B8B4567, 5, -2, 0x13039, 0x20, 0x3A128B43, 0x8000),)
    )
    assert bytes(rr) == RR_ONE_BLOCK
    assert ReceiverReport.parse(RR_ONE_BLOCK) == rr


def test_feedback_fixtures() -> None:
    assert parse_compound(PLI) == [Pli(1, 0x6B8B4567)]
    (nack,) = parse_compound(NACK)
    assert isinstance(nack, Nack) and nack.lost == [12345, 12346, 12348]
    assert Nack.from_sequence_numbers(1, 0x6B8B4567, [12348, 12345, 12346]).pairs == ((12345, 5),)
    assert parse_compound(REMB) == [Remb(1, 2_500_000, (0x6B8B4567,))]
    assert parse_compound(FIR) == [Fir(1, (FirEntry(0x6B8B4567, 7),))]
    for data in (PLI, NACK, REMB, FIR):
        assert build_compound(parse_compound(data)) == data


def test_xr_and_bye() -> None:
    assert parse_compound(XR_RRTR) == [ExtendedReport(1, (Rrtr(0xE94F3A128B439581),))]
    assert parse_compound(XR_DLRR) == [
        ExtendedReport(0x6B8B4567, (Dlrr((DlrrItem(1, 0x3A128B43, 0x10000),)),))
    ]
    assert parse_compound(BYE) == [Bye((0x6B8B4567,), b"leave")]
    for data in (XR_RRTR, XR_DLRR, BYE):
        assert build_compound(parse_compound(data)) == data


def test_twcc_fixture_in_compound() -> None:
    (fb,) = parse_compound(TWCC)
    assert fb == TransportCcFeedback(1, 0x6B8B4567, 300, 4096, 7, (4, 1, None, -8, 16))
    assert bytes(fb) == TWCC


def test_unknown_packets_are_kept() -> None:
    app, tmmbr = parse_compound(APP + TMMBR)
    assert app == UnknownRtcp(204, APP) and app.count == 0
    assert tmmbr == UnknownRtcp(205, TMMBR) and tmmbr.count == 3
    assert build_compound([app, tmmbr]) == APP + TMMBR
    afb = bytes.fromhex("8f ce 00 03 00 00 00 01 00 00 00 00 61 62 63 64")  # not REMB
    assert parse_compound(afb) == [UnknownRtcp(206, afb)]
    xr = bytes.fromhex("80 cf 00 03 00 00 00 01 07 09 00 01 aa bb cc dd")
    (report,) = parse_compound(xr)
    assert report == ExtendedReport(1, (UnknownXrBlock(7, 9, b"\xaa\xbb\xcc\xdd"),))
    assert bytes(report) == xr


def test_full_compound() -> None:
    data = b"".join(ALL_FIXTURES)
    packets = parse_compound(data)
    assert packets == [p for fixture in ALL_FIXTURES for p in parse_compound(fixture)]
    assert len(packets) == len(ALL_FIXTURES) + 1  # SR + SDES
    assert build_compound(packets) == data
    assert [parse_compound(bytes(p)) for p in packets] == [[p] for p in packets]


def test_padding_in_last_packet() -> None:
    padded = bytes.fromhex("a1 ce 00 03 00 00 00 01 6b 8b 45 67 00 00 00 04")
    assert parse_compound(PLI + padded) == [Pli(1, 0x6B8B4567)] * 2
    assert Pli.parse(padded) == Pli(1, 0x6B8B4567)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\xc8\x00",
        bytes.fromhex("40 c9 00 01 00 00 00 01"),  # version 1
        bytes.fromhex("80 c9 00 02 00 00 00 01"),  # length overruns
        bytes.fromhex("81 c9 00 01 00 00 00 01"),  # report block missing
        bytes.fromhex("80 c8 00 01 00 00 00 01"),  # SR without sender info
        bytes.fromhex("81 ca 00 01 00 00 00 01"),  # SDES chunk without terminator
        bytes.fromhex("81 ca 00 02 00 00 00 01 01 09 61 62"),  # SDES item overruns
        bytes.fromhex("82 cb 00 01 00 00 00 01"),  # BYE list overruns
        bytes.fromhex("81 cb 00 02 00 00 00 01 09 61 62 63"),  # BYE reason overruns
        bytes.fromhex("81 cd 00 01 00 00 00 01"),  # NACK without media SSRC
        bytes.fromhex("81 ce 00 01 00 00 00 01"),  # PLI without media SSRC
        bytes.fromhex("84 ce 00 03 00 00 00 01 00 00 00 00 00 00 00 01"),  # FIR entry cut
        bytes.fromhex("8f ce 00 04 00 00 00 01 00 00 00 00 52 45 4d 42 02 00 00 01"),  # REMB
        bytes.fromhex("80 cf 00 02 00 00 00 01 04 00 00 02"),  # XR block overruns
        bytes.fromhex("a0 c9 00 01 00 00 00 00"),  # padding count 0
        bytes.fromhex("a0 c9 00 01 00 00 00 09"),  # padding longer than the packet
        bytes.fromhex("af cd 00 04 00 00 00 01 00 00 00 02 00 00 00 01 00 00 00 00"),  # TWCC
    ],
)
def test_malformed_compound_raises_rtcp_error(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_compound(data)


def test_single_packet_parsers_check_type_and_length() -> None:
    with pytest.raises(RtcpError):
        SenderReport.parse(RR_ONE_BLOCK)
    with pytest.raises(RtcpError):
        Pli.parse(PLI + b"\x00")
    with pytest.raises(RtcpError):
        Pli.parse(NACK)
    with pytest.raises(RtcpError):
        Fir.parse(PLI)
    with pytest.raises(RtcpError):
        Remb.parse(PLI)
    with pytest.raises(RtcpError):
        Nack.parse(TWCC)
    with pytest.raises(RtcpError):
        ReportBlock.parse(bytes(23))


def test_31_report_blocks_fit() -> None:
    sr = SenderReport(1, 2, 3, 4, 5, tuple(ReportBlock(i, packets_lost=-i) for i in range(31)))
    data = bytes(sr)
    assert data[0] == 0x80 | 31 and len(data) == 28 + 31 * 24
    assert parse_compound(data) == [sr]


def test_builders_reject_unrepresentable() -> None:
    with pytest.raises(RtcpError):
        bytes(ReceiverReport(1, tuple(ReportBlock(i) for i in range(32))))
    with pytest.raises(RtcpError):
        bytes(ReportBlock(1, packets_lost=1 << 23))
    with pytest.raises(RtcpError):
        bytes(Pli(1 << 32, 0))
    with pytest.raises(RtcpError):
        bytes(Sdes((SdesChunk(1, ((0, b"x"),)),)))
    with pytest.raises(RtcpError):
        bytes(Bye((1,), bytes(256)))
    with pytest.raises(RtcpError):
        bytes(Remb(1, -1))
    with pytest.raises(RtcpError):
        bytes(UnknownXrBlock(1, 0, b"abc"))


def test_remb_rounds_bitrate_down() -> None:
    (remb,) = parse_compound(bytes(Remb(1, (1 << 40) + 12345, (2, 3))))
    assert isinstance(remb, Remb)
    assert remb.bitrate <= (1 << 40) + 12345 and remb.bitrate >= (1 << 40)
    assert remb.ssrcs == (2, 3)


def test_nack_from_sequence_numbers_wraps() -> None:
    nack = Nack.from_sequence_numbers(1, 2, [65534, 65535, 0, 1, 40, 40, 57, 58, 56])
    assert nack.pairs == ((65534, 0b111), (40, 1 << 15), (57, 1))
    assert nack.lost == [65534, 65535, 0, 1, 40, 56, 57, 58]
    assert Nack.from_sequence_numbers(1, 2, []).pairs == ()


# --- properties -----------------------------------------------------------------------------------

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)

report_blocks = st.builds(
    ReportBlock,
    u32,
    u8,
    st.integers(-0x800000, 0x7FFFFF),
    u32,
    u32,
    u32,
    u32,
)
reports = st.lists(report_blocks, max_size=4).map(tuple)
sdes_items = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=30)), max_size=4).map(tuple)
xr_blocks = st.one_of(
    st.builds(Rrtr, u64),
    st.builds(Dlrr, st.lists(st.builds(DlrrItem, u32, u32, u32), max_size=4).map(tuple)),
    st.builds(
        UnknownXrBlock,
        st.integers(6, 255),
        u8,
        st.binary(max_size=12).map(lambda b: b + bytes(-len(b) & 3)),
    ),
)
remb_bitrates = st.tuples(st.integers(0, (1 << 18) - 1), st.integers(0, 63)).map(
    lambda me: me[0] << me[1]
)
twcc_deltas = st.lists(
    st.none() | st.integers(0, 255) | st.integers(-0x8000, 0x7FFF), max_size=40
).map(tuple)

packets: st.SearchStrategy[RtcpPacket] = st.one_of(
    st.builds(SenderReport, u32, u64, u32, u32, u32, reports),
    st.builds(ReceiverReport, u32, reports),
    st.builds(Sdes, st.lists(st.builds(SdesChunk, u32, sdes_items), max_size=4).map(tuple)),
    st.builds(Bye, st.lists(u32, max_size=6).map(tuple), st.binary(max_size=40)),
    st.builds(Nack, u32, u32, st.lists(st.tuples(u16, u16), max_size=20).map(tuple)),
    st.builds(Pli, u32, u32),
    st.builds(Fir, u32, st.lists(st.builds(FirEntry, u32, u8), max_size=5).map(tuple), u32),
    st.builds(Remb, u32, remb_bitrates, st.lists(u32, max_size=6).map(tuple), u32),
    st.builds(
        TransportCcFeedback, u32, u32, u16, st.integers(-0x800000, 0x7FFFFF), u8, twcc_deltas
    ),
    st.builds(ExtendedReport, u32, st.lists(xr_blocks, max_size=4).map(tuple)),
    st.builds(
        lambda pt, body: UnknownRtcp(pt, bytes((0x80, pt)) + (len(body) // 4).to_bytes(2) + body),
        st.sampled_from([192, 193, 204, 208, 255]),
        st.binary(max_size=16).map(lambda b: b + bytes(-len(b) & 3)),
    ),
)


@PROPERTY
@given(st.lists(packets, min_size=1, max_size=3))
def test_generated_packets_round_trip(generated: list[RtcpPacket]) -> None:
    data = build_compound(generated)
    assert parse_compound(data) == generated
    for p in generated:
        assert type(p).parse(bytes(p)) == p


@PROPERTY
@given(st.lists(st.integers(0, 0xFFFF), max_size=60))
def test_nack_round_trips_lost_sequence_numbers(lost: list[int]) -> None:
    nack = Nack.from_sequence_numbers(1, 2, lost)
    assert set(nack.lost) == set(lost)
    assert Nack.parse(bytes(nack)) == nack


PARSERS: list[Callable[[bytes], object]] = [
    parse_compound,
    SenderReport.parse,
    ReceiverReport.parse,
    ReportBlock.parse,
    Sdes.parse,
    Bye.parse,
    Nack.parse,
    Pli.parse,
    Fir.parse,
    Remb.parse,
    TransportCcFeedback.parse,
    ExtendedReport.parse,
    UnknownRtcp.parse,
]


def _check_parsers(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(RtcpError):
            parse(data)


@PROPERTY
@given(st.binary(max_size=120))
def test_parsers_raise_only_rtcp_error_on_arbitrary_bytes(data: bytes) -> None:
    _check_parsers(data)


@PROPERTY
@given(st.sampled_from(ALL_FIXTURES), st.data())
def test_parsers_raise_only_rtcp_error_on_mutated_packets(seed: bytes, data: st.DataObject) -> None:
    b = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        b[data.draw(st.integers(0, len(b) - 1))] = data.draw(u8)
    if data.draw(st.booleans()):
        b[0] = 0x80 | (b[0] & 0x3F)  # keep the version valid to reach the body parsers
    _check_parsers(bytes(b[: data.draw(st.integers(0, len(b)))]))


def _stream_report(ssrc: int) -> bytes:
    sr = SenderReport(
        ssrc=ssrc, ntp_timestamp=ssrc << 32, rtp_timestamp=ssrc, packet_count=1, octet_count=2
    )
    return bytes(sr) + bytes(Sdes.for_cname(ssrc, "cname-0123456789"))


def test_pack_compounds_fills_datagrams_without_splitting_a_stream() -> None:
    from sfu.media.rtp.rtcp import pack_compounds

    groups = [_stream_report(0x100 + n) for n in range(30)]
    size = len(groups[0])
    assert size == 28 + 28  # SR without report blocks; SDES with one 16-byte CNAME, padded
    compounds = pack_compounds(groups, limit=1200)
    assert [len(c) for c in compounds] == [size * 21, size * 9]  # 21 * 56 = 1176 ≤ 1200
    assert b"".join(compounds) == b"".join(groups)
    ssrcs = []
    for compound in compounds:
        packets = parse_compound(compound)
        assert isinstance(packets[0], SenderReport)  # RFC 3550 §6.1: SR first
        ssrcs += [p.ssrc for p in packets if isinstance(p, SenderReport)]
    assert ssrcs == [0x100 + n for n in range(30)]
    assert pack_compounds([]) == []
    big = b"\x80\xc8" + bytes(2000)
    assert pack_compounds([groups[0], big, groups[1]], limit=1200) == [groups[0], big, groups[1]]


def test_only_the_named_types_are_parsed() -> None:
    data = TWCC + APP + bytes(Nack(1, 2, ((10, 0),))) + bytes(Pli(1, 2))
    twcc, app, nack, pli = parse_compound(data, only=frozenset((Nack,)))
    assert twcc == UnknownRtcp(205, TWCC) and app == UnknownRtcp(204, APP)
    assert nack == Nack(1, 2, ((10, 0),))
    assert pli == UnknownRtcp(206, bytes(Pli(1, 2)))
    assert build_compound([twcc, app, nack, pli]) == data
    with pytest.raises(RtcpError):  # framing is still checked for what is skipped
        parse_compound(TWCC[:-1], only=frozenset((Nack,)))


def test_is_rtcp_takes_packet_types_192_to_223() -> None:
    """RFC 5761 §4: on an rtcp-mux transport the second byte tells RTCP (192-223) from RTP."""
    assert [b for b in range(256) if is_rtcp(bytes((0x80, b)))] == list(range(192, 224))
    assert not is_rtcp(b"") and not is_rtcp(b"\x80")
    assert is_rtcp(bytes(Pli(1, 2))) and not is_rtcp(bytes(12))
