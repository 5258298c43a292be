"""The compiled per-copy path (`sfu.media._fastpath.forward`) against its reference, on hostile input.

The first 12 bytes of an input set two targets' parameters (VP8 offsets, sequence offset, switch
point) and the arguments; the rest is the packet. A packet that parses is forwarded with its own
payload offset and padding; one that does not is forwarded with offsets taken from the input, so
the compiled code also sees arguments that do not fit the packet. Both implementations must
either refuse with `ValueError` or queue byte-identical datagrams (the copies, then a resend of
each target's newest history entry) with identical history and state; the compiled one must never crash. The compiled code is not coverage-instrumented (only
Python is), so libFuzzer steers by the reference's and the parser's branches.
"""

from __future__ import annotations

from typing import Any

from sfu.media import fastpath
from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.header import RtpHeader, RtpPacket
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor

MAX_LEN = 2100  # past the protect buffer: the too-long branch
_PARAMS = 12


def _targets(impl: fastpath.Implementation, params: bytes) -> tuple[Any, list[Any]]:
    batch = impl.batch(-1, capacity=1 + params[0] % 4)
    targets = []
    for i in range(2):
        t = impl.target(batch, ("127.0.0.1", 5000 + i))
        t.ssrc = 0xFFFFFFFF - i
        t.payload_type = params[1] & 0x7F
        t.pid_offset = (params[2] << 8 | params[3]) & 0x7FFF if i else 0
        t.tl0_offset = params[4] if i else 0
        t.keyidx_offset = params[5] & 0x1F if i else 0
        t.seq_offset = params[6] - 128
        t.switch_seq = params[7] * 64
        t.sent_any = bool(params[8] & 1)
        t.last_out_seq = params[9] * 256
        targets.append(t)
    return batch, targets


def _outcome(impl: fastpath.Implementation, params: bytes, data: bytes) -> object:
    try:
        packet: RtpPacket | None = RtpPacket.parse(data)
    except PacketError:
        packet = None
    if packet is not None:
        offset, padding, seq = packet.payload_offset, packet.padding_size, packet.sequence_number
    else:
        offset, padding, seq = params[10] - 4, params[11] - 4, params[9] << 8 | params[10]
    batch, targets = _targets(impl, params)
    results: list[object] = []
    for step in range(3):  # the same packet again, then a later one: history and "newest"
        try:
            results.append(
                impl.forward(targets, packet, data, seq + step * 7, offset, padding, 1.0)
            )
        except ValueError:
            results.append(ValueError)
    resent = [t.resend(t.last_out_seq & 511) for t in targets]
    state = [
        (
            t.last_out_seq,
            t.last_out_ts,
            t.sent_any,
            t.last_packet is packet,
            t.packets_sent,
            t.octets_sent,
            t.send_dropped,
            [t.entry(s) for s in range(0, 512, 7)],
        )
        for t in targets
    ]
    return results, resent, batch.pending(), batch.dropped, state


def test_one(data: bytes) -> None:
    if len(data) < _PARAMS:
        return
    compiled = fastpath.COMPILED
    assert compiled is not None, "sfu.media._fastpath is not built"
    params, packet = data[:_PARAMS], data[_PARAMS:]
    assert _outcome(compiled, params, packet) == _outcome(fastpath.PYTHON, params, packet), (
        "the compiled path and the reference disagree"
    )


def seeds() -> list[bytes]:
    vp8 = bytes(Vp8PayloadDescriptor(True, 0, False, 0x1234, True, 7, 2, True, 5, True))
    header = RtpHeader(96, 1000, 90000, 0x1234, extensions=[(1, b"ab"), (3, b"\x00\x01")])
    params = bytes([3, 100, 0x12, 0x34, 9, 3, 130, 0, 1, 3, 20, 4])
    return [
        params + bytes(header) + vp8 + b"\x00\x9d\x01\x2a" * 4,
        params + bytes(RtpHeader(96, 7, 1, 2, csrc=(5, 6), padding=True)) + bytes(9) + b"\x0a",
        params + bytes(RtpHeader(111, 2, 3, 4, marker=True)) + b"\x90\x80\x05",
        bytes(_PARAMS) + b"\x80\x60\x00\x01" + bytes(8) + b"\x10",
    ]
