"""Splitting one fuzz input into several messages, for targets that handle a sequence of them."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SEPARATOR", "join", "records"]

#: between two records of one input (rare in real packets, easy for libFuzzer to copy around)
SEPARATOR = b"\xf0\x9f\x8e\xb2"


def records(data: bytes, limit: int = 32) -> list[bytes]:
    """At most `limit` records of `data`, in order."""
    return data.split(SEPARATOR, limit)[:limit]


def join(parts: Iterable[bytes]) -> bytes:
    """The input whose records are `parts` (for seeds)."""
    return SEPARATOR.join(parts)
