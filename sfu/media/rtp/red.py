"""The RTP payload for redundant audio data, RED (RFC 2198): block headers, the primary encoding.

A RED payload carries older encodings of the stream ("redundant blocks") ahead of the newest one
(the "primary"), so a receiver can rebuild a lost packet from the next one. libwebrtc sends Opus
this way when `audio/red` is negotiated (livekit-client's `red` publish option):

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |F|   block PT  |  timestamp offset         |   block length    |   F=1: one per redundant
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+   block, oldest first
    |0|   block PT  |   the primary's header (F=0), then the redundant blocks' data, then the
    +-+-+-+-+-+-+-+-+   primary's data (its length is what is left of the payload)

The SFU forwards a RED payload as it came to subscribers that negotiated RED. For one that did
not, `primary_offset` says where the primary encoding starts, and the forwarder sends only that
part under the plain codec's payload type: the encodings themselves are never read or changed.
Parsers raise only `RedError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from .errors import RedError

__all__ = ["MAX_REDUNDANT_BLOCKS", "RedBlock", "RedHeader", "primary_offset"]

#: redundant blocks one payload may carry (libwebrtc sends 1 or 2; its receiver takes at most 32)
MAX_REDUNDANT_BLOCKS = 32


@dataclass(frozen=True)
class RedBlock:
    """The header of one redundant block: its payload type, how much older than the packet's
    RTP timestamp it is (14 bits), and its length in bytes (10 bits)."""

    payload_type: int
    timestamp_offset: int
    length: int

    def __bytes__(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RedError("block payload type must be 0..127")
        if not 0 <= self.timestamp_offset < 1 << 14:
            raise RedError("timestamp offset must be 0..16383")
        if not 0 <= self.length < 1 << 10:
            raise RedError("block length must be 0..1023")
        word = 0x80000000 | self.payload_type << 24 | self.timestamp_offset << 10 | self.length
        return word.to_bytes(4, "big")


@dataclass(frozen=True)
class RedHeader:
    """The block headers of a RED payload: the redundant blocks, oldest first, and the primary's
    payload type. `size` is the headers' length; the blocks' data follows them in order."""

    redundant: tuple[RedBlock, ...]
    primary_payload_type: int

    @property
    def size(self) -> int:
        return 4 * len(self.redundant) + 1

    @property
    def primary_offset(self) -> int:
        """Where the primary encoding starts, from the start of the payload."""
        return self.size + sum(block.length for block in self.redundant)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        """The headers at the start of `payload`; its blocks must fit and leave a primary."""
        blocks: list[RedBlock] = []
        pos = 0
        while True:
            if pos >= len(payload):
                raise RedError("RED payload ends inside its block headers")
            first = payload[pos]
            if not first & 0x80:
                header = cls(tuple(blocks), first & 0x7F)
                break
            if len(blocks) == MAX_REDUNDANT_BLOCKS:
                raise RedError(f"more than {MAX_REDUNDANT_BLOCKS} redundant blocks")
            if pos + 4 > len(payload):
                raise RedError("RED payload ends inside a block header")
            word = int.from_bytes(payload[pos : pos + 4], "big")
            blocks.append(RedBlock(first & 0x7F, word >> 10 & 0x3FFF, word & 0x3FF))
            pos += 4
        if header.primary_offset >= len(payload):
            raise RedError("RED blocks leave no primary encoding")
        return header

    def __bytes__(self) -> bytes:
        if not 0 <= self.primary_payload_type <= 127:
            raise RedError("primary payload type must be 0..127")
        return b"".join(bytes(block) for block in self.redundant) + bytes(
            (self.primary_payload_type,)
        )


def primary_offset(data: bytes, start: int, end: int) -> int:
    """Where the primary encoding of the RED payload `data[start:end]` starts (an index into
    `data`), without building a `RedHeader`: this runs once per copy to a subscriber that takes
    the plain codec. Raises `RedError` as `RedHeader.parse` does, for the same payloads."""
    pos = start
    skipped = 0
    blocks = 0
    while True:
        if pos >= end:
            raise RedError("RED payload ends inside its block headers")
        if not data[pos] & 0x80:
            break
        if blocks == MAX_REDUNDANT_BLOCKS:
            raise RedError(f"more than {MAX_REDUNDANT_BLOCKS} redundant blocks")
        if pos + 4 > end:
            raise RedError("RED payload ends inside a block header")
        skipped += (data[pos + 2] & 0x03) << 8 | data[pos + 3]
        blocks += 1
        pos += 4
    offset = pos + 1 + skipped
    if offset >= end:
        raise RedError("RED blocks leave no primary encoding")
    return offset
