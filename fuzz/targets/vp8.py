"""The VP8 payload descriptor (`sfu.media.rtp.vp8`): parse, size, key-frame test, the forwarder's rewrites.

Every reader raises only `Vp8Error` and they agree with each other (`parse` vs `descriptor_size`,
the module's `is_keyframe` vs the method); `bytes()` of a parsed descriptor parses back equal;
`munged_descriptor`, `repack_payload` and `write_in_place` with in-range values give a descriptor
carrying exactly those values, in front of the untouched rest of the payload.
"""

from __future__ import annotations

from collections.abc import Callable

from sfu.media.rtp.errors import Vp8Error
from sfu.media.rtp.vp8 import (
    Vp8PayloadDescriptor,
    descriptor_size,
    is_keyframe,
    munged_descriptor,
    repack_payload,
    write_in_place,
)

MAX_LEN = 64  # only the first bytes of a payload are read


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Vp8Error:
        return Vp8Error


def test_one(data: bytes) -> None:
    try:
        descriptor = Vp8PayloadDescriptor.parse(data)
    except Vp8Error:
        descriptor = None
    size = _outcome(lambda: descriptor_size(data))
    keyframe = _outcome(lambda: is_keyframe(data))
    if descriptor is None:
        assert size is Vp8Error, "descriptor_size accepts what parse refuses"
        return
    assert size == descriptor.size, "descriptor_size and parse disagree on the size"
    assert keyframe == _outcome(lambda: descriptor.is_keyframe(data)), "is_keyframe disagree"
    # parse also takes a window of a bigger buffer
    assert Vp8PayloadDescriptor.parse(b"\x00\x00" + data + b"\xff", 2, 2 + len(data)) == descriptor
    rest = data[descriptor.size :]
    built = bytes(descriptor)
    assert len(built) == descriptor.size
    assert Vp8PayloadDescriptor.parse(built + rest) == descriptor, "rebuild changed the descriptor"

    seed = data[-1]
    picture_id = (seed * 257) & 0x7FFF if descriptor.picture_id is not None or seed & 1 else None
    tl0 = seed if descriptor.tl0_pic_idx is not None or seed & 2 else None
    key_idx = seed & 0x1F if descriptor.key_idx is not None or seed & 4 else None
    munged = munged_descriptor(descriptor, picture_id=picture_id, tl0_pic_idx=tl0, key_idx=key_idx)
    parsed = Vp8PayloadDescriptor.parse(munged + b"\x00")
    for name, value in (("picture_id", picture_id), ("tl0_pic_idx", tl0), ("key_idx", key_idx)):
        expected = getattr(descriptor, name) if value is None else value
        assert getattr(parsed, name) == expected, f"munged_descriptor lost {name}"
    assert (parsed.tid, parsed.layer_sync) == (descriptor.tid, descriptor.layer_sync)
    assert parsed.start_of_partition == descriptor.start_of_partition
    assert parsed.partition_index == descriptor.partition_index
    repacked = repack_payload(data, descriptor, picture_id=picture_id, tl0_pic_idx=tl0)
    head = munged_descriptor(descriptor, picture_id=picture_id, tl0_pic_idx=tl0)
    assert repacked == head + rest, "repack_payload touched the payload"

    # in place: only fields the descriptor has, a 7-bit PictureID stays 7-bit
    buf = bytearray(data)
    new_pid = None
    if descriptor.picture_id is not None:
        new_pid = (seed * 131) & (0x7FFF if descriptor.picture_id_15bit else 0x7F)
    new_tl0 = (seed + 1) & 0xFF if descriptor.tl0_pic_idx is not None else None
    new_key = (seed + 2) & 0x1F if descriptor.key_idx is not None else None
    write_in_place(buf, 0, descriptor, picture_id=new_pid, tl0_pic_idx=new_tl0, key_idx=new_key)
    patched = Vp8PayloadDescriptor.parse(buf)
    assert patched.size == descriptor.size and bytes(buf[descriptor.size :]) == rest
    assert patched.picture_id == (descriptor.picture_id if new_pid is None else new_pid)
    assert patched.tl0_pic_idx == (descriptor.tl0_pic_idx if new_tl0 is None else new_tl0)
    assert patched.key_idx == (descriptor.key_idx if new_key is None else new_key)
    assert patched.tid == descriptor.tid and patched.layer_sync == descriptor.layer_sync


def seeds() -> list[bytes]:
    full = Vp8PayloadDescriptor(True, 0, False, 0x1234, True, 7, 2, True, 5, True)
    short = Vp8PayloadDescriptor(True, 0, False, 0x12, False, None, None, False, None, True)
    return [
        b"\x10\x9d\x01\x2a",  # S=1 PID=0, no X: a key frame
        bytes(full) + b"\x00\x9d\x01\x2a",
        bytes(short) + b"\x01",
        b"\x90\x80\x80\x01\x10",  # what the load tester sends
        b"\x80\xf0\x85",
    ]
