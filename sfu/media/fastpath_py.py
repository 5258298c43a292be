"""The per-copy forwarding path in pure Python: the reference (and fallback) of `sfu.media._fastpath`.

`forward(targets, packet, data, ext_seq, payload_offset, padding_size, now)` does, for one received
RTP packet and every `Target` in `targets`, exactly what the compiled `forward` does
(`forward_many` is the compiled receive path's run of packets, target by target), and the
property test (tests/sfu/media/test_fastpath.py) holds the two to byte-identical datagrams and
identical state. Per target:

- a packet whose extended sequence number is below `switch_seq` is skipped (it is older than the
  packet the target switched on), and so is every packet once the target is `closed` (its
  transport closed; the batch it queued on may be shared by other transports and live on);
- out sequence number = `ext_seq - seq_offset` (extended; the wire carries it mod 2**16), out
  timestamp = `(timestamp - ts_offset) mod 2**32`;
- the datagram is `rewrite()` of the packet (SSRC, payload type, sequence number, timestamp; no
  CSRCs, no header extensions; marker and P bit kept), with the VP8 payload descriptor renumbered
  by `munged_descriptor` when any VP8 offset is set and the descriptor parses; a padding-only
  packet (a bandwidth probe) becomes a 13-byte padding packet under the same numbers;
- when the target has a `twcc` (its transport's `TransportWideSequence`) with an `ext_id`, the
  header carries one extension block, `transport_cc_block(ext_id, next_seq)` (8 bytes, X bit
  set), and once the datagram is queued the sequence records it (`record(length, now)`):
  the transport-wide sequence number advances only for datagrams that leave;
- when the copy is the newest so far (or the first), `last_out_seq`, `last_out_ts`,
  `last_out_time` (= `now`) and — unless padding-only — `last_packet` (= `packet`) are updated;
- the history slot `out_seq % HISTORY_SIZE` becomes `(out_seq, out_ts, data, epoch)`;
  `packets_sent` and `octets_sent` (length - 12) count it, and so do the returned totals;
- the datagram is SRTP-protected (when the target has a session) and queued on its `Batch`; a
  datagram over `MAX_PLAINTEXT` bytes, or one libsrtp refuses, is counted in `send_dropped`.

`Target.resend(slot, now)` rebuilds a history entry under its stored numbers (what a NACK answer
sends, once Python's NACK policy has allowed it; stamped like a forwarded copy) and
`Target.send(data)` protects and queues any plaintext datagram (sender reports, say; never
stamped), both on the same batch.

`TransportWideSequence` is one subscriber transport's transport-wide sequence number and, per
number, the send time and size of what went out under it, in a ring of `TWCC_HISTORY` (what
transport-cc feedback is matched against, `sent(seq)`).

Python keeps every decision (which targets, switches, offsets): `Target` holds the parameters,
set when they change, and the state `forward` updates.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

from pylibsrtp import SRTP_MAX_SRTCP_TRAILER_LEN, SRTP_MAX_TRAILER_LEN, Session

from sfu.media.rtp.errors import PacketError
from sfu.media.rtp.header import RtpPacket, rewrite
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor, munged_descriptor
from sfu.media.transport.srtp import BUFFER_SIZE, SrtpError, SrtpProtector

__all__ = [
    "HISTORY_SIZE",
    "MAX_PLAINTEXT",
    "TWCC_HISTORY",
    "Batch",
    "Target",
    "TransportWideSequence",
    "forward",
    "forward_many",
    "transport_cc_block",
]

HISTORY_SIZE = 512  # sfu.media.forwarder.HISTORY_SIZE
HISTORY_MASK = HISTORY_SIZE - 1
#: the longest plaintext datagram that fits a protect buffer with the largest SRTP trailer
MAX_PLAINTEXT = BUFFER_SIZE - SRTP_MAX_TRAILER_LEN
#: a minimal padding-only packet: V=2 P=1, header, then one padding byte holding its own count
_PADDING_PACKET = struct.Struct("!BBHIIB")
_SEQ_LIMIT = 1 << 62
TWCC_HISTORY = 2048  # power of two: sent packets remembered per transport (sequence numbers)
_TWCC_MASK = TWCC_HISTORY - 1
_UNPARSED = object()

History = tuple[int, int, bytes, int]


class Batch:
    """Datagrams queued for one socket (a duplicate of `fd`; -1: none, everything is dropped),
    sent by `flush` one `sendto` each."""

    def __init__(self, fd: int, *, gso: bool = False, capacity: int = 1024) -> None:
        if not 1 <= capacity <= 65536:
            raise ValueError("capacity must be 1..65536")
        self._sock = socket.socket(fileno=os.dup(fd)) if fd >= 0 else None
        if self._sock is not None:
            self._sock.setblocking(False)
        self.gso = False  # the reference sends one datagram per call
        self.capacity = capacity
        self._queue: list[tuple[bytes, tuple[str, int]]] = []
        self.sent = self.dropped = self.syscalls = self.flushes = 0
        self.gso_datagrams = self.auto_flushes = 0
        self.fanout_flushes = self.fanout_datagrams = 0  # set by fastrecv_py's fan-out

    @property
    def fd(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def __len__(self) -> int:
        return len(self._queue)

    def reserve(self) -> None:
        """Called before a datagram is built: a full batch is sent first."""
        if len(self._queue) >= self.capacity:
            self.auto_flushes += 1
            self.flush()

    def append(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self._queue.append((datagram, addr))

    def flush(self) -> int:
        queue, self._queue = self._queue, []
        if not queue:
            return 0
        self.flushes += 1
        sock = self._sock
        if sock is None:
            self.dropped += len(queue)
            return 0
        sent = 0
        for i, (datagram, addr) in enumerate(queue):
            self.syscalls += 1
            try:
                sock.sendto(datagram, addr)
            except BlockingIOError:
                self.dropped += len(queue) - i
                break
            except OSError:
                self.dropped += 1
                continue
            sent += 1
        self.sent += sent
        return sent

    def pending(self) -> list[tuple[bytes, tuple[str, int]]]:
        return list(self._queue)

    def clear(self) -> None:
        self.dropped += len(self._queue)
        self._queue = []

    def close(self) -> None:
        self.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def transport_cc_block(ext_id: int, seq: int) -> bytes:
    """The one-byte-form extension block (RFC 8285) holding only the transport-wide sequence
    number `seq` (mod 2**16) under `ext_id` (1..14), padded to 8 bytes."""
    return bytes((0xBE, 0xDE, 0, 1, (ext_id << 4) | 1, (seq >> 8) & 0xFF, seq & 0xFF, 0))


class TransportWideSequence:
    """One transport's transport-wide sequence numbers and what went out under each."""

    def __init__(self, ext_id: int = 0) -> None:
        self.ext_id = ext_id  # the negotiated extmap id (1..14); 0: not negotiated, no stamp
        self.next_seq = 0  # extended: the number the next datagram gets
        self._seq = [-1] * TWCC_HISTORY
        self._time = [0.0] * TWCC_HISTORY
        self._size = [0] * TWCC_HISTORY

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "ext_id" and not (0 <= value <= 14):
            raise ValueError("ext_id out of range")
        if name == "next_seq" and not (0 <= value < _SEQ_LIMIT):
            raise ValueError("next_seq out of range")
        object.__setattr__(self, name, value)

    def record(self, size: int, now: float, /) -> int:
        """The datagram stamped with `next_seq` left: remember it; the number it got."""
        seq = self.next_seq
        slot = seq & _TWCC_MASK
        self._seq[slot], self._time[slot], self._size[slot] = seq, now, size
        self.next_seq = seq + 1
        return seq

    def sent(self, seq: int, /) -> tuple[float, int] | None:
        """(send time, size) of extended number `seq`, or None when unknown or overwritten."""
        if seq < 0:
            return None
        slot = seq & _TWCC_MASK
        if self._seq[slot] != seq:
            return None
        return self._time[slot], self._size[slot]


class Target:
    """One down track's per-copy parameters and state (see the module docstring)."""

    def __init__(
        self, batch: Batch, addr: tuple[str, int], *, session: Session | None = None
    ) -> None:
        self.batch = batch
        self.addr = addr
        self._protect = None if session is None else SrtpProtector(session, rtcp=False)
        self._protect_rtcp = None if session is None else SrtpProtector(session, rtcp=True)
        self.ssrc = 0
        self.payload_type = 0
        self.ts_offset = 0
        self.seq_offset = 0
        self.switch_seq = 0
        self.epoch = 0
        self.pid_offset = 0
        self.tl0_offset = 0
        self.keyidx_offset = 0
        self.twcc: TransportWideSequence | None = None
        self.sent_any = False
        self.last_out_seq = 0
        self.last_out_ts = 0
        self.last_out_time = 0.0
        self.last_packet: object | None = None
        self.packets_sent = 0
        self.octets_sent = 0
        self.send_dropped = 0
        self.closed = False
        self._history: list[History | None] = [None] * HISTORY_SIZE
        self._layout = [(12, 0)] * HISTORY_SIZE  # payload offset and padding per slot

    def entry(self, slot: int, /) -> History | None:
        if not 0 <= slot < HISTORY_SIZE:
            raise IndexError("history slot out of range")
        return self._history[slot]

    def clear_history(self) -> None:
        self._history = [None] * HISTORY_SIZE

    def store(self, out_seq: int, out_ts: int, data: bytes, offset: int, padding: int) -> None:
        slot = out_seq & HISTORY_MASK
        self._history[slot] = (out_seq, out_ts, data, self.epoch)
        self._layout[slot] = (offset, padding)

    def resend(self, slot: int, now: float = 0.0, /) -> bool:
        """Rebuild history slot `slot` under its stored sequence number and timestamp (current
        SSRC, payload type and VP8 offsets), protect and queue it; False if empty or dropped."""
        entry = self.entry(slot)
        if entry is None:
            return False
        if self.closed:
            self.send_dropped += 1
            return False
        out_seq, out_ts, data, _ = entry
        self.batch.reserve()
        datagram = _Received(data, *self._layout[slot]).build(self, out_seq, out_ts)
        if len(datagram) > MAX_PLAINTEXT:
            self.send_dropped += 1
            return False
        return self.queue_stamped(datagram, now)

    def stamping(self) -> TransportWideSequence | None:
        """The sequence whose next number this target's copies carry, or None (no stamp)."""
        twcc = self.twcc
        return twcc if twcc is not None and twcc.ext_id else None

    def queue_stamped(self, datagram: bytes, now: float) -> bool:
        """`queue`, and the transport-wide sequence number it carries recorded if it left."""
        if not self.queue(datagram):
            return False
        twcc = self.stamping()
        if twcc is not None:
            twcc.record(len(datagram), now)
        return True

    def queue(self, datagram: bytes, *, rtcp: bool = False) -> bool:
        """Protect (with the target's session, if any) and queue; False if dropped."""
        protect = self._protect_rtcp if rtcp else self._protect
        if protect is not None:
            try:
                datagram = protect(datagram)
            except SrtpError:
                self.send_dropped += 1
                return False
        self.batch.append(datagram, self.addr)
        return True

    def send(self, data: bytes, *, rtcp: bool = False) -> bool:
        """Protect one plaintext RTP (or RTCP) datagram and queue it; False if dropped."""
        if (
            self.closed
            or not data
            or len(data) > (BUFFER_SIZE - SRTP_MAX_SRTCP_TRAILER_LEN if rtcp else MAX_PLAINTEXT)
        ):
            self.send_dropped += 1
            return False
        self.batch.reserve()
        return self.queue(data, rtcp=rtcp)


def _descriptor(view: RtpPacket) -> Vp8PayloadDescriptor | None:
    try:
        return Vp8PayloadDescriptor.parse(
            view.data, view.payload_offset, len(view.data) - view.padding_size
        )
    except PacketError:
        return None


class _Received:
    """One received packet as `forward` sees it; its VP8 descriptor parsed on first need."""

    __slots__ = ("_descriptor", "padding_only", "view")

    def __init__(self, data: bytes, payload_offset: int, padding_size: int) -> None:
        self.view = RtpPacket(data, False, 0, 0, 0, 0, (), None, {}, payload_offset, padding_size)
        self.padding_only = payload_offset + padding_size >= len(data)
        self._descriptor: Any = _UNPARSED

    def descriptor(self) -> Vp8PayloadDescriptor | None:
        if self._descriptor is _UNPARSED:
            self._descriptor = _descriptor(self.view)
        result: Vp8PayloadDescriptor | None = self._descriptor
        return result

    def build(self, t: Target, out_seq: int, out_ts: int) -> bytes:
        """The datagram for target `t` under these outgoing numbers."""
        data = self.view.data
        twcc = t.stamping()
        extensions = b"" if twcc is None else transport_cc_block(twcc.ext_id, twcc.next_seq)
        if self.padding_only:
            head = _PADDING_PACKET.pack(
                0xA0, data[1] & 0x80 | t.payload_type, out_seq & 0xFFFF, out_ts, t.ssrc, 1
            )
            if not extensions:
                return head
            return bytes((head[0] | 0x10,)) + head[1:12] + extensions + head[12:]
        header: bytes | None = None
        size = 0
        if t.pid_offset or t.tl0_offset or t.keyidx_offset:
            d = self.descriptor()
            if d is not None:
                pid, tl0, kidx = d.picture_id, d.tl0_pic_idx, d.key_idx
                header = munged_descriptor(
                    d,
                    picture_id=None if pid is None else (pid - t.pid_offset) & 0x7FFF,
                    tl0_pic_idx=None if tl0 is None else (tl0 - t.tl0_offset) & 0xFF,
                    key_idx=None if kidx is None else (kidx - t.keyidx_offset) & 0x1F,
                )
                size = d.size
        return rewrite(
            self.view,
            payload_type=t.payload_type,
            sequence_number=out_seq,
            timestamp=out_ts,
            ssrc=t.ssrc,
            extensions=extensions,
            payload_header=header,
            payload_header_size=size,
        )


def forward(
    targets: Sequence[Target],
    packet: object,
    data: bytes,
    ext_seq: int,
    payload_offset: int,
    padding_size: int,
    now: float,
    /,
) -> tuple[int, int]:
    """Forward one received packet to `targets`; returns (copies written, their plaintext bytes)."""
    n = len(data)
    if (
        not 12 <= n <= 0xFFFF
        or not 12 <= payload_offset <= n
        or not 0 <= padding_size <= min(255, n - payload_offset)
    ):
        raise ValueError("payload_offset/padding_size do not fit the packet")
    if not 0 <= ext_seq < _SEQ_LIMIT:
        raise ValueError("ext_seq out of range")
    received = _Received(data, payload_offset, padding_size)
    padding_only = received.padding_only
    timestamp = int.from_bytes(data[4:8], "big")
    copies = octets = 0
    for t in targets:
        if ext_seq < t.switch_seq or t.closed:
            continue
        out_seq = ext_seq - t.seq_offset
        out_ts = (timestamp - t.ts_offset) & 0xFFFFFFFF
        newest = not t.sent_any or out_seq > t.last_out_seq
        t.batch.reserve()
        datagram = received.build(t, out_seq, out_ts)
        if newest:
            if not padding_only:
                t.last_packet = packet
            t.sent_any = True
            t.last_out_seq = out_seq
            t.last_out_ts = out_ts
            t.last_out_time = now
        t.store(out_seq, out_ts, data, payload_offset, padding_size)
        length = len(datagram)
        t.packets_sent += 1
        t.octets_sent += length - (20 if t.stamping() is not None else 12)
        copies += 1
        octets += length
        if length > MAX_PLAINTEXT:
            t.send_dropped += 1
        else:
            t.queue_stamped(datagram, now)
    return copies, octets


def forward_many(
    targets: Sequence[Target],
    packets: Sequence[tuple[bytes, int, int, int, float]],
    flush_at: int,
) -> tuple[int, int]:
    """`forward` of each packet (data, ext_seq, payload_offset, padding_size, now), in order, but
    target by target, each target's batch sent once it holds `flush_at` datagrams or more after
    its run (counted in `fanout_flushes`): the compiled `FastpathApi.forward_many`."""
    copies = octets = 0
    for target in targets:
        for data, ext_seq, offset, padding, now in packets:
            c, o = forward((target,), data, data, ext_seq, offset, padding, now)
            copies, octets = copies + c, octets + o
        batch = target.batch
        if len(batch) >= flush_at > 0:
            batch.fanout_flushes += 1
            batch.fanout_datagrams += len(batch)
            batch.flush()
    return copies, octets
