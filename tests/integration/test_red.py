"""Audio RED (RFC 2198) end to end. livekit-client in Chromium publishes its microphone with
`red: true` (livekit-client's default outside Element Call) to one SFU process, or the LiveKit
Python SDK its tone with `red=True` to `rtc.workers: 2` (the subscribers spread over both
workers, the RED packets relayed between them); three subscribers hear it:

- a Chromium page that takes RED: it receives RED as the publisher sent it, each packet about
  twice the size of a plain one (the frame before it repeated);
- a Chromium page whose answers leave RED out (codec preferences without it): it receives the
  primary encoding alone as plain Opus, cut out by the SFU without touching it;
- the LiveKit Python SDK: the publisher's tone is in what it decodes.

Each gets audio with energy and next to no concealment on a clean link, and the SFU's metrics
count the one down track it sent as plain Opus.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.harness.browser import (
    FAKE_MICROPHONE_HZ,
    HarnessPage,
    browser_session,
    remote_inbound,
)
from tests.harness.lkclient import (
    CollectingSubscriber,
    SyntheticPublisher,
    dominant_frequency,
    rms,
)
from tests.harness.sfu import SfuInstance, metric, running_sfu

pytestmark = pytest.mark.slow

WAIT_S = 30.0
TONE_HZ = 440.0  # SyntheticPublisher's


async def _audio_from(page: HarnessPage, identity: str) -> dict[str, Any]:
    """The inbound audio from `identity` once it has energy and kept arriving for a while."""

    def heard(s: dict[str, Any]) -> bool:
        a = remote_inbound(s, identity, "audio")
        return (
            a is not None and a.get("totalAudioEnergy", 0) > 0 and a.get("packetsReceived", 0) > 150
        )

    stats = await page.wait_for_stats(heard, timeout_s=WAIT_S, what=f"3 s of audio from {identity}")
    audio = remote_inbound(stats, identity, "audio")
    assert audio is not None
    return audio


async def _hear(
    sfu: SfuInstance, room: str, publisher: str, bob: HarnessPage, carol: HarnessPage,
    dave: CollectingSubscriber, tone_hz: float,
) -> None:  # fmt: skip
    """bob takes RED, carol refuses it, dave is the Python SDK: each hears `publisher`."""
    taken, plain = await _audio_from(bob, publisher), await _audio_from(carol, publisher)
    print(f"bob (RED): {taken}\ncarol (plain Opus): {plain}")
    # getStats names the Opus decoder either way; RED shows in the size of what arrives: each
    # packet repeats the frame before it, so it is about twice as large
    per_packet = [a["bytesReceived"] / a["packetsReceived"] for a in (taken, plain)]
    print(f"bytes per packet: bob {per_packet[0]:.0f}, carol {per_packet[1]:.0f}")
    assert per_packet[0] > 1.4 * per_packet[1], per_packet
    for audio in (taken, plain):
        assert audio["packetsLost"] == 0, audio
        # a clean link: nothing to conceal beyond the start (libwebrtc's jitter buffer)
        assert audio["concealedSamples"] < 0.05 * audio["totalSamplesReceived"], audio

    samples = await dave.wait_audio_samples(publisher, 3 * 48000, timeout_s=WAIT_S)
    level, frequency = rms(samples), dominant_frequency(samples, 48000)
    peak = int(np.abs(samples.astype(np.int32)).max())
    print(f"dave (Python SDK): rms {level:.0f}, peak {peak}, dominant {frequency:.0f} Hz")
    assert peak > 1000 and level > 30, (level, peak)
    assert abs(frequency - tone_hz) < 0.05 * tone_hz, frequency

    async with httpx.AsyncClient() as http:  # with workers, their totals come once a second
        for _ in range(40):
            text = (await http.get(sfu.metrics_url)).text
            if metric(text, "sfu_red_primary_tracks_total") >= 1:
                break
            await asyncio.sleep(0.1)
    assert metric(text, "sfu_red_primary_tracks_total") == 1  # carol's alone
    assert metric(text, "sfu_malformed_red_total") == 0


async def test_red_from_chromium(sfu: SfuInstance) -> None:
    room = f"red-{uuid.uuid4().hex[:8]}"
    dave = CollectingSubscriber("dave")
    try:
        await dave.connect(sfu.url, sfu.token("dave", room), timeout_s=WAIT_S)
        async with browser_session(names=["alice", "bob", "carol"]) as session:
            alice, bob, carol = session.pages
            await alice.join(sfu.url, sfu.token("alice", room), video=False, red=True)
            await bob.join(sfu.url, sfu.token("bob", room), video=False, audio=False)
            await carol.join(
                sfu.url, sfu.token("carol", room), video=False, audio=False, refuse_red=True
            )
            await _hear(sfu, room, "alice", bob, carol, dave, FAKE_MICROPHONE_HZ)
            for page in (alice, bob, carol):
                await page.leave()
        sfu.assert_alive()
    finally:
        await dave.leave()


@pytest.fixture
async def sfu2(tmp_path: Path, sfu_keys: tuple[str, str]) -> AsyncIterator[SfuInstance]:
    """Two media workers; worker_spill_load 0 places by load alone, so the room's participants
    spread over both and the publisher's RED packets are relayed."""
    key, secret = sfu_keys
    rtc = {"workers": 2, "worker_spill_load": 0}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config={"rtc": rtc}
    ) as instance:
        yield instance


async def test_red_from_the_python_sdk_across_workers(sfu2: SfuInstance) -> None:
    sfu, room = sfu2, f"red-{uuid.uuid4().hex[:8]}"
    alice, dave = SyntheticPublisher("alice"), CollectingSubscriber("dave")
    try:
        await alice.connect(sfu.url, sfu.token("alice", room), timeout_s=WAIT_S)
        await alice.publish(video=False, red=True, timeout_s=WAIT_S)
        await dave.connect(sfu.url, sfu.token("dave", room), timeout_s=WAIT_S)
        async with browser_session(names=["bob", "carol"]) as session:
            bob, carol = session.pages
            await bob.join(sfu.url, sfu.token("bob", room), video=False, audio=False)
            await carol.join(
                sfu.url, sfu.token("carol", room), video=False, audio=False, refuse_red=True
            )
            await _hear(sfu, room, "alice", bob, carol, dave, TONE_HZ)
            async with httpx.AsyncClient() as http:  # RED crossed workers
                text = (await http.get(sfu.metrics_url)).text
            relayed = re.findall(r'^sfu_worker_relay_sent_total\{worker="\d"\} (\S+)$', text, re.M)
            assert sum(float(n) for n in relayed) > 0, text
            for page in (bob, carol):
                await page.leave()
        sfu.assert_alive()
    finally:
        await alice.leave()
        await dave.leave()
