"""Run the SFU (``sfu.__main__.main``) under tracemalloc; each SIGUSR1 dumps a snapshot.

``python benchmarks/sfu_tracemalloc.py OUT_DIR --config FILE``: snapshots go to
``OUT_DIR/snapshot-N.pickle``; compare two with ``python benchmarks/sfu_tracemalloc.py --compare
A B`` to see which source lines hold the memory that grew between them. Used to tell a leak
from a cache that fills up (the soak benchmark, the 500 run). tracemalloc slows the SFU down, so
the CPU figures of such a run mean nothing. The SFU's own code is not changed.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def compare(old: str, new: str, top: int = 25) -> None:
    before = tracemalloc.Snapshot.load(old)
    after = tracemalloc.Snapshot.load(new)
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"total growth {total / 1e6:+.2f} MB")
    for stat in stats[:top]:
        print(stat)


def run() -> int:
    from sfu.__main__ import main

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    taken = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        tracemalloc.take_snapshot().dump(str(out / f"snapshot-{taken}.pickle"))
        taken += 1

    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, dump)
    return main(sys.argv[2:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(run())
