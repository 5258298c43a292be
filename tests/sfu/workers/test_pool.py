"""Media worker processes, for real: start, placement, a request to a peer on a worker, a
SIGKILL survived (restart, the participants there told), and a close that leaves nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from sfu.media.sdp import SdpError
from sfu.media.transport import TransportConfig
from sfu.metrics import COUNTERS
from sfu.workers.pool import WorkerPool


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    workers = WorkerPool(2, TransportConfig(), "auto")
    try:
        await asyncio.wait_for(workers.start(), 30)
        yield workers
    finally:
        await workers.close()
        for link in workers.links:
            assert link.process is not None and link.process.returncode is not None


def ignore(*_args: object) -> None:
    pass


async def test_placement_spreads_a_burst_of_joins(pool: WorkerPool) -> None:
    assert all(link.alive for link in pool.links)
    first, second = pool.place(), pool.place()
    assert {first.link.index, second.link.index} == {0, 1}
    first.close()
    second.close()
    assert all(not link.media for link in pool.links)


async def test_a_peer_on_a_worker_answers_requests(pool: WorkerPool) -> None:
    media = pool.place()
    states: list[str] = []
    subscriber = media("subscriber", TransportConfig(), on_rtp=ignore, on_rtcp=ignore,
                       on_data=ignore, on_state=states.append)  # fmt: skip
    key = subscriber.add_track("audio", "audio/opus", 1234, "PA_x|TR_y", "TR_y")
    assert subscriber.track_codec(key).name == "opus"
    offer = await subscriber.create_offer()
    assert "m=audio" in offer and "a=ssrc:1234" in offer and "m=application" in offer
    publisher = media("publisher", TransportConfig(), on_rtp=ignore, on_rtcp=ignore,
                      on_data=ignore, on_state=ignore)  # fmt: skip
    with pytest.raises(SdpError):
        await publisher.handle_offer("v=0\r\nnot an offer\r\n")
    await subscriber.close()
    await publisher.close()
    assert subscriber.state == publisher.state == "closed"
    media.close()


@pytest.mark.expect_log_errors(r"media worker \d died \(exit -9\): restarting it")
async def test_a_killed_worker_is_restarted_and_its_participants_told(pool: WorkerPool) -> None:
    media = pool.place()
    link = media.link
    lost: list[int] = []
    media.on_lost = lambda: lost.append(link.index)
    peer = media("subscriber", TransportConfig(), on_rtp=ignore, on_rtcp=ignore,
                 on_data=ignore, on_state=ignore)  # fmt: skip
    assert link.process is not None
    old_pid, generation = link.process.pid, link.generation
    os.kill(old_pid, signal.SIGKILL)
    for _ in range(200):
        if link.alive and link.generation > generation:
            break
        await asyncio.sleep(0.05)
    assert lost == [link.index]
    assert link.alive and link.generation == generation + 1 and link.restarts == 1
    assert link.process is not None and link.process.pid != old_pid
    assert not peer.alive and peer.state == "failed"
    with pytest.raises(RuntimeError):
        await peer.create_offer()
    await peer.close()  # nothing to ask a dead worker: returns at once
    again = pool.place()
    fresh = again("subscriber", TransportConfig(), on_rtp=ignore, on_rtcp=ignore,
                  on_data=ignore, on_state=ignore)  # fmt: skip
    assert "m=application" in await fresh.create_offer()
    await fresh.close()
    again.close()


async def test_node_counters_and_cpu_add_up_the_workers(pool: WorkerPool) -> None:
    for _ in range(100):  # each worker reports once a second
        if all(link.stats for link in pool.links):
            break
        await asyncio.sleep(0.05)
    assert all("cpu_seconds" in link.stats and "objects" in link.stats for link in pool.links)
    pool.links[0].counters = {"packets_out": 5, "limits_exceeded": {"x": 1}}
    pool.links[1].counters = {"packets_out": 7, "send_batch_sizes": [1, 0, 0]}
    pool.links[1].retired.packets_out = 100  # a process before a restart
    totals = pool.totals()
    assert totals.packets_out == COUNTERS.packets_out + 112
    assert totals.limits_exceeded.get("x") == COUNTERS.limits_exceeded.get("x", 0) + 1
    assert totals.send_batch_sizes[0] == COUNTERS.send_batch_sizes[0] + 1
    COUNTERS.limit_exceeded("test_counter")  # this process's own: at once, not a second later
    assert pool.totals().limits_exceeded["test_counter"] >= 1
    workers_cpu = sum(float(link.stats["cpu_seconds"]) for link in pool.links)
    assert pool.cpu_seconds_per_worker() >= workers_cpu / 2


def test_no_live_worker_refuses_joins() -> None:
    """Admission answers 503 while no media worker runs (before start, or all restarting)."""
    from sfu.app import AdmissionError
    from tests.sfu.test_admission import build, rtc_request

    sfu = build(rtc={"workers": 2})
    assert sfu.workers is not None and not sfu.workers.any_alive
    with pytest.raises(AdmissionError) as refused:
        sfu.admit(rtc_request("alice"))
    assert refused.value.status == 503 and "media worker" in refused.value.message
    sfu.workers.links[1].alive = True
    sfu.admit(rtc_request("alice"))
