"""Background tasks of the test clients (frame feeders, collectors) that cannot fail silently.

A feeder or collector that crashes must fail the test with its own traceback, not show up later
as a misleading timeout. `raise_failures` raises `BackgroundTaskError` (an AssertionError whose
cause is the task's exception) for any task that ended with an exception; the clients call it on
every wait and when they stop their tasks (`cancel_tasks`).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Iterable


class BackgroundTaskError(AssertionError):
    """A client's background task raised; the message carries its traceback."""


def failures(tasks: Iterable[asyncio.Task[None]]) -> list[tuple[asyncio.Task[None], BaseException]]:
    """The tasks that finished with an exception other than cancellation, with that exception."""
    failed: list[tuple[asyncio.Task[None], BaseException]] = []
    for task in tasks:
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                failed.append((task, exc))
    return failed


def raise_failures(tasks: Iterable[asyncio.Task[None]], owner: str) -> None:
    failed = failures(tasks)
    if not failed:
        return
    parts = [
        f"{owner}: background task {task.get_name()} failed:\n"
        + "".join(traceback.format_exception(exc))
        for task, exc in failed
    ]
    raise BackgroundTaskError("\n".join(parts)) from failed[0][1]


async def cancel_tasks(tasks: list[asyncio.Task[None]], owner: str, timeout_s: float = 5.0) -> None:
    """Cancel the tasks, wait for each (bounded), forget them; then raise if any had failed."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)  # returns, never raises the tasks' errors
    stopped = list(tasks)
    tasks.clear()
    raise_failures(stopped, owner)
