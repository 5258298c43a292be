"""The JoinResponse: what a participant learns of the server, its room and the others on joining.

The server's identity (version, protocol, edition), the ping schedule, the ICE servers, the
codecs it takes from publishers and the client settings it forces (no resume: a reconnect is a
fresh join) are fixed here, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from livekit.protocol import models, rtc

__all__ = ["PING_INTERVAL", "PING_TIMEOUT", "PROTOCOL_VERSION", "SERVER_VERSION", "join_response"]

SERVER_VERSION = "1.9.0"
PROTOCOL_VERSION = 17
PING_INTERVAL = 5
PING_TIMEOUT = 15
#: the codecs publishers may use (what the SFU answers and forwards)
PUBLISH_CODECS = ("video/VP8", "audio/opus")


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
