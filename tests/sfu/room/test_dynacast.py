"""Dynacast: the qualities a publisher is told to keep, and when."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from livekit.protocol import rtc

from sfu.room import dynacast
from sfu.room.dynacast import Dynacast


@dataclass
class Sub:
    subscribed_layer: int


def enabled(update: rtc.SignalResponse) -> list[bool]:
    message = update.subscribed_quality_update
    assert message.subscribed_codecs[0].codec == "vp8"
    assert [q.enabled for q in message.subscribed_qualities] == [
        q.enabled for q in message.subscribed_codecs[0].qualities
    ]
    return [q.enabled for q in message.subscribed_codecs[0].qualities]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynacast, "DOWNGRADE_DELAY", 0.2)
    monkeypatch.setattr(dynacast, "INITIAL_WAIT", 0.3)


async def test_upgrades_at_once_downgrades_after_the_delay() -> None:
    subs = [Sub(0)]
    sent: list[rtc.SignalResponse] = []
    d = Dynacast("TR_x", "video/VP8", [0, 1, 2], lambda: subs, sent.append)
    d.start()
    assert [enabled(u) for u in sent] == [[True, False, False]]
    subs.append(Sub(2))
    d.update()
    await asyncio.sleep(0)  # evaluated on the loop's next pass
    assert enabled(sent[-1]) == [True, True, True]
    subs.pop()
    d.update()
    await asyncio.sleep(0)
    assert len(sent) == 2  # not yet
    await asyncio.sleep(0.3)
    assert enabled(sent[-1]) == [True, False, False]


async def test_a_short_dip_sends_nothing() -> None:
    subs = [Sub(2)]
    sent: list[rtc.SignalResponse] = []
    d = Dynacast("TR_x", "vp8", [0, 1, 2], lambda: subs, sent.append)
    d.start()
    subs[0].subscribed_layer = 0
    d.update()
    subs[0].subscribed_layer = 2
    d.update()
    await asyncio.sleep(0.3)
    assert len(sent) == 1


async def test_nobody_watching_pauses_everything_after_the_initial_wait() -> None:
    subs: list[Sub] = []
    sent: list[rtc.SignalResponse] = []
    d = Dynacast("TR_x", "vp8", [0, 1, 2], lambda: subs, sent.append)
    d.start()
    d.update()
    await asyncio.sleep(0)
    assert sent == []  # the first subscriber may be about to arrive
    await asyncio.sleep(0.4)
    assert [enabled(u) for u in sent] == [[False, False, False]]
    subs.append(Sub(1))
    d.update()
    await asyncio.sleep(0)
    assert enabled(sent[-1]) == [True, True, False]
    subs[0].subscribed_layer = -1  # hidden tile
    d.update()
    await asyncio.sleep(0.3)
    assert enabled(sent[-1]) == [False, False, False]
    d.close()


async def test_layer_qualities_map_two_layers_and_single_layers() -> None:
    sent: list[rtc.SignalResponse] = []
    Dynacast("TR_a", "vp8", [0, 1], lambda: [Sub(5)], sent.append).start()
    assert enabled(sent[-1]) == [True, True, False]
    Dynacast("TR_b", "vp8", [2], lambda: [Sub(0)], sent.append).start()
    assert enabled(sent[-1]) == [True, True, True]


async def test_changes_in_one_iteration_are_evaluated_once() -> None:
    """A speaker change makes every subscriber change settings and switch layers: the demand (a
    pass over all subscribers) is computed once for all of them, not once each."""
    passes = 0
    subs = [Sub(0) for _ in range(100)]

    def subscribers() -> list[Sub]:
        nonlocal passes
        passes += 1
        return subs

    sent: list[rtc.SignalResponse] = []
    d = Dynacast("TR_x", "vp8", [0, 1, 2], subscribers, sent.append)
    d.start()
    passes = 0
    for sub in subs:
        sub.subscribed_layer = 2
        d.update()
    assert passes == 0 and len(sent) == 1
    await asyncio.sleep(0)
    assert passes == 1
    assert [enabled(u) for u in sent] == [[True, False, False], [True, True, True]]
    d.update()
    d.close()
    await asyncio.sleep(0)
    assert passes == 1  # closed: nothing evaluated
