"""Admission by forwarding latency: `limits.max_forward_latency_ms` and its hysteresis
(`sfu.admission.LatencyHold`), fed by the window of `sfu.media.transport.latency`."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from sfu.admission import LATENCY_RELEASE, LatencyHold
from sfu.app import AdmissionError, Sfu
from sfu.config import ConfigError, from_mapping
from sfu.media.transport.batch import flusher_for
from sfu.media.transport.latency import MIN_SAMPLES, ForwardLatency
from sfu.metrics import COUNTERS
from tests.sfu.media.transport.test_latency import Reader, busy, wait_for
from tests.sfu.test_admission import KEY, SECRET, joined, rtc_request


def build(max_forward_latency_ms: object) -> Sfu:
    limits = {
        "max_cpu_load": 0,
        "max_forward_latency_ms": max_forward_latency_ms,
        "forward_latency_min_load": 0,
    }
    return Sfu.build(from_mapping({"keys": {KEY: SECRET}, "limits": limits}))


def measured(sfu: Sfu, seconds: float) -> None:
    """A fresh window of samples all `seconds` long."""
    sfu.latency = ForwardLatency(None, lambda: None)
    for _ in range(MIN_SAMPLES):
        sfu.latency.record(seconds)


def refusal(sfu: Sfu, identity: str = "bob") -> str:
    with pytest.raises(AdmissionError) as caught:
        sfu.admit(rtc_request(identity))
    assert caught.value.status == 503
    return caught.value.message


def test_config_reads_the_bound() -> None:
    assert from_mapping({"keys": {KEY: SECRET}}).limits.max_forward_latency_ms == 50.0
    assert build(20).latency_hold.bound_s == 0.02
    assert build("7.5").config.limits.max_forward_latency_ms == 7.5
    assert build(0).latency_hold.bound_s == 0.0
    for bad in (-1, "fast", True, ".nan", "inf"):
        with pytest.raises(ConfigError, match="max_forward_latency_ms"):
            build(bad)


async def test_an_idle_node_is_not_held_back_by_latency_it_does_not_cause() -> None:
    """Below `limits.forward_latency_min_load` of a core the node's own work is not what makes
    datagrams wait (a busy machine is): the newcomer is let in. At the floor, it is refused."""
    sfu = Sfu.build(
        from_mapping(
            {"keys": {KEY: SECRET}, "limits": {"max_cpu_load": 0, "max_forward_latency_ms": 50}}
        )
    )
    assert sfu.config.limits.forward_latency_min_load == 0.2
    await joined(sfu, "alice")
    try:
        measured(sfu, 0.200)
        sfu.cpu_load.value = 0.19
        assert sfu.admit(rtc_request("bob")).room_name == "busy"
        sfu.cpu_load.value = 0.2
        assert "forwarding latency p99" in refusal(sfu, "carol")
    finally:
        await sfu.rooms.close_all()
    for bad in (-0.1, "busy", ".nan"):
        with pytest.raises(ConfigError, match="forward_latency_min_load"):
            from_mapping({"keys": {KEY: SECRET}, "limits": {"forward_latency_min_load": bad}})


def test_the_hold_has_hysteresis() -> None:
    hold = LatencyHold(0.05)
    assert not hold.refuses(0.0) and not hold.refuses(0.05)
    assert hold.refuses(0.0501)
    assert hold.refuses(0.045)  # under the bound, not yet under the release level
    assert hold.refuses(0.05 * LATENCY_RELEASE + 0.0001)
    assert not hold.refuses(0.05 * LATENCY_RELEASE)
    assert not hold.refuses(0.045)  # released: only the bound counts again
    assert not LatencyHold(0).refuses(100.0)


async def test_joins_are_refused_while_the_latency_holds_the_node_except_a_rejoin() -> None:
    sfu = build(50)
    await joined(sfu, "alice")
    try:
        refused = COUNTERS.joins_refused_latency
        measured(sfu, 0.080)
        assert refusal(sfu) == (
            "the server is at capacity: forwarding latency p99 80.0 ms (last 3 s, with the "
            "participants joining) exceeds limits.max_forward_latency_ms 50"
        )
        # alice reconnecting replaces herself: let through
        assert sfu.admit(rtc_request("alice")).room_name == "busy"
        measured(sfu, 0.045)
        assert refusal(sfu, "carol") == (
            "the server is at capacity: forwarding latency p99 45.0 ms (last 3 s, with the "
            "participants joining) is not yet back under 40 ms (80 % of "
            "limits.max_forward_latency_ms 50)"
        )
        assert COUNTERS.joins_refused_latency == refused + 2
        measured(sfu, 0.039)
        sfu.admit(rtc_request("bob"))
        measured(sfu, 0.045)
        sfu.admit(rtc_request("bob"))  # released: 45 ms is under the bound
    finally:
        await sfu.rooms.close_all()


async def test_an_idle_node_and_no_limit_admit() -> None:
    sfu = build(50)
    sfu.latency = ForwardLatency(None, lambda: None)
    for _ in range(MIN_SAMPLES - 1):
        sfu.latency.record(10.0)  # a couple of datagrams say nothing about load
    sfu.admit(rtc_request("bob"))
    sfu.latency = ForwardLatency(None, lambda: None)
    for _ in range(40):
        sfu.latency.record(0.001)  # a quiet node, and one stray garbage collection
    sfu.latency.record(10.0)
    sfu.admit(rtc_request("bob"))
    unlimited = build(0)
    measured(unlimited, 10.0)
    unlimited.admit(rtc_request("bob"))


async def test_participants_joining_count_towards_the_prediction() -> None:
    sfu = build(50)
    # four sessions, two of them admitted within the window (their load not measured yet)
    held = [sfu.admit(rtc_request(name, "room"), reserve=True) for name in "abcd"]
    sfu.cpu_load.note_admission()
    sfu.cpu_load.note_admission()
    try:
        measured(sfu, 0.040)
        assert "p99 60.0 ms" in refusal(sfu, "carol")  # 40 ms + 50 %
    finally:
        for admission in held:
            admission.release()


async def test_a_blocked_event_loop_holds_the_node() -> None:
    """Real datagrams on this loop's socket, each read only after the loop was blocked for
    longer than the bound: the loop's own probe measures them and admission refuses."""
    sfu = build(5)
    loop = asyncio.get_running_loop()
    sfu.latency = flusher_for(loop).latency
    transport, reader = await loop.create_datagram_endpoint(Reader, local_addr=("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        address = transport.get_extra_info("sockname")
        sfu.admit(rtc_request("alice"))
        for sent in range(1, MIN_SAMPLES + 10):
            await wait_for(lambda: sfu.latency.armed)
            sender.sendto(b"x", address)
            busy(0.01)  # this iteration runs 10 ms: the datagram waits for it
            await wait_for(lambda n=sent: reader.received == n and not sfu.latency.in_flight)
        assert sfu.latency.p99() >= 0.01
        assert "exceeds limits.max_forward_latency_ms 5" in refusal(sfu)
    finally:
        sender.close()
        transport.close()


async def test_with_media_workers_the_worst_worker_holds_the_node() -> None:
    """With `rtc.workers: 2` the control process forwards nothing: each worker's p99 comes in
    its stats report (a fake one here: the pool is not started), and the worst one counts."""
    limits = {"max_cpu_load": 0, "max_forward_latency_ms": 50, "forward_latency_min_load": 0}
    config = {"keys": {KEY: SECRET}, "limits": limits, "rtc": {"workers": 2}}
    sfu = Sfu.build(from_mapping(config))
    assert sfu.workers is not None
    quiet, busy_worker = sfu.workers.links
    for link in sfu.workers.links:
        link.alive = True  # as if started; its stats are what it last reported
    quiet.stats = {"latency_p99": 0.002}
    busy_worker.stats = {"latency_p99": 0.002}
    sfu.admit(rtc_request("bob"))
    busy_worker.stats = {"latency_p99": 0.080}
    assert sfu.forward_latency_p99() == 0.080
    assert "p99 80.0 ms" in refusal(sfu)
    busy_worker.stats = {"latency_p99": 0.039}
    sfu.admit(rtc_request("bob"))  # back under the release level
    busy_worker.stats = {"latency_p99": 0.080}
    text = sfu.metrics.render().decode()
    assert 'sfu_worker_forward_latency_p99_seconds{worker="0"} 0.002' in text
    assert 'sfu_worker_forward_latency_p99_seconds{worker="1"} 0.08' in text
    assert re.search(r"^sfu_forward_latency_p99_seconds\{.*\} 0.08$", text, re.M)
    busy_worker.stats = {"latency_p99": 0.002}
    busy_worker.stats_at = time.monotonic() - 2.1  # stuck: its report is late
    assert "exceeds limits.max_forward_latency_ms 50" in refusal(sfu)
    busy_worker.alive = False  # a dead worker's last report does not count
    assert "p99 80.0 ms" not in (message := _admitted_or_refused(sfu)), message


def _admitted_or_refused(sfu: Sfu) -> str:
    try:
        sfu.admit(rtc_request("bob"))
    except AdmissionError as exc:
        return exc.message
    return "admitted"
