"""A node's lifecycle: readiness (``/readyz``) and the SIGTERM drain.

`Readiness` says whether the node should be handed new participants: not while it drains, and
not while its one event loop is unresponsive (a sampler task sleeps `interval_s` and measures how
late it wakes; a lag above `max_lag_s` means every call on the node is already starving).

The drain, on the first SIGTERM (`DrainingServer`): the node stops admitting participants (503,
`DRAINING_MESSAGE`) and reports not ready, keeps serving the calls it has, and waits until its
rooms are empty or ``drain_timeout`` has passed; then the participants still there get a
LeaveRequest with action RECONNECT (reason SERVER_SHUTDOWN), so their clients join again as soon
as a node takes them, and the process exits through uvicorn's usual shutdown. A second SIGTERM,
or SIGINT, exits at once (uvicorn's graceful shutdown, without the wait).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn

__all__ = ["DRAINING_MESSAGE", "DrainingServer", "Readiness"]

log = logging.getLogger(__name__)

DRAINING_MESSAGE = "the server is shutting down (draining): no new participants on this node"


class Readiness:
    """Whether this node takes participants now; `reason()` is '' when it does."""

    def __init__(self, interval_s: float = 0.25, max_lag_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.max_lag_s = max_lag_s
        self.draining = False
        #: how late the sampler last woke (seconds), and when (monotonic)
        self.lag_s = 0.0
        self._sampled_at = time.monotonic()

    def reason(self, now: float | None = None) -> str:
        if self.draining:
            return "draining"
        now = time.monotonic() if now is None else now
        # a sampler that has not woken for a while is a lag too, measured from the outside
        lag = max(self.lag_s, now - self._sampled_at - self.interval_s)
        if lag > self.max_lag_s:
            return f"event loop unresponsive: {lag:.2f} s late (limit {self.max_lag_s:.2f} s)"
        return ""

    async def run(self) -> None:
        """Sample the event loop's lag until cancelled (from now: the time before it started,
        media workers starting for instance, is no lag)."""
        self._sampled_at = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval_s)
            self._sampled_at = time.monotonic()
            self.lag_s = max(0.0, self._sampled_at - before - self.interval_s)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM starting `drain` (a coroutine factory) instead of exiting;
    the server exits when the drain returns, or at once on a second signal."""

    def __init__(
        self, config: uvicorn.Config, drain: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        log.info("SIGTERM: draining (a second SIGTERM exits at once)")
        self._drain_task = asyncio.get_running_loop().create_task(self._run_drain())

    async def _run_drain(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("drain failed; exiting")
        finally:
            self.should_exit = True
