"""Many nodes on one Redis, against real processes: a real ``redis-server``, two or three SFU
nodes on loopback, LiveKit Python SDK clients.

- Participants joining one room through different nodes hear each other; the room lives on one
  node (the map in Redis), and RoomService through any node sees it and its participants.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from livekit import api

from tests.harness.cluster import Member, node_of, room_owner, running_cluster
from tests.harness.redis import running_redis_server

pytestmark = pytest.mark.slow

WAIT_S = 20.0


async def test_one_room_through_two_nodes(tmp_path: Path) -> None:
    room = f"cluster-{uuid.uuid4().hex[:8]}"
    with running_redis_server(tmp_path / "redis") as redis_server:
        async with running_cluster(tmp_path, redis_server, 2) as (a, b):
            alice, bob = Member("alice", 440.0), Member("bob", 660.0)
            try:
                await alice.join(a.url, a.token("alice", room), timeout_s=WAIT_S)
                await bob.join(b.url, b.token("bob", room), timeout_s=WAIT_S)
                await alice.hears(bob, timeout_s=WAIT_S)
                await bob.hears(alice, timeout_s=WAIT_S)
                owner = node_of(redis_server, [a, b], room)
                print(f"room {room} lives on node :{owner.port} ({room_owner(redis_server, room)})")
                for node in (a, b):
                    lkapi = api.LiveKitAPI(
                        node.http_url, node.api_key, node.api_secret, failover=False
                    )
                    try:
                        rooms = await lkapi.room.list_rooms(api.ListRoomsRequest())
                        assert [r.name for r in rooms.rooms].count(room) == 1, rooms
                        listed = await lkapi.room.list_participants(
                            api.ListParticipantsRequest(room=room)
                        )
                        assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
                    finally:
                        await lkapi.aclose()
            finally:
                await alice.leave()
                await bob.leave()
