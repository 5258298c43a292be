"""The stage of the hostile-client suites (`tests/integration/test_hostile*.py`).

One SFU process and one LiveKit Python SDK call (alice publishes video + audio, bob receives) per
test module; `run_attack` lets a third party run one attack of `loadtest.hostile` and measures
what the node went through: `/healthz` polled every 50 ms from a separate process, the SFU's RSS,
CPU and descriptors (with its media worker processes, `rtc.workers`, added in), its log, bob's
loss and frames. A watchdog cancels an attack that pushes RSS past
`ABORT_RSS_MB`, and a stage that did not survive is rebuilt before the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from livekit import rtc as lk

from loadtest import hostile
from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher
from tests.harness.sfu import SfuInstance, running_sfu

ROOM = "hostile"
MAX_HEALTHZ_MS = 100.0
DEFAULT_RSS_MB = 50.0
ABORT_RSS_MB = 400.0
FD_SLACK = 5
MAX_LOSS_PCT = 1.0
FRAMES_AFTER = 10
WAIT_S = 20.0

PROBE = r"""
import http.client, json, select, sys, time
port, pid, period = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
latencies, failures, peak = [], 0, 0
def rss_kb():
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
print("ready", flush=True)
while not select.select([sys.stdin], [], [], 0)[0]:
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
    except Exception:
        ok = False
    latencies.append((time.perf_counter() - t0) * 1000)
    failures += not ok
    peak = max(peak, rss_kb())
    time.sleep(max(0.0, period - (time.perf_counter() - t0)))
print(json.dumps({"latencies_ms": latencies, "failures": failures, "peak_rss_kb": peak}))
"""


def node_pids(pid: int) -> list[int]:
    """The SFU process and its children (its media workers, with `rtc.workers` > 1)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def _each(pid: int, read: Callable[[int], float]) -> float:
    """``read`` summed over the node's processes (a worker gone meanwhile counts nothing)."""
    total = read(pid)  # the SFU's own: its absence is an error
    for child in node_pids(pid)[1:]:
        with contextlib.suppress(OSError):
            total += read(child)
    return total


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    return _each(pid, _rss_mb)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the node has used (/proc/PID/stat fields 14 and 15)."""
    return _each(pid, _cpu_seconds)


def fd_count(pid: int) -> int:
    return int(_each(pid, lambda p: len(os.listdir(f"/proc/{p}/fd"))))


async def inbound_counts(room: lk.Room) -> tuple[int, int]:
    """(packets received, packets lost) over every inbound RTP stream of `room`."""
    try:
        stats = await asyncio.wait_for(room.get_rtc_stats(), 5)
    except Exception:
        return 0, 0
    received = lost = 0
    for entry in stats.subscriber_stats:
        if entry.WhichOneof("stats") == "inbound_rtp":
            received += entry.inbound_rtp.received.packets_received
            lost += max(0, entry.inbound_rtp.received.packets_lost)
    return received, lost


@dataclass
class Stage:
    """The node under attack and the call that must survive it."""

    sfu: SfuInstance
    alice: SyntheticPublisher
    bob: CollectingSubscriber
    stack: contextlib.AsyncExitStack
    #: alice's view of active speakers and transcriptions (finding 19)
    speakers_seen: list[list[str]] = field(default_factory=list)
    transcriptions_seen: list[str] = field(default_factory=list)
    #: set by an attack that left the node or the call damaged (the next test rebuilds)
    damaged: bool = False

    def token(self, identity: str, **grants: Any) -> str:
        return self.sfu.token(identity, ROOM, **grants)

    @property
    def video_sid(self) -> str:
        assert self.alice.video_publication is not None
        return self.alice.video_publication.sid

    def frames(self) -> int:
        collector = self.bob.video_from("alice")
        return 0 if collector is None else collector.frames

    async def healthy(self) -> bool:
        if self.sfu.process.returncode is not None or not self.alice.room.isconnected():
            return False
        start = self.frames()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while self.frames() < start + 5:
                    await asyncio.sleep(0.1)
                return True
        return False


async def build_stage(workdir: Path, workers: int = 1) -> Stage:
    """With ``workers`` > 1 the node runs that many media workers and places by load alone
    (`rtc.worker_spill_load: 0`): bob joins the first, alice the second, so the call is
    relayed between them."""
    stack = contextlib.AsyncExitStack()
    extra: dict[str, Any] = {"limits": {"max_cpu_load": 0}}
    if workers > 1:
        extra["rtc"] = {"workers": workers, "worker_spill_load": 0}
    sfu = await stack.enter_async_context(running_sfu(workdir, rtc_ports=300, extra_config=extra))
    alice, bob = SyntheticPublisher("alice"), CollectingSubscriber("bob")
    stack.push_async_callback(alice.leave)
    stack.push_async_callback(bob.leave)
    stage = Stage(sfu, alice, bob, stack)

    @alice.room.on("active_speakers_changed")
    def _speakers(speakers: list[lk.Participant]) -> None:
        stage.speakers_seen.append([p.identity for p in speakers])

    @alice.room.on("transcription_received")
    def _transcription(segments: Any, participant: lk.Participant | None, _pub: Any) -> None:
        stage.transcriptions_seen.append(participant.identity if participant else "")

    await bob.connect(sfu.url, stage.token("bob"), timeout_s=WAIT_S)
    await alice.connect(sfu.url, stage.token("alice"), timeout_s=WAIT_S)
    await alice.publish(timeout_s=WAIT_S)
    await bob.wait_matching_frames("alice", 10, timeout_s=WAIT_S)
    return stage


class StageHolder:
    def __init__(self, workdir: Path, workers: int = 1) -> None:
        self.workdir = workdir
        self.workers = workers
        self.stage: Stage | None = None
        self.builds = 0
        #: the last attack left the node damaged: start the next one on a fresh node
        self.dirty = False

    async def ensure(self) -> Stage:
        if self.stage is not None and not self.dirty and await self.stage.healthy():
            return self.stage
        self.dirty = False
        for attempt in (1, 2):  # a loaded machine may miss one SDK connect deadline
            await self.close()
            self.builds += 1
            try:
                self.stage = await build_stage(self.workdir / f"sfu-{self.builds}", self.workers)
            except TimeoutError:
                if attempt == 2:
                    raise
                continue
            break
        assert self.stage is not None
        return self.stage

    async def close(self) -> None:
        if self.stage is not None:
            stage, self.stage = self.stage, None
            with contextlib.suppress(Exception):
                await stage.stack.aclose()


@contextlib.asynccontextmanager
async def stage_holder(
    tmp_path_factory: pytest.TempPathFactory, workers: int = 1
) -> AsyncIterator[StageHolder]:
    """One node per module (see the module-scoped `holder` fixtures), closed at the end."""
    holder = StageHolder(tmp_path_factory.mktemp("hostile"), workers)
    try:
        yield holder
    finally:
        await holder.close()


@dataclass
class Outcome:
    name: str
    max_healthz_ms: float = 0.0
    probes: int = 0
    probe_failures: int = 0
    rss_delta_mb: float = 0.0
    peak_rss_delta_mb: float = 0.0
    fd_delta: int = 0
    #: the SFU's CPU use while the attack ran, in % of one core
    cpu_pct: float = 0.0
    tracebacks: int = 0
    #: the first traceback's text (its last lines), to name the fault in the failure
    first_traceback: str = ""
    loss_pct: float = 0.0
    frames_after: int = 0
    aborted: str = ""
    error: str = ""
    result: hostile.AttackResult | None = None
    failures: list[str] = field(default_factory=list)
    stage: Stage | None = None

    def require(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)

    def verdict(self, rss_budget_mb: float) -> None:
        """Record the common checks, print the row, fail with every check that did not hold."""
        self.require(not self.error, f"attack raised {self.error}")
        self.require(not self.aborted, f"attack aborted: {self.aborted}")
        self.require(
            self.max_healthz_ms <= MAX_HEALTHZ_MS and self.probe_failures == 0,
            f"/healthz max {self.max_healthz_ms:.0f} ms over {self.probes} probes "
            f"({self.probe_failures} failed), limit {MAX_HEALTHZ_MS:.0f} ms",
        )
        self.require(
            self.rss_delta_mb < rss_budget_mb,
            f"RSS +{self.rss_delta_mb:.1f} MB (peak +{self.peak_rss_delta_mb:.1f}), "
            f"budget {rss_budget_mb:.0f} MB",
        )
        self.require(self.fd_delta <= FD_SLACK, f"FDs +{self.fd_delta} after the attacker left")
        self.require(
            self.tracebacks == 0,
            f"{self.tracebacks} tracebacks in the SFU log, the first:\n{self.first_traceback}",
        )
        self.require(self.loss_pct < MAX_LOSS_PCT, f"call RTP loss {self.loss_pct:.2f} %")
        self.require(
            self.frames_after >= FRAMES_AFTER, f"only {self.frames_after} frames after the attack"
        )
        row = {
            "attack": self.name,
            "pass": not self.failures,
            "healthz_max_ms": round(self.max_healthz_ms, 1),
            "rss_delta_mb": round(self.rss_delta_mb, 1),
            "peak_rss_delta_mb": round(self.peak_rss_delta_mb, 1),
            "fd_delta": self.fd_delta,
            "sfu_cpu_pct": round(self.cpu_pct),
            "tracebacks": self.tracebacks,
            "loss_pct": round(self.loss_pct, 2),
            "sent": self.result.sent if self.result else 0,
            "notes": self.result.notes if self.result else {},
            "responses": dict(self.result.responses) if self.result else {},
            "failures": self.failures,
        }
        if self.stage is not None and self.failures:
            self.stage.damaged = True  # whatever the attack left running, the next test won't see
        print(f"HOSTILE {json.dumps(row, default=str)}")
        path = os.environ.get("HOSTILE_RESULTS")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(row, default=str) + "\n")
        assert not self.failures, f"{self.name}: " + "; ".join(self.failures)


async def start_probe(stage: Stage) -> asyncio.subprocess.Process:
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(stage.sfu.port), str(stage.sfu.pid), "0.05",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert probe.stdout is not None
    await asyncio.wait_for(probe.stdout.readline(), 15)  # "ready"
    return probe


async def stop_probe(probe: asyncio.subprocess.Process) -> dict[str, Any]:
    try:
        out, _ = await asyncio.wait_for(probe.communicate(b"stop\n"), 15)
    except TimeoutError:
        probe.kill()
        out, _ = await probe.communicate()
    lines = out.decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else {"latencies_ms": [], "failures": 1}


async def run_attack(
    stage: Stage,
    name: str,
    attack: Callable[[], Awaitable[hostile.AttackResult]],
    *,
    rss_budget_mb: float = DEFAULT_RSS_MB,
    settle_s: float = 1.5,
    timeout_s: float = 60.0,
) -> Outcome:
    """Run one attack under measurement; the returned Outcome holds the common checks."""
    sfu = stage.sfu
    outcome = Outcome(name, stage=stage)
    rss0, fds0 = rss_mb(sfu.pid), fd_count(sfu.pid)
    log_offset = sfu.log_path.stat().st_size
    received0, lost0 = await inbound_counts(stage.bob.room)
    probe = await start_probe(stage)
    cpu0, started = cpu_seconds(sfu.pid), time.monotonic()
    task = asyncio.ensure_future(attack())
    deadline = time.monotonic() + timeout_s
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if sfu.process.returncode is not None:
            outcome.aborted = f"SFU exited with {sfu.process.returncode}"
        elif rss_mb(sfu.pid) > rss0 + ABORT_RSS_MB:
            outcome.aborted = f"RSS passed +{ABORT_RSS_MB:.0f} MB"
        elif time.monotonic() > deadline:
            outcome.aborted = f"still running after {timeout_s:.0f} s"
        if outcome.aborted and not task.done():
            task.cancel()
    if sfu.process.returncode is None:
        busy = cpu_seconds(sfu.pid) - cpu0
        outcome.cpu_pct = 100.0 * busy / max(time.monotonic() - started, 1e-3)
    try:
        outcome.result = await task
    except asyncio.CancelledError:
        pass
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    frames_end = stage.frames()
    await asyncio.sleep(settle_s)
    probed = await stop_probe(probe)
    latencies = probed["latencies_ms"]
    outcome.probes = len(latencies)
    outcome.max_healthz_ms = max(latencies, default=float("inf"))
    outcome.probe_failures = probed["failures"]
    outcome.peak_rss_delta_mb = probed.get("peak_rss_kb", 0) / 1024 - rss0
    if sfu.process.returncode is None:
        outcome.rss_delta_mb = rss_mb(sfu.pid) - rss0
        outcome.fd_delta = fd_count(sfu.pid) - fds0
    log = sfu.log_path.read_bytes()[log_offset:].decode(errors="replace")
    outcome.tracebacks = log.count("Traceback (most recent call last)")
    if outcome.tracebacks:
        at = log.index("Traceback (most recent call last)")
        before = log.rfind("\n", 0, max(0, log.rfind("\n", 0, at)))  # the line logging it
        outcome.first_traceback = log[before + 1 : at + 4000]
    received1, lost1 = await inbound_counts(stage.bob.room)
    got, lost = received1 - received0, lost1 - lost0
    outcome.loss_pct = 100.0 * lost / (got + lost) if got + lost > 0 else 100.0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while stage.frames() < frames_end + FRAMES_AFTER:
                await asyncio.sleep(0.1)
    outcome.frames_after = stage.frames() - frames_end
    stage.damaged = bool(
        outcome.aborted
        or outcome.error
        or outcome.max_healthz_ms > 1000
        or outcome.rss_delta_mb > 2 * rss_budget_mb
        or outcome.frames_after < FRAMES_AFTER
    )
    return outcome
