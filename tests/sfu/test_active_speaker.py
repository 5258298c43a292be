"""Active-speaker detection: the audio-level threshold of `TrackReceiver.take_audio_level` and
the room's `SpeakersChanged` updates, driven by RTP packets carrying ssrc-audio-level (RFC 6464).

Speaking means louder than -35 dBov (a level value below 35) in at least 40 % of the packets that
carry a level in the window; the level reported is the linear amplitude of the loud packets' mean.
Muted and hidden participants are never speakers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from livekit.protocol import models

from sfu.config import RoomConfig
from sfu.media.receiver import SPEAKING_DBOV, SPEAKING_SHARE, TrackReceiver
from sfu.media.rtp import extensions as ext
from sfu.media.rtp.header import RtpHeader, RtpPacket
from sfu.room.room import Room

LEVEL_ID = 1
OPUS = b"\xfc\xff\xfe" + b"opus-frame"


def _ignore(_: bytes) -> None:
    pass


def audio_receiver(level_id: int = LEVEL_ID) -> TrackReceiver:
    receiver = TrackReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1, send_rtcp=_ignore
    )
    receiver.audio_level_id = level_id
    return receiver


def packet(seq: int, dbov: int | None, *, voice: bool = True) -> RtpPacket:
    extensions = [] if dbov is None else [(LEVEL_ID, ext.encode_audio_level(voice, dbov))]
    header = RtpHeader(
        payload_type=111, sequence_number=seq, timestamp=seq * 960, ssrc=0x1234,
        extensions=extensions,
    )  # fmt: skip
    return RtpPacket.parse(bytes(header) + OPUS)


def feed(receiver: TrackReceiver, levels: list[int | None]) -> None:
    for seq, dbov in enumerate(levels):
        receiver.on_rtp(packet(seq, dbov), 0)


def amplitude(dbov: float) -> float:
    return float(10 ** (-dbov / 20))


def test_the_documented_threshold() -> None:
    assert (SPEAKING_DBOV, SPEAKING_SHARE) == (35, 0.4)


def test_a_loud_track_speaks_with_its_level() -> None:
    receiver = audio_receiver()
    feed(receiver, [20] * 50)
    assert receiver.take_audio_level() == pytest.approx(amplitude(20))


def test_a_quiet_track_does_not_speak() -> None:
    receiver = audio_receiver()
    feed(receiver, [50] * 50)
    assert receiver.take_audio_level() == 0.0
    feed(receiver, [127] * 50)  # digital silence
    assert receiver.take_audio_level() == 0.0


def test_the_level_boundary_is_minus_35_dbov() -> None:
    at_threshold, just_louder = audio_receiver(), audio_receiver()
    feed(at_threshold, [35] * 10)
    feed(just_louder, [34] * 10)
    assert at_threshold.take_audio_level() == 0.0
    assert just_louder.take_audio_level() == pytest.approx(amplitude(34))


@pytest.mark.parametrize(("loud", "speaking"), [(40, True), (39, False), (100, True), (0, False)])
def test_speaking_needs_loud_packets_in_40_percent_of_the_window(loud: int, speaking: bool) -> None:
    receiver = audio_receiver()
    feed(receiver, [10] * loud + [60] * (100 - loud))
    level = receiver.take_audio_level()
    # the level is that of the loud packets only, not diluted by the quiet ones
    assert level == (pytest.approx(amplitude(10)) if speaking else 0.0)


def test_the_level_is_the_loud_packets_mean_in_dbov() -> None:
    receiver = audio_receiver()
    feed(receiver, [10, 30, 60, 60])
    assert receiver.take_audio_level() == pytest.approx(amplitude(20))


def test_each_call_starts_a_new_window() -> None:
    receiver = audio_receiver()
    feed(receiver, [10] * 20)
    assert receiver.take_audio_level() > 0
    assert receiver.take_audio_level() == 0.0  # nothing since
    feed(receiver, [60] * 20)
    assert receiver.take_audio_level() == 0.0


def test_only_packets_with_a_level_count() -> None:
    receiver = audio_receiver()
    feed(receiver, [10] * 10 + [None] * 90)
    assert receiver.take_audio_level() == pytest.approx(amplitude(10))


def test_without_the_negotiated_extension_nothing_speaks() -> None:
    receiver = audio_receiver(level_id=0)
    feed(receiver, [10] * 50)
    assert receiver.take_audio_level() == 0.0


# --- the room's SpeakersChanged ------------------------------------------------------------------


@dataclass
class Track:
    receiver: TrackReceiver
    info: models.TrackInfo


@dataclass
class Member:
    """The part of a Participant that `Room.update_speakers` uses."""

    identity: str
    hidden: bool = False
    muted: bool = False
    published: dict[str, Track] = field(default_factory=dict)
    updates: list[list[models.SpeakerInfo]] = field(default_factory=list)

    def __post_init__(self) -> None:
        info = models.TrackInfo(sid=f"TR_{self.identity}", type=models.TrackType.AUDIO)
        info.muted = self.muted
        self.published[info.sid] = Track(audio_receiver(), info)

    @property
    def sid(self) -> str:
        return f"PA_{self.identity}"

    @property
    def receiver(self) -> TrackReceiver:
        return next(iter(self.published.values())).receiver

    def send_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self.updates.append(list(speakers))


def speakers(update: list[models.SpeakerInfo]) -> dict[str, tuple[bool, float]]:
    return {s.sid: (s.active, s.level) for s in update}


async def test_only_loud_unmuted_visible_participants_are_speakers() -> None:
    room = Room("talk", RoomConfig(), on_close=lambda _room: None)  # type: ignore[arg-type]
    try:
        members = {
            "loud": Member("loud"),
            "quiet": Member("quiet"),
            "muted": Member("muted", muted=True),
            "hidden": Member("hidden", hidden=True),
        }
        room.participants.update(members)  # type: ignore[arg-type]
        for name, member in members.items():
            feed(member.receiver, [60 if name == "quiet" else 15] * 50)
        room.update_speakers()
        update = members["quiet"].updates[-1]  # everyone hears the same update
        assert all(m.updates == [update] for m in members.values())
        assert speakers(update) == {"PA_loud": (True, pytest.approx(amplitude(15)))}

        # the loud one stops: it is announced as no longer speaking, with level 0
        feed(members["loud"].receiver, [60] * 50)
        room.update_speakers()
        assert speakers(members["loud"].updates[-1]) == {"PA_loud": (False, 0.0)}

        # unmuting makes a loud track count again
        members["muted"].published["TR_muted"].info.muted = False
        feed(members["muted"].receiver, [15] * 50)
        room.update_speakers()
        assert set(speakers(members["loud"].updates[-1])) == {"PA_muted"}

        # a level that barely moves is not re-sent
        sent = len(members["loud"].updates)
        feed(members["muted"].receiver, [15] * 49 + [16])
        room.update_speakers()
        assert len(members["loud"].updates) == sent
    finally:
        room.participants.clear()
        await room.close()
