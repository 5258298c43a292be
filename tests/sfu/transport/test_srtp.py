"""The fast SRTP send path produces exactly what pylibsrtp's Session would."""

from __future__ import annotations

import os
import struct

import pytest
from pylibsrtp import Policy, Session

from sfu.transport.srtp import SrtpError, SrtpProtector

KEY = os.urandom(30)


def session(direction: int, profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80) -> Session:
    return Session(Policy(key=KEY, ssrc_type=direction, srtp_profile=profile))


def rtp(seq: int, size: int = 1100) -> bytes:
    return (
        struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 0x1234)
        + bytes(range(256)) * (size // 256)
        + b"x" * (size % 256)
    )


@pytest.mark.parametrize(
    "profile", [Policy.SRTP_PROFILE_AES128_CM_SHA1_80, Policy.SRTP_PROFILE_AEAD_AES_128_GCM]
)
def test_same_bytes_as_pylibsrtp_and_decryptable(profile: int) -> None:
    if profile == Policy.SRTP_PROFILE_AEAD_AES_128_GCM:
        key = os.urandom(28)
        ours = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        theirs = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        receiver = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    else:
        ours, theirs = session(Policy.SSRC_ANY_OUTBOUND), session(Policy.SSRC_ANY_OUTBOUND)
        receiver = session(Policy.SSRC_ANY_INBOUND)
    protect = SrtpProtector(ours, rtcp=False)
    for seq in range(1, 50):
        packet = rtp(seq, 100 + seq * 20)
        protected = protect(packet)
        assert protected == theirs.protect(packet)
        assert receiver.unprotect(protected) == packet


def test_rtcp_and_errors() -> None:
    ours, theirs = session(Policy.SSRC_ANY_OUTBOUND), session(Policy.SSRC_ANY_OUTBOUND)
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x42)
    assert SrtpProtector(ours, rtcp=True)(rr) == theirs.protect_rtcp(rr)
    strict = SrtpProtector(session(Policy.SSRC_ANY_OUTBOUND), rtcp=False)
    with pytest.raises(SrtpError):
        strict(b"\x80" * 4000)  # longer than any datagram we send
    strict(rtp(7))
    with pytest.raises(SrtpError):
        strict(rtp(7))  # by default libsrtp refuses to encrypt the same index twice


def test_retransmissions_are_allowed_as_aiortc_keys_the_session() -> None:
    """aiortc's DTLS transport sets allow_repeat_tx on its send policy (as libwebrtc does), so a
    NACKed packet can be sent again, byte-identical."""
    policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    protect = SrtpProtector(Session(policy), rtcp=False)
    first = protect(rtp(9))
    assert protect(rtp(10)) != first
    assert protect(rtp(9)) == first
