"""Synthetic camera and microphone media, encoded once with PyAV and cached on disk.

`load_media(cache_dir)` returns a `MediaSet`: per simulcast layer (q 320×180@15 150 kbit/s,
h 640×360@20 500 kbit/s, f 1280×720@30 1.5 Mbit/s) a loop of VP8 frames with a key frame every
2.5 s (encoded after a warm-up GOP that is not kept, so that every looped key frame is
rate-controlled), and a loop of 20 ms Opus frames for talking and for silent (DTX-like)
microphones. The pictures are a moving texture with noise, enough for libvpx to spend its
bitrate. Encoding takes a few seconds once (libvpx's realtime mode adapts to the CPU it gets:
a loop encoded on a busy machine came out at 1.9 instead of 1.5 Mbit/s at 720p, so encode on a
quiet one); later runs read the cache (`~/.cache/matrix-sfu-loadtest/` by default).
"""

from __future__ import annotations

import fractions
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AUDIO_FRAME_MS", "LAYERS", "LayerSpec", "MediaSet", "default_cache_dir", "load_media"]

CACHE_VERSION = "4"
LOOP_S = 7.5
KEY_FRAME_INTERVAL_S = 2.5
AUDIO_FRAME_MS = 20
AUDIO_LOOP_S = 10.0
_RECORD = struct.Struct("!IB")


@dataclass(frozen=True)
class LayerSpec:
    rid: str
    quality: int  # livekit VideoQuality: LOW 0, MEDIUM 1, HIGH 2
    width: int
    height: int
    fps: int
    bitrate: int


LAYERS: dict[str, LayerSpec] = {
    "q": LayerSpec("q", 0, 320, 180, 15, 150_000),
    "h": LayerSpec("h", 1, 640, 360, 20, 500_000),
    "f": LayerSpec("f", 2, 1280, 720, 30, 1_500_000),
}


@dataclass(frozen=True)
class MediaSet:
    """Encoded loops: `video[rid]` is a list of (key_frame, frame bytes) at `LAYERS[rid].fps`."""

    video: dict[str, list[tuple[bool, bytes]]]
    speech: list[bytes]
    silence: bytes


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "matrix-sfu-loadtest"


def _write_frames(path: Path, frames: list[tuple[bool, bytes]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for key, data in frames:
            f.write(_RECORD.pack(len(data), int(key)))
            f.write(data)
    tmp.replace(path)


def _read_frames(path: Path) -> list[tuple[bool, bytes]]:
    data = path.read_bytes()
    frames: list[tuple[bool, bytes]] = []
    offset = 0
    while offset + _RECORD.size <= len(data):
        length, key = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        frames.append((bool(key), data[offset : offset + length]))
        offset += length
    if offset != len(data) or not frames:
        raise ValueError(f"corrupt media cache file {path}")
    return frames


def _encode_video(spec: LayerSpec) -> list[tuple[bool, bytes]]:
    import av
    import numpy as np

    codec: Any = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = spec.width, spec.height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = spec.bitrate
    codec.framerate = fractions.Fraction(spec.fps, 1)
    codec.time_base = fractions.Fraction(1, spec.fps)
    codec.gop_size = round(spec.fps * KEY_FRAME_INTERVAL_S)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "error-resilient": "1",
        "keyint_min": str(codec.gop_size),
    }
    rng = np.random.default_rng(spec.width)
    h, w = spec.height, spec.width
    # Smooth blobs (upscaled coarse noise) plus a little fine noise: compressible like a camera.
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1)).astype(np.float32)
    smooth = np.kron(coarse, np.ones((16, 16), np.float32))[: h * 2, : w * 2]
    for axis in (0, 1):
        for _ in range(3):
            smooth = (smooth + np.roll(smooth, 4, axis) + np.roll(smooth, -4, axis)) / 3
    fine = rng.normal(0, 4, smooth.shape).astype(np.float32)
    texture = np.clip(smooth + fine, 0, 255).astype(np.uint8)
    chroma = np.clip(smooth[:h, :w] * 0.5 + 64, 0, 255).astype(np.uint8)
    frames: list[tuple[bool, bytes]] = []
    count = round(spec.fps * LOOP_S)
    for i in range(codec.gop_size + count):  # a warm-up GOP first (dropped below)
        dx, dy = (i * 3) % w, (i * 2) % h
        y = np.ascontiguousarray(texture[dy : dy + h, dx : dx + w])
        u = np.ascontiguousarray(chroma[: h // 2, (i % 8) : (i % 8) + w // 2])
        v = np.ascontiguousarray(chroma[h // 2 :, : w // 2])
        frame = av.VideoFrame.from_ndarray(
            np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(h * 3 // 2, w),
            format="yuv420p",
        )
        frame.pts = i
        force_key = i % codec.gop_size == 0
        if force_key:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(frame):
            data = bytes(packet)
            frames.append((not data[0] & 0x01, data))
    for packet in codec.encode(None):
        data = bytes(packet)
        frames.append((not data[0] & 0x01, data))
    # The encoder's first key frame, before its rate control has any history, is ~6x the later
    # ones (183 KB against 28 KB at 720p): looped, every subscriber would get that burst every
    # LOOP_S. A camera sends such a frame once at most, so the loop starts at the second one.
    starts = [i for i, (key, _) in enumerate(frames) if key]
    if len(starts) < 2:
        raise RuntimeError("the VP8 warm-up GOP did not end with a key frame")
    frames = frames[starts[1] :]
    if not frames or not frames[0][0]:
        raise RuntimeError("the VP8 loop must start with a key frame")
    return frames


def _encode_audio() -> tuple[list[bytes], bytes]:
    import av
    import numpy as np

    codec: Any = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    codec.options = {"frame_duration": str(AUDIO_FRAME_MS), "application": "voip"}
    samples = int(48000 * AUDIO_LOOP_S)
    t = np.arange(samples) / 48000.0
    envelope = (np.sin(2 * np.pi * 3.0 * t) > -0.3).astype(np.float64)  # syllable-like bursts
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.5 * t)
    tone = np.sin(2 * np.pi * np.cumsum(pitch) / 48000.0)
    noise = np.random.default_rng(7).normal(0, 0.15, samples)
    signal = (0.4 * tone + noise) * envelope
    pcm = (signal * 12000).astype(np.int16)
    frame_samples = 48000 * AUDIO_FRAME_MS // 1000
    packets: list[bytes] = []
    for i in range(0, samples - frame_samples + 1, frame_samples):
        frame = av.AudioFrame.from_ndarray(
            pcm[i : i + frame_samples].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = i
        packets.extend(bytes(p) for p in codec.encode(frame))
    packets.extend(bytes(p) for p in codec.encode(None))
    # An Opus "silence" frame of the same mode (TOC byte + a short body), sent DTX-style.
    silence = packets[0][:1] + b"\xff\xfe"
    return packets, silence


def load_media(cache_dir: Path | None = None, rids: tuple[str, ...] = ("q", "h", "f")) -> MediaSet:
    """The cached media, encoding (and caching) whatever is missing."""
    root = (cache_dir or default_cache_dir()) / f"v{CACHE_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    video: dict[str, list[tuple[bool, bytes]]] = {}
    for rid in rids:
        path = root / f"vp8-{rid}.frames"
        if not path.exists():
            _write_frames(path, _encode_video(LAYERS[rid]))
        video[rid] = _read_frames(path)
    audio_path = root / "opus.frames"
    meta_path = root / "opus.json"
    if not audio_path.exists() or not meta_path.exists():
        speech, silence = _encode_audio()
        meta_path.write_text(json.dumps({"silence": silence.hex()}))
        _write_frames(audio_path, [(False, p) for p in speech])
    speech_frames = [data for _, data in _read_frames(audio_path)]
    silence = bytes.fromhex(json.loads(meta_path.read_text())["silence"])
    return MediaSet(video=video, speech=speech_frames, silence=silence)
