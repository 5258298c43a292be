"""Many nodes on one Redis: where 20 rooms go over 3 nodes, and join latency relayed vs direct.

A real ``redis-server`` and three SFU processes on loopback (the harness of
tests/integration/test_cluster.py). Prints numbers, asserts nothing.

1. **Placement.** 20 CreateRoom calls through one node, first with the three nodes idle, then
   with node 0 already holding a call of `--preload` participants (published in its stats
   within a heartbeat): the rooms per node, from the room→node map in Redis.
2. **Join latency.** A raw signalling client (tests/harness/rawsignal.py) joins a room that
   lives on node 0, `--joins` times directly and as many times through node 1 (relayed),
   interleaved: milliseconds from opening the WebSocket to the JoinResponse, median and p90.
3. **Per-message cost of the relay channel.** Ping → pong round trips of a joined session,
   direct vs relayed; beside them, the round trip of one message over Redis pub/sub (PUBLISH to
   a channel another connection subscribes to, which publishes it back): what each signal
   message would cost each way had the relay gone through Redis instead.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/cluster.py [--joins 40] [--preload 6]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from livekit import api
from livekit.protocol import rtc

from tests.harness.cluster import node_ids, redis_client, running_cluster
from tests.harness.rawsignal import RawSignal
from tests.harness.redis import RedisServer, running_redis_server
from tests.harness.sfu import SfuInstance


def _spread(redis_server: RedisServer, nodes: list[SfuInstance], rooms: list[str]) -> list[int]:
    addresses = node_ids(redis_server)
    with redis_client(redis_server) as client:
        owners = [client.hget("sfu:rooms", r) for r in rooms]
    by_port = collections.Counter(addresses[o].rsplit(":", 1)[1] for o in owners if o)
    return [by_port.get(str(n.port), 0) for n in nodes]


async def _create(node: SfuInstance, names: list[str]) -> None:
    lkapi = api.LiveKitAPI(node.http_url, node.api_key, node.api_secret, failover=False)
    try:
        for name in names:
            await lkapi.room.create_room(api.CreateRoomRequest(name=name))
    finally:
        await lkapi.aclose()


async def _join_ms(node: SfuInstance, identity: str, room: str) -> float:
    started = time.perf_counter()
    client = await RawSignal.connect(node.url, node.token(identity, room))
    await client.next("join")
    elapsed = (time.perf_counter() - started) * 1000
    await client.close()
    return elapsed


async def _pings(node: SfuInstance, identity: str, room: str, count: int) -> float:
    client = await RawSignal.connect(node.url, node.token(identity, room))
    await client.next("join")
    rtts = []
    for i in range(count):
        started = time.perf_counter()
        await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=i)))
        await client.next("pong_resp")
        rtts.append((time.perf_counter() - started) * 1000)
    await client.close()
    return statistics.median(rtts)


async def _pubsub_rtt(redis_server: RedisServer, count: int) -> float:
    a = aioredis.Redis(port=redis_server.port)
    b = aioredis.Redis(port=redis_server.port)
    sub_a, sub_b = a.pubsub(), b.pubsub()
    await sub_a.subscribe("back")
    await sub_b.subscribe("there")
    for sub in (sub_a, sub_b):
        await sub.get_message(timeout=1)

    async def echo() -> None:
        while True:
            message = await sub_b.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                await b.publish("back", message["data"])

    task = asyncio.create_task(echo())
    rtts = []
    payload = b"x" * 200  # a typical small signal message
    try:
        for _ in range(count):
            started = time.perf_counter()
            await a.publish("there", payload)
            while await sub_a.get_message(ignore_subscribe_messages=True, timeout=5) is None:
                pass
            rtts.append((time.perf_counter() - started) * 1000)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        for client in (a, b):
            await client.aclose()
    return statistics.median(rtts)


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"median {statistics.median(ordered):.1f} ms, p90 {p90:.1f} ms, n={len(ordered)}"


async def main(joins: int, preload: int) -> dict[str, object]:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        with running_redis_server(work / "redis") as redis_server:
            async with running_cluster(work, redis_server, 3) as nodes:
                await asyncio.sleep(3.5)  # a fresh Redis: placements wait for one heartbeat
                idle = [f"idle-{i}" for i in range(20)]
                await _create(nodes[0], idle)
                results["idle"] = _spread(redis_server, nodes, idle)
                print(f"20 rooms, idle nodes: rooms per node {results['idle']}")
                for name in idle:  # empty the map again
                    lkapi = api.LiveKitAPI(
                        nodes[0].http_url, nodes[0].api_key, nodes[0].api_secret, failover=False
                    )
                    with contextlib.suppress(Exception):
                        await lkapi.room.delete_room(api.DeleteRoomRequest(room=name))
                    await lkapi.aclose()
                # a call of `preload` participants on node 0 (joined directly, placed there)
                members = []
                for i in range(preload):
                    member = await RawSignal.connect(nodes[0].url, nodes[0].token(f"p{i}", "busy"))
                    await member.next("join")
                    members.append(member)
                busy_owner = _spread(redis_server, nodes, ["busy"])
                await asyncio.sleep(2.5)  # its participants reach the registry
                loaded = [f"loaded-{i}" for i in range(20)]
                await _create(nodes[1], loaded)
                results["loaded"] = _spread(redis_server, nodes, loaded)
                print(
                    f"20 rooms, a call of {preload} on node {busy_owner.index(1)}: "
                    f"rooms per node {results['loaded']}"
                )
                for member in members:
                    await member.close()

                # join latency: a room on node 0, joined directly and relayed through node 1
                room = "latency"
                await _create(nodes[0], [room])
                owner = _spread(redis_server, nodes, [room]).index(1)
                relay = (owner + 1) % 3
                direct_ms: list[float] = []
                relayed_ms: list[float] = []
                for i in range(joins):
                    direct_ms.append(await _join_ms(nodes[owner], f"d{i}", room))
                    relayed_ms.append(await _join_ms(nodes[relay], f"r{i}", room))
                results["join_direct_ms"] = statistics.median(direct_ms)
                results["ping_direct_ms"] = await _pings(nodes[owner], "pd", room, joins * 5)
                results["ping_relayed_ms"] = await _pings(nodes[relay], "pr", room, joins * 5)
                results["redis_pubsub_rtt_ms"] = await _pubsub_rtt(redis_server, joins * 5)
                results["join_relayed_ms"] = statistics.median(relayed_ms)
                print(f"join latency, direct to the room's node: {_summary(direct_ms)}")
                print(f"join latency, relayed by another node:   {_summary(relayed_ms)}")
                print(
                    f"ping round trip: direct {results['ping_direct_ms']:.2f} ms, relayed "
                    f"{results['ping_relayed_ms']:.2f} ms; one Redis pub/sub round trip "
                    f"{results['redis_pubsub_rtt_ms']:.2f} ms (medians)"
                )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--joins", type=int, default=40)
    parser.add_argument("--preload", type=int, default=6)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.joins, args.preload))))
    sys.exit(0)
