"""The compiled receive path of the shared socket (`sfu.media._fastrecv.Reader`) against its
reference (`sfu/media/fastrecv_py.py`), on hostile datagrams over real loopback sockets.

Each record of an input is one step: a datagram from one of two source sockets (first byte
even: source 0, odd: source 1; the rest is sent as it is, or, after a 0xF3 byte, as an RTP packet
SRTP-protected by a sender session, so that libsrtp's accepting branch is reached too), or a
control step (0xF0 learn / 0xF1 forget the SSRC in the next 4 bytes on route 0, 0xF2 drain).
Route 0 unprotects with a receive session keyed like the sender, route 1 takes plaintext. Both
readers must make the same calls (on_rtp per route with the same bytes, fallback with the same
bytes from the same source) and hold the same counts; the compiled one must never crash.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from pylibsrtp import Error, Policy, Session

from sfu.media import fastpath

from ._records import join, records

MAX_LEN = 4096
KEY = bytes(range(30))
_SSRC = b"\x11\x11\x11\x11"


class _Side:
    def __init__(self, impl: fastpath.Implementation) -> None:
        self.impl = impl
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sources = []
        for _ in range(2):
            source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            source.bind(("127.0.0.1", 0))
            self.sources.append(source)
        self.ports = {s.getsockname()[1]: i for i, s in enumerate(self.sources)}
        self.calls: list[tuple[Any, ...]] = []
        self.reader = impl.reader(self.sock.fileno(), self._fallback)
        self.routes: list[Any] = []

    def reset(self) -> None:
        for route in self.routes:
            self.reader.remove(route)
        receive = Session(
            Policy(KEY, Policy.SSRC_ANY_INBOUND, Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        )
        self.routes = [
            self.impl.route(s.getsockname(), self._on_rtp(i), receive if i == 0 else None)
            for i, s in enumerate(self.sources)
        ]
        for route in self.routes:
            self.reader.add(route)
        self.calls = []

    def _on_rtp(self, index: int) -> Any:
        return lambda data: self.calls.append(("rtp", index, data))

    def _fallback(self, data: bytes, addr: Any) -> None:
        self.calls.append(("fallback", self.ports.get(addr[1], -1), data))

    def drain(self, pending: int) -> None:
        deadline = time.monotonic() + 2
        while pending > 0:
            got = self.reader.drain(pending)
            pending -= got
            if not got:
                assert time.monotonic() < deadline, "datagrams did not arrive"
                time.sleep(0.0005)

    def state(self) -> tuple[Any, ...]:
        return tuple(
            (r.known, r.rtp_packets, r.octets, r.unprotect_failures, r.fallbacks)
            for r in self.routes
        )


_sides: tuple[_Side, _Side] | None = None


def _pair() -> tuple[_Side, _Side]:
    global _sides
    if _sides is None:
        compiled = fastpath.COMPILED
        assert compiled is not None and compiled.receives, "sfu.media._fastrecv is not built"
        _sides = (_Side(compiled), _Side(fastpath.PYTHON))
    return _sides


def test_one(data: bytes) -> None:
    sides = _pair()
    for side in sides:
        side.reset()
    policy = Policy(KEY, Policy.SSRC_ANY_OUTBOUND, Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    policy.allow_repeat_tx = True
    sender = Session(policy)
    pending = 0
    for record in records(data, 48):
        if not record:
            continue
        op, rest = record[0], record[1:]
        if op in (0xF0, 0xF1):
            ssrc = int.from_bytes(rest[:4].ljust(4, b"\0"), "big")
            for side in sides:
                getattr(side.routes[0], "learn" if op == 0xF0 else "forget")(ssrc)
            continue
        if op == 0xF2:
            for side in sides:
                side.drain(pending)
            pending = 0
            assert sides[0].calls == sides[1].calls, "the readers disagree"
            continue
        if op == 0xF3 and len(rest) >= 12:
            with contextlib.suppress(Error):  # libsrtp refuses what is no RTP: sent as it is
                rest = sender.protect(rest)
        for side in sides:
            side.sources[op & 1].sendto(rest, side.sock.getsockname())
        pending += 1
    for side in sides:
        side.drain(pending)
    assert sides[0].calls == sides[1].calls, "the readers disagree"
    assert sides[0].state() == sides[1].state(), "the readers count differently"


def seeds() -> list[bytes]:
    rtp = b"\x80\x60\x00\x01" + bytes(4) + _SSRC + b"payload"
    return [
        join([b"\xf0" + _SSRC, b"\xf3" + rtp, b"\xf3" + rtp, b"\xf2", b"\x00" + rtp]),
        join([b"\x01" + rtp, b"\x00\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), b"\x00\x16\xfe"]),
        join([b"\xf0" + _SSRC, b"\x00" + b"\x80\xc8" + bytes(30), b"\x01" + bytes(2100)]),
    ]
