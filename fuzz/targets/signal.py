"""Signalling, in process: SignalRequest bytes → `SignalSession` → `Participant` in a real `Room`.

Two participants join one real `Room` (`sfu.room`), each behind a `SignalSession`
(`sfu.signal.session`) whose WebSocket is never touched: every record of the input is, for one of
them, a binary or JSON WebSocket message that `SignalSession.decode` turns into a
`SignalRequest` and `SignalSession.dispatch` hands to the participant (offers, answers, trickle,
add_track, mute, subscription, track settings, leave, ping...), a data-channel message
(`Participant.receive_data`), or a transport state change (what ICE/DTLS would report).

Their `PeerTransport`s are real but for the network: host-candidate gathering is replaced by a fixed
local candidate and connectivity checks are never started (`_LocalPeerTransport`), so SDP
parsing, answer building, remote candidates and subscriber renegotiation all run, and nothing is
sent anywhere. The DTLS certificate is generated once per process.

What may escape `dispatch` is what `SignalSession.run` treats as the client's fault:
`ProtocolViolation`, `SignalStateError`, `TrackRequestError` and `SdpError`. Anything else, an
exception in a task a request spawned, or a queued `SignalResponse` that does not serialize
(binary and JSON), is a finding.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiortc import RTCCertificate
from google.protobuf import json_format
from livekit.protocol import models, rtc

import sfu.media.transport.peer as peer_module
from sfu.auth import ClaimGrants, VideoGrant
from sfu.config import RoomConfig
from sfu.ids import RoomName
from sfu.media.sdp import SdpError
from sfu.media.transport import PeerTransport, TransportConfig
from sfu.media.transport.ice import HostCandidates
from sfu.room.participant import Participant, ParticipantOptions, SignalStateError
from sfu.room.room import Room
from sfu.room.track import TrackRequestError
from sfu.signal.session import ProtocolViolation, SignalSession

from ._records import join, records

MAX_LEN = 16384

ALLOWED = (ProtocolViolation, SignalStateError, TrackRequestError, SdpError)
CONFIG = TransportConfig()
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sdp"
IDENTITIES = ("alice", "bob")
STATES: tuple[Any, ...] = ("connected", "failed", "closed", "connecting")

_loop: asyncio.AbstractEventLoop | None = None
_certificate: RTCCertificate | None = None


class _OneCertificate:
    """`RTCCertificate` whose `generateCertificate` generates one per process (it takes ms)."""

    @staticmethod
    def generateCertificate() -> RTCCertificate:
        global _certificate
        if _certificate is None:
            _certificate = RTCCertificate.generateCertificate()
        return _certificate


class _LocalPeerTransport(PeerTransport):
    """A `PeerTransport` that binds no socket and starts no ICE/DTLS."""

    async def _gather(self) -> HostCandidates:
        return HostCandidates(
            ["1 1 udp 2130706431 127.0.0.1 9 typ host generation 0"], "127.0.0.1", 9
        )

    def _start(self) -> None:
        self._set_state("connecting")


@contextmanager
def _offline() -> Iterator[None]:
    """Peer transports share one certificate, for this block only."""
    saved = peer_module.RTCCertificate  # type: ignore[attr-defined]
    setattr(peer_module, "RTCCertificate", _OneCertificate)  # noqa: B010
    try:
        yield
    finally:
        setattr(peer_module, "RTCCertificate", saved)  # noqa: B010


class _WebSocket:
    """Stands in for Starlette's WebSocket: decode/dispatch never touch it."""

    application_state = None


class Client:
    """One participant and its session; `tasks` are the ones spawned while serving it."""

    def __init__(self, room: Room, identity: str) -> None:
        self.session = SignalSession(_WebSocket(), 1 << 20)  # type: ignore[arg-type]
        video = VideoGrant(room=str(room.name), room_join=True)
        grants = ClaimGrants(api_key="fuzzkey", identity=identity, video=video)
        self.participant = Participant(
            grants,
            ParticipantOptions(),
            CONFIG,
            self.session.send,
            peer_factory=_LocalPeerTransport,
        )


def _check_outbox(session: SignalSession) -> None:
    """Every queued response is what the writer sends: a serialized SignalResponse (binary) or
    its protojson (text), and it reads back."""
    while not session._outbox.empty():
        encoded = session._outbox.get_nowait()
        if isinstance(encoded, bytes):
            rtc.SignalResponse.FromString(encoded)
        elif isinstance(encoded, str):
            json_format.Parse(encoded, rtc.SignalResponse())


def _check_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError("a spawned task failed") from task.exception()
    tasks[:] = [t for t in tasks if not t.done()]


async def _handle(client: Client, op: int, flags: int, body: bytes) -> None:
    participant, session = client.participant, client.session
    if op == 2:  # a data-channel message
        participant.receive_data("_lossy" if flags & 1 else "_reliable", body)
        return
    if op == 3:  # ICE/DTLS reports a state
        transport = participant.subscriber if flags & 1 else participant.publisher
        if isinstance(transport, PeerTransport):
            transport._set_state(STATES[(flags >> 1) % len(STATES)])
        return
    if op == 1:
        message: dict[str, Any] = {
            "type": "websocket.receive",
            "text": body.decode("utf-8", "replace"),
        }
    else:
        message = {"type": "websocket.receive", "bytes": body}
    try:
        request = session.decode(message)
        await session.dispatch(participant, request)
    except ALLOWED:
        pass


async def _run(data: bytes, tasks: list[asyncio.Task[Any]]) -> None:
    room = Room(RoomName("fuzz-room"), RoomConfig(), on_close=lambda _room: None)
    clients = [Client(room, identity) for identity in IDENTITIES]
    try:
        for client in clients:
            await room.join(client.participant)
        for record in records(data, 24):
            head = record[0] if record else 0
            client = clients[head >> 7]
            if not client.participant.closed:
                await _handle(client, head & 3, (head >> 2) & 0x1F, record[1:])
            for _ in range(3):  # let the renegotiations a request spawned run
                await asyncio.sleep(0)
            _check_tasks(tasks)
            for c in clients:
                _check_outbox(c.session)
    finally:
        for client in clients:
            await client.participant.close()
        await room.close()
    _check_tasks(tasks)


def test_one(data: bytes) -> None:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    loop = _loop
    tasks: list[asyncio.Task[Any]] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        tasks.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        with _offline():
            main = loop.create_task(_run(data, tasks))
            tasks.remove(main)
            loop.run_until_complete(main)
    finally:
        loop.set_task_factory(None)
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))


def _request(**fields: Any) -> bytes:
    return rtc.SignalRequest(**fields).SerializeToString()


def seeds() -> list[bytes]:
    offer_sdp = (FIXTURES / "chrome_simulcast_offer.sdp").read_text()
    unpublish_sdp = (FIXTURES / "chrome_unpublish_offer.sdp").read_text()
    answer_sdp = (FIXTURES / "chrome_subscriber_answer.sdp").read_text()
    layers = [
        models.VideoLayer(quality=q, width=w, height=h)
        for q, w, h in (
            (models.VideoQuality.LOW, 320, 180),
            (models.VideoQuality.MEDIUM, 640, 360),
            (models.VideoQuality.HIGH, 1280, 720),
        )
    ]
    add_video = rtc.AddTrackRequest(
        cid="camera-cid",
        name="camera",
        type=models.TrackType.VIDEO,
        source=models.TrackSource.CAMERA,
        width=1280,
        height=720,
        layers=layers,
        simulcast_codecs=[rtc.SimulcastCodec(codec="vp8", cid="camera-cid")],
    )
    add_audio = rtc.AddTrackRequest(
        cid="mic-cid", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE
    )
    offer = rtc.SessionDescription(type="offer", sdp=offer_sdp, id=1)
    unpublish = rtc.SessionDescription(type="offer", sdp=unpublish_sdp, id=2)
    answer = rtc.SessionDescription(type="answer", sdp=answer_sdp, id=1)
    trickle = rtc.TrickleRequest(
        candidateInit=json.dumps(
            {"candidate": "candidate:1 1 udp 2122194687 127.0.0.1 40111 typ host", "sdpMid": "0"}
        ),
        target=rtc.SignalTarget.PUBLISHER,
    )
    settings = rtc.UpdateTrackSettings(track_sids=["TR_x"], width=320, height=180)
    subscription = rtc.UpdateSubscription(track_sids=["TR_x"], subscribe=True)
    data_packet = models.DataPacket(user=models.UserPacket(payload=b"hello", topic="chat"))
    bob = 0x80  # the record is for the second participant
    return [
        join(
            [
                b"\x00" + _request(add_track=add_video),
                b"\x00" + _request(add_track=add_audio),
                b"\x00" + _request(offer=offer),
                bytes([bob]) + _request(answer=answer),
                bytes([0x03 | 1 << 2]) + b"",  # alice's subscriber connected
                bytes([bob | 0x03 | 1 << 2]),
                b"\x00" + _request(trickle=trickle),
                bytes([bob]) + _request(track_setting=settings),
                b"\x02" + data_packet.SerializeToString(),
                b"\x00" + _request(mute=rtc.MuteTrackRequest(sid="TR_x", muted=True)),
                b"\x00" + _request(offer=unpublish),
            ]
        ),
        join(
            [
                b"\x01"
                + json_format.MessageToJson(rtc.SignalRequest(add_track=add_audio)).encode(),
                b"\x01" + b'{"ping": "123"}',
                b"\x00" + _request(ping_req=rtc.Ping(timestamp=1, rtt=2)),
                bytes([bob]) + _request(subscription=subscription),
                b"\x00" + _request(answer=answer),
                b"\x00" + _request(leave=rtc.LeaveRequest()),
            ]
        ),
        join([b"\x00" + _request(offer=offer), bytes([0x03 | 3 << 2]), b"\x00\xff\xff"]),
    ]
