"""Congestion control across the process boundary, both ends in one event loop: a worker host's
subscriber link reports its estimate at the allocator's cadence (at once when it drops), and
applies what the control process's `StreamAllocator` decides; the control side's
`RemoteBandwidth` and `RemoteDownTrack` send those decisions only when they change."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Any

from sfu.media.rtp import rtcp
from sfu.media.sdp import Codec
from sfu.media.transport import TransportConfig
from sfu.media.worker.host import ESTIMATE_INTERVAL, WorkerHost
from sfu.media.worker.relay import Relay
from sfu.media.worker.wire import Message
from sfu.metrics import Counters, add_counters
from sfu.room.media import ReceiverSpec
from sfu.workers.pool import WorkerLink
from sfu.workers.proxies import RemoteDownTrack, RemoteMedia, RemoteReceiver
from tests.sfu.media.worker.test_host import receiver_new


class Link(WorkerLink):
    """A worker's link whose messages are kept, not sent."""

    def __init__(self) -> None:
        super().__init__(0, generation=1, alive=True)
        self.sent: list[Message] = []

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def ops(self, op: str) -> list[Message]:
        return [m for m in self.sent if m["op"] == op]


async def subscriber_host() -> tuple[WorkerHost, list[Message]]:
    """A worker with participant 7's subscriber PC (never connected) and one video down track
    (42) of track 1, a replica of worker 1's."""
    relay = Relay(f"cc-{secrets.token_hex(4)}", 0)
    relay.start()
    events: list[Message] = []
    host = WorkerHost(0, TransportConfig(), relay, events.append, print)
    host.handle({"op": "peer_new", "peer": 1, "part": 7, "role": "subscriber"})
    host.handle(receiver_new(1, "video", home=1))
    host.handle({"op": "dt_new", "dt": 42, "part": 7, "track": 1, "ssrc": 99, "pt": 96,
                 "cname": "PA_bob", "enabled": True, "max_layer": 2})  # fmt: skip
    return host, events


def remb(bitrate: int) -> rtcp.Remb:
    return rtcp.Remb(sender_ssrc=1, bitrate=bitrate, ssrcs=(99,))


async def test_the_worker_reports_its_estimate_at_the_allocators_cadence() -> None:
    host, events = await subscriber_host()
    try:
        bandwidth = host.parts[7].bandwidth
        assert host.downtracks[42].bandwidth is bandwidth  # its copies are this link's
        for _ in range(20):  # a burst of feedback: one report
            bandwidth.on_remb(remb(1_000_000))
        reports = [e for e in events if e["op"] == "estimate"]
        assert len(reports) == 1
        assert reports[0]["part"] == 7 and reports[0]["estimate"] == 1_000_000
        assert not reports[0]["probing"] and not reports[0]["overusing"]
        bandwidth.on_remb(remb(950_000))  # a small fall waits for the interval
        assert len([e for e in events if e["op"] == "estimate"]) == 1
        bandwidth.on_remb(remb(500_000))  # a drop goes up at once
        reports = [e for e in events if e["op"] == "estimate"]
        assert [r["estimate"] for r in reports] == [1_000_000, 500_000]
        await asyncio.sleep(ESTIMATE_INTERVAL)
        bandwidth.on_remb(remb(520_000))
        assert [e for e in events if e["op"] == "estimate"][-1]["estimate"] == 520_000
    finally:
        await host.close()
        host.relay.close()


async def test_the_worker_applies_the_allocators_decisions() -> None:
    host, events = await subscriber_host()
    try:
        part, downtrack = host.parts[7], host.downtracks[42]
        host.handle({"op": "dt_set", "dt": 42, "allocation": 0})
        assert downtrack.allocated_layer == 0 and not downtrack.allocation_paused
        host.handle({"op": "dt_set", "dt": 42, "allocation": -1})
        assert downtrack.allocation_paused and downtrack.paused
        host.handle({"op": "link_set", "part": 7, "committed": 400_000})
        assert part.bandwidth.committed == 400_000
        host.handle({"op": "probe", "part": 7, "action": "start", "n": 1})
        assert part.bandwidth.probing
        part.bandwidth.on_remb(remb(800_000))
        report = [e for e in events if e["op"] == "estimate"][-1]
        assert report["probing"] and report["probes"] == 1
        host.handle({"op": "pad", "part": 7, "count": 10})  # nothing sent yet: nothing to pad
        host.handle({"op": "probe", "part": 7, "action": "abandon"})
        assert not part.bandwidth.probing
        host.handle({"op": "pad", "part": 999, "count": 10})  # a part gone: ignored
        host.handle({"op": "probe", "part": 999, "action": "start", "n": 2})
    finally:
        await host.close()
        host.relay.close()


def remote_downtrack(link: Link) -> tuple[RemoteMedia, RemoteDownTrack]:
    media = RemoteMedia(link)
    spec = ReceiverSpec("video", "video/VP8", 90000, 3, Codec(96, "VP8", 90000))
    receiver = RemoteReceiver(link, media.part, spec)
    downtrack = RemoteDownTrack(link, media.part, receiver, ssrc=5, payload_type=96, cname="x")
    return media, downtrack


def test_the_control_side_mirrors_the_worker_and_sends_only_changes() -> None:
    link = Link()
    media = RemoteMedia(link)
    bandwidth = media.bandwidth()
    assert link.bandwidths[media.part] is bandwidth
    cues: list[float] = []
    bandwidth.on_estimate = lambda: cues.append(time.monotonic())
    assert bandwidth.estimate is None  # nothing reported: nothing is held back
    report: dict[str, Any] = {"op": "estimate", "part": media.part, "estimate": 700_000,
                              "overusing": True, "loss": 0.2, "probing": False, "probes": 0}  # fmt: skip
    link.on_message(report)
    assert bandwidth.estimate == 700_000 and bandwidth.overusing
    assert bandwidth.gcc.loss_fraction == 0.2 and len(cues) == 1
    assert bandwidth.gcc.acked_rate() is None  # too few packets acknowledged yet to tell
    link.on_message({**report, "acked": 640_000})
    assert bandwidth.gcc.acked_rate() == 640_000 and len(cues) == 2
    bandwidth.committed = 500_000
    bandwidth.committed = 510_000  # within 5 %: not sent
    bandwidth.committed = 600_000
    assert [m["committed"] for m in link.ops("link_set")] == [500_000, 600_000]
    bandwidth.start_probe()
    bandwidth.end_probe()
    assert bandwidth.probing  # until the worker says it saw probe 1 and measured it
    link.on_message({**report, "probing": True, "probes": 1})
    assert bandwidth.probing
    link.on_message({**report, "probing": False, "probes": 1})
    assert not bandwidth.probing
    assert [m["action"] for m in link.ops("probe")] == ["start", "end"]
    bandwidth.enabled = False  # rtc.congestion_control off, as the worker's answer said
    assert bandwidth.estimate is None
    media.close()
    assert media.part not in link.bandwidths
    link.on_message(report)  # a late report for a participant gone: ignored


def test_a_remote_down_track_sends_its_allocation_when_it_changes() -> None:
    link = Link()
    _, downtrack = remote_downtrack(link)
    for layer in (2, 2, 0, 0, -1, -1, 1):
        downtrack.set_allocation(layer)
    allocations = [m["allocation"] for m in link.ops("dt_set") if "allocation" in m]
    assert allocations == [2, 0, -1, 1]
    downtrack.set_allocation(-1)
    assert downtrack.paused and downtrack.subscribed_layer == -1
    downtrack.set_allocation(0)
    assert not downtrack.paused and downtrack.subscribed_layer == 0
    assert downtrack.send_padding(8) == 0  # not started: no probe
    downtrack.start()
    assert downtrack.send_padding(8) == 8  # the worker spreads the tick over the part's tracks
    assert link.ops("pad")[-1] == {"op": "pad", "part": downtrack.part, "count": 8}
    link.on_message({"op": "reports", "reports": {str(downtrack.id): [0.25, 0.01, 0.08]}})
    assert (downtrack.fraction_lost, downtrack.jitter, downtrack.rtt) == (0.25, 0.01, 0.08)
    link.on_message({"op": "reports", "reports": {str(downtrack.id): [9, -1, None]}})
    assert (downtrack.fraction_lost, downtrack.jitter, downtrack.rtt) == (1.0, 0.0, None)
    link.on_message({"op": "bitrates", "bitrates": {}, "loss": {str(downtrack.receiver.id): 0.1}})
    assert downtrack.receiver.loss_fraction == 0.1


def test_the_nodes_totals_add_up_every_kind_of_counter() -> None:
    """Workers' counters are summed into the node's: integers, histogram buckets, the
    cap-hit dict, and the forwarding-latency sum (a float)."""
    total = Counters()
    worker = Counters(packets_out=5, forward_latency_sum=0.25, limits_exceeded={"x": 2})
    worker.forward_latency_buckets[3] = 7
    worker.observe_estimate(500_000)
    for _ in range(2):
        add_counters(total, dataclasses.asdict(worker))
    assert total.packets_out == 10 and total.forward_latency_sum == 0.5
    assert total.forward_latency_buckets[3] == 14 and total.limits_exceeded == {"x": 4}
    assert sum(total.estimate_buckets) == 2 and total.estimate_sum == 1_000_000
