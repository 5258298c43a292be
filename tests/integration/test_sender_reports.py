"""Sender reports reach subscribers (lip sync), read from a real subscriber's WebRTC statistics.

A subscriber synchronises a publisher's audio and video only through the RTCP sender reports the
SFU sends on each forwarded stream (RFC 3550 §6.4.1: an NTP wall-clock time and the RTP
timestamp it corresponds to). The LiveKit Python SDK's libwebrtc turns each received report into
its `remote-outbound-rtp` statistics; this test requires them for both of a publisher's streams,
keeps seeing new ones (the SFU's once-a-second RTCP loop is alive), and checks that their NTP
times are wall-clock times (the SFU translates the publisher's reports, it does not invent a
clock): the publisher runs on this machine, so they are within seconds of our own clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher, rtp_stats_summary
from tests.harness.sfu import SfuInstance

pytestmark = pytest.mark.slow

WAIT_S = 25.0
CLOCK_SKEW_S = 5.0


async def _reports(subscriber: CollectingSubscriber) -> dict[str, tuple[int, float, int]]:
    """Per inbound stream kind: (reports received, NTP time of the last one in s, packets)."""
    stats = await asyncio.wait_for(subscriber.room.get_rtc_stats(), 5.0)
    entries: list[Any] = list(stats.subscriber_stats)
    inbound = {
        e.inbound_rtp.stream.ssrc: e.inbound_rtp
        for e in entries
        if e.WhichOneof("stats") == "inbound_rtp"
    }
    found: dict[str, tuple[int, float, int]] = {}
    for e in entries:
        if e.WhichOneof("stats") != "remote_outbound_rtp":
            continue
        r = e.remote_outbound_rtp
        if r.stream.ssrc in inbound:
            found[r.stream.kind] = (
                r.remote_outbound.reports_sent,
                r.remote_outbound.remote_timestamp / 1000.0,  # ms since the Unix epoch
                inbound[r.stream.ssrc].received.packets_received,
            )
    return found


async def test_subscribers_get_sender_reports_with_wall_clock_times(sfu: SfuInstance) -> None:
    room = f"sr-{uuid.uuid4().hex[:8]}"
    async with (
        SyntheticPublisher("pia") as pia,
        CollectingSubscriber("sid", keep_frames=False) as sub,
    ):
        await sub.connect(sfu.url, sfu.token("sid", room), timeout_s=WAIT_S)
        await pia.connect(sfu.url, sfu.token("pia", room), timeout_s=WAIT_S)
        await pia.publish(timeout_s=WAIT_S)
        await sub.wait_matching_frames("pia", 5, timeout_s=WAIT_S)
        await sub.wait_audio_samples("pia", 4800, timeout_s=WAIT_S)

        async def have(count: int) -> dict[str, tuple[int, float, int]]:
            deadline = time.monotonic() + WAIT_S
            while True:
                found = await _reports(sub)
                if {"audio", "video"} <= set(found) and all(
                    n >= count for n, _, _ in found.values()
                ):
                    return found
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no {count} sender reports per stream in {WAIT_S} s: {found}\n"
                        f"{await rtp_stats_summary(sub.room)}"
                    )
                await asyncio.sleep(0.5)

        first = await have(2)
        later = await have(max(n for n, _, _ in first.values()) + 2)
        now = time.time()
        for kind in ("audio", "video"):
            reports, ntp, packets = later[kind]
            assert reports > first[kind][0], (kind, first, later)
            assert packets > 0, kind
            assert ntp > first[kind][1], (kind, "the NTP time of newer reports moves on")
            # the last report is at most a couple of RTCP intervals old, on a wall clock
            assert abs(now - ntp) < CLOCK_SKEW_S, (kind, now, ntp)
