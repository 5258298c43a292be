"""Tests for sfu.media.forwarder under hostile subscriber feedback: the NACK budget and per-packet
resend interval (audit 2026-12 finding 7), RTCP the SFU ignores left unparsed (finding 2), and
layer counts over the simulcast maximum (finding 9); on the rig of test_forwarder."""

from __future__ import annotations

import itertools
import struct
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.feedback import FeedbackRouter
from sfu.media.forwarder import NACK_BUDGET, NACK_RESEND_INTERVAL, DownTrack
from sfu.media.receiver import MAX_LAYERS, TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.twcc import TransportCcFeedback
from sfu.metrics import COUNTERS
from tests.sfu.conftest import FakeClock
from tests.sfu.media.test_forwarder import (
    CNAME,
    OUT_PT,
    OUT_SSRC,
    SUBSCRIBER_SSRC,
    Rig,
    parse_out,
)

#: the audit's transport-cc blob: 65,535 "not received" statuses in 40 bytes, 30 per datagram
TWCC_BLOB = (
    bytes((0x8F, 205, 0, 9))
    + struct.pack("!IIHHI", 1, 2, 0, 65535, 0)
    + struct.pack("!H", 8191) * 9
    + b"\0\0"
)


def _flowing(clock: FakeClock, frames: int = 300) -> tuple[Rig, FeedbackRouter]:
    """A down track forwarding layer 0 (two packets per frame), its history full."""
    rig = Rig(clock)
    router = FeedbackRouter()
    router.add(rig.downtrack)
    rig.downtrack.start()
    rig.tick(layers=(0,), keys=(0,))
    for _ in range(frames):
        rig.tick(layers=(0,))
    return rig, router


def _hostile_nacks(newest: int) -> bytes:
    """Eight generic NACKs, each naming the 512 sequence numbers up to `newest`."""
    seqs = [(newest - k) & 0xFFFF for k in range(512)]
    nack = bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, seqs))
    return nack * 8


def test_a_nack_flood_is_held_to_the_budget_and_each_packet_to_its_interval(
    clock: FakeClock,
) -> None:
    rig, router = _flowing(clock)
    hits = COUNTERS.limits_exceeded.get("nack_budget", 0)
    before = COUNTERS.retransmits_out
    resent: dict[int, list[float]] = {}
    for _ in range(25):  # one second: a compound every 40 ms while the publisher keeps sending
        rig.tick(layers=(0,))
        newest = parse_out(rig.sent[-1]).seq
        n = len(rig.sent)
        router.on_rtcp(_hostile_nacks(newest))
        for data in rig.sent[n:]:
            resent.setdefault(parse_out(data).seq, []).append(clock.now)
        clock.advance(0.04 - 1 / 32)
    retransmits = COUNTERS.retransmits_out - before
    assert retransmits <= NACK_BUDGET  # was 8 x 512 x 25 = 102,400
    assert retransmits >= 500  # the first NACK of the flood is answered in full
    assert COUNTERS.limits_exceeded.get("nack_budget", 0) > hits
    for times in resent.values():
        assert all(b - a >= NACK_RESEND_INTERVAL for a, b in itertools.pairwise(times))


def test_one_nack_naming_a_packet_eight_times_resends_it_once(clock: FakeClock) -> None:
    rig, router = _flowing(clock, frames=4)
    seq = parse_out(rig.sent[3]).seq
    nack = bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, [seq]))
    n = len(rig.sent)
    router.on_rtcp(nack * 8)
    assert rig.sent[n:] == [rig.sent[3]]
    clock.advance(NACK_RESEND_INTERVAL / 2)
    router.on_rtcp(nack)
    assert len(rig.sent) == n + 1  # not again within the interval
    clock.advance(NACK_RESEND_INTERVAL)
    router.on_rtcp(nack)
    assert rig.sent[n + 1 :] == [rig.sent[3]]  # a real second loss is answered


def test_a_legit_nack_is_answered_during_and_after_a_flood(clock: FakeClock) -> None:
    rig = Rig(clock)
    router = FeedbackRouter()
    router.add(rig.downtrack)
    other: list[bytes] = []
    victim = DownTrack(
        rig.receiver, ssrc=OUT_SSRC + 1, payload_type=OUT_PT, send_rtp=other.append, cname=CNAME
    )
    rig.receiver.add_sink(victim)
    router.add(victim)
    rig.downtrack.start()
    victim.start()
    rig.tick(layers=(0,), keys=(0,))
    for _ in range(300):
        rig.tick(layers=(0,))
    newest = parse_out(rig.sent[-1]).seq
    for _ in range(3):
        router.on_rtcp(_hostile_nacks(newest))
    # another subscription on the same PC keeps its own budget
    expected = other[-3]
    n = len(other)
    nack = rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC + 1, [parse_out(expected).seq])
    router.on_rtcp(bytes(nack))
    assert other[n:] == [expected]
    # and the flooded one answers again once its window has passed
    clock.advance(1.0)
    rig.tick(layers=(0,))
    wanted = parse_out(rig.sent[-2]).seq
    n = len(rig.sent)
    router.on_rtcp(bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, [wanted])))
    assert [parse_out(d).seq for d in rig.sent[n:]] == [wanted]


# --- RTCP the SFU does not act on ------------------------------------------------------------------


def test_transport_cc_from_a_subscriber_is_not_parsed(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig, router = _flowing(clock, frames=4)

    def refuse(count: int, body: bytes) -> TransportCcFeedback:
        raise AssertionError("transport-cc parsed on the receive path")

    seq = parse_out(rig.sent[3]).seq
    nack = bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, [seq]))
    blob = TWCC_BLOB * 29 + nack
    elapsed = []
    for _ in range(3):
        start = time.perf_counter()
        router.on_rtcp(blob)
        elapsed.append(time.perf_counter() - start)
    assert min(elapsed) < 0.005
    monkeypatch.setattr(TransportCcFeedback, "_from_body", refuse)
    n = len(rig.sent)
    clock.advance(1.0)
    router.on_rtcp(blob)
    assert rig.sent[n:] == [rig.sent[3]]  # what follows the ignored packets still acts


def test_more_layers_than_simulcast_allows_are_clamped(clock: FakeClock) -> None:
    hits = COUNTERS.limits_exceeded.get("simulcast_layers", 0)
    receiver = TrackReceiver(
        kind="video",
        mime_type="video/VP8",
        clock_rate=90000,
        layer_count=50_000,
        send_rtcp=lambda _: None,
        clock=clock,
    )
    assert len(receiver.layers) == MAX_LAYERS == 3
    assert COUNTERS.limits_exceeded.get("simulcast_layers", 0) == hits + 1
    downtrack = DownTrack(
        receiver, ssrc=OUT_SSRC, payload_type=OUT_PT, send_rtp=lambda _: None, cname=CNAME
    )
    downtrack.set_max_layer(49_999)
    assert downtrack.max_layer == 2
    assert receiver.highest_active_layer(clock.now, 49_999) == -1


@dataclass
class _Flowing:
    rig: Rig
    router: FeedbackRouter
    clock: FakeClock
    originals: dict[int, bytes]  # outgoing sequence number → what was first sent under it


_FLOWING: list[_Flowing] = []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=40),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_arbitrary_nacks_resend_only_what_was_sent_within_the_bounds(
    nacks: list[list[tuple[int, int]]], near: bool
) -> None:
    """Whatever the (pid, blp) pairs: every resend is byte-identical to a packet sent before,
    no packet goes out twice within the interval, and the budget holds."""
    if not _FLOWING:
        c = FakeClock()
        rig, router = _flowing(c, frames=600)
        originals = {parse_out(f.out).seq: f.out for f in rig.forwarded}
        _FLOWING.append(_Flowing(rig, router, c, originals))
    flowing = _FLOWING[0]
    rig = flowing.rig
    flowing.clock.advance(1.0)  # a fresh budget window; every earlier resend out of its interval
    newest = parse_out(rig.forwarded[-1].out).seq
    n = len(rig.sent)
    for pairs in nacks:
        # biased towards the history: pids just below the newest sequence number
        shifted = tuple(
            (((newest - pid % 600) & 0xFFFF) if near else pid, blp) for pid, blp in pairs
        )
        flowing.router.on_rtcp(bytes(rtcp.Nack(SUBSCRIBER_SSRC, OUT_SSRC, shifted)))
    resent = rig.sent[n:]
    seqs = [parse_out(d).seq for d in resent]
    assert len(seqs) == len(set(seqs)) <= NACK_BUDGET
    assert all(flowing.originals.get(seq) == d for seq, d in zip(seqs, resent, strict=True))


def test_the_resend_interval_follows_the_round_trip_time(clock: FakeClock) -> None:
    rig, router = _flowing(clock, frames=4)
    assert rig.downtrack.rtt is None
    source = rig.sources[0]
    ntp = 0xE8000000_40000000
    rig.receiver.on_sender_report(0, rtcp.SenderReport(source.ssrc, ntp, source.ts, 0, 0))
    sr = rtcp.parse_compound(rig.downtrack.sender_report())[0]
    assert isinstance(sr, rtcp.SenderReport)
    lsr = (sr.ntp_timestamp >> 16) & 0xFFFFFFFF
    clock.advance(0.015)  # the report reaches the subscriber and its answer comes back: 10 ms RTT
    block = rtcp.ReportBlock(OUT_SSRC, last_sr=lsr, delay_since_last_sr=int(0.005 * 65536))
    router.on_rtcp(bytes(rtcp.ReceiverReport(SUBSCRIBER_SSRC, (block,))))
    assert rig.downtrack.rtt == pytest.approx(0.010, abs=1e-4)
    seq = parse_out(rig.sent[3]).seq
    nack = bytes(rtcp.Nack.from_sequence_numbers(SUBSCRIBER_SSRC, OUT_SSRC, [seq]))
    n = len(rig.sent)
    router.on_rtcp(nack)
    clock.advance(0.015)
    router.on_rtcp(nack)
    assert len(rig.sent) == n + 1  # within 2 RTT: not again
    clock.advance(0.010)
    router.on_rtcp(nack)
    assert len(rig.sent) == n + 2  # a second loss, 25 ms later, is answered
    stale = rtcp.ReportBlock(OUT_SSRC, last_sr=lsr ^ 1, delay_since_last_sr=0)
    router.on_rtcp(bytes(rtcp.ReceiverReport(SUBSCRIBER_SSRC, (stale,))))  # answers no SR of ours
    assert rig.downtrack.rtt == pytest.approx(0.010, abs=1e-4)
