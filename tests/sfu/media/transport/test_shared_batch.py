"""One fast-path send batch per socket: with `rtc.udp_port` every subscriber transport on the mux
socket queues on the socket's one batch, so the fan-out of a received packet leaves in one
`sendmmsg`; a transport that closes closes its own targets only, the batch lives as long as the
socket. With the port range each transport keeps a batch of its own, closed with it."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu.media import fastpath
from sfu.media.fastpath import Implementation
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import TrackReceiver
from sfu.media.rtp.header import RtpPacket
from sfu.media.transport import PeerTransport, TransportConfig
from sfu.media.transport.batch import FastBatch, FastSenders, Flusher
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.metrics import COUNTERS
from tests.harness.sfu import free_udp_port
from tests.sfu.media.transport.test_peer import (
    Recorder,
    aiortc_peer,
    inbound_rtp,
    loopback_only,
    wait_for,
)
from tests.sfu.packets import rtp

__all__ = ["loopback_only"]  # the fixture: ICE on loopback only

IMPLEMENTATIONS = ["compiled", "python"]


def implementation(name: str) -> Implementation:
    impl = fastpath.COMPILED if name == "compiled" else fastpath.PYTHON
    assert impl is not None, "the compiled fast path is not built"
    return impl


async def subscriber(
    config: TransportConfig, ssrc: int
) -> tuple[PeerTransport, RTCPeerConnection, int]:
    """A connected subscriber transport carrying one audio track on `ssrc`, its aiortc peer, and
    the track's payload type."""
    transport = Recorder().transport("subscriber", config)
    mid = transport.add_track("audio", "audio/opus", ssrc, "PA_x|mic", f"TR_{ssrc}")
    pc = aiortc_peer()
    await pc.setRemoteDescription(RTCSessionDescription(await transport.create_offer(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await transport.handle_answer(pc.localDescription.sdp)
    await wait_for(lambda: transport.state == "connected", what="connected")
    return transport, pc, transport.track_codec(mid).payload_type


def audio_receiver() -> TrackReceiver:
    return TrackReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1,
        send_rtcp=lambda _: None,
    )  # fmt: skip


def down_track(receiver: TrackReceiver, transport: PeerTransport, ssrc: int, pt: int) -> DownTrack:
    track = DownTrack(
        receiver, ssrc=ssrc, payload_type=pt, send_rtp=lambda _: None, cname="c",
        fast_sender=transport.fast_sender,
    )  # fmt: skip
    receiver.add_sink(track)
    track.start()
    return track


async def feed(receiver: TrackReceiver, first: int, count: int) -> None:
    """`count` Opus packets from sequence number `first` on, one per loop iteration or so."""
    for seq in range(first, first + count):
        data = rtp(b"\xfc" + bytes(40), payload_type=109, sequence_number=seq,
                   timestamp=960 * seq, ssrc=0xAAAA)  # fmt: skip
        receiver.on_rtp(RtpPacket.parse(data), 0)
        await asyncio.sleep(0.003)


async def wait_received(pc: RTCPeerConnection, expected: dict[int, int]) -> None:
    deadline = time.monotonic() + 5
    while (got := await inbound_rtp(pc)) != expected:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
async def test_transports_on_one_udp_port_share_one_batch(name: str) -> None:
    impl = implementation(name)
    config = TransportConfig(udp_port=free_udp_port(), fast_path=impl)
    (ta, pa, pt_a), (tb, pb, pt_b) = [await subscriber(config, s) for s in (1111, 2222)]
    try:
        receiver = audio_receiver()
        a = down_track(receiver, ta, 1111, pt_a)
        b = down_track(receiver, tb, 2222, pt_b)
        await feed(receiver, 6, 1)  # the first packet starts the layer
        fast_a, fast_b = a.fast(0), b.fast(0)
        assert fast_a is not None and fast_b is not None
        shared: FastBatch = fast_a[2]
        assert fast_b[2] is shared and fast_a[1].batch is fast_b[1].batch is shared.batch
        batch = shared.batch
        before = (batch.flushes, batch.syscalls, batch.sent, COUNTERS.packets_out)
        await feed(receiver, 7, 20)
        await wait_received(pa, {1111: 21})
        await wait_received(pb, {2222: 21})
        assert batch.sent - before[2] == 40
        assert COUNTERS.packets_out - before[3] == 40
        flushes = batch.flushes - before[0]
        assert 1 <= flushes <= 20  # both copies of a packet leave in the same flush
        if name == "compiled":  # one sendmmsg per flush
            assert batch.syscalls - before[1] == flushes
        # A closes: its target stops, the shared batch goes on carrying B's copies.
        await ta.close()
        assert fast_a[1].closed and not fast_b[1].closed and batch.fd >= 0
        before = (batch.sent, COUNTERS.packets_out, COUNTERS.send_dropped, fast_a[1].packets_sent)
        await feed(receiver, 27, 10)
        await wait_received(pb, {2222: 31})
        assert batch.sent - before[0] == 10
        assert COUNTERS.packets_out - before[1] == 10  # A's skipped copies are not counted
        assert COUNTERS.send_dropped == before[2]
        assert fast_a[1].packets_sent == before[3]
        assert fast_a[1].resend(7 & 511) is False and fast_a[1].send(b"\x80" * 20) is False
        # a transport connecting later joins the same batch
        tc, pc_, pt_c = await subscriber(config, 3333)
        try:
            c = down_track(receiver, tc, 3333, pt_c)
            await feed(receiver, 37, 1)
            fast_c = c.fast(0)
            assert fast_c is not None and fast_c[2] is shared
        finally:
            await tc.close()
            await pc_.close()
        await tb.close()
        assert batch.fd >= 0  # still the socket's
        mux = await open_mux("127.0.0.1", config.udp_port, None)
        assert mux.connections == 0
    finally:
        for transport, pc in ((ta, pa), (tb, pb)):
            await transport.close()
            await pc.close()
        close_muxes()
    assert batch.fd == -1  # closed with the socket


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
async def test_port_range_transports_keep_their_own_batches(name: str) -> None:
    impl = implementation(name)
    config = TransportConfig(fast_path=impl)
    (ta, pa, pt_a), (tb, pb, pt_b) = [await subscriber(config, s) for s in (1111, 2222)]
    try:
        receiver = audio_receiver()
        a, b = down_track(receiver, ta, 1111, pt_a), down_track(receiver, tb, 2222, pt_b)
        await feed(receiver, 2, 5)
        fast_a, fast_b = a.fast(0), b.fast(0)
        assert fast_a is not None and fast_b is not None
        assert fast_a[2] is not fast_b[2]
        await wait_received(pa, {1111: 5})
        await wait_received(pb, {2222: 5})
        await ta.close()
        assert fast_a[1].closed and fast_a[2].batch.fd == -1  # its own: closed with it
        assert fast_b[2].batch.fd >= 0 and not fast_b[1].closed
        await feed(receiver, 7, 5)
        await wait_received(pb, {2222: 10})
    finally:
        for transport, pc in ((ta, pa), (tb, pb)):
            await transport.close()
            await pc.close()


class _NoFlush:
    def add(self, queue: Any) -> None:
        pass


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_fast_senders_close_their_targets_and_only_an_own_batch(name: str) -> None:
    impl = implementation(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flusher: Any = _NoFlush()
        shared = FastBatch(impl.batch(sock.fileno()), flusher)
        senders = FastSenders(shared, impl, own=False)
        forward, target, batch = senders.sender(("127.0.0.1", 9), None)
        assert forward is impl.forward and batch is shared and target.batch is shared.batch
        assert senders.targets == [target]
        senders.close()
        assert target.closed and shared.batch.fd >= 0 and senders.targets == []
        senders.close()  # idempotent
        data = rtp(b"x" * 20, sequence_number=1)
        packet = RtpPacket.parse(data)
        assert forward([target], packet, data, 1, 12, 0, 0.0) == (0, 0)
        assert len(shared.batch) == 0
        own = FastSenders(FastBatch(impl.batch(sock.fileno()), flusher), impl, own=True)
        _, mine, _ = own.sender(("127.0.0.1", 9), None)
        own.close()
        assert mine.closed and own.batch.batch.fd == -1


def test_targets_are_not_kept_alive_by_their_senders() -> None:
    impl = fastpath.PYTHON if fastpath.COMPILED is None else fastpath.COMPILED
    flusher: Any = Flusher(asyncio.new_event_loop())
    senders = FastSenders(FastBatch(impl.batch(-1), flusher), impl, own=True)
    for _ in range(100):
        senders.sender(("127.0.0.1", 9), None)  # each dropped at once, as a closed down track's
    assert senders.targets == []
    flusher._loop.close()


async def test_the_mux_makes_one_batch_per_implementation_and_gso() -> None:
    port = free_udp_port()
    mux = await open_mux("127.0.0.1", port, None)
    impl = implementation("compiled")
    try:
        first = mux.fast_batch(impl, gso=True)
        assert mux.fast_batch(impl, gso=True) is first
        other = mux.fast_batch(impl, gso=False)
        python = mux.fast_batch(fastpath.PYTHON, gso=True)
        assert len({id(first), id(other), id(python)}) == 3
        assert first.batch.gso and not other.batch.gso
    finally:
        close_muxes()
    assert first.batch.fd == other.batch.fd == python.batch.fd == -1
    with pytest.raises(ValueError):
        mux.fast_batch(impl, gso=True)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_a_batch_sent_full_while_queueing_is_counted(name: str) -> None:
    impl = implementation(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        fast = FastBatch(impl.batch(sink.fileno(), capacity=3), _NoFlush())  # type: ignore[arg-type]
        target = impl.target(fast.batch, sink.getsockname())
        before = (COUNTERS.send_datagrams, COUNTERS.send_flushes)
        for i in range(7):
            assert target.send(rtp(b"x", sequence_number=i))
        fast.flush()
        assert fast.batch.sent == 7 and fast.batch.auto_flushes == 2
        assert (COUNTERS.send_datagrams - before[0], COUNTERS.send_flushes - before[1]) == (7, 3)
