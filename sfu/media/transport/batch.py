"""Batched UDP sends: the datagrams one socket is given during an event-loop iteration.

A `SendQueue` collects the SRTP/SRTCP datagrams a `PeerTransport` sends to its remote address;
the first datagram queued in an iteration registers the queue with the loop's `Flusher`, whose
single ``loop.call_soon`` callback sends every registered queue once the current callbacks
(typically the fan-out of one or more received packets) have run. So no timer is involved and a
datagram waits at most until the end of the loop iteration that produced it.

A run of equal-size datagrams (the packets of one video frame to one subscriber usually are;
the last of a run may be shorter) goes out in one ``sendmsg`` with a ``UDP_SEGMENT`` control
message (UDP GSO, Linux ≥ 4.18): one syscall and one trip down the stack for up to 64 datagrams,
which the kernel (or the NIC) splits. Anything else goes out with one ``sendto`` each. Order is
kept: the queue is sent in the order it was filled. A send that would block drops its
datagrams (counted by the ``on_drop`` callback and `count_send_drop`); nothing waits and nothing
grows beyond `MAX_QUEUE` datagrams per queue. That also bounds a queue's bytes: every datagram
comes out of an `SrtpProtector`, whose buffer is `sfu.media.transport.srtp.BUFFER_SIZE` (2,048) bytes,
so one queue holds at most `MAX_QUEUE_BYTES` (2 MiB), and only until the end of the iteration. If the kernel refuses GSO on a socket, that queue stops using
it and sends the run one datagram at a time.

The socket is a duplicate of the event loop transport's descriptor (the same open socket, so the
same port and non-blocking mode); `close` releases it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sfu.media.transport.latency import ForwardLatency
from sfu.media.transport.srtp import BUFFER_SIZE
from sfu.metrics import COUNTERS, SEND_BATCH_BUCKETS

__all__ = [
    "MAX_QUEUE",
    "MAX_QUEUE_BYTES",
    "FastBatch",
    "FastSenders",
    "FlushGroup",
    "Flusher",
    "SendQueue",
    "count_send_drop",
    "flusher_for",
]

#: setsockopt/cmsg level SOL_UDP, option UDP_SEGMENT (linux/udp.h); Python ≥ 3.12 names them
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
#: UDP_MAX_SEGMENTS in the kernel
MAX_SEGMENTS = 64
#: the payload of one UDP datagram before segmentation (IPv4 limit 65507, with room to spare)
MAX_GSO_BYTES = 65000
#: datagrams one queue may hold within one loop iteration; beyond this, `send` refuses
MAX_QUEUE = 1024
#: what that is in bytes at most: no protected datagram is longer than the SRTP buffer
MAX_QUEUE_BYTES = MAX_QUEUE * BUFFER_SIZE
#: errors that mean "this socket or route cannot do GSO", not "this datagram failed"
_GSO_UNSUPPORTED = frozenset(
    (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE)
)
_SEGMENT_SIZE = struct.Struct("=H")


def count_send_drop(datagram: bytes, size: int) -> None:
    """Count one datagram the transport dropped instead of sending (`sfu_send_dropped_total`).

    An RTP packet was counted as forwarded (`livekit_packet_total{direction="outgoing"}`) when
    the down track handed it on; it is uncounted here, `size` bytes with it, so that total counts
    only what reached the socket. RTCP is told apart by its packet type (RFC 5761 §4: 192-223).
    """
    COUNTERS.send_dropped += 1
    if not (len(datagram) > 1 and 192 <= datagram[1] <= 223):
        COUNTERS.packets_out -= 1
        COUNTERS.bytes_out -= size


def count_flush(count: int) -> None:
    """One socket flush of `count` datagrams (`sfu_send_flushes_total`, the batch-size histogram)."""
    COUNTERS.send_flushes += 1
    COUNTERS.send_datagrams += count
    bucket = 0
    while bucket < len(SEND_BATCH_BUCKETS) and count > SEND_BATCH_BUCKETS[bucket]:
        bucket += 1
    COUNTERS.send_batch_sizes[bucket] += 1


class _Flushable(Protocol):
    def flush(self) -> object: ...


class Flusher:
    """Runs the registered queues' `flush` once, at the end of the current loop iteration.

    It also ends the loop's forwarding-latency samples (`latency`, `sfu.media.transport.latency`):
    a sample started in an iteration is taken once that iteration's flush is done."""

    __slots__ = ("_loop", "_pending", "_scheduled", "latency")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[_Flushable] = []
        self._scheduled = False
        self.latency = ForwardLatency(loop, self.schedule)

    def add(self, queue: _Flushable) -> None:
        self._pending.append(queue)
        if not self._scheduled:  # `schedule`, inlined: this runs for every queue
            self._scheduled = True
            self._loop.call_soon(self.run)

    def schedule(self) -> None:
        """Run at the end of this iteration, whether or not anything is queued."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.run)

    def run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for queue in pending:
            queue.flush()
        if self.latency.in_flight:
            self.latency.finish()


_FLUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Flusher] = (
    weakref.WeakKeyDictionary()
)


def flusher_for(loop: asyncio.AbstractEventLoop) -> Flusher:
    """The one `Flusher` of ``loop`` (so one callback per iteration serves every transport)."""
    flusher = _FLUSHERS.get(loop)
    if flusher is None:
        flusher = _FLUSHERS[loop] = Flusher(loop)
    return flusher


class SendQueue:
    """Datagrams for one remote address on one socket, sent together by the loop's `Flusher`."""

    __slots__ = ("_addr", "_flusher", "_gso", "_on_drop", "_queue", "_sock")

    def __init__(
        self,
        fileno: int,
        addr: Any,
        flusher: Flusher,
        on_drop: Callable[[bytes], None],
        *,
        gso: bool = True,
    ) -> None:
        self._sock: socket.socket | None = socket.socket(fileno=os.dup(fileno))
        self._sock.setblocking(False)
        self._addr = addr
        self._flusher = flusher
        self._on_drop = on_drop
        self._gso = gso
        self._queue: list[bytes] = []

    @classmethod
    def for_transport(
        cls,
        transport: asyncio.DatagramTransport,
        addr: Any,
        on_drop: Callable[[bytes], None],
        *,
        gso: bool = True,
    ) -> SendQueue:
        """A queue on the socket of an event loop datagram transport (uvloop's or asyncio's)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            raise ValueError("the transport exposes no socket")
        loop = asyncio.get_running_loop()
        return cls(sock.fileno(), addr, flusher_for(loop), on_drop, gso=gso)

    @property
    def gso(self) -> bool:
        return self._gso

    def send(self, data: bytes) -> bool:
        """Queue one datagram; False if the queue is closed or full (the caller counts a drop)."""
        queue = self._queue
        if not queue:
            if self._sock is None:
                return False
            self._flusher.add(self)
        elif len(queue) >= MAX_QUEUE:
            COUNTERS.limit_exceeded("send_queue")
            return False
        queue.append(data)
        return True

    def close(self) -> None:
        """Drop what is queued (counted as dropped) and release the duplicated descriptor.
        Idempotent."""
        for dropped in self._queue:
            count_send_drop(dropped, len(dropped))
        self._queue = []
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def flush(self) -> None:
        """Send everything queued, in order: GSO runs of equal sizes, else one datagram each."""
        queue, self._queue = self._queue, []
        sock = self._sock
        count = len(queue)
        if sock is None or not count:
            return
        count_flush(count)
        addr = self._addr
        i = 0
        while i < count:
            data = queue[i]
            end = i + 1
            if self._gso and end < count:
                size = len(data)
                limit = min(count, i + min(MAX_SEGMENTS, MAX_GSO_BYTES // size))
                while end < limit and len(queue[end]) == size:
                    end += 1
                if end < limit and len(queue[end]) < size:
                    end += 1  # the last segment may be shorter
            COUNTERS.send_syscalls += 1
            try:
                if end - i == 1:
                    sock.sendto(data, addr)
                else:
                    sock.sendmsg(
                        queue[i:end],
                        [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(len(data)))],
                        0,
                        addr,
                    )
                    COUNTERS.send_gso_datagrams += end - i
            except BlockingIOError:
                for dropped in queue[i:end]:
                    count_send_drop(dropped, len(dropped))
                    self._on_drop(dropped)
            except OSError as exc:
                if end - i > 1 and exc.errno in _GSO_UNSUPPORTED:
                    self._gso = False  # and send this run again, one datagram at a time
                    continue
                for dropped in queue[i:end]:
                    count_send_drop(dropped, len(dropped))
                    self._on_drop(dropped)
            i = end


class FastBatch:
    """A compiled-path send batch (`sfu.media.fastpath`'s `Batch`) of one transport, flushed by
    the loop's `Flusher` like a `SendQueue`: `schedule` registers it once per iteration, `flush`
    sends it and turns what the batch counted into the process counters (a full batch sent while
    queueing counts as a flush of its capacity). Only RTP goes through
    it (forwarded copies and NACK answers), so a datagram the socket refused uncounts one
    outgoing packet; its bytes are not known here (they were counted as plaintext)."""

    __slots__ = ("_flusher", "_seen", "batch", "queued")

    def __init__(self, batch: Any, flusher: Flusher) -> None:
        self.batch = batch
        self._flusher = flusher
        self.queued = False
        #: dropped, syscalls, gso datagrams, auto flushes, fan-out flushes and their datagrams
        self._seen = (0, 0, 0, 0, 0, 0)

    @classmethod
    def beside(cls, queue: SendQueue, impl: Any) -> FastBatch:
        """A batch of `impl` (an `sfu.media.fastpath.Implementation`) on `queue`'s socket, with
        its GSO setting, flushed by its flusher."""
        sock = queue._sock
        if sock is None:
            raise ValueError("the queue is closed")
        return cls(impl.batch(sock.fileno(), gso=queue.gso), queue._flusher)

    def schedule(self) -> None:
        if not self.queued:
            self.queued = True
            self._flusher.add(self)

    def group(self, batches: tuple[FastBatch, ...]) -> FlushGroup:
        """`batches` (this one among them) flushed together by this one's flusher."""
        return FlushGroup(batches, self._flusher)

    def flush(self) -> None:
        self.queued = False
        batch = self.batch
        queued = len(batch)
        batch.flush()
        if queued:
            count_flush(queued)
        self._account()

    def _account(self) -> None:
        batch = self.batch
        seen = (batch.dropped, batch.syscalls, batch.gso_datagrams, batch.auto_flushes,
                batch.fanout_flushes, batch.fanout_datagrams)  # fmt: skip
        dropped = seen[0] - self._seen[0]
        COUNTERS.send_syscalls += seen[1] - self._seen[1]
        COUNTERS.send_gso_datagrams += seen[2] - self._seen[2]
        for _ in range(seen[3] - self._seen[3]):  # sent while queueing: a full batch each
            count_flush(batch.capacity)
        fanouts = seen[4] - self._seen[4]  # sent in the middle of a fan-out: their mean size each
        for _ in range(fanouts):
            count_flush((seen[5] - self._seen[5]) // fanouts)
        self._seen = seen
        if dropped:
            COUNTERS.send_dropped += dropped
            COUNTERS.packets_out -= dropped

    def close(self) -> None:
        """Drop what is queued (counted) and release the batch's descriptor. Idempotent."""
        self.batch.close()
        self._account()


class FastSenders:
    """One transport's fast-path targets and the `FastBatch` they queue on: the transport's own
    (a socket per transport, the port range) or its mux socket's (`rtc.udp_port`: one batch for
    every transport on the socket, `sfu.media.transport.udpmux.UdpMux.fast_batch`). `close`
    closes every target handed out, so none is built, queued or counted again, and closes the
    batch only when it is the transport's own: a shared one lives as long as its socket."""

    __slots__ = ("_impl", "_own", "_targets", "batch")

    def __init__(self, batch: FastBatch, impl: Any, *, own: bool) -> None:
        self.batch = batch
        self._impl = impl
        self._own = own
        #: the targets handed out; a down track that is dropped takes its target with it
        self._targets: weakref.WeakSet[Any] = weakref.WeakSet()

    def sender(self, addr: Any, session: Any) -> tuple[Any, Any, FastBatch]:
        """(forward, a target sending to `addr` protected with `session`, the batch)."""
        target = self._impl.target(self.batch.batch, addr, session)
        self._targets.add(target)
        return self._impl.forward, target, self.batch

    @property
    def targets(self) -> Sequence[Any]:
        return list(self._targets)

    def close(self) -> None:
        """Close the targets, and the batch if it is this transport's own. Idempotent."""
        for target in list(self._targets):
            target.closed = True
        self._targets.clear()
        if self._own:
            self.batch.close()


class FlushGroup:
    """The `FastBatch`es of one fan-out (a layer's fast down tracks), scheduled together: one
    registration per packet however many subscribers it went to."""

    __slots__ = ("_flusher", "batches", "queued")

    def __init__(self, batches: tuple[FastBatch, ...], flusher: Flusher) -> None:
        self.batches = batches
        self._flusher = flusher
        self.queued = False

    def schedule(self) -> None:
        if not self.queued:
            self.queued = True
            self._flusher.add(self)

    def flush(self) -> None:
        self.queued = False
        for batch in self.batches:
            if len(batch.batch):
                batch.flush()
