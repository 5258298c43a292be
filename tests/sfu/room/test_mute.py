"""`Participant.set_track_muted`: what a MuteTrackRequest does to a published track.

The end-to-end test (tests/integration/test_mute.py) sees the mute announced, forwarding stop and
media resume; it cannot tell the SFU's own key-frame request on unmute from one a subscriber's
decoder asks for, so that part is checked here on the method itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from livekit.protocol import models, rtc

from sfu.room.participant import Participant
from sfu.room.track import TrackRequestError


@dataclass
class FakeReceiver:
    muted: bool = False
    keyframe_requests: int = 0

    def request_keyframe_all(self) -> None:
        self.keyframe_requests += 1


@dataclass
class FakeRoom:
    broadcasts: list[object] = field(default_factory=list)

    def broadcast_participant(self, participant: object) -> None:
        self.broadcasts.append(participant)


def publisher() -> tuple[SimpleNamespace, FakeReceiver, models.TrackInfo]:
    receiver = FakeReceiver()
    info = models.TrackInfo(sid="TR_cam", type=models.TrackType.VIDEO)
    track = SimpleNamespace(info=info, receiver=receiver)
    return SimpleNamespace(published={"TR_cam": track}, pending={}, room=FakeRoom()), receiver, info


def test_mute_mutes_the_receiver_and_tells_the_room_without_a_key_frame() -> None:
    me, receiver, info = publisher()
    Participant.set_track_muted(me, "TR_cam", True)  # type: ignore[arg-type]
    assert info.muted and receiver.muted
    assert me.room.broadcasts == [me]
    assert receiver.keyframe_requests == 0


def test_unmute_asks_the_publisher_for_a_key_frame() -> None:
    me, receiver, info = publisher()
    Participant.set_track_muted(me, "TR_cam", True)  # type: ignore[arg-type]
    Participant.set_track_muted(me, "TR_cam", False)  # type: ignore[arg-type]
    assert not info.muted and not receiver.muted
    assert receiver.keyframe_requests == 1
    assert me.room.broadcasts == [me, me]


def test_a_repeated_state_changes_nothing() -> None:
    me, receiver, _info = publisher()
    Participant.set_track_muted(me, "TR_cam", False)  # type: ignore[arg-type]
    assert me.room.broadcasts == [] and receiver.keyframe_requests == 0


def test_an_unknown_track_is_not_found() -> None:
    me, _receiver, _info = publisher()
    with pytest.raises(TrackRequestError) as refused:
        Participant.set_track_muted(me, "TR_nope", True)  # type: ignore[arg-type]
    assert refused.value.reason == rtc.RequestResponse.Reason.NOT_FOUND
