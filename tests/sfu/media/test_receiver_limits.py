"""Tests for sfu.media.receiver under hostile publishers: SSRC churn (audit 2026-12 finding 16), more
rids than simulcast layers (finding 9) and RTCP the SFU ignores (finding 2); on the rig of
test_receiver."""

from __future__ import annotations

import struct
import time

import pytest

from sfu.media.receiver import RtpDemuxer, TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.twcc import TransportCcFeedback
from sfu.metrics import COUNTERS
from tests.sfu.conftest import FakeClock
from tests.sfu.media.test_receiver import (
    AUDIO_MID,
    EXTENSION_IDS,
    OPUS,
    OPUS_PT,
    VIDEO_MID,
    VP8_PT,
    Rig,
    Sink,
    make_rig,
    published,
    rig,
    vp8,
)

__all__ = ["rig"]  # the fixture


def _entries(demux: RtpDemuxer, receiver: TrackReceiver) -> int:
    return sum(1 for r, _ in demux._by_ssrc.values() if r is receiver)


def test_ssrc_churn_keeps_one_ssrc_per_layer(rig: Rig) -> None:
    key = vp8(key=True)
    templates = [published(1, 0, key, mid=VIDEO_MID, rid=rid) for rid in ("q", "h", "f")]
    templates.append(published(1, 0, OPUS, pt=OPUS_PT, mid=AUDIO_MID))
    on_rtp = rig.demux.on_rtp
    for n in range(50_000):  # every packet on a new SSRC
        template = templates[n % 4]
        on_rtp(template[:8] + (0x1000_0000 + n).to_bytes(4, "big") + template[12:])
    assert _entries(rig.demux, rig.video) <= 3  # was 37,500
    assert _entries(rig.demux, rig.audio) == 1
    assert len(rig.demux._by_ssrc) == 4
    # the newest SSRC of each layer is the one routed, and its layer knows it
    newest = [0x1000_0000 + 50_000 - 4 + k for k in range(3)]
    assert [state.ssrc for state in rig.video.layers] == newest
    rig.video_sink.got.clear()
    rig.demux.on_rtp(published(1, newest[1], vp8(key=False)))  # no extensions: found by SSRC
    assert [layer for _, layer, _ in rig.video_sink.got] == [1]
    rig.demux.unbind(VIDEO_MID)
    assert _entries(rig.demux, rig.video) == 0 and len(rig.demux._by_ssrc) == 1


def test_a_layer_on_a_new_ssrc_starts_its_statistics_afresh(rig: Rig) -> None:
    for seq in range(100, 110):
        rig.demux.on_rtp(published(seq, 0xA1, vp8(key=True), mid=VIDEO_MID, rid="q"))
    rig.demux.on_rtcp(bytes(rtcp.SenderReport(0xA1, 1 << 60, 5, 10, 100)))
    assert rig.video.sender_reports.has_report(0xA1)
    rig.demux.on_rtp(published(40_000, 0xA2, vp8(key=True), mid=VIDEO_MID, rid="q"))
    state = rig.video.layers[0]
    assert (state.ssrc, state.packets, state.base_seq, state.sr_arrival) == (0xA2, 1, 40_000, 0)
    assert not rig.video.sender_reports.has_report(0xA1)
    (block,) = rig.video.report_blocks(1.0)
    assert block.ssrc == 0xA2 and block.packets_lost == 0
    rig.demux.on_rtp(published(111, 0xA1, vp8(key=False)))  # the old SSRC is no longer routed
    assert rig.video.layers[0].ssrc == 0xA2


def test_sender_reports_of_churned_ssrcs_are_not_kept(rig: Rig) -> None:
    for n in range(1000):
        ssrc = 0x2000_0000 + n
        rig.demux.on_rtp(published(n, ssrc, vp8(key=True), mid=VIDEO_MID, rid="h"))
        rig.demux.on_rtcp(bytes(rtcp.SenderReport(ssrc, 1 << 60, n, 1, 1)))
    assert len(rig.video.sender_reports._reports) == 1  # was 1,000


def test_rids_beyond_the_layers_are_not_bound() -> None:
    hits = COUNTERS.limits_exceeded.get("simulcast_layers", 0)
    receiver = TrackReceiver(
        kind="video",
        mime_type="video/VP8",
        clock_rate=90000,
        layer_count=50_000,
        send_rtcp=lambda _: None,
    )
    assert len(receiver.layers) == 3
    assert COUNTERS.limits_exceeded.get("simulcast_layers", 0) == hits + 1
    sink = Sink()
    receiver.add_sink(sink)
    demux = RtpDemuxer()
    demux.set_extension_ids([EXTENSION_IDS])
    demux.bind(VIDEO_MID, receiver, {f"r{k}": k for k in range(50_000)}, payload_type=VP8_PT)
    demux.on_rtp(published(1, 0x51, vp8(key=True), mid=VIDEO_MID, rid="r2"))
    demux.on_rtp(published(1, 0x55, vp8(key=True), mid=VIDEO_MID, rid="r4000"))  # no such layer
    assert [layer for _, layer, _ in sink.got] == [2]
    assert len(demux._by_ssrc) == 1


def test_publisher_transport_cc_is_not_parsed(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(count: int, body: bytes) -> TransportCcFeedback:
        raise AssertionError("transport-cc parsed on the receive path")

    monkeypatch.setattr(TransportCcFeedback, "_from_body", refuse)
    blob = (
        bytes((0x8F, 205, 0, 9))
        + struct.pack("!IIHHI", 1, 2, 0, 65535, 0)
        + struct.pack("!H", 8191) * 9
        + b"\0\0"
    )
    rig.demux.on_rtp(published(1, 0xAB01, vp8(key=True), mid=VIDEO_MID, rid="h"))
    data = blob * 29 + bytes(rtcp.SenderReport(0xAB01, 1 << 60, 77, 1, 1))
    elapsed = []
    for _ in range(3):
        start = time.perf_counter()
        rig.demux.on_rtcp(data)
        elapsed.append(time.perf_counter() - start)
    assert min(elapsed) < 0.005
    assert rig.video.layers[1].sr_rtp == 77


def test_make_rig_is_fresh() -> None:
    assert make_rig(FakeClock()).demux._by_ssrc == {}
