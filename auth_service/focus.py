"""The conference focus: the application service's own user (the registration's sender) in the
Matrix rooms that hold a call.

* **Joins** a room when invited to it (an ``m.room.member`` invite whose ``state_key`` is the
  focus user), and, with ``LIVEKIT_FOCUS_JOIN_ON_CALL``, when a live call membership appears in
  a room the homeserver pushes to us. One join per room however many invites or memberships
  arrive; at most :data:`MAX_ROOMS` rooms.
* **Leaves** when the call has been empty for ``LIVEKIT_FOCUS_EMPTY_CALL_SECONDS``, or, when no
  call started since it joined, after ``LIVEKIT_FOCUS_NO_CALL_SECONDS``; first it **closes the
  call** on the SFU (``close_call``: ``DeleteRoom`` of the room's LiveKit rooms), so that no one
  stays connected to a call that MatrixRTC says has ended. A token issued for the room restarts
  both timers: its client joins the SFU a moment before its membership arrives.
* On start it adopts the rooms it is already joined to (``GET /joined_rooms``); on joining or
  adopting a room it reads the room's state for the memberships already there.

**A call is empty** when the room has no live call membership of a joined user: MatrixRTC's own
rule, what clients show. A membership is an ``org.matrix.msc3401.call.member`` state event
(MSC3401/MSC4143 legacy) whose ``state_key`` belongs to its sender (``{sender}``,
``_{sender}_…`` or ``{sender}_…``, MSC3757; others are ignored): empty content is a leave;
otherwise it lives until ``created_ts`` (or the event's ``origin_server_ts``) plus ``expires``
ms (4 h if absent), or ``expires_ts``; the older ``{"memberships": [...]}`` form lives while one
of its entries does. An ``org.matrix.msc4143.rtc.member`` / ``m.rtc.member`` event (MSC4143's
sticky form) keyed by its sender and sticky key is live while it has ``member`` and
``application`` and its sticky duration (at most 1 h) has not passed. A member who leaves the
room takes their memberships with them. The SFU's participant list is not consulted: a client
that crashed is ended by its delayed leave event (which delegation sends at once).

Every timer is one task (:meth:`Focus.start`), woken by changes, cancelled by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .homeserver import Homeserver, MembershipUnknown
from .membership import membership_change

log = logging.getLogger(__name__)

CALL_MEMBER_TYPES: Final = frozenset({"org.matrix.msc3401.call.member", "m.call.member"})
RTC_MEMBER_TYPES: Final = frozenset({"org.matrix.msc4143.rtc.member", "m.rtc.member"})
DEFAULT_EXPIRES_MS: Final = 4 * 3600 * 1000
"""js-sdk's ``DEFAULT_EXPIRE_DURATION`` for a call membership without ``expires``."""
MAX_STICKY_MS: Final = 3600 * 1000
"""MSC4354's longest sticky duration, also used when an event names none."""
MAX_ROOMS: Final = 1000
MAX_MEMBERSHIPS_PER_ROOM: Final = 1000
MAX_IDLE_WAKE_SECONDS: Final = 60.0
ACTION_TIMEOUT_SECONDS: Final = 30.0

CloseCall = Callable[[str, str], Awaitable[None]]
"""Ends a Matrix room's call on the SFU: (room ID, why)."""


@dataclass(frozen=True)
class FocusSettings:
    """Who the focus is and its timeouts (seconds)."""

    user_id: str
    empty_call_seconds: float = 30.0
    no_call_seconds: float = 90.0
    join_on_call: bool = False


@dataclass
class _Room:
    joined: bool = False  # False while the join (or the state read) is under way
    had_call: bool = False
    quiet_since: float | None = None  # monotonic; when it was last seen without a call
    leaving: bool = False
    rejoin: bool = False  # invited again while leaving
    memberships: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    """(sender, key) → (sender, expiry in wall-clock ms)."""

    def live(self, now_ms: float) -> int:
        for key in [k for k, (_user, expiry) in self.memberships.items() if expiry <= now_ms]:
            del self.memberships[key]
        return len(self.memberships)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _legacy_expiry(content: dict[str, Any], origin_ts: int) -> float | None:
    """The expiry (ms) of an ``org.matrix.msc3401.call.member`` content; ``None``: a leave."""
    entries = content.get("memberships")
    if isinstance(entries, list):  # the oldest form: one event per user, a list of devices
        expiries = [_legacy_expiry(e, origin_ts) for e in entries if isinstance(e, dict) and e]
        alive = [e for e in expiries if e is not None]
        return max(alive) if alive else None
    if not content:
        return None
    expires_ts = _int(content.get("expires_ts"))
    if expires_ts is not None:
        return float(expires_ts)
    created = _int(content.get("created_ts")) or origin_ts
    expires = _int(content.get("expires"))
    return float(created + (expires if expires is not None and expires > 0 else DEFAULT_EXPIRES_MS))


def call_membership(event: object) -> tuple[str, tuple[str, str], float | None] | None:
    """(room, (sender, key), expiry in ms or ``None`` for a leave) of a call membership event;
    ``None`` for any other event, or one whose state key is someone else's."""
    if not isinstance(event, dict):
        return None
    kind, room_id, sender = event.get("type"), event.get("room_id"), event.get("sender")
    content = event.get("content")
    if not isinstance(room_id, str) or not isinstance(sender, str) or not isinstance(content, dict):
        return None
    origin_ts = _int(event.get("origin_server_ts")) or 0
    state_key = event.get("state_key")
    if kind in CALL_MEMBER_TYPES:
        if not isinstance(state_key, str) or not (
            state_key == sender
            or state_key.startswith(f"_{sender}_")
            or state_key.startswith(f"{sender}_")
        ):
            return None
        return room_id, (sender, state_key), _legacy_expiry(content, origin_ts)
    if kind in RTC_MEMBER_TYPES:
        member = content.get("member")
        key = content.get("msc4354_sticky_key") or content.get("sticky_key")
        if not isinstance(key, str):
            key = member.get("id") if isinstance(member, dict) else None
        if not isinstance(key, str):
            key = state_key if isinstance(state_key, str) else ""
        if not isinstance(member, dict) or "application" not in content:
            return room_id, (sender, key), None
        sticky = event.get("msc4354_sticky") or event.get("sticky")
        duration = _int(sticky.get("duration_ms")) if isinstance(sticky, dict) else None
        duration = min(duration if duration and duration > 0 else MAX_STICKY_MS, MAX_STICKY_MS)
        return room_id, (sender, key), float(origin_ts + duration)
    return None


class Focus:
    """The focus user's rooms, their calls and its timers."""

    def __init__(
        self,
        homeserver: Homeserver,
        settings: FocusSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        limit_hit: Callable[[str], None] = lambda _limit: None,
        close_call: CloseCall | None = None,
    ) -> None:
        self._homeserver = homeserver
        self._close_call = close_call
        self.settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._limit_hit = limit_hit
        self.rooms: dict[str, _Room] = {}
        self._actions: dict[str, asyncio.Task[None]] = {}  # at most one join/leave per room
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    def _wall_ms(self) -> float:
        return self._wall_clock() * 1000.0

    # --- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the timer and adopt the rooms the focus is already in."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._run(), name="focus-timer")
            self._action("", self._adopt_joined_rooms())

    async def close(self) -> None:
        """Cancel the timer and every join or leave under way."""
        tasks = [t for t in (self._timer, *self._actions.values()) if t is not None]
        self._timer = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._actions.clear()

    def _action(self, room_id: str, work: Coroutine[Any, Any, None]) -> None:
        async def bounded() -> None:
            try:
                async with asyncio.timeout(ACTION_TIMEOUT_SECONDS):
                    await work
            except (MembershipUnknown, TimeoutError) as exc:
                log.warning("focus: %s: %s", room_id or "start-up", exc)
            finally:
                if self._actions.get(room_id) is task:
                    del self._actions[room_id]

        task = asyncio.create_task(bounded(), name=f"focus {room_id}")
        self._actions[room_id] = task

    # --- pushed events -------------------------------------------------------------------

    async def apply(self, events: Iterable[object]) -> None:
        """Take in the events of one application-service transaction (never waits on the
        homeserver: joins and leaves run beside it)."""
        for event in events:
            self._take(event)
        self._wake.set()

    def token_issued(self, room_id: str) -> None:
        """A token was issued for ``room_id``: a call may be starting, so its empty-call (or
        no-call) timer starts again."""
        room = self.rooms.get(room_id)
        if room is not None and not room.leaving and room.quiet_since is not None:
            room.quiet_since = self._clock()
            self._wake.set()

    def _take(self, event: object) -> None:
        member = membership_change(event)
        if member is not None:
            room_id, user_id, membership = member
            if user_id == self.settings.user_id:
                self._own_membership(room_id, membership)
            elif membership in ("leave", "ban") and room_id in self.rooms:
                memberships = self.rooms[room_id].memberships
                for key in [k for k in memberships if k[0] == user_id]:
                    del memberships[key]
            return
        change = call_membership(event)
        if change is None:
            return
        room_id, key, expiry = change
        room = self.rooms.get(room_id)
        if room is None:
            if self.settings.join_on_call and expiry is not None and expiry > self._wall_ms():
                log.info("focus: a call started in %r; joining", room_id)
                room = self._join(room_id)
            if room is None:
                return
        self._record(room, key, expiry)

    def _record(self, room: _Room, key: tuple[str, str], expiry: float | None) -> None:
        if expiry is None:
            room.memberships.pop(key, None)
        elif key in room.memberships or len(room.memberships) < MAX_MEMBERSHIPS_PER_ROOM:
            room.memberships[key] = (key[0], expiry)
        else:
            self._limit_hit("auth_focus_memberships")

    def _own_membership(self, room_id: str, membership: str) -> None:
        room = self.rooms.get(room_id)
        if membership == "invite":
            if room is None or room.leaving:
                log.info("focus: invited to %r", room_id)
                if self._join(room_id) is None and room is not None:
                    room.rejoin = True  # once the leave under way is done
        elif membership == "join":
            if room is None:
                self._join(room_id, already=True)
        elif room is not None and not (room.leaving and room_id in self._actions):
            log.info("focus: no longer in %r (%s)", room_id, membership)
            self.rooms.pop(room_id, None)

    def _join(self, room_id: str, *, already: bool = False) -> _Room | None:
        """Join ``room_id`` (once), then read what calls it has."""
        current = self.rooms.get(room_id)
        if current is not None and not current.leaving:
            return current
        if room_id in self._actions:
            return None  # a leave is still under way; a later invite joins again
        if len(self.rooms) >= MAX_ROOMS:
            self._limit_hit("auth_focus_rooms")
            log.warning("focus: in %d rooms already; not joining %r", MAX_ROOMS, room_id)
            return None
        room = _Room(quiet_since=self._clock())
        self.rooms[room_id] = room
        self._action(room_id, self._enter(room_id, room, already))
        return room

    async def _enter(self, room_id: str, room: _Room, already: bool) -> None:
        try:
            if not already:
                await self._homeserver.join(room_id)
                log.info("focus: joined %r", room_id)
            state = await self._homeserver.state(room_id)
        except MembershipUnknown:
            if self.rooms.get(room_id) is room:
                del self.rooms[room_id]
            raise
        state = [{**event, "room_id": room_id} for event in state]
        joined = {
            change[1]
            for change in map(membership_change, state)
            if change is not None and change[2] == "join"
        }
        for event in state:
            change = call_membership(event)
            if change is not None and change[1][0] in joined:
                self._record(room, change[1], change[2])
        room.joined, room.quiet_since = True, self._clock()
        self._wake.set()

    async def _adopt_joined_rooms(self) -> None:
        for room_id in await self._homeserver.joined_rooms():
            if room_id not in self.rooms:
                self._join(room_id, already=True)

    async def _leave(self, room_id: str, room: _Room, why: str) -> None:
        try:
            if self._close_call is not None:
                await self._close_call(room_id, why)
            await self._homeserver.leave(room_id)
        finally:
            if self.rooms.get(room_id) is room:
                del self.rooms[room_id]
            if room.rejoin:
                asyncio.get_running_loop().call_soon(self._join, room_id)
        log.info("focus: left %r: %s", room_id, why)

    # --- timers --------------------------------------------------------------------------

    def tick(self) -> float:
        """Leave the rooms whose call has been empty too long; seconds until the next check."""
        now, now_ms = self._clock(), self._wall_ms()
        wait = MAX_IDLE_WAKE_SECONDS
        for room_id, room in list(self.rooms.items()):
            if not room.joined or room.leaving:
                continue
            if room.live(now_ms):
                room.had_call, room.quiet_since = True, None
                soonest = min(expiry for _user, expiry in room.memberships.values())
                wait = min(wait, max(0.0, (soonest - now_ms) / 1000.0))
                continue
            if room.quiet_since is None:
                room.quiet_since = now
            limit = (
                self.settings.empty_call_seconds if room.had_call else self.settings.no_call_seconds
            )
            left = room.quiet_since + limit - now
            if left > 0:
                wait = min(wait, left)
                continue
            why = (
                f"the call has been empty for {limit:g} s"
                if room.had_call
                else f"no call started within {limit:g} s"
            )
            room.leaving = True
            self._action(room_id, self._leave(room_id, room, why))
        return wait

    async def _run(self) -> None:
        while True:
            wait = self.tick()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait + 0.01):
                    await self._wake.wait()
