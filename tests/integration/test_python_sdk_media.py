"""End to end with the LiveKit Python SDK (`livekit` on PyPI) through the real SFU process.

Participant A publishes a synthetic VP8 video (the moving pattern of tests/harness/lkclient.py,
640x360) and a 440 Hz sine; participant B must receive decoded frames of A's size whose pixels
match what A drew for that frame number, with the frame numbers advancing, and audio whose
dominant frequency is A's tone. Then A unpublishes both tracks and leaves; B must see the two
unpublications and A's departure.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.harness.lkclient import (
    CollectingSubscriber,
    SyntheticPublisher,
    dominant_frequency,
    rms,
    rtp_stats_summary,
    summarise_matches,
)
from tests.harness.sfu import SfuInstance

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, FPS, TONE_HZ, RATE = 640, 360, 15.0, 440.0, 48000
WAIT_S = 25.0
STEADY_WINDOW_S = 3.0


@pytest.mark.parametrize("simulcast", [False, True], ids=["single-layer", "simulcast"])
async def test_python_sdk_video_and_audio(sfu: SfuInstance, simulcast: bool) -> None:
    room = f"sdk-media-{uuid.uuid4().hex[:8]}"
    alice = SyntheticPublisher(
        "alice", width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=TONE_HZ, simulcast=simulcast
    )
    bob = CollectingSubscriber("bob", sample_rate=RATE)
    try:
        await bob.connect(sfu.url, sfu.token("bob", room), timeout_s=WAIT_S)
        await alice.connect(sfu.url, sfu.token("alice", room), timeout_s=WAIT_S)
        await bob.wait_for_event("participant_connected", participant="alice", timeout_s=WAIT_S)

        await alice.publish(timeout_s=WAIT_S)
        assert alice.video_publication is not None and alice.audio_publication is not None
        video_sid = alice.video_publication.sid
        audio_sid = alice.audio_publication.sid
        assert video_sid.startswith("TR_") and audio_sid.startswith("TR_")
        await bob.wait_for_event(
            "track_subscribed", participant="alice", track_sid=video_sid, timeout_s=WAIT_S
        )
        await bob.wait_for_event(
            "track_subscribed", participant="alice", track_sid=audio_sid, timeout_s=WAIT_S
        )

        # Video: full-size frames that are A's pattern, and the pattern moves.
        good = await bob.wait_matching_frames(
            "alice", 30, width=WIDTH, height=HEIGHT, timeout_s=WAIT_S
        )
        numbers = [m.frame_number for m in good]
        assert len(set(numbers)) >= 25, f"frozen video? frame numbers {numbers}"
        collector = bob.video_from("alice")
        assert collector is not None

        # Steady state over a fixed window: at least half of A's frame rate, 90 % of the
        # full-size frames match the pattern exactly where A drew it.
        window_start = time.monotonic()
        await asyncio.sleep(STEADY_WINDOW_S)
        window = [
            m
            for m in collector.recent(since=window_start)
            if (m.width, m.height) == (WIDTH, HEIGHT)
        ]
        print(f"video from alice, steady window: {summarise_matches(window)}")
        assert len(window) >= FPS * STEADY_WINDOW_S / 2, summarise_matches(window)
        ok_fraction = sum(m.ok for m in window) / len(window)
        assert ok_fraction >= 0.9, summarise_matches(window)
        in_window = [m.frame_number for m in window if m.frame_number is not None]
        assert len(set(in_window)) >= 0.8 * len(window), f"repeated frames: {in_window}"

        # Audio: the dominant frequency of the last second is A's sine, and it is not faint.
        samples = await bob.wait_audio_samples("alice", 2 * RATE, timeout_s=WAIT_S)
        last_second = samples[-RATE:]
        assert rms(last_second) > 1000.0, f"audio too quiet: rms {rms(last_second):.0f}"
        frequency = dominant_frequency(last_second, RATE)
        print(f"audio from alice: rms {rms(last_second):.0f}, dominant {frequency:.1f} Hz")
        assert abs(frequency - TONE_HZ) < 5.0, f"dominant frequency {frequency:.1f} Hz"

        # A unpublishes both tracks, then leaves: B sees each event.
        await alice.unpublish_video(timeout_s=WAIT_S)
        await bob.wait_for_event(
            "track_unpublished", participant="alice", track_sid=video_sid, timeout_s=WAIT_S
        )
        await alice.unpublish_audio(timeout_s=WAIT_S)
        await bob.wait_for_event(
            "track_unpublished", participant="alice", track_sid=audio_sid, timeout_s=WAIT_S
        )
        await alice.leave()
        await bob.wait_for_event("participant_disconnected", participant="alice", timeout_s=WAIT_S)
        assert "alice" not in bob.room.remote_participants
        sfu.assert_alive()
    finally:
        if alice.room.isconnected():
            print(f"---- alice's RTP streams ----\n{await rtp_stats_summary(alice.room)}")
        await alice.leave()
        await bob.leave()
        print(f"---- bob's room events ----\n{bob.event_log()}")
