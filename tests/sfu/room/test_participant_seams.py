"""A `Participant` outside any room: everything it tells its room goes through `RoomEvents`
(here `RecordingEvents`), its peers come from the injected factory, its time from the clock."""

from __future__ import annotations

import asyncio

from livekit.protocol import models, rtc

from sfu.auth import ClaimGrants, VideoGrant
from sfu.media.transport import TransportConfig
from sfu.room.participant import Participant, ParticipantOptions
from tests.sfu.room.fakes import Clock, FakePeer, RecordingEvents, audio_media, make_peer


def alone(
    identity: str = "ann", **grant: object
) -> tuple[Participant, RecordingEvents, list[rtc.SignalResponse]]:
    sent: list[rtc.SignalResponse] = []
    events = RecordingEvents()
    grants = ClaimGrants(api_key="k", identity=identity, video=VideoGrant(**grant))  # type: ignore[arg-type]
    participant = Participant(
        grants,
        ParticipantOptions(),
        TransportConfig(),
        sent.append,
        events=events,
        peer_factory=make_peer,
        clock=Clock(1_000.25),
    )
    return participant, events, sent


def test_join_time_is_read_from_the_injected_clock() -> None:
    participant, _events, _sent = alone()
    info = participant.info()
    assert (info.joined_at, info.joined_at_ms) == (1000, 1_000_250)


async def test_a_participant_in_no_room_closes_cleanly() -> None:
    sent: list[rtc.SignalResponse] = []
    grants = ClaimGrants(api_key="k", identity="solo")
    participant = Participant(
        grants, ParticipantOptions(), TransportConfig(), sent.append, peer_factory=make_peer
    )
    await participant.start([])
    await participant.close(models.DisconnectReason.SERVER_SHUTDOWN)
    assert participant.closed and participant.subscriber is not None
    assert participant.subscriber.closed  # type: ignore[attr-defined]


async def test_close_tells_the_room_once_and_the_client_why_unless_it_asked() -> None:
    participant, events, sent = alone()
    await participant.close(models.DisconnectReason.ROOM_CLOSED)
    await participant.close(models.DisconnectReason.ROOM_CLOSED)
    assert events.names() == ["participant_left"]
    assert [r.leave.reason for r in sent] == [models.DisconnectReason.ROOM_CLOSED]
    quiet, _events, quiet_sent = alone("bo")
    await quiet.close(models.DisconnectReason.CLIENT_INITIATED)
    assert quiet_sent == []


async def test_published_tracks_are_announced_through_the_events_and_withdrawn_on_close() -> None:
    participant, events, _sent = alone()
    participant.add_track(rtc.AddTrackRequest(cid="mic", type=models.TrackType.AUDIO))
    factory = participant.peer_factory

    def with_mic(*args: object, **kwargs: object) -> FakePeer:
        peer = factory(*args, **kwargs)  # type: ignore[arg-type]
        peer.medias = [audio_media("0", "mic")]  # type: ignore[attr-defined]
        return peer  # type: ignore[return-value]

    participant.peer_factory = with_mic  # type: ignore[assignment]
    await participant.handle_offer(rtc.SessionDescription(type="offer", sdp="x", id=7))
    track = next(iter(participant.published.values()))
    assert events.calls == [("track_published", track)]
    assert track.publisher is participant
    await participant.close()
    assert events.names() == ["track_published", "track_unpublished", "participant_left"]


def test_data_is_stamped_with_the_sender_and_handed_to_the_room() -> None:
    participant, events, _sent = alone()
    forged = models.DataPacket(
        participant_identity="someone-else",
        user=models.UserPacket(payload=b"hi", participant_identity="x"),
    )
    participant.receive_data("_reliable", forged.SerializeToString())
    participant.receive_data("not-a-livekit-label", forged.SerializeToString())
    ((name, (packet, label)),) = events.calls  # type: ignore[misc]
    assert (name, label) == ("data_received", "_reliable")
    assert packet.participant_identity == packet.user.participant_identity == "ann"
    assert packet.participant_sid == participant.sid


def test_data_from_a_participant_without_the_grant_goes_nowhere() -> None:
    participant, events, _sent = alone(can_publish_data=False)
    participant.receive_data(
        "_reliable", models.DataPacket(user=models.UserPacket()).SerializeToString()
    )
    assert events.calls == []


async def test_the_first_connected_peer_marks_it_active_once() -> None:
    participant, events, _sent = alone()
    await participant.start([])
    subscriber: FakePeer = participant.subscriber  # type: ignore[assignment]
    subscriber.set_state("connected")
    subscriber.set_state("connected")
    assert participant.state == models.ParticipantInfo.State.ACTIVE
    assert events.names() == ["participant_changed"]
    await participant.close()


async def test_rtcp_reports_go_only_to_connected_peers() -> None:
    participant, _events, _sent = alone()
    await participant.start([])
    subscriber: FakePeer = participant.subscriber  # type: ignore[assignment]
    participant.send_rtcp_reports()  # nothing forwarded yet, nothing connected: nothing sent
    subscriber.state = "connected"
    participant.send_rtcp_reports()
    assert subscriber.rtcp == []  # no stream has sent a packet: no sender report
    await participant.close()


async def test_a_subscriber_pc_failure_closes_the_participant() -> None:
    participant, events, _sent = alone()
    await participant.start([])
    participant.subscriber.set_state("failed")  # type: ignore[union-attr]
    for _ in range(5):
        if participant.closed:
            break
        await asyncio.sleep(0)
    assert participant.closed
    assert participant.disconnect_reason == models.DisconnectReason.CONNECTION_TIMEOUT
    assert "participant_left" in events.names()
