"""tests/harness/quality.py and the frame-number reader of tests/harness/quality_subscriber.py:
the measurements the media-quality tests judge by are what they say."""

from __future__ import annotations

import time

import numpy as np
import pytest
from livekit import rtc

from tests.harness.lkclient import render_pattern, video_frame_from_rgba
from tests.harness.quality import (
    Frame,
    Reception,
    StatsSample,
    add_page_samples,
    timeline_text,
)
from tests.harness.quality_subscriber import frame_number_from_luma


def _frames(reception: Reception, start: float, end: float, fps: float, height: int) -> None:
    n = 0
    while start + n / fps < end:
        reception.add_frame(Frame(start + n / fps, height * 16 // 9, height))
        n += 1


def test_window_counts_frames_and_the_longest_gap() -> None:
    r = Reception()
    _frames(r, 100.0, 102.0, 24.0, 720)
    _frames(r, 103.5, 106.0, 24.0, 360)  # 1.5 s without a frame between
    w = r.window(100.0, 106.0)
    assert w.frames == 48 + 60
    assert w.fps == pytest.approx(108 / 6.0)
    assert w.longest_gap_s == pytest.approx(1.5 + 1 / 24, abs=1e-6)
    assert w.heights == {720: 48, 360: 60}
    assert (w.dominant_height, w.top_height) == (360, 720)
    assert r.first_frame(height=360, since=100.0) == Frame(103.5, 640, 360)
    assert r.layer_timeline(100.0, 106.0) == [720, 720, None, 360, 360, 360]
    assert timeline_text([720, None, 180]) == "720 – 180"


def test_a_window_without_frames_is_one_gap() -> None:
    r = Reception()
    _frames(r, 100.0, 101.0, 24.0, 720)
    w = r.window(101.5, 104.0)
    assert (w.frames, w.fps, w.dominant_height) == (0, 0.0, None)
    assert w.longest_gap_s == pytest.approx(2.5)


def test_counters_give_rates_and_concealment() -> None:
    r = Reception()
    r.add_sample(StatsSample(at=10.0, video_bytes=0, audio_samples=0, audio_concealed=0))
    r.add_sample(StatsSample(at=12.0, video_bytes=250_000, audio_samples=96_000))
    r.add_sample(
        StatsSample(
            at=14.0, video_bytes=500_000, audio_samples=192_000, audio_concealed=9600, nack_count=7
        )
    )
    w = r.window(10.0, 14.0)
    assert w.video_kbps == pytest.approx(1000.0)
    assert w.audio_samples == 192_000
    assert w.audio_concealed_fraction == pytest.approx(0.05)
    assert w.nacks == 7
    assert r.window(10.0, 11.0).audio_concealed_fraction is None  # one sample: no rate


def test_page_samples_become_frames_at_the_sample_time() -> None:
    r = Reception()
    now_ms = time.time() * 1000
    page = [
        {"at": now_ms, "video": {"framesDecoded": 10, "frameHeight": 720, "frameWidth": 1280}},
        {"at": now_ms + 200, "video": {"framesDecoded": 15, "frameHeight": 360}, "audio": None},
        {"at": now_ms + 400, "video": None, "audio": {"totalSamplesReceived": 9600}},
    ]
    add_page_samples(r, page)
    assert [f.height for f in r.frames] == [360] * 5  # the first read is the baseline
    expected = time.monotonic() + 0.2
    assert r.frames[0].at == pytest.approx(expected, abs=0.05)
    assert [s.audio_samples for s in r.samples] == [0, 0, 9600]


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (640, 360), (320, 180)])
@pytest.mark.parametrize("number", [0, 1, 23, 1000, 4095])
def test_frame_number_read_from_the_y_plane(width: int, height: int, number: int) -> None:
    frame = video_frame_from_rgba(render_pattern(number, width, height))
    i420 = frame.convert(rtc.VideoBufferType.I420)
    y = np.frombuffer(i420.get_plane(0) or b"", dtype=np.uint8)
    assert frame_number_from_luma(y, width, height) == number
    assert frame_number_from_luma(np.zeros(width * height, np.uint8), width, height) is None
