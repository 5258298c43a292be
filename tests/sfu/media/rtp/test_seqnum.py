"""Tests for sfu.media.rtp.seqnum: wrapping comparisons and unwrappers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp.seqnum import (
    SequenceUnwrapper,
    TimestampUnwrapper,
    Unwrapper,
    is_newer,
    seq_diff,
    seq_newer,
    ts_diff,
    ts_newer,
    wrap_diff,
)

PROPERTY = settings(max_examples=300, deadline=None)


def test_sequence_numbers() -> None:
    assert seq_newer(1, 0) and not seq_newer(0, 1) and not seq_newer(5, 5)
    assert seq_newer(0, 65535) and seq_diff(0, 65535) == 1 and seq_diff(65535, 0) == -1
    assert seq_diff(0x8000, 0) == 0x8000 and seq_diff(0, 0x8000) == -0x8000
    assert seq_newer(0x8000, 0) and not seq_newer(0, 0x8000)


def test_timestamps() -> None:
    assert ts_newer(5, 0xFFFFFFF0) and ts_diff(5, 0xFFFFFFF0) == 21
    assert ts_diff(0xFFFFFFF0, 5) == -21
    assert wrap_diff(3, 125, 7) == 6 and is_newer(3, 125, 7)


def test_sequence_unwrapper() -> None:
    u = SequenceUnwrapper()
    assert u.last is None and u.bits == 16
    assert [u.unwrap(s) for s in (65530, 65535, 2, 65534, 10)] == [
        65530,
        65535,
        65538,
        65534,
        65546,
    ]
    assert u.peek(9) == 65545 and u.last == 65546
    u.reset()
    assert u.unwrap(7) == 7
    assert u.unwrap(65535) == -1  # before the first value


def test_timestamp_unwrapper() -> None:
    u = TimestampUnwrapper()
    assert u.unwrap(0xFFFFFF00) == 0xFFFFFF00
    assert u.unwrap(0x100) == 0x100000100
    assert u.unwrap(0xFFFFFFF0) == 0xFFFFFFF0


@PROPERTY
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_newer_is_antisymmetric(a: int, b: int) -> None:
    assert not (seq_newer(a, b) and seq_newer(b, a))
    assert seq_newer(a, b) or seq_newer(b, a) or a == b
    assert (a + seq_diff(b, a)) & 0xFFFF == b
    assert seq_diff(a, b) == wrap_diff(a, b, 16)


@PROPERTY
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF))
def test_timestamp_diff(a: int, b: int) -> None:
    assert (b + ts_diff(a, b)) & 0xFFFFFFFF == a
    assert -(1 << 31) <= ts_diff(a, b) <= 1 << 31
    assert ts_diff(a, b) == wrap_diff(a, b, 32)
    assert ts_newer(a, b) == is_newer(a, b, 32)


@PROPERTY
@given(
    st.sampled_from([7, 8, 15, 16, 32]),
    st.integers(0, 1 << 40),
    st.lists(st.integers(-1000, 1000), max_size=100),
)
def test_unwrapper_recovers_true_values(bits: int, start: int, steps: list[int]) -> None:
    half = 1 << (bits - 1)
    u = Unwrapper(bits)
    true = start
    first = u.unwrap(true)
    base = true - first  # the unwrapper starts at the raw value
    for step in steps:
        step = max(-half + 1, min(half - 1, step))
        true += step
        assert u.unwrap(true % (1 << bits)) + base == true
