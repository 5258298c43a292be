"""H.264 RTP payloads (`sfu.media.rtp.h264`): NAL unit types of single NAL, STAP-A and FU-A payloads.

`nal_unit_types` and `is_keyframe` raise only `H264Error`, agree with each other, and also run as
the receiver calls them (on a window of the packet).
"""

from __future__ import annotations

from sfu.media.receiver import _h264_keyframe
from sfu.media.rtp.errors import H264Error
from sfu.media.rtp.h264 import NAL_IDR, NAL_SPS, is_keyframe, nal_unit_types

MAX_LEN = 256


def test_one(data: bytes) -> None:
    try:
        types = nal_unit_types(data)
    except H264Error:
        types = None
    try:
        keyframe: bool | None = is_keyframe(data)
    except H264Error:
        keyframe = None
    if types is None:
        assert keyframe is None, "is_keyframe accepts what nal_unit_types refuses"
        return
    assert all(0 <= t <= 31 for t in types)
    assert keyframe == (NAL_IDR in types or NAL_SPS in types)
    assert _h264_keyframe(b"\xff" * 12 + data + b"\x00\x00\x01", 12, 12 + len(data)) == keyframe


def seeds() -> list[bytes]:
    sps, pps, idr = b"\x67\x42\xe0\x1f\xda", b"\x68\xce\x3c\x80", b"\x65\x88\x84\x00"
    stap = b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps, idr))
    return [sps, idr, b"\x41\x9a\x02", stap, b"\x7c\x85\x88\x84", b"\x7c\x45\x00", b"\x79\x00"]
