"""The compiled receive path of the shared socket (`sfu.media._fastrecv`) against its pure-Python
reference (`fastrecv_py`), on real sockets.

Random sequences of datagrams from two source sockets — SRTP of several SSRCs from a sender
session, replays, corrupted copies, SRTCP, STUN- and DTLS-shaped bytes, short and oversize
datagrams — with SSRCs learnt and forgotten and routes added and removed between them, drained
with random budgets: both readers must make the same calls (`on_rtp` per route with the same
plaintext, `fallback` with the same bytes from the same source) and count the same. Each reader
has its own receive sessions with the same keys, so libsrtp's replay state is the same on both.
The extension is a component of this project (built at install time): a missing one fails here.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pylibsrtp import Error, Policy, Session

from sfu.media import fastpath, fastrecv_py
from sfu.media.fastpath import Implementation
from tests.sfu.media.test_fastpath import KEY, PROFILES

SSRCS = (0x11111111, 0x22222222, 0x33333333)


def compiled() -> Implementation:
    assert fastpath.COMPILED is not None and fastpath.COMPILED.receives, (
        "sfu.media._fastrecv is not built: pip install -e ."
    )
    return fastpath.COMPILED


def sessions(profile: str) -> tuple[Session, Session]:
    """(sender, receiver) keyed alike."""
    tx = Policy(KEY, Policy.SSRC_ANY_OUTBOUND, PROFILES[profile])
    tx.allow_repeat_tx = True
    return Session(tx), Session(Policy(KEY, Policy.SSRC_ANY_INBOUND, PROFILES[profile]))


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


class Side:
    """One implementation's reader on its own socket, two source sockets, the calls it made."""

    def __init__(self, impl: Implementation, profile: str | None) -> None:
        self.impl = impl
        self.sock = udp_socket()
        self.sources = [udp_socket(), udp_socket()]
        self.ports = {s.getsockname()[1]: i for i, s in enumerate(self.sources)}
        self.calls: list[tuple[Any, ...]] = []
        self.reader = impl.reader(self.sock.fileno(), self._fallback)
        self.receive = None if profile is None else sessions(profile)[1]
        self.routes: list[Any] = [
            impl.route(s.getsockname(), self._on_rtp(i), self.receive) for i, s in enumerate(self.sources)
        ]  # fmt: skip
        for route in self.routes:
            self.reader.add(route)

    def _on_rtp(self, index: int) -> Any:
        return lambda data: self.calls.append(("rtp", index, data))

    def _fallback(self, data: bytes, addr: Any) -> None:
        self.calls.append(("fallback", self.ports.get(addr[1], -1), data))

    def send(self, source: int, data: bytes) -> None:
        self.sources[source].sendto(data, self.sock.getsockname())

    def close(self) -> None:
        self.reader.close()
        for s in (self.sock, *self.sources):
            s.close()

    def state(self) -> tuple[Any, ...]:
        return (
            len(self.reader),
            self.reader.datagrams,
            self.reader.truncated,
            [(r.registered, r.known, r.rtp_packets, r.octets, r.unprotect_failures, r.fallbacks)
             for r in self.routes],
        )  # fmt: skip


def rtp(ssrc: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 90, ssrc) + payload


srtp = st.tuples(st.just("srtp"), st.integers(0, 2), st.integers(0, 300), st.binary(max_size=60))
datagram = st.one_of(
    srtp,
    srtp,
    srtp,
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("corrupt"), st.integers(0, 50), st.integers(0, 100)),
    st.tuples(st.just("srtcp"), st.integers(0, 2)),
    st.tuples(st.just("raw"), st.binary(max_size=40)),  # STUN, DTLS, garbage, empty
    st.tuples(st.just("big"), st.integers(2049, 2200)),
)
sends = st.tuples(st.just("send"), st.integers(0, 1), datagram)
operations = st.one_of(
    sends,
    sends,
    sends,
    st.tuples(st.just("learn"), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("forget"), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("toggle"), st.integers(0, 1)),
    st.tuples(st.just("drain"), st.integers(1, 80)),
)


@pytest.fixture
def pair_factory() -> Iterator[Any]:
    made: list[Side] = []

    def make(profile: str | None) -> tuple[Side, Side]:
        sides = (Side(compiled(), profile), Side(fastpath.PYTHON, profile))
        made.extend(sides)
        return sides

    yield make
    for side in made:
        side.close()


def drain_all(sides: tuple[Side, Side], budget: int, pending: int) -> int:
    """Drain both until each has read what was sent (loopback delivery is not instant)."""
    deadline = time.monotonic() + 2
    for side in sides:
        left = pending
        while left > 0:
            got = side.reader.drain(min(budget, left))
            left -= got
            if not got:
                assert time.monotonic() < deadline, "datagrams did not arrive"
                time.sleep(0.001)
    return 0


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    profile=st.sampled_from([None, *PROFILES]),
    known=st.sets(st.integers(0, 2)),
    ops=st.lists(operations, min_size=5, max_size=40),
)
def test_compiled_and_reference_agree(
    pair_factory: Any, profile: str | None, known: set[int], ops: list[tuple[Any, ...]]
) -> None:
    sides = pair_factory(profile)
    for side in sides:
        for index in sorted(known):
            side.routes[0].learn(SSRCS[index])
    sender = None if profile is None else sessions(profile)[0]
    sent: list[bytes] = []
    pending = 0
    for op in ops:
        kind = op[0]
        if kind == "send":
            _, source, (what, *args) = op
            if what == "srtp":
                index, seq, payload = args
                data = rtp(SSRCS[index], seq, payload)
                if sender is not None:
                    try:
                        data = sender.protect(data)
                    except Error:  # a sequence number far behind: libsrtp will not send it
                        continue
                sent.append(data)
            elif what in ("replay", "corrupt"):
                if not sent:
                    continue
                data = sent[args[0] % len(sent)]
                if what == "corrupt":
                    at = args[1] % len(data)
                    data = data[:at] + bytes([data[at] ^ 0x5A]) + data[at + 1 :]
            elif what == "srtcp":
                data = struct.pack("!BBHI", 0x80, 200, 6, SSRCS[args[0]]) + bytes(20)
                data = data if sender is None else sender.protect_rtcp(data)
            elif what == "raw":
                data = args[0]
            else:
                data = b"\x80\x60" + bytes(args[0] - 2)
            event(f"sent {what}")
            for side in sides:
                side.send(source, data)
            pending += 1
        elif kind in ("learn", "forget"):
            _, route, index = op
            ssrc = SSRCS[index] if index < len(SSRCS) else 0xDEADBEEF
            for side in sides:
                getattr(side.routes[route], kind)(ssrc)
        elif kind == "toggle":
            for side in sides:
                route = side.routes[op[1]]
                if route.registered:
                    assert side.reader.remove(route) is True
                else:
                    side.reader.add(route)
        else:
            pending = drain_all(sides, op[1], pending)
        assert sides[0].calls == sides[1].calls
    pending = drain_all(sides, 64, pending)
    assert sides[0].calls == sides[1].calls
    assert sides[0].state() == sides[1].state()
    for what in ("rtp", "fallback"):
        if any(c[0] == what for c in sides[0].calls):
            event(f"some datagrams: {what}")
    if sides[0].routes[0].unprotect_failures:
        event("libsrtp refused some on a route")


@pytest.mark.parametrize("name", ["compiled", "python"])
def test_routes_are_bounded_unique_and_released(name: str) -> None:
    impl = compiled() if name == "compiled" else fastpath.PYTHON
    with udp_socket() as sock:
        reader = impl._recv.Reader(sock.fileno(), lambda data, addr: None, max_routes=2)
        a = impl.route(("127.0.0.1", 1000), lambda data: None, None)
        b = impl.route(("127.0.0.1", 1001), lambda data: None, None)
        reader.add(a)
        with pytest.raises(ValueError):
            reader.add(a)  # registered already
        with pytest.raises(ValueError):
            reader.add(impl.route(("127.0.0.1", 1000), lambda data: None, None))  # same address
        reader.add(b)
        with pytest.raises(OverflowError):
            reader.add(impl.route(("127.0.0.1", 1002), lambda data: None, None))
        assert reader.lookup(("127.0.0.1", 1001)) is b and reader.lookup(("127.0.0.1", 9)) is None
        assert reader.remove(a) is True and reader.remove(a) is False and not a.registered
        for ssrc in range(200):  # the known SSRCs are bounded, the oldest forgotten first
            b.learn(ssrc)
        assert b.known == list(range(200 - fastrecv_py.MAX_KNOWN, 200))
        with pytest.raises(ValueError):
            b.learn(1 << 32)
        reader.close()
        assert reader.fd == -1 and not b.registered and len(reader) == 0
        reader.close()  # idempotent
        assert reader.drain(10) == 0


@pytest.mark.parametrize("name", ["compiled", "python"])
def test_a_callback_that_raises_does_not_stop_the_drain(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    impl = compiled() if name == "compiled" else fastpath.PYTHON
    reported: list[Any] = []
    monkeypatch.setattr("sys.unraisablehook", reported.append)
    with udp_socket() as sock, udp_socket() as source:
        got: list[bytes] = []

        def fallback(data: bytes, addr: Any) -> None:
            got.append(data)
            if data == b"boom":
                raise RuntimeError("boom")

        reader = impl.reader(sock.fileno(), fallback)
        route = impl.route(source.getsockname(), lambda data: 1 / 0, None)
        reader.add(route)
        route.learn(7)
        for data in (b"boom", rtp(7, 1, b"x"), b"after"):
            source.sendto(data, sock.getsockname())
        time.sleep(0.05)
        assert reader.drain(10) == 3
        assert got == [b"boom", b"after"] and route.rtp_packets == 1
        assert len(reported) == 2 and reader.fallback_errors == 1
        reader.close()
