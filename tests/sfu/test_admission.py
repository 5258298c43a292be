"""Admission: `CpuLoad`'s sliding window and `limits.max_cpu_load`, who may create a room, the
session caps (`sfu.admission`), and joins that race each other or a closing room."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import jwt
import pytest
from livekit.protocol import models
from starlette.requests import Request

from sfu.admission import derived_max_sessions
from sfu.app import AdmissionError, Sfu
from sfu.auth import ClaimGrants, VideoGrant
from sfu.config import ConfigError, from_mapping
from sfu.cpuload import CpuLoad
from sfu.metrics import COUNTERS
from sfu.room import Participant, ParticipantOptions
from sfu.room.room import Room, RoomFullError, RoomListener
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


def build(max_cpu_load: object = 0, **sections: dict[str, Any]) -> Sfu:
    limits = {"max_cpu_load": max_cpu_load, **sections.pop("limits", {})}
    return Sfu.build(from_mapping({"keys": {KEY: SECRET}, "limits": limits, **sections}))


def rtc_request(
    identity: str, room: str = "busy", *, address: str = "127.0.0.1", room_create: bool = True
) -> Request:
    token = mint_token(KEY, SECRET, identity, room, room_create=room_create)
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/rtc/validate",
            "headers": [],
            "query_string": f"access_token={token}".encode(),
            "client": (address, 40000),
        }
    )


def participant(sfu: Sfu, identity: str, room: str = "busy") -> Participant:
    grants = ClaimGrants(KEY, identity, video=VideoGrant(room=room, room_join=True))
    return Participant(grants, ParticipantOptions(), sfu.transport_config, lambda _: None)


def room_of(p: Participant) -> Room:
    """The room a participant's RoomEvents lead to."""
    assert isinstance(p.events, RoomListener)
    return p.events.room


async def joined(sfu: Sfu, identity: str, room: str = "busy") -> Participant:
    """Admitted (slots released at once), then joined through the manager."""
    sfu.admit(rtc_request(identity, room), reserve=True).release()
    p = participant(sfu, identity, room)
    await sfu.rooms.join(p, room)
    return p


def test_config_reads_the_limit() -> None:
    assert from_mapping({"keys": {KEY: SECRET}}).limits.max_cpu_load == 0.8
    assert build("0.75").config.limits.max_cpu_load == 0.75
    assert build(0).config.limits.max_cpu_load == 0.0
    for bad in (-0.1, "lots", True, ".nan", "inf"):
        with pytest.raises(ConfigError, match="max_cpu_load"):
            build(bad)


async def test_joins_are_refused_above_the_limit_except_a_rejoin() -> None:
    sfu = build(0.8)
    await joined(sfu, "alice")
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
        assert sfu.admit(rtc_request("alice")).room_name == "busy"
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


# -- who may create a room (audit finding 13) ---------------------------------------------------
async def test_only_a_room_create_token_or_auto_create_makes_a_room() -> None:
    sfu = build()
    assert sfu.config.room.auto_create is False
    with pytest.raises(AdmissionError) as refused:
        sfu.admit(rtc_request("mallory", "nobody", room_create=False), reserve=True)
    assert (refused.value.status, refused.value.message) == (404, "requested room does not exist")
    assert sfu.sessions == 0  # a refusal holds nothing
    # admitting (and /rtc/validate, which only admits) never creates the room
    sfu.admit(rtc_request("alice", "nobody"))
    assert sfu.rooms.rooms == {}
    alice = await joined(sfu, "alice", "nobody")
    try:
        assert sfu.rooms.get("nobody") is room_of(alice)
        # once it exists, anyone with a token for it may join
        assert sfu.admit(rtc_request("mallory", "nobody", room_create=False)).room_name == "nobody"
    finally:
        await sfu.rooms.close_all()
    anyone = build(room={"auto_create": True})
    anyone.admit(rtc_request("mallory", "nobody", room_create=False))


# -- session caps (audit finding 14) --------------------------------------------------------------
def test_the_default_session_cap_comes_from_descriptors_and_ports() -> None:
    cap, why = derived_max_sessions(
        bind_addresses=1, port_range=(50000, 50019), udp_port=0, nofile=lambda: 20000
    )
    assert cap == 10 and "rtc.port_range 50000-50019" in why
    # 1024 descriptors, 102 kept back, 5 per session (WebSocket + 2 × (UDP socket + send dup))
    cap, why = derived_max_sessions(
        bind_addresses=1, port_range=(50000, 60000), udp_port=0, nofile=lambda: 1024
    )
    assert cap == (1024 - 102) // 5 and "RLIMIT_NOFILE 1024" in why
    cap, _ = derived_max_sessions(
        bind_addresses=2, port_range=(50000, 50019), udp_port=7882, nofile=lambda: 1024
    )
    assert cap == (1024 - 102) // 3  # one shared socket per address: no ports per session


def test_sessions_past_the_cap_get_503_and_release_their_slots() -> None:
    sfu = build(rtc={"port_range_start": 50000, "port_range_end": 50019})
    assert sfu.ledger.max_sessions == 10
    hits = COUNTERS.limits_exceeded.get("max_sessions", 0)
    held = [sfu.admit(rtc_request(f"u{i}"), reserve=True) for i in range(10)]
    with pytest.raises(AdmissionError) as refused:
        sfu.admit(rtc_request("u10"), reserve=True)
    assert refused.value.status == 503
    assert refused.value.message == "the server is at capacity: 10 sessions (limits.max_sessions)"
    assert COUNTERS.limits_exceeded["max_sessions"] == hits + 1
    held.pop().release()
    held.append(sfu.admit(rtc_request("u10"), reserve=True))
    for admission in held:
        admission.release()
        admission.release()  # idempotent
    assert sfu.sessions == 0 and sfu.ledger.by_address == {} and sfu.ledger.joining == {}


def test_sessions_per_address_are_capped() -> None:
    sfu = build(limits={"max_sessions_per_ip": 3})
    hits = COUNTERS.limits_exceeded.get("max_sessions_per_ip", 0)
    for i in range(3):
        sfu.admit(rtc_request(f"u{i}", address="192.0.2.7"), reserve=True)
    with pytest.raises(AdmissionError) as refused:
        sfu.admit(rtc_request("u3", address="192.0.2.7"), reserve=True)
    assert refused.value.status == 503
    assert "limits.max_sessions_per_ip" in refused.value.message
    assert COUNTERS.limits_exceeded["max_sessions_per_ip"] == hits + 1
    sfu.admit(rtc_request("u3", address="192.0.2.8"), reserve=True)
    # IPv6 counts per /64 (one host has them all); an IPv4-mapped address as IPv4
    for i in range(3):
        sfu.admit(rtc_request(f"v{i}", address=f"2001:db8:1:2::{i + 1}"), reserve=True)
    with pytest.raises(AdmissionError):
        sfu.admit(rtc_request("v3", address="2001:db8:1:2:ffff::9"), reserve=True)
    sfu.admit(rtc_request("v3", address="2001:db8:1:3::1"), reserve=True)
    with pytest.raises(AdmissionError):
        sfu.admit(rtc_request("w", address="::ffff:192.0.2.7"), reserve=True)
    assert build(limits={"max_sessions_per_ip": 0}).ledger.max_per_address == 0  # no cap


def test_an_identity_holds_one_session_plus_the_one_replacing_it() -> None:
    sfu = build()
    hits = COUNTERS.limits_exceeded.get("sessions_per_identity", 0)
    first = sfu.admit(rtc_request("x"), reserve=True)
    sfu.admit(rtc_request("x"), reserve=True)
    with pytest.raises(AdmissionError) as refused:
        sfu.admit(rtc_request("x"), reserve=True)
    assert refused.value.status == 503 and "identity" in refused.value.message
    assert COUNTERS.limits_exceeded["sessions_per_identity"] == hits + 1
    sfu.admit(rtc_request("x", room="elsewhere"), reserve=True)  # per room
    first.release()
    sfu.admit(rtc_request("x"), reserve=True)


# -- joins racing each other or a closing room (audit finding 20) ----------------------------------
async def test_fifty_concurrent_admissions_fill_a_room_of_ten_exactly() -> None:
    sfu = build(room={"max_participants": 10})
    hits = COUNTERS.limits_exceeded.get("max_participants", 0)
    admitted, refused = [], 0
    for i in range(50):  # every handshake admitted before any has joined
        try:
            admitted.append(sfu.admit(rtc_request(f"u{i}"), reserve=True))
        except AdmissionError as exc:
            assert (exc.status, exc.message) == (503, "room is full")
            refused += 1
    assert (len(admitted), refused) == (10, 40)
    assert COUNTERS.limits_exceeded["max_participants"] == hits + 40
    # the join itself re-checks: ten in the room, the eleventh refused
    people = [participant(sfu, f"u{i}") for i in range(11)]
    try:
        results = await asyncio.gather(
            *(sfu.rooms.join(p, "busy") for p in people), return_exceptions=True
        )
        assert sum(isinstance(r, RoomFullError) for r in results) == 1
        room = sfu.rooms.get("busy")
        assert room is not None and len(room.participants) == 10
    finally:
        await sfu.rooms.close_all()


async def test_three_concurrent_joins_of_one_identity_leave_one_participant() -> None:
    sfu = build()
    try:
        for join_through_manager in (False, True):
            name = f"dup-{join_through_manager}"
            three = [participant(sfu, "x", name) for _ in range(3)]
            room = sfu.rooms.get_or_create(name, create=True)

            def join(
                p: Participant, room: Room = room, manager: bool = join_through_manager
            ) -> Awaitable[object]:
                return sfu.rooms.join(p, room.name) if manager else room.join(p)

            await join(three[0])
            await asyncio.gather(join(three[1]), join(three[2]))  # both find the first one
            live = [p for p in three if not p.closed]
            assert len(live) == 1
            assert room.participants == {"x": live[0]}
            assert all(
                p.disconnect_reason == models.DisconnectReason.DUPLICATE_IDENTITY
                for p in three
                if p.closed
            )
    finally:
        await sfu.rooms.close_all()


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 10])
async def test_a_join_as_the_last_one_leaves_lands_in_a_live_room(yields: int) -> None:
    sfu = build(room={"departure_timeout": 0})
    try:
        alice = await joined(sfu, "alice", "lobby")
        bob = participant(sfu, "bob", "lobby")  # admitted while alice was still there
        await alice.close()
        for _ in range(yields):  # the departure timer fires; the room may close meanwhile
            await asyncio.sleep(0)
        await sfu.rooms.join(bob, "lobby")
        await asyncio.sleep(0.05)  # anything already scheduled runs
        room = sfu.rooms.get("lobby")
        assert room is not None and not room.closed and room is room_of(bob)
        assert room.participants == {"bob": bob} and not bob.closed
    finally:
        await sfu.rooms.close_all()


# -- token refresh, admission bookkeeping (audit finding 24) -------------------------------------
def test_refresh_keeps_every_grant_and_renews_only_to_the_next_refresh() -> None:
    sfu = build()
    now = 1_000_000
    video = VideoGrant(
        room="r",
        room_join=True,
        room_create=True,
        room_list=True,
        room_admin=True,
        room_record=True,
        can_publish=False,
        can_publish_sources=("microphone",),
        hidden=True,
        recorder=True,
    )
    grants = ClaimGrants(KEY, "alice", name="A", video=video, expires_at=now + 60)

    def claims(token: str) -> dict[str, Any]:
        decoded: dict[str, Any] = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"verify_exp": False}
        )
        return decoded

    # a 60 s token refreshed after an hour still yields a token, valid 300 s + 60 s from then
    later = claims(sfu.refresh_token(grants, now + 3600))
    assert later["exp"] == now + 3600 + 360 and later["nbf"] == now + 3600
    assert later["video"] == {
        "room": "r",
        "roomJoin": True,
        "roomCreate": True,
        "roomList": True,
        "roomAdmin": True,
        "roomRecord": True,
        "canPublish": False,
        "canSubscribe": True,
        "canPublishData": True,
        "canUpdateOwnMetadata": False,
        "hidden": True,
        "recorder": True,
        "canPublishSources": ["microphone"],
    }
    refreshed = sfu.verifier.verify(sfu.refresh_token(grants))
    assert refreshed.video == video
    # a longer-lived token is not shortened, nor lengthened
    long_lived = ClaimGrants(KEY, "alice", video=video, expires_at=now + 7200)
    assert claims(sfu.refresh_token(long_lived, now))["exp"] == now + 7200


def test_admissions_are_forgotten_with_cpu_admission_off() -> None:
    clocks = Clocks()
    load = monitor(clocks)
    for _ in range(10_000):
        clocks.wall += 0.01
        load.note_admission()
    assert len(load._admitted) <= 5.0 / 0.01 + 1  # one window's worth


def test_transport_settings_reach_the_transport_config() -> None:
    sfu = build(rtc={"allow_private_candidates": True, "send_mode": "batch"})
    assert sfu.transport_config.allow_private_candidates is True
    assert sfu.transport_config.send_mode == "batch"
    assert build().transport_config.allow_private_candidates is False


async def test_a_participant_still_starting_its_transports_counts_as_one_session() -> None:
    """Once the room holds a participant it counts as live, not also as joining: a rejoin of
    that identity while its transports still start is the usual replacing join."""
    sfu = build()
    reservation = sfu.admit(rtc_request("x"), reserve=True).reservation
    assert reservation is not None
    p = participant(sfu, "x")
    p.on_joined = reservation.joined
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_start(existing: object) -> None:
        started.set()
        await release.wait()

    p.start = slow_start  # type: ignore[method-assign,assignment]
    joining = asyncio.ensure_future(sfu.rooms.join(p, "busy"))
    await started.wait()
    sfu.admit(rtc_request("x")).release()  # allowed: one live session plus this one
    release.set()
    await joining
    reservation.release()
