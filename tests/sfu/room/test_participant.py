"""Participant: closing, publishing caps, subscription bookkeeping, data packets, RTCP errors."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Iterator

import aioice.ice
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from livekit.protocol import models, rtc

from sfu.auth import ClaimGrants
from sfu.media.transport import TrackSlotLimitError, TransportConfig
from sfu.metrics import COUNTERS
from sfu.room import participant as participant_module
from sfu.room.participant import Participant, ParticipantOptions
from sfu.room.publications import MAX_TRACKS_PER_PARTICIPANT
from sfu.room.subscriptions import MAX_SUBSCRIPTION_SIDS
from sfu.room.track import TrackRequestError
from sfu.room.types import SignalStateError
from tests.sfu.room.fakes import Client, joined, make_room


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


async def unanswerable_offer() -> str:
    """A real publisher offer whose ICE can never complete: its peer is gone."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.mark.usefixtures("loopback_only")
async def test_publisher_that_never_connects_closes_both_transports() -> None:
    sdp = await unanswerable_offer()
    gc.collect()
    fds_before = open_fds()
    room = make_room()
    sent: list[rtc.SignalResponse] = []
    grants = ClaimGrants(api_key="k", identity="mallory")
    mallory = Participant(
        grants, ParticipantOptions(), TransportConfig(connect_timeout=1), sent.append
    )
    await room.join(mallory)
    await mallory.handle_offer(rtc.SessionDescription(type="offer", sdp=sdp, id=1))
    assert mallory.publisher is not None and mallory.subscriber is not None
    deadline = time.monotonic() + 5
    while not (mallory.closed and mallory.subscriber.state == "closed"):
        assert time.monotonic() < deadline, (mallory.closed, mallory.subscriber.state)
        await asyncio.sleep(0.05)
    assert mallory.publisher.state == "closed"
    while open_fds() - fds_before:
        assert time.monotonic() < deadline, open_fds() - fds_before
        await asyncio.sleep(0.05)
    assert mallory.disconnect_reason == models.DisconnectReason.CONNECTION_TIMEOUT
    await room.close()


async def test_close_runs_every_transport_close_even_when_cancelled() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    await alice.publish_audio("mic", "0")
    task = asyncio.ensure_future(alice.participant.close(models.DisconnectReason.SIGNAL_CLOSE))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    assert alice.publisher.closed and alice.subscriber.closed
    await room.close()


async def test_publisher_pc_closed_unpublishes_its_tracks() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    bob = await joined(room, "bob")
    sid = await alice.publish_audio("mic", "0")
    assert sid in bob.participant.subscriptions
    alice.publisher.set_state("closed")  # the client sent DTLS close_notify
    await asyncio.sleep(0.05)
    assert alice.participant.closed
    assert room.find_track(sid) is None and not bob.participant.subscriptions
    await room.close()


async def test_tracks_per_participant_are_capped() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    for i in range(MAX_TRACKS_PER_PARTICIPANT):
        await alice.publish_audio(f"c{i}", str(i))
    before = COUNTERS.limits_exceeded.get("tracks_per_participant", 0)
    with pytest.raises(TrackRequestError) as refused:
        alice.participant.add_track(rtc.AddTrackRequest(cid="more", type=models.TrackType.AUDIO))
    assert refused.value.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED
    assert COUNTERS.limits_exceeded["tracks_per_participant"] == before + 1
    assert len(alice.participant.published) == MAX_TRACKS_PER_PARTICIPANT
    await room.close()


async def test_tracks_per_room_are_capped() -> None:
    room = make_room()
    room.max_tracks = 3
    people = [await joined(room, f"p{i}") for i in range(2)]
    await people[0].publish_audio("a", "0")
    await people[0].publish_audio("b", "1")
    await people[1].publish_audio("c", "0")
    with pytest.raises(TrackRequestError) as refused:
        people[1].participant.add_track(rtc.AddTrackRequest(cid="d", type=models.TrackType.AUDIO))
    assert refused.value.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED
    await room.close()


async def test_pending_tracks_of_several_participants_cannot_overfill_a_room() -> None:
    room = make_room()
    room.max_tracks = 2
    people = [await joined(room, f"p{i}") for i in range(3)]
    for person in people:  # all announced while the room still had room
        person.participant.add_track(rtc.AddTrackRequest(cid="a", type=models.TrackType.AUDIO))
    before = COUNTERS.limits_exceeded.get("tracks_per_room", 0)
    for person in people:
        await person.publish_audio("a", "0")
    assert room.track_count() == 2
    assert COUNTERS.limits_exceeded["tracks_per_room"] == before + 1
    await room.close()


async def test_subscription_toggles_without_answers_reuse_one_downtrack() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    bob = await joined(room, "bob", can_publish=False)
    sid = await alice.publish_audio("mic", "0")
    await asyncio.sleep(0)
    sub = bob.participant.subscriptions[sid]
    calls = bob.subscriber.add_track_calls
    for _ in range(1000):
        bob.participant.update_subscription(
            rtc.UpdateSubscription(track_sids=[sid], subscribe=False)
        )
        bob.participant.update_subscription(
            rtc.UpdateSubscription(track_sids=[sid], subscribe=True)
        )
    await asyncio.sleep(0.01)
    assert bob.participant.subscriptions[sid] is sub
    assert bob.subscriber.add_track_calls == calls
    assert alice.participant.published[sid].receiver.sinks.count(sub.downtrack) == 1
    # settings sent while unsubscribed apply to the reused subscription
    bob.participant.update_subscription(rtc.UpdateSubscription(track_sids=[sid], subscribe=False))
    bob.participant.update_track_settings(rtc.UpdateTrackSettings(track_sids=[sid], disabled=True))
    bob.participant.update_subscription(rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
    assert bob.participant.subscriptions[sid] is sub and not sub.downtrack.enabled
    # unsubscribed and the offer answered: the m-line goes inactive for good
    bob.participant.update_subscription(rtc.UpdateSubscription(track_sids=[sid], subscribe=False))
    await bob.participant.handle_answer(rtc.SessionDescription(type="answer", sdp="a"))
    await asyncio.sleep(0.01)
    assert bob.subscriber.slots == {sub.mid: None}
    assert sub.downtrack.closed and not alice.participant.published[sid].receiver.sinks
    await room.close()


async def test_update_subscription_sids_are_capped_and_looked_up_by_index() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    for i in range(50):
        await joined(room, f"p{i}")
    sid = await alice.publish_audio("mic", "0")
    bob = await joined(room, "bob", can_publish=False)
    assert sid in bob.participant.subscriptions
    sids = [f"TR_{i}" for i in range(60_000)]
    before = COUNTERS.limits_exceeded.get("subscription_sids", 0)
    start = time.perf_counter()
    bob.participant.update_subscription(rtc.UpdateSubscription(track_sids=sids, subscribe=True))
    assert time.perf_counter() - start < 0.5
    assert COUNTERS.limits_exceeded["subscription_sids"] == before + 1
    responses = bob.of_kind("subscription_response")
    assert len(responses) == MAX_SUBSCRIPTION_SIDS
    await room.close()


def data_packet(**kind: object) -> bytes:
    return models.DataPacket(**kind).SerializeToString()  # type: ignore[arg-type]


async def test_only_client_kinds_of_data_packets_are_forwarded() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    bob = await joined(room, "bob")
    received: list[models.DataPacket] = []
    bob.participant.send_data = lambda label, payload: received.append(  # type: ignore[method-assign]
        models.DataPacket.FromString(payload)
    )
    victim = models.SpeakerInfo(sid=bob.participant.sid, level=1, active=True)
    before = COUNTERS.limits_exceeded.get("data_packet_kind", 0)
    alice.participant.receive_data(
        "_reliable", data_packet(speaker=models.ActiveSpeakerUpdate(speakers=[victim]))
    )
    alice.participant.receive_data(
        "_reliable",
        data_packet(transcription=models.Transcription(transcribed_participant_identity="bob")),
    )
    alice.participant.receive_data("_reliable", data_packet(user=models.UserPacket(payload=b"hi")))
    alice.participant.receive_data(
        "_lossy", data_packet(chat_message=models.ChatMessage(message="m"))
    )
    assert [p.WhichOneof("value") for p in received] == ["user", "chat_message"]
    assert received[0].participant_identity == "alice"
    assert COUNTERS.limits_exceeded["data_packet_kind"] == before + 2
    await room.close()


@pytest.mark.expect_log_errors(r"participant 'alice': RTCP reports failed")
async def test_rtcp_loop_logs_a_failure_once_and_counts_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(participant_module, "RTCP_INTERVAL", 0.01)
    room = make_room()
    alice = await joined(room, "alice")
    await alice.publish_audio("mic", "0")
    alice.publisher.state = "connected"

    def broken() -> bytes:
        raise ValueError("boom")

    monkeypatch.setattr(alice.participant.publications.demuxer, "rtcp_reports", broken)
    errors = COUNTERS.signal_errors
    with caplog.at_level(logging.ERROR, logger="sfu.room.participant"):
        await asyncio.sleep(0.1)
    failures = [r for r in caplog.records if "RTCP reports failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert COUNTERS.signal_errors >= errors + 3
    await room.close()


async def test_requests_after_close_are_refused() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    await alice.participant.close(models.DisconnectReason.DUPLICATE_IDENTITY)
    with pytest.raises(SignalStateError):
        await alice.participant.handle_offer(rtc.SessionDescription(type="offer", sdp="x", id=2))
    with pytest.raises(SignalStateError):
        alice.participant.add_track(rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO))
    assert alice.participant.publisher is None
    await room.close()


async def test_overlong_track_sids_are_neither_stored_nor_echoed() -> None:
    room = make_room()
    bob = await joined(room, "bob")
    junk = "x" * 100_000
    before = COUNTERS.limits_exceeded.get("track_sid_bytes", 0)
    bob.participant.update_track_settings(rtc.UpdateTrackSettings(track_sids=[junk, "TR_a"]))
    bob.participant.update_subscription(rtc.UpdateSubscription(track_sids=[junk], subscribe=True))
    assert list(bob.participant.subscribed.track_settings) == ["TR_a"]
    assert not bob.participant.subscribed.track_settings[
        "TR_a"
    ].track_sids  # no copy of the request's list
    assert not bob.of_kind("subscription_response")
    assert COUNTERS.limits_exceeded["track_sid_bytes"] == before + 2
    await room.close()


async def test_a_subscriber_out_of_m_lines_does_not_break_the_publish_for_others() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    bob = await joined(room, "bob")
    carol = await joined(room, "carol")

    def full(*_: object) -> str:
        raise TrackSlotLimitError("more than 1000 subscriber m-lines")

    bob.subscriber.add_track = full  # type: ignore[method-assign]
    sid = await alice.publish_audio("mic", "0")  # the transport counted the refusal
    assert sid in carol.participant.subscriptions
    assert sid not in bob.participant.subscriptions
    await room.close()


async def test_a_participant_closed_before_start_binds_nothing() -> None:
    room = make_room()
    client = Client("late")
    await client.participant.close(models.DisconnectReason.ROOM_CLOSED)
    await client.participant.start([])
    assert client.participant.subscriber is None and not client.participant._tasks
    await room.close()


async def test_a_toggle_storm_before_the_first_offer_queues_one_negotiation() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    sid = await alice.publish_audio("mic", "0")
    bob = await joined(room, "bob")
    release = asyncio.Event()
    offers_before = bob.subscriber.offers

    async def slow_offer() -> str:  # gathering a socket and writing SDP takes a while
        bob.subscriber.offers += 1
        await release.wait()
        return "offer"

    bob.subscriber.create_offer = slow_offer  # type: ignore[method-assign]
    bob.participant.offers.awaiting_answer = False
    for subscribe in [False, True] * 5000:
        update = rtc.UpdateSubscription(track_sids=[sid], subscribe=subscribe)
        bob.participant.update_subscription(update)
    assert len(bob.participant._tasks) <= 3  # the RTCP loop, the token refresh, one negotiation
    release.set()
    await asyncio.sleep(0.05)
    # one offer, built when its task ran: after the storm, so it holds the final state
    assert bob.subscriber.offers - offers_before == 1
    await room.close()
