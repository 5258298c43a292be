"""Published tracks: turning an ``AddTrackRequest`` into LiveKit's ``TrackInfo``, and simulcast layers."""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit.protocol import models, rtc

from sfu.ids import TrackSid, new_track_sid
from sfu.metrics import COUNTERS

#: rid → spatial layer when three encodings are published (LiveKit: q/h/f = LOW/MEDIUM/HIGH).
RID_ORDER = ("q", "h", "f")
SVC_CODECS = frozenset({"vp9", "av1"})
#: LiveKit clients publish at most 3 simulcast layers and 2 codecs (primary + backup); more is
#: refused before anything is copied (docs/limits.md).
MAX_LAYERS = 3
MAX_SIMULCAST_CODECS = 2
#: bytes of each free-form string of an AddTrackRequest (name, stream, cid, codec names)
MAX_FIELD_BYTES = 256
MAX_AUDIO_FEATURES = 16
SOURCE_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}


class TrackRequestError(Exception):
    """An AddTrackRequest that cannot be honoured; ``reason`` is a RequestResponse.Reason."""

    def __init__(self, reason: rtc.RequestResponse.Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def stream_for_source(source: int) -> str:
    if source in (models.TrackSource.SCREEN_SHARE, models.TrackSource.SCREEN_SHARE_AUDIO):
        return "screen"
    return "camera"


def spatial_layers_for_rids(rids: list[str]) -> dict[str, int]:
    """Map the publisher's rids to spatial layers, lowest first (q < h < f; unknown rids last)."""
    ordered = sorted(rids, key=lambda r: (RID_ORDER.index(r) if r in RID_ORDER else 99, r))
    return {rid: index for index, rid in enumerate(ordered)}


def _limit(name: str, message: str) -> TrackRequestError:
    COUNTERS.limit_exceeded(name)
    return TrackRequestError(rtc.RequestResponse.Reason.LIMIT_EXCEEDED, message)


def check_request_limits(request: rtc.AddTrackRequest) -> None:
    """Refuse an AddTrackRequest whose counts or strings exceed what any LiveKit client sends.

    Runs before anything is copied: the repeated fields' lengths are O(1) to read.
    """
    if len(request.layers) > MAX_LAYERS:
        raise _limit("track_layers", f"at most {MAX_LAYERS} layers per track")
    if len(request.simulcast_codecs) > MAX_SIMULCAST_CODECS:
        raise _limit("track_codecs", f"at most {MAX_SIMULCAST_CODECS} simulcast codecs per track")
    if len(request.audio_features) > MAX_AUDIO_FEATURES:
        raise _limit("track_audio_features", f"at most {MAX_AUDIO_FEATURES} audio features")
    strings = [request.cid, request.name, request.stream, request.sid]
    for codec in request.simulcast_codecs:
        strings += (codec.codec, codec.cid)
    if any(len(text.encode()) > MAX_FIELD_BYTES for text in strings):
        raise _limit("track_field_bytes", f"track strings are limited to {MAX_FIELD_BYTES} bytes")


def track_info_from_request(
    request: rtc.AddTrackRequest, allowed_sources: tuple[str, ...]
) -> models.TrackInfo:
    """Build the TrackInfo LiveKit returns in TrackPublishedResponse (before the SDP binds it)."""
    if request.type not in (models.TrackType.AUDIO, models.TrackType.VIDEO):
        raise TrackRequestError(
            rtc.RequestResponse.Reason.UNSUPPORTED_TYPE, "only audio and video tracks are supported"
        )
    source_name = SOURCE_NAMES.get(request.source)
    if allowed_sources and source_name not in allowed_sources:
        raise TrackRequestError(
            rtc.RequestResponse.Reason.NOT_ALLOWED, f"publishing {source_name} is not allowed"
        )
    if not request.cid:
        raise TrackRequestError(rtc.RequestResponse.Reason.UNCLASSIFIED_ERROR, "cid is required")
    check_request_limits(request)
    info = models.TrackInfo(
        sid=new_track_sid(),
        type=request.type,
        name=request.name,
        muted=request.muted,
        width=request.width,
        height=request.height,
        source=request.source,
        disable_dtx=request.disable_dtx,
        stereo=request.stereo,
        disable_red=request.disable_red,
        encryption=request.encryption,
        stream=request.stream or stream_for_source(request.source),
        backup_codec_policy=request.backup_codec_policy,
    )
    features = list(dict.fromkeys(request.audio_features))
    if request.stereo and models.AudioTrackFeature.TF_STEREO not in features:
        features.append(models.AudioTrackFeature.TF_STEREO)
    if request.disable_dtx and models.AudioTrackFeature.TF_NO_DTX not in features:
        features.append(models.AudioTrackFeature.TF_NO_DTX)
    info.audio_features.extend(features)
    layers = sorted(request.layers, key=lambda layer: layer.quality)
    info.layers.extend(layers)
    codecs = list(request.simulcast_codecs) or [rtc.SimulcastCodec(codec="", cid=request.cid)]
    prefix = "video/" if request.type == models.TrackType.VIDEO else "audio/"
    for codec in codecs:
        name = codec.codec.lower()
        mode = (
            models.VideoLayer.Mode.MULTIPLE_SPATIAL_LAYERS_PER_STREAM
            if name in SVC_CODECS
            else models.VideoLayer.Mode.ONE_SPATIAL_LAYER_PER_STREAM
        )
        info.codecs.append(
            models.SimulcastCodecInfo(
                mime_type=prefix + name if name else "",
                cid=codec.cid,
                layers=layers,
                video_layer_mode=(
                    mode
                    if request.type == models.TrackType.VIDEO
                    else models.VideoLayer.Mode.MODE_UNUSED
                ),
            )
        )
    first = codecs[0].codec.lower()
    info.simulcast = (
        request.type == models.TrackType.VIDEO and first not in SVC_CODECS and len(layers) > 1
    )
    return info


@dataclass
class PendingTrack:
    """A track announced by AddTrackRequest, waiting for its m-line in a publisher offer."""

    cid: str
    info: models.TrackInfo
    sid: TrackSid = field(init=False)

    def __post_init__(self) -> None:
        self.sid = TrackSid(self.info.sid)

    @property
    def kind(self) -> str:
        return "video" if self.info.type == models.TrackType.VIDEO else "audio"


def bind_layers(
    info: models.TrackInfo, rids: list[str], mime_type: str, mid: str
) -> dict[str, int]:
    """Fill TrackInfo's mime/mid and each layer's rid + spatial_layer once the SDP is known.

    Returns rid → spatial layer (the single layer of a non-simulcast track has rid "").
    """
    info.mime_type = mime_type
    info.mid = mid
    mapping = spatial_layers_for_rids(rids) if rids else {"": 0}
    by_spatial = {spatial: rid for rid, spatial in mapping.items()}
    for layer in info.layers:
        spatial = min(int(layer.quality), len(mapping) - 1)
        layer.spatial_layer = spatial
        layer.rid = by_spatial.get(spatial, "")
    for codec in info.codecs[:1]:
        if not codec.mime_type:
            codec.mime_type = mime_type
        codec.mid = mid
        del codec.layers[:]
        codec.layers.extend(info.layers)
    return mapping
