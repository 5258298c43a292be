"""Dynacast: tell a publisher which simulcast layers anybody watches, so it encodes only those.

For each published video track, the demand is the highest layer any subscriber needs — its
preferred layer, or the layer it is still being sent if that is higher (never cut a layer that is
being forwarded before the switch down has happened) — or nothing when every subscription is
disabled. Upgrades are sent at once; downgrades only after ``DOWNGRADE_DELAY`` of lower demand
(LiveKit's DynacastPauseDelay), so a tile flickering small does not stall the stream. Before the
first subscriber, the publisher keeps all layers for ``INITIAL_WAIT`` (it may be about to arrive).

Changes (`update`) are evaluated once, on the loop's next pass, however many came: the demand is
a pass over every subscriber, and when the active speaker changes in a room of N, each of the N
subscribers changes two tiles' settings and switches two layers: evaluated at once, 4N passes
over N subscribers in one burst.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

from livekit.protocol import models, rtc

DOWNGRADE_DELAY = 5.0
INITIAL_WAIT = 10.0
QUALITIES = (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)


class Subscriber(Protocol):
    @property
    def subscribed_layer(self) -> int: ...


class Dynacast:
    """The SubscribedQualityUpdate stream of one published video track."""

    def __init__(
        self,
        track_sid: str,
        codec: str,
        layer_qualities: Sequence[int],
        subscribers: Callable[[], Sequence[Subscriber]],
        send: Callable[[rtc.SignalResponse], None],
    ) -> None:
        self.track_sid = track_sid
        self.codec = codec.lower().removeprefix("video/")
        self.layer_qualities = list(layer_qualities)
        self._subscribers = subscribers
        self._send = send
        self.sent_quality: int | None = None  # the max quality last announced (-1: none)
        self._timer: asyncio.TimerHandle | None = None
        self._pending: asyncio.Handle | None = None  # an `update` to evaluate this iteration
        self.closed = False

    def start(self) -> None:
        """Called at publish: announce now if somebody already watches, else after INITIAL_WAIT."""
        if self.demand() >= 0:
            self._evaluate()
        else:
            self._schedule(INITIAL_WAIT)

    def demand(self) -> int:
        """The highest VideoQuality any subscriber needs, -1 for none."""
        layers = [s.subscribed_layer for s in self._subscribers()]
        layer = max(layers, default=-1)
        if layer < 0 or not self.layer_qualities:
            return -1
        return int(self.layer_qualities[min(layer, len(self.layer_qualities) - 1)])

    def update(self) -> None:
        """Re-evaluate after a subscriber changed (settings, joined, left, switched layer): once,
        on the loop's next pass."""
        if self._pending is None and not self.closed:
            self._pending = asyncio.get_running_loop().call_soon(self._evaluate)

    def _evaluate(self) -> None:
        self._pending = None
        if self.closed:
            return
        wanted = self.demand()
        if self.sent_quality is None and self._timer is not None and wanted < 0:
            return  # still in the initial wait, nobody watching yet
        if self.sent_quality is None or wanted > self.sent_quality:
            self._cancel()
            self._announce(wanted)
        elif wanted < self.sent_quality:
            if self._timer is None:
                self._schedule(DOWNGRADE_DELAY)
        else:
            self._cancel()

    def _fire(self) -> None:
        self._timer = None
        wanted = self.demand()
        if self.sent_quality is None or wanted != self.sent_quality:
            self._announce(wanted)

    def _announce(self, quality: int) -> None:
        self.sent_quality = quality
        qualities = [
            rtc.SubscribedQuality(quality=q, enabled=quality >= 0 and q <= quality)
            for q in QUALITIES
        ]
        update = rtc.SubscribedQualityUpdate(
            track_sid=self.track_sid,
            subscribed_qualities=qualities,
            subscribed_codecs=[rtc.SubscribedCodec(codec=self.codec, qualities=qualities)],
        )
        self._send(rtc.SignalResponse(subscribed_quality_update=update))

    def _schedule(self, delay: float) -> None:
        self._cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self._cancel()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
