"""RTP fixed header and extension block (`sfu.media.rtp.header`): parse, rebuild, rewrite.

A received packet either raises `RtpError` or parses; a parsed one must survive
`RtpHeader.parse` → `bytes()` → `RtpPacket.parse` with the same fields, extensions, payload and
padding, and `rewrite()` (the per-subscriber fast path) must give a packet that parses back to the
fields it was asked for, around the same payload.
"""

from __future__ import annotations

from sfu.media.rtp.errors import RtpError
from sfu.media.rtp.extensions import build_extension_block
from sfu.media.rtp.header import RtpHeader, RtpPacket, rewrite

MAX_LEN = 1500


def _check_rewrite(packet: RtpPacket) -> None:
    data = packet.data
    payload = packet.payload
    padding = data[len(data) - packet.padding_size :]
    block = build_extension_block(list(packet.extensions.items()))
    pt = (packet.payload_type + 1) & 0x7F
    fields = {"payload_type": pt, "sequence_number": packet.sequence_number + 1}
    fields |= {"timestamp": packet.timestamp + 3000, "ssrc": packet.ssrc ^ 0xFFFFFFFF}
    cases: list[tuple[bytes, dict[str, object], bytes]] = [(b"", {}, payload)]
    cases.append((block, {}, payload))
    cases.append((block, {"payload": b"\x01\x02\x03"}, b"\x01\x02\x03"))
    if payload:
        size = 1 + data[-1] % len(payload)
        munged = bytes((b + 1) & 0xFF for b in payload[:size]) + b"\x00"
        cases.append(
            (b"", {"payload_header": munged, "payload_header_size": size}, munged + payload[size:])
        )
    for extensions, extra, expected_payload in cases:
        out = rewrite(packet, extensions=extensions, **fields, **extra)  # type: ignore[arg-type]
        again = RtpPacket.parse(out)
        assert again.payload_type == pt
        assert again.sequence_number == (packet.sequence_number + 1) & 0xFFFF
        assert again.timestamp == (packet.timestamp + 3000) & 0xFFFFFFFF
        assert again.ssrc == packet.ssrc ^ 0xFFFFFFFF
        assert again.marker == packet.marker and again.csrc == ()
        assert again.extensions == (packet.extensions if extensions else {})
        assert again.payload == expected_payload, "rewrite changed the payload"
        assert again.padding_size == packet.padding_size and out.endswith(padding)


def test_one(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    n = len(data)
    assert 12 <= packet.payload_offset <= n - packet.padding_size
    assert packet.payload_size == len(packet.payload) >= 0
    assert bytes(packet) == data

    header = RtpHeader.parse(data)
    built = bytes(header)
    padding = data[n - packet.padding_size :] if packet.padding_size else b""
    again = RtpPacket.parse(built + packet.payload + padding)
    assert (again.marker, again.payload_type, again.sequence_number) == (
        packet.marker,
        packet.payload_type,
        packet.sequence_number,
    )
    assert (again.timestamp, again.ssrc, again.csrc) == (packet.timestamp, packet.ssrc, packet.csrc)
    assert again.extensions == packet.extensions, "extensions changed in a rebuild"
    assert again.payload == packet.payload and again.padding_size == packet.padding_size
    _check_rewrite(packet)


def seeds() -> list[bytes]:
    plain = RtpHeader(96, 1, 3000, 0x1234)
    with_ext = RtpHeader(
        96, 65535, 0xFFFFFFFF, 0xDEADBEEF, marker=True, extensions=[(1, b"0"), (2, b"q")]
    )
    two_byte = RtpHeader(111, 7, 960, 1, csrc=(5, 6), extensions=[(1, b""), (20, b"x" * 20)])
    padded = RtpHeader(96, 2, 3000, 0x1234, padding=True)
    return [
        bytes(plain) + b"\x90\x80\x80\x01\x10payload",
        bytes(with_ext) + b"\x10\x02\x00\x9d\x01\x2a",
        bytes(two_byte) + b"opus",
        bytes(padded) + b"abc" + b"\x00\x00\x03",
        bytes(RtpHeader(96, 3, 3000, 0x1234, padding=True)) + b"\x00" * 223 + b"\xe0",
    ]
