"""Tests for sfu.media.rtp.red: RFC 2198 block headers and where the primary encoding starts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.errors import RedError
from sfu.media.rtp.red import MAX_REDUNDANT_BLOCKS, RedBlock, RedHeader, primary_offset

# What libwebrtc sends with one redundant Opus frame (PT 111, 20 ms = 960 ticks ago, 3 bytes),
# then the primary's header (F=0, PT 111), the redundant data, the primary data.
ONE_REDUNDANT = bytes.fromhex("ef 0f 00 03  6f  aa bb cc  11 22 33 44")
# The first packet after the stream starts: nothing older to repeat yet.
PRIMARY_ONLY = bytes.fromhex("6f  11 22 33")


def test_one_redundant_block() -> None:
    header = RedHeader.parse(ONE_REDUNDANT)
    assert header.redundant == (RedBlock(111, 960, 3),)
    assert header.primary_payload_type == 111
    assert header.size == 5 and header.primary_offset == 8
    assert ONE_REDUNDANT[header.primary_offset :] == bytes.fromhex("11 22 33 44")
    assert bytes(header) == ONE_REDUNDANT[:5]


def test_primary_only() -> None:
    header = RedHeader.parse(PRIMARY_ONLY)
    assert header == RedHeader((), 111)
    assert header.primary_offset == 1 and bytes(header) == b"\x6f"


def test_primary_offset_in_a_packet() -> None:
    packet = b"\x80" * 12 + ONE_REDUNDANT + b"\x00\x00\x03"  # RTP header, payload, padding
    assert primary_offset(packet, 12, len(packet) - 3) == 12 + 8
    assert primary_offset(b"\x00" * 4 + PRIMARY_ONLY, 4, 8) == 5


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "ends inside its block headers"),
        (bytes.fromhex("ef 0f 00"), "ends inside a block header"),
        (bytes.fromhex("ef 0f 00 03"), "ends inside its block headers"),
        (bytes.fromhex("ef 0f 00 03 6f aa bb cc"), "no primary"),
        (bytes.fromhex("ef 0f 03 ff 6f aa"), "no primary"),  # a block longer than the payload
        (b"\x6f", "no primary"),
        (bytes.fromhex("ef 00 00 00") * (MAX_REDUNDANT_BLOCKS + 1) + b"\x6f\x01", "more than"),
    ],
)
def test_malformed(payload: bytes, why: str) -> None:
    with pytest.raises(RedError, match=why):
        RedHeader.parse(payload)
    with pytest.raises(RedError, match=why):
        primary_offset(payload, 0, len(payload))


def test_the_most_blocks_allowed() -> None:
    payload = bytes.fromhex("ef 00 00 01") * MAX_REDUNDANT_BLOCKS + b"\x6f" + b"\x01" * 33
    assert RedHeader.parse(payload).primary_offset == 4 * MAX_REDUNDANT_BLOCKS + 1 + 32


@pytest.mark.parametrize(
    "block", [RedBlock(128, 0, 0), RedBlock(0, 1 << 14, 0), RedBlock(0, 0, 1 << 10)]
)
def test_unrepresentable_blocks(block: RedBlock) -> None:
    with pytest.raises(RedError):
        bytes(block)


_blocks = st.lists(
    st.tuples(st.integers(0, 127), st.integers(0, (1 << 14) - 1), st.binary(max_size=40)),
    max_size=4,
)


@settings(max_examples=300)
@given(_blocks, st.integers(0, 127), st.binary(min_size=1, max_size=60))
def test_build_parse_round_trip(
    blocks: list[tuple[int, int, bytes]], pt: int, primary: bytes
) -> None:
    header = RedHeader(tuple(RedBlock(b, ts, len(d)) for b, ts, d in blocks), pt)
    payload = bytes(header) + b"".join(d for _, _, d in blocks) + primary
    assert RedHeader.parse(payload) == header
    assert payload[header.primary_offset :] == primary
    assert (
        primary_offset(b"\xff" + payload + b"\xee", 1, 1 + len(payload))
        == 1 + header.primary_offset
    )


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_the_two_readers_agree(payload: bytes) -> None:
    try:
        expected: int | None = RedHeader.parse(payload).primary_offset
    except RedError:
        expected = None
    try:
        got: int | None = primary_offset(payload, 0, len(payload))
    except RedError:
        got = None
    assert got == expected
