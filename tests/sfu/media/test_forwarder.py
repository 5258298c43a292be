"""Tests for sfu.media.forwarder: DownTrack layer selection and switching, header rewriting (SSRC, PT,
sequence number, timestamp, VP8 picture id / TL0PICIDX), NACK history, sender reports, and the
FeedbackRouter; driven by a synthetic simulcast VP8 publisher through a real TrackReceiver. Every
test runs three times: the down track sending through `send_rtp` (rtc.fast_path off), through the
pure-Python fast path and through the compiled one (`sfu.media.fastpath`), whose datagrams the rig
reads back from the batch before they would be sent."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media import fastpath
from sfu.media.feedback import FeedbackRouter
from sfu.media.forwarder import HISTORY_SIZE, SENDER_REPORT_INTERVAL, DownTrack
from sfu.media.receiver import RECEIVER_SSRC, TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpPacket
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor
from sfu.media.transport.batch import FastBatch, Flusher
from sfu.metrics import COUNTERS
from tests.sfu.conftest import FakeClock
from tests.sfu.packets import rtp

IN_PT, OUT_PT = 96, 98
OPUS_IN_PT, OPUS_OUT_PT = 109, 111
OUT_SSRC = 0x5B5C_0001
CNAME = "subscriber-cname"
FRAME = 1 / 32  # seconds between frames (exact in binary floating point)
TS_STEP = 2812  # 90 kHz ticks between frames
SUBSCRIBER_SSRC = 0x7777
PROPERTY = settings(max_examples=200, deadline=None)  # random each run: tests/conftest.py
#: how the rig's down track sends: "send_rtp", or the fast path "python" / "compiled"
PATH = ["send_rtp"]


@pytest.fixture(autouse=True, params=["send_rtp", "python", "compiled"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    PATH[0] = request.param
    yield request.param
    PATH[0] = "send_rtp"


class _NoFlush:
    """The rig reads queued datagrams back itself: nothing is ever flushed."""

    def add(self, queue: object) -> None:
        pass


# --- a synthetic simulcast VP8 publisher ----------------------------------------------------------


#: mid/rid as a publisher sends them: never forwarded
PUBLISHER_EXTENSIONS = ((4, b"1"), (10, b"h"))


@dataclass
class VideoSource:
    """One simulcast layer: its own SSRC, sequence numbers, timestamps, picture ids."""

    ssrc: int
    seq: int
    ts: int
    pid: int
    tl0: int
    rng: random.Random
    key_idx: int | None = None

    def frame(self, *, key: bool, packets: int = 2) -> list[bytes]:
        """One frame: the first packet has S=1 (and P=0 in the frame tag for a key frame)."""
        out = []
        if key and self.key_idx is not None:
            self.key_idx = (self.key_idx + 1) & 0x1F
        for i in range(packets):
            desc = Vp8PayloadDescriptor(
                start_of_partition=i == 0,
                picture_id=self.pid,
                picture_id_15bit=True,
                tl0_pic_idx=self.tl0,
                tid=0,
                layer_sync=key,
                key_idx=self.key_idx,
                extended=True,
            )
            body = self.rng.randbytes(24)
            if i == 0:
                body = bytes(((body[0] & 0xFE) | (0 if key else 1),)) + body[1:]
            last = i == packets - 1
            out.append(
                rtp(
                    bytes(desc) + body,
                    payload_type=IN_PT,
                    sequence_number=self.seq,
                    timestamp=self.ts,
                    ssrc=self.ssrc,
                    marker=last,
                    extensions=PUBLISHER_EXTENSIONS,
                )
            )
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + TS_STEP) & 0xFFFFFFFF
        self.pid = (self.pid + 1) & 0x7FFF
        self.tl0 = (self.tl0 + 1) & 0xFF
        return out

    def probe(self, size: int = 255) -> bytes:
        """A padding-only packet (a bandwidth probe), between frames."""
        ts = self.ts - TS_STEP  # the last frame's
        seq, self.seq = self.seq, (self.seq + 1) & 0xFFFF
        return rtp(
            payload_type=IN_PT, sequence_number=seq, timestamp=ts, ssrc=self.ssrc, padding=size
        )


@dataclass
class Forwarded:
    layer: int
    data: bytes  # what the publisher sent
    out: bytes  # what the subscriber got


@dataclass
class Rig:
    """A 3-layer VP8 TrackReceiver with a DownTrack, fed by three VideoSources."""

    clock: FakeClock
    seqs: tuple[int, int, int] = (1000, 20000, 40000)
    sources: list[VideoSource] = field(init=False)
    receiver: TrackReceiver = field(init=False)
    downtrack: DownTrack = field(init=False)
    rtcp_out: list[tuple[float, bytes]] = field(default_factory=list)
    _sent: list[bytes] = field(default_factory=list)
    forwarded: list[Forwarded] = field(default_factory=list)
    path: str = field(default_factory=lambda: PATH[0])
    _batch: Any = None

    @property
    def sent(self) -> list[bytes]:
        """What the down track sent so far (with a fast path: what it queued on its batch)."""
        if self._batch is not None:
            self._sent.extend(datagram for datagram, _ in self._batch.pending())
            self._batch.clear()
        return self._sent

    def _fast_sender(self) -> tuple[Any, Any, Any] | None:
        impl = {"python": fastpath.PYTHON, "compiled": fastpath.COMPILED}.get(self.path)
        if impl is None:
            assert self.path == "send_rtp", "the compiled fast path is not built"
            return None
        self._batch = impl.batch(-1, capacity=65536)  # the longest test run fits
        target = impl.target(self._batch, ("192.0.2.1", 9))
        return impl.forward, target, FastBatch(self._batch, cast(Flusher, _NoFlush()))

    def __post_init__(self) -> None:
        rng = random.Random(1234)
        self.sources = [
            VideoSource(0xA0 + n, seq, rng.randrange(1 << 32), rng.randrange(1 << 15), n * 50, rng)
            for n, seq in enumerate(self.seqs)
        ]
        self.receiver = TrackReceiver(
            kind="video",
            mime_type="video/VP8",
            clock_rate=90000,
            layer_count=3,
            send_rtcp=lambda data: self.rtcp_out.append((self.clock.now, data)),
            clock=self.clock,
        )
        for n, source in enumerate(self.sources):
            self.receiver.layers[n].ssrc = source.ssrc  # as the demuxer learns it
        self.downtrack = DownTrack(
            self.receiver,
            ssrc=OUT_SSRC,
            payload_type=OUT_PT,
            send_rtp=self.sent.append,
            cname=CNAME,
            fast_sender=self._fast_sender,
        )
        self.receiver.add_sink(self.downtrack)

    def feed(self, layer: int, data: bytes) -> bytes | None:
        n = len(self.sent)
        self.receiver.on_rtp(RtpPacket.parse(data), layer)
        assert len(self.sent) - n <= 1
        if len(self.sent) == n:
            return None
        self.forwarded.append(Forwarded(layer, data, self.sent[-1]))
        return self.sent[-1]

    def frame(self, layer: int, *, key: bool = False, packets: int = 2) -> list[bytes | None]:
        return [self.feed(layer, p) for p in self.sources[layer].frame(key=key, packets=packets)]

    def tick(self, layers: tuple[int, ...] = (0, 1, 2), *, keys: tuple[int, ...] = ()) -> None:
        """Every layer in `layers` sends one frame, then a frame interval passes."""
        for layer in layers:
            self.frame(layer, key=layer in keys)
        self.clock.advance(FRAME)

    def plis(self) -> list[int]:
        """The layers PLIs were sent for, in order."""
        layer_of = {s.ssrc: n for n, s in enumerate(self.sources)}
        out = []
        for _, data in self.rtcp_out:
            for packet in rtcp.parse_compound(data):
                assert isinstance(packet, rtcp.Pli) and packet.sender_ssrc == RECEIVER_SSRC
                out.append(layer_of[packet.media_ssrc])
        return out

    def out_layers(self) -> list[int]:
        return [f.layer for f in self.forwarded]


@dataclass
class Out:
    seq: int
    ts: int
    ssrc: int
    pt: int
    marker: bool
    desc: Vp8PayloadDescriptor
    after_desc: bytes


def parse_out(data: bytes) -> Out:
    packet = RtpPacket.parse(data)
    assert packet.extension_profile is None and packet.csrc == ()
    desc = Vp8PayloadDescriptor.parse(packet.payload)
    return Out(
        packet.sequence_number,
        packet.timestamp,
        packet.ssrc,
        packet.payload_type,
        packet.marker,
        desc,
        packet.payload[desc.size :],
    )


def payload_after_descriptor(data: bytes) -> bytes:
    payload = RtpPacket.parse(data).payload
    return payload[Vp8PayloadDescriptor.parse(payload).size :]


def assert_continuous(outs: list[bytes]) -> None:
    """Sequence numbers +1 each and timestamps never going back; on media packets (not padding
    probes) picture id and TL0PICIDX +1 on every new frame and unchanged within one, and the
    timestamp changing exactly when a new frame starts."""
    packets = [RtpPacket.parse(o) for o in outs]
    for prev, cur in itertools.pairwise(packets):
        assert cur.sequence_number == (prev.sequence_number + 1) & 0xFFFF, (
            prev.sequence_number,
            cur.sequence_number,
        )
        assert (cur.timestamp - prev.timestamp) & 0xFFFFFFFF < 0x80000000
    media = [parse_out(o) for o, p in zip(outs, packets, strict=True) if p.payload_size]
    for prev_media, cur_media in itertools.pairwise(media):
        step = 1 if cur_media.desc.start_of_partition else 0
        assert cur_media.desc.picture_id == ((prev_media.desc.picture_id or 0) + step) & 0x7FFF
        assert cur_media.desc.tl0_pic_idx == ((prev_media.desc.tl0_pic_idx or 0) + step) & 0xFF
        assert (cur_media.ts != prev_media.ts) == bool(step)


def assert_payloads_untouched(rig: Rig) -> None:
    for f in rig.forwarded:
        if RtpPacket.parse(f.data).payload_size:
            assert payload_after_descriptor(f.out) == payload_after_descriptor(f.data)


# --- starting -------------------------------------------------------------------------------------


def test_nothing_forwarded_before_start(clock: FakeClock) -> None:
    rig = Rig(clock)
    for _ in range(3):
        rig.tick(keys=(0, 1, 2))
    assert rig.sent == [] and rig.plis() == []
    rig.downtrack.start()
    assert rig.plis() == [2]  # a key frame of the best active layer, asked for at once
    rig.downtrack.start()  # idempotent
    assert rig.plis() == [2]
    rig.tick(keys=(2,))
    assert rig.out_layers() == [2, 2]


def test_video_waits_for_a_key_frame(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()  # no layer active yet: the low one is asked
    assert rig.plis() == [0]
    rig.tick()
    for _ in range(20):
        rig.tick()
    assert rig.sent == []
    # key frames were requested for the target layer, throttled
    assert set(rig.plis()) == {0, 2}
    times = [t for t, _ in rig.rtcp_out[1:]]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times))
    rig.tick(keys=(2,))
    rig.tick()
    assert rig.out_layers() == [2, 2, 2, 2]
    assert_continuous(rig.sent)
    assert rig.downtrack.current_layer == 2


def test_any_allowed_layer_key_frame_starts_the_stream_then_upgrades(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.tick()
    rig.downtrack.start()
    rig.tick(keys=(0,))  # only the low layer answers at first
    assert rig.out_layers() == [0, 0]
    for _ in range(5):
        rig.tick()
    assert set(rig.out_layers()) == {0} and 2 in rig.plis()
    rig.tick(keys=(2,))
    rig.tick()
    assert rig.out_layers()[-4:] == [2, 2, 2, 2]
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)


def test_audio_forwards_at_once(clock: FakeClock) -> None:
    sent: list[bytes] = []
    receiver = TrackReceiver(
        kind="audio",
        mime_type="audio/opus",
        clock_rate=48000,
        layer_count=1,
        send_rtcp=sent.append,
        clock=clock,
    )
    downtrack = DownTrack(
        receiver, ssrc=OUT_SSRC, payload_type=OPUS_OUT_PT, send_rtp=sent.append, cname=CNAME
    )
    receiver.add_sink(downtrack)
    downtrack.start()
    assert downtrack.max_layer == 0 and sent == []  # no PLI for audio
    payloads = [bytes((0xFC, n)) + b"opus" * n for n in range(1, 6)]
    for n, payload in enumerate(payloads):
        data = rtp(
            payload,
            payload_type=OPUS_IN_PT,
            sequence_number=60000 + n,
            timestamp=480 * n,
            ssrc=0xAD,
            extensions=PUBLISHER_EXTENSIONS,
        )
        receiver.on_rtp(RtpPacket.parse(data), 0)
    assert len(sent) == 5
    for n, data in enumerate(sent):
        packet = RtpPacket.parse(data)
        assert (packet.ssrc, packet.payload_type) == (OUT_SSRC, OPUS_OUT_PT)
        assert (packet.sequence_number, packet.timestamp) == (60000 + n, 480 * n)
        assert packet.payload == payloads[n] and packet.extensions == {}


def test_ssrc_and_payload_type_rewritten_payload_untouched(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(keys=(2,))
    for _ in range(3):
        rig.tick()
    assert len(rig.sent) == 8
    for f in rig.forwarded:
        inp, out = RtpPacket.parse(f.data), RtpPacket.parse(f.out)
        assert (out.ssrc, out.payload_type) == (OUT_SSRC, OUT_PT)
        assert out.marker == inp.marker and out.extensions == {}
        # no switch yet: the whole payload, descriptor included, is the publisher's
        assert out.payload == inp.payload
    assert_payloads_untouched(rig)


def test_padding_is_kept_as_received(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    (key,) = rig.sources[0].frame(key=True, packets=1)
    padded = bytearray(key)
    padded[0] |= 0x20
    padded += b"\x00\x00\x03"
    out = rig.feed(0, bytes(padded))
    assert out is not None
    packet = RtpPacket.parse(out)
    assert packet.padding_size == 3 and out.endswith(b"\x00\x00\x03")
    assert packet.payload == RtpPacket.parse(bytes(padded)).payload


def test_padding_probes_on_the_current_layer_keep_sequence_numbers_gapless(
    clock: FakeClock,
) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    assert rig.feed(2, rig.sources[2].probe()) is None  # nothing to continue yet
    rig.frame(2, key=True)
    assert rig.feed(1, rig.sources[1].probe()) is None  # not the layer being forwarded
    last = parse_out(rig.sent[-1])
    probes = [rig.feed(2, rig.sources[2].probe()) for _ in range(2)]
    rig.frame(2)
    sent_probes = [p for p in probes if p is not None]
    assert len(sent_probes) == 2
    for n, data in enumerate(sent_probes):
        packet = RtpPacket.parse(data)
        # a minimal probe: header plus one padding byte, whatever size the publisher's was
        assert len(data) == 13 and packet.padding_size == 1 and packet.payload == b""
        assert (packet.ssrc, packet.payload_type) == (OUT_SSRC, OUT_PT)
        assert packet.sequence_number == (last.seq + 1 + n) & 0xFFFF
        assert packet.timestamp == last.ts
    assert parse_out(rig.sent[-2]).seq == (last.seq + 3) & 0xFFFF
    # a probe is answered from history like any packet
    n = len(rig.sent)
    rig.downtrack.retransmit([RtpPacket.parse(sent_probes[0]).sequence_number])
    assert rig.sent[n:] == [sent_probes[0]]


def test_a_padding_probe_never_starts_a_switch(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    rig.tick(layers=(0, 1))
    n = len(rig.sent)
    assert rig.feed(1, rig.sources[1].probe()) is None
    rig.tick(layers=(0, 1))
    assert rig.out_layers()[n:] == [0, 0] and rig.downtrack.current_layer == 0


def test_a_publishers_padding_reaches_a_thin_link_as_nothing(clock: FakeClock) -> None:
    """Held below its preferred layer by the allocator, a down track does not pass on the
    publisher's padding-only packets (libwebrtc probes its uplink with hundreds a second), and
    renumbers the media after them so the subscriber sees no hole; at its preferred layer it
    passes them on (shrunk), as before."""
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    assert rig.feed(0, rig.sources[0].probe()) is not None  # unconstrained: passed on
    rig.downtrack.max_layer = 2
    rig.downtrack.set_allocation(0)  # the link carries the lowest layer only
    assert rig.downtrack.constrained
    n = len(rig.sent)
    for _ in range(3):
        assert rig.feed(0, rig.sources[0].probe()) is None
    rig.tick(layers=(0,))
    rig.tick(layers=(0,))
    assert len(rig.sent) == n + 4 and set(rig.out_layers()[n:]) == {0}
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)


# --- layer switches ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seqs",
    [
        (1000, 20000, 30000),
        (40000, 1000, 65000),  # the first forwarded sequence number in the upper half
        (65530, 65500, 10),  # wrapping while forwarded
        (32767, 32768, 0),
    ],
)
def test_switch_up_only_on_a_key_frame_of_the_target_layer(
    clock: FakeClock, seqs: tuple[int, int, int]
) -> None:
    rig = Rig(clock, seqs=seqs)
    rig.downtrack.start()
    for _ in range(3):
        rig.tick(layers=(0,), keys=(0,) if not rig.sent else ())
    assert set(rig.out_layers()) == {0}
    # the middle layer starts: the low one keeps flowing while key frames are asked for
    rig.rtcp_out.clear()
    for _ in range(60):  # 1.9 s
        rig.tick(layers=(0, 1))
    assert set(rig.out_layers()) == {0} and len(rig.sent) == 2 * 63
    times = [t for t, _ in rig.rtcp_out]
    assert rig.plis() == [1, 1] and times[1] - times[0] >= 1.0  # layer 1: at most one a second
    last_out = parse_out(rig.sent[-1])
    n = len(rig.sent)
    rig.tick(layers=(1, 0), keys=(1,))
    rig.tick(layers=(0, 1))
    assert rig.out_layers()[n:] == [1, 1, 1, 1]
    first = parse_out(rig.sent[n])
    assert first.seq == (last_out.seq + 1) & 0xFFFF
    # one frame interval of wall-clock time after the last packet of the old layer
    assert first.ts == (last_out.ts + int(FRAME * 90000)) & 0xFFFFFFFF
    assert first.desc.picture_id == ((last_out.desc.picture_id or 0) + 1) & 0x7FFF
    assert first.desc.tl0_pic_idx == ((last_out.desc.tl0_pic_idx or 0) + 1) & 0xFF
    assert rig.downtrack.current_layer == 1
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)


def test_timestamps_monotonic_when_the_new_layer_has_a_lower_base(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.sources[0].ts = 0xFFFF_F000  # about to wrap
    rig.sources[1].ts = 5
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    for _ in range(3):
        rig.tick(layers=(0, 1))
    rig.tick(layers=(0, 1), keys=(1,))
    for _ in range(3):
        rig.tick(layers=(0, 1))
    assert rig.out_layers()[-8:] == [1] * 8
    assert_continuous(rig.sent)


def _forwarding_low_with_middle_active(rig: Rig) -> None:
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    for _ in range(3):
        rig.tick(layers=(0, 1))


def _sender_reports_now(rig: Rig, *, skew: tuple[int, int] = (0, 0)) -> None:
    """Publisher SRs for layers 0 and 1 at one instant: each maps that instant to the timestamp of
    the layer's next frame (plus `skew` ticks), i.e. both layers share one capture clock."""
    ntp = 0xE900_0000_0000_0000
    for layer in (0, 1):
        source = rig.sources[layer]
        report = rtcp.SenderReport(source.ssrc, ntp, source.ts + skew[layer], 0, 0)
        rig.receiver.on_sender_report(layer, report)


def test_switch_aligns_timestamps_through_the_publisher_sender_reports(clock: FakeClock) -> None:
    rig = Rig(clock)
    _forwarding_low_with_middle_active(rig)
    _sender_reports_now(rig)
    last = parse_out(rig.sent[-1])
    clock.advance(0.5)  # a hiccup: the wall clock says 0.53 s, the capture clock one frame
    n = len(rig.sent)
    rig.tick(layers=(1, 0), keys=(1,))
    assert rig.out_layers()[n:] == [1, 1]
    # the key frame was captured one frame after the last forwarded one: so it is stamped
    assert parse_out(rig.sent[n]).ts == (last.ts + TS_STEP) & 0xFFFFFFFF
    rig.tick(layers=(1, 0))
    assert_continuous(rig.sent)


def test_switch_stays_after_the_last_sent_timestamp(clock: FakeClock) -> None:
    rig = Rig(clock)
    _forwarding_low_with_middle_active(rig)
    _sender_reports_now(rig)
    n = len(rig.sent)
    rig.tick(layers=(0, 1), keys=(1,))  # the same capture instant as the low frame just sent
    assert rig.out_layers()[n:] == [0, 0, 1, 1]
    assert parse_out(rig.sent[n + 2]).ts == (parse_out(rig.sent[n + 1]).ts + 1) & 0xFFFFFFFF
    assert_continuous(rig.sent)


def test_switch_ignores_sender_reports_that_disagree_with_the_wall_clock(clock: FakeClock) -> None:
    rig = Rig(clock)
    _forwarding_low_with_middle_active(rig)
    _sender_reports_now(rig, skew=(0, 3 * 90000))  # layer 1's SR is 3 s off
    last = parse_out(rig.sent[-1])
    clock.advance(0.5)
    n = len(rig.sent)
    rig.tick(layers=(1, 0), keys=(1,))
    assert parse_out(rig.sent[n]).ts == (last.ts + int((FRAME + 0.5) * 90000)) & 0xFFFFFFFF
    assert_continuous(rig.sent)


def test_downgrade_when_the_current_layer_goes_silent(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(keys=(2,))
    for _ in range(5):
        rig.tick()
    assert set(rig.out_layers()) == {2}
    rig.rtcp_out.clear()
    n = len(rig.sent)
    # the high layer stops (bandwidth): for a second nothing is switched, even on a key frame
    rig.tick(layers=(0, 1), keys=(1,))
    for _ in range(30):  # 0.97 s since the last high-layer packet
        rig.tick(layers=(0, 1))
    assert len(rig.sent) == n and rig.plis() == []
    for _ in range(3):
        rig.tick(layers=(0, 1))
    assert len(rig.sent) == n and rig.plis() == [1]  # the middle layer is the target now
    rig.tick(layers=(0, 1), keys=(1,))
    rig.tick(layers=(0, 1))
    assert rig.out_layers()[n:] == [1, 1, 1, 1]
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)


def test_max_layer_is_respected(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.set_max_layer(1)
    rig.downtrack.start()
    assert rig.plis() == [0]  # nothing active yet: the low layer
    for _ in range(3):
        rig.tick(keys=(2,))
    assert rig.sent == []
    rig.tick(keys=(1, 2))
    for _ in range(3):
        rig.tick(keys=(2,))
    assert set(rig.out_layers()) == {1}
    # lowered: the middle layer keeps flowing until the low layer's key frame, asked for at once
    rig.rtcp_out.clear()
    clock.advance(0.5)  # past the low layer's PLI throttle (it was asked at start)
    rig.downtrack.set_max_layer(0)
    assert rig.plis() == [0] and rig.downtrack.subscribed_layer == 1
    n = len(rig.sent)
    rig.tick()
    assert rig.out_layers()[n:] == [1, 1]
    rig.tick(keys=(0, 1, 2))
    assert rig.out_layers()[n + 2 :] == [0, 0]
    for _ in range(3):
        rig.tick(keys=(1, 2))
    assert set(rig.out_layers()[n + 2 :]) == {0} and rig.downtrack.subscribed_layer == 0
    # raised again: up on the next key frame of the best layer
    rig.downtrack.set_max_layer(2)
    rig.downtrack.set_max_layer(5)  # clamped to the layers there are
    rig.tick(keys=(2,))
    assert rig.out_layers()[-2:] == [2, 2]
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)


def test_disable_stops_forwarding_and_enable_waits_for_a_key_frame(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(keys=(2,))
    rig.tick()
    n = len(rig.sent)
    rig.downtrack.set_enabled(False)
    rig.downtrack.set_enabled(False)
    for _ in range(40):
        rig.tick(keys=(0, 1, 2))
    assert len(rig.sent) == n
    rig.rtcp_out.clear()
    rig.downtrack.set_enabled(True)
    assert rig.plis() == [2]
    rig.tick()
    assert len(rig.sent) == n  # deltas after a pause would not decode
    rig.tick(keys=(2,))
    rig.tick()
    assert rig.out_layers()[n:] == [2, 2, 2, 2]
    assert_continuous(rig.sent)  # the subscriber sees no gap in seq / picture id


def test_packets_older_than_the_switch_point_are_dropped(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    early = rig.sources[2].frame(key=False)  # sent before the key frame, delivered late
    key = rig.sources[2].frame(key=True)
    assert rig.feed(2, key[0]) is not None
    assert rig.feed(2, early[1]) is None
    assert rig.feed(2, early[0]) is None
    assert rig.feed(2, key[1]) is not None
    assert_continuous(rig.sent)


def test_reordered_packets_keep_their_relative_mapping(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.frame(2, key=True)
    base = parse_out(rig.sent[-1]).seq
    a, b = rig.sources[2].frame(key=False, packets=3), rig.sources[2].frame(key=False, packets=2)
    for data in (a[0], a[2], a[1], b[1], b[0]):
        rig.feed(2, data)
    assert [(parse_out(o).seq - base) & 0xFFFF for o in rig.sent[2:]] == [1, 3, 2, 5, 4]
    # the newest packet stays the reference: a switch continues after it, no duplicates
    rig.downtrack.set_max_layer(1)
    rig.tick(layers=(1,), keys=(1,))
    assert [(parse_out(o).seq - base) & 0xFFFF for o in rig.sent[7:]] == [6, 7]
    seqs = [parse_out(o).seq for o in rig.sent]
    assert len(set(seqs)) == len(seqs)


def test_a_late_packet_does_not_rewind_the_picture_id_used_for_the_next_switch(
    clock: FakeClock,
) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.frame(2, key=True)
    a, b = rig.sources[2].frame(key=False), rig.sources[2].frame(key=False)
    for data in (a[0], b[0], b[1], a[1]):  # a[1] arrives late, after the next frame
        rig.feed(2, data)
    assert len(rig.sent) == 6
    newest = parse_out(rig.sent[4])  # b[1]
    rig.downtrack.set_max_layer(1)
    rig.tick(layers=(1,), keys=(1,))
    switched = parse_out(rig.sent[6])
    assert switched.desc.picture_id == ((newest.desc.picture_id or 0) + 1) & 0x7FFF
    assert switched.desc.tl0_pic_idx == ((newest.desc.tl0_pic_idx or 0) + 1) & 0xFF


def test_key_idx_continuous_across_a_switch(clock: FakeClock) -> None:
    rig = Rig(clock)
    for n, source in enumerate(rig.sources):
        source.key_idx = 10 * n
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    rig.tick(layers=(0,))
    rig.tick(layers=(0, 1), keys=(1,))
    outs = [parse_out(o) for o in rig.sent]
    # KEYIDX of the low layer is 1 after its key frame; the middle layer's key frame (11) becomes 2
    assert [o.desc.key_idx for o in outs] == [1, 1, 1, 1, 1, 1, 2, 2]
    assert rig.out_layers() == [0, 0, 0, 0, 0, 0, 1, 1]


def test_long_run_on_one_layer_keeps_flowing(clock: FakeClock) -> None:
    """More than 32768 packets after a switch (minutes of video) are still forwarded."""
    rig = Rig(clock, seqs=(100, 1000, 2000))
    rig.downtrack.start()
    rig.frame(0, key=True, packets=1)
    source = rig.sources[0]
    packets = source.frame(key=False, packets=1)[0]
    n = 0x8000 + 100
    start = source.seq
    for i in range(n):
        data = bytearray(packets)
        data[2:4] = ((start + i) & 0xFFFF).to_bytes(2, "big")
        rig.receiver.on_rtp(RtpPacket.parse(bytes(data)), 0)
    assert len(rig.sent) == n + 1
    assert RtpPacket.parse(rig.sent[-1]).sequence_number == (start + n - 1) & 0xFFFF


# --- property: any sequence of events keeps the outgoing stream continuous ------------------------

# hypothesis favours small integers: make the upper half and the wrap as likely as the rest
SEQ = st.one_of(st.integers(0, 0xFFFF), st.integers(0x7FF0, 0xFFFF), st.integers(0xFFE0, 0xFFFF))
TICK = st.tuples(
    st.just("tick"),
    st.sampled_from([(0, 1, 2), (0, 1, 2), (0, 1), (1, 2), (0,), (1,), (2,), (2, 1, 0)]),
    st.sets(st.integers(0, 2), max_size=2),
    st.sampled_from([FRAME, FRAME, FRAME, 0.0, 0.3, 1.5]),
)
EVENT = st.one_of(
    TICK,
    TICK,
    TICK,
    st.tuples(st.just("max"), st.integers(-1, 2)),
    st.tuples(st.just("enable"), st.booleans()),
    st.tuples(st.just("pli")),
    st.tuples(st.just("probe"), st.integers(0, 2)),
)


@PROPERTY
@given(
    seqs=st.tuples(SEQ, SEQ, SEQ),
    packets=st.integers(1, 3),
    first_key=st.integers(0, 2),
    events=st.lists(EVENT, min_size=5, max_size=40),
)
def test_outgoing_stream_is_always_continuous(
    seqs: tuple[int, int, int], packets: int, first_key: int, events: list[tuple[object, ...]]
) -> None:
    clock = FakeClock()
    rig = Rig(clock, seqs=seqs)
    rig.downtrack.start()
    enabled = True
    # forwarding starts at once on some layer; the events then move it around
    for event in [("tick", (0, 1, 2), {first_key}, FRAME), *events]:
        if event[0] == "tick":
            _, layers, keys, dt = event
            assert isinstance(layers, tuple) and isinstance(keys, set)
            assert isinstance(dt, float)
            for layer in layers:
                before = len(rig.sent)
                was = rig.downtrack.current_layer
                rig.frame(layer, key=layer in keys, packets=packets)
                if not enabled:
                    assert len(rig.sent) == before
                elif len(rig.sent) > before and layer != was:
                    # a switch: only on a key frame of an allowed layer
                    assert layer in keys and layer <= rig.downtrack.max_layer
            clock.advance(dt)
        elif event[0] == "max":
            assert isinstance(event[1], int)
            rig.downtrack.set_max_layer(event[1])
            enabled = enabled and event[1] >= 0  # -1 pauses
        elif event[0] == "probe":
            assert isinstance(event[1], int)
            before = len(rig.sent)
            rig.feed(event[1], rig.sources[event[1]].probe())
            if event[1] != rig.downtrack.current_layer:
                assert len(rig.sent) == before
        elif event[0] == "enable":
            assert isinstance(event[1], bool)
            enabled = event[1]
            rig.downtrack.set_enabled(enabled)
        else:
            rig.downtrack.on_keyframe_request()
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)
    assert all(RtpPacket.parse(o).ssrc == OUT_SSRC for o in rig.sent)


# --- NACK ----------------------------------------------------------------------------------------


def test_nack_retransmits_the_exact_bytes_from_history(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    for _ in range(4):
        rig.tick(layers=(0,))
    history = {parse_out(o).seq: o for o in rig.sent}
    wanted = [parse_out(rig.sent[3]).seq, parse_out(rig.sent[7]).seq]
    unknown = (max(history) + 100) & 0xFFFF
    n = len(rig.sent)
    before = COUNTERS.retransmits_out
    rig.downtrack.retransmit([wanted[0], unknown, wanted[1]])
    assert rig.sent[n:] == [history[wanted[0]], history[wanted[1]]]
    assert COUNTERS.retransmits_out == before + 2


def test_nack_after_a_switch_rebuilds_the_same_bytes_and_skips_older_ones(clock: FakeClock) -> None:
    """History keeps the received packets, not copies: a retransmission is rebuilt, VP8
    descriptor munging included, and is byte-identical to what was first sent."""
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(keys=(2,))
    before_switch = parse_out(rig.sent[-1]).seq
    rig.downtrack.set_max_layer(0)
    rig.tick(keys=(0,))  # switch 2 → 0: picture ids now munged
    rig.tick()
    assert rig.out_layers()[-4:] == [0, 0, 0, 0]
    sent = {parse_out(o).seq: o for o in rig.sent}
    after = [parse_out(o).seq for o in rig.sent[-3:]]
    n = len(rig.sent)
    rig.downtrack.retransmit([before_switch, *after])
    assert rig.sent[n:] == [sent[seq] for seq in after]


def test_nack_for_a_packet_out_of_history_is_ignored(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.frame(0, key=True, packets=1)
    first = parse_out(rig.sent[0]).seq
    for _ in range(HISTORY_SIZE):
        rig.frame(0, packets=1)
    n = len(rig.sent)
    rig.downtrack.retransmit([first])  # its slot now holds a newer packet
    assert len(rig.sent) == n
    rig.downtrack.retransmit([(first + 1) & 0xFFFF])
    assert rig.sent[n:] == [rig.sent[1]]
    rig.downtrack.close()
    rig.downtrack.retransmit([(first + 1) & 0xFFFF])
    assert len(rig.sent) == n + 1


def test_nack_across_the_sequence_wrap_retransmits_the_exact_bytes(clock: FakeClock) -> None:
    """NACKs carry 16-bit numbers; the history is kept in extended ones: 65535 and 0 are two
    different packets, each found after the wrap."""
    rig = Rig(clock, seqs=(65530, 1000, 2000))
    rig.downtrack.start()
    rig.frame(0, key=True, packets=1)
    for _ in range(20):
        rig.frame(0, packets=1)
    sent = {parse_out(o).seq: o for o in rig.sent}
    assert {65535, 0, 1} <= set(sent) and parse_out(rig.sent[-1]).seq == 14
    n = len(rig.sent)
    rig.downtrack.retransmit([65534, 65535, 0, 1])
    assert rig.sent[n:] == [sent[65534], sent[65535], sent[0], sent[1]]


def test_a_new_ssrc_on_the_forwarded_layer_continues_the_sequence(clock: FakeClock) -> None:
    """The publisher restarts a layer on a new SSRC (the demuxer then calls `new_stream`), its
    sequence numbers unrelated to the old ones, here lower: the subscriber sees no gap and no
    packet of the new stream is taken for one older than the switch point."""
    rig = Rig(clock, seqs=(40000, 1000, 2000))
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    rig.tick(layers=(0,))
    source = rig.sources[0]
    source.ssrc, source.seq = 0xB0, 5
    rig.receiver.layers[0].new_stream(source.ssrc)
    n = len(rig.sent)
    rig.tick(layers=(0,), keys=(0,))
    rig.tick(layers=(0,))
    assert len(rig.sent) == n + 4
    seqs = [parse_out(o).seq for o in rig.sent]
    assert seqs == list(range(40000, 40000 + len(seqs)))


# --- sender reports ------------------------------------------------------------------------------


def test_sender_report_only_after_a_publisher_sender_report(clock: FakeClock) -> None:
    rig = Rig(clock)
    assert rig.downtrack.sender_report() == b""  # nothing sent
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    rig.tick(layers=(0,))
    assert rig.downtrack.sender_report() == b""  # no publisher SR: no NTP mapping
    ntp, rtp_ts = 0xE8000000_40000000, 0x1000
    rig.receiver.on_sender_report(1, rtcp.SenderReport(rig.sources[1].ssrc, ntp, rtp_ts, 0, 0))
    assert rig.downtrack.sender_report() == b""  # not for the layer being forwarded
    rig.receiver.on_sender_report(0, rtcp.SenderReport(rig.sources[0].ssrc, ntp, rtp_ts, 0, 0))
    clock.advance(0.5)
    sr, sdes = rtcp.parse_compound(rig.downtrack.sender_report())
    assert isinstance(sr, rtcp.SenderReport) and isinstance(sdes, rtcp.Sdes)
    f = rig.forwarded[-1]
    ts_offset = RtpPacket.parse(f.data).timestamp - RtpPacket.parse(f.out).timestamp
    assert sr.ssrc == OUT_SSRC
    assert sr.ntp_timestamp == ntp + (1 << 31)
    assert sr.rtp_timestamp == (rtp_ts + 45000 - ts_offset) & 0xFFFFFFFF
    assert sr.packet_count == 4
    assert sr.octet_count == sum(len(o) - 12 for o in rig.sent)
    assert sdes.chunks[0].ssrc == OUT_SSRC and sdes.chunks[0].cname == CNAME


def test_sender_report_follows_the_timestamp_offset_after_a_switch(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    for _ in range(3):
        rig.tick(layers=(0, 1))
    rig.tick(layers=(0, 1), keys=(1,))
    assert rig.downtrack.current_layer == 1
    source = rig.sources[1]
    # the publisher's SR for layer 1, in layer 1's timestamp space, taken right now
    rig.receiver.on_sender_report(1, rtcp.SenderReport(source.ssrc, 1 << 60, source.ts, 0, 0))
    sr = rtcp.parse_compound(rig.downtrack.sender_report())[0]
    assert isinstance(sr, rtcp.SenderReport)
    f = rig.forwarded[-1]
    assert f.layer == 1
    ts_offset = RtpPacket.parse(f.data).timestamp - RtpPacket.parse(f.out).timestamp
    assert sr.rtp_timestamp == (source.ts - ts_offset) & 0xFFFFFFFF
    # that is, in the subscriber's timestamp space: one frame after the last forwarded one
    assert sr.rtp_timestamp == (RtpPacket.parse(f.out).timestamp + TS_STEP) & 0xFFFFFFFF
    rig.downtrack.close()
    assert rig.downtrack.sender_report() == b""


def test_sender_reports_are_due_at_once_then_every_interval(clock: FakeClock) -> None:
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    assert rig.downtrack.due_sender_report() == b""  # no mapping yet: due as soon as there is
    source = rig.sources[0]
    rig.receiver.on_sender_report(0, rtcp.SenderReport(source.ssrc, 1 << 60, source.ts, 0, 0))
    first = rtcp.parse_compound(rig.downtrack.due_sender_report())[0]
    assert isinstance(first, rtcp.SenderReport)
    clock.advance(SENDER_REPORT_INTERVAL - 0.01)
    assert rig.downtrack.due_sender_report() == b""
    assert rig.downtrack.sender_report() != b""  # the builder itself keeps no schedule
    clock.advance(0.01)
    second = rtcp.parse_compound(rig.downtrack.due_sender_report())[0]
    assert isinstance(second, rtcp.SenderReport)
    assert second.ntp_timestamp > first.ntp_timestamp


# --- FeedbackRouter ------------------------------------------------------------------------------


def _router(clock: FakeClock) -> tuple[Rig, FeedbackRouter]:
    rig = Rig(clock)
    router = FeedbackRouter()
    router.add(rig.downtrack)
    rig.downtrack.start()
    rig.tick(layers=(0, 1), keys=(1,))
    for _ in range(3):
        rig.tick(layers=(0, 1))
    rig.rtcp_out.clear()
    return rig, router


def test_pli_and_fir_reach_the_downtrack_and_the_publisher(clock: FakeClock) -> None:
    rig, router = _router(clock)
    router.on_rtcp(bytes(rtcp.Pli(SUBSCRIBER_SSRC, OUT_SSRC)))
    assert rig.plis() == [1]  # the layer being forwarded
    router.on_rtcp(bytes(rtcp.Pli(SUBSCRIBER_SSRC, OUT_SSRC)))
    assert rig.plis() == [1]  # throttled towards the publisher
    clock.advance(1.0)
    fir = rtcp.Fir(SUBSCRIBER_SSRC, (rtcp.FirEntry(0x1234, 1), rtcp.FirEntry(OUT_SSRC, 2)))
    router.on_rtcp(bytes(rtcp.ReceiverReport(SUBSCRIBER_SSRC)) + bytes(fir))
    assert rig.plis() == [1, 1]


def test_nack_through_the_router_retransmits(clock: FakeClock) -> None:
    rig, router = _router(clock)
    seqs = [parse_out(o).seq for o in rig.sent]
    n = len(rig.sent)
    nack = rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, [seqs[1], seqs[4]])
    router.on_rtcp(bytes(rtcp.ReceiverReport(SUBSCRIBER_SSRC)) + bytes(nack))
    assert rig.sent[n:] == [rig.sent[1], rig.sent[4]]


def test_rtcp_for_unknown_ssrcs_is_ignored(clock: FakeClock) -> None:
    rig, router = _router(clock)
    n = len(rig.sent)
    seq = parse_out(rig.sent[0]).seq
    router.on_rtcp(
        bytes(rtcp.Pli(SUBSCRIBER_SSRC, 0x999))
        + bytes(rtcp.Fir(SUBSCRIBER_SSRC, (rtcp.FirEntry(0x999, 1),)))
        + bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, 0x999, [seq]))
        + bytes(rtcp.Remb(SUBSCRIBER_SSRC, 1_000_000, (OUT_SSRC,)))
    )
    assert len(rig.sent) == n and rig.rtcp_out == []
    router.remove(rig.downtrack)
    router.remove(rig.downtrack)
    router.on_rtcp(bytes(rtcp.Pli(SUBSCRIBER_SSRC, OUT_SSRC)))
    router.on_rtcp(bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, [seq])))
    assert len(rig.sent) == n and rig.rtcp_out == []


def test_router_remove_keeps_a_newer_downtrack_on_the_same_ssrc(clock: FakeClock) -> None:
    rig, router = _router(clock)
    other = DownTrack(
        rig.receiver, ssrc=OUT_SSRC, payload_type=OUT_PT, send_rtp=rig.sent.append, cname="x"
    )
    router.add(other)
    router.remove(rig.downtrack)  # no longer the one registered: nothing removed
    router.on_rtcp(bytes(rtcp.Pli(SUBSCRIBER_SSRC, OUT_SSRC)))
    assert rig.plis() == [1]  # `other` has no layer yet: it asks for the best active one


_GARBAGE: list[tuple[Rig, FeedbackRouter]] = []


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=120),
        st.tuples(
            st.integers(0, 31),
            st.integers(192, 210),
            st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)),
        ).map(lambda t: bytes((0x80 | t[0], t[1])) + (len(t[2]) // 4).to_bytes(2, "big") + t[2]),
    )
)
def test_router_garbage_never_raises(data: bytes) -> None:
    if not _GARBAGE:
        clock = FakeClock()
        _GARBAGE.append(_router(clock))
    _, router = _GARBAGE[0]
    router.on_rtcp(data)
    router.on_rtcp(bytes(rtcp.Pli(SUBSCRIBER_SSRC, OUT_SSRC)) + data)
    # a NACK on our SSRC with arbitrary (pid, blp) pairs
    pairs = tuple(
        (int.from_bytes(data[i : i + 2], "big"), int.from_bytes(data[i + 2 : i + 4], "big"))
        for i in range(0, len(data) - 3, 4)
    )
    router.on_rtcp(bytes(rtcp.Nack(SUBSCRIBER_SSRC, OUT_SSRC, pairs)))


def test_paused_and_subscribed_layer_follow_what_the_publisher_sends(clock: FakeClock) -> None:
    """StreamStateUpdate and dynacast read these: paused = wanted but no usable layer is sent;
    subscribed_layer = max(preferred, still forwarded) while enabled, -1 when disabled."""
    rig = Rig(clock)
    rig.downtrack.start()
    assert rig.downtrack.paused  # nothing received yet
    rig.tick(keys=(0, 1, 2))
    assert not rig.downtrack.paused
    assert rig.downtrack.current_layer == 2
    rig.downtrack.set_max_layer(0)
    assert rig.downtrack.subscribed_layer == 2  # still forwarding f until the switch down
    rig.tick(keys=(0,))
    assert rig.downtrack.current_layer == 0
    assert rig.downtrack.subscribed_layer == 0
    for _ in range(40):  # the publisher stops q (dynacast paused it); h and f go on
        rig.tick(layers=(1, 2))
    assert rig.downtrack.paused  # nothing at or below the preferred layer arrives
    rig.downtrack.set_max_layer(1)
    assert not rig.downtrack.paused
    rig.downtrack.set_enabled(False)
    assert rig.downtrack.subscribed_layer == -1
    assert not rig.downtrack.paused  # disabled by the subscriber is not "paused"


def test_a_probe_just_before_a_switch_keeps_picture_ids_continuous(clock: FakeClock) -> None:
    """Found by the property above: a padding probe was taken as the packet to continue the VP8
    picture id / TL0PICIDX from, and it has no payload descriptor."""
    rig = Rig(clock)
    rig.downtrack.start()
    rig.tick(keys=(1,))
    rig.downtrack.set_max_layer(1)
    rig.tick()
    rig.downtrack.set_max_layer(0)
    rig.feed(1, rig.sources[1].probe())
    rig.tick(keys=(0,))
    assert rig.out_layers()[-2:] == [0, 0]
    assert_continuous(rig.sent)
    assert_payloads_untouched(rig)
