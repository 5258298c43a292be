"""Ingress of one publisher PC: decrypted RTP to the right track and simulcast layer, once.

`RtpDemuxer` maps each incoming SSRC to (track receiver, spatial layer), learning the mapping from
the mid and rid header extensions on the first packets (libwebrtc stops sending them once it gets
receiver reports). `TrackReceiver` keeps per-layer statistics, detects key frames once per packet,
extends each layer's 16-bit sequence numbers once (RFC 3550 §A.1, `sfu.media.rtp.seqnum`) and fans
each packet out to its sinks (the down tracks) with that extended number, throttles key-frame
requests to the publisher, and builds the receiver reports and REMB the publisher needs to keep its
layers up. A layer's extended numbers never go back, not even when the layer moves to a new SSRC:
the new stream continues after the old one's highest, so a down track needs no wrap arithmetic.
What a publisher controls stays bounded: at most `MAX_LAYERS` layers per track, one SSRC per layer
(a new one replaces the old mapping), and only sender reports are parsed of its RTCP.
Time comes from the `clock` given to each object (`time.monotonic` by default).
A sink that offers `fast(layer)` (a down track with a fast-path target, `sfu.media.fastpath`) and
forwards that layer gets the layer's packets through one `forward` call for all such sinks; the
others get `write`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sfu.media.layerstream import STREAM_FORWARD, new_stream
from sfu.media.rtcp_intake import RtcpIntake
from sfu.media.rtp import extensions as ext
from sfu.media.rtp import rtcp
from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.h264 import is_keyframe as h264_is_keyframe
from sfu.media.rtp.header import RtpPacket
from sfu.media.rtp.timebase import SenderReportTranslator
from sfu.media.rtp.vp8 import is_keyframe as vp8_is_keyframe
from sfu.media.sdp import Codec
from sfu.metrics import COUNTERS

log = logging.getLogger(__name__)

#: simulcast layers per track (LiveKit's maximum: q, h, f); more are clamped, and counted
MAX_LAYERS = 3
#: a layer is "active" while its packets keep arriving
LAYER_ACTIVE_WINDOW = 1.0
#: minimum spacing of PLIs per publisher layer (LiveKit: 500 ms for LOW, 1 s above)
PLI_THROTTLE = (0.5, 1.0, 1.0)
#: REMB bounds for a publisher (bits/s); the estimate moves between them with loss
REMB_MIN = 150_000
REMB_MAX = 6_000_000
RECEIVER_SSRC = 1  # our SSRC as the media receiver in RTCP (any fixed value works)
#: a layer's extended sequence numbers start one cycle up: a packet reordered before the layer's
#: first one still gets a positive number; only a publisher walking its numbers back reaches a
#: negative one, and such a packet is dropped
SEQUENCE_BASE = 1 << 16
#: speaking: louder than -35 dBov (RFC 6464 levels are 0..127, lower is louder) in 40 % of packets
SPEAKING_DBOV = 35
SPEAKING_SHARE = 0.4


def _counter(name: str) -> Any:
    """A `LayerState` attribute kept in its `counters`."""

    def get(self: LayerState) -> Any:
        return getattr(self.counters, name)

    def set_(self: LayerState, value: Any) -> None:
        setattr(self.counters, name, value)

    return property(get, set_)


def _h264_keyframe(data: bytes, offset: int, end: int) -> bool:
    return h264_is_keyframe(data[offset:end])


class PacketSink(Protocol):
    """What a receiver fans packets out to (the forwarder's DownTrack).

    `sequence` is the packet's extended sequence number in its layer (see `LayerState`).
    """

    def write(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> None: ...

    @property
    def subscribed_layer(self) -> int: ...


#: one layer's fan-out: (forward, the fast sinks' targets, their batches), the other sinks, and
#: the `wake` the compiled receive path may take the layer's packets with: 0 (no other sink would
#: act), KEYFRAME_WAKE_S (others act only on a key frame's packet), or None (it may not)
_Fanout = tuple[tuple[Any, tuple[Any, ...], Any] | None, tuple[PacketSink, ...], float | None]
#: while a sink waits for a key frame of an armed VP8 layer (`waits_for_keyframe`), Python sees
#: the packets that may start one and one packet in this many seconds besides, for the sink to
#: ask again (a quarter of sfu.media.forwarder.KEYFRAME_RETRY)
KEYFRAME_WAKE_S = 0.0625


class LayerState:
    """Statistics for one received simulcast layer (one SSRC at a time), and its sequence numbers.

    `base_seq` and `max_ext_seq` are RFC 3550 extended sequence numbers of the current SSRC (what
    receiver reports carry); a packet's number in the layer (`on_packet`) is that plus
    `seq_offset`: `SEQUENCE_BASE` for the layer's first SSRC, then what makes a new SSRC's numbers
    continue after the old one's highest. The per-packet numbers (packets, octets, last arrival,
    the sequence numbers) live in `counters`, an `sfu.media.fastpath` `Stream`, which the compiled
    receive path updates itself while the layer is armed (`TrackReceiver.on_rtp`).
    """

    __slots__ = (
        "bitrate",
        "counters",
        "expected_prior",
        "octets_prior",
        "received_prior",
        "sr_arrival",
        "sr_ntp",
        "sr_rtp",
        "ssrc",
    )

    def __init__(self) -> None:
        self.ssrc = 0
        self.counters: Any = new_stream()
        # last sender report: (ntp timestamp, rtp timestamp, local arrival time)
        self.sr_ntp = 0
        self.sr_rtp = 0
        self.sr_arrival = 0.0
        # receiver-report interval bookkeeping
        self.expected_prior = 0
        self.received_prior = 0
        self.octets_prior = 0
        #: bits per second over the last report interval
        self.bitrate = 0

    packets = _counter("packets")
    octets = _counter("octets")
    last_arrival = _counter("last_arrival")
    base_seq = _counter("base_seq")
    max_ext_seq = _counter("max_ext_seq")
    seq_offset = _counter("seq_offset")
    #: the layer number the next SSRC's first packet gets (-1: no SSRC had packets yet)
    seq_continue = _counter("seq_continue")

    def new_stream(self, ssrc: int) -> None:
        """The layer now arrives on `ssrc`: forget the sequence and report state of the old one."""
        counters = self.counters
        counters.disarm()  # the reader takes the new SSRC once the receiver arms it again
        self.ssrc = ssrc
        if counters.max_ext_seq >= 0:
            counters.seq_continue = counters.max_ext_seq + counters.seq_offset + 1
        counters.base_seq = counters.max_ext_seq = -1
        counters.reset_sequence()
        self.sr_ntp = self.sr_rtp = 0
        self.sr_arrival = 0.0
        counters.packets = self.expected_prior = self.received_prior = 0

    def on_packet(self, sequence_number: int, size: int, now: float) -> int:
        """Count one received packet of `size` bytes and extend its sequence number; its number
        in the layer."""
        return int(self.counters.on_packet(sequence_number, size, now))


class TrackReceiver:
    """One published track: its layers, its sinks, key-frame requests towards the publisher."""

    def __init__(
        self,
        *,
        kind: str,
        mime_type: str,
        clock_rate: int,
        layer_count: int,
        send_rtcp: Callable[[bytes], None],
        codec: Codec | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.is_video = kind == "video"
        self.mime_type = mime_type
        self.clock_rate = clock_rate
        self.codec = codec
        #: monotonic seconds; the down tracks of this receiver read the same clock
        self.clock = clock
        if layer_count > MAX_LAYERS:
            COUNTERS.limit_exceeded("simulcast_layers")
            layer_count = MAX_LAYERS
        self.layers = [LayerState() for _ in range(max(layer_count, 1))]
        self.sinks: list[PacketSink] = []
        #: per layer, who gets its packets how (`_fanout_for`), built on the layer's next packet
        #: after a change (None); a change replaces the list, so a stale one is told apart
        self._fanout: list[_Fanout | None] = [None] * len(self.layers)
        self._muted = False
        self.closed = False
        self._send_rtcp = send_rtcp
        self._last_pli = [0.0] * len(self.layers)
        name = mime_type.split("/")[-1].lower()
        self._keyframe: Callable[[bytes, int, int], bool] | None = (
            vp8_is_keyframe if name == "vp8" else _h264_keyframe if name == "h264" else None
        )
        self.remb_bitrate = 2_000_000
        #: the highest fraction of packets a layer lost over the last report interval
        self.loss_fraction = 0.0
        #: publisher SRs per SSRC, to align timestamps across layers and map outgoing SRs
        self.sender_reports = SenderReportTranslator(clock_rate)
        #: called when a down track's needs change (the room's dynacast listens)
        self.on_demand_change: Callable[[], None] | None = None
        #: header-extension id of ssrc-audio-level on this PC (0 = not negotiated)
        self._audio_level_id = 0
        #: whether the compiled receive path may take this track's packets at all: it reads
        #: time.monotonic's clock and checks VP8 payload descriptors only
        self._armable = (
            STREAM_FORWARD is not None
            and clock is time.monotonic
            and self._keyframe in (None, vp8_is_keyframe)
        )
        self._level_packets = 0
        self._loud_packets = 0
        self._loud_dbov_sum = 0

    @property
    def muted(self) -> bool:
        return self._muted

    @muted.setter
    def muted(self, muted: bool) -> None:
        self._muted = muted
        self.fanout_changed()

    @property
    def audio_level_id(self) -> int:
        return self._audio_level_id

    @audio_level_id.setter
    def audio_level_id(self, ext_id: int) -> None:
        self._audio_level_id = ext_id
        self.fanout_changed()

    # -- subscribers ---------------------------------------------------------------------------
    def add_sink(self, sink: PacketSink) -> None:
        self.sinks.append(sink)
        self.fanout_changed()

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)
        self.fanout_changed()

    def fanout_changed(self) -> None:
        """A sink started, stopped, switched layer or was enabled/disabled: which sinks take the
        fast path is decided again on each layer's next packet, which reaches Python for that."""
        self._fanout = [None] * len(self.layers)
        for state in self.layers:
            state.counters.disarm()

    def _fanout_for(self, layer: int) -> _Fanout:
        """The sinks whose `fast(layer)` gives a fast-path target (forwarded with one `forward`
        call per packet), and the others (`write` each). Built for one layer at a time: in a
        storm of switches the fan-out changes between most packets, and each packet pays only
        for its own layer (one call per sink and question)."""
        fast: list[tuple[Any, Any, Any]] = []
        slow: list[PacketSink] = []
        wake: float | None = 0.0 if self._armable else None
        vp8 = self._keyframe is vp8_is_keyframe
        for sink in self.sinks:
            choice = getattr(sink, "fast", None)
            entry = choice(layer) if choice is not None else None
            if entry is None:
                slow.append(sink)
                idle = getattr(sink, "idle_for", None)
                if idle is not None and idle(layer):
                    continue
                waits = getattr(sink, "waits_for_keyframe", None) if vp8 else None
                if waits is not None and waits(layer):
                    wake = None if wake is None else KEYFRAME_WAKE_S
                else:
                    wake = None
            else:
                fast.append(entry)
        group = None
        if fast:
            batches = tuple({id(b): b for _, _, b in fast}.values())
            group = (fast[0][0], tuple(t for _, t, _ in fast), batches[0].group(batches))
            if group[0] is not STREAM_FORWARD:
                wake = None
        fanout: _Fanout = (group, tuple(slow), wake)
        self._fanout[layer] = fanout
        return fanout

    def codec_for_subscribers(self) -> Codec:
        if self.codec is not None:
            return self.codec
        name = self.mime_type.split("/")[-1]
        channels = 2 if self.kind == "audio" else None
        return Codec(payload_type=0, name=name, clock_rate=self.clock_rate, channels=channels)

    # -- packets --------------------------------------------------------------------------------
    def on_rtp(self, packet: RtpPacket, layer: int) -> Any:
        """One received packet of `layer`: counted, then forwarded. Returns the layer's `Stream`
        when the compiled receive path may take the SSRC's next packets itself (armed: every
        sink of the layer forwards it through the compiled path, the others would do nothing with
        it), else None."""
        state = self.layers[layer]
        now = self.clock()
        sequence = state.on_packet(packet.sequence_number, len(packet.data), now)
        if sequence < 0:
            COUNTERS.drop("sequence")
            return None
        keyframe = False
        if self.audio_level_id:
            level = packet.extensions.get(self.audio_level_id)
            if level:
                self._level_packets += 1
                dbov = level[0] & 0x7F
                if dbov < SPEAKING_DBOV:
                    self._loud_packets += 1
                    self._loud_dbov_sum += dbov
        end = len(packet.data) - packet.padding_size
        if self._keyframe is not None and end > packet.payload_offset:  # not padding-only
            try:
                keyframe = self._keyframe(packet.data, packet.payload_offset, end)
            except PacketError:
                return None  # a video packet whose payload descriptor is unreadable is dropped
        fanouts = self._fanout
        fast, slow, wake = fanouts[layer] or self._fanout_for(layer)
        if fast is not None:
            forward, targets, group = fast
            copies, octets = forward(
                targets, packet, packet.data, sequence, packet.payload_offset,
                packet.padding_size, now,
            )  # fmt: skip
            if copies:
                COUNTERS.packets_out += copies
                COUNTERS.bytes_out += octets
                group.schedule()
        for sink in slow:
            sink.write(packet, sequence, layer, keyframe)
        if wake is None or self._fanout is not fanouts or self.closed:
            return None  # (a sink's write changed the fan-out: the next packet decides again)
        counters = state.counters
        if not counters.armed or counters.ssrc != packet.ssrc:
            targets, group = (fast[1], fast[2]) if fast is not None else ((), None)
            counters.arm(
                packet.ssrc, targets, group, forward=STREAM_FORWARD,
                vp8=self._keyframe is not None, audio_level_id=self._audio_level_id, wake=wake,
            )  # fmt: skip
        return counters

    def take_audio_level(self) -> float:
        """The speaking level (0..1) since the last call, 0 when not speaking; resets the window.

        Speaking means louder than -35 dBov in at least 40 % of the packets (as LiveKit judges
        it); the level is the linear amplitude 10^(-dBov/20) of the loud packets' mean level.
        """
        total, loud, dbov_sum = self._level_packets, self._loud_packets, self._loud_dbov_sum
        self._level_packets = self._loud_packets = self._loud_dbov_sum = 0
        for state in self.layers:  # what the compiled receive path counted
            c = state.counters
            total, loud, dbov_sum = (
                total + c.level_packets, loud + c.loud_packets, dbov_sum + c.loud_dbov_sum
            )  # fmt: skip
            c.level_packets = c.loud_packets = c.loud_dbov_sum = 0
        if total == 0 or loud < SPEAKING_SHARE * total:
            return 0.0
        return float(10 ** (-(dbov_sum / loud) / 20))

    def on_sender_report(self, layer: int, report: rtcp.SenderReport) -> None:
        state = self.layers[layer]
        state.sr_ntp = report.ntp_timestamp
        state.sr_rtp = report.rtp_timestamp
        state.sr_arrival = self.clock()
        if self.sender_reports.on_sender_report(
            report.ssrc, report.ntp_timestamp, report.rtp_timestamp
        ):
            COUNTERS.limit_exceeded("sender_reports")

    def demand_changed(self) -> None:
        self.fanout_changed()
        if self.on_demand_change is not None:
            self.on_demand_change()

    def is_active(self, layer: int, now: float) -> bool:
        return bool(now - self.layers[layer].last_arrival < LAYER_ACTIVE_WINDOW)

    def highest_active_layer(self, now: float, limit: int) -> int:
        for layer in range(min(limit, len(self.layers) - 1), -1, -1):
            if self.is_active(layer, now):
                return layer
        return -1

    # -- feedback to the publisher -----------------------------------------------------------
    def request_keyframe(self, layer: int) -> None:
        """Send a PLI for ``layer`` unless one went out recently."""
        if not self.is_video or self.closed or not 0 <= layer < len(self.layers):
            return
        now = self.clock()
        throttle = PLI_THROTTLE[min(layer, len(PLI_THROTTLE) - 1)]
        ssrc = self.layers[layer].ssrc
        if ssrc == 0 or now - self._last_pli[layer] < throttle:
            return
        self._last_pli[layer] = now
        COUNTERS.pli_out += 1
        self._send_rtcp(bytes(rtcp.Pli(sender_ssrc=RECEIVER_SSRC, media_ssrc=ssrc)))

    def request_keyframe_all(self) -> None:
        for layer in range(len(self.layers)):
            self.request_keyframe(layer)

    def report_blocks(self, interval: float) -> list[rtcp.ReportBlock]:
        """RFC 3550 §6.4.1 report blocks for every layer heard from, and the REMB update."""
        blocks: list[rtcp.ReportBlock] = []
        now = self.clock()
        total_lost_fraction = 0.0
        received_bits = 0
        for state in self.layers:
            if state.ssrc == 0 or state.max_ext_seq < 0:
                continue
            expected = state.max_ext_seq - state.base_seq + 1
            lost = max(expected - state.packets, 0)
            expected_interval = expected - state.expected_prior
            received_interval = state.packets - state.received_prior
            lost_interval = expected_interval - received_interval
            fraction = (
                (lost_interval << 8) // expected_interval
                if expected_interval > 0 and lost_interval > 0
                else 0
            )
            state.bitrate = int((state.octets - state.octets_prior) * 8 / max(interval, 1e-3))
            received_bits += (state.octets - state.octets_prior) * 8
            state.expected_prior, state.received_prior = expected, state.packets
            state.octets_prior = state.octets
            total_lost_fraction = max(total_lost_fraction, fraction / 256)
            lsr = (state.sr_ntp >> 16) & 0xFFFFFFFF if state.sr_arrival else 0
            dlsr = int((now - state.sr_arrival) * 65536) if state.sr_arrival else 0
            blocks.append(
                rtcp.ReportBlock(
                    ssrc=state.ssrc,
                    fraction_lost=min(fraction, 255),
                    packets_lost=min(lost, 0x7FFFFF),
                    highest_sequence_number=state.max_ext_seq & 0xFFFFFFFF,
                    jitter=0,
                    last_sr=lsr,
                    delay_since_last_sr=dlsr & 0xFFFFFFFF,
                )
            )
        self.loss_fraction = total_lost_fraction
        self._update_remb(total_lost_fraction, received_bits / max(interval, 1e-3))
        return blocks

    def _update_remb(self, loss: float, received_bps: float) -> None:
        """A loss-based receiver estimate: grow while clean, back off under loss (like GCC's)."""
        if loss > 0.10:
            self.remb_bitrate = int(max(received_bps * (1 - 0.5 * loss), REMB_MIN))
        elif loss < 0.02:
            self.remb_bitrate = int(min(max(self.remb_bitrate, received_bps) * 1.08, REMB_MAX))
        # Clamp to both bounds: the loss branch above is relative to the received rate, which
        # may exceed REMB_MAX (a high-rate publisher, or a short report interval).
        self.remb_bitrate = min(max(self.remb_bitrate, REMB_MIN), REMB_MAX)

    def close(self) -> None:
        self.closed = True
        self.sinks.clear()
        self.fanout_changed()


@dataclass
class _Binding:
    receiver: TrackReceiver
    layer_by_rid: dict[str, int]
    payload_type: int


@dataclass
class RtpDemuxer:
    """Publisher-PC ingress: decrypted RTP/RTCP to track receivers and layers.

    Of the publisher's RTCP only sender reports are parsed; the rest (receiver reports, SDES,
    transport-cc...) stays bytes.
    """

    clock: Callable[[], float] = time.monotonic
    _by_ssrc: dict[int, tuple[TrackReceiver, int]] = field(default_factory=dict)
    _by_mid: dict[str, _Binding] = field(default_factory=dict)
    mid_id: int = 0
    rid_id: int = 0
    repaired_rid_id: int = 0
    audio_level_id: int = 0
    _last_report: float = field(init=False)
    _rtcp: RtcpIntake = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._last_report = self.clock()
        self._rtcp = RtcpIntake()
        self._rtcp.on(rtcp.SenderReport, self._on_sender_report)

    def set_extension_ids(self, sections: Iterable[Mapping[str, int]]) -> None:
        """BUNDLE keeps extension ids (uri → id) consistent across m-lines; take them from any."""
        for ids in sections:
            self.mid_id = ids.get(ext.MID, self.mid_id)
            self.rid_id = ids.get(ext.RTP_STREAM_ID, self.rid_id)
            self.repaired_rid_id = ids.get(ext.REPAIRED_RTP_STREAM_ID, self.repaired_rid_id)
            self.audio_level_id = ids.get(ext.SSRC_AUDIO_LEVEL, self.audio_level_id)

    def bind(
        self, mid: str, receiver: TrackReceiver, layer_by_rid: dict[str, int], *, payload_type: int
    ) -> None:
        """Route `mid`'s packets to `receiver`; rids naming a layer it does not have (over
        `MAX_LAYERS`) are not bound, so their packets are dropped."""
        layers = len(receiver.layers)
        rids = {rid: layer for rid, layer in layer_by_rid.items() if 0 <= layer < layers}
        self._by_mid[mid] = _Binding(receiver, rids, payload_type)
        if not receiver.is_video:
            receiver.audio_level_id = self.audio_level_id

    def unbind(self, mid: str) -> None:
        binding = self._by_mid.pop(mid, None)
        if binding is None:
            return
        receiver = binding.receiver
        receiver.fanout_changed()  # its SSRCs' packets come to Python (and are dropped) again
        for layer, state in enumerate(receiver.layers):  # at most MAX_LAYERS
            if self._by_ssrc.get(state.ssrc) == (receiver, layer):
                del self._by_ssrc[state.ssrc]

    def receivers(self) -> list[TrackReceiver]:
        return [b.receiver for b in self._by_mid.values()]

    def on_rtp(self, data: bytes) -> Any:
        """One decrypted RTP packet; returns what `TrackReceiver.on_rtp` does (the `Stream` that
        may take the SSRC's next packets, for the compiled receive path's route) or None."""
        try:
            packet = RtpPacket.parse(data)
        except PacketError:
            COUNTERS.drop("unparseable")
            return None
        COUNTERS.packets_in += 1
        COUNTERS.bytes_in += len(data)
        entry = self._by_ssrc.get(packet.ssrc)
        if entry is None:
            entry = self._learn(packet)
            if entry is None:
                COUNTERS.drop("unknown_ssrc")
                return None
        receiver, layer = entry
        if receiver.muted:
            return None
        return receiver.on_rtp(packet, layer)

    def _learn(self, packet: RtpPacket) -> tuple[TrackReceiver, int] | None:
        extensions = packet.extensions
        if self.repaired_rid_id and self.repaired_rid_id in extensions:
            return None  # RTX is not negotiated; never latch a repair stream as media
        binding: _Binding | None = None
        mid_value = extensions.get(self.mid_id) if self.mid_id else None
        try:
            if mid_value is not None:
                binding = self._by_mid.get(ext.decode_mid(mid_value))
            elif len(self._by_mid) > 0:
                candidates = [
                    b for b in self._by_mid.values() if b.payload_type == packet.payload_type
                ]
                binding = candidates[0] if len(candidates) == 1 else None
            if binding is None:
                return None
            layer = 0
            if len(binding.layer_by_rid) > 1 or "" not in binding.layer_by_rid:
                rid_value = extensions.get(self.rid_id) if self.rid_id else None
                if rid_value is None:
                    return None
                rid = ext.decode_rid(rid_value)
                if rid not in binding.layer_by_rid:
                    return None
                layer = binding.layer_by_rid[rid]
        except PacketError:
            return None
        # One SSRC per layer: a layer that moves to a new SSRC forgets the old one, so SSRC churn
        # cannot grow this table (or the sender-report table) beyond the layers bound.
        receiver = binding.receiver
        state = receiver.layers[layer]
        entry = (receiver, layer)
        if state.ssrc and state.ssrc != packet.ssrc:
            if self._by_ssrc.get(state.ssrc) == entry:
                del self._by_ssrc[state.ssrc]
            receiver.sender_reports.forget(state.ssrc)
            state.new_stream(packet.ssrc)
        state.ssrc = packet.ssrc
        self._by_ssrc[packet.ssrc] = entry
        log.debug("ssrc %d → layer %d of %s", packet.ssrc, layer, binding.receiver.mime_type)
        return entry

    def on_rtcp(self, data: bytes) -> None:
        self._rtcp(data)

    def _on_sender_report(self, report: rtcp.SenderReport) -> None:
        entry = self._by_ssrc.get(report.ssrc)
        if entry is not None:
            entry[0].on_sender_report(entry[1], report)

    def rtcp_reports(self) -> bytes:
        """A compound RR (+ REMB) for every stream this PC receives, or b"" if none."""
        now = self.clock()
        interval, self._last_report = now - self._last_report, now
        blocks: list[rtcp.ReportBlock] = []
        ssrcs: list[int] = []
        bitrate = 0
        for receiver in self.receivers():
            receiver_blocks = receiver.report_blocks(interval)
            blocks.extend(receiver_blocks)
            if receiver.is_video and receiver_blocks:
                ssrcs.extend(b.ssrc for b in receiver_blocks)
                bitrate += receiver.remb_bitrate
        if not blocks:
            return b""
        parts = [
            bytes(rtcp.ReceiverReport(ssrc=RECEIVER_SSRC, reports=tuple(blocks[i : i + 31])))
            for i in range(0, len(blocks), 31)
        ]
        if ssrcs:
            parts.append(
                bytes(rtcp.Remb(sender_ssrc=RECEIVER_SSRC, bitrate=bitrate, ssrcs=tuple(ssrcs)))
            )
        COUNTERS.rtcp_out += 1
        return b"".join(parts)
