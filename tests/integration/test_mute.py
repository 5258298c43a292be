"""Mute and unmute of a live published track, with real clients through the real SFU process.

What a mute must do (LiveKit's MuteTrackRequest, sent by the SDK's mute button): every other
participant is told (a participant update: the publication's `muted`), the SFU stops forwarding
the track, and on unmute it asks the publisher for a key frame so subscribers resume decoding at
once. A browser subscriber (livekit-client) additionally gets the stream paused while muted
(`StreamStateUpdate`, sent once the publisher's layers have gone quiet) and active again after.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from livekit import rtc

from tests.harness.browser import browser_session, remote_inbound
from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher
from tests.harness.sfu import SfuInstance

pytestmark = pytest.mark.slow

WAIT_S = 25.0


async def _stats(room: rtc.Room, side: str) -> list[Any]:
    stats = await asyncio.wait_for(room.get_rtc_stats(), 5.0)
    return list(stats.publisher_stats if side == "pub" else stats.subscriber_stats)


async def _outbound_video(room: rtc.Room) -> tuple[int, int]:
    """(packets sent, PLIs received) over all outbound video streams of a publisher."""
    packets = plis = 0
    for entry in await _stats(room, "pub"):
        if (
            entry.WhichOneof("stats") == "outbound_rtp"
            and entry.outbound_rtp.stream.kind == "video"
        ):
            packets += entry.outbound_rtp.sent.packets_sent
            plis += entry.outbound_rtp.outbound.pli_count
    return packets, plis


async def _inbound_packets(room: rtc.Room, kind: str) -> int:
    return sum(
        entry.inbound_rtp.received.packets_received
        for entry in await _stats(room, "sub")
        if entry.WhichOneof("stats") == "inbound_rtp" and entry.inbound_rtp.stream.kind == kind
    )


async def _sent(publisher: SyntheticPublisher) -> int:
    return (await _outbound_video(publisher.room))[0]


async def _wait_growth(read: Callable[[], Awaitable[int]], what: str, minimum: int = 20) -> None:
    """Wait (bounded) until the counter `read()` grows by `minimum`."""
    start = await read()
    try:
        async with asyncio.timeout(WAIT_S):
            while await read() < start + minimum:
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"{what}: did not grow by {minimum} in {WAIT_S} s") from None


async def test_mute_is_announced_stops_forwarding_and_unmute_resumes_with_a_key_frame(
    sfu: SfuInstance,
) -> None:
    room = f"mute-{uuid.uuid4().hex[:8]}"
    async with (
        SyntheticPublisher("pat", fps=15.0) as pat,
        CollectingSubscriber("sam", keep_frames=False) as sam,
    ):
        await sam.connect(sfu.url, sfu.token("sam", room), timeout_s=WAIT_S)
        await pat.connect(sfu.url, sfu.token("pat", room), timeout_s=WAIT_S)
        await pat.publish(timeout_s=WAIT_S)
        assert pat.video_publication is not None and pat.audio_publication is not None
        video_sid, audio_sid = pat.video_publication.sid, pat.audio_publication.sid
        await sam.wait_matching_frames("pat", 10, timeout_s=WAIT_S)

        # mute: the other participant is told, and the SFU stops forwarding the video
        pat.set_muted("video", True)
        await sam.wait_for_event("track_muted", participant="pat", track_sid=video_sid)
        remote = sam.room.remote_participants["pat"].track_publications[video_sid]
        assert remote.muted
        await asyncio.sleep(1.0)  # packets already in flight
        during = await _inbound_packets(sam.room, "video")
        # The publisher keeps sending (libwebrtc sends black frames for a disabled track), so a
        # subscriber receiving nothing means the SFU dropped them, not that nothing came.
        await _wait_growth(lambda: _sent(pat), "pat's video packets sent while muted")
        assert await _inbound_packets(sam.room, "video") - during <= 5

        # audio mute is announced too; the audio keeps its own state
        pat.set_muted("audio", True)
        await sam.wait_for_event("track_muted", participant="pat", track_sid=audio_sid)
        assert not sam.find_events("track_unmuted")

        # unmute: announced, the publisher is asked for a key frame (by the SFU on unmute, or
        # relayed for the subscriber's decoder: tests/sfu/room/test_mute.py tells them apart),
        # and the subscriber decodes the pattern again
        _sent_before, plis_before = await _outbound_video(pat.room)
        frames_before = pat.frames_sent
        unmuted_at = time.monotonic()
        pat.set_muted("video", False)
        await sam.wait_for_event("track_unmuted", participant="pat", track_sid=video_sid)
        assert not remote.muted
        async with asyncio.timeout(WAIT_S):
            while (await _outbound_video(pat.room))[1] <= plis_before:
                await asyncio.sleep(0.2)

        def resumed() -> bool:
            collector = sam.video_from("pat")
            return collector is not None and any(
                m.ok and m.frame_number is not None and m.frame_number >= frames_before % 4096
                for m in collector.recent(since=unmuted_at)
            )

        await sam.wait_until(resumed, timeout_s=WAIT_S, what="pat's pattern after the unmute")
        pat.set_muted("audio", False)
        await sam.wait_for_event("track_unmuted", participant="pat", track_sid=audio_sid)
        pat.check_tasks()


async def test_a_browser_sees_the_mute_and_the_stream_paused_then_active(
    sfu: SfuInstance,
) -> None:
    room = f"mute-browser-{uuid.uuid4().hex[:8]}"
    async with SyntheticPublisher("pat", fps=15.0) as pat:
        await pat.connect(sfu.url, sfu.token("pat", room), timeout_s=WAIT_S)
        await pat.publish(timeout_s=WAIT_S)
        assert pat.video_publication is not None
        video_sid = pat.video_publication.sid
        async with browser_session(names=["bea"]) as session:
            bea = session.pages[0]
            await bea.join(
                sfu.url, sfu.token("bea", room), video=False, audio=False, video_css=(640, 360)
            )
            await bea.wait_remote_media_flowing("pat", timeout_s=WAIT_S)

            pat.set_muted("video", True)
            await bea.wait_for_event(
                "TrackMuted", identity="pat", trackSid=video_sid, timeout_s=WAIT_S
            )
            await bea.wait_for_event(
                "StreamStateUpdate", trackSid=video_sid, state="paused", timeout_s=WAIT_S
            )
            stats = await bea.stats()
            decoded = (remote_inbound(stats, "pat", "video") or {}).get("framesDecoded", 0)
            paused_at = len(await bea.events())

            pat.set_muted("video", False)
            await bea.wait_for_event(
                "TrackUnmuted", identity="pat", trackSid=video_sid, timeout_s=WAIT_S
            )

            def active_again(events: list[dict[str, object]]) -> bool:
                return any(
                    e.get("type") == "StreamStateUpdate"
                    and e.get("trackSid") == video_sid
                    and e.get("state") == "active"
                    for e in events[paused_at:]
                )

            async with asyncio.timeout(WAIT_S):
                while not active_again(await bea.events()):
                    await asyncio.sleep(0.25)
            await bea.wait_for_stats(
                lambda s: (
                    (remote_inbound(s, "pat", "video") or {}).get("framesDecoded", 0) > decoded + 10
                ),
                timeout_s=WAIT_S,
                what="pat's video decoding again after the unmute",
            )
        sfu.assert_alive()
