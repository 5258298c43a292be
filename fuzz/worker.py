"""One target under atheris: `python -m fuzz.worker TARGET [libFuzzer flags] [corpus dirs]`.

The project packages are imported with atheris' coverage instrumentation, then libFuzzer runs
`test_one` until its flags say stop. Findings are written to `$FUZZ_CRASH_DIR` (default `.`):

* an unexpected exception: `<target>-<sig>.bin` (the smallest input seen with that signature:
  exception type and innermost project frame) and `<target>-<sig>.txt` (the traceback). The
  fuzzing goes on unless `FUZZ_STOP_ON_CRASH=1`, when libFuzzer reports it as a crash instead;
* an input that takes more than `FUZZ_SLOW_MS` (default 100) of CPU time twice in a row (CPU
  time, not wall time: a loaded machine does not make an input slow): `<target>-slow-<sha1>.bin`
  (at most `FUZZ_SLOW_MAX`, default 20, per run) and a `SLOW` line on stderr.

`$FUZZ_STATS`, if set, gets a JSON summary of the findings (and the inputs run when it was
written); `fuzz.run` reads libFuzzer's final stats for the total. `fuzz.run` is the usual way to
start this; only this module imports atheris.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import atheris

INSTRUMENTED = ["sfu", "auth_service", "loadtest", "fuzz.targets"]
ROOT = Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("sfu/", "auth_service/", "loadtest/", "fuzz/targets/")


def signature(exc: BaseException) -> tuple[str, str]:
    """(short id, description) of an exception: its type and two innermost project frames."""
    frames = traceback.extract_tb(exc.__traceback__)
    places = []
    for frame in reversed(frames):
        path = os.path.relpath(frame.filename, ROOT)
        if path.startswith(PROJECT_DIRS):
            places.append(f"{path}:{frame.lineno}")
            if len(places) == 2:  # where it was raised, and from where that was called
                break
    where = " from ".join(places) or "?"
    text = f"{type(exc).__module__}.{type(exc).__qualname__} at {where}"
    return hashlib.sha1(text.encode()).hexdigest()[:8], text


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m fuzz.worker TARGET [libFuzzer flags] [corpus dirs]")
    name = sys.argv.pop(1)
    logging.disable(logging.CRITICAL)  # handlers log every refused input; that is not a finding
    with atheris.instrument_imports(include=INSTRUMENTED):
        from fuzz.targets import load

        target = load(name)
    test_one = target.test_one
    slow_s = float(os.environ.get("FUZZ_SLOW_MS", "100")) / 1000
    slow_max = int(os.environ.get("FUZZ_SLOW_MAX", "20"))
    crash_dir = Path(os.environ.get("FUZZ_CRASH_DIR", "."))
    stop_on_crash = os.environ.get("FUZZ_STOP_ON_CRASH") == "1"
    stats_path = os.environ.get("FUZZ_STATS")
    runs = 0
    slow: dict[str, float] = {}
    crashes: dict[str, dict[str, object]] = {}

    def write_stats() -> None:
        if stats_path:
            data = {"runs": runs, "crashes": crashes, "slow": slow}
            Path(stats_path).write_text(json.dumps(data, indent=1))

    def crashed(data: bytes, exc: BaseException) -> None:
        sig, text = signature(exc)
        entry = crashes.get(sig)
        if entry is None:
            print(f"CRASH {name} {sig} {text}", file=sys.stderr, flush=True)
            entry = crashes[sig] = {"what": text, "count": 0, "size": len(data) + 1}
        entry["count"] = int(str(entry["count"])) + 1
        if len(data) < int(str(entry["size"])):  # keep the smallest reproducer
            entry["size"] = len(data)
            stem = crash_dir / f"{name}-{sig}"
            stem.with_suffix(".bin").write_bytes(data)
            tb = "".join(traceback.format_exception(exc))
            stem.with_suffix(".txt").write_text(f"{text}\n{len(data)} bytes\n\n{tb}")
            write_stats()

    def one(data: bytes) -> None:
        nonlocal runs
        runs += 1
        start = time.process_time()
        try:
            test_one(data)
        except Exception as exc:
            crashed(data, exc)
            if stop_on_crash:
                raise
            return
        elapsed = time.process_time() - start
        if elapsed > slow_s:
            start = time.process_time()
            test_one(data)
            again = time.process_time() - start
            if again > slow_s:
                digest = hashlib.sha1(data).hexdigest()[:10]
                print(
                    f"SLOW {name} {digest} {len(data)} bytes {elapsed * 1000:.0f} ms "
                    f"then {again * 1000:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
                if digest not in slow and len(slow) < slow_max:
                    slow[digest] = round(again * 1000, 1)
                    (crash_dir / f"{name}-slow-{digest}.bin").write_bytes(data)
                    write_stats()

    if os.environ.get("FUZZ_ARGV0"):  # a runnable argv[0], which libFuzzer's -merge re-runs
        sys.argv[0] = os.environ["FUZZ_ARGV0"]
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
