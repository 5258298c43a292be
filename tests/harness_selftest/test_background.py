"""Self-test of tests/harness/background.py: a client's crashed task fails with its traceback."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.background import BackgroundTaskError, cancel_tasks, raise_failures
from tests.harness.lkclient import CollectingSubscriber


async def _crash() -> None:
    await asyncio.sleep(0)
    raise ZeroDivisionError("collector bug")


async def _forever() -> None:
    await asyncio.sleep(3600)


async def test_cancelling_healthy_tasks_is_quiet() -> None:
    tasks = [asyncio.create_task(_forever()) for _ in range(3)]
    await asyncio.sleep(0)
    await cancel_tasks(tasks, "alice")
    assert tasks == []


async def test_a_crashed_task_fails_with_its_traceback() -> None:
    crashed = asyncio.create_task(_crash(), name="collector")
    tasks = [asyncio.create_task(_forever()), crashed]
    await asyncio.sleep(0.01)
    with pytest.raises(BackgroundTaskError, match=r"alice: background task collector failed") as e:
        raise_failures(tasks, "alice")
    assert "ZeroDivisionError: collector bug" in str(e.value) and "in _crash" in str(e.value)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    with pytest.raises(BackgroundTaskError, match="collector bug"):
        await cancel_tasks(tasks, "alice")
    assert tasks == [] and all(t.done() for t in (crashed,))


async def test_a_wait_fails_at_once_when_a_collector_crashed() -> None:
    subscriber = CollectingSubscriber("bob")
    subscriber._tasks.append(asyncio.create_task(_crash()))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BackgroundTaskError, match="collector bug"):
        await subscriber.wait_until(lambda: False, timeout_s=30.0, what="never")
    assert loop.time() - started < 5.0  # not the 30 s timeout
    subscriber._tasks.clear()
    with pytest.raises(KeyError) as caught:
        async with CollectingSubscriber("carol") as other:
            other._tasks.append(asyncio.create_task(_crash()))
            await asyncio.sleep(0.01)
            raise KeyError("the test's own failure")
    assert any("collector bug" in note for note in caught.value.__notes__)
