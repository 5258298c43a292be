"""The webhook notifier's queue: bounded per URL, drops counted and reported in `num_dropped`,
events in order; a real loopback receiver (aiohttp) that holds the first POST."""

from __future__ import annotations

import asyncio

from aiohttp import web
from livekit import api

from sfu.api import webhook
from sfu.api.webhook import WebhookNotifier
from sfu.config import RoomConfig
from sfu.metrics import COUNTERS
from sfu.room import RoomManager

KEY, SECRET = "APIkey", "s" * 40


async def test_a_full_queue_drops_and_the_next_event_says_how_many() -> None:
    release = asyncio.Event()
    bodies: list[tuple[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.text()  # read at once: a slow machine must not time the read out
        if not bodies:
            await release.wait()  # the receiver stalls on the first event
        bodies.append((body, request.headers["Authorization"]))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    notifier = WebhookNotifier((f"http://127.0.0.1:{port}/hook",), KEY, {KEY: SECRET})
    notifier.start()
    rooms = RoomManager(RoomConfig())
    rooms.observer = notifier
    before = COUNTERS.limits_exceeded.get("webhook_queue", 0)
    try:
        first = rooms.create("first")  # taken by the sender, stalls
        await asyncio.sleep(0.2)
        for i in range(webhook.WEBHOOK_QUEUE + 10):
            rooms.create(f"room{i}")
        assert COUNTERS.limits_exceeded["webhook_queue"] - before == 10
        release.set()
        async with asyncio.timeout(10):
            while len(bodies) < webhook.WEBHOOK_QUEUE + 1:
                await asyncio.sleep(0.05)
        receiver = api.WebhookReceiver(api.TokenVerifier(KEY, SECRET))
        events = [receiver.receive(body, auth) for body, auth in bodies]
        assert [e.room.name for e in events[:3]] == [first.name, "room0", "room1"]
        assert [e.num_dropped for e in events] == [0, 10] + [0] * (len(events) - 2)
    finally:
        await rooms.close_all()
        await notifier.close()
        await runner.cleanup()
