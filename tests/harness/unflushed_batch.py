"""A stand-in for the loop's shared send batch (`sfu.media.transport.batch.FastBatch`'s
interface as a down track's fast sender uses it), around a compiled batch that the caller
flushes itself: nothing is scheduled on an event loop."""

from __future__ import annotations

from typing import Any

__all__ = ["UnflushedBatch"]


class _Group:
    def schedule(self) -> None:
        pass


class UnflushedBatch:
    """`FastBatch`'s interface on `batch` (a compiled `Batch`); flushing is left to the caller."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def group(self, batches: tuple[Any, ...]) -> _Group:
        return _Group()

    def schedule(self) -> None:
        pass
