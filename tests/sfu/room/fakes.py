"""Room-layer fakes: a `FakePeer` for the network, `RecordingEvents` for the room, a `Clock`;
and builders for a real `Room` with `Participant`s that publish through the real signalling
calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.protocol import models, rtc

from sfu.auth import ClaimGrants, VideoGrant
from sfu.config import RoomConfig
from sfu.ids import ParticipantIdentity, ParticipantSid, RoomName, TrackSid
from sfu.media.receiver import TrackReceiver
from sfu.media.sdp import Codec
from sfu.media.transport import PublishedMedia, TransportConfig
from sfu.room.participant import Participant, ParticipantOptions
from sfu.room.permission import SubscriptionPermissions
from sfu.room.publication import PublishedTrack
from sfu.room.room import Room
from sfu.room.types import Peer

OPUS = Codec(payload_type=111, name="opus", clock_rate=48000, channels=2)
VP8 = Codec(payload_type=96, name="VP8", clock_rate=90000)


class FakePeer:
    """A `Peer` that records what it is asked (offers, m-lines, RTCP, data); never touches a
    socket. ``set_state`` plays what ICE/DTLS would report."""

    def __init__(
        self,
        role: str = "subscriber",
        config: TransportConfig | None = None,
        **callbacks: Callable[..., None],
    ) -> None:
        self.role = role
        self.on_state: Callable[[str], None] = callbacks.get("on_state", lambda _state: None)
        self.state = "new"
        self.slots: dict[str, tuple[str, str] | None] = {}  # mid → (stream id, track id)
        self.add_track_calls = 0
        self.offers = 0
        self.answers: list[str] = []
        #: what the next handle_offer reports as the offer's m-lines
        self.medias: list[PublishedMedia] = []
        self.closed = False
        self.remote_candidates: list[str] = []
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.data: list[tuple[str, bytes]] = []
        #: add_track raises this when set (e.g. TrackSlotLimitError)
        self.add_track_error: Exception | None = None
        #: the transport-cc extension id an answer kept (0: none)
        self.transport_cc_id = 0
        self.congestion_control = True

    def add_track(self, kind: str, codec: Any, ssrc: int, stream_id: str, track_id: str) -> str:
        if self.add_track_error is not None:
            raise self.add_track_error
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

    async def handle_offer(
        self, sdp: str, red_tracks: frozenset[str] = frozenset()
    ) -> tuple[str, list[PublishedMedia]]:
        self.red_tracks = red_tracks
        return "answer", list(self.medias)

    async def close(self) -> None:
        self.closed = True
        self.set_state("closed")

    def set_state(self, state: str) -> None:
        self.state = state
        self.on_state(state)

    def send_rtp(self, data: bytes) -> None:
        self.rtp.append(data)

    def fast_sender(self) -> None:
        return None  # the fast path is tested with real transports

    def takes_red(self, ssrc: int) -> bool:
        return True

    def send_rtcp(self, data: bytes) -> None:
        self.rtcp.append(data)

    def send_data(self, label: str, data: bytes) -> None:
        self.data.append((label, data))


def make_peer(*args: Any, **kwargs: Any) -> Peer:
    return FakePeer(*args, **kwargs)


class Clock:
    """An injected wall clock: ``clock()`` is ``now``, which only moves when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingEvents:
    """`RoomEvents` that record every call as (name, argument); the room's tracks and track
    limit are what the test sets."""

    def __init__(self, max_tracks: int = 512) -> None:
        self.calls: list[tuple[str, object]] = []
        self.tracks: dict[str, PublishedTrack] = {}
        self.limit = max_tracks

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def participant_changed(self) -> None:
        self.calls.append(("participant_changed", None))

    def track_published(self, track: PublishedTrack) -> None:
        self.calls.append(("track_published", track))

    def track_unpublished(self, track: PublishedTrack) -> None:
        self.calls.append(("track_unpublished", track))

    def data_received(self, packet: models.DataPacket, label: str) -> None:
        self.calls.append(("data_received", (packet, label)))

    def permission_changed(self) -> None:
        self.calls.append(("permission_changed", None))

    def participant_left(self) -> None:
        self.calls.append(("participant_left", None))

    def find_track(self, track_sid: str) -> PublishedTrack | None:
        return self.tracks.get(track_sid)

    def track_count(self) -> int:
        return len(self.tracks)

    def max_tracks(self) -> int:
        return self.limit


class FakePublisher:
    """A `TrackPublisher`: another participant, as its subscribers see it."""

    def __init__(self, sid: str = "PA_pub", identity: str = "pub") -> None:
        self.sid = ParticipantSid(sid)
        self.identity = ParticipantIdentity(identity)
        self.subscription_permission = SubscriptionPermissions()


def published_track(
    sid: str = "TR_a", kind: str = "audio", publisher: FakePublisher | None = None
) -> PublishedTrack:
    """A track as `Publications` binds it: a real `TrackReceiver` behind a fake publisher."""
    codec = OPUS if kind == "audio" else VP8
    receiver = TrackReceiver(
        kind=kind,
        mime_type=f"{kind}/{codec.name}",
        clock_rate=codec.clock_rate,
        layer_count=1,
        send_rtcp=lambda _data: None,
        codec=codec,
    )
    track_type = models.TrackType.AUDIO if kind == "audio" else models.TrackType.VIDEO
    info = models.TrackInfo(sid=TrackSid(sid), type=track_type, mime_type=f"{kind}/{codec.name}")
    track = PublishedTrack(info, publisher or FakePublisher(), receiver, mid="0")
    if kind == "video":
        track.layer_sizes, track.layer_qualities = [(1280, 720)], [2]
    return track


def audio_media(mid: str, cid: str, direction: str = "sendonly") -> PublishedMedia:
    """A publisher offer's audio m-line whose msid names the AddTrackRequest ``cid``."""
    return PublishedMedia(mid, "audio", direction, ("s", cid), (), (), OPUS, {})


def make_room(name: str = "r") -> Room:
    return Room(RoomName(name), RoomConfig(), on_close=lambda _room: None)


class Client:
    """A participant and every SignalResponse it was sent."""

    def __init__(self, identity: str, **grant: Any) -> None:
        self.sent: list[rtc.SignalResponse] = []
        grants = ClaimGrants(api_key="k", identity=identity, video=VideoGrant(**grant))
        self.participant = Participant(
            grants,
            ParticipantOptions(),
            TransportConfig(),
            self.sent.append,
            peer_factory=make_peer,
        )

    @property
    def publisher(self) -> FakePeer:
        return self.participant.publisher  # type: ignore[return-value]

    @property
    def subscriber(self) -> FakePeer:
        return self.participant.subscriber  # type: ignore[return-value]

    def of_kind(self, kind: str) -> list[rtc.SignalResponse]:
        return [r for r in self.sent if r.WhichOneof("message") == kind]

    async def publish_audio(self, cid: str, mid: str) -> str:
        """AddTrackRequest + an offer with one sending audio m-line; returns the track sid."""
        self.participant.add_track(
            rtc.AddTrackRequest(cid=cid, type=models.TrackType.AUDIO, name=cid)
        )
        sid = self.of_kind("track_published")[-1].track_published.track.sid
        await self.offer([audio_media(mid, cid)])
        return sid

    async def offer(self, medias: list[PublishedMedia]) -> None:
        if self.participant.publisher is None:
            original = self.participant.peer_factory

            def factory(*args: Any, **kwargs: Any) -> Peer:
                peer = original(*args, **kwargs)
                peer.medias = medias  # type: ignore[attr-defined]
                return peer

            self.participant.peer_factory = factory
        else:
            self.publisher.medias = medias
        await self.participant.handle_offer(rtc.SessionDescription(type="offer", sdp="x", id=1))


async def joined(room: Room, identity: str, **grant: Any) -> Client:
    client = Client(identity, **grant)
    await room.join(client.participant)
    return client
