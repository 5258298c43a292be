"""Protojson signalling end to end: a client that speaks JSON text frames on `/rtc` is answered
in JSON text frames, with LiveKit's protojson field names, through the real SFU process.

The SFU (like LiveKit's server) cannot know a client's framing before it speaks, so the
JoinResponse and the first subscriber offer are binary; from the client's first text frame on,
every answer is a text frame, and a binary frame switches the session back.
"""

from __future__ import annotations

import json

import pytest
import websockets
from livekit.protocol import models, rtc

from tests.harness.rawsignal import RawSignal
from tests.harness.sfu import SfuInstance

ROOM = "json-room"


async def test_join_then_json_ping_and_requests_are_answered_in_json(sfu: SfuInstance) -> None:
    async with await RawSignal.connect(sfu.url, sfu.token("jess", ROOM)) as client:
        join = await client.next("join")
        assert not join.is_text
        assert join.response.join.room.name == ROOM
        assert join.response.join.participant.identity == "jess"

        # protojson spells int64 as a string and fields in lowerCamelCase
        await client.send_text('{"pingReq": {"timestamp": "4242", "rtt": "7"}}')
        pong = await client.next("pong_resp")
        assert pong.is_text and pong.text is not None
        raw = json.loads(pong.text)
        assert raw["pongResp"]["lastPingTimestamp"] == "4242"
        assert pong.response.pong_resp.last_ping_timestamp == 4242
        assert pong.response.pong_resp.timestamp > 0

        await client.send(rtc.SignalRequest(ping=99), json=True)  # the legacy ping
        legacy = await client.next("pong")
        assert legacy.is_text and legacy.response.pong > 0

        # a request that fails is refused in JSON, with the enum's protojson name
        await client.send(
            rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_nope", muted=True)), json=True
        )
        refused = await client.next("request_response")
        assert refused.is_text and refused.text is not None
        assert json.loads(refused.text)["requestResponse"]["reason"] == "NOT_FOUND"

        # publishing a track in JSON: the TrackPublishedResponse comes back in JSON
        await client.send(
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(
                    cid="mic-1",
                    name="mic",
                    type=models.TrackType.AUDIO,
                    source=models.TrackSource.MICROPHONE,
                )
            ),
            json=True,
        )
        published = await client.next("track_published")
        assert published.is_text and published.text is not None
        track = json.loads(published.text)["trackPublished"]
        assert track["cid"] == "mic-1"
        assert track["track"]["sid"].startswith("TR_") and track["track"]["source"] == "MICROPHONE"

        # a binary frame switches the session back to protobuf
        await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=5)))
        binary = await client.next("pong_resp")
        assert not binary.is_text and binary.response.pong_resp.last_ping_timestamp == 5


async def test_malformed_json_ends_only_that_session(sfu: SfuInstance) -> None:
    async with (
        await RawSignal.connect(sfu.url, sfu.token("ok", ROOM)) as bystander,
        await RawSignal.connect(sfu.url, sfu.token("bad", ROOM)) as client,
    ):
        await bystander.next("join")
        await client.next("join")
        await client.send_text('{"pingReq": {"timestamp": ')
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.next("never", timeout_s=20.0)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1007,
            "malformed SignalRequest",
        )
        await bystander.send_text('{"pingReq": {"timestamp": "1"}}')
        assert (await bystander.next("pong_resp")).is_text
