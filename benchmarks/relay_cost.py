"""Benchmark: the CPU cost of relaying one RTP packet between two media workers.

Two `sfu.media.worker.relay.Relay` sockets in one process (one event loop, as the relay runs
in a worker): each loop iteration queues ``--batch`` packets of ``--size`` bytes for the other
worker (the frames of one iteration go out as one datagram), and the other end reads and
dispatches them to a callback that only counts. Prints µs of CPU (this process, user + system)
per relayed packet, both ends together, and per datagram. The relay's real cost in a worker
is this plus the replica receiver's parse (`RtpPacket.parse`), which a local receiver pays too.

    .venv/bin/python benchmarks/relay_cost.py --packets 200000 --batch 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import uvloop  # noqa: E402

from sfu.media.worker.relay import Relay  # noqa: E402


async def measure(packets: int, batch: int, size: int) -> dict[str, float]:
    namespace = f"bench-{secrets.token_hex(4)}"
    sender, receiver = Relay(namespace, 0), Relay(namespace, 1)
    sender.start()
    receiver.start()
    got = 0
    done = asyncio.Event()

    def count(track: int, layer: int, data: bytes) -> None:
        nonlocal got
        got += 1
        if got >= packets:
            done.set()

    receiver.on_rtp = count
    payload = bytes(12) + os.urandom(size - 12)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sent = 0
    while sent < packets:
        for _ in range(min(batch, packets - sent)):
            sender.send_rtp(1, 1, 0, payload)
            sent += 1
        await asyncio.sleep(0)  # one loop iteration: the flush, the other end's read
        if sender._backlog:
            await asyncio.sleep(0.001)
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        sender.close()
        receiver.close()
    return {
        "batch": batch,
        "size": size,
        "packets": packets,
        "received": got,
        "dropped": sender.dropped,
        "datagrams": sender.datagrams,
        "us_per_packet": round(1e6 * cpu / packets, 3),
        "us_per_datagram": round(1e6 * cpu / max(sender.datagrams, 1), 3),
        "packets_per_s": round(packets / wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--size", type=int, default=1200, help="RTP packet bytes")
    args = parser.parse_args()
    results = []
    for batch in args.batch:
        result = uvloop.run(measure(args.packets, batch, args.size))
        results.append(result)
        print(
            f"batch {batch:3d}: {result['us_per_packet']:6.2f} µs CPU per relayed packet "
            f"(both ends), {result['us_per_datagram']:6.2f} per datagram, "
            f"{result['packets_per_s']} packets/s, dropped {result['dropped']}"
        )
    print(json.dumps({"benchmark": "relay_cost", "results": results}))


if __name__ == "__main__":
    main()
