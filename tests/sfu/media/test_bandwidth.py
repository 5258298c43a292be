"""A subscriber link (`sfu.media.bandwidth`) with the down tracks that use it: every copy carries
the transport's next transport-wide sequence number (on each of the three send paths of
tests/sfu/media/test_forwarder.py), the subscriber's transport-cc feedback is matched against the
send ring within bounds a hostile subscriber cannot stretch, REMB stands in without it, probes
are padding between frames and measured from feedback, and NACK answers stay inside the link's
budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sfu.media import fastpath, fastpath_py
from sfu.media.bandwidth import (
    MAX_WATCHED_RESENDS,
    RETRANSMIT_BURST,
    RETRANSMIT_MIN_BURST,
    RETRANSMIT_SHARE,
    SubscriberBandwidth,
)
from sfu.media.forwarder import NACK_RESEND_INTERVAL, PROBE_PADDING
from sfu.media.pacer import PACE_FACTOR, PACE_MIN_BURST, PACE_TICK, Pacer
from sfu.media.rtp import rtcp
from sfu.media.rtp.extensions import decode_transport_cc
from sfu.media.rtp.header import RtpPacket
from sfu.metrics import COUNTERS
from tests.sfu.conftest import FakeClock
from tests.sfu.media.test_forwarder import FRAME, OUT_SSRC, PATH, Rig, path

__all__ = ["path"]  # the three send paths, autouse

TWCC_ID = 3


def link(clock: FakeClock) -> SubscriberBandwidth:
    """A link whose sequence is of the type the rig's path stamps from."""
    impl = fastpath.PYTHON if PATH[0] == "python" else fastpath.COMPILED or fastpath.PYTHON
    return SubscriberBandwidth(clock, sequence=impl.sequence(TWCC_ID))


def rig_with_link(clock: FakeClock) -> tuple[Rig, SubscriberBandwidth]:
    rig = Rig(clock)
    bandwidth = link(clock)
    rig.downtrack.bandwidth = bandwidth
    rig.downtrack.start()
    return rig, bandwidth


def rig_with_manual_pacer(
    clock: FakeClock,
) -> tuple[Rig, SubscriberBandwidth, list[Callable[[], None]]]:
    """`rig_with_link`, its pacer's timers collected for the test to fire (in order)."""
    rig, bandwidth = rig_with_link(clock)
    timers: list[Callable[[], None]] = []

    def schedule(_delay: float, callback: Callable[[], None]) -> bool:
        timers.append(callback)
        return True

    bandwidth.pacer = Pacer(clock, lambda: bandwidth.estimate, schedule=schedule)
    return rig, bandwidth, timers


def twcc_seq(data: bytes) -> int:
    return decode_transport_cc(RtpPacket.parse(data).extensions[TWCC_ID])


def feedback(arrivals: dict[int, int | None], count: int = 0) -> rtcp.TransportCcFeedback:
    """What the subscriber would send: arrivals (µs) per extended number, parsed back."""
    (packet,) = rtcp.TransportCcFeedback.from_arrivals(1, 0, arrivals, count)
    return rtcp.TransportCcFeedback.parse(bytes(packet))


def test_every_copy_is_stamped_with_consecutive_transport_wide_numbers(clock: FakeClock) -> None:
    rig, bandwidth = rig_with_link(clock)
    for n in range(4):
        rig.tick(layers=(0,), keys=(0,) if n == 0 else ())
    rig.downtrack.retransmit([RtpPacket.parse(rig.sent[1]).sequence_number])
    sent = rig.sent
    assert len(sent) == 9
    assert [twcc_seq(d) for d in sent] == list(range(9))
    for seq, data in enumerate(sent):
        packet = RtpPacket.parse(data)
        assert packet.extension_profile == 0xBEDE and list(packet.extensions) == [TWCC_ID]
        info = bandwidth.sequence.sent(seq)
        assert info is not None and info[1] == len(data)
    assert bandwidth.sequence.next_seq == 9
    # RTP payload octets (SR): neither the header nor the extension block
    media = sent[:8]
    rig.downtrack._pull()
    assert rig.downtrack.octets_sent == sum(len(d) - 20 for d in media)


def test_without_transport_cc_nothing_is_stamped(clock: FakeClock) -> None:
    rig, bandwidth = rig_with_link(clock)
    bandwidth.sequence.ext_id = 0  # the answer dropped it
    rig.tick(layers=(0,), keys=(0,))
    assert all(RtpPacket.parse(d).extension_profile is None for d in rig.sent)
    assert bandwidth.sequence.next_seq == 0


def test_feedback_is_matched_against_what_was_sent(clock: FakeClock) -> None:
    bandwidth = link(clock)
    assert bandwidth.estimate is None  # nothing known: nothing held back
    for _ in range(40):
        bandwidth.stamp()
        bandwidth.sent(1000)
        clock.advance(0.01)
    arrivals: dict[int, int | None] = {s: 5_000_000 + s * 10_000 for s in range(30)}
    arrivals[7] = None
    bandwidth.on_transport_cc(feedback(arrivals))
    assert bandwidth.transport_cc_seen and bandwidth.estimate is not None
    assert bandwidth.feedback_packets == 1
    # the same feedback again, or one naming numbers never sent, changes nothing
    bandwidth.on_transport_cc(feedback(arrivals, 1))
    bandwidth.on_transport_cc(feedback({s: 1000 * s for s in range(100, 140)}, 2))
    assert bandwidth.feedback_packets == 1


def test_hostile_feedback_is_bounded_by_what_it_carries(clock: FakeClock) -> None:
    """65,535 statuses in a few bytes: parsed without expanding them, and only numbers still
    in the send ring count (as lost, without a step per status)."""
    bandwidth = link(clock)
    for _ in range(fastpath_py.TWCC_HISTORY + 10):
        bandwidth.stamp()
        bandwidth.sent(100)
    arrivals: dict[int, int | None] = dict.fromkeys(range(60000), None)
    arrivals[60000] = 1000
    (packet,) = rtcp.TransportCcFeedback.from_arrivals(1, 0, arrivals, 0, max_size=1 << 20)
    data = bytes(packet)
    assert len(data) < 100
    parsed = rtcp.TransportCcFeedback.parse(data)
    bandwidth.on_transport_cc(parsed)
    assert bandwidth.gcc.loss_fraction <= 1.0


def test_remb_stands_in_until_transport_cc_arrives(clock: FakeClock) -> None:
    bandwidth = link(clock)
    calls: list[int] = []
    bandwidth.on_estimate = lambda: calls.append(1)
    bandwidth.on_remb(rtcp.Remb(sender_ssrc=1, bitrate=750_000, ssrcs=(OUT_SSRC,)))
    assert bandwidth.estimate == 750_000 and calls == [1]
    bandwidth.stamp()
    bandwidth.sent(1000)
    bandwidth.on_transport_cc(feedback({0: 1000}))
    assert bandwidth.estimate == bandwidth.gcc.estimate


def test_a_probe_cluster_is_measured_from_its_feedback(clock: FakeClock) -> None:
    bandwidth = link(clock)
    start = bandwidth.gcc.estimate
    bandwidth.start_probe()
    for _ in range(25):  # 1200 bytes every 4 ms: 2.4 Mbit/s
        bandwidth.stamp()
        bandwidth.sent(1200)
        clock.advance(0.004)
    bandwidth.end_probe()
    assert bandwidth.probing
    bandwidth.on_transport_cc(feedback({s: 100_000 + s * 4000 for s in range(25)}))
    assert not bandwidth.probing
    assert 2_000_000 < bandwidth.gcc.estimate < 2_600_000 and bandwidth.gcc.estimate > start


def test_padding_probes_go_between_frames_and_media_follows_them(clock: FakeClock) -> None:
    rig, _ = rig_with_link(clock)
    assert rig.downtrack.send_padding(3) == 0  # nothing forwarded yet
    rig.tick(layers=(0,), keys=(0,))
    last = RtpPacket.parse(rig.sent[-1])
    assert last.marker
    n = len(rig.sent)
    assert rig.downtrack.send_padding(3) == 3
    probes = [RtpPacket.parse(d) for d in rig.sent[n:]]
    for k, probe in enumerate(probes):
        assert probe.payload == b"" and probe.padding_size == PROBE_PADDING
        assert probe.ssrc == OUT_SSRC and probe.timestamp == last.timestamp
        assert probe.sequence_number == (last.sequence_number + 1 + k) & 0xFFFF
    assert [twcc_seq(d) for d in rig.sent[n:]] == [2, 3, 4]
    rig.tick(layers=(0,))
    after = RtpPacket.parse(rig.sent[n + 3])
    assert after.sequence_number == (last.sequence_number + 4) & 0xFFFF
    assert COUNTERS.probe_packets >= 3
    # mid-frame (the last packet forwarded has no marker): no probe
    rig.feed(0, rig.sources[0].frame(key=False, packets=2)[0])
    assert rig.downtrack.send_padding(3) == 0
    clock.advance(FRAME)


def test_nack_answers_stay_within_the_link_budget(clock: FakeClock) -> None:
    rig, bandwidth = rig_with_link(clock)
    for n in range(200):
        rig.tick(layers=(0,), keys=(0,) if n == 0 else ())
    seqs = [RtpPacket.parse(d).sequence_number for d in rig.sent]
    assert sum(len(d) for d in rig.sent) > 2 * RETRANSMIT_MIN_BURST
    # feedback that says the link carries ~200 kbit/s and the allocation commits all of it
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = 200_000
    bandwidth.committed = 200_000
    n = len(rig.sent)
    before = COUNTERS.limits_exceeded.get("nack_link_budget", 0)
    rig.downtrack.retransmit(seqs)
    resent = rig.sent[n:]
    # 15 % of 200 kbit/s for 100 ms is 375 bytes, less than a full packet: the bucket's floor
    assert 0 < len(resent) < len(seqs)
    assert sum(len(d) for d in resent) <= RETRANSMIT_MIN_BURST + max(len(d) for d in resent)
    assert COUNTERS.limits_exceeded["nack_link_budget"] > before
    # while the estimator sees overuse, only the floor share, whatever the allocation leaves
    # (a key frame lost then must still be repaired: its receiver would wait 3 s for another)
    bandwidth.gcc.usage = "overusing"
    bandwidth.committed = 0
    clock.advance(1.0)
    n = len(rig.sent)
    rig.downtrack.retransmit(seqs)
    resent = rig.sent[n:]
    assert 0 < len(resent) < len(seqs)
    assert sum(len(d) for d in resent) <= RETRANSMIT_MIN_BURST + max(len(d) for d in resent)


@pytest.mark.parametrize("impl_name", ["compiled", "python"])
def test_sequence_ring_forgets_old_numbers(impl_name: str) -> None:
    impl: Any = fastpath.COMPILED if impl_name == "compiled" else fastpath.PYTHON
    assert impl is not None
    sequence = impl.sequence(1)
    for k in range(fastpath_py.TWCC_HISTORY + 1):
        assert sequence.record(10, float(k)) == k
    assert sequence.sent(0) is None and sequence.sent(1) == (1.0, 10)
    assert sequence.sent(-5) is None and sequence.sent(1 << 80) is None


def test_a_probe_that_lost_packets_proves_nothing(clock: FakeClock) -> None:
    """A drop-tail queue lets a burst's head through at line rate and drops the rest."""
    bandwidth = link(clock)
    start = bandwidth.gcc.estimate
    bandwidth.start_probe()
    for _ in range(25):
        bandwidth.stamp()
        bandwidth.sent(1200)
        clock.advance(0.004)
    bandwidth.end_probe()
    bandwidth.on_transport_cc(feedback({s: 100_000 + s * 4000 for s in range(10)} | {24: 200_000}))
    assert not bandwidth.probing and bandwidth.gcc.estimate <= start


def test_congestion_control_off_holds_nothing_back(clock: FakeClock) -> None:
    """rtc.congestion_control: false — no estimate from any feedback, every NACK answered."""
    from sfu.config import from_mapping

    assert from_mapping({"keys": {"k": "s" * 32}}).rtc.congestion_control is True
    config = from_mapping({"keys": {"k": "s" * 32}, "rtc": {"congestion_control": False}})
    assert config.rtc.congestion_control is False
    bandwidth = link(clock)
    bandwidth.enabled = False
    bandwidth.on_remb(rtcp.Remb(sender_ssrc=1, bitrate=10_000))
    bandwidth.stamp()
    bandwidth.sent(1000)
    bandwidth.on_transport_cc(feedback({0: 1000}))
    assert bandwidth.estimate is None and bandwidth.allow_retransmit(1 << 20)


def resent_bytes(clock: FakeClock, estimate: int, loss: float, size: int, seconds: int) -> int:
    """Bytes of `size`-byte NACK answers a link at `estimate` (the allocation committing
    200 kbit/s) lets out over `seconds`, asked every 10 ms."""
    bandwidth = link(clock)
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = estimate
    bandwidth.gcc.loss_fraction = loss
    bandwidth.committed = 200_000
    bytes_sent = 0
    for _ in range(100 * seconds):
        clock.advance(0.01)
        while bandwidth.allow_retransmit(size):
            bytes_sent += size
    return bytes_sent


def test_a_lossy_link_gets_only_the_floor_share_of_resends(clock: FakeClock) -> None:
    """While the last loss window lost over 10 %, NACK answers refill at RETRANSMIT_SHARE of the
    estimate only, not at the headroom the allocation leaves (the estimate may be stale)."""
    assert resent_bytes(clock, 1_000_000, 0.0, 1000, 1) > 700_000 // 8
    lossy = resent_bytes(clock, 1_000_000, 0.3, 1000, 1)
    assert lossy <= (RETRANSMIT_SHARE * (1 + RETRANSMIT_BURST)) * 1_000_000 / 8 + 1000


def test_a_thin_lossy_link_still_gets_whole_packets_resent(clock: FakeClock) -> None:
    """At 250 kbit/s with loss the floor share's 0.1 s is 470 bytes, less than a packet: the
    bucket holds RETRANSMIT_MIN_BURST, so a 1200-byte resend still fits now and then, at no
    more than the floor share on average."""
    sent = resent_bytes(clock, 250_000, 0.3, 1200, 2)
    assert 4 * 1200 <= sent <= RETRANSMIT_SHARE * 250_000 / 8 * 2 + RETRANSMIT_MIN_BURST


def test_a_constrained_tracks_key_frame_is_paced_within_the_estimate(clock: FakeClock) -> None:
    """Held below its preferred layer on a 300 kbit/s link, a down track's key frame does not
    leave as one burst: beyond PACE_MIN_BURST its packets wait in the link's pacer and leave,
    in order and gapless, at about PACE_FACTOR × the estimate; a track at its preferred layer,
    or a link with no estimate, is not held."""
    rig, bandwidth, timers = rig_with_manual_pacer(clock)
    rig.tick(layers=(0,), keys=(0,))  # no estimate yet: nothing held
    assert rig.sent and not bandwidth.pacer.holding
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = 300_000
    rig.downtrack.max_layer = 2
    rig.downtrack.set_allocation(0)
    assert rig.downtrack.constrained
    n = len(rig.sent)
    burst = rig.sources[0].frame(key=True, packets=120)
    size = len(burst[0])
    for data in burst:
        rig.receiver.on_rtp(RtpPacket.parse(data), 0)
    first = sum(len(d) for d in rig.sent[n:])
    assert 0 < first <= PACE_MIN_BURST + size and bandwidth.pacer.holding
    started = clock.now
    while timers:
        clock.advance(PACE_TICK)
        timers.pop(0)()
        assert len(timers) <= 1
    assert len(rig.sent) == n + len(burst) and not bandwidth.pacer.holding
    seqs = [RtpPacket.parse(d).sequence_number for d in rig.sent[n - 1 :]]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(len(seqs))]
    assert [twcc_seq(d) for d in rig.sent[n:]] == list(range(n, n + len(burst)))
    took = clock.now - started
    paced = PACE_FACTOR * 300_000 / 8 * took
    assert 0.7 * paced <= sum(len(d) for d in rig.sent[n:]) - first <= paced + size
    # at its preferred layer the track's packets are not held
    rig.downtrack.set_allocation(2)
    rig.downtrack.max_layer = 0
    assert not rig.downtrack.constrained
    n = len(rig.sent)
    for data in rig.sources[0].frame(key=False, packets=120):
        rig.receiver.on_rtp(RtpPacket.parse(data), 0)
    assert len(rig.sent) == n + 120 and not timers


def test_a_resend_feedback_reports_lost_goes_again(clock: FakeClock) -> None:
    """The subscriber sees no gap when a retransmission is lost (and a libwebrtc receiver with
    no RTT of its own asks again only after 100 ms): feedback that leaves it out sends it again
    at once, one that lists it does not, and the NACK bounds still cap the sends per packet."""
    rig, bandwidth = rig_with_link(clock)
    for n in range(4):
        rig.tick(layers=(0,), keys=(0,) if n == 0 else ())
    sent = rig.sent
    n = len(sent)
    first, second = (RtpPacket.parse(sent[k]).sequence_number for k in (1, 2))
    rig.downtrack.retransmit([first, second])
    resends = rig.sent[n:]
    assert [RtpPacket.parse(d).sequence_number for d in resends] == [first, second]
    resend_twcc = [twcc_seq(d) for d in resends]
    assert resend_twcc == [n, n + 1]
    before = COUNTERS.resends_on_feedback
    clock.advance(NACK_RESEND_INTERVAL)  # (no RTT known: never sooner than this)
    # everything arrived but the resend of `first`
    arrivals: dict[int, int | None] = {s: 1000 * s for s in range(n + 2)}
    arrivals[n] = None
    bandwidth.on_transport_cc(feedback(arrivals))
    again = rig.sent[n + 2 :]
    assert [RtpPacket.parse(d).sequence_number for d in again] == [first]
    assert COUNTERS.resends_on_feedback == before + 1
    assert twcc_seq(again[0]) == n + 2
    # lost again, and again: the third send is the last (NACK_MAX_RESENDS)
    for k in range(3):
        clock.advance(NACK_RESEND_INTERVAL)
        newest = bandwidth.sequence.next_seq - 1
        arrivals = {s: 1000 * s for s in range(newest + 1)}
        arrivals[newest] = None
        arrivals[newest + 1] = 1000 * (newest + 1)  # a later copy did arrive
        rig.tick(layers=(0,))  # (that later copy)
        bandwidth.on_transport_cc(feedback(arrivals, k + 1))
    total = [RtpPacket.parse(d).sequence_number for d in rig.sent[n:]].count(first)
    assert total == 3
    # a resend feedback lists as received is forgotten, not sent again
    m = len(rig.sent)
    clock.advance(0.2)
    rig.downtrack.retransmit([second])
    newest = bandwidth.sequence.next_seq - 1
    bandwidth.on_transport_cc(feedback({s: 1000 * s for s in range(newest + 1)}, 9))
    assert [RtpPacket.parse(d).sequence_number for d in rig.sent[m:]] == [second]


def test_watched_resends_are_bounded(clock: FakeClock) -> None:
    bandwidth = link(clock)
    calls: list[int] = []
    for k in range(MAX_WATCHED_RESENDS + 50):
        bandwidth.stamp()
        bandwidth.sent(100)
        bandwidth.watch_resend(lambda k=k: calls.append(k))  # type: ignore[misc]
    assert len(bandwidth._resends) == MAX_WATCHED_RESENDS
    newest = bandwidth.sequence.next_seq - 1
    arrivals: dict[int, int | None] = dict.fromkeys(range(newest), None)
    arrivals[newest] = 1000
    bandwidth.on_transport_cc(feedback(arrivals))
    # the oldest 50 were forgotten; every other one is reported lost, so sent again once
    assert calls == list(range(50, MAX_WATCHED_RESENDS + 49))
    assert not bandwidth._resends


def test_a_switch_down_held_in_the_pacer_gets_its_whole_key_frame(clock: FakeClock) -> None:
    """Stepped down on a congested link, a down track waits for the lower layer's key frame;
    when that key frame's first packet has to wait in the pacer, the switch is not made yet,
    but the rest of the key frame must reach the down track too (not be taken by the compiled
    receive path, which skips a layer's packets for a sink waiting for a key frame): all of it
    leaves, gapless, once the pacer lets it."""
    rig, bandwidth, timers = rig_with_manual_pacer(clock)
    rig.tick(layers=(0, 1), keys=(1,))
    assert rig.downtrack.current_layer == 1
    bandwidth.transport_cc_seen = True
    bandwidth.gcc.loss_rate = bandwidth.gcc._aimd.rate = 300_000
    rig.downtrack.set_allocation(0)  # the switch down waits for a 180p key frame
    assert rig.downtrack.waits_for_keyframe(0)
    for data in rig.sources[1].frame(key=False, packets=200):  # the pacer fills
        rig.receiver.on_rtp(RtpPacket.parse(data), 1)
    assert bandwidth.pacer.holding
    n = len(rig.sent)
    key = rig.sources[0].frame(key=True, packets=8)
    streams = [rig.receiver.on_rtp(RtpPacket.parse(data), 0) for data in key]
    assert rig.downtrack.current_layer == 1  # not switched yet: its key frame waits
    assert not rig.downtrack.waits_for_keyframe(0)
    assert streams[1:] == [None] * 7  # every packet of it reached Python, none was armed away
    while timers:
        clock.advance(PACE_TICK)
        timers.pop(0)()
    assert rig.downtrack.current_layer == 0
    out = [RtpPacket.parse(d) for d in rig.sent[n:]]
    # the last eight sent are the key frame's (its VP8 ids rewritten, its data as it came)
    assert [bytes(p.payload[-8:]) for p in out[-8:]] == [
        bytes(RtpPacket.parse(d).payload[-8:]) for d in key
    ]
    seqs = [p.sequence_number for p in out]
    assert seqs == [(seqs[0] + k) & 0xFFFF for k in range(len(seqs))]
