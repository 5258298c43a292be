"""The run's results: collected while it runs, summarised as JSON, a table and PNG plots.

`Report.summary()` is the top-level `summary` of `report.json`, with plain field names:
`join_time_ms` (p50/p99), `join_failures`, `loss_pct`, `latency_ms` (p50/p99/max, the whole
run) and `latency_steady_ms` (the same over the steady phase only, joins done),
`bitrate_kbps` (per publisher track and layer, per receiving stream), `layer_switches`,
`packets_received`, and from the SFU's own counters `sfu_packets_sent`,
`sfu_cpu_us_per_packet` and `sfu_rss_per_participant_kb`. The load tester's own cost over the
steady phase: `loadtest_cpu_us_per_packet` (the subscriber processes' CPU time per packet they
received), `loadtest_worker_cpu_pct` (each subscriber process, % of one core: near 100 the load
tester, not the server, is the limit), `loadtest_publisher_cpu_pct` and `loadtest_rx` (how the
subscribers received: `recvmmsg (C)`, `python` or `per-datagram`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.config import Scenario
from loadtest.sfu_metrics import Snapshot

__all__ = ["Report", "percentile", "write_report"]

LAYER_NAMES = {0: "q", 1: "h", 2: "f", 255: "audio"}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0…100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[rank]


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _latency_summary(latency: list[float]) -> dict[str, Any]:
    return {
        "p50": _r(percentile(latency, 50), 3),
        "p99": _r(percentile(latency, 99), 3),
        "max": _r(max(latency) if latency else None, 3),
        "samples": len(latency),
    }


class Report:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.start = time.monotonic()
        self.steady_start = self.start
        self.steady_end = self.start
        self.join_ms: list[float] = []
        self.join_errors: list[str] = []
        self.publishers_ok = 0
        self.joined = 0
        self.join_failures = 0
        self.publisher_failures = 0
        self.ticks: dict[int, list[dict[str, Any]]] = {}
        self.series: list[dict[str, Any]] = []
        self.finals: list[dict[str, Any]] = []
        self.packets_sent = 0
        self.plis = 0
        #: dynacast updates, SRs sent, NACKed / retransmitted packets, trickled candidates
        self.publisher_rtcp: dict[str, int] = {}
        self.sfu_before: Snapshot | None = None
        self.sfu_steady_start: Snapshot | None = None
        self.sfu_steady_end: Snapshot | None = None
        self.sfu_after: Snapshot | None = None
        #: this process's CPU time (the publishers) at the steady phase's ends
        self.cpu_steady_start = 0.0
        self.cpu_steady_end = 0.0

    # -- while running ---------------------------------------------------------------------
    def add_join(self, ms: float, error: str | None, publisher: bool = False) -> None:
        if error is None:
            self.join_ms.append(ms)
            if publisher:
                self.publishers_ok += 1
            else:
                self.joined += 1
        else:
            self.join_errors.append(error)
            if publisher:
                self.publisher_failures += 1
            else:
                self.join_failures += 1

    def add_tick(self, worker: int, tick: dict[str, Any]) -> None:
        ticks = self.ticks.setdefault(worker, [])
        previous = ticks[-1] if ticks else None
        ticks.append(tick)
        if previous is None:
            return
        dt = max(1e-3, tick["t"] - previous["t"])
        second = int(tick["t"] - self.start)
        while len(self.series) <= second:
            self.series.append({"t": len(self.series), "pps": 0.0, "kbps": 0.0, "lat": []})
        row: Any = self.series[second]
        row["pps"] += (tick["packets"] - previous["packets"]) / dt
        row["kbps"] += (tick["octets"] - previous["octets"]) * 8 / dt / 1000
        row["lat"].extend(tick["latency_ms"])

    def _last_row(self) -> Any:
        for row in reversed(self.series[:-1] or self.series):
            return row
        return None

    def last_pps(self) -> float:
        row = self._last_row()
        return float(row["pps"]) if row else 0.0

    def last_kbps(self) -> float:
        row = self._last_row()
        return float(row["kbps"]) if row else 0.0

    def last_latency_p50(self) -> float | None:
        row = self._last_row()
        return percentile(row["lat"], 50) if row else None

    # -- at the end ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        finals = self.finals
        packets = sum(f["packets"] for f in finals)
        expected = sum(f["expected"] for f in finals)
        received = sum(f["received"] for f in finals)
        latency = [x for f in finals for x in f["latency_ms"]]
        elapsed = max(1e-3, self.steady_end - self.start)
        octets: dict[str, int] = {}
        for f in finals:
            for key, value in f["octets_by_track_layer"].items():
                octets[key] = octets.get(key, 0) + value
        streams_per_key = max(1, self.joined)
        bitrate = {}
        for key in sorted(octets, key=lambda k: tuple(int(x) for x in k.split(":"))):
            track, layer = key.split(":")
            name = f"pub-{int(track):04d}/{LAYER_NAMES.get(int(layer), layer)}"
            bitrate[name] = round(octets[key] * 8 / elapsed / 1000 / streams_per_key, 1)
        summary: dict[str, Any] = {
            "preset": self.scenario.preset,
            "publishers": self.scenario.publishers,
            "subscribers": self.scenario.subscribers,
            "duration_s": round(self.steady_end - self.steady_start, 1),
            "join_time_ms": {
                "p50": _r(percentile(self.join_ms, 50)),
                "p99": _r(percentile(self.join_ms, 99)),
                "max": _r(max(self.join_ms) if self.join_ms else None),
            },
            "join_failures": self.join_failures + self.publisher_failures,
            "packets_sent": self.packets_sent,
            "packets_received": packets,
            "loss_pct": _r(100.0 * max(0, expected - received) / expected if expected else None, 3),
            "latency_ms": _latency_summary(latency),
            "latency_steady_ms": self._steady_latency(),
            "bitrate_kbps": bitrate,
            "receive_kbps_total": round(sum(f["octets"] for f in finals) * 8 / elapsed / 1000, 1),
            "layer_switches": sum(f["layer_switches"] for f in finals),
            "plis_received_by_publishers": self.plis,
            "publisher_rtcp": self.publisher_rtcp,
            "subscribers_connected": sum(f["connected"] for f in finals),
            "errors": (self.join_errors + [e for f in finals for e in f["errors"]])[:10],
        }
        summary.update(self._sfu_summary())
        summary.update(self._own_summary())
        return summary

    def _steady_latency(self) -> dict[str, Any]:
        """End-to-end latency of the samples the subscribers took in the steady phase."""
        start, end = self.steady_start, self.steady_end
        latency = [
            x
            for ticks in self.ticks.values()
            for tick in ticks
            if start <= tick["t"] <= end
            for x in tick["latency_ms"]
        ]
        return _latency_summary(latency)

    def _own_summary(self) -> dict[str, Any]:
        """The load tester's own CPU: per subscriber process from its ticks in the steady phase
        (the whole run's ticks when the phase was too short to hold two)."""
        cpu = packets = 0.0
        worker_pct: list[float] = []
        basis = "steady phase"
        for ticks in self.ticks.values():
            usable = [t for t in ticks if "cpu_s" in t]
            steady = [t for t in usable if self.steady_start <= t["t"] <= self.steady_end]
            if len(steady) < 2:
                steady, basis = usable, "whole run (fewer than two ticks in the steady phase)"
            if len(steady) < 2:
                continue
            first, last = steady[0], steady[-1]
            used = last["cpu_s"] - first["cpu_s"]
            cpu += used
            packets += last["packets"] - first["packets"]
            worker_pct.append(round(100 * used / max(1e-3, last["t"] - first["t"]), 1))
        steady_s = self.steady_end - self.steady_start
        kinds = sorted({k for f in self.finals for k in f.get("rx", [])})
        return {
            "loadtest_cpu_us_per_packet": round(cpu * 1e6 / packets, 2) if packets else None,
            "loadtest_worker_cpu_pct": worker_pct,
            "loadtest_cpu_basis": basis if worker_pct else None,
            "loadtest_publisher_cpu_pct": (
                round(100 * (self.cpu_steady_end - self.cpu_steady_start) / steady_s, 1)
                if steady_s > 0
                else None
            ),
            "loadtest_rx": ", ".join(kinds) or None,
            "rx_overflow": sum(f.get("rx_overflow", 0) for f in self.finals),
            "rx_truncated": sum(f.get("rx_truncated", 0) for f in self.finals),
        }

    def _sfu_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sfu_packets_sent": None,
            "sfu_cpu_us_per_packet": None,
            "sfu_cpu_pct": None,
            "sfu_rss_per_participant_kb": None,
        }
        before, after = self.sfu_before, self.sfu_after
        if before and after and before.packets_out is not None and after.packets_out is not None:
            out["sfu_packets_sent"] = int(after.packets_out - before.packets_out)
        a, b = self.sfu_steady_start, self.sfu_steady_end
        if a and b and None not in (a.cpu_s, b.cpu_s):
            assert a.cpu_s is not None and b.cpu_s is not None
            cpu = b.cpu_s - a.cpu_s
            out["sfu_cpu_pct"] = round(100 * cpu / max(1e-3, b.t - a.t), 1)
            if a.packets_out is not None and b.packets_out is not None:
                forwarded = b.packets_out - a.packets_out
                if forwarded > 0:
                    out["sfu_cpu_us_per_packet"] = round(cpu * 1e6 / forwarded, 2)
        if out["sfu_cpu_us_per_packet"] is None and before and after:
            # No steady-phase scrape (a saturated server did not answer in time): the whole
            # run, joins and teardown included, says so in `sfu_cpu_basis`.
            if None not in (before.cpu_s, after.cpu_s, before.packets_out, after.packets_out):
                assert before.cpu_s is not None and after.cpu_s is not None
                assert before.packets_out is not None and after.packets_out is not None
                forwarded = after.packets_out - before.packets_out
                if forwarded > 0:
                    cpu = after.cpu_s - before.cpu_s
                    out["sfu_cpu_us_per_packet"] = round(cpu * 1e6 / forwarded, 2)
                    out["sfu_cpu_basis"] = "whole run (no steady-phase /metrics scrape)"
        elif out["sfu_cpu_us_per_packet"] is not None:
            out["sfu_cpu_basis"] = "steady phase"
        if before and after and None not in (before.packets_dropped, after.packets_dropped):
            assert before.packets_dropped is not None and after.packets_dropped is not None
            out["sfu_packets_dropped"] = int(after.packets_dropped - before.packets_dropped)
        if a and b and None not in (a.packets_dropped, b.packets_dropped):
            # the whole run's count includes the teardown: datagrams of participants that have
            # left (the SFU's backlog, publishers still stopping) are dropped as unknown_address
            assert a.packets_dropped is not None and b.packets_dropped is not None
            out["sfu_packets_dropped_steady"] = int(b.packets_dropped - a.packets_dropped)
        participants = self.publishers_ok + self.joined
        if b and before and b.rss_bytes is not None and participants:
            out["sfu_rss_per_participant_kb"] = round(b.rss_bytes / participants / 1024, 1)
            if before.rss_bytes is not None:
                out["sfu_rss_growth_per_participant_kb"] = round(
                    (b.rss_bytes - before.rss_bytes) / participants / 1024, 1
                )
        return out

    def to_json(self) -> dict[str, Any]:
        scenario = asdict(self.scenario)
        scenario["out"] = str(scenario["out"])
        scenario["cache"] = str(scenario["cache"]) if scenario["cache"] else None
        scenario.pop("api_secret", None)
        series = [
            {
                "t": row["t"],
                "pps": round(float(row["pps"] or 0), 1),
                "kbps": round(float(row["kbps"] or 0), 1),
                "latency_p50_ms": _r(percentile(row["lat"], 50), 3),
                "latency_p99_ms": _r(percentile(row["lat"], 99), 3),
            }
            for row in self.series
        ]
        return {
            "summary": self.summary(),
            "scenario": scenario,
            "join_time_ms": [round(x, 2) for x in self.join_ms],
            "timeseries": series,
        }


def table(summary: dict[str, Any]) -> str:
    """The final table printed at the end of a run."""
    rows = [
        (
            "participants",
            f"{summary['publishers']} publishers, {summary['subscribers']} subscribers",
        ),
        (
            "join time p50/p99",
            f"{summary['join_time_ms']['p50']} / {summary['join_time_ms']['p99']} ms",
        ),
        ("join failures", str(summary["join_failures"])),
        ("packets sent / received", f"{summary['packets_sent']} / {summary['packets_received']}"),
        ("SFU packets sent (/metrics)", str(summary["sfu_packets_sent"])),
        ("loss", f"{summary['loss_pct']} %"),
        (
            "latency p50/p99/max",
            f"{summary['latency_ms']['p50']} / {summary['latency_ms']['p99']} / "
            f"{summary['latency_ms']['max']} ms ({summary['latency_ms']['samples']} samples)",
        ),
        (
            "  steady phase",
            f"{summary['latency_steady_ms']['p50']} / {summary['latency_steady_ms']['p99']} / "
            f"{summary['latency_steady_ms']['max']} ms "
            f"({summary['latency_steady_ms']['samples']} samples)",
        ),
        ("receive total", f"{summary['receive_kbps_total'] / 1000:.1f} Mbit/s"),
        ("layer switches", str(summary["layer_switches"])),
        ("SFU CPU", f"{summary['sfu_cpu_pct']} %, {summary['sfu_cpu_us_per_packet']} µs/packet"),
        ("SFU RSS per participant", f"{summary['sfu_rss_per_participant_kb']} KiB"),
        (
            "load tester CPU",
            f"{summary['loadtest_cpu_us_per_packet']} µs/received packet ({summary['loadtest_rx']}),"
            f" subscriber processes {summary['loadtest_worker_cpu_pct']} %,"
            f" publishers {summary['loadtest_publisher_cpu_pct']} % of a core",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if summary["bitrate_kbps"]:
        lines.append("bitrate per receiving subscriber (kbit/s):")
        lines += [f"  {k:<{width - 2}}  {v}" for k, v in summary["bitrate_kbps"].items()]
    return "\n".join(lines)


def _plots(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    series = data["timeseries"]
    t = [row["t"] for row in series]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [row["latency_p50_ms"] for row in series], label="p50")
    ax.plot(t, [row["latency_p99_ms"] for row in series], label="p99")
    ax.set(xlabel="time (s)", ylabel="end-to-end latency (ms)", title="Latency (sampled packets)")
    ax.legend()
    fig.tight_layout()
    written.append(out / "latency.png")
    fig.savefig(written[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [row["kbps"] / 1000 for row in series])
    ax.set(xlabel="time (s)", ylabel="Mbit/s received (all subscribers)", title="Bitrate")
    fig.tight_layout()
    written.append(out / "bitrate.png")
    fig.savefig(written[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(data["join_time_ms"], bins=30)
    ax.set(xlabel="join time (ms)", ylabel="participants", title="Join time")
    fig.tight_layout()
    written.append(out / "join-time.png")
    fig.savefig(written[-1])
    plt.close(fig)
    return written


def write_report(report: Report, out: Path, *, plots: bool = True) -> dict[str, Any]:
    """Write `report.json` (and the PNGs) into `out`; print the table; return the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_json()
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    if plots:
        _plots(data, out)
    print(table(data["summary"]))
    return data
