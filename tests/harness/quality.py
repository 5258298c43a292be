"""What a subscriber saw of one publisher, and how good it was over a window of time.

A `Reception` collects, for one subscriber, the publisher's decoded video frames (time, size)
and periodic samples of its receive counters (`StatsSample`: bytes, audio samples received and
concealed, NACKs, PLIs, packets lost). The LiveKit SDK subscriber reports every decoded frame;
Chromium's getStats only counts them, so `Reception.add_counted_frames` turns a sampled
`framesDecoded` increase into that many frames at the sample's time (freezes are then measured
at the sampling interval's resolution).

`Reception.window(t0, t1)` is a `WindowReport`: frames per second, the longest stretch without a
frame (from `t0`, between frames, up to `t1`), the frame heights seen, the audio concealed (the
share of samples the receiver's jitter buffer invented: loss or late packets) and the received
video bitrate. `layer_timeline` gives the dominant height per second, for the benchmark table.
All times are `time.monotonic()` (CLOCK_MONOTONIC, shared by every process and namespace).
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Frame:
    at: float
    width: int
    height: int


@dataclass(frozen=True)
class StatsSample:
    """Cumulative receive counters of the publisher's tracks at time `at`."""

    at: float
    video_bytes: int = 0
    video_packets_lost: int = 0
    nack_count: int = 0
    pli_count: int = 0
    audio_samples: int = 0  # totalSamplesReceived
    audio_concealed: int = 0  # concealedSamples
    audio_energy: float = 0.0  # totalAudioEnergy


@dataclass(frozen=True)
class WindowReport:
    start: float
    end: float
    frames: int
    fps: float
    longest_gap_s: float
    heights: dict[int, int]
    audio_samples: int
    audio_concealed_fraction: float | None  # None: no audio counters in the window
    audio_energy: float
    video_kbps: float | None
    nacks: int
    plis: int

    @property
    def dominant_height(self) -> int | None:
        return max(self.heights, key=lambda h: self.heights[h]) if self.heights else None

    @property
    def top_height(self) -> int | None:
        return max(self.heights) if self.heights else None

    def line(self) -> str:
        heights = ", ".join(f"{h}p×{n}" for h, n in sorted(self.heights.items())) or "none"
        concealed = (
            "n/a"
            if self.audio_concealed_fraction is None
            else f"{self.audio_concealed_fraction:.1%}"
        )
        kbps = "n/a" if self.video_kbps is None else f"{self.video_kbps:.0f}"
        return (
            f"{self.end - self.start:4.1f} s: {self.fps:5.1f} fps, longest gap "
            f"{self.longest_gap_s:4.2f} s, heights [{heights}], video {kbps} kbit/s, "
            f"audio concealed {concealed}, NACK {self.nacks}, PLI {self.plis}"
        )


@dataclass
class Reception:
    """One subscriber's view of one publisher (bounded: a few minutes of frames and samples)."""

    max_frames: int = 20_000
    max_samples: int = 5_000
    frames: list[Frame] = field(default_factory=list)
    samples: list[StatsSample] = field(default_factory=list)
    _counted: int | None = None

    def add_frame(self, frame: Frame) -> None:
        if len(self.frames) < self.max_frames:
            self.frames.append(frame)

    def add_sample(self, sample: StatsSample) -> None:
        if len(self.samples) < self.max_samples:
            self.samples.append(sample)

    def add_counted_frames(self, at: float, frames_decoded: int, width: int, height: int) -> None:
        """A cumulative `framesDecoded` read at `at`: its increase becomes frames at `at`."""
        if self._counted is not None:
            for _ in range(max(frames_decoded - self._counted, 0)):
                self.add_frame(Frame(at, width, height))
        self._counted = frames_decoded

    def first_frame(self, *, height: int, since: float) -> Frame | None:
        """The first frame of `height` at or after `since`."""
        start = bisect.bisect_left([f.at for f in self.frames], since)
        return next((f for f in self.frames[start:] if f.height == height), None)

    def window(self, start: float, end: float) -> WindowReport:
        frames = [f for f in self.frames if start <= f.at < end]
        edges = [start, *(f.at for f in frames), end]
        gap = max(b - a for a, b in itertools.pairwise(edges))
        inside = [s for s in self.samples if start <= s.at <= end]
        first, last = (inside[0], inside[-1]) if len(inside) >= 2 else (None, None)
        concealed: float | None = None
        samples = nacks = plis = 0
        energy = 0.0
        kbps: float | None = None
        if first is not None and last is not None:
            samples = last.audio_samples - first.audio_samples
            if samples > 0:
                concealed = (last.audio_concealed - first.audio_concealed) / samples
            energy = last.audio_energy - first.audio_energy
            nacks, plis = last.nack_count - first.nack_count, last.pli_count - first.pli_count
            if last.at > first.at:
                kbps = (last.video_bytes - first.video_bytes) * 8 / (last.at - first.at) / 1000
        return WindowReport(
            start=start,
            end=end,
            frames=len(frames),
            fps=len(frames) / (end - start) if end > start else 0.0,
            longest_gap_s=gap,
            heights=dict(Counter(f.height for f in frames)),
            audio_samples=samples,
            audio_concealed_fraction=concealed,
            audio_energy=energy,
            video_kbps=kbps,
            nacks=nacks,
            plis=plis,
        )

    def layer_timeline(self, start: float, end: float, step_s: float = 1.0) -> list[int | None]:
        """The dominant frame height in each `step_s` from `start` (None: no frame)."""
        out: list[int | None] = []
        t = start
        while t < end and len(out) < 10_000:
            out.append(self.window(t, min(t + step_s, end)).dominant_height)
            t += step_s
        return out


def add_page_samples(reception: Reception, samples: list[dict[str, Any]]) -> None:
    """Samples from harness.js `takeSamples()` (epoch-ms stamps, getStats inbound-rtp names)."""
    offset = time.time() - time.monotonic()
    for sample in samples:
        at = float(sample["at"]) / 1000.0 - offset
        video, audio = sample.get("video") or {}, sample.get("audio") or {}
        if "framesDecoded" in video:
            width, height = int(video.get("frameWidth", 0)), int(video.get("frameHeight", 0))
            reception.add_counted_frames(at, int(video["framesDecoded"]), width, height)
        reception.add_sample(
            StatsSample(
                at=at,
                video_bytes=int(video.get("bytesReceived", 0)),
                video_packets_lost=int(video.get("packetsLost", 0)),
                nack_count=int(video.get("nackCount", 0)),
                pli_count=int(video.get("pliCount", 0)),
                audio_samples=int(audio.get("totalSamplesReceived", 0)),
                audio_concealed=int(audio.get("concealedSamples", 0)),
                audio_energy=float(audio.get("totalAudioEnergy", 0.0)),
            )
        )


def timeline_text(heights: list[int | None]) -> str:
    """`[720, 720, 360, None]` → "720 720 360 –" (the benchmark's layer-over-time column)."""
    return " ".join("–" if h is None else str(h) for h in heights)
