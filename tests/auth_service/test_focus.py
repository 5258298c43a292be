"""The focus user in-process: which events count as call memberships, one join per room
however many invites, its timers on a fake clock, bounds, and shutdown.

The homeserver is a stand-in that records calls (and can fail on demand);
tests/integration/test_focus.py runs the same code against real Synapse.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from auth_service.focus import (
    DEFAULT_EXPIRES_MS,
    MAX_STICKY_MS,
    CloseCall,
    Focus,
    FocusSettings,
    call_membership,
)
from auth_service.homeserver import MembershipUnknown

ROOM = "!call:hs.test"
ME = "@_lk_jwt_service:hs.test"
ALICE = "@alice:hs.test"
T0_MS = 1_700_000_000_000


class FakeHomeserver:
    def __init__(self, state: list[dict[str, Any]] | None = None, *, broken: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.state_events = state or []
        self.broken = broken
        self.joined: list[str] = []

    async def join(self, room_id: str) -> None:
        self.calls.append(("join", room_id))
        if self.broken:
            raise MembershipUnknown("down")
        await asyncio.sleep(0)

    async def leave(self, room_id: str) -> None:
        self.calls.append(("leave", room_id))

    async def state(self, room_id: str) -> list[dict[str, Any]]:
        return self.state_events

    async def joined_rooms(self) -> list[str]:
        return list(self.joined)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def invite(user: str = ME) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "room_id": ROOM,
        "state_key": user,
        "sender": ALICE,
        "content": {"membership": "invite"},
    }


def call_member(content: dict[str, Any], *, sender: str = ALICE, key: str = "") -> dict[str, Any]:
    return {
        "type": "org.matrix.msc3401.call.member",
        "room_id": ROOM,
        "sender": sender,
        "state_key": key or f"_{sender}_DEV_m.call",
        "origin_server_ts": T0_MS,
        "content": content,
    }


def make(
    homeserver: FakeHomeserver,
    clock: Clock,
    wall: list[float],
    close_call: CloseCall | None = None,
    **settings: Any,
) -> Focus:
    return Focus(
        homeserver,  # type: ignore[arg-type]
        FocusSettings(user_id=ME, empty_call_seconds=2, no_call_seconds=5, **settings),
        clock=clock,
        wall_clock=lambda: wall[0],
        close_call=close_call,
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_call_memberships_count_only_for_their_senders_state_key() -> None:
    live = {"application": "m.call", "device_id": "DEV", "expires": 10_000}
    assert call_membership(call_member(live)) == (
        ROOM,
        (ALICE, f"_{ALICE}_DEV_m.call"),
        T0_MS + 10_000,
    )
    assert call_membership(call_member(live, key=f"{ALICE}_DEV_m.call")) is not None
    assert call_membership(call_member(live, key="_@bob:hs.test_DEV_m.call")) is None
    assert call_membership(call_member({})) == (ROOM, (ALICE, f"_{ALICE}_DEV_m.call"), None)
    # created_ts carries the original join time; no `expires` → js-sdk's 4 h
    assert call_membership(call_member({"application": "m.call", "created_ts": 5}))[2] == (
        5 + DEFAULT_EXPIRES_MS
    )
    # The oldest form: a list of devices under the user's own state key.
    old = {"memberships": [{"expires_ts": T0_MS + 7}, {"expires_ts": T0_MS + 9}]}
    assert call_membership(call_member(old, key=ALICE))[2] == T0_MS + 9
    assert call_membership(call_member({"memberships": []}, key=ALICE))[2] is None
    for hostile in (None, [], {"type": "org.matrix.msc3401.call.member"}, "x"):
        assert call_membership(hostile) is None


def test_sticky_rtc_memberships() -> None:
    event = {
        "type": "org.matrix.msc4143.rtc.member",
        "room_id": ROOM,
        "sender": ALICE,
        "origin_server_ts": T0_MS,
        "msc4354_sticky": {"duration_ms": 10 * MAX_STICKY_MS},
        "content": {
            "member": {"user_id": ALICE, "device_id": "DEV", "id": "m1"},
            "application": {"type": "m.call"},
            "msc4354_sticky_key": "m1",
        },
    }
    assert call_membership(event) == (ROOM, (ALICE, "m1"), T0_MS + MAX_STICKY_MS)
    left = {**event, "content": {"msc4354_sticky_key": "m1"}}
    assert call_membership(left) == (ROOM, (ALICE, "m1"), None)


async def test_one_join_however_many_invites_and_a_timeout_without_a_call() -> None:
    homeserver, clock, wall = FakeHomeserver(), Clock(), [T0_MS / 1000]
    focus = make(homeserver, clock, wall)
    await focus.apply([invite(), invite()])
    await focus.apply([invite(), {**invite(), "content": {"membership": "join"}}])
    await settle()
    assert homeserver.calls == [("join", ROOM)]
    assert focus.tick() == pytest.approx(5)
    clock.now += 5
    focus.tick()
    await settle()
    assert homeserver.calls == [("join", ROOM), ("leave", ROOM)]
    assert ROOM not in focus.rooms
    await focus.close()


async def test_the_focus_leaves_once_the_call_is_empty_or_expired() -> None:
    live = {"application": "m.call", "device_id": "DEV", "expires": 60_000}
    homeserver = FakeHomeserver(
        state=[
            call_member(live),
            {"type": "m.room.member", "state_key": ALICE, "content": {"membership": "join"}},
            # a membership of someone no longer joined does not count
            call_member(live, sender="@gone:hs.test"),
        ]
    )
    clock, wall = Clock(), [T0_MS / 1000]
    focus = make(homeserver, clock, wall)
    await focus.apply([invite()])
    await settle()
    assert len(focus.rooms[ROOM].memberships) == 1
    assert focus.tick() == pytest.approx(60)  # until the membership expires
    clock.now += 30
    wall[0] += 30
    await focus.apply([call_member({})])  # Alice hangs up
    assert focus.tick() == pytest.approx(2)
    clock.now += 2
    focus.tick()
    await settle()
    assert homeserver.calls[-1] == ("leave", ROOM)

    # Expiry alone ends a call too; a leave of the room takes the memberships with it.
    focus2 = make(homeserver, clock, wall, join_on_call=True)
    await focus2.apply([call_member({**live, "created_ts": int(wall[0] * 1000)})])
    await settle()
    assert ROOM in focus2.rooms and focus2.rooms[ROOM].memberships
    wall[0] += 61
    focus2.tick()
    assert not focus2.rooms[ROOM].memberships
    await focus2.close()


async def test_join_on_call_is_off_by_default_and_failed_joins_are_forgotten() -> None:
    homeserver, clock, wall = FakeHomeserver(broken=True), Clock(), [T0_MS / 1000]
    focus = make(homeserver, clock, wall)
    live = {"application": "m.call", "device_id": "DEV", "created_ts": T0_MS}
    await focus.apply([call_member(live)])
    assert not focus.rooms and not homeserver.calls
    await focus.apply([invite()])
    await settle()
    assert homeserver.calls == [("join", ROOM)] and not focus.rooms
    await focus.close()


async def test_rooms_are_bounded_and_close_cancels_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("auth_service.focus.MAX_ROOMS", 2)
    homeserver, clock, wall = FakeHomeserver(), Clock(), [T0_MS / 1000]
    focus = make(homeserver, clock, wall)
    hits: list[str] = []
    focus._limit_hit = hits.append
    await focus.start()
    await focus.apply([{**invite(), "room_id": f"!r{i}:hs.test"} for i in range(4)])
    await settle()
    assert len(focus.rooms) == 2 and hits == ["auth_focus_rooms"] * 2
    await focus.close()
    assert focus._timer is None and not focus._actions


async def test_an_invite_while_leaving_joins_again_afterwards() -> None:
    homeserver, clock, wall = FakeHomeserver(), Clock(), [T0_MS / 1000]
    focus = make(homeserver, clock, wall)
    await focus.apply([invite()])
    await settle()
    clock.now += 5
    focus.tick()  # the leave starts
    await focus.apply([invite()])  # invited again before it is done
    await settle()
    assert homeserver.calls == [("join", ROOM), ("leave", ROOM), ("join", ROOM)]
    assert ROOM in focus.rooms
    await focus.close()


async def test_leaving_an_emptied_call_closes_it_first_and_a_token_restarts_the_timer() -> None:
    """The focus ends the call on the SFU before it leaves (nobody stays connected to a call
    that has no membership); a token issued meanwhile means a client is joining: it waits."""
    live = {"application": "m.call", "device_id": "DEV", "expires": 600_000}
    homeserver, clock, wall = FakeHomeserver(), Clock(), [T0_MS / 1000]

    async def close_call(room_id: str, why: str) -> None:
        homeserver.calls.append(("close", f"{room_id}: {why}"))

    focus = make(homeserver, clock, wall, close_call)
    await focus.apply([invite(), call_member(live)])
    await settle()
    focus.tick()
    await focus.apply([call_member({})])  # the call empties
    assert focus.tick() == pytest.approx(2)
    clock.now += 1.5
    focus.token_issued(ROOM)  # someone is joining: their membership is on its way
    focus.token_issued("!elsewhere:hs.test")  # a room the focus is not in: nothing
    assert focus.tick() == pytest.approx(2)
    clock.now += 2
    focus.tick()
    await settle()
    assert homeserver.calls == [
        ("join", ROOM),
        ("close", f"{ROOM}: the call has been empty for 2 s"),
        ("leave", ROOM),
    ]
    await focus.close()
