"""SRTP protection and unprotection on the media path, without pylibsrtp's per-call allocations.

pylibsrtp's ``Session.protect``/``unprotect`` allocate a length cell, copy the packet in and slice
a new bytes object out on every call; at one call per packet that wrapper costs about as much as
the cipher. ``SrtpProtector`` (send) and ``SrtpUnprotector`` (receive) call the same libsrtp
contexts (the ones aiortc's DTLS transport keyed) through pylibsrtp's own cffi binding, on a
buffer allocated once.
"""

from __future__ import annotations

from collections.abc import Callable
from socket import htonl
from typing import Any

from pylibsrtp import SRTP_MAX_SRTCP_TRAILER_LEN, SRTP_MAX_TRAILER_LEN, Policy, Session
from pylibsrtp._binding import ffi, lib

from sfu.metrics import COUNTERS

BUFFER_SIZE = 2048
#: SSRCs one inbound session keeps libsrtp streams for (16 tracks × 3 simulcast layers fit)
MAX_SRTP_STREAMS = 64


#: the replay window of an outbound session, as aiortc's DTLS transport sets it: a NACK resend
#: up to this many sequence numbers back can still be protected
OUTBOUND_WINDOW = 1024


def outbound_keying(dtls: Any) -> tuple[bytes, int]:
    """The outbound SRTP master key + salt and libsrtp profile of a connected aiortc
    `RTCDtlsTransport`: RFC 5764 §4.2's exporter output, split with aiortc's own profile table,
    as its `_setup_srtp` keyed `_tx_srtp` (the exporter gives the same bytes however often it
    runs). Uses `._ssl`, `._role` and `._srtp_profiles`."""
    ssl = dtls._ssl
    selected = ssl.get_selected_srtp_profile()
    profile = next(p for p in dtls._srtp_profiles if p.openssl_profile == selected)
    material = ssl.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
    )
    key: bytes = profile.get_key_and_salt(material, 1 if dtls._role == "server" else 0)
    return key, int(profile.libsrtp_profile)


def outbound_session(key: bytes, profile: int) -> Session:
    """A new outbound SRTP session under a DTLS transport's master key + salt and libsrtp
    profile: it protects exactly as the transport's own session does (same keys, same cipher),
    with a stream list of its own.

    A down track's compiled target protects through a session of its own for that reason:
    libsrtp finds the stream of every packet by walking its session's linked list of streams,
    and a subscriber's shared session holds one per forwarded track (16-18 in the 500 preset).
    With the fan-out going subscriber by subscriber, each walk ran over cold memory: 11.9 % of
    the SFU's samples at 150 subscribers (docs/decisions.md 7). A session per down track holds
    one stream, found at once.
    """
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
    policy.allow_repeat_tx = True  # a NACK resend protects the same packet again
    policy.window_size = OUTBOUND_WINDOW
    return Session(policy)


class SrtpError(Exception):
    """libsrtp refused a packet: a replayed or far too old sequence number, a bad auth tag..."""


class _SrtpCall:
    """``call(packet) -> packet`` through one libsrtp function, on a buffer allocated once."""

    __slots__ = (
        "_buffer",
        "_context",
        "_function",
        "_length",
        "_limit",
        "_name",
        "_session",
        "_view",
    )

    def __init__(self, session: Session, function: Any, limit: int, name: str) -> None:
        self._session = session  # owns the libsrtp context; keep it alive
        self._context: Any = session._srtp[0]
        self._buffer: Any = ffi.new("unsigned char[]", BUFFER_SIZE)
        self._view: Any = ffi.buffer(self._buffer)
        self._length: Any = ffi.new("int *")
        self._function = function
        self._limit = limit
        self._name = name

    def __call__(self, data: bytes) -> bytes:
        size = len(data)
        if size > self._limit:
            raise SrtpError(f"packet too long to {self._name}")
        self._view[0:size] = data
        self._length[0] = size
        status = self._function(self._context, self._buffer, self._length)
        if status:
            raise SrtpError(f"srtp_{self._name} failed with status {status}")
        result: bytes = self._view[0 : self._length[0]]
        return result


class SrtpProtector(_SrtpCall):
    """``protector(plaintext) -> protected`` for RTP (or RTCP) on one SRTP session."""

    __slots__ = ()

    def __init__(self, session: Session, *, rtcp: bool) -> None:
        trailer = SRTP_MAX_SRTCP_TRAILER_LEN if rtcp else SRTP_MAX_TRAILER_LEN
        function = lib.srtp_protect_rtcp if rtcp else lib.srtp_protect
        super().__init__(session, function, BUFFER_SIZE - trailer, "protect")


class SrtpUnprotector(_SrtpCall):
    """``unprotector(protected) -> plaintext`` for SRTP (or SRTCP) on one SRTP session.

    libsrtp clones a stream (keys, replay window, rollover counter) from the session's template
    for every SSRC that authenticates, and keeps it for the session's life: a peer that sends
    each packet under a fresh SSRC would grow that list without end. The unprotector remembers
    the SSRCs libsrtp holds streams for, at most ``MAX_SRTP_STREAMS``, and removes the oldest
    stream when a new one would pass the cap (counted as ``srtp_streams``). Each peer
    connection has sessions of its own, so only the churning peer's streams are ever removed.
    """

    __slots__ = ("_ssrc_at", "on_remove", "streams")

    def __init__(self, session: Session, *, rtcp: bool) -> None:
        function = lib.srtp_unprotect_rtcp if rtcp else lib.srtp_unprotect
        super().__init__(session, function, BUFFER_SIZE, "unprotect")
        self._ssrc_at = 4 if rtcp else 8  # RTCP: the sender's SSRC; RTP: the header's
        #: SSRCs libsrtp holds a stream for, oldest first
        self.streams: dict[int, None] = {}
        #: told each SSRC whose stream is removed (the compiled receive path's route)
        self.on_remove: Callable[[int], object] | None = None

    def __call__(self, data: bytes) -> bytes:
        result = _SrtpCall.__call__(self, data)  # raises before libsrtp made a stream
        at = self._ssrc_at
        ssrc = int.from_bytes(data[at : at + 4], "big")
        streams = self.streams
        if ssrc not in streams:
            streams[ssrc] = None
            if len(streams) > MAX_SRTP_STREAMS:
                oldest = next(iter(streams))
                del streams[oldest]
                lib.srtp_remove_stream(self._context, htonl(oldest))
                COUNTERS.limit_exceeded("srtp_streams")
                if self.on_remove is not None:
                    self.on_remove(oldest)
        return result
