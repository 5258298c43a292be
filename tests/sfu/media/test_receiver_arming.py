"""When `TrackReceiver.on_rtp` arms a layer's `Stream` for the compiled receive path, and when any
change of the fan-out disarms it (sfu/media/layerstream.py, docs/decisions.md 5)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sfu.media import fastpath
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import KEYFRAME_WAKE_S, TrackReceiver
from sfu.media.rtp.header import RtpPacket
from tests.harness.unflushed_batch import UnflushedBatch
from tests.sfu.media.test_fastrecv import compiled
from tests.sfu.packets import rtp

SSRC = 0x5151


def receiver_with(kind: str = "video", mime: str = "video/VP8", *, fast: bool = True) -> Any:
    impl = compiled()
    receiver = TrackReceiver(
        kind=kind, mime_type=mime, clock_rate=90000, layer_count=1, send_rtcp=lambda data: None
    )
    batch = UnflushedBatch(impl.batch(-1))
    tracks = []
    for i in range(2):
        target = impl.target(batch.batch, ("127.0.0.1", 40000 + i))
        sender = (lambda t=target: (impl.forward, t, batch)) if fast else None
        track = DownTrack(
            receiver, ssrc=0x100 + i, payload_type=96, send_rtp=lambda data: None, cname="x",
            fast_sender=sender,
        )  # fmt: skip
        receiver.add_sink(track)
        tracks.append(track)
    return receiver, tracks


def packet(seq: int, payload: bytes = b"\x10\x00\x9d\x01\x2a") -> RtpPacket:
    return RtpPacket.parse(rtp(payload, ssrc=SSRC, sequence_number=seq, timestamp=seq * 3000))


def test_a_layer_whose_sinks_all_take_the_fast_path_is_armed_until_the_fan_out_changes() -> None:
    receiver, tracks = receiver_with()
    stream = receiver.on_rtp(packet(1), 0)  # nobody started, nobody would act: armed
    assert stream is receiver.layers[0].counters and stream.armed and stream.ssrc == SSRC
    for track in tracks:
        track.start()
    assert not stream.armed
    assert receiver.on_rtp(packet(2), 0) is None  # the key frame switches both: decide again
    assert all(track.current_layer == 0 for track in tracks)
    assert receiver.on_rtp(packet(3), 0) is stream and stream.armed
    assert receiver.layers[0].packets == 3 and receiver.layers[0].max_ext_seq == 3
    tracks[0].set_enabled(False)  # a disabled sink does nothing with packets: still armable
    assert not stream.armed
    assert receiver.on_rtp(packet(4), 0) is stream and stream.armed
    receiver.muted = True
    assert not stream.armed
    receiver.muted = False
    receiver.layers[0].new_stream(SSRC + 1)  # a new SSRC for the layer
    assert not stream.armed
    receiver.close()
    assert not stream.armed


def test_h264_is_never_armed() -> None:
    receiver, tracks = receiver_with("video", "video/H264")
    for track in tracks:
        track.start()
    for seq in range(1, 6):
        assert receiver.on_rtp(packet(seq, b"\x65\x88\x00\x00"), 0) is None
    assert not receiver.layers[0].counters.armed


@pytest.mark.parametrize("fast", [True, False])
def test_sinks_waiting_for_a_key_frame_arm_the_layer_with_wake(fast: bool) -> None:
    """Started VP8 down tracks with nothing forwarded yet act only on a key frame: the layer is
    armed with `wake` (the reader hands Python what may start one). Once they forward it, the
    layer arms without wake through the compiled path, and never with slow sinks."""
    receiver, tracks = receiver_with(fast=fast)
    for track in tracks:
        track.start()
    delta = b"\x10\x01\x00\x00"
    stream = receiver.on_rtp(packet(1, delta), 0)
    assert stream is receiver.layers[0].counters and stream.armed
    assert stream.wake == KEYFRAME_WAKE_S
    assert receiver.on_rtp(packet(2), 0) is None  # the key frame: both switch, decide again
    assert all(track.current_layer == 0 for track in tracks) and not stream.armed
    again = receiver.on_rtp(packet(3, delta), 0)
    if fast:
        assert again is stream and stream.armed and stream.wake == 0.0
    else:  # sinks that forward in Python act on every packet
        assert again is None and not stream.armed


def test_audio_sinks_never_wait_for_a_key_frame() -> None:
    receiver, tracks = receiver_with("audio", "audio/opus", fast=False)
    for track in tracks:
        track.start()
    assert not any(track.waits_for_keyframe(0) for track in tracks)
    assert receiver.on_rtp(packet(1, b"\x01\x02"), 0) is None


def test_an_injected_clock_is_never_armed() -> None:
    receiver = TrackReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1,
        send_rtcp=lambda data: None, clock=lambda: time.monotonic() + 1,
    )  # fmt: skip
    assert receiver.on_rtp(packet(1), 0) is None


def test_the_audio_level_counted_by_the_stream_is_taken_with_the_rest() -> None:
    receiver = TrackReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1,
        send_rtcp=lambda data: None,
    )  # fmt: skip
    counters = receiver.layers[0].counters
    counters.level_packets, counters.loud_packets, counters.loud_dbov_sum = 10, 10, 200
    assert receiver.take_audio_level() == pytest.approx(10 ** (-20 / 20))
    assert (counters.level_packets, counters.loud_packets, counters.loud_dbov_sum) == (0, 0, 0)
    assert receiver.take_audio_level() == 0.0


def test_an_audio_receiver_without_sinks_is_armed_for_its_bookkeeping() -> None:
    receiver = TrackReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1,
        send_rtcp=lambda data: None,
    )  # fmt: skip
    stream = receiver.on_rtp(packet(1), 0)
    assert stream is not None and stream.armed
    assert fastpath.COMPILED is not None
