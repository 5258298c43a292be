"""sfu.cluster against a real redis-server: the registry's liveness, atomic placement claims,
release only by the owner, a dead node's rooms freed, the placement order, the relay header."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sfu.cluster import node_address
from sfu.cluster.node import ClusterNode, RouteError
from sfu.cluster.placement import choose_node
from sfu.cluster.store import ClusterStore, NodeStats, connect
from sfu.config import Config, RedisConfig
from tests.harness.redis import RedisServer, running_redis_server, running_sentinel

KEYS = {"key": "s" * 40}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[ClusterStore]:
    store = ClusterStore(connect(RedisConfig(address=redis_server.address)))
    try:
        yield store
    finally:
        await store.close()


def stats(node_id: str, **fields: object) -> NodeStats:
    return NodeStats(node_id, f"127.0.0.1:{1000 + len(node_id)}", **fields)  # type: ignore[arg-type]


async def test_claim_keeps_a_live_owner_and_takes_over_a_dead_one(store: ClusterStore) -> None:
    await store.publish(stats("A"))
    await store.publish(stats("B"))
    assert await store.claim("r", "A") == "A"
    assert await store.claim("r", "B") == "A"  # A is alive: it keeps the room
    assert await store.owner("r") == "A"
    await store.release("r", "B")  # not B's to release
    assert await store.owner("r") == "A"
    await store.declare_dead("A")
    assert await store.owner("r") is None
    assert await store.claim("r", "B") == "B"
    assert await store.owned("B") == {"r"}
    await store.release("r", "B")
    assert await store.owner("r") is None and await store.owned("B") == set()


async def test_a_silent_node_is_dead_and_its_rooms_are_free(store: ClusterStore) -> None:
    await store.publish(stats("A"))
    await store.claim("r1", "A")
    await store.client.pexpire("sfu:node:A", 50)  # as if its last heartbeat was 5 s ago
    await asyncio.sleep(0.2)
    assert await store.nodes() == []
    assert await store.client.hget("sfu:rooms", "r1") is None
    assert not await store.client.sismember("sfu:nodes", "A")


def test_placement_prefers_the_least_loaded_node_that_takes_rooms() -> None:
    nodes = [
        stats("A", participants=5),
        stats("B", participants=1),
        stats("C", draining=True),
        stats("D", cpu_load=0.95, max_cpu_load=0.8),
    ]
    assert choose_node(nodes, {}) == nodes[1]
    assert choose_node(nodes, {"B": 6}) == nodes[0]  # rooms placed count before stats say so
    assert choose_node([nodes[2]], {}) is None
    assert choose_node([nodes[3], nodes[0]], {}) == nodes[0]


async def test_route_places_once_and_fails_clearly_while_redis_is_away(
    redis_server: RedisServer,
) -> None:
    local: set[str] = set()

    def make(node_id: str) -> ClusterNode:
        store = ClusterStore(connect(RedisConfig(address=redis_server.address)))
        return ClusterNode(
            store, node_id, f"h:{len(node_id)}", KEYS, lambda: stats(node_id), lambda: local
        )

    a, b = make("A"), make("B")
    try:
        await a.store.client.config_set("appendonly", "no")
        await a.beat()
        await b.beat()
        # a fresh Redis: the placement waits until the nodes had time to re-announce rooms
        first, second = await asyncio.gather(
            a.route("r", may_create=True, wait_s=10), b.route("r", may_create=True, wait_s=10)
        )
        assert first.node_id == second.node_id
        assert first.local != second.local
        with pytest.raises(RouteError) as missing:
            await a.route("nope", may_create=False)
        assert missing.value.status == 404
        redis_server.stop()
        with pytest.raises(RouteError) as away:
            await a.route("other", may_create=True, wait_s=0.5)
        assert away.value.status == 503 and "Redis" in away.value.message
        local.add("mine")  # a room this node holds is served here even so
        assert (await a.route("mine", may_create=False, wait_s=0.5)).local
    finally:
        for node in (a, b):
            await node.store.close()


def test_relay_header_round_trip_and_forgery() -> None:
    node = ClusterNode(None, "A", "h:1", KEYS, lambda: stats("A"), list)  # type: ignore[arg-type]
    header = node.relay_header("10.0.0.7")["x-sfu-relay"]
    assert node.relayed_for(header) == "10.0.0.7"
    other = ClusterNode(None, "B", "h:2", {"key": "t" * 40}, lambda: stats("B"), list)  # type: ignore[arg-type]
    assert other.relayed_for(header) is None
    assert node.relayed_for("garbage") is None and node.relayed_for("") is None


def test_node_address_defaults() -> None:
    assert (
        node_address(Config(port=7880, rtc=Config().rtc.__class__(node_ip="10.1.2.3")))
        == "10.1.2.3:7880"
    )
    assert node_address(Config(port=7000, bind_addresses=("0.0.0.0",))) == "127.0.0.1:7000"
    assert node_address(Config(node_address="sfu-0.sfu:7880")) == "sfu-0.sfu:7880"


async def test_heartbeat_keeps_running_rooms_and_drops_unused_claims(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = {"running"}
    store = ClusterStore(connect(RedisConfig(address=redis_server.address)))
    node = ClusterNode(store, "A", "h:1", KEYS, lambda: stats("A"), lambda: local)
    try:
        await node.beat()
        assert await store.owner("running") == "A"
        await store.claim("never-started", "A")
        await store.client.delete("sfu:rooms")  # as after a Redis restart...
        await node.beat()
        assert await store.owner("running") == "A"  # ...re-announced at the next heartbeat
        await store.claim("never-started", "A")
        monkeypatch.setattr("sfu.cluster.node.CLAIM_GRACE_S", 0.0)
        await node.beat()
        await asyncio.sleep(0.01)
        await node.beat()
        assert await store.owner("never-started") is None
        local.discard("running")  # the room ended
        await node.beat()
        assert await store.owner("running") is None
    finally:
        await store.close()


async def test_through_a_sentinel(redis_server: RedisServer, tmp_path: Path) -> None:
    """redis.sentinel_*: the node finds the primary through a real sentinel."""
    with running_sentinel(tmp_path / "sentinel", redis_server, "sfu") as sentinel:
        config = RedisConfig(sentinel_master_name="sfu", sentinel_addresses=(sentinel,))
        store = ClusterStore(connect(config))
        try:
            await store.publish(stats("S"))
            assert [n.node_id for n in await store.nodes()] == ["S"]
        finally:
            await store.close()


async def test_an_owner_that_does_not_answer_is_waited_for_until_its_heartbeat_lapses(
    store: ClusterStore,
) -> None:
    node = ClusterNode(store, "A", "h:1", KEYS, lambda: stats("A"), set)
    await store.publish(stats("B"))
    await store.claim("r", "B")
    await store.client.pexpire("sfu:node:B", 600)  # B's last heartbeat lapses in 0.6 s
    route = await node.route("r", may_create=True)
    assert not route.local and route.node_id == "B"
    await node.owner_unreachable(route, refused=False, wait_s=3.0)
    assert await store.node("B") is None
    assert await store.owner("r") is None  # the next route places it again
