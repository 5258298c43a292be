"""`SubscriberOffers`: one subscriber offer outstanding at a time, numbered, with the changes
made meanwhile folded into the next one; against a `FakePeer`."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from livekit.protocol import rtc

from sfu.room.subscriber_offers import SubscriberOffers
from sfu.room.types import SignalStateError
from tests.sfu.room.fakes import FakePeer


class Tracks:
    """Records the `OfferedTracks` calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def before_offer(self) -> None:
        self.calls.append(("before_offer", 0))

    def offered(self, offer_id: int) -> None:
        self.calls.append(("offered", offer_id))

    def answered(self, offer_id: int) -> None:
        self.calls.append(("answered", offer_id))


class Stage:
    def __init__(self) -> None:
        self.sent: list[rtc.SignalResponse] = []
        self.tracks = Tracks()
        self.tasks: list[asyncio.Task[None]] = []
        self.offers = SubscriberOffers(self.tracks, self.sent.append, self.spawn)
        self.peer = FakePeer("subscriber")
        self.offers.peer = self.peer

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def offer_ids(self) -> list[int]:
        return [r.offer.id for r in self.sent if r.WhichOneof("message") == "offer"]

    async def answer(self, offer_id: int = 0) -> None:
        await self.offers.handle_answer(rtc.SessionDescription(type="answer", sdp="a", id=offer_id))


async def test_offers_are_numbered_from_one_and_tell_the_tracks_in_order() -> None:
    stage = Stage()
    await stage.offers.negotiate()
    assert stage.offer_ids() == [1] and stage.sent[0].offer.sdp == "offer 1"
    await stage.answer(1)
    assert stage.tracks.calls == [("before_offer", 0), ("offered", 1), ("answered", 1)]
    assert stage.peer.answers == ["a"]


async def test_a_change_while_an_offer_is_outstanding_waits_for_the_answer() -> None:
    stage = Stage()
    await stage.offers.negotiate()
    await stage.offers.negotiate()
    stage.offers.schedule()
    await asyncio.gather(*stage.tasks)
    assert stage.offer_ids() == [1]  # nothing new before the client answered
    await stage.answer(1)
    assert stage.offer_ids() == [1, 2]  # the deferred changes, in one offer
    assert stage.offers.awaiting_answer


async def test_many_schedules_before_the_task_runs_make_one_offer() -> None:
    stage = Stage()
    for _ in range(1000):
        stage.offers.schedule()
    assert len(stage.tasks) == 1
    await asyncio.gather(*stage.tasks)
    assert stage.offer_ids() == [1]


async def test_an_answer_without_an_outstanding_offer_is_a_state_error() -> None:
    stage = Stage()
    with pytest.raises(SignalStateError):
        await stage.answer()
    await stage.offers.negotiate()
    await stage.answer()
    with pytest.raises(SignalStateError):  # answered twice
        await stage.answer()


async def test_an_answer_for_a_failed_peer_is_refused_and_not_applied() -> None:
    stage = Stage()
    await stage.offers.negotiate()
    stage.peer.state = "failed"
    with pytest.raises(SignalStateError):
        await stage.answer(1)
    assert stage.peer.answers == [] and ("answered", 1) not in stage.tracks.calls


async def test_no_peer_or_closed_means_no_offer() -> None:
    stage = Stage()
    stage.offers.peer = None
    await stage.offers.negotiate()
    stage.offers.peer = stage.peer
    stage.offers.close()
    await stage.offers.negotiate()
    assert stage.sent == [] and stage.peer.offers == 0


async def test_an_offer_the_media_worker_cannot_make_asks_the_client_to_rejoin() -> None:
    """A subscriber PC on a media worker that does not answer (the proxy's RuntimeError): no
    exception left in a task, no further offers, LeaveRequest RECONNECT to the client."""
    stage = Stage()

    async def no_answer() -> str:
        raise RuntimeError("media worker 1 did not answer: TimeoutError()")

    stage.peer.create_offer = no_answer  # type: ignore[method-assign]
    stage.offers.schedule()
    await asyncio.gather(*stage.tasks)  # returned, did not raise
    assert stage.offers.closed and not stage.offers.awaiting_answer
    (leave,) = stage.sent
    assert leave.leave.action == rtc.LeaveRequest.Action.RECONNECT
    await stage.offers.negotiate()
    assert stage.offer_ids() == []
