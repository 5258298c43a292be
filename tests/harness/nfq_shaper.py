"""Random loss and added delay in user space, on one netfilter queue (this kernel has no netem).

``python -m tests.harness.nfq_shaper [--loss P] [--delay-ms D] [--seed S]`` binds a free
NFQUEUE queue number, prints ``{"ready": true, "queue": N}`` and then gives every packet the
kernel queues there a verdict: dropped with probability ``loss``, otherwise accepted
``delay_ms`` after it arrived (FIFO; verdicts held, never re-sent). The caller adds the iptables
rule that sends packets to queue N (tests/harness/shaper.py).

UDP GSO: the kernel hands this process single datagrams even when the sender batched them with
UDP_SEGMENT, because nfnetlink_queue segments a GSO packet before queueing it unless the
listener set NFQA_CFG_F_GSO (netfilterqueue never does). Every datagram gets its own verdict, so
loss never takes out a whole batch, and whatever comes after the hook (the rate cap's qdisc)
sees single datagrams too.

It runs at `NICENESS` (root lowers it): a router does not stall for tens of milliseconds when
the test machine's other processes are busy, and a shaper that did would add queueing delay
the rate cap never asked for, which the SFU's estimator rightly reads as congestion.

Bounded: at most ``--max-held`` packets are held (beyond that a packet is dropped and counted
as overflow), a delay is at most ``MAX_DELAY_MS``, and the process exits by itself after
``--max-seconds``, on SIGTERM or at end of input; every held packet is accepted on the way out.

Control, one JSON object per line on stdin: ``{"loss": P}``, ``{"delay_ms": D}`` (either or
both) change the shaping from the next packet on and are answered with the stats;
``{"stats": true}`` answers ``{"seen", "dropped_loss", "dropped_overflow", "accepted", "held",
"max_held", "loss", "delay_ms"}``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import select
import signal
import sys
import time
from typing import Any

from netfilterqueue import COPY_META, NetfilterQueue, Packet

MAX_DELAY_MS = 2000.0
NICENESS = -10
KERNEL_QUEUE_LEN = 8192
QUEUE_NUMBERS = (20000, 60000)
BIND_ATTEMPTS = 20


class Shaper:
    """The verdicts: Bernoulli loss, then a fixed delay through a bounded FIFO of held packets."""

    def __init__(self, loss: float, delay_ms: float, seed: int, max_held: int) -> None:
        self.rng = random.Random(seed)
        self.loss, self.delay_s = 0.0, 0.0
        self.configure({"loss": loss, "delay_ms": delay_ms})
        self.max_held = max_held
        self.held: collections.deque[tuple[float, Packet]] = collections.deque()
        self.counts = {"seen": 0, "dropped_loss": 0, "dropped_overflow": 0, "accepted": 0}
        self.most_held = 0

    def configure(self, command: dict[str, Any]) -> None:
        if "loss" in command:
            loss = float(command["loss"])
            if not 0.0 <= loss <= 1.0:
                raise ValueError(f"loss {loss} is not a probability")
            self.loss = loss
        if "delay_ms" in command:
            delay = float(command["delay_ms"])
            if not 0.0 <= delay <= MAX_DELAY_MS:
                raise ValueError(f"delay_ms {delay} outside 0..{MAX_DELAY_MS}")
            self.delay_s = delay / 1000.0

    def on_packet(self, packet: Packet) -> None:
        self.counts["seen"] += 1
        if self.loss and self.rng.random() < self.loss:
            packet.drop()
            self.counts["dropped_loss"] += 1
        elif not self.delay_s and not self.held:
            packet.accept()
            self.counts["accepted"] += 1
        elif len(self.held) >= self.max_held:
            packet.drop()
            self.counts["dropped_overflow"] += 1
        else:
            self.held.append((time.monotonic() + self.delay_s, packet))
            self.most_held = max(self.most_held, len(self.held))

    def release(self, now: float, everything: bool = False) -> float | None:
        """Accept every held packet that is due; seconds until the next one is (None: none)."""
        while self.held and (everything or self.held[0][0] <= now):
            self.held.popleft()[1].accept()
            self.counts["accepted"] += 1
        return max(self.held[0][0] - now, 0.0) if self.held else None

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "held": len(self.held),
            "max_held": self.most_held,
            "loss": self.loss,
            "delay_ms": self.delay_s * 1000.0,
        }


def bind_free_queue(nfq: NetfilterQueue, shaper: Shaper) -> int:
    """Bind a queue number nobody else on this host holds (other tests may run shapers too)."""
    rng = random.Random()
    last: OSError | None = None
    for _ in range(BIND_ATTEMPTS):
        number = rng.randrange(*QUEUE_NUMBERS)
        try:
            nfq.bind(number, shaper.on_packet, max_len=KERNEL_QUEUE_LEN, mode=COPY_META)
        except OSError as exc:
            last = exc
            continue
        return number
    raise OSError(f"no free NFQUEUE number in {BIND_ATTEMPTS} attempts: {last}")


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(shaper: Shaper, nfq: NetfilterQueue, max_seconds: float) -> None:
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    queue_fd, stdin_fd = nfq.get_fd(), sys.stdin.fileno()
    os.set_blocking(queue_fd, False)
    deadline = time.monotonic() + max_seconds
    pending = b""
    while not stop:
        now = time.monotonic()
        if now >= deadline:
            break
        wait = shaper.release(now)
        timeout = min(deadline - now, 0.5 if wait is None else wait)
        try:
            readable, _, _ = select.select([queue_fd, stdin_fd], [], [], timeout)
        except InterruptedError:
            continue
        if queue_fd in readable:
            nfq.run(block=False)
        if stdin_fd in readable:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                break
            pending = (pending + chunk)[-65536:]  # a line longer than that is garbage anyway
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    try:
                        shaper.configure(json.loads(line))
                    except ValueError as exc:  # bad JSON or a value out of range
                        reply({"error": str(exc)})
                    else:
                        reply(shaper.stats())
    shaper.release(time.monotonic(), everything=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-held", type=int, default=4096)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):  # not root: the default priority
        os.setpriority(os.PRIO_PROCESS, 0, NICENESS)
    shaper = Shaper(args.loss, args.delay_ms, args.seed, args.max_held)
    nfq = NetfilterQueue()
    number = bind_free_queue(nfq, shaper)
    try:
        reply({"ready": True, "queue": number, "pid": os.getpid()})
        serve(shaper, nfq, args.max_seconds)
        reply({"stopped": True, **shaper.stats()})
    finally:
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
