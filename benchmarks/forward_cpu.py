"""Benchmark: the SFU process's CPU time per forwarded RTP packet, 1 publisher → N subscribers.

For each N given, a fresh SFU (``python -m sfu``, via tests/harness/sfu.py) runs on loopback, and:

1. N cheap subscribers join, in worker processes (benchmarks/lk_subscriber.py: LiveKit signalling
   over WebSocket, aiortc for ICE/DTLS/SRTP, RTP counted at ``RTCDtlsTransport._handle_rtp_data``
   and never decoded), plus one publisher (the LiveKit Python SDK: `SyntheticPublisher` replaying pre-rendered frames) that has
   joined but publishes nothing yet.
2. **idle** window: everybody connected, no media.
3. The publisher publishes VP8 video (default 1280×720, 30 fps, max 2 Mbps, no simulcast, so one
   layer is forwarded) and a 48 kHz Opus tone; after a warm-up the **load** window is measured.
4. **paused** window: the publisher stops feeding video frames; the tracks stay published and
   subscribed, and the audio (if on) keeps flowing: the cost of an audio-only call.

In each window the SFU's CPU is Δ(utime+stime) of its PID and of its children, the media workers
with ``--workers`` (/proc/PID/stat), and the packets are
Δ``livekit_packet_total{direction="outgoing"}`` (original + retransmit) from its /metrics. It
prints, per N: forwarded and ingress pps, SFU CPU % of one core, **µs of SFU CPU per forwarded
packet** (gross, and net of the idle baseline's CPU rate), the subscribers' loss (sequence gaps
per SSRC) and what the load generators and the rest of the machine used. The last line of stdout
is one JSON object with everything. Nothing is asserted.

A fresh SFU per N keeps the scenarios independent (no leftover participants, rooms, garbage or
warmed-up allocator state from the previous N) and lets each N have its own idle baseline.

    .venv/bin/python benchmarks/forward_cpu.py --subscribers 10 50 --duration 20

``--workers 1 2`` runs each N once per ``rtc.workers`` (interleaved): the CPU of every SFU
process per forwarded packet, one process against a control process and two media workers.

``--profile py-spy`` records the SFU with py-spy during the load window (needs a ``py-spy``
binary: PATH or ``--py-spy``) and prints the hottest functions; ``--profile cprofile`` runs the
SFU under ``python -m cProfile`` instead. Either inflates the CPU figures of that run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import math
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.harness` lives beside the installed packages

import httpx  # noqa: E402

from tests.harness.pooled_publisher import PooledPublisher  # noqa: E402
from tests.harness.process import spawn_piped  # noqa: E402
from tests.harness.sfu import SFU_COMMAND, SfuInstance, running_sfu, stop_process  # noqa: E402

SUBSCRIBER_WORKER = Path(__file__).resolve().parent / "lk_subscriber.py"
ROOM = "forward-cpu"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPLY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 20.0


# -- measurements -------------------------------------------------------------------------------
def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/PID/stat."""
    return sum(proc_user_sys_s(pid))


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the SFU and its media worker processes)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry}/stat") as f,
            ):
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry))
    return pids


def tree_cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds (utime+stime) of each SFU process: ``control`` (``pid``, the whole SFU with
    one worker) and ``worker<i>`` for each media worker child (its ``--index``)."""
    out: dict[str, float] = {}
    for member in process_tree(pid):
        role = "control"
        if member != pid:
            with contextlib.suppress(OSError), open(f"/proc/{member}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            role = "other"
            if b"--index" in argv:
                role = "worker" + argv[argv.index(b"--index") + 1].decode()
        with contextlib.suppress(OSError):
            out[role] = out.get(role, 0.0) + proc_cpu_s(member)
    return out


def tree_user_sys_s(pid: int) -> tuple[float, float]:
    """(utime, stime) summed over ``process_tree(pid)``."""
    user = system = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            u, s = proc_user_sys_s(member)
            user, system = user + u, system + s
    return user, system


def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_sched_s(pid: int) -> float:
    """Run time of all threads of a process in seconds (ns resolution), from schedstat."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def proc_switches(pid: int) -> int:
    """Context switches of all threads of a process (voluntary ones are mostly wake-ups)."""
    total = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def host_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # guest time is already inside user/nice
    return busy / CLK_TCK


def sfu_tree() -> dict[str, str]:
    """Which SFU code ran: the commit, and a digest of sfu/**/*.py as they are on disk now."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "sfu").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {"commit": head or "?", "sfu_py_sha256": digest.hexdigest()[:16]}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def parse_metrics(text: str) -> dict[str, float]:
    """The SFU's Prometheus text → {"name{label=value,...}": value} for the lines we use."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(("livekit_", "sfu_send_", "sfu_worker_")):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("sfu_worker_"):  # per worker: keep its label
            out[name] = float(value)
            continue
        if "{" in name:
            base, labels = name[:-1].split("{", 1)
            keep = sorted(
                p for p in labels.split(",") if p.startswith(("direction=", "transmission=", "le="))
            )
            name = base + ("{" + ",".join(keep) + "}" if keep else "")
        out[name] = out.get(name, 0.0) + float(value)
    return out


@dataclass
class Snapshot:
    at: float
    sfu_cpu_s: float
    sfu_sys_s: float
    sfu_sched_s: float
    sfu_switches: int
    by_role: dict[str, float]
    pub_cpu_s: float
    workers_cpu_s: float
    host_busy_s: float
    metrics: dict[str, float]
    clients: dict[str, Any]
    loadavg: str

    def metric(self, key: str) -> float:
        return self.metrics.get(key, 0.0)

    @property
    def packets_out(self) -> float:
        return self.metric(
            'livekit_packet_total{direction="outgoing",transmission="original"}'
        ) + self.metric('livekit_packet_total{direction="outgoing",transmission="retransmit"}')

    @property
    def packets_in(self) -> float:
        return self.metric('livekit_packet_total{direction="incoming",transmission="original"}')


def window(name: str, a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """Rates and per-packet cost between two snapshots."""
    dt = b.at - a.at
    cpu = b.sfu_cpu_s - a.sfu_cpu_s
    sched = b.sfu_sched_s - a.sfu_sched_s
    out = b.packets_out - a.packets_out
    received = b.clients["received"] - a.clients["received"]
    expected = b.clients["expected"] - a.clients["expected"]
    gen = (b.pub_cpu_s - a.pub_cpu_s) + (b.workers_cpu_s - a.workers_cpu_s)
    host = b.host_busy_s - a.host_busy_s
    return {
        "window": name,
        "seconds": round(dt, 3),
        "sfu_cpu_s": round(cpu, 3),
        "sfu_cpu_pct": round(100 * cpu / dt, 2),
        "packets_out": int(out),
        "fwd_pps": round(out / dt, 1),
        "ingress_pps": round((b.packets_in - a.packets_in) / dt, 1),
        "retransmits": int(
            b.metric('livekit_packet_total{direction="outgoing",transmission="retransmit"}')
            - a.metric('livekit_packet_total{direction="outgoing",transmission="retransmit"}')
        ),
        "egress_mbps": round(
            8e-6
            * (
                b.metric('livekit_packet_bytes_total{direction="outgoing",transmission="original"}')
                - a.metric(
                    'livekit_packet_bytes_total{direction="outgoing",transmission="original"}'
                )
            )
            / dt,
            2,
        ),
        "us_per_packet": round(1e6 * cpu / out, 2) if out > 0 else None,
        # per packet the subscribers counted: media workers report their packets to /metrics
        # once a second, so the SFU's own count lags a window's edges by up to that much
        "us_per_client_packet": round(1e6 * cpu / (b.clients["packets"] - a.clients["packets"]), 2)
        if b.clients["packets"] > a.clients["packets"]
        else None,
        "sfu_sys_share_pct": round(100 * (b.sfu_sys_s - a.sfu_sys_s) / cpu, 1) if cpu else None,
        "sfu_sched_pct": round(100 * sched / dt, 2),
        "sfu_switches_per_s": round((b.sfu_switches - a.sfu_switches) / dt, 1),
        "us_per_packet_sched": round(1e6 * sched / out, 2) if out > 0 else None,
        "client_packets": int(b.clients["packets"] - a.clients["packets"]),
        "client_loss_pct": round(100 * (1 - received / expected), 3) if expected > 0 else None,
        "delivered_pct": round(100 * (b.clients["packets"] - a.clients["packets"]) / out, 2)
        if out > 0
        else None,
        "sfu_dropped": int(
            b.metric("livekit_packet_dropped_total") - a.metric("livekit_packet_dropped_total")
        ),
        **send_path(a, b),
        **worker_split(a, b),
        # each SFU process's share of the SFU's CPU (control process, media workers)
        "sfu_cpu_share_pct": {
            role: round(100 * (b.by_role[role] - a.by_role.get(role, 0.0)) / cpu, 1)
            for role in sorted(b.by_role)
        }
        if cpu > 0
        else {},
        "publisher_cpu_pct": round(100 * (b.pub_cpu_s - a.pub_cpu_s) / dt, 1),
        "subscribers_cpu_pct": round(100 * (b.workers_cpu_s - a.workers_cpu_s) / dt, 1),
        "others_cpu_pct": round(100 * (host - cpu - gen) / dt, 1),
        "loadavg": [a.loadavg, b.loadavg],
    }


def worker_split(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """With rtc.workers > 1: participants per worker at the window's end, frames relayed
    between workers per second and per forwarded packet (how placement split the room)."""
    held = {
        k.split('worker="')[1].split('"')[0]: int(v)
        for k, v in b.metrics.items()
        if k.startswith("sfu_worker_participants{")
    }
    if not held:
        return {}
    relayed = sum(
        v - a.metric(k) for k, v in b.metrics.items() if k.startswith("sfu_worker_relay_sent_total")
    )
    out = b.packets_out - a.packets_out
    return {
        "worker_participants": held,
        "relay_frames_per_s": round(relayed / (b.at - a.at), 1),
        "relay_frames_per_forwarded": round(relayed / out, 4) if out > 0 else None,
    }


def send_path(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """The batched send path's figures (rtc.send_mode gso/batch): datagrams per socket flush,
    per system call, per GSO send, and the flush-size histogram (bucket upper bound → flushes)."""

    def delta(name: str) -> float:
        return b.metric(name) - a.metric(name)

    flushes = delta("sfu_send_flushes_total")
    datagrams = delta("sfu_send_datagrams_total")
    syscalls = delta("sfu_send_syscalls_total")
    if not flushes:
        return {}
    histogram: dict[str, int] = {}
    below = 0.0
    for key in sorted(
        (k for k in b.metrics if k.startswith("sfu_send_batch_size_bucket")),
        key=lambda k: float(k.split('le="')[1].rstrip('"}')),
    ):
        cumulative = delta(key)
        histogram[key.split('le="')[1].rstrip('"}')] = int(cumulative - below)
        below = cumulative
    return {
        "send_datagrams_per_flush": round(datagrams / flushes, 2),
        "send_datagrams_per_syscall": round(datagrams / syscalls, 2) if syscalls else None,
        "send_gso_share_pct": round(100 * delta("sfu_send_gso_datagrams_total") / datagrams, 1)
        if datagrams
        else None,
        "send_flush_sizes": histogram,
    }


# -- subscriber workers ---------------------------------------------------------------------------
@dataclass
class Worker:
    process: asyncio.subprocess.Process
    log_path: Path
    last: dict[str, Any] = field(default_factory=dict)

    async def request(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), REPLY_TIMEOUT_S)
        if not line:
            raise RuntimeError(f"subscriber worker {self.process.pid} exited; see {self.log_path}")
        self.last = json.loads(line)
        return self.last

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.request("stop"), STOP_TIMEOUT_S)
        await stop_process(self.process, 5.0)


async def start_workers(
    sfu: SfuInstance, n: int, per_worker: int, workdir: Path, max_seconds: float
) -> list[Worker]:
    workers: list[Worker] = []
    groups = math.ceil(n / per_worker)
    for g in range(groups):
        ids = range(g * n // groups, (g + 1) * n // groups)
        log_path = workdir / f"subscribers-{g}.log"
        argv = [sys.executable, str(SUBSCRIBER_WORKER)]
        process = await spawn_piped(argv, cwd=REPO_ROOT, log_path=log_path)
        worker = Worker(process, log_path)
        workers.append(worker)
        setup = {
            "url": sfu.url,
            "max_seconds": max_seconds,
            "subscribers": [
                {"identity": f"sub-{i}", "token": sfu.token(f"sub-{i}", ROOM)} for i in ids
            ],
        }
        assert process.stdin is not None
        process.stdin.write(json.dumps(setup).encode() + b"\n")
        await process.stdin.drain()
    return workers


async def client_totals(workers: list[Worker]) -> dict[str, Any]:
    replies = [await w.request("stats") for w in workers]
    total: dict[str, Any] = {"received": 0, "expected": 0, "errors": [], "by_kind": {}}
    for key in ("subscribers", "joined", "connected", "packets", "octets", "streams", "cpu_s"):
        total[key] = sum(r[key] for r in replies)
    total["gap_examples"] = replies[0]["gap_examples"] if replies else {}
    for r in replies:
        total["errors"] += r["errors"]
        for kind, k in r["by_kind"].items():
            agg = total["by_kind"].setdefault(
                kind, {"streams": 0, "received": 0, "expected": 0, "gaps": 0}
            )
            for key in agg:
                agg[key] += k[key]
            total["received"] += k["received"]
            total["expected"] += k["expected"]
    return total


async def wait_clients(
    workers: list[Worker], what: str, ok: Any, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        totals = await client_totals(workers)
        if ok(totals):
            return totals
        if time.monotonic() > deadline:
            # a figure per N subscribers is only worth something with N subscribers: stop
            raise RuntimeError(f"{what} not reached in {timeout_s:.0f} s: {summary(totals)}")
        await asyncio.sleep(0.5)


def summary(t: dict[str, Any]) -> str:
    return (
        f"joined {t['joined']}/{t['subscribers']}, connected {t['connected']}, "
        f"streams {t['streams']}, packets {t['packets']}, errors {t['errors'][:2]}"
    )


# -- the scenario -----------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pin(pid: int, cpus: set[int]) -> None:
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


class Scenario:
    def __init__(
        self,
        args: argparse.Namespace,
        n: int,
        workdir: Path,
        send_mode: str | None = None,
        fast_path: str | None = None,
        workers: int | None = None,
        congestion: str | None = None,
        spill_load: float | None = None,
    ) -> None:
        self.spill_load = spill_load
        self.workers_count = workers
        self.args = args
        self.n = n
        self.send_mode = send_mode
        self.fast_path = fast_path
        self.congestion = congestion
        self.workdir = workdir
        self.sfu: SfuInstance | None = None
        self.workers: list[Worker] = []
        self.http = httpx.AsyncClient(timeout=5.0)
        self.profile_out: Path | None = None

    async def snapshot(self) -> Snapshot:
        assert self.sfu is not None
        clients = await client_totals(self.workers)
        response = await self.http.get(self.sfu.metrics_url)
        return Snapshot(
            at=time.monotonic(),
            sfu_cpu_s=sum(user_sys := tree_user_sys_s(self.sfu.pid)),
            sfu_sys_s=user_sys[1],
            sfu_sched_s=proc_sched_s(self.sfu.pid),
            sfu_switches=proc_switches(self.sfu.pid),
            by_role=tree_cpu_by_role(self.sfu.pid),
            pub_cpu_s=sum(os.times()[:2]),
            workers_cpu_s=sum(proc_cpu_s(w.process.pid) for w in self.workers),
            host_busy_s=host_busy_s(),
            metrics=parse_metrics(response.text),
            clients=clients,
            loadavg=loadavg(),
        )

    async def measure(self, name: str, seconds: float) -> dict[str, Any]:
        a = await self.snapshot()
        await asyncio.sleep(seconds)
        b = await self.snapshot()
        result = window(name, a, b)
        log(
            f"  {name:7s} {result['seconds']:5.1f} s: SFU {result['sfu_cpu_pct']:5.1f} % CPU, "
            f"{result['fwd_pps']:8.0f} fwd pps, {result['ingress_pps']:5.0f} in pps, "
            f"{result['us_per_packet'] or 0:6.2f} µs/pkt, loss {result['client_loss_pct']} %, "
            f"load {b.loadavg}"
            + (
                f", workers {result['worker_participants']}, "
                f"{result['relay_frames_per_s']:.0f} relayed frames/s, "
                f"CPU shares % {result['sfu_cpu_share_pct']}"
                if "worker_participants" in result
                else ""
            )
        )
        return result

    def sfu_command(self) -> tuple[str, ...]:
        if self.args.profile == "cprofile":
            self.profile_out = self.workdir / "sfu.cprofile"
            wrapper = str(Path(__file__).resolve().parent / "sfu_cprofile.py")
            return (sys.executable, wrapper, str(self.profile_out), "--config", "{config}")
        return SFU_COMMAND

    def rtc_config(self) -> dict[str, Any]:
        rtc: dict[str, Any] = {}
        if self.send_mode:
            rtc["send_mode"] = self.send_mode
        if self.fast_path:
            rtc["fast_path"] = self.fast_path
        if self.workers_count:
            rtc["workers"] = self.workers_count
        if self.spill_load is not None:
            rtc["worker_spill_load"] = self.spill_load
        if self.congestion:
            rtc["congestion_control"] = self.congestion == "on"
        if self.args.udp_port:
            rtc["udp_port"] = self.args.udp_port
        return rtc

    async def run(self) -> dict[str, Any]:
        args, n = self.args, self.n
        tracks = 1 if args.no_audio else 2
        # "send_mode" labels the run's variant: the send mode, and the fast path when chosen
        label = self.send_mode or "default"
        if self.fast_path:
            label += f" fp={self.fast_path}"
        if self.workers_count:
            label += f" w={self.workers_count}"
        if self.congestion:
            label += f" cc={self.congestion}"
        if self.spill_load is not None:
            label += f" spill={self.spill_load:g}"
        result: dict[str, Any] = {
            "subscribers": n,
            "send_mode": label,
            "fast_path": self.fast_path or "default",
            "congestion_control": self.congestion or "default",
        }
        async with running_sfu(
            self.workdir / "sfu",
            log_level="warn",
            # admission off: the benchmark measures the SFU however loaded the machine is
            extra_config={"rtc": self.rtc_config(), "limits": {"max_cpu_load": 0}},
            command=self.sfu_command(),
            rtc_ports=max(100, 2 * n + 20),
            startup_timeout_s=30.0,
        ) as sfu:
            self.sfu = sfu
            if args.pin:
                pin(sfu.pid, {0})
            log(f"N={n}, send mode {result['send_mode']}: SFU pid {sfu.pid} on {sfu.url}")
            publisher = PooledPublisher(
                "publisher",
                pool=int(args.fps),
                width=args.width,
                height=args.height,
                fps=args.fps,
                simulcast=args.simulcast,
                max_bitrate=args.max_bitrate,
            )
            py_spy: asyncio.subprocess.Process | None = None
            try:
                budget = args.idle * 2 + args.warmup + args.duration + 120 + n
                self.workers = await start_workers(sfu, n, args.per_worker, self.workdir, budget)
                if args.pin:
                    for w in self.workers:
                        pin(w.process.pid, self.other_cpus())
                    pin(os.getpid(), self.other_cpus())
                totals = await wait_clients(
                    self.workers,
                    "all subscribers connected",
                    lambda t: t["connected"] == n,
                    30.0 + 0.5 * n,
                )
                log(f"  subscribers: {summary(totals)}")
                await asyncio.wait_for(
                    publisher.connect(sfu.url, sfu.token("publisher", ROOM)), 30.0
                )
                await asyncio.sleep(2.0)
                result["idle"] = await self.measure("idle", args.idle)

                await publisher.publish(video=True, audio=not args.no_audio, timeout_s=30.0)
                totals = await wait_clients(
                    self.workers,
                    "every subscriber receiving every track",
                    lambda t: t["streams"] >= n * tracks,
                    30.0 + 0.5 * n,
                )
                log(f"  media flowing: {summary(totals)}; warming up {args.warmup:.0f} s")
                await asyncio.sleep(args.warmup)
                if args.profile == "py-spy":
                    py_spy = await self.start_py_spy(sfu.pid, args.duration)
                result["load"] = await self.measure("load", args.duration)
                if py_spy is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(py_spy.wait(), 30.0)

                # Pause the video (the encoder gets no frames and sends nothing); the tracks
                # stay published and subscribed, and the audio, if any, keeps flowing.
                publisher.video_paused = True
                await asyncio.sleep(3.0)
                result["paused"] = await self.measure("paused", args.idle)
                result["clients"] = await client_totals(self.workers)
            finally:
                if py_spy is not None and py_spy.returncode is None:
                    await stop_process(py_spy, 5.0)
                await publisher.leave()
                await asyncio.gather(*(w.stop() for w in self.workers))
        self.derive(result)
        return result

    def other_cpus(self) -> set[int]:
        cpus = os.sched_getaffinity(0) - {0}
        return cpus or {0}

    async def start_py_spy(self, pid: int, seconds: float) -> asyncio.subprocess.Process | None:
        binary = self.args.py_spy or shutil.which("py-spy")
        if binary is None:
            log("  ! --profile py-spy: no py-spy binary (PATH or --py-spy); not profiling")
            return None
        self.profile_out = self.workdir / "sfu.py-spy.txt"
        return await asyncio.create_subprocess_exec(
            binary, "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--rate", "250", "--format", "raw",
            # native stacks need the process paused while sampled
            *(("--native",) if self.args.native else ("--nonblocking",)),
            "--output", str(self.profile_out),
            # with media workers: their samples too (each stack starts with its process)
            *(["--subprocesses"] if (self.workers_count or 1) > 1 else []),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    @staticmethod
    def derive(result: dict[str, Any]) -> None:
        """µs per forwarded packet net of the idle window's CPU rate, for the media windows."""
        idle = result.get("idle")
        if idle is None:
            return
        for name in ("load", "paused"):
            w = result.get(name)
            if w and w["packets_out"]:
                idle_cpu = idle["sfu_cpu_pct"] / 100 * w["seconds"]
                w["us_per_packet_net"] = round(
                    1e6 * (w["sfu_cpu_s"] - idle_cpu) / w["packets_out"], 2
                )


# -- profile summaries ---------------------------------------------------------------------------
def summarise_py_spy(path: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";")]
        frames = [f.replace(str(REPO_ROOT) + "/", "") for f in frames]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "(no samples)"
    lines = [f"py-spy: {total} samples of the SFU during the load window", "self %  function"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in own.most_common(top)]
    lines += ["incl %  function"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines)


def summarise_cprofile(path: Path, top: int) -> str:
    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return buffer.getvalue()


# -- output -----------------------------------------------------------------------------------------
COLUMNS = (
    ("N", "subscribers", "{:>4}"),
    ("send", "send_mode", "{:>9}"),
    ("window", "window", "{:>6}"),
    ("s", "seconds", "{:>4.0f}"),
    ("fwd pps", "fwd_pps", "{:>7.0f}"),
    ("in pps", "ingress_pps", "{:>6.0f}"),
    ("Mbit/s out", "egress_mbps", "{:>6.1f}"),
    ("SFU CPU %", "sfu_cpu_pct", "{:>5.1f}"),
    ("µs/pkt", "us_per_packet", "{:>6.1f}"),
    ("µs/pkt sched", "us_per_packet_sched", "{:>6.1f}"),
    ("µs/pkt net", "us_per_packet_net", "{:>6.1f}"),
    ("sys %", "sfu_sys_share_pct", "{:>5.1f}"),
    ("loss %", "client_loss_pct", "{:>5.2f}"),
    ("delivered %", "delivered_pct", "{:>5.1f}"),
    ("pub CPU %", "publisher_cpu_pct", "{:>5.1f}"),
    ("subs CPU %", "subscribers_cpu_pct", "{:>5.1f}"),
    ("others CPU %", "others_cpu_pct", "{:>5.1f}"),
)
WINDOWS = ("idle", "load", "paused")


def table(results: list[dict[str, Any]]) -> str:
    widths = [max(len(name), len(fmt.format(0 if "f" in fmt else ""))) for name, _, fmt in COLUMNS]
    rows = ["  ".join(name.rjust(w) for (name, _, _), w in zip(COLUMNS, widths, strict=True))]
    for r in results:
        for window_name in WINDOWS:
            if window_name not in r:
                continue
            values = {
                **r[window_name],
                "subscribers": r["subscribers"],
                "send_mode": r.get("send_mode", "default"),
            }
            if window_name == "idle":  # no packets: per-packet columns are meaningless
                values = {k: v for k, v in values.items() if "packet" not in k}
            cells = []
            for (_, key, fmt), w in zip(COLUMNS, widths, strict=True):
                value = values.get(key)
                cells.append(("-" if value is None else fmt.format(value).strip()).rjust(w))
            rows.append("  ".join(cells))
    return "\n".join(rows)


def marginal(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFU CPU per extra forwarded packet between consecutive N: the slope, free of fixed costs.

    Fixed costs (timers, and the per-wake-up and per-received-packet work, which do not grow
    with N) cancel out; what is left is the cost of one more copy sent.
    """
    out = []
    modes = sorted({r.get("send_mode", "default") for r in results})
    for mode in modes:
        # per N, over the rounds: (CPU s per s, forwarded packets per s)
        by_n: dict[int, list[tuple[float, float]]] = {}
        for r in results:
            if r.get("load") and r.get("send_mode", "default") == mode:
                w = r["load"]
                by_n.setdefault(r["subscribers"], []).append(
                    (w["sfu_cpu_s"] / w["seconds"], w["fwd_pps"])
                )
        loads = [
            (n, sum(c for c, _ in v) / len(v), sum(p for _, p in v) / len(v))
            for n, v in sorted(by_n.items())
        ]
        for (n_a, cpu_a, pps_a), (n_b, cpu_b, pps_b) in itertools.pairwise(loads):
            d_pps = pps_b - pps_a
            if d_pps > 0:
                d_cpu = cpu_b - cpu_a
                out.append(
                    {
                        "send_mode": mode,
                        "from": n_a,
                        "to": n_b,
                        "us_per_extra_packet": round(1e6 * d_cpu / d_pps, 2),
                    }
                )
    return out


def gap_summary(result: dict[str, Any]) -> str:
    clients = result.get("clients") or {}
    parts = [
        f"{kind}: {k['gaps']} gaps, {k['expected'] - k['received']} packets missing "
        f"in {k['streams']} streams"
        for kind, k in clients.get("by_kind", {}).items()
    ]
    examples = "; ".join(
        f"{stream} {gaps}" for stream, gaps in clients.get("gap_examples", {}).items() if gaps
    )
    return (
        f"N={result['subscribers']} {result.get('send_mode', 'default')}: sequence gaps seen by subscribers since they joined: "
        + (", ".join(parts) or "none")
        + (
            f" (first subscriber, [packets before, missing, ms into stream]: {examples})"
            if examples
            else ""
        )
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[10, 50], metavar="N")
    parser.add_argument("--duration", type=float, default=20.0, help="load window, s")
    parser.add_argument("--idle", type=float, default=10.0, help="idle and paused windows, s")
    parser.add_argument("--warmup", type=float, default=8.0, help="s of media before measuring")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--max-bitrate", type=int, default=2_000_000, help="video, bit/s")
    parser.add_argument("--simulcast", action="store_true", help="publish 3 layers (default 1)")
    parser.add_argument("--no-audio", action="store_true", help="publish video only")
    parser.add_argument("--per-worker", type=int, default=25, help="subscribers per process")
    parser.add_argument("--pin", action="store_true", help="SFU on CPU 0, load generators off it")
    parser.add_argument(
        "--udp-port", type=int, default=0, help="run the SFU in single-port mode (rtc.udp_port)"
    )
    parser.add_argument(
        "--send-modes",
        nargs="+",
        choices=("gso", "batch", "immediate"),
        help="run each N once per rtc.send_mode, interleaved (default: the SFU's default only)",
    )
    parser.add_argument(
        "--fast-paths",
        nargs="+",
        choices=("auto", "off"),
        help="run each N (and send mode) once per rtc.fast_path, interleaved (default: the "
        "SFU's default only)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help="run each N once per rtc.workers, interleaved (default: the SFU's default only)",
    )
    parser.add_argument(
        "--spill-load",
        type=float,
        nargs="+",
        help="rtc.worker_spill_load; with several, each rtc.workers > 1 run once per value, "
        "interleaved (0: placement by load alone, the room split over the workers; 4: the room "
        "kept on one worker; default: the SFU's, which keeps a room on one worker until it is "
        "busy, though a burst of joins may split it)",
    )
    parser.add_argument(
        "--congestion-control",
        nargs="+",
        choices=("on", "off"),
        help="run each N (send mode, fast path) once per rtc.congestion_control, interleaved: "
        "the per-packet cost of stamping transport-wide sequence numbers and estimating",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the whole N × send-mode sequence"
    )
    parser.add_argument("--profile", choices=("none", "py-spy", "cprofile"), default="none")
    parser.add_argument("--py-spy", help="path of the py-spy binary (default: from PATH)")
    parser.add_argument(
        "--native", action="store_true", help="py-spy: also sample C frames (the extensions')"
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if min(args.subscribers) < 1 or args.per_worker < 1 or args.rounds < 1:
        parser.error("N and --per-worker must be at least 1")
    if args.duration <= 0 or args.idle <= 0 or args.warmup < 0 or args.fps <= 0:
        parser.error("durations and --fps must be positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="forward_cpu-"))
    output: dict[str, Any] = {
        "benchmark": "forward_cpu",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "sfu_tree": sfu_tree(),
        "loadavg_start": loadavg(),
        "results": [],
        "profiles": [],
    }
    log(f"work directory {workdir}; load average {loadavg()}")
    try:
        runs = [
            (n, mode, fast, workers, spill, cc)
            for _ in range(args.rounds)
            for n in args.subscribers
            for mode in args.send_modes or [None]
            for fast in args.fast_paths or [None]
            for workers in args.workers or [None]
            # placement only matters with more than one worker
            for spill in (args.spill_load if (workers or 1) > 1 and args.spill_load else [None])
            for cc in args.congestion_control or [None]
        ]
        for i, (n, mode, fast, workers, spill, cc) in enumerate(runs):
            name = (
                f"run{i}-n{n}-{mode or 'default'}-{fast or 'default'}-w{workers or 0}"
                f"-s{spill}-{cc or 'default'}"
            )
            scenario = Scenario(args, n, workdir / name, mode, fast, workers, cc, spill)
            # The harness prints the SFU's log tail on stop: keep stdout for the results.
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    result = await scenario.run()
                finally:
                    await scenario.http.aclose()
            output["results"].append(result)
            path = scenario.profile_out
            if path is not None and path.exists():
                text = (
                    summarise_cprofile(path, args.top)
                    if args.profile == "cprofile"
                    else summarise_py_spy(path, args.top)
                )
                output["profiles"].append(
                    {"subscribers": n, "send_mode": mode, "file": str(path), "summary": text}
                )
    finally:
        output["loadavg_end"] = loadavg()
        if args.keep or args.profile != "none":
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return output


def main() -> None:
    args = parse_args()
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(run(args))
    # Ctrl-C or SIGTERM: cancel the run, so every `finally` stops what it started (by PID).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    try:
        output = loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        log("interrupted; everything started was stopped")
        sys.exit(130)
    finally:
        loop.close()
    for profile in output["profiles"]:
        print(f"\n--- profile, N={profile['subscribers']} ({profile['file']}) ---")
        print(profile["summary"])
    print(
        f"\nforward_cpu: 1 publisher ({args.width}x{args.height}@{args.fps:g} VP8, max "
        f"{args.max_bitrate / 1e6:g} Mbit/s, simulcast {'on' if args.simulcast else 'off'}, "
        f"audio {'off' if args.no_audio else 'on'}) → N subscribers; {args.duration:g} s load "
        f"window; load average {output['loadavg_start']} → {output['loadavg_end']}; SFU code "
        f"{output['sfu_tree']['commit']} + sfu/*.py sha256 {output['sfu_tree']['sfu_py_sha256']}"
    )
    print(table(output["results"]))
    print(
        "idle: all connected, nothing published. load: the published tracks flow. paused: video "
        "feed stopped (tracks stay up; audio, if on, flows). µs/pkt: SFU CPU (utime+stime) per "
        "forwarded packet; net: minus the idle window's CPU rate. loss: subscribers' sequence gaps; "
        "delivered: packets subscribers counted / packets the SFU counted as sent."
    )
    output["marginal"] = marginal(output["results"])
    for m in output["marginal"]:
        print(
            f"marginal SFU CPU per extra forwarded packet, send mode {m['send_mode']}, "
            f"N={m['from']}→{m['to']}: "
            f"{m['us_per_extra_packet']:.1f} µs"
        )
    for result in output["results"]:
        print(gap_summary(result))
    for result in output["results"]:
        load = result.get("load") or {}
        if "send_datagrams_per_flush" in load:
            print(
                f"send path, N={result['subscribers']} {result['send_mode']}: "
                f"{load['send_datagrams_per_flush']} datagrams per socket flush, "
                f"{load['send_datagrams_per_syscall']} per syscall, "
                f"{load['send_gso_share_pct']} % in GSO sends; flushes by size (≤ bound): "
                f"{load['send_flush_sizes']}"
            )
    line = json.dumps(output, separators=(",", ":"))
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
