"""End to end with livekit-client 2.21.0 (Element Call's version) in headless Debian Chromium.

Two pages join one room configured like Element Call (adaptive stream, dynacast, VP8 simulcast
q/h/f, fake camera 1280x720 and fake microphone); each must play the other's video with decoded
frames increasing and the other's audio with energy. The same call with livekit-client's
end-to-end encryption (one shared key) shows the SFU passes payloads through untouched: both
sides still decode, no EncryptionError, and subscribers are told the tracks are encrypted.
A mixed call checks that the Python SDK and the browser see each other's media.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest

from tests.harness.browser import (
    FAKE_MICROPHONE_HZ,
    HarnessPage,
    browser_session,
    local_outbound,
    remote_entries,
    remote_inbound,
)
from tests.harness.lkclient import (
    CollectingSubscriber,
    SyntheticPublisher,
    dominant_frequency,
    rms,
)
from tests.harness.sfu import SfuInstance

pytestmark = pytest.mark.slow

WAIT_S = 30.0
BAD_EVENTS = {"EncryptionError", "MediaDevicesError", "TrackSubscriptionFailed", "WindowError"}


def _room() -> str:
    return f"browser-{uuid.uuid4().hex[:8]}"


async def _assert_sending_simulcast(page: HarnessPage) -> None:
    """The camera is published as several VP8 layers (q/h/f) and at least two carry media."""

    def layered(stats: dict[str, Any]) -> bool:
        sending = {o.get("rid") for o in local_outbound(stats) if o.get("bytesSent", 0) > 0}
        return len(sending - {None}) >= 2

    stats = await page.wait_for_stats(
        layered, timeout_s=WAIT_S, what="camera sending at least two simulcast layers"
    )
    outbound = local_outbound(stats)
    assert all(o.get("codec") in (None, "video/VP8") for o in outbound), outbound


async def _assert_clean(page: HarnessPage) -> None:
    events = await page.events()
    bad = [e for e in events if e.get("type") in BAD_EVENTS]
    assert not bad, f"{page.name}: {bad}"
    disconnects = [e for e in events if e.get("type") in ("Disconnected", "Reconnecting")]
    assert not disconnects, f"{page.name}: {disconnects}"


async def _two_party_call(sfu: SfuInstance, *, e2ee_key: str | None) -> None:
    room = _room()
    async with browser_session(names=["alice", "bob"]) as session:
        alice, bob = session.pages
        joined = {}
        for page in (alice, bob):
            joined[page.name] = await page.join(
                sfu.url,
                sfu.token(page.name, room),
                simulcast=True,
                e2ee_key=e2ee_key,
                video_css=(640, 360),
            )
        for name, info in joined.items():
            kinds = sorted(p["kind"] for p in info["published"])
            assert kinds == ["audio", "video"], (name, info)
            assert info["sid"].startswith("PA_"), info
            video = next(p for p in info["published"] if p["kind"] == "video")
            assert video["simulcasted"] is True, (name, info)
            assert info["e2ee"] is (e2ee_key is not None), (name, info)

        for viewer, sender in ((bob, alice), (alice, bob)):
            video, audio = await viewer.wait_remote_media_flowing(sender.name, timeout_s=WAIT_S)
            print(f"{viewer.name} <- {sender.name}: video {video}\naudio {audio}")
            assert video["frameHeight"] in (180, 360, 720), video
            assert video["codec"] == "video/VP8", video
            assert audio["totalAudioEnergy"] > 0, audio
            stats = await viewer.stats()
            entries = remote_entries(stats, sender.name, "video")
            element = entries[0]["element"]
            assert element is not None and element["videoWidth"] > 0, entries
            assert element["totalVideoFrames"] > 0, entries
            if e2ee_key is not None:
                for entry in [*entries, *remote_entries(stats, sender.name, "audio")]:
                    assert entry["encrypted"] is True, entry  # TrackInfo.encryption reached us
                    assert entry["participantEncrypted"] is True, entry

        for page in (alice, bob):
            await _assert_sending_simulcast(page)
            await _assert_clean(page)
        sfu.assert_alive()

        # The adaptive-stream knobs later tests use: resize and hide by identity or track sid.
        assert await bob.resize("alice", 160, 90) == 1
        video_entry = remote_entries(await bob.stats(), "alice", "video")[0]
        assert (video_entry["element"]["cssWidth"], video_entry["element"]["cssHeight"]) == (
            160,
            90,
        )
        assert await bob.hide(video_entry["trackSid"]) == 1
        assert remote_entries(await bob.stats(), "alice", "video")[0]["element"]["hidden"] is True
        assert await bob.show("alice") == 1
        await bob.wait_remote_media_flowing("alice", timeout_s=WAIT_S)

        await alice.leave()
        await bob.wait_for_event("ParticipantDisconnected", identity="alice", timeout_s=WAIT_S)
        await bob.leave()
    sfu.assert_alive()


async def test_two_browsers_call(sfu: SfuInstance) -> None:
    await _two_party_call(sfu, e2ee_key=None)


async def test_two_browsers_call_e2ee_shared_key(sfu: SfuInstance) -> None:
    await _two_party_call(sfu, e2ee_key=f"shared-{uuid.uuid4().hex}")


async def test_forwarded_video_has_no_sequence_gaps(sfu: SfuInstance) -> None:
    """On loopback nothing is lost, so a subscriber's packetsLost counts gaps the SFU's
    sequence-number rewriting left (and NACKs it provoked for packets that never existed)."""
    room = _room()
    async with browser_session(names=["alice", "bob"]) as session:
        alice, bob = session.pages
        await alice.join(sfu.url, sfu.token("alice", room), video_css=(640, 360))
        await bob.join(sfu.url, sfu.token("bob", room), video=False, audio=False)
        await bob.wait_remote_media_flowing("alice", timeout_s=WAIT_S)
        await asyncio.sleep(5.0)
        stats = await bob.stats()
        for kind in ("video", "audio"):
            inbound = remote_inbound(stats, "alice", kind)
            assert inbound is not None, stats
            print(f"bob <- alice {kind}: {inbound}")
            received = inbound.get("packetsReceived", 0)
            lost = inbound.get("packetsLost", 0)
            assert received > 50, inbound
            assert lost <= 5 + 0.02 * received, f"{kind}: {lost} lost of {received}: {inbound}"
        await alice.leave()
        await bob.leave()
    sfu.assert_alive()


async def test_e2ee_wrong_key_decodes_nothing(sfu: SfuInstance) -> None:
    """Control for the shared-key test: with different keys the frames the SFU forwards cannot
    be decrypted, so decoding there really depended on end-to-end encrypted payloads."""
    room = _room()
    async with browser_session(names=["alice", "mallory"]) as session:
        alice, mallory = session.pages
        await alice.join(sfu.url, sfu.token("alice", room), e2ee_key="the right key")
        await mallory.join(sfu.url, sfu.token("mallory", room), e2ee_key="a wrong key", audio=False)

        def packets_arrive(stats: dict[str, Any]) -> bool:
            entries = remote_entries(stats, "alice", "video")
            inbound = entries[0]["inbound"] if entries else []
            return bool(inbound) and inbound[0].get("packetsReceived", 0) > 100

        stats = await mallory.wait_for_stats(
            packets_arrive, timeout_s=WAIT_S, what="alice's encrypted video packets arriving"
        )
        inbound = remote_entries(stats, "alice", "video")[0]["inbound"][0]
        assert inbound.get("framesDecoded", 0) == 0, inbound
        await mallory.wait_for_event("EncryptionError", identity="alice", timeout_s=WAIT_S)
        await alice.leave()
        await mallory.leave()
    sfu.assert_alive()


async def test_browser_and_python_sdk_see_each_other(sfu: SfuInstance) -> None:
    """Python SDK publisher -> browser decodes it; browser camera -> Python SDK gets frames."""
    room = _room()
    carol = SyntheticPublisher("carol", width=640, height=360, fps=15.0)
    dave = CollectingSubscriber("dave")
    try:
        await carol.connect(sfu.url, sfu.token("carol", room), timeout_s=WAIT_S)
        await carol.publish(timeout_s=WAIT_S)
        await dave.connect(sfu.url, sfu.token("dave", room), timeout_s=WAIT_S)
        async with browser_session(names=["erin"]) as session:
            erin = session.pages[0]
            await erin.join(sfu.url, sfu.token("erin", room), video_css=(640, 360))
            video, _audio = await erin.wait_remote_media_flowing("carol", timeout_s=WAIT_S)
            assert (video["frameWidth"], video["frameHeight"]) == (640, 360), video

            def from_erin() -> bool:
                c = dave.video_from("erin")
                return c is not None and c.frames >= 20

            await dave.wait_until(from_erin, timeout_s=WAIT_S, what="20 frames from erin")
            collector = dave.video_from("erin")
            assert collector is not None
            sizes = {(m.width, m.height) for m in collector.matches}
            assert sizes <= {(320, 180), (640, 360), (1280, 720)}, sizes
            # Live pictures, not a frozen or blank one: Chromium's fake camera animates, so
            # frames a second apart differ, and they are not black.
            before = collector.last_frames[-1].astype(np.int16)
            frames_before = collector.frames
            await dave.wait_until(
                lambda: collector.frames >= frames_before + 10, timeout_s=WAIT_S, what="10 more"
            )
            after = collector.last_frames[-1].astype(np.int16)
            assert float(after[..., :3].mean()) > 10.0, "erin's video is black"
            if before.shape == after.shape:
                assert float(np.abs(after - before)[..., :3].mean()) > 0.5, "erin's video froze"

            # Audio with energy, and Chromium's fake microphone's beep in it (400 Hz tone
            # bursts): the SFU forwarded the Opus payload untouched.
            samples = await dave.wait_audio_samples("erin", 3 * 48000, timeout_s=WAIT_S)
            level, peak = rms(samples), int(np.abs(samples.astype(np.int32)).max())
            frequency = dominant_frequency(samples, 48000)
            print(f"audio from erin: rms {level:.0f}, peak {peak}, dominant {frequency:.0f} Hz")
            assert peak > 1000 and level > 30, (level, peak)
            assert abs(frequency - FAKE_MICROPHONE_HZ) < 0.05 * FAKE_MICROPHONE_HZ, frequency
            await _assert_clean(erin)
            await erin.leave()
            await dave.wait_for_event(
                "participant_disconnected", participant="erin", timeout_s=WAIT_S
            )
        sfu.assert_alive()
    finally:
        await carol.leave()
        await dave.leave()
