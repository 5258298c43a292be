"""Run fuzz targets under atheris and keep their corpus: `python -m fuzz.run [options] [target ...]`.

Each target runs in its own `python -m fuzz.worker` subprocess (one at a time) on a working copy of
`fuzz/corpus/<target>/` plus the target's `seeds()`, for `--seconds` and/or `--runs` inputs.
Afterwards libFuzzer's `-merge=1` keeps the inputs that add coverage, and the result (at most
`--max-files` and `--max-bytes` of them, smallest first) replaces `fuzz/corpus/<target>/`. Findings land in `fuzz/crashes/`:
`<target>-<sig>.bin/.txt` for an unexpected exception (smallest input per signature),
`<target>-slow-<sha1>.bin` for an input over `--slow-ms`, `<target>-{timeout,oom,crash}-*.bin` for
what libFuzzer itself catches. A table of inputs, seconds, inputs/s and findings ends the run.

`--prune` only re-filters the committed corpus (drops inputs that now raise or are slow, keeps
the size caps). `--replay FILE...` runs one target (uninstrumented, without atheris) on files and prints the time
and outcome of each, to reproduce a finding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.targets import TARGETS, load

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "fuzz" / "corpus"
CRASHES = ROOT / "fuzz" / "crashes"

_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)


@dataclass
class Result:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: dict[str, str] = field(default_factory=dict)  # signature -> description
    slow: int = 0
    other: list[str] = field(default_factory=list)  # libFuzzer's own artifacts
    corpus_files: int = 0
    exit_codes: list[int] = field(default_factory=list)

    @property
    def findings(self) -> int:
        return len(self.crashes) + self.slow + len(self.other)


def _worker(target: str, flags: list[str], env: dict[str, str], log: Path) -> int:
    # libFuzzer's -merge re-runs argv[0] with the same flags: give it a program that can be run.
    script = log.parent / "worker.sh"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fuzz.worker {target} "$@"\n')
    script.chmod(0o755)
    env = dict(env, FUZZ_ARGV0=str(script))
    command = [sys.executable, "-m", "fuzz.worker", target, *flags]
    with log.open("ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        return subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=out).returncode


def _env(work: Path, stats: Path, slow_ms: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["FUZZ_CRASH_DIR"] = str(CRASHES)
    env["FUZZ_STATS"] = str(stats)
    env["FUZZ_SLOW_MS"] = str(slow_ms)
    return env


def _prepare(target: str, work: Path) -> Path:
    corpus = work / "corpus"
    shutil.rmtree(work, ignore_errors=True)
    corpus.mkdir(parents=True)
    source = CORPUS / target
    if source.is_dir():
        for path in source.iterdir():
            if path.is_file():
                shutil.copy(path, corpus / path.name)
    for data in load(target).seeds():
        (corpus / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
    return corpus


def _keep(target: str, paths: list[Path], args: argparse.Namespace) -> list[Path]:
    """The smallest of `paths` that replay (uninstrumented) without an exception and quickly,
    within `--max-files` and `--max-bytes`: the committed corpus stays small and fast."""
    module = load(target)
    logging.disable(logging.CRITICAL)  # refused inputs are logged; here that is only noise
    kept: list[Path] = []
    total = 0
    for path in sorted(paths, key=lambda p: (p.stat().st_size, p.name)):
        size = path.stat().st_size
        if len(kept) >= args.max_files or total + size > args.max_bytes:
            break
        # The worker goes on after a finding, so libFuzzer may have kept that input: leave it
        # out (it is in fuzz/crashes/), and any input slow to replay.
        start = time.process_time()
        try:
            module.test_one(path.read_bytes())
        except Exception:
            continue
        if time.process_time() - start > args.slow_ms / 1000:
            continue
        kept.append(path)
        total += size
    logging.disable(logging.NOTSET)
    return kept


def prune(target: str, args: argparse.Namespace) -> int:
    """Apply `_keep` to `fuzz/corpus/<target>/` in place; the number of files kept."""
    directory = CORPUS / target
    paths = [p for p in directory.glob("*") if p.is_file()]
    kept = set(_keep(target, paths, args))
    for path in paths:
        if path not in kept:
            path.unlink()
    return len(kept)


def _merge(
    target: str, work: Path, env: dict[str, str], max_len: int, args: argparse.Namespace
) -> int:
    """Minimize `work/corpus` into `fuzz/corpus/<target>/`; the number of files kept."""
    merged = work / "merged"
    merged.mkdir()
    flags = ["-merge=1", f"-max_len={max_len}", "-timeout=30", str(merged), str(work / "corpus")]
    env = dict(env, FUZZ_SLOW_MS="1000000")
    if _worker(target, flags, env, work / "merge.log") != 0:
        print(f"{target}: merge failed, corpus left as it was (see {work / 'merge.log'})")
        return len(list((CORPUS / target).glob("*")))
    files = _keep(target, list(merged.iterdir()), args)
    destination = CORPUS / target
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    for path in files:
        shutil.copy(path, destination / hashlib.sha1(path.read_bytes()).hexdigest()[:16])
    return len(files)


def fuzz_target(target: str, args: argparse.Namespace, workdir: Path) -> Result:
    module = load(target)
    max_len = int(getattr(module, "MAX_LEN", 4096))
    work = workdir / target
    corpus = _prepare(target, work)
    stats = work / "stats.json"
    env = _env(work, stats, args.slow_ms)
    result = Result(target)
    before = {p.name for p in CRASHES.glob("*")}
    deadline = time.monotonic() + args.seconds if args.seconds else None
    start = time.monotonic()
    for _attempt in range(args.restarts + 1):
        flags = [f"-max_len={max_len}", "-timeout=10", "-rss_limit_mb=2048"]
        flags += ["-print_final_stats=1", f"-artifact_prefix={CRASHES}/{target}-"]
        if args.runs:
            flags.append(f"-runs={args.runs - result.inputs}")
        if deadline is not None:
            flags.append(f"-max_total_time={max(1, int(deadline - time.monotonic()))}")
        if args.seed is not None:
            flags.append(f"-seed={args.seed}")
        log = work / "fuzz.log"
        offset = log.stat().st_size if log.exists() else 0
        code = _worker(target, [*flags, str(corpus)], env, log)
        result.exit_codes.append(code)
        text = log.read_bytes()[offset:].decode("utf-8", "replace")
        executed = [int(m) for m in _EXECUTED.findall(text)]
        if executed:
            result.inputs += executed[-1]
        else:  # killed before libFuzzer printed its final stats
            progress = [int(m) for m in _PROGRESS.findall(text)]
            result.inputs += progress[-1] if progress else 0
        done = code == 0
        out_of_runs = args.runs and result.inputs >= args.runs
        out_of_time = deadline is not None and time.monotonic() >= deadline - 1
        if done or out_of_runs or out_of_time:
            break
    result.seconds = time.monotonic() - start
    if stats.exists():
        data = json.loads(stats.read_text())
        result.crashes = {sig: str(entry["what"]) for sig, entry in data["crashes"].items()}
        result.slow = len(data["slow"])
    for path in sorted(CRASHES.glob(f"{target}-*")):
        kind = path.name[len(target) + 1 :].split("-")[0]
        if path.name not in before and kind in ("crash", "timeout", "oom", "leak"):
            renamed = path.with_name(f"{target}-{kind}-{path.name.split('-')[-1][:10]}.bin")
            path.rename(renamed)
            result.other.append(renamed.name)
    if not args.no_merge:
        result.corpus_files = _merge(target, work, env, max_len, args)
    return result


def print_table(results: list[Result]) -> None:
    head = f"{'target':<18} {'inputs':>11} {'seconds':>8} {'inputs/s':>9} {'findings':>8}  corpus"
    print(head)
    print("-" * len(head))
    for r in results:
        rate = r.inputs / r.seconds if r.seconds else 0.0
        print(
            f"{r.target:<18} {r.inputs:>11,} {r.seconds:>8.0f} {rate:>9,.0f} {r.findings:>8}  "
            f"{r.corpus_files}"
        )
        for sig, what in r.crashes.items():
            print(f"    exception {r.target}-{sig}: {what}")
        if r.slow:
            print(f"    {r.slow} slow input(s): fuzz/crashes/{r.target}-slow-*.bin")
        for name in r.other:
            print(f"    libFuzzer artifact: fuzz/crashes/{name}")


def replay(target: str, files: list[str]) -> int:
    """Run `target` on each file without instrumentation; 1 if any raised."""
    module = load(target)
    failed = 0
    for name in files:
        data = Path(name).read_bytes()
        start, cpu = time.perf_counter(), time.process_time()
        try:
            module.test_one(data)
            outcome = "ok"
        except Exception:
            outcome = "raised:\n" + traceback.format_exc()
            failed = 1
        wall = (time.perf_counter() - start) * 1000
        cpu = (time.process_time() - cpu) * 1000
        print(f"{name}: {len(data)} bytes, {cpu:.1f} ms CPU ({wall:.1f} ms wall), {outcome}")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument("targets", nargs="*", help=f"default: all ({', '.join(TARGETS)})")
    parser.add_argument("--seconds", type=int, default=0, help="time per target")
    parser.add_argument("--runs", type=int, default=0, help="inputs per target")
    parser.add_argument("--slow-ms", type=int, default=100, help="an input slower is a finding")
    parser.add_argument("--max-files", type=int, default=300, help="corpus files kept per target")
    parser.add_argument("--max-bytes", type=int, default=250_000, help="corpus bytes per target")
    parser.add_argument("--restarts", type=int, default=5, help="after a libFuzzer crash")
    parser.add_argument("--seed", type=int, default=None, help="libFuzzer's -seed")
    parser.add_argument("--no-merge", action="store_true", help="leave fuzz/corpus/ as it is")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run one target on files")
    parser.add_argument("--prune", action="store_true", help="only re-filter fuzz/corpus/")
    args = parser.parse_args(argv)
    if args.replay:
        if len(args.targets) != 1:
            parser.error("--replay needs exactly one target")
        return replay(args.targets[0], args.replay)
    targets = args.targets or list(TARGETS)
    for target in targets:
        load(target)  # unknown names fail before anything runs
    if args.prune:
        for target in targets:
            print(f"{target}: {prune(target, args)} corpus files kept")
        return 0
    if not args.seconds and not args.runs:
        args.seconds = 60
    CRASHES.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz-"))
    results = []
    for target in targets:
        print(f"fuzzing {target} (work: {workdir / target}) ...", flush=True)
        results.append(fuzz_target(target, args, workdir))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
