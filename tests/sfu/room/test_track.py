"""AddTrackRequest → TrackInfo: caps on what a client may declare."""

from __future__ import annotations

import time

import pytest
from livekit.protocol import models, rtc

from sfu.metrics import COUNTERS
from sfu.room.track import MAX_FIELD_BYTES, TrackRequestError, track_info_from_request


def video(**fields: object) -> rtc.AddTrackRequest:
    return rtc.AddTrackRequest(cid="c", type=models.TrackType.VIDEO, **fields)  # type: ignore[arg-type]


def test_three_thousand_layers_and_codecs_are_refused_at_once() -> None:
    request = video(
        layers=[models.VideoLayer()] * 3000, simulcast_codecs=[rtc.SimulcastCodec()] * 3000
    )
    before = COUNTERS.limits_exceeded.get("track_layers", 0)
    start = time.perf_counter()
    with pytest.raises(TrackRequestError) as refused:
        track_info_from_request(request, ())
    assert time.perf_counter() - start < 0.05
    assert refused.value.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED
    assert COUNTERS.limits_exceeded["track_layers"] == before + 1


@pytest.mark.parametrize(
    ("fields", "limit"),
    [
        ({"simulcast_codecs": [rtc.SimulcastCodec(codec="vp8")] * 3}, "track_codecs"),
        ({"name": "n" * (MAX_FIELD_BYTES + 1)}, "track_field_bytes"),
        ({"stream": "é" * (MAX_FIELD_BYTES // 2 + 1)}, "track_field_bytes"),
        ({"simulcast_codecs": [rtc.SimulcastCodec(codec="v" * 300)]}, "track_field_bytes"),
    ],
)
def test_each_cap_refuses_with_limit_exceeded(fields: dict[str, object], limit: str) -> None:
    before = COUNTERS.limits_exceeded.get(limit, 0)
    with pytest.raises(TrackRequestError) as refused:
        track_info_from_request(video(**fields), ())
    assert refused.value.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED
    assert COUNTERS.limits_exceeded[limit] == before + 1


def test_what_livekit_clients_send_is_accepted() -> None:
    layers = [models.VideoLayer(quality=q, width=320 << q, height=180 << q) for q in (2, 0, 1)]
    codecs = [rtc.SimulcastCodec(codec="vp8", cid="c"), rtc.SimulcastCodec(codec="vp9", cid="d")]
    info = track_info_from_request(
        video(name="n" * MAX_FIELD_BYTES, layers=layers, simulcast_codecs=codecs), ()
    )
    assert [layer.quality for layer in info.layers] == [0, 1, 2]
    assert [c.mime_type for c in info.codecs] == ["video/vp8", "video/vp9"]
    assert info.simulcast
