"""Matrix room membership as the application service sees it, and its enforcement on the SFU.

Owns three things, all bounded:

* **who is joined**: MSC4502 ``is_joined`` where the homeserver answers it (a user of another
  server counts only while ours is in the room too), else the **joined members** read with the
  application service's ``as_token`` (``GET /_matrix/client/v3/rooms/{roomId}/joined_members``),
  cached and kept current by the ``m.room.member`` events the homeserver pushes
  (:meth:`Membership.apply`); both through :class:`~auth_service.homeserver.Homeserver`;
* the **identities issued** per (Matrix room, user): the LiveKit room and identity of every token
  handed out, so that a hashed MSC4195 identity can be traced back to its user;
* **enforcement**: when a user stops being joined (leave, kick, ban), ``RemoveParticipant`` for
  each of their identities, and a periodic **reconcile** that removes every SFU participant of a
  tracked LiveKit room whose user is not joined (``ListParticipants``); when the Matrix room is
  upgraded (an ``m.room.tombstone`` state event), or the last of our homeserver's users leaves
  it, ``DeleteRoom`` for its LiveKit rooms.

A membership event is trusted only for its own ``state_key``: the user it is about. Who sent it
(a kick or ban is sent by someone else) never matters. Legacy identities ``@user:server:DEVICE``
carry their user (a device ID has no ``:``), so legacy participants are traced even when their
token was issued before a restart; hashed ones only while their issuance is remembered. A token
issued just before a leave whose client connects after it is caught by the next reconcile.

The homeserver answering 403 or 404 for a room means the application service cannot see it
(no user of its namespace is in it): nobody counts as joined. Any other failure raises
:class:`MembershipUnknown`; the token endpoints then refuse (fail closed), enforcement and
reconcile leave everybody in place (fail open, as upstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from .homeserver import MembershipUnknown
from .sfu_client import ParticipantRemover, RoomServiceError
from .tokens import legacy_room_alias

log = logging.getLogger(__name__)

MAX_CACHED_ROOMS: Final = 10_000
CACHE_SECONDS: Final = 300.0
"""A cached member list is re-read this often even though pushed events keep it current."""
MAX_TRACKED_USERS: Final = 100_000
"""(Matrix room, user) pairs whose issued identities are remembered (least recent dropped)."""
MAX_IDENTITIES_PER_USER: Final = 32
"""Issued (LiveKit room, identity) pairs remembered per (Matrix room, user)."""
ENFORCE_TIMEOUT_SECONDS: Final = 10.0

LEFT: Final = frozenset({"leave", "ban"})


def server_of(user_id: str) -> str:
    """The server name of a user ID (``@local:server``)."""
    return user_id.partition(":")[2]


def legacy_owner(identity: str) -> str | None:
    """The user of a legacy identity ``@user:server:DEVICE`` (``None`` for any other)."""
    user, sep, device = identity.rpartition(":")
    if not sep or not device or not identity.startswith("@") or user.count(":") < 1:
        return None
    return user


class MemberSource(Protocol):
    """Who is joined to a room, as the homeserver says (:class:`~auth_service.homeserver.Homeserver`)."""

    async def joined_members(self, room_id: str) -> frozenset[str]:
        """The users joined to ``room_id``; raises :class:`MembershipUnknown`."""
        ...

    async def is_joined(
        self, room_id: str, *, user_id: str = "", server_name: str = ""
    ) -> bool | None:
        """MSC4502 ``is_joined``; ``None`` when the homeserver does not answer it."""
        ...


class Membership:
    """Joined members (cached, pushed), issued identities and their enforcement on the SFU."""

    def __init__(
        self,
        members: MemberSource,
        sfu: ParticipantRemover,
        *,
        server_name: str = "",
        clock: Callable[[], float] = time.monotonic,
        limit_hit: Callable[[str], None] = lambda _limit: None,
    ) -> None:
        self._limit_hit = limit_hit
        self._members = members
        self._server_name = server_name
        self._sfu = sfu
        self._clock = clock
        self._joined: OrderedDict[str, tuple[float, set[str]]] = OrderedDict()
        self._pushes = 0  # a fetch that raced a pushed event is not cached
        # room → user → issued (LiveKit room, identity); _order bounds the (room, user) pairs
        self._issued: dict[str, dict[str, OrderedDict[tuple[str, str], None]]] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- who is joined -------------------------------------------------------------------

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        """Whether ``user_id`` is joined to ``room_id``; raises :class:`MembershipUnknown`.

        MSC4502 first, where the homeserver answers it: a user of another server counts only
        while ours is in the room too (else its view of their membership may be stale).
        Otherwise the cached ``joined_members``, which the homeserver answers only while one
        of our users is in the room."""
        answer = await self._members.is_joined(room_id, user_id=user_id)
        if answer is not None:
            if answer and server_of(user_id) != self._server_name:
                ours = await self._members.is_joined(room_id, server_name=self._server_name)
                return bool(ours)
            return answer
        cached = self._joined.get(room_id)
        if cached is not None and cached[0] > self._clock():
            return user_id in cached[1]
        return user_id in await self._refresh(room_id)

    async def _refresh(self, room_id: str) -> frozenset[str]:
        pushes = self._pushes
        joined = await self._members.joined_members(room_id)
        if pushes == self._pushes:
            self._joined.pop(room_id, None)
            self._joined[room_id] = (self._clock() + CACHE_SECONDS, set(joined))
            while len(self._joined) > MAX_CACHED_ROOMS:
                self._limit_hit("auth_membership_rooms")
                self._joined.popitem(last=False)
        return joined

    # --- what was issued -----------------------------------------------------------------

    def issued(self, room_id: str, user_id: str, alias: str, identity: str) -> None:
        """Remember that ``user_id`` got a token for ``identity`` in LiveKit room ``alias``."""
        entries = self._issued.setdefault(room_id, {}).setdefault(user_id, OrderedDict())
        entries.pop((alias, identity), None)
        entries[(alias, identity)] = None
        while len(entries) > MAX_IDENTITIES_PER_USER:
            self._limit_hit("auth_issued_identities_per_user")
            entries.popitem(last=False)
        self._order.pop((room_id, user_id), None)
        self._order[(room_id, user_id)] = None
        while len(self._order) > MAX_TRACKED_USERS:
            self._limit_hit("auth_issued_identities")
            room, user = self._order.popitem(last=False)[0]
            self._forget(room, user)

    def _forget(self, room_id: str, user_id: str) -> OrderedDict[tuple[str, str], None]:
        users = self._issued.get(room_id, {})
        entries = users.pop(user_id, OrderedDict())
        if not users:
            self._issued.pop(room_id, None)
        self._order.pop((room_id, user_id), None)
        return entries

    def _aliases(self, room_id: str) -> set[str]:
        aliases = {legacy_room_alias(room_id)}
        for entries in self._issued.get(room_id, {}).values():
            aliases.update(alias for alias, _identity in entries)
        return aliases

    def _owners(self, room_id: str) -> dict[tuple[str, str], str]:
        """(LiveKit room, identity) → user, for every identity issued for ``room_id``."""
        return {
            entry: user
            for user, entries in self._issued.get(room_id, {}).items()
            for entry in entries
        }

    def tracked_rooms(self) -> list[str]:
        """The Matrix rooms some token was issued for (those reconcile looks at)."""
        return list(self._issued)

    # --- pushed events -------------------------------------------------------------------

    async def apply(self, events: Iterable[object]) -> None:
        """Take in the events of one application-service transaction."""
        left: list[tuple[str, str]] = []
        closed: list[str] = []
        for event in events:
            tombstoned = _tombstoned_room(event)
            if tombstoned is not None:
                closed.append(tombstoned)
                continue
            change = membership_change(event)
            if change is None:
                continue
            room_id, user_id, membership = change
            self._pushes += 1
            cached = self._joined.get(room_id)
            if membership == "join":
                if cached is not None:
                    cached[1].add(user_id)
            else:
                if cached is not None:
                    cached[1].discard(user_id)
                if membership in LEFT:
                    left.append((room_id, user_id))
        if left or closed:
            async with asyncio.timeout(ENFORCE_TIMEOUT_SECONDS):
                await asyncio.gather(
                    *(self.eject(room, user) for room, user in dict.fromkeys(left)),
                    *(self.close(room, "it was tombstoned") for room in dict.fromkeys(closed)),
                )
        local_leaves = {room for room, user in left if server_of(user) == self._server_name}
        if local_leaves - set(closed):
            async with asyncio.timeout(ENFORCE_TIMEOUT_SECONDS):
                await asyncio.gather(
                    *(self._unless_still_in(r) for r in local_leaves - set(closed))
                )

    async def _unless_still_in(self, room_id: str) -> None:
        """After one of our users left ``room_id``: if none is left, ``DeleteRoom``."""
        try:
            ours = await self._members.is_joined(room_id, server_name=self._server_name)
            if ours is None:
                joined = await self._refresh(room_id)
                ours = any(server_of(user) == self._server_name for user in joined)
        except MembershipUnknown as exc:
            log.warning("membership: cannot tell whether we are still in %r: %s", room_id, exc)
            return
        if not ours:
            await self.close(room_id, "our homeserver left it")

    async def close(self, room_id: str, why: str) -> None:
        """``DeleteRoom`` for every LiveKit room of ``room_id`` (upgraded, or we left it)."""
        aliases = self._aliases(room_id)
        for user in list(self._issued.get(room_id, {})):
            self._forget(room_id, user)
        self._joined.pop(room_id, None)
        for alias in aliases:
            try:
                await self._sfu.delete_room(alias)
            except RoomServiceError as exc:
                log.warning("membership: cannot delete %r: %s", alias, exc)
                continue
            log.info("membership: deleted %r: %r, %s", alias, room_id, why)

    async def eject(self, room_id: str, user_id: str) -> int:
        """Remove every SFU participant of ``user_id`` in the LiveKit rooms of ``room_id``."""
        # The issuance is kept: a token handed out just before the leave may still connect,
        # and reconcile then finds it.
        targets = set(self._issued.get(room_id, {}).get(user_id, ()))
        legacy = legacy_room_alias(room_id)
        try:
            present = await self._sfu.participant_identities(legacy)
        except RoomServiceError as exc:
            log.warning("membership: cannot list %r: %s", legacy, exc)
            present = frozenset()
        targets.update((legacy, ident) for ident in present if legacy_owner(ident) == user_id)
        return await self._remove(targets, f"{user_id!r} left {room_id!r}")

    async def _remove(self, targets: Iterable[tuple[str, str]], why: str) -> int:
        async def one(alias: str, identity: str) -> bool:
            try:
                removed = await self._sfu.remove_participant(alias, identity)
            except RoomServiceError as exc:
                log.warning("membership: cannot remove %r from %r: %s", identity, alias, exc)
                return False
            if removed:
                log.info("membership: removed %r from %r: %s", identity, alias, why)
            return removed

        results = await asyncio.gather(*(one(alias, ident) for alias, ident in targets))
        return sum(results)

    # --- the backstop --------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Remove SFU participants of tracked rooms whose users are not joined; the count."""
        removed = 0
        for room_id in self.tracked_rooms():
            try:
                joined = await self._refresh(room_id)
            except MembershipUnknown as exc:
                log.warning("membership: reconcile skips %r: %s", room_id, exc)
                continue
            owners = self._owners(room_id)
            targets: list[tuple[str, str]] = []
            for alias in self._aliases(room_id):
                try:
                    present = await self._sfu.participant_identities(alias)
                except RoomServiceError as exc:
                    log.warning("membership: reconcile cannot list %r: %s", alias, exc)
                    continue
                for identity in present:
                    owner = owners.get((alias, identity)) or legacy_owner(identity)
                    if owner is not None and owner not in joined:
                        targets.append((alias, identity))
            for user in {owners.get(t) or legacy_owner(t[1]) or "" for t in targets}:
                self._forget(room_id, user)
            removed += await self._remove(targets, f"not joined to {room_id!r}")
        return removed

    async def reconcile_forever(self, interval: float) -> None:
        """Run :meth:`reconcile` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("membership: reconcile failed")


def _tombstoned_room(event: object) -> str | None:
    """The room of an ``m.room.tombstone`` state event (the room was upgraded or closed)."""
    if not isinstance(event, dict) or event.get("type") != "m.room.tombstone":
        return None
    room_id = event.get("room_id")
    if event.get("state_key") != "" or not isinstance(room_id, str):
        return None
    return room_id


def membership_change(event: object) -> tuple[str, str, str] | None:
    """(room, user, membership) of an ``m.room.member`` event; ``None`` for anything else."""
    if not isinstance(event, dict) or event.get("type") != "m.room.member":
        return None
    room_id, user_id, content = event.get("room_id"), event.get("state_key"), event.get("content")
    if (
        not isinstance(room_id, str)
        or not isinstance(user_id, str)
        or not isinstance(content, dict)
    ):
        return None
    membership = content.get("membership")
    if not isinstance(membership, str) or not user_id.startswith("@"):
        return None
    return room_id, user_id, membership
