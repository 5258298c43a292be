"""SRTP protection and unprotection on the media path, without pylibsrtp's per-call allocations.

pylibsrtp's ``Session.protect``/``unprotect`` allocate a length cell, copy the packet in and slice
a new bytes object out on every call; at one call per packet that wrapper costs about as much as
the cipher. ``SrtpProtector`` (send) and ``SrtpUnprotector`` (receive) call the same libsrtp
contexts (the ones aiortc's DTLS transport keyed) through pylibsrtp's own cffi binding, on a
buffer allocated once.
"""

from __future__ import annotations

from typing import Any

from pylibsrtp import SRTP_MAX_SRTCP_TRAILER_LEN, SRTP_MAX_TRAILER_LEN, Session
from pylibsrtp._binding import ffi, lib

BUFFER_SIZE = 2048


class SrtpError(Exception):
    """libsrtp refused a packet: a replayed or far too old sequence number, a bad auth tag..."""


class SrtpProtector:
    """``protector(plaintext) -> protected`` for RTP (or RTCP) on one SRTP session."""

    __slots__ = ("_buffer", "_context", "_function", "_length", "_limit", "_session", "_view")

    def __init__(self, session: Session, *, rtcp: bool) -> None:
        self._session = session  # owns the libsrtp context; keep it alive
        self._context: Any = session._srtp[0]
        self._buffer: Any = ffi.new("unsigned char[]", BUFFER_SIZE)
        self._view: Any = ffi.buffer(self._buffer)
        self._length: Any = ffi.new("int *")
        self._function: Any = lib.srtp_protect_rtcp if rtcp else lib.srtp_protect
        trailer = SRTP_MAX_SRTCP_TRAILER_LEN if rtcp else SRTP_MAX_TRAILER_LEN
        self._limit = BUFFER_SIZE - trailer

    def __call__(self, data: bytes) -> bytes:
        size = len(data)
        if size > self._limit:
            raise SrtpError("packet too long to protect")
        self._view[0:size] = data
        self._length[0] = size
        status = self._function(self._context, self._buffer, self._length)
        if status:
            raise SrtpError(f"srtp_protect failed with status {status}")
        result: bytes = self._view[0 : self._length[0]]
        return result


class SrtpUnprotector:
    """``unprotector(protected) -> plaintext`` for SRTP (or SRTCP) on one SRTP session."""

    __slots__ = ("_buffer", "_context", "_function", "_length", "_session", "_view")

    def __init__(self, session: Session, *, rtcp: bool) -> None:
        self._session = session  # owns the libsrtp context; keep it alive
        self._context: Any = session._srtp[0]
        self._buffer: Any = ffi.new("unsigned char[]", BUFFER_SIZE)
        self._view: Any = ffi.buffer(self._buffer)
        self._length: Any = ffi.new("int *")
        self._function: Any = lib.srtp_unprotect_rtcp if rtcp else lib.srtp_unprotect

    def __call__(self, data: bytes) -> bytes:
        size = len(data)
        if size > BUFFER_SIZE:
            raise SrtpError("packet too long to unprotect")
        self._view[0:size] = data
        self._length[0] = size
        status = self._function(self._context, self._buffer, self._length)
        if status:
            raise SrtpError(f"srtp_unprotect failed with status {status}")
        result: bytes = self._view[0 : self._length[0]]
        return result
