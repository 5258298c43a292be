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
    many_rids = "".join(f"a=rid:r{i} send\r\n" for i in range(20))
    with pytest.raises(SdpError, match="a=rid"):  # the worker's SdpLimitError, as SdpError
        await publisher.handle_offer(f"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n{many_rids}")
    with pytest.raises(SdpError, match="too large"):  # over a control frame: never sent
        await publisher.handle_offer("v=0\r\n" + "a=x\r\n" * 300_000)
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


def idle_pool(count: int = 2, spill_load: float = 0.6) -> WorkerPool:
    """A pool whose workers count as running (no processes: placement only reads their
    reports)."""
    workers = WorkerPool(count, TransportConfig(), "auto", spill_load=spill_load)
    for link in workers.links:
        link.alive = True
    return workers


def report(workers: WorkerPool, cpu: dict[int, float]) -> None:
    """Each worker's next once-a-second stats: its CPU share, the joins since counted in."""
    for link in workers.links:
        link.on_message({"op": "stats", "cpu": cpu.get(link.index, 0.0), "packets_out": 0})


def test_a_small_room_stays_on_one_worker_while_rooms_spread() -> None:
    workers = idle_pool()
    a = [workers.place("a")]
    report(workers, {})
    b = [workers.place("b")]  # a new room: the least-loaded worker (the emptier one)
    assert (a[0].link.index, b[0].link.index) == (0, 1)
    report(workers, {0: 0.05, 1: 0.3})  # worker 1 is the busier one now, not busy
    a += [workers.place("a") for _ in range(3)]
    b += [workers.place("b") for _ in range(3)]
    assert {m.link.index for m in a} == {0} and {m.link.index for m in b} == {1}
    assert workers.links[0].holds("a") == 4 and workers.links[0].holds("b") == 0
    for m in a:
        m.close()
    assert workers.links[0].holds("a") == 0 and not workers.links[0].media
    assert workers.place("c").link.index == 0  # the emptier worker again


def test_a_busy_home_spills_its_room_to_the_least_loaded_worker() -> None:
    workers = idle_pool()
    home = workers.place("a").link
    assert workers.place("a").link is home
    report(workers, {0: 0.7})  # past rtc.worker_spill_load: the room grows elsewhere
    assert workers.place("a").link.index == 1
    report(workers, {0: 0.2})  # below it again: back to the worker holding most of the room
    assert workers.place("a").link is home


def test_forwarded_packets_count_as_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker forwarding 40,000 packets/s is busy even when its CPU sample says 0.1 (a
    worker the kernel starves reports little CPU)."""
    from sfu.workers import pool as pool_module

    workers = idle_pool()
    clock = [100.0]
    monkeypatch.setattr(pool_module.time, "monotonic", lambda: clock[0])
    home = workers.place("a").link
    home.on_message({"op": "stats", "cpu": 0.1, "packets_out": 1_000})
    clock[0] += 1.0
    home.on_message({"op": "stats", "cpu": 0.1, "packets_out": 41_000})
    assert home.packet_rate == pytest.approx(40_000)
    assert home.load == pytest.approx(0.8 + 0.001)
    assert workers.place("a").link.index == 1
    home.on_message({"op": "stats", "cpu": 0.1, "packets_out": 500})  # a new process: no rate
    assert home.packet_rate == 0.0


def test_a_burst_of_joins_into_one_room_spills_before_the_next_report() -> None:
    """Each join counts a tenth of a core until the worker's next report: a room whose joins
    arrive at once fills its worker up to rtc.worker_spill_load, then spreads."""
    workers = idle_pool()
    placed = [workers.place("big").link.index for _ in range(10)]
    assert placed[:6] == [0] * 6, placed
    assert placed[6:] == [1, 1, 1, 1, 1, 1, 0, 1][: len(placed) - 6], placed


def test_spill_load_zero_places_by_load_alone() -> None:
    workers = idle_pool(spill_load=0.0)
    placed = [workers.place("a").link.index for _ in range(4)]
    assert placed == [0, 1, 0, 1]


def test_a_dead_home_does_not_hold_its_room() -> None:
    workers = idle_pool()
    first = workers.place("a")
    workers.links[0].alive = False
    assert workers.place("a").link.index == 1
    workers.links[0].alive = True
    report(workers, {})
    assert first.link.holds("a") == 1 and workers.links[1].holds("a") == 1
    assert workers.place("a").link.index == 0  # a tie: the less loaded of the two
