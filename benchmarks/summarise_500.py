"""What a `run_500.sh` run came to: subscribers served within the bounds, and what saturated.

    .venv/bin/python benchmarks/summarise_500.py benchmarks/results/500

Reads `report.json` (the load tester's) and `machine.json` (`machine_sampler.py`'s) from the
folder and prints:

* the subscribers served (connected) and, if loss < 1 % and the steady phase's end-to-end p99
  < 50 ms held for them, that count as "served within bounds" (the bounds are over all served
  subscribers together: the load tester reports aggregates);
* the refusals by the SFU's reason (its counters in `sfu-metrics.txt`, scraped by `run_500.sh`
  before the SFU stops) and the kinds of the load tester's first join errors;
* latency p50/p99 (steady phase and whole run), loss, SFU and load-tester CPU per packet;
* over the machine samples of the steady phase (its last `duration_s` seconds), the median
  share of a core of the SFU (with `rtc.workers` > 1: the control process, each media worker
  and their sum), of the load tester's subscriber processes and publishers, the
  machine's idle and softirq time, UDP receive-buffer drops per second and the largest receive
  queues: which of the SFU, the load tester, the machine or the kernel ran out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

LOSS_BOUND_PCT = 1.0
P99_BOUND_MS = 50.0
#: a process this close to 100 % of one core is saturated (one event loop each)
SATURATED_PCT = 90.0


def reason(error: str) -> str:
    """The kind of a join error (the load tester keeps the status, not the SFU's text)."""
    for kind in ("HTTP 503", "HTTP 4", "timed out"):
        if kind in error:
            return kind
    return error[:60]


def sfu_counters(text: str) -> dict[str, float]:
    """The refusal counters from the SFU's /metrics scraped at the end (`sfu-metrics.txt`)."""
    wanted = {
        "sfu_joins_refused_cpu_total": "cpu_load",
        "sfu_joins_refused_latency_total": "forward_latency",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[wanted[name]] = float(line.rsplit(" ", 1)[1])
        elif name == "sfu_limit_exceeded_total" and 'limit="max_sessions"' in line:
            out["max_sessions"] = float(line.rsplit(" ", 1)[1])
    return out


def steady_samples(machine: dict[str, Any], steady_s: float) -> list[dict[str, Any]]:
    """The samples of the steady phase: the last `steady_s` seconds before the load tester's
    media stopped (the sampler stops with the load tester, a few seconds after that)."""
    samples = machine.get("samples", [])
    if not samples:
        return []
    end = samples[-1]["t"] - 5
    return [s for s in samples if end - steady_s <= s["t"] <= end] or samples


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def summarise(folder: Path) -> dict[str, Any]:
    report = json.loads((folder / "report.json").read_text())
    summary = report["summary"]
    machine_path = folder / "machine.json"
    machine = json.loads(machine_path.read_text()) if machine_path.exists() else {}
    metrics_path = folder / "sfu-metrics.txt"
    refused = sfu_counters(metrics_path.read_text()) if metrics_path.exists() else {}
    served = summary.get("subscribers_connected") or 0
    loss = summary.get("loss_pct")
    steady = summary.get("latency_steady_ms") or summary["latency_ms"]
    within = (
        loss is not None
        and loss < LOSS_BOUND_PCT
        and steady.get("p99") is not None
        and steady["p99"] < P99_BOUND_MS
    )
    samples = steady_samples(machine, summary.get("duration_s") or 0)
    sfu = median([s["process_cpu_pct"].get("sfu", 0.0) for s in samples])
    media_workers = sorted(
        {g for s in samples for g in s["process_cpu_pct"] if g.startswith("sfu-")}
    )
    per_media_worker = {
        g: median([s["process_cpu_pct"].get(g, 0.0) for s in samples]) for g in media_workers
    }
    sfu_all = median(
        [sum(v for g, v in s["process_cpu_pct"].items() if g.startswith("sfu")) for s in samples]
    )
    workers = median([s["process_cpu_pct"].get("worker", 0.0) for s in samples])
    main = median([s["process_cpu_pct"].get("loadtest-main", 0.0) for s in samples])
    idle = median([s["cpu_pct_of_one_core"]["idle"] for s in samples])
    softirq = median([s["cpu_pct_of_one_core"]["softirq"] for s in samples])
    drops = median([s["udp_per_s"]["RcvbufErrors"] for s in samples])
    per_worker = summary.get("loadtest_worker_cpu_pct") or []
    saturated = []
    if sfu is not None and sfu >= SATURATED_PCT:
        saturated.append(f"the SFU's event loop ({sfu} % of a core)")
    for group, pct in per_media_worker.items():
        if pct is not None and pct >= SATURATED_PCT:
            saturated.append(f"the SFU's {group.removeprefix('sfu-')}'s event loop ({pct} %)")
    if any(p >= SATURATED_PCT for p in per_worker):
        saturated.append(f"load-tester subscriber processes ({per_worker} % of a core each)")
    if main is not None and main >= SATURATED_PCT:
        saturated.append(f"the load tester's publishers ({main} % of a core)")
    if idle is not None and idle < 10:
        saturated.append(f"the machine (idle {idle} % of a core)")
    if drops:
        saturated.append(f"kernel receive buffers ({drops} datagrams/s dropped)")
    return {
        "subscribers": summary.get("subscribers"),
        "served": served,
        "served_within_bounds": served if within else 0,
        "bounds": f"loss < {LOSS_BOUND_PCT} %, steady-phase p99 < {P99_BOUND_MS} ms",
        "refused_by_sfu": refused,
        "first_join_errors": dict(Counter(reason(e) for e in summary.get("errors", []))),
        "join_failures": summary.get("join_failures"),
        "loss_pct": loss,
        "latency_steady_ms": steady,
        "latency_ms": summary.get("latency_ms"),
        "sfu_cpu_pct": summary.get("sfu_cpu_pct"),
        "sfu_cpu_us_per_packet": summary.get("sfu_cpu_us_per_packet"),
        "loadtest_cpu_us_per_packet": summary.get("loadtest_cpu_us_per_packet"),
        "steady_machine_median_pct_of_a_core": {
            "sfu": sfu,
            **(
                {"sfu_media_workers": per_media_worker, "sfu_all": sfu_all} if media_workers else {}
            ),
            "loadtest_workers": workers,
            "loadtest_publishers": main,
            "idle": idle,
            "softirq": softirq,
        },
        "rcvbuf_errors_per_s": drops,
        "largest_rx_queue_bytes": machine.get("largest_rx_queue_bytes"),
        "saturated": saturated or ["nothing: below every limit"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    print(json.dumps(summarise(args.folder), indent=1))


if __name__ == "__main__":
    main()
