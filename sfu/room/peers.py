"""The edges of a participant's peer connections' lives: publisher candidates trickled before
the publisher PC exists (kept, bounded, for it), and closes that run to the end even when the
participant's close is cancelled."""

from __future__ import annotations

import asyncio

from sfu.metrics import COUNTERS
from sfu.room.types import Peer

#: publisher candidates kept from before the first offer (the transport's own cap is also 64)
MAX_EARLY_CANDIDATES = 64
MAX_CANDIDATE_INIT_BYTES = 1024  # a real candidateInit is about 150 bytes


class EarlyCandidates:
    """candidateInit JSONs that arrived before their peer connection (libwebrtc may trickle
    before its offer reaches us)."""

    def __init__(self) -> None:
        self._kept: list[str] = []

    def keep(self, candidate_init: str) -> bool:
        """Keep one; False (counted) past MAX_EARLY_CANDIDATES or MAX_CANDIDATE_INIT_BYTES."""
        if (
            len(self._kept) >= MAX_EARLY_CANDIDATES
            or len(candidate_init) > MAX_CANDIDATE_INIT_BYTES
        ):
            COUNTERS.limit_exceeded("early_candidates")
            return False
        self._kept.append(candidate_init)
        return True

    def apply(self, peer: Peer) -> None:
        """Hand every kept candidate to the peer that now exists, in arrival order; forget them."""
        kept, self._kept = self._kept, []
        for candidate in kept:
            peer.add_remote_candidate(candidate)

    def __len__(self) -> int:
        return len(self._kept)


#: peer closes that outlived a cancelled Participant.close (kept referenced until done)
_CLOSING: set[asyncio.Future[list[BaseException | None]]] = set()


async def close_peers(*peers: Peer | None) -> None:
    """Close each peer to the end, even if the caller is cancelled meanwhile: each close runs in
    its own task, and a cancellation of the caller leaves them running."""
    closes = [asyncio.ensure_future(p.close()) for p in peers if p is not None]
    if not closes:
        return
    done = asyncio.gather(*closes, return_exceptions=True)
    _CLOSING.add(done)
    done.add_done_callback(_CLOSING.discard)
    await asyncio.shield(done)
