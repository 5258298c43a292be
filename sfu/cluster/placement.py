"""Where a new room goes: the least loaded live node that takes rooms.

A node is left out while it drains, and put last while its CPU load is above its own
``limits.max_cpu_load`` (it would refuse the participants anyway). Among the rest the load is
its participants plus the rooms placed on it (counted in Redis at once, so that rooms created
faster than the 2 s heartbeat still spread), then its CPU load, then its id (a stable order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sfu.cluster.store import NodeStats


def load_key(node: NodeStats, rooms_placed: int) -> tuple[bool, int, float, str]:
    overloaded = bool(node.max_cpu_load) and node.cpu_load > node.max_cpu_load
    return (
        overloaded,
        node.participants + max(rooms_placed, node.rooms),
        node.cpu_load,
        node.node_id,
    )


def choose_node(nodes: Sequence[NodeStats], rooms_placed: Mapping[str, int]) -> NodeStats | None:
    """The node for a new room, or None when every live node drains."""
    candidates = [n for n in nodes if not n.draining]
    if not candidates:
        return None
    return min(candidates, key=lambda n: load_key(n, rooms_placed.get(n.node_id, 0)))
