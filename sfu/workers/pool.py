"""The media worker processes of one node: starting them, the control channel to each,
placement, restarts, and their numbers for /metrics.

Worker ``i`` is ``python -m sfu.media.worker`` with its end of a Unix stream socket pair; with
``rtc.udp_port`` P it serves ICE and media on UDP port P + i.

Placement keeps a room on one worker while it can: relaying a publisher's packets to a second
worker costs about as much as forwarding them once more, which in a call of 2-5 is a large part
of the whole fan-out, and buys nothing while one worker has room. A worker's *load* is the
larger of its CPU share over the last second and its forwarded packets per second over
`PACKETS_PER_CORE` (what a core forwards here; a CPU sample alone misses a worker the kernel
starves), plus a tenth of a core for each participant placed since that report (a burst of
joins counts before the next report shows it), plus a little per participant held (ties go to
the emptier worker). A participant joins its room's *home*, the live worker holding most of the
room, while the home's load is below ``rtc.worker_spill_load``; a new room, a room whose home
is that busy (a large room's fan-out shows there), or any room with ``rtc.worker_spill_load``
0 goes to the least-loaded live worker. A worker that dies is started again
at once; the participants it held are told (`RemoteMedia.on_lost`) and the rest of each of
their rooms keeps its call. The control process's own death takes the workers with it
(``PR_SET_PDEATHSIG`` and end of file on the channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sfu.config import RtcConfig
from sfu.media.transport import TransportConfig
from sfu.media.worker.wire import REQUEST_TIMEOUT, Channel, ChannelClosed, Message, open_channel
from sfu.metrics import COUNTERS, Counters, add_counters
from sfu.workers.proxies import (
    RemoteBandwidth,
    RemoteDownTrack,
    RemoteMedia,
    RemotePeer,
    RemoteReceiver,
)

log = logging.getLogger(__name__)

START_TIMEOUT = 20.0
RESTART_DELAY = 0.5
#: load a participant placed on a worker adds until the worker's next stats show it (its
#: ICE/DTLS handshakes cost about a tenth of a core-second)
JOIN_LOAD = 0.1
#: seconds past its once-a-second stats after which a worker counts as late: its loop is at
#: least that far behind, whatever its last report said (a stuck worker reports nothing)
STATS_LATE = 2.0
#: load per participant held: breaks ties between idle workers toward the emptier one
PARTICIPANT_LOAD = 0.001
#: forwarded packets per second that keep a worker's core busy (≈ 50,000 in the 500 preset on
#: the development VM, README), to read a packet rate as a load
PACKETS_PER_CORE = 50_000.0


@dataclass(eq=False)
class WorkerLink:
    """The control process's end of one worker (the same object across restarts; its
    ``generation`` counts them)."""

    index: int
    generation: int = 0
    alive: bool = False
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    restarts: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    stats_at: float = 0.0  # when they came (monotonic; 0: none yet)
    placed: int = 0  # participants placed since the last stats
    packet_rate: float = 0.0  # forwarded packets per second between its last two stats
    #: the worker's `Counters` as it last reported them; a restarted worker adds to what
    #: the processes before it counted (`retired`), so the node's totals never go back
    counters: dict[str, Any] = field(default_factory=dict)
    retired: Counters = field(default_factory=Counters)
    retired_cpu_s: float = 0.0  # CPU seconds of its processes before the current one
    peers: dict[int, RemotePeer] = field(default_factory=dict)
    receivers: dict[int, RemoteReceiver] = field(default_factory=dict)
    downtracks: dict[int, RemoteDownTrack] = field(default_factory=dict)
    media: set[RemoteMedia] = field(default_factory=set)
    #: participant part -> its subscriber link, for the worker's estimate reports
    bandwidths: dict[int, RemoteBandwidth] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, message: Message) -> None:
        if self.channel is not None and self.alive:
            with contextlib.suppress(ChannelClosed):
                self.channel.send(message)

    async def request(self, message: Message, wait_s: float = REQUEST_TIMEOUT) -> Any:
        if self.channel is None or not self.alive:
            raise ChannelClosed(f"media worker {self.index} is not running")
        return await self.channel.request(message, wait_s)

    @property
    def latency_p99(self) -> float:
        """The p99 of its forwarding latency, last 3 s, as it last reported, or how late its
        report is past `STATS_LATE` if that is more (0 while it is not up)."""
        if not self.alive:
            return 0.0
        reported = float(self.stats.get("latency_p99", 0.0))
        late = time.monotonic() - self.stats_at - STATS_LATE if self.stats_at else 0.0
        return max(reported, late)

    @property
    def load(self) -> float:
        """The share of a core this worker is busy, measured, plus its joins in progress."""
        measured = max(float(self.stats.get("cpu", 0.0)), self.packet_rate / PACKETS_PER_CORE)
        return measured + JOIN_LOAD * self.placed + PARTICIPANT_LOAD * len(self.media)

    def holds(self, room: str) -> int:
        """How many participants of ``room`` this worker holds."""
        return sum(1 for media in self.media if media.room == room)

    def _note_stats(self, message: Message) -> None:
        now = time.monotonic()
        previous = int(self.stats.get("packets_out", 0))
        packets = int(message.get("packets_out", 0))
        elapsed = now - self.stats_at
        if self.stats and packets >= previous and elapsed > 0:
            self.packet_rate = (packets - previous) / elapsed
        else:  # the first report of a process
            self.packet_rate = 0.0
        self.stats_at = now
        self.stats = message
        self.placed = 0

    def on_message(self, message: Message) -> None:
        op = message.get("op")
        if op in ("state", "data"):
            peer = self.peers.get(int(message["peer"]))
            if peer is not None:
                peer.on_event(message)
        elif op == "estimate":
            bandwidth = self.bandwidths.get(int(message["part"]))
            if bandwidth is not None:
                bandwidth.note(message)
        elif op in ("layers", "paused", "reports"):
            for dt_id, value in message[str(op)].items():
                downtrack = self.downtracks.get(int(dt_id))
                if downtrack is not None:
                    downtrack.on_event(message, value)
        elif op == "bitrates":
            for track, rates in message["bitrates"].items():
                receiver = self.receivers.get(int(track))
                if receiver is not None:
                    receiver.note_bitrates([int(rate) for rate in rates])
            for track, loss in dict(message.get("loss") or {}).items():
                receiver = self.receivers.get(int(track))
                if receiver is not None:
                    receiver.note_loss(float(loss))
        elif op == "levels":
            for track, level in message["levels"].items():
                receiver = self.receivers.get(int(track))
                if receiver is not None:
                    receiver.note_level(float(level))
        elif op == "stats":
            self._note_stats(message)
            counters = message.get("counters")
            if isinstance(counters, dict):
                self.counters = counters
        elif op == "ready":
            self.ready.set()


class WorkerPool:
    """``rtc.workers`` media worker processes."""

    def __init__(
        self,
        count: int,
        config: TransportConfig,
        fast_path: str,
        log_level: str = "INFO",
        spill_load: float = RtcConfig.worker_spill_load,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.config = config
        self.spill_load = spill_load
        self.fast_path = fast_path
        self.log_level = log_level
        self.namespace = f"sfu-{os.getpid()}-{secrets.token_hex(4)}"
        self.links = [WorkerLink(i) for i in range(count)]
        self._watchers: set[asyncio.Task[None]] = set()
        self.closing = False

    def _settings(self, index: int) -> str:
        c = self.config
        return json.dumps(
            {
                "bind_addresses": list(c.bind_addresses),
                "node_ip": c.node_ip,
                "port_range_start": c.port_range_start,
                "port_range_end": c.port_range_end,
                "udp_port": c.udp_port + index if c.udp_port else 0,
                "send_mode": c.send_mode,
                "allow_private_candidates": c.allow_private_candidates,
                "fast_path": self.fast_path,
                "congestion_control": c.congestion_control,
            }
        )

    async def start(self) -> None:
        """Start every worker and wait until each is ready (RuntimeError if one is not)."""
        await asyncio.gather(*(self._spawn(link) for link in self.links))

    async def _spawn(self, link: WorkerLink) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sfu.media.worker",
                "--index",
                str(link.index),
                "--fd",
                str(theirs.fileno()),
                "--namespace",
                self.namespace,
                "--parent",
                str(os.getpid()),
                "--config",
                self._settings(link.index),
                "--log-level",
                self.log_level,
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        link.generation += 1
        link.process = process
        link.ready = asyncio.Event()
        link.stats, link.stats_at = {}, 0.0
        link.packet_rate = 0.0
        channel, reader = await open_channel(ours, link.on_message)
        link.channel = channel
        link.alive = True
        try:
            await asyncio.wait_for(link.ready.wait(), START_TIMEOUT)
        except TimeoutError:
            _kill(process)
            raise RuntimeError(f"media worker {link.index} did not start") from None
        log.info("media worker %d: pid %d", link.index, process.pid)
        watcher = asyncio.ensure_future(self._watch(link, reader))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, link: WorkerLink, reader: asyncio.Task[None]) -> None:
        """When the worker's channel ends: tell its participants, start it again."""
        await reader
        process = link.process
        link.alive = False
        if process is not None:
            _kill(process)
            with contextlib.suppress(Exception):
                await process.wait()
        if self.closing:
            return
        code = process.returncode if process is not None else None
        log.error("media worker %d died (exit %s): restarting it", link.index, code)
        self._lost(link)
        link.restarts += 1
        await asyncio.sleep(RESTART_DELAY)
        while not self.closing:
            try:
                await self._spawn(link)
                return
            except Exception:
                log.exception("media worker %d failed to start; trying again", link.index)
                await asyncio.sleep(5 * RESTART_DELAY)

    def cpu_seconds_per_worker(self) -> float:
        """CPU seconds of the whole node (this process and every worker's, as last reported)
        divided by the workers: its rate is the load of an average worker (1.0 = each worker
        busy a whole core), what `limits.max_cpu_load` compares when placement balances."""
        total = time.process_time()
        for link in self.links:
            total += link.retired_cpu_s + float(link.stats.get("cpu_seconds", 0.0))
        return total / len(self.links)

    def forward_latency_p99(self) -> float:
        """The worst worker's forwarding-latency p99 (seconds): what admission compares with
        `limits.max_forward_latency_ms`, since a newcomer may be placed on any of them."""
        return max((link.latency_p99 for link in self.links), default=0.0)

    def totals(self) -> Counters:
        """The node's counters: this process's, and every worker's last report (once a second)
        and those of its processes before a restart."""
        totals = Counters()
        add_counters(totals, dataclasses.asdict(COUNTERS))
        for link in self.links:
            add_counters(totals, dataclasses.asdict(link.retired))
            add_counters(totals, link.counters)
        return totals

    def _lost(self, link: WorkerLink) -> None:
        add_counters(link.retired, link.counters)
        link.counters = {}
        link.retired_cpu_s += float(link.stats.get("cpu_seconds", 0.0))
        media, link.media = list(link.media), set()
        link.peers.clear()
        link.downtracks.clear()
        lost_tracks, link.receivers = list(link.receivers.values()), {}
        for other in self.links:
            if other is not link:
                for receiver in list(other.receivers.values()):
                    receiver.replica_lost(link.index)
        for receiver in lost_tracks:
            receiver.closed = True  # its publisher's participant is closed by `lost`
        for m in media:
            try:
                m.lost()
            except Exception:
                log.exception("media worker %d: a participant's close failed", link.index)

    @property
    def any_alive(self) -> bool:
        return any(link.alive for link in self.links)

    def place(self, room: str = "") -> RemoteMedia:
        """A participant of ``room`` on its room's home worker while that one is below
        ``spill_load``, else on the least-loaded live worker (module docstring)."""
        link = self.choose(room)
        link.placed += 1
        return RemoteMedia(link, room)

    def choose(self, room: str = "") -> WorkerLink:
        live = [link for link in self.links if link.alive] or self.links
        if room:
            holding = [(link.holds(room), link) for link in live]
            count, home = max(holding, key=lambda held: (held[0], -held[1].load))
            if count and home.load < self.spill_load:
                return home
        return min(live, key=lambda link: (link.load, link.index))

    async def close(self) -> None:
        self.closing = True
        for link in self.links:
            link.alive = False
            if link.channel is not None:
                link.channel.close()
        for link in self.links:
            process = link.process
            if process is None or process.returncode is not None:
                continue
            try:
                await asyncio.wait_for(process.wait(), 5.0)
            except TimeoutError:
                _kill(process)
                await process.wait()
        for watcher in list(self._watchers):
            watcher.cancel()

    def pids(self) -> list[int]:
        return [link.process.pid for link in self.links if link.process is not None]


def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL a worker that has not been reaped yet. Not `Process.kill()`: that polls the
    child first (`Popen.send_signal`), and a poll that finds it already dead reaps it behind
    asyncio's child watcher, which then reports exit 255 instead of the real status. A dead,
    unreaped child keeps its pid, so signalling it by pid is safe."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


class WorkerCollector(Collector):
    """Per-worker series for /metrics: CPU, forwarded and relayed packets, participants."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        cpu = GaugeMetricFamily(
            "sfu_worker_cpu_share", "A worker's CPU use over the last second (1 = a core)",
            labels=["worker"],
        )  # fmt: skip
        up = GaugeMetricFamily("sfu_worker_up", "Whether the worker runs", labels=["worker"])
        participants = GaugeMetricFamily(
            "sfu_worker_participants", "Participants placed on the worker", labels=["worker"]
        )
        latency = GaugeMetricFamily(
            "sfu_worker_forward_latency_p99_seconds",
            "p99 of the worker's forwarding latency, last 3 s (0: under 3 samples)",
            labels=["worker"],
        )
        objects = GaugeMetricFamily(
            "sfu_worker_objects",
            "What the worker holds (peers, participants' parts, receivers, down tracks, m-line "
            "slots): all zero when nobody is placed there",
            labels=["worker", "kind"],
        )
        counters = {
            name: CounterMetricFamily(f"sfu_worker_{name}", text, labels=["worker"])
            for name, text in (
                ("packets_forwarded", "RTP packets the worker sent to subscribers"),
                ("packets_received", "RTP packets the worker received from publishers"),
                ("relay_sent", "Datagrams relayed to other workers"),
                ("relay_received", "Datagrams relayed from other workers"),
                ("relay_dropped", "Relay datagrams the other worker could not take"),
                ("nack_in", "NACKs from the worker's subscribers"),
                ("retransmits", "Packets the worker resent from its down tracks' history"),
                ("pli_in", "PLIs from the worker's subscribers"),
                ("pli_out", "PLIs the worker sent to its publishers"),
                ("restarts", "Times the worker was started again after it died"),
                ("cpu_seconds", "CPU time of the worker's current process"),
            )
        }
        for link in self.pool.links:
            label = [str(link.index)]
            stats = link.stats
            cpu.add_metric(label, float(stats.get("cpu", 0.0)))
            up.add_metric(label, 1.0 if link.alive else 0.0)
            participants.add_metric(label, float(len(link.media)))
            latency.add_metric(label, link.latency_p99)
            for kind, count in dict(stats.get("objects") or {}).items():
                objects.add_metric([*label, str(kind)], float(count))
            values = {
                "packets_forwarded": stats.get("packets_out", 0),
                "packets_received": stats.get("packets_in", 0),
                "relay_sent": stats.get("relay_sent", 0),
                "relay_received": stats.get("relay_received", 0),
                "relay_dropped": stats.get("relay_dropped", 0),
                "nack_in": stats.get("nack_in", 0),
                "retransmits": stats.get("retransmits_out", 0),
                "pli_in": stats.get("pli_in", 0),
                "pli_out": stats.get("pli_out", 0),
                "restarts": link.restarts,
                "cpu_seconds": stats.get("cpu_seconds", 0.0),
            }
            for name, value in values.items():
                counters[name].add_metric(label, float(value))
        yield cpu
        yield up
        yield participants
        yield latency
        yield objects
        yield from counters.values()
