"""SignalSession: requests after a close, closing the WebSocket, the outbox byte budget."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from livekit.protocol import models, rtc
from starlette.websockets import WebSocketState

from sfu.auth import ClaimGrants
from sfu.media.sdp import SdpError
from sfu.media.transport import PublishedMedia, TransportConfig
from sfu.metrics import COUNTERS, Metrics
from sfu.room.participant import Participant, ParticipantOptions
from sfu.signal import session as session_module
from sfu.signal.session import CLOSE_NORMAL, CLOSE_POLICY, SignalSession
from tests.sfu.room.fakes import OPUS, FakePeer, make_peer, make_room


class FakeWebSocket:
    """The parts of starlette's WebSocket a session uses; the test plays the client."""

    def __init__(self, *, reading: bool = True) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[rtc.SignalResponse] = []
        self.closed_with: tuple[int, str] | None = None
        self.application_state = WebSocketState.CONNECTED
        self.reading = asyncio.Event()
        if reading:
            self.reading.set()

    def request(self, request: rtc.SignalRequest) -> None:
        self.incoming.put_nowait(
            {"type": "websocket.receive", "bytes": request.SerializeToString()}
        )

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_bytes(self, data: bytes) -> None:
        await self.reading.wait()
        self.sent.append(rtc.SignalResponse.FromString(data))

    async def send_text(self, data: str) -> None:
        raise AssertionError("binary session")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code})

    def of_kind(self, kind: str) -> list[rtc.SignalResponse]:
        return [r for r in self.sent if r.WhichOneof("message") == kind]


class Connection:
    def __init__(self, room: Any, identity: str, *, reading: bool = True) -> None:
        self.websocket = FakeWebSocket(reading=reading)
        self.session = SignalSession(self.websocket, 1 << 20)  # type: ignore[arg-type]
        grants = ClaimGrants(api_key="k", identity=identity)
        self.participant = Participant(
            grants,
            ParticipantOptions(),
            TransportConfig(),
            self.session.send,
            peer_factory=make_peer,
        )
        self.task = asyncio.ensure_future(
            self.session.run(self.participant, on_ready=lambda: room.join(self.participant))
        )

    async def until(self, predicate: Any, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await asyncio.sleep(0.01)


async def test_a_replaced_participant_handles_no_more_requests() -> None:
    room = make_room()
    a = Connection(room, "x")
    await a.until(lambda: a.websocket.of_kind("join"))
    a.websocket.request(
        rtc.SignalRequest(add_track=rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO))
    )
    await a.until(lambda: a.websocket.of_kind("track_published"))
    b = Connection(room, "x")  # same identity: A gets a leave and its socket is closed
    await b.until(lambda: b.websocket.of_kind("join"))
    await a.until(lambda: a.participant.closed)
    a.participant.peer_factory = lambda *args, **kw: pytest.fail("new PeerTransport")
    a.websocket.request(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="x")))
    await a.until(lambda: a.task.done())
    assert a.participant.publisher is None and not room.tracks
    leaves = a.websocket.of_kind("leave")
    assert [r.leave.reason for r in leaves] == [models.DisconnectReason.DUPLICATE_IDENTITY]
    assert a.websocket.closed_with is not None and a.websocket.closed_with[0] == CLOSE_NORMAL
    assert not b.participant.closed
    b.websocket.request(rtc.SignalRequest(leave=rtc.LeaveRequest()))
    await b.until(lambda: b.task.done())
    await room.close()


async def test_closing_the_participant_closes_the_websocket() -> None:
    room = make_room()
    a = Connection(room, "a")
    await a.until(lambda: a.websocket.of_kind("join"))
    await room.close()
    await a.until(lambda: a.task.done())
    assert a.websocket.of_kind("leave")[0].leave.reason == models.DisconnectReason.ROOM_CLOSED
    assert a.websocket.closed_with == (CLOSE_NORMAL, "")


async def test_a_client_that_stops_reading_is_disconnected_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(session_module, "OUTBOX_BYTES", 64 * 1024)
    room = make_room()
    talker = Connection(room, "talker")
    await talker.until(lambda: talker.websocket.of_kind("join"))
    talker.websocket.request(
        rtc.SignalRequest(
            add_track=rtc.AddTrackRequest(cid="c", name="n" * 256, type=models.TrackType.AUDIO)
        )
    )
    await talker.until(lambda: talker.websocket.of_kind("track_published"))
    media = PublishedMedia("0", "audio", "sendonly", ("s", "c"), (), (), OPUS, {})
    # the first offer creates the (fake) publisher PC, the second binds the m-line
    talker.websocket.request(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="x")))
    await talker.until(lambda: talker.participant.publisher is not None)
    talker.participant.publisher.medias = [media]  # type: ignore[attr-defined]
    talker.websocket.request(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="y")))
    await talker.until(lambda: talker.participant.published)
    sid = next(iter(talker.participant.published))
    deaf = Connection(room, "deaf", reading=False)
    await deaf.until(lambda: deaf.participant.subscriber is not None)
    before = COUNTERS.limits_exceeded.get("signal_outbox", 0)
    with caplog.at_level(logging.WARNING, logger="sfu.signal.session"):
        for i in range(2000):
            talker.participant.set_track_muted(sid, i % 2 == 0)
            room.flush_updates()
            await asyncio.sleep(0)  # the talker's own writer keeps up
        await deaf.until(lambda: deaf.participant.closed)
        deaf.websocket.reading.set()
        await deaf.until(lambda: deaf.task.done())
    warnings = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(warnings) == 1
    assert COUNTERS.limits_exceeded["signal_outbox"] == before + 1
    assert [r.WhichOneof("message") for r in deaf.websocket.sent][-1] == "leave"
    assert deaf.websocket.closed_with == (CLOSE_POLICY, "signal outbox full")
    assert "deaf" not in room.participants and not talker.participant.closed
    await room.close()


async def test_refused_requests_are_counted_in_sfu_signal_errors_total() -> None:
    room = make_room()
    a = Connection(room, "a")
    await a.until(lambda: a.websocket.of_kind("join"))
    before = COUNTERS.signal_errors
    a.websocket.request(rtc.SignalRequest(mute=rtc.MuteTrackRequest(sid="TR_nope", muted=True)))
    too_many = [rtc.TrackPermission(participant_identity=f"p{i}") for i in range(2000)]
    a.websocket.request(
        rtc.SignalRequest(
            subscription_permission=rtc.SubscriptionPermission(track_permissions=too_many)
        )
    )
    await a.until(lambda: len(a.websocket.of_kind("request_response")) == 2)
    reasons = [r.request_response.reason for r in a.websocket.of_kind("request_response")]
    assert reasons == [
        rtc.RequestResponse.Reason.NOT_FOUND,
        rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
    ]
    assert COUNTERS.signal_errors == before + 2
    exported = Metrics("n", COUNTERS).render().decode()
    line = next(x for x in exported.splitlines() if x.startswith("sfu_signal_errors_total{"))
    assert float(line.rsplit(" ", 1)[1]) == COUNTERS.signal_errors
    await room.close()


async def test_garbage_sdp_is_one_info_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(self: object, sdp: str, red_tracks: frozenset[str] = frozenset()) -> None:
        raise SdpError("SDP must start with v=0")  # what the real parser says to garbage

    monkeypatch.setattr(FakePeer, "handle_offer", refuse)
    room = make_room()
    a = Connection(room, "a")
    await a.until(lambda: a.websocket.of_kind("join"))
    with caplog.at_level(logging.INFO, logger="sfu.signal.session"):
        for sdp in ("garbage", "v=0\r\n"):
            a.websocket.request(
                rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp))
            )
        a.websocket.request(rtc.SignalRequest(leave=rtc.LeaveRequest()))
        await a.until(lambda: a.task.done())
    lines = [
        r for r in caplog.records if r.name == "sfu.signal.session" and "SDP" in r.getMessage()
    ]
    assert len(lines) == 2
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in lines)
    await room.close()


async def test_a_join_that_loses_the_race_for_the_last_place_gets_a_clear_refusal() -> None:
    room = make_room()
    room.max_participants = 1
    a = Connection(room, "a")
    await a.until(lambda: a.websocket.of_kind("join"))
    b = Connection(room, "b")
    await b.until(lambda: b.task.done())
    assert [r.leave.reason for r in b.websocket.of_kind("leave")] == [
        models.DisconnectReason.JOIN_FAILURE
    ]
    assert b.websocket.closed_with is not None and b.websocket.closed_with[0] == 1013
    assert not a.participant.closed
    await room.close()


async def test_publisher_candidates_that_arrive_before_the_offer_are_kept_for_it() -> None:
    room = make_room()
    a = Connection(room, "a")
    await a.until(lambda: a.websocket.of_kind("join"))
    init = '{"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 %d typ host", "sdpMid": "0"}'
    for port in range(1, 71):  # more than the cap: the rest are refused as before
        trickle = rtc.TrickleRequest(candidateInit=init % port, target=rtc.SignalTarget.PUBLISHER)
        a.websocket.request(rtc.SignalRequest(trickle=trickle))
    a.websocket.request(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp="x")))
    await a.until(lambda: a.websocket.of_kind("answer"))
    publisher = a.participant.publisher
    assert publisher is not None
    assert publisher.remote_candidates == [init % port for port in range(1, 65)]  # type: ignore[attr-defined]
    refused = [r for r in a.websocket.of_kind("request_response")]
    assert len(refused) == 6
    a.websocket.request(rtc.SignalRequest(leave=rtc.LeaveRequest()))
    await a.until(lambda: a.task.done())
    await room.close()


async def test_a_backlog_of_requests_does_not_hold_the_event_loop() -> None:
    """Requests already queued on the socket are served one per loop iteration, so a client
    that sends 100k small requests at once cannot starve everybody else's media."""
    room = make_room()
    a = Connection(room, "a")
    await a.until(lambda: a.websocket.of_kind("join"))
    for _ in range(2000):
        update = rtc.UpdateSubscription(track_sids=["TR_nope"], subscribe=True)
        a.websocket.request(rtc.SignalRequest(subscription=update))
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while a.websocket.incoming.qsize():
            ticks += 1
            await asyncio.sleep(0)

    await asyncio.gather(other_work(), a.until(lambda: not a.websocket.incoming.qsize(), 10))
    assert ticks >= 1000  # everyone else ran between the requests
    a.websocket.request(rtc.SignalRequest(leave=rtc.LeaveRequest()))
    await a.until(lambda: a.task.done())
    await room.close()
