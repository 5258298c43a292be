"""Prometheus metrics under LiveKit's names, fed by plain integer counters.

The packet path only bumps attributes of :class:`Counters` (no locks, no label lookups); the
collector reads them when Prometheus scrapes. Gauges such as room and participant counts come
from a callback the composition root installs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: upper bounds of the send batch-size histogram (datagrams per socket per loop iteration)
SEND_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: upper bounds of the forwarding-latency histogram, seconds (LiveKit's 50 µs to 20 ms, then on
#: to the seconds a saturated node's receive queues reach)
FORWARD_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
#: why a received datagram was dropped (`sfu_packets_dropped_total{reason}`): from an address no
#: connection on the shared UDP port has used, not parseable as RTP, an SSRC no published layer
#: claims, a sequence number before the layer's first by more than a cycle, media from a source
#: ICE did not validate, or whatever made aioice (STUN, DTLS) raise
DROP_REASONS = (
    "unknown_address", "unparseable", "unknown_ssrc", "sequence", "wrong_source", "malformed",
)  # fmt: skip
#: upper bounds (bits per second) of the subscriber bandwidth-estimate histogram
ESTIMATE_BUCKETS = (150_000, 300_000, 600_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)


@dataclass(slots=True)
class Counters:
    """Monotonic totals for this node, bumped on the packet path."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    packets_dropped: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    nack_in: int = 0
    retransmits_out: int = 0
    resends_on_feedback: int = 0  # retransmissions sent again: feedback reported them lost
    pli_in: int = 0
    pli_out: int = 0
    fir_in: int = 0
    layer_switches: int = 0
    allocation_pauses: int = 0  # video tracks the allocator paused (the link too thin)
    probe_packets: int = 0  # padding-only probe packets sent to find more bandwidth
    padding_absorbed: int = 0  # publishers' padding-only packets not passed on to a thin link
    paced_packets: int = 0  # packets of constrained video held back by a subscriber's pacer
    red_primary_tracks: int = 0  # RED audio down tracks started as plain Opus (no RED answered)
    malformed_red: int = 0  # copies of RED packets not sent to those: blocks that do not fit
    probes: int = 0  # probe clusters started
    #: subscriber bandwidth estimates, one observation per allocation (every subscriber link
    #: about every 250 ms): ≤ ESTIMATE_BUCKETS[i], the last slot for larger ones, and their sum
    estimate_buckets: list[int] = field(default_factory=lambda: [0] * (len(ESTIMATE_BUCKETS) + 1))
    estimate_sum: int = 0
    #: video down tracks per allocation outcome, one count per track per allocation
    allocated_at_preferred: int = 0
    allocated_below_preferred: int = 0
    allocated_paused: int = 0

    def observe_estimate(self, estimate: int) -> None:
        i = 0
        for bound in ESTIMATE_BUCKETS:
            if estimate <= bound:
                break
            i += 1
        self.estimate_buckets[i] += 1
        self.estimate_sum += estimate

    participant_joins: int = 0
    data_packets: int = 0
    signal_errors: int = 0
    joins_refused_cpu: int = 0  # refused by limits.max_cpu_load
    joins_refused_latency: int = 0  # refused by limits.max_forward_latency_ms
    # the batched send path (sfu.media.transport.batch): per socket and loop iteration
    send_flushes: int = 0  # queues flushed (one per socket per loop iteration with datagrams)
    send_datagrams: int = 0  # datagrams those flushes held
    send_syscalls: int = 0  # sendto/sendmsg calls they took
    send_gso_datagrams: int = 0  # datagrams sent inside a UDP GSO sendmsg
    send_dropped: int = 0  # datagrams the transport dropped (not connected, queue full, EAGAIN)
    #: flushes by size: ≤ SEND_BATCH_BUCKETS[i], and the last slot for larger ones
    send_batch_sizes: list[int] = field(default_factory=lambda: [0] * (len(SEND_BATCH_BUCKETS) + 1))
    #: sampled forwarding latency (sfu.media.transport.latency): samples by bucket, ≤
    #: FORWARD_LATENCY_BUCKETS[i] seconds and the last slot for longer, and their sum
    forward_latency_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(FORWARD_LATENCY_BUCKETS) + 1)
    )
    forward_latency_sum: float = 0.0
    #: times each documented cap (docs/limits.md) was hit, by the cap's name; the names are
    #: constants in the code, never remote input, so this stays as small as that list
    limits_exceeded: dict[str, int] = field(default_factory=dict)

    def limit_exceeded(self, limit: str) -> None:
        """Count one hit of the cap named `limit` (exported as `sfu_limit_exceeded_total`)."""
        self.limits_exceeded[limit] = self.limits_exceeded.get(limit, 0) + 1

    #: `packets_dropped` by reason (DROP_REASONS, constants in the code, never remote input)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count `count` received datagrams dropped for `reason` (one of DROP_REASONS)."""
        self.packets_dropped += count
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + count


@dataclass(frozen=True, slots=True)
class LayerGauge:
    """One received simulcast layer: its size and the bitrate measured over the last second."""

    track_sid: str
    quality: str
    width: int
    height: int
    bitrate: int


@dataclass(slots=True)
class Gauges:
    rooms: int = 0
    participants: int = 0
    tracks_published: int = 0
    tracks_subscribed: int = 0
    tasks: int = 0
    cpu_load: float = 0.0  # process CPU seconds per second over the admission window
    forward_latency_p99: float = 0.0  # seconds, over the admission window (0: too few samples)
    layers: tuple[LayerGauge, ...] = ()


COUNTERS = Counters()


class _Collector(Collector):
    def __init__(self, node_id: str, counters: Counters) -> None:
        self.node_id = node_id
        self.counters = counters
        self.gauges: Callable[[], Gauges] = Gauges
        #: where the counters come from when they are not this process's alone (media workers)
        self.source: Callable[[], Counters] | None = None

    def collect(self) -> Iterator[Metric]:
        c = self.counters if self.source is None else self.source()
        labels = ["node_id", "node_type"]
        node = [self.node_id, "MEDIA"]

        packets = CounterMetricFamily(
            "livekit_packet", "RTP packets", labels=[*labels, "direction", "transmission"]
        )
        packets.add_metric([*node, "incoming", "original"], c.packets_in)
        packets.add_metric([*node, "outgoing", "original"], c.packets_out)
        packets.add_metric([*node, "outgoing", "retransmit"], c.retransmits_out)
        yield packets
        octets = CounterMetricFamily(
            "livekit_packet_bytes", "RTP bytes", labels=[*labels, "direction", "transmission"]
        )
        octets.add_metric([*node, "incoming", "original"], c.bytes_in)
        octets.add_metric([*node, "outgoing", "original"], c.bytes_out)
        yield octets
        for name, doc, value in (
            ("livekit_nack", "NACKs received from subscribers", c.nack_in),
            ("livekit_pli", "PLIs sent to publishers", c.pli_out),
            ("livekit_fir", "FIRs received from subscribers", c.fir_in),
            (
                "livekit_packet_dropped",
                "received packets dropped (unparseable, unknown stream, wrong source)",
                c.packets_dropped,
            ),
            ("livekit_layer_switch", "simulcast layer switches", c.layer_switches),
            (
                "sfu_allocation_pauses",
                "video tracks paused for a subscriber's link",
                c.allocation_pauses,
            ),
            ("sfu_probes", "padding probes started towards subscribers", c.probes),
            ("sfu_probe_packets", "padding-only probe packets sent", c.probe_packets),
            (
                "sfu_padding_absorbed",
                "publishers' padding-only packets not passed on to a subscriber held below its layer",
                c.padding_absorbed,
            ),
            (
                "sfu_paced_packets",
                "video packets of a subscriber held below its layer that waited for its pacer",
                c.paced_packets,
            ),
            (
                "sfu_red_primary_tracks",
                "RED audio tracks sent to a subscriber as their primary Opus encoding",
                c.red_primary_tracks,
            ),
            ("sfu_malformed_red", "RED copies not sent: blocks that do not fit", c.malformed_red),
            (
                "sfu_resends_on_feedback",
                "retransmissions sent again because transport-cc feedback reported them lost",
                c.resends_on_feedback,
            ),
            ("livekit_participant_join", "participants joined", c.participant_joins),
            ("livekit_datapacket", "data packets forwarded", c.data_packets),
            ("sfu_joins_refused_cpu", "joins refused by limits.max_cpu_load", c.joins_refused_cpu),
            (
                "sfu_joins_refused_latency",
                "joins refused by limits.max_forward_latency_ms",
                c.joins_refused_latency,
            ),
            ("sfu_signal_errors", "failed signal requests and RTCP rounds", c.signal_errors),
        ):
            metric = CounterMetricFamily(name, doc, labels=labels)
            metric.add_metric(node, value)
            yield metric
        for name, doc, value in (
            ("sfu_send_flushes", "socket send queues flushed", c.send_flushes),
            ("sfu_send_datagrams", "datagrams sent through send queues", c.send_datagrams),
            ("sfu_send_syscalls", "send system calls made by send queues", c.send_syscalls),
            ("sfu_send_gso_datagrams", "datagrams sent with UDP GSO", c.send_gso_datagrams),
            (
                "sfu_send_dropped",
                "datagrams the transport dropped instead of sending (not connected, full)",
                c.send_dropped,
            ),
        ):
            metric = CounterMetricFamily(name, doc, labels=labels)
            metric.add_metric(node, value)
            yield metric
        batch = HistogramMetricFamily(
            "sfu_send_batch_size", "datagrams per send queue flush", labels=labels
        )
        batch.add_metric(
            node,
            _cumulative(SEND_BATCH_BUCKETS, c.send_batch_sizes),
            sum_value=c.send_datagrams,
        )
        yield batch
        latency = HistogramMetricFamily(
            "sfu_forward_latency_seconds",
            "sampled: kernel receive to the end of the send flush after it, per datagram flushed",
            labels=labels,
        )
        latency.add_metric(
            node,
            _cumulative(FORWARD_LATENCY_BUCKETS, c.forward_latency_buckets),
            sum_value=c.forward_latency_sum,
        )
        yield latency
        estimate = HistogramMetricFamily(
            "sfu_subscriber_bandwidth_estimate_bps",
            "subscriber links' bandwidth estimates, one observation per allocation",
            labels=labels,
        )
        estimate.add_metric(
            node, _cumulative(ESTIMATE_BUCKETS, c.estimate_buckets), sum_value=c.estimate_sum
        )
        yield estimate
        allocated = CounterMetricFamily(
            "sfu_allocation_tracks",
            "video down tracks per allocation, by outcome against the subscriber's preferred layer",
            labels=[*labels, "outcome"],
        )
        allocated.add_metric([*node, "preferred"], c.allocated_at_preferred)
        allocated.add_metric([*node, "below_preferred"], c.allocated_below_preferred)
        allocated.add_metric([*node, "paused"], c.allocated_paused)
        yield allocated
        yield _counter_by(
            "sfu_packets_dropped",
            "received datagrams dropped, by reason (their sum is livekit_packet_dropped_total)",
            labels,
            node,
            "reason",
            c.dropped_by_reason,
        )
        yield _counter_by(
            "sfu_limit_exceeded",
            "remote input refused or dropped by a documented cap (docs/limits.md)",
            labels,
            node,
            "limit",
            c.limits_exceeded,
        )
        g = self.gauges()
        gauges: tuple[tuple[str, str, float], ...] = (
            ("livekit_room_total", "open rooms", g.rooms),
            ("livekit_participant_total", "connected participants", g.participants),
            ("livekit_track_published_total", "published tracks", g.tracks_published),
            ("livekit_track_subscribed_total", "subscribed tracks", g.tracks_subscribed),
            ("sfu_asyncio_tasks", "asyncio tasks alive in this process", g.tasks),
            (
                "sfu_cpu_load",
                "SFU process CPU time per second, last 3 s (1 = one core)",
                g.cpu_load,
            ),
            (
                "sfu_forward_latency_p99_seconds",
                "p99 of sfu_forward_latency_seconds, last 3 s (0: under 3 samples)",
                g.forward_latency_p99,
            ),
        )
        for name, doc, reading in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric(node, reading)
            yield gauge
        layer_labels = [*labels, "track_sid", "quality"]
        bitrate = GaugeMetricFamily(
            "sfu_layer_bitrate_bps", "received bitrate per simulcast layer", labels=layer_labels
        )
        width = GaugeMetricFamily("sfu_layer_width_pixels", "layer width", labels=layer_labels)
        height = GaugeMetricFamily("sfu_layer_height_pixels", "layer height", labels=layer_labels)
        for layer in g.layers:
            key = [*node, layer.track_sid, layer.quality]
            bitrate.add_metric(key, layer.bitrate)
            width.add_metric(key, layer.width)
            height.add_metric(key, layer.height)
        yield bitrate
        yield width
        yield height


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (``le`` bound, cumulative count) from per-bucket counts."""
    total = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*bounds, "+Inf"), counts, strict=True):
        total += count
        buckets.append((str(bound), total))
    return buckets


class Metrics:
    """The node's registry: LiveKit-named metrics plus the process collector (CPU, RSS)."""

    def __init__(self, node_id: str, counters: Counters = COUNTERS) -> None:
        self.counters = counters
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _Collector(node_id, counters)
        self.registry.register(self._collector)
        ProcessCollector(registry=self.registry)

    def set_gauges(self, source: Callable[[], Gauges]) -> None:
        self._collector.gauges = source

    def set_counters(self, source: Callable[[], Counters]) -> None:
        """Export these totals instead, computed on each scrape (the node's, summed over its
        media workers)."""
        self._collector.source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)


def add_counters(total: Counters, part: Mapping[str, Any]) -> None:
    """Add one process's counters (`dataclasses.asdict` of a `Counters`) into ``total``."""
    for name, value in part.items():
        mine = getattr(total, name, None)
        if isinstance(mine, int) and isinstance(value, int):
            setattr(total, name, mine + value)
        elif isinstance(mine, float) and isinstance(value, (int, float)):
            setattr(total, name, mine + value)  # forward_latency_sum
        elif isinstance(mine, list) and isinstance(value, list):
            for i, count in enumerate(value[: len(mine)]):
                mine[i] += int(count)
        elif isinstance(mine, dict) and isinstance(value, dict):
            for key, count in value.items():
                mine[key] = mine.get(key, 0) + int(count)


def _counter_by(
    name: str,
    documentation: str,
    labels: list[str],
    node: list[str],
    label: str,
    counts: dict[str, int],
) -> CounterMetricFamily:
    """One counter family with a sample per key of `counts` (sorted), labelled `label`."""
    family = CounterMetricFamily(name, documentation, labels=[*labels, label])
    for key, count in sorted(counts.items()):
        family.add_metric([*node, key], count)
    return family
