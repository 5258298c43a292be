"""The fast SRTP send path produces exactly what pylibsrtp's Session would."""

from __future__ import annotations

import os
import struct

import pytest
from pylibsrtp import Policy, Session

from sfu.media.transport.srtp import MAX_SRTP_STREAMS, SrtpError, SrtpProtector, SrtpUnprotector
from sfu.metrics import COUNTERS
from tests.sfu.packets import rtp

KEY = os.urandom(30)


def session(direction: int, profile: int = Policy.SRTP_PROFILE_AES128_CM_SHA1_80) -> Session:
    return Session(Policy(key=KEY, ssrc_type=direction, srtp_profile=profile))


def media(seq: int, size: int = 1100) -> bytes:
    """An RTP packet with a recognisable `size`-byte payload."""
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    return rtp(payload, sequence_number=seq, timestamp=seq * 3000)


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
        packet = media(seq, 100 + seq * 20)
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
    strict(media(7))
    with pytest.raises(SrtpError):
        strict(media(7))  # by default libsrtp refuses to encrypt the same index twice


def test_retransmissions_are_allowed_as_aiortc_keys_the_session() -> None:
    """aiortc's DTLS transport sets allow_repeat_tx on its send policy (as libwebrtc does), so a
    NACKed packet can be sent again, byte-identical."""
    policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = True
    protect = SrtpProtector(Session(policy), rtcp=False)
    first = protect(media(9))
    assert protect(media(10)) != first
    assert protect(media(9)) == first


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("rtcp", [False, True])
def test_ssrc_churn_keeps_libsrtps_streams_bounded(rtcp: bool) -> None:
    """libsrtp keeps a stream (its keys and replay window) for every SSRC an inbound session has
    seen; a publisher sending each packet under a fresh SSRC must not grow that list."""
    sender = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    unprotect = SrtpUnprotector(session(Policy.SSRC_ANY_INBOUND), rtcp=rtcp)
    before_limit = COUNTERS.limits_exceeded.get("srtp_streams", 0)
    before = rss_kib()
    for ssrc in range(1, 30_001):
        if rtcp:
            packet = struct.pack("!BBHI", 0x80, 201, 1, ssrc)
            protected = sender.protect_rtcp(packet)
        else:
            packet = rtp(b"p" * 100, sequence_number=1, timestamp=3000, ssrc=ssrc)
            protected = sender.protect(packet)
        sender.remove_stream(ssrc)  # the attacker's side need not grow
        assert unprotect(protected) == packet
    assert rss_kib() - before < 2048  # unbounded: about 8 MiB for 30,000 streams
    assert len(unprotect.streams) == MAX_SRTP_STREAMS
    assert COUNTERS.limits_exceeded["srtp_streams"] == before_limit + 30_000 - MAX_SRTP_STREAMS
    # the streams still held keep their replay protection
    last = struct.pack("!BBHI", 0x80, 201, 1, 30_000) if rtcp else None
    if last is not None:
        with pytest.raises(SrtpError):
            protected = sender.protect_rtcp(last)
            unprotect(protected)
            unprotect(protected)
