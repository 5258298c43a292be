"""What a participant publishes and what it receives: a published track bound to an m-line, one
subscription to it, and the end of their transports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from sfu.ids import TrackSid
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import TrackReceiver
from sfu.media.transport import PeerTransport
from sfu.room.dynacast import Dynacast
from sfu.room.layer_selection import preferred_layer

if TYPE_CHECKING:
    from sfu.room.participant import Participant


@dataclass
class PublishedTrack:
    """A track bound to an m-line of its publisher's offer."""

    info: models.TrackInfo
    publisher: Participant
    receiver: TrackReceiver
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

    @property
    def sid(self) -> TrackSid:
        return TrackSid(self.info.sid)


@dataclass
class Subscription:
    track: PublishedTrack
    downtrack: DownTrack
    mid: str
    stream_id: str = field(default="")
    paused: bool = False  # last StreamState sent to the subscriber
    #: the id of the first subscriber offer carrying this track (0: not offered yet)
    offer_id: int = 0
    #: whether the client has answered that offer (it knows the SSRC: media may flow)
    negotiated: bool = False


#: transport closes that outlived a cancelled Participant.close (kept referenced until done)
_CLOSING: set[asyncio.Future[list[BaseException | None]]] = set()


async def close_transports(*transports: PeerTransport | None) -> None:
    """Close each transport to the end, even if the caller is cancelled meanwhile: each close
    runs in its own task, and a cancellation of the caller leaves them running."""
    closes = [asyncio.ensure_future(t.close()) for t in transports if t is not None]
    if not closes:
        return
    done = asyncio.gather(*closes, return_exceptions=True)
    _CLOSING.add(done)
    done.add_done_callback(_CLOSING.discard)
    await asyncio.shield(done)
