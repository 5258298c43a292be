"""A LiveKit Python SDK participant as a process of its own, for tests that kill it.

``python -m tests.harness.lk_participant URL TOKEN`` connects, prints ``connected`` and stays
until SIGTERM (then leaves cleanly) or until it is killed; it gives up after ten minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from livekit import rtc


async def main(url: str, token: str) -> int:
    room = rtc.Room()
    await asyncio.wait_for(room.connect(url, token), 20)
    print("connected", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 600)
    await room.disconnect()
    print("left", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
