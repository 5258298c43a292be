"""Token buckets: bursts, refill, independence of keys, bounded memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from auth_service.ratelimit import RateLimit, RateLimiter, address_bucket, retry_after_ms


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


def test_address_bucket_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert address_bucket("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_bucket("::ffff:198.51.100.7") == "198.51.100.7"
    assert address_bucket("198.51.100.7") == "198.51.100.7"
    assert address_bucket("unknown") == "unknown"


def test_a_full_table_is_reported() -> None:
    hits: list[int] = []
    limiter = RateLimiter(
        RateLimit(per_second=1.0, burst=2),
        max_keys=4,
        clock=Clock(),
        on_full=lambda: hits.append(1),
    )
    for index in range(5):
        limiter.acquire(str(index))
    assert hits == [1]
    assert len(limiter) <= 4


@given(st.one_of(st.text(max_size=60), st.ip_addresses().map(str)))
def test_address_bucket_takes_any_text(address: str) -> None:
    assert isinstance(address_bucket(address), str)
