"""The subscriber's batched receive path (`loadtest.rx`): the C table (`loadtest._rx`, built by
`pip install -e .`) and the pure-Python one count identically, from bytes and from real
sockets, and stay bounded whatever arrives."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import _rx, rx
from loadtest.packets import Trailer
from loadtest.participant import Subscriber

ADDR = ("127.0.0.1", 5000)
KINDS = ("c", "python")


def table(kind: str, sample_every: int = 3, capacity: int = rx.STREAM_CAPACITY) -> Any:
    return _rx.Table(sample_every, capacity) if kind == "c" else rx.PyTable(sample_every, capacity)


def rtp(seq: int, ssrc: int, size: int = 40, pt: int = 96, first: int = 0x80) -> bytes:
    header = struct.pack("!BBHII", first, pt, seq & 0xFFFF, 0, ssrc)
    return header + bytes(max(0, size - 12))


def feed(t: Any, datagrams: list[bytes]) -> tuple[list[Any], list[Any]]:
    result: tuple[list[Any], list[Any]] = t.feed([(d, ADDR) for d in datagrams])
    return result


def state(t: Any) -> tuple[Any, ...]:
    return (t.streams(), t.packets, t.octets, t.overflow, t.truncated)


@pytest.mark.parametrize("kind", KINDS)
def test_wrap_around_extends_the_sequence_number(kind: str) -> None:
    t = table(kind)
    feed(t, [rtp(s, 7) for s in (65534, 65535, 0, 1)])
    [(ssrc, base, highest, received, octets, _)] = t.streams()
    assert (ssrc, base, highest, received, octets) == (7, 65534, 65537, 4, 160)


@pytest.mark.parametrize("kind", KINDS)
def test_reordering_and_duplicates(kind: str) -> None:
    t = table(kind)
    feed(t, [rtp(s, 7) for s in (10, 12, 11, 11, 12, 9)])
    [(_, base, highest, received, _, _)] = t.streams()
    # 9 arrived after the first packet: older than the base, counted, never extends the range
    assert (base, highest, received) == (10, 12, 6)


@pytest.mark.parametrize("kind", KINDS)
def test_first_packet_then_every_nth_is_sampled_with_its_pending_octets(kind: str) -> None:
    t = table(kind, sample_every=3)
    packets = [rtp(s, 7, size=100 + s) for s in range(8)]
    samples, others = feed(t, packets)
    assert others == []
    assert [(s[0], s[1], s[2], s[3]) for s in samples] == [
        (7, 0, packets[0], 0),
        (7, 100 + 101 + 102, packets[3], 0),  # the first sample and the two after it
        (7, 103 + 104 + 105, packets[6], 0),
    ]
    assert t.streams()[0][5] == 106 + 107  # pending: the last sample and the one after it


@pytest.mark.parametrize("kind", KINDS)
def test_what_is_not_rtp_goes_back_untouched(kind: str) -> None:
    t = table(kind)
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
    dtls = b"\x16\xfe\xfd" + bytes(20)
    rtcp = rtp(1, 7, pt=200)  # SR: PT 192–223 is RTCP (RFC 5761)
    short = rtp(1, 7)[:11]
    v1 = rtp(1, 7, first=0x40)
    garbage = [b"", b"\x80", stun, dtls, rtcp, short, v1]
    samples, others = feed(t, garbage)
    assert samples == [] and others == [(d, ADDR) for d in garbage]
    assert t.packets == 0 and t.streams() == []


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_ssrc_flood_is_bounded(kind: str) -> None:
    t = table(kind, capacity=16)
    samples, _ = feed(t, [rtp(1, 0x1000 + n) for n in range(10_000)])
    assert len(t.streams()) == 16 and len(samples) == 16
    assert t.packets == 10_000 and t.overflow == 10_000 - 16


@pytest.mark.parametrize("kind", KINDS)
def test_count_clear_counts_without_sampling(kind: str) -> None:
    t = table(kind, sample_every=1)
    assert t.count_clear(rtp(5, 9)) == 9
    assert t.count_clear(b"\x80" * 11) is None
    samples, _ = feed(t, [rtp(6, 9)])
    assert len(samples) == 1 and samples[0][1] == 0  # clear octets are never pending
    assert t.streams()[0][:5] == (9, 5, 6, 2, 80)
    full = table(kind, capacity=1)
    full.count_clear(rtp(1, 1))
    assert full.count_clear(rtp(1, 2)) is None and full.overflow == 1


def test_bad_arguments_are_refused() -> None:
    for make in (_rx.Table, rx.PyTable):
        with pytest.raises(ValueError):
            make(0)
        with pytest.raises(ValueError):
            make(1, 0)
    with pytest.raises(TypeError):
        _rx.Table(1).feed([b"not a pair"])  # type: ignore[list-item]
    bare = _rx.Table.__new__(_rx.Table)  # never initialised: refused, not a crash
    for call in (lambda: bare.feed([]), lambda: bare.drain(0), lambda: bare.count_clear(rtp(1, 1))):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        _rx.Group().add(0, bare, None)


# -- both tables, the same stream -------------------------------------------------------------
_seq = st.integers(0, 0xFFFF)
_rtp = st.builds(
    rtp,
    _seq,
    st.sampled_from([1, 2, 3, 0xFFFFFFFF, 0x80000000]),
    st.integers(12, 1300),
    st.sampled_from([0, 96, 111, 127, 191, 192, 200, 223, 224, 255]),
    st.sampled_from([0x80, 0x90, 0xBF, 0x7F, 0xC0]),
)
_garbage = st.binary(max_size=40)


def _runs(draw: Any) -> list[bytes]:
    """Sequential runs (with wrap-around), then reorderings and duplicates of them."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 4))):
        ssrc, start = draw(st.integers(1, 5)), draw(_seq)
        out += [rtp(start + i, ssrc, 50) for i in range(draw(st.integers(1, 40)))]
    return out


@st.composite
def _streams(draw: Any) -> list[bytes]:
    packets = _runs(draw) + draw(st.lists(st.one_of(_rtp, _garbage), max_size=80))
    packets = draw(st.permutations(packets)) if draw(st.booleans()) else packets
    dupes = draw(st.lists(st.integers(0, max(0, len(packets) - 1)), max_size=10))
    return packets + [packets[i] for i in dupes if packets]


@settings(max_examples=300, deadline=None)
@given(_streams(), st.integers(1, 12), st.integers(1, 6), st.integers(1, 5))
def test_c_and_python_count_identically(
    packets: list[bytes], every: int, capacity: int, chunks: int
) -> None:
    c, py = table("c", every, capacity), table("python", every, capacity)
    step = max(1, len(packets) // chunks)
    for i in range(0, max(1, len(packets)), step):  # batch boundaries must not matter
        assert feed(c, packets[i : i + step]) == feed(py, packets[i : i + step])
    assert state(c) == state(py)
    for d in packets[:5]:
        assert c.count_clear(d) == py.count_clear(d)
    assert state(c) == state(py)


# -- from real sockets ------------------------------------------------------------------------
def _pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    receiver.setsockopt(socket.SOL_SOCKET, rx.SO_TIMESTAMPNS, 1)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    return receiver, sender


def _drain_all(t: Any, source: Any, datagrams: int) -> tuple[list[Any], list[Any]]:
    """Drain until `datagrams` were read (loopback may deliver after `sendto` returns)."""
    samples: list[Any] = []
    others: list[Any] = []
    deadline = time.monotonic() + 5
    while t.packets + t.truncated + len(others) < datagrams and time.monotonic() < deadline:
        s, o = t.drain(source)
        samples += s
        others += o
        time.sleep(0.01)
    return samples, others


def test_socket_drains_match_and_carry_kernel_times() -> None:
    """139 datagrams (RTP of three streams, STUN, RTCP, one too large) sent to a socket read by
    the C table and to one read by the Python table: the same samples, others and counters."""
    packets = [rtp(n, 1 + n % 3, 200) for n in range(120)]
    packets += [b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12), rtp(1, 1, 80, pt=201)] * 9
    packets.insert(50, rtp(99, 1, rx.RX_BUFFER + 1))  # dropped as truncated
    results = []
    before = time.time_ns()
    for kind in KINDS:
        receiver, sender = _pair()
        for d in packets:
            sender.sendto(d, receiver.getsockname())
        t = table(kind, sample_every=7)
        source = receiver.fileno() if kind == "c" else receiver
        samples, others = _drain_all(t, source, len(packets))
        assert t.drain(source) == ([], [])  # empty now: EAGAIN is not an error
        assert all(before <= s[3] <= time.time_ns() for s in samples)
        results.append(
            (
                [s[:3] for s in samples],
                [(d, a[0]) for d, a in others],
                state(t),
                sender.getsockname(),
            )
        )
        assert all(a == sender.getsockname() for _, a in others)
        receiver.close()
        sender.close()
    (c_samples, c_others, c_state, _), (py_samples, py_others, py_state, _) = results
    assert c_samples == py_samples and c_others == py_others and c_state == py_state
    assert c_state[1] == 120 and c_state[4] == 1  # RTCP is not RTP; one truncated


@pytest.mark.parametrize("kind", KINDS)
def test_ipv6_sources_come_back_as_asyncio_gives_them(kind: str) -> None:
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        receiver.bind(("::1", 0))
        receiver.setblocking(False)
        sender.bind(("::1", 0))
        stun = b"\x00\x01" + bytes(18)
        sender.sendto(stun, receiver.getsockname())
        t = table(kind)
        _, others = _drain_all(t, receiver.fileno() if kind == "c" else receiver, 1)
        assert others == [(stun, sender.getsockname())]  # (host, port, flowinfo, scope_id)
    finally:
        receiver.close()
        sender.close()


@pytest.mark.parametrize("kind", KINDS)
def test_group_reads_every_ready_member(kind: str) -> None:
    group: Any = _rx.Group() if kind == "c" else rx.PyGroup()
    pairs = [_pair() for _ in range(3)]
    tables = [table(kind, sample_every=1) for _ in pairs]
    try:
        for n, ((receiver, _), t) in enumerate(zip(pairs, tables, strict=True)):
            group.add(receiver.fileno(), t, f"owner-{n}")
        assert group.members() == 3 and group.poll() == []
        for n, (receiver, sender) in enumerate(pairs[:2]):
            sender.sendto(rtp(n, 40 + n), receiver.getsockname())
            sender.sendto(b"\x00\x01" + bytes(18), receiver.getsockname())
        ready: list[Any] = []
        deadline = time.monotonic() + 5
        while sum(len(s) + len(o) for _, s, o, _ in ready) < 4 and time.monotonic() < deadline:
            ready += group.poll()
            time.sleep(0.01)
        merged: dict[str, list[int]] = {}
        for owner, s, o, err in ready:
            counts = merged.setdefault(owner, [0, 0, 0])
            counts[0] += len(s)
            counts[1] += len(o)
            counts[2] |= err
        assert sorted((owner, *c) for owner, c in merged.items()) == [
            ("owner-0", 1, 1, 0),
            ("owner-1", 1, 1, 0),
        ]
        assert group.poll() == []
        group.remove(pairs[0][0].fileno())
        group.remove(pairs[0][0].fileno())  # twice is harmless
        assert group.members() == 2
    finally:
        group.close()
        for receiver, sender in pairs:
            receiver.close()
            sender.close()
    with pytest.raises(ValueError):
        group.poll()


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.other: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.other.append(data)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("interval", [0.0, 0.005])
async def test_batched_reader_on_a_datagram_endpoint(
    kind: str, interval: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader takes an asyncio endpoint's socket: RTP is counted and sampled, the rest
    reaches the protocol, sending still works, and closing gives the group back."""
    monkeypatch.setattr(rx, "poll_interval_s", interval)
    loop = asyncio.get_running_loop()
    transport, endpoint = await loop.create_datagram_endpoint(
        _Endpoint, local_addr=("127.0.0.1", 0)
    )
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    t = table(kind, sample_every=4)
    sampled: list[Any] = []
    assert rx.BatchedReader.supported(transport)
    reader = rx.BatchedReader(transport, endpoint.datagram_received, t, sampled.extend)
    try:
        target = transport.get_extra_info("sockname")
        for n in range(40):
            peer.sendto(rtp(n, 3, 100), target)
        peer.sendto(b"\x00\x01" + bytes(18), target)
        async with asyncio.timeout(5):
            while t.packets < 40 or not endpoint.other:
                await asyncio.sleep(0.01)
        assert len(sampled) == 10 and all(s[3] > 0 for s in sampled)
        assert endpoint.other == [b"\x00\x01" + bytes(18)]
        assert rx.wakeups() >= 1
        transport.sendto(b"reply", peer.getsockname())
        await asyncio.sleep(0.05)
        assert peer.recv(100) == b"reply"
    finally:
        reader.close()
        reader.close()
        transport.close()
        peer.close()
    assert not rx._watches.get(loop)


@pytest.mark.parametrize("mode", ["c", "python", "per-datagram"])
def test_subscriber_attributes_octets_to_the_sampled_layer(mode: str) -> None:
    """Octets between two samples belong to the layer the earlier sample named: per layer they
    add up to every octet after the first sample of the stream."""
    sub = Subscriber(
        "ws://127.0.0.1:9", "token", "sub", sample_every=5, layout=lambda t: {}, rx_mode=mode
    )
    sub.sub_transport.unprotect = lambda data: data  # "decrypted": the packets are clear here

    def packet(seq: int, layer: int) -> bytes:
        body = bytes(50) + bytes(Trailer(4, layer, 0, time.monotonic_ns()))
        return rtp(seq, 77, 12) + body

    layers = [0] * 12 + [2] * 13
    datagrams = [packet(n, layer) for n, layer in enumerate(layers)]
    for d in datagrams:
        sub._on_rtp(d)
    stream = sub.streams[77]
    assert (stream.received, stream.expected, stream.track, stream.layer) == (25, 25, 4, 2)
    assert stream.layer_switches == 1 and sub.packets == 25
    size = len(datagrams[0])
    # samples at 0, 5, 10 say layer 0; 15, 20 say layer 2
    assert stream.octets_by_layer == {0: 15 * size, 2: 10 * size}
    assert len(sub.latency_ms) == 5 and sub.decrypt_errors == 0


# -- the report's own-CPU fields ---------------------------------------------------------------
def test_report_gives_the_load_testers_cpu_per_received_packet() -> None:
    from loadtest.config import Scenario, parse_args
    from loadtest.report import Report

    assert parse_args(["--rx", "python", "--api-key", "k", "--api-secret", "s"]).rx == "python"
    assert Scenario().rx == "auto" and Scenario().sample_every == 20
    report = Report(Scenario())
    report.start, report.steady_start, report.steady_end = 0.0, 10.0, 20.0
    report.cpu_steady_start, report.cpu_steady_end = 5.0, 6.0
    for worker, (cpu_per_s, pps) in enumerate([(0.2, 100_000), (0.1, 100_000)]):
        for t in range(0, 25):
            tick = {"t": float(t), "cpu_s": cpu_per_s * t, "packets": pps * t, "octets": 0}
            report.add_tick(worker, {**tick, "latency_ms": []})
    report.finals = [{"rx": ["recvmmsg (C)"], "rx_overflow": 0, "rx_truncated": 2}]
    own = report._own_summary()
    # 10 s steady: (2 + 1) CPU seconds over 2 M packets
    assert own["loadtest_cpu_us_per_packet"] == 1.5
    assert own["loadtest_worker_cpu_pct"] == [20.0, 10.0]
    assert own["loadtest_publisher_cpu_pct"] == 10.0
    assert own["loadtest_cpu_basis"] == "steady phase"
    assert (own["loadtest_rx"], own["rx_truncated"]) == ("recvmmsg (C)", 2)


def test_report_gives_the_steady_phases_latency_apart() -> None:
    from loadtest.config import Scenario
    from loadtest.report import Report

    report = Report(Scenario())
    report.start, report.steady_start, report.steady_end = 0.0, 10.0, 20.0
    for t in range(0, 25):
        # joins (before 10 s) and the drain (after 20 s) are slow, the steady phase fast
        latency = [1.0, 2.0] if 10 <= t <= 20 else [500.0]
        report.add_tick(0, {"t": float(t), "packets": 0, "octets": 0, "latency_ms": latency})
    assert report._steady_latency() == {"p50": 1.0, "p99": 2.0, "max": 2.0, "samples": 22}
