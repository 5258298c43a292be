"""What a participant may send and receive beyond its token's grants: a publisher's
SubscriptionPermission (who may subscribe to which of its tracks) and the DataPacket kinds a
client may relay to others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from livekit.protocol import models, rtc

from sfu.media.transport import DATA_CHANNEL_LABELS
from sfu.metrics import COUNTERS
from sfu.room.track import TrackRequestError

log = logging.getLogger(__name__)

#: TrackPermission entries per SubscriptionPermission (one per other participant at most)
MAX_TRACK_PERMISSIONS = 1024
#: track sids per TrackPermission (a publisher has at most MAX_TRACKS_PER_PARTICIPANT)
MAX_PERMISSION_TRACK_SIDS = 64

#: DataPacket payloads a client may send to others. The server's own kinds (`speaker`,
#: `transcription`, `metrics`) are dropped: a client could otherwise make anyone "speak" or
#: attribute a caption to anyone (LiveKit's server drops them too).
FORWARDED_DATA_KINDS = frozenset(
    {
        "user",
        "chat_message",
        "rpc_request",
        "rpc_response",
        "rpc_ack",
        "stream_header",
        "stream_chunk",
        "stream_trailer",
        "encrypted_packet",
        "sip_dtmf",
    }
)


def forwardable(packet: models.DataPacket) -> bool:
    """Whether a client-sent DataPacket may be relayed (counted when it may not)."""
    kind = packet.WhichOneof("value")
    if kind in FORWARDED_DATA_KINDS:
        return True
    COUNTERS.limit_exceeded("data_packet_kind")
    return False


def relayable(label: str, payload: bytes, identity: str, sid: str) -> models.DataPacket | None:
    """The DataPacket a client sent on ``label``, stamped with its sender (a client cannot speak
    for anyone else), or None when it must not be relayed (wrong channel, malformed, a kind
    only the server sends)."""
    if label not in DATA_CHANNEL_LABELS:
        return None
    try:
        packet = models.DataPacket.FromString(payload)
    except Exception:  # protobuf DecodeError
        log.info("participant %r: malformed DataPacket dropped", identity)
        return None
    if not forwardable(packet):
        log.debug("participant %r: %s packet dropped", identity, packet.WhichOneof("value"))
        return None
    packet.participant_identity = identity
    packet.participant_sid = sid
    if packet.HasField("user"):
        packet.user.participant_sid = sid
        packet.user.participant_identity = identity
    return packet


@dataclass(frozen=True)
class _Grant:
    all_tracks: bool
    track_sids: frozenset[str]


class SubscriptionPermissions:
    """A publisher's SubscriptionPermission. By default everyone may subscribe to everything.

    Entries name a subscriber by identity or, failing that, by sid (as LiveKit matches them).
    """

    def __init__(self) -> None:
        self.all_participants = True
        self._by_identity: dict[str, _Grant] = {}
        self._by_sid: dict[str, _Grant] = {}

    def update(self, request: rtc.SubscriptionPermission) -> None:
        """Replace the permissions; raises TrackRequestError (nothing changed) over a cap."""
        if len(request.track_permissions) > MAX_TRACK_PERMISSIONS:
            COUNTERS.limit_exceeded("subscription_permissions")
            raise TrackRequestError(
                rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                f"at most {MAX_TRACK_PERMISSIONS} track permissions",
            )
        by_identity: dict[str, _Grant] = {}
        by_sid: dict[str, _Grant] = {}
        for entry in request.track_permissions:
            if len(entry.track_sids) > MAX_PERMISSION_TRACK_SIDS:
                COUNTERS.limit_exceeded("subscription_permission_tracks")
                raise TrackRequestError(
                    rtc.RequestResponse.Reason.LIMIT_EXCEEDED,
                    f"at most {MAX_PERMISSION_TRACK_SIDS} track sids per permission",
                )
            grant = _Grant(entry.all_tracks, frozenset(entry.track_sids))
            if entry.participant_identity:
                by_identity[entry.participant_identity] = grant
            elif entry.participant_sid:
                by_sid[entry.participant_sid] = grant
        self.all_participants = request.all_participants
        self._by_identity, self._by_sid = by_identity, by_sid

    def allows(self, identity: str, sid: str, track_sid: str) -> bool:
        if self.all_participants:
            return True
        grant = self._by_identity.get(identity) or self._by_sid.get(sid)
        return grant is not None and (grant.all_tracks or track_sid in grant.track_sids)
