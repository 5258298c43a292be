"""SDP (`sfu.media.sdp`) and the publisher answer (`sfu.media.transport.negotiation.build_answer`).

A client's offer is UTF-8 text (a protobuf string). `SessionDescription.parse` raises only
`SdpError`; what it parses serializes to SDP that parses again and serializes to the same text
(a fixed point), so what the SFU writes back it can read. `build_answer` raises only `SdpError`
(an offer without m= sections), and its answer is SDP the SFU can parse too, naming only mids of
the offer (every track asking for RED, so RED offers are answered with RED and Opus).

`SessionDescription.parse` turns any internal error into `SdpError("malformed SDP: ...")`; with
`FUZZ_STRICT=1` such a wrapped non-`SdpError` is re-raised, to find the imprecise errors.
"""

from __future__ import annotations

import os
from pathlib import Path

from sfu.media.sdp import SdpError, SessionDescription
from sfu.media.transport.negotiation import LocalParameters, build_answer

MAX_LEN = 8192

STRICT = os.environ.get("FUZZ_STRICT") == "1"
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sdp"

LOCAL = LocalParameters(
    ice_ufrag="fuzzufrag",
    ice_pwd="fuzzpasswordfuzzpassword",
    fingerprints=[("sha-256", ":".join(["AB"] * 32))],
    candidates=["1 1 udp 2130706431 127.0.0.1 40000 typ host generation 0"],
    address="127.0.0.1",
    port=40000,
    sctp_port=5000,
    max_message_size=262144,
)


def parse(text: str) -> SessionDescription | None:
    """The parsed SDP, or None for an `SdpError` (re-raising its cause with `FUZZ_STRICT=1`)."""
    try:
        return SessionDescription.parse(text)
    except SdpError as exc:
        cause = exc.__cause__
        if STRICT and cause is not None and not isinstance(cause, SdpError):
            raise cause from None
        return None


def check_fixed_point(description: SessionDescription, what: str) -> None:
    text = str(description)
    again = SessionDescription.parse(text)  # what the SFU writes must parse: no SdpError here
    assert str(again) == text, f"{what} does not serialize to a fixed point"


def test_one(data: bytes) -> None:
    offer = parse(data.decode("utf-8", "replace"))
    if offer is None:
        return
    check_fixed_point(offer, "a parsed offer")
    for section in offer.media:
        offer.ice_credentials(section)
        offer.dtls_fingerprints(section)
        offer.dtls_setup(section)
        assert offer.media_by_mid(section.mid) is not None
    _ = offer.bundle_mids
    try:
        # every track of the offer asks for RED, as livekit-client does by default
        red = frozenset(m.msid[1] for m in offer.media if m.msid is not None)
        answer, published = build_answer(
            offer, LOCAL, setup="active", session_id=1, session_version=2, red_tracks=red
        )
    except SdpError:
        assert not offer.media
        return
    assert len(answer.media) == len(offer.media)
    mids = {section.mid for section in offer.media}
    assert all(media.mid in mids for media in published)
    check_fixed_point(answer, "the publisher answer")


def seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.sdp"))]
