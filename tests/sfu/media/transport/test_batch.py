"""SendQueue and Flusher: one flush per loop iteration, GSO runs, order, drops, fallback, close."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from sfu.media.transport.batch import MAX_QUEUE, MAX_QUEUE_BYTES, SendQueue, flusher_for
from sfu.media.transport.srtp import BUFFER_SIZE, SrtpError, SrtpProtector
from sfu.metrics import COUNTERS


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def datagram(index: int, size: int) -> bytes:
    return bytes([index & 0xFF]) * size


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65536) for _ in range(count)]


def make_queue(sender: socket.socket, receiver: socket.socket, **kwargs: Any) -> SendQueue:
    dropped: list[bytes] = kwargs.pop("dropped", [])
    loop = asyncio.get_running_loop()
    return SendQueue(
        sender.fileno(), receiver.getsockname(), flusher_for(loop), dropped.append, **kwargs
    )


class FakeSocket:
    """Stands in for the queue's socket: records calls, raises what it is told to."""

    def __init__(self, sendmsg_error: OSError | None = None, sendto_error: OSError | None = None):
        self.sendmsg_error = sendmsg_error
        self.sendto_error = sendto_error
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: Any) -> int:
        self.calls.append(("sendto", [data]))
        if self.sendto_error is not None:
            raise self.sendto_error
        return len(data)

    def sendmsg(self, buffers: list[bytes], cmsg: Any, flags: int, addr: Any) -> int:
        self.calls.append(("sendmsg", list(buffers)))
        if self.sendmsg_error is not None:
            raise self.sendmsg_error
        return sum(map(len, buffers))

    def close(self) -> None:
        self.closed = True


async def test_one_iteration_is_one_flush_and_order_is_kept(
    sender: socket.socket, receiver: socket.socket
) -> None:
    queue = make_queue(sender, receiver)
    try:
        sizes = [1100, 1100, 1100, 700, 1100, 1100, 90, 90, 90, 90, 40, 1200]
        sent = [datagram(i, size) for i, size in enumerate(sizes)]
        syscalls, gso = COUNTERS.send_syscalls, COUNTERS.send_gso_datagrams
        for data in sent:
            assert queue.send(data)
        assert COUNTERS.send_syscalls == syscalls  # nothing leaves before the loop turns
        await asyncio.sleep(0)
        # GSO runs (a shorter datagram may end a run): 1100×3 + 700, 1100×2 + 90, 90×3 + 40;
        # then 1200 alone, with sendto
        assert COUNTERS.send_syscalls - syscalls == 4
        assert COUNTERS.send_gso_datagrams - gso == 4 + 3 + 4
        assert receive(receiver, len(sent)) == sent
    finally:
        queue.close()


async def test_without_gso_every_datagram_is_one_sendto(
    sender: socket.socket, receiver: socket.socket
) -> None:
    queue = make_queue(sender, receiver, gso=False)
    try:
        sent = [datagram(i, 1000) for i in range(10)]
        syscalls = COUNTERS.send_syscalls
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        assert COUNTERS.send_syscalls - syscalls == 10
        assert receive(receiver, 10) == sent
    finally:
        queue.close()


async def test_runs_are_cut_at_64_segments(sender: socket.socket, receiver: socket.socket) -> None:
    queue = make_queue(sender, receiver)
    try:
        sent = [datagram(i, 200) for i in range(150)]
        syscalls = COUNTERS.send_syscalls
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        assert COUNTERS.send_syscalls - syscalls == 3  # 64 + 64 + 22
        assert receive(receiver, 150) == sent
    finally:
        queue.close()


async def test_many_queues_share_one_callback_per_iteration(
    sender: socket.socket, receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[Any] = []
    original = loop.call_soon

    def counting_call_soon(callback: Any, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(callback)
        return original(callback, *args, **kwargs)

    queues = [make_queue(sender, receiver) for _ in range(3)]
    flusher = flusher_for(loop)
    try:
        monkeypatch.setattr(loop, "call_soon", counting_call_soon)
        for round_ in range(2):
            for i, queue in enumerate(queues):
                queue.send(datagram(10 * round_ + i, 100))
                queue.send(datagram(10 * round_ + i, 100))
            assert scheduled.count(flusher.run) == round_ + 1
            await asyncio.sleep(0)
        assert len(receive(receiver, 12)) == 12
    finally:
        monkeypatch.undo()
        for queue in queues:
            queue.close()


async def test_a_send_that_would_block_drops_and_reports(
    sender: socket.socket, receiver: socket.socket
) -> None:
    dropped: list[bytes] = []
    queue = make_queue(sender, receiver, dropped=dropped)
    real = queue._sock
    fake = FakeSocket(sendmsg_error=BlockingIOError(), sendto_error=BlockingIOError())
    queue._sock = fake  # type: ignore[assignment]
    try:
        sent = [datagram(1, 500), datagram(2, 500), datagram(3, 80)]
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        assert dropped == sent
        assert [kind for kind, _ in fake.calls] == ["sendmsg"]
        assert queue.gso  # blocking is not a reason to give up GSO
        # the queue is empty again and keeps working
        queue.send(datagram(4, 10))
        await asyncio.sleep(0)
        assert dropped == [*sent, datagram(4, 10)]
    finally:
        queue._sock = real
        queue.close()


async def test_gso_refused_falls_back_to_one_by_one(
    sender: socket.socket, receiver: socket.socket
) -> None:
    dropped: list[bytes] = []
    queue = make_queue(sender, receiver, dropped=dropped)
    real = queue._sock
    fake = FakeSocket(sendmsg_error=OSError(errno.EIO, "no checksum offload"))
    queue._sock = fake  # type: ignore[assignment]
    try:
        sent = [datagram(i, 500) for i in range(3)]
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        assert fake.calls == [("sendmsg", sent)] + [("sendto", [d]) for d in sent]
        assert not queue.gso and dropped == []
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        assert [kind for kind, _ in fake.calls[4:]] == ["sendto"] * 3
    finally:
        queue._sock = real
        queue.close()


async def test_other_send_errors_drop_only_that_send(
    sender: socket.socket, receiver: socket.socket
) -> None:
    dropped: list[bytes] = []
    queue = make_queue(sender, receiver, dropped=dropped, gso=False)
    real = queue._sock
    fake = FakeSocket(sendto_error=OSError(errno.ENETUNREACH, "unreachable"))
    queue._sock = fake  # type: ignore[assignment]
    try:
        sent = [datagram(i, 100 + i) for i in range(3)]
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        assert dropped == sent and len(fake.calls) == 3
    finally:
        queue._sock = real
        queue.close()


async def test_the_queue_is_bounded(sender: socket.socket, receiver: socket.socket) -> None:
    queue = make_queue(sender, receiver)
    hits = COUNTERS.limits_exceeded.get("send_queue", 0)
    try:
        accepted = sum(queue.send(datagram(i, 20)) for i in range(MAX_QUEUE + 10))
        assert accepted == MAX_QUEUE
        assert COUNTERS.limits_exceeded.get("send_queue", 0) == hits + 10
        await asyncio.sleep(0)
        assert queue.send(datagram(0, 20))  # room again after the flush
        await asyncio.sleep(0)
    finally:
        queue.close()


async def test_close_releases_the_duplicate_descriptor(
    sender: socket.socket, receiver: socket.socket
) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    queue = make_queue(sender, receiver)
    assert len(set(os.listdir("/proc/self/fd")) - fds_before) == 1
    queue.send(datagram(1, 10))
    queue.close()
    queue.close()  # idempotent
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()
    assert not queue.send(datagram(2, 10))
    await asyncio.sleep(0)  # the pending flush finds the queue closed and sends nothing
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(100)
    # the original socket is untouched
    sender.sendto(b"still open", receiver.getsockname())
    assert receiver.recv(100) == b"still open"


async def test_for_transport_uses_the_event_loop_transports_socket(
    receiver: socket.socket,
) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    dropped: list[bytes] = []
    try:
        queue = SendQueue.for_transport(transport, receiver.getsockname(), dropped.append)
        sent = [datagram(i, 300) for i in range(5)]
        for data in sent:
            queue.send(data)
        await asyncio.sleep(0)
        got = [receiver.recvfrom(65536) for _ in sent]
        assert [data for data, _ in got] == sent and dropped == []
        assert {source for _, source in got} == {transport.get_extra_info("sockname")}
        queue.close()
    finally:
        transport.close()


async def test_dropped_datagrams_are_counted_and_no_longer_count_as_forwarded(
    sender: socket.socket, receiver: socket.socket
) -> None:
    queue = make_queue(sender, receiver, gso=False)
    real = queue._sock
    queue._sock = FakeSocket(sendto_error=BlockingIOError())  # type: ignore[assignment]
    rtp_packets = [bytes([0x80, 96]) + bytes(98), bytes([0x80, 96]) + bytes(48)]
    sender_report = bytes([0x80, 200]) + bytes(50)
    before = (COUNTERS.send_dropped, COUNTERS.packets_out, COUNTERS.bytes_out)
    try:
        for data in [*rtp_packets, sender_report]:
            queue.send(data)
        await asyncio.sleep(0)
    finally:
        queue._sock = real
    assert COUNTERS.send_dropped == before[0] + 3
    assert COUNTERS.packets_out == before[1] - 2  # RTP only: the SR was never counted there
    assert COUNTERS.bytes_out == before[2] - 150
    queue.send(rtp_packets[0])
    queue.close()  # what close throws away is a drop too
    assert COUNTERS.send_dropped == before[0] + 4


def test_a_queue_is_bounded_in_bytes_by_the_srtp_buffer() -> None:
    assert MAX_QUEUE_BYTES == MAX_QUEUE * BUFFER_SIZE <= 2 * 1024 * 1024
    session = Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    protect = SrtpProtector(session, rtcp=False)
    assert len(protect(bytes([0x80, 96]) + bytes(1000))) <= BUFFER_SIZE
    with pytest.raises(SrtpError):  # nothing longer than the buffer is ever queued
        protect(bytes([0x80, 96]) + bytes(BUFFER_SIZE))
