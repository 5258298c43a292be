"""Remote ICE candidates (`sfu.media.transport.ice.parse_candidate_init`): a TrickleRequest's
`candidateInit` JSON, or an `a=candidate` line of an offer or answer.

It never raises; a candidate it accepts is a UDP, component-1 candidate on an IP address whose
`a=candidate:` line parses back to the same candidate.
"""

from __future__ import annotations

import ipaddress
import json

from sfu.media.transport.ice import parse_candidate_init

MAX_LEN = 1024


def test_one(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    candidate, ufrag, reason = parse_candidate_init(text)
    assert ufrag is None or isinstance(ufrag, str)
    if candidate is None:
        assert reason
        return
    assert candidate.transport.lower() == "udp" and candidate.component == 1
    assert 0 < candidate.port < 65536
    ipaddress.ip_address(candidate.host)
    # as it would come back in an `a=candidate:` line (a foundation may itself start with "a=")
    again, _, _ = parse_candidate_init("candidate:" + candidate.to_sdp())
    assert again is not None and again.to_sdp() == candidate.to_sdp()


def seeds() -> list[bytes]:
    line = "candidate:1704114436 1 udp 2122194687 127.0.0.1 40111 typ host generation 0"
    init = {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "CHil"}
    return [
        json.dumps(init).encode(),
        line.encode(),
        b"a=candidate:3 1 udp 1 ::1 9 typ srflx raddr 0.0.0.0 rport 0",
        b'{"candidate": ""}',
        b"candidate:1 1 udp 2122194687 abcd.local 40111 typ host",
    ]
