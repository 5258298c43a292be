"""Types of the C extension `loadtest/_rx.c` (see `loadtest.rx` for what the table counts)."""

from collections.abc import Sequence
from typing import Any

RX_BATCH: int
RX_BUFFER: int

class Table:
    packets: int
    octets: int
    overflow: int
    truncated: int
    capacity: int
    def __init__(self, sample_every: int, capacity: int = 256) -> None: ...
    def feed(
        self, datagrams: Sequence[tuple[bytes, Any]], /
    ) -> tuple[list[tuple[int, int, bytes]], list[tuple[bytes, Any]]]: ...
    def drain(
        self, fd: int, max_datagrams: int = 4096, /
    ) -> tuple[list[tuple[int, int, bytes]], list[tuple[bytes, Any]]]: ...
    def count_clear(self, data: bytes, /) -> int | None: ...
    def streams(self) -> list[tuple[int, int, int, int, int, int]]: ...
