"""Soak: a long mixed run against a fresh local SFU, with churn and a trickle of hostile input.

    .venv/bin/python benchmarks/soak.py --duration 30m --rooms 3 --out benchmarks/results/soak

Starts the SFU (`tests/harness/sfu.py`: free loopback ports, a fresh key, log level info), then
until `--duration` is over, in each of `--rooms` rooms and over and over: two publishers join
(the load tester's: a simulcast VP8 camera + Opus, and an Opus microphone), `--subscribers`
subscribers join and change their tile sizes every few seconds (so layers switch and dynacast
pauses and resumes layers), and after 20–60 s everybody leaves — half with a LeaveRequest, half by
dropping the WebSocket. Beside them a hostile participant keeps trying something every
`--hostile-every` seconds (garbage and malformed STUN at the media ports, bad tokens, malformed and
oversized signalling, AddTrackRequests past the caps, floods of sids and candidates,
never-answered offers).

Every `--sample-every` seconds it records the SFU's RSS, open fds, UDP sockets, asyncio tasks,
rooms and participants and CPU; at the end it waits for the SFU to go idle, takes a last sample,
and counts the SFU log's tracebacks and ERROR lines. The summary says whether RSS, fds, UDP
sockets and tasks are flat after warm-up (least-squares slope over the samples after warm-up, and
idle readings at the start and at the end). It asserts nothing: it is a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.harness` lives beside the installed packages

import httpx  # noqa: E402
from livekit.protocol import models, rtc  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from loadtest.config import parse_duration  # noqa: E402
from loadtest.media import MediaSet, load_media  # noqa: E402
from loadtest.participant import Subscriber, TileRequest  # noqa: E402
from loadtest.publisher import Publisher  # noqa: E402
from loadtest.signal import SignalError, TokenSource  # noqa: E402
from loadtest.webrtc import use_interfaces_for  # noqa: E402
from tests.harness.sfu import SFU_COMMAND, SfuInstance, running_sfu  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
TILES = (TileRequest(True), TileRequest(False, 160, 90), TileRequest(False, 640, 360))
TILES_ALL = (*TILES, TileRequest(False, 1280, 720))
#: what counts as an unhandled error in the SFU's log
LOG_ERROR = re.compile(
    r"Traceback|Exception in callback|Task exception was never retrieved|\bERROR\b|\bCRITICAL\b"
)
IDLE_WAIT_S = 30.0


# -- what the SFU process holds ------------------------------------------------------------------


def _udp_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9:
                    inodes.add(fields[9])
    return inodes


def process_reading(pid: int) -> dict[str, float]:
    """RSS (MiB), open fds, UDP sockets and CPU seconds of one process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    fds = os.listdir(f"/proc/{pid}/fd")
    sockets = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "fds": len(fds),
        "udp_sockets": len(sockets & _udp_inodes()),
        "cpu_s": (int(stat[11]) + int(stat[12])) / TICKS,
    }


async def metrics_reading(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    wanted = {
        "sfu_asyncio_tasks": "tasks",
        "livekit_room_total": "rooms",
        "livekit_participant_total": "participants",
        "livekit_track_subscribed_total": "subscriptions",
    }
    out: dict[str, float] = {}
    limits = 0.0
    response = await client.get(url, timeout=10.0)
    for line in response.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[wanted[name]] = float(line.rsplit(" ", 1)[1])
        elif name == "sfu_limit_exceeded_total":
            limits += float(line.rsplit(" ", 1)[1])
    out["limit_hits"] = limits
    return out


# -- the honest participants ---------------------------------------------------------------------


@dataclass
class Tally:
    cycles: int = 0
    joins: int = 0
    join_failures: int = 0
    join_errors: list[str] = field(default_factory=list)
    packets_received: int = 0
    layout_changes: int = 0
    hostile: dict[str, int] = field(default_factory=dict)
    hostile_errors: dict[str, int] = field(default_factory=dict)

    def failed(self, who: str, exc: BaseException) -> None:
        self.join_failures += 1
        if len(self.join_errors) < 20:
            self.join_errors.append(f"{who}: {type(exc).__name__}: {exc}")


class Soak:
    def __init__(self, sfu: SfuInstance, args: argparse.Namespace, media: MediaSet) -> None:
        self.sfu = sfu
        self.args = args
        self.media = media
        self.tokens = TokenSource(sfu.api_key, sfu.api_secret)
        self.tally = Tally()
        self.rng = random.Random(args.seed)
        self.deadline = time.monotonic() + args.duration

    def token(self, identity: str, room: str, *, publish: bool) -> str:
        return self.tokens.mint(identity, room, publish=publish)

    async def room_loop(self, room_index: int) -> None:
        cycle = 0
        await asyncio.sleep(room_index * 3.0)  # stagger the rooms
        while time.monotonic() < self.deadline - 15:
            await self.cycle(f"soak-{room_index}", cycle)
            cycle += 1
            self.tally.cycles += 1
            await asyncio.sleep(self.rng.uniform(1.0, 4.0))

    async def cycle(self, room: str, cycle: int) -> None:
        people: list[Publisher | Subscriber] = []
        tiles: dict[str, TileRequest] = {}

        def layout(tracks: dict[str, tuple[str, int]]) -> dict[str, TileRequest]:
            return {
                sid: tiles.setdefault(sid, TileRequest(False, 640, 360))
                for sid, (_, kind) in tracks.items()
                if kind == models.TrackType.VIDEO
            }

        try:
            for n, (rids, audio) in enumerate(((("q", "h", "f"), True), ((), True))):
                identity = f"{room}-c{cycle}-pub{n}"
                pub = Publisher(
                    self.sfu.url,
                    self.token(identity, room, publish=True),
                    identity,
                    number=n,
                    media=self.media,
                    video_rids=rids,
                    audio=audio,
                    talking=n == 0,
                )
                people.append(pub)
                try:
                    await pub.join()
                    await pub.publish()
                    pub.start_media()
                    self.tally.joins += 1
                except (SignalError, TimeoutError, ConnectionError, OSError) as exc:
                    self.tally.failed(identity, exc)
            subs: list[Subscriber] = []
            for n in range(self.args.subscribers):
                identity = f"{room}-c{cycle}-sub{n}"
                sub = Subscriber(
                    self.sfu.url,
                    self.token(identity, room, publish=False),
                    identity,
                    sample_every=50,
                    layout=layout,
                )
                people.append(sub)
                try:
                    await sub.join()
                    subs.append(sub)
                    self.tally.joins += 1
                except (SignalError, TimeoutError, ConnectionError, OSError) as exc:
                    self.tally.failed(identity, exc)
            hold = self.rng.uniform(20.0, 60.0)
            end = min(time.monotonic() + hold, self.deadline - 5)
            while time.monotonic() < end:
                await asyncio.sleep(self.rng.uniform(2.0, 5.0))
                for sid in list(tiles):  # everyone's tiles move: layers switch, dynacast pauses
                    tiles[sid] = self.rng.choice(TILES_ALL)
                for sub in subs:
                    sub.apply_layout()
                self.tally.layout_changes += 1
            self.tally.packets_received += sum(s.packets for s in subs)
        finally:
            for n, person in enumerate(people):
                if isinstance(person, Publisher):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(person.stop_media(), 5)
                with contextlib.suppress(Exception):
                    if n % 2:  # half drop the WebSocket without a LeaveRequest
                        ws = person.signal._ws
                        if ws is not None:
                            ws.transport.abort()
                    await asyncio.wait_for(person.close(), 10)

    # -- the hostile participant -------------------------------------------------------------

    async def hostile_loop(self) -> None:
        attacks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("udp_garbage", self.udp_garbage),
            ("stun_malformed", self.stun_malformed),
            ("bad_token", self.bad_token),
            ("malformed_protobuf", self.malformed_protobuf),
            ("oversized_frame", self.oversized_frame),
            ("addtrack_past_caps", self.addtrack_past_caps),
            ("sid_flood", self.sid_flood),
            ("candidate_flood", self.candidate_flood),
            ("never_answer", self.never_answer),
        ]
        n = 0
        while time.monotonic() < self.deadline - 10:
            await asyncio.sleep(self.args.hostile_every)
            name, attack = attacks[n % len(attacks)]
            n += 1
            self.tally.hostile[name] = self.tally.hostile.get(name, 0) + 1
            try:
                await asyncio.wait_for(attack(), 15)
            except Exception:
                self.tally.hostile_errors[name] = self.tally.hostile_errors.get(name, 0) + 1

    def _ports(self, count: int) -> list[int]:
        low, high = self.sfu.rtc_port_range
        return [self.rng.randint(low, high) for _ in range(count)]

    async def udp_garbage(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for port in self._ports(200):
                first = self.rng.choice((0x00, 0x16, 0x80, 0x90, 0xFF))
                s.sendto(
                    bytes([first]) + self.rng.randbytes(self.rng.randint(0, 1200)),
                    ("127.0.0.1", port),
                )

    async def stun_malformed(self) -> None:
        # A Binding request whose PRIORITY attribute has the wrong length
        packet = struct.pack("!HHI12s", 1, 8, 0x2112A442, self.rng.randbytes(12))
        packet += struct.pack("!HH", 0x24, 1) + b"X\0\0\0"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for port in self._ports(100):
                s.sendto(packet, ("127.0.0.1", port))

    async def bad_token(self) -> None:
        async with httpx.AsyncClient() as client:
            for token in ("", "x.y.z", self.token("mallory", "soak-0", publish=True)[:-4] + "AAAA"):
                await client.get(
                    f"{self.sfu.http_url}/rtc/validate", params={"access_token": token}
                )

    async def _raw_session(
        self, room: str, requests: list[rtc.SignalRequest | bytes], linger: float = 0.5
    ) -> None:
        identity = f"mallory-{self.rng.randrange(1 << 30):x}"
        token = self.token(identity, room, publish=True)
        async with connect(
            f"{self.sfu.url}/rtc?access_token={token}&protocol=16&auto_subscribe=1",
            max_size=1 << 24,
            open_timeout=10,
        ) as ws:
            await asyncio.wait_for(ws.recv(), 10)  # JoinResponse
            for request in requests:
                data = request if isinstance(request, bytes) else request.SerializeToString()
                await ws.send(data)
            with contextlib.suppress(TimeoutError, Exception):
                async with asyncio.timeout(linger):
                    async for _ in ws:
                        pass

    def _room(self) -> str:
        return f"soak-{self.rng.randrange(self.args.rooms)}"

    async def malformed_protobuf(self) -> None:
        await self._raw_session(self._room(), [b"\xff\xff\xff\xff\x0f" + self.rng.randbytes(64)])

    async def oversized_frame(self) -> None:
        await self._raw_session(self._room(), [b"\x0a" + b"\x00" * (2 << 20)])

    async def addtrack_past_caps(self) -> None:
        request = rtc.AddTrackRequest(
            cid="c",
            name="x" * 10_000,
            type=models.TrackType.VIDEO,
            layers=[models.VideoLayer()] * 3000,
            simulcast_codecs=[rtc.SimulcastCodec()] * 3000,
        )
        await self._raw_session(self._room(), [rtc.SignalRequest(add_track=request)] * 4)

    async def sid_flood(self) -> None:
        sids = [f"TR_{self.rng.randrange(1 << 40):x}" for _ in range(20_000)]
        update = rtc.UpdateSubscription(track_sids=sids, subscribe=True)
        await self._raw_session(self._room(), [rtc.SignalRequest(subscription=update)])

    async def candidate_flood(self) -> None:
        requests: list[rtc.SignalRequest | bytes] = []
        for port in range(1, 301):
            init = json.dumps(
                {
                    "candidate": f"candidate:1 1 udp 2122260223 10.0.0.1 {port} typ host",
                    "sdpMid": "0",
                    "sdpMLineIndex": 0,
                }
            )
            requests.append(rtc.SignalRequest(trickle=rtc.TrickleRequest(candidateInit=init)))
        await self._raw_session(self._room(), requests)

    async def never_answer(self) -> None:
        await self._raw_session(self._room(), [], linger=3.0)


# -- sampling and the summary --------------------------------------------------------------------


async def sampler(
    sfu: SfuInstance, every: float, stop: asyncio.Event, samples: list[dict[str, Any]]
) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            sample: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
            with contextlib.suppress(OSError, AttributeError):
                sample.update(process_reading(sfu.pid))
            with contextlib.suppress(httpx.HTTPError, ValueError):
                sample.update(await metrics_reading(client, sfu.metrics_url))
            samples.append(sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / var * 600.0


def summarise(
    samples: list[dict[str, Any]],
    idle_start: dict[str, Any],
    idle_end: dict[str, Any],
    warmup: float,
) -> dict[str, Any]:
    steady = [s for s in samples if s["t"] >= warmup and "rss_mb" in s]
    out: dict[str, Any] = {"warmup_s": warmup, "steady_samples": len(steady)}
    for key in ("rss_mb", "fds", "udp_sockets", "tasks"):
        values = [(s["t"], s[key]) for s in steady if key in s]
        if not values:
            continue
        third = max(1, len(values) // 3)
        out[key] = {
            "idle_start": idle_start.get(key),
            "idle_end": idle_end.get(key),
            "steady_min": min(v for _, v in values),
            "steady_max": max(v for _, v in values),
            "first_third_max": max(v for _, v in values[:third]),
            "last_third_max": max(v for _, v in values[-third:]),
            "slope_per_10min": (
                None if (slope := slope_per_10min(values)) is None else round(slope, 2)
            ),
        }
    return out


async def snapshot_after(pid: int, delay: float) -> None:
    """Ask `sfu_tracemalloc.py` for a snapshot (SIGUSR1) after `delay` seconds."""
    await asyncio.sleep(delay)
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(2.0)  # a snapshot of a 100 MB heap takes a moment


def scan_log(path: Path) -> dict[str, Any]:
    lines = path.read_text(errors="replace").splitlines()
    hits = [line for line in lines if LOG_ERROR.search(line)]
    return {"lines": len(lines), "errors": len(hits), "first_errors": hits[:10]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    use_interfaces_for("ws://127.0.0.1")
    media = load_media(None, ("q", "h", "f"))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    extra = {
        "room": {"auto_create": True, "empty_timeout": 10, "departure_timeout": 5},
        # admission by CPU would refuse churn joins whenever the shared 2-core box is busy; the
        # soak looks for leaks and crashes, not capacity
        "limits": {"max_cpu_load": 0},
    }
    command: tuple[str, ...] = SFU_COMMAND
    if args.tracemalloc:
        wrapper = str(REPO_ROOT / "benchmarks" / "sfu_tracemalloc.py")
        command = (sys.executable, wrapper, str(args.tracemalloc), "--config", "{config}")
    async with running_sfu(workdir, extra_config=extra, rtc_ports=2000, command=command) as sfu:
        await asyncio.sleep(2.0)
        idle_start = {**process_reading(sfu.pid)}
        async with httpx.AsyncClient() as client:
            idle_start.update(await metrics_reading(client, sfu.metrics_url))
        soak = Soak(sfu, args, media)
        stop = asyncio.Event()
        samples: list[dict[str, Any]] = []
        sampling = asyncio.create_task(sampler(sfu, args.sample_every, stop, samples))
        started = time.monotonic()
        work = [soak.room_loop(r) for r in range(args.rooms)]
        if args.hostile_every > 0:
            work.append(soak.hostile_loop())
        if args.tracemalloc:  # snapshot 0 at the end of the warm-up, 1 at the end of the run
            work.append(snapshot_after(sfu.pid, args.warmup))
        await asyncio.gather(*work)
        ran = time.monotonic() - started
        if args.tracemalloc:
            await snapshot_after(sfu.pid, 0.0)
        # idle again: wait for the rooms to close (empty/departure timeouts of the config above)
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + IDLE_WAIT_S
            while time.monotonic() < deadline:
                reading = await metrics_reading(client, sfu.metrics_url)
                if reading.get("rooms", 1) == 0 and reading.get("participants", 1) == 0:
                    break
                await asyncio.sleep(1.0)
            await asyncio.sleep(3.0)
            idle_end = {
                **process_reading(sfu.pid),
                **(await metrics_reading(client, sfu.metrics_url)),
            }
        stop.set()
        await sampling
        log = scan_log(sfu.log_path)
    tally = soak.tally
    return {
        "duration_s": round(ran, 1),
        "rooms": args.rooms,
        "subscribers_per_room": args.subscribers,
        "cycles": tally.cycles,
        "joins": tally.joins,
        "join_failures": tally.join_failures,
        "join_errors": tally.join_errors,
        "packets_received": tally.packets_received,
        "layout_changes": tally.layout_changes,
        "hostile_attempts": tally.hostile,
        "hostile_client_errors": tally.hostile_errors,
        "idle_start": idle_start,
        "idle_end": idle_end,
        "summary": summarise(samples, idle_start, idle_end, args.warmup),
        "log": log,
        "samples": samples,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"soak {report['duration_s']:.0f} s: {report['rooms']} rooms, {report['cycles']} cycles, "
        f"{report['joins']} joins ({report['join_failures']} failed), "
        f"{report['packets_received']} packets received, "
        f"{sum(report['hostile_attempts'].values())} hostile attempts"
    )
    print(
        f"{'':14}{'idle start':>11}{'idle end':>10}{'steady min':>12}{'max':>8}"
        f"{'1st third':>11}{'last third':>12}{'slope/10min':>13}"
    )
    for key, row in report["summary"].items():
        if not isinstance(row, dict):
            continue
        print(
            f"{key:14}{row['idle_start']!s:>11}{row['idle_end']!s:>10}{row['steady_min']!s:>12}"
            f"{row['steady_max']!s:>8}{row['first_third_max']!s:>11}{row['last_third_max']!s:>12}"
            f"{row['slope_per_10min']!s:>13}"
        )
    log = report["log"]
    print(f"SFU log: {log['lines']} lines, {log['errors']} tracebacks/ERROR lines")
    for line in log["first_errors"]:
        print(f"  {line}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=parse_duration, default=parse_duration("30m"))
    p.add_argument("--rooms", type=int, default=3)
    p.add_argument("--subscribers", type=int, default=3, help="subscribers per room")
    p.add_argument("--hostile-every", type=float, default=3.0, help="seconds; 0 = no attacks")
    p.add_argument("--sample-every", type=float, default=10.0)
    p.add_argument("--warmup", type=parse_duration, default=None, help="default: a sixth")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="where the SFU's config and log go")
    p.add_argument("--out", type=Path, help="write report.json here (a folder)")
    p.add_argument(
        "--tracemalloc",
        type=Path,
        help="run the SFU under tracemalloc, snapshots into this folder after the warm-up and "
        "at the end (compare: benchmarks/sfu_tracemalloc.py --compare A B); slows the SFU down",
    )
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = min(300.0, args.duration / 6)
    report = asyncio.run(run(args))
    print_report(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
