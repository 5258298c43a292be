"""The VP8 RTP payload descriptor (RFC 7741 §4.2): parse, build, key-frame test, field rewriting.

Owns `Vp8PayloadDescriptor` and the helpers the forwarder uses to renumber PictureID, TL0PICIDX
and KEYIDX per subscriber: `write_in_place` (same layout, patch bytes) and `munged_descriptor` /
`repack_payload` (new descriptor bytes, e.g. when a 7-bit PictureID must become 15-bit). Only the
descriptor is ever rewritten: the VP8 payload after it is copied untouched (it may be E2EE
ciphertext). Parsers raise only `Vp8Error`.

    +-+-+-+-+-+-+-+-+
    |X|R|N|S|R| PID |   required
    |I|L|T|K| RSV   |   if X
    |M| PictureID   |   if I (a second PictureID byte if M)
    |   TL0PICIDX   |   if L
    |TID|Y| KEYIDX  |   if T or K
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from .errors import Vp8Error

__all__ = [
    "Vp8PayloadDescriptor",
    "descriptor_size",
    "is_keyframe",
    "munged_descriptor",
    "repack_payload",
    "write_in_place",
]


def _build(
    non_reference: bool,
    start_of_partition: bool,
    partition_index: int,
    picture_id: int | None,
    wide: bool,
    tl0_pic_idx: int | None,
    tid: int | None,
    layer_sync: bool,
    key_idx: int | None,
    extended: bool,
) -> bytes:
    if not 0 <= partition_index <= 7:
        raise Vp8Error("partition index must be 0..7")
    b0 = partition_index | (0x20 if non_reference else 0) | (0x10 if start_of_partition else 0)
    xb = 0
    tail = bytearray()
    if picture_id is not None:
        xb |= 0x80
        if not 0 <= picture_id <= 0x7FFF:
            raise Vp8Error("picture id must be 0..32767")
        if wide or picture_id > 0x7F:
            tail.append(0x80 | picture_id >> 8)
            tail.append(picture_id & 0xFF)
        else:
            tail.append(picture_id)
    if tl0_pic_idx is not None:
        xb |= 0x40
        if not 0 <= tl0_pic_idx <= 0xFF:
            raise Vp8Error("TL0PICIDX must be 0..255")
        tail.append(tl0_pic_idx)
    if tid is not None or key_idx is not None:
        tk = 0
        if tid is not None:
            if not 0 <= tid <= 3:
                raise Vp8Error("TID must be 0..3")
            xb |= 0x20
            tk = tid << 6 | (0x20 if layer_sync else 0)
        if key_idx is not None:
            if not 0 <= key_idx <= 0x1F:
                raise Vp8Error("KEYIDX must be 0..31")
            xb |= 0x10
            tk |= key_idx
        tail.append(tk)
    if xb or extended:
        return bytes((b0 | 0x80, xb)) + tail
    return bytes((b0,))


@dataclass(slots=True)
class Vp8PayloadDescriptor:
    """A parsed VP8 payload descriptor.

    Optional fields are None when absent. `picture_id_15bit` is the M bit (meaningful with a
    PictureID); `layer_sync` is the Y bit (meaningful with a TID). `extended` is the X bit as
    received; `bytes()` also sets X whenever an optional field is present.
    """

    start_of_partition: bool = False
    partition_index: int = 0
    non_reference: bool = False
    picture_id: int | None = None
    picture_id_15bit: bool = False
    tl0_pic_idx: int | None = None
    tid: int | None = None
    layer_sync: bool = False
    key_idx: int | None = None
    extended: bool = False

    @classmethod
    def parse(cls, data: bytes | bytearray, offset: int = 0, end: int | None = None) -> Self:
        """Parse the descriptor at `data[offset:end]` (the RTP payload, without padding)."""
        n = len(data) if end is None else end
        if offset >= n:
            raise Vp8Error("empty VP8 payload")
        b0 = data[offset]
        picture_id = tl0 = tid = key_idx = None
        wide = sync = False
        if b0 & 0x80:
            i = offset + 1
            if i >= n:
                raise Vp8Error("VP8 descriptor truncated")
            xb = data[i]
            i += 1
            try:
                if xb & 0x80:
                    p = data[i]
                    if p & 0x80:
                        if i + 1 >= n:
                            raise Vp8Error("VP8 descriptor truncated")
                        picture_id = (p & 0x7F) << 8 | data[i + 1]
                        wide = True
                        i += 2
                    else:
                        picture_id = p
                        i += 1
                if xb & 0x40:
                    tl0 = data[i]
                    i += 1
                if xb & 0x30:
                    tk = data[i]
                    i += 1
                    if xb & 0x20:
                        tid = tk >> 6
                        sync = bool(tk & 0x20)
                    if xb & 0x10:
                        key_idx = tk & 0x1F
            except IndexError:
                raise Vp8Error("VP8 descriptor truncated") from None
            if i > n:
                raise Vp8Error("VP8 descriptor truncated")
        return cls(
            bool(b0 & 0x10),
            b0 & 0x07,
            bool(b0 & 0x20),
            picture_id,
            wide,
            tl0,
            tid,
            sync,
            key_idx,
            bool(b0 & 0x80),
        )

    def __bytes__(self) -> bytes:
        return _build(
            self.non_reference,
            self.start_of_partition,
            self.partition_index,
            self.picture_id,
            self.picture_id_15bit,
            self.tl0_pic_idx,
            self.tid,
            self.layer_sync,
            self.key_idx,
            self.extended,
        )

    @property
    def size(self) -> int:
        """The descriptor's length in bytes, as `bytes()` lays it out (1..6)."""
        n = 0
        if self.picture_id is not None:
            n += 2 if self.picture_id_15bit or self.picture_id > 0x7F else 1
        if self.tl0_pic_idx is not None:
            n += 1
        if self.tid is not None or self.key_idx is not None:
            n += 1
        return n + 2 if n or self.extended else 1

    @property
    def picture_id_offset(self) -> int | None:
        """Offset of the PictureID within the descriptor, if present."""
        return 2 if self.picture_id is not None else None

    @property
    def tl0_pic_idx_offset(self) -> int | None:
        """Offset of TL0PICIDX within the descriptor, if present."""
        if self.tl0_pic_idx is None:
            return None
        return 2 + self._picture_id_size()

    @property
    def tid_key_idx_offset(self) -> int | None:
        """Offset of the TID/Y/KEYIDX byte within the descriptor, if present."""
        if self.tid is None and self.key_idx is None:
            return None
        return 2 + self._picture_id_size() + (self.tl0_pic_idx is not None)

    def _picture_id_size(self) -> int:
        if self.picture_id is None:
            return 0
        return 2 if self.picture_id_15bit or self.picture_id > 0x7F else 1

    @property
    def is_partition_head(self) -> bool:
        """True for the first packet of a frame: S=1 and PID=0."""
        return self.start_of_partition and self.partition_index == 0

    def is_keyframe(self, data: bytes | bytearray, offset: int = 0, end: int | None = None) -> bool:
        """True when the packet starts a key frame: S=1, PID=0 and the VP8 payload header's
        P bit (bit 0 of the first byte after the descriptor, at `data[offset + size]`) is 0."""
        if not (self.start_of_partition and self.partition_index == 0):
            return False
        i = offset + self.size
        if i >= (len(data) if end is None else end):
            raise Vp8Error("VP8 packet without payload after the descriptor")
        return not data[i] & 0x01


def descriptor_size(data: bytes | bytearray, offset: int = 0, end: int | None = None) -> int:
    """The length of the descriptor at `data[offset:end]`, without building an object."""
    n = len(data) if end is None else end
    if offset >= n:
        raise Vp8Error("empty VP8 payload")
    if not data[offset] & 0x80:
        return 1
    if offset + 1 >= n:
        raise Vp8Error("VP8 descriptor truncated")
    xb = data[offset + 1]
    size = 2
    if xb & 0x80:
        if offset + 2 >= n:
            raise Vp8Error("VP8 descriptor truncated")
        size += 2 if data[offset + 2] & 0x80 else 1
    if xb & 0x40:
        size += 1
    if xb & 0x30:
        size += 1
    if offset + size > n:
        raise Vp8Error("VP8 descriptor truncated")
    return size


def is_keyframe(data: bytes | bytearray, offset: int = 0, end: int | None = None) -> bool:
    """True when the VP8 payload at `data[offset:end]` starts a key frame.

    That is S=1, PID=0, and the P bit of the VP8 payload header (the first byte after the
    descriptor) is 0. Raises `Vp8Error` on a truncated descriptor or a missing payload byte.
    """
    n = len(data) if end is None else end
    if offset >= n:
        raise Vp8Error("empty VP8 payload")
    if data[offset] & 0x17 != 0x10:
        return False
    i = offset + descriptor_size(data, offset, n)
    if i >= n:
        raise Vp8Error("VP8 packet without payload after the descriptor")
    return not data[i] & 0x01


def write_in_place(
    buf: bytearray,
    offset: int,
    descriptor: Vp8PayloadDescriptor,
    *,
    picture_id: int | None = None,
    tl0_pic_idx: int | None = None,
    key_idx: int | None = None,
) -> None:
    """Overwrite fields of the descriptor `descriptor` found at `buf[offset:]`, keeping its layout.

    Each value given must be present in the descriptor; a PictureID keeps the received width,
    so a 7-bit one must be <= 127 (otherwise use `munged_descriptor`). Raises `Vp8Error`.
    """
    if picture_id is not None:
        if descriptor.picture_id is None:
            raise Vp8Error("descriptor has no PictureID")
        i = offset + 2
        if descriptor.picture_id_15bit:
            if not 0 <= picture_id <= 0x7FFF:
                raise Vp8Error("picture id must be 0..32767")
            buf[i] = 0x80 | picture_id >> 8
            buf[i + 1] = picture_id & 0xFF
        else:
            if not 0 <= picture_id <= 0x7F:
                raise Vp8Error("a 7-bit PictureID cannot hold this value; re-pack the descriptor")
            buf[i] = picture_id
    if tl0_pic_idx is not None:
        tl0_offset = descriptor.tl0_pic_idx_offset
        if tl0_offset is None:
            raise Vp8Error("descriptor has no TL0PICIDX")
        if not 0 <= tl0_pic_idx <= 0xFF:
            raise Vp8Error("TL0PICIDX must be 0..255")
        buf[offset + tl0_offset] = tl0_pic_idx
    if key_idx is not None:
        if descriptor.key_idx is None:
            raise Vp8Error("descriptor has no KEYIDX")
        if not 0 <= key_idx <= 0x1F:
            raise Vp8Error("KEYIDX must be 0..31")
        i = offset + 2 + descriptor._picture_id_size() + (descriptor.tl0_pic_idx is not None)
        buf[i] = (buf[i] & 0xE0) | key_idx


def munged_descriptor(
    descriptor: Vp8PayloadDescriptor,
    *,
    picture_id: int | None = None,
    tl0_pic_idx: int | None = None,
    key_idx: int | None = None,
    picture_id_15bit: bool = False,
) -> bytes:
    """The bytes of `descriptor` with the given fields replaced (None keeps the received value).

    The PictureID is written 15-bit when the received one was, when `picture_id_15bit` is set or
    when the value exceeds 127; so the result may be one byte longer than `descriptor.size`.
    """
    return _build(
        descriptor.non_reference,
        descriptor.start_of_partition,
        descriptor.partition_index,
        descriptor.picture_id if picture_id is None else picture_id,
        descriptor.picture_id_15bit or picture_id_15bit,
        descriptor.tl0_pic_idx if tl0_pic_idx is None else tl0_pic_idx,
        descriptor.tid,
        descriptor.layer_sync,
        descriptor.key_idx if key_idx is None else key_idx,
        descriptor.extended,
    )


def repack_payload(
    payload: bytes,
    descriptor: Vp8PayloadDescriptor,
    *,
    picture_id: int | None = None,
    tl0_pic_idx: int | None = None,
    key_idx: int | None = None,
    picture_id_15bit: bool = False,
) -> bytes:
    """A new payload: `munged_descriptor(...)` followed by the untouched bytes after the
    received descriptor (`payload[descriptor.size:]`)."""
    head = munged_descriptor(
        descriptor,
        picture_id=picture_id,
        tl0_pic_idx=tl0_pic_idx,
        key_idx=key_idx,
        picture_id_15bit=picture_id_15bit,
    )
    return head + payload[descriptor.size :]
