"""The load tester's packet readers (`loadtest.packets`): the latency trailer and the RTCP it
reads from the SFU (sender reports, SDES CNAME, feedback).

Every reader raises only `loadtest.packets.PacketError`; what it reads builds back to bytes it
reads the same way.
"""

from __future__ import annotations

from loadtest.packets import (
    PT_SR,
    Feedback,
    PacketError,
    SdesCname,
    SenderReport,
    Trailer,
    split_rtcp,
    vp8_descriptor,
)

MAX_LEN = 1500


def test_one(data: bytes) -> None:
    try:
        trailer = Trailer.parse(data)
    except PacketError:
        pass
    else:
        assert bytes(trailer) == data[-16:]
    packets: list[tuple[int, int, bytes]] = []
    try:
        for item in split_rtcp(data):
            packets.append(item)
    except PacketError:
        pass
    for count, packet_type, packet in packets:
        assert 0 <= count <= 31 and len(packet) % 4 == 0
        for reader in (SenderReport, SdesCname, Feedback):
            try:
                value = reader.parse(packet)
            except PacketError:
                continue
            again = reader.parse(bytes(value))
            if isinstance(value, Feedback) and isinstance(again, Feedback):
                assert again.key_frame_ssrcs() == value.key_frame_ssrcs()
                assert again.nack_sequence_numbers() == value.nack_sequence_numbers()
                assert again.fci[: len(value.fci)] == value.fci
            elif isinstance(value, SdesCname):
                assert again == value or len(value.cname.encode()) > 255
            else:
                assert again == value and packet_type == PT_SR


def seeds() -> list[bytes]:
    sr = bytes(SenderReport(0x1234, 0xE94F3A128B439581, 3000, 10, 1000))
    sdes = bytes(SdesCname(0x1234, "load-test"))
    pli = bytes(Feedback(1, 206, 1, 0x1234, b""))
    nack = bytes(Feedback(1, 205, 1, 0x1234, b"\x30\x39\x00\x05"))
    fir = bytes(Feedback(4, 206, 1, 0, b"\x00\x00\x12\x34\x07\x00\x00\x00"))
    payload = vp8_descriptor(0x1234, True) + b"\x10\x02" + bytes(Trailer(3, 1, 1, 123456789))
    return [sr + sdes, pli + nack + fir, payload]
