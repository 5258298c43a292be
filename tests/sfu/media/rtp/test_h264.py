"""Tests for sfu.media.rtp.h264: NAL unit types and key-frame detection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.errors import H264Error
from sfu.media.rtp.h264 import is_keyframe, nal_unit_types

SPS = bytes.fromhex("67 42 c0 1f 8c 8d 40")
PPS = bytes.fromhex("68 ce 3c 80")
IDR = bytes.fromhex("65 88 84 00 33 ff")
NON_IDR = bytes.fromhex("41 9a 02 03")


def _stap_a(*units: bytes) -> bytes:
    return b"\x78" + b"".join(len(u).to_bytes(2) + u for u in units)


def test_single_nal_units() -> None:
    assert nal_unit_types(IDR) == [5] and is_keyframe(IDR)
    assert nal_unit_types(SPS) == [7] and is_keyframe(SPS)
    assert nal_unit_types(PPS) == [8] and not is_keyframe(PPS)
    assert nal_unit_types(NON_IDR) == [1] and not is_keyframe(NON_IDR)


def test_stap_a_with_sps_pps_idr() -> None:
    # What libwebrtc sends at the start of a key frame: SPS, PPS (and often the IDR) aggregated.
    data = _stap_a(SPS, PPS, IDR)
    assert nal_unit_types(data) == [7, 8, 5] and is_keyframe(data)
    assert not is_keyframe(_stap_a(PPS, NON_IDR))


def test_fu_a() -> None:
    start = bytes.fromhex("7c 85 88 84")  # FU indicator (NRI 3, type 28), S=1, type 5
    middle = bytes.fromhex("7c 05 aa bb")
    start_non_idr = bytes.fromhex("5c 81 9a 02")
    assert nal_unit_types(start) == [5] and is_keyframe(start)
    assert nal_unit_types(middle) == [] and not is_keyframe(middle)
    assert not is_keyframe(start_non_idr)


def test_other_aggregation_types_are_not_keyframes() -> None:
    for t in (25, 26, 27, 29, 30, 31):
        assert nal_unit_types(bytes((0x60 | t, 0x85, 0, 0))) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xe5\x00",  # forbidden bit
        b"\x60\x00",  # type 0
        b"\x78",  # empty STAP-A
        b"\x78\x00",  # size cut
        b"\x78\x00\x05\x67",  # unit overruns
        b"\x78\x00\x00",  # zero-size unit
        b"\x7c",  # FU-A without header
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(H264Error):
        is_keyframe(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=24))
def test_raises_only_h264_error(data: bytes) -> None:
    try:
        types = nal_unit_types(data)
    except H264Error:
        return
    assert all(0 <= t < 32 for t in types)
    assert is_keyframe(data) == (5 in types or 7 in types)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([SPS, PPS, IDR, NON_IDR]), min_size=1, max_size=5))
def test_stap_a_property(units: list[bytes]) -> None:
    assert nal_unit_types(_stap_a(*units)) == [u[0] & 0x1F for u in units]
