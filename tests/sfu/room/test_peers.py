"""`sfu.room.peers`: early publisher candidates are bounded and applied once, in order; peer
closes run to the end even when the closing task is cancelled."""

from __future__ import annotations

import asyncio

from sfu.metrics import COUNTERS
from sfu.room.peers import (
    MAX_CANDIDATE_INIT_BYTES,
    MAX_EARLY_CANDIDATES,
    EarlyCandidates,
    close_peers,
)
from tests.sfu.room.fakes import FakePeer


def test_early_candidates_are_applied_once_in_arrival_order() -> None:
    early, peer = EarlyCandidates(), FakePeer("publisher")
    assert early.keep('{"candidate": "a"}') and early.keep('{"candidate": "b"}')
    early.apply(peer)
    early.apply(peer)
    assert peer.remote_candidates == ['{"candidate": "a"}', '{"candidate": "b"}']
    assert len(early) == 0


def test_early_candidates_are_bounded_in_count_and_size() -> None:
    early = EarlyCandidates()
    before = COUNTERS.limits_exceeded.get("early_candidates", 0)
    assert not early.keep("x" * (MAX_CANDIDATE_INIT_BYTES + 1))
    for i in range(MAX_EARLY_CANDIDATES):
        assert early.keep(str(i))
    assert not early.keep("one too many")
    assert len(early) == MAX_EARLY_CANDIDATES
    assert COUNTERS.limits_exceeded["early_candidates"] == before + 2


class SlowPeer(FakePeer):
    async def close(self) -> None:
        await asyncio.sleep(0.05)
        await super().close()


async def test_a_cancelled_close_still_closes_every_peer() -> None:
    peers = [SlowPeer("publisher"), SlowPeer("subscriber")]
    closing = asyncio.ensure_future(close_peers(*peers, None))
    await asyncio.sleep(0.01)
    closing.cancel()
    await asyncio.sleep(0.1)
    assert all(p.closed for p in peers)
