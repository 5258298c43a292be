"""One transport-wide CC feedback packet (`sfu.media.rtp.twcc.TransportCcFeedback.parse`).

Parse raises only `RtcpError`; a parsed packet rebuilds (with its own chunk layout) to bytes that
parse to an equal packet, and `arrivals()` covers no more than its status count.
"""

from __future__ import annotations

from sfu.media.rtp.errors import RtcpError
from sfu.media.rtp.twcc import TransportCcFeedback

MAX_LEN = 1500


def test_one(data: bytes) -> None:
    try:
        feedback = TransportCcFeedback.parse(data)
    except RtcpError:
        return
    assert len(feedback.arrivals()) <= feedback.packet_status_count
    again = TransportCcFeedback.parse(bytes(feedback))
    assert again == feedback, "transport-cc feedback changed in a rebuild"


def seeds() -> list[bytes]:
    return [
        bytes.fromhex(
            "af cd 00 06 00 00 00 01 6b 8b 45 67 01 2c 00 05 00 10 00 07 d4 90 04 01 ff f8 10 01"
        ),
        bytes(TransportCcFeedback(1, 2, 65530, -5, 255, tuple([1] * 20 + [None] * 30))),
        bytes(TransportCcFeedback(1, 2, 0, 0, 0, (300, -300, None, 0, 255, 256) * 3)),
        bytes(TransportCcFeedback(1, 2, 0, 0, 0, ())),
    ]
