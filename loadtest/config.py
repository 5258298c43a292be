"""The scenario a run plays: command-line flags, `lk`-style durations and the named presets.

`parse_args(argv)` turns the command line into a `Scenario`. A `--preset` fills the defaults;
flags given explicitly override it. Durations are written like `lk load-test`: `30s`, `2m`,
`1m30s`, `500ms`, or a bare number of seconds. As with `lk`, `LIVEKIT_URL`, `LIVEKIT_API_KEY`
and `LIVEKIT_API_SECRET` stand in for `--url`, `--api-key` and `--api-secret`: a secret in the
environment stays out of `ps`, and one that starts with `-` needs no `--api-secret=` form.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtest.rx import COMPILED, RX_MODES

__all__ = [
    "LAYOUTS",
    "PRESETS",
    "DurationError",
    "Scenario",
    "build_parser",
    "parse_args",
    "parse_duration",
]

LAYOUTS = ("speaker", "grid", "audio-only")
RESOLUTIONS = ("high", "medium", "low")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
MAX_DURATION_S = 24 * 3600.0


class DurationError(ValueError):
    """A duration that is not written like `30s`, `2m`, `1h`, `1m30s` or `45`."""


def parse_duration(text: str) -> float:
    """Seconds in an `lk`-style duration (`30s`, `2m`, `1m30s`, `250ms`, `45`)."""
    value = text.strip().lower()
    if not value:
        raise DurationError("empty duration")
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        position = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != position:
                break
            number, unit = float(match.group(1)), match.group(2)
            seconds += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
            position = match.end()
        if position != len(value) or position == 0:
            raise DurationError(f"not a duration: {text!r} (write 30s, 2m, 1m30s)")
    if seconds > MAX_DURATION_S:
        raise DurationError(f"duration {text!r} is longer than 24h")
    return seconds


@dataclass(frozen=True)
class Scenario:
    """Everything a run needs to know; built by `parse_args`."""

    url: str = "ws://127.0.0.1:7880"
    api_key: str | None = None
    api_secret: str | None = None
    token_url: str | None = None
    room: str = "loadtest"
    rooms: int = 1
    video_publishers: int = 1
    audio_publishers: int = 0
    talking_publishers: int | None = None  # None: every audio publisher talks
    subscribers: int = 1
    simulcast: bool = True
    video_resolution: str = "high"
    layout: str = "speaker"
    num_per_second: float = 5.0
    duration_s: float = 30.0
    seed: int = 1
    out: Path = field(default_factory=lambda: Path("."))
    cache: Path | None = None
    workers: int | None = None
    sample_every: int = 20
    rx: str = "auto"
    metrics_url: str | None = None
    sfu_pid: int | None = None
    preset: str | None = None
    plots: bool = True
    progress: bool = True

    @property
    def layers(self) -> tuple[str, ...]:
        """Simulcast rids a video publisher sends, low to high (`q`, `h`, `f`)."""
        if not self.simulcast:
            return ("f",) if self.video_resolution == "high" else ("h",)
        return {"high": ("q", "h", "f"), "medium": ("q", "h"), "low": ("q",)}[self.video_resolution]

    @property
    def participants(self) -> int:
        return self.publishers + self.subscribers

    @property
    def publishers(self) -> int:
        return max(self.video_publishers, self.audio_publishers)


#: Named scenarios; each is a set of defaults the flags may override.
PRESETS: dict[str, dict[str, Any]] = {
    "audio-room": {
        "video_publishers": 0,
        "audio_publishers": 10,
        "talking_publishers": 3,
        "subscribers": 100,
        "layout": "audio-only",
    },
    "meeting": {
        "video_publishers": 10,
        "audio_publishers": 10,
        "talking_publishers": 2,
        "subscribers": 40,
        "layout": "grid",
        "simulcast": True,
        "video_resolution": "high",
    },
    "livestream": {
        "video_publishers": 1,
        "audio_publishers": 1,
        "subscribers": 200,
        "layout": "speaker",
        "simulcast": True,
        "video_resolution": "high",
    },
    "500": {
        "video_publishers": 10,
        "audio_publishers": 10,
        "talking_publishers": 3,
        "subscribers": 490,
        "layout": "speaker",
        "simulcast": True,
        "video_resolution": "high",
        "num_per_second": 10.0,
        "duration_s": 120.0,
    },
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be ≥ 0")
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="matrix-sfu-loadtest",
        description="Load-test a LiveKit-compatible SFU: synthetic simulcast publishers, cheap "
        "subscribers, a report with joins, loss, bitrate, end-to-end latency and SFU cost.",
    )
    p.add_argument(
        "--url",
        help="signalling URL: ws://host:port or wss://host (LiveKit Cloud too); http(s):// is "
        "read as ws(s):// (default $LIVEKIT_URL, else ws://127.0.0.1:7880)",
    )
    p.add_argument(
        "--api-key", help="API key: mint HS256 access tokens locally (default $LIVEKIT_API_KEY)"
    )
    p.add_argument(
        "--api-secret",
        help="API secret for --api-key (default $LIVEKIT_API_SECRET; on the command line write "
        "--api-secret=SECRET when it may start with '-')",
    )
    p.add_argument(
        "--token-url", help="get tokens by GET {token-url}?identity=…&room=… (JSON {token})"
    )
    p.add_argument("--room", help="room name (with --rooms N: prefix, rooms are ROOM-0…)")
    p.add_argument("--rooms", type=_positive_int, help="spread the participants over N rooms")
    p.add_argument("--video-publishers", "--publishers", type=_positive_int)
    p.add_argument("--audio-publishers", type=_positive_int)
    p.add_argument(
        "--talking",
        dest="talking_publishers",
        type=_positive_int,
        help="how many audio publishers talk (the rest send silence-sized Opus)",
    )
    p.add_argument("--subscribers", type=_positive_int)
    p.add_argument("--simulcast", dest="simulcast", action="store_true", default=None)
    p.add_argument("--no-simulcast", dest="simulcast", action="store_false")
    p.add_argument("--video-resolution", choices=RESOLUTIONS)
    p.add_argument("--layout", choices=LAYOUTS)
    p.add_argument("--num-per-second", type=float, help="joins per second (default 5, max 50)")
    p.add_argument("--duration", dest="duration_s", type=_duration, help="e.g. 30s, 2m")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path, help="folder for report.json and the PNGs (default .)")
    p.add_argument("--cache", type=Path, help="media cache (default ~/.cache/matrix-sfu-loadtest)")
    p.add_argument("--workers", type=_positive_int, help="subscriber processes (default: cores)")
    p.add_argument(
        "--sample-every",
        type=_positive_int,
        help="decrypt 1 packet in N of each stream to read its latency trailer (default 20)",
    )
    p.add_argument(
        "--rx",
        choices=RX_MODES,
        help="how subscribers receive (default auto: batched, compiled when built; "
        "per-datagram: one event-loop callback a packet, on uvloop)",
    )
    p.add_argument("--metrics-url", help="the SFU's /metrics (default: guessed from --url)")
    p.add_argument("--sfu-pid", type=int, help="local SFU process, for CPU/RSS when no /metrics")
    p.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--no-plots", dest="plots", action="store_false", default=None)
    p.add_argument("--quiet", dest="progress", action="store_false", default=None)
    return p


_ENVIRONMENT = {
    "url": "LIVEKIT_URL",
    "api_key": "LIVEKIT_API_KEY",
    "api_secret": "LIVEKIT_API_SECRET",
}


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Scenario:
    """The `Scenario` for a command line: preset defaults, `LIVEKIT_*` variables, then flags."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset")
    values: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    environ = os.environ if environ is None else environ
    values.update({k: environ[name] for k, name in _ENVIRONMENT.items() if environ.get(name)})
    values.update({k: v for k, v in args.items() if v is not None})
    scenario = replace(Scenario(), preset=preset, **values)
    url = scenario.url
    if url.startswith(("http://", "https://")):  # as `lk` accepts: http(s) → ws(s)
        url = "ws" + url.removeprefix("http")
    if not url.startswith(("ws://", "wss://")):
        parser.error(f"--url must be ws://, wss://, http:// or https://, not {scenario.url!r}")
    scenario = replace(scenario, url=url)
    if scenario.api_key is None and scenario.token_url is None:
        parser.error("give --api-key and --api-secret, or --token-url")
    if scenario.api_key is not None and not scenario.api_secret:
        parser.error("--api-key needs --api-secret")
    if scenario.rooms < 1:
        parser.error("--rooms must be ≥ 1")
    if not 0 < scenario.num_per_second <= 50:
        parser.error("--num-per-second must be in (0, 50]")
    if scenario.rx == "c" and not COMPILED:
        parser.error("--rx c: loadtest._rx is not built (`pip install -e .` with a C compiler)")
    if scenario.publishers + scenario.subscribers == 0:
        parser.error("nothing to do: no publishers and no subscribers")
    return scenario
