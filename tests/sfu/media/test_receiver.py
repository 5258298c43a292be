"""Tests for sfu.media.receiver: ingress demux by mid/rid, key-frame detection and fan-out, PLI
throttling, receiver reports and REMB, driven by synthetic RTP/RTCP packets."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.receiver import (
    PLI_THROTTLE,
    RECEIVER_SSRC,
    REMB_MAX,
    REMB_MIN,
    SEQUENCE_BASE,
    RtpDemuxer,
    TrackReceiver,
)
from sfu.media.rtp import extensions as ext
from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpPacket
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor
from sfu.media.sdp import Codec
from sfu.metrics import COUNTERS
from tests.sfu.conftest import FakeClock
from tests.sfu.packets import rtp

PROPERTY = settings(max_examples=300, deadline=None)  # random each run: tests/conftest.py

MID_ID, RID_ID, RRID_ID = 4, 10, 11
AUDIO_MID, VIDEO_MID = "0", "1"
OPUS_PT, VP8_PT, RTX_PT = 111, 96, 97
SIMULCAST = {"q": 0, "h": 1, "f": 2}


# --- synthetic packets -------------------------------------------------------------------------


def published(
    seq: int,
    ssrc: int,
    payload: bytes,
    *,
    ts: int = 0,
    pt: int = VP8_PT,
    mid: str | None = None,
    rid: str | None = None,
    rrid: str | None = None,
    padding: int = 0,
) -> bytes:
    """A packet as a publisher on this rig's extension ids sends it: the given sdes extensions
    and `padding` bytes of padding."""
    exts: list[tuple[int, bytes]] = []
    if mid is not None:
        exts.append((MID_ID, ext.encode_mid(mid)))
    if rid is not None:
        exts.append((RID_ID, ext.encode_rid(rid)))
    if rrid is not None:
        exts.append((RRID_ID, ext.encode_rid(rrid)))
    return rtp(
        payload,
        payload_type=pt,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        extensions=exts,
        padding=padding,
    )


def vp8(*, key: bool, picture_id: int = 0x1234, tl0: int = 7, start: bool = True) -> bytes:
    """A VP8 payload: a descriptor with a 15-bit picture id and TL0PICIDX, then a frame tag whose
    P bit is 0 for a key frame."""
    desc = Vp8PayloadDescriptor(
        start_of_partition=start,
        picture_id=picture_id,
        picture_id_15bit=True,
        tl0_pic_idx=tl0,
        tid=0,
        layer_sync=key,
        extended=True,
    )
    return bytes(desc) + bytes((0x50 if key else 0x51,)) + b"\x3f\x00\x9d\x01\x2a" + b"payload"


OPUS = b"\xfc\xff\xfe" + b"opus-frame"


def _ignore(_: bytes) -> None:
    pass


# --- fakes -------------------------------------------------------------------------------------


@dataclass(eq=False)  # sinks are told apart by identity, like DownTracks
class Sink:
    """A PacketSink that records what it was given: (packet, layer, keyframe) and, apart, the
    extended sequence numbers."""

    got: list[tuple[RtpPacket, int, bool]] = field(default_factory=list)
    sequences: list[int] = field(default_factory=list)

    def write(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> None:
        self.got.append((packet, layer, keyframe))
        self.sequences.append(sequence)

    @property
    def subscribed_layer(self) -> int:
        return 2


@dataclass
class Rig:
    demux: RtpDemuxer
    audio: TrackReceiver
    video: TrackReceiver
    audio_sink: Sink
    video_sink: Sink
    rtcp_out: list[bytes]


EXTENSION_IDS = {
    ext.MID: MID_ID,
    ext.RTP_STREAM_ID: RID_ID,
    ext.REPAIRED_RTP_STREAM_ID: RRID_ID,
}


def make_rig(clock: Callable[[], float]) -> Rig:
    rtcp_out: list[bytes] = []
    opus = Codec(payload_type=OPUS_PT, name="opus", clock_rate=48000, channels=2)
    vp8_codec = Codec(payload_type=VP8_PT, name="VP8", clock_rate=90000)
    audio = TrackReceiver(
        kind="audio",
        mime_type="audio/opus",
        clock_rate=48000,
        layer_count=1,
        send_rtcp=rtcp_out.append,
        codec=opus,
        clock=clock,
    )
    video = TrackReceiver(
        kind="video",
        mime_type="video/VP8",
        clock_rate=90000,
        layer_count=3,
        send_rtcp=rtcp_out.append,
        codec=vp8_codec,
        clock=clock,
    )
    demux = RtpDemuxer(clock=clock)
    # BUNDLE: every m-line carries the same ids; the audio one lacks the rid extensions
    demux.set_extension_ids([{ext.MID: MID_ID}, EXTENSION_IDS])
    demux.bind(AUDIO_MID, audio, {"": 0}, payload_type=OPUS_PT)
    demux.bind(VIDEO_MID, video, SIMULCAST, payload_type=VP8_PT)
    audio_sink, video_sink = Sink(), Sink()
    audio.add_sink(audio_sink)
    video.add_sink(video_sink)
    return Rig(demux, audio, video, audio_sink, video_sink, rtcp_out)


@pytest.fixture
def rig(clock: FakeClock) -> Rig:
    return make_rig(clock)


@pytest.fixture
def dropped() -> Iterator[Callable[[], int]]:
    """How many packets `COUNTERS.packets_dropped` counted since the test started."""
    start = COUNTERS.packets_dropped
    yield lambda: COUNTERS.packets_dropped - start


def layers_of(sink: Sink) -> list[int]:
    return [layer for _, layer, _ in sink.got]


# --- demux ------------------------------------------------------------------------------------


def test_extension_ids_come_from_the_negotiated_sections(rig: Rig) -> None:
    assert (rig.demux.mid_id, rig.demux.rid_id, rig.demux.repaired_rid_id) == (4, 10, 11)
    assert rig.demux.receivers() == [rig.audio, rig.video]


def test_first_packet_with_mid_and_rid_latches_receiver_and_layer(
    rig: Rig, dropped: Callable[[], int]
) -> None:
    rig.demux.on_rtp(published(100, 0xAAA1, vp8(key=True), mid=VIDEO_MID, rid="h"))
    rig.demux.on_rtp(published(500, 0xAAA2, vp8(key=True), mid=VIDEO_MID, rid="f"))
    rig.demux.on_rtp(published(900, 0xAAA0, vp8(key=True), mid=VIDEO_MID, rid="q"))
    assert layers_of(rig.video_sink) == [1, 2, 0]
    assert [s.ssrc for s in rig.video.layers] == [0xAAA0, 0xAAA1, 0xAAA2]
    # libwebrtc stops sending mid/rid once it gets receiver reports: the SSRC is enough now
    rig.demux.on_rtp(published(101, 0xAAA1, vp8(key=False)))
    rig.demux.on_rtp(published(501, 0xAAA2, vp8(key=False)))
    # ... and a later packet carrying another rid does not re-route a latched SSRC
    rig.demux.on_rtp(published(102, 0xAAA1, vp8(key=False), mid=VIDEO_MID, rid="q"))
    assert layers_of(rig.video_sink) == [1, 2, 0, 1, 2, 1]
    assert [p.sequence_number for p, _, _ in rig.video_sink.got] == [100, 500, 900, 101, 501, 102]
    assert rig.audio_sink.got == [] and dropped() == 0
    assert [s.packets for s in rig.video.layers] == [1, 3, 2]


def test_unknown_mid_or_rid_is_dropped_counted_and_not_latched(
    rig: Rig, dropped: Callable[[], int]
) -> None:
    rig.demux.on_rtp(published(1, 0xB001, vp8(key=True), mid="7", rid="h"))  # unknown mid
    rig.demux.on_rtp(published(1, 0xB002, vp8(key=True), mid=VIDEO_MID, rid="x"))  # unknown rid
    rig.demux.on_rtp(published(1, 0xB003, vp8(key=True), mid=VIDEO_MID))  # simulcast needs a rid
    rig.demux.on_rtp(published(1, 0xB004, vp8(key=True)))  # no extensions, SSRC never seen
    assert dropped() == 4
    # none of them latched: the same SSRCs without extensions are still dropped
    for ssrc in (0xB001, 0xB002, 0xB003, 0xB004):
        rig.demux.on_rtp(published(2, ssrc, vp8(key=False)))
    assert dropped() == 8
    assert rig.video_sink.got == [] and rig.audio_sink.got == []
    assert all(s.ssrc == 0 and s.packets == 0 for s in rig.video.layers)


def test_malformed_mid_or_rid_value_is_dropped(rig: Rig, dropped: Callable[[], int]) -> None:
    for extensions in (
        [(MID_ID, b"\xff\xfe"), (RID_ID, b"h")],
        [(MID_ID, b"1"), (RID_ID, b"\x01")],
    ):
        bad = rtp(
            vp8(key=True),
            payload_type=VP8_PT,
            sequence_number=1,
            ssrc=0xB010,
            extensions=extensions,
        )
        rig.demux.on_rtp(bad)
    assert dropped() == 2 and rig.video_sink.got == []


def test_repaired_rid_packet_never_latches(rig: Rig, dropped: Callable[[], int]) -> None:
    # an RTX packet: mid + repaired-rid, on its own SSRC
    rig.demux.on_rtp(
        published(7, 0xCCC1, b"\x00\x64" + vp8(key=True), pt=RTX_PT, mid="1", rrid="h")
    )
    # even with a rid alongside, a repair stream is not media
    rig.demux.on_rtp(published(8, 0xCCC1, vp8(key=True), mid=VIDEO_MID, rid="h", rrid="h"))
    rig.demux.on_rtp(published(9, 0xCCC1, vp8(key=False)))
    assert dropped() == 3 and rig.video_sink.got == []
    assert all(s.ssrc == 0 for s in rig.video.layers)
    # the media SSRC of the same layer still latches normally
    rig.demux.on_rtp(published(100, 0xCCC0, vp8(key=True), mid=VIDEO_MID, rid="h"))
    assert layers_of(rig.video_sink) == [1] and rig.video.layers[1].ssrc == 0xCCC0


def test_single_layer_track_needs_no_rid(rig: Rig, dropped: Callable[[], int]) -> None:
    rig.demux.on_rtp(published(10, 0xD000, OPUS, pt=OPUS_PT, mid=AUDIO_MID))
    rig.demux.on_rtp(published(11, 0xD000, OPUS, pt=OPUS_PT))
    assert [(p.sequence_number, layer, key) for p, layer, key in rig.audio_sink.got] == [
        (10, 0, False),
        (11, 0, False),
    ]
    assert rig.audio.layers[0].ssrc == 0xD000 and dropped() == 0
    assert rig.audio_sink.got[0][0].payload == OPUS


def test_single_layer_track_without_mid_is_found_by_payload_type(
    rig: Rig, dropped: Callable[[], int]
) -> None:
    rig.demux.on_rtp(published(10, 0xD100, OPUS, pt=OPUS_PT))  # the only binding with PT 111
    assert layers_of(rig.audio_sink) == [0] and rig.audio.layers[0].ssrc == 0xD100
    rig.demux.on_rtp(published(10, 0xD101, OPUS, pt=99))  # no binding has this payload type
    assert dropped() == 1 and len(rig.audio_sink.got) == 1


def test_unbind_forgets_the_ssrcs(rig: Rig, dropped: Callable[[], int]) -> None:
    rig.demux.on_rtp(published(1, 0xE000, vp8(key=True), mid=VIDEO_MID, rid="q"))
    rig.demux.on_rtp(published(1, 0xE001, vp8(key=True), mid=VIDEO_MID, rid="h"))
    rig.demux.on_rtp(published(1, 0xE100, OPUS, pt=OPUS_PT, mid=AUDIO_MID))
    rig.demux.unbind(VIDEO_MID)
    rig.demux.unbind("no-such-mid")
    assert rig.demux.receivers() == [rig.audio]
    rig.demux.on_rtp(published(2, 0xE000, vp8(key=False)))
    rig.demux.on_rtp(published(2, 0xE001, vp8(key=False)))
    rig.demux.on_rtp(published(3, 0xE001, vp8(key=False), mid=VIDEO_MID, rid="h"))
    assert dropped() == 3 and len(rig.video_sink.got) == 2
    rig.demux.on_rtp(published(2, 0xE100, OPUS, pt=OPUS_PT))  # the other binding is untouched
    assert len(rig.audio_sink.got) == 2
    # a new receiver bound to the mid learns the SSRCs afresh from the extensions
    again = TrackReceiver(
        kind="video", mime_type="video/VP8", clock_rate=90000, layer_count=3, send_rtcp=_ignore
    )
    sink = Sink()
    again.add_sink(sink)
    rig.demux.bind(VIDEO_MID, again, SIMULCAST, payload_type=VP8_PT)
    rig.demux.on_rtp(published(4, 0xE001, vp8(key=False)))
    rig.demux.on_rtp(published(5, 0xE001, vp8(key=False), mid=VIDEO_MID, rid="h"))
    rig.demux.on_rtp(published(6, 0xE001, vp8(key=False)))
    assert [(p.sequence_number, layer) for p, layer, _ in sink.got] == [(5, 1), (6, 1)]


def test_muted_receiver_gets_nothing(rig: Rig) -> None:
    rig.demux.on_rtp(published(1, 0xF000, OPUS, pt=OPUS_PT, mid=AUDIO_MID))
    rig.audio.muted = True
    rig.demux.on_rtp(published(2, 0xF000, OPUS, pt=OPUS_PT))
    rig.audio.muted = False
    rig.demux.on_rtp(published(3, 0xF000, OPUS, pt=OPUS_PT))
    assert [p.sequence_number for p, _, _ in rig.audio_sink.got] == [1, 3]


def test_sender_report_reaches_the_layer_of_its_ssrc(rig: Rig, clock: FakeClock) -> None:
    rig.demux.on_rtp(published(1, 0xAB01, vp8(key=True), mid=VIDEO_MID, rid="h"))
    sr = rtcp.SenderReport(0xAB01, 0xE000_0000_8000_0000, 123456, 10, 1000)
    other = rtcp.SenderReport(0x0BAD, 1, 2, 3, 4)
    rig.demux.on_rtcp(bytes(other) + bytes(sr) + bytes(rtcp.Sdes.for_cname(0xAB01, "x")))
    layer = rig.video.layers[1]
    assert (layer.sr_ntp, layer.sr_rtp, layer.sr_arrival) == (sr.ntp_timestamp, 123456, clock.now)
    assert rig.video.layers[0].sr_arrival == 0 and rig.video.layers[2].sr_arrival == 0


# --- extended sequence numbers ------------------------------------------------------------------


def test_sinks_get_extended_sequence_numbers_across_the_wrap(rig: Rig) -> None:
    for n, seq in enumerate((65534, 65535, 0, 65533, 1, 1)):
        payload = vp8(key=n == 0)
        rig.demux.on_rtp(published(seq, 0x5E0, payload, mid=VIDEO_MID, rid="h"))
    base = SEQUENCE_BASE
    assert rig.video_sink.sequences == [
        base + s for s in (65534, 65535, 65536, 65533, 65537, 65537)
    ]
    state = rig.video.layers[1]
    assert (state.base_seq, state.max_ext_seq) == (65534, 65537)  # RFC 3550 §A.1


def test_a_packet_from_before_the_first_keeps_a_positive_number_a_walk_back_is_dropped(
    rig: Rig, dropped: Callable[[], int]
) -> None:
    """A late packet from before a layer's first still goes to the sinks (each judges whether it
    is older than what it forwards); a publisher walking its numbers back more than a cycle below
    the first gets nothing forwarded: extended numbers are never negative."""
    rig.demux.on_rtp(published(5, 0x5E1, vp8(key=True), mid=VIDEO_MID, rid="q"))
    rig.demux.on_rtp(published(65534, 0x5E1, vp8(key=False)))  # 7 before the first
    assert rig.video_sink.sequences == [SEQUENCE_BASE + 5, SEQUENCE_BASE - 2]
    seq = 65534
    for _ in range(3):  # each step half a cycle back
        seq = (seq - 0x7FFF) & 0xFFFF
        rig.demux.on_rtp(published(seq, 0x5E1, vp8(key=False)))
    assert rig.video_sink.sequences[2:] == [SEQUENCE_BASE - 2 - 0x7FFF, 0]
    assert dropped() == 1


def test_a_layer_on_a_new_ssrc_continues_its_extended_sequence(rig: Rig) -> None:
    """Down tracks see one sequence that never goes back; receiver reports keep the RFC 3550
    numbering of each SSRC."""
    for seq in range(100, 105):
        rig.demux.on_rtp(published(seq, 0xA1, vp8(key=True), mid=VIDEO_MID, rid="q"))
    for seq in (40_000, 40_001, 39_999, 40_002):
        rig.demux.on_rtp(published(seq, 0xA2, vp8(key=True), mid=VIDEO_MID, rid="q"))
    numbers = [100, 101, 102, 103, 104, 105, 106, 104, 107]
    assert rig.video_sink.sequences == [SEQUENCE_BASE + n for n in numbers]
    (block,) = rig.video.report_blocks(1.0)
    assert (block.ssrc, block.highest_sequence_number, block.packets_lost) == (0xA2, 40_002, 0)


# --- garbage -----------------------------------------------------------------------------------


def _latched_rig() -> Rig:
    r = make_rig(FakeClock())
    r.demux.on_rtp(published(1, 0x11, vp8(key=True), mid=VIDEO_MID, rid="q"))
    r.demux.on_rtp(published(1, 0x12, vp8(key=True), mid=VIDEO_MID, rid="h"))
    r.demux.on_rtp(published(1, 0x21, OPUS, pt=OPUS_PT, mid=AUDIO_MID))
    return r


_GARBAGE_RIG = _latched_rig()


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _GARBAGE_RIG.demux.on_rtp(data)
    _GARBAGE_RIG.demux.on_rtcp(data)
    _GARBAGE_RIG.demux.on_rtp(b"\x80" + data)
    _GARBAGE_RIG.demux.on_rtcp(b"\x80" + data)


@PROPERTY
@given(
    ssrc=st.sampled_from([0x11, 0x12, 0x21, 0x99]),
    pt=st.sampled_from([OPUS_PT, VP8_PT, RTX_PT, 0]),
    exts=st.lists(
        st.tuples(
            st.sampled_from([MID_ID, RID_ID, RRID_ID, 1]), st.binary(min_size=1, max_size=16)
        ),
        max_size=3,
    ),
    payload=st.binary(max_size=40),
    padding=st.integers(0, 4),
)
def test_well_formed_headers_with_arbitrary_values_never_raise(
    ssrc: int, pt: int, exts: list[tuple[int, bytes]], payload: bytes, padding: int
) -> None:
    r = _latched_rig()
    r.demux.on_rtp(
        rtp(
            payload, payload_type=pt, sequence_number=5, ssrc=ssrc, extensions=exts, padding=padding
        )
    )


@PROPERTY
@given(
    pt=st.integers(192, 210),
    count=st.integers(0, 31),
    body=st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)),
    ssrc=st.sampled_from([0x11, 0x12, 0x21]),
)
def test_well_framed_rtcp_with_arbitrary_bodies_never_raises(
    pt: int, count: int, body: bytes, ssrc: int
) -> None:
    r = _latched_rig()
    packet = bytes((0x80 | count, pt)) + (len(body) // 4).to_bytes(2, "big") + body
    r.demux.on_rtcp(packet)
    r.demux.on_rtcp(bytes(rtcp.SenderReport(ssrc, 1, 2, 3, 4)) + packet)


# --- key frames and fan-out --------------------------------------------------------------------


def test_keyframe_detected_once_per_packet_and_fanned_out_to_every_sink(rig: Rig) -> None:
    calls: list[int] = []
    detect = rig.video._keyframe
    assert detect is not None

    def counting(data: bytes, offset: int, end: int) -> bool:
        calls.append(offset)
        return detect(data, offset, end)

    rig.video._keyframe = counting
    sinks = [rig.video_sink, Sink(), Sink()]
    rig.video.add_sink(sinks[1])
    rig.video.add_sink(sinks[2])
    rig.demux.on_rtp(published(1, 0x51, vp8(key=True), mid=VIDEO_MID, rid="f"))
    rig.demux.on_rtp(published(2, 0x51, vp8(key=False)))
    rig.demux.on_rtp(published(3, 0x51, vp8(key=True, start=False)))  # key frame continuation
    rig.demux.on_rtp(published(4, 0x51, vp8(key=True), padding=3))  # padding is not payload
    assert len(calls) == 4
    for sink in sinks:
        assert [(p.sequence_number, layer, key) for p, layer, key in sink.got] == [
            (1, 2, True),
            (2, 2, False),
            (3, 2, False),
            (4, 2, True),
        ]
    # every sink sees the very same parsed packet
    assert all(sinks[0].got[i][0] is s.got[i][0] for s in sinks for i in range(4))
    rig.video.remove_sink(sinks[1])
    rig.video.remove_sink(sinks[1])  # removing twice is harmless
    rig.demux.on_rtp(published(5, 0x51, vp8(key=False)))
    assert [len(s.got) for s in sinks] == [5, 4, 5] and len(calls) == 5


def test_video_packet_with_unreadable_descriptor_is_not_fanned_out(rig: Rig) -> None:
    rig.demux.on_rtp(published(1, 0x61, vp8(key=True), mid=VIDEO_MID, rid="q"))
    rig.demux.on_rtp(published(2, 0x61, b"\x90"))  # X and S bits, extension byte missing
    rig.demux.on_rtp(published(3, 0x61, b"\x10"))  # S=1 PID=0 but no VP8 payload header
    rig.demux.on_rtp(published(4, 0x61, vp8(key=False)))
    assert [p.sequence_number for p, _, _ in rig.video_sink.got] == [1, 4]
    assert rig.video.layers[0].packets == 4  # still counted for the receiver reports


def test_padding_only_packet_is_fanned_out_as_a_non_key_frame(rig: Rig) -> None:
    rig.demux.on_rtp(published(1, 0x62, vp8(key=True), mid=VIDEO_MID, rid="q"))
    rig.demux.on_rtp(published(2, 0x62, b"", padding=255))  # a bandwidth probe
    rig.demux.on_rtp(published(3, 0x62, vp8(key=False)))
    got = [(p.sequence_number, key, p.payload_size) for p, _, key in rig.video_sink.got]
    assert got == [(1, True, 19), (2, False, 0), (3, False, 19)]


def test_audio_is_never_a_keyframe(rig: Rig) -> None:
    rig.demux.on_rtp(published(1, 0x71, vp8(key=True), pt=OPUS_PT, mid=AUDIO_MID))
    assert [key for _, _, key in rig.audio_sink.got] == [False]


def test_h264_keyframes_are_detected() -> None:
    sink = Sink()
    receiver = TrackReceiver(
        kind="video", mime_type="video/H264", clock_rate=90000, layer_count=1, send_rtcp=_ignore
    )
    receiver.add_sink(sink)
    idr, non_idr = b"\x65\x88\x84", b"\x41\x9a\x02"
    for seq, payload in enumerate((idr, non_idr, b"\x80")):
        receiver.on_rtp(RtpPacket.parse(published(seq, 1, payload, pt=102)), 0)
    assert [(p.sequence_number, key) for p, _, key in sink.got] == [(0, True), (1, False)]


def test_close_drops_sinks_and_stops_plis(rig: Rig, clock: FakeClock) -> None:
    rig.demux.on_rtp(published(1, 0x81, vp8(key=True), mid=VIDEO_MID, rid="q"))
    rig.video.close()
    rig.demux.on_rtp(published(2, 0x81, vp8(key=False)))
    rig.video.request_keyframe(0)
    assert len(rig.video_sink.got) == 1 and rig.rtcp_out == []


def test_codec_for_subscribers() -> None:
    receiver = TrackReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1, send_rtcp=_ignore
    )
    assert receiver.codec_for_subscribers() == Codec(0, "opus", 48000, 2)
    assert len(receiver.layers) == 1


# --- PLI throttling ---------------------------------------------------------------------------


def _plis(out: list[bytes]) -> list[int]:
    ssrcs = []
    for data in out:
        (packet,) = rtcp.parse_compound(data)
        assert isinstance(packet, rtcp.Pli) and packet.sender_ssrc == RECEIVER_SSRC
        ssrcs.append(packet.media_ssrc)
    return ssrcs


def test_pli_throttled_per_layer(rig: Rig, clock: FakeClock) -> None:
    assert PLI_THROTTLE == (0.5, 1.0, 1.0)
    for ssrc, rid in ((0x90, "q"), (0x91, "h"), (0x92, "f")):
        rig.demux.on_rtp(published(1, ssrc, vp8(key=True), mid=VIDEO_MID, rid=rid))
    rig.video.request_keyframe_all()
    assert _plis(rig.rtcp_out) == [0x90, 0x91, 0x92]
    rig.rtcp_out.clear()
    clock.advance(0.49)
    rig.video.request_keyframe_all()
    assert rig.rtcp_out == []
    clock.advance(0.02)  # 0.51 s: the low layer may ask again, the others not yet
    rig.video.request_keyframe_all()
    assert _plis(rig.rtcp_out) == [0x90]
    clock.advance(0.48)  # 0.99 s
    rig.video.request_keyframe(1)
    rig.video.request_keyframe(2)
    assert _plis(rig.rtcp_out) == [0x90]
    clock.advance(0.02)  # 1.01 s
    rig.video.request_keyframe(2)
    assert _plis(rig.rtcp_out) == [0x90, 0x92]
    rig.video.request_keyframe(1)  # layer 1 has its own throttle
    assert _plis(rig.rtcp_out) == [0x90, 0x92, 0x91]
    rig.video.request_keyframe(1)
    rig.video.request_keyframe(2)
    rig.video.request_keyframe(3)  # out of range
    rig.video.request_keyframe(-1)
    assert len(rig.rtcp_out) == 3


def test_no_pli_for_audio_or_an_unlearnt_layer(rig: Rig, clock: FakeClock) -> None:
    rig.demux.on_rtp(published(1, 0xA0, OPUS, pt=OPUS_PT, mid=AUDIO_MID))
    rig.audio.request_keyframe(0)
    rig.video.request_keyframe_all()  # no SSRC learnt yet: nobody to ask
    assert rig.rtcp_out == []
    rig.demux.on_rtp(published(1, 0xA1, vp8(key=True), mid=VIDEO_MID, rid="h"))
    rig.video.request_keyframe_all()
    assert _plis(rig.rtcp_out) == [0xA1]


def test_pli_counted(rig: Rig, clock: FakeClock) -> None:
    rig.demux.on_rtp(published(1, 0xA2, vp8(key=True), mid=VIDEO_MID, rid="q"))
    before = COUNTERS.pli_out
    rig.video.request_keyframe(0)
    rig.video.request_keyframe(0)
    assert COUNTERS.pli_out == before + 1


# --- receiver reports and REMB -----------------------------------------------------------------


def _feed(rig: Rig, ssrc: int, seqs: list[int], *, first: str | None = "h") -> None:
    for i, seq in enumerate(seqs):
        if i == 0 and first is not None:
            rig.demux.on_rtp(published(seq, ssrc, vp8(key=True), mid=VIDEO_MID, rid=first))
        else:
            rig.demux.on_rtp(published(seq, ssrc, vp8(key=False)))


def _report(rig: Rig) -> tuple[rtcp.ReceiverReport, rtcp.Remb | None]:
    packets = rtcp.parse_compound(rig.demux.rtcp_reports())
    rr = packets[0]
    assert isinstance(rr, rtcp.ReceiverReport) and rr.ssrc == RECEIVER_SSRC
    remb = [p for p in packets[1:] if isinstance(p, rtcp.Remb)]
    assert len(remb) <= 1 and len(packets) == 1 + len(remb)
    return rr, remb[0] if remb else None


def test_receiver_report_loss_across_sequence_wraparound(rig: Rig, clock: FakeClock) -> None:
    rig.demux._last_report = clock.now
    assert rig.demux.rtcp_reports() == b""  # nothing heard yet
    seqs = [s & 0xFFFF for s in range(65530, 65546)]  # 65530 .. 65535, 0 .. 9
    lost = {65533, 2, 3}
    _feed(rig, 0x5EED, [s for s in seqs if s not in lost])
    clock.advance(1.0)
    rr, remb = _report(rig)
    (block,) = rr.reports
    assert block.ssrc == 0x5EED
    assert block.highest_sequence_number == 0x10000 + 9  # one cycle, highest 9
    assert block.packets_lost == 3
    assert block.fraction_lost == (3 << 8) // 16
    assert (block.last_sr, block.delay_since_last_sr) == (0, 0)
    assert remb is not None and remb.ssrcs == (0x5EED,)
    # a clean interval: the fraction is per interval, the count cumulative
    _feed(rig, 0x5EED, list(range(10, 20)), first=None)
    clock.advance(1.0)
    (block,) = _report(rig)[0].reports
    assert (block.fraction_lost, block.packets_lost) == (0, 3)
    assert block.highest_sequence_number == 0x10000 + 19
    # half of the next 20 lost
    _feed(rig, 0x5EED, list(range(20, 40, 2)), first=None)
    clock.advance(1.0)
    (block,) = _report(rig)[0].reports
    assert block.fraction_lost == (9 << 8) // 19  # 19 expected since the last report, 10 came
    assert block.packets_lost == 12 and block.highest_sequence_number == 0x10000 + 38


def test_reordered_and_duplicate_packets_do_not_count_as_loss(rig: Rig, clock: FakeClock) -> None:
    rig.demux._last_report = clock.now
    _feed(rig, 0x5EEE, [65534, 0, 65535, 1, 1, 2])
    clock.advance(1.0)
    (block,) = _report(rig)[0].reports
    assert (block.highest_sequence_number, block.packets_lost, block.fraction_lost) == (
        0x10002,
        0,
        0,
    )


def test_receiver_report_carries_lsr_and_dlsr(rig: Rig, clock: FakeClock) -> None:
    rig.demux._last_report = clock.now
    _feed(rig, 0x5EF0, [1, 2, 3], first="q")
    ntp = 0xE1234567_89ABCDEF
    rig.demux.on_rtcp(bytes(rtcp.SenderReport(0x5EF0, ntp, 1, 2, 3)))
    clock.advance(0.25)
    (block,) = _report(rig)[0].reports
    assert block.last_sr == 0x456789AB  # the middle 32 bits of the NTP timestamp
    assert block.delay_since_last_sr == 0x4000  # 0.25 s in 1/65536 s


def test_audio_only_reports_have_no_remb(rig: Rig, clock: FakeClock) -> None:
    rig.demux._last_report = clock.now
    for seq in range(5):
        rig.demux.on_rtp(
            published(seq, 0xAD, OPUS, pt=OPUS_PT, mid=AUDIO_MID if seq == 0 else None)
        )
    clock.advance(1.0)
    rr, remb = _report(rig)
    assert [b.ssrc for b in rr.reports] == [0xAD] and remb is None
    _feed(rig, 0xBD, [7, 8])
    clock.advance(1.0)
    rr, remb = _report(rig)
    assert [b.ssrc for b in rr.reports] == [0xAD, 0xBD]
    assert remb is not None and remb.ssrcs == (0xBD,)  # REMB is about video streams only


def test_many_streams_split_into_several_receiver_reports(clock: FakeClock) -> None:
    demux = RtpDemuxer(clock=clock, mid_id=MID_ID, rid_id=RID_ID)
    demux._last_report = clock.now
    for n in range(40):
        receiver = TrackReceiver(
            kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1, send_rtcp=_ignore
        )
        demux.bind(str(n), receiver, {"": 0}, payload_type=OPUS_PT)
        demux.on_rtp(published(1, 0x1000 + n, OPUS, pt=OPUS_PT, mid=str(n)))
    packets = rtcp.parse_compound(demux.rtcp_reports())
    assert [len(p.reports) for p in packets if isinstance(p, rtcp.ReceiverReport)] == [31, 9]


def _remb_receiver() -> TrackReceiver:
    receiver = TrackReceiver(
        kind="video",
        mime_type="video/VP8",
        clock_rate=90000,
        layer_count=1,
        send_rtcp=_ignore,
        clock=FakeClock(),
    )
    receiver.layers[0].ssrc = 0x77
    return receiver


def _interval(receiver: TrackReceiver, seq: int, *, sent: int, lost: int, size: int) -> int:
    """Feed `sent` packets of about `size` bytes of which `lost` (not the first nor the last,
    so the gap is visible in this interval) never arrive; returns the next sequence number."""
    assert 0 <= lost <= max(sent - 2, 0)
    filler = bytes(max(size - 31, 0))
    for i in [0, *range(lost + 1, sent)]:
        payload = vp8(key=i == 0) + filler
        receiver.on_rtp(RtpPacket.parse(published(seq + i, 0x77, payload)), 0)
    return (seq + sent) & 0xFFFF


def test_remb_grows_while_clean_and_backs_off_under_loss() -> None:
    receiver = _remb_receiver()
    start = receiver.remb_bitrate
    seq = _interval(receiver, 0, sent=100, lost=0, size=1000)
    receiver.report_blocks(1.0)
    assert receiver.remb_bitrate == int(start * 1.08)
    for _ in range(60):
        seq = _interval(receiver, seq, sent=100, lost=0, size=1000)
        receiver.report_blocks(1.0)
    assert receiver.remb_bitrate == REMB_MAX
    seq = _interval(receiver, seq, sent=100, lost=30, size=1000)
    (block,) = receiver.report_blocks(1.0)
    assert block.fraction_lost == (30 << 8) // 100
    assert REMB_MIN <= receiver.remb_bitrate < 70 * 1090 * 8
    seq = _interval(receiver, seq, sent=10, lost=8, size=100)
    receiver.report_blocks(1.0)
    assert receiver.remb_bitrate == REMB_MIN


@pytest.mark.parametrize("interval", [1.0, 0.01, 0.0])
def test_remb_stays_bounded_under_loss_at_high_rates(interval: float) -> None:
    """A publisher sending more than REMB_MAX with >10 % loss (or a report timer that fires
    twice in quick succession) must not make the estimate exceed REMB_MAX."""
    receiver = _remb_receiver()
    _interval(receiver, 0, sent=1000, lost=200, size=1200)  # ~7.7 Mbit in the interval
    receiver.report_blocks(interval)
    assert REMB_MIN <= receiver.remb_bitrate <= REMB_MAX


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(1, 300), st.integers(0, 300), st.sampled_from([1.0, 0.2, 0.0])),
        min_size=1,
        max_size=8,
    )
)
def test_remb_always_within_bounds(intervals: list[tuple[int, int, float]]) -> None:
    receiver = _remb_receiver()
    seq = random.Random(len(intervals)).randrange(0x10000)
    for sent, lost, interval in intervals:
        seq = _interval(receiver, seq, sent=sent, lost=min(lost, max(sent - 2, 0)), size=1200)
        receiver.report_blocks(interval)
        assert REMB_MIN <= receiver.remb_bitrate <= REMB_MAX
        assert rtcp.Remb(RECEIVER_SSRC, receiver.remb_bitrate, (0x77,)).bitrate <= REMB_MAX
