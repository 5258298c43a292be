"""Stream allocation for one subscriber: which layer of each video track its link can carry
(LiveKit's StreamAllocator, our own rules), and the padding probes that find more room.

Given the subscriber transport's estimate (`SubscriberBandwidth.estimate`), `StreamAllocator`
decides per subscription:

1. audio always: its measured bitrate is taken off the budget first;
2. every video track gets its lowest layer, in priority order — screen shares first, then the
   active speakers' cameras, then the others — as long as it fits; one that does not is paused
   (`DownTrack.set_allocation(-1)`: nothing forwarded, `StreamStateUpdate` PAUSED), so video
   gives way before audio would suffer;
3. the budget left climbs the tracks one layer at a time, round-robin in the same order, up to
   each one's preferred layer (its tile size, `DownTrack.max_layer`).

A layer's cost is its measured bitrate at the publisher (`LayerState.bitrate`) within
`NOMINAL_CEILING` × its nominal one (what the publisher declared, `VideoLayer.bitrate`, else a
default by height), or the nominal one while it is not received. A layer above the one
allocated now costs `UPGRADE_MARGIN` more, and a paused track resumes only after
`PAUSED_MIN_WAIT`, when its lowest layer fits `RESUME_MARGIN` times over (the key frame it
starts on is several times a second's worth): an estimate hovering at a boundary does not
flap. Without a congestion signal (overuse, or more than `LOSS_CONGESTED` lost) a step down waits
`DOWNGRADE_HOLD`: a key frame's second measures a layer high, and an application-limited
link's estimate is only what it carried. Layers change on key
frames only (the down track waits for one), and key-frame requests are throttled per layer at
the publisher (`TrackReceiver.request_keyframe`), so many subscribers moving at once send one
PLI per layer and throttle window, not one each. With no estimate (no feedback yet) nothing is
held back.

While some track is below its preferred layer, `sfu.room.probe.Prober` sends padding probes to
find more room (not while a pause is being held: the link is believed full then).

A climb waits while the link is congested, and a climb that congestion undoes within
`CLIMB_PROVING` holds that track's next climb back for `CLIMB_BACKOFF`, doubling with each such
failure up to `CLIMB_BACKOFF_MAX` (a climb that lasts resets it): at a link just wide enough for
a layer's steady bitrate, its key frame and the queue it builds are what fails, and every failed
climb costs the subscriber a frozen picture until the lower layer's key frame.

A pause is the last resort. A track forwarding its lowest layer keeps it while the budget covers
`PAUSE_MARGIN` of that layer's nominal cost (one overuse sets the estimate to 0.85 × what
arrived, which is below what is being sent); below that, the pause still waits `PAUSE_HOLD`
when loss was reported meanwhile, `PAUSE_HOLD_LOSSLESS` when only delay grew (a queue, or a
receiver whose CPU stalls and stamps arrivals late), the track at its lowest layer meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from livekit.protocol import models

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.metrics import COUNTERS
from sfu.room.media import Forwarding
from sfu.room.probe import LOSS_CONGESTED, PROBE_OVERAGE, Prober
from sfu.room.publication import Subscription

log = logging.getLogger(__name__)

UPGRADE_MARGIN = 1.15
RESUME_MARGIN = 2.0
PAUSED_MIN_WAIT = 3.0
#: seconds between allocations driven by feedback (a drop of the estimate runs one at once)
ALLOCATE_INTERVAL = 0.25
#: a step down (or a pause) without a congestion signal waits this long: an estimate that is
#: only what an application-limited link carried says little about what it could carry
DOWNGRADE_HOLD = 1.0
#: the lowest layer is paused only after the allocation asked for it this long without a break
PAUSE_HOLD = 2.0
#: ... or this long when no loss over `LOSS_PAUSE` was reported meanwhile: delay alone (a queue,
#: or a receiver whose CPU stalls and stamps arrivals late) is not enough to give video up
PAUSE_HOLD_LOSSLESS = 5.0
LOSS_PAUSE = 0.02
#: a climb followed this soon by congestion and a step down failed ...
CLIMB_PROVING = 2.0
#: ... and the track's next climb waits this long, doubled per failure in a row up to the max
CLIMB_BACKOFF = 4.0
CLIMB_BACKOFF_MAX = 16.0
#: a track forwarding its lowest layer keeps it while the budget covers this share of it
PAUSE_MARGIN = 0.7
AUDIO_DEFAULT = 40_000
#: bits per second assumed for a layer nothing was measured or declared for, by height
DEFAULT_BITRATES = ((180, 150_000), (360, 500_000), (540, 900_000), (720, 1_700_000))
DEFAULT_BITRATE_TOP = 3_000_000
NOMINAL_CEILING = 1.5


def nominal_bitrate(sub: Subscription, layer: int) -> int:
    """What the publisher declared for `layer` (`VideoLayer.bitrate`), else a default by height."""
    quality = sub.track.layer_qualities[layer] if layer < len(sub.track.layer_qualities) else -1
    for declared in sub.track.info.layers:
        if declared.quality == quality and declared.bitrate > 0:
            return int(declared.bitrate)
    sizes = sub.track.layer_sizes
    height = min(sizes[layer]) if layer < len(sizes) else 720
    for limit, bitrate in DEFAULT_BITRATES:
        if height <= limit:
            return bitrate
    return DEFAULT_BITRATE_TOP


def layer_bitrate(sub: Subscription, layer: int) -> int:
    """The bits per second forwarding `layer` of this subscription's track costs: its measured
    bitrate over the last second, at most `NOMINAL_CEILING` × its nominal one (a second with a
    key frame or two measures several times the layer's rate, and must not pause it), or the
    nominal one when it is not being received."""
    receiver = sub.track.receiver
    if not receiver.is_video:
        measured = receiver.layers[0].bitrate if receiver.layers else 0
        return measured if measured > 0 else AUDIO_DEFAULT
    nominal = nominal_bitrate(sub, layer)
    if 0 <= layer < len(receiver.layers):
        measured = receiver.layers[layer].bitrate
        if measured > 0 and receiver.is_active(layer, receiver.clock()):
            return min(measured, int(NOMINAL_CEILING * nominal))
    return nominal


@dataclass
class Allocation:
    """The outcome of one allocation: the layer per video down track (-1 paused), what it
    commits, and whether some track is below its preferred layer (then probing helps)."""

    layers: dict[Forwarding, int] = field(default_factory=dict)
    committed: int = 0
    deficient: bool = False
    #: the cheapest step up that did not fit (bits per second), 0 when none
    next_step: int = 0
    #: video tracks at their preferred layer, below it, paused
    at_preferred: int = 0
    below_preferred: int = 0
    paused: int = 0
    #: layers below the preferred one per video track, on average (a pause: one more)
    layers_missing: float = 0.0
    #: bits per second every track at its preferred layer (and audio) would take
    desired: int = 0


def allocate(
    subs: Iterable[Subscription],
    estimate: int,
    speakers: Collection[str],
    paused_since: dict[Forwarding, float],
    now: float,
) -> Allocation:
    """The allocation of `estimate` bits per second over `subs` (see the module docstring)."""
    out = Allocation()
    budget = float(estimate)
    videos: list[tuple[int, str, Subscription]] = []
    for sub in subs:
        downtrack = sub.downtrack
        if not downtrack.started or not downtrack.enabled or downtrack.closed:
            continue
        if not sub.track.receiver.is_video:
            budget -= layer_bitrate(sub, 0)
            continue
        screen = sub.track.info.source == models.TrackSource.SCREEN_SHARE
        speaking = sub.track.publisher.sid in speakers
        videos.append((0 if screen else 1 if speaking else 2, sub.track.sid, sub))
    videos.sort(key=lambda v: (v[0], v[1]))
    order = [sub for _, _, sub in videos]
    chosen: dict[Forwarding, int] = {}

    def cost(sub: Subscription, layer: int) -> float:
        base = float(layer_bitrate(sub, layer))
        if sub.downtrack.allocation_paused:  # resuming costs a key frame on a thin link
            return base * RESUME_MARGIN
        return base * UPGRADE_MARGIN if layer > sub.downtrack.allocated_layer else base

    for sub in order:
        downtrack = sub.downtrack
        since = paused_since.get(downtrack)
        waiting = since is not None and now - since < PAUSED_MIN_WAIT
        price = cost(sub, 0)
        # hysteresis: what is forwarded now is given up only well below its cost (one overuse
        # sets the estimate to 0.85 × what arrived, which is below what is being sent)
        # (at its nominal cost at most: a second with a key frame in it measures high)
        keep = downtrack.allocated_layer >= 0 and not downtrack.allocation_paused
        least = PAUSE_MARGIN * min(price, nominal_bitrate(sub, 0))
        if not waiting and (price <= budget or (keep and least <= budget)):
            chosen[downtrack] = 0
            budget -= price
        else:
            chosen[downtrack] = -1
            out.deficient = True
            if not waiting:
                out.next_step = min(out.next_step or int(price), int(price))
    climbing = True
    while climbing:  # at most MAX_LAYERS rounds
        climbing = False
        for sub in order:
            downtrack = sub.downtrack
            layer = chosen[downtrack]
            wanted = min(downtrack.max_layer, len(sub.track.receiver.layers) - 1)
            if layer < 0 or layer >= wanted:
                continue
            step = cost(sub, layer + 1) - layer_bitrate(sub, layer)
            if step <= budget:
                chosen[downtrack] = layer + 1
                budget -= step
                climbing = True
            else:
                out.next_step = min(out.next_step or int(step), int(step))
    missing = 0
    out.desired = int(estimate - budget)
    for sub in order:
        wanted = min(sub.downtrack.max_layer, len(sub.track.receiver.layers) - 1)
        layer = chosen[sub.downtrack]
        out.desired += layer_bitrate(sub, wanted) - (layer_bitrate(sub, layer) if layer >= 0 else 0)
        missing += max(wanted - layer, 0)
        if layer < 0:
            out.paused += 1
        elif layer < wanted:
            out.below_preferred += 1
        else:
            out.at_preferred += 1
    out.deficient = out.deficient or out.paused + out.below_preferred > 0
    out.layers_missing = missing / len(order) if order else 0.0
    out.layers = chosen
    out.committed = int(max(estimate - budget, 0))
    return out


class StreamAllocator:
    """Applies `allocate` to one subscriber's down tracks and runs its probes."""

    def __init__(
        self,
        bandwidth: SubscriberBandwidth,
        subscriptions: Callable[[], Iterable[Subscription]],
        *,
        on_paused_changed: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self.bandwidth = bandwidth
        self._subscriptions = subscriptions
        self._on_paused_changed = on_paused_changed
        self._clock = clock
        #: the publisher sids speaking now (from the SpeakersChanged this participant is sent)
        self.speakers: set[str] = set()
        self._paused_since: dict[Forwarding, float] = {}
        self._down_since: dict[Forwarding, float] = {}
        self._pause_since: dict[Forwarding, float] = {}
        #: per track: when it last climbed; the back-off its next climb waits, and until when
        self._climbed_at: dict[Forwarding, float] = {}
        self._climb_backoff: dict[Forwarding, tuple[float, float]] = {}
        self._lossy_at = -1.0  # when feedback last reported loss over LOSS_PAUSE
        self._last_run = -1.0
        self._last_estimate = 0
        self.prober = Prober(bandwidth, subscriptions, clock)
        self.last: Allocation | None = None
        self.closed = False

    def on_feedback(self) -> None:
        """After each feedback packet: allocate again every ALLOCATE_INTERVAL, or at once when
        the estimate fell."""
        estimate = self.bandwidth.estimate
        if estimate is None:
            return
        now = self._clock()
        if now - self._last_run >= ALLOCATE_INTERVAL or estimate < 0.9 * self._last_estimate:
            self.run()

    def run(self) -> None:
        """Allocate now (also every RTCP round, for REMB-only links)."""
        if self.closed:
            return
        now = self._clock()
        self._last_run = now
        estimate = self.bandwidth.estimate
        subs = list(self._subscriptions())
        if estimate is None:
            for sub in subs:
                sub.downtrack.set_allocation(len(sub.track.receiver.layers) - 1)
            return
        self._last_estimate = estimate
        result = allocate(subs, estimate, self.speakers, self._paused_since, now)
        held = self._hold_downgrades(result, now)
        self.last = result
        COUNTERS.observe_estimate(estimate)
        COUNTERS.allocated_at_preferred += result.at_preferred
        COUNTERS.allocated_below_preferred += result.below_preferred
        COUNTERS.allocated_paused += result.paused
        self.bandwidth.committed = result.committed
        changed = False
        for downtrack, layer in result.layers.items():
            was_paused = downtrack.allocation_paused
            before = -1 if was_paused else downtrack.allocated_layer
            if before != layer:
                log.debug(
                    "downtrack %d: allocated layer %d → %d (estimate %d bit/s, preferred %d)",
                    downtrack.ssrc,
                    before,
                    layer,
                    estimate,
                    downtrack.max_layer,
                )
            downtrack.set_allocation(layer)
            if layer < 0 and not was_paused:
                self._paused_since[downtrack] = now
                changed = True
            elif layer >= 0 and was_paused:
                self._paused_since.pop(downtrack, None)
                changed = True
        for downtrack in [d for d in self._paused_since if d not in result.layers]:
            del self._paused_since[downtrack]
        if changed:
            self._on_paused_changed()
        if not held:  # the link is believed full: a probe would overfill it
            wanted = max(result.committed + result.next_step, result.desired / PROBE_OVERAGE)
            self.prober.maybe_probe(
                deficient=result.deficient,
                estimate=estimate,
                committed=result.committed,
                wanted=wanted,
                now=now,
            )

    def _hold_downgrades(self, result: Allocation, now: float) -> bool:
        """Without congestion (overuse, or heavy loss), a step down waits `DOWNGRADE_HOLD`; a
        pause always waits `PAUSE_HOLD`, the track at its lowest layer meanwhile; a climb waits
        as `_hold_climb` says. Whether some track is held at its lowest layer (the estimate is
        below even the lowest layers: no probe then)."""
        held = False
        gcc = self.bandwidth.gcc
        congested = self.bandwidth.overusing or gcc.loss_fraction > LOSS_CONGESTED
        if gcc.loss_fraction > LOSS_PAUSE:
            self._lossy_at = now
        for downtrack, layer in result.layers.items():
            current = -1 if downtrack.allocation_paused else downtrack.allocated_layer
            if layer >= 0 or current < 0:
                self._pause_since.pop(downtrack, None)
            else:
                since = self._pause_since.setdefault(downtrack, now)
                hold = PAUSE_HOLD if self._lossy_at >= since else PAUSE_HOLD_LOSSLESS
                if now - since < hold:
                    layer = 0
                    held = True
            if layer > current >= 0:
                layer = self._hold_climb(downtrack, layer, current, congested, now)
            elif current > layer and congested:
                self._climb_failed(downtrack, now)
            if layer >= current or congested or layer < 0:  # (a pause waited its own hold)
                self._down_since.pop(downtrack, None)
            elif now - self._down_since.setdefault(downtrack, now) < DOWNGRADE_HOLD:
                layer = current
            result.layers[downtrack] = layer
        return held

    def _hold_climb(
        self, downtrack: Forwarding, layer: int, current: int, congested: bool, now: float
    ) -> int:
        """The layer `downtrack` may climb to from `current`: none while the link is congested
        or the back-off of a failed climb runs."""
        backoff = self._climb_backoff.get(downtrack)
        if congested or (backoff is not None and now < backoff[1]):
            return current
        climbed = self._climbed_at.get(downtrack)
        if backoff is not None and climbed is not None and now - climbed >= CLIMB_PROVING:
            del self._climb_backoff[downtrack]  # the last climb lasted: start over
        self._climbed_at[downtrack] = now
        return layer

    def _climb_failed(self, downtrack: Forwarding, now: float) -> None:
        """Congestion steps `downtrack` down: if it climbed just before, its next climb waits."""
        climbed = self._climbed_at.pop(downtrack, None)
        if climbed is None:
            return
        if now - climbed >= CLIMB_PROVING:  # it lasted: start over
            self._climb_backoff.pop(downtrack, None)
            return
        last = self._climb_backoff.get(downtrack)
        wait = CLIMB_BACKOFF if last is None else min(2 * last[0], CLIMB_BACKOFF_MAX)
        self._climb_backoff[downtrack] = (wait, now + wait)
        log.debug("downtrack %d: a climb failed, the next waits %.0f s", downtrack.ssrc, wait)

    def forget(self, downtrack: Forwarding) -> None:
        self._climbed_at.pop(downtrack, None)
        self._climb_backoff.pop(downtrack, None)
        self._paused_since.pop(downtrack, None)
        self._down_since.pop(downtrack, None)
        self._pause_since.pop(downtrack, None)

    def close(self) -> None:
        self.closed = True
        self.prober.close()
