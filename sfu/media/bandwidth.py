"""One subscriber transport's view of its link: what the SFU sent on it, what the subscriber says
arrived, and the bandwidth estimate that follows.

`SubscriberBandwidth` owns, per subscriber peer connection:

- the `TransportWideSequence` every copy sent on the transport is stamped from (the compiled
  path stamps and records in C; the Python path through `stamp`/`sent`), with the send time and
  size per transport-wide sequence number in a bounded ring;
- the subscriber's transport-cc feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01),
  matched against that ring into `PacketResult`s for the estimator (`sfu.media.gcc`). The work
  per feedback is bounded by the packet's own size: only received packets are walked (each one
  costs the sender a delta byte); losses are counted from the covered range, never expanded,
  and nothing outside the ring or already reported counts;
- REMB from the subscriber: the estimate while no transport-cc feedback has come (a client that
  negotiated only goog-remb);
- probe clusters: the transport-wide sequence numbers a padding probe spanned, measured when
  the feedback covering them arrives (`sfu.media.gcc.GoogCc.probe_result`);
- the `sfu.media.pacer.Pacer` its constrained video tracks' packets wait in;
- the retransmission budget: a token bucket refilled at the share of the estimate that the
  allocation leaves (at least `RETRANSMIT_SHARE`; only that while the estimator sees overuse
  or the last loss window lost more than `sfu.media.gcc.LOSS_HIGH`);
- the retransmissions in flight (`watch_resend`): one that feedback reports lost is sent again
  at once. The receiver cannot see that loss by a gap and asks again only on its NACK timer,
  which a libwebrtc receiver with no round-trip time of its own (a receive-only peer
  connection sends no sender reports, and RRTR is off by default) runs at 100 ms — long enough
  for its jitter buffer to skip the frame, or to stall and then drop frames to catch up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfu.media import fastpath
from sfu.media.fastpath_py import TWCC_HISTORY, transport_cc_block
from sfu.media.gcc import LOSS_HIGH, GoogCc, PacketResult
from sfu.media.pacer import Pacer
from sfu.media.rtp import rtcp
from sfu.metrics import COUNTERS

__all__ = ["SubscriberBandwidth"]

_REF_WRAP = 1 << 24
_REF_HALF = 1 << 23
#: packets one feedback may report as received and be looked at (a 1200-byte feedback holds
#: fewer; more is refused whole)
MAX_RESULTS = 2048
#: the part of the estimate NACK answers may always use, and the bucket's depth in seconds
RETRANSMIT_SHARE = 0.15
RETRANSMIT_BURST = 0.1
#: ... but the bucket always holds this many bytes (two full packets): at a thin link's share
#: (0.15 × 250 kbit/s × 0.1 s = 470 bytes) no packet would ever fit, and a loss the receiver
#: could have repaired would wait for a key frame
RETRANSMIT_MIN_BURST = 2 * 1200
#: packets of a probe that must come back for it to be measured
PROBE_MIN_PACKETS = 5
#: the share of a probe's packets that may be lost for it still to count (a drop-tail queue
#: lets the start of a burst through at line rate, then drops)
PROBE_MAX_LOSS = 0.1
#: retransmissions watched for feedback per transport; beyond, the oldest is forgotten
MAX_WATCHED_RESENDS = 256


class _Cluster:
    """A probe's span of transport-wide sequence numbers and what feedback said of them."""

    __slots__ = ("arrivals", "first", "last", "sends")

    def __init__(self, first: int) -> None:
        self.first = first
        self.last = -1  # set when the probe ends
        self.sends: list[tuple[float, int]] = []
        self.arrivals: list[tuple[float, int]] = []

    def rates(self) -> tuple[float, float] | None:
        """(send rate, receive rate) in bits per second, when enough came back to tell; a probe
        that lost more than `PROBE_MAX_LOSS` of its packets proved nothing (receive rate 0)."""
        if len(self.arrivals) < PROBE_MIN_PACKETS:
            return None
        if len(self.arrivals) < (1 - PROBE_MAX_LOSS) * (self.last - self.first + 1):
            return 1.0, 0.0
        sends = sorted(self.sends)
        arrivals = sorted(self.arrivals)
        send_span = sends[-1][0] - sends[0][0]
        arrival_span = arrivals[-1][0] - arrivals[0][0]
        if send_span < 0.001 or arrival_span < 0.001:
            return None
        send_bits = (sum(s for _, s in sends) - sends[-1][1]) * 8
        arrival_bits = (sum(s for _, s in arrivals) - arrivals[0][1]) * 8
        return send_bits / send_span, arrival_bits / arrival_span


class SubscriberBandwidth:
    """The link to one subscriber (see the module docstring). Time is `clock` (seconds)."""

    def __init__(self, clock: Callable[[], float], *, sequence: Any = None) -> None:
        self._clock = clock
        #: the transport's TransportWideSequence; its ext_id is set once an answer accepted it
        self.sequence: Any = sequence if sequence is not None else fastpath.new_sequence()
        self.gcc = GoogCc()
        self.remb: int | None = None
        self.transport_cc_seen = False
        self._reported = -1  # the highest extended sequence number feedback has reported
        self._ref: int | None = None  # the last feedback's reference time, and its unwrapping
        self._ref_unwrapped = 0
        self._cluster: _Cluster | None = None
        #: bits per second the allocation commits (audio and video layers), set by the allocator
        self.committed = 0
        self._tokens = 0.0
        self._tokens_at = -1.0
        self.feedback_packets = 0
        self.retransmits_refused = 0
        #: False (rtc.congestion_control off): no estimate, nothing held back
        self.enabled = True
        #: called after each feedback (transport-cc or REMB): the allocator's cue
        self.on_estimate: Callable[[], None] | None = None
        #: spreads the constrained video tracks' packets within the estimate
        self.pacer = Pacer(clock, lambda: self.estimate)
        #: transport-wide sequence number of a retransmission in flight → what sends it again
        self._resends: dict[int, Callable[[], None]] = {}

    # -- what is sent ----------------------------------------------------------------------------
    @property
    def stamping(self) -> bool:
        return bool(self.sequence.ext_id)

    def stamp(self) -> bytes:
        """The extension block for the next datagram sent on the transport (b"" when
        transport-cc was not negotiated); `sent` must follow once it went out."""
        sequence = self.sequence
        return transport_cc_block(sequence.ext_id, sequence.next_seq) if sequence.ext_id else b""

    def sent(self, size: int) -> None:
        """The datagram `stamp` was for left (`size` bytes of plaintext)."""
        if self.sequence.ext_id:
            self.sequence.record(size, self._clock())

    def watch_resend(self, again: Callable[[], None]) -> None:
        """The datagram just stamped and sent was a retransmission: should feedback report it
        lost, `again` is called (which resends within the NACK bounds of whoever sent it: a
        packet goes a few times at most, never faster than the RTT, which feedback cannot beat)."""
        if not self.sequence.ext_id or not self.enabled:
            return
        resends = self._resends
        if len(resends) >= MAX_WATCHED_RESENDS:
            del resends[next(iter(resends))]
        resends[self.sequence.next_seq - 1] = again

    def _resend_lost(self, first: int, end: int, results: list[PacketResult]) -> None:
        """Send again the watched retransmissions this feedback (covering `first`..`end`) does
        not list as received; forget every watched one it covers. (They are watched in the
        order they were sent: the walk stops at the first one the feedback does not cover.)"""
        covered: list[int] = []
        for seq in self._resends:
            if seq > end:
                break
            covered.append(seq)
        if not covered:
            return
        received = {result.sequence_number for result in results}
        for seq in covered:
            again = self._resends.pop(seq)
            if seq >= first and seq not in received:
                COUNTERS.resends_on_feedback += 1
                again()

    # -- the estimate ----------------------------------------------------------------------------
    @property
    def estimate(self) -> int | None:
        """Bits per second the link is believed to carry; None while the subscriber has sent no
        feedback at all (nothing is known: nothing is held back)."""
        if not self.enabled:
            return None
        if self.transport_cc_seen:
            return self.gcc.estimate
        return self.remb

    @property
    def overusing(self) -> bool:
        return self.transport_cc_seen and self.gcc.usage == "overusing"

    def set_rtt(self, rtt: float) -> None:
        self.gcc.set_rtt(rtt)

    def on_remb(self, remb: rtcp.Remb) -> None:
        if not self.enabled:
            return
        self.remb = max(int(remb.bitrate), 0)
        if self.on_estimate is not None and not self.transport_cc_seen:
            self.on_estimate()

    def on_transport_cc(self, feedback: rtcp.TransportCcFeedback) -> None:
        """Match one feedback packet against what was sent and feed the estimator."""
        sequence = self.sequence
        newest = sequence.next_seq - 1
        if not self.enabled or newest < 0 or len(feedback.received) > MAX_RESULTS:
            return
        base = newest - ((newest - feedback.base_sequence_number) & 0xFFFF)
        end = min(base + feedback.packet_status_count - 1, newest)
        first = max(base, self._reported + 1, newest - TWCC_HISTORY + 1)
        if end < first:
            return  # all reported already, or nothing we still know
        self.feedback_packets += 1
        self.transport_cc_seen = True
        ref = feedback.reference_time
        if self._ref is not None:
            self._ref_unwrapped += ((ref - self._ref + _REF_HALF) % _REF_WRAP) - _REF_HALF
        else:
            self._ref_unwrapped = ref
        self._ref = ref
        t = self._ref_unwrapped * 64_000
        results: list[PacketResult] = []
        cluster = self._cluster
        sent = sequence.sent
        for k, delta in feedback.received:
            t += delta * 250
            seq = base + k
            if seq < first or seq > end:
                continue
            info = sent(seq)
            if info is None:
                continue
            result = PacketResult(seq, info[0], info[1], t / 1e6)
            results.append(result)
            if (
                cluster is not None
                and seq >= cluster.first
                and (cluster.last < 0 or seq <= cluster.last)
            ):
                cluster.sends.append(info)
                cluster.arrivals.append((t / 1e6, info[1]))
        lost = max(end - first + 1 - len(results), 0)
        self._reported = end
        if self._resends:
            self._resend_lost(first, end, results)
        self.gcc.on_feedback(results, lost, self._clock())
        if cluster is not None and 0 <= cluster.last <= end:
            self._cluster = None
            rates = cluster.rates()
            if rates is not None:
                self.gcc.probe_result(*rates)
        if self.on_estimate is not None:
            self.on_estimate()

    # -- probes ----------------------------------------------------------------------------------
    @property
    def probing(self) -> bool:
        return self._cluster is not None

    def start_probe(self) -> None:
        """What is sent from now until `end_probe` is one probe cluster (media and padding)."""
        self._cluster = _Cluster(self.sequence.next_seq)

    def end_probe(self) -> None:
        cluster = self._cluster
        if cluster is None:
            return
        cluster.last = self.sequence.next_seq - 1
        if cluster.last < cluster.first:
            self._cluster = None

    def abandon_probe(self) -> None:
        self._cluster = None

    # -- retransmissions -------------------------------------------------------------------------
    def allow_retransmit(self, size: int) -> bool:
        """Whether a NACK answer of `size` bytes fits the link now (always, with no estimate)."""
        estimate = self.estimate
        if estimate is None:
            return True
        now = self._clock()
        if self.overusing or self.gcc.loss_fraction > LOSS_HIGH:
            # a queue builds, or the link drops what it is sent: resends get only their floor
            # share, not the estimate's headroom (which may be stale: answering every NACK of a
            # link that just got thinner is what deepens its congestion). Not none: the packets
            # lost then are often a key frame's, the one a switch down or a resume starts on,
            # and a receiver that cannot repair it waits 3 s before it asks for another
            rate = RETRANSMIT_SHARE * estimate / 8
        else:
            rate = max(estimate - self.committed, RETRANSMIT_SHARE * estimate) / 8
        depth = max(rate * RETRANSMIT_BURST, RETRANSMIT_MIN_BURST)
        if self._tokens_at >= 0:
            self._tokens = min(self._tokens + rate * max(now - self._tokens_at, 0.0), depth)
        else:
            self._tokens = depth
        self._tokens_at = now
        if self._tokens < size:
            self.retransmits_refused += 1
            return False
        self._tokens -= size
        return True
