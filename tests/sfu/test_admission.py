"""CPU-load admission: `CpuLoad`'s sliding window, and `limits.max_cpu_load` in `Sfu.admit`."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from sfu.app import AdmissionError, Sfu
from sfu.config import ConfigError, from_mapping
from sfu.cpuload import CpuLoad
from sfu.metrics import COUNTERS
from sfu.room import Participant, ParticipantOptions
from tests.harness.tokens import mint_token, new_api_key_pair


class Clocks:
    """Wall and CPU clocks the test advances by hand."""

    def __init__(self) -> None:
        self.wall = 1000.0
        self.cpu = 3.0  # CPU used before the monitor existed (start-up) is not load

    def run(self, seconds: float, busy: float, load: CpuLoad, step: float = 0.5) -> float:
        """`seconds` of wall time at `busy` cores, sampling every `step`; the last value."""
        for _ in range(round(seconds / step)):
            self.wall += step
            self.cpu += step * busy
            load.sample()
        return load.value


def monitor(clocks: Clocks, window_s: float = 5.0) -> CpuLoad:  # 5 s: round numbers below
    return CpuLoad(window_s, wall=lambda: clocks.wall, cpu=lambda: clocks.cpu)


def test_steady_load_reads_as_the_share_of_one_core() -> None:
    clocks = Clocks()
    load = monitor(clocks)
    assert load.value == 0.0
    assert clocks.run(10, 0.0, load) == 0.0
    assert clocks.run(10, 0.95, load) == pytest.approx(0.95)
    assert clocks.run(10, 0.25, load) == pytest.approx(0.25)


def test_the_window_slides() -> None:
    clocks = Clocks()
    load = monitor(clocks)
    clocks.run(10, 1.0, load)
    assert clocks.run(2.5, 0.0, load) == pytest.approx(0.5)  # half the window was busy
    assert clocks.run(2.5, 0.0, load) == pytest.approx(0.0)


def test_a_burst_right_after_start_counts_against_the_whole_window() -> None:
    clocks = Clocks()
    load = monitor(clocks)
    assert clocks.run(1, 1.0, load) == pytest.approx(0.2)  # 1 busy second of 5


def test_uneven_samples_are_interpolated_at_the_window_start() -> None:
    clocks = Clocks()
    load = monitor(clocks)
    clocks.run(6, 1.0, load, step=3.0)  # busy, sampled every 3 s
    assert clocks.run(3, 0.0, load, step=3.0) == pytest.approx(0.4)  # 2 busy s of the last 5


def test_participants_admitted_within_the_window_count_at_the_average_cost() -> None:
    clocks = Clocks()
    load = monitor(clocks)
    clocks.run(10, 0.6, load)
    assert load.predicted(10) == pytest.approx(0.6)  # nobody joining
    for _ in range(2):
        load.note_admission()
    # 10 connected, 2 of them just admitted: each will cost the average, 0.06
    assert load.predicted(10) == pytest.approx(0.6 * 1.2)
    clocks.run(5, 0.6, load)
    assert load.predicted(10) == pytest.approx(0.6)  # out of the window: measured now
    for _ in range(5):
        load.note_admission()
    assert load.predicted(2) == pytest.approx(1.2)  # a join storm: at most twice the measurement
    assert load.predicted(0) == pytest.approx(0.6)


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        CpuLoad(0)
    with pytest.raises(ValueError):
        CpuLoad(5, 0)


# -- admission --------------------------------------------------------------------------------------
KEY, SECRET = new_api_key_pair()


def build(max_cpu_load: object) -> Sfu:
    return Sfu.build(
        from_mapping({"keys": {KEY: SECRET}, "limits": {"max_cpu_load": max_cpu_load}})
    )


def rtc_request(identity: str, room: str = "busy") -> Request:
    token = mint_token(KEY, SECRET, identity, room)
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/rtc/validate",
            "headers": [],
            "query_string": f"access_token={token}".encode(),
        }
    )


def test_config_reads_the_limit() -> None:
    assert from_mapping({"keys": {KEY: SECRET}}).limits.max_cpu_load == 0.8
    assert build("0.75").config.limits.max_cpu_load == 0.75
    assert build(0).config.limits.max_cpu_load == 0.0
    for bad in (-0.1, "lots", True, ".nan", "inf"):
        with pytest.raises(ConfigError, match="max_cpu_load"):
            build(bad)


async def test_joins_are_refused_above_the_limit_except_a_rejoin() -> None:
    sfu = build(0.8)
    sfu.admit(rtc_request("alice"))
    grants, room = sfu.admit(rtc_request("alice"))
    alice = Participant(room, grants, ParticipantOptions(), sfu.transport_config, lambda _: None)
    await room.join(alice)
    try:
        sfu.cpu_load.value = 0.95
        refused = COUNTERS.joins_refused_cpu
        with pytest.raises(AdmissionError) as caught:
            sfu.admit(rtc_request("bob"))
        assert caught.value.status == 503
        assert caught.value.message == (
            "the server is at capacity: CPU load 0.95 (last 3 s, with the participants joining) "
            "exceeds limits.max_cpu_load 0.80"
        )
        with pytest.raises(AdmissionError):
            sfu.admit(rtc_request("carol", room="another"))
        assert COUNTERS.joins_refused_cpu == refused + 2
        # alice reconnecting (a fresh join with the same identity) replaces herself: let through
        assert sfu.admit(rtc_request("alice"))[1] is room
        sfu.cpu_load.value = 0.5
        sfu.admit(rtc_request("bob"))
    finally:
        await sfu.rooms.close_all()


async def test_no_limit() -> None:
    sfu = build(0)
    sfu.cpu_load.value = 4.0
    try:
        sfu.admit(rtc_request("bob"))
    finally:
        await sfu.rooms.close_all()
