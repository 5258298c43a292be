"""Self-test of tests/harness/lkclient.py without an SFU: the synthetic pattern and the analysis
that E2E tests use agree on locally generated frames, survive the degradations a real call adds
(the SDK's own I420 round trip, downscaling to simulcast layer sizes, noise, blur), and reject
frames that are not what the publisher drew; the FFT finds the publisher's tone.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
from livekit import rtc

from tests.harness import lkclient as lk


def _i420_round_trip(rgba: lk.RgbaFrame) -> lk.RgbaFrame:
    """Through the SDK's native converter, as a published frame is (RGBA -> I420 -> RGBA)."""
    i420 = lk.video_frame_from_rgba(rgba).convert(rtc.VideoBufferType.I420)
    return lk.rgba_from_video_frame(i420)


def _downscale(rgba: lk.RgbaFrame, factor: int) -> lk.RgbaFrame:
    h, w = rgba.shape[0] // factor, rgba.shape[1] // factor
    blocks = rgba[: h * factor, : w * factor].reshape(h, factor, w, factor, 4).astype(np.float64)
    return np.asarray(blocks.mean(axis=(1, 3)).round(), dtype=np.uint8)


def _blur(rgba: lk.RgbaFrame) -> lk.RgbaFrame:
    x = rgba.astype(np.float64)
    out = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
    return np.asarray(out.round(), dtype=np.uint8)


def _noise(rgba: lk.RgbaFrame, sigma: float, seed: int) -> lk.RgbaFrame:
    rng = np.random.default_rng(seed)
    noisy = rgba.astype(np.float64) + rng.normal(0.0, sigma, rgba.shape)
    return np.asarray(np.clip(noisy, 0, 255).round(), dtype=np.uint8)


@pytest.mark.parametrize("number", [0, 1, 5, 127, 128, 1000, 4095, 4096, 4097, 123_456])
@pytest.mark.parametrize("size", [(640, 360), (1280, 720), (320, 180), (642, 362), (160, 90)])
def test_exact_frames_match(number: int, size: tuple[int, int]) -> None:
    width, height = size
    frame = lk.render_pattern(number, width, height)
    assert frame.shape == (height, width, 4)
    result = lk.analyse_frame(frame)
    assert result.frame_number == number % lk.FRAME_NUMBER_MODULUS
    assert result.ok, result
    assert result.cells_matching == result.cells_total
    assert result.mean_abs_error == 0.0
    assert (result.width, result.height) == size


def test_pattern_moves_every_frame() -> None:
    frames = [lk.render_pattern(n) for n in range(12)]
    for a, b in itertools.pairwise(frames):
        changed = np.any(a != b, axis=-1).mean()
        assert changed > 0.01  # the marker cell and the frame number change every frame
    # the colour field itself shifts every COLOUR_STEP_FRAMES
    shifted = np.any(frames[0] != frames[lk.COLOUR_STEP_FRAMES], axis=-1).mean()
    assert shifted > 0.5


@pytest.mark.parametrize("number", [3, 77, 2048])
def test_frames_survive_sdk_i420_round_trip(number: int) -> None:
    result = lk.analyse_frame(_i420_round_trip(lk.render_pattern(number, 640, 360)))
    assert result.ok, result
    assert result.frame_number == number
    assert result.mean_abs_error < 15.0, result


@pytest.mark.parametrize("factor", [2, 4])
def test_frames_survive_downscaling_noise_and_blur(factor: int) -> None:
    for number in (0, 9, 300, 4000):
        frame = lk.render_pattern(number, 1280, 720)
        degraded = _noise(_blur(_downscale(_i420_round_trip(frame), factor)), 12.0, number)
        result = lk.analyse_frame(degraded)
        assert result.ok, (number, result)
        assert result.frame_number == number
        assert (result.width, result.height) == (1280 // factor, 720 // factor)


def test_wrong_frames_are_rejected() -> None:
    black = np.zeros((360, 640, 4), np.uint8)
    white = np.full((360, 640, 4), 255, np.uint8)
    grey_noise = _noise(np.full((360, 640, 4), 128, np.uint8), 60.0, 1)
    for frame in (black, white, grey_noise):
        result = lk.analyse_frame(frame)
        assert not result.ok, result

    # right frame number, content of another frame: marker and/or colours disagree
    n = 40
    for other in (n + 1, n + lk.COLOUR_STEP_FRAMES, n + 64):
        forged = lk.render_pattern(other).copy()
        rows = 360 // lk.GRID_ROWS
        forged[:rows] = lk.render_pattern(n)[:rows]
        result = lk.analyse_frame(forged)
        assert result.frame_number == n
        assert not result.ok, (other, result)

    # a horizontally mirrored frame (e.g. a wrong stride) is not accepted
    assert not lk.analyse_frame(lk.render_pattern(n)[:, ::-1].copy()).ok


def test_corrupted_half_frame_is_rejected() -> None:
    frame = lk.render_pattern(321).copy()
    frame[180:] = 0  # lower half lost
    assert not lk.analyse_frame(frame).ok


def test_summarise_matches_mentions_sizes() -> None:
    matches = [lk.analyse_frame(lk.render_pattern(n, 320, 180)) for n in range(3)]
    text = lk.summarise_matches(matches)
    assert "3 matching" in text and "320x180" in text
    assert lk.summarise_matches([]) == "no frames"


@pytest.mark.parametrize("frequency", [440.0, 1000.0, 261.63])
def test_fft_finds_the_tone(frequency: float) -> None:
    samples = lk.sine_samples(1234, 48000, frequency=frequency)
    assert abs(lk.dominant_frequency(samples, 48000) - frequency) < 1.0
    # with noise and only 0.25 s, as a test would get after Opus
    rng = np.random.default_rng(0)
    short = lk.sine_samples(0, 12000, frequency=frequency).astype(np.float64)
    short += rng.normal(0, 2000, short.size)
    assert abs(lk.dominant_frequency(short, 48000) - frequency) < 3.0


def test_fft_rejects_too_few_samples() -> None:
    with pytest.raises(ValueError):
        lk.dominant_frequency(np.zeros(10, np.int16), 48000)


def test_sine_frames_are_continuous_and_sdk_shaped() -> None:
    frames = [lk.sine_frame(i * 480) for i in range(10)]
    assert all(f.sample_rate == 48000 and f.num_channels == 1 for f in frames)
    assert all(f.samples_per_channel == 480 for f in frames)
    joined = np.concatenate([np.frombuffer(f.data, np.int16) for f in frames])
    np.testing.assert_array_equal(joined, lk.sine_samples(0, 4800))
    assert lk.rms(joined) > 0.2 * 32767 / np.sqrt(2)
    assert abs(lk.dominant_frequency(joined, 48000) - 440.0) < 2.0


def test_audio_collector_is_bounded() -> None:
    c = lk.AudioCollector("TR_x", "alice", 48000, max_seconds=1.0)
    for i in range(300):  # 3 s of 10 ms chunks
        c.add(lk.sine_samples(i * 480, 480))
    assert c.samples_total == 300 * 480
    kept = sum(chunk.size for chunk in c.chunks)
    assert 48000 <= kept <= 48000 + 480
    np.testing.assert_array_equal(c.last_seconds(0.5), lk.sine_samples(300 * 480 - 24000, 24000))


async def test_publisher_paces_video_in_real_time() -> None:
    """The publisher's frame loop feeds a real SDK VideoSource at the configured rate."""
    publisher = lk.SyntheticPublisher("pace", fps=20.0)
    source = rtc.VideoSource(640, 360)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(publisher._video_loop(source))
    try:
        async with asyncio.timeout(20.0):
            while publisher.frames_sent < 21:
                await asyncio.sleep(0.01)
        elapsed = loop.time() - started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.aclose()
    # Frame n goes out at n / fps, never earlier: 21 frames take at least 1 s at 20 fps. (A
    # loaded machine can only make it later, so there is no tight upper bound.)
    assert elapsed >= 20 / publisher.fps - 0.02, elapsed
