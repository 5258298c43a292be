"""Padding probes for one subscriber transport: when to send one, how big, and sending it.

`Prober.maybe_probe` is called after each allocation (`sfu.room.allocation.StreamAllocator`).
While some track is below its preferred layer (the allocation is *deficient*), a probe is sent
every `PROBE_INTERVAL` (doubling after each probe that did not raise the estimate, up to
`PROBE_INTERVAL_MAX`; `PROBE_AFTER_SUCCESS` after one that did), never while the estimator
signals overuse or more than `LOSS_CONGESTED` lost. For its duration the transport carries
padding-only packets on video streams (forwarded or paused), paced by the clock in `PROBE_TICK`
steps, enough to bring the link to the rate the next step needs × `PROBE_OVERAGE` (at least
`PROBE_MIN` above the estimate, at most `PROBE_MAX_FACTOR` times it, `PROBE_MAX_FACTOR_AFTER_SUCCESS`
right after a probe that raised it).

A probe is sized by the queue it may build, not by a fixed time: it lasts as long as it takes to
put `PROBE_QUEUE` seconds of what the link drains (the estimate right after a probe proved it,
else what arrived when that is less: the estimate may be stale) on the link beyond it, between
`PROBE_MIN_DURATION` and `PROBE_DURATION`, and its rate is lowered to keep that bound at
`PROBE_MIN_DURATION` (to no less than `PROBE_STEP` × the estimate). A probe into a link already at its cap then adds that much queueing delay and
no loss. (A fixed 300 ms probe at 3 × the estimate filled a 300 ms drop-tail queue, cost media
packets, and the loss dropped the estimate below the lowest layer: pause, resume, pause. Much
shorter probes are no better: a token bucket's burst lets them through at any rate.)

What the feedback says of a probe is `sfu.media.bandwidth.SubscriberBandwidth`'s to measure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.forwarder import PROBE_PADDING
from sfu.metrics import COUNTERS
from sfu.room.publication import Subscription

PROBE_INTERVAL = 2.0
PROBE_INTERVAL_MAX = 3.0
PROBE_AFTER_SUCCESS = 0.5
PROBE_DURATION = 0.3
PROBE_MIN_DURATION = 0.12
#: seconds of what the link drains a probe puts on it beyond that
PROBE_QUEUE = 0.25
MIN_DRAIN = 50_000
PROBE_TICK = 0.01
#: ticks' worth of packets a late timer may still send at once
MAX_PROBE_CATCH_UP = 3
PROBE_OVERAGE = 1.2
PROBE_MIN = 200_000
PROBE_MAX_FACTOR = 2
#: after a probe that raised the estimate (the link is not near its capacity)
PROBE_MAX_FACTOR_AFTER_SUCCESS = 3
#: the least a probe goes above the estimate when what arrives is far below it
PROBE_STEP = 1.25
LOSS_CONGESTED = 0.10
PROBE_PACKET_BITS = (12 + 8 + PROBE_PADDING) * 8


class Prober:
    """The probes of one subscriber transport (see the module docstring)."""

    def __init__(
        self,
        bandwidth: SubscriberBandwidth,
        subscriptions: Callable[[], Iterable[Subscription]],
        clock: Callable[[], float],
    ) -> None:
        self.bandwidth = bandwidth
        self._subscriptions = subscriptions
        self._clock = clock
        self._next = 0.0
        self._interval = PROBE_INTERVAL
        self._proved = False  # the last probe raised the estimate
        self._start_estimate = 0
        self._timer: asyncio.TimerHandle | None = None
        self.left = 0.0  # seconds of the probe still to send
        self.rate = 0.0  # its padding, packets per second
        self._credit = 0.0
        self._last = 0.0
        self.closed = False

    def maybe_probe(
        self, *, deficient: bool, estimate: int, committed: int, wanted: float, now: float
    ) -> None:
        """After an allocation of `estimate` that commits `committed` bits per second; `wanted`
        is the rate that would let it climb (the next step, or every preferred layer)."""
        if self._timer is not None or self.bandwidth.probing:
            return
        gcc = self.bandwidth.gcc
        if self._start_estimate:  # the last probe's outcome is known by now
            self._proved = estimate > self._start_estimate * 1.05
            if self._proved:
                # it proved more: the next step's probe soon (libwebrtc probes on, exponentially)
                self._interval = PROBE_INTERVAL
                self._next = min(self._next, now + PROBE_AFTER_SUCCESS)
            else:
                self._interval = min(self._interval * 2, PROBE_INTERVAL_MAX)
            self._start_estimate = 0
        if not deficient or not self.bandwidth.stamping or now < self._next:
            return
        if self.bandwidth.overusing or gcc.loss_fraction > LOSS_CONGESTED:
            # the link is full already: a probe now proves nothing and costs media packets
            self._proved = False
            self._next = now + self._interval
            self._interval = min(self._interval * 2, PROBE_INTERVAL_MAX)
            return
        # the queue builds at what the link drains: the estimate right after a probe proved
        # it, else what is known to arrive (the estimate may be stale: the link may have just
        # got thinner), and the goal is no more than PROBE_MIN_DURATION can carry within
        # PROBE_QUEUE of that
        acked = gcc.acked_rate()
        drains = float(estimate)
        if acked is not None and not self._proved:
            drains = min(drains, max(acked, MIN_DRAIN))
        factor = PROBE_MAX_FACTOR_AFTER_SUCCESS if self._proved else PROBE_MAX_FACTOR
        goal = min(max(wanted * PROBE_OVERAGE, estimate + PROBE_MIN), factor * estimate)
        # (but always a little above the estimate: an estimate that is not carried now, as
        # while a track is paused, must still be proved or it can never grow)
        goal = min(
            goal, max(drains * (1 + PROBE_QUEUE / PROBE_MIN_DURATION), PROBE_STEP * estimate)
        )
        padding_rate = goal - committed
        if padding_rate <= 0 or goal <= estimate:
            return
        duration = PROBE_QUEUE * drains / max(goal - drains, 1.0)
        self._next = now + self._interval
        self._start_estimate = estimate
        self.left = min(max(duration, PROBE_MIN_DURATION), PROBE_DURATION)
        self.rate = padding_rate / PROBE_PACKET_BITS
        self._credit = 1.0  # a packet at once, the rest spread over the ticks
        self._last = now
        self.bandwidth.start_probe()
        COUNTERS.probes += 1
        self._tick()

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            self.bandwidth.abandon_probe()
            return
        # by the clock, not by the ticks: a timer that fires late sends what was due (up to
        # MAX_PROBE_CATCH_UP ticks' worth), so the probe's rate is what was planned
        now = self._clock()
        elapsed = min(max(now - self._last, 0.0), MAX_PROBE_CATCH_UP * PROBE_TICK)
        self._last = now
        self.left -= elapsed
        self._credit += self.rate * elapsed
        count = int(self._credit)
        self._credit -= count
        for sub in self._subscriptions():
            if count <= 0:
                break
            if sub.track.receiver.is_video:
                count -= sub.downtrack.send_padding(count)
        if self.left <= 0:
            self.bandwidth.end_probe()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous test): the probe ends here
            self.bandwidth.end_probe()
            return
        self._timer = loop.call_later(PROBE_TICK, self._tick)

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.bandwidth.abandon_probe()
