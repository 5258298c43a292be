"""LiveKit webhooks from the real SFU for a whole call's life, verified with `livekit-api`'s
`WebhookReceiver`, in order; a receiver that never answers delays neither the other receiver
nor the call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from aiohttp import web
from livekit import api
from livekit import rtc as lk
from livekit.protocol import models

from tests.harness.lkclient import SyntheticPublisher
from tests.harness.sfu import free_tcp_port, running_sfu

WAIT = 20.0
ROOM = "hooks"


@contextlib.asynccontextmanager
async def receiver(path: str = "/hook") -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP server on loopback that records (body, Authorization) of every POST."""
    received: list[tuple[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.text(), request.headers.get("Authorization", "")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(path, hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}{path}", received
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server that accepts every connection and never answers."""
    connections: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writers.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", connections
    finally:
        for writer in writers:
            writer.close()
        server.close()


async def until_events(received: list[tuple[str, str]], names: list[str]) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            seen = [e.event for e in verified(received)]
            if all(name in seen for name in names):
                return
            await asyncio.sleep(0.05)


_RECEIVER: api.WebhookReceiver | None = None


def set_verifier(keys: tuple[str, str]) -> None:
    """Verify the received webhooks with this key pair."""
    global _RECEIVER
    _RECEIVER = api.WebhookReceiver(api.TokenVerifier(*keys))


def verified(received: list[tuple[str, str]]) -> list[api.WebhookEvent]:
    assert _RECEIVER is not None
    return [_RECEIVER.receive(body, auth) for body, auth in received]


async def test_webhooks_for_a_whole_call(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    global _RECEIVER
    api_key, api_secret = sfu_keys
    _RECEIVER = api.WebhookReceiver(api.TokenVerifier(api_key, api_secret))
    async with (
        black_hole() as (dead_url, dead_connections),
        receiver() as (url, received),
        running_sfu(
            tmp_path / "sfu",
            api_key=api_key,
            api_secret=api_secret,
            extra_config={"webhook": {"api_key": api_key, "urls": [dead_url, url]}},
        ) as sfu,
    ):
        lkapi = api.LiveKitAPI(sfu.http_url, api_key, api_secret, failover=False)
        alice = SyntheticPublisher("alice")
        bob = lk.Room()
        try:
            await lkapi.room.create_room(api.CreateRoomRequest(name=ROOM))
            await until_events(received, ["room_started"])
            assert dead_connections, "the dead receiver was never tried"
            await alice.connect(sfu.url, sfu.token("alice", ROOM))
            await alice.publish(video=False, audio=True)
            await asyncio.wait_for(bob.connect(sfu.url, sfu.token("bob", ROOM)), WAIT)
            await until_events(received, ["participant_joined", "track_published"])
            async with asyncio.timeout(WAIT):
                while sum(e.event == "participant_joined" for e in verified(received)) < 2:
                    await asyncio.sleep(0.05)
            await bob.disconnect()
            await until_events(received, ["participant_left"])
            # a session that never connects its transports: connection aborted
            ws = await websockets.connect(
                f"{sfu.url}/rtc?access_token={sfu.token('carol', ROOM)}&protocol=17",
                open_timeout=WAIT,
            )
            await ws.recv()  # the JoinResponse
            await ws.close()
            await until_events(received, ["participant_connection_aborted"])
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            await until_events(received, ["room_finished"])
        finally:
            await alice.leave()
            await bob.disconnect()
            await lkapi.aclose()

    events = verified(received)
    summary = [(e.event, e.participant.identity, e.participant.disconnect_reason) for e in events]
    expected = [
        ("room_started", "", 0),
        ("participant_joined", "alice", 0),
        ("track_published", "alice", 0),
        ("participant_joined", "bob", 0),
        ("participant_left", "bob", models.DisconnectReason.CLIENT_INITIATED),
        ("participant_connection_aborted", "carol", models.DisconnectReason.CLIENT_INITIATED),
        ("track_unpublished", "alice", 0),
        ("participant_left", "alice", models.DisconnectReason.ROOM_DELETED),
        ("room_finished", "", 0),
    ]
    assert summary == expected, summary
    assert len({e.id for e in events}) == len(events)
    assert all(e.id.startswith("EV_") and e.created_at > 0 for e in events)
    assert all(e.room.name == ROOM for e in events)
    assert len({e.room.sid for e in events}) == 1
    track_events = [e for e in events if e.event.startswith("track_")]
    assert all(e.track.sid.startswith("TR_") for e in track_events)
    assert all(e.track.type == models.TrackType.AUDIO for e in track_events)
    # a body changed after signing is refused
    body, auth = received[0]
    with pytest.raises(Exception, match="hash mismatch"):
        _RECEIVER.receive(body.replace(ROOM, "other"), auth)
