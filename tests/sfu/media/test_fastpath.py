"""The compiled per-copy path (`sfu.media._fastpath`) against its pure-Python reference (`fastpath_py`).

Random packet sequences — header extensions of both forms, CSRCs, padding, VP8 payload
descriptors of every shape (truncated ones too), padding-only probes, reordered and repeated
sequence numbers — with random parameter changes between them (SSRC, payload type, sequence and
timestamp offsets, switch points, epochs, VP8 offsets) and targets dropped from and added back
to the list: both implementations must queue byte-identical datagrams, before SRTP and after it
(sessions with the same keys), and hold identical state and history. Then the batch's sends:
`sendmmsg`, with and without GSO, delivers exactly what was queued, in order. The extension is a
component of this project (built at install time): a missing one fails here.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from sfu.media import fastpath, fastpath_py
from sfu.media.rtp.header import RtpHeader, RtpPacket
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor

KEY = bytes(range(44))  # master key + salt, long enough for every profile
ADDR = ("127.0.0.1", 40000)
STATE = (
    "ssrc",
    "payload_type",
    "ts_offset",
    "seq_offset",
    "switch_seq",
    "epoch",
    "pid_offset",
    "tl0_offset",
    "keyidx_offset",
    "sent_any",
    "last_out_seq",
    "last_out_ts",
    "last_out_time",
    "packets_sent",
    "octets_sent",
    "send_dropped",
    "closed",
)


def compiled() -> fastpath.Implementation:
    assert fastpath.COMPILED is not None, "sfu.media._fastpath is not built: pip install -e ."
    return fastpath.COMPILED


PROFILES = {
    "aes_cm_sha1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "aead_aes_128_gcm": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def session(profile: str) -> Session:
    """An outbound session keyed as aiortc keys its transmit one (retransmits allowed)."""
    policy = Policy(KEY, Policy.SSRC_ANY_OUTBOUND, PROFILES[profile])
    policy.allow_repeat_tx = True
    return Session(policy)


# -- packets -------------------------------------------------------------------------------------

descriptors = st.one_of(
    st.builds(
        lambda *f: bytes(Vp8PayloadDescriptor(*f)),
        st.booleans(),
        st.integers(0, 7),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 0x7FFF)),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 255)),
        st.one_of(st.none(), st.integers(0, 3)),
        st.booleans(),
        st.one_of(st.none(), st.integers(0, 31)),
        st.booleans(),
    ),
    st.binary(max_size=7),  # any shape: reserved bits set, truncated, no descriptor at all
)

extensions = st.one_of(
    st.just([]),
    st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=4),
    st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), min_size=1, max_size=3),
)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    padding = draw(st.one_of(st.just(0), st.integers(1, 255)))
    probe = draw(st.integers(0, 9)) == 0
    body = b"" if probe else draw(descriptors) + draw(st.binary(max_size=40))
    if draw(st.integers(0, 19)) == 0:
        body += bytes(draw(st.integers(1700, 1950)))  # near and past the protect buffer
    header = RtpHeader(
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        marker=draw(st.booleans()),
        csrc=tuple(draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15))),
        extensions=draw(extensions),
        padding=padding > 0,
    )
    tail = (
        draw(st.binary(min_size=padding - 1, max_size=padding - 1)) + bytes([padding])
        if padding
        else b""
    )
    return bytes(header) + body + tail


# -- operations ----------------------------------------------------------------------------------

PARAMETERS = {
    "ssrc": st.integers(0, 0xFFFFFFFF),
    "payload_type": st.integers(0, 127),
    "ts_offset": st.integers(0, 0xFFFFFFFF),
    "seq_offset": st.integers(-70000, 70000),
    "switch_seq": st.one_of(st.just(0), st.integers(0, 3000), st.integers(0, 140000)),
    "epoch": st.integers(0, 5),
    "pid_offset": st.one_of(st.just(0), st.integers(0, 0x7FFF)),
    "tl0_offset": st.one_of(st.just(0), st.integers(0, 255)),
    "keyidx_offset": st.one_of(st.just(0), st.integers(0, 31)),
    "sent_any": st.just(False) | st.booleans(),
    "last_out_seq": st.integers(0, 140000),
    "closed": st.integers(0, 3).map(lambda n: n == 0),  # the transport closed (a shared batch)
}
#: what a target may start with (it starts open, with nothing sent)
INITIAL = {k: v for k, v in PARAMETERS.items() if k not in ("last_out_seq", "closed")}

operations = st.one_of(
    st.tuples(st.just("packet"), packets(), st.integers(-3, 40)),
    st.tuples(st.just("set"), st.integers(0, 3), st.sampled_from(sorted(PARAMETERS)), st.data()),
    st.tuples(st.just("toggle"), st.integers(0, 3)),
    st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 511), st.booleans()),
    st.tuples(st.just("resend"), st.integers(0, 3), st.integers(0, 511)),
    st.tuples(st.just("stamp"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("ext_id"), st.integers(0, 14)),
    st.tuples(st.just("clear"), st.integers(0, 3)),
)


class Pair:
    """The same targets in both implementations, driven in lockstep."""

    def __init__(self, initial: list[dict[str, Any]], profile: str | None, capacity: int) -> None:
        c = compiled()
        self.impls = (c, fastpath.PYTHON)
        self.batches = [impl.batch(-1, capacity=capacity) for impl in self.impls]
        self.targets: list[list[Any]] = [[], []]
        for i, parameters in enumerate(initial):
            for side, impl in enumerate(self.impls):
                srtp = None if profile is None else session(profile)
                t = impl.target(self.batches[side], ("127.0.0.1", 40000 + i), srtp)
                for name, value in parameters.items():
                    setattr(t, name, value)
                self.targets[side].append(t)
        self.active = [True] * len(initial)
        self.ext_seq = 1000
        # one transport-wide sequence per side, shared by the targets it is given to
        self.sequences = [impl.sequence(3) for impl in self.impls]

    def check(self) -> None:
        for c, p in zip(*self.targets, strict=True):
            for name in STATE:
                assert getattr(c, name) == getattr(p, name), name
            assert c.last_packet is p.last_packet
            assert c.addr == p.addr
        assert self.batches[0].pending() == self.batches[1].pending()
        assert len(self.batches[0]) == len(self.batches[1])
        assert self.batches[0].dropped == self.batches[1].dropped
        assert self.batches[0].auto_flushes == self.batches[1].auto_flushes
        c_seq, p_seq = self.sequences
        assert (c_seq.ext_id, c_seq.next_seq) == (p_seq.ext_id, p_seq.next_seq)
        for seq in range(max(0, p_seq.next_seq - 4), p_seq.next_seq + 1):
            assert c_seq.sent(seq) == p_seq.sent(seq), seq
        if p_seq.next_seq:
            event("transport-wide sequence numbers used")

    def check_history(self) -> None:
        for c, p in zip(*self.targets, strict=True):
            for slot in range(fastpath_py.HISTORY_SIZE):
                assert c.entry(slot) == p.entry(slot), slot

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "packet":
            _, data, step = op
            self.ext_seq = max(0, self.ext_seq + step)
            packet = RtpPacket.parse(data)
            results = []
            for side, impl in enumerate(self.impls):
                chosen = [t for t, on in zip(self.targets[side], self.active, strict=True) if on]
                results.append(
                    impl.forward(
                        chosen,
                        packet,
                        data,
                        self.ext_seq,
                        packet.payload_offset,
                        packet.padding_size,
                        float(self.ext_seq) / 7,
                    )
                )
            assert results[0] == results[1]
            if packet.payload_offset + packet.padding_size >= len(data):
                event("padding-only probe")
            elif any(t.pid_offset or t.tl0_offset or t.keyidx_offset for t in self.targets[1]):
                event("VP8 offsets set")
            event(f"copies: {min(results[0][0], 2)}")
        elif kind == "set":
            _, index, name, data = op
            value = data.draw(PARAMETERS[name])
            for side in (0, 1):
                setattr(self.targets[side][index % len(self.active)], name, value)
        elif kind == "toggle":
            index = op[1] % len(self.active)
            self.active[index] = not self.active[index]
        elif kind == "resend":  # what a NACK answer does: rebuild from history, send
            _, index, slot = op
            index %= len(self.active)
            if slot % 2:  # the newest one sent
                slot = self.targets[1][index].last_out_seq % fastpath_py.HISTORY_SIZE
            results = [self.targets[side][index].resend(slot, slot / 3) for side in (0, 1)]
            assert results[0] == results[1]
            event(f"resent: {results[0]}")
        elif kind == "send":  # any plaintext datagram: a sender report, a received packet
            _, index, slot, rtcp = op
            sent = []
            for side in (0, 1):
                t = self.targets[side][index % len(self.active)]
                entry = t.entry(slot)
                data = entry[2] if entry is not None else bytes(RtpHeader(96, slot, 0, 1))
                sent.append(t.send(data, rtcp=rtcp))
            assert sent[0] == sent[1]
        elif kind == "stamp":  # a target on the transport-wide sequence, or off it
            _, index, on = op
            for side in (0, 1):
                t = self.targets[side][index % len(self.active)]
                t.twcc = self.sequences[side] if on else None
            event(f"stamped: {on}")
        elif kind == "ext_id":  # negotiated (1..14) or not (0)
            for sequence in self.sequences:
                sequence.ext_id = op[1]
        elif kind == "clear":
            for batch in self.batches:
                batch.clear()
        self.check()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    initial=st.lists(
        st.fixed_dictionaries(INITIAL),
        min_size=1,
        max_size=4,
    ),
    profile=st.sampled_from([None, *PROFILES]),
    capacity=st.sampled_from([3, 1024]),
    ops=st.lists(operations, min_size=1, max_size=40),
)
def test_compiled_and_reference_agree(
    initial: list[dict[str, Any]], profile: str | None, capacity: int, ops: list[tuple[Any, ...]]
) -> None:
    pair = Pair(initial, profile, capacity)
    for op in ops:
        pair.run(op)
    pair.check_history()


def test_a_vp8_switch_renumbers_the_descriptor() -> None:
    """One hand-checked case: offsets applied, a 7-bit PictureID widened, reserved bits cleared."""
    descriptor = bytes([0x90 | 0x40, 0xF0 | 0x0F, 0x05, 0x07, 0x40 | 0x1F])  # R bits, RSV set
    data = bytes(RtpHeader(96, 10, 90000, 7, csrc=(1, 2))) + descriptor + b"payload"
    packet = RtpPacket.parse(data)
    impl = compiled()
    batch = impl.batch(-1)
    t = impl.target(batch, ADDR)
    t.pid_offset, t.tl0_offset, t.keyidx_offset = 10, 8, 3
    t.ssrc, t.payload_type = 0xAABBCCDD, 100
    assert impl.forward([t], packet, data, 10, packet.payload_offset, 0, 0.0) == (1, 12 + 6 + 7)
    ((datagram, addr),) = batch.pending()
    assert addr == ADDR
    # PictureID 5 - 10 = 32763 (15-bit now), TL0PICIDX 7 - 8 = 255, KEYIDX 31 - 3 = 28
    assert datagram[12:] == bytes([0x90, 0xF0, 0xFF, 0xFB, 0xFF, 0x5C]) + b"payload"
    assert datagram[:12] == bytes(RtpHeader(100, 10, 90000, 0xAABBCCDD))


@pytest.mark.parametrize("impl_name", ["compiled", "python"])
def test_a_stamped_copy_carries_the_transport_wide_sequence_number(impl_name: str) -> None:
    """One hand-checked case: the one-byte extension block after the fixed header, X set, the
    number recorded with the datagram's size and time once queued; a probe stamped too."""
    impl = compiled() if impl_name == "compiled" else fastpath.PYTHON
    batch = impl.batch(-1)
    t = impl.target(batch, ADDR)
    t.ssrc, t.payload_type = 5, 96
    t.twcc = sequence = impl.sequence(3)
    sequence.next_seq = 0x1FFFF  # the wire carries it mod 2**16
    data = bytes(RtpHeader(100, 7, 9, 1, extensions=[(1, b"ab")])) + b"payload"
    packet = RtpPacket.parse(data)
    assert impl.forward([t], packet, data, 7, packet.payload_offset, 0, 2.5) == (1, 27)
    probe = bytes(RtpHeader(100, 8, 9, 1, padding=True)) + bytes(99) + b"\x64"
    assert impl.forward([t], None, probe, 8, 12, 100, 3.0) == (1, 21)
    (first, _), (second, _) = batch.pending()
    assert (
        first
        == bytes([0x90, 96, 0, 7, 0, 0, 0, 9, 0, 0, 0, 5])
        + bytes([0xBE, 0xDE, 0, 1, 0x31, 0xFF, 0xFF, 0])
        + b"payload"
    )
    assert second[:1] == b"\xb0" and second[12:] == bytes([0xBE, 0xDE, 0, 1, 0x31, 0, 0, 0, 1])
    assert sequence.next_seq == 0x20001
    assert sequence.sent(0x1FFFF) == (2.5, 27) and sequence.sent(0x20000) == (3.0, 21)
    assert sequence.sent(0x1FFFF - impl._module.TWCC_HISTORY) is None
    assert t.octets_sent == 7 + 1  # RTP payload octets: neither header nor extension
    t.twcc = None
    assert t.resend(7 % 512, 4.0) and sequence.next_seq == 0x20001
    sequence.ext_id = 0
    t.twcc = sequence
    assert t.resend(7 % 512, 4.0) and batch.pending()[-1][0][0] == 0x80
    with pytest.raises(ValueError):
        sequence.ext_id = 15
    with pytest.raises(ValueError):
        sequence.next_seq = -1


@pytest.mark.parametrize("impl_name", ["compiled", "python"])
def test_hostile_arguments_are_refused(impl_name: str) -> None:
    impl = compiled() if impl_name == "compiled" else fastpath.PYTHON
    batch = impl.batch(-1)
    t = impl.target(batch, ADDR)
    data = bytes(RtpHeader(96, 1, 2, 3)) + b"x"
    for offset, padding in ((11, 0), (14, 0), (12, 2), (12, -1)):
        with pytest.raises(ValueError):
            impl.forward([t], None, data, 1, offset, padding, 0.0)
    for ext_seq in (-1, 1 << 62):
        with pytest.raises(ValueError):
            impl.forward([t], None, data, ext_seq, 12, 0, 0.0)
    with pytest.raises(ValueError):
        impl.forward([t], None, b"\x80" * 11, 1, 12, 0, 0.0)
    assert len(batch) == 0 and t.packets_sent == 0


def test_compiled_attributes_are_range_checked() -> None:
    impl = compiled()
    t = impl.target(impl.batch(-1), ADDR)
    for name, bad in (
        ("payload_type", 128),
        ("ssrc", 1 << 32),
        ("pid_offset", 0x8000),
        ("tl0_offset", 256),
        ("keyidx_offset", 32),
        ("ssrc", -1),
    ):
        with pytest.raises((ValueError, OverflowError)):
            setattr(t, name, bad)
    with pytest.raises(ValueError):
        t.seq_offset = 1 << 62
    with pytest.raises(TypeError):
        impl.forward([object()], None, bytes(13), 1, 12, 0, 0.0)
    with pytest.raises(ValueError):
        impl.target(impl.batch(-1), ("not-an-address", 1))
    with pytest.raises(IndexError):
        t.entry(512)
    # objects whose __init__ never ran: refused, or usable, never a crash
    from sfu.media import _fastpath

    bare = _fastpath.Target.__new__(_fastpath.Target)
    with pytest.raises(TypeError):
        _fastpath.forward([bare], None, bytes(RtpHeader(96, 1, 2, 3)), 1, 12, 0, 0.0)
    with pytest.raises(TypeError):
        bare.send(b"x" * 20)
    assert bare.batch is None and bare.resend(0) is False
    batch = _fastpath.Batch.__new__(_fastpath.Batch)
    assert impl.target(batch, ADDR).send(bytes(RtpHeader(96, 1, 2, 3)))
    assert len(batch) == 1 and batch.flush() == 0 and batch.dropped == 1


# -- sending ---------------------------------------------------------------------------------------


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.settimeout(2.0)
    yield sender, receiver
    sender.close()
    receiver.close()


@pytest.mark.parametrize("gso", [False, True])
def test_flush_sends_the_batch_in_order(
    udp_pair: tuple[socket.socket, socket.socket], gso: bool
) -> None:
    sender, receiver = udp_pair
    impl = compiled()
    batch = impl.batch(sender.fileno(), gso=gso)
    other = impl.target(batch, ("127.0.0.1", 9))  # a second destination splits the runs
    target = impl.target(batch, receiver.getsockname())
    expected = []
    for i in range(60):
        size = 1000 if i % 7 else 300
        data = bytes(RtpHeader(96, i, i, 1)) + bytes([i & 0xFF]) * size
        assert target.send(data)
        expected.append(data)
        if i % 20 == 19:
            other.send(data)
    assert len(batch) == 63
    assert batch.flush() == 63
    assert [receiver.recv(65536) for _ in expected] == expected
    assert batch.sent == 63 and batch.dropped == 0
    if gso:
        assert batch.gso_datagrams > 40 and batch.syscalls == 1
    else:
        assert batch.gso_datagrams == 0
    batch.close()
    batch.close()


def test_gso_groups_by_destination_keeping_each_ones_order() -> None:
    """Fan-out interleaves destinations (packet 1 to A, B, C, packet 2 to A, B, C...): with GSO
    the flush regroups them, each destination's datagrams in their order, one message each."""
    impl = compiled()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        sender.bind(("127.0.0.1", 0))
        for r in receivers:
            r.bind(("127.0.0.1", 0))
            r.settimeout(2.0)
        batch = impl.batch(sender.fileno(), gso=True)
        targets = [impl.target(batch, r.getsockname()) for r in receivers]
        sent: list[list[bytes]] = [[], [], []]
        for i in range(10):
            for k, t in enumerate(targets):
                data = bytes(RtpHeader(96, i, k, 1)) + bytes([k]) * (500 if i < 9 else 100)
                assert t.send(data)
                sent[k].append(data)
        assert batch.flush() == 30
        assert batch.syscalls == 1 and batch.gso_datagrams == 30
        for r, expected in zip(receivers, sent, strict=True):
            assert [r.recv(65536) for _ in expected] == expected
    finally:
        sender.close()
        for r in receivers:
            r.close()


def test_load_modes(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fastpath.available()
    assert fastpath.load("auto") is fastpath.COMPILED
    assert fastpath.load("off") is fastpath.PYTHON
    with pytest.raises(ValueError):
        fastpath.load("on")
    monkeypatch.setattr(fastpath, "COMPILED", None)
    monkeypatch.setattr(fastpath, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="sfu.media.fastpath"):
        assert fastpath.load("auto") is fastpath.PYTHON
        assert fastpath.load("auto") is fastpath.PYTHON
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
