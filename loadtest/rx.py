"""A cheap subscriber's receive path: its media socket read in batches, every SRTP packet counted
from its clear RTP header (RFC 3711 §3.1), only the sampled ones handed on for decryption.

A `Table` counts per SSRC (received, highest extended sequence number → loss, octets) and picks
the samples: the first packet of a stream, then every `sample_every`-th. Each sample carries the
stream's *pending* octets (those since the previous sample), so the caller can attribute octets to
the simulcast layer the samples' trailers name without seeing every packet. At most `capacity`
SSRCs get a stream (hostile input cannot grow it); packets of others count in `overflow`.

Two tables count identically (tests/loadtest/test_rx.py): `loadtest._rx.Table` (C, reads with
`recvmmsg`, 64 datagrams a syscall) and `PyTable` here (reads with `recvmsg` until EAGAIN), the
fallback when the extension was not built. `BatchedReader` takes a connected ICE socket away from
the event loop's own reader: it pauses the asyncio datagram transport and puts a duplicate of its
descriptor into the loop's one epoll group (`loadtest._rx.Group` or `PyGroup`). When a member has
data the group waits `poll_interval_s`, then reads every ready socket to the end in one callback;
samples carry the kernel's receive time (SO_TIMESTAMPNS), so the wait is not in the latency.
Whatever is not RTP (STUN, DTLS, SRTCP; RFC 7983, RFC 5761) goes back to the transport's protocol
as if it had read it itself; sending stays with the transport. uvloop's UDP transport cannot
pause, so on uvloop the caller keeps the per-datagram hook (`BatchedReader.supported`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = [
    "COMPILED",
    "RX_BATCH",
    "RX_BUFFER",
    "RX_MODES",
    "STREAM_CAPACITY",
    "BatchedReader",
    "PyGroup",
    "PyTable",
    "Sample",
    "Table",
    "is_rtp",
    "kind",
    "new_table",
    "wakeups",
]

log = logging.getLogger(__name__)

try:
    from loadtest import _rx
except ImportError:  # built by `pip install` with a C compiler; the fallback counts the same
    _rx = None  # type: ignore[assignment]

#: whether `loadtest._rx` was built
COMPILED = _rx is not None

RX_BATCH = 64
#: how a subscriber receives: `auto` (batched, the C table when built), `c`, `python` (batched,
#: the pure-Python table) or `per-datagram` (the event loop's own reader, one callback a
#: datagram, on uvloop: the load tester's path before batching)
RX_MODES = ("auto", "c", "python", "per-datagram")
#: larger datagrams are dropped and counted in `truncated` (no peer of ours sends them)
RX_BUFFER = 4096
STREAM_CAPACITY = 256
#: most datagrams one wake-up reads from one socket (the rest wait for the next wake-up)
MAX_PER_WAKEUP = 4096
#: after data arrives, wait this long before reading, so that each socket has queued several
#: datagrams (latency is measured at the kernel's receive time, so the wait does not show);
#: 0 reads at once
poll_interval_s = 0.1
#: receive buffer asked for (the kernel caps it at net.core.rmem_max)
RCVBUF = 1 << 20

#: (ssrc, octets of the stream since its previous sample, the still encrypted datagram, the
#: kernel's receive time in CLOCK_REALTIME ns or 0 when not known)
Sample = tuple[int, int, bytes, int]
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_STAMP_SPACE = socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("@qq")


def _arrival_ns(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The SO_TIMESTAMPNS receive time (CLOCK_REALTIME ns) in `recvmsg` ancillary data, or 0."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return int(seconds * 1_000_000_000 + nanoseconds)
    return 0


Other = tuple[bytes, Any]
#: (ssrc, base sequence number, highest extended sequence number, received, octets, pending)
StreamRow = tuple[int, int, int, int, int, int]


class Table(Protocol):
    packets: int
    octets: int
    overflow: int
    truncated: int

    def feed(self, datagrams: Sequence[Other], /) -> tuple[list[Sample], list[Other]]: ...

    def count_clear(self, data: bytes, /) -> int | None: ...

    def streams(self) -> list[StreamRow]: ...


def is_rtp(data: bytes) -> bool:
    """RTP (first byte 128–191, RFC 7983) and not RTCP (PT 192–223, RFC 5761 §4)."""
    return len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224


class PyTable:
    """The pure-Python table: the reference `loadtest._rx.Table` is tested against."""

    __slots__ = (
        "_streams",
        "capacity",
        "octets",
        "overflow",
        "packets",
        "sample_every",
        "truncated",
    )

    def __init__(self, sample_every: int, capacity: int = STREAM_CAPACITY) -> None:
        if sample_every < 1 or not 1 <= capacity <= 65536:
            raise ValueError("sample_every >= 1 and 1 <= capacity <= 65536")
        self.sample_every = sample_every
        self.capacity = capacity
        #: ssrc -> [base, highest, received, octets, pending, since_sample]
        self._streams: dict[int, list[int]] = {}
        self.packets = self.octets = self.overflow = self.truncated = 0

    def _count(self, data: bytes) -> list[int] | None:
        size = len(data)
        self.packets += 1
        self.octets += size
        ssrc = int.from_bytes(data[8:12], "big")
        seq = (data[2] << 8) | data[3]
        stream = self._streams.get(ssrc)
        if stream is None:
            if len(self._streams) >= self.capacity:
                self.overflow += 1
                return None
            stream = self._streams[ssrc] = [seq, seq, 1, size, 0, self.sample_every]
        else:
            stream[2] += 1
            delta = (seq - stream[1]) & 0xFFFF
            if delta < 0x8000:
                stream[1] += delta
            stream[3] += size
        return stream

    def feed(
        self, datagrams: Sequence[Other], /, stamps: Sequence[Any] = ()
    ) -> tuple[list[Sample], list[Other]]:
        """Count `datagrams`; `stamps` (from `drain`) are their `recvmsg` ancillary data."""
        samples: list[Sample] = []
        others: list[Other] = []
        every = self.sample_every
        for i, (data, addr) in enumerate(datagrams):
            if not is_rtp(data):
                others.append((data, addr))
                continue
            stream = self._count(data)
            if stream is None:
                continue
            stream[5] += 1
            if stream[5] >= every:
                stream[5] = 0
                arrival = _arrival_ns(stamps[i]) if stamps else 0
                samples.append((int.from_bytes(data[8:12], "big"), stream[4], data, arrival))
                stream[4] = len(data)
            else:
                stream[4] += len(data)
        return samples, others

    def drain(self, sock: socket.socket, max_datagrams: int = MAX_PER_WAKEUP) -> Any:
        """Read `sock` (non-blocking) until it is empty, then `feed` what was read."""
        read: list[Other] = []
        stamps: list[Any] = []
        recvmsg = sock.recvmsg
        try:
            while len(read) < max_datagrams:
                data, ancillary, flags, addr = recvmsg(RX_BUFFER + 1, _STAMP_SPACE)
                if len(data) > RX_BUFFER or flags & socket.MSG_TRUNC:
                    self.truncated += 1
                else:
                    read.append((data, addr))
                    stamps.append(ancillary)
        except BlockingIOError:
            pass
        except OSError:
            if not read:  # else report what was read (a UDP socket's error is read once)
                raise
        return self.feed(read, stamps)

    def count_clear(self, data: bytes, /) -> int | None:
        """Count a packet aiortc already decrypted (never a sample); its SSRC, or None when it is
        short or its SSRC found no room."""
        if len(data) < 12 or self._count(data) is None:
            return None
        return int.from_bytes(data[8:12], "big")

    def streams(self) -> list[StreamRow]:
        return [(ssrc, *s[:5]) for ssrc, s in self._streams.items()]  # type: ignore[misc]


def kind(table: Table) -> str:
    """What counts for `table`, for the report: `recvmmsg (C)` or `python`."""
    return "python" if isinstance(table, PyTable) else "recvmmsg (C)"


def new_table(sample_every: int, *, compiled: bool | None = None) -> Table:
    """A table: the C one when built (or `compiled=True`, which then requires it)."""
    if compiled is None:
        compiled = _rx is not None
    if compiled:
        if _rx is None:
            raise RuntimeError("loadtest._rx is not built (pip install -e . with a C compiler)")
        table: Table = _rx.Table(sample_every, STREAM_CAPACITY)
        return table
    return PyTable(sample_every, STREAM_CAPACITY)


class PyGroup:
    """The pure-Python `loadtest._rx.Group`: member sockets behind one `select.epoll`."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._members: dict[int, tuple[PyTable, Any, socket.socket]] = {}

    def add(self, fd: int, table: PyTable, owner: Any, /) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._members[fd] = (table, owner, socket.socket(fileno=fd))

    def remove(self, fd: int, /) -> None:
        entry = self._members.pop(fd, None)
        if entry is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
            entry[2].detach()  # the fd stays the caller's

    def poll(self) -> list[tuple[Any, list[Sample], list[Other], int]]:
        out: list[tuple[Any, list[Sample], list[Other], int]] = []
        for fd, _ in self._epoll.poll(0, 256):
            entry = self._members.get(fd)
            if entry is None:
                continue
            table, owner, sock = entry
            try:
                samples, others = table.drain(sock)
            except OSError as exc:
                out.append((owner, [], [], exc.errno or 0))
                continue
            if samples or others:
                out.append((owner, samples, others, 0))
        return out

    def fileno(self) -> int:
        return self._epoll.fileno()

    def members(self) -> int:
        return len(self._members)

    def close(self) -> None:
        for fd in list(self._members):
            self.remove(fd)
        self._epoll.close()


class _Watch:
    """One group of an event loop, and how often the loop woke it up."""

    def __init__(self, loop: asyncio.AbstractEventLoop, compiled: bool) -> None:
        self.group: Any = _rx.Group() if compiled else PyGroup()
        self.compiled = compiled
        self.loop = loop
        self.wakeups = 0
        self._timer: asyncio.TimerHandle | None = None
        loop.add_reader(self.group.fileno(), self._readable)

    def _readable(self) -> None:
        if poll_interval_s <= 0:
            self._read()
            return
        # Let the sockets' queues fill for one interval: a syscall then reads several datagrams.
        self.loop.remove_reader(self.group.fileno())
        self._timer = self.loop.call_later(poll_interval_s, self._rearm)

    def _rearm(self) -> None:
        self._timer = None
        self._read()
        self.loop.add_reader(self.group.fileno(), self._readable)

    def _read(self) -> None:
        self.wakeups += 1
        for owner, samples, others, err in self.group.poll():
            try:
                owner.handle(samples, others, err)
            except Exception:  # one subscriber's fault never stops the others' reads
                log.exception("batched receive: handler failed")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(Exception):  # the loop may be closed already
            self.loop.remove_reader(self.group.fileno())
        self.group.close()


#: the groups of each running loop, by whether their tables are compiled
_watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool, _Watch]] = (
    weakref.WeakKeyDictionary()
)


def wakeups() -> int:
    """How often the running loop woke its groups up (one wake-up reads every ready socket)."""
    return sum(w.wakeups for w in _watches.get(asyncio.get_running_loop(), {}).values())


class BatchedReader:
    """Reads one connected datagram transport's socket in batches; see the module docstring."""

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        deliver: Callable[[bytes, Any], None],
        table: Table,
        on_samples: Callable[[list[Sample]], None],
    ) -> None:
        self._transport = transport
        self._deliver = deliver
        self._on_samples = on_samples
        loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        compiled = not isinstance(table, PyTable)
        # Samples carry the kernel's receive time: latency without our own read delay. The
        # queue holds a poll interval's worth of a key-frame burst.
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RCVBUF:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        watches = _watches.setdefault(loop, {})
        if compiled not in watches:
            watches[compiled] = _Watch(loop, compiled)
        self._watch = watches[compiled]
        transport.pause_reading()  # type: ignore[attr-defined]
        self._watch.group.add(self._fd, table, self)

    @staticmethod
    def supported(transport: Any) -> bool:
        """Whether the transport can hand its socket over (asyncio's selector loop can)."""
        return (
            hasattr(transport, "pause_reading") and transport.get_extra_info("socket") is not None
        )

    def handle(self, samples: list[Sample], others: list[Other], err: int) -> None:
        if err:  # what the transport would have told its protocol
            protocol = self._transport.get_protocol()
            protocol.error_received(OSError(err, os.strerror(err)))  # type: ignore[attr-defined]
        for data, addr in others:
            self._deliver(data, addr)
        if samples:
            self._on_samples(samples)

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        watch = self._watch
        watch.group.remove(self._fd)
        self._sock.close()
        if not watch.group.members():
            watch.close()
            _watches.get(watch.loop, {}).pop(watch.compiled, None)
