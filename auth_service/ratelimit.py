"""Token-bucket rate limiting keyed by a string (a client address or a Matrix user ID).

Each key owns a bucket of ``burst`` tokens that refills at ``per_second``; a request takes one
token, or learns how long until one is available. The number of buckets is bounded: full
buckets carry no information and are dropped first, then the least recently used. A limit with
``per_second <= 0`` allows everything.

:func:`address_bucket` is the key of a client address: one IPv6 host usually owns a whole /64,
so IPv6 addresses share the bucket of their /64; IPv4-mapped IPv6 addresses count as the IPv4
address they carry.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

IPV6_PREFIX_LENGTH: Final = 64


def address_bucket(address: str) -> str:
    """The rate-limit key of a client address: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX_LENGTH), strict=False))
    return str(ip)


@dataclass(frozen=True)
class RateLimit:
    """A sustained rate and a burst size; ``per_second <= 0`` disables the limit."""

    per_second: float
    burst: int

    @property
    def enabled(self) -> bool:
        """Whether the limit refuses anything at all."""
        return self.per_second > 0


class RateLimiter:
    """Per-key token buckets."""

    def __init__(
        self,
        limit: RateLimit,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        on_full: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._clock = clock
        self._on_full = on_full
        self._capacity = float(max(limit.burst, 1))
        # key -> (tokens left, time of the last update)
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until one is free."""
        if not self.limit.enabled:
            return 0.0
        now = self._clock()
        # Re-inserting keeps the dict ordered from least to most recently used.
        tokens, last = self._buckets.pop(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - last) * self.limit.per_second)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                if self._on_full is not None:
                    self._on_full()
                self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.limit.per_second

    def _prune(self, now: float) -> None:
        rate = self.limit.per_second
        capacity = self._capacity
        self._buckets = {
            key: (tokens, last)
            for key, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * rate < capacity
        }
        excess = len(self._buckets) - self.max_keys // 2
        if excess > 0:
            for key in list(self._buckets)[:excess]:
                del self._buckets[key]


def retry_after_ms(wait_seconds: float) -> int:
    """Milliseconds a client should wait, rounded up and at least 1."""
    return max(1, math.ceil(wait_seconds * 1000))
