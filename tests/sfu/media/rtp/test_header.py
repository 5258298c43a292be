"""Tests for sfu.media.rtp.header: RtpPacket parsing, RtpHeader building and rewrite()."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.errors import PacketError, RtpError
from sfu.media.rtp.extensions import (
    build_extension_block,
    decode_abs_send_time,
    decode_audio_level,
    decode_mid,
    decode_rid,
    decode_transport_cc,
)
from sfu.media.rtp.header import RtpHeader, RtpPacket, rewrite
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor, is_keyframe

PROPERTY = settings(max_examples=200, deadline=None)

# Chrome, simulcast layer "q", first packet of a VP8 key frame (publisher PC, before the SFU's RR
# has arrived, so mid and rid are still sent). extmap: 2 abs-send-time, 3 transport-cc, 4 mid,
# 10 rtp-stream-id.
CHROME_VP8_KEYFRAME = bytes.fromhex(
    "90 60 30 39"  # V=2 X=1, M=0 PT=96, seq 12345
    "9a 3b 2c 1d"  # timestamp
    "6b 8b 45 67"  # SSRC
    "be de 00 03"  # one-byte extensions, 3 words
    "22 1c 4e 8f"  # id 2 (abs-send-time), 3 bytes
    "31 01 2c"  # id 3 (transport-cc), seq 300
    "40 31"  # id 4 (mid) "1"
    "a0 71"  # id 10 (rid) "q"
    "00"  # padding
    "90 e0 9b 4d 2a 20"  # VP8: X S, I L T, PictureID 0x1b4d (M), TL0PICIDX 42, TID 0 Y
    "50 3f 00 9d 01 2a 40 01 b4 00"  # frame tag (P=0: key frame), start code, 320x180
    "de ad be ef 01 02 03 04"  # (encrypted) partition data
)

# Chrome Opus, first packet of a talk spurt (M=1). extmap: 1 ssrc-audio-level, 2 abs-send-time,
# 3 transport-cc, 4 mid.
CHROME_OPUS = bytes.fromhex(
    "90 ef 1f 90"  # X=1, M=1 PT=111, seq 8080
    "00 01 2c 00"  # timestamp
    "2d 5f 0a 11"  # SSRC
    "be de 00 03"
    "10 9e"  # id 1 (audio level): V=1, 30 -dBov
    "22 1c 50 01"  # id 2 (abs-send-time)
    "31 01 2d"  # id 3 (transport-cc) 301
    "40 30"  # id 4 (mid) "0"
    "00"
    "78 0b e4 c1 36 ec c5 8d"  # Opus TOC and frame
)


def test_chrome_vp8_keyframe_fixture() -> None:
    p = RtpPacket.parse(CHROME_VP8_KEYFRAME)
    assert (p.payload_type, p.marker, p.sequence_number) == (96, False, 12345)
    assert (p.timestamp, p.ssrc, p.csrc) == (0x9A3B2C1D, 0x6B8B4567, ())
    assert p.extension_profile == 0xBEDE
    assert sorted(p.extensions) == [2, 3, 4, 10]
    assert decode_abs_send_time(p.extensions[2]) == 0x1C4E8F
    assert decode_transport_cc(p.extensions[3]) == 300
    assert decode_mid(p.extensions[4]) == "1"
    assert decode_rid(p.extensions[10]) == "q"
    assert p.payload_offset == 28 and p.padding_size == 0
    assert p.payload == CHROME_VP8_KEYFRAME[28:]
    assert p.payload_size == len(CHROME_VP8_KEYFRAME) - 28
    d = Vp8PayloadDescriptor.parse(p.data, p.payload_offset)
    assert (d.picture_id, d.picture_id_15bit, d.tl0_pic_idx, d.tid, d.layer_sync) == (
        0x1B4D,
        True,
        42,
        0,
        True,
    )
    assert is_keyframe(p.data, p.payload_offset)
    assert bytes(p) == CHROME_VP8_KEYFRAME


def test_chrome_opus_fixture() -> None:
    p = RtpPacket.parse(CHROME_OPUS)
    assert (p.payload_type, p.marker, p.sequence_number, p.timestamp) == (111, True, 8080, 0x12C00)
    assert decode_audio_level(p.extensions[1]) == (True, 30)
    assert decode_transport_cc(p.extensions[3]) == 301
    assert decode_mid(p.extensions[4]) == "0"
    assert p.payload == bytes.fromhex("780be4c136ecc58d")


def test_header_builder_matches_fixture() -> None:
    header = RtpHeader(
        payload_type=111,
        sequence_number=8080,
        timestamp=0x12C00,
        ssrc=0x2D5F0A11,
        marker=True,
        extensions=[(1, b"\x9e"), (2, b"\x1c\x50\x01"), (3, b"\x01\x2d"), (4, b"0")],
    )
    assert bytes(header) == CHROME_OPUS[:28]
    assert RtpHeader.parse(CHROME_OPUS) == header


def test_two_byte_extensions_csrc_and_padding() -> None:
    header = RtpHeader(
        payload_type=100,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=1,
        csrc=(7, 8),
        extensions=[(1, b""), (20, bytes(range(40)))],
        padding=True,
    )
    head = bytes(header)
    assert head[0] == 0x80 | 0x20 | 0x10 | 2
    assert head[20:22] == b"\x10\x00"  # two-byte profile
    data = head + b"payload" + b"\x00\x00\x03"
    p = RtpPacket.parse(data)
    assert p.csrc == (7, 8)
    assert p.extensions == {1: b"", 20: bytes(range(40))}
    assert p.payload == b"payload" and p.padding_size == 3
    assert RtpHeader.parse(data) == header


def test_padding_only_packet() -> None:
    data = bytes(RtpHeader(96, 1, 2, 3, padding=True)) + bytes(254) + b"\xff"
    p = RtpPacket.parse(data)
    assert p.payload == b"" and p.padding_size == 255 and p.payload_size == 0


def test_unknown_extension_profile_is_skipped() -> None:
    data = bytes.fromhex("90 60 00 01 00 00 00 02 00 00 00 03 ab cd 00 01 11 22 33 44") + b"pl"
    p = RtpPacket.parse(data)
    assert p.extension_profile == 0xABCD and p.extensions == {} and p.payload == b"pl"


def test_one_byte_extension_id_15_stops_parsing() -> None:
    data = bytes.fromhex("90 60 00 01 00 00 00 02 00 00 00 03 be de 00 02 10 aa f3 bb 21 01 00 00")
    assert RtpPacket.parse(data).extensions == {1: b"\xaa"}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        bytes.fromhex("40 60 00 01 00 00 00 02 00 00 00 03"),  # version 1
        bytes.fromhex("81 60 00 01 00 00 00 02 00 00 00 03"),  # CSRC missing
        bytes.fromhex("90 60 00 01 00 00 00 02 00 00 00 03 be de"),  # ext header cut
        bytes.fromhex("90 60 00 01 00 00 00 02 00 00 00 03 be de 00 02 10 aa"),  # block cut
        bytes.fromhex("90 60 00 01 00 00 00 02 00 00 00 03 be de 00 01 13 aa bb cc"),  # overrun
        bytes.fromhex("90 60 00 01 00 00 00 02 00 00 00 03 10 00 00 01 01 05 aa bb"),  # 2-byte
        bytes.fromhex("a0 60 00 01 00 00 00 02 00 00 00 03 00"),  # padding count 0
        bytes.fromhex("a0 60 00 01 00 00 00 02 00 00 00 03 05"),  # padding too long
    ],
)
def test_malformed_packets_raise_rtp_error(data: bytes) -> None:
    with pytest.raises(RtpError):
        RtpPacket.parse(data)


def test_header_builder_rejects_out_of_range() -> None:
    with pytest.raises(RtpError):
        bytes(RtpHeader(128, 1, 2, 3))
    with pytest.raises(RtpError):
        bytes(RtpHeader(96, 70000, 2, 3))
    with pytest.raises(RtpError):
        bytes(RtpHeader(96, 1, 2, 3, csrc=tuple(range(16))))
    with pytest.raises(PacketError):
        bytes(RtpHeader(96, 1, 2, 3, extensions=[(0, b"x")]))


def test_rewrite_keeps_payload_and_replaces_header() -> None:
    p = RtpPacket.parse(CHROME_VP8_KEYFRAME)
    block = build_extension_block([(5, b"\x00\x07")])
    out = rewrite(
        p,
        payload_type=100,
        sequence_number=70000,
        timestamp=-1,
        ssrc=0xCAFEBABE,
        extensions=block,
    )
    q = RtpPacket.parse(out)
    assert (q.payload_type, q.sequence_number, q.timestamp, q.ssrc) == (
        100,
        70000 & 0xFFFF,
        0xFFFFFFFF,
        0xCAFEBABE,
    )
    assert q.marker == p.marker and q.csrc == ()
    assert q.extensions == {5: b"\x00\x07"}
    assert q.payload == p.payload


def test_rewrite_without_extensions_clears_x_and_csrc() -> None:
    data = bytes(RtpHeader(96, 1, 2, 3, marker=True, csrc=(9,), extensions=[(1, b"a")])) + b"xyz"
    out = rewrite(RtpPacket.parse(data), payload_type=97, sequence_number=5, timestamp=6, ssrc=7)
    assert out == struct.pack("!BBHII", 0x80, 0x80 | 97, 5, 6, 7) + b"xyz"


def test_rewrite_keeps_padding_with_replacement_payload() -> None:
    data = bytes(RtpHeader(96, 1, 2, 3, padding=True)) + b"abcdef" + b"\x00\x02"
    p = RtpPacket.parse(data)
    out = rewrite(p, payload_type=96, sequence_number=1, timestamp=2, ssrc=3, payload=b"XY")
    q = RtpPacket.parse(out)
    assert q.payload == b"XY" and q.padding_size == 2
    out = rewrite(p, payload_type=96, sequence_number=1, timestamp=2, ssrc=3)
    assert RtpPacket.parse(out).payload == b"abcdef"


def test_rewrite_replaces_payload_header_only() -> None:
    p = RtpPacket.parse(CHROME_VP8_KEYFRAME)
    d = Vp8PayloadDescriptor.parse(p.data, p.payload_offset)
    new = bytes.fromhex("90 e0 80 05 07 20")
    out = rewrite(
        p,
        payload_type=96,
        sequence_number=1,
        timestamp=2,
        ssrc=3,
        payload_header=new,
        payload_header_size=d.size,
    )
    q = RtpPacket.parse(out)
    assert q.payload == new + p.payload[d.size :]


# --- properties -----------------------------------------------------------------------------------

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def headers(draw: st.DrawFn) -> RtpHeader:
    ids = draw(st.lists(st.integers(1, 255), unique=True, max_size=6))
    small = draw(st.booleans())
    extensions: list[tuple[int, bytes]] = []
    for ext_id in ids:
        if small:
            ext_id = ext_id % 14 + 1
            if any(ext_id == e for e, _ in extensions):
                continue
            value = draw(st.binary(min_size=1, max_size=16))
        else:
            value = draw(st.binary(max_size=40))
        extensions.append((ext_id, value))
    return RtpHeader(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(u16),
        timestamp=draw(u32),
        ssrc=draw(u32),
        marker=draw(st.booleans()),
        csrc=tuple(draw(st.lists(u32, max_size=15))),
        extensions=extensions,
        padding=draw(st.booleans()),
    )


@PROPERTY
@given(headers(), st.binary(max_size=64), st.integers(1, 255))
def test_generated_packets_round_trip(header: RtpHeader, payload: bytes, padding: int) -> None:
    pad = bytes(padding - 1) + bytes((padding,)) if header.padding else b""
    data = bytes(header) + payload + pad
    p = RtpPacket.parse(data)
    assert RtpHeader.parse(data) == header
    assert RtpPacket.parse(bytes(p)) == p
    assert (p.payload_type, p.sequence_number, p.timestamp, p.ssrc, p.marker, p.csrc) == (
        header.payload_type,
        header.sequence_number,
        header.timestamp,
        header.ssrc,
        header.marker,
        header.csrc,
    )
    assert p.extensions == dict(header.extensions)
    assert p.payload == payload
    assert p.padding_size == (padding if header.padding else 0)


@PROPERTY
@given(
    headers(),
    st.binary(max_size=64),
    u8,
    u16,
    u32,
    u32,
    st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=4)), max_size=3),
)
def test_rewrite_property(
    header: RtpHeader,
    payload: bytes,
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    ext: list[tuple[int, bytes]],
) -> None:
    pad = b"\x00\x04" * 2 if header.padding else b""
    p = RtpPacket.parse(bytes(header) + payload + pad)
    pt &= 0x7F
    out = RtpPacket.parse(
        rewrite(
            p,
            payload_type=pt,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            extensions=build_extension_block(ext),
        )
    )
    assert (out.payload_type, out.sequence_number, out.timestamp, out.ssrc) == (pt, seq, ts, ssrc)
    assert out.marker == header.marker and out.csrc == ()
    assert out.extensions == dict(ext)
    assert out.payload == payload and out.padding_size == p.padding_size


def _mutate(seed: bytes, data: st.DataObject) -> bytes:
    b = bytearray(seed)
    for _ in range(data.draw(st.integers(0, 4))):
        b[data.draw(st.integers(0, len(b) - 1))] = data.draw(u8)
    return bytes(b[: data.draw(st.integers(0, len(b)))]) + data.draw(st.binary(max_size=4))


@PROPERTY
@given(st.binary(max_size=80))
def test_parse_arbitrary_bytes_raises_only_rtp_error(data: bytes) -> None:
    for parse in (RtpPacket.parse, RtpHeader.parse):
        with contextlib.suppress(RtpError):
            parse(data)


@PROPERTY
@given(st.sampled_from([CHROME_VP8_KEYFRAME, CHROME_OPUS]), st.data())
def test_parse_mutated_packets_raises_only_rtp_error(seed: bytes, data: st.DataObject) -> None:
    raw = _mutate(seed, data)
    try:
        p = RtpPacket.parse(raw)
    except RtpError:
        return
    assert p.payload_offset + p.padding_size <= len(raw)
