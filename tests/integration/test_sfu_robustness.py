"""Bad input gets a precise error and loses nothing: tokens, protocol abuse, floods, leaks.

Every case runs against the real SFU process while a real publisher (LiveKit Python SDK) sends
media to a real subscriber in the same room; that media must keep flowing throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection

from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher
from tests.harness.sfu import SfuInstance, free_udp_port, metric, running_sfu
from tests.harness.tokens import mint_token

ROOM = "robust"
WAIT = 20.0


async def connect_raw(sfu: SfuInstance, identity: str, room: str = ROOM) -> ClientConnection:
    token = sfu.token(identity, room)
    return await websockets.connect(
        f"{sfu.url}/rtc?access_token={token}&protocol=17&sdk=js", max_size=None, open_timeout=WAIT
    )


async def next_response(
    ws: ClientConnection, kind: str, timeout: float = WAIT
) -> rtc.SignalResponse:
    """The next SignalResponse of ``kind`` (others are skipped), bounded in time."""
    async with asyncio.timeout(timeout):
        while True:
            response = rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]
            if response.WhichOneof("message") == kind:
                return response


async def assert_alive(ws: ClientConnection) -> None:
    await ws.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=4242)).SerializeToString())
    pong = await next_response(ws, "pong_resp")
    assert pong.pong_resp.last_ping_timestamp == 4242


async def frames_from(subscriber: CollectingSubscriber, identity: str) -> int:
    collector = subscriber.video_from(identity)
    return 0 if collector is None else collector.frames


async def assert_media_flowing(subscriber: CollectingSubscriber, identity: str) -> None:
    before = await frames_from(subscriber, identity)
    async with asyncio.timeout(WAIT):
        while await frames_from(subscriber, identity) < before + 10:
            await asyncio.sleep(0.1)


@pytest.fixture
async def media_pair(
    sfu: SfuInstance,
) -> AsyncIterator[tuple[SyntheticPublisher, CollectingSubscriber]]:
    publisher = SyntheticPublisher("alice")
    subscriber = CollectingSubscriber("bob")
    await publisher.connect(sfu.url, sfu.token("alice", ROOM))
    await subscriber.connect(sfu.url, sfu.token("bob", ROOM))
    await publisher.publish()
    await assert_media_flowing(subscriber, "alice")
    try:
        yield publisher, subscriber
    finally:
        await subscriber.leave()
        await publisher.leave()


async def test_bad_tokens_get_livekit_status_codes(sfu: SfuInstance) -> None:
    key, secret = sfu.api_key, sfu.api_secret
    cases = [
        ("", 401, "no authorization token"),
        ("not-a-jwt", 401, "not a JWT"),
        (mint_token(key, secret, "a", ROOM, ttl=timedelta(seconds=-3600)), 401, "expired"),
        (mint_token(key, "y" * 43, "a", ROOM), 401, "signature is invalid"),
        (mint_token("APIunknown", secret, "a", ROOM), 401, "unknown API key"),
        (mint_token(key, secret, "a", ROOM, room_join=False), 401, "no roomJoin grant"),
        (no_room_token(key, secret), 400, "no room name"),
    ]
    async with httpx.AsyncClient(base_url=sfu.http_url, timeout=10) as client:
        for token, status, text in cases:
            response = await client.get("/rtc/validate", params={"access_token": token})
            assert (response.status_code, text in response.text) == (status, True), token
            assert response.headers["access-control-allow-origin"] == "*"
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(f"{sfu.url}/rtc?access_token={token}", open_timeout=WAIT)
            assert refused.value.response.status_code == status
        ok = await client.get(
            "/rtc/validate", headers={"Authorization": f"Bearer {sfu.token('a', ROOM)}"}
        )
        assert (ok.status_code, ok.text) == (200, "success")
        v1 = await client.get("/rtc/v1/validate")
        assert v1.status_code == 404
        assert v1.headers["access-control-allow-origin"] == "*"
    with pytest.raises(websockets.InvalidStatus) as v1_ws:
        await websockets.connect(f"{sfu.url}/rtc/v1?access_token={sfu.token('a', ROOM)}")
    assert v1_ws.value.response.status_code == 404


async def test_protocol_abuse_is_answered_and_media_keeps_flowing(
    sfu: SfuInstance, media_pair: tuple[SyntheticPublisher, CollectingSubscriber]
) -> None:
    _publisher, subscriber = media_pair
    ws = await connect_raw(sfu, "mallory")
    first = rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]
    assert first.WhichOneof("message") == "join"
    offer = await next_response(ws, "offer")

    # an answer that answers nothing (wrong order): ignored, session stays up
    await ws.send(
        rtc.SignalRequest(
            answer=rtc.SessionDescription(type="answer", sdp="v=0", id=99)
        ).SerializeToString()
    )
    await ws.send(rtc.SignalRequest(answer=offer.offer).SerializeToString())  # garbage answer SDP
    await assert_alive(ws)
    # garbage publisher SDP
    await ws.send(
        rtc.SignalRequest(
            offer=rtc.SessionDescription(type="offer", sdp="\x00garbage", id=1)
        ).SerializeToString()
    )
    await assert_alive(ws)
    # unknown track ids
    await ws.send(
        rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_nope", muted=True)).SerializeToString()
    )
    refused = await next_response(ws, "request_response")
    assert refused.request_response.reason == rtc.RequestResponse.Reason.NOT_FOUND
    await ws.send(
        rtc.SignalRequest(
            subscription=rtc.UpdateSubscription(track_sids=["TR_nope"], subscribe=True)
        ).SerializeToString()
    )
    missing = await next_response(ws, "subscription_response")
    assert missing.subscription_response.err == models.SubscriptionError.SE_TRACK_NOTFOUND
    await ws.send(
        rtc.SignalRequest(
            track_setting=rtc.UpdateTrackSettings(track_sids=["TR_nope"], width=9)
        ).SerializeToString()
    )
    # garbage trickle, an unsupported track type, an empty request
    await ws.send(
        rtc.SignalRequest(
            trickle=rtc.TrickleRequest(
                candidateInit="{not json", target=rtc.SignalTarget.SUBSCRIBER
            )
        ).SerializeToString()
    )
    await ws.send(
        rtc.SignalRequest(
            add_track=rtc.AddTrackRequest(cid="x", type=models.TrackType.DATA)
        ).SerializeToString()
    )
    unsupported = await next_response(ws, "request_response")
    assert unsupported.request_response.reason == rtc.RequestResponse.Reason.UNSUPPORTED_TYPE
    await ws.send(b"")
    await assert_alive(ws)
    await assert_media_flowing(subscriber, "alice")

    # malformed protobuf ends only that session, with a reason
    await ws.send(b"\xff\xff\xff\xff\x0f")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1007, "malformed SignalRequest")

    # an oversized frame likewise (the limit is 1 MiB)
    big = await connect_raw(sfu, "mallory2")
    await big.recv()
    with contextlib.suppress(websockets.ConnectionClosed):
        await big.send(b"\x0a" + b"\x00" * (2 << 20))
    with pytest.raises(websockets.ConnectionClosed) as too_big:
        async with asyncio.timeout(WAIT):
            while True:
                await big.recv()
    assert too_big.value.rcvd is not None and too_big.value.rcvd.code == 1009
    await assert_media_flowing(subscriber, "alice")


async def test_two_hundred_idle_websockets(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    key, secret = sfu_keys
    async with running_sfu(tmp_path / "sfu", api_key=key, api_secret=secret, rtc_ports=600) as sfu:
        publisher = SyntheticPublisher("alice")
        subscriber = CollectingSubscriber("bob")
        await publisher.connect(sfu.url, sfu.token("alice", ROOM))
        await subscriber.connect(sfu.url, sfu.token("bob", ROOM))
        await publisher.publish()
        await assert_media_flowing(subscriber, "alice")

        async def idle(i: int) -> rtc.SignalResponse:
            ws = await connect_raw(sfu, f"idle{i}", room=f"idle-{i % 20}")
            sockets.append(ws)
            async with asyncio.timeout(60):
                return rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]

        sockets: list[ClientConnection] = []
        try:
            firsts = await asyncio.gather(*(idle(i) for i in range(200)))
            assert [f.WhichOneof("message") for f in firsts] == ["join"] * 200
            await assert_media_flowing(subscriber, "alice")
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await assert_media_flowing(subscriber, "alice")
        await subscriber.leave()
        await publisher.leave()
        sfu.assert_alive()


def no_room_token(key: str, secret: str) -> str:
    """livekit-api refuses to mint this one; an issuer with a bug might not."""
    claims = {"iss": key, "sub": "a", "exp": int(time.time()) + 600, "video": {"roomJoin": True}}
    return jwt.encode(claims, secret, algorithm="HS256")


def packets_in(text: str) -> float:
    """`livekit_packet_total{direction="incoming"}` from a /metrics text."""
    for line in text.splitlines():
        if line.startswith("livekit_packet_total{") and 'direction="incoming"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no incoming livekit_packet_total in /metrics")


async def assert_refused_above(
    sfu: SfuInstance, http: httpx.AsyncClient, gauge: str, bound: float, *reason: bytes
) -> None:
    """Once the /metrics `gauge` is above `bound`, a newcomer gets 503 with every `reason` in
    its body, on /rtc and on /rtc/validate."""
    deadline = time.monotonic() + WAIT
    while metric((await http.get("/metrics")).text, gauge) <= bound:
        assert time.monotonic() < deadline, f"{gauge} never rose above {bound}"
        await asyncio.sleep(0.2)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect_raw(sfu, "late")
    response = refused.value.response
    assert response.status_code == 503
    for part in reason:
        assert part in response.body
    validate = await http.get(f"/rtc/validate?access_token={sfu.token('late', ROOM)}")
    assert validate.status_code == 503 and reason[0] in validate.content  # the measure moves


@pytest.mark.parametrize("single_port", [False, True], ids=["port_range", "udp_port"])
async def test_joins_past_the_latency_bound_get_503(
    tmp_path: Path, sfu_keys: tuple[str, str], single_port: bool
) -> None:
    """`limits.max_forward_latency_ms` below what any datagram waits (1 µs): the first
    participant (nothing measured yet) is admitted; once its media flows, every newcomer is
    refused, clearly, while its own rejoin is let through and its media keeps arriving. With
    `rtc.udp_port` the compiled receive path reads the media, and samples it too."""
    key, secret = sfu_keys
    limits: dict[str, Any] = {
        "limits": {
            "max_cpu_load": 0,
            "max_forward_latency_ms": 0.001,
            "forward_latency_min_load": 0,
        }
    }
    if single_port:
        limits["rtc"] = {"udp_port": free_udp_port()}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=limits
    ) as sfu:
        publisher = SyntheticPublisher("alice")
        try:
            await publisher.connect(sfu.url, sfu.token("alice", ROOM))
            await publisher.publish()
            async with httpx.AsyncClient(base_url=sfu.http_url, timeout=WAIT) as http:
                await assert_refused_above(
                    sfu,
                    http,
                    "sfu_forward_latency_p99_seconds",
                    0.000001,
                    b"the server is at capacity: forwarding latency p99",
                    b"exceeds limits.max_forward_latency_ms 0.001",
                )
                rejoin = await http.get(f"/rtc/validate?access_token={sfu.token('alice', ROOM)}")
                assert rejoin.status_code == 200
                text = (await http.get("/metrics")).text
                assert metric(text, "sfu_joins_refused_latency_total") == 2
                assert metric(text, "sfu_forward_latency_seconds_count") >= 3
                before = packets_in(text)
                deadline = time.monotonic() + WAIT
                while packets_in((await http.get("/metrics")).text) < before + 100:
                    assert time.monotonic() < deadline, "the publisher's media stopped"
                    await asyncio.sleep(0.2)
        finally:
            await publisher.leave()
        sfu.assert_alive()


async def test_churn_leaves_nothing_behind(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    key, secret = sfu_keys
    extra = {"room": {"departure_timeout": 1, "empty_timeout": 1}}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=extra
    ) as sfu:

        async def scrape() -> str:
            async with httpx.AsyncClient(timeout=10) as client:
                return (await client.get(sfu.metrics_url)).text

        def fds() -> int:
            return len(os.listdir(f"/proc/{sfu.pid}/fd"))

        def rss_kb() -> int:
            with open(f"/proc/{sfu.pid}/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

        async def settle() -> str:
            async with asyncio.timeout(WAIT):
                while True:
                    text = await scrape()
                    if (
                        metric(text, "livekit_room_total") == 0
                        and metric(text, "livekit_participant_total") == 0
                    ):
                        return text
                    await asyncio.sleep(0.2)

        baseline_text = await scrape()
        baseline_fds, baseline_tasks = fds(), metric(baseline_text, "sfu_asyncio_tasks")
        orders = [(0, 1, 2), (2, 1, 0), (1, 0, 2)]
        rss_after: list[int] = []
        for cycle, order in enumerate(orders):
            room = f"churn-{cycle}"
            people = [SyntheticPublisher(f"p{i}-{cycle}") for i in range(3)]
            listener = CollectingSubscriber(f"listener-{cycle}")
            await listener.connect(sfu.url, sfu.token(listener.identity, room))
            for p in people:
                await p.connect(sfu.url, sfu.token(p.identity, room))
                await p.publish()
            for p in people:
                await assert_media_flowing(listener, p.identity)
            text = await scrape()
            assert metric(text, "livekit_participant_total") == 4
            assert metric(text, "livekit_track_published_total") == 6
            # the listener gets 3 × 2 tracks, each publisher the other two's 2 × 2
            assert metric(text, "livekit_track_subscribed_total") == 6 + 3 * 4
            for index in order:
                await people[index].leave()
            await listener.leave()
            text = await settle()
            rss_after.append(rss_kb())
            assert metric(text, "livekit_track_subscribed_total") == 0
        await asyncio.sleep(1.0)
        text = await scrape()
        assert fds() <= baseline_fds + 2, f"fds {baseline_fds} → {fds()}"
        assert metric(text, "sfu_asyncio_tasks") <= baseline_tasks + 2
        assert rss_after[-1] - rss_after[0] < 30_000, f"RSS grew {rss_after}"
        sfu.assert_alive()


async def test_joins_past_the_cpu_limit_get_503(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    """`limits.max_cpu_load` below what even an idle SFU uses: every newcomer is refused, clearly."""
    key, secret = sfu_keys
    limits = {"limits": {"max_cpu_load": 0.000001}}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=limits
    ) as sfu:
        async with httpx.AsyncClient(base_url=sfu.http_url, timeout=WAIT) as http:
            await assert_refused_above(
                sfu,
                http,
                "sfu_cpu_load",
                0.000001,
                b"the server is at capacity: CPU load",
                b"limits.max_cpu_load 0.00",
            )
            assert metric((await http.get("/metrics")).text, "sfu_joins_refused_cpu_total") == 2
        sfu.assert_alive()
