"""Send-side bandwidth estimation of the Google Congestion Control family, for one subscriber link.

Owns the estimator and nothing else: it is fed what transport-wide congestion control feedback
said about each packet the SFU sent (`PacketResult`: transport-wide sequence number, send time,
size, arrival time or lost) and answers one number, `GoogCc.estimate` (bits per second). Which
packets went out when, and what the subscriber reported, are `sfu.media.bandwidth`'s.

The style is draft-ietf-rmcat-gcc-02 as libwebrtc runs it on the sender (the "send-side" GCC of
transport-cc), not the draft's receive-side REMB variant:

- *Delay-based* (§5): packets are grouped into bursts sent within `BURST_INTERVAL`; the variation
  of inter-group delay (arrival delta - send delta) is accumulated, smoothed, and a least-squares
  **trendline** over the last `TRENDLINE_WINDOW` groups gives the queueing-delay slope. That is
  libwebrtc's replacement for the draft's Kalman filter: with send times known exactly (the SFU
  stamped them) a regression over a window reacts as fast and has no noise model to tune. The
  slope, scaled, is compared with an **adaptive threshold** (§5.4; libwebrtc's gains for the
  trendline's scale, k_u = 0.0087 and k_d = 0.039, clamped to 6..600 ms) that tracks the trend so
  that a competing TCP flow does not starve us; overuse must last `OVERUSE_TIME` to count.
- *Rate control* (§5.5, AIMD): overuse → the rate drops to `BETA` × the acknowledged rate (at
  most once per `DECREASE_INTERVAL`);
  normal → it grows, multiplicatively (8 %/s) while far from the last congested rate, additively
  (about one packet per response time) near it; underuse → hold. It never runs past 1.5 × what
  the link acknowledged (an application-limited sender proves nothing above that).
- *Loss-based* (§6): over each window of at least `LOSS_MIN_PACKETS` and `LOSS_WINDOW` seconds
  of feedback, more than 10 % lost → rate × (1 - loss/2), less than 2 % → +8 %/s, between →
  hold. The window is longer than libwebrtc's 20 packets so that random loss well under 10 %
  (Wi-Fi, 5 % in the tests) does not cross 10 % in a short window by chance and ratchet the
  rate down: 20 packets at 5 % loss show 3 or more lost one time in thirteen.
- *Probes*: a padding burst sent on purpose (`probe_result`) whose packets all came back at the
  rate they were sent proves that rate at once, as libwebrtc's ProbeBitrateEstimator does; this
  is what climbs back to a high layer in seconds instead of the AIMD's tens of seconds.

The estimate is the minimum of the delay-based and the loss-based ones. Every input is
hostile-input-safe: times are floats the caller derived, sizes small ints, and the state is a
fixed number of floats and two bounded deques.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["GoogCc", "PacketResult"]

#: packets sent within this of a group's first form one group (libwebrtc: 5 ms)
BURST_INTERVAL = 0.005
TRENDLINE_WINDOW = 20
TRENDLINE_SMOOTHING = 0.9
TRENDLINE_GAIN = 4.0
#: the adaptive threshold (ms of modified trend): start, bounds, and its gains up and down
THRESHOLD_INITIAL = 12.5
THRESHOLD_MIN, THRESHOLD_MAX = 6.0, 600.0
K_UP, K_DOWN = 0.0087, 0.039  # libwebrtc's, for the trendline's scale (the draft's suit Kalman)
OVERUSE_TIME = 0.010
BETA = 0.85
DECREASE_INTERVAL = 0.3
MIN_BITRATE = 30_000
MAX_BITRATE = 20_000_000
START_BITRATE = 1_000_000
ACKED_WINDOW = 0.5  # seconds of arrivals the acknowledged rate is measured over
LOSS_MIN_PACKETS = 20
LOSS_WINDOW = 0.5
LOSS_HIGH, LOSS_LOW = 0.10, 0.02
#: the probe's arrival rate must be at least this share of its send rate to count
PROBE_SUCCESS = 0.9

Usage = Literal["normal", "overusing", "underusing"]


@dataclass(slots=True)
class PacketResult:
    """One sent packet as feedback reported it: times in seconds (send: our clock; arrival: the
    subscriber's, only differences mean anything), `arrival` None when it was lost."""

    sequence_number: int
    send_time: float
    size: int
    arrival: float | None


class _Trendline:
    """Delay-gradient trend over inter-group delay variations, and the overuse detector on it."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self.accumulated = 0.0
        self.smoothed = 0.0
        self.first_arrival: float | None = None
        self.threshold = THRESHOLD_INITIAL
        self.last_update = -1.0
        self.overuse_time = 0.0
        self.overuse_count = 0
        self.prev_trend = 0.0
        self.deltas = 0
        self.state: Usage = "normal"

    def update(self, delay_variation_ms: float, arrival: float, send_delta: float) -> Usage:
        if self.first_arrival is None:
            self.first_arrival = arrival
        self.deltas = min(self.deltas + 1, 1000)
        self.accumulated += delay_variation_ms
        self.smoothed = (
            TRENDLINE_SMOOTHING * self.smoothed + (1 - TRENDLINE_SMOOTHING) * self.accumulated
        )
        self.samples.append(((arrival - self.first_arrival) * 1000.0, self.smoothed))
        trend = self.prev_trend
        if len(self.samples) == TRENDLINE_WINDOW:
            trend = _slope(self.samples)
        self._detect(trend, send_delta, arrival)
        self.prev_trend = trend
        return self.state

    def _detect(self, trend: float, send_delta: float, now: float) -> None:
        modified = min(self.deltas, 60) * trend * TRENDLINE_GAIN
        if modified > self.threshold:
            self.overuse_time += send_delta
            self.overuse_count += 1
            if (
                self.overuse_time > OVERUSE_TIME
                and self.overuse_count > 1
                and trend >= self.prev_trend
            ):
                self.overuse_time = 0.0
                self.overuse_count = 0
                self.state = "overusing"
        elif modified < -self.threshold:
            self.overuse_time = 0.0
            self.overuse_count = 0
            self.state = "underusing"
        else:
            self.overuse_time = 0.0
            self.overuse_count = 0
            self.state = "normal"
        self._adapt(modified, now)

    def _adapt(self, modified: float, now: float) -> None:
        if self.last_update < 0:
            self.last_update = now
        # a spike far above the threshold (a route change, a hiccup) does not move it
        if abs(modified) > self.threshold + 15.0:
            self.last_update = now
            return
        k = K_DOWN if abs(modified) < self.threshold else K_UP
        elapsed = min(max(now - self.last_update, 0.0), 0.1) * 1000.0
        self.threshold += k * (abs(modified) - self.threshold) * elapsed
        self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)
        self.last_update = now


def _slope(samples: deque[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(samples)
    mean_x = sum(x for x, _ in samples) / n
    mean_y = sum(y for _, y in samples) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in samples)
    den = sum((x - mean_x) ** 2 for x, _ in samples)
    return num / den if den > 0 else 0.0


class _Aimd:
    """The delay-based rate: AIMD driven by the detector's signal (draft §5.5)."""

    def __init__(self, start: int) -> None:
        self.rate = float(start)
        self.state: Literal["hold", "increase", "decrease"] = "increase"
        self.last_change = -1.0
        #: the acknowledged rate at the last decreases (mean and variance, normalised)
        self.congested_mean = -1.0
        self.congested_var = 0.4
        self._last_decrease = -1.0

    def update(self, usage: Usage, acked: float | None, now: float, rtt: float) -> None:
        if self.last_change < 0:
            self.last_change = now
        if usage == "overusing":
            # at most once per DECREASE_INTERVAL (libwebrtc: per RTT, at least 10 ms), unless
            # the link carries less than half the rate: the acknowledged rate is measured over
            # ACKED_WINDOW, so decreases closer together answer the same queue twice over
            soon = now - self._last_decrease < max(min(rtt, 0.2), DECREASE_INTERVAL)
            if soon and (acked is None or acked >= self.rate / 2):
                return
            self._last_decrease = now
            if acked is not None:
                self._congested(acked)
                # a decrease never raises the rate (nor lowers it below BETA × what arrives)
                self.rate = min(self.rate, BETA * acked)
            else:
                self.rate *= BETA
            self.state = "hold"
            self.last_change = now
        elif usage == "underusing":
            self.state = "hold"
            self.last_change = now
        else:
            if self.state == "hold":
                self.state = "increase"
                self.last_change = now
            elapsed = min(max(now - self.last_change, 0.0), 1.0)
            self.last_change = now
            old = self.rate
            if self._near_congested(acked):
                # about one packet per response time, more at high rates (30 fps of packets)
                packet_bits = max(1200 * 8, self.rate / 30)
                self.rate += packet_bits * elapsed / (rtt + 0.1)
            else:
                self.rate *= 1.08**elapsed
            if acked is not None:
                # an application-limited link proves nothing above what it carried: the rate
                # may not grow past that (nor does this lower it)
                self.rate = min(self.rate, max(old, 1.5 * acked + 10_000))
        self.rate = min(max(self.rate, MIN_BITRATE), MAX_BITRATE)

    def _congested(self, acked: float) -> None:
        kbps = acked / 1000
        if self.congested_mean < 0:
            self.congested_mean = kbps
            return
        if abs(kbps - self.congested_mean) > 3 * math.sqrt(
            self.congested_var * self.congested_mean
        ):
            self.congested_mean = kbps  # the link changed: start over
            return
        alpha = 0.05
        self.congested_mean = (1 - alpha) * self.congested_mean + alpha * kbps
        norm = max(self.congested_mean, 1.0)
        self.congested_var = (1 - alpha) * self.congested_var + alpha * (
            (self.congested_mean - kbps) ** 2
        ) / norm
        self.congested_var = min(max(self.congested_var, 0.4), 2.5)

    def _near_congested(self, acked: float | None) -> bool:
        if self.congested_mean < 0 or acked is None:
            return False
        std = math.sqrt(self.congested_var * self.congested_mean)
        return abs(acked / 1000 - self.congested_mean) < 3 * std


class GoogCc:
    """The estimator for one subscriber transport (see the module docstring)."""

    def __init__(self, start: int = START_BITRATE) -> None:
        self._trend = _Trendline()
        self._aimd = _Aimd(start)
        self.loss_rate = float(start)
        self.rtt = 0.1
        #: (arrival, size) of acknowledged packets within ACKED_WINDOW
        self._acked: deque[tuple[float, int]] = deque(maxlen=4096)
        self._acked_bytes = 0
        # the current packet group: first send time, last send and arrival times, size
        self._group: tuple[float, float, float] | None = None
        self._prev_group: tuple[float, float] | None = None  # (send, arrival) of the last one
        self._loss_packets = 0
        self._loss_lost = 0
        self._loss_time = -1.0
        self._last_loss_decrease = -1.0
        #: fraction lost over the last loss window (for connection quality)
        self.loss_fraction = 0.0
        self.usage: Usage = "normal"

    @property
    def estimate(self) -> int:
        return int(min(self._aimd.rate, self.loss_rate))

    @property
    def delay_based(self) -> int:
        return int(self._aimd.rate)

    def acked_rate(self) -> float | None:
        """Bits per second the subscriber received over the last `ACKED_WINDOW`, when enough
        packets came back to tell."""
        if len(self._acked) < 2:
            return None
        span = self._acked[-1][0] - self._acked[0][0]
        if span < ACKED_WINDOW / 4:
            return None
        return (self._acked_bytes - self._acked[0][1]) * 8 / span

    def on_feedback(self, results: list[PacketResult], lost: int, now: float) -> None:
        """One transport-cc feedback: the packets it reported received, in sequence order, and
        how many it reported lost; `now` on our clock."""
        for r in results:
            if r.arrival is not None:
                self._on_arrival(r)
        acked = self.acked_rate()
        self._aimd.update(self.usage, acked, now, self.rtt)
        self._on_loss(len(results) + lost, lost, now)

    def _on_arrival(self, r: PacketResult) -> None:
        assert r.arrival is not None
        acked = self._acked
        if len(acked) == acked.maxlen:
            self._acked_bytes -= acked[0][1]
        acked.append((r.arrival, r.size))
        self._acked_bytes += r.size
        while len(acked) > 2 and acked[-1][0] - acked[0][0] > ACKED_WINDOW:
            self._acked_bytes -= acked.popleft()[1]
        group = self._group
        if group is None:
            self._group = (r.send_time, r.send_time, r.arrival)
            return
        first_send, _, last_arrival = group
        if r.send_time - first_send <= BURST_INTERVAL or r.arrival < last_arrival:
            self._group = (first_send, max(r.send_time, group[1]), max(r.arrival, last_arrival))
            return
        # the group is complete: compare it with the one before
        completed = (group[1], last_arrival)
        prev = self._prev_group
        self._prev_group = completed
        self._group = (r.send_time, r.send_time, r.arrival)
        if prev is None:
            return
        send_delta = completed[0] - prev[0]
        arrival_delta = completed[1] - prev[1]
        if send_delta < 0 or arrival_delta > 3.0 or arrival_delta < -3.0:
            return  # reordered or a clock jump: skip, as libwebrtc resets on big jumps
        self.usage = self._trend.update(
            (arrival_delta - send_delta) * 1000.0, completed[1], send_delta
        )

    def _on_loss(self, packets: int, lost: int, now: float) -> None:
        self._loss_packets += packets
        self._loss_lost += lost
        if self._loss_time < 0:
            self._loss_time = now
        elapsed = now - self._loss_time
        if self._loss_packets < LOSS_MIN_PACKETS or elapsed < LOSS_WINDOW:
            return
        fraction = self._loss_lost / self._loss_packets
        elapsed = min(max(elapsed, 0.0), 1.0)
        self.loss_fraction = fraction
        self._loss_packets = self._loss_lost = 0
        self._loss_time = now
        delay = self._aimd.rate
        if fraction > LOSS_HIGH:
            if now - self._last_loss_decrease >= self.rtt + 0.3:
                self._last_loss_decrease = now
                self.loss_rate = min(self.loss_rate, delay) * (1 - fraction / 2)
        elif fraction < LOSS_LOW:
            # the loss-based rate follows the delay-based one up (it only ever caps it)
            self.loss_rate = max(self.loss_rate * 1.08**elapsed, delay)
        self.loss_rate = min(max(self.loss_rate, MIN_BITRATE), MAX_BITRATE)

    def probe_result(self, send_rate: float, receive_rate: float) -> None:
        """A padding probe came back: its rates (bits per second) as sent and as received. When
        the link carried it (received ≥ `PROBE_SUCCESS` × sent) and no overuse is signalled,
        the estimate rises to what it proved at once. When it did not, the link still carried
        what was received: the delay-based rate is at least `BETA` × that (the queue the probe
        built signals overuse, and the decrease that follows, from an acknowledged rate that
        is mostly the media's, must not leave the estimate below what the link just carried)."""
        if receive_rate < PROBE_SUCCESS * send_rate or self.usage == "overusing":
            floor = BETA * min(send_rate, receive_rate)
            if floor > self._aimd.rate:
                self._aimd.rate = min(floor, MAX_BITRATE)
            return
        proved = min(send_rate, receive_rate)
        if proved > self._aimd.rate:
            self._aimd.rate = min(proved, MAX_BITRATE)
            self._aimd.state = "hold"
        if proved > self.loss_rate and self.loss_fraction < LOSS_HIGH:
            self.loss_rate = min(proved, MAX_BITRATE)

    def set_rtt(self, rtt: float) -> None:
        if 0 <= rtt < 10:
            self.rtt = rtt
