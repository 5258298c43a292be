"""The SFU process's CPU load: its CPU time as a share of one core, over a sliding window.

One event loop carries all of a node's media and signalling, so the process saturates at one
core; past that point every call on the node degrades at once (packets wait in socket buffers,
then drop) and signalling starves. `CpuLoad` tells admission (`limits.max_cpu_load`) when to
refuse newcomers so that the calls already running keep their quality, and feeds the
`sfu_cpu_load` gauge.

The window always spans `window_s` of wall time; before the process has been up that long, the
time before the first sample counts as idle, so a burst of joins right after start-up is not
mistaken for sustained load.

A participant costs little when it is admitted and its full share only once it has connected and
subscribed, seconds later: admitting on the measured load alone lets a join storm overshoot. So
`predicted` adds, for each participant admitted within the window, the average cost per connected
participant (recent ones included, so that the estimate stays at most twice the measurement).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["CpuLoad"]


class CpuLoad:
    """``value``: process CPU seconds per wall second over the last `window_s` (1.0 = one core)."""

    def __init__(
        self,
        window_s: float = 3.0,
        interval_s: float = 0.5,
        *,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        if window_s <= 0 or interval_s <= 0:
            raise ValueError("window and interval must be positive")
        self.window_s = window_s
        self.interval_s = interval_s
        self._wall = wall
        self._cpu = cpu
        now, used = wall(), cpu()
        # (wall, cpu) samples, oldest first; the first two say "idle for a window before now"
        self._samples: deque[tuple[float, float]] = deque([(now - window_s, used), (now, used)])
        self.value = 0.0
        self._admitted: deque[float] = deque()  # when recent participants were admitted

    def sample(self) -> float:
        """Take a sample now and return the updated load."""
        now, cpu = self._wall(), self._cpu()
        samples = self._samples
        samples.append((now, cpu))
        start = now - self.window_s
        # keep the newest sample at or before the window's start as its baseline
        while len(samples) > 2 and samples[1][0] <= start:
            samples.popleft()
        base_wall, base_cpu = samples[0]
        if base_wall < start and len(samples) > 1:
            # interpolate the CPU time at the window's start between the baseline and the next
            next_wall, next_cpu = samples[1]
            span = next_wall - base_wall
            if span > 0:
                base_cpu += (next_cpu - base_cpu) * (start - base_wall) / span
            base_wall = start
        elapsed = now - base_wall
        self.value = max(0.0, (cpu - base_cpu) / elapsed) if elapsed > 0 else 0.0
        return self.value

    def note_admission(self) -> None:
        """A participant was admitted now; its cost is not in the measurement yet."""
        now = self._wall()
        self._forget_before(now - self.window_s)
        self._admitted.append(now)

    def _forget_before(self, start: float) -> None:
        admitted = self._admitted
        while admitted and admitted[0] <= start:
            admitted.popleft()

    def pending_share(self, participants: int) -> float:
        """The share of the `participants` (recent ones included) admitted within the window,
        whose cost is not in the measurement yet (0 to 1)."""
        admitted = self._admitted
        self._forget_before(self._wall() - self.window_s)
        if participants <= 0 or not admitted:
            return 0.0
        return min(len(admitted), participants) / participants

    def predicted(self, participants: int) -> float:
        """The measured load plus what the participants admitted within the window will add,
        at the average cost per connected participant (`participants`, recent ones included)."""
        return self.value * (1 + self.pending_share(participants))

    async def run(self) -> None:
        """Sample every `interval_s` until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)
