"""The SignalResponses the server builds: pure functions from state to LiveKit protobuf.

The server's identity (version, protocol, edition), the ping schedule, the ICE servers, the
codecs it takes from publishers and the client settings it forces (no resume: a reconnect is a
fresh join) are fixed here, in one place. Nothing here sends anything or holds state.
"""

from __future__ import annotations

from collections.abc import Sequence

from livekit.protocol import models, rtc

from sfu.auth import VideoGrant

__all__ = [
    "KIND_BY_NAME",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "PROTOCOL_VERSION",
    "PUBLISH_CODECS",
    "SERVER_VERSION",
    "SOURCE_BY_NAME",
    "connection_quality_update",
    "join_response",
    "leave",
    "participant_kind",
    "participant_permission",
    "participant_update",
    "request_response",
    "speakers_changed",
    "stream_state_update",
    "subscription_permission_update",
]

SERVER_VERSION = "1.9.0"
PROTOCOL_VERSION = 17
PING_INTERVAL = 5
PING_TIMEOUT = 15
#: the codecs publishers may use (what the SFU answers and forwards)
PUBLISH_CODECS = ("video/VP8", "audio/opus")
#: a token's can_publish_sources names (`sfu.auth` checks them against this)
SOURCE_BY_NAME = {
    "camera": models.TrackSource.CAMERA,
    "microphone": models.TrackSource.MICROPHONE,
    "screen_share": models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": models.TrackSource.SCREEN_SHARE_AUDIO,
}
KIND_BY_NAME = {
    "standard": models.ParticipantInfo.Kind.STANDARD,
    "ingress": models.ParticipantInfo.Kind.INGRESS,
    "egress": models.ParticipantInfo.Kind.EGRESS,
    "sip": models.ParticipantInfo.Kind.SIP,
    "agent": models.ParticipantInfo.Kind.AGENT,
}


def join_response(
    room: models.Room,
    participant: models.ParticipantInfo,
    others: list[models.ParticipantInfo],
    ice_servers: Sequence[rtc.ICEServer],
    *,
    node_id: str,
    subscriber_primary: bool,
    fast_publish: bool,
) -> rtc.JoinResponse:
    return rtc.JoinResponse(
        room=room,
        participant=participant,
        other_participants=others,
        server_version=SERVER_VERSION,
        ice_servers=list(ice_servers),
        subscriber_primary=subscriber_primary,
        client_configuration=models.ClientConfiguration(
            resume_connection=models.ClientConfigSetting.DISABLED
        ),
        ping_timeout=PING_TIMEOUT,
        ping_interval=PING_INTERVAL,
        server_info=models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard,
            version=SERVER_VERSION,
            protocol=PROTOCOL_VERSION,
            node_id=node_id,
        ),
        enabled_publish_codecs=[models.Codec(mime=mime) for mime in PUBLISH_CODECS],
        fast_publish=fast_publish,
    )


def participant_permission(video: VideoGrant) -> models.ParticipantPermission:
    """What a token's video grant lets its holder do, as ParticipantInfo reports it."""
    return models.ParticipantPermission(
        can_subscribe=video.can_subscribe,
        can_publish=video.can_publish,
        can_publish_data=video.can_publish_data,
        can_publish_sources=[SOURCE_BY_NAME[s] for s in video.can_publish_sources],
        hidden=video.hidden,
        recorder=video.recorder,
        can_update_metadata=video.can_update_own_metadata,
    )


def participant_kind(kind: str) -> models.ParticipantInfo.Kind:
    """A token's participant kind ("standard", "agent"...) as ParticipantInfo.Kind."""
    return KIND_BY_NAME.get(kind, models.ParticipantInfo.Kind.STANDARD)


def participant_update(infos: list[models.ParticipantInfo]) -> rtc.SignalResponse:
    return rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=infos))


def speakers_changed(speakers: list[models.SpeakerInfo]) -> rtc.SignalResponse:
    return rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers))


def connection_quality_update(
    updates: list[rtc.ConnectionQualityInfo],
) -> rtc.SignalResponse:
    return rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=updates))


def stream_state_update(states: list[rtc.StreamStateInfo]) -> rtc.SignalResponse:
    return rtc.SignalResponse(stream_state_update=rtc.StreamStateUpdate(stream_states=states))


def subscription_permission_update(
    participant_sid: str, track_sid: str, *, allowed: bool
) -> rtc.SignalResponse:
    update = rtc.SubscriptionPermissionUpdate(
        participant_sid=participant_sid, track_sid=track_sid, allowed=allowed
    )
    return rtc.SignalResponse(subscription_permission_update=update)


def leave(
    reason: models.DisconnectReason,
    action: rtc.LeaveRequest.Action = rtc.LeaveRequest.Action.DISCONNECT,
) -> rtc.SignalResponse:
    return rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=action))


def request_response(
    reason: rtc.RequestResponse.Reason,
    message: str,
    *,
    add_track: rtc.AddTrackRequest | None = None,
    mute: rtc.MuteTrackRequest | None = None,
    trickle: rtc.TrickleRequest | None = None,
) -> rtc.SignalResponse:
    """A RequestResponse refusing a request, echoing it in its field (if it has one)."""
    response = rtc.RequestResponse(reason=reason, message=message)
    if add_track is not None:
        response.add_track.CopyFrom(add_track)
    if mute is not None:
        response.mute.CopyFrom(mute)
    if trickle is not None:
        response.trickle.CopyFrom(trickle)
    return rtc.SignalResponse(request_response=response)
