"""A stand-in for PeerTransport (the only part of a participant that needs the network), and
builders for a Room with Participants that publish through the real signalling calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.protocol import models, rtc

from sfu.auth import ClaimGrants, VideoGrant
from sfu.config import RoomConfig
from sfu.ids import RoomName
from sfu.media.sdp import Codec
from sfu.media.transport import PeerTransport, PublishedMedia, TransportConfig
from sfu.room.participant import Participant, ParticipantOptions
from sfu.room.room import Room

OPUS = Codec(payload_type=111, name="opus", clock_rate=48000, channels=2)


class FakeTransport:
    """Records what a participant asks of its peer connection; never touches a socket."""

    def __init__(self, role: str, config: TransportConfig, **callbacks: Callable[..., None]):
        self.role = role
        self.on_state: Callable[[str], None] = callbacks["on_state"]
        self.state = "new"
        self.slots: dict[str, tuple[str, str] | None] = {}  # mid → (stream id, track id)
        self.add_track_calls = 0
        self.offers = 0
        self.answers: list[str] = []
        #: what the next handle_offer reports as the offer's m-lines
        self.medias: list[PublishedMedia] = []
        self.closed = False
        self.remote_candidates: list[str] = []

    def add_track(self, kind: str, codec: Any, ssrc: int, stream_id: str, track_id: str) -> str:
        self.add_track_calls += 1
        mid = str(len(self.slots) + 1)
        self.slots[mid] = (stream_id, track_id)
        return mid

    def add_remote_candidate(self, candidate_init_json: str) -> None:
        self.remote_candidates.append(candidate_init_json)

    def remove_track(self, mid: str) -> None:
        self.slots[mid] = None

    def track_codec(self, mid: str) -> Codec:
        return OPUS

    async def create_offer(self) -> str:
        self.offers += 1
        return f"offer {self.offers}"

    async def handle_answer(self, sdp: str) -> None:
        self.answers.append(sdp)

    async def handle_offer(self, sdp: str) -> tuple[str, list[PublishedMedia]]:
        return "answer", list(self.medias)

    async def close(self) -> None:
        self.closed = True
        self.set_state("closed")

    def set_state(self, state: str) -> None:
        self.state = state
        self.on_state(state)

    def send_rtp(self, data: bytes) -> None:
        pass

    def send_rtcp(self, data: bytes) -> None:
        pass

    def send_data(self, label: str, data: bytes) -> None:
        pass


def make_transport(*args: Any, **kwargs: Any) -> PeerTransport:
    return FakeTransport(*args, **kwargs)  # type: ignore[return-value]


def make_room(name: str = "r") -> Room:
    return Room(RoomName(name), RoomConfig(), on_close=lambda _room: None)


class Client:
    """A participant and every SignalResponse it was sent."""

    def __init__(self, room: Room, identity: str, **grant: Any) -> None:
        self.sent: list[rtc.SignalResponse] = []
        grants = ClaimGrants(api_key="k", identity=identity, video=VideoGrant(**grant))
        self.participant = Participant(
            room,
            grants,
            ParticipantOptions(),
            TransportConfig(),
            self.sent.append,
            make_transport=make_transport,
        )

    @property
    def publisher(self) -> FakeTransport:
        return self.participant.publisher  # type: ignore[return-value]

    @property
    def subscriber(self) -> FakeTransport:
        return self.participant.subscriber  # type: ignore[return-value]

    def of_kind(self, kind: str) -> list[rtc.SignalResponse]:
        return [r for r in self.sent if r.WhichOneof("message") == kind]

    async def publish_audio(self, cid: str, mid: str) -> str:
        """AddTrackRequest + an offer with one sending audio m-line; returns the track sid."""
        self.participant.add_track(
            rtc.AddTrackRequest(cid=cid, type=models.TrackType.AUDIO, name=cid)
        )
        sid = self.of_kind("track_published")[-1].track_published.track.sid
        await self.offer([PublishedMedia(mid, "audio", "sendonly", ("s", cid), (), (), OPUS, {})])
        return sid

    async def offer(self, medias: list[PublishedMedia]) -> None:
        if self.participant.publisher is None:
            original = self.participant._make_transport

            def factory(*args: Any, **kwargs: Any) -> PeerTransport:
                transport = original(*args, **kwargs)
                transport.medias = medias  # type: ignore[attr-defined]
                return transport

            self.participant._make_transport = factory
        else:
            self.publisher.medias = medias
        await self.participant.handle_offer(rtc.SessionDescription(type="offer", sdp="x", id=1))


async def joined(room: Room, identity: str, **grant: Any) -> Client:
    client = Client(room, identity, **grant)
    await room.join(client.participant)
    return client
