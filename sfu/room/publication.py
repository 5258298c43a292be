"""What a participant publishes and what it receives: a published track bound to an m-line, one
subscription to it, and the little a subscriber needs to know of a track's publisher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from livekit.protocol import models, rtc

from sfu.ids import ParticipantIdentity, ParticipantSid, TrackSid
from sfu.room.dynacast import Dynacast
from sfu.room.layer_selection import preferred_layer
from sfu.room.media import Forwarding, Receiver
from sfu.room.permission import SubscriptionPermissions


class TrackPublisher(Protocol):
    """The publisher of a track, as its subscribers see it."""

    @property
    def sid(self) -> ParticipantSid: ...

    @property
    def identity(self) -> ParticipantIdentity: ...

    @property
    def subscription_permission(self) -> SubscriptionPermissions: ...


@dataclass
class PublishedTrack:
    """A track bound to an m-line of its publisher's offer."""

    info: models.TrackInfo
    publisher: TrackPublisher
    receiver: Receiver
    mid: str
    #: (width, height) and VideoQuality of each spatial layer, lowest first
    layer_sizes: list[tuple[int, int]] = field(default_factory=list)
    layer_qualities: list[int] = field(default_factory=list)
    dynacast: Dynacast | None = None

    def preferred_layer(self, settings: rtc.UpdateTrackSettings) -> int:
        return preferred_layer(
            self.layer_sizes,
            self.layer_qualities,
            settings.width,
            settings.height,
            settings.quality,
        )

    def permits(self, identity: ParticipantIdentity, sid: ParticipantSid) -> bool:
        """Whether the publisher's SubscriptionPermission lets this participant have it."""
        return self.publisher.subscription_permission.allows(identity, sid, self.sid)

    @property
    def sid(self) -> TrackSid:
        return TrackSid(self.info.sid)


@dataclass
class Subscription:
    track: PublishedTrack
    downtrack: Forwarding
    mid: str
    stream_id: str = field(default="")
    paused: bool = False  # last StreamState sent to the subscriber
    #: the id of the first subscriber offer carrying this track (0: not offered yet)
    offer_id: int = 0
    #: whether the client has answered that offer (it knows the SSRC: media may flow)
    negotiated: bool = False
