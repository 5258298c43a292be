"""Connection quality scoring (`sfu.room.connection_quality`): the E-model-style R factor from loss,
delay and missing layers, its smoothing (slow up, fast down), the quality levels and the MOS
carried as the score, and LOST for a publisher the SFU hears nothing from."""

from __future__ import annotations

import pytest
from livekit.protocol import models

from sfu.room.connection_quality import (
    MIN_SCORE,
    QualityScore,
    Reading,
    mos,
    quality,
    r_factor,
)


def test_a_clean_connection_is_excellent() -> None:
    score = QualityScore()
    score.update(Reading(rtt=0.04, jitter=0.005))
    assert score.quality == models.ConnectionQuality.EXCELLENT
    info = score.info("PA_x")
    assert info.participant_sid == "PA_x" and 4.3 < info.score <= 4.5


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (Reading(audio_loss=0.02), models.ConnectionQuality.EXCELLENT),  # 12 points
        (Reading(audio_loss=0.06), models.ConnectionQuality.GOOD),  # 36 points
        (Reading(audio_loss=0.15), models.ConnectionQuality.POOR),  # 90 points
        (Reading(video_loss=0.05), models.ConnectionQuality.GOOD),  # 20 points: NACK repairs video
        (Reading(rtt=0.6, jitter=0.05), models.ConnectionQuality.GOOD),  # 400 ms: 28 points
        (Reading(layers_missing=1), models.ConnectionQuality.GOOD),
        (Reading(layers_missing=2), models.ConnectionQuality.POOR),
    ],
)
def test_levels(reading: Reading, expected: int) -> None:
    assert quality(r_factor(reading)) == expected


def test_scores_fall_fast_and_rise_slowly() -> None:
    score = QualityScore()
    score.update(Reading(audio_loss=0.2))
    after_fall = score.score
    assert after_fall < 40 and score.quality == models.ConnectionQuality.POOR
    score.update(Reading())
    assert after_fall < score.score < 80  # one clean interval is not enough
    for _ in range(5):
        score.update(Reading())
    assert score.quality == models.ConnectionQuality.EXCELLENT
    for _ in range(10):
        score.update(Reading(audio_loss=1.0))
    assert score.score == MIN_SCORE


def test_lost_and_mos() -> None:
    score = QualityScore()
    score.update(Reading(lost=True))
    assert score.quality == models.ConnectionQuality.LOST
    score.update(Reading())
    assert score.quality == models.ConnectionQuality.EXCELLENT
    assert mos(0) == 1.0 and mos(100) == 4.5 and 3.5 < mos(70) < 3.7
