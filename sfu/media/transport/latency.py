"""Forwarding latency: how long a received datagram waits on this node before its copies leave.

Sends are batched per event-loop iteration (`sfu.media.transport.batch`), so every packet waits
for the rest of its iteration, and once the loop cannot keep up, datagrams queue in the kernel's
receive buffers first: each waits for all those ahead of it. `ForwardLatency` measures both,
sampled, without per-packet clock reads:

* while the probe is ``armed``, the next media datagram read (`SrtpIngress.datagram_received`)
  becomes a sample: `start` asks its socket for the kernel's receive time of the datagram last
  read from it (``SIOCGSTAMPNS``, socket(7); the first ask turns the socket's timestamps on);
* the loop's `Flusher` runs once that iteration's callbacks are done and sends every queued
  datagram; at the end of that run, `finish` takes the wall clock. The difference is the sample:
  the wait in the kernel's receive queue, the iteration's other work, and the flush itself;
* the probe is armed again `interval_s` later (a loop timer), so it costs at most one
  ``ioctl`` and one timer per `interval_s` (5 ms: ≤ 200 samples a second, about 5 µs of CPU each,
  so ≤ 0.1 % of a core), whatever the packet rate.

The first datagram an iteration reads is usually the one that waits longest for that
iteration's flush. One sample per iteration would under-weigh the long iterations (a key-frame
burst to every subscriber), which hold the most packets: so each sample counts once per datagram
the flushes after it sent (`sfu_send_datagrams_total`'s growth), and the percentiles are per
forwarded packet, as subscribers see them (the other datagrams of the iteration waited at most
as long: an upper bound).

Samples go to the `sfu_forward_latency_seconds` histogram (`sfu.metrics`, cumulative) and to a
window of the last `window_s` seconds, whose 99th percentile (`p99`) is what admission reads
(`limits.max_forward_latency_ms`). It is the lower nearest rank over the datagrams, so that one
stray slow datagram on a quiet node (a garbage collection) is not the p99 unless it held back
more than 1 % of the window's datagrams. Few samples do not mean an idle node: a starved loop
takes only a few (each sample waits for its iterations), all of them slow; only below
`MIN_SAMPLES` samples is `p99` 0.

The kernel stamps datagrams with the real-time clock, so the samples use `time.time()`; a step
of the system clock can make one sample wrong (a negative one counts as 0).
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import struct
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable

from sfu.metrics import COUNTERS, FORWARD_LATENCY_BUCKETS

__all__ = ["MIN_SAMPLES", "ForwardLatency", "enable_timestamps"]

#: ioctl SIOCGSTAMPNS (linux/sockios.h; SIOCGSTAMPNS_OLD, a struct timespec of two longs)
SIOCGSTAMPNS = 0x8907
_TIMESPEC = struct.Struct("@ll")
#: samples the window must hold before `p99` says anything (below it: 0)
MIN_SAMPLES = 3
#: the percentile admission reads
QUANTILE = 0.99


def enable_timestamps(fd: int) -> bool:
    """Turn on kernel receive timestamps for socket `fd` (what `start` reads later).

    The first ``SIOCGSTAMPNS`` on a socket turns them on and fails with ENOENT (nothing stamped
    yet); False if the descriptor cannot do it at all (not a socket, not Linux)."""
    try:
        fcntl.ioctl(fd, SIOCGSTAMPNS, bytearray(_TIMESPEC.size), True)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


class ForwardLatency:
    """A sampled measurement of the time from a datagram's arrival to the flush after it."""

    __slots__ = (
        "_buffer",
        "_clock",
        "_interval_s",
        "_loop",
        "_samples",
        "_schedule",
        "_sent",
        "_stamp",
        "_wall",
        "armed",
        "in_flight",
        "window_s",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        schedule: Callable[[], None],
        *,
        window_s: float = 3.0,
        interval_s: float = 0.005,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`schedule` makes the loop's flusher run at the end of this iteration (it calls
        `finish` when done); `loop` None gives a probe that never samples."""
        if window_s <= 0 or interval_s < 0:
            raise ValueError("the window must be positive and the interval not negative")
        self.window_s = window_s
        self._interval_s = interval_s
        self._loop = loop
        self._schedule = schedule
        self._wall = wall
        self._clock = clock
        self._buffer = bytearray(_TIMESPEC.size)
        #: kernel receive time of the sample in flight (0: unknown)
        self._stamp = 0.0
        #: a sample started and the flush after it has not run yet (read by the flusher)
        self.in_flight = False
        #: `COUNTERS.send_datagrams` when the sample started
        self._sent = 0
        # (monotonic time of the flush, seconds waited, datagrams it stands for); enough room
        # for a full window
        capacity = math.ceil(window_s / max(interval_s, 0.001)) + 64
        self._samples: deque[tuple[float, float, int]] = deque(maxlen=capacity)
        #: whether the next datagram read is to be sampled (read on the packet path)
        self.armed = loop is not None

    def start(self, fd: int) -> None:
        """The datagram just read from socket `fd` is the sample (called while `armed`)."""
        self.armed = False
        self.in_flight = True
        self._sent = COUNTERS.send_datagrams
        try:
            fcntl.ioctl(fd, SIOCGSTAMPNS, self._buffer, True)
        except OSError:  # ENOENT: timestamps were off until now; anything else: no socket
            self._stamp = 0.0
        else:
            seconds, nanoseconds = _TIMESPEC.unpack(self._buffer)
            self._stamp = seconds + nanoseconds * 1e-9
        self._schedule()

    def finish(self) -> None:
        """The flush after the sampled datagram is done (called while `in_flight`): record the
        sample, arm again `interval_s` from now."""
        self.in_flight = False
        if self._stamp > 0:
            weight = max(1, COUNTERS.send_datagrams - self._sent)
            self.record(max(0.0, self._wall() - self._stamp), weight)
        if self._loop is None:
            return
        if self._interval_s:
            self._loop.call_later(self._interval_s, self._arm)
        else:
            self._arm()

    def _arm(self) -> None:
        self.armed = True

    def record(self, seconds: float, weight: int = 1) -> None:
        """One sample, standing for `weight` datagrams: into the histogram and the window."""
        counters = COUNTERS
        counters.forward_latency_buckets[bisect_left(FORWARD_LATENCY_BUCKETS, seconds)] += weight
        counters.forward_latency_sum += seconds * weight
        self._samples.append((self._clock(), seconds, weight))

    def samples(self) -> int:
        """Samples in the window now."""
        self._forget()
        return len(self._samples)

    def p99(self) -> float:
        """The 99th percentile of the datagrams the window's samples stand for (lower nearest
        rank), in seconds; 0 below `MIN_SAMPLES` samples."""
        self._forget()
        if len(self._samples) < MIN_SAMPLES:
            return 0.0
        weighted = sorted((seconds, weight) for _, seconds, weight in self._samples)
        rank = math.floor(QUANTILE * (sum(w for _, w in weighted) - 1))
        below = 0
        for seconds, weight in weighted:
            below += weight
            if below > rank:
                return seconds
        return weighted[-1][0]

    def _forget(self) -> None:
        start = self._clock() - self.window_s
        samples = self._samples
        while samples and samples[0][0] <= start:
            samples.popleft()
