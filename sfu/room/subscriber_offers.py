"""The subscriber PC's offer/answer state machine: the server offers, one offer at a time.

A change to the set of forwarded tracks asks for an offer (`schedule`); changes made while an
offer is outstanding are folded into the next one, sent once the client answers. Offers are
numbered; the tracks learn which offer first carried them (`OfferedTracks.offered`) and when
the client answered it (`OfferedTracks.answered`), which is when media may flow on them. A
subscriber PC that cannot make an offer (its media worker did not answer in time: RuntimeError)
gets no more: the participant is asked to rejoin (LeaveRequest RECONNECT), placed afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from livekit.protocol import models, rtc

from sfu.room import signalling
from sfu.room.types import Peer, SignalStateError

log = logging.getLogger(__name__)


class OfferedTracks(Protocol):
    """The subscriptions an offer describes (`sfu.room.subscriptions.Subscriptions`)."""

    def before_offer(self) -> None:
        """The next offer is about to be built: drop what it must no longer carry."""

    def offered(self, offer_id: int) -> None:
        """Offer ``offer_id`` went out carrying every current subscription."""

    def answered(self, offer_id: int) -> None:
        """The client answered offer ``offer_id`` (and so every earlier one)."""


class SubscriberOffers:
    """Offer ids, the outstanding offer, and the renegotiation it defers."""

    def __init__(
        self,
        tracks: OfferedTracks,
        send: Callable[[rtc.SignalResponse], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        *,
        name: str = "",
    ) -> None:
        self._tracks = tracks
        self._send = send
        self._spawn = spawn
        self._name = name
        #: the subscriber PC; None until the participant starts
        self.peer: Peer | None = None
        self.offer_id = 0
        self.awaiting_answer = False
        self._renegotiate = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def close(self) -> None:
        """No offer after this one (the task that may be sending one is the owner's to cancel)."""
        self.closed = True

    def schedule(self) -> None:
        """`negotiate` soon, in one task however many changes ask for it meanwhile (a client
        toggling a subscription 100k times gets one offer, not 100k tasks queued on the lock)."""
        if self._task is not None and not self._task.done():
            self._renegotiate = True  # the pending offer may be built before this change
            return
        self._task = self._spawn(self.negotiate())

    async def negotiate(self) -> None:
        """Send an offer now, or as soon as the outstanding one is answered."""
        if self.peer is None or self.closed:
            return
        if self.awaiting_answer:
            self._renegotiate = True
            return
        async with self._lock:
            if self.awaiting_answer or self.closed:
                self._renegotiate = True
                return
            self._renegotiate = False
            self._tracks.before_offer()
            try:
                sdp = await self.peer.create_offer()
            except RuntimeError as exc:  # a media worker that did not answer, or is gone
                log.warning("participant %r: subscriber offer failed: %s", self._name, exc)
                self.closed = True
                leave = signalling.leave(
                    models.DisconnectReason.SERVER_SHUTDOWN, rtc.LeaveRequest.Action.RECONNECT
                )
                self._send(leave)
                return
            self.offer_id += 1
            self.awaiting_answer = True
            self._tracks.offered(self.offer_id)
            offer = rtc.SessionDescription(type="offer", sdp=sdp, id=self.offer_id)
            self._send(rtc.SignalResponse(offer=offer))

    async def handle_answer(self, answer: rtc.SessionDescription) -> None:
        if self.peer is None or not self.awaiting_answer:
            raise SignalStateError("answer received but no subscriber offer is outstanding")
        if self.peer.state in ("failed", "closed"):
            # e.g. ICE gave up before the client's answer arrived: nothing left to negotiate
            raise SignalStateError(f"answer received for a {self.peer.state} subscriber")
        if answer.id not in (0, self.offer_id):
            log.debug(
                "participant %r: answer id %d for offer %d", self._name, answer.id, self.offer_id
            )
        await self.peer.handle_answer(answer.sdp)
        self.awaiting_answer = False
        self._tracks.answered(self.offer_id)
        if self._renegotiate:
            await self.negotiate()
