"""A LiveKit Python SDK publisher that replays pre-rendered frames of the test pattern.

`PooledPublisher` is `tests.harness.lkclient.SyntheticPublisher` with the video loop fed from a
pool of I420 frames rendered once (benchmarks/forward_cpu.py, tests/harness/media_quality.py).
"""

from __future__ import annotations

from typing import Any

from livekit import rtc

from tests.harness.lkclient import SyntheticPublisher, render_pattern, video_frame_from_rgba


class PooledPublisher(SyntheticPublisher):
    """`SyntheticPublisher` whose video loop replays a pool of pre-rendered I420 frames.

    Rendering the test pattern at 1280x720 costs ~15 ms of Python per frame, which at 30 fps
    would take half of one of this box's two cores away from the SFU. The pool (one second of
    distinct frames by default) keeps the content changing every frame, so the encoder still
    works for every frame. `video_paused = True` stops feeding the encoder; the track stays up.
    """

    def __init__(self, identity: str, *, pool: int, **kwargs: Any) -> None:
        super().__init__(identity, **kwargs)
        self.pool = [
            video_frame_from_rgba(render_pattern(i, self.width, self.height)).convert(
                rtc.VideoBufferType.I420
            )
            for i in range(max(pool, 1))
        ]
        self.video_paused = False

    def video_frame(self, n: int) -> rtc.VideoFrame | None:
        return None if self.video_paused else self.pool[n % len(self.pool)]
