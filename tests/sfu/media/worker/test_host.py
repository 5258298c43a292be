"""Two worker hosts in one event loop, joined by their relays: a track's home receiver relays
to the other worker's replica, whose sinks get each packet as local sinks would; key-frame
requests from the replica reach the publisher throttled once for every worker; replicas and
relay sinks go away with their last down track."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpPacket
from sfu.media.sdp import Codec
from sfu.media.transport import TransportConfig
from sfu.media.worker.host import WorkerHost, _Part, codec_to_wire
from sfu.media.worker.relay import HomeReceiver, Relay, ReplicaReceiver


class Sink:
    def __init__(self) -> None:
        self.sequence_numbers: list[int] = []

    def write(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> None:
        self.sequence_numbers.append(packet.sequence_number)

    @property
    def subscribed_layer(self) -> int:
        return 0


def rtp(sequence: int, ssrc: int = 0x5555) -> bytes:
    return (
        bytes([0x80, 111])
        + sequence.to_bytes(2, "big")
        + (sequence * 960).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + bytes(60)
    )


def receiver_new(track: int, kind: str, home: int, part: int = 0) -> dict[str, Any]:
    codec = Codec(111, "opus", 48000, 2) if kind == "audio" else Codec(96, "VP8", 90000)
    return {
        "op": "receiver_new", "track": track, "part": part, "home": home, "kind": kind,
        "mime": f"{kind}/{codec.name}", "rate": codec.clock_rate,
        "layers": 1 if kind == "audio" else 3, "codec": codec_to_wire(codec),
    }  # fmt: skip


async def hosts() -> tuple[WorkerHost, WorkerHost, list[dict[str, Any]]]:
    namespace = f"host-{secrets.token_hex(4)}"
    events: list[dict[str, Any]] = []
    made = []
    for index in (0, 1):
        relay = Relay(namespace, index)
        relay.start()
        made.append(WorkerHost(index, TransportConfig(), relay, events.append, print))
    made[0].parts[7] = _Part()  # the publisher's part on worker 0 (no PC needed here)
    return made[0], made[1], events


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_home_relays_to_the_replica_and_stops_with_relay_remove() -> None:
    home, other, _ = await hosts()
    try:
        home.handle(receiver_new(1, "audio", home=0, part=7))
        other.handle(receiver_new(1, "audio", home=0))
        assert isinstance(home.receivers[1], HomeReceiver)
        replica = other.receivers[1]
        assert isinstance(replica, ReplicaReceiver)
        sink = Sink()
        replica.add_sink(sink)
        home.handle({"op": "relay_add", "track": 1, "to": 1})
        for n in range(20):
            home.receivers[1].on_rtp(RtpPacket.parse(rtp(n)), 0)
        await settle()
        assert sink.sequence_numbers == list(range(20))
        assert replica.layers[0].ssrc == 0x5555  # learned from the relayed packets
        home.handle({"op": "relay_remove", "track": 1, "to": 1})
        home.receivers[1].on_rtp(RtpPacket.parse(rtp(20)), 0)
        await settle()
        assert sink.sequence_numbers == list(range(20))
        other.handle({"op": "receiver_close", "track": 1})
        assert 1 not in other.receivers and other.object_counts()["receivers"] == 0
    finally:
        home.relay.close()
        other.relay.close()


async def test_key_frame_requests_are_throttled_once_for_all_workers() -> None:
    home, other, _ = await hosts()
    try:
        home.handle(receiver_new(2, "video", home=0, part=7))
        other.handle(receiver_new(2, "video", home=0))
        publisher = home.receivers[2]
        plis: list[rtcp.Pli] = []
        publisher._send_rtcp = lambda data: plis.append(rtcp.Pli.parse(data))
        for layer, state in enumerate(publisher.layers):
            state.ssrc = 1000 + layer
        home.handle({"op": "relay_add", "track": 2, "to": 1})  # asks for a key frame at once
        assert sorted(p.media_ssrc for p in plis) == [1000, 1001, 1002]
        replica = other.receivers[2]
        for _ in range(3):  # the other worker's subscribers ask again, within the throttle
            replica.request_keyframe(0)
            publisher.request_keyframe(0)
        await settle()
        assert len(plis) == 3, plis
        publisher._last_pli[2] = 0.0  # past the throttle: the next request goes through
        replica.request_keyframe(2)
        await settle()
        assert [p.media_ssrc for p in plis[3:]] == [1002]
    finally:
        home.relay.close()
        other.relay.close()


async def test_unknown_objects_and_ops_are_refused_not_fatal() -> None:
    home, _other, _ = await hosts()
    answers: list[tuple[int, Any, BaseException | None]] = []
    home._reply = lambda rid, result, error: answers.append((rid, result, error))
    try:
        home.handle({"op": "dt_start", "dt": 999})  # fire and forget: ignored
        home.handle({"op": "no_such_op", "rid": 5})
        home.handle({"op": "create_offer", "peer": 404, "rid": 6})  # answered from its task
        await settle()
        assert [(rid, type(error).__name__) for rid, _, error in answers] == [
            (5, "ValueError"),
            (6, "KeyError"),
        ]
        assert home.object_counts() == {
            "peers": 0, "parts": 1, "receivers": 0, "downtracks": 0, "slots": 0,
        }  # fmt: skip
    finally:
        home.relay.close()
        _other.relay.close()
