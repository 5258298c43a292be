"""`sfu.room.signalling`: the builders put each thing in the field LiveKit clients read."""

from __future__ import annotations

from livekit.protocol import models, rtc

from sfu.auth import VideoGrant
from sfu.room import signalling


def test_a_join_response_names_the_server_and_forces_a_fresh_join_on_reconnect() -> None:
    join = signalling.join_response(
        models.Room(name="r"),
        models.ParticipantInfo(identity="me"),
        [models.ParticipantInfo(identity="you")],
        [rtc.ICEServer(urls=["turn:example.org"], username="u", credential="c")],
        node_id="N1",
        subscriber_primary=True,
        fast_publish=False,
    )
    assert join.server_info.version == join.server_version == signalling.SERVER_VERSION
    assert join.server_info.protocol == signalling.PROTOCOL_VERSION
    assert (join.ping_interval, join.ping_timeout) == (
        signalling.PING_INTERVAL,
        signalling.PING_TIMEOUT,
    )
    assert join.ping_interval < join.ping_timeout
    assert join.client_configuration.resume_connection == models.ClientConfigSetting.DISABLED
    assert [(s.urls, s.username, s.credential) for s in join.ice_servers] == [
        (["turn:example.org"], "u", "c")
    ]
    assert [c.mime for c in join.enabled_publish_codecs] == list(signalling.PUBLISH_CODECS)
    assert [p.identity for p in join.other_participants] == ["you"]


def test_a_request_response_echoes_the_refused_request() -> None:
    mute = rtc.MuteTrackRequest(sid="TR_x", muted=True)
    response = signalling.request_response(
        rtc.RequestResponse.Reason.NOT_FOUND, "unknown track sid", mute=mute
    ).request_response
    assert response.WhichOneof("request") == "mute" and response.mute == mute
    assert response.reason == rtc.RequestResponse.Reason.NOT_FOUND
    bare = signalling.request_response(rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "too many")
    assert bare.request_response.WhichOneof("request") is None


def test_a_leave_disconnects_unless_told_to_reconnect() -> None:
    leave = signalling.leave(models.DisconnectReason.SIGNAL_CLOSE).leave
    assert leave.action == rtc.LeaveRequest.Action.DISCONNECT
    assert leave.reason == models.DisconnectReason.SIGNAL_CLOSE
    again = signalling.leave(
        models.DisconnectReason.STATE_MISMATCH, rtc.LeaveRequest.Action.RECONNECT
    )
    assert again.leave.action == rtc.LeaveRequest.Action.RECONNECT


def test_each_builder_fills_its_own_message() -> None:
    info = models.ParticipantInfo(identity="a")
    assert signalling.participant_update([info]).update.participants == [info]
    speaker = models.SpeakerInfo(sid="PA_a", level=0.5, active=True)
    assert signalling.speakers_changed([speaker]).speakers_changed.speakers == [speaker]
    state = rtc.StreamStateInfo(track_sid="TR_a", state=rtc.StreamState.PAUSED)
    update = signalling.stream_state_update([state])
    assert update.stream_state_update.stream_states == [state]
    permission = signalling.subscription_permission_update("PA_a", "TR_a", allowed=False)
    assert permission.subscription_permission_update.track_sid == "TR_a"
    assert permission.subscription_permission_update.allowed is False


def test_a_tokens_grants_become_the_reported_permission_and_kind() -> None:
    grant = VideoGrant(can_publish=False, can_publish_sources=("camera", "microphone"), hidden=True)
    permission = signalling.participant_permission(grant)
    assert not permission.can_publish and permission.can_subscribe and permission.hidden
    assert list(permission.can_publish_sources) == [
        models.TrackSource.CAMERA,
        models.TrackSource.MICROPHONE,
    ]
    assert signalling.participant_kind("agent") == models.ParticipantInfo.Kind.AGENT
    assert signalling.participant_kind("unheard-of") == models.ParticipantInfo.Kind.STANDARD
