"""LiveKit Python SDK participants for end-to-end tests, plus the media analysis they need.

- `render_pattern(n, w, h)` draws frame `n` of a deterministic moving test pattern: a 16x9 grid of
  flat colour cells; row 0 carries the frame number (12 bits) and a 4-bit check in black/white
  cells, rows 1-8 hold palette colours that shift every `COLOUR_STEP_FRAMES` frames plus one white
  marker cell that moves one cell per frame. Everything is cell-aligned, so a decoded frame can be
  checked at any resolution (simulcast layers included) by sampling cell interiors.
- `analyse_frame(rgba)` reads the frame number back, regenerates the expected cells and reports how
  many cells match (nearest palette colour) and the mean absolute error: `PatternMatch.ok`.
- `sine_frame()`/`dominant_frequency()`: a 440 Hz, 48 kHz mono tone and the FFT that finds it.
- `SyntheticPublisher`: joins a room, publishes that video (VP8) and that tone, paced in real time.
- `CollectingSubscriber`: joins, records room events, and for every subscribed track collects
  `PatternMatch`es (video, via `rtc.VideoStream` as RGBA) or samples (audio, via `rtc.AudioStream`).

Every wait is bounded; every SDK object the helpers create is closed by them. Their background
tasks never fail silently (tests/harness/background.py): a crash fails the wait or the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from livekit import rtc

from tests.harness.background import BackgroundTaskError, cancel_tasks, raise_failures

GRID_COLS = 16
GRID_ROWS = 9
FRAME_NUMBER_BITS = 12
FRAME_NUMBER_MODULUS = 1 << FRAME_NUMBER_BITS
CHECK_BITS = 4
CHECK_SALT = 0b1010  # so an all-black (or all-white) row never passes the check
COLOUR_STEP_FRAMES = 4
MATCH_FRACTION = 0.95
MAX_MEAN_ABS_ERROR = 40.0

BLACK, WHITE = 0, 1
# Well separated in RGB even after I420 conversion, colour-matrix mismatch and VP8 quantisation.
PALETTE: npt.NDArray[np.uint8] = np.array(
    [
        (0, 0, 0),  # black
        (255, 255, 255),  # white
        (220, 20, 20),  # red
        (20, 200, 20),  # green
        (30, 60, 230),  # blue
        (240, 220, 20),  # yellow
        (20, 210, 220),  # cyan
        (210, 30, 210),  # magenta
    ],
    dtype=np.uint8,
)
N_COLOURS = len(PALETTE) - 2

RgbaFrame = npt.NDArray[np.uint8]  # shape (height, width, 4)
Samples = npt.NDArray[np.int16]


# ---------------------------------------------------------------------------------------------
# Video pattern
# ---------------------------------------------------------------------------------------------


def frame_check(number: int) -> int:
    n = number % FRAME_NUMBER_MODULUS
    return ((n & 0xF) ^ ((n >> 4) & 0xF) ^ ((n >> 8) & 0xF) ^ CHECK_SALT) & 0xF


def expected_cells(number: int) -> npt.NDArray[np.int64]:
    """Palette index of every cell of frame `number`, shape (GRID_ROWS, GRID_COLS)."""
    n = number % FRAME_NUMBER_MODULUS
    cells = np.empty((GRID_ROWS, GRID_COLS), dtype=np.int64)
    bits = (n << CHECK_BITS) | frame_check(n)
    width = FRAME_NUMBER_BITS + CHECK_BITS
    for c in range(GRID_COLS):
        cells[0, c] = WHITE if (bits >> (width - 1 - c)) & 1 else BLACK
    shift = n // COLOUR_STEP_FRAMES
    rows = np.arange(1, GRID_ROWS)[:, None]
    cols = np.arange(GRID_COLS)[None, :]
    cells[1:, :] = 2 + (cols + 2 * rows + shift) % N_COLOURS
    cells[marker_cell(n)] = WHITE
    return cells


def marker_cell(number: int) -> tuple[int, int]:
    """(row, col) of the white marker cell, which moves one cell per frame through rows 1-8."""
    marker = (number % FRAME_NUMBER_MODULUS) % ((GRID_ROWS - 1) * GRID_COLS)
    return 1 + marker // GRID_COLS, marker % GRID_COLS


def _cell_index_maps(width: int, height: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    rows = (np.arange(height) * GRID_ROWS) // height
    cols = (np.arange(width) * GRID_COLS) // width
    return rows, cols


def render_pattern(number: int, width: int = 640, height: int = 360) -> RgbaFrame:
    """RGBA frame `number` of the test pattern, shape (height, width, 4)."""
    rows, cols = _cell_index_maps(width, height)
    rgb = PALETTE[expected_cells(number)[rows[:, None], cols[None, :]]]
    out = np.empty((height, width, 4), dtype=np.uint8)
    out[..., :3] = rgb
    out[..., 3] = 255
    return out


def cell_means(frame: RgbaFrame) -> npt.NDArray[np.float64]:
    """Mean RGB of the central half (each way) of every cell, shape (GRID_ROWS, GRID_COLS, 3)."""
    height, width = frame.shape[:2]
    out = np.empty((GRID_ROWS, GRID_COLS, 3), dtype=np.float64)
    for r in range(GRID_ROWS):
        y0, y1 = r * height / GRID_ROWS, (r + 1) * height / GRID_ROWS
        ya, yb = int(y0 + (y1 - y0) / 4), max(int(y1 - (y1 - y0) / 4), int(y0 + (y1 - y0) / 4) + 1)
        for c in range(GRID_COLS):
            x0, x1 = c * width / GRID_COLS, (c + 1) * width / GRID_COLS
            xa = int(x0 + (x1 - x0) / 4)
            xb = max(int(x1 - (x1 - x0) / 4), xa + 1)
            out[r, c] = frame[ya:yb, xa:xb, :3].reshape(-1, 3).mean(axis=0)
    return out


def classify_cells(means: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Nearest palette index of every cell mean."""
    dist = ((means[:, :, None, :] - PALETTE[None, None, :, :].astype(np.float64)) ** 2).sum(-1)
    return np.asarray(dist.argmin(axis=-1), dtype=np.int64)


def decode_frame_number(means: npt.NDArray[np.float64]) -> int | None:
    """The frame number carried in row 0, or None when the check bits disagree."""
    luma = means[0] @ np.array([0.299, 0.587, 0.114])
    bits = 0
    for value in luma:
        bits = (bits << 1) | int(value >= 128.0)
    number = bits >> CHECK_BITS
    if bits & ((1 << CHECK_BITS) - 1) != frame_check(number):
        return None
    return number


@dataclass(frozen=True)
class PatternMatch:
    """How well one decoded frame matches the publisher's pattern."""

    width: int
    height: int
    frame_number: int | None  # None: row 0 did not decode (not our pattern, or garbage)
    cells_matching: int
    cells_total: int
    mean_abs_error: float  # over cell interiors, RGB, 0-255
    marker_ok: bool = False  # the moving white cell is where this frame number puts it
    received_at: float = 0.0  # time.monotonic()

    @property
    def match_fraction(self) -> float:
        return self.cells_matching / self.cells_total if self.cells_total else 0.0

    @property
    def ok(self) -> bool:
        return (
            self.frame_number is not None
            and self.marker_ok
            and self.match_fraction >= MATCH_FRACTION
            and self.mean_abs_error <= MAX_MEAN_ABS_ERROR
        )


def analyse_frame(frame: RgbaFrame, received_at: float = 0.0) -> PatternMatch:
    """Compare a decoded RGBA (or RGB) frame with the pattern frame whose number it carries."""
    height, width = frame.shape[:2]
    means = cell_means(frame)
    number = decode_frame_number(means)
    total = GRID_ROWS * GRID_COLS
    if number is None:
        return PatternMatch(width, height, None, 0, total, float("inf"), False, received_at)
    expected = expected_cells(number)
    classes = classify_cells(means)
    matching = int((classes == expected).sum())
    mae = float(np.abs(means - PALETTE[expected].astype(np.float64)).mean())
    row, col = marker_cell(number)
    marker_ok = bool(classes[row, col] == WHITE)
    return PatternMatch(width, height, number, matching, total, mae, marker_ok, received_at)


def summarise_matches(matches: list[PatternMatch]) -> str:
    """One line for assertion messages."""
    if not matches:
        return "no frames"
    sizes = Counter(f"{m.width}x{m.height}" for m in matches)
    ok = sum(m.ok for m in matches)
    decoded = [m for m in matches if m.frame_number is not None]
    mae = np.median([m.mean_abs_error for m in decoded]) if decoded else float("inf")
    worst = min((m.match_fraction for m in decoded), default=0.0)
    return (
        f"{len(matches)} frames, {ok} matching, {len(decoded)} with a frame number, "
        f"sizes {dict(sizes)}, median MAE {mae:.1f}, worst cell match {worst:.2f}"
    )


def rgba_from_video_frame(frame: rtc.VideoFrame) -> RgbaFrame:
    """Any SDK VideoFrame as an (h, w, 4) uint8 array (converted by the SDK when not RGBA)."""
    if frame.type != rtc.VideoBufferType.RGBA:
        frame = frame.convert(rtc.VideoBufferType.RGBA)
    data = np.frombuffer(frame.data, dtype=np.uint8)
    return data[: frame.width * frame.height * 4].reshape(frame.height, frame.width, 4).copy()


def video_frame_from_rgba(rgba: RgbaFrame) -> rtc.VideoFrame:
    height, width = rgba.shape[:2]
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------


def sine_samples(
    start_sample: int,
    count: int,
    *,
    frequency: float = 440.0,
    sample_rate: int = 48000,
    amplitude: float = 0.3,
) -> Samples:
    """`count` int16 samples of a sine starting at absolute sample index `start_sample`."""
    t = (np.arange(count) + start_sample) / sample_rate
    return np.asarray(np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)), np.int16)


def sine_frame(
    start_sample: int,
    *,
    frequency: float = 440.0,
    sample_rate: int = 48000,
    frame_ms: int = 10,
    amplitude: float = 0.3,
) -> rtc.AudioFrame:
    count = sample_rate * frame_ms // 1000
    data = sine_samples(
        start_sample, count, frequency=frequency, sample_rate=sample_rate, amplitude=amplitude
    )
    return rtc.AudioFrame(data.tobytes(), sample_rate, 1, count)


def dominant_frequency(samples: Samples | npt.NDArray[np.float64], sample_rate: int) -> float:
    """Frequency (Hz) of the strongest FFT peak above 20 Hz, interpolated between bins."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size < 256:
        raise ValueError(f"need at least 256 mono samples, got shape {x.shape}")
    x = (x - x.mean()) * np.hanning(x.size)
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    spectrum[freqs < 20.0] = 0.0
    k = int(spectrum.argmax())
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        offset = 0.0
    return float((k + offset) * sample_rate / x.size)


def rms(samples: Samples) -> float:
    x = np.asarray(samples, dtype=np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


# ---------------------------------------------------------------------------------------------
# Participants
# ---------------------------------------------------------------------------------------------


async def rtp_stats_summary(room: rtc.Room, timeout_s: float = 3.0) -> str:
    """One line per inbound/outbound RTP stream of `room` (from the SDK's WebRTC stats), for
    failure messages: tells "nothing arrived" from "arrived but was not decoded"."""
    try:
        stats = await asyncio.wait_for(room.get_rtc_stats(), timeout_s)
    except Exception as exc:
        return f"(no RTC stats: {exc!r})"
    lines: list[str] = []
    for side, entries in (("pub", stats.publisher_stats), ("sub", stats.subscriber_stats)):
        for entry in entries:
            which = entry.WhichOneof("stats")
            if which == "inbound_rtp":
                r = entry.inbound_rtp
                lines.append(
                    f"{side} inbound {r.stream.kind} ssrc={r.stream.ssrc} "
                    f"packets={r.received.packets_received} lost={r.received.packets_lost} "
                    f"decoded={r.inbound.frames_decoded} {r.inbound.frame_width}x"
                    f"{r.inbound.frame_height} samples={r.inbound.total_samples_received} "
                    f"nack={r.inbound.nack_count} pli={r.inbound.pli_count}"
                )
            elif which == "outbound_rtp":
                o = entry.outbound_rtp
                lines.append(
                    f"{side} outbound {o.stream.kind} rid={o.outbound.rid or '-'} "
                    f"active={o.outbound.active} packets={o.sent.packets_sent} "
                    f"encoded={o.outbound.frames_encoded} {o.outbound.frame_width}x"
                    f"{o.outbound.frame_height} limit={o.outbound.quality_limitation_reason} "
                    f"nack={o.outbound.nack_count} pli={o.outbound.pli_count}"
                )
    return "\n".join(lines) or "(no RTP streams)"


async def _connect(room: rtc.Room, url: str, token: str, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(
            room.connect(url, token, rtc.RoomOptions(auto_subscribe=True)), timeout_s
        )
    except TimeoutError as exc:
        raise TimeoutError(f"Room.connect({url}) did not finish in {timeout_s} s") from exc


class SyntheticPublisher:
    """A participant that publishes the test pattern (VP8) and a sine tone, paced in real time."""

    def __init__(
        self,
        identity: str,
        *,
        width: int = 640,
        height: int = 360,
        fps: float = 15.0,
        tone_hz: float = 440.0,
        tone_amplitude: float = 0.3,
        sample_rate: int = 48000,
        simulcast: bool = False,
        max_bitrate: int = 1_500_000,
    ) -> None:
        self.identity = identity
        self.width, self.height, self.fps = width, height, fps
        self.tone_hz, self.sample_rate = tone_hz, sample_rate
        self.tone_amplitude = tone_amplitude
        self.simulcast, self.max_bitrate = simulcast, max_bitrate
        self.room = rtc.Room()
        self.video_source: rtc.VideoSource | None = None
        self.audio_source: rtc.AudioSource | None = None
        self.video_publication: rtc.LocalTrackPublication | None = None
        self.audio_publication: rtc.LocalTrackPublication | None = None
        self.frames_sent = 0
        self.samples_sent = 0
        self._video_tasks: list[asyncio.Task[None]] = []
        self._audio_tasks: list[asyncio.Task[None]] = []

    async def connect(self, url: str, token: str, *, timeout_s: float = 20.0) -> None:
        await _connect(self.room, url, token, timeout_s)

    async def publish(
        self, *, video: bool = True, audio: bool = True, red: bool = False, timeout_s: float = 20.0
    ) -> None:
        """Publish the tracks and start feeding them; returns once the SFU acknowledged both.
        `red`: the tone with audio RED (the SDK's default is plain Opus here, as tests expect)."""
        lp = self.room.local_participant
        if video:
            self.video_source = rtc.VideoSource(self.width, self.height)
            track = rtc.LocalVideoTrack.create_video_track("synthetic-pattern", self.video_source)
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA,
                simulcast=self.simulcast,
                video_codec=rtc.VideoCodec.VP8,
                video_encoding=rtc.VideoEncoding(
                    max_bitrate=self.max_bitrate, max_framerate=self.fps
                ),
            )
            # Feed frames before and during negotiation so the encoder has input immediately.
            self._video_tasks.append(asyncio.create_task(self._video_loop(self.video_source)))
            self.video_publication = await asyncio.wait_for(
                lp.publish_track(track, options), timeout_s
            )
        if audio:
            self.audio_source = rtc.AudioSource(self.sample_rate, 1)
            track_a = rtc.LocalAudioTrack.create_audio_track("synthetic-sine", self.audio_source)
            options_a = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False, red=red
            )
            self._audio_tasks.append(asyncio.create_task(self._audio_loop(self.audio_source)))
            self.audio_publication = await asyncio.wait_for(
                lp.publish_track(track_a, options_a), timeout_s
            )

    def video_frame(self, n: int) -> rtc.VideoFrame | None:
        """Frame `n` of the video (None: capture nothing this time, the track stays up)."""
        return video_frame_from_rgba(render_pattern(n, self.width, self.height))

    async def _video_loop(self, source: rtc.VideoSource) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        period = 1.0 / self.fps
        while True:
            n = self.frames_sent
            frame = self.video_frame(n)
            if frame is not None:
                source.capture_frame(frame, timestamp_us=int(n * period * 1e6))
            self.frames_sent = n + 1
            delay = start + (n + 1) * period - loop.time()
            await asyncio.sleep(max(delay, 0.0))

    async def _audio_loop(self, source: rtc.AudioSource) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        frame_ms = 10
        per_frame = self.sample_rate * frame_ms // 1000
        while True:
            frame = sine_frame(
                self.samples_sent,
                frequency=self.tone_hz,
                sample_rate=self.sample_rate,
                frame_ms=frame_ms,
                amplitude=self.tone_amplitude,
            )
            await source.capture_frame(frame)
            self.samples_sent += per_frame
            # stay at most ~50 ms ahead of real time
            ahead = start + self.samples_sent / self.sample_rate - loop.time()
            if ahead > 0.05:
                await asyncio.sleep(ahead - 0.05)

    def check_tasks(self) -> None:
        """Raise `BackgroundTaskError` with the traceback if a frame feeder crashed."""
        raise_failures([*self._video_tasks, *self._audio_tasks], self.identity)

    def set_muted(self, kind: str, muted: bool) -> None:
        """Mute or unmute the published `kind` ("video" or "audio") track, as a client's button."""
        publication = self.video_publication if kind == "video" else self.audio_publication
        assert publication is not None, f"{self.identity} has no {kind} track published"
        track = publication.track
        assert isinstance(track, rtc.LocalVideoTrack | rtc.LocalAudioTrack), track
        if muted:
            track.mute()
        else:
            track.unmute()

    async def unpublish_video(self, *, timeout_s: float = 10.0) -> None:
        await cancel_tasks(self._video_tasks, self.identity)
        if self.video_publication is not None:
            sid = self.video_publication.sid
            self.video_publication = None
            await asyncio.wait_for(self.room.local_participant.unpublish_track(sid), timeout_s)

    async def unpublish_audio(self, *, timeout_s: float = 10.0) -> None:
        await cancel_tasks(self._audio_tasks, self.identity)
        if self.audio_publication is not None:
            sid = self.audio_publication.sid
            self.audio_publication = None
            await asyncio.wait_for(self.room.local_participant.unpublish_track(sid), timeout_s)

    async def leave(self, *, timeout_s: float = 10.0) -> None:
        """Stop feeding, disconnect, close the sources. Safe to call twice.

        Raises `BackgroundTaskError` (after the cleanup) if a frame feeder had crashed."""
        failed: list[BackgroundTaskError] = []
        for tasks in (self._video_tasks, self._audio_tasks):
            try:
                await cancel_tasks(tasks, self.identity)
            except BackgroundTaskError as exc:
                failed.append(exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), timeout_s)
        for source in (self.video_source, self.audio_source):
            if source is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(source.aclose(), timeout_s)
        self.video_source = self.audio_source = None
        if failed:
            raise failed[0]

    async def __aenter__(self) -> SyntheticPublisher:
        return self

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        await _leave_keeping(self.leave(), exc)


@dataclass
class RoomEventRecord:
    name: str
    at: float
    participant: str | None = None
    track_sid: str | None = None
    kind: str | None = None
    detail: str | None = None


@dataclass
class VideoCollector:
    track_sid: str
    participant: str
    matches: deque[PatternMatch] = field(default_factory=lambda: deque(maxlen=3000))
    last_frames: deque[RgbaFrame] = field(default_factory=lambda: deque(maxlen=3))
    frames: int = 0

    def recent(self, since: float = 0.0) -> list[PatternMatch]:
        return [m for m in self.matches if m.received_at >= since]


@dataclass
class AudioCollector:
    track_sid: str
    participant: str
    sample_rate: int
    max_seconds: float = 10.0
    chunks: deque[Samples] = field(default_factory=deque)
    samples_total: int = 0
    _kept: int = 0

    def add(self, chunk: Samples) -> None:
        self.chunks.append(chunk)
        self.samples_total += chunk.size
        self._kept += chunk.size
        limit = int(self.max_seconds * self.sample_rate)
        while self._kept - self.chunks[0].size >= limit:
            self._kept -= self.chunks.popleft().size

    def last_seconds(self, seconds: float) -> Samples:
        if not self.chunks:
            return np.zeros(0, dtype=np.int16)
        joined = np.concatenate(list(self.chunks))
        return joined[-int(seconds * self.sample_rate) :]


def _kind_name(track: rtc.Track | None) -> str | None:
    if isinstance(track, rtc.RemoteVideoTrack):
        return "video"
    if isinstance(track, rtc.RemoteAudioTrack):
        return "audio"
    return None


class CollectingSubscriber:
    """A participant that records room events and collects what it receives on every track."""

    def __init__(
        self, identity: str, *, sample_rate: int = 48000, keep_frames: bool = True
    ) -> None:
        self.identity = identity
        self.sample_rate = sample_rate
        self.keep_frames = keep_frames
        self.room = rtc.Room()
        self.events: list[RoomEventRecord] = []
        self.video: dict[str, VideoCollector] = {}
        self.audio: dict[str, AudioCollector] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: list[rtc.VideoStream | rtc.AudioStream] = []
        self._register()

    # -- events -------------------------------------------------------------------------------

    def _record(self, name: str, **kw: Any) -> None:
        self.events.append(RoomEventRecord(name, time.monotonic(), **kw))
        self._changed.set()

    def _register(self) -> None:
        room = self.room

        @room.on("track_subscribed")
        def _subscribed(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            self._record(
                "track_subscribed",
                participant=p.identity,
                track_sid=pub.sid,
                kind=_kind_name(track),
            )
            if isinstance(track, rtc.RemoteVideoTrack):
                self._tasks.append(
                    asyncio.create_task(self._collect_video(track, pub.sid, p.identity))
                )
            elif isinstance(track, rtc.RemoteAudioTrack):
                self._tasks.append(
                    asyncio.create_task(self._collect_audio(track, pub.sid, p.identity))
                )

        @room.on("track_unsubscribed")
        def _unsubscribed(
            track: rtc.Track | None, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
        ) -> None:
            self._record("track_unsubscribed", participant=p.identity, track_sid=pub.sid)

        @room.on("track_published")
        def _published(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            self._record("track_published", participant=p.identity, track_sid=pub.sid)

        @room.on("track_unpublished")
        def _unpublished(pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            self._record("track_unpublished", participant=p.identity, track_sid=pub.sid)

        @room.on("track_subscription_failed")
        def _failed(p: rtc.RemoteParticipant, sid: str, error: str) -> None:
            self._record(
                "track_subscription_failed", participant=p.identity, track_sid=sid, detail=error
            )

        @room.on("participant_connected")
        def _joined(p: rtc.RemoteParticipant) -> None:
            self._record("participant_connected", participant=p.identity)

        @room.on("participant_disconnected")
        def _left(p: rtc.RemoteParticipant) -> None:
            self._record("participant_disconnected", participant=p.identity)

        @room.on("track_muted")
        def _muted(p: rtc.Participant, pub: rtc.TrackPublication) -> None:
            self._record("track_muted", participant=p.identity, track_sid=pub.sid)

        @room.on("track_unmuted")
        def _unmuted(p: rtc.Participant, pub: rtc.TrackPublication) -> None:
            self._record("track_unmuted", participant=p.identity, track_sid=pub.sid)

        @room.on("connection_state_changed")
        def _state(state: rtc.ConnectionState.ValueType) -> None:
            self._record("connection_state_changed", detail=rtc.ConnectionState.Name(state))

        @room.on("disconnected")
        def _disconnected(reason: Any) -> None:
            self._record("disconnected", detail=str(reason))

        @room.on("reconnecting")
        def _reconnecting() -> None:
            self._record("reconnecting")

    def event_log(self) -> str:
        t0 = self.events[0].at if self.events else 0.0
        return "\n".join(
            f"+{e.at - t0:6.2f}s {e.name} participant={e.participant} track={e.track_sid} "
            f"kind={e.kind} {e.detail or ''}"
            for e in self.events
        )

    def find_events(self, name: str, **match: Any) -> list[RoomEventRecord]:
        return [
            e
            for e in self.events
            if e.name == name and all(getattr(e, k) == v for k, v in match.items())
        ]

    async def wait_until(
        self, condition: Callable[[], bool], *, timeout_s: float, what: str = "condition"
    ) -> None:
        """Wait (bounded) until `condition()` holds; it is re-checked on every event and frame.

        A crashed collector task raises `BackgroundTaskError` at once (with its traceback)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            raise_failures(self._tasks, self.identity)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                rtp = await rtp_stats_summary(self.room) if self.room.isconnected() else ""
                raise TimeoutError(
                    f"{self.identity}: {what} not reached in {timeout_s} s\n"
                    f"RTP streams:\n{rtp}\n"
                    f"events:\n{self.event_log()}\nvideo: "
                    + "; ".join(
                        f"{c.track_sid}: {summarise_matches(list(c.matches))}"
                        for c in self.video.values()
                    )
                    + "\naudio: "
                    + "; ".join(
                        f"{c.track_sid}: {c.samples_total} samples" for c in self.audio.values()
                    )
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))

    async def wait_for_event(
        self, name: str, *, timeout_s: float = 20.0, **match: Any
    ) -> RoomEventRecord:
        await self.wait_until(
            lambda: bool(self.find_events(name, **match)),
            timeout_s=timeout_s,
            what=f"event {name} {match}",
        )
        return self.find_events(name, **match)[0]

    # -- media --------------------------------------------------------------------------------

    async def _collect_video(self, track: rtc.RemoteVideoTrack, sid: str, who: str) -> None:
        collector = self.video.setdefault(sid, VideoCollector(sid, who))
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGBA)
        self._streams.append(stream)
        try:
            async for event in stream:
                rgba = rgba_from_video_frame(event.frame)
                collector.matches.append(analyse_frame(rgba, time.monotonic()))
                collector.frames += 1
                if self.keep_frames:
                    collector.last_frames.append(rgba)
                self._changed.set()
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _collect_audio(self, track: rtc.RemoteAudioTrack, sid: str, who: str) -> None:
        collector = self.audio.setdefault(sid, AudioCollector(sid, who, self.sample_rate))
        stream = rtc.AudioStream(track, sample_rate=self.sample_rate, num_channels=1)
        self._streams.append(stream)
        try:
            async for event in stream:
                frame = event.frame
                data = np.frombuffer(frame.data, dtype=np.int16)
                collector.add(data[: frame.samples_per_channel].copy())
                self._changed.set()
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    def video_from(self, identity: str) -> VideoCollector | None:
        return next((c for c in self.video.values() if c.participant == identity), None)

    def audio_from(self, identity: str) -> AudioCollector | None:
        return next((c for c in self.audio.values() if c.participant == identity), None)

    async def wait_matching_frames(
        self,
        identity: str,
        count: int,
        *,
        width: int | None = None,
        height: int | None = None,
        timeout_s: float = 20.0,
    ) -> list[PatternMatch]:
        """Wait until `count` frames from `identity` (of the given size) match the pattern."""

        def good() -> list[PatternMatch]:
            c = self.video_from(identity)
            if c is None:
                return []
            return [
                m
                for m in c.matches
                if m.ok
                and (width is None or m.width == width)
                and (height is None or m.height == height)
            ]

        await self.wait_until(
            lambda: len(good()) >= count,
            timeout_s=timeout_s,
            what=f"{count} matching {width}x{height} frames from {identity}",
        )
        return good()

    async def wait_audio_samples(
        self, identity: str, samples: int, *, timeout_s: float = 20.0
    ) -> Samples:
        """Wait until `samples` samples from `identity` arrived; return the most recent ones."""

        def have() -> bool:
            c = self.audio_from(identity)
            return c is not None and c.samples_total >= samples

        await self.wait_until(
            have, timeout_s=timeout_s, what=f"{samples} audio samples from {identity}"
        )
        collector = self.audio_from(identity)
        assert collector is not None
        return collector.last_seconds(samples / self.sample_rate)

    async def connect(self, url: str, token: str, *, timeout_s: float = 20.0) -> None:
        await _connect(self.room, url, token, timeout_s)

    async def leave(self, *, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), timeout_s)
        for stream in self._streams:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.aclose(), timeout_s)
        self._streams.clear()
        await cancel_tasks(self._tasks, self.identity)

    async def __aenter__(self) -> CollectingSubscriber:
        return self

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        await _leave_keeping(self.leave(), exc)


async def _leave_keeping(leave: Awaitable[None], exc: BaseException | None) -> None:
    """Run `leave`; a crashed background task fails the block, or, when the block already
    failed, is added to that error as a note (the test's own failure stays the headline)."""
    try:
        await leave
    except BackgroundTaskError as failure:
        if exc is None:
            raise
        exc.add_note(str(failure))
