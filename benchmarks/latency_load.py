"""Latency under load: the load tester's end-to-end latency at about 30, 60 and 90 % of a core.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/latency_load.py --targets 0.3 0.6 0.9 \\
        --duration 30 --out benchmarks/results/latency-load

Each run is a fresh local SFU (fast path as `--fast-path`, default `auto`; admission off:
`limits.max_cpu_load` 0 and `limits.max_forward_latency_ms` 0, so that the run measures the
subscriber count it was given) and one `python -m loadtest` run of the 500 preset's room (10
simulcast cameras and microphones, 3 talking, the speaker layout, joins at 10/s) with as many
subscribers as the target share of one core needs. The count is found by fitting: a first run at
`--calibrate` subscribers, then for each target the count a line through every run so far
(SFU CPU % = a + b × subscribers) predicts; a run that lands more than `--tolerance` points off
its target is repeated once with the refined fit. `--subscribers N ...` skips the search.

Per run it reports, over the load tester's steady phase (joins done):

* the SFU's CPU share of one core and its CPU µs per forwarded packet (`report.json`);
* the load tester's CPU µs per received packet and its subscriber processes' share of a core;
* loss, and the end-to-end latency p50/p99 the subscribers measured (kernel receive time minus
  the publisher's send time in each sampled packet's trailer), steady phase and whole run;
* the SFU's own sampled forwarding latency (`sfu_forward_latency_seconds`: kernel receive to the
  end of the send flush), p50/p99 interpolated within the histogram's buckets, from scrapes every
  second while every participant was in and media flowed, and the range of the
  `sfu_forward_latency_p99_seconds` gauge over the same scrapes;
* the machine's other load: CPU not used by the SFU or the load tester, and the load average.

It asserts nothing. The JSON of every run goes to `--out`/latency_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.harness` lives beside the installed packages

import httpx  # noqa: E402
from machine_sampler import TICKS, children, cpu_times, proc_cpu_rss  # noqa: E402

from tests.harness.sfu import SfuInstance, SfuLogErrors, running_sfu  # noqa: E402

PUBLISHERS = 10  # the 500 preset's
LATENCY = "sfu_forward_latency_seconds_bucket"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def log(message: str) -> None:
    print(f"[latency_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tree_ticks(pid: int) -> int:
    """CPU ticks of a process and its descendants (those alive now)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        reading = proc_cpu_rss(current)
        if reading is not None:
            total += reading[0]
        todo.extend(children(current))
    return total


@dataclass
class Scrape:
    """One look at the SFU's /metrics and at the machine."""

    t: float
    participants: float
    packets_out: float
    buckets: dict[float, float]  # le → cumulative count
    p99_gauge: float
    machine_ticks: int  # busy ticks, every core
    sfu_ticks: int
    loadtest_ticks: int


def parse(text: str) -> tuple[float, float, dict[float, float], float]:
    participants = packets_out = p99 = 0.0
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("livekit_participant_total"):
            participants = float(value)
        elif name.startswith("livekit_packet_total") and 'direction="outgoing"' in name:
            if 'transmission="original"' in name:
                packets_out = float(value)
        elif name.startswith(LATENCY):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(value)
        elif name.startswith("sfu_forward_latency_p99_seconds"):
            p99 = float(value)
    return participants, packets_out, buckets, p99


def busy_ticks() -> int:
    values = cpu_times()
    return sum(values) - values[3] - values[4]  # less idle and iowait


def quantile(a: Scrape, b: Scrape, q: float) -> float | None:
    """The q-quantile (seconds) of the samples taken between two scrapes, interpolated within
    the histogram bucket it falls in."""
    bounds = sorted(b.buckets)
    counts = [b.buckets[le] - a.buckets.get(le, 0.0) for le in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    i = bisect.bisect_left(counts, rank)
    upper = bounds[i]
    lower = bounds[i - 1] if i else 0.0
    below = counts[i - 1] if i else 0.0
    if upper == float("inf"):
        return lower  # beyond the last bound: at least that
    inside = counts[i] - below
    return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)


@dataclass
class Run:
    subscribers: int
    target: float | None
    out: Path
    scrapes: list[Scrape] = field(default_factory=list)
    ended: float = 0.0  # when the load tester exited (monotonic)
    result: dict[str, Any] = field(default_factory=dict)


async def scrape(http: httpx.AsyncClient, sfu: SfuInstance, loadtest_pid: int) -> Scrape | None:
    try:
        text = (await http.get(sfu.metrics_url)).text
    except httpx.HTTPError:
        return None
    participants, packets_out, buckets, p99 = parse(text)
    sfu_reading = proc_cpu_rss(sfu.pid)
    return Scrape(
        time.monotonic(),
        participants,
        packets_out,
        buckets,
        p99,
        busy_ticks(),
        sfu_reading[0] if sfu_reading else 0,
        tree_ticks(loadtest_pid),
    )


def steady(scrapes: list[Scrape], ended: float, duration_s: float) -> list[Scrape]:
    """The scrapes while every participant was in and media flowed, less 2 s at each end; if
    the count never settled (joins failing), the `duration_s` before the load tester's media
    stopped (it exits at `ended`, a few seconds after)."""
    fallback = [s for s in scrapes if ended - 5 - duration_s + 2 <= s.t <= ended - 5]
    if len(scrapes) < 3:
        return fallback
    most = max(s.participants for s in scrapes)
    rates = []
    for a, b in itertools.pairwise(scrapes):
        if a.participants == b.participants == most:
            rates.append(((b.packets_out - a.packets_out) / max(1e-3, b.t - a.t), a, b))
    if not rates:
        return fallback
    median = statistics.median(r for r, _, _ in rates)
    flowing = [(a, b) for r, a, b in rates if r >= 0.5 * median]
    start, end = flowing[0][0].t + 2.0, flowing[-1][1].t - 2.0
    window = [s for s in scrapes if start <= s.t <= end]
    return window if len(window) >= 5 else fallback


def summarise(run: Run, report: dict[str, Any], window: list[Scrape]) -> dict[str, Any]:
    summary = report.get("summary", {})
    out: dict[str, Any] = {
        "target_cpu_pct": None if run.target is None else round(100 * run.target),
        "subscribers": run.subscribers,
        "subscribers_connected": summary.get("subscribers_connected"),
        "join_failures": summary.get("join_failures"),
        "sfu_cpu_pct": summary.get("sfu_cpu_pct"),
        "sfu_cpu_us_per_packet": summary.get("sfu_cpu_us_per_packet"),
        "sfu_cpu_basis": summary.get("sfu_cpu_basis"),
        "loadtest_cpu_us_per_packet": summary.get("loadtest_cpu_us_per_packet"),
        "loadtest_worker_cpu_pct": summary.get("loadtest_worker_cpu_pct"),
        "loadtest_publisher_cpu_pct": summary.get("loadtest_publisher_cpu_pct"),
        "loss_pct": summary.get("loss_pct"),
        "latency_steady_ms": summary.get("latency_steady_ms"),
        "latency_ms": summary.get("latency_ms"),
        "loadavg": run.result.get("loadavg"),
    }
    if len(window) >= 2:
        a, b = window[0], window[-1]
        span = b.t - a.t
        out["window_s"] = round(span, 1)
        out["forwarded_pps"] = round((b.packets_out - a.packets_out) / span)
        for q, key in ((0.5, "sfu_latency_p50_ms"), (0.99, "sfu_latency_p99_ms")):
            value = quantile(a, b, q)
            out[key] = None if value is None else round(value * 1000, 3)
        gauge = [s.p99_gauge * 1000 for s in window]
        out["sfu_latency_p99_gauge_ms"] = {
            "min": round(min(gauge), 2),
            "median": round(statistics.median(gauge), 2),
            "max": round(max(gauge), 2),
        }
        ticks_per_s = TICKS * span
        sfu = (b.sfu_ticks - a.sfu_ticks) / ticks_per_s
        loadtest = (b.loadtest_ticks - a.loadtest_ticks) / ticks_per_s
        machine = (b.machine_ticks - a.machine_ticks) / ticks_per_s
        out["window_cpu_pct"] = {
            "sfu": round(100 * sfu, 1),
            "loadtest": round(100 * loadtest, 1),
            "others": round(100 * max(0.0, machine - sfu - loadtest), 1),
            "machine": round(100 * machine, 1),
        }
    return out


async def run_one(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    run.out.mkdir(parents=True, exist_ok=True)
    run.result["loadavg"] = {"start": loadavg()}
    errors = None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the harness prints the SFU's log tail
            await load(args, run)
    except SfuLogErrors as exc:  # teardown noise is no reason to lose the run
        errors = str(exc)[:2000]
    run.result["loadavg"]["end"] = loadavg()
    report_path = run.out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    row = summarise(run, report, steady(run.scrapes, run.ended, args.duration))
    row["sfu_log_errors"] = errors
    return row


async def load(args: argparse.Namespace, run: Run) -> None:
    """One fresh SFU and one load test against it, scraped every second."""
    rtc: dict[str, Any] = {"fast_path": args.fast_path}
    if args.udp_port:
        rtc["udp_port"] = args.udp_port
    extra = {"limits": {"max_cpu_load": 0, "max_forward_latency_ms": 0}, "rtc": rtc}
    async with (
        running_sfu(
            run.out / "sfu",
            log_level="warn",
            extra_config=extra,
            rtc_ports=4 * (run.subscribers + PUBLISHERS) + 100,
            startup_timeout_s=30.0,
        ) as sfu,
        httpx.AsyncClient(timeout=5.0) as http,
    ):
        argv = [
            sys.executable,
            "-m",
            "loadtest",
            "--preset",
            "500",
            "--subscribers",
            str(run.subscribers),
            "--duration",
            f"{args.duration:g}s",
            "--url",
            sfu.url,
            f"--api-key={sfu.api_key}",
            f"--api-secret={sfu.api_secret}",  # it may start with "-"
            "--metrics-url",
            sfu.metrics_url,
            "--sfu-pid",
            str(sfu.pid),
            "--out",
            str(run.out),
            "--no-plots",
            "--quiet",
        ]
        if args.workers:
            argv += ["--workers", str(args.workers)]
        output = os.open(run.out / "loadtest.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(output)
        log(
            f"{run.subscribers} subscribers: SFU pid {sfu.pid}, loadtest pid {process.pid}, "
            f"load average {loadavg()}"
        )
        budget = run.subscribers / 10 + args.duration + 180
        deadline = time.monotonic() + budget
        try:
            while process.returncode is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"loadtest still running after {budget:.0f} s")
                reading = await scrape(http, sfu, process.pid)
                if reading is not None:
                    run.scrapes.append(reading)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 1.0)
            run.ended = time.monotonic()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 20.0)
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()


def next_count(points: list[tuple[int, float]], target_pct: float, lo: int, hi: int) -> int:
    """Subscribers for `target_pct` % of a core: a least-squares line through the runs so far
    (one run: proportional)."""
    if len(points) == 1 or len({n for n, _ in points}) == 1:
        n, cpu = points[-1]
        estimate = n * target_pct / max(1.0, cpu)
    else:
        mean_n = statistics.fmean(n for n, _ in points)
        mean_c = statistics.fmean(c for _, c in points)
        slope = sum((n - mean_n) * (c - mean_c) for n, c in points) / sum(
            (n - mean_n) ** 2 for n, _ in points
        )
        if slope <= 0:
            n, cpu = points[-1]
            estimate = n * target_pct / max(1.0, cpu)
        else:
            estimate = mean_n + (target_pct - mean_c) / slope
    return max(lo, min(hi, round(estimate)))


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "target  subs  SFU CPU  fwd pps  SFU µs/fwd  LT µs/rx  LT workers %  loss %  "
        "e2e p50/p99 steady (whole) ms  SFU-added p50/p99 ms  gauge p99 ms  others %  load"
    )
    lines = [head]
    for r in rows:
        steady_lat = r.get("latency_steady_ms") or {}
        whole = r.get("latency_ms") or {}
        gauge = r.get("sfu_latency_p99_gauge_ms") or {}
        cpu = r.get("window_cpu_pct") or {}
        lines.append(
            f"{r['target_cpu_pct'] or '-':>5}%  {r['subscribers']:>4}  {r['sfu_cpu_pct']!s:>6}%  "
            f"{r.get('forwarded_pps', '-')!s:>7}  {r['sfu_cpu_us_per_packet']!s:>10}  "
            f"{r['loadtest_cpu_us_per_packet']!s:>8}  {r['loadtest_worker_cpu_pct']!s:>12}  "
            f"{r['loss_pct']!s:>6}  "
            f"{steady_lat.get('p50')}/{steady_lat.get('p99')} ({whole.get('p50')}/{whole.get('p99')})"
            f"  {r.get('sfu_latency_p50_ms')}/{r.get('sfu_latency_p99_ms')}  "
            f"{gauge.get('median')} ({gauge.get('min')}–{gauge.get('max')})  "
            f"{cpu.get('others')}  {(r.get('loadavg') or {}).get('start')}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    index = 0

    async def measure(subscribers: int, target: float | None) -> dict[str, Any]:
        nonlocal index
        run = Run(subscribers, target, args.out / f"run{index}-n{subscribers}")
        index += 1
        row = await run_one(args, run)
        rows.append(row)
        (args.out / "latency_load.json").write_text(json.dumps(rows, indent=2))
        log(table([row]).splitlines()[-1])
        return row

    if args.subscribers:
        for n in args.subscribers:
            await measure(n, None)
        return rows
    points: list[tuple[int, float]] = []
    first = await measure(args.calibrate, None)
    if first["sfu_cpu_pct"] is not None:
        points.append((args.calibrate, first["sfu_cpu_pct"]))
    for target in sorted(args.targets):
        goal = 100 * target
        if not points:
            break
        near = [r for r in rows if abs((r["sfu_cpu_pct"] or -1e9) - goal) <= args.tolerance]
        if near:
            near[0]["target_cpu_pct"] = round(goal)
            continue
        for _ in range(2):  # one try, and one more with the refined fit
            n = next_count(points, goal, 5, args.max_subscribers)
            row = await measure(n, target)
            if row["sfu_cpu_pct"] is not None:
                points.append((n, row["sfu_cpu_pct"]))
            if row["sfu_cpu_pct"] is None or abs(row["sfu_cpu_pct"] - goal) <= args.tolerance:
                break
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.6, 0.9])
    parser.add_argument("--subscribers", type=int, nargs="+", help="these counts, no search")
    parser.add_argument("--calibrate", type=int, default=60, help="first run's subscribers")
    parser.add_argument("--tolerance", type=float, default=8.0, help="points of CPU %%")
    parser.add_argument("--max-subscribers", type=int, default=490)
    parser.add_argument("--duration", type=float, default=30.0, help="steady phase, s")
    parser.add_argument("--workers", type=int, default=0, help="load tester processes")
    parser.add_argument("--fast-path", choices=("auto", "off"), default="auto")
    parser.add_argument("--udp-port", type=int, default=0, help="rtc.udp_port (0: port range)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency-load"))
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    log(f"load average {loadavg()}")
    rows = asyncio.run(main_async(args))
    print(table(rows))
    print(
        json.dumps(
            {
                "benchmark": "latency_load",
                "config": vars(args) | {"out": str(args.out)},
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
