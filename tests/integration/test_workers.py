"""`rtc.workers: 2`: one room across two media worker processes, with the LiveKit Python SDK.

Alice publishes a synthetic VP8 video and a 440 Hz sine. Placement (least measured load) puts
her on one worker; subscribers join until both workers hold one (at most `MAX_SUBSCRIBERS`), so
some copies are relayed from Alice's worker and some are local. Every subscriber must decode
Alice's pattern and hear her tone; the per-worker metrics show the relay at work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher, dominant_frequency
from tests.harness.sfu import SfuInstance, running_sfu

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, FPS, TONE_HZ, RATE = 640, 360, 15.0, 440.0, 48000
WAIT_S = 30.0
MAX_SUBSCRIBERS = 6


@pytest.fixture
async def sfu2(tmp_path: Path, sfu_keys: tuple[str, str]) -> AsyncIterator[SfuInstance]:
    key, secret = sfu_keys
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config={"rtc": {"workers": 2}}
    ) as instance:
        yield instance


async def worker_metrics(sfu: SfuInstance) -> dict[tuple[str, str], float]:
    """(metric, worker) -> value of every sfu_worker_* series."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(sfu.metrics_url, timeout=5)).text
    values = {}
    for match in re.finditer(r'^(sfu_worker_\w+)\{worker="(\d+)"\} (\S+)$', text, re.M):
        values[(match[1], match[2])] = float(match[3])
    return values


async def expect_media(subscriber: CollectingSubscriber, publisher: str) -> None:
    good = await subscriber.wait_matching_frames(
        publisher, 20, width=WIDTH, height=HEIGHT, timeout_s=WAIT_S
    )
    numbers = [m.frame_number for m in good]
    assert len(set(numbers)) >= 15, f"{subscriber.identity}: frozen video? {numbers}"
    samples = await subscriber.wait_audio_samples(publisher, 2 * RATE, timeout_s=WAIT_S)
    frequency = dominant_frequency(samples[-RATE:], RATE)
    assert abs(frequency - TONE_HZ) < 5.0, f"{subscriber.identity}: {frequency:.1f} Hz"


async def test_one_publisher_subscribers_on_both_workers(sfu2: SfuInstance) -> None:
    room = f"workers-{uuid.uuid4().hex[:8]}"
    alice = SyntheticPublisher("alice", width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=TONE_HZ)
    subscribers: list[CollectingSubscriber] = []
    try:
        await alice.connect(sfu2.url, sfu2.token("alice", room), timeout_s=WAIT_S)
        metrics = await worker_metrics(sfu2)
        home = "0" if metrics[("sfu_worker_participants", "0")] == 1 else "1"
        other = "1" if home == "0" else "0"
        assert metrics[("sfu_worker_participants", home)] == 1, metrics
        for n in range(MAX_SUBSCRIBERS):
            subscriber = CollectingSubscriber(f"viewer{n}", sample_rate=RATE)
            subscribers.append(subscriber)
            token = sfu2.token(subscriber.identity, room)
            await subscriber.connect(sfu2.url, token, timeout_s=WAIT_S)
            metrics = await worker_metrics(sfu2)
            placed = {w: metrics[("sfu_worker_participants", w)] for w in (home, other)}
            if placed[home] >= 2 and placed[other] >= 1:
                break
        else:
            pytest.fail(f"{MAX_SUBSCRIBERS} subscribers, not on both workers: {metrics}")
        await alice.publish(timeout_s=WAIT_S)
        for subscriber in subscribers:
            await expect_media(subscriber, "alice")
        metrics = await worker_metrics(sfu2)
        assert metrics[("sfu_worker_relay_sent_total", home)] > 0, metrics
        assert metrics[("sfu_worker_relay_received_total", other)] > 0, metrics
        assert metrics[("sfu_worker_packets_forwarded_total", other)] > 0, metrics
        sfu2.assert_alive()
    finally:
        await alice.leave()
        for subscriber in subscribers:
            await subscriber.leave()
