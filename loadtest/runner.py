"""One load-test run: publishers in this process, subscribers in worker processes, a report.

Phases: scrape the SFU's counters; join the publishers (at `--num-per-second`) and start their
media; start the workers, which join the subscribers on the same schedule; measure for
`--duration`; stop the media, let the pipeline drain, collect the workers' totals and scrape
again; close everyone. Ctrl-C (or SIGTERM) cuts the current phase short and the report is still
written. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from loadtest.config import Scenario
from loadtest.media import load_media
from loadtest.publisher import Publisher
from loadtest.report import Report, write_report
from loadtest.sfu_metrics import Snapshot, metrics_url_for, scrape
from loadtest.signal import SignalError, TokenSource
from loadtest.webrtc import use_interfaces_for
from loadtest.worker import run_worker

__all__ = ["run"]

DRAIN_S = 1.5
JOIN_GRACE_S = 30.0
WORKER_REPLY_S = 20.0
MAX_SUBSCRIBERS_PER_WORKER = 250


def _room(scenario: Scenario, n: int) -> str:
    return scenario.room if scenario.rooms == 1 else f"{scenario.room}-{n % scenario.rooms}"


class _Run:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.stop = asyncio.Event()
        self.report = Report(scenario)
        self.publishers: list[Publisher] = []
        self.workers: list[tuple[Any, Connection]] = []
        self.latest: dict[int, dict[str, Any]] = {}
        self.finals: list[dict[str, Any]] = []
        self.metrics_url = scenario.metrics_url or metrics_url_for(scenario.url)

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))

    async def snapshot(self) -> Snapshot:
        return await scrape(self.metrics_url, self.s.sfu_pid)

    def progress(self, phase: str) -> None:
        if not self.s.progress:
            return
        r = self.report
        lat = r.last_latency_p50()
        lat_text = f"  lat p50 {lat:6.2f} ms" if lat is not None else ""
        line = (
            f"\r[{phase:>7}] {time.monotonic() - r.start:6.1f}s  pubs {r.publishers_ok}/"
            f"{self.s.publishers}  subs {r.joined}/{self.s.subscribers} (fail {r.join_failures})"
            f"  rx {r.last_pps():7.0f} pkt/s {r.last_kbps() / 1000:7.1f} Mbit/s{lat_text}"
        )
        sys.stderr.write(line.ljust(120))
        sys.stderr.flush()

    def pump(self) -> None:
        """Drain every worker's pipe (non-blocking)."""
        for index, (_, conn) in enumerate(self.workers):
            with contextlib.suppress(EOFError, OSError):
                while conn.poll():
                    message = conn.recv()
                    kind = message.get("type")
                    if kind == "join":
                        self.report.add_join(message["ms"], message["error"])
                    elif kind == "tick":
                        self.report.add_tick(index, message)
                    elif kind == "final":
                        self.finals.append(message)

    async def run(self) -> Report:
        s = self.s
        use_interfaces_for(s.url)
        media = load_media(s.cache, s.layers)
        tokens = TokenSource(s.api_key, s.api_secret, s.token_url)
        self.report.sfu_before = await self.snapshot()
        self.report.start = time.monotonic()
        interval = 1.0 / s.num_per_second
        talking = s.talking_publishers if s.talking_publishers is not None else s.publishers
        # Publishers, one at a time on the schedule (they are few).
        for n in range(s.publishers):
            if self.stop.is_set():
                break
            identity = f"pub-{n:04d}"
            started = time.perf_counter()
            pub = Publisher(
                s.url,
                await tokens.token(identity, _room(s, n), publish=True),
                identity,
                number=n,
                media=media,
                video_rids=s.layers if n < s.video_publishers else (),
                audio=n < s.audio_publishers,
                talking=n < talking,
            )
            self.publishers.append(pub)
            try:
                await pub.join()
                await pub.publish()
            except (SignalError, TimeoutError, ConnectionError, OSError) as exc:
                error = f"publisher {pub.identity}: {type(exc).__name__}: {exc}"
                self.report.add_join((time.perf_counter() - started) * 1000, error, True)
                continue
            self.report.add_join((time.perf_counter() - started) * 1000, None, True)
            pub.start_media()
            self.progress("publish")
            await self.sleep(interval - (time.perf_counter() - started))
        # Subscribers, spread over worker processes.
        epoch_ns = time.monotonic_ns()
        count = s.subscribers
        workers = s.workers or max(1, min(os.cpu_count() or 1, -(-count // 20)))
        workers = max(workers, -(-count // MAX_SUBSCRIBERS_PER_WORKER)) if count else 0
        ctx = multiprocessing.get_context("spawn")
        join_phase_s = count * interval + JOIN_GRACE_S
        for w in range(workers):
            specs = [
                {
                    "identity": f"sub-{i:04d}",
                    "room": _room(s, i),
                    "index": i,
                    "join_at": i * interval,
                }
                for i in range(w, count, workers)
            ]
            parent, child = ctx.Pipe()
            config = {
                "url": s.url,
                "api_key": s.api_key,
                "api_secret": s.api_secret,
                "token_url": s.token_url,
                "epoch_ns": epoch_ns,
                "sample_every": s.sample_every,
                "rx": s.rx,
                "layout": s.layout,
                "seed": s.seed,
                "talking": min(talking, s.video_publishers) or 1,
                "subscribers": specs,
                "max_seconds": join_phase_s + s.duration_s + 120.0,
            }
            process = ctx.Process(target=run_worker, args=(child, config), daemon=True)
            process.start()
            child.close()
            self.workers.append((process, parent))
        deadline = time.monotonic() + join_phase_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.pump()
            self.progress("join")
            if self.report.joined + self.report.join_failures >= count:
                break
            await self.sleep(0.5)
        self.report.steady_start = time.monotonic()
        self.report.cpu_steady_start = time.process_time()
        self.report.sfu_steady_start = await self.snapshot()
        end = time.monotonic() + s.duration_s
        while not self.stop.is_set() and time.monotonic() < end:
            await self.sleep(min(1.0, end - time.monotonic()))
            self.pump()
            self.progress("run")
        self.report.steady_end = time.monotonic()
        self.report.cpu_steady_end = time.process_time()
        self.report.sfu_steady_end = await self.snapshot()
        await self.finish()
        return self.report

    async def finish(self) -> None:
        for pub in self.publishers:
            await pub.stop_media()
        self.report.packets_sent = sum(p.packets_sent for p in self.publishers)
        self.report.plis = sum(p.plis for p in self.publishers)
        self.report.publisher_rtcp = {
            "quality_updates": sum(p.quality_updates for p in self.publishers),
            "sender_reports": sum(p.sender_reports for p in self.publishers),
            "nacked": sum(p.nacked for p in self.publishers),
            "retransmitted": sum(p.retransmitted for p in self.publishers),
            "trickled_candidates": sum(
                p.pub_transport.trickled + p.sub_transport.trickled for p in self.publishers
            ),
        }
        await asyncio.sleep(DRAIN_S)
        self.pump()
        for _, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send("final")
        deadline = time.monotonic() + WORKER_REPLY_S
        while len(self.finals) < len(self.workers) and time.monotonic() < deadline:
            self.pump()
            await asyncio.sleep(0.1)
        self.report.sfu_after = await self.snapshot()
        self.report.finals = self.finals
        lost = [p.exitcode for p, _ in self.workers if not p.is_alive() and p.exitcode]
        if lost:  # their subscribers are missing from the totals: say so first
            self.report.join_errors.insert(0, f"{len(lost)} worker(s) died, exit codes {lost}")
        for _, conn in self.workers:
            with contextlib.suppress(OSError):
                conn.send("stop")
        await asyncio.gather(
            *(asyncio.wait_for(p.close(), 10) for p in self.publishers), return_exceptions=True
        )
        for process, conn in self.workers:
            process.join(timeout=0)
            await asyncio.to_thread(process.join, 15)
            if process.is_alive():
                process.terminate()
                process.join(5)
            conn.close()
        if self.s.progress:
            sys.stderr.write("\n")


async def _main(scenario: Scenario) -> Report:
    run = _Run(scenario)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, run.stop.set)
    try:
        return await run.run()
    except BaseException:
        with contextlib.suppress(BaseException):
            await run.finish()
        raise


def run(scenario: Scenario) -> Report:
    """Run the scenario, write the report files, return the report."""
    report = asyncio.run(_main(scenario))
    write_report(report, scenario.out, plots=scenario.plots)
    return report
