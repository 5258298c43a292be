"""Token buckets: bursts, refill, independence of keys, bounded memory."""

from __future__ import annotations

from auth_service.ratelimit import RateLimit, RateLimiter, retry_after_ms


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=2.0, burst=3), clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == 0.5
    clock.now += 0.25
    assert limiter.acquire("a") == 0.25
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=1.0, burst=2), clock=clock)
    clock.now += 1000
    assert [limiter.acquire("a") > 0 for _ in range(3)] == [False, False, True]


def test_disabled_limit_allows_everything() -> None:
    limiter = RateLimiter(RateLimit(per_second=0.0, burst=1))
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=0.001, burst=5), max_keys=100, clock=clock)
    for index in range(10_000):
        limiter.acquire(f"client-{index}")
        assert len(limiter) <= 100
    # The most recent clients are still remembered.
    for _ in range(4):
        limiter.acquire("client-9999")
    assert limiter.acquire("client-9999") > 0


def test_full_buckets_are_forgotten_before_recent_ones() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=1.0, burst=2), max_keys=4, clock=clock)
    limiter.acquire("hot")
    limiter.acquire("hot")
    for name in ("a", "b", "c"):
        limiter.acquire(name)
    clock.now += 1.5  # a, b and c have refilled; "hot" (the oldest) has not
    limiter.acquire("d")  # over capacity: full buckets go, "hot" stays
    assert len(limiter) == 2
    assert limiter.acquire("hot") == 0.0
    assert limiter.acquire("hot") > 0


def test_retry_after_ms_rounds_up() -> None:
    assert retry_after_ms(0.0001) == 1
    assert retry_after_ms(1.2341) == 1235
    assert retry_after_ms(2.0) == 2000
