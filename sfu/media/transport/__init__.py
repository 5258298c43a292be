"""The SFU's WebRTC transport: the only package that touches aiortc and aioice.

`PeerTransport` is one BUNDLEd peer connection (ICE, DTLS-SRTP, SCTP data channels) speaking SDP
written by `sfu.media.sdp`; it hands decrypted RTP/RTCP to callbacks, protects plaintext RTP/RTCP
synchronously and sends them by the end of the event-loop iteration (`sfu.media.transport.batch`).
It never decodes or parses media payloads.
"""

from sfu.media.transport.negotiation import SUBSCRIBER_EXTENSION_IDS, PublishedMedia
from sfu.media.transport.peer import (
    DATA_CHANNEL_LABELS,
    LOSSY_LABEL,
    RELIABLE_LABEL,
    SEND_MODES,
    IceRestartError,
    PeerTransport,
    SendMode,
    TrackSlotLimitError,
    TransportConfig,
    TransportStats,
)

__all__ = [
    "DATA_CHANNEL_LABELS",
    "LOSSY_LABEL",
    "RELIABLE_LABEL",
    "SEND_MODES",
    "SUBSCRIBER_EXTENSION_IDS",
    "IceRestartError",
    "PeerTransport",
    "PublishedMedia",
    "SendMode",
    "TrackSlotLimitError",
    "TransportConfig",
    "TransportStats",
]
