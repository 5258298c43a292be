"""Unit tests: durations, presets, the latency trailer, the VP8 packetizer, RTP headers."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from loadtest.config import PRESETS, DurationError, parse_args, parse_duration
from loadtest.packets import (
    TRAILER_SIZE,
    PacketError,
    Trailer,
    rtp_header,
    vp8_descriptor,
    vp8_packetize,
)
from loadtest.report import Report
from loadtest.sfu_metrics import Snapshot, metrics_url_for, parse_prometheus
from loadtest.worker import make_layout, publisher_number

KEY = ["--api-key", "k", "--api-secret", "s"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("1m30s", 90.0), ("250ms", 0.25), ("45", 45.0), ("1h", 3600.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "30x", "m30", "1m 30s", "-5s", "30s30", "25h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@given(st.text(max_size=20))
def test_parse_duration_raises_only_its_error(text: str) -> None:
    with contextlib.suppress(DurationError):
        assert parse_duration(text) >= 0


def test_preset_500() -> None:
    s = parse_args(["--preset", "500", *KEY])
    assert (s.video_publishers, s.subscribers, s.talking_publishers) == (10, 490, 3)
    assert s.participants == 500
    assert s.layers == ("q", "h", "f") and s.simulcast and s.layout == "speaker"


def test_flags_override_preset() -> None:
    s = parse_args(["--preset", "500", "--subscribers", "40", "--duration", "2m", *KEY])
    assert s.subscribers == 40 and s.duration_s == 120.0 and s.video_publishers == 10


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_parses(name: str) -> None:
    assert parse_args(["--preset", name, *KEY]).participants > 0


def test_no_simulcast_is_one_layer() -> None:
    assert parse_args(["--no-simulcast", *KEY]).layers == ("f",)


def test_needs_credentials() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--subscribers", "3"], environ={})


def test_a_secret_that_starts_with_a_dash() -> None:
    # token_urlsafe secrets start with "-" one time in 64: the "=" form carries them
    assert parse_args(["--api-key", "k", "--api-secret=-s3cret"], environ={}).api_secret == (
        "-s3cret"
    )


def test_livekit_variables_stand_in_for_the_flags() -> None:
    environ = {
        "LIVEKIT_URL": "https://sfu.example.org",
        "LIVEKIT_API_KEY": "APIkey",
        "LIVEKIT_API_SECRET": "-from-the-environment",
    }
    s = parse_args([], environ=environ)
    assert (s.url, s.api_key, s.api_secret) == (
        "wss://sfu.example.org",
        "APIkey",
        "-from-the-environment",
    )
    flags = parse_args(["--api-key", "k", "--api-secret", "s"], environ=environ)
    assert (flags.api_key, flags.api_secret) == ("k", "s")


def test_trailer_roundtrip() -> None:
    trailer = Trailer(track=7, layer=2, flags=1, sent_ns=123456789012345)
    payload = b"\x90\x80\x80\x01body" + bytes(trailer)
    assert len(bytes(trailer)) == TRAILER_SIZE
    assert Trailer.parse(payload) == trailer
    stamped = bytearray(payload)
    Trailer.stamp(stamped, 42)
    assert Trailer.parse(bytes(stamped)).sent_ns == 42


@given(st.binary(max_size=64))
def test_trailer_parser_raises_only_its_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        Trailer.parse(data)


@given(
    st.binary(max_size=40), st.integers(0, 65535), st.integers(0, 255), st.integers(0, 2**64 - 1)
)
def test_trailer_found_behind_any_payload(body: bytes, track: int, layer: int, ns: int) -> None:
    trailer = Trailer(track, layer, 0, ns)
    assert Trailer.parse(body + bytes(trailer)) == trailer


def test_vp8_descriptor_15_bit_picture_id() -> None:
    first = vp8_descriptor(0x1234, True)
    assert first == bytes([0x90, 0x80, 0x80 | 0x12, 0x34])
    assert vp8_descriptor(0x7FFF, False)[0] & 0x10 == 0
    assert vp8_descriptor(0x7FFF, False)[2:] == b"\xff\xff"


@given(st.binary(min_size=1, max_size=5000), st.integers(1, 1500))
@example(frame=bytes(13), mtu=3)  # 3,3,3,3,1 before: the remainder must be spread
def test_vp8_packetize_splits_evenly(frame: bytes, mtu: int) -> None:
    chunks = vp8_packetize(frame, mtu)
    assert b"".join(chunks) == frame
    assert all(0 < len(c) <= mtu for c in chunks)
    assert max(map(len, chunks)) - min(map(len, chunks)) <= 1 or len(chunks) == 1


def test_vp8_packetize_keeps_key_frame_bit_first() -> None:
    key_frame = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + bytes(3000)
    chunks = vp8_packetize(key_frame, 1100)
    payload = vp8_descriptor(5, True) + chunks[0]
    assert payload[0] & 0x10 and not payload[4] & 0x01  # S bit; VP8 P bit 0 = key frame


def test_rtp_header_with_extensions() -> None:
    header = rtp_header(
        payload_type=96, sequence_number=65537, timestamp=2**32 + 5, ssrc=0xDEADBEEF,
        marker=True, extensions=[(4, b"1"), (10, b"f")],
    )  # fmt: skip
    assert header[0] == 0x90 and header[1] == 0x80 | 96
    assert struct.unpack("!HII", header[2:12]) == (1, 5, 0xDEADBEEF)
    assert header[12:16] == b"\xbe\xde\x00\x01"
    assert header[16:20] == bytes([0x40, ord("1"), 0xA0, ord("f")])


def test_prometheus_parsing_and_url() -> None:
    text = (
        '# HELP x\nlivekit_packet_total{node_id="n",direction="outgoing"} 12.0\n'
        "process_cpu_seconds_total 3.5\n"
    )
    samples = parse_prometheus(text)
    assert ("livekit_packet_total", {"node_id": "n", "direction": "outgoing"}, 12.0) in samples
    assert metrics_url_for("wss://sfu.example:443/") == "https://sfu.example:443/metrics"


def test_speaker_layout_one_large_five_small() -> None:
    tracks = {f"TR_v{n}": (f"pub-{n:04d}", 1) for n in range(10)}
    tracks |= {f"TR_a{n}": (f"pub-{n:04d}", 0) for n in range(10)}
    requests = make_layout("speaker", index=3, seed=1, talking=3, epoch_ns=0)(tracks)
    assert set(requests) == {f"TR_v{n}" for n in range(10)}
    shown = [r for r in requests.values() if not r.disabled]
    assert sorted((r.width, r.height) for r in shown) == [(160, 90)] * 5 + [(1280, 720)]
    assert publisher_number("pub-0012") == 12 and publisher_number("sub-0001") is None
    hidden = make_layout("audio-only", 0, 1, 3, 0)(tracks)
    assert all(r.disabled for r in hidden.values())


def test_speaker_layout_without_the_talkers_tracks() -> None:
    """The talkers' video not (yet) in the room: another track is the large tile, no crash."""
    tracks = {f"TR_v{n}": (f"pub-{n:04d}", 1) for n in (5, 6)}
    requests = make_layout("speaker", index=0, seed=1, talking=3, epoch_ns=0)(tracks)
    assert sorted((r.width, r.height) for r in requests.values()) == [(160, 90), (1280, 720)]


def test_final_latency_samples_thinned_keeping_the_max() -> None:
    from loadtest.worker import _thin

    samples = [float(i % 1000) for i in range(10_000)] + [5000.0]
    thinned = _thin(samples, 1000)
    assert len(thinned) <= 1002 and max(thinned) == 5000.0
    assert _thin([1.0, 2.0], 1000) == [1.0, 2.0]


def test_sfu_drops_are_reported_for_the_run_and_for_its_steady_phase() -> None:
    """The whole run's count includes the teardown (datagrams of participants that left); the
    steady phase's is what the measured window saw."""
    report = Report(parse_args(["--preset", "500", *KEY]))

    def snap(dropped: float) -> Snapshot:
        return Snapshot(0.0, 0.0, 0.0, 0.0, dropped)

    report.sfu_before, report.sfu_steady_start = snap(0), snap(5)
    report.sfu_steady_end, report.sfu_after = snap(7), snap(900)
    summary = report.summary()
    assert summary["sfu_packets_dropped"] == 900
    assert summary["sfu_packets_dropped_steady"] == 2
