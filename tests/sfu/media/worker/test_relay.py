"""The relay between workers: batching per loop iteration, the frame kinds, bounds, and the
receivers that sit at either end of it."""

from __future__ import annotations

import asyncio
import secrets

from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpPacket
from sfu.media.worker import relay as relay_module
from sfu.media.worker.relay import HomeReceiver, Relay, RelaySink, ReplicaReceiver


def rtp(sequence: int, ssrc: int = 0x1234, size: int = 100) -> bytes:
    header = bytes([0x80, 96]) + sequence.to_bytes(2, "big") + (sequence * 3000).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + bytes(size)


async def relays() -> tuple[Relay, Relay]:
    namespace = f"test-{secrets.token_hex(4)}"
    a, b = Relay(namespace, 0), Relay(namespace, 1)
    a.start()
    b.start()
    return a, b


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_one_iteration_of_packets_is_one_datagram() -> None:
    a, b = await relays()
    got: list[tuple[int, int, bytes]] = []
    b.on_rtp = lambda track, layer, data: got.append((track, layer, data))
    try:
        for n in range(40):  # a key frame's burst: more than a Unix socket queues datagrams
            a.send_rtp(1, 7, 2, rtp(n))
        await settle()
        assert [g[2] for g in got] == [rtp(n) for n in range(40)]
        assert {(g[0], g[1]) for g in got} == {(7, 2)}
        assert a.datagrams == 1 and a.sent == 40 and b.received == 40 and a.dropped == 0
    finally:
        a.close()
        b.close()


async def test_sender_reports_and_keyframe_requests() -> None:
    a, b = await relays()
    reports: list[tuple[int, int, rtcp.SenderReport]] = []
    keyframes: list[tuple[int, int]] = []
    b.on_sender_report = lambda track, layer, sr: reports.append((track, layer, sr))
    a.on_keyframe = lambda track, layer: keyframes.append((track, layer))
    try:
        a.send_sender_report(1, 5, 1, 0xAABB, 1 << 40, 90000)
        b.send_keyframe_request(0, 5, 2)
        await settle()
        assert len(reports) == 1
        track, layer, sr = reports[0]
        assert (track, layer, sr.ssrc, sr.ntp_timestamp, sr.rtp_timestamp) == (
            5, 1, 0xAABB, 1 << 40, 90000,
        )  # fmt: skip
        assert keyframes == [(5, 2)]
    finally:
        a.close()
        b.close()


async def test_nobody_there_is_counted_as_dropped() -> None:
    a, b = await relays()
    b.close()
    try:
        for n in range(3):
            a.send_rtp(1, 1, 0, rtp(n))
        a.send_rtp(5, 1, 0, rtp(9))  # a worker index that never existed
        await settle()
        assert a.dropped == 4
    finally:
        a.close()


async def test_a_full_socket_keeps_a_bounded_backlog(monkeypatch: object) -> None:
    a, b = await relays()
    loop = asyncio.get_running_loop()
    loop.remove_reader(b.sock.fileno())  # b stops reading: its queue fills
    try:
        sent = 0
        for _ in range(relay_module.MAX_BACKLOG + 200):
            a.send_rtp(1, 1, 0, rtp(sent))
            sent += 1
            a.flush()  # one datagram each
        kept = sum(len(q) for q in a._backlog.values())
        assert 0 < kept <= relay_module.MAX_BACKLOG
        assert a.dropped > 0 and a.dropped + kept + a.datagrams == sent
        got: list[bytes] = []
        b.on_rtp = lambda track, layer, data: got.append(data)
        loop.add_reader(b.sock.fileno(), b._readable)  # b reads again: the backlog drains
        for _ in range(100):
            if not a._backlog:
                break
            await asyncio.sleep(0.01)
        await settle()
        assert not a._backlog and len(got) == sent - a.dropped
        numbers = [RtpPacket.parse(data).sequence_number for data in got]
        assert numbers == sorted(numbers)  # in order, the oldest dropped first
    finally:
        a.close()
        b.close()


async def test_replica_asks_the_home_worker_for_key_frames() -> None:
    a, b = await relays()
    asked: list[tuple[int, int]] = []
    a.on_keyframe = lambda track, layer: asked.append((track, layer))
    replica = ReplicaReceiver(
        kind="video", mime_type="video/VP8", clock_rate=90000, layer_count=3, send_rtcp=print
    )
    replica.relay, replica.track, replica.home = b, 9, 0
    try:
        replica.request_keyframe(1)
        replica.request_keyframe_all()
        await settle()
        assert asked == [(9, 1), (9, 0), (9, 1), (9, 2)]
    finally:
        a.close()
        b.close()


async def test_home_receiver_relays_packets_and_sender_reports() -> None:
    a, b = await relays()
    packets: list[bytes] = []
    reports: list[int] = []
    b.on_rtp = lambda track, layer, data: packets.append(data)
    b.on_sender_report = lambda track, layer, sr: reports.append(sr.rtp_timestamp)
    home = HomeReceiver(
        kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1, send_rtcp=print
    )
    home.relay, home.track = a, 3
    sink = RelaySink(a, 1, 3)
    home.relay_sinks = {1: sink}
    home.add_sink(sink)
    try:
        assert sink.subscribed_layer == -1  # the control process adds up demand itself
        home.on_rtp(RtpPacket.parse(rtp(1)), 0)
        home.on_sender_report(0, rtcp.SenderReport(0x1234, 1 << 32, 4800, 1, 100))
        await settle()
        assert packets == [rtp(1)] and reports == [4800]
    finally:
        a.close()
        b.close()
