"""The receive path of the shared UDP socket in pure Python: the reference of `sfu.media._fastrecv`.

`Reader.drain(budget)` reads up to `budget` datagrams from the socket and, per datagram: an SRTP
packet (first byte 128..191, RFC 7983; second byte not an RTCP packet type 192..223, RFC 5761) of
at least 12 bytes from the source address of a registered `Route`, whose SSRC the route knows
(`Route.learn`), is unprotected with the route's session and handed to its `on_rtp` as bytes (a
packet libsrtp refuses is dropped and counted in `unprotect_failures`); a datagram over
`DATAGRAM_SIZE` bytes is dropped and counted in `truncated`; everything else goes to
`fallback(data, addr)`. Exceptions from the callbacks are reported with `sys.unraisablehook`
and never stop the drain. tests/sfu/media/test_fastrecv.py holds the compiled reader to the same
calls with the same bytes.

A `Stream` is one received layer's counters and sequence numbers (`sfu.media.receiver.LayerState`
keeps its numbers in one). When `on_rtp` returns a Stream, the route keeps it for that packet's
SSRC (None: forgets it); while the stream is armed for that SSRC (`Stream.arm`, by the receiver
when the layer is in its steady state) the reader does what the receiver would do with the
packet itself — `RtpPacket.parse`'s checks, the counters, the extended sequence number, the
audio level, the VP8 check, the copies to the stream's targets — and hands a packet it cannot take
(one the parser refuses) to `on_rtp` as before. What it counted for the process counters is
`Reader.take_counts()`; the flush groups of its copies are scheduled once at the end of a drain.

The reader fans out what its armed streams took in a batch of `RECV_BATCH` datagrams (the
compiled reader's recvmmsg batch) before it calls Python again and at the end of the batch: per
(targets, flush group), in the order first taken, target by target, each target getting all
its packets of the batch in order before the next target gets any; a send batch holding
`FANOUT_FLUSH_AT` datagrams or more after a target's share is sent at once (`fanout_flushes`).
So a video frame's packets reach each subscriber as one run (one GSO message) and the first
subscribers' copies leave before the last ones' are built.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib

from sfu.media.fastpath_py import forward_many
from sfu.media.layerstream import Stream

__all__ = [
    "DATAGRAM_SIZE",
    "FANOUT_FLUSH_AT",
    "MAX_KNOWN",
    "RECV_BATCH",
    "Reader",
    "Route",
    "Stream",
]

DATAGRAM_SIZE = 2048  # sfu.media.transport.srtp.BUFFER_SIZE
MAX_KNOWN = 64  # sfu.media.transport.srtp.MAX_SRTP_STREAMS
RECV_BATCH = 64  # datagrams per recvmmsg in the compiled reader: the fan-out's unit
FANOUT_FLUSH_AT = 256  # datagrams in a send batch that is sent in the middle of a fan-out


def _key(addr: Any) -> tuple[Any, int]:
    return (addr[0], addr[1])


def _unraisable(exc: BaseException, what: object) -> None:
    """Report `exc` as PyErr_WriteUnraisable does in the compiled reader."""
    args = SimpleNamespace(
        exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__, err_msg=None,
        object=what,
    )  # fmt: skip
    sys.unraisablehook(args)


class Route:
    """One peer's SRTP on the shared socket: its source address, receive session and `on_rtp`."""

    def __init__(
        self, addr: Any, on_rtp: Callable[[bytes], object], *, session: Session | None = None
    ) -> None:
        self.addr = _key(addr)
        self.on_rtp = on_rtp
        self._session = session
        self._context: Any = None if session is None else session._srtp[0]
        self._buffer: Any = ffi.new("unsigned char[]", DATAGRAM_SIZE)
        self._view: Any = ffi.buffer(self._buffer)
        self._length: Any = ffi.new("int *")
        self.known: list[int] = []
        self._streams: dict[int, Stream] = {}  # of known SSRCs only
        self.registered = False
        self.rtp_packets = self.octets = self.unprotect_failures = self.fallbacks = 0
        self.taken = self.taken_octets = 0

    def learn(self, ssrc: int, /) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("ssrc out of range")
        if ssrc in self.known:
            return
        if len(self.known) == MAX_KNOWN:
            self._streams.pop(self.known.pop(0), None)
        self.known.append(ssrc)

    def forget(self, ssrc: int, /) -> None:
        if ssrc in self.known:
            self.known.remove(ssrc)
            self._streams.pop(ssrc, None)

    def stream(self, ssrc: int, /) -> Stream | None:
        return self._streams.get(ssrc)

    def bind(self, ssrc: int, result: object) -> None:
        """What `on_rtp` returned for a packet of `ssrc`: its stream from now on (None: none)."""
        if ssrc not in self.known:
            return
        if isinstance(result, Stream):
            self._streams[ssrc] = result
        elif result is None:
            self._streams.pop(ssrc, None)

    def unprotect(self, data: bytes) -> bytes | None:
        if self._context is None:
            return data
        size = len(data)
        self._view[0:size] = data
        self._length[0] = size
        if lib.srtp_unprotect(self._context, self._buffer, self._length):
            return None
        result: bytes = self._view[0 : self._length[0]]
        return result


class Reader:
    """Batched reads of one UDP socket (a duplicate of `fd`), routed as the module says."""

    def __init__(
        self, fd: int, fallback: Callable[[bytes, Any], object], *, max_routes: int = 65536
    ) -> None:
        if not 1 <= max_routes <= 1 << 20:
            raise ValueError("max_routes must be 1..2**20")
        self._sock: socket.socket | None = socket.socket(fileno=os.dup(fd))
        self._sock.setblocking(False)
        self.fallback = fallback
        self._max_routes = max_routes
        self._routes: dict[tuple[Any, int], Route] = {}
        self.datagrams = self.syscalls = self.truncated = self.fallback_errors = 0
        self.in_packets = self.in_octets = self.out_packets = self.out_octets = self.dropped = 0
        self.pending: list[Any] = []  # flush groups to schedule at the end of the drain
        #: what armed streams took, not fanned out yet: ((targets, group), `forward_many` packet)
        self.fan: list[tuple[tuple[Any, Any], tuple[bytes, int, int, int, float]]] = []

    def take_counts(self) -> tuple[int, int, int, int, int]:
        counts = (
            self.in_packets, self.in_octets, self.out_packets, self.out_octets, self.dropped
        )  # fmt: skip
        self.in_packets = self.in_octets = self.out_packets = self.out_octets = self.dropped = 0
        return counts

    @property
    def fd(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, route: Route, /) -> None:
        if route.registered:
            raise ValueError("the route is registered already")
        if route.addr in self._routes:
            raise ValueError("another route has this address")
        if len(self._routes) >= self._max_routes:
            raise OverflowError("too many routes")
        self._routes[route.addr] = route
        route.registered = True

    def remove(self, route: Route, /) -> bool:
        if self._routes.get(route.addr) is not route:
            return False
        del self._routes[route.addr]
        route.registered = False
        return True

    def lookup(self, addr: Any, /) -> Route | None:
        return self._routes.get(_key(addr))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        for route in self._routes.values():
            route.registered = False
        self._routes = {}

    def drain(self, budget: int = 256, /) -> int:
        try:
            return self._drain(budget)
        finally:
            pending, self.pending = self.pending, []
            for group in pending:
                try:
                    group.schedule()
                except Exception as exc:
                    _unraisable(exc, group)

    def _drain(self, budget: int) -> int:
        total = 0
        try:
            while total < budget and self._sock is not None:
                self.syscalls += 1
                try:
                    data, addr = self._sock.recvfrom(DATAGRAM_SIZE + 1)
                except InterruptedError:
                    continue
                except OSError:
                    break
                self.datagrams += 1
                total += 1
                if len(data) > DATAGRAM_SIZE:
                    self.truncated += 1
                else:
                    self._one(data, addr)
                if total % RECV_BATCH == 0:  # where the compiled reader's recvmmsg batch ends
                    self._fan_out()
        finally:
            self._fan_out()
        return total

    def defer(self, targets: Any, group: Any, packet: tuple[bytes, int, int, int, float]) -> None:
        """A packet an armed stream took for `targets` (flush group `group`): `forward`'s
        (data, ext_seq, payload_offset, padding_size, now)."""
        self.fan.append(((targets, group), packet))

    def _fan_out(self) -> None:
        fan, self.fan = self.fan, []
        runs: dict[tuple[int, int], tuple[tuple[Any, Any], list[Any]]] = {}
        for how, packet in fan:  # per (targets, group), in the order first taken
            runs.setdefault((id(how[0]), id(how[1])), (how, []))[1].append(packet)
        for (targets, group), packets in runs.values():
            try:
                copies, octets = forward_many(targets, packets, FANOUT_FLUSH_AT)
            except Exception as exc:
                _unraisable(exc, targets)
                continue
            if copies:
                self.out_packets += copies
                self.out_octets += octets
                if group is not None and group not in self.pending:
                    self.pending.append(group)

    def _one(self, data: bytes, addr: Any) -> None:
        route = self._routes.get(_key(addr)) if data else None
        if (
            route is not None
            and len(data) >= 12
            and 128 <= data[0] <= 191
            and not 192 <= data[1] <= 223
            and (ssrc := int.from_bytes(data[8:12], "big")) in route.known
        ):
            plain = route.unprotect(data)
            if plain is None:
                route.unprotect_failures += 1
                return
            route.rtp_packets += 1
            route.octets += len(plain)
            stream = route.stream(ssrc)
            if stream is not None and stream.armed and stream.ssrc == ssrc:
                try:
                    taken = stream.take(self, plain)
                except Exception as exc:
                    _unraisable(exc, stream)
                    return
                if taken:
                    route.taken += 1
                    route.taken_octets += len(plain)
                    return
            self._fan_out()  # what was taken before goes out before Python runs
            try:
                result = route.on_rtp(plain)
            except Exception as exc:
                _unraisable(exc, route.on_rtp)
                return
            route.bind(ssrc, result)
            return
        if route is not None:
            route.fallbacks += 1
        self._fan_out()
        try:
            self.fallback(data, addr)
        except Exception as exc:
            self.fallback_errors += 1
            _unraisable(exc, self.fallback)
