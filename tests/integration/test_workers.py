"""`rtc.workers: 2`: one room across two media worker processes, with the LiveKit Python SDK.

Alice publishes a synthetic VP8 video and a 440 Hz sine. With `rtc.worker_spill_load: 0`
placement goes by measured load alone (a small room is not kept together), so subscribers join
until both workers hold one (at most `MAX_SUBSCRIBERS`) and some copies are relayed from Alice's
worker and some are local. With the default, two small rooms stay on one worker each. Every subscriber must decode
Alice's pattern and hear her tone; the per-worker metrics show the relay at work.

Across workers, a subscriber's NACK is answered from its own worker's history, and its PLI
reaches the publisher from the publisher's worker. A worker killed with SIGKILL is started
again; the participants it held get LeaveRequest RECONNECT and rejoin, the others keep their
call. Killing the control process takes its workers with it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from livekit.protocol import models, rtc

from loadtest.hostile import connected_subscriber
from sfu.media.rtp import rtcp
from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher, dominant_frequency
from tests.harness.rawsignal import RawSignal
from tests.harness.sfu import SfuInstance, free_udp_port_pair, running_sfu

T = TypeVar("T")

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, FPS, TONE_HZ, RATE = 640, 360, 15.0, 440.0, 48000
WAIT_S = 30.0
MAX_SUBSCRIBERS = 6


@pytest.fixture
async def sfu2(
    request: pytest.FixtureRequest, tmp_path: Path, sfu_keys: tuple[str, str]
) -> AsyncIterator[SfuInstance]:
    """An SFU with two media workers; log errors as the `sfu` fixture checks them."""
    key, secret = sfu_keys
    expected = [p for m in request.node.iter_markers("expect_sfu_log_errors") for p in m.args]
    async with running_sfu(
        tmp_path / "sfu",
        api_key=key,
        api_secret=secret,
        # by load alone: a room's participants spread, so these tests have one room across workers
        extra_config={"rtc": {"workers": 2, "worker_spill_load": 0}},
        expect_log_errors=expected,
    ) as instance:
        yield instance


async def worker_metrics(sfu: SfuInstance) -> dict[tuple[str, str], float]:
    """(metric, worker) -> value of every sfu_worker_* series."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(sfu.metrics_url, timeout=5)).text
    values = {}
    for match in re.finditer(r'^(sfu_worker_\w+)\{worker="(\d+)"(.*)\} (\S+)$', text, re.M):
        values[(match[1] + match[3], match[2])] = float(match[4])
    return values


async def assert_workers_empty(sfu: SfuInstance) -> None:
    """Once everybody left, no worker holds anything (peers, parts, receivers, down tracks)."""

    async def empty() -> bool:
        metrics = await worker_metrics(sfu)
        held = {k: v for k, v in metrics.items() if k[0].startswith("sfu_worker_objects") and v}
        return not held and all(metrics[("sfu_worker_participants", w)] == 0 for w in ("0", "1"))

    await until(empty, "workers empty after everyone left", timeout_s=10.0)


def worker_pids(sfu: SfuInstance) -> dict[str, int]:
    """Worker index -> pid of the SFU's worker processes (its children running sfu.media.worker)."""
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == sfu.pid and "sfu.media.worker" in argv:
            pids[argv[argv.index("--index") + 1]] = int(entry)
    return pids


async def placed_apart(
    sfu: SfuInstance, join: Callable[[int], Awaitable[T]], home: str, limit: int = 6
) -> tuple[list[T], T]:
    """Join clients (``join(n)``) until one lands on the worker other than ``home``; all of
    them, and that one."""
    other = "1" if home == "0" else "0"
    joined: list[T] = []
    for n in range(limit):
        before = (await worker_metrics(sfu))[("sfu_worker_participants", other)]
        joined.append(await join(n))
        if (await worker_metrics(sfu))[("sfu_worker_participants", other)] > before:
            return joined, joined[-1]
    pytest.fail(f"{limit} clients joined, none on worker {other}")


async def home_worker(sfu: SfuInstance) -> str:
    """The worker of the only participant so far."""
    metrics = await worker_metrics(sfu)
    return "0" if metrics[("sfu_worker_participants", "0")] == 1 else "1"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.2)


async def publishing_alice(
    sfu: SfuInstance, room: str, alice: SyntheticPublisher
) -> tuple[str, str]:
    """Alice joins first and publishes video and audio; (her worker, the other worker)."""
    await alice.connect(sfu.url, sfu.token("alice", room), timeout_s=WAIT_S)
    home = await home_worker(sfu)
    await alice.publish(timeout_s=WAIT_S)
    return home, "1" if home == "0" else "0"


def sdk_joiner(
    sfu: SfuInstance, room: str, subscribers: list[CollectingSubscriber]
) -> Callable[[int], Awaitable[CollectingSubscriber]]:
    """``join(n)``: SDK subscriber ``viewer{n}`` joins the room (kept in ``subscribers``)."""

    async def join(n: int) -> CollectingSubscriber:
        subscriber = CollectingSubscriber(f"viewer{n}", sample_rate=RATE)
        subscribers.append(subscriber)
        token = sfu.token(subscriber.identity, room)
        await subscriber.connect(sfu.url, token, timeout_s=WAIT_S)
        return subscriber

    return join


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
        await alice.leave()
        for subscriber in subscribers:
            await subscriber.leave()
        await assert_workers_empty(sfu2)
        sfu2.assert_alive()
    finally:
        await alice.leave()
        for subscriber in subscribers:
            await subscriber.leave()


async def test_small_rooms_stay_on_one_worker_each(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> None:
    """Default placement: the second room goes to the idle worker, and each room's later
    participants join their room's worker, so nothing is relayed and both workers forward."""
    key, secret = sfu_keys
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config={"rtc": {"workers": 2}}
    ) as sfu:
        publishers: list[SyntheticPublisher] = []
        subscribers: list[CollectingSubscriber] = []
        homes: dict[str, str] = {}
        try:
            for name in ("alice", "bob"):
                room = f"small-{name}-{uuid.uuid4().hex[:8]}"
                publisher = SyntheticPublisher(name, width=WIDTH, height=HEIGHT, fps=FPS,
                                               tone_hz=TONE_HZ)  # fmt: skip
                publishers.append(publisher)
                before = await worker_metrics(sfu)
                await publisher.connect(sfu.url, sfu.token(name, room), timeout_s=WAIT_S)
                after = await worker_metrics(sfu)
                homes[name] = next(
                    w for w in ("0", "1")
                    if after[("sfu_worker_participants", w)]
                    > before[("sfu_worker_participants", w)]
                )  # fmt: skip
                await publisher.publish(timeout_s=WAIT_S)
                join = sdk_joiner(sfu, room, subscribers)
                for n in range(2):
                    await join(len(subscribers))
                    metrics = await worker_metrics(sfu)
                    held = metrics[("sfu_worker_participants", homes[name])]
                    assert held == 2 + n, (name, homes, metrics)  # the room's worker only
                await expect_media(subscribers[-1], name)
            assert homes["alice"] != homes["bob"], homes
            metrics = await worker_metrics(sfu)
            for w in ("0", "1"):
                assert metrics[("sfu_worker_relay_sent_total", w)] == 0, metrics
                assert metrics[("sfu_worker_packets_forwarded_total", w)] > 0, metrics
        finally:
            for publisher in publishers:
                await publisher.leave()
            for subscriber in subscribers:
                await subscriber.leave()


async def test_nack_and_pli_across_workers(sfu2: SfuInstance) -> None:
    """A subscriber on the other worker NACKs a packet (its worker resends it from its own
    history) and sends PLIs (the publisher's worker sends them on to the publisher)."""
    room = f"workers-fb-{uuid.uuid4().hex[:8]}"
    alice = SyntheticPublisher("alice", width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=TONE_HZ)
    viewers = []
    try:
        home, other = await publishing_alice(sfu2, room, alice)

        async def join(n: int) -> object:
            identity = f"raw{n}"
            return await connected_subscriber(sfu2.url, sfu2.token(identity, room), identity)

        viewers, viewer = await placed_apart(sfu2, join, home)
        assert hasattr(viewer, "streams") and hasattr(viewer, "sub_transport")

        async def two_streams() -> bool:
            return len(viewer.streams) >= 2 and all(
                s.received > 50 for s in viewer.streams.values()
            )

        await until(two_streams, "audio and video to the viewer on the other worker")
        await asyncio.sleep(1.5)  # past the key-frame requests of the subscription's start
        before = await worker_metrics(sfu2)
        for ssrc, stream in list(viewer.streams.items()):
            lost = [(stream.highest - 10 - i) & 0xFFFF for i in range(3)]
            viewer.sub_transport.send_rtcp(bytes(rtcp.Nack.from_sequence_numbers(1, ssrc, lost)))
            viewer.sub_transport.send_rtcp(bytes(rtcp.Pli(sender_ssrc=1, media_ssrc=ssrc)))

        def grew(now: dict[tuple[str, str], float], name: str, worker: str) -> bool:
            return now[(name, worker)] > before[(name, worker)]

        async def answered() -> bool:
            now = await worker_metrics(sfu2)
            return (
                grew(now, "sfu_worker_nack_in_total", other)
                and grew(now, "sfu_worker_retransmits_total", other)
                and grew(now, "sfu_worker_pli_in_total", other)
                and grew(now, "sfu_worker_pli_out_total", home)
            )

        await until(answered, "NACK resent on the viewer's worker, PLI sent on by the publisher's")
        after = await worker_metrics(sfu2)
        assert (
            after[("sfu_worker_retransmits_total", home)]
            == before[("sfu_worker_retransmits_total", home)]
        ), "the publisher's worker resent a packet for the other worker's subscriber"
    finally:
        for v in viewers:
            await v.close()  # type: ignore[attr-defined]
        await alice.leave()


@pytest.mark.expect_sfu_log_errors(r"media worker \d died")
async def test_worker_killed(sfu2: SfuInstance) -> None:
    """SIGKILL of the worker without the publisher: a participant there gets LeaveRequest
    RECONNECT, an SDK subscriber there rejoins and sees video again; a subscriber on the
    publisher's worker never stops; the worker runs again."""
    room = f"workers-kill-{uuid.uuid4().hex[:8]}"
    alice = SyntheticPublisher("alice", width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=TONE_HZ)
    subscribers: list[CollectingSubscriber] = []
    raws: list[RawSignal] = []
    try:
        home, other = await publishing_alice(sfu2, room, alice)
        join_sdk = sdk_joiner(sfu2, room, subscribers)

        async def join_raw(n: int) -> RawSignal:
            client = await RawSignal.connect(sfu2.url, sfu2.token(f"raw{n}", room))
            raws.append(client)
            await client.next("join")
            return client

        _, moved = await placed_apart(sfu2, join_sdk, home)
        _, raw = await placed_apart(sfu2, join_raw, home)
        stays = next((s for s in subscribers if s is not moved), None)
        if stays is None:  # the first one landed apart: one more, on the publisher's worker
            stays = await join_sdk(len(subscribers))
        for subscriber in subscribers:
            await expect_media(subscriber, "alice")

        pids = worker_pids(sfu2)
        killed_at = time.monotonic()
        os.kill(pids[other], signal.SIGKILL)
        leave = (await raw.next("leave", timeout_s=WAIT_S)).response.leave
        assert leave.action == rtc.LeaveRequest.Action.RECONNECT, leave
        assert leave.reason == models.DisconnectReason.SERVER_SHUTDOWN, leave

        async def restarted() -> bool:
            metrics = await worker_metrics(sfu2)
            return (
                metrics[("sfu_worker_up", other)] == 1
                and metrics[("sfu_worker_restarts_total", other)] == 1
                and worker_pids(sfu2).get(other, pids[other]) != pids[other]
            )

        await until(restarted, f"worker {other} running again")
        # the subscriber on the publisher's worker kept its video through the kill
        collector = stays.video_from("alice")
        assert collector is not None
        await asyncio.sleep(2.0)
        since_kill = [m for m in collector.recent(since=killed_at) if m.ok]
        assert len(since_kill) >= FPS, f"{stays.identity}: {len(since_kill)} frames since the kill"

        async def moved_sees_video_again() -> bool:
            video = moved.video_from("alice")
            return (
                video is not None and len([m for m in video.recent(since=killed_at) if m.ok]) >= 5
            )

        await until(moved_sees_video_again, f"{moved.identity} rejoined with video")
        for client in raws:
            await client.close()
        await alice.leave()
        for subscriber in subscribers:
            await subscriber.leave()
        await assert_workers_empty(sfu2)
        sfu2.assert_alive()
    finally:
        for client in raws:
            await client.close()
        await alice.leave()
        for subscriber in subscribers:
            await subscriber.leave()


async def test_control_process_death_takes_the_workers(tmp_path: Path) -> None:
    async with running_sfu(
        tmp_path / "sfu", extra_config={"rtc": {"workers": 2}}, expect_exit=True
    ) as sfu:
        pids = worker_pids(sfu)
        assert sorted(pids) == ["0", "1"], pids
        os.kill(sfu.pid, signal.SIGKILL)
        await asyncio.wait_for(sfu.process.wait(), 10)

        def alive(pid: int) -> bool:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids.values()):
            assert time.monotonic() < deadline, f"orphaned workers: {pids}"
            await asyncio.sleep(0.1)


async def test_simulcast_layers_across_workers(sfu2: SfuInstance) -> None:
    """The SDK simulcast test (each quality by UpdateTrackSettings, within 2 s, no flapping)
    with the subscriber on one worker and the publisher on the other: the subscriber joins
    first (worker 0), the publisher is placed on the emptier worker 1."""
    from tests.integration.test_simulcast_sdk import (
        test_python_sdk_subscriber_requests_each_quality as each_quality,
    )

    await each_quality(sfu2)
    await assert_relayed(sfu2)
    await assert_workers_empty(sfu2)


async def test_one_udp_port_per_worker(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    """With rtc.udp_port P, worker i holds UDP port P + i and no other; the control process
    holds none; a call across the two workers flows."""
    from tests.integration.test_udp_port import udp_ports_of

    key, secret = sfu_keys
    port = free_udp_port_pair()
    async with running_sfu(
        tmp_path / "sfu",
        api_key=key,
        api_secret=secret,
        extra_config={"rtc": {"workers": 2, "udp_port": port, "worker_spill_load": 0}},
    ) as sfu:
        room = f"workers-port-{uuid.uuid4().hex[:8]}"
        alice = SyntheticPublisher("alice", width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=TONE_HZ)
        subscribers: list[CollectingSubscriber] = []
        try:
            home, _ = await publishing_alice(sfu, room, alice)
            join = sdk_joiner(sfu, room, subscribers)
            _, apart = await placed_apart(sfu, join, home)
            await expect_media(apart, "alice")
            pids = worker_pids(sfu)
            assert udp_ports_of(sfu.pid) == set()
            assert udp_ports_of(pids["0"]) == {port}
            assert udp_ports_of(pids["1"]) == {port + 1}
        finally:
            await alice.leave()
            for subscriber in subscribers:
                await subscriber.leave()


async def assert_relayed(sfu: SfuInstance) -> None:
    metrics = await worker_metrics(sfu)
    relayed = {w: metrics[("sfu_worker_relay_received_total", w)] for w in ("0", "1")}
    assert max(relayed.values()) > 0, f"everybody on one worker: {metrics}"


async def test_browser_adaptive_stream_and_dynacast_across_workers(sfu2: SfuInstance) -> None:
    """livekit-client in Chromium: the adaptive-stream (tile size) and dynacast tests of
    test_simulcast_browser.py, with their participants spread over two workers."""
    from tests.integration.test_simulcast_browser import (
        test_adaptive_stream_follows_tile_size as adaptive_stream,
    )
    from tests.integration.test_simulcast_browser import (
        test_dynacast_pauses_unwatched_layers as dynacast,
    )

    await adaptive_stream(sfu2)
    await assert_relayed(sfu2)
    await assert_workers_empty(sfu2)
    await dynacast(sfu2)
    await assert_workers_empty(sfu2)
