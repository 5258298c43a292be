"""Pacing of one subscriber transport's video while the allocator holds it below its preferred
layer: a key frame must not reach a thin link as one burst.

A key frame is tens of packets the publisher produces at once (a 180p one 5-10 kB, a 360p one
20-40 kB). Forwarded as they come, they reach the bottleneck back to back; a drop-tail queue of
300 ms at 300 kbit/s holds 11 kB, so the burst's tail is dropped, the subscriber NACKs, the
resends compete with the next frames for the same queue, and a low layer decodes only at key
frames. `Pacer` spreads the packets of a transport's *constrained* video tracks (the allocator
holds them below their preferred layer, or the link is thin: `DownTrack.constrained`) at
`PACE_FACTOR` × the estimate, in bursts of at most `PACE_BURST` seconds of that rate. (libwebrtc
paces its own sends at 2.5 × its target; a burst at 2.5 × still fills the queue at 1.5 × the
rate it drains, which for a 360p key frame on a 600 kbit/s link is more than 300 ms holds; at
`PACE_FACTOR` it is a third of that, and the key frame is 0.1-0.3 s later.)

What is not held: audio, tracks at their preferred layer (their link carries them), resends
(their own budget, `SubscriberBandwidth.allow_retransmit`) and probes (their own pacing,
`sfu.room.probe`). Packets are stamped with their transport-wide sequence number when they
leave, so the estimator sees when they really went out.

Bounded: at most `MAX_QUEUE` packets, none held longer than `MAX_DELAY` (a stale or wrong
estimate costs at most that much delay, never a freeze); beyond either, the oldest leave at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from sfu.metrics import COUNTERS

__all__ = ["Pacer"]

PACE_FACTOR = 1.5
PACE_BURST = 0.02
#: ... but a burst always allows two full packets (a thin link's 20 ms is less than one)
PACE_MIN_BURST = 2 * 1200
#: seconds between releases while packets are held
PACE_TICK = 0.005
MAX_QUEUE = 512
MAX_DELAY = 0.3

#: schedules a call after a delay; False when it cannot (then nothing is held)
Scheduler = Callable[[float, Callable[[], None]], bool]


def _call_later(delay: float, callback: Callable[[], None]) -> bool:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a synchronous caller): nothing can wait
        return False
    loop.call_later(delay, callback)
    return True


class Pacer:
    """The held packets of one subscriber transport (see the module docstring). `estimate`
    gives the link's estimate in bits per second (None: nothing known, nothing held)."""

    def __init__(
        self,
        clock: Callable[[], float],
        estimate: Callable[[], int | None],
        *,
        schedule: Scheduler = _call_later,
    ) -> None:
        self._clock = clock
        self._estimate = estimate
        self._schedule = schedule
        self._queue: deque[tuple[float, Callable[[], None]]] = deque()
        self._tokens = 0.0
        self._tokens_at = -1.0
        self._scheduled = False
        self._releasing = False

    @property
    def holding(self) -> bool:
        return bool(self._queue)

    def _refill(self, now: float) -> bool:
        """Top the bucket up to `now`; whether pacing applies (an estimate is known)."""
        estimate = self._estimate()
        if estimate is None:
            self._tokens_at = -1.0
            return False
        rate = PACE_FACTOR * estimate / 8
        depth = max(rate * PACE_BURST, PACE_MIN_BURST)
        if self._tokens_at < 0:
            self._tokens = depth
        else:
            self._tokens = min(self._tokens + rate * max(now - self._tokens_at, 0.0), depth)
        self._tokens_at = now
        return True

    def admit(self) -> bool:
        """Whether a constrained track's packet may leave now; if not, `hold` it."""
        if self._queue:
            return False  # in order behind what is held
        return not self._refill(self._clock()) or self._tokens > 0

    def charge(self, size: int) -> None:
        """`size` bytes of a constrained track left (admitted or released)."""
        self._tokens -= size

    def hold(self, send: Callable[[], None]) -> None:
        """Call `send` when the budget allows, after everything held before it."""
        self._queue.append((self._clock(), send))
        COUNTERS.paced_packets += 1
        if len(self._queue) > MAX_QUEUE:
            self._queue.popleft()[1]()
        self._arm()

    def _arm(self) -> None:
        if self._scheduled or not self._queue or self._releasing:
            return
        self._scheduled = True
        if not self._schedule(PACE_TICK, self._release):
            self._scheduled = False
            while self._queue:
                self._queue.popleft()[1]()

    def _release(self) -> None:
        self._scheduled = False
        self._releasing = True
        try:
            now = self._clock()
            pacing = self._refill(now)
            queue = self._queue
            while queue and (not pacing or self._tokens > 0 or now - queue[0][0] >= MAX_DELAY):
                queue.popleft()[1]()
        finally:
            self._releasing = False
        self._arm()

    def clear(self) -> None:
        """Forget what is held (the transport closed)."""
        self._queue.clear()
