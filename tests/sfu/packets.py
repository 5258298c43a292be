"""Packet builders shared by the SFU's unit tests: one RTP packet factory over `RtpHeader`."""

from __future__ import annotations

from collections.abc import Iterable

from sfu.media.rtp.header import RtpHeader

__all__ = ["rtp"]


def rtp(
    payload: bytes = b"",
    *,
    payload_type: int = 96,
    sequence_number: int = 0,
    timestamp: int = 0,
    ssrc: int = 0x1234,
    marker: bool = False,
    csrc: tuple[int, ...] = (),
    extensions: Iterable[tuple[int, bytes]] = (),
    padding: int = 0,
) -> bytes:
    """An RTP packet: an `RtpHeader` of these fields, then `payload`, then `padding` bytes of
    padding (P bit set, the last byte holding the count).

    `sequence_number` and `timestamp` are taken mod 2**16 and 2**32, so a test can count past a
    wrap without masking.
    """
    header = RtpHeader(
        payload_type=payload_type,
        sequence_number=sequence_number & 0xFFFF,
        timestamp=timestamp & 0xFFFFFFFF,
        ssrc=ssrc,
        marker=marker,
        csrc=csrc,
        extensions=list(extensions),
        padding=padding > 0,
    )
    tail = bytes(padding - 1) + bytes((padding,)) if padding else b""
    return bytes(header) + payload + tail
