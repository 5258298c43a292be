"""Many nodes on one Redis (LiveKit's multi-node model): each room lives on one node.

`store` owns the Redis key layout and its atomic updates; `node` this node's heartbeat, its
rooms in Redis and where a room lives; `placement` which node takes a new room; `relay` and
`gateway` the signal relay from any node to the room's node; `api` RoomService on any node.
Without ``redis.address`` (or sentinels) none of this runs: one node keeps everything in
memory. This package knows neither rooms nor the data plane: the composition root (`sfu.app`)
hands it the node's stats and room names as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sfu.cluster.node import ClusterNode
from sfu.cluster.store import ClusterStore, NodeStats, connect
from sfu.config import Config

__all__ = ["ClusterNode", "NodeStats", "build", "node_address"]


def node_address(config: Config) -> str:
    """``host:port`` the other nodes reach this node's HTTP port on."""
    if config.node_address:
        return config.node_address
    host = config.rtc.node_ip or next((a for a in config.bind_addresses if a), "127.0.0.1")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{config.port}"


def build(
    config: Config,
    node_id: str,
    stats: Callable[[], NodeStats],
    local_rooms: Callable[[], Iterable[str]],
) -> ClusterNode:
    store = ClusterStore(connect(config.redis))
    return ClusterNode(store, node_id, node_address(config), config.keys, stats, local_rooms)
