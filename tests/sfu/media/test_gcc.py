"""The send-side estimator (`sfu.media.gcc`) against a simulated bottleneck: a sender that sends
what the estimate allows, a link of fixed capacity with a drop-tail queue, feedback every 50 ms.
The estimate must settle near the capacity, follow a step down within seconds, climb back after
a step up, back off under random loss, and take a probe's proof at once."""

from __future__ import annotations

import random

from sfu.media.gcc import GoogCc, PacketResult

PACKET = 1200  # bytes
FEEDBACK_INTERVAL = 0.05


class Link:
    """A bottleneck: `capacity` bit/s, a drop-tail queue of `queue` seconds, 20 ms each way."""

    def __init__(self, capacity: float, queue: float = 0.3, loss: float = 0.0) -> None:
        self.capacity = capacity
        self.queue = queue
        self.loss = loss
        self.busy_until = 0.0
        self.random = random.Random(7)

    def send(self, t: float, size: int) -> float | None:
        start = max(t, self.busy_until)
        if start - t > self.queue or self.random.random() < self.loss:
            return None
        self.busy_until = start + size * 8 / self.capacity
        return self.busy_until + 0.02


def run(
    gcc: GoogCc, link: Link, seconds: float, start: float = 0.0, demand: float = 1e9
) -> list[tuple[float, int]]:
    """Send at min(estimate, demand) for `seconds`; the estimate every 0.5 s."""
    t = start
    seq = 0
    pending: list[PacketResult] = []
    next_feedback = t + FEEDBACK_INTERVAL
    samples = []
    next_sample = t
    end = start + seconds
    while t < end:
        rate = min(gcc.estimate, demand)
        arrival = link.send(t, PACKET)
        pending.append(PacketResult(seq, t, PACKET, arrival))
        seq += 1
        t += PACKET * 8 / rate
        while t >= next_feedback:
            # what arrived by now (+ the return trip) is reported
            cutoff = next_feedback - 0.02
            # the packets up to the first one still on its way (a lost one is known lost once
            # it would have arrived: sent a one-way trip before the cutoff)
            count = 0
            for p in pending:
                due = p.arrival if p.arrival is not None else p.send_time + 0.02
                if due > cutoff:
                    break
                count += 1
            ready, pending = pending[:count], pending[count:]
            if ready:
                lost = sum(p.arrival is None for p in ready)
                gcc.on_feedback([p for p in ready if p.arrival is not None], lost, next_feedback)
            next_feedback += FEEDBACK_INTERVAL
        if t >= next_sample:
            samples.append((t, gcc.estimate))
            next_sample += 0.5
    return samples


def settled(samples: list[tuple[float, int]], after: float) -> list[int]:
    return [e for t, e in samples if t >= after]


def test_settles_near_capacity() -> None:
    gcc = GoogCc(start=300_000)
    samples = run(gcc, Link(1_500_000), 40)
    late = settled(samples, 25)
    assert min(late) > 0.6 * 1_500_000, late
    assert max(late) < 1.3 * 1_500_000, late


def step(start: int, before: int, after: int, seconds: float) -> list[int]:
    """20 s (or 15 s) at capacity `before`, then `seconds` at `after`: the estimates after."""
    gcc = GoogCc(start=start)
    link = Link(before)
    warmup = 20 if before > after else 15
    run(gcc, link, warmup)
    link.capacity = after
    samples = run(gcc, link, seconds, start=warmup)
    return [e for _, e in samples]


def test_follows_a_step_down_within_seconds() -> None:
    after = step(2_000_000, 2_500_000, 600_000, 10)[6:]  # from 3 s after the step
    assert max(after) < 1.2 * 600_000, after
    assert min(after) > 0.3 * 600_000, after


def test_climbs_back_after_a_step_up() -> None:
    assert step(600_000, 600_000, 2_500_000, 30)[-1] > 1_500_000


def test_random_loss_lowers_the_estimate() -> None:
    gcc = GoogCc(start=1_000_000)
    samples = run(gcc, Link(5_000_000, loss=0.2), 15)
    assert settled(samples, 10)[-1] < 600_000, samples
    clean = GoogCc(start=1_000_000)
    run(clean, Link(5_000_000, loss=0.01), 15)
    assert clean.estimate > 1_500_000


def test_an_application_limited_link_is_not_overestimated() -> None:
    gcc = GoogCc(start=300_000)
    run(gcc, Link(10_000_000), 20, demand=200_000)
    assert gcc.estimate < 400_000


def test_a_probe_proves_its_rate() -> None:
    gcc = GoogCc(start=300_000)
    gcc.probe_result(2_000_000, 1_950_000)
    assert gcc.estimate == 1_950_000
    gcc.probe_result(4_000_000, 2_000_000)  # the link did not carry it: no change
    assert gcc.estimate == 1_950_000


def test_random_loss_under_ten_percent_holds_the_estimate() -> None:
    """5 % random (not congestive) loss: the loss-based rate holds (GCC §6 decreases only above
    10 %), and loss windows long enough that chance does not push one over 10 % and ratchet it
    down."""
    gcc = GoogCc(start=3_000_000)
    run(gcc, Link(10_000_000), 10, demand=2_500_000)
    before = gcc.estimate
    samples = run(gcc, Link(10_000_000, loss=0.05), 20, start=10, demand=2_500_000)
    assert min(e for _, e in samples) > 0.9 * min(before, 2_500_000), samples


def test_a_saturated_probe_still_proves_what_arrived() -> None:
    """A probe the link did not carry in full still carried what arrived: the overuse it caused
    does not leave the delay-based rate below BETA × that."""
    gcc = GoogCc(start=150_000)
    gcc.probe_result(1_000_000, 560_000)
    assert gcc.delay_based == int(0.85 * 560_000)
