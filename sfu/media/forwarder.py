"""Egress of one subscribed track to one subscriber: which layer, which packets, which header.

`DownTrack` picks the layer to forward (the highest one the publisher is sending, up to the
subscriber's limit), switches only on a key frame of the new layer, and rewrites SSRC, payload type,
sequence number, timestamp and — after a switch — the VP8 picture id / TL0PICIDX / KEYIDX, so the
subscriber sees one continuous stream. The payload itself is never touched. Sequence numbers are
the receiver's extended ones (`sfu.media.receiver.LayerState`), which never wrap: the outgoing
sequence is kept extended too and only its low 16 bits go on the wire. NACKs are answered from
a history of what was sent — the received bytes every down track of the layer shares, plus the
outgoing numbers, rebuilt on demand (entries hold only ints and bytes: nothing for the cyclic
garbage collector) — within bounds checked before any rebuild or protect: a budget of sequence
numbers per down track per second, each packet resent at most once per `NACK_RESEND_INTERVAL`
(never faster than the RTT) and `NACK_MAX_RESENDS` times, and the link's budget
(`SubscriberBandwidth.allow_retransmit`: a floor share while the link is congested); a resend that
feedback reports lost goes again (`SubscriberBandwidth.watch_resend`). Every copy carries the
link's next transport-wide sequence number when transport-cc was negotiated; `send_padding`
sends padding probes between frames; the allocator caps the layer (`set_allocation`, -1
pauses); sender reports are mapped from the publisher's. The subscriber's RTCP comes from
`sfu.media.feedback.FeedbackRouter`; time is the receiver's `clock`.
A RED track (RFC 2198) reaches a subscriber that did not take RED (`takes_red`, asked at `start`)
as its primary encoding alone, in Python: the block headers are cut, the encodings untouched.
With a fast path (rtc.fast_path, given by the transport when the track starts) a down track keeps
its per-copy state in a `Target`: the receiver forwards the current layer's packets to it in one
compiled call, `write` sends through it after a switch, NACK answers are its `resend`; every
decision stays here, and `_push`/`_pull` move the numbers between the two.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.receiver import MAX_LAYERS, TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.header import RtpPacket, padding_packet, rewrite
from sfu.media.rtp.red import primary_offset
from sfu.media.rtp.seqnum import seq_diff, ts_diff
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor, munged_descriptor
from sfu.media.transport.negotiation import SUBSCRIBER_OPUS_PT
from sfu.metrics import COUNTERS

log = logging.getLogger(__name__)

#: padding bytes per probe packet (the most one RTP padding count can say)
PROBE_PADDING = 255
#: probe packets one `send_padding` call sends at most
MAX_PROBE_PACKETS = 64


HISTORY_SIZE = 512  # power of two: NACK history, indexed by extended outgoing sequence number
HISTORY_MASK = HISTORY_SIZE - 1
#: how long the forwarded layer may be silent before a lower one is taken
LAYER_STALE_AFTER = 1.0
KEYFRAME_RETRY = 0.25
#: seconds between two sender reports on one stream: LiveKit's 3 s (RFC 3550 §6.2 allows no
#: less than 5 s by default; an RR answers every SR, so the round-trip time follows at this pace)
SENDER_REPORT_INTERVAL = 3.0
#: a sequence number is resent at most once per min(this, 2 RTT) (as LiveKit does; the RTT from
#: the subscriber's receiver reports, this bound until one came) and at most NACK_MAX_RESENDS
#: times (LiveKit's maxAck)
NACK_RESEND_INTERVAL = 0.1
NACK_MAX_RESENDS = 3
#: NACKed sequence numbers one down track looks at per one-second window; the rest is dropped
NACK_BUDGET = 1000


class DownTrack:
    """One track forwarded to one subscriber, on its own SSRC."""

    def __init__(
        self,
        receiver: TrackReceiver,
        *,
        ssrc: int,
        payload_type: int,
        send_rtp: Callable[[bytes], None],
        cname: str,
        fast_sender: Callable[[], tuple[Any, Any, Any] | None] | None = None,
        bandwidth: SubscriberBandwidth | None = None,
        takes_red: Callable[[], bool] | None = None,
    ) -> None:
        self.receiver = receiver
        self._clock = receiver.clock
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.cname = cname
        self._sdes = bytes(rtcp.Sdes.for_cname(ssrc, cname))  # the same in every report
        self.clock_rate = receiver.clock_rate
        self.is_vp8 = receiver.mime_type.lower().endswith("/vp8")
        self._send = send_rtp
        #: the subscriber transport's link: transport-wide sequence numbers, NACK budget
        self.bandwidth = bandwidth
        #: gives the transport's fast path when the track starts (see `fast`)
        self._fast_sender = fast_sender
        #: for a RED track: whether the subscriber's answer kept RED (asked in `start`); if not,
        #: copies carry the primary encoding only, as plain Opus (`_red_primary`)
        self._takes_red, self._red_primary = takes_red, False
        #: (forward, target, batch) of the fast path, or None: every copy through `send_rtp`
        self._fast: tuple[Any, Any, Any] | None = None
        self._fast_dropped = 0  # the target's send_dropped already counted
        self.started = False
        self.enabled = True
        self.closed = False
        #: the highest spatial layer this subscriber may receive (adaptive stream lowers it)
        self.max_layer = len(receiver.layers) - 1
        #: the highest layer the link allows (the allocator's; `MAX_LAYERS` when unlimited)
        self.allocated_layer = MAX_LAYERS
        #: paused by the allocator: the link cannot carry even the lowest layer
        self.allocation_paused = False
        self.current_layer = -1
        self._source_ssrc = 0  # publisher SSRC of the layer last forwarded
        # seq/ts mapping of the current source: out = in - offset (seq: extended, in the layer)
        self._seq_offset = 0
        self._ts_offset = 0
        self._switch_seq = 0  # the extended number of the packet switched on
        self._sent_any = False  # whether _last_out_* hold a sent packet's values
        self._last_out_seq = -1  # extended; -1 before the first packet
        self._last_out_ts = 0
        self._last_out_time = 0.0
        # VP8 picture id / TL0PICIDX / KEYIDX continuity across switches
        self._pid_offset = 0
        self._tl0_offset = 0
        self._keyidx_offset = 0
        self._last_packet: RtpPacket | None = None  # the newest media packet forwarded
        #: the compiled path's newest copy, still as received bytes: parsed only when a switch
        #: or a probe needs it (see `_newest`), not on every `_pull`
        self._last_unparsed: bytes | None = None
        #: when the next sender report is due (`due_sender_report`)
        self._next_sender_report = 0.0
        self._last_keyframe_request = 0.0
        #: a key frame of another layer waits in the pacer: that layer's packets must all reach
        #: `write` (behind it), none be taken by the compiled receive path (`waits_for_keyframe`)
        self._switch_held = False
        self.packets_sent = 0
        self.octets_sent = 0
        #: (extended out_seq, out_ts, received bytes, epoch) per slot; epoch counts switches: header
        #: rewrites made before the last switch can no longer be rebuilt
        self._history: list[tuple[int, int, bytes, int] | None] = [None] * HISTORY_SIZE
        self._epoch = 0
        #: per history slot, the last resend: (extended out_seq, out_ts, time, count); they tell
        #: the packet it was for from a later one in the same slot
        self._resent: list[tuple[int, int, float, int] | None] = [None] * HISTORY_SIZE
        self._nack_window = -1.0  # start of the current one-second NACK budget window
        self._nack_left = 0
        self._resend_interval = NACK_RESEND_INTERVAL
        #: the last two sender reports sent: (middle 32 bits of the NTP timestamp, when), newest
        #: first; a receiver report answers one of them
        self._last_srs = ((0, 0.0), (0, 0.0))
        #: round-trip time from the subscriber's receiver reports (RFC 3550 §6.4.1), seconds
        self.rtt: float | None = None
        #: the subscriber's last report on this stream: fraction lost (0..1), jitter (seconds)
        self.fraction_lost = 0.0
        self.jitter = 0.0

    # -- control ------------------------------------------------------------------------------------
    def start(self) -> None:
        """The subscriber's transport is up: ask for a key frame so video can start at once."""
        if self.started or self.closed:
            return
        self.started = True
        if self._takes_red is not None and self.receiver.mime_type.lower() == "audio/red":
            self._red_primary = not self._takes_red()
        if self._red_primary:  # the compiled path forwards payloads whole: these go by _build
            self.payload_type = SUBSCRIBER_OPUS_PT
            COUNTERS.red_primary_tracks += 1
        fast = None if self._red_primary or self._fast_sender is None else self._fast_sender()
        if fast is not None:
            self._fast = fast
            self._push()
        self.receiver.fanout_changed()
        self._request_keyframe(self._best_layer(self._clock()))

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self.enabled:
            return
        self.enabled = enabled
        if enabled and not self.allocation_paused:
            self._resume()
        self.receiver.demand_changed()

    def _resume(self) -> None:
        if self.receiver.is_video:
            # resume on a key frame: the decoder's state is stale
            self.current_layer = -1
            if self.started:
                self._request_keyframe(self._best_layer(self._clock()))

    @property
    def forwarding(self) -> bool:
        """Enabled by the subscriber and not paused by the allocator."""
        return self.enabled and not self.allocation_paused

    @property
    def limit(self) -> int:
        """The highest layer to forward: the subscriber's preference within the allocation."""
        return min(self.max_layer, self.allocated_layer)

    def set_allocation(self, layer: int) -> None:
        """The allocator's layer for this track (-1: paused, the link cannot carry it).
        Layers still change on key frames only; a pause stops forwarding at once."""
        constrained = self.constrained
        self._set_allocation(layer)
        if constrained != self.constrained:
            self.receiver.fanout_changed()

    def _set_allocation(self, layer: int) -> None:
        paused = layer < 0
        if paused != self.allocation_paused:
            self.allocation_paused = paused
            if paused:
                COUNTERS.allocation_pauses += 1
            elif self.enabled:
                self._resume()
            self.receiver.demand_changed()
        if paused:
            return
        layer = min(layer, MAX_LAYERS)
        if layer != self.allocated_layer:
            self.allocated_layer = layer
            self._limit_changed()

    def set_max_layer(self, layer: int) -> None:
        """The subscriber's preferred layer (from its tile size); -1 pauses the stream."""
        layer = min(layer, len(self.receiver.layers) - 1)
        if layer < 0:
            self.set_enabled(False)
            return
        if layer == self.max_layer:
            return
        constrained = self.constrained
        self.max_layer = layer
        if constrained != self.constrained:
            self.receiver.fanout_changed()
        self._limit_changed()

    def _limit_changed(self) -> None:
        self._switch_held = False
        if self.started and self.forwarding and self.current_layer != self.limit:
            best = self._best_layer(self._clock())
            if best != self.current_layer:
                self._request_keyframe(best)
        self.receiver.demand_changed()

    @property
    def subscribed_layer(self) -> int:
        """The highest layer this subscription needs from the publisher (dynacast): what it
        prefers within what the link allows, or what it is still being sent until a switch
        down has happened; -1 if none."""
        if not self.forwarding or self.closed:
            return -1
        return max(self.limit, self.current_layer)

    @property
    def paused(self) -> bool:
        """Wanted but unavailable: the allocator paused it, or the publisher sends no layer this
        subscription may take."""
        if not self.enabled or not self.receiver.is_video:
            return False
        if self.allocation_paused:
            return True
        return self.receiver.highest_active_layer(self._clock(), self.limit) < 0

    def close(self) -> None:
        self.closed = True
        self.started = False
        self._history = [None] * HISTORY_SIZE
        self._resent = [None] * HISTORY_SIZE
        if self._fast is not None:
            self._fast[1].clear_history()
        self.receiver.fanout_changed()

    # -- fast path ----------------------------------------------------------------------------
    @property
    def constrained(self) -> bool:
        """The allocator holds this track below its preferred layer (or pauses it): its link is
        thin, and the publisher's padding is not passed on (`write`), so it takes the Python
        fan-out, where that is decided per packet."""
        return self.allocation_paused or self.allocated_layer < self.max_layer

    def fast(self, layer: int) -> tuple[Any, Any, Any] | None:
        """(forward, target, batch) when the receiver may forward `layer`'s packets to this track
        with one compiled `forward` call for all such tracks (`sfu.media.fastpath`): started,
        enabled, forwarding that layer. The receiver asks again after `fanout_changed`."""
        if not self.started or not self.forwarding or self.current_layer != layer:
            return None
        if self.constrained and self.receiver.is_video:
            return None
        return self._fast

    def idle_for(self, layer: int) -> bool:
        """Whether `write` would do nothing with a packet of `layer` until the receiver's fan-out
        changes next (every change of what this checks calls `fanout_changed`/`demand_changed`):
        not started or not forwarding, or video of a layer above the limit it does not forward.
        The compiled receive path may then take the layer's packets without asking it."""
        if not self.started or not self.forwarding:
            return True
        return self.receiver.is_video and layer != self.current_layer and layer > self.limit

    def waits_for_keyframe(self, layer: int) -> bool:
        """Whether `write` would act on a packet of `layer` only if it may start a key frame
        (to switch to that layer) or to ask for one again (`KEYFRAME_RETRY`): video, started
        and forwarding, another layer flowing or none yet, `layer` within the limit. The
        compiled receive path may then take the layer's other packets (`Stream.arm`'s `wake`);
        not while the key frame to switch on waits in the pacer (the rest of it must follow)."""
        return (
            self.started and self.forwarding and self.receiver.is_video
            and layer != self.current_layer and layer <= self.limit and not self._switch_held
        )  # fmt: skip

    def _push(self) -> None:
        """The decisions made in Python (offsets, switch point, epoch) into the target."""
        if self._fast is None:
            return
        t = self._fast[1]
        t.ssrc, t.payload_type = self.ssrc, self.payload_type
        t.seq_offset, t.ts_offset = self._seq_offset, self._ts_offset
        t.switch_seq, t.epoch = self._switch_seq, self._epoch
        t.pid_offset, t.tl0_offset = self._pid_offset, self._tl0_offset
        t.keyidx_offset = self._keyidx_offset
        t.twcc = self.bandwidth.sequence if self.bandwidth is not None else None

    def _pull(self) -> None:
        """What the target's forwarding changed (the newest copy, the counts) back here."""
        if self._fast is None:
            return
        t = self._fast[1]
        if t.sent_any:
            self._sent_any = True
            self._last_out_seq, self._last_out_ts = t.last_out_seq, t.last_out_ts
            self._last_out_time = t.last_out_time
            last = t.last_packet
            if isinstance(last, bytes):  # forwarded by the compiled receive path: the bytes only
                current = self._last_packet
                self._last_unparsed = None if current is not None and current.data is last else last
            else:
                self._last_packet, self._last_unparsed = last, None
        self.packets_sent, self.octets_sent = t.packets_sent, t.octets_sent
        dropped = t.send_dropped - self._fast_dropped
        if dropped:  # copies libsrtp refused or too long: counted as forwarded by `forward`
            self._fast_dropped = t.send_dropped
            COUNTERS.send_dropped += dropped
            COUNTERS.packets_out -= dropped

    def _newest(self) -> RtpPacket | None:
        """The newest media packet forwarded (after `_pull`), parsed now if it is not yet."""
        last = self._last_unparsed
        if last is not None:
            self._last_unparsed = None
            with contextlib.suppress(PacketError):  # the receive path parsed it already
                self._last_packet = RtpPacket.parse(last)
        return self._last_packet

    def _best_layer(self, now: float) -> int:
        best = self.receiver.highest_active_layer(now, self.limit)
        return best if best >= 0 else 0

    def _request_keyframe(self, layer: int) -> None:
        self._last_keyframe_request = self._clock()
        self.receiver.request_keyframe(layer)

    # -- packets ----------------------------------------------------------------------------------
    def write(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> None:
        """Forward one received packet; `sequence` is its extended sequence number in `layer`.
        A constrained video track's packets that may be sent (its layer's, or a key frame's)
        wait in the link's pacer while it holds some or the budget is spent."""
        bandwidth = self.bandwidth
        if bandwidth is not None and self.constrained and self.receiver.is_video:
            pacer = bandwidth.pacer
            if (pacer.holding or layer == self.current_layer or keyframe) and not pacer.admit():
                pacer.hold(functools.partial(self._write, packet, sequence, layer, keyframe))
                if keyframe and layer != self.current_layer and not self._switch_held:
                    self._switch_held = True
                    self.receiver.fanout_changed()
                return
        self._write(packet, sequence, layer, keyframe)

    def _write(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> None:
        if not self.started or not self.forwarding:
            return
        padding_only = packet.payload_offset + packet.padding_size >= len(packet.data)
        if layer != self.current_layer and (
            padding_only or not self._maybe_switch(packet, sequence, layer, keyframe)
        ):
            return
        if padding_only and self.constrained and self._absorb_padding(sequence):
            return
        if self._fast is not None:
            forward, target, batch = self._fast
            copies, octets = forward(
                (target,), packet, packet.data, sequence, packet.payload_offset,
                packet.padding_size, self._clock(),
            )  # fmt: skip
            if copies:
                COUNTERS.packets_out += copies
                COUNTERS.bytes_out += octets
                batch.schedule()
                if self.bandwidth is not None and self.constrained:
                    self.bandwidth.pacer.charge(octets)
            return
        if sequence < self._switch_seq:
            return  # older than the packet we switched on
        out_seq = sequence - self._seq_offset
        out_ts = (packet.timestamp - self._ts_offset) & 0xFFFFFFFF
        cut = self._red_cut(packet) if self._red_primary and not padding_only else 0
        if cut < 0:
            return
        ext = self.bandwidth.stamp() if self.bandwidth is not None else b""
        data = self._build(packet, out_seq, out_ts, padding_only, ext, cut)
        # Only the newest packet so far is what the next switch continues from (seq, ts, VP8
        # ids): a late, reordered packet must not rewind the picture id / TL0PICIDX.
        if out_seq > self._last_out_seq:
            if not padding_only:  # a probe carries no VP8 descriptor to continue from
                self._last_packet, self._last_unparsed = packet, None
            self._sent_any = True
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_out_time = self._clock()
        self._history[out_seq & HISTORY_MASK] = (out_seq, out_ts, packet.data, self._epoch)
        self.packets_sent += 1
        self.octets_sent += len(data) - 12 - len(ext)
        COUNTERS.packets_out += 1
        COUNTERS.bytes_out += len(data)
        self._send(data)
        if self.bandwidth is not None:
            if ext:
                self.bandwidth.sent(len(data))
            if self.constrained and self.receiver.is_video:
                self.bandwidth.pacer.charge(len(data))

    def _absorb_padding(self, sequence: int) -> bool:
        """Drop the publisher's padding-only packet `sequence` instead of passing it on, when
        it is the next one in order: the media after it is renumbered one down, so the
        subscriber sees no hole. (libwebrtc probes its uplink with bursts of padding, hundreds
        of packets a second; passed on, each costs a thin downlink a datagram.) Packets older
        than it are no longer forwarded, as after a switch. Whether it was dropped."""
        self._pull()
        if not self._sent_any or sequence != self._last_out_seq + self._seq_offset + 1:
            return False
        self._seq_offset += 1
        self._switch_seq = max(self._switch_seq, sequence + 1)
        COUNTERS.padding_absorbed += 1
        self._push()
        return True

    def _build(
        self, packet: RtpPacket, seq: int, ts: int, padding_only: bool, ext: bytes, cut: int = 0
    ) -> bytes:
        """The datagram to send for ``packet`` under the outgoing sequence number `seq` (extended:
        its low 16 bits are written) and timestamp `ts`, with the extension block `ext` (or b""),
        less the first `cut` bytes of its payload (RED's blocks before the primary, `_red_cut`)."""
        if padding_only:
            # A bandwidth probe: keep its sequence number (so the subscriber sees no hole) but
            # not its bytes, which were sized for the publisher's link, not this one.
            return padding_packet(
                packet.data[1] & 0x80 | self.payload_type, seq, ts, self.ssrc, ext, 1
            )
        if self._pid_offset or self._tl0_offset or self._keyidx_offset:
            return self._rewrite_vp8(packet, seq, ts, ext)
        return rewrite(
            packet, payload_type=self.payload_type, sequence_number=seq, timestamp=ts,
            ssrc=self.ssrc, extensions=ext, payload_header=b"" if cut else None,
            payload_header_size=cut,
        )  # fmt: skip

    def _red_cut(self, packet: RtpPacket) -> int:
        """How many bytes of RED `packet`'s payload come before its primary encoding (the block
        headers and older blocks, cut for a subscriber that did not take RED); -1 (counted, and
        that copy is not sent) if its blocks do not fit."""
        try:
            end = len(packet.data) - packet.padding_size
            return primary_offset(packet.data, packet.payload_offset, end) - packet.payload_offset
        except PacketError:
            COUNTERS.malformed_red += 1
            return -1

    def _maybe_switch(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> bool:
        """Whether ``packet``, of a layer not being forwarded, starts forwarding that layer.

        The target is the highest layer the publisher is sending, up to ``max_layer``. A switch
        happens only on a key frame; until one arrives the current layer keeps flowing and key
        frames are requested. With nothing forwarded yet, any allowed layer's key frame starts
        the stream at once (and an upgrade follows).
        """
        if not self.receiver.is_video:
            if self.current_layer < 0:
                self._switch(packet, sequence, layer)
                return True
            return False
        if layer > self.limit:
            return False
        now = self._clock()
        target = self._best_layer(now)
        if layer != target and not (self.current_layer < 0 and keyframe):
            return False
        if not keyframe:
            if now - self._last_keyframe_request > KEYFRAME_RETRY:
                self._request_keyframe(target)
            return False
        self._switch(packet, sequence, layer)
        return True

    def _switch(self, packet: RtpPacket, sequence: int, layer: int) -> None:
        now = self._clock()
        self._pull()
        if not self._sent_any:
            # the first packet goes out under the sequence number it came with
            self._seq_offset = sequence - packet.sequence_number
            self._ts_offset = 0
        else:
            self._seq_offset = sequence - self._last_out_seq - 1
            self._ts_offset = (
                packet.timestamp - self._expected_timestamp(packet, now)
            ) & 0xFFFFFFFF
        self._switch_seq = sequence
        self._epoch += 1
        self._switch_held = False
        log.debug(
            "downtrack %d: layer %d → %d at seq %d (last out %d, seq offset %d)", self.ssrc,
            self.current_layer, layer, packet.sequence_number, self._last_out_seq, self._seq_offset,
        )  # fmt: skip
        if self.is_vp8:
            self._switch_vp8(packet)
        if self.current_layer >= 0:
            COUNTERS.layer_switches += 1
        self.current_layer = layer
        self._source_ssrc = packet.ssrc
        self._push()
        self.receiver.demand_changed()

    def _expected_timestamp(self, packet: RtpPacket, now: float) -> int:
        """The outgoing timestamp for the first packet of a new source.

        Simulcast layers have unrelated timestamp bases; the publisher's sender reports map both
        to one clock, so the new layer continues the old one's timeline (and lip sync with the
        audio survives). Without both reports, or if they disagree with the wall clock by more
        than a second, the elapsed wall-clock time is used. Always after the last sent one.
        """
        wall = (
            self._last_out_ts + max(int((now - self._last_out_time) * self.clock_rate), 1)
        ) & 0xFFFFFFFF
        aligned = self.receiver.sender_reports.expected_timestamp(
            packet.timestamp, packet.ssrc, self._source_ssrc, self._ts_offset
        )
        expected = wall
        if aligned is not None and abs(ts_diff(aligned, wall)) <= self.clock_rate:
            expected = aligned
        if ts_diff(expected, self._last_out_ts) <= 0:
            expected = (self._last_out_ts + 1) & 0xFFFFFFFF
        return expected

    # -- VP8 payload descriptor -------------------------------------------------------------------------
    def _descriptor(self, packet: RtpPacket) -> Vp8PayloadDescriptor | None:
        end = len(packet.data) - packet.padding_size
        try:
            return Vp8PayloadDescriptor.parse(packet.data, packet.payload_offset, end)
        except PacketError:
            return None

    def _switch_vp8(self, packet: RtpPacket) -> None:
        """Offsets that make ``packet``'s picture id / TL0PICIDX / KEYIDX follow the last ones
        sent (read back from the newest forwarded packet: no per-packet bookkeeping)."""
        new = self._descriptor(packet)
        newest = self._newest()
        last = self._descriptor(newest) if newest is not None else None
        if new is None or last is None:
            return
        if new.picture_id is not None and last.picture_id is not None:
            last_out = (last.picture_id - self._pid_offset) & 0x7FFF
            self._pid_offset = (new.picture_id - last_out - 1) & 0x7FFF
        if new.tl0_pic_idx is not None and last.tl0_pic_idx is not None:
            last_out = (last.tl0_pic_idx - self._tl0_offset) & 0xFF
            self._tl0_offset = (new.tl0_pic_idx - last_out - 1) & 0xFF
        if new.key_idx is not None and last.key_idx is not None:
            last_out = (last.key_idx - self._keyidx_offset) & 0x1F
            self._keyidx_offset = (new.key_idx - last_out - 1) & 0x1F

    def _rewrite_vp8(self, packet: RtpPacket, out_seq: int, out_ts: int, ext: bytes) -> bytes:
        desc = self._descriptor(packet)
        header: bytes | None = None
        size = 0
        if desc is not None:
            pid = None if desc.picture_id is None else (desc.picture_id - self._pid_offset) & 0x7FFF
            tl0 = None if desc.tl0_pic_idx is None else (desc.tl0_pic_idx - self._tl0_offset) & 0xFF
            kidx = None if desc.key_idx is None else (desc.key_idx - self._keyidx_offset) & 0x1F
            header = munged_descriptor(desc, picture_id=pid, tl0_pic_idx=tl0, key_idx=kidx)
            size = desc.size
        return rewrite(
            packet,
            payload_type=self.payload_type,
            sequence_number=out_seq,
            timestamp=out_ts,
            ssrc=self.ssrc,
            extensions=ext,
            payload_header=header,
            payload_header_size=size,
        )

    # -- probes -------------------------------------------------------------------------------------
    def send_padding(self, count: int) -> int:
        """Send up to `count` padding-only packets of `PROBE_PADDING` bytes on this stream (a
        bandwidth probe without RTX), between frames only: after the last packet of a frame
        (or while the allocator pauses the stream), continuing its sequence numbers and
        timestamp. The media that follows is renumbered
        after them, and packets older than the probe point are no longer forwarded (as after a
        switch). Returns the packets sent."""
        if not self.started or not self.enabled or not self.receiver.is_video:
            return 0
        self._pull()
        bandwidth = self.bandwidth
        last = self._newest()
        between_frames = self.allocation_paused or (
            self.current_layer >= 0 and last is not None and last.marker
        )
        if not between_frames or not self._sent_any or (bandwidth and bandwidth.pacer.holding):
            return 0  # (media waits in the pacer: a probe would only add to its queue)
        count = min(count, MAX_PROBE_PACKETS)
        fast = self._fast
        sent = 0
        for _ in range(count):
            out_seq = self._last_out_seq + 1
            ext = bandwidth.stamp() if bandwidth is not None else b""
            data = padding_packet(
                self.payload_type, out_seq, self._last_out_ts, self.ssrc, ext, PROBE_PADDING
            )
            if fast is not None:
                if not fast[1].send(data):
                    break
                fast[2].schedule()
            else:
                self._send(data)
            if ext:
                bandwidth.sent(len(data))  # type: ignore[union-attr]
            # the next media packet follows the probe: shift the mapping by one
            next_in = self._last_out_seq + self._seq_offset + 1
            self._switch_seq = max(self._switch_seq, next_in)
            self._seq_offset -= 1
            self._last_out_seq = out_seq
            sent += 1
        if sent:
            COUNTERS.probe_packets += sent
            COUNTERS.packets_out += sent
            COUNTERS.bytes_out += sent * (12 + PROBE_PADDING)
            if fast is not None:
                fast[1].last_out_seq = self._last_out_seq
            self._push()
        return sent

    # -- RTCP ----------------------------------------------------------------------------------------
    def _nack_allowance(self, now: float) -> int:
        """NACKed sequence numbers still allowed in the current one-second window."""
        if now - self._nack_window >= 1.0:
            self._nack_window = now
            self._nack_left = NACK_BUDGET
        return self._nack_left

    def on_nack(self, nack: rtcp.Nack) -> None:
        """A generic NACK from the subscriber: checked against the budget before its sequence
        numbers are even listed."""
        if self._nack_allowance(self._clock()) <= 0:
            COUNTERS.limit_exceeded("nack_budget")
            return
        self.retransmit(nack.lost)

    def retransmit(self, sequence_numbers: Iterable[int]) -> None:
        """Send again what went out under these sequence numbers (RFC 4585 generic NACK: 16-bit,
        each taken as the extended number nearest the newest one sent), rebuilt from the received
        packet; packets from before the last switch are not resent.

        Bounded before any rebuild or protect: at most `NACK_BUDGET` sequence numbers are looked
        at per one-second window (the rest of a NACK is dropped), and each packet is resent at
        most `NACK_MAX_RESENDS` times, never twice within min(`NACK_RESEND_INTERVAL`, 2 RTT).
        """
        now = self._clock()
        budget = self._nack_allowance(now)
        self._pull()
        fast = self._fast
        history, resent, epoch = self._history, self._resent, self._epoch
        bandwidth = self.bandwidth
        newest = self._last_out_seq
        looked = 0
        repeated = over_budget = False
        for lost in sequence_numbers:
            if looked >= budget:
                COUNTERS.limit_exceeded("nack_budget")
                break
            looked += 1
            seq = newest + seq_diff(lost, newest)
            slot = seq & HISTORY_MASK
            entry = history[slot] if fast is None else fast[1].entry(slot)
            if entry is None or entry[0] != seq or entry[3] != epoch:
                continue
            _, out_ts, received, _ = entry
            count = 1
            last = resent[slot]
            if last is not None and last[0] == seq and last[1] == out_ts:
                if now - last[2] < self._resend_interval or last[3] >= NACK_MAX_RESENDS:
                    repeated = True
                    continue  # (before the link's budget: a repeated NACK costs it nothing)
                count = last[3] + 1
            if bandwidth is not None and not bandwidth.allow_retransmit(len(received)):
                over_budget = True
                continue  # the link is full: a resend now deepens the congestion it repairs
            resent[slot] = (seq, out_ts, now, count)
            if fast is not None:
                if fast[1].resend(slot, now):  # the target's own numbers, SSRC, VP8 offsets
                    COUNTERS.retransmits_out += 1
                    fast[2].schedule()
                    if bandwidth is not None:
                        bandwidth.watch_resend(functools.partial(self.retransmit, (lost,)))
                else:  # refused: counted here, not as a forwarded copy by `_pull`
                    self._fast_dropped += 1
                    COUNTERS.send_dropped += 1
                continue
            try:
                packet = RtpPacket.parse(received)
            except PacketError:  # pragma: no cover - it was parsed once already
                continue
            padding_only = packet.payload_offset + packet.padding_size >= len(packet.data)
            # (a RED packet in the history parsed when it was sent)
            cut = self._red_cut(packet) if self._red_primary and not padding_only else 0
            ext = bandwidth.stamp() if bandwidth is not None else b""
            data = self._build(packet, seq, out_ts, padding_only, ext, max(cut, 0))
            COUNTERS.retransmits_out += 1
            dropped = COUNTERS.send_dropped
            self._send(data)
            if ext and bandwidth is not None:
                bandwidth.sent(len(data))
                bandwidth.watch_resend(functools.partial(self.retransmit, (lost,)))
            if COUNTERS.send_dropped != dropped:
                # The transport refused it and uncounted it as an original (write counts those
                # before sending): move that back to where it belongs.
                COUNTERS.retransmits_out -= 1
                COUNTERS.packets_out += 1
                COUNTERS.bytes_out += len(data)
        self._nack_left = budget - looked
        if repeated:
            COUNTERS.limit_exceeded("nack_resend_interval")
        if over_budget:
            COUNTERS.limit_exceeded("nack_link_budget")

    def on_report_block(self, block: rtcp.ReportBlock) -> None:
        """The subscriber's reception report on this stream: the round-trip time, when it answers
        our last sender report (RFC 3550 §6.4.1: now - LSR - DLSR); its loss and jitter."""
        self.fraction_lost = block.fraction_lost / 256
        self.jitter = min(block.jitter / self.clock_rate, 10.0)
        sent_at = next((t for lsr, t in self._last_srs if lsr == block.last_sr), None)
        if not block.last_sr or sent_at is None:
            return
        rtt = self._clock() - sent_at - block.delay_since_last_sr / 65536
        if 0 <= rtt < 10:
            self.rtt = rtt
            # never faster than the RTT allows an answer to arrive
            self._resend_interval = max(rtt, min(NACK_RESEND_INTERVAL, 2 * rtt))
            if self.bandwidth is not None:
                self.bandwidth.set_rtt(rtt)

    def on_keyframe_request(self) -> None:
        if self.current_layer >= 0:
            self.receiver.request_keyframe(self.current_layer)
        else:
            self.receiver.request_keyframe(self._best_layer(self._clock()))

    def due_sender_report(self) -> bytes:
        """`sender_report` when one is due: the first as soon as the stream has a mapping (lip
        sync from the start), then one every `SENDER_REPORT_INTERVAL`; else nothing."""
        if self._clock() < self._next_sender_report:
            return b""
        report = self.sender_report()
        if report:
            self._next_sender_report = self._clock() + SENDER_REPORT_INTERVAL
        return report

    def sender_report(self) -> bytes:
        """SR + SDES for this stream, its NTP↔RTP mapping taken from the publisher's last SR."""
        self._pull()
        if self.closed or self.packets_sent == 0 or self.current_layer < 0:
            return b""
        layer = self.receiver.layers[self.current_layer]
        if not layer.sr_arrival:
            return b""  # no mapping yet: no SR is safer than a wrong one (lip sync)
        elapsed = self._clock() - layer.sr_arrival
        ntp = layer.sr_ntp + int(elapsed * (1 << 32))
        rtp_ts = (layer.sr_rtp + int(elapsed * self.clock_rate) - self._ts_offset) & 0xFFFFFFFF
        report = rtcp.SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
            rtp_timestamp=rtp_ts,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
        )
        sent = ((report.ntp_timestamp >> 16) & 0xFFFFFFFF, self._clock())
        self._last_srs = (sent, self._last_srs[0])
        COUNTERS.rtcp_out += 1
        return bytes(report) + self._sdes
