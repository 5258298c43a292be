"""Wrapping-counter arithmetic: RTP sequence numbers (16 bit), timestamps (32 bit) and friends.

Owns "is `a` newer than `b`", the signed distance between two wrapping values, and unwrappers that
turn a stream of wrapping values into monotonic Python ints ("extended" values, RFC 3550 §A.1).

Conventions (the same as libwebrtc's `IsNewerSequenceNumber`): the distance `wrap_diff(a, b)` lies
in `[-2**(bits-1), 2**(bits-1)]`; at exactly half the range the larger raw value counts as newer, so
`is_newer(a, b)` and `is_newer(b, a)` are never both true.
"""

from __future__ import annotations

__all__ = [
    "SequenceUnwrapper",
    "TimestampUnwrapper",
    "Unwrapper",
    "is_newer",
    "seq_diff",
    "seq_newer",
    "ts_diff",
    "ts_newer",
    "wrap_diff",
]


def wrap_diff(a: int, b: int, bits: int) -> int:
    """The signed distance `a - b` between two `bits`-wide wrapping values (both taken mod 2**bits).

    Positive when `a` is newer. At exactly half the range the result is `+half` when `a > b`
    (raw values) and `-half` otherwise.
    """
    modulus = 1 << bits
    half = modulus >> 1
    d = (a - b) & (modulus - 1)
    if d > half or (d == half and (a & (modulus - 1)) < (b & (modulus - 1))):
        return d - modulus
    return d


def is_newer(a: int, b: int, bits: int) -> bool:
    """True when `a` comes strictly after `b` in `bits`-wide wrapping order."""
    return wrap_diff(a, b, bits) > 0


def seq_diff(a: int, b: int) -> int:
    """Signed distance `a - b` between two RTP sequence numbers (uint16)."""
    d = (a - b) & 0xFFFF
    if d > 0x8000 or (d == 0x8000 and (a & 0xFFFF) < (b & 0xFFFF)):
        return d - 0x10000
    return d


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number `a` is newer than `b` (uint16, with wrap)."""
    return seq_diff(a, b) > 0


def ts_diff(a: int, b: int) -> int:
    """Signed distance `a - b` between two RTP timestamps (uint32)."""
    d = (a - b) & 0xFFFFFFFF
    if d > 0x80000000 or (d == 0x80000000 and (a & 0xFFFFFFFF) < (b & 0xFFFFFFFF)):
        return d - 0x100000000
    return d


def ts_newer(a: int, b: int) -> bool:
    """True when timestamp `a` is newer than `b` (uint32, with wrap)."""
    return ts_diff(a, b) > 0


class Unwrapper:
    """Maps a stream of `bits`-wide wrapping values to unbounded ints, in the order they arrive.

    The first value is returned unchanged; every later value is placed at the extended value
    nearest to the previously returned one (so reordering of less than half the range is handled).
    Values that go back past the first one become negative.
    """

    __slots__ = ("_bits", "_half", "_last", "_mask", "_modulus")

    def __init__(self, bits: int) -> None:
        if bits < 1:
            raise ValueError("bits must be positive")
        self._bits = bits
        self._modulus = 1 << bits
        self._mask = self._modulus - 1
        self._half = self._modulus >> 1
        self._last: int | None = None

    @property
    def bits(self) -> int:
        """The width of the wrapping values."""
        return self._bits

    @property
    def last(self) -> int | None:
        """The last extended value returned, or None before the first call."""
        return self._last

    def peek(self, value: int) -> int:
        """The extended value `unwrap(value)` would return, without updating the state."""
        last = self._last
        if last is None:
            return value & self._mask
        d = (value - last) & self._mask
        if d > self._half or (d == self._half and (value & self._mask) < (last & self._mask)):
            d -= self._modulus
        return last + d

    def unwrap(self, value: int) -> int:
        """Extend `value` and remember the result as the new reference."""
        ext = self.peek(value)
        self._last = ext
        return ext

    def reset(self) -> None:
        """Forget the reference; the next value is returned unchanged."""
        self._last = None


class SequenceUnwrapper(Unwrapper):
    """`Unwrapper` for 16-bit RTP sequence numbers (extended sequence numbers, RFC 3550 §A.1)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(16)


class TimestampUnwrapper(Unwrapper):
    """`Unwrapper` for 32-bit RTP timestamps."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(32)
