"""`Subscriptions`: what one participant receives, against a `FakePeer` (the subscriber PC),
`RecordingEvents` (the room) and real `TrackReceiver`s behind fake publishers."""

from __future__ import annotations

from livekit.protocol import models, rtc

from sfu.ids import ParticipantIdentity, ParticipantSid
from sfu.media.transport import TrackSlotLimitError
from sfu.metrics import COUNTERS
from sfu.room.subscriptions import MAX_TRACK_SETTINGS, Subscriptions
from tests.sfu.room.fakes import FakePeer, FakePublisher, RecordingEvents, published_track


class Stage:
    def __init__(self, *, adaptive_stream: bool = False, can_subscribe: bool = True) -> None:
        self.sent: list[rtc.SignalResponse] = []
        self.renegotiations = 0
        self.peer = FakePeer("subscriber")
        self.events = RecordingEvents()
        self.subs = Subscriptions(
            ParticipantIdentity("me"),
            ParticipantSid("PA_me"),
            self.sent.append,
            self.renegotiate,
            adaptive_stream=adaptive_stream,
            can_subscribe=can_subscribe,
        )
        self.subs.peer = self.peer
        self.subs.events = self.events

    def renegotiate(self) -> None:
        self.renegotiations += 1

    def of_kind(self, kind: str) -> list[rtc.SignalResponse]:
        return [r for r in self.sent if r.WhichOneof("message") == kind]

    def permissions(self) -> list[tuple[str, bool]]:
        return [
            (r.subscription_permission_update.track_sid, r.subscription_permission_update.allowed)
            for r in self.of_kind("subscription_permission_update")
        ]


def test_a_subscription_is_one_m_line_one_sink_and_one_renegotiation() -> None:
    stage, track = Stage(), published_track("TR_a")
    stage.subs.subscribe(track)
    stage.subs.subscribe(track)
    sub = stage.subs.by_sid[track.sid]
    assert stage.peer.slots == {sub.mid: ("PA_pub|TR_a", "TR_a")}
    assert track.receiver.sinks == [sub.downtrack] and stage.renegotiations == 1
    assert sub.offer_id == 0 and not sub.negotiated and not sub.downtrack.started


def test_media_starts_only_once_the_offer_is_answered_and_the_pc_is_connected() -> None:
    stage, track = Stage(), published_track()
    stage.subs.subscribe(track)
    sub = stage.subs.by_sid[track.sid]
    stage.subs.offered(1)
    stage.peer.state = "connected"
    stage.subs.start_negotiated()
    assert not sub.downtrack.started  # the client may not know the SSRC yet
    stage.subs.answered(1)
    assert sub.negotiated and sub.downtrack.started


def test_a_later_subscription_keeps_waiting_for_the_offer_that_carries_it() -> None:
    stage = Stage()
    first, second = published_track("TR_a"), published_track("TR_b")
    stage.subs.subscribe(first)
    stage.subs.offered(1)
    stage.subs.subscribe(second)
    stage.subs.answered(1)
    assert stage.subs.by_sid[first.sid].negotiated
    assert not stage.subs.by_sid[second.sid].negotiated
    stage.subs.offered(2)
    assert (
        stage.subs.by_sid[first.sid].offer_id == 1 and stage.subs.by_sid[second.sid].offer_id == 2
    )


def test_an_unanswered_unsubscribe_is_parked_and_a_resubscribe_reuses_its_slot() -> None:
    stage, track = Stage(), published_track()
    stage.subs.subscribe(track)
    sub = stage.subs.by_sid[track.sid]
    stage.subs.unsubscribe(track.sid, park=True)
    assert track.sid not in stage.subs.by_sid and track.receiver.sinks == []
    stage.subs.subscribe(track)
    assert stage.subs.by_sid[track.sid] is sub and stage.peer.add_track_calls == 1
    stage.subs.unsubscribe(track.sid, park=True)
    stage.subs.before_offer()  # the next offer no longer carries it
    assert sub.downtrack.closed and stage.peer.slots[sub.mid] is None


def test_an_answered_subscription_is_released_at_once_even_when_parking() -> None:
    stage, track = Stage(), published_track()
    stage.subs.subscribe(track)
    stage.subs.offered(1)
    stage.subs.answered(1)
    sub = stage.subs.by_sid[track.sid]
    stage.subs.unsubscribe(track.sid, park=True)
    assert sub.downtrack.closed and stage.peer.slots[sub.mid] is None


def test_a_denied_track_is_wanted_not_bound_and_granted_when_allowed() -> None:
    publisher = FakePublisher()
    publisher.subscription_permission.update(rtc.SubscriptionPermission(all_participants=False))
    stage, track = Stage(), published_track(publisher=publisher)
    stage.subs.subscribe(track)
    stage.subs.subscribe(track)
    assert track.sid not in stage.subs.by_sid and track.sid in stage.subs.denied
    assert stage.permissions() == [(track.sid, False)]  # told once
    publisher.subscription_permission.update(rtc.SubscriptionPermission(all_participants=True))
    stage.subs.subscribe(track)
    assert track.sid in stage.subs.by_sid and stage.permissions()[-1] == (track.sid, True)


def test_deny_drops_the_subscription_and_keeps_the_wish() -> None:
    stage, track = Stage(), published_track()
    stage.subs.subscribe(track)
    stage.subs.deny(track)
    assert track.sid not in stage.subs.by_sid and track.sid in stage.subs.denied
    assert stage.permissions() == [(track.sid, False)] and stage.renegotiations == 2


def test_no_m_line_left_binds_nothing_and_asks_for_no_offer() -> None:
    stage, track = Stage(), published_track()
    stage.peer.add_track_error = TrackSlotLimitError("full")
    stage.subs.subscribe(track)
    assert not stage.subs.by_sid and stage.renegotiations == 0


def test_update_subscription_answers_unknown_and_own_tracks_with_not_found() -> None:
    stage = Stage()
    mine = published_track("TR_mine", publisher=FakePublisher("PA_me", "me"))
    stage.events.tracks = {"TR_mine": mine, "TR_other": published_track("TR_other")}
    request = rtc.UpdateSubscription(track_sids=["TR_gone", "TR_mine", "TR_other"], subscribe=True)
    stage.subs.update_subscription(request)
    refused = [r.subscription_response for r in stage.of_kind("subscription_response")]
    assert [(r.track_sid, r.err) for r in refused] == [
        ("TR_gone", models.SubscriptionError.SE_TRACK_NOTFOUND),
        ("TR_mine", models.SubscriptionError.SE_TRACK_NOTFOUND),
    ]
    assert list(stage.subs.by_sid) == ["TR_other"]


def test_a_participant_that_may_not_subscribe_subscribes_to_nothing() -> None:
    stage = Stage(can_subscribe=False)
    stage.events.tracks = {"TR_a": published_track("TR_a")}
    stage.subs.update_subscription(rtc.UpdateSubscription(track_sids=["TR_a"], subscribe=True))
    assert not stage.subs.by_sid and not stage.sent


def test_settings_sent_before_the_subscription_apply_when_it_binds() -> None:
    stage = Stage()
    audio, video = published_track("TR_a"), published_track("TR_v", kind="video")
    stage.subs.update_track_settings(
        rtc.UpdateTrackSettings(track_sids=["TR_a", "TR_v"], disabled=True)
    )
    stage.subs.subscribe(audio)
    stage.subs.subscribe(video)
    assert not stage.subs.by_sid["TR_a"].downtrack.enabled
    assert not stage.subs.by_sid["TR_v"].downtrack.enabled


def test_an_adaptive_stream_client_is_never_started_disabled() -> None:
    stage = Stage(adaptive_stream=True)
    video = published_track("TR_v", kind="video")
    stage.subs.update_track_settings(rtc.UpdateTrackSettings(track_sids=["TR_v"], disabled=True))
    stage.subs.subscribe(video)
    assert stage.subs.by_sid["TR_v"].downtrack.enabled  # it reports its size once frames play


def test_track_settings_are_bounded_and_keep_no_copy_of_the_sid_list() -> None:
    stage = Stage()
    before = COUNTERS.limits_exceeded.get("track_settings", 0)
    sids = [f"TR_{i}" for i in range(MAX_TRACK_SETTINGS + 5)]
    stage.subs.update_track_settings(rtc.UpdateTrackSettings(track_sids=sids, width=320))
    assert len(stage.subs.track_settings) == MAX_TRACK_SETTINGS
    assert COUNTERS.limits_exceeded["track_settings"] == before + 5
    assert all(not s.track_sids for s in stage.subs.track_settings.values())


def test_stream_states_are_sent_when_they_change_only() -> None:
    stage, video = Stage(), published_track("TR_v", kind="video")
    stage.subs.subscribe(video)
    stage.subs.send_stream_states()  # no layer arrives: paused
    stage.subs.send_stream_states()
    stage.subs.update_track_settings(rtc.UpdateTrackSettings(track_sids=["TR_v"], disabled=True))
    stage.subs.send_stream_states()  # not wanted any more: no longer paused
    states = [
        [(s.track_sid, s.state) for s in r.stream_state_update.stream_states]
        for r in stage.of_kind("stream_state_update")
    ]
    assert states == [[("TR_v", rtc.StreamState.PAUSED)], [("TR_v", rtc.StreamState.ACTIVE)]]


def test_close_drops_every_subscription_and_asks_for_no_offer() -> None:
    stage = Stage()
    kept, parked = published_track("TR_a"), published_track("TR_b")
    stage.subs.subscribe(kept)
    stage.subs.subscribe(parked)
    stage.subs.unsubscribe(parked.sid, park=True)
    renegotiations = stage.renegotiations
    stage.subs.close()
    assert not stage.subs.by_sid and not stage.subs.denied
    assert all(slot is None for slot in stage.peer.slots.values())
    assert stage.renegotiations == renegotiations
    stage.subs.subscribe(published_track("TR_c"))
    assert not stage.subs.by_sid
