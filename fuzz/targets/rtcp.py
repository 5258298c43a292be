"""Compound RTCP (`sfu.media.rtp.rtcp`, transport-cc from `sfu.media.rtp.twcc`): parse, rebuild, re-parse.

`parse_compound` raises only `RtcpError`; every packet it returns must build back to bytes that
parse to an equal packet, and the helpers a handler calls on a parsed packet (`Nack.lost`,
`TransportCcFeedback.arrivals`, `SdesChunk.cname`, `UnknownRtcp.count`) must not raise.
"""

from __future__ import annotations

from sfu.media.rtp import rtcp
from sfu.media.rtp.errors import RtcpError

MAX_LEN = 1500  # one SRTCP datagram


def _use(packet: rtcp.RtcpPacket) -> None:
    if isinstance(packet, rtcp.Nack):
        lost = packet.lost
        assert len(lost) <= 17 * len(packet.pairs)
    elif isinstance(packet, rtcp.TransportCcFeedback):
        assert len(packet.arrivals()) <= packet.packet_status_count
    elif isinstance(packet, rtcp.Sdes):
        for chunk in packet.chunks:
            _ = chunk.cname
    elif isinstance(packet, rtcp.UnknownRtcp):
        assert 0 <= packet.count <= 31


def test_one(data: bytes) -> None:
    try:
        packets = rtcp.parse_compound(data)
    except RtcpError:
        return
    assert packets, "a compound packet without packets"
    for packet in packets:
        _use(packet)
        built = bytes(packet)
        again = rtcp.parse_compound(built)
        assert again == [packet], f"{type(packet).__name__} changed in a rebuild"
    compound = rtcp.build_compound(packets)
    assert rtcp.parse_compound(compound) == packets
    for datagram in rtcp.pack_compounds([bytes(p) for p in packets], limit=200):
        rtcp.parse_compound(datagram)


def seeds() -> list[bytes]:
    block = rtcp.ReportBlock(0x6B8B4567, 5, -2, 70000, 32, 0x3A128B43, 0x8000)
    sr = rtcp.SenderReport(0x6B8B4567, 0xE94F3A128B439581, 0x9A3B3E55, 1234, 0x101F4A, (block,))
    twcc = rtcp.TransportCcFeedback(1, 0x6B8B4567, 300, 4096, 7, (4, 1, None, -8, 16))
    twcc_long = rtcp.TransportCcFeedback(1, 2, 65530, -5, 255, tuple([1] * 20 + [None] * 30))
    xr = rtcp.ExtendedReport(
        1,
        (
            rtcp.Rrtr(0xE94F3A128B439581),
            rtcp.Dlrr((rtcp.DlrrItem(1, 0x3A128B43, 0x10000),)),
            rtcp.UnknownXrBlock(7, 9, b"\xaa\xbb\xcc\xdd"),
        ),
    )
    packets: list[rtcp.RtcpPacket] = [
        sr,
        rtcp.ReceiverReport(1, (block, block)),
        rtcp.Sdes.for_cname(0x6B8B4567, "qR3l8v/1bWJm2DkA"),
        rtcp.Bye((0x6B8B4567,), b"leave"),
        rtcp.Nack.from_sequence_numbers(1, 0x6B8B4567, [12345, 12346, 12348, 13000]),
        rtcp.Pli(1, 0x6B8B4567),
        rtcp.Fir(1, (rtcp.FirEntry(0x6B8B4567, 7),)),
        rtcp.Remb(1, 2_500_000, (0x6B8B4567,)),
        twcc,
        twcc_long,
        xr,
        rtcp.UnknownRtcp(204, bytes.fromhex("80 cc 00 02 00 00 00 01 6e 61 6d 65")),
    ]
    out = [bytes(p) for p in packets]
    out.append(bytes(sr) + bytes(rtcp.Sdes.for_cname(0x6B8B4567, "cname")))
    out.append(bytes(rtcp.ReceiverReport(1, (block,))) + bytes(rtcp.Remb(1, 300_000, (1, 2, 3))))
    out.append(bytes.fromhex("a1 ce 00 03 00 00 00 01 6b 8b 45 67 00 00 00 04"))  # padded PLI
    out.append(bytes.fromhex("83 cd 00 04 00 00 00 01 00 00 00 00 6b 8b 45 67 04 00 00 00"))
    return out
