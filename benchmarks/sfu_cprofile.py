"""Run the SFU (``sfu.__main__.main``) under cProfile and write the stats when it stops.

``python benchmarks/sfu_cprofile.py OUT.prof --config FILE`` — used by ``forward_cpu.py
--profile cprofile``. uvicorn re-raises the SIGTERM it caught once it has shut down, with the
handler that was installed before it started; the no-op handler installed here lets the SFU
return normally, so the stats get written. The SFU's own code is not changed.
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType

from sfu.__main__ import main


def _returned(signum: int, frame: FrameType | None) -> None:
    """Reached only when uvicorn re-raises the signal after its graceful shutdown."""


def run() -> int:
    out = sys.argv[1]
    signal.signal(signal.SIGTERM, _returned)
    signal.signal(signal.SIGINT, _returned)
    profile = cProfile.Profile()
    profile.enable()
    try:
        return main(sys.argv[2:])
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    sys.exit(run())
