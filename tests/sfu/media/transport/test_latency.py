"""ForwardLatency: kernel receive time to the end of the flush, sampled; its window and its p99.

The samples come from real sockets on real event loops (asyncio's and uvloop's): a datagram that
reached the socket while the loop was blocked has waited at least as long as the block, which is
what these tests check (a lower bound, never a speed).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from aioice.ice import StunProtocol
from pylibsrtp import Policy, Session

from sfu.media.transport.batch import count_flush, flusher_for
from sfu.media.transport.ingress import SrtpIngress
from sfu.media.transport.latency import MIN_SAMPLES, ForwardLatency, enable_timestamps
from sfu.metrics import COUNTERS, FORWARD_LATENCY_BUCKETS
from tests.sfu.packets import rtp

BLOCK_S = 0.06
KEY = os.urandom(30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probe(clock: Clock) -> ForwardLatency:
    """A probe without a loop (fed through `record`), with room for 3,000 samples."""
    return ForwardLatency(None, lambda: None, interval_s=0.001, clock=clock)


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def run_on(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], main: Coroutine[Any, Any, None]
) -> None:
    loop = loop_factory()
    try:
        loop.run_until_complete(main)
    finally:
        loop.close()


LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


class Connection:
    """What an aioice `StunProtocol` tells its connection when its socket closes."""

    def protocol_lost(self, protocol: Any) -> None:
        pass


class Reader(asyncio.DatagramProtocol):
    """What `SrtpIngress` does with the probe, on a socket of its own."""

    def __init__(self) -> None:
        self.fd = -1
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.fd = transport.get_extra_info("socket").fileno()
        assert enable_timestamps(self.fd)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        latency = flusher_for(asyncio.get_running_loop()).latency
        if latency.armed:
            latency.start(self.fd)


def busy(seconds: float) -> None:
    """Keep the event loop busy (as forwarding would) for `seconds`."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def slow_samples() -> int:
    """Samples so far in the histogram's buckets above 50 ms."""
    first = FORWARD_LATENCY_BUCKETS.index(0.05) + 1
    return sum(COUNTERS.forward_latency_buckets[first:])


@LOOPS
def test_a_datagram_queued_behind_a_blocked_loop_is_measured(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], sender: socket.socket
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_datagram_endpoint(Reader, local_addr=("127.0.0.1", 0))
        latency = flusher_for(loop).latency
        try:
            address = transport.get_extra_info("sockname")
            # a first datagram: the socket's timestamps may have been off when it was queued
            sender.sendto(b"warm-up", address)
            await wait_for(lambda: reader.received == 1 and latency.armed)
            before, slow = sum(COUNTERS.forward_latency_buckets), slow_samples()
            window = latency.samples()
            sender.sendto(b"late", address)
            busy(BLOCK_S)  # the loop is busy: the datagram waits in the kernel
            await wait_for(lambda: reader.received == 2 and not latency.in_flight)
            assert sum(COUNTERS.forward_latency_buckets) == before + 1
            assert slow_samples() == slow + 1
            assert COUNTERS.forward_latency_sum >= BLOCK_S
            assert latency.samples() == window + 1
            await wait_for(lambda: latency.armed)  # and armed again
        finally:
            transport.close()

    run_on(loop_factory, main())


def test_srtp_ingress_samples_on_the_socket_of_its_protocol(sender: socket.socket) -> None:
    """The real receive path: an aioice `StunProtocol` on its socket, fronted by `SrtpIngress`."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        received: list[bytes] = []
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(Connection()),  # type: ignore[arg-type]
            local_addr=("127.0.0.1", 0),
        )
        ingress = SrtpIngress(received.append, received.append)
        ingress.attach(
            protocol,
            Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND)),
            remote_addr=sender.getsockname(),
        )
        outbound = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        latency = flusher_for(loop).latency
        address = transport.get_extra_info("sockname")
        try:
            sender.sendto(outbound.protect(rtp(bytes(100), sequence_number=1)), address)
            await wait_for(lambda: len(received) == 1 and latency.armed)
            slow = slow_samples()
            sender.sendto(outbound.protect(rtp(bytes(100), sequence_number=2)), address)
            busy(BLOCK_S)
            await wait_for(lambda: len(received) == 2 and not latency.in_flight)
            assert slow_samples() == slow + 1
        finally:
            ingress.detach()
            transport.close()

    run_on(uvloop.new_event_loop, main())


def test_without_a_socket_timestamp_nothing_is_recorded_and_the_probe_rearms() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        latency = flusher_for(loop).latency
        read, write = os.pipe()  # not a socket: SIOCGSTAMPNS fails
        try:
            assert not enable_timestamps(read)
            before = sum(COUNTERS.forward_latency_buckets)
            assert latency.armed
            latency.start(read)
            assert latency.in_flight and not latency.armed
            await wait_for(lambda: not latency.in_flight)
            assert sum(COUNTERS.forward_latency_buckets) == before
            await wait_for(lambda: latency.armed)
        finally:
            os.close(read)
            os.close(write)

    run_on(asyncio.new_event_loop, main())


def test_the_probe_is_armed_again_after_its_interval() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        read, write = os.pipe()
        try:
            for interval_s, armed in ((3600.0, False), (0.0, True)):
                latency = ForwardLatency(loop, lambda: None, interval_s=interval_s)
                latency.start(read)
                latency.finish()
                assert latency.armed is armed and not latency.in_flight
        finally:
            os.close(read)
            os.close(write)

    run_on(asyncio.new_event_loop, main())


def test_a_probe_without_a_loop_never_samples() -> None:
    assert not ForwardLatency(None, lambda: None).armed


def test_p99_of_the_window() -> None:
    clock = Clock()
    latency = probe(clock)
    assert latency.p99() == 0.0  # idle: no samples
    for _ in range(MIN_SAMPLES - 1):
        latency.record(0.2)
    assert latency.p99() == 0.0  # too few to say anything
    latency.record(0.2)
    assert latency.p99() == 0.2  # a starved loop: few samples, all slow
    clock.now += 3.1  # they leave the window
    assert latency.samples() == 0 and latency.p99() == 0.0
    # a quiet node: one stray slow datagram among 100 is not its p99; two are
    for _ in range(99):
        latency.record(0.0001)
    latency.record(5.0)
    assert latency.p99() == 0.0001
    latency.record(5.0)
    assert latency.p99() == 5.0
    clock.now += 3.1
    # 1,000 samples, 1 ms to 1 s: the 99th percentile is the 990th
    for i in range(1000, 0, -1):
        latency.record(i / 1000)
    assert latency.p99() == 0.99
    clock.now += 1.0
    for _ in range(500):
        latency.record(0.001)  # newer and fast: the window's p99 falls
    assert latency.p99() == pytest.approx(0.985)  # 501 at 1 ms below the 999 others
    clock.now += 2.5  # the first thousand are out
    assert latency.samples() == 500 and latency.p99() == 0.001


def test_a_sample_stands_for_the_datagrams_its_flush_sent() -> None:
    """A long iteration (a key-frame burst) holds many packets: its sample weighs as many."""
    clock = Clock()
    latency = probe(clock)
    for _ in range(99):
        latency.record(0.001)
    latency.record(0.1, weight=10)  # 10 of the 109 datagrams waited 100 ms
    assert latency.samples() == 100 and latency.p99() == 0.1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        try:
            flushing = ForwardLatency(loop, lambda: None)
            assert enable_timestamps(sock.fileno())
            sock.sendto(b"x", sock.getsockname())
            sock.recv(10)
            before = sum(COUNTERS.forward_latency_buckets)
            flushing.start(sock.fileno())
            count_flush(5)  # what the send queues account when they flush
            count_flush(2)
            flushing.finish()
            assert sum(COUNTERS.forward_latency_buckets) == before + 7
        finally:
            sock.close()

    run_on(asyncio.new_event_loop, main())


def test_the_histogram_counts_every_sample_by_bucket() -> None:
    latency = probe(Clock())
    before = list(COUNTERS.forward_latency_buckets)
    total = COUNTERS.forward_latency_sum
    for seconds in (0.00004, 0.00005, 0.0011, 0.03, 7.0):
        latency.record(seconds)
    grown = [a - b for a, b in zip(COUNTERS.forward_latency_buckets, before, strict=True)]
    expected = [0] * (len(FORWARD_LATENCY_BUCKETS) + 1)
    for bound in (0.00005, 0.00005, 0.002, 0.05):
        expected[FORWARD_LATENCY_BUCKETS.index(bound)] += 1
    expected[-1] += 1  # over the last bound
    assert grown == expected
    assert COUNTERS.forward_latency_sum == pytest.approx(total + 7.03115)


def test_the_window_is_bounded() -> None:
    latency = ForwardLatency(None, lambda: None, window_s=1.0, interval_s=0.01, clock=Clock())
    for _ in range(10_000):
        latency.record(0.001)
    assert latency.samples() <= 1.0 / 0.01 + 64
    with pytest.raises(ValueError):
        ForwardLatency(None, lambda: None, window_s=0)
