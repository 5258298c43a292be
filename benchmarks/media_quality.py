"""The media-quality scenarios of issue 16 as a table: what a subscriber behind a bad link gets.

One LiveKit SDK publisher (1280×720, 24 fps, VP8 simulcast 180/360/720, a 440 Hz tone), one
subscriber behind a shaped downlink (tests/harness/shaper.py: tbf rate cap, NFQUEUE loss),
one unshaped; the scenarios of tests/harness/media_quality.py play on one call: clean, capped at
600 kbit/s, capped at 300 kbit/s, cap lifted, 5 % random loss (with `--delay`, then 150 ms of
added delay with 2 % loss, judged only for the unshaped subscriber). `--client` picks the shaped
subscriber: the LiveKit Python SDK (`sdk`), livekit-client in Chromium (`browser`) or each in
turn (`both`). Needs root (network namespaces, tc, iptables).

Printed per scenario and subscriber: frames per second, the longest gap between frames, frames
by height, the received video bitrate, what the shaped class let through (and dropped), the audio
concealed, NACKs and PLIs sent, the dominant height each second, and alice's encoded frame rate
per layer. The /metrics series matching `--estimate-metric` (the subscriber bandwidth-estimate
histogram, allocation outcomes, pauses, probes) are sampled every second; their increase over
each scenario is printed next to what the link carried (the histogram counts every subscriber
link, the unshaped one too: its buckets show both). The bounds the integration tests assert are
listed as "missed" lines (this script asserts nothing). One JSON
line per run at the end (also written to `--json FILE`).

    sudo .venv/bin/python benchmarks/media_quality.py --client both
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.harness` lives beside the installed packages

import httpx  # noqa: E402

from tests.harness.media_quality import (  # noqa: E402
    DELAY_SCENARIO,
    SCENARIOS,
    QualityCall,
    ScenarioResult,
    quality_call,
    results_table,
    run_scenarios,
)

DEFAULT_ESTIMATE_METRIC = r"^sfu_(subscriber_bandwidth_estimate|allocat|probe|resends_on_feedback)"
METRICS_EVERY_S = 1.0


async def sample_metrics(
    call: QualityCall, pattern: re.Pattern[str], into: list[tuple[float, dict[str, float]]]
) -> None:
    """Every METRICS_EVERY_S, the /metrics samples whose name matches `pattern`."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                text = (await client.get(call.sfu.metrics_url)).text
                values: dict[str, float] = {}
                for line in text.splitlines():
                    if line.startswith("#") or not pattern.search(line):
                        continue
                    name, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        values[name] = float(value)
                into.append((time.monotonic(), values))
            await asyncio.sleep(METRICS_EVERY_S)


def deltas(
    results: list[ScenarioResult], samples: list[tuple[float, dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """Scenario name → metric series → its increase over the scenario (counters, histograms)."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        inside = [values for at, values in samples if r.started <= at <= r.ended]
        first, last = (inside[0], inside[-1]) if len(inside) >= 2 else ({}, {})
        out[r.scenario.name] = {name: last[name] - first.get(name, 0.0) for name in sorted(last)}
    return out


def _short(series: str) -> str:
    """A series name without the node labels every SFU sample carries."""
    return re.sub(r'(node_id|node_type)="[^"]*",?', "", series).replace(",}", "}").replace("{}", "")


def estimate_text(increase: dict[str, float]) -> str:
    """The estimate histogram's observations in one scenario: their mean and where they fell
    (every subscriber link of the SFU, the unshaped one too), then the other series that grew."""
    prefix = "sfu_subscriber_bandwidth_estimate_bps"
    count = sum(v for k, v in increase.items() if k.startswith(f"{prefix}_count"))
    total = sum(v for k, v in increase.items() if k.startswith(f"{prefix}_sum"))
    parts = []
    if count:
        buckets = sorted(
            (float(m.group(1)), v)
            for k, v in increase.items()
            if (m := re.search(r'_bucket\{.*le="([^"]+)"', k)) and k.startswith(prefix)
        )
        below, spread = 0.0, []
        for bound, cumulative in buckets:
            if cumulative - below:
                label = "more" if bound == float("inf") else f"≤{bound / 1e6:g}M"
                spread.append(f"{label}: {cumulative - below:.0f}")
            below = cumulative
        parts.append(f"estimate mean {total / count / 1000:.0f} kbit/s ({', '.join(spread)})")
    parts += [f"{k} +{v:g}" for k, v in increase.items() if not k.startswith(prefix) and v > 0]
    return "; ".join(parts) or "nothing"


async def run(
    client: str, workdir: Path, pattern: re.Pattern[str], delay: bool, workers: int = 1
) -> dict[str, Any]:
    samples: list[tuple[float, dict[str, float]]] = []
    call_dir = workdir / f"{client}-{workers}"
    async with quality_call(call_dir, client, workers=workers) as call:  # type: ignore[arg-type]
        sampler = asyncio.create_task(sample_metrics(call, pattern, samples))
        try:
            await call.wait_for_top_layer()
            results = await run_scenarios(
                call, (*SCENARIOS, DELAY_SCENARIO) if delay else SCENARIOS
            )
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    print(f"\n## shaped subscriber: {client}, rtc.workers {workers}\n")
    print(results_table(results))
    by_scenario = deltas(results, samples)
    if any(by_scenario.values()):
        print("\nThe SFU's /metrics over each scenario vs what the shaped link carried:")
        for r in results:
            text = estimate_text(by_scenario[r.scenario.name])
            print(f"- {r.scenario.name}: link {r.link_kbps:.0f} kbit/s; {text}")
    else:
        print(f"\n(no /metrics sample matches {pattern.pattern!r}: no estimate to compare)")
    missed = [p for r in results for p in r.problems]
    print("\nmissed:" if missed else "\nevery bound met")
    for problem in missed:
        print(f"- {problem}")
    return {
        "client": client,
        "workers": workers,
        "scenarios": [
            {
                "name": r.scenario.name,
                "link_kbps": round(r.link_kbps),
                "link_drops": r.link_drops,
                "recovered_s": r.recovered_s,
                "encoded_fps": {rid: round(fps, 1) for rid, (fps, _) in r.encoded.items()},
                "metrics": by_scenario[r.scenario.name],
                "subscribers": {
                    name: {
                        "fps": round(w.fps, 1),
                        "longest_gap_s": round(w.longest_gap_s, 2),
                        "heights": w.heights,
                        "video_kbps": None if w.video_kbps is None else round(w.video_kbps),
                        "audio_concealed": w.audio_concealed_fraction,
                        "nacks": w.nacks,
                        "plis": w.plis,
                        "timeline": r.timelines[name],
                    }
                    for name, w in r.reports.items()
                },
                "missed": r.problems,
            }
            for r in results
        ],
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--client", choices=["sdk", "browser", "both"], default="both")
    parser.add_argument("--estimate-metric", default=DEFAULT_ESTIMATE_METRIC)
    parser.add_argument(
        "--delay", action="store_true", help="then 150 ms delay + 2 %% loss (issue 16's fifth)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--workers", type=int, nargs="+", choices=[1, 2], default=[1],
        help="rtc.workers of each run (both workers' ports are shaped; bob and alice may share one)",
    )  # fmt: skip
    args = parser.parse_args()
    pattern = re.compile(args.estimate_metric)
    clients = ["sdk", "browser"] if args.client == "both" else [args.client]
    runs = []
    with tempfile.TemporaryDirectory(prefix="media_quality-") as tmp:
        for client in clients:
            for workers in args.workers:
                runs.append(await run(client, Path(tmp), pattern, args.delay, workers))
    line = json.dumps({"media_quality": runs})
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
