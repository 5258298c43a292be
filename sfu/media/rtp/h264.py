"""H.264 RTP payloads (RFC 6184 §5): which NAL units a packet carries, and key-frame detection.

Owns `nal_unit_types` and `is_keyframe` for the packetizations WebRTC uses (single NAL unit,
STAP-A, FU-A; packetization-mode 0 and 1). A packet "starts a key frame" when it carries an IDR
slice (type 5) or an SPS (type 7) — in a STAP-A aggregate or at the start of an FU-A. Nothing is
decoded. Raises only `H264Error`.
"""

from __future__ import annotations

from .errors import H264Error

__all__ = [
    "NAL_FU_A",
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SPS",
    "NAL_STAP_A",
    "is_keyframe",
    "nal_unit_types",
]

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_STAP_A = 24
NAL_FU_A = 28

_KEY_TYPES = frozenset((NAL_IDR, NAL_SPS))


def nal_unit_types(payload: bytes) -> list[int]:
    """The types of the NAL units whose start the payload carries.

    A single NAL unit gives its type; a STAP-A the types of its aggregated units; an FU-A the
    type of the fragmented unit if this is its first fragment (S bit), else []. Other
    aggregation types (STAP-B, MTAP, FU-B) give [].
    """
    if not payload:
        raise H264Error("empty H.264 payload")
    header = payload[0]
    if header & 0x80:
        raise H264Error("forbidden_zero_bit is set")
    nal_type = header & 0x1F
    if nal_type == 0:
        raise H264Error("NAL unit type 0 is reserved")
    if nal_type < NAL_STAP_A:
        return [nal_type]
    if nal_type == NAL_STAP_A:
        types = []
        i, n = 1, len(payload)
        while i < n:
            if i + 2 > n:
                raise H264Error("STAP-A unit size overruns the payload")
            size = payload[i] << 8 | payload[i + 1]
            i += 2
            if size == 0 or i + size > n:
                raise H264Error("STAP-A unit overruns the payload")
            types.append(payload[i] & 0x1F)
            i += size
        if not types:
            raise H264Error("empty STAP-A")
        return types
    if nal_type == NAL_FU_A:
        if len(payload) < 2:
            raise H264Error("FU-A without FU header")
        fu = payload[1]
        return [fu & 0x1F] if fu & 0x80 else []
    return []


def is_keyframe(payload: bytes) -> bool:
    """True when the payload starts an IDR slice or an SPS (see `nal_unit_types`)."""
    return not _KEY_TYPES.isdisjoint(nal_unit_types(payload))
