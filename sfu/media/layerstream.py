"""A received layer's per-packet numbers, and what lets the compiled receive path take its packets.

`Stream` holds one simulcast layer's counters and sequence numbers (`sfu.media.receiver.LayerState`
keeps its numbers in one: packets, octets, last arrival, RFC 3550 extended sequence numbers and
the layer's own numbering). `TrackReceiver.on_rtp` arms it when every sink of the layer forwards
through the compiled per-copy path (`sfu.media.fastpath`) and no other sink would act on a packet:
the reader of the shared socket (`sfu.media._fastrecv`, reference `sfu.media.fastrecv_py`) then
does the receiver's whole per-packet work for that SSRC itself (`Stream.take`: `RtpPacket.parse`'s
checks, the process counters, the sequence numbers, the RFC 6464 audio level, the VP8 descriptor
check; the copies to the armed targets, which the reader fans out per recvmmsg batch) and hands
Python only what it cannot take. Any change of the fan-out disarms it again
(`TrackReceiver.fanout_changed`). A VP8 layer with a sink waiting for its
key frame (a down track switching to it) is armed with `wake`: the packets that may start a key
frame, and one packet every `wake` seconds (so that the sink asks for a key frame again), go to
`on_rtp`; the rest are taken as before.

This is the pure-Python reference of `sfu.media._fastrecv.Stream` (the property test in
tests/sfu/media/test_fastrecv.py holds the two to the same datagrams and counts); `new_stream()`
gives the compiled one when it was built, which is the only one a compiled route takes, and
`STREAM_FORWARD` is the `forward` an armed compiled stream calls (None: nothing is ever armed).
"""

from __future__ import annotations

import time
from typing import Any

from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.header import RtpPacket
from sfu.media.rtp.seqnum import SequenceUnwrapper
from sfu.media.rtp.vp8 import is_keyframe as vp8_is_keyframe

__all__ = ["STREAM_FORWARD", "Stream", "new_stream"]

SEQUENCE_BASE = 1 << 16  # sfu.media.receiver.SEQUENCE_BASE
SPEAKING_DBOV = 35  # sfu.media.receiver.SPEAKING_DBOV
MAX_WAKE_S = 60.0  # the longest `Stream.arm(wake=...)`


def _may_start_keyframe(data: bytes, offset: int, end: int) -> bool:
    """Whether a VP8 payload may start a key frame: `is_keyframe`, or a frame start it cannot
    read (Python drops that one). No payload (padding) never does."""
    if offset >= end:
        return False
    try:
        return vp8_is_keyframe(data, offset, end)
    except PacketError:
        return True


class Stream:
    """One received layer's counters and sequence numbers; armed, what the reader needs to take
    its SSRC's packets itself."""

    def __init__(self) -> None:
        self.packets = self.octets = 0
        self.last_arrival = 0.0
        self.base_seq = self.max_ext_seq = self.seq_continue = -1
        self.seq_offset = SEQUENCE_BASE
        self._unwrapper = SequenceUnwrapper()
        self.level_packets = self.loud_packets = self.loud_dbov_sum = 0
        self.armed = False
        self.ssrc = 0
        self._vp8 = False
        self._level_id = 0
        self._wake = self._next_wake = 0.0
        self._targets: tuple[Any, ...] = ()
        self._group: Any = None

    @property
    def last_seq(self) -> int | None:
        return self._unwrapper.last

    def _sequence(self, sequence_number: int) -> int:
        extended = self._unwrapper.unwrap(sequence_number)
        if extended > self.max_ext_seq:
            if self.max_ext_seq < 0:  # the SSRC's first packet
                self.base_seq = extended
                if self.seq_continue >= 0:
                    self.seq_offset = self.seq_continue - extended
            self.max_ext_seq = extended
        return extended + self.seq_offset

    def on_packet(self, sequence_number: int, size: int, now: float, /) -> int:
        if not 0 <= sequence_number <= 0xFFFF or size < 0:
            raise ValueError("sequence_number must be 0..65535, size >= 0")
        self.packets += 1
        self.octets += size
        self.last_arrival = now
        return self._sequence(sequence_number)

    def reset_sequence(self) -> None:
        self._unwrapper.reset()

    @property
    def wake(self) -> float:
        return self._wake if self.armed else 0.0

    def arm(
        self, ssrc: int, targets: tuple[Any, ...], group: Any, *, forward: Any,
        vp8: bool = False, audio_level_id: int = 0, wake: float = 0.0,
    ) -> None:  # fmt: skip
        if not 0 <= ssrc <= 0xFFFFFFFF or not 0 <= audio_level_id <= 255:
            raise ValueError("ssrc or audio_level_id out of range")
        if not 0.0 <= wake <= MAX_WAKE_S or (wake > 0.0 and not vp8):
            raise ValueError("wake must be 0..60 s, and only for VP8")
        self._wake = float(wake)
        self._next_wake = time.monotonic() + wake if wake > 0.0 else 0.0
        if not isinstance(targets, tuple) or not callable(forward):
            raise TypeError("targets must be a tuple, forward callable")
        self._targets, self._group = targets, group  # the reader fans out (`Reader.defer`)
        self.ssrc, self._vp8, self._level_id = ssrc, vp8, audio_level_id
        self.armed = True

    def disarm(self) -> None:
        self.armed = False
        self._targets, self._group = (), None

    def take(self, reader: Any, data: bytes) -> bool:
        """The receiver's work on one decrypted packet of the armed SSRC (`RtpDemuxer.on_rtp`,
        `TrackReceiver.on_rtp`); False: not taken (the parser refuses it: Python drops it; or, armed
        with `wake`, it may start a key frame or the interval is up: Python forwards it)."""
        try:
            packet = RtpPacket.parse(data)
        except PacketError:
            return False
        offset, padding = packet.payload_offset, packet.padding_size
        end = len(data) - padding
        now = time.monotonic()
        if self._wake > 0.0 and (now >= self._next_wake or _may_start_keyframe(data, offset, end)):
            self._next_wake = now + self._wake
            return False  # for a sink waiting for a key frame: to Python
        reader.in_packets += 1
        reader.in_octets += len(data)
        sequence = self.on_packet(packet.sequence_number, len(data), now)
        if sequence < 0:
            reader.dropped += 1
            return True
        level = packet.extensions.get(self._level_id) if self._level_id else None
        if level:
            self.level_packets += 1
            dbov = level[0] & 0x7F
            if dbov < SPEAKING_DBOV:
                self.loud_packets += 1
                self.loud_dbov_sum += dbov
        if self._vp8 and end > offset:
            try:
                vp8_is_keyframe(data, offset, end)
            except PacketError:
                return True  # an unreadable descriptor: not forwarded
        if not self._targets:
            return True
        reader.defer(self._targets, self._group, (data, sequence, offset, padding, now))
        return True


_compiled: Any
try:
    from sfu.media import _fastpath, _fastrecv
except ImportError:  # built without a C compiler: no compiled reader to take packets either
    _compiled, STREAM_FORWARD = None, None
else:
    if hasattr(_fastrecv, "Stream") and hasattr(_fastpath, "_C_API"):
        _compiled, STREAM_FORWARD = _fastrecv.Stream, _fastpath.forward
    else:  # extensions built from an older tree: no armed streams until they are rebuilt
        _compiled, STREAM_FORWARD = None, None


def new_stream() -> Any:
    """A layer's `Stream`: the compiled one when built (a compiled route takes only that type),
    else the reference."""
    return _compiled() if _compiled is not None else Stream()
