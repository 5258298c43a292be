"""Rooms, permissions and data packets, with real LiveKit clients against the real SFU."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import websockets
from livekit import rtc as lk
from livekit.protocol import models, rtc

from tests.harness.sfu import SfuInstance, running_sfu
from tests.harness.tokens import mint_token

WAIT = 20.0


async def sdk_join(sfu: SfuInstance, identity: str, room: str, **grants: object) -> lk.Room:
    client = lk.Room()
    token = mint_token(sfu.api_key, sfu.api_secret, identity, room, **grants)  # type: ignore[arg-type]
    await asyncio.wait_for(client.connect(sfu.url, token), WAIT)
    return client


async def raw_join(sfu: SfuInstance, token: str, query: str = "") -> websockets.ClientConnection:
    return await websockets.connect(
        f"{sfu.url}/rtc?access_token={token}&protocol=17{query}", open_timeout=WAIT
    )


async def first_of(ws: websockets.ClientConnection, kind: str) -> rtc.SignalResponse:
    async with asyncio.timeout(WAIT):
        while True:
            response = rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]
            if response.WhichOneof("message") == kind:
                return response


async def test_data_packets_respect_destinations_and_grants(sfu: SfuInstance) -> None:
    room = "data"
    alice = await sdk_join(sfu, "alice", room)
    bob = await sdk_join(sfu, "bob", room)
    carol = await sdk_join(sfu, "carol", room)
    mute = await sdk_join(sfu, "mute", room, can_publish_data=False)
    received: dict[str, list[tuple[str, bytes, str]]] = {"alice": [], "bob": [], "carol": []}
    for name, client in (("alice", alice), ("bob", bob), ("carol", carol)):

        def on_data(packet: lk.DataPacket, name: str = name) -> None:
            sender = packet.participant.identity if packet.participant else ""
            received[name].append((sender, packet.data, packet.topic or ""))

        client.on("data_received", on_data)
    try:
        async with asyncio.timeout(WAIT):  # everyone sees everyone before sending
            while len(alice.remote_participants) < 3 or len(carol.remote_participants) < 3:
                await asyncio.sleep(0.1)
        await alice.local_participant.publish_data(b"to-all", reliable=True, topic="t1")
        await alice.local_participant.publish_data(
            b"to-carol", reliable=False, destination_identities=["carol"]
        )
        await mute.local_participant.publish_data(b"forbidden", reliable=True)
        async with asyncio.timeout(WAIT):
            while len(received["bob"]) < 1 or len(received["carol"]) < 2:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything that should not arrive would have by now
        assert received["bob"] == [("alice", b"to-all", "t1")]
        assert sorted(received["carol"]) == [("alice", b"to-all", "t1"), ("alice", b"to-carol", "")]
        assert received["alice"] == []
    finally:
        for client in (alice, bob, carol, mute):
            await client.disconnect()


async def test_grants_are_enforced(sfu: SfuInstance) -> None:
    room = "grants"
    # can_publish=false: AddTrackRequest refused, JoinResponse says so
    viewer = await raw_join(
        sfu, mint_token(sfu.api_key, sfu.api_secret, "viewer", room, can_publish=False)
    )
    join = await first_of(viewer, "join")
    assert join.join.participant.permission.can_publish is False
    await viewer.send(
        rtc.SignalRequest(
            add_track=rtc.AddTrackRequest(
                cid="c1", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE
            )
        ).SerializeToString()
    )
    refused = await first_of(viewer, "request_response")
    assert refused.request_response.reason == rtc.RequestResponse.Reason.NOT_ALLOWED
    # canPublishSources=[microphone]: camera refused, microphone accepted
    mic_only = await raw_join(
        sfu,
        mint_token(sfu.api_key, sfu.api_secret, "mic", room, can_publish_sources=["microphone"]),
    )
    await first_of(mic_only, "join")
    await mic_only.send(
        rtc.SignalRequest(
            add_track=rtc.AddTrackRequest(
                cid="cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA
            )
        ).SerializeToString()
    )
    assert (
        await first_of(mic_only, "request_response")
    ).request_response.reason == rtc.RequestResponse.Reason.NOT_ALLOWED
    await mic_only.send(
        rtc.SignalRequest(
            add_track=rtc.AddTrackRequest(
                cid="mic",
                type=models.TrackType.AUDIO,
                source=models.TrackSource.MICROPHONE,
                encryption=models.Encryption.GCM,
            )
        ).SerializeToString()
    )
    published = await first_of(mic_only, "track_published")
    assert published.track_published.cid == "mic"
    assert published.track_published.track.sid.startswith("TR_")
    assert published.track_published.track.encryption == models.Encryption.GCM
    # hidden participants are not announced to others
    watcher = await sdk_join(sfu, "watcher", room)
    ghost = await sdk_join(sfu, "ghost", room, hidden=True)
    await asyncio.sleep(1.0)
    assert "ghost" not in {p.identity for p in watcher.remote_participants.values()}
    assert "watcher" in {p.identity for p in ghost.remote_participants.values()}
    for client in (watcher, ghost):
        await client.disconnect()
    await viewer.close()
    await mic_only.close()


async def test_duplicate_identity_and_resume(sfu: SfuInstance) -> None:
    token = sfu.token("dup", "dups")
    first = await raw_join(sfu, token)
    await first_of(first, "join")
    second = await raw_join(sfu, token)
    await first_of(second, "join")
    kicked = await first_of(first, "leave")
    assert kicked.leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
    # legacy ping is answered with pong
    await second.send(rtc.SignalRequest(ping=123).SerializeToString())
    assert (await first_of(second, "pong")).pong > 0
    # resume is refused with a full-reconnect request as the first message
    resume = await raw_join(sfu, token, "&reconnect=1&sid=PA_whatever")
    leave = rtc.SignalResponse.FromString(await asyncio.wait_for(resume.recv(), WAIT))  # type: ignore[arg-type]
    assert leave.WhichOneof("message") == "leave"
    assert leave.leave.action == rtc.LeaveRequest.Action.RECONNECT
    await second.close()


async def test_auto_create_off_refuses_unknown_rooms(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> None:
    key, secret = sfu_keys
    extra = {"room": {"auto_create": False}}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=extra
    ) as sfu:
        token = sfu.token("alice", "nope", room_create=False)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                f"{sfu.http_url}/rtc/validate", params={"access_token": token}
            )
        assert (response.status_code, response.text) == (404, "requested room does not exist")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await raw_join(sfu, token)
        assert refused.value.response.status_code == 404


async def test_empty_room_closes_after_departure_timeout(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> None:
    key, secret = sfu_keys
    extra = {"room": {"departure_timeout": 1, "empty_timeout": 2}}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=extra
    ) as sfu:
        client = await sdk_join(sfu, "alice", "short")

        async def rooms() -> float:
            async with httpx.AsyncClient(timeout=10) as http:
                text = (await http.get(sfu.metrics_url)).text
            line = next(x for x in text.splitlines() if x.startswith("livekit_room_total{"))
            return float(line.rsplit(" ", 1)[1])

        assert await rooms() == 1
        await client.disconnect()
        async with asyncio.timeout(WAIT):
            while await rooms() != 0:
                await asyncio.sleep(0.2)


async def test_active_speakers_follow_the_audio_level(sfu: SfuInstance) -> None:
    from tests.harness.lkclient import SyntheticPublisher

    speaker = SyntheticPublisher("speaker")
    await speaker.connect(sfu.url, sfu.token("speaker", "talk"))
    listener = await sdk_join(sfu, "listener", "talk")
    seen: list[list[str]] = []
    listener.on(
        "active_speakers_changed", lambda speakers: seen.append([p.identity for p in speakers])
    )
    try:
        await speaker.publish(video=False, audio=True)
        async with asyncio.timeout(WAIT):
            while not any("speaker" in s for s in seen):
                await asyncio.sleep(0.1)
        await speaker.unpublish_audio()
        async with asyncio.timeout(WAIT):
            while not seen or "speaker" in seen[-1]:
                await asyncio.sleep(0.1)
    finally:
        await listener.disconnect()
        await speaker.leave()
