"""Simulcast layer selection with the LiveKit Python SDK (`livekit` 1.2.1) on both ends.

Issue 4, "Done means": "a test with the Python SDK publishing simulcast and a subscriber
requesting each quality". alice (`SyntheticPublisher(simulcast=True)`, 1280×720 at 15 fps)
publishes the moving test pattern of tests/harness/lkclient.py as VP8 simulcast; the Rust SDK
encodes it as q/h/f = 320×180, 640×360, 1280×720. alice leaves dynacast off (the Python SDK's
default), so all three layers keep flowing into the SFU and only the SFU's layer selection for
bob is under test.

bob (`CollectingSubscriber`) decodes everything he gets and checks every frame's pixels against
the pattern alice drew for that frame number (`analyse_frame`). The Python SDK has no adaptive
stream, so without any settings bob must get the highest layer (1280×720). Then bob asks for each
quality in turn with `RemoteTrackPublication.set_video_quality(...)`, which the Rust SDK sends as
`UpdateTrackSettings{track_sids, quality}` with no width/height: LOW → 320×180, MEDIUM → 640×360,
HIGH → 1280×720. For each, the first pattern-matching frame of the new size must arrive within
`SWITCH_S`, and for `HOLD_S` after it every frame must be of that size (no flapping back), at
least half alice's frame rate must arrive, 90 % must match the pattern and the frame numbers
must keep advancing. Every request runs to its own give-up time before the assertions, so one
failing run reports all of them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import pytest
from livekit import rtc

from tests.harness.lkclient import (
    CollectingSubscriber,
    PatternMatch,
    SyntheticPublisher,
    rtp_stats_summary,
    summarise_matches,
)
from tests.harness.sfu import SfuInstance

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, FPS = 1280, 720, 15.0
START_S = 30.0  # connect, publish, bandwidth ramp-up until the 1280×720 layer flows
SWITCH_S = 2.0  # the same bound as the browser test
GIVE_UP_S = 8.0
HOLD_S = 2.0
SETTLE_S = 0.3  # frames already decoded / in flight when the first new-size frame showed
LAYERS: list[tuple[str, rtc.VideoQuality.ValueType, tuple[int, int]]] = [
    ("LOW", rtc.VideoQuality.VIDEO_QUALITY_LOW, (320, 180)),
    ("MEDIUM", rtc.VideoQuality.VIDEO_QUALITY_MEDIUM, (640, 360)),
    ("HIGH", rtc.VideoQuality.VIDEO_QUALITY_HIGH, (1280, 720)),
]


@dataclass
class QualityResult:
    name: str
    size: tuple[int, int]
    elapsed_s: float | None = None  # None: no matching frame of that size within GIVE_UP_S
    problems: list[str] = field(default_factory=list)
    window: list[PatternMatch] = field(default_factory=list)

    def line(self) -> str:
        took = "NOT REACHED" if self.elapsed_s is None else f"{self.elapsed_s:5.2f} s"
        w, h = self.size
        extra = f"  problems: {'; '.join(self.problems)}" if self.problems else ""
        return f"{self.name:>6} → {w}x{h:<4} {took}  hold: {summarise_matches(self.window)}{extra}"


async def _request_quality(
    bob: CollectingSubscriber,
    publication: rtc.RemoteTrackPublication,
    name: str,
    quality: rtc.VideoQuality.ValueType,
    size: tuple[int, int],
) -> QualityResult:
    result = QualityResult(name, size)
    collector = bob.video_from("alice")
    assert collector is not None
    t0 = time.monotonic()
    publication.set_video_quality(quality)

    def first_new() -> PatternMatch | None:
        return next(
            (m for m in collector.recent(since=t0) if m.ok and (m.width, m.height) == size),
            None,
        )

    try:
        await bob.wait_until(
            lambda: first_new() is not None,
            timeout_s=GIVE_UP_S,
            what=f"a {size[0]}x{size[1]} frame from alice after set_video_quality({name})",
        )
    except TimeoutError as exc:
        recent = collector.recent(since=t0)
        result.problems.append(
            f"{size[0]}x{size[1]} not reached: no matching frame of that size in "
            f"{GIVE_UP_S:.0f} s; got {summarise_matches(recent)}"
        )
        print(f"set_video_quality({name}) timed out:\n{exc}")
        return result
    switched = first_new()
    assert switched is not None
    result.elapsed_s = switched.received_at - t0

    # Hold: only the new size, at a real frame rate, matching, advancing.
    await asyncio.sleep(SETTLE_S + HOLD_S)
    window_start = switched.received_at + SETTLE_S
    result.window = [
        m for m in collector.recent(since=window_start) if m.received_at < window_start + HOLD_S
    ]
    sizes = {(m.width, m.height) for m in result.window}
    if sizes != {size}:
        result.problems.append(f"frame sizes after the switch: {sorted(sizes)}")
    if len(result.window) < FPS * HOLD_S / 2:
        result.problems.append(f"only {len(result.window)} frames in {HOLD_S} s")
    elif sum(m.ok for m in result.window) < 0.9 * len(result.window):
        result.problems.append("fewer than 90 % of the frames match the pattern")
    numbers = [m.frame_number for m in result.window if m.frame_number is not None]
    if numbers and len(set(numbers)) < 0.8 * len(numbers):
        result.problems.append(f"frame numbers not advancing: {numbers}")
    return result


async def test_python_sdk_subscriber_requests_each_quality(sfu: SfuInstance) -> None:
    room = f"simulcast-sdk-{uuid.uuid4().hex[:8]}"
    alice = SyntheticPublisher("alice", width=WIDTH, height=HEIGHT, fps=FPS, simulcast=True)
    bob = CollectingSubscriber("bob", keep_frames=False)
    try:
        await bob.connect(sfu.url, sfu.token("bob", room), timeout_s=START_S)
        await alice.connect(sfu.url, sfu.token("alice", room), timeout_s=START_S)
        await alice.publish(audio=False, timeout_s=START_S)
        assert alice.video_publication is not None
        video_sid = alice.video_publication.sid
        await bob.wait_for_event(
            "track_subscribed", participant="alice", track_sid=video_sid, timeout_s=START_S
        )
        publication = bob.room.remote_participants["alice"].track_publications[video_sid]
        assert isinstance(publication, rtc.RemoteTrackPublication)
        assert publication.simulcasted, "the SFU's TrackInfo does not say simulcast"
        assert (publication.width, publication.height) == (WIDTH, HEIGHT), publication

        # No settings at all (no adaptive stream): the highest layer.
        t0 = time.monotonic()
        await bob.wait_matching_frames("alice", 10, width=WIDTH, height=HEIGHT, timeout_s=START_S)
        print(f"first 10 matching {WIDTH}x{HEIGHT} frames after {time.monotonic() - t0:.2f} s")

        results = [
            await _request_quality(bob, publication, name, quality, size)
            for name, quality, size in LAYERS
        ]
        print("quality → size       took    ")
        print("\n".join(r.line() for r in results))
        print(f"---- bob's RTP streams ----\n{await rtp_stats_summary(bob.room)}")
        sfu.assert_alive()

        failures = [
            f"set_video_quality({r.name}): took {r.elapsed_s:.2f} s > {SWITCH_S} s"
            for r in results
            if r.elapsed_s is not None and r.elapsed_s > SWITCH_S
        ]
        failures += [f"set_video_quality({r.name}): {p}" for r in results for p in r.problems]
        assert not failures, "Python SDK quality requests:\n" + "\n".join(failures)
    finally:
        if alice.room.isconnected():
            print(f"---- alice's RTP streams ----\n{await rtp_stats_summary(alice.room)}")
        await alice.leave()
        await bob.leave()
        print(f"---- bob's room events ----\n{bob.event_log()}")


async def test_layer_dimensions_and_bitrates_in_metrics(sfu: SfuInstance) -> None:
    """Each received simulcast layer's size and measured bitrate appear in /metrics."""
    import httpx

    room = f"metrics-{uuid.uuid4().hex[:6]}"
    publisher = SyntheticPublisher("alice", width=1280, height=720, simulcast=True)
    watcher = CollectingSubscriber("bob")
    await publisher.connect(sfu.url, sfu.token("alice", room))
    await watcher.connect(sfu.url, sfu.token("bob", room))
    try:
        await publisher.publish(video=True, audio=False)
        layers: dict[str, tuple[float, float]] = {}
        async with asyncio.timeout(30):
            while len([b for b, _h in layers.values() if b > 0]) < 3:
                await asyncio.sleep(1.0)
                async with httpx.AsyncClient(timeout=10) as client:
                    text = (await client.get(sfu.metrics_url)).text
                heights = {
                    line.split('quality="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("sfu_layer_height_pixels{")
                }
                rates = {
                    line.split('quality="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("sfu_layer_bitrate_bps{")
                }
                layers = {q: (rates.get(q, 0.0), h) for q, h in heights.items()}
        assert {q: h for q, (_b, h) in layers.items()} == {"low": 180, "medium": 360, "high": 720}
    finally:
        await watcher.leave()
        await publisher.leave()
