"""Tests for sfu.media.rtp.vp8: the VP8 payload descriptor."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.errors import Vp8Error
from sfu.media.rtp.vp8 import (
    Vp8PayloadDescriptor,
    descriptor_size,
    is_keyframe,
    munged_descriptor,
    repack_payload,
    write_in_place,
)

PROPERTY = settings(max_examples=200, deadline=None)

# Chrome simulcast key frame: X S, I L T, 15-bit PictureID 0x1b4d, TL0PICIDX 42, TID 0 Y; then the
# VP8 frame tag with P=0 (key frame).
KEYFRAME = bytes.fromhex("90 e0 9b 4d 2a 20 50 3f 00 9d 01 2a")
# Continuation packet of a delta frame: X, S=0, PictureID 7-bit 5, TID 2, KEYIDX 3.
DELTA_CONT = bytes.fromhex("80 b0 05 83 aa bb")
# Start of a delta frame (P=1), non-reference, no extension.
DELTA_START = bytes.fromhex("30 01 02 03")


def test_parse_keyframe_descriptor() -> None:
    d = Vp8PayloadDescriptor.parse(KEYFRAME)
    assert d == Vp8PayloadDescriptor(
        start_of_partition=True,
        partition_index=0,
        picture_id=0x1B4D,
        picture_id_15bit=True,
        tl0_pic_idx=42,
        tid=0,
        layer_sync=True,
        extended=True,
    )
    assert d.size == 6 and bytes(d) == KEYFRAME[:6]
    assert (d.picture_id_offset, d.tl0_pic_idx_offset, d.tid_key_idx_offset) == (2, 4, 5)
    assert d.is_partition_head and d.is_keyframe(KEYFRAME)
    assert is_keyframe(KEYFRAME) and descriptor_size(KEYFRAME) == 6


def test_parse_other_descriptors() -> None:
    d = Vp8PayloadDescriptor.parse(DELTA_CONT)
    assert (d.picture_id, d.picture_id_15bit, d.tid, d.layer_sync, d.key_idx) == (5, False, 2, 0, 3)
    assert d.tl0_pic_idx is None and d.size == 4 and bytes(d) == DELTA_CONT[:4]
    assert not d.is_keyframe(DELTA_CONT) and not is_keyframe(DELTA_CONT)
    d = Vp8PayloadDescriptor.parse(DELTA_START)
    assert d == Vp8PayloadDescriptor(start_of_partition=True, non_reference=True)
    assert d.size == 1 and not d.is_keyframe(DELTA_START) and not is_keyframe(DELTA_START)
    assert d.picture_id_offset is None and d.tl0_pic_idx_offset is None


def test_parse_at_offset_with_end() -> None:
    data = b"hdr" + KEYFRAME + b"\x00\x01"
    d = Vp8PayloadDescriptor.parse(data, 3, len(data) - 2)
    assert d.picture_id == 0x1B4D and is_keyframe(data, 3, len(data) - 2)
    with pytest.raises(Vp8Error):
        Vp8PayloadDescriptor.parse(data, 3, 6)  # descriptor cut by the end (padding)


def test_x_bit_without_fields_keeps_size() -> None:
    data = bytes.fromhex("90 00 50")
    d = Vp8PayloadDescriptor.parse(data)
    assert d.extended and d.size == 2 and bytes(d) == data[:2]
    assert is_keyframe(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80", b"\x80\x80", b"\x80\x80\x80", b"\x80\x40", b"\x80\x20", b"\x80\xf0\x81\x01\x01"],
)
def test_truncated_descriptors(data: bytes) -> None:
    with pytest.raises(Vp8Error):
        Vp8PayloadDescriptor.parse(data)
    with pytest.raises(Vp8Error):
        descriptor_size(data)


def test_keyframe_needs_payload_byte() -> None:
    with pytest.raises(Vp8Error):
        is_keyframe(KEYFRAME[:6])
    with pytest.raises(Vp8Error):
        Vp8PayloadDescriptor.parse(KEYFRAME).is_keyframe(KEYFRAME[:6])


def test_write_in_place_keeps_layout_and_payload() -> None:
    buf = bytearray(b"RTP" + KEYFRAME)
    d = Vp8PayloadDescriptor.parse(buf, 3)
    write_in_place(buf, 3, d, picture_id=0x7FFF, tl0_pic_idx=0, key_idx=None)
    assert bytes(buf) == b"RTP" + bytes.fromhex("90 e0 ff ff 00 20") + KEYFRAME[6:]
    buf = bytearray(DELTA_CONT)
    d = Vp8PayloadDescriptor.parse(buf)
    write_in_place(buf, 0, d, picture_id=127, key_idx=31)
    assert bytes(buf) == bytes.fromhex("80 b0 7f 9f aa bb")  # TID/Y bits kept


def test_write_in_place_errors() -> None:
    buf = bytearray(DELTA_CONT)
    d = Vp8PayloadDescriptor.parse(buf)
    with pytest.raises(Vp8Error):
        write_in_place(buf, 0, d, picture_id=128)  # 7-bit cannot hold it
    with pytest.raises(Vp8Error):
        write_in_place(buf, 0, d, tl0_pic_idx=1)  # no TL0PICIDX
    with pytest.raises(Vp8Error):
        write_in_place(buf, 0, d, key_idx=32)
    d = Vp8PayloadDescriptor.parse(DELTA_START)
    with pytest.raises(Vp8Error):
        write_in_place(bytearray(DELTA_START), 0, d, picture_id=1)
    with pytest.raises(Vp8Error):
        write_in_place(bytearray(DELTA_START), 0, d, key_idx=1)
    assert bytes(buf) == DELTA_CONT


def test_repack_7bit_to_15bit() -> None:
    d = Vp8PayloadDescriptor.parse(DELTA_CONT)
    head = munged_descriptor(d, picture_id=300, key_idx=4)
    assert head == bytes.fromhex("80 b0 81 2c 84")
    new = repack_payload(DELTA_CONT, d, picture_id=300, key_idx=4)
    assert new == head + DELTA_CONT[d.size :]
    e = Vp8PayloadDescriptor.parse(new)
    assert (e.picture_id, e.picture_id_15bit, e.key_idx, e.tid) == (300, True, 4, 2)
    # A small value can be forced to 15 bits, for a stream that already switched width.
    assert munged_descriptor(d, picture_id=3, picture_id_15bit=True)[2:4] == b"\x80\x03"
    assert munged_descriptor(d) == DELTA_CONT[:4]


def test_builder_rejects_out_of_range() -> None:
    for d in (
        Vp8PayloadDescriptor(picture_id=1 << 15),
        Vp8PayloadDescriptor(tl0_pic_idx=256),
        Vp8PayloadDescriptor(tid=4),
        Vp8PayloadDescriptor(key_idx=32),
        Vp8PayloadDescriptor(partition_index=8),
    ):
        with pytest.raises(Vp8Error):
            bytes(d)


@st.composite
def descriptors(draw: st.DrawFn) -> Vp8PayloadDescriptor:
    wide = draw(st.booleans())
    picture_id = draw(st.none() | st.integers(0, 0x7FFF if wide else 0x7F))
    tid = draw(st.none() | st.integers(0, 3))
    key_idx = draw(st.none() | st.integers(0, 31))
    tl0 = draw(st.none() | st.integers(0, 255))
    optional = picture_id is not None or tl0 is not None or tid is not None or key_idx is not None
    return Vp8PayloadDescriptor(
        start_of_partition=draw(st.booleans()),
        partition_index=draw(st.integers(0, 7)),
        non_reference=draw(st.booleans()),
        picture_id=picture_id,
        picture_id_15bit=wide and picture_id is not None,
        tl0_pic_idx=tl0,
        tid=tid,
        layer_sync=draw(st.booleans()) and tid is not None,
        key_idx=key_idx,
        extended=optional or draw(st.booleans()),
    )


@PROPERTY
@given(descriptors(), st.binary(min_size=1, max_size=16))
def test_descriptor_round_trip(d: Vp8PayloadDescriptor, payload: bytes) -> None:
    data = bytes(d) + payload
    assert len(bytes(d)) == d.size == descriptor_size(data)
    assert Vp8PayloadDescriptor.parse(data) == d
    assert is_keyframe(data) == (
        d.start_of_partition and d.partition_index == 0 and not payload[0] & 1
    )
    assert d.is_keyframe(data) == is_keyframe(data)


@PROPERTY
@given(
    descriptors(),
    st.binary(min_size=1, max_size=16),
    st.integers(0, 0x7FFF),
    st.integers(0, 255),
    st.integers(0, 31),
)
def test_rewrites_never_touch_the_payload(
    d: Vp8PayloadDescriptor, payload: bytes, picture_id: int, tl0: int, key_idx: int
) -> None:
    data = bytes(d) + payload
    new = repack_payload(
        data,
        d,
        picture_id=picture_id if d.picture_id is not None else None,
        tl0_pic_idx=tl0 if d.tl0_pic_idx is not None else None,
        key_idx=key_idx if d.key_idx is not None else None,
    )
    e = Vp8PayloadDescriptor.parse(new)
    assert new[e.size :] == payload
    if d.picture_id is not None:
        assert e.picture_id == picture_id
        assert e.picture_id_15bit == (d.picture_id_15bit or picture_id > 127)
    assert (e.tid, e.layer_sync, e.start_of_partition, e.partition_index) == (
        d.tid,
        d.layer_sync,
        d.start_of_partition,
        d.partition_index,
    )
    if d.picture_id is None or d.picture_id_15bit or picture_id <= 127:
        buf = bytearray(data)
        write_in_place(
            buf,
            0,
            d,
            picture_id=picture_id if d.picture_id is not None else None,
            tl0_pic_idx=tl0 if d.tl0_pic_idx is not None else None,
            key_idx=key_idx if d.key_idx is not None else None,
        )
        assert bytes(buf) == new


@PROPERTY
@given(st.binary(max_size=12), st.integers(0, 4))
def test_parsers_raise_only_vp8_error(data: bytes, offset: int) -> None:
    for parse in (Vp8PayloadDescriptor.parse, descriptor_size, is_keyframe):
        with contextlib.suppress(Vp8Error):
            parse(data, offset)
    with contextlib.suppress(Vp8Error):
        Vp8PayloadDescriptor.parse(data).is_keyframe(data)
