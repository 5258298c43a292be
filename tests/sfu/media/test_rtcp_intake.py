"""Tests for sfu.media.rtcp_intake: counted, only handled types parsed, malformed compounds dropped
whole, packets dispatched by type in order."""

from __future__ import annotations

import pytest

from sfu.media.rtcp_intake import RtcpIntake
from sfu.media.rtp import rtcp
from sfu.media.rtp.twcc import TransportCcFeedback
from sfu.metrics import COUNTERS


def test_each_handled_packet_reaches_its_handler_in_order() -> None:
    got: list[object] = []
    intake = RtcpIntake()
    intake.on(rtcp.Pli, got.append)
    intake.on(rtcp.Nack, got.append)
    pli, nack = rtcp.Pli(1, 2), rtcp.Nack.from_sequence_numbers(1, 2, [7])
    sdes = rtcp.Sdes.for_cname(1, "c")  # no handler: not parsed, not dispatched
    before = COUNTERS.rtcp_in
    intake(bytes(pli) + bytes(sdes) + bytes(nack) + bytes(pli))
    assert got == [pli, nack, pli]
    assert COUNTERS.rtcp_in == before + 1


def test_a_malformed_compound_is_counted_and_dropped_whole() -> None:
    got: list[rtcp.Pli] = []
    intake = RtcpIntake()
    intake.on(rtcp.Pli, got.append)
    before = COUNTERS.rtcp_in
    intake(bytes(rtcp.Pli(1, 2)) + b"\x80\xce\x00\x09")  # the second packet overruns
    intake(b"")
    assert got == [] and COUNTERS.rtcp_in == before + 2


def test_types_without_a_handler_are_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(count: int, body: bytes) -> TransportCcFeedback:
        raise AssertionError("transport-cc parsed")

    monkeypatch.setattr(TransportCcFeedback, "_from_body", refuse)
    got: list[rtcp.Pli] = []
    intake = RtcpIntake()
    intake.on(rtcp.Pli, got.append)
    twcc = bytes((0x8F, 205, 0, 4)) + bytes(16)  # transport-cc (RTPFB, FMT 15), 20 bytes
    intake(twcc + bytes(rtcp.Pli(1, 2)))
    assert got == [rtcp.Pli(1, 2)]
