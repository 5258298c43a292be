"""A LiveKit Python SDK subscriber as a process of its own, reporting what it decodes.

The SDK runs its WebRTC stack in the process that imports it, so a subscriber behind a shaped
link (tests/harness/shaper.py) must be a process started inside that namespace:
``python -m tests.harness.quality_subscriber URL TOKEN PUBLISHER`` joins, subscribes to
everything (no adaptive stream: the SDK asks for the highest layer) and prints one JSON object
per line on stdout:

- ``{"connected": true}`` once joined; ``{"subscribed": "video"|"audio", "at": t}``;
- ``{"frame": [t, width, height, number]}`` for every decoded video frame from PUBLISHER
  (`number`: the test pattern's frame number read from the Y plane's first row, -1 when it
  does not decode; tests/harness/lkclient.py draws it);
- ``{"stats": {...}}`` every ``STATS_INTERVAL_S``: the cumulative receive counters of
  PUBLISHER's tracks (`tests.harness.quality.StatsSample` fields);
- ``{"quality": [t, identity, quality]}`` for every ConnectionQualityUpdate entry the SDK
  reports (``quality``: the `ConnectionQuality` number: 0 POOR, 1 GOOD, 2 EXCELLENT, 3 LOST).

It leaves on SIGTERM, at end of stdin, or after ``--max-seconds``. `SdkSubscriber` is the test
side: it starts the process (in a namespace when given one), collects its lines into a
`Reception`, and stops it by PID (SIGTERM, bounded wait, SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.harness.lkclient import GRID_COLS, GRID_ROWS, decode_frame_number
from tests.harness.netns import Namespace
from tests.harness.process import spawn_piped
from tests.harness.quality import Frame, Reception, StatsSample
from tests.harness.sfu import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
STATS_INTERVAL_S = 0.5
STOP_TIMEOUT_S = 10.0


def frame_number_from_luma(y: np.ndarray[Any, Any], width: int, height: int) -> int | None:
    """The pattern's frame number from the Y plane alone (row 0 is black and white cells)."""
    plane = y[: width * height].reshape(height, width)
    cell_h, cell_w = height / GRID_ROWS, width / GRID_COLS
    y0, y1 = int(cell_h / 4), max(int(3 * cell_h / 4), int(cell_h / 4) + 1)
    means = np.empty((1, GRID_COLS, 3))
    for c in range(GRID_COLS):
        x0 = int(c * cell_w + cell_w / 4)
        x1 = max(int(c * cell_w + 3 * cell_w / 4), x0 + 1)
        means[0, c, :] = plane[y0:y1, x0:x1].mean()
    return decode_frame_number(means)


# ---------------------------------------------------------------------------------------------
# The subscriber process
# ---------------------------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _video(track: Any) -> None:
    from livekit import rtc

    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.I420)
    try:
        async for event in stream:
            frame = event.frame
            y = np.frombuffer(frame.get_plane(0) or b"", dtype=np.uint8)
            number = None
            if y.size >= frame.width * frame.height:
                number = frame_number_from_luma(y, frame.width, frame.height)
            at = time.monotonic()
            _emit({"frame": [at, frame.width, frame.height, -1 if number is None else number]})
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _audio(track: Any) -> None:
    from livekit import rtc

    stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
    try:
        async for _event in stream:
            pass  # pulled, so the receiver plays it out; its counters are in the stats
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _stats(room: Any, publisher: str) -> None:
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        try:
            stats = await asyncio.wait_for(room.get_rtc_stats(), 3.0)
        except Exception:
            continue
        totals: dict[str, Any] = {"at": time.monotonic()}
        for entry in stats.subscriber_stats:
            if entry.WhichOneof("stats") != "inbound_rtp":
                continue
            r = entry.inbound_rtp
            if r.stream.kind == "video":
                totals["video_bytes"] = totals.get("video_bytes", 0) + r.inbound.bytes_received
                lost = r.received.packets_lost
                totals["video_packets_lost"] = totals.get("video_packets_lost", 0) + lost
                totals["nack_count"] = totals.get("nack_count", 0) + r.inbound.nack_count
                totals["pli_count"] = totals.get("pli_count", 0) + r.inbound.pli_count
            elif r.stream.kind == "audio":
                samples = r.inbound.total_samples_received
                totals["audio_samples"] = totals.get("audio_samples", 0) + samples
                concealed = r.inbound.concealed_samples
                totals["audio_concealed"] = totals.get("audio_concealed", 0) + concealed
                energy = r.inbound.total_audio_energy
                totals["audio_energy"] = totals.get("audio_energy", 0.0) + energy
        _emit({"stats": totals})


async def _main(url: str, token: str, publisher: str, max_seconds: float) -> int:
    from livekit import rtc

    room = rtc.Room()
    tasks: list[asyncio.Task[None]] = []

    @room.on("track_subscribed")
    def _subscribed(track: Any, _pub: Any, participant: Any) -> None:
        if participant.identity != publisher:
            return
        if isinstance(track, rtc.RemoteVideoTrack):
            tasks.append(asyncio.create_task(_video(track)))
            _emit({"subscribed": "video", "at": time.monotonic()})
        elif isinstance(track, rtc.RemoteAudioTrack):
            tasks.append(asyncio.create_task(_audio(track)))
            _emit({"subscribed": "audio", "at": time.monotonic()})

    @room.on("connection_quality_changed")
    def _quality(participant: Any, quality: Any) -> None:
        _emit({"quality": [time.monotonic(), participant.identity, int(quality)]})

    await asyncio.wait_for(room.connect(url, token, rtc.RoomOptions(auto_subscribe=True)), 30)
    _emit({"connected": True})
    tasks.append(asyncio.create_task(_stats(room, publisher)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # the test went away
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(room.disconnect(), 10)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("publisher")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    return asyncio.run(_main(args.url, args.token, args.publisher, args.max_seconds))


# ---------------------------------------------------------------------------------------------
# The test side
# ---------------------------------------------------------------------------------------------


class SdkSubscriber:
    """Drives one subscriber process; `reception` fills in as its lines arrive."""

    def __init__(self, name: str, log_path: Path, ns: Namespace | None = None) -> None:
        self.name, self.log_path, self.ns = name, log_path, ns
        self.reception = Reception()
        self.subscribed: dict[str, float] = {}
        #: (monotonic time, participant identity, ConnectionQuality) as the SDK reported them
        self.qualities: list[tuple[float, str, int]] = []
        self.bad_numbers = 0
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self, url: str, token: str, publisher: str, *, timeout_s: float = 30) -> None:
        argv = [sys.executable, "-m", "tests.harness.quality_subscriber", url, token, publisher]
        if self.ns is not None:
            argv = self.ns.exec_argv(*argv)
        self.process = await spawn_piped(argv, cwd=REPO_ROOT, log_path=self.log_path)
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: not connected in {timeout_s} s; log:\n{self.log_tail()}"
            ) from None

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "frame" in message:
                at, width, height, number = message["frame"]
                self.reception.add_frame(Frame(at, width, height))
                self.bad_numbers += number < 0
            elif "stats" in message:
                self.reception.add_sample(StatsSample(**message["stats"]))
            elif "quality" in message:
                at, identity, quality = message["quality"]
                self.qualities.append((float(at), str(identity), int(quality)))
            elif "subscribed" in message:
                self.subscribed[message["subscribed"]] = message["at"]
            elif message.get("connected"):
                self._connected.set()

    def check_alive(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise AssertionError(
                f"{self.name} exited with {self.process.returncode}; log:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    async def stop(self) -> None:
        """SIGTERM (it leaves the room), a bounded wait, then SIGKILL to its group."""
        if self.process is not None:
            await stop_process(self.process, STOP_TIMEOUT_S)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5.0)


if __name__ == "__main__":
    sys.exit(main())
