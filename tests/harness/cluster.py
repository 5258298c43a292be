"""Several real SFU nodes on one real ``redis-server``, on loopback, and SDK call members.

`running_cluster(workdir, redis, n)` starts `n` SFU processes (`tests.harness.sfu.running_sfu`)
sharing one API key and ``redis.address``; each may be killed by the test (``expect_exit``).
`Member` is one LiveKit Python SDK participant that publishes a sine tone (audio only: the
machine is small) and collects what the others publish. `room_owner` reads the room→node map
straight from Redis.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis

from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher, dominant_frequency
from tests.harness.redis import RedisServer
from tests.harness.sfu import SfuInstance, running_sfu
from tests.harness.tokens import new_api_key_pair

RATE = 48000


@contextlib.asynccontextmanager
async def running_cluster(
    workdir: Path,
    redis_server: RedisServer,
    nodes: int,
    *,
    extra_config: dict[str, Any] | None = None,
    expect_log_errors: tuple[str, ...] = (),
    keys: tuple[str, str] | None = None,
) -> AsyncIterator[list[SfuInstance]]:
    api_key, api_secret = keys or new_api_key_pair()
    config = {"redis": {"address": redis_server.address}, **(extra_config or {})}
    async with contextlib.AsyncExitStack() as stack:
        instances = [
            await stack.enter_async_context(
                running_sfu(
                    workdir / f"node{i}",
                    api_key=api_key,
                    api_secret=api_secret,
                    extra_config=config,
                    expect_exit=True,
                    expect_log_errors=expect_log_errors,
                )
            )
            for i in range(nodes)
        ]
        yield instances


def redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True, socket_timeout=2)


def room_owner(server: RedisServer, room: str) -> str | None:
    with redis_client(server) as client:
        owner = client.hget("sfu:rooms", room)
    return owner if isinstance(owner, str) else None


def node_ids(server: RedisServer) -> dict[str, str]:
    """node id → its address, for the live nodes."""
    out: dict[str, str] = {}
    with redis_client(server) as client:
        for node_id in client.smembers("sfu:nodes"):
            import json

            text = client.get(f"sfu:node:{node_id}")
            if isinstance(text, str):
                out[node_id] = json.loads(text)["address"]
    return out


def node_of(server: RedisServer, nodes: list[SfuInstance], room: str) -> SfuInstance:
    """The SFU instance that owns `room` (by its address in the registry)."""
    owner = room_owner(server, room)
    assert owner is not None, f"room {room} has no owner in Redis"
    address = node_ids(server)[owner]
    (instance,) = [n for n in nodes if address.endswith(f":{n.port}")]
    return instance


class Member(CollectingSubscriber):
    """A call member: publishes a tone of its own and collects the others' tracks."""

    def __init__(self, identity: str, tone_hz: float) -> None:
        super().__init__(identity, sample_rate=RATE, keep_frames=False)
        self.tone_hz = tone_hz
        self.publisher = SyntheticPublisher(identity, tone_hz=tone_hz, sample_rate=RATE)
        self.publisher.room = self.room  # one SDK room: publish on it, collect on it

    async def join(self, url: str, token: str, *, timeout_s: float = 20.0) -> None:
        await self.connect(url, token, timeout_s=timeout_s)
        await self.publisher.publish(video=False, audio=True, timeout_s=timeout_s)

    def samples_from(self, identity: str) -> int:
        """Samples received from `identity` so far, over all its tracks."""
        return sum(c.samples_total for c in self.audio.values() if c.participant == identity)

    def audio_tracks(self, identity: str) -> set[str]:
        return {sid for sid, c in self.audio.items() if c.participant == identity}

    async def hears(
        self, other: Member, *, timeout_s: float = 20.0, old_tracks: frozenset[str] = frozenset()
    ) -> float:
        """Wait until half a second of `other`'s audio arrived on a track not in `old_tracks`,
        then until 1.5 s, and check that the last second's dominant frequency is its tone.
        Returns when (monotonic) the first half second was there: the call was back."""

        def fresh(seconds: float) -> list[str]:
            return [
                sid
                for sid, c in self.audio.items()
                if c.participant == other.identity
                and sid not in old_tracks
                and c.samples_total >= RATE * seconds
            ]

        await self.wait_until(
            lambda: bool(fresh(0.5)), timeout_s=timeout_s, what=f"audio from {other.identity}"
        )
        back = time.monotonic()
        await self.wait_until(
            lambda: bool(fresh(1.5)), timeout_s=timeout_s, what=f"1.5 s from {other.identity}"
        )
        samples = self.audio[fresh(1.5)[0]].last_seconds(1.0)
        frequency = dominant_frequency(samples, RATE)
        assert abs(frequency - other.tone_hz) < 5, (self.identity, other.identity, frequency)
        return back

    async def leave(self, *, timeout_s: float = 10.0) -> None:
        await self.publisher.leave(timeout_s=timeout_s)
        await super().leave(timeout_s=timeout_s)
