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
flap. Without a congestion signal (overuse, or more than `LOSS_CONGESTED` lost) a step down
or a pause waits
`DOWNGRADE_HOLD`: a key frame's second measures a layer high, and an application-limited
link's estimate is only what it carried. Layers change on key
frames only (the down track waits for one), and key-frame requests are throttled per layer at
the publisher (`TrackReceiver.request_keyframe`), so many subscribers moving at once send one
PLI per layer and throttle window, not one each. With no estimate (no feedback yet) nothing is
held back.

While some track is below its preferred layer, a probe is sent every `PROBE_INTERVAL` (doubling
after each probe that did not raise the estimate, up to `PROBE_INTERVAL_MAX`; `PROBE_AFTER_SUCCESS`
after one that did): for
`PROBE_DURATION` the transport carries padding-only packets on video streams (forwarded or
paused), in `PROBE_TICK` steps, enough to bring the link to the rate the next step needs ×
`PROBE_OVERAGE` (at least `PROBE_MIN` above the estimate, at most `PROBE_MAX_FACTOR` times it, twice it after a
probe that failed).
The first probe goes out as soon as a track is short of its preferred layer. What the feedback says of it is
`SubscriberBandwidth`'s to measure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from livekit.protocol import models

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.forwarder import PROBE_PADDING
from sfu.metrics import COUNTERS
from sfu.room.media import Forwarding
from sfu.room.publication import Subscription

log = logging.getLogger(__name__)

UPGRADE_MARGIN = 1.15
RESUME_MARGIN = 2.0
PAUSED_MIN_WAIT = 3.0
#: seconds between allocations driven by feedback (a drop of the estimate runs one at once)
ALLOCATE_INTERVAL = 0.25
PROBE_INTERVAL = 2.0
PROBE_INTERVAL_MAX = 4.0
PROBE_AFTER_SUCCESS = 0.5
#: a step down (or a pause) without a congestion signal waits this long: an estimate that is
#: only what an application-limited link carried says little about what it could carry
DOWNGRADE_HOLD = 1.0
PROBE_DURATION = 0.3
PROBE_TICK = 0.02
PROBE_OVERAGE = 1.2
PROBE_MIN = 200_000
PROBE_MAX_FACTOR = 3
AUDIO_DEFAULT = 40_000
#: bits per second assumed for a layer nothing was measured or declared for, by height
DEFAULT_BITRATES = ((180, 150_000), (360, 500_000), (540, 900_000), (720, 1_700_000))
DEFAULT_BITRATE_TOP = 3_000_000
NOMINAL_CEILING = 1.5
LOSS_CONGESTED = 0.10
_PROBE_PACKET_BITS = (12 + 8 + PROBE_PADDING) * 8


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
        if not waiting and price <= budget:
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
        self._last_run = -1.0
        self._last_estimate = 0
        self._next_probe = 0.0
        self._probe_interval = PROBE_INTERVAL
        self._probe_start_estimate = 0
        self._probe_timer: asyncio.TimerHandle | None = None
        self._probe_left = 0.0
        self._probe_packets_per_tick = 0
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
        self._hold_downgrades(result, now)
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
        self._maybe_probe(result, estimate, now)

    def _hold_downgrades(self, result: Allocation, now: float) -> None:
        """Without congestion (overuse, or heavy loss), a step down waits `DOWNGRADE_HOLD`."""
        gcc = self.bandwidth.gcc
        congested = self.bandwidth.overusing or gcc.loss_fraction > LOSS_CONGESTED
        for downtrack, layer in result.layers.items():
            current = -1 if downtrack.allocation_paused else downtrack.allocated_layer
            if layer >= current or congested:
                self._down_since.pop(downtrack, None)
                continue
            since = self._down_since.setdefault(downtrack, now)
            if now - since < DOWNGRADE_HOLD:
                result.layers[downtrack] = current

    # -- probes ----------------------------------------------------------------------------------
    def _maybe_probe(self, result: Allocation, estimate: int, now: float) -> None:
        if self._probe_timer is not None or self.bandwidth.probing:
            return
        if self._probe_start_estimate:  # the last probe's outcome is known by now
            if estimate > self._probe_start_estimate * 1.05:
                # it proved more: the next step's probe soon (libwebrtc probes on, exponentially)
                self._probe_interval = PROBE_INTERVAL
                self._next_probe = min(self._next_probe, now + PROBE_AFTER_SUCCESS)
            else:
                self._probe_interval = min(self._probe_interval * 2, PROBE_INTERVAL_MAX)
            self._probe_start_estimate = 0
        if not result.deficient or not self.bandwidth.stamping or now < self._next_probe:
            return
        # enough to prove the next step with room to spare, within bounds of what is known
        goal = max((result.committed + result.next_step) * PROBE_OVERAGE, result.desired)
        factor = PROBE_MAX_FACTOR if self._probe_interval == PROBE_INTERVAL else 2
        goal = min(max(goal, estimate + PROBE_MIN), factor * estimate)
        padding_rate = goal - result.committed
        if padding_rate <= 0:
            return
        self._next_probe = now + self._probe_interval
        self._probe_start_estimate = estimate
        self._probe_left = PROBE_DURATION
        self._probe_packets_per_tick = max(1, round(padding_rate * PROBE_TICK / _PROBE_PACKET_BITS))
        self.bandwidth.start_probe()
        COUNTERS.probes += 1
        self._probe_tick()

    def _probe_tick(self) -> None:
        self._probe_timer = None
        if self.closed:
            self.bandwidth.abandon_probe()
            return
        left = self._probe_packets_per_tick
        for sub in self._subscriptions():
            if left <= 0:
                break
            if sub.track.receiver.is_video:
                left -= sub.downtrack.send_padding(left)
        self._probe_left -= PROBE_TICK
        if self._probe_left <= 0:
            self.bandwidth.end_probe()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous test): the probe ends here
            self.bandwidth.end_probe()
            return
        self._probe_timer = loop.call_later(PROBE_TICK, self._probe_tick)

    def forget(self, downtrack: Forwarding) -> None:
        self._paused_since.pop(downtrack, None)
        self._down_since.pop(downtrack, None)

    def close(self) -> None:
        self.closed = True
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        self.bandwidth.abandon_probe()
