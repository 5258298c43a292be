"""Benchmark: many small rooms, the shape of most Matrix calls: SFU CPU per forwarded packet.

R rooms of P participants, each publishing a camera and a microphone and watching the others,
as the load tester (`python -m loadtest`) builds them: it keeps publishers and subscribers apart,
so each room gets P publishers (VP8 without simulcast + Opus, all talking) and P - 1 subscribers
on the grid layout. Every room then forwards exactly what a room of P publishing-and-watching
participants forwards: P × 2 streams in, P × (P - 1) × 2 copies out (each participant receives the
P - 1 others' tracks), so ingress is a quarter of egress at P = 5 and each received packet's cost
(unprotect, parse, demultiplex, the event-loop wake-up) counts, unlike a large room.

For each variant (`--fast-paths`, optionally `--udp-ports`, `--rounds` times, interleaved), a
fresh SFU (tests/harness/sfu.py, admission off) runs on loopback and the load tester joins
everybody at 50/s, runs `--duration`, and reports. Printed per run: forwarded and ingress
packets/s, SFU CPU % and **µs of SFU CPU per forwarded packet** (the load tester's steady phase:
Δ(utime+stime) of the SFU ÷ Δ`livekit_packet_total{direction="outgoing"}`), loss, end-to-end
latency p50/p99 and the load tester's own CPU per received packet. The last line is JSON.

    .venv/bin/python benchmarks/small_rooms.py --rooms 40 --per-room 5 --fast-paths auto off --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.harness` lives beside the installed packages

from benchmarks.forward_cpu import summarise_py_spy  # noqa: E402
from tests.harness.sfu import (  # noqa: E402
    SfuLogErrors,
    free_udp_port,
    running_sfu,
    stop_process,
)

LOADTEST_TIMEOUT_S = 600.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadtest_argv(args: argparse.Namespace, sfu: Any, out: Path) -> list[str]:
    rooms, per_room = args.rooms, args.per_room
    return [
        sys.executable, "-m", "loadtest",
        "--url", sfu.url, "--api-key", sfu.api_key, f"--api-secret={sfu.api_secret}",
        "--room", "small", "--rooms", str(rooms),
        "--video-publishers", str(rooms * per_room), "--audio-publishers", str(rooms * per_room),
        "--subscribers", str(rooms * (per_room - 1)),
        "--no-simulcast", "--video-resolution", args.video_resolution, "--layout", "grid",
        "--num-per-second", "50", "--duration", f"{args.duration:g}s",
        "--sfu-pid", str(sfu.pid), "--out", str(out), "--no-plots", "--quiet",
        *(["--workers", str(args.workers)] if args.workers else []),
    ]  # fmt: skip


def sfu_command(tree: Path) -> tuple[str, ...]:
    """`python -m sfu` run from `tree` (its code first on sys.path)."""
    script = (
        f'cd {shlex.quote(str(tree))} && exec {shlex.quote(sys.executable)} -m sfu --config "$0"'
    )
    return ("sh", "-c", script, "{config}")


async def run_one(
    args: argparse.Namespace, workdir: Path, fast_path: str, udp_port: bool, tree: Path
) -> dict[str, Any]:
    rtc: dict[str, Any] = {"fast_path": fast_path}
    if udp_port:
        rtc["udp_port"] = free_udp_port()
    participants = args.rooms * (2 * args.per_room - 1)
    extra = {"rtc": rtc, "limits": {"max_cpu_load": 0, "max_sessions_per_ip": 0}}
    label = f"fp={fast_path}" + (" udp_port" if udp_port else " port range")
    if len(args.trees) > 1:
        label = f"{tree.name} {label}"
    out = workdir / "loadtest"
    profile_path: Path | None = None
    try:
        async with running_sfu(
            workdir / "sfu",
            log_level="warn",
            extra_config=extra,
            rtc_ports=max(100, 2 * participants + 20),
            startup_timeout_s=30.0,
            command=sfu_command(tree),
        ) as sfu:
            log(f"{label}: SFU pid {sfu.pid}, {participants} participants in {args.rooms} rooms")
            out.mkdir(parents=True, exist_ok=True)
            with (workdir / "loadtest.log").open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    *loadtest_argv(args, sfu, out),
                    cwd=REPO_ROOT, stdout=log_file, stderr=log_file, start_new_session=True,
                )  # fmt: skip
                profiler = asyncio.create_task(profile(args, sfu.pid, workdir))
                try:
                    await asyncio.wait_for(process.wait(), LOADTEST_TIMEOUT_S)
                finally:
                    await stop_process(process, 5.0)
                    profile_path = await profiler
    except SfuLogErrors as exc:  # the run is measured; what the SFU logged is reported
        log(f"  ! {label}: {exc}")
    report_path = out / "report.json"
    if not report_path.exists():
        raise RuntimeError(f"the load tester wrote no report; see {workdir / 'loadtest.log'}")
    summary = json.loads(report_path.read_text())["summary"]
    keep = (
        "sfu_cpu_us_per_packet", "sfu_cpu_pct", "sfu_cpu_basis", "sfu_packets_sent", "loss_pct",
        "latency_ms", "join_failures", "packets_received", "loadtest_cpu_us_per_packet",
        "loadtest_worker_cpu_pct", "loadtest_publisher_cpu_pct", "sfu_packets_dropped",
        "sfu_packets_dropped_steady",
    )  # fmt: skip
    result: dict[str, Any] = {
        "variant": label, "fast_path": fast_path, "udp_port": udp_port, "tree": str(tree),
    }  # fmt: skip
    if profile_path is not None:
        result["profile"] = summarise_py_spy(profile_path, args.top)
    result.update({k: summary.get(k) for k in keep})
    us, pct = result["sfu_cpu_us_per_packet"], result["sfu_cpu_pct"]
    result["fwd_pps"] = round(pct / 100 / (us * 1e-6)) if us and pct else None
    log(
        f"  {label}: {result['sfu_cpu_us_per_packet']} µs/pkt, SFU {result['sfu_cpu_pct']} % CPU, "
        f"loss {result['loss_pct']} %, latency {result['latency_ms']}"
    )
    return result


async def profile(args: argparse.Namespace, pid: int, workdir: Path) -> Path | None:
    """With `--profile py-spy`: py-spy records the SFU for most of the load tester's run, from
    `--profile-after` s on (the joins are over by then)."""
    if args.profile != "py-spy":
        return None
    binary = args.py_spy or shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    await asyncio.sleep(args.profile_after)
    out = workdir / "sfu.py-spy.txt"
    seconds = max(5, int(args.duration - 5))
    process = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
        "--format", "raw", *(("--native",) if args.native else ("--nonblocking",)),
        "--output", str(out), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.wait_for(process.wait(), seconds + 30)
    finally:
        await stop_process(process, 5.0)
    return out if out.exists() else None


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'run':>3}  {'variant':>30}  {'µs/pkt':>7}  {'SFU CPU %':>9}  {'fwd pps':>9}  "
        f"{'loss %':>6}  {'p50 ms':>6}  {'p99 ms':>7}  {'lt µs/pkt':>9}"
    )
    for i, r in enumerate(results):
        latency = r.get("latency_ms") or {}
        print(
            f"{i:>3}  {r['variant']:>30}  {r['sfu_cpu_us_per_packet']!s:>7}  "
            f"{r['sfu_cpu_pct']!s:>9}  {r['fwd_pps']!s:>9}  {r['loss_pct']!s:>6}  "
            f"{latency.get('p50')!s:>6}  {latency.get('p99')!s:>7}  "
            f"{r['loadtest_cpu_us_per_packet']!s:>9}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=40)
    parser.add_argument("--per-room", type=int, default=5, help="participants per room (≥ 2)")
    parser.add_argument("--duration", type=float, default=30.0, help="load tester run, s")
    parser.add_argument(
        "--video-resolution",
        choices=("high", "medium", "low"),
        default="low",
        help="the camera, without simulcast: high 1280×720@30 1.5 Mbit/s, medium 640×360@20 "
        "500 kbit/s, low 320×180@15 150 kbit/s (default: low, a small tile)",
    )
    parser.add_argument("--fast-paths", nargs="+", choices=("auto", "off"), default=["auto"])
    parser.add_argument(
        "--udp-ports",
        nargs="+",
        choices=("on", "off"),
        default=["on"],
        help="rtc.udp_port (one shared socket) on, off (a socket per peer connection), or both",
    )
    parser.add_argument(
        "--trees",
        nargs="+",
        type=Path,
        default=[REPO_ROOT],
        help="run the SFU from each of these source trees in turn (default: this one), e.g. a "
        "`git archive` of another commit with its extensions built",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole sequence")
    parser.add_argument("--workers", type=int, help="load tester subscriber processes")
    parser.add_argument("--profile", choices=("none", "py-spy"), default="none")
    parser.add_argument("--py-spy", help="path of the py-spy binary (default: PATH, the venv)")
    parser.add_argument(
        "--native", action="store_true", help="py-spy: also sample C frames (the extensions')"
    )
    parser.add_argument("--profile-after", type=float, default=20.0, help="s before recording")
    parser.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.rooms < 1 or args.per_room < 2 or args.rounds < 1 or args.duration <= 0:
        parser.error("--rooms ≥ 1, --per-room ≥ 2, --rounds ≥ 1, --duration > 0")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="small_rooms-"))
    config = {
        k: str(v) if isinstance(v, Path) else [str(t) for t in v] if k == "trees" else v
        for k, v in vars(args).items()
    }
    output: dict[str, Any] = {"benchmark": "small_rooms", "config": config, "results": []}
    log(f"work directory {workdir}")
    try:
        runs = [
            (fast, udp == "on", tree)
            for _ in range(args.rounds)
            for udp in args.udp_ports
            for tree in args.trees
            for fast in args.fast_paths
        ]
        for i, (fast, udp, tree) in enumerate(runs):
            name = f"run{i}-{fast}-{'udp' if udp else 'range'}"
            with contextlib.redirect_stdout(sys.stderr):  # the harness prints the SFU log tail
                output["results"].append(await run_one(args, workdir / name, fast, udp, tree))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return output


def main() -> None:
    args = parse_args()
    loop = asyncio.new_event_loop()
    task = loop.create_task(run(args))
    for sig in (signal.SIGINT, signal.SIGTERM):  # cancel: every `finally` stops its process
        loop.add_signal_handler(sig, task.cancel)
    try:
        output = loop.run_until_complete(task)
    except asyncio.CancelledError:
        log("interrupted; everything started was stopped")
        sys.exit(130)
    finally:
        loop.close()
    print(
        f"\nsmall_rooms: {args.rooms} rooms × {args.per_room} participants (camera "
        f"{args.video_resolution} VP8 + Opus each, watching the others), {args.duration:g} s; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for r in output["results"]:
        if "profile" in r:
            print(f"\n--- profile, {r['variant']} ---\n{r['profile']}")
    print_table(output["results"])
    line = json.dumps(output, separators=(",", ":"))
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
