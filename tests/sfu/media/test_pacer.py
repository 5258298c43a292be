"""The link's pacer (`sfu.media.pacer`): what it holds is bounded in count and in time, and
with no estimate, or no event loop, nothing waits."""

from __future__ import annotations

from collections.abc import Callable

from sfu.media.pacer import MAX_DELAY, MAX_QUEUE, PACE_MIN_BURST, PACE_TICK, Pacer
from tests.sfu.conftest import FakeClock


def pacer_with_timers(
    clock: FakeClock, estimate: int | None
) -> tuple[Pacer, list[Callable[[], None]]]:
    timers: list[Callable[[], None]] = []

    def schedule(_delay: float, callback: Callable[[], None]) -> bool:
        timers.append(callback)
        return True

    return Pacer(clock, lambda: estimate, schedule=schedule), timers


def test_nothing_waits_without_an_estimate(clock: FakeClock) -> None:
    pacer, timers = pacer_with_timers(clock, None)
    pacer.charge(1 << 20)
    assert pacer.admit() and not timers


def test_a_held_packet_leaves_after_max_delay_whatever_the_budget(clock: FakeClock) -> None:
    """A wrong estimate (a receiver's CPU stall read as a queue) costs delay, never a freeze."""
    pacer, timers = pacer_with_timers(clock, 30_000)
    assert pacer.admit()
    pacer.charge(PACE_MIN_BURST + 100_000)  # far over the budget
    sent: list[int] = []
    pacer.hold(lambda: sent.append(1))
    assert not pacer.admit()  # in order behind it
    waited = 0.0
    while timers and waited < 2 * MAX_DELAY:
        clock.advance(PACE_TICK)
        waited += PACE_TICK
        timers.pop(0)()
    assert sent == [1] and MAX_DELAY <= waited + 1e-9 < MAX_DELAY + 2 * PACE_TICK


def test_the_queue_is_bounded_and_keeps_order(clock: FakeClock) -> None:
    pacer, timers = pacer_with_timers(clock, 100_000)
    pacer.charge(PACE_MIN_BURST + 1_000_000)
    sent: list[int] = []
    for k in range(MAX_QUEUE + 10):
        pacer.hold(lambda k=k: sent.append(k))
    assert sent == list(range(10)) and len(timers) == 1


def test_without_an_event_loop_what_is_held_leaves_at_once(clock: FakeClock) -> None:
    pacer = Pacer(clock, lambda: 100_000)
    pacer.charge(1 << 20)
    sent: list[int] = []
    pacer.hold(lambda: sent.append(1))
    assert sent == [1] and not pacer.holding
