"""Stream allocation (`sfu.room.allocation`) over real receivers and down tracks: audio first, every
video track at its lowest layer in priority order (screen share, active speaker, the rest), then
up towards each one's preferred layer; a pause before audio would suffer, no flapping back, the
outcome applied to the down tracks (forwarding, StreamState, dynacast demand), and probes only
while some track is below what it prefers."""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit.protocol import models

from sfu.ids import ParticipantIdentity, ParticipantSid
from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.forwarder import DownTrack
from sfu.media.gcc import PacketResult
from sfu.media.receiver import TrackReceiver
from sfu.room.allocation import (
    CLIMB_BACKOFF,
    CLIMB_BACKOFF_MAX,
    CLIMB_PROVING,
    DOWNGRADE_HOLD,
    PAUSE_HOLD,
    PAUSE_HOLD_LOSSLESS,
    PAUSE_MARGIN,
    PAUSED_MIN_WAIT,
    StreamAllocator,
    allocate,
)
from sfu.room.permission import SubscriptionPermissions
from sfu.room.probe import PROBE_MAX_FACTOR, PROBE_PACKET_BITS, PROBE_QUEUE
from sfu.room.publication import PublishedTrack, Subscription
from tests.sfu.conftest import FakeClock

#: measured bitrates of the three layers of every camera here
LAYERS = (150_000, 500_000, 1_500_000)
AUDIO = 50_000


@dataclass
class Publisher:
    sid: ParticipantSid
    identity: ParticipantIdentity = field(default_factory=lambda: ParticipantIdentity("p"))
    subscription_permission: SubscriptionPermissions = field(
        default_factory=SubscriptionPermissions
    )


def subscription(
    clock: FakeClock,
    name: str,
    *,
    kind: str = "video",
    source: int = models.TrackSource.CAMERA,
    preferred: int = 2,
) -> Subscription:
    video = kind == "video"
    receiver = TrackReceiver(
        kind=kind,
        mime_type="video/VP8" if video else "audio/opus",
        clock_rate=90000 if video else 48000,
        layer_count=3 if video else 1,
        send_rtcp=lambda _data: None,
        clock=clock,
    )
    for n, layer in enumerate(receiver.layers):
        layer.ssrc = 0x100 + n
        layer.bitrate = LAYERS[n] if video else AUDIO
        layer.last_arrival = clock()
    info = models.TrackInfo(sid=f"TR_{name}", source=source)
    track = PublishedTrack(
        info,
        Publisher(ParticipantSid(f"PA_{name}")),
        receiver,
        "1",
        layer_sizes=[(320, 180), (640, 360), (1280, 720)] if video else [],
        layer_qualities=[0, 1, 2] if video else [],
    )
    downtrack = DownTrack(
        receiver, ssrc=0x200, payload_type=96, send_rtp=lambda _d: None, cname="c"
    )
    downtrack.max_layer = preferred
    downtrack.start()
    return Subscription(track, downtrack, "1")


def layers(result_layers: dict[DownTrack, int], subs: list[Subscription]) -> list[int]:
    return [result_layers[s.downtrack] for s in subs]


def test_everything_fits(clock: FakeClock) -> None:
    subs = [subscription(clock, "a"), subscription(clock, "b", preferred=1)]
    audio = subscription(clock, "mic", kind="audio")
    result = allocate([*subs, audio], 10_000_000, (), {}, clock())
    assert layers(result.layers, subs) == [2, 1]
    assert audio.downtrack not in result.layers
    assert not result.deficient and result.at_preferred == 2
    assert result.committed == AUDIO + LAYERS[2] + LAYERS[1]


def test_lowest_layers_first_then_round_robin_up(clock: FakeClock) -> None:
    subs = [subscription(clock, name) for name in "abc"]
    audio = subscription(clock, "mic", kind="audio")
    # audio + three low layers + two middle steps (with the upgrade margin)
    budget = AUDIO + 3 * LAYERS[0] + 2 * int((LAYERS[1] - LAYERS[0]) * 1.15) + 10_000
    result = allocate([audio, *subs], budget, (), {}, clock())
    assert layers(result.layers, subs) == [1, 1, 0]
    assert result.deficient and result.below_preferred == 3
    assert result.next_step > 0


def test_screen_share_then_the_speaker_keep_video_when_the_rest_pauses(clock: FakeClock) -> None:
    camera = subscription(clock, "a")
    speaker = subscription(clock, "b")
    screen = subscription(clock, "s", source=models.TrackSource.SCREEN_SHARE)
    audio = subscription(clock, "mic", kind="audio")
    budget = AUDIO + 2 * LAYERS[0] + 1000
    result = allocate([camera, speaker, screen, audio], budget, {"PA_b"}, {}, clock())
    assert layers(result.layers, [screen, speaker, camera]) == [0, 0, -1]
    assert result.paused == 1
    # thinner still: only audio is left, every video track pauses
    result = allocate([camera, speaker, screen, audio], AUDIO, {"PA_b"}, {}, clock())
    assert layers(result.layers, [screen, speaker, camera]) == [-1, -1, -1]


def test_the_allocation_is_applied_and_a_pause_does_not_flap(clock: FakeClock) -> None:
    subs = [subscription(clock, "a"), subscription(clock, "mic", kind="audio")]
    camera = subs[0].downtrack
    bandwidth = SubscriberBandwidth(clock)
    changed: list[int] = []
    allocator = StreamAllocator(
        bandwidth, lambda: subs, on_paused_changed=lambda: changed.append(1), clock=clock
    )
    allocator.run()  # no estimate yet: nothing held back
    assert camera.forwarding and camera.limit == 2
    bandwidth.remb = 100_000  # a REMB-only client on a thin link
    allocator.run()
    assert not camera.allocation_paused  # no congestion signal: the step down waits
    assert camera.allocated_layer == 2
    clock.advance(DOWNGRADE_HOLD)
    allocator.run()
    assert not camera.allocation_paused and camera.allocated_layer == 0  # the lowest first
    clock.advance(PAUSE_HOLD - DOWNGRADE_HOLD)
    allocator.run()
    assert not camera.allocation_paused  # delay alone, no loss: video is not given up yet
    clock.advance(PAUSE_HOLD_LOSSLESS - PAUSE_HOLD)
    allocator.run()
    assert camera.allocation_paused and not camera.forwarding and camera.paused
    assert camera.subscribed_layer == -1 and changed == [1]
    bandwidth.remb = 5_000_000
    clock.advance(PAUSED_MIN_WAIT / 2)
    allocator.run()
    assert camera.allocation_paused  # not back before PAUSED_MIN_WAIT
    clock.advance(PAUSED_MIN_WAIT)
    allocator.run()
    assert not camera.allocation_paused and camera.limit == 2 and changed == [1, 1]
    bandwidth.remb = AUDIO + LAYERS[1] + 1000
    bandwidth.gcc.usage = "overusing"  # the estimator's own signal: at once
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = AUDIO + LAYERS[1] + 1000
    allocator.run()
    assert camera.allocated_layer == 1 and camera.subscribed_layer == 1  # dynacast follows
    allocator.close()


def test_probes_only_when_deficient(clock: FakeClock) -> None:
    subs = [subscription(clock, "a")]
    bandwidth = SubscriberBandwidth(clock)
    bandwidth.sequence.ext_id = 3
    allocator = StreamAllocator(
        bandwidth, lambda: subs, on_paused_changed=lambda: None, clock=clock
    )
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = 10_000_000
    bandwidth.gcc._aimd.rate = 10_000_000
    allocator.run()
    assert not bandwidth.probing
    bandwidth.gcc._aimd.rate = 600_000
    allocator.run()  # 360p fits, 720p does not: a probe (it ends at once without a loop)
    assert allocator.last is not None and allocator.last.deficient
    assert bandwidth._cluster is None or bandwidth._cluster.last >= -1
    allocator.close()


def congested(bandwidth: SubscriberBandwidth, estimate: int, loss: float = 0.0) -> None:
    """The estimator's state after an overuse (and `loss` reported)."""
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.usage = "overusing"
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = estimate
    bandwidth.gcc.loss_fraction = loss


def test_one_overuse_at_the_lowest_layer_does_not_pause(clock: FakeClock) -> None:
    """An overuse sets the estimate to 0.85 × what arrived, below what is being sent: the lowest
    layer is kept while the budget covers PAUSE_MARGIN of it; lower still, the pause waits
    PAUSE_HOLD with loss reported, and the track keeps its lowest layer meanwhile."""
    subs = [subscription(clock, "a"), subscription(clock, "mic", kind="audio")]
    camera = subs[0].downtrack
    bandwidth = SubscriberBandwidth(clock)
    allocator = StreamAllocator(
        bandwidth, lambda: subs, on_paused_changed=lambda: None, clock=clock
    )
    congested(bandwidth, AUDIO + LAYERS[0] + 1000)
    allocator.run()
    assert camera.allocated_layer == 0 and not camera.allocation_paused
    congested(bandwidth, int(0.85 * (AUDIO + LAYERS[0])))
    for _ in range(int(PAUSE_HOLD_LOSSLESS / 0.5) + 2):
        clock.advance(0.5)
        allocator.run()
        assert camera.allocated_layer == 0 and not camera.allocation_paused
    # far below, with loss: the pause waits PAUSE_HOLD, at the lowest layer
    congested(bandwidth, AUDIO + int(PAUSE_MARGIN * LAYERS[0] / 2), loss=0.2)
    allocator.run()
    assert not camera.allocation_paused
    clock.advance(PAUSE_HOLD)
    allocator.run()
    assert camera.allocation_paused
    allocator.close()


def test_a_probe_puts_a_bounded_queue_on_the_link(clock: FakeClock) -> None:
    """A probe runs at most PROBE_MAX_FACTOR × the estimate, and only as long as it takes to put
    PROBE_QUEUE seconds of what the link drains beyond it; none while the link is congested."""
    subs = [subscription(clock, "a"), subscription(clock, "mic", kind="audio")]
    bandwidth = SubscriberBandwidth(clock)
    bandwidth.sequence.ext_id = 3
    allocator = StreamAllocator(
        bandwidth, lambda: subs, on_paused_changed=lambda: None, clock=clock
    )
    estimate = AUDIO + LAYERS[1] + 1000  # 360p fits, 720p does not: deficient
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = estimate
    bandwidth.gcc.usage = "overusing"
    allocator.run()
    assert not bandwidth.probing  # congested: no probe
    bandwidth.gcc.usage = "normal"
    clock.advance(10)
    allocator.run()  # without a loop the probe is one tick
    assert allocator.last is not None and allocator.last.deficient
    padding = allocator.prober.rate * PROBE_PACKET_BITS
    assert allocator.last.committed + padding <= PROBE_MAX_FACTOR * estimate * 1.05
    excess = allocator.last.committed + padding - estimate
    assert excess * allocator.prober.left <= PROBE_QUEUE * estimate * 1.01
    allocator.close()


def test_a_paused_track_still_probes_its_way_back(clock: FakeClock) -> None:
    """Paused, the link carries audio only: the probe is bounded by that, but still goes above the
    estimate (else an estimate that is not carried now could never grow, and the track never
    resume)."""
    subs = [subscription(clock, "a"), subscription(clock, "mic", kind="audio")]
    bandwidth = SubscriberBandwidth(clock)
    bandwidth.sequence.ext_id = 3
    allocator = StreamAllocator(
        bandwidth, lambda: subs, on_paused_changed=lambda: None, clock=clock
    )
    subs[0].downtrack.set_allocation(-1)
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = 2 * AUDIO + LAYERS[0]  # no resume yet
    for t in range(40):  # 0.5 s of arrivals at the audio's rate: the acknowledged rate
        bandwidth.gcc._on_arrival(PacketResult(t, t / 80, AUDIO // 8 // 80, 1.0 + t / 80))
    clock.advance(PAUSED_MIN_WAIT + 1)
    allocator.run()
    assert subs[0].downtrack.allocation_paused
    padding = allocator.prober.rate * PROBE_PACKET_BITS
    assert bandwidth.probing or padding > 0
    assert allocator.last is not None
    assert allocator.last.committed + padding > bandwidth.estimate  # type: ignore[operator]
    allocator.close()


def test_no_climb_while_congested_and_a_failed_climb_backs_off(clock: FakeClock) -> None:
    """A climb waits while the estimator sees overuse; one that congestion undoes within
    CLIMB_PROVING holds the next climb back CLIMB_BACKOFF, doubling per failure (at most
    CLIMB_BACKOFF_MAX); a climb that lasts starts the back-off over."""
    subs = [subscription(clock, "a"), subscription(clock, "mic", kind="audio")]
    camera = subs[0].downtrack
    bandwidth = SubscriberBandwidth(clock)
    allocator = StreamAllocator(
        bandwidth, lambda: subs, on_paused_changed=lambda: None, clock=clock
    )
    wide = AUDIO + int(1.15 * LAYERS[1]) + 10_000  # 360p fits with the upgrade margin

    def link(estimate: int, *, overusing: bool) -> None:
        bandwidth.transport_cc_seen = True
        bandwidth.gcc.usage = "overusing" if overusing else "normal"
        bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = estimate
        bandwidth.gcc.loss_fraction = 0.0

    link(AUDIO + LAYERS[0] + 1000, overusing=True)
    allocator.run()
    assert camera.allocated_layer == 0
    link(wide, overusing=True)  # room for 360p, but the link is congested: no climb
    clock.advance(0.5)
    allocator.run()
    assert camera.allocated_layer == 0
    waits = []
    for _ in range(4):
        link(wide, overusing=False)
        start = clock()
        while True:  # climbs as soon as the back-off (if any) allows
            allocator.run()
            if camera.allocated_layer == 1:
                break
            clock.advance(0.25)
            assert clock() - start < CLIMB_BACKOFF_MAX + 1
        waits.append(clock() - start)
        clock.advance(0.5)  # the climb's key frame overfills the link
        link(AUDIO + LAYERS[0] + 1000, overusing=True)
        allocator.run()
        assert camera.allocated_layer == 0
    assert waits[0] == 0
    assert [round(w) for w in waits[1:]] == [
        CLIMB_BACKOFF,
        min(2 * CLIMB_BACKOFF, CLIMB_BACKOFF_MAX),
        min(4 * CLIMB_BACKOFF, CLIMB_BACKOFF_MAX),
    ]
    # a climb that lasts CLIMB_PROVING starts over: the one after it waits nothing, and if
    # that one fails, the next waits CLIMB_BACKOFF again
    clock.advance(CLIMB_BACKOFF_MAX)
    link(wide, overusing=False)
    allocator.run()
    assert camera.allocated_layer == 1
    clock.advance(CLIMB_PROVING)
    link(AUDIO + LAYERS[0] + 1000, overusing=True)
    allocator.run()
    assert camera.allocated_layer == 0
    clock.advance(0.5)
    link(wide, overusing=False)
    allocator.run()
    assert camera.allocated_layer == 1
    clock.advance(0.5)
    link(AUDIO + LAYERS[0] + 1000, overusing=True)
    allocator.run()
    link(wide, overusing=False)
    clock.advance(CLIMB_BACKOFF - 0.25)
    allocator.run()
    assert camera.allocated_layer == 0
    clock.advance(0.25)
    allocator.run()
    assert camera.allocated_layer == 1
    allocator.close()
