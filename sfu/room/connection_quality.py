"""Connection quality of each participant (`ConnectionQualityUpdate`: EXCELLENT, GOOD, POOR, LOST),
scored every `UPDATE_INTERVAL` as LiveKit's clients expect it.

The score is an R-factor in the style of the ITU-T G.107 E-model, simplified (as LiveKit does,
our own weights): 100, less a delay impairment from the effective one-way delay (half the RTT
plus twice the jitter: 1 point per 40 ms up to 160 ms, then 1 per 10 ms beyond 120), less a loss
impairment (`LOSS_WEIGHT_AUDIO` or `LOSS_WEIGHT_VIDEO` points per percent lost: NACK repairs
video, nothing repairs audio), less `LAYER_WEIGHT` per layer the link's estimate keeps a video
track below what the subscriber prefers (a paused track counts as one more). It moves towards
each new reading slowly up (`RISE`) and fast down (`FALL`), never below `MIN_SCORE`. EXCELLENT
above 80, GOOD above 40, else POOR; LOST when a participant publishes unmuted tracks and the SFU
received nothing from it for a whole interval. `mos` maps R to a mean opinion score (1..4.5),
which is what `ConnectionQualityInfo.score` carries.

Inputs, per participant and interval: upstream, the loss its published tracks' layers showed
(`TrackReceiver.loss_fraction`); downstream, its subscriber reports (fraction lost, jitter,
RTT per down track) and its link's allocation (`StreamAllocator.last`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from livekit.protocol import models, rtc

from sfu.room.publication import PublishedTrack, Subscription

UPDATE_INTERVAL = 5.0  # seconds (LiveKit's connectionquality.UpdateInterval)
LOSS_WEIGHT_AUDIO = 6.0
LOSS_WEIGHT_VIDEO = 4.0
LAYER_WEIGHT = 35.0
RISE, FALL = 0.4, 0.7
MAX_SCORE, MIN_SCORE = 100.0, 20.0


@dataclass
class Reading:
    """One interval's observations of a connection."""

    audio_loss: float = 0.0  # fraction 0..1
    video_loss: float = 0.0
    rtt: float = 0.0  # seconds
    jitter: float = 0.0  # seconds
    layers_missing: float = 0.0  # per video track, on average
    lost: bool = False


def r_factor(reading: Reading) -> float:
    delay_ms = reading.rtt * 1000 / 2 + reading.jitter * 1000 * 2
    delay = delay_ms / 40 if delay_ms <= 160 else (delay_ms - 120) / 10
    loss = (
        reading.audio_loss * 100 * LOSS_WEIGHT_AUDIO + reading.video_loss * 100 * LOSS_WEIGHT_VIDEO
    )
    return max(MAX_SCORE - delay - loss - reading.layers_missing * LAYER_WEIGHT, 0.0)


def mos(score: float) -> float:
    """The mean opinion score for an R-factor (G.107 Annex B)."""
    if score <= 0:
        return 1.0
    if score >= 100:
        return 4.5
    return 1 + 0.035 * score + 7e-6 * score * (score - 60) * (100 - score)


def quality(score: float) -> models.ConnectionQuality:
    if score > 80:
        return models.ConnectionQuality.EXCELLENT
    if score > 40:
        return models.ConnectionQuality.GOOD
    return models.ConnectionQuality.POOR


class QualityScore:
    """One participant's smoothed score."""

    def __init__(self) -> None:
        self.score = MAX_SCORE
        self.lost = False

    def update(self, reading: Reading) -> None:
        self.lost = reading.lost
        if reading.lost:
            return
        target = r_factor(reading)
        factor = RISE if target > self.score else FALL
        self.score = max(factor * target + (1 - factor) * self.score, MIN_SCORE)

    @property
    def quality(self) -> models.ConnectionQuality:
        return models.ConnectionQuality.LOST if self.lost else quality(self.score)

    def info(self, participant_sid: str) -> rtc.ConnectionQualityInfo:
        return rtc.ConnectionQualityInfo(
            participant_sid=participant_sid,
            quality=self.quality,
            score=mos(self.score),
        )


def read(
    published: Iterable[PublishedTrack],
    subscriptions: Iterable[Subscription],
    layers_missing: float,
    now: float,
) -> Reading:
    """One participant's reading: what its tracks' receivers and its down tracks report."""
    out = Reading(layers_missing=layers_missing)
    publishing = receiving = False
    for track in published:
        receiver = track.receiver
        if track.info.muted:
            continue
        publishing = True
        if any(now - layer.last_arrival < UPDATE_INTERVAL for layer in receiver.layers):
            receiving = True
        if receiver.is_video:
            out.video_loss = max(out.video_loss, receiver.loss_fraction)
        else:
            out.audio_loss = max(out.audio_loss, receiver.loss_fraction)
    for sub in subscriptions:
        downtrack = sub.downtrack
        if sub.track.receiver.is_video:
            out.video_loss = max(out.video_loss, downtrack.fraction_lost)
        else:
            out.audio_loss = max(out.audio_loss, downtrack.fraction_lost)
        out.jitter = max(out.jitter, downtrack.jitter)
        if downtrack.rtt is not None:
            out.rtt = max(out.rtt, downtrack.rtt)
    out.lost = publishing and not receiving
    return out
