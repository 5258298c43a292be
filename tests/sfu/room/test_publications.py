"""`Publications`: AddTrackRequests, binding them to the publisher offer's m-lines, mute and
unpublish, against a `FakePeer` and `RecordingEvents` (no room, no socket).

The end-to-end mute test (tests/integration/test_mute.py) sees the mute announced, forwarding
stop and media resume; it cannot tell the SFU's own key-frame request on unmute from one a
subscriber's decoder asks for, so that part is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from livekit.protocol import models, rtc

from sfu.media.sdp import Codec
from sfu.media.transport import PublishedMedia
from sfu.room.publications import MAX_TRACKS_PER_PARTICIPANT, Publications
from sfu.room.track import TrackRequestError
from tests.sfu.room.fakes import FakePeer, FakePublisher, RecordingEvents, audio_media


class Stage:
    def __init__(self, *, can_publish: bool = True, max_tracks: int = 512) -> None:
        self.sent: list[rtc.SignalResponse] = []
        self.events = RecordingEvents(max_tracks)
        self.peer = FakePeer("publisher")
        self.publications = Publications(FakePublisher(), self.sent.append, can_publish=can_publish)
        self.publications.events = self.events
        self.publications.peer = self.peer

    def add_audio(self, cid: str) -> str:
        self.publications.add_track(rtc.AddTrackRequest(cid=cid, type=models.TrackType.AUDIO))
        return str(self.sent[-1].track_published.track.sid)

    def published_events(self) -> list[str]:
        return [t.sid for name, t in self.events.calls if name == "track_published"]  # type: ignore[attr-defined]


def test_a_repeated_add_track_request_answers_the_same_pending_track() -> None:
    stage = Stage()
    first, again = stage.add_audio("mic"), stage.add_audio("mic")
    assert first == again and first.startswith("TR_")
    assert list(stage.publications.pending) == ["mic"] and not stage.publications.published
    assert stage.events.calls == []  # nothing is published before its m-line


def test_a_sending_m_line_binds_the_request_with_its_cid_and_tells_the_room() -> None:
    stage = Stage()
    mic, cam = stage.add_audio("mic"), stage.add_audio("other")
    stage.publications.bind_offer([audio_media("0", "other"), audio_media("1", "mic")])
    published = stage.publications.published
    assert published[cam].mid == "0" and published[mic].mid == "1"  # by cid, not by order
    assert stage.published_events() == [cam, mic] and not stage.publications.pending
    assert published[mic].publisher is stage.publications.owner


def test_an_m_line_whose_msid_names_no_request_takes_the_oldest_of_its_kind() -> None:
    stage = Stage()
    sid = stage.add_audio("mic")
    stage.publications.bind_offer([audio_media("0", "a-browser-track-id")])
    assert stage.publications.published[sid].mid == "0"


def test_an_m_line_without_any_request_binds_nothing() -> None:
    stage = Stage()
    stage.publications.bind_offer([audio_media("0", "mic")])
    assert not stage.publications.published and stage.events.calls == []


def test_an_m_line_gone_inactive_unpublishes_its_track_once() -> None:
    stage = Stage()
    sid = stage.add_audio("mic")
    stage.publications.bind_offer([audio_media("0", "mic")])
    track = stage.publications.published[sid]
    stage.publications.bind_offer([audio_media("0", "mic", "inactive")])
    stage.publications.bind_offer([audio_media("0", "mic", "inactive")])
    assert not stage.publications.published
    assert stage.events.calls[-1] == ("track_unpublished", track)
    assert stage.events.names().count("track_unpublished") == 1


def test_close_unpublishes_every_track() -> None:
    stage = Stage()
    stage.add_audio("a")
    stage.add_audio("b")
    stage.publications.bind_offer([audio_media("0", "a"), audio_media("1", "b")])
    stage.publications.close()
    assert not stage.publications.published
    assert stage.events.names().count("track_unpublished") == 2


def test_a_participant_without_publish_permission_is_refused() -> None:
    stage = Stage(can_publish=False)
    with pytest.raises(TrackRequestError) as refused:
        stage.add_audio("mic")
    assert refused.value.reason == rtc.RequestResponse.Reason.NOT_ALLOWED and not stage.sent


def test_the_participant_cap_counts_pending_and_published_tracks() -> None:
    stage = Stage()
    for i in range(MAX_TRACKS_PER_PARTICIPANT):
        stage.add_audio(f"c{i}")
    with pytest.raises(TrackRequestError) as refused:
        stage.add_audio("one-more")
    assert refused.value.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED


def test_the_room_cap_counts_this_participants_pending_tracks() -> None:
    stage = Stage(max_tracks=2)
    stage.add_audio("a")
    stage.add_audio("b")
    with pytest.raises(TrackRequestError):
        stage.add_audio("c")


def test_a_room_filled_by_others_meanwhile_leaves_the_m_line_unbound() -> None:
    stage = Stage(max_tracks=1)
    stage.add_audio("mic")
    stage.events.tracks["TR_other"] = object()  # type: ignore[assignment]
    stage.publications.bind_offer([audio_media("0", "mic")])
    assert not stage.publications.published and not stage.publications.pending


# -- mute ------------------------------------------------------------------------------------


@dataclass
class FakeReceiver:
    muted: bool = False
    keyframe_requests: int = 0

    def request_keyframe_all(self) -> None:
        self.keyframe_requests += 1


def with_camera() -> tuple[Stage, FakeReceiver, models.TrackInfo]:
    stage = Stage()
    receiver = FakeReceiver()
    info = models.TrackInfo(sid="TR_cam", type=models.TrackType.VIDEO)
    track = type("Track", (), {"info": info, "receiver": receiver})()
    stage.publications.published["TR_cam"] = track  # type: ignore[index]
    return stage, receiver, info


def test_mute_mutes_the_receiver_and_tells_the_room_without_a_key_frame() -> None:
    stage, receiver, info = with_camera()
    stage.publications.set_track_muted("TR_cam", True)
    assert info.muted and receiver.muted
    assert stage.events.names() == ["participant_changed"]
    assert receiver.keyframe_requests == 0


def test_unmute_asks_the_publisher_for_a_key_frame() -> None:
    stage, receiver, info = with_camera()
    stage.publications.set_track_muted("TR_cam", True)
    stage.publications.set_track_muted("TR_cam", False)
    assert not info.muted and not receiver.muted
    assert receiver.keyframe_requests == 1
    assert stage.events.names() == ["participant_changed"] * 2


def test_a_repeated_mute_state_changes_nothing() -> None:
    stage, receiver, _info = with_camera()
    stage.publications.set_track_muted("TR_cam", False)
    assert stage.events.calls == [] and receiver.keyframe_requests == 0


def test_muting_a_pending_track_is_kept_for_its_binding() -> None:
    stage = Stage()
    sid = stage.add_audio("mic")
    stage.publications.set_track_muted(sid, True)
    stage.publications.bind_offer([audio_media("0", "mic")])
    track = stage.publications.published[sid]
    assert track.info.muted and track.receiver.muted
    assert stage.events.names() == ["track_published"]  # no separate mute update


def test_muting_an_unknown_track_is_not_found() -> None:
    stage, _receiver, _info = with_camera()
    with pytest.raises(TrackRequestError) as refused:
        stage.publications.set_track_muted("TR_nope", True)
    assert refused.value.reason == rtc.RequestResponse.Reason.NOT_FOUND


def test_red_is_asked_for_the_unencrypted_audio_that_did_not_disable_it() -> None:
    stage = Stage()
    add = stage.publications.add_track
    add(rtc.AddTrackRequest(cid="mic", type=models.TrackType.AUDIO))  # livekit-client's default
    add(rtc.AddTrackRequest(cid="plain", type=models.TrackType.AUDIO, disable_red=True))
    add(rtc.AddTrackRequest(cid="e2ee", type=models.TrackType.AUDIO,
                            encryption=models.Encryption.Type.GCM))  # fmt: skip
    add(rtc.AddTrackRequest(cid="cam", type=models.TrackType.VIDEO))
    assert stage.publications.red_tracks() == {"mic"}
    # once published with RED, a renegotiation keeps it (whatever the case of its mime type)
    red = audio_media("0", "mic")
    red = PublishedMedia("0", "audio", "sendonly", red.msid, (), (), Codec(63, "RED", 48000, 2), {})
    stage.publications.bind_offer([red, audio_media("1", "plain")])
    assert stage.publications.red_tracks() == {"mic"} and "mic" not in stage.publications.pending
