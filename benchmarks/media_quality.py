"""The media-quality scenarios of issue 16 as a table: what a subscriber behind a bad link gets.

One LiveKit SDK publisher (1280×720, 24 fps, VP8 simulcast 180/360/720, a 440 Hz tone), one
subscriber behind a shaped downlink (tests/harness/shaper.py: tbf rate cap, NFQUEUE loss),
one unshaped; the scenarios of tests/harness/media_quality.py play on one call: clean, capped at
600 kbit/s, capped at 300 kbit/s, cap lifted, 5 % random loss. `--client` picks the shaped
subscriber: the LiveKit Python SDK (`sdk`), livekit-client in Chromium (`browser`) or each in
turn (`both`). Needs root (network namespaces, tc, iptables).

Printed per scenario and subscriber: frames per second, the longest gap between frames, frames
by height, the received video bitrate, what the shaped class let through (and dropped), the audio
concealed, NACKs and PLIs sent, the dominant height each second, and alice's encoded frame rate
per layer. When the SFU exposes a bandwidth estimate in /metrics (any sample whose name matches
`--estimate-metric`), its mean per scenario is printed next to the link's rate; the bounds the
integration tests assert are listed as "missed" lines (this script asserts nothing). One JSON
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
    QualityCall,
    ScenarioResult,
    quality_call,
    results_table,
    run_scenarios,
)

DEFAULT_ESTIMATE_METRIC = r"^sfu_\w*(estimate|bwe)\w*"
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


def estimates(
    results: list[ScenarioResult], samples: list[tuple[float, dict[str, float]]]
) -> dict[str, dict[str, float]]:
    """Scenario name → metric sample name → its mean over the scenario."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        inside = [values for at, values in samples if r.started <= at <= r.ended]
        names = {name for values in inside for name in values}
        out[r.scenario.name] = {
            name: sum(v[name] for v in inside if name in v) / sum(name in v for v in inside)
            for name in sorted(names)
        }
    return out


async def run(client: str, workdir: Path, pattern: re.Pattern[str]) -> dict[str, Any]:
    samples: list[tuple[float, dict[str, float]]] = []
    async with quality_call(workdir / client, client) as call:  # type: ignore[arg-type]
        sampler = asyncio.create_task(sample_metrics(call, pattern, samples))
        try:
            await call.wait_for_top_layer()
            results = await run_scenarios(call)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
    print(f"\n## shaped subscriber: {client}\n")
    print(results_table(results))
    by_scenario = estimates(results, samples)
    if any(by_scenario.values()):
        print("\nSFU estimate (mean over each scenario, from /metrics) vs what the link carried:")
        for r in results:
            shown = ", ".join(
                f"{n} = {v / 1000:.0f} k" for n, v in by_scenario[r.scenario.name].items()
            )
            print(f"- {r.scenario.name}: link {r.link_kbps:.0f} kbit/s; {shown or 'none'}")
    else:
        print(f"\n(no /metrics sample matches {pattern.pattern!r}: no estimate to compare)")
    missed = [p for r in results for p in r.problems]
    print("\nmissed:" if missed else "\nevery bound met")
    for problem in missed:
        print(f"- {problem}")
    return {
        "client": client,
        "scenarios": [
            {
                "name": r.scenario.name,
                "link_kbps": round(r.link_kbps),
                "link_drops": r.link_drops,
                "recovered_s": r.recovered_s,
                "encoded_fps": {rid: round(fps, 1) for rid, (fps, _) in r.encoded.items()},
                "estimate": by_scenario[r.scenario.name],
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pattern = re.compile(args.estimate_metric)
    clients = ["sdk", "browser"] if args.client == "both" else [args.client]
    runs = []
    with tempfile.TemporaryDirectory(prefix="media_quality-") as tmp:
        for client in clients:
            runs.append(await run(client, Path(tmp), pattern))
    line = json.dumps({"media_quality": runs})
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
