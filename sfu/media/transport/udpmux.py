"""One UDP port for every peer connection (LiveKit's `rtc.udp_port`): the ICE demultiplexer.

With `rtc.udp_port` set, each bind address gets one socket on that port instead of one socket per
peer connection from the port range, so a firewall or a container needs exactly one UDP port open.
`UdpMux` owns that socket and hands each datagram to the aioice `StunProtocol` of the connection
it belongs to:

* a STUN Binding request names its connection: the USERNAME attribute is
  ``<our ufrag>:<their ufrag>`` (RFC 8445 §7.2.2), so it is routed by our ufrag;
* anything else (STUN responses, DTLS, SRTP) is routed by source address;
* a datagram from an unknown address that is not a Binding request with a known ufrag is dropped.

An address is learnt for a connection only from what the connection sends there: a connectivity
check of its own, or the success response aioice sends once a request's USERNAME and
MESSAGE-INTEGRITY checked out (an error response teaches nothing). So a request with a known
ufrag but forged credentials cannot re-point anyone's address; and an address that is a
connection's nominated pair is never taken by another connection (a participant spoofing another's
source with its own credentials). Each connection's `StunProtocol` sees a `MuxedTransport` whose
`sendto` goes out of the shared socket and whose `close` only unregisters the connection.
Addresses per connection are bounded (`MAX_ADDRESSES`).

The compiled forwarding path (rtc.fast_path) queues on one `FastBatch` per socket, shared by
every connection on it (`fast_senders_for`): each copy carries its own destination, so the
fan-out of one received packet to all subscribers leaves in one `sendmmsg` per loop iteration
(UDP GSO per destination where a run allows). The batch lives as long as the socket; a
connection that closes closes only its own targets.

With the compiled receive path (`open_mux(..., receive=impl)`, `sfu.media.fastpath`), the mux
reads its socket itself instead of the event loop's datagram transport: on each readable event
the implementation's `Reader` takes up to `DRAIN_BUDGET` datagrams with `recvmmsg`, unprotects
the SRTP of each connected peer (a `media_route` per ingress, by source address and SSRC) and
hands it on, and gives everything else to `datagram_received` as before. Sends then go out of
the socket directly (`SocketTransport`). Whatever a datagram makes aioice raise
(0.13.0's STUN parser raises `struct.error` on a wrong attribute length) is counted in
`malformed` and logged at DEBUG only, never raised into the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import weakref
from collections.abc import Callable
from typing import Any

from aioice.ice import StunProtocol

from sfu.media.transport.batch import FastBatch, FastSenders, SendQueue, flusher_for
from sfu.media.transport.latency import enable_timestamps
from sfu.media.transport.sockbuf import UDP_BUFFER, size_buffers
from sfu.metrics import COUNTERS

__all__ = [
    "DRAIN_BUDGET",
    "MAX_ADDRESSES",
    "SHARED_BATCH_CAPACITY",
    "MuxedTransport",
    "SocketTransport",
    "UdpMux",
    "close_muxes",
    "fast_senders_for",
    "open_mux",
]

log = logging.getLogger(__name__)

#: remote addresses one connection may be reached from (its candidates, in practice a few)
MAX_ADDRESSES = 16
#: datagrams the compiled receive path reads per readable event before the loop runs again
DRAIN_BUDGET = 128
#: datagrams the shared send batch holds (2 KiB slots: 8.5 MiB per socket) before a full one is
#: sent early: a key frame's fan-out to a few hundred subscribers fits
SHARED_BATCH_CAPACITY = 4096
_STUN_HEADER = struct.Struct("!HHI12s")
_STUN_MAGIC_COOKIE = 0x2112A442
_STUN_BINDING_REQUEST = 0x0001
_ATTR_USERNAME = 0x0006


def stun_request_ufrag(data: bytes) -> str | None:
    """Our ufrag from a STUN Binding request's USERNAME (``ours:theirs``), else None.

    Reads only the header and walks the attributes; never raises.
    """
    if len(data) < 20 or data[0] > 1:
        return None
    message_type, length, cookie, _ = _STUN_HEADER.unpack_from(data)
    if message_type != _STUN_BINDING_REQUEST or cookie != _STUN_MAGIC_COOKIE:
        return None
    end = min(len(data), 20 + length)
    offset = 20
    while offset + 4 <= end:
        attr_type, attr_length = struct.unpack_from("!HH", data, offset)
        value_start = offset + 4
        if attr_type == _ATTR_USERNAME:
            if value_start + attr_length > end:
                return None
            username = data[value_start : value_start + attr_length]
            ours, colon, _ = username.partition(b":")
            if not colon or not ours:
                return None
            try:
                return ours.decode("ascii")
            except UnicodeDecodeError:
                return None
        offset = value_start + attr_length + (-attr_length % 4)
    return None


def _nominated_to(protocol: StunProtocol, addr: Any) -> bool:
    """Whether `protocol`'s connection has nominated its pair towards `addr` (aioice's
    `Connection._nominated`: component → CandidatePair)."""
    nominated = getattr(protocol.receiver, "_nominated", None) or {}
    return any(
        pair.protocol is protocol and pair.remote_addr == addr for pair in nominated.values()
    )


class MuxedTransport(asyncio.DatagramTransport):
    """What one connection's `StunProtocol` sends through: the shared socket, its own close."""

    def __init__(self, mux: UdpMux, protocol: StunProtocol) -> None:
        super().__init__()
        self._mux = mux
        self._protocol: StunProtocol | None = protocol

    def sendto(self, data: Any, addr: Any = None) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        # A STUN error response (class bits 0x0110: a request aioice refused) teaches nothing;
        # a check, a success response, DTLS or SRTP goes where the connection means to talk.
        if not (len(data) > 1 and data[0] & 0xFE == 0 and data[0] & 1 and data[1] & 0x10):
            self._mux.learn(addr, protocol)
        self._mux.sendto(data, addr)

    @property
    def mux(self) -> UdpMux:
        return self._mux

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._mux.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._mux.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self._protocol is None

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        self._mux.unregister(protocol)
        # aioice's StunProtocol.close() waits for connection_lost, as with a real socket
        asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


class SocketTransport:
    """The mux's socket when a `Reader` reads it: `sendto` sends at once (a datagram the full
    socket refuses is dropped and counted, where the event loop's transport would queue it;
    DTLS and STUN retransmit, RTP and RTCP go through the send batches anyway), `close` stops
    the reader, closes the socket and tells the mux, as the loop's transport would."""

    def __init__(
        self, sock: socket.socket, reader: Any, protocol: UdpMux, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._sock = sock
        self._reader = reader
        self._protocol = protocol
        self._loop = loop
        self._closed = False
        # the loop's forwarding-latency probe (`sfu.media.transport.latency`): media read here
        # never reaches `SrtpIngress.datagram_received`, so the sample is taken after a drain
        # (the kernel's stamp of the drain's last datagram: a lower bound for the others)
        self._latency = flusher_for(loop).latency if enable_timestamps(sock.fileno()) else None
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        reader = self._reader
        read = reader.drain(DRAIN_BUDGET)
        if read:  # what the reader's armed streams took and forwarded, for the process counters
            packets_in, bytes_in, packets_out, bytes_out, dropped = reader.take_counts()
            if packets_in:
                COUNTERS.packets_in += packets_in
                COUNTERS.bytes_in += bytes_in
                COUNTERS.packets_out += packets_out
                COUNTERS.bytes_out += bytes_out
                if dropped:  # the reader drops only a sequence before the layer's first
                    COUNTERS.drop("sequence", dropped)
        latency = self._latency
        if read and latency is not None and latency.armed and not self._closed:
            latency.start(self._sock.fileno())

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            COUNTERS.send_dropped += 1
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._closed:
            return default
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._reader.close()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)


class UdpMux(asyncio.DatagramProtocol):
    """The shared socket of one bind address and the routing table in front of it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | SocketTransport | None = None
        self._receive: Any = None  # the compiled receive path's implementation, if it reads
        self._reader: Any = None
        self._by_ufrag: dict[str, StunProtocol] = {}
        self._ufrag_of: dict[StunProtocol, str] = {}
        self._by_addr: dict[Any, StunProtocol] = {}
        self._addrs: dict[StunProtocol, list[Any]] = {}
        self.dropped = 0  # from an unknown address, or for an unknown ufrag
        self.malformed = 0  # routed, but aioice raised on it
        self.refused = 0  # re-points of another connection's nominated address refused
        #: the fast path's shared send batches, by (implementation, GSO): at most four
        self._batches: dict[tuple[str, bool], FastBatch] = {}

    # -- asyncio.DatagramProtocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._close_batches()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        addr = (addr[0], addr[1])
        protocol = None
        if data and data[0] <= 1:  # STUN (RFC 7983): a request names its connection
            ufrag = stun_request_ufrag(data)
            if ufrag is not None:
                protocol = self._by_ufrag.get(ufrag)
        if protocol is None:
            protocol = self._by_addr.get(addr)
        if protocol is None:
            self.dropped += 1
            COUNTERS.drop("unknown_address")
            return
        try:
            protocol.datagram_received(data, addr)
        except Exception as exc:  # one bad datagram must not reach the loop
            self.malformed += 1
            COUNTERS.drop("malformed")
            log.debug("UDP mux: datagram from %s dropped: %r", addr, exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP mux socket error: %r", exc)

    # -- the compiled receive path ---------------------------------------------------------------
    def read_with(self, sock: socket.socket, impl: Any) -> None:
        """Read `sock` (bound, the mux's) with `impl`'s `Reader` instead of the event loop's
        datagram transport."""
        self._receive = impl
        self._reader = impl.reader(sock.fileno(), self.datagram_received)
        sock.setblocking(False)
        self.transport = SocketTransport(sock, self._reader, self, asyncio.get_running_loop())

    @property
    def reader(self) -> Any:
        """The `Reader` that reads the socket, or None (the event loop does)."""
        return self._reader

    def media_route(self, addr: Any, on_rtp: Callable[[bytes], object], session: Any) -> Any | None:
        """A route of the compiled receive path for SRTP from `addr` (decrypted with `session`,
        handed to `on_rtp`), registered; None without one, or when `addr` has a route already
        (the datagrams then take the Python path, which checks who sends them)."""
        if self._reader is None or self.transport is None or self.transport.is_closing():
            return None
        route = self._receive.route(addr, on_rtp, session)
        try:
            self._reader.add(route)
        except (ValueError, OverflowError):  # the address has a route, or the table is full
            COUNTERS.limit_exceeded("mux_route_in_use")
            return None
        return route

    def drop_route(self, route: Any) -> None:
        if self._reader is not None:
            self._reader.remove(route)

    # -- connections -------------------------------------------------------------------------------
    def register(self, ufrag: str, connection: Any) -> StunProtocol:
        """A `StunProtocol` for an aioice `Connection` whose local ufrag is `ufrag`."""
        if ufrag in self._by_ufrag:
            raise ValueError("ICE ufrag already registered")
        protocol = StunProtocol(connection)
        protocol.connection_made(MuxedTransport(self, protocol))
        self._by_ufrag[ufrag] = protocol
        self._ufrag_of[protocol] = ufrag
        self._addrs[protocol] = []
        return protocol

    def unregister(self, protocol: StunProtocol) -> None:
        for addr in self._addrs.pop(protocol, []):
            if self._by_addr.get(addr) is protocol:
                del self._by_addr[addr]
        ufrag = self._ufrag_of.pop(protocol, None)
        if ufrag is not None:
            del self._by_ufrag[ufrag]

    def learn(self, addr: Any, protocol: StunProtocol) -> None:
        """Route datagrams from `addr` to `protocol` (bounded per connection)."""
        addr = (addr[0], addr[1])
        if self._by_addr.get(addr) is protocol:
            return
        addrs = self._addrs.get(protocol)
        if addrs is None:  # unregistered meanwhile
            return
        if len(addrs) >= MAX_ADDRESSES:
            COUNTERS.limit_exceeded("mux_addresses")
            oldest = addrs.pop(0)
            if self._by_addr.get(oldest) is protocol:
                del self._by_addr[oldest]
        previous = self._by_addr.get(addr)
        if previous is not None and _nominated_to(previous, addr):
            self.refused += 1
            COUNTERS.limit_exceeded("mux_address_in_use")
            return
        if previous is not None:
            previous_addrs = self._addrs.get(previous)
            if previous_addrs is not None and addr in previous_addrs:
                previous_addrs.remove(addr)
        self._by_addr[addr] = protocol
        addrs.append(addr)

    @property
    def connections(self) -> int:
        return len(self._by_ufrag)

    # -- the shared socket ---------------------------------------------------------------------------
    def sendto(self, data: Any, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        transport: Any = self.transport  # uvloop's and asyncio's UDP transports both have it
        return int(transport.get_write_buffer_size()) if transport is not None else 0

    def fast_batch(self, impl: Any, *, gso: bool) -> FastBatch:
        """The send batch of `impl` (an `sfu.media.fastpath.Implementation`) that every
        connection on this socket shares; made on first use. ValueError once the socket closed."""
        key = (impl.name, gso)
        batch = self._batches.get(key)
        if batch is None:
            transport = self.transport
            sock = None if transport is None else transport.get_extra_info("socket")
            if sock is None or transport is None or transport.is_closing():
                raise ValueError("the shared socket is closed")
            loop = asyncio.get_running_loop()
            batch = impl.batch(sock.fileno(), gso=gso, capacity=SHARED_BATCH_CAPACITY)
            batch = FastBatch(batch, flusher_for(loop))
            self._batches[key] = batch
        return batch

    def _close_batches(self) -> None:
        batches, self._batches = self._batches, {}
        for batch in batches.values():
            batch.close()

    def close(self) -> None:
        self._close_batches()
        if self.transport is not None:
            self.transport.close()


def fast_senders_for(transport: Any, queue: SendQueue, impl: Any) -> FastSenders:
    """The fast-path senders of a connection whose nominated pair sends through `transport`:
    on a mux socket the socket's shared batch, else a batch of its own beside `queue` (the
    connection's socket, with its GSO setting)."""
    if isinstance(transport, MuxedTransport):
        return FastSenders(transport.mux.fast_batch(impl, gso=queue.gso), impl, own=False)
    return FastSenders(FastBatch.beside(queue, impl), impl, own=True)


_MUXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], UdpMux]] = (
    weakref.WeakKeyDictionary()
)
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def open_mux(address: str, port: int, receive: Any) -> UdpMux:
    """The event loop's mux for ``address:port``, binding its socket on first use; read by
    `receive`'s compiled receive path (an `sfu.media.fastpath.Implementation`) when it has one,
    else by the event loop."""
    loop = asyncio.get_running_loop()
    lock = _LOCKS.setdefault(loop, asyncio.Lock())
    async with lock:
        muxes = _MUXES.setdefault(loop, {})
        mux = muxes.get((address, port))
        if mux is not None and mux.transport is not None:
            return mux
        if receive is not None and receive.receives:
            mux = UdpMux()
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            own = socket.socket(family, socket.SOCK_DGRAM)
            try:
                own.bind((address, port))
            except OSError:
                own.close()
                raise
            mux.read_with(own, receive)
        else:
            _, mux = await loop.create_datagram_endpoint(UdpMux, local_addr=(address, port))
        sock = mux.get_extra_info("socket")
        if sock is not None:
            size_buffers(sock, 8 * UDP_BUFFER)  # every connection's datagrams queue here
        muxes[(address, port)] = mux
        return mux


def close_muxes() -> None:
    """Close the running loop's shared sockets (at shutdown, after every transport closed)."""
    for mux in _MUXES.pop(asyncio.get_running_loop(), {}).values():
        mux.close()
