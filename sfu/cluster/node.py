"""This node's part in the cluster: its heartbeat, its rooms in Redis, and where a room lives.

`ClusterNode.run` publishes the node's stats every `HEARTBEAT_S` (dead after `NODE_TTL_MS` of
silence) and claims again every room the node holds, so that a Redis that restarted empty
knows them again within one heartbeat; a room that ended is released at once (`room_ended`).
A Redis outage never touches a running call: the heartbeat logs it once and carries on.

A room placed here that never starts (its join was refused) is released after
`CLAIM_GRACE_S`.

`route(room)` answers where a joiner or an API call for ``room`` goes: here, or another live
node (with its address). A room with no live owner is placed (`sfu.cluster.placement`) and
claimed atomically; a placement waits until the Redis has been up for one heartbeat and a
margin (after a restart every live node has re-announced its rooms by then), and as long after
this node last failed to reach Redis (a Redis frozen or cut off from every node for more than
`NODE_TTL_MS` lets every node's entry lapse, live or not). While Redis is
away, a room this node holds is still served here; anything else waits up to `ROUTE_WAIT_S`
and then fails with 503 and a message that says so.

Relayed requests carry `RELAY_HEADER`, a short-lived JWT signed with one of the API keys every
node shares: the client's address, and that the request must be served where it arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import jwt

from sfu.cluster.placement import choose_node
from sfu.cluster.store import HEARTBEAT_S, NODE_TTL_MS, ClusterStore, NodeStats, RedisError

log = logging.getLogger(__name__)

RELAY_HEADER = "x-sfu-relay"
#: seconds a relay header is valid (it is made for one request)
RELAY_TOKEN_TTL_S = 30
#: seconds a join or API call waits for Redis (or for a dead owner to be known) before failing
ROUTE_WAIT_S = 3.0
#: a placement waits until Redis has been up this long (a heartbeat and a margin)
SETTLE_S = HEARTBEAT_S + 1.0
#: seconds a room placed on this node may wait for its first join before the claim is released
CLAIM_GRACE_S = 30.0
REDIS_AWAY = "the cluster's Redis is unreachable: cannot place the room now, try again"


class RouteError(Exception):
    """No node can take the request: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Route:
    """Where a room lives: here (`local`), or the node `node_id` at `address`."""

    node_id: str
    address: str
    local: bool


class ClusterNode:
    def __init__(
        self,
        store: ClusterStore,
        node_id: str,
        address: str,
        keys: Mapping[str, str],
        stats: Callable[[], NodeStats],
        local_rooms: Callable[[], Iterable[str]],
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.address = address
        self._keys = dict(keys)
        self._stats = stats
        self._local_rooms = local_rooms
        #: the rooms this node held at the last heartbeat (released when they are gone)
        self._held: set[str] = set()
        self._redis_ok = True
        #: when this node last failed to reach Redis (monotonic; -inf: never)
        self._redis_failed_at = float("-inf")
        #: when this node's stats last reached Redis (monotonic)
        self._published_at = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._conflicts: set[str] = set()
        #: set once the node gave its rooms up (draining or stopping): no more re-claims
        self._released = False
        #: rooms placed here that do not run here yet, and since when (monotonic)
        self._unused: dict[str, float] = {}

    # -- heartbeat ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Heartbeat until cancelled."""
        while True:
            await self.beat()
            await asyncio.sleep(HEARTBEAT_S)

    async def beat(self) -> None:
        try:
            await self.store.publish(self._stats())
            now = time.monotonic()
            if now - self._published_at > NODE_TTL_MS / 1000 - HEARTBEAT_S:
                # this node's entry may have lapsed (Redis frozen, or slow to answer): so may
                # the others', of live nodes; routing waits as after an outage
                self._redis_failed_at = now
            self._published_at = now
            local = set() if self._released else set(self._local_rooms())
            conflicts = await self.store.reassert(local, self.node_id)
            for room, owner in conflicts.items():
                if room not in self._conflicts:
                    log.warning("room %s runs here but node %s owns it in Redis", room, owner)
            self._conflicts = set(conflicts)
            for room in self._held - local:
                await self.store.release(room, self.node_id)
            self._held = local
            await self._release_unused_claims(local)
        except RedisError as exc:
            self._redis_failed_at = time.monotonic()
            if self._redis_ok:
                log.warning("Redis unreachable (%s): running calls go on; new rooms wait", exc)
            self._redis_ok = False
            return
        if not self._redis_ok:
            log.info(
                "Redis reachable again: node %s and its %d rooms re-announced",
                self.node_id,
                len(local),
            )
        self._redis_ok = True

    async def _release_unused_claims(self, local: set[str]) -> None:
        """A room placed here whose first join or CreateRoom never came (refused, or the client
        went away) is released after `CLAIM_GRACE_S`."""
        now = time.monotonic()
        unused = await self.store.owned(self.node_id) - local
        self._unused = {room: self._unused.get(room, now) for room in unused}
        for room, since in list(self._unused.items()):
            if now - since > CLAIM_GRACE_S:
                await self.store.release(room, self.node_id)
                del self._unused[room]

    def room_ended(self, room: str) -> None:
        """The room closed on this node: remove it from Redis now (and at the next heartbeat,
        should Redis be away now)."""
        task = asyncio.ensure_future(self._release(room))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, room: str) -> None:
        if room in set(self._local_rooms()):
            return  # a new room of that name already
        try:
            await self.store.release(room, self.node_id)
            self._held.discard(room)
        except RedisError:
            pass

    async def release_all(self) -> None:
        """Give up every room (the node drains or stops): the next join places them again."""
        self._released = True
        with contextlib.suppress(RedisError):
            for room in (
                set(self._local_rooms()) | self._held | await self.store.owned(self.node_id)
            ):
                await self.store.release(room, self.node_id)
        self._held = set()

    async def stop(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.release_all()
        with contextlib.suppress(RedisError):
            await self.store.withdraw(self.node_id)
        await self.store.close()

    # -- routing ------------------------------------------------------------------------------
    async def route(self, room: str, *, may_create: bool, wait_s: float = ROUTE_WAIT_S) -> Route:
        """Where ``room`` lives, placing it when it has no live owner and `may_create`.
        Raises RouteError (404: no such room; 503: Redis away, or no node takes rooms)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                route = await self._route_once(room, may_create=may_create)
            except RedisError:
                route = None
                self._redis_failed_at = time.monotonic()
                if room in set(self._local_rooms()):
                    return self.here
                if time.monotonic() >= deadline:
                    raise RouteError(503, REDIS_AWAY) from None
            if route is not None:
                return route
            await asyncio.sleep(0.2)

    @property
    def here(self) -> Route:
        return Route(self.node_id, self.address, local=True)

    async def _route_once(self, room: str, *, may_create: bool) -> Route | None:
        """A route, or None to ask again shortly."""
        owner = await self.store.owner(room)
        if owner is None:
            if room in set(self._local_rooms()):
                owner = await self.store.claim(room, self.node_id)
            elif (
                time.monotonic() - self._redis_failed_at < SETTLE_S
                or await self.store.uptime_s() < SETTLE_S
            ):
                # Redis was away or restarted: its node entries may have lapsed under live
                # nodes; they re-announce themselves and their rooms within a heartbeat
                return None
            elif not may_create:
                raise RouteError(404, "requested room does not exist")
            else:
                nodes = await self.store.nodes()
                counts = await self.store.room_counts(n.node_id for n in nodes)
                chosen = choose_node(nodes, counts)
                if chosen is None:
                    raise RouteError(503, "no node takes new rooms (all are draining)")
                owner = await self.store.claim(room, chosen.node_id)
                if owner == chosen.node_id:
                    log.info("room %s placed on node %s", room, owner)
        if owner == self.node_id:
            return self.here
        stats = await self.store.node(owner)
        if stats is None:
            return None  # died meanwhile
        return Route(owner, stats.address, local=False)

    async def owner_unreachable(
        self, route: Route, *, refused: bool, wait_s: float = ROUTE_WAIT_S
    ) -> None:
        """The owner did not take a connection. Refused: nothing listens on its address, so it
        is dead now. Otherwise wait (bounded) for its heartbeat to lapse."""
        try:
            if refused:
                log.info(
                    "node %s refused a connection on %s: forgotten", route.node_id, route.address
                )
                await self.store.declare_dead(route.node_id)
                return
            deadline = time.monotonic() + wait_s
            for _ in range(int(wait_s / 0.25) + 1):  # its stats lapse NODE_TTL_MS after its last
                if time.monotonic() >= deadline or await self.store.node(route.node_id) is None:
                    return
                await asyncio.sleep(0.25)
        except RedisError:
            raise RouteError(503, REDIS_AWAY) from None

    async def live_nodes(self) -> list[NodeStats]:
        try:
            return await self.store.nodes()
        except RedisError:
            raise RouteError(503, REDIS_AWAY) from None

    # -- relay header -------------------------------------------------------------------------
    def relay_header(self, client_address: str) -> dict[str, str]:
        key, secret = next(iter(self._keys.items()))
        now = int(time.time())
        claims = {
            "iss": key,
            "sub": "relay",
            "via": self.node_id,
            "addr": client_address,
            "nbf": now - 5,
            "exp": now + RELAY_TOKEN_TTL_S,
        }
        return {RELAY_HEADER: jwt.encode(claims, secret, algorithm="HS256")}

    def relayed_for(self, header: str) -> str | None:
        """The client address a valid relay header states, or None."""
        if not header:
            return None
        try:
            key = jwt.decode(header, options={"verify_signature": False}).get("iss")
            secret = self._keys.get(key) if isinstance(key, str) else None
            if secret is None:
                return None
            claims = jwt.decode(header, secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        address = claims.get("addr")
        if claims.get("sub") != "relay" or not isinstance(address, str):
            return None
        return address


__all__ = ["NODE_TTL_MS", "RELAY_HEADER", "ClusterNode", "Route", "RouteError"]
