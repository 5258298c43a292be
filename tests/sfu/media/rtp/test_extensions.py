"""Tests for sfu.media.rtp.extensions: value codecs and extension-block building."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp import extensions as ext
from sfu.media.rtp.errors import ExtensionError
from sfu.media.rtp.header import RtpHeader, RtpPacket

PROPERTY = settings(max_examples=200, deadline=None)


def test_uris() -> None:
    assert ext.MID == "urn:ietf:params:rtp-hdrext:sdes:mid"
    assert ext.RTP_STREAM_ID == "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
    assert ext.REPAIRED_RTP_STREAM_ID == "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
    assert ext.ABS_SEND_TIME == "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
    assert ext.SSRC_AUDIO_LEVEL == "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
    assert ext.TRANSPORT_CC == (
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
    )
    assert ext.TOFFSET == "urn:ietf:params:rtp-hdrext:toffset"
    assert ext.VIDEO_ORIENTATION == "urn:3gpp:video-orientation"
    assert ext.ABS_CAPTURE_TIME == "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
    assert ext.PLAYOUT_DELAY == "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
    assert ext.DEPENDENCY_DESCRIPTOR.endswith("#dependency-descriptor-rtp-header-extension")


def test_mid_rid() -> None:
    assert ext.decode_mid(b"0") == "0"
    assert ext.decode_rid(b"hi\x00\x00") == "hi"  # zero padding is cut, as libwebrtc does
    assert ext.encode_mid("video1") == b"video1"
    assert ext.encode_rid("f") == b"f"
    for bad in (b"", b"\x00", b"\xff", b"a\nb"):
        with pytest.raises(ExtensionError):
            ext.decode_mid(bad)
    for text in ("", "é", "a" * 256, "a\tb"):
        with pytest.raises(ExtensionError):
            ext.encode_rid(text)


def test_audio_level() -> None:
    assert ext.decode_audio_level(b"\x9e") == (True, 30)
    assert ext.decode_audio_level(b"\x7f") == (False, 127)
    assert ext.encode_audio_level(True, 0) == b"\x80"
    with pytest.raises(ExtensionError):
        ext.encode_audio_level(False, 128)
    with pytest.raises(ExtensionError):
        ext.decode_audio_level(b"")


def test_abs_send_time() -> None:
    assert ext.decode_abs_send_time(b"\x1c\x4e\x8f") == 0x1C4E8F
    assert ext.encode_abs_send_time(0x1234567) == b"\x23\x45\x67"
    # 1.5 s is 1.5 * 2**18 in 6.18 fixed point
    assert ext.abs_send_time_from_us(1_500_000) == 393216
    assert ext.abs_send_time_to_seconds(393216) == 1.5
    assert ext.abs_send_time_from_us(65_000_000) == ext.abs_send_time_from_us(1_000_000)
    ntp = (3 << 32) | (1 << 31)  # 3.5 s
    assert ext.abs_send_time_to_seconds(ext.abs_send_time_from_ntp(ntp)) == 3.5
    with pytest.raises(ExtensionError):
        ext.decode_abs_send_time(b"\x00\x01")


def test_transport_cc_and_toffset() -> None:
    assert ext.decode_transport_cc(b"\x01\x2c") == 300
    assert ext.encode_transport_cc(65536 + 5) == b"\x00\x05"
    assert ext.decode_toffset(b"\xff\xff\xfe") == -2
    assert ext.encode_toffset(-2) == b"\xff\xff\xfe"
    with pytest.raises(ExtensionError):
        ext.encode_toffset(1 << 23)
    with pytest.raises(ExtensionError):
        ext.decode_transport_cc(b"\x01")


def test_video_orientation() -> None:
    assert ext.decode_video_orientation(b"\x0d") == (True, True, 90)
    assert ext.encode_video_orientation(False, False, 270) == b"\x03"
    with pytest.raises(ExtensionError):
        ext.encode_video_orientation(False, False, 45)


def test_abs_capture_time_and_playout_delay() -> None:
    assert ext.decode_abs_capture_time(bytes(range(8))) == (0x0001020304050607, None)
    value = ext.encode_abs_capture_time(5, -(1 << 32))
    assert len(value) == 16 and ext.decode_abs_capture_time(value) == (5, -(1 << 32))
    with pytest.raises(ExtensionError):
        ext.decode_abs_capture_time(bytes(9))
    with pytest.raises(ExtensionError):
        ext.encode_abs_capture_time(-1)
    assert ext.decode_playout_delay(b"\x00\x10\x0a") == (10, 100)
    assert ext.encode_playout_delay(0, 40950) == b"\x00\x0f\xff"
    with pytest.raises(ExtensionError):
        ext.encode_playout_delay(0, 40960)


def test_dependency_descriptor_mandatory_fields() -> None:
    assert ext.decode_dependency_descriptor_mandatory(b"\xc5\x12\x34\xff") == (
        True,
        True,
        5,
        0x1234,
    )
    with pytest.raises(ExtensionError):
        ext.decode_dependency_descriptor_mandatory(b"\x80")


def test_build_one_byte_block() -> None:
    block = ext.build_extension_block([(3, b"\x01\x2c"), (2, b"\x1c\x4e\x8f")])
    assert block == bytes.fromhex("bede0002 31012c22 1c4e8f00")
    assert ext.build_extension_block([]) == b""
    assert ext.build_extension_block(iter([(1, b"a")])) == bytes.fromhex("bede0001 10610000")


def test_build_two_byte_block_when_needed() -> None:
    assert ext.build_extension_block([(15, b"a")]) == bytes.fromhex("10000001 0f016100")
    assert ext.build_extension_block([(1, b"")]) == bytes.fromhex("10000001 01000000")
    assert ext.build_extension_block([(1, bytes(17))])[:2] == b"\x10\x00"
    for bad in ([(0, b"a")], [(256, b"")], [(20, bytes(256))]):
        with pytest.raises(ExtensionError):
            ext.build_extension_block(bad)


DECODERS: list[Callable[[bytes], object]] = [
    ext.decode_mid,
    ext.decode_rid,
    ext.decode_audio_level,
    ext.decode_abs_send_time,
    ext.decode_transport_cc,
    ext.decode_toffset,
    ext.decode_video_orientation,
    ext.decode_abs_capture_time,
    ext.decode_playout_delay,
    ext.decode_dependency_descriptor_mandatory,
]


@PROPERTY
@given(st.binary(max_size=20))
def test_decoders_raise_only_extension_error(data: bytes) -> None:
    for decode in DECODERS:
        with contextlib.suppress(ExtensionError):
            decode(data)


@PROPERTY
@given(
    st.booleans(),
    st.integers(0, 127),
    st.integers(0, 0xFFFFFF),
    st.integers(0, 0xFFFF),
    st.integers(-0x800000, 0x7FFFFF),
    st.integers(0, 0xFFFFFFFFFFFFFFFF),
    st.none() | st.integers(-(1 << 63), (1 << 63) - 1),
    st.integers(0, 4095),
    st.integers(0, 4095),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=16),
)
def test_value_round_trips(
    voice: bool,
    level: int,
    ast: int,
    tcc: int,
    toffset: int,
    ntp: int,
    clock_offset: int | None,
    lo: int,
    hi: int,
    mid: str,
) -> None:
    assert ext.decode_audio_level(ext.encode_audio_level(voice, level)) == (voice, level)
    assert ext.decode_abs_send_time(ext.encode_abs_send_time(ast)) == ast
    assert ext.decode_transport_cc(ext.encode_transport_cc(tcc)) == tcc
    assert ext.decode_toffset(ext.encode_toffset(toffset)) == toffset
    assert ext.decode_abs_capture_time(ext.encode_abs_capture_time(ntp, clock_offset)) == (
        ntp,
        clock_offset,
    )
    assert ext.decode_playout_delay(ext.encode_playout_delay(lo * 10, hi * 10)) == (
        lo * 10,
        hi * 10,
    )
    assert ext.decode_mid(ext.encode_mid(mid)) == mid
    assert ext.decode_rid(ext.encode_rid(mid)) == mid
    for rotation in (0, 90, 180, 270):
        value = ext.encode_video_orientation(voice, not voice, rotation)
        assert ext.decode_video_orientation(value) == (voice, not voice, rotation)


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(1, 255), st.binary(max_size=20)),
        max_size=8,
        unique_by=lambda e: e[0],
    )
)
def test_block_parses_back(elements: list[tuple[int, bytes]]) -> None:
    block = ext.build_extension_block(elements)
    assert len(block) % 4 == 0
    one_byte = all(0 < i < 15 and 0 < len(v) <= 16 for i, v in elements)
    if elements:
        assert block[:2] == (b"\xbe\xde" if one_byte else b"\x10\x00")
    data = bytes(RtpHeader(96, 1, 2, 3)) + block + b"payload"
    if block:
        data = bytes((data[0] | 0x10,)) + data[1:]
    p = RtpPacket.parse(data)
    assert p.extensions == dict(elements)
    assert p.payload == b"payload"


def test_template_matches_generic_builder() -> None:
    template = ext.ExtensionBlockTemplate([(3, 2), (2, 3)])
    assert template.build(b"\x01\x2c", b"\x1c\x4e\x8f") == bytes.fromhex(
        "bede0002 31012c22 1c4e8f00"
    )
    assert template.size == 12 and template.elements == ((3, 2), (2, 3))
    assert ext.ExtensionBlockTemplate([]).build() == b""
    with pytest.raises(ExtensionError):
        ext.ExtensionBlockTemplate([(0, 1)])
    generic = ext.ExtensionBlockTemplate([(1, 1), (2, 1), (3, 1), (4, 1)])
    with pytest.raises(ExtensionError):
        generic.build(b"a")


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(1, 255), st.binary(max_size=20)),
        max_size=6,
        unique_by=lambda e: e[0],
    )
)
def test_template_property(elements: list[tuple[int, bytes]]) -> None:
    template = ext.ExtensionBlockTemplate([(i, len(v)) for i, v in elements])
    block = template.build(*(v for _, v in elements))
    assert block == ext.build_extension_block(elements)
    assert len(block) == template.size
