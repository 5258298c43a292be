"""RTP header-extension values and blocks (`sfu.media.rtp.extensions`).

Every `decode_*` raises only `ExtensionError`, and what it decodes encodes back to the same value.
`build_extension_block` on (id, value) pairs taken from the input raises only `ExtensionError`,
and the block it builds parses (`sfu.media.rtp.header.RtpPacket.parse`) to exactly those pairs;
`ExtensionBlockTemplate` builds the same bytes.
"""

from __future__ import annotations

import struct

from sfu.media.rtp import extensions as ext
from sfu.media.rtp.errors import ExtensionError
from sfu.media.rtp.header import RtpPacket

from ._records import join, records

MAX_LEN = 512

_HEADER = struct.pack("!BBHII", 0x80, 96, 1, 2, 3)


def _values(data: bytes) -> None:
    checks = (
        (ext.decode_mid, lambda v: ext.decode_mid(ext.encode_mid(v))),
        (ext.decode_rid, lambda v: ext.decode_rid(ext.encode_rid(v))),
        (ext.decode_audio_level, lambda v: ext.decode_audio_level(ext.encode_audio_level(*v))),
        (ext.decode_abs_send_time, lambda v: ext.decode_abs_send_time(ext.encode_abs_send_time(v))),
        (ext.decode_transport_cc, lambda v: ext.decode_transport_cc(ext.encode_transport_cc(v))),
        (ext.decode_toffset, lambda v: ext.decode_toffset(ext.encode_toffset(v))),
        (
            ext.decode_video_orientation,
            lambda v: ext.decode_video_orientation(ext.encode_video_orientation(*v)),
        ),
        (
            ext.decode_abs_capture_time,
            lambda v: ext.decode_abs_capture_time(ext.encode_abs_capture_time(*v)),
        ),
        (
            ext.decode_playout_delay,
            lambda v: ext.decode_playout_delay(ext.encode_playout_delay(*v)),
        ),
        (ext.decode_dependency_descriptor_mandatory, lambda v: v),
    )
    for decode, round_trip in checks:
        try:
            value = decode(data)
        except ExtensionError:
            continue
        try:
            again = round_trip(value)
        except ExtensionError:
            # encoders refuse only what does not fit: a mid/rid over 255 bytes
            assert decode in (ext.decode_mid, ext.decode_rid) and len(data) > 255
            continue
        assert again == value, f"{decode.__name__} does not round-trip"
    seconds = ext.abs_send_time_to_seconds(ext.abs_send_time_from_us(int.from_bytes(data[:8])))
    assert 0 <= seconds < 64


def _blocks(data: bytes) -> None:
    elements = []
    for record in records(data, 20):
        if record:
            elements.append((record[0], record[1:]))
    try:
        block = ext.build_extension_block(elements)
    except ExtensionError:
        assert any(not (0 < i < 256 and len(v) < 256) for i, v in elements)
        return
    if not elements:
        assert block == b""
        return
    assert len(block) % 4 == 0
    packet = RtpPacket.parse(bytes([0x90]) + _HEADER[1:] + block + b"payload")
    assert packet.extensions == dict(elements), "an extension block does not parse back"
    assert packet.payload == b"payload"
    template = ext.ExtensionBlockTemplate([(i, len(v)) for i, v in elements])
    assert template.size == len(block)
    assert template.build(*(v for _, v in elements)) == block, "template and builder differ"


def test_one(data: bytes) -> None:
    _values(data)
    _blocks(data)


def seeds() -> list[bytes]:
    return [
        b"0",
        b"q\x00\x00",
        b"\x9a",
        ext.encode_abs_send_time(0x123456),
        ext.encode_abs_capture_time(0x0102030405060708, -5),
        ext.encode_playout_delay(100, 400),
        join([b"\x01" + b"0", b"\x02" + b"q", b"\x03" + b"\x00\x01"]),
        join([b"\x01", b"\x16" + b"x" * 20, b"\xff" + b"y"]),
    ]
