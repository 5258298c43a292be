"""Datagram routing in the shared UDP port (`sfu.media.transport.udpmux`), without a socket.

A `UdpMux` with three registered connections (real aioice `StunProtocol`s over a recording stand-in
for aioice's `Connection`) gets a sequence of datagrams from a pool of source addresses, plus
sends (which teach it addresses) and connection closes/re-registrations. `stun_request_ufrag`
never raises; each datagram reaches the connection its USERNAME names, else the one its source
address is bound to, else it is counted as dropped; the address tables stay consistent and
bounded by `MAX_ADDRESSES` per connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aioice import stun

from sfu.media.transport.udpmux import MAX_ADDRESSES, MuxedTransport, UdpMux, stun_request_ufrag

from ._records import join, records

MAX_LEN = 2048

UFRAGS = ("ufA1", "ufB2", "ufC3")
ADDRESSES: tuple[tuple[Any, ...], ...] = tuple(
    [("127.0.0.1", 40000 + i) for i in range(18)]
    + [("::1", 40000, 0, 0), ("::1", 40001, 0, 0), ("127.0.0.2", 40000), ("127.0.0.1", 40000)]
)

_loop: asyncio.AbstractEventLoop | None = None


class _Connection:
    """What aioice's `Connection` is to a `StunProtocol`: where it delivers."""

    def __init__(self) -> None:
        self.routed = 0  # datagrams the mux handed to this connection's protocol
        self.delivered = 0  # what aioice's protocol passed on to the connection

    def data_received(self, data: bytes, component: int) -> None:
        self.delivered += 1

    def request_received(self, message: Any, addr: Any, protocol: Any, raw: bytes = b"") -> None:
        self.delivered += 1

    def protocol_lost(self, protocol: Any) -> None:
        pass


class _Local:
    component = 1


def _register(mux: UdpMux, ufrag: str) -> tuple[Any, _Connection]:
    connection = _Connection()
    protocol = mux.register(ufrag, connection)
    protocol.local_candidate = _Local()  # type: ignore[assignment]
    handle = protocol.datagram_received

    def datagram_received(data: bytes, addr: Any) -> None:
        connection.routed += 1
        handle(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]
    return protocol, connection


def _check_tables(mux: UdpMux) -> None:
    for protocol, addrs in mux._addrs.items():
        assert len(addrs) <= MAX_ADDRESSES, "a connection holds more than MAX_ADDRESSES"
        assert len(set(addrs)) == len(addrs), "an address is listed twice"
        for addr in addrs:
            assert mux._by_addr.get(addr) is protocol, "a listed address routes elsewhere"
    for addr, protocol in mux._by_addr.items():
        assert addr in mux._addrs.get(protocol, ()), "a routed address is not listed"
    assert {p: u for u, p in mux._by_ufrag.items()} == mux._ufrag_of
    assert mux.connections == len(UFRAGS)


async def _run(data: bytes) -> None:
    mux = UdpMux()
    by_ufrag = {ufrag: _register(mux, ufrag) for ufrag in UFRAGS}
    for record in records(data, 48):
        op = record[0] & 3 if record else 0
        addr = ADDRESSES[(record[0] >> 2) % len(ADDRESSES)] if record else ADDRESSES[0]
        body = record[1:]
        if op < 2:
            ufrag = stun_request_ufrag(body)
            assert ufrag is None or (len(body) >= 20 and body[:2] == b"\x00\x01")
            target = by_ufrag.get(ufrag) if ufrag is not None else None
            expected = target[0] if target is not None else mux._by_addr.get((addr[0], addr[1]))
            counts = {p: c.routed for p, c in by_ufrag.values()}
            dropped = mux.dropped
            route_before = mux._by_addr.get((addr[0], addr[1]))
            mux.datagram_received(body, addr)
            if expected is None:
                assert mux.dropped == dropped + 1, "an unroutable datagram was not dropped"
            else:
                # a request routed by its ufrag re-points the address only once aioice has
                # accepted it (its integrity checked), never on the ufrag alone
                route_after = mux._by_addr.get((addr[0], addr[1]))
                assert route_after is route_before or route_after is expected
                for protocol, connection in by_ufrag.values():
                    wanted = counts[protocol] + (protocol is expected)
                    assert connection.routed == wanted, "misrouted datagram"
        elif op == 2:
            protocol = by_ufrag[UFRAGS[body[0] % 3 if body else 0]][0]
            before = mux._by_addr.get((addr[0], addr[1]))
            protocol.transport.sendto(body, addr)
            after = mux._by_addr.get((addr[0], addr[1]))
            # our own sends teach the mux where a connection talks (a STUN error response does
            # not), but never take another connection's address away from it
            assert after is protocol or after is before
        else:
            ufrag = UFRAGS[body[0] % 3 if body else 0]
            transport = by_ufrag[ufrag][0].transport
            assert isinstance(transport, MuxedTransport)
            transport.close()
            transport.sendto(b"late", addr)  # a closed connection's send is a no-op
            by_ufrag[ufrag] = _register(mux, ufrag)
        _check_tables(mux)
    await asyncio.sleep(0)  # the closed protocols' connection_lost


def test_one(data: bytes) -> None:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(_run(data))


def _binding_request(username: str) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLED"] = 0x1234567890
    request.add_message_integrity(b"0123456789abcdef0123456789")
    request.add_fingerprint()
    return bytes(request)


def seeds() -> list[bytes]:
    rtp = b"\x80\x60\x00\x01" + bytes(20)
    dtls = b"\x16\xfe\xfd" + bytes(20)
    response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    return [
        join([b"\x00" + _binding_request("ufA1:remote"), b"\x01" + rtp, b"\x04" + dtls]),
        join([b"\x02\x01", b"\x00" + rtp, b"\x03\x01", b"\x00" + rtp]),
        join([b"\x08" + _binding_request("ufB2:x"), b"\x08" + bytes(response), b"\x09" + rtp]),
        join([bytes([4 * i]) + _binding_request(f"{UFRAGS[i % 3]}:r") for i in range(20)]),
        b"\x00" + _binding_request("nobody:x"),
    ]
