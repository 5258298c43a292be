"""The cluster's state in Redis: the key layout, the connection, and the atomic updates.

Keys (all under ``sfu:``):

- ``sfu:node:<id>``: one node's stats (JSON, `NodeStats`), written every `HEARTBEAT_S` with a
  lifetime of `NODE_TTL_MS`: a node is dead once it has been silent that long. Redis's clock
  decides, so the nodes' clocks need not agree.
- ``sfu:nodes``: the set of node ids that announced themselves (an id whose stats key is gone
  is dead; whoever sees one removes it and its rooms).
- ``sfu:rooms``: a hash room name → owner node id. No lifetime of its own: an entry is valid
  while its owner is alive, is deleted by the owner when the room ends, and is taken over by the
  next placement once the owner is dead. Nothing here can expire under a running room, or keep a
  finished room.
- ``sfu:node_rooms:<id>``: the room names a node owns (its placement count, and what to clean
  up when it dies).

Every change to ``sfu:rooms`` is a Lua script, so that two nodes placing one room at once agree
on one owner.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sfu.config import RedisConfig

__all__ = ["HEARTBEAT_S", "NODE_TTL_MS", "ClusterStore", "NodeStats", "RedisError"]

log = logging.getLogger(__name__)

#: seconds between two stats updates of a node (LiveKit's StatsUpdateInterval)
HEARTBEAT_S = 2.0
#: a node silent this long is dead (LiveKit's AvailableSeconds)
NODE_TTL_MS = 5000
#: seconds one Redis command may take before the node treats Redis as away
COMMAND_TIMEOUT_S = 1.0

NODES = "sfu:nodes"
ROOMS = "sfu:rooms"


def node_key(node_id: str) -> str:
    return f"sfu:node:{node_id}"


def node_rooms_key(node_id: str) -> str:
    return f"sfu:node_rooms:{node_id}"


@dataclass(frozen=True)
class NodeStats:
    """What a node says of itself every heartbeat."""

    node_id: str
    #: ``host:port`` of its HTTP port, for the relay and RoomService forwarding
    address: str
    #: its process's share of one core over the last seconds (`sfu.cpuload`)
    cpu_load: float = 0.0
    rooms: int = 0
    participants: int = 0
    sessions: int = 0
    #: RTP packets it has sent since it started
    packets_out: int = 0
    #: media worker processes (1: the node's own event loop)
    workers: int = 1
    draining: bool = False
    #: the refuse-above CPU load (``limits.max_cpu_load``; 0 = none)
    max_cpu_load: float = 0.0

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> NodeStats | None:
        try:
            raw = json.loads(text)
            return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (ValueError, TypeError, KeyError):
            return None


# KEYS: none (Redis Cluster is not supported: one Redis, or a Sentinel-managed primary).
# ARGV[1] room, ARGV[2] the node to own it. Returns the owner after the call: the current one if
# it is alive, else ARGV[2] (which then owns it).
_CLAIM = """
local current = redis.call('HGET', 'sfu:rooms', ARGV[1])
if current and current ~= ARGV[2] then
  if redis.call('EXISTS', 'sfu:node:' .. current) == 1 then return current end
  redis.call('SREM', 'sfu:node_rooms:' .. current, ARGV[1])
end
redis.call('HSET', 'sfu:rooms', ARGV[1], ARGV[2])
redis.call('SADD', 'sfu:node_rooms:' .. ARGV[2], ARGV[1])
return ARGV[2]
"""

# ARGV[1] room, ARGV[2] its owner: removed only if that node still owns it.
_RELEASE = """
redis.call('SREM', 'sfu:node_rooms:' .. ARGV[2], ARGV[1])
if redis.call('HGET', 'sfu:rooms', ARGV[1]) == ARGV[2] then
  redis.call('HDEL', 'sfu:rooms', ARGV[1])
  return 1
end
return 0
"""

# ARGV[1] a node id whose stats key is gone: its rooms and its membership are removed.
_FORGET = """
if redis.call('EXISTS', 'sfu:node:' .. ARGV[1]) == 1 then return 0 end
for _, room in ipairs(redis.call('SMEMBERS', 'sfu:node_rooms:' .. ARGV[1])) do
  if redis.call('HGET', 'sfu:rooms', room) == ARGV[1] then redis.call('HDEL', 'sfu:rooms', room) end
end
redis.call('DEL', 'sfu:node_rooms:' .. ARGV[1])
redis.call('SREM', 'sfu:nodes', ARGV[1])
return 1
"""


def connect(config: RedisConfig) -> aioredis.Redis:
    """A client for the configured Redis (or the primary its sentinels name); connects lazily."""
    common: dict[str, Any] = {
        "db": config.db,
        "username": config.username or None,
        "password": config.password or None,
        "ssl": config.use_tls,
        "socket_timeout": COMMAND_TIMEOUT_S,
        "socket_connect_timeout": COMMAND_TIMEOUT_S,
        "decode_responses": True,
        # one quick retry (a connection that a Redis restart left stale), then the error: the
        # heartbeat tries again in 2 s and a join waits or fails, neither must hang in backoff
        "retry": Retry(NoBackoff(), 1),
    }
    if config.sentinel_addresses:
        sentinels = [_host_port(a) for a in config.sentinel_addresses]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            sentinels,
            sentinel_kwargs={
                "username": config.sentinel_username or None,
                "password": config.sentinel_password or None,
                "socket_timeout": COMMAND_TIMEOUT_S,
                "socket_connect_timeout": COMMAND_TIMEOUT_S,
                "ssl": config.use_tls,
            },
            **common,
        )
        return cast(aioredis.Redis, sentinel.master_for(config.sentinel_master_name))
    host, port = _host_port(config.address)
    return aioredis.Redis(host=host, port=port, **common)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterStore:
    """The node's reads and writes of the cluster state; every method may raise RedisError."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)

    async def close(self) -> None:
        await self.client.aclose()

    # -- nodes --------------------------------------------------------------------------------
    async def publish(self, stats: NodeStats) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(node_key(stats.node_id), stats.encode(), px=NODE_TTL_MS)
            pipe.sadd(NODES, stats.node_id)
            await pipe.execute()

    async def withdraw(self, node_id: str) -> None:
        """This node leaves: its stats go at once (its rooms were released before)."""
        await self.client.delete(node_key(node_id))
        await self._forget(args=[node_id])

    async def node(self, node_id: str) -> NodeStats | None:
        text = cast(str | None, await self.client.get(node_key(node_id)))
        return NodeStats.decode(text) if text else None

    async def nodes(self) -> list[NodeStats]:
        """The live nodes; the dead ones seen on the way are forgotten (with their rooms)."""
        ids = sorted(cast(set[str], await self.client.smembers(NODES)))
        if not ids:
            return []
        texts = cast(list[str | None], await self.client.mget([node_key(i) for i in ids]))
        alive = []
        for node_id, text in zip(ids, texts, strict=True):
            stats = NodeStats.decode(text) if text else None
            if stats is None:
                await self._forget(args=[node_id])
                log.info(
                    "node %s is gone (silent for %d ms): its rooms are free", node_id, NODE_TTL_MS
                )
            else:
                alive.append(stats)
        return alive

    async def declare_dead(self, node_id: str) -> None:
        """A node that refused a connection on its own address is not serving: forget it now
        rather than after `NODE_TTL_MS` of silence."""
        await self.client.delete(node_key(node_id))
        await self._forget(args=[node_id])

    async def room_counts(self, node_ids: Iterable[str]) -> dict[str, int]:
        ids = list(node_ids)
        async with self.client.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.scard(node_rooms_key(node_id))
            counts = await pipe.execute()
        return {i: int(c) for i, c in zip(ids, counts, strict=True)}

    async def uptime_s(self) -> int:
        """Seconds since the Redis server started (a restarted Redis has lost the registry)."""
        info = await self.client.info("server")
        return int(info.get("uptime_in_seconds", 0))

    # -- rooms --------------------------------------------------------------------------------
    async def owner(self, room: str) -> str | None:
        """The room's owner if that node is alive (None if the room has none, or a dead one)."""
        owner = cast(str | None, await self.client.hget(ROOMS, room))
        if owner is None:
            return None
        return owner if await self.client.exists(node_key(owner)) else None

    async def claim(self, room: str, node_id: str) -> str:
        """Make `node_id` the owner unless a live node owns the room; returns the owner."""
        return cast(str, await self._claim(args=[room, node_id]))

    async def reassert(self, rooms: Iterable[str], node_id: str) -> dict[str, str]:
        """Claim each of this node's rooms again (after a Redis restart they are gone); returns
        the rooms another live node owns instead."""
        names = list(rooms)
        if not names:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for room in names:
                await self._claim(args=[room, node_id], client=pipe)
            owners = await pipe.execute()
        return {r: o for r, o in zip(names, owners, strict=True) if o != node_id}

    async def release(self, room: str, node_id: str) -> None:
        await self._release(args=[room, node_id])

    async def owned(self, node_id: str) -> set[str]:
        return cast(set[str], await self.client.smembers(node_rooms_key(node_id)))
