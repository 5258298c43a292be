"""Armed streams: the compiled reader (`sfu.media._fastrecv`) taking a steady-state SSRC's packets
itself, against the pure-Python reference (`sfu.media.layerstream.Stream` in `fastrecv_py`), on
real sockets.

Random RTP packets — CSRC lists, one-byte and two-byte extension blocks (well formed, cut short,
with and without the audio level), padding (valid and not), VP8 descriptors of every shape and
truncated ones, sequence numbers that wrap, jump and go back, the wrong RTP version — from one
source whose SSRCs the route knows, with the streams armed, disarmed, re-armed for another SSRC
and forgotten between them, armed with and without `wake` (a sink waiting for a key frame: none
but key frames reach Python, or every packet does), and "Python" (`on_rtp`: what the receiver would do, the same on both
sides) arming a stream when asked: both readers must make the same `on_rtp` calls, queue the
same datagrams on their targets' batches (byte for byte), schedule the same flush groups and
leave the same numbers in the streams, the targets and the process counts. Each side has its
own receive session with the same keys. The extension is a component of this project (built at
install time): a missing one fails here.
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

from sfu.media import fastpath, fastrecv_py, layerstream
from sfu.media.fastpath import Implementation
from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.header import RtpPacket
from sfu.media.transport.batch import FastBatch
from sfu.metrics import COUNTERS
from tests.sfu.media.test_fastpath import PROFILES
from tests.sfu.media.test_fastrecv import compiled, sessions, udp_socket
from tests.sfu.packets import rtp

SSRCS = (0x11111111, 0x22222222)
LEVEL_ID = 1
#: Stream.arm's wake: none; only key frames reach Python (the interval never ends in a test);
#: every packet does (the interval is over by the next one)
WAKES = (0.0, 0.0, 50.0, 1e-9)


class Group:
    """A flush group that records when it is scheduled."""

    def __init__(self, log: list[Any], name: str) -> None:
        self.log, self.name = log, name

    def schedule(self) -> None:
        self.log.append(("schedule", self.name))


class Side:
    """One implementation: its reader, a source socket, the route, one stream per SSRC, two
    targets on a batch without a socket, and the calls made."""

    def __init__(self, impl: Implementation, profile: str | None, compiled_side: bool) -> None:
        self.impl = impl
        self.sock = udp_socket()
        self.source = udp_socket()
        self.calls: list[Any] = []
        self.reader = impl.reader(self.sock.fileno(), self._fallback)
        self.receive = None if profile is None else sessions(profile)[1]
        self.route = impl.route(self.source.getsockname(), self._on_rtp, self.receive)
        self.reader.add(self.route)
        for ssrc in SSRCS:
            self.route.learn(ssrc)
        make = layerstream.new_stream if compiled_side else layerstream.Stream
        self.streams = {ssrc: make() for ssrc in SSRCS}
        self.batch = impl.batch(-1, capacity=4096)
        self.targets = tuple(
            impl.target(self.batch, ("127.0.0.1", 40000 + i)) for i in range(2)
        )  # fmt: skip
        for t in self.targets:
            t.ssrc, t.payload_type = 0xABC0 + t.addr[1], 100
        self.groups = {ssrc: Group(self.calls, f"g{i}") for i, ssrc in enumerate(SSRCS)}
        self.arm_next: dict[int, tuple[bool, int, float]] = {}  # ssrc → (vp8, level id, wake)
        self.counts = [0, 0, 0, 0, 0]

    def _fallback(self, data: bytes, addr: Any) -> None:
        self.calls.append(("fallback", data))

    def _on_rtp(self, data: bytes) -> Any:
        """What the receiver does in Python, and the stream back when the test armed it."""
        self.calls.append(("rtp", data))
        try:
            packet = RtpPacket.parse(data)
        except PacketError:
            return None
        stream = self.streams.get(packet.ssrc)
        if stream is None:
            return None
        sequence = stream.on_packet(packet.sequence_number, len(data), time.monotonic())
        if sequence >= 0:
            self.impl.forward(
                self.targets, packet, data, sequence, packet.payload_offset,
                packet.padding_size, time.monotonic(),
            )  # fmt: skip
        arm = self.arm_next.pop(packet.ssrc, None)
        if arm is None:
            return stream if stream.armed else None
        stream.arm(
            packet.ssrc, self.targets, self.groups[packet.ssrc], forward=self.impl.forward,
            vp8=arm[0], audio_level_id=arm[1], wake=arm[2] if arm[0] else 0.0,
        )  # fmt: skip
        return stream

    def drain(self, pending: int) -> None:
        deadline = time.monotonic() + 2
        while pending > 0:
            got = self.reader.drain(min(64, pending))
            pending -= got
            if not got:
                assert time.monotonic() < deadline, "datagrams did not arrive"
                time.sleep(0.001)
        self.counts = [a + b for a, b in zip(self.counts, self.reader.take_counts(), strict=True)]

    def state(self) -> tuple[Any, ...]:
        streams = [
            (s.packets, s.octets, s.base_seq, s.max_ext_seq, s.seq_offset, s.seq_continue,
             s.last_seq, s.level_packets, s.loud_packets, s.loud_dbov_sum, s.armed, s.ssrc, s.wake)
            for s in self.streams.values()
        ]  # fmt: skip
        targets = [
            (t.sent_any, t.last_out_seq, t.last_out_ts, t.packets_sent, t.octets_sent,
             t.last_packet if isinstance(t.last_packet, bytes) else getattr(t.last_packet, "data", None))
            for t in self.targets
        ]  # fmt: skip
        route = (self.route.rtp_packets, self.route.octets, self.route.taken,
                 self.route.taken_octets, self.route.unprotect_failures, self.route.known)  # fmt: skip
        return streams, targets, route, self.counts

    def close(self) -> None:
        self.reader.close()
        self.batch.close()
        self.sock.close()
        self.source.close()


def one_byte_block(elements: list[tuple[int, bytes]], cut: int) -> bytes:
    body = b"".join(bytes([ext_id << 4 | (len(v) - 1) & 0x0F]) + v for ext_id, v in elements)
    body += bytes(-len(body) % 4)
    words = len(body) // 4 + cut  # cut > 0: the header claims more than there is
    return struct.pack("!HH", 0xBEDE, words) + body


def two_byte_block(elements: list[tuple[int, bytes]], cut: int) -> bytes:
    body = b"".join(bytes([ext_id, len(v)]) + v for ext_id, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0x1000, len(body) // 4 + cut) + body


vp8_descriptor = st.one_of(
    st.binary(min_size=1, max_size=6),  # anything, truncated ones too
    st.sampled_from([b"\x10", b"\x90\x80\x81\x23", b"\x90\xe0\x85\x01\x07\x40", b"\x10\x00"]),
)
element = st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=4))
rtp_packet = st.fixed_dictionaries(
    {
        "ssrc": st.integers(0, 1),
        "seq": st.one_of(st.integers(0, 40), st.integers(65500, 65535), st.integers(0, 65535)),
        "version": st.sampled_from([2, 2, 2, 2, 2, 1]),
        "marker": st.booleans(),
        "csrc": st.integers(0, 3),
        "ext": st.sampled_from([None, None, "one", "one", "two"]),
        "elements": st.lists(element, max_size=3),
        "level": st.one_of(st.none(), st.integers(0, 127)),
        "cut": st.sampled_from([0, 0, 0, 0, 1]),
        "descriptor": vp8_descriptor,
        "payload": st.binary(max_size=40),
        "padding": st.sampled_from([0, 0, 0, 3, -1]),  # -1: a count that overruns the packet
    }
)


def build(p: dict[str, Any]) -> bytes:
    elements = list(p["elements"])
    if p["level"] is not None:
        elements.append((LEVEL_ID, bytes([p["level"]])))
    ext = b""
    if p["ext"] == "one":
        ext = one_byte_block(elements, p["cut"])
    elif p["ext"] == "two":
        ext = two_byte_block(elements, p["cut"])
    padding = b""
    if p["padding"] > 0:
        padding = bytes(p["padding"] - 1) + bytes([p["padding"]])
    elif p["padding"] < 0:
        padding = b"\xff"
    b0 = p["version"] << 6 | (0x10 if ext else 0) | (0x20 if padding else 0) | p["csrc"]
    head = struct.pack(
        "!BBHII", b0, (0x80 if p["marker"] else 0) | 96, p["seq"], p["seq"] * 3000,
        SSRCS[p["ssrc"]],
    )  # fmt: skip
    return head + bytes(4 * p["csrc"]) + ext + p["descriptor"] + p["payload"] + padding


operations = st.one_of(
    st.tuples(st.just("send"), rtp_packet),
    st.tuples(st.just("send"), rtp_packet),
    st.tuples(st.just("send"), rtp_packet),
    st.tuples(st.just("send"), rtp_packet),
    st.tuples(
        st.just("arm"),
        st.integers(0, 1),
        st.booleans(),
        st.sampled_from([0, LEVEL_ID, 5]),
        st.sampled_from(WAKES),
    ),
    st.tuples(st.just("disarm"), st.integers(0, 1)),
    st.tuples(st.just("forget"), st.integers(0, 1)),
    st.tuples(st.just("learn"), st.integers(0, 1)),
    st.tuples(st.just("drain")),
)


@pytest.fixture
def pair_factory() -> Iterator[Any]:
    made: list[Side] = []

    def make(profile: str | None) -> tuple[Side, Side]:
        sides = (Side(compiled(), profile, True), Side(fastpath.PYTHON, profile, False))
        made.extend(sides)
        return sides

    yield make
    for side in made:
        side.close()


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    profile=st.sampled_from([None, next(iter(PROFILES))]),
    arms=st.lists(
        st.tuples(st.booleans(), st.sampled_from([0, LEVEL_ID]), st.sampled_from(WAKES)),
        min_size=2,
        max_size=2,
    ),
    ops=st.lists(operations, min_size=5, max_size=60),
)
def test_armed_streams_agree_with_the_reference(
    pair_factory: Any, profile: str | None, arms: list[Any], ops: list[tuple[Any, ...]]
) -> None:
    sides = pair_factory(profile)
    for side in sides:  # the first packet of each SSRC arms its stream
        side.arm_next = {ssrc: arm for ssrc, arm in zip(SSRCS, arms, strict=True)}
    sender = None if profile is None else sessions(profile)[0]
    pending = 0
    for op in ops:
        kind = op[0]
        if kind == "send":
            data = build(op[1])
            if sender is not None:
                if data[0] >> 6 != 2:
                    continue  # libsrtp protects RTP only
                try:
                    data = sender.protect(data)
                except Exception:  # a header libsrtp will not protect
                    continue
            for side in sides:
                side.source.sendto(data, side.sock.getsockname())
            pending += 1
        elif kind == "arm":
            for side in sides:
                side.arm_next[SSRCS[op[1]]] = (op[2], op[3], op[4])
        elif kind == "disarm":
            for side in sides:
                side.streams[SSRCS[op[1]]].disarm()
        elif kind in ("forget", "learn"):
            for side in sides:
                getattr(side.route, kind)(SSRCS[op[1]])
        else:
            for side in sides:
                side.drain(pending)
            pending = 0
            assert sides[0].calls == sides[1].calls
            assert sides[0].batch.pending() == sides[1].batch.pending()
    for side in sides:
        side.drain(pending)
    assert sides[0].calls == sides[1].calls
    assert sides[0].batch.pending() == sides[1].batch.pending()
    assert sides[0].state() == sides[1].state()
    if sides[0].route.taken:
        event("the reader took some packets itself")
    if any(c[0] == "schedule" for c in sides[0].calls):
        event("flush groups scheduled")


@pytest.mark.parametrize("name", ["compiled", "python"])
def test_a_stream_arms_only_with_its_own_forward(name: str) -> None:
    stream = layerstream.new_stream() if name == "compiled" else layerstream.Stream()
    impl = compiled() if name == "compiled" else fastpath.PYTHON
    batch = impl.batch(-1)
    target = impl.target(batch, ("127.0.0.1", 40000))
    with pytest.raises(TypeError):
        stream.arm(1, [target], None, forward=impl.forward)  # a list, not a tuple
    with pytest.raises(ValueError):
        stream.arm(1 << 32, (target,), None, forward=impl.forward)
    if name == "compiled":
        with pytest.raises(TypeError):
            stream.arm(1, (target,), None, forward=fastpath.PYTHON.forward)
        with pytest.raises(TypeError):  # a reference target
            stream.arm(1, (fastpath.PYTHON.target(batch, ("127.0.0.1", 1)),), None,
                       forward=impl.forward)  # fmt: skip
    assert not stream.armed
    for wake in (-0.1, 61.0, float("nan")):
        with pytest.raises(ValueError):
            stream.arm(1, (target,), None, forward=impl.forward, vp8=True, wake=wake)
    with pytest.raises(ValueError):  # key frames are known for VP8 only
        stream.arm(1, (target,), None, forward=impl.forward, wake=0.1)
    assert not stream.armed
    stream.arm(7, (target,), None, forward=impl.forward)
    assert stream.armed and stream.ssrc == 7 and stream.wake == 0.0
    stream.arm(7, (target,), None, forward=impl.forward, vp8=True, wake=0.25)
    assert stream.wake == 0.25
    stream.disarm()
    assert not stream.armed and stream.wake == 0.0
    batch.close()


@pytest.mark.parametrize("compiled_side", [True, False])
def test_armed_with_wake_python_sees_key_frames_and_one_packet_per_interval(
    pair_factory: Any, compiled_side: bool
) -> None:
    """A sink waits for a key frame: the reader takes delta frames and padding itself, hands
    the packets that may start a key frame (and frame starts it cannot read) to `on_rtp`, and
    one packet once the interval is over."""
    side = pair_factory(None)[0 if compiled_side else 1]
    ssrc = SSRCS[0]
    key, delta, middle = b"\x10\x00\x9d\x01\x2a", b"\x10\x01\x00\x00", b"\x00\x00\x00\x00"
    cut = b"\x90"  # X set, the extension byte missing: unreadable
    payloads = [b"\x10", key, delta, middle, b"", delta, cut, middle, key]
    side.arm_next[ssrc] = (True, 0, 50.0)

    def send(seq: int, payload: bytes) -> None:
        data = rtp(payload, ssrc=ssrc, sequence_number=seq, timestamp=seq * 3000,
                   padding=4 if not payload else 0)  # fmt: skip
        side.source.sendto(data, side.sock.getsockname())
        side.drain(1)

    send(0, b"\x10\x00\x9d\x01\x2a")  # arms the stream, with wake
    assert side.streams[ssrc].wake == 50.0
    for seq, payload in enumerate(payloads, start=1):
        send(seq, payload)
    seen = [RtpPacket.parse(data).sequence_number for kind, data in side.calls if kind == "rtp"]
    assert seen == [0, 1, 2, 7, 9]  # the arming packet, "\x10" (cut short), the key frames, cut
    assert side.route.taken == 5
    side.streams[ssrc].arm(ssrc, side.targets, None, forward=side.impl.forward, vp8=True,
                           wake=1e-9)  # fmt: skip
    send(20, delta)
    send(21, middle)
    seen = [RtpPacket.parse(data).sequence_number for kind, data in side.calls if kind == "rtp"]
    assert seen[-2:] == [20, 21]  # each one after the interval


@pytest.mark.parametrize("compiled_side", [True, False])
def test_a_batch_of_taken_packets_fans_out_target_by_target(
    pair_factory: Any, compiled_side: bool
) -> None:
    """The packets an armed stream took in one recvmmsg batch reach each target as one run, in
    order (one GSO message per subscriber), target after target, not packet after packet."""
    side = pair_factory(None)[0 if compiled_side else 1]
    ssrc = SSRCS[0]
    side.arm_next[ssrc] = (True, 0, 0.0)
    first = rtp(b"\x10\x00\x9d\x01\x2a", ssrc=ssrc, sequence_number=0, timestamp=0)
    side.source.sendto(first, side.sock.getsockname())
    side.drain(1)  # arms the stream
    assert side.streams[ssrc].armed
    side.batch.flush()
    for seq in (1, 2, 3):
        side.source.sendto(rtp(b"\x00\x00\x00\x00" + bytes([seq]), ssrc=ssrc,
                               sequence_number=seq, timestamp=3000), side.sock.getsockname())  # fmt: skip
    side.drain(3)
    assert side.route.taken == 3
    order = [
        (addr[1], RtpPacket.parse(data).sequence_number) for data, addr in side.batch.pending()
    ]
    ports = [t.addr[1] for t in side.targets]
    assert order == [(port, seq) for port in ports for seq in (1, 2, 3)]
    assert [c for c in side.calls if c[0] == "schedule"] == [("schedule", "g0")]


class _NoFlush:
    def add(self, queue: Any) -> None:
        pass


@pytest.mark.parametrize("compiled_side", [True, False])
def test_a_large_fan_out_is_sent_in_the_middle(compiled_side: bool) -> None:
    """Once a send batch holds FANOUT_FLUSH_AT datagrams after a target's run, it is sent at
    once: the first subscribers' copies do not wait for the last ones'."""
    impl = compiled() if compiled_side else fastpath.PYTHON
    sock, source, sink = udp_socket(), udp_socket(), udp_socket()
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    reader = impl.reader(sock.fileno(), lambda data, addr: None)
    stream = layerstream.new_stream() if compiled_side else layerstream.Stream()
    route = impl.route(source.getsockname(), lambda data: stream, None)
    reader.add(route)
    route.learn(SSRCS[0])
    fast = FastBatch(impl.batch(sink.fileno(), capacity=4096), _NoFlush())  # type: ignore[arg-type]
    batch = fast.batch
    per_target = 4
    count = fastrecv_py.FANOUT_FLUSH_AT // per_target + 10
    targets = tuple(impl.target(batch, sink.getsockname()) for _ in range(count))
    for t in targets:
        t.ssrc, t.payload_type = 0xABC, 100
    stream.arm(SSRCS[0], targets, None, forward=impl.forward)
    try:
        for seq in range(per_target + 1):  # the first goes to on_rtp, which keeps the stream
            source.sendto(rtp(b"\x00" * 8, ssrc=SSRCS[0], sequence_number=seq),
                          sock.getsockname())  # fmt: skip
        deadline = time.monotonic() + 2
        got = 0
        while got < per_target + 1:
            got += reader.drain(per_target + 1 - got)
            assert time.monotonic() < deadline, "datagrams did not arrive"
        assert route.taken == per_target
        assert batch.fanout_flushes == 1
        assert batch.sent == fastrecv_py.FANOUT_FLUSH_AT  # the first 64 targets' runs
        assert len(batch) == (count - fastrecv_py.FANOUT_FLUSH_AT // per_target) * per_target
        before = (COUNTERS.send_datagrams, COUNTERS.send_flushes)
        fast.flush()  # the end of the loop iteration: the rest, and both flushes counted
        assert batch.sent == count * per_target
        assert (COUNTERS.send_datagrams - before[0], COUNTERS.send_flushes - before[1]) == (
            count * per_target,
            2,
        )
    finally:
        reader.close()
        batch.close()
        for s in (sock, source, sink):
            s.close()
