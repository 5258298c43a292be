"""Many nodes on one Redis, against real processes: a real ``redis-server``, two or three SFU
nodes on loopback, LiveKit Python SDK clients.

- Participants joining one room through different nodes hear each other; the room lives on one
  node (the map in Redis), and RoomService through any node sees it and its participants; each
  webhook is sent once, by the room's node.
- kill -9 of the room's node: both clients are back in a call with each other within 10 s.
- SIGTERM of the room's node: no new joins there, the call goes on until drain_timeout, then
  moves to the other node.
- Redis stopped and started mid-call: the call never stops; joins fail clearly meanwhile and a
  new participant joins the same call after.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
from livekit import api
from livekit.protocol import models, rtc

from sfu.lifecycle import DRAINING_MESSAGE
from tests.harness.balancer import running_balancer
from tests.harness.cluster import (
    RATE,
    Member,
    node_of,
    redis_client,
    room_owner,
    running_cluster,
)
from tests.harness.rawsignal import RawSignal
from tests.harness.redis import running_redis_server
from tests.harness.sfu import SfuInstance
from tests.harness.tokens import new_api_key_pair
from tests.integration import test_webhooks as webhooks
from tests.integration.test_webhooks import receiver, until_events, verified

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
                assert [p.identity for p in alice.room.remote_participants.values()] == ["bob"]
                assert [p.identity for p in bob.room.remote_participants.values()] == ["alice"]
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


async def test_kill_of_the_rooms_node_both_back_in_a_call_within_10_s(tmp_path: Path) -> None:
    """Three nodes behind a round-robin balancer (no affinity); kill -9 of the room's node. The
    clients rejoin by themselves (a relayed one gets leave{RECONNECT} from its relay node, a
    direct one loses its socket and resumes, which is answered with leave{RECONNECT}); the room is
    placed again on a live node and both hear each other there, on new tracks."""
    room = f"cluster-kill-{uuid.uuid4().hex[:8]}"
    with running_redis_server(tmp_path / "redis") as redis_server:
        async with (
            running_cluster(tmp_path, redis_server, 3) as nodes,
            running_balancer([n.port for n in nodes]) as balancer,
        ):
            alice, bob = Member("alice", 440.0), Member("bob", 660.0)
            a, _, _ = nodes
            try:
                await alice.join(balancer.url, a.token("alice", room), timeout_s=WAIT_S)
                await bob.join(balancer.url, a.token("bob", room), timeout_s=WAIT_S)
                await alice.hears(bob, timeout_s=WAIT_S)
                await bob.hears(alice, timeout_s=WAIT_S)
                owner = node_of(redis_server, nodes, room)
                old_bob = frozenset(alice.audio_tracks("bob"))
                old_alice = frozenset(bob.audio_tracks("alice"))
                killed = time.monotonic()
                os.kill(owner.pid, signal.SIGKILL)
                backs = await asyncio.gather(
                    alice.hears(bob, timeout_s=15, old_tracks=old_bob),
                    bob.hears(alice, timeout_s=15, old_tracks=old_alice),
                )
                back = max(backs) - killed
                moved = node_of(redis_server, nodes, room)
                print(
                    f"kill -9 of :{owner.port}: both hear each other on :{moved.port} "
                    f"{back:.2f} s after the kill"
                )
                assert moved is not owner
                assert back < 10.0, back
            finally:
                await alice.leave()
                await bob.leave()


async def _refusal(url: str, token: str) -> tuple[int, str]:
    """The HTTP status and text a /rtc handshake is refused with."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        client = await RawSignal.connect(url, token)
        await client.close()
    response = refused.value.response
    return response.status_code, (response.body or b"").decode()


async def _readyz(node: SfuInstance) -> int:
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        return (await http.get(f"{node.http_url}/readyz")).status_code


async def test_sigterm_of_the_rooms_node_drains_then_the_call_moves(tmp_path: Path) -> None:
    """SIGTERM of the room's node (drain_timeout 6 s): /readyz 503, no new join there (direct or
    relayed), new rooms go to the other node, the call goes on; at the limit its members get
    leave{RECONNECT}, rejoin through the balancer and hear each other on the other node."""
    room = f"cluster-drain-{uuid.uuid4().hex[:8]}"
    with running_redis_server(tmp_path / "redis") as redis_server:
        async with (
            running_cluster(tmp_path, redis_server, 2, extra_config={"drain_timeout": 6}) as nodes,
            running_balancer([n.port for n in nodes]) as balancer,
        ):
            alice, bob = Member("alice", 440.0), Member("bob", 660.0)
            try:
                await alice.join(balancer.url, nodes[0].token("alice", room), timeout_s=WAIT_S)
                await bob.join(balancer.url, nodes[0].token("bob", room), timeout_s=WAIT_S)
                await alice.hears(bob, timeout_s=WAIT_S)
                owner = node_of(redis_server, nodes, room)
                (other,) = [n for n in nodes if n is not owner]
                old_bob = frozenset(alice.audio_tracks("bob"))
                old_alice = frozenset(bob.audio_tracks("alice"))
                os.kill(owner.pid, signal.SIGTERM)
                drained = time.monotonic()
                deadline = drained + 5
                while await _readyz(owner) == 200:
                    assert time.monotonic() < deadline, "still ready 5 s after SIGTERM"
                    await asyncio.sleep(0.05)
                assert await _refusal(owner.url, owner.token("carol", room)) == (
                    503,
                    DRAINING_MESSAGE,
                )
                assert await _refusal(other.url, other.token("carol", room)) == (
                    503,
                    DRAINING_MESSAGE,
                )
                fresh = f"{room}-new"
                dave = await RawSignal.connect(other.url, other.token("dave", fresh))
                await dave.next("join")
                await dave.close()
                assert node_of(redis_server, nodes, fresh) is other
                # the call goes on while the node drains
                heard = alice.samples_from("bob")
                await asyncio.sleep(2.0)
                assert alice.samples_from("bob") > heard + RATE, "the call stopped while draining"
                backs = await asyncio.gather(
                    alice.hears(bob, timeout_s=20, old_tracks=old_bob),
                    bob.hears(alice, timeout_s=20, old_tracks=old_alice),
                )
                moved = max(backs) - drained
                assert node_of(redis_server, nodes, room) is other
                assert await asyncio.wait_for(owner.process.wait(), 10) == 0
                print(
                    f"drain: the call moved to :{other.port} {moved:.2f} s after SIGTERM "
                    "(drain_timeout 6 s)"
                )
                assert moved > 5.5, moved  # not before the limit
            finally:
                await alice.leave()
                await bob.leave()


async def test_redis_restart_mid_call(tmp_path: Path) -> None:
    """Redis stopped mid-call: the call goes on, a join that needs Redis fails clearly (503, with
    the reason); Redis started again (empty): the owner re-announces its room and a new
    participant joining through the other node lands in the same call."""
    room = f"cluster-redis-{uuid.uuid4().hex[:8]}"
    with running_redis_server(tmp_path / "redis") as redis_server:
        async with running_cluster(tmp_path, redis_server, 2) as (a, b):
            alice, bob = Member("alice", 440.0), Member("bob", 660.0)
            carol = Member("carol", 880.0)
            try:
                await alice.join(a.url, a.token("alice", room), timeout_s=WAIT_S)
                await bob.join(b.url, b.token("bob", room), timeout_s=WAIT_S)
                await alice.hears(bob, timeout_s=WAIT_S)
                await bob.hears(alice, timeout_s=WAIT_S)
                redis_server.stop()
                stopped = time.monotonic()
                heard = (alice.samples_from("bob"), bob.samples_from("alice"))
                status, text = await _refusal(b.url, b.token("erin", f"{room}-other"))
                refused_after = time.monotonic() - stopped
                assert status == 503 and "Redis is unreachable" in text, (status, text)
                await asyncio.sleep(2.0)
                away = time.monotonic() - stopped
                for member, other, before in ((alice, bob, heard[0]), (bob, alice, heard[1])):
                    got = (member.samples_from(other.identity) - before) / RATE
                    assert got > away - 1.5, (
                        f"{member.identity}: {got:.1f} s of audio in {away:.1f} s"
                    )
                redis_server.start()
                restarted = time.monotonic()
                await carol.join(b.url, b.token("carol", room), timeout_s=WAIT_S)
                joined = time.monotonic() - restarted
                await carol.hears(alice, timeout_s=WAIT_S)
                await alice.hears(carol, timeout_s=WAIT_S)
                assert sorted(p.identity for p in carol.room.remote_participants.values()) == [
                    "alice",
                    "bob",
                ]
                print(
                    f"Redis away {away:.1f} s: the call went on, a join was refused after "
                    f"{refused_after:.2f} s; restarted: carol joined {joined:.2f} s later"
                )
            finally:
                for member in (alice, bob, carol):
                    await member.leave()


async def test_each_webhook_once_and_the_api_on_any_node(tmp_path: Path) -> None:
    """Both nodes send webhooks to one receiver: a room joined through both nodes and deleted
    through the node it does not live on gives one room_started, one event per participant and
    one room_finished, all from the owner."""
    room = f"cluster-hooks-{uuid.uuid4().hex[:8]}"
    keys = new_api_key_pair()
    webhooks.set_verifier(keys)
    async with receiver() as (url, received):
        hooks = {"webhook": {"api_key": keys[0], "urls": [url]}}
        with running_redis_server(tmp_path / "redis") as redis_server:
            async with running_cluster(
                tmp_path, redis_server, 2, extra_config=hooks, keys=keys
            ) as nodes:
                clients = []
                for identity, node in zip(("alice", "bob"), nodes, strict=True):
                    client = await RawSignal.connect(node.url, node.token(identity, room))
                    await client.next("join")
                    clients.append(client)
                owner = node_of(redis_server, nodes, room)
                (other,) = [n for n in nodes if n is not owner]
                lkapi = api.LiveKitAPI(
                    other.http_url, other.api_key, other.api_secret, failover=False
                )
                try:
                    await lkapi.room.delete_room(api.DeleteRoomRequest(room=room))
                finally:
                    await lkapi.aclose()
                for client in clients:
                    await client.close()
                await until_events(received, ["room_finished"])
                await asyncio.sleep(1.0)  # anything sent twice would arrive by now
                events = [e.event for e in verified(received) if e.room.name == room]
                assert events.count("room_started") == 1, events
                assert events.count("room_finished") == 1, events
                left = [
                    e.participant.identity
                    for e in verified(received)
                    if e.event in ("participant_left", "participant_connection_aborted")
                ]
                assert sorted(left) == ["alice", "bob"], events
                assert room_owner(redis_server, room) is None  # the map ends with the room


async def test_validate_anywhere_and_a_draining_relay_sends_its_clients_elsewhere(
    tmp_path: Path,
) -> None:
    """/rtc/validate on a node the room does not live on answers for the room (a token without
    roomCreate: success for a room elsewhere, 404 for none); SIGTERM of a node that relays a
    session: at drain_timeout its client gets leave{RECONNECT, SERVER_SHUTDOWN}, the node exits 0
    and the room's node keeps the rest of the call."""
    room = f"cluster-relay-{uuid.uuid4().hex[:8]}"
    with running_redis_server(tmp_path / "redis") as redis_server:
        async with running_cluster(
            tmp_path, redis_server, 2, extra_config={"drain_timeout": 1}
        ) as nodes:
            lkapi = api.LiveKitAPI(
                nodes[0].http_url, nodes[0].api_key, nodes[0].api_secret, failover=False
            )
            try:
                await lkapi.room.create_room(api.CreateRoomRequest(name=room))
            finally:
                await lkapi.aclose()
            owner = node_of(redis_server, nodes, room)
            (relay,) = [n for n in nodes if n is not owner]
            first = await RawSignal.connect(owner.url, owner.token("alice", room))
            await first.next("join")
            bob = await RawSignal.connect(relay.url, relay.token("bob", room))
            await bob.next("join")
            async with httpx.AsyncClient(timeout=WAIT_S) as http:
                for name, expected in ((room, (200, "success")), (f"{room}-none", (404, None))):
                    token = relay.token("carol", name, room_create=False)
                    answer = await http.get(
                        f"{relay.http_url}/rtc/validate", params={"access_token": token}
                    )
                    assert answer.status_code == expected[0], answer.text
                    assert expected[1] is None or answer.text == expected[1]
            os.kill(relay.pid, signal.SIGTERM)
            leave = (await bob.next("leave", timeout_s=10)).response.leave
            assert leave.action == rtc.LeaveRequest.Action.RECONNECT, leave
            assert leave.reason == models.DisconnectReason.SERVER_SHUTDOWN, leave
            assert await asyncio.wait_for(relay.process.wait(), 10) == 0
            await first.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=7)))
            assert (await first.next("pong_resp")).response.pong_resp.last_ping_timestamp == 7
            await bob.close()
            await first.close()


async def test_redis_frozen_longer_than_a_node_lifetime(tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) for 7 s, longer than a node's 5 s lifetime: when it thaws every
    node's entry has lapsed, live or not. A join through the other node right after must still
    land in the running room on its node (the placement waits until the nodes re-announced)."""
    room = f"cluster-freeze-{uuid.uuid4().hex[:8]}"
    with running_redis_server(tmp_path / "redis") as redis_server:
        async with running_cluster(tmp_path, redis_server, 2) as nodes:
            lkapi = api.LiveKitAPI(
                nodes[0].http_url, nodes[0].api_key, nodes[0].api_secret, failover=False
            )
            try:
                await lkapi.room.create_room(api.CreateRoomRequest(name=room))
            finally:
                await lkapi.aclose()
            owner = node_of(redis_server, nodes, room)
            (other,) = [n for n in nodes if n is not owner]
            alice = await RawSignal.connect(owner.url, owner.token("alice", room))
            await alice.next("join")
            redis_server.pause()
            try:
                await asyncio.sleep(7.0)
            finally:
                redis_server.resume()
            # the entries lapsed while it was frozen; the heartbeats the nodes had queued may
            # land first, so take them out again: the state of a thaw before the next heartbeat
            with redis_client(redis_server) as client:
                client.delete(*[f"sfu:node:{n}" for n in client.smembers("sfu:nodes")])
            carol = await RawSignal.connect(other.url, other.token("carol", room))
            join = (await carol.next("join", timeout_s=15)).response.join
            assert [p.identity for p in join.other_participants] == ["alice"], join
            assert node_of(redis_server, nodes, room) is owner
            await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=9)))
            assert (await alice.next("pong_resp")).response.pong_resp.last_ping_timestamp == 9
            await carol.close()
            await alice.close()
