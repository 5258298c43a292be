"""The layer-choice table: tile sizes × published layers × portrait/landscape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.room.layer_selection import (
    NO_LAYER,
    QUALITY_HIGH,
    QUALITY_LOW,
    QUALITY_MEDIUM,
    QUALITY_OFF,
    layer_for_dimensions,
    layer_for_quality,
    layer_sizes,
    preferred_layer,
)

ELEMENT_CALL = [(320, 180), (640, 360), (1280, 720)]  # q, h, f
PORTRAIT = [(180, 320), (360, 640), (720, 1280)]
TWO_LAYERS = [(320, 180), (640, 360)]


@pytest.mark.parametrize(
    ("layers", "tile", "expected"),
    [
        (ELEMENT_CALL, (1280, 720), 2),
        (ELEMENT_CALL, (640, 360), 1),
        (ELEMENT_CALL, (480, 270), 1),  # 243 > 180 → h
        (ELEMENT_CALL, (320, 180), 0),
        (ELEMENT_CALL, (355, 200), 0),  # 180 ≥ 0.9 × 200: tolerance keeps q
        (ELEMENT_CALL, (356, 201), 1),  # 180 < 180.9
        (ELEMENT_CALL, (160, 90), 0),
        (ELEMENT_CALL, (150, 100), 0),
        (ELEMENT_CALL, (500, 300), 1),
        (ELEMENT_CALL, (1920, 1080), 2),  # beyond the top: the top
        (ELEMENT_CALL, (1, 1), 0),
        (TWO_LAYERS, (1280, 720), 1),
        (TWO_LAYERS, (320, 180), 0),
        ([(1280, 720)], (160, 90), 0),
        # portrait video: widths decide
        (PORTRAIT, (720, 1280), 2),
        (PORTRAIT, (360, 640), 1),
        (PORTRAIT, (200, 1000), 0),  # a tall, narrow tile needs only 180 wide
        (PORTRAIT, (400, 200), 1),
        ([], (640, 360), NO_LAYER),
    ],
)
def test_layer_for_dimensions(
    layers: list[tuple[int, int]], tile: tuple[int, int], expected: int
) -> None:
    assert layer_for_dimensions(layers, *tile) == expected


@pytest.mark.parametrize(
    ("quality", "qualities", "expected"),
    [
        (QUALITY_HIGH, [0, 1, 2], 2),
        (QUALITY_MEDIUM, [0, 1, 2], 1),
        (QUALITY_LOW, [0, 1, 2], 0),
        (QUALITY_OFF, [0, 1, 2], NO_LAYER),
        (QUALITY_HIGH, [0, 1], 1),  # asking above what is published: the top
        (QUALITY_LOW, [2], 0),  # a single high layer serves a low request
        (QUALITY_MEDIUM, [0, 2], 0),
    ],
)
def test_layer_for_quality(quality: int, qualities: list[int], expected: int) -> None:
    assert layer_for_quality(quality, qualities) == expected


def test_size_wins_over_quality() -> None:
    assert preferred_layer(ELEMENT_CALL, [0, 1, 2], 160, 90, QUALITY_HIGH) == 0
    assert preferred_layer(ELEMENT_CALL, [0, 1, 2], 0, 0, QUALITY_MEDIUM) == 1


def test_fallback_sizes() -> None:
    assert layer_sizes([], 3, 1280, 720) == [(320, 180), (640, 360), (1280, 720)]
    assert layer_sizes([(0, 0)], 2, 640, 360) == [(320, 180), (640, 360)]
    assert layer_sizes([], 3, 720, 1280) == [(180, 320), (360, 640), (720, 1280)]
    assert layer_sizes([(640, 360), (320, 180)], 2, 0, 0) == [(320, 180), (640, 360)]


@given(
    st.tuples(st.integers(16, 4000), st.integers(16, 4000)),
    st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True),
    st.integers(0, 5000),
    st.integers(0, 5000),
)
def test_choice_is_a_valid_layer_and_monotonic(
    top: tuple[int, int], divisors: list[int], w: int, h: int
) -> None:
    """Simulcast layers share one aspect ratio; a bigger tile never gets a lower layer."""
    layers = sorted({(top[0] // d, top[1] // d) for d in divisors}, key=lambda s: s[0] * s[1])
    chosen = layer_for_dimensions(layers, w, h)
    assert 0 <= chosen < len(layers)
    assert layer_for_dimensions(layers, w * 2, h * 2) >= chosen
