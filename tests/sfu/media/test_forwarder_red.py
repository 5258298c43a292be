"""Tests for sfu.media.forwarder with a RED audio track (RFC 2198): forwarded as it came to a
subscriber that took RED (through the fast path too), and as its primary Opus encoding alone to one
that did not: the block headers and older blocks cut off, the encodings untouched, and NACK answers
rebuilt the same; a RED payload whose blocks do not fit is not sent to those, and is counted."""

from __future__ import annotations

from typing import Any, cast

import pytest

from sfu.media import fastpath
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import TrackReceiver
from sfu.media.rtp.header import RtpPacket
from sfu.media.rtp.red import RedBlock, RedHeader
from sfu.media.transport.batch import FastBatch, Flusher
from sfu.media.transport.negotiation import SUBSCRIBER_OPUS_PT, SUBSCRIBER_RED_PT
from sfu.metrics import COUNTERS
from tests.sfu.conftest import FakeClock
from tests.sfu.packets import rtp

RED_IN_PT = 63
OUT_SSRC = 0x5B5C_0002
#: the mid and audio level a publisher sends: never forwarded
PUBLISHER_EXTENSIONS = ((4, b"0"), (1, b"\x30"))


class _NoFlush:
    def add(self, queue: object) -> None:
        pass


def _red_payload(n: int) -> tuple[bytes, bytes]:
    """Packet n's RED payload (frame n - 1 repeated, then frame n) and its primary encoding."""
    primary = bytes((0xFC, n)) + b"opus" * (n % 5 + 1)
    if n == 0:
        return bytes(RedHeader((), 111)) + primary, primary
    older = bytes((0xFC, n - 1)) + b"opus" * ((n - 1) % 5 + 1)
    header = RedHeader((RedBlock(111, 960, len(older)),), 111)
    return bytes(header) + older + primary, primary


class RedRig:
    """A RED TrackReceiver and one DownTrack, sending through `send_rtp` or a fast path."""

    def __init__(self, clock: FakeClock, path: str, *, takes_red: bool) -> None:
        self.sent: list[bytes] = []
        self._batch: Any = None
        self.path = path
        self.receiver = TrackReceiver(
            kind="audio", mime_type="audio/red", clock_rate=48000, layer_count=1,
            send_rtcp=lambda data: None, clock=clock,
        )  # fmt: skip
        self.downtrack = DownTrack(
            self.receiver, ssrc=OUT_SSRC, payload_type=SUBSCRIBER_RED_PT, send_rtp=self.sent.append,
            cname="cn", fast_sender=self._fast_sender, takes_red=lambda: takes_red,
        )  # fmt: skip
        self.receiver.add_sink(self.downtrack)

    def _fast_sender(self) -> tuple[Any, Any, Any] | None:
        impl = {"python": fastpath.PYTHON, "compiled": fastpath.COMPILED}.get(self.path)
        if impl is None:
            return None
        self._batch = impl.batch(-1, capacity=4096)
        target = impl.target(self._batch, ("192.0.2.1", 9))
        return impl.forward, target, FastBatch(self._batch, cast(Flusher, _NoFlush()))

    def out(self) -> list[bytes]:
        if self._batch is not None:
            self.sent.extend(datagram for datagram, _ in self._batch.pending())
            self._batch.clear()
        return self.sent

    def feed(self, n: int, payload: bytes, *, padding: int = 0) -> None:
        data = rtp(payload, payload_type=RED_IN_PT, sequence_number=65530 + n, timestamp=960 * n,
                   ssrc=0xAD, extensions=PUBLISHER_EXTENSIONS, padding=padding)  # fmt: skip
        self.receiver.on_rtp(RtpPacket.parse(data), 0)


PATHS = ["send_rtp", "python"] + (["compiled"] if fastpath.COMPILED is not None else [])


@pytest.mark.parametrize("path", PATHS)
def test_a_subscriber_that_took_red_gets_it_as_it_came(clock: FakeClock, path: str) -> None:
    rig = RedRig(clock, path, takes_red=True)
    rig.downtrack.start()
    payloads = [_red_payload(n)[0] for n in range(6)]
    for n, payload in enumerate(payloads):
        rig.feed(n, payload)
    assert (rig.downtrack.fast(0) is not None) == (path != "send_rtp")
    out = [RtpPacket.parse(d) for d in rig.out()]
    assert [p.payload for p in out] == payloads
    assert {(p.payload_type, p.ssrc) for p in out} == {(SUBSCRIBER_RED_PT, OUT_SSRC)}
    assert [p.sequence_number for p in out] == [(65530 + n) & 0xFFFF for n in range(6)]


@pytest.mark.parametrize("path", PATHS)
def test_a_subscriber_without_red_gets_the_primary_encoding(clock: FakeClock, path: str) -> None:
    rig = RedRig(clock, path, takes_red=False)
    before = COUNTERS.red_primary_tracks
    rig.downtrack.start()
    assert COUNTERS.red_primary_tracks == before + 1
    primaries = []
    for n in range(6):
        payload, primary = _red_payload(n)
        primaries.append(primary)
        rig.feed(n, payload, padding=4 if n == 3 else 0)
    assert rig.downtrack.fast(0) is None  # every copy is cut in Python, even with a fast path
    out = [RtpPacket.parse(d) for d in rig.out()]
    assert [p.payload for p in out] == primaries
    assert {(p.payload_type, p.ssrc) for p in out} == {(SUBSCRIBER_OPUS_PT, OUT_SSRC)}
    assert [p.timestamp for p in out] == [960 * n for n in range(6)]
    assert out[3].padding_size == 4 and out[3].extensions == {}
    # a NACK is answered with the same bytes, rebuilt from the RED packet in the history
    first = list(rig.out())
    rig.downtrack.retransmit([(65530 + 2) & 0xFFFF])
    assert rig.out()[len(first) :] == [first[2]]


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("ef 0f 00 10 6f aa"),  # a block longer than the payload
        bytes.fromhex("ef 0f 00"),  # cut inside a block header
        b"\x6f",  # no primary encoding
    ],
)
def test_malformed_red_is_not_sent_to_a_subscriber_without_red(
    clock: FakeClock, payload: bytes
) -> None:
    rig = RedRig(clock, "send_rtp", takes_red=False)
    rig.downtrack.start()
    before = COUNTERS.malformed_red
    rig.feed(0, payload)
    rig.feed(1, _red_payload(1)[0])
    assert [RtpPacket.parse(d).payload for d in rig.out()] == [_red_payload(1)[1]]
    assert COUNTERS.malformed_red == before + 1
    # one that took RED gets it as it came: the SFU does not judge a payload it forwards whole
    whole = RedRig(clock, "send_rtp", takes_red=True)
    whole.downtrack.start()
    whole.feed(0, payload)
    assert [RtpPacket.parse(d).payload for d in whole.out()] == [payload]


def test_an_opus_track_is_never_cut(clock: FakeClock) -> None:
    sent: list[bytes] = []
    receiver = TrackReceiver(kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1,
                             send_rtcp=sent.append, clock=clock)  # fmt: skip
    downtrack = DownTrack(receiver, ssrc=OUT_SSRC, payload_type=SUBSCRIBER_OPUS_PT,
                          send_rtp=sent.append, cname="cn", takes_red=lambda: False)  # fmt: skip
    receiver.add_sink(downtrack)
    downtrack.start()
    payload = _red_payload(1)[0]  # bytes that would parse as RED: an Opus track keeps them
    receiver.on_rtp(RtpPacket.parse(rtp(payload, payload_type=111, ssrc=0xAD)), 0)
    assert [RtpPacket.parse(d).payload for d in sent] == [payload]
