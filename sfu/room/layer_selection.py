"""Which simulcast layer a subscriber should receive: tile size (or quality) → preferred layer.

Pure functions, LiveKit's rule: the lowest published layer whose size is at least 0.9 × the
subscriber's tile (heights for landscape video, widths for portrait), else the top layer; a
``quality`` request when no size is given; nothing for OFF. Layers are indexed by spatial layer,
lowest first, with the dimensions the publisher declared.
"""

from __future__ import annotations

from collections.abc import Sequence

#: a tile this close to a layer's size is served by that layer (LiveKit's layerSelectionTolerance)
LAYER_SELECTION_TOLERANCE = 0.9
QUALITY_LOW, QUALITY_MEDIUM, QUALITY_HIGH, QUALITY_OFF = 0, 1, 2, 3
#: heights assumed for layers the publisher did not describe (LiveKit's fallback: 180, 360, top)
DEFAULT_LAYER_HEIGHTS = (180, 360)
NO_LAYER = -1


def layer_sizes(
    declared: Sequence[tuple[int, int]], count: int, width: int, height: int
) -> list[tuple[int, int]]:
    """(width, height) per spatial layer, lowest first: the declared ones when complete, else
    LiveKit's fallback (180p, 360p, then the track's own size) scaled to the track's aspect."""
    if len(declared) >= count and all(w > 0 and h > 0 for w, h in declared[:count]):
        return sorted(declared[:count], key=lambda size: size[0] * size[1])
    top_w, top_h = (width, height) if width > 0 and height > 0 else (1280, 720)
    portrait = top_h > top_w
    short_top = top_w if portrait else top_h
    sizes: list[tuple[int, int]] = []
    for index in range(count):
        short = (
            short_top
            if index == count - 1
            else min(DEFAULT_LAYER_HEIGHTS[min(index, 1)], short_top)
        )
        scale = short / short_top
        sizes.append((round(top_w * scale), round(top_h * scale)))
    return sizes


def layer_for_dimensions(sizes: Sequence[tuple[int, int]], width: int, height: int) -> int:
    """The lowest layer that fills a ``width`` × ``height`` tile (see the module docstring)."""
    if not sizes:
        return NO_LAYER
    top_w, top_h = sizes[-1]
    portrait = top_h > top_w
    requested = (width if portrait else height) * LAYER_SELECTION_TOLERANCE
    for index, (layer_w, layer_h) in enumerate(sizes):
        if (layer_w if portrait else layer_h) >= requested:
            return index
    return len(sizes) - 1


def layer_for_quality(quality: int, qualities: Sequence[int]) -> int:
    """The layer for a VideoQuality: the highest layer whose quality is at most the one asked
    for (the lowest layer if all are higher); NO_LAYER for OFF. ``qualities`` per spatial layer."""
    if quality >= QUALITY_OFF or not qualities:
        return NO_LAYER
    eligible = [index for index, q in enumerate(qualities) if q <= quality]
    return eligible[-1] if eligible else 0


def preferred_layer(
    sizes: Sequence[tuple[int, int]],
    qualities: Sequence[int],
    width: int,
    height: int,
    quality: int,
) -> int:
    """What a subscriber's UpdateTrackSettings asks for: by tile size when it has one, else by
    quality."""
    if width > 0 and height > 0:
        return layer_for_dimensions(sizes, width, height)
    return layer_for_quality(quality, qualities)
