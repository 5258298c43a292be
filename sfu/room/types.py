"""The seams of a participant, declared by their consumer: what it asks of its room
(`RoomEvents`), of a peer connection (`Peer`, made by a `PeerFactory`) and of time (`Clock`).

`sfu.room.room` implements `RoomEvents` (one adapter per member); `sfu.media.transport`'s
`PeerTransport` is the real `Peer`. A participant outside any room talks to `NullRoomEvents`.
Nothing here imports the room or the participant, so both depend on this module and not on
each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from livekit.protocol import models

from sfu.media.sdp import Codec
from sfu.media.transport import PublishedMedia, TransportConfig
from sfu.room.publication import PublishedTrack

#: seconds since the epoch (`time.time`); injected where a participant reads the time
Clock = Callable[[], float]


class SignalStateError(Exception):
    """A request that is valid protobuf but arrives in the wrong state."""


class Peer(Protocol):
    """One peer connection, as the room layer uses it (`PeerTransport`'s public members)."""

    @property
    def state(self) -> str: ...

    async def handle_offer(
        self, sdp: str, red_tracks: frozenset[str] = frozenset()
    ) -> tuple[str, list[PublishedMedia]]: ...

    async def create_offer(self) -> str: ...

    async def handle_answer(self, sdp: str) -> None: ...

    def add_track(
        self, kind: str, codec: Codec | str, ssrc: int, stream_id: str, track_id: str
    ) -> str: ...

    def remove_track(self, mid: str) -> None: ...

    def track_codec(self, mid: str) -> Codec: ...

    @property
    def transport_cc_id(self) -> int:
        """The transport-cc extension id the subscriber's answer kept (0: none, or
        rtc.congestion_control off)."""
        ...

    @property
    def congestion_control(self) -> bool:
        """rtc.congestion_control: estimate this subscriber's link and allocate under it."""
        ...

    def add_remote_candidate(self, candidate_init_json: str) -> None: ...

    def send_rtp(self, data: bytes) -> None: ...

    def fast_sender(self) -> tuple[Any, Any, Any] | None: ...

    def takes_red(self, ssrc: int) -> bool: ...

    def send_rtcp(self, data: bytes) -> None: ...

    def send_data(self, label: str, data: bytes) -> None: ...

    async def close(self) -> None: ...


class PeerFactory(Protocol):
    """Makes a participant's peer connection (`PeerTransport` in production)."""

    def __call__(
        self,
        role: Literal["publisher", "subscriber"],
        config: TransportConfig,
        *,
        on_rtp: Callable[[bytes], None],
        on_rtcp: Callable[[bytes], None],
        on_data: Callable[[str, bytes], None],
        on_state: Callable[[str], None],
    ) -> Peer: ...


class RoomEvents(Protocol):
    """What a participant tells, and asks, the room it is in (LiveKit's
    LocalParticipantListener). Each participant holds its own: no method names the participant."""

    def participant_changed(self) -> None:
        """Its info changed (state, mute): the room sends it to everyone with the next batch."""

    def track_published(self, track: PublishedTrack) -> None:
        """A track bound to an m-line: others may subscribe."""

    def track_unpublished(self, track: PublishedTrack) -> None:
        """A track went away: others' subscriptions to it end."""

    def data_received(self, packet: models.DataPacket, label: str) -> None:
        """A forwardable DataPacket, stamped with the sender: relay it."""

    def permission_changed(self) -> None:
        """Its SubscriptionPermission changed: others' subscriptions follow it."""

    def participant_left(self) -> None:
        """It closed: the room forgets it."""

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        """A track of the room by sid (any publisher's)."""

    def track_count(self) -> int:
        """Tracks published in the room."""

    def max_tracks(self) -> int:
        """Tracks the room may hold."""


class NullRoomEvents:
    """The room of a participant that is in none: nothing to tell, no tracks, no room for any."""

    def participant_changed(self) -> None:
        pass

    def track_published(self, track: PublishedTrack) -> None:
        pass

    def track_unpublished(self, track: PublishedTrack) -> None:
        pass

    def data_received(self, packet: models.DataPacket, label: str) -> None:
        pass

    def permission_changed(self) -> None:
        pass

    def participant_left(self) -> None:
        pass

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        return None

    def track_count(self) -> int:
        return 0

    def max_tracks(self) -> int:
        return 0
