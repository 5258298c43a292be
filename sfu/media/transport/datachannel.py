"""Data channels with bounds: aiortc's SCTP association, guarded against a hostile peer.

This module owns what one peer connection's SCTP association may hold for the remote side.
aiortc 1.16.0's `RTCSctpTransport` keeps every DATA fragment of a message until its last one
arrives, whatever the size (and `InboundStream.pop_messages` rescans the whole reassembly list
for each new fragment), opens a channel for every DATA_CHANNEL_OPEN (up to 65,535), asserts on
protocol errors (an exception that would end the DTLS transport, media included), and queues
every `RTCDataChannel.send` without limit.  `GuardedSctpTransport` closes those gaps:

* it advertises a receive window of `RECEIVE_WINDOW` (room for one message of the
  `MAX_MESSAGE_SIZE` the SDP advertises); a peer that makes the association hold more than the
  window, or more than `MAX_REASSEMBLY_CHUNKS` fragments, or more than `MAX_MISORDERED` TSNs
  received out of order (aiortc sorts them all for each DATA chunk), or data on more than
  `MAX_INBOUND_STREAMS` streams, ignores the window: the association is aborted;
* a reassembled message over `MAX_MESSAGE_SIZE` is dropped;
* channels beyond `MAX_CHANNELS` are not opened (no DATA_CHANNEL_ACK is sent);
* a malformed packet aborts the association instead of the DTLS transport;
* a chunk sent after the DTLS transport closed is dropped, not raised in one of aiortc's
  fire-and-forget tasks.

`send_allowed` is the send-side check: a channel holding `MAX_BUFFERED_AMOUNT` bytes for a peer
that does not acknowledge them takes no more.  Each hit is counted in `sfu_limit_exceeded_total`.
aiortc internals used: `RTCSctpTransport._get_inbound_stream`, `._inbound_streams`,
`._receive_data_chunk`, `._receive`, `._data_channel_receive`, `._data_channels`, `._handle_data`,
`._abort`, `._send_chunk`, `._set_state`, `._advertised_rwnd`, `._sack_misordered`; `InboundStream.add_chunk`,
`.pop_messages`, `.prune_chunks`, `.reassembly`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from aiortc.rtcsctptransport import InboundStream, RTCSctpTransport

from sfu.metrics import COUNTERS

__all__ = [
    "MAX_BUFFERED_AMOUNT",
    "MAX_CHANNELS",
    "MAX_MESSAGE_SIZE",
    "GuardedSctpTransport",
    "send_allowed",
]

logger = logging.getLogger(__name__)

#: a=max-message-size the SFU advertises; longer messages are dropped
MAX_MESSAGE_SIZE = 262144
#: the SCTP receive window the SFU advertises: one largest message and a packet to spare
RECEIVE_WINDOW = MAX_MESSAGE_SIZE + 16384
#: fragments held for reassembly, all streams together (a full window of Chrome's 1,188-byte
#: fragments is about 240)
MAX_REASSEMBLY_CHUNKS = 1024
#: TSNs received past a gap (a window's worth of the smallest messages a client sends)
MAX_MISORDERED = 512
#: streams with data held (LiveKit uses 2 channels per peer connection)
MAX_INBOUND_STREAMS = 64
#: data channels one peer connection opens for the remote side
MAX_CHANNELS = 16
#: bytes one channel may queue for a peer before sends to it are dropped
MAX_BUFFERED_AMOUNT = 1024 * 1024

_DATA_CHANNEL_OPEN = 3
_DATA_CHANNEL_ACK = 2
_WEBRTC_DCEP = 50


class _PeerIgnoresLimits(Exception):
    """The peer went past one of the association's limits (named, and counted, in `limit`)."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        COUNTERS.limit_exceeded(limit)


class _Reassembly:
    """Fragments and bytes held by one association's inbound streams, kept up to date."""

    __slots__ = ("bytes", "chunks")

    def __init__(self) -> None:
        self.bytes = 0
        self.chunks = 0


class _CountedInboundStream(InboundStream):
    """aiortc's InboundStream, reporting what it holds to the association's `_Reassembly`."""

    def __init__(self, totals: _Reassembly) -> None:
        super().__init__()
        self._totals = totals

    def add_chunk(self, chunk: Any) -> None:
        before = len(self.reassembly)
        super().add_chunk(chunk)
        if len(self.reassembly) > before:
            self._totals.chunks += 1
            self._totals.bytes += len(chunk.user_data)

    def pop_messages(self) -> Iterator[tuple[int, int, bytes]]:
        held = len(self.reassembly)
        for message in super().pop_messages():
            self._totals.chunks -= held - len(self.reassembly)
            self._totals.bytes -= len(message[2])
            held = len(self.reassembly)
            yield message

    def prune_chunks(self, tsn: int) -> int:
        before = len(self.reassembly)
        freed = int(super().prune_chunks(tsn))
        self._totals.chunks -= before - len(self.reassembly)
        self._totals.bytes -= freed
        return freed


class _Streams(dict[int, InboundStream]):
    """The association's inbound streams: one reset by the peer gives back what it held."""

    def __init__(self, totals: _Reassembly) -> None:
        super().__init__()
        self._totals = totals

    def pop(self, stream_id: int, *default: Any) -> Any:
        stream = super().pop(stream_id, *default)
        if isinstance(stream, InboundStream):
            self._totals.chunks -= len(stream.reassembly)
            self._totals.bytes -= sum(len(c.user_data) for c in stream.reassembly)
        return stream


class GuardedSctpTransport(RTCSctpTransport):
    """`RTCSctpTransport` whose inbound side is bounded (see the module docstring)."""

    def __init__(self, transport: Any, port: int = 5000) -> None:
        super().__init__(transport, port)
        self._advertised_rwnd = RECEIVE_WINDOW
        self._held = _Reassembly()
        self._inbound_streams: dict[int, InboundStream] = _Streams(self._held)
        self._aborted = False

    @property
    def held_bytes(self) -> int:
        """Bytes of DATA fragments held for reassembly."""
        return self._held.bytes

    def _get_inbound_stream(self, stream_id: int) -> InboundStream:
        stream = self._inbound_streams.get(stream_id)
        if stream is None:
            if len(self._inbound_streams) >= MAX_INBOUND_STREAMS:
                raise _PeerIgnoresLimits("data_streams")
            stream = self._inbound_streams[stream_id] = _CountedInboundStream(self._held)
        return stream

    async def _send_chunk(self, chunk: Any) -> None:
        # aiortc sends from fire-and-forget tasks too (the T1/T2 retransmissions, `_transmit`):
        # once the DTLS transport is closed, each would end in "Task exception was never
        # retrieved". A chunk that cannot leave is lost like any datagram; the DTLS transport's
        # own state change closes the association.
        with contextlib.suppress(ConnectionError):
            await super()._send_chunk(chunk)

    async def _handle_data(self, data: bytes) -> None:
        if self._aborted:
            return
        try:
            await super()._handle_data(data)
        except _PeerIgnoresLimits as exc:
            logger.info("SCTP association aborted: the peer went past %s", exc)
            await self._give_up()
        except Exception as exc:  # aiortc asserts on protocol errors: end SCTP, not DTLS
            logger.info("SCTP association aborted on a malformed packet: %r", exc)
            await self._give_up()

    async def _receive_data_chunk(self, chunk: Any) -> None:
        if self._aborted:
            return
        if len(self._sack_misordered) >= MAX_MISORDERED:
            raise _PeerIgnoresLimits("data_reassembly")
        await super()._receive_data_chunk(chunk)
        held = self._held
        if held.bytes > RECEIVE_WINDOW or held.chunks > MAX_REASSEMBLY_CHUNKS:
            # The peer sent past the window it was given (a message that never ends, or one
            # far larger than a=max-message-size): nothing it sends can be delivered.
            raise _PeerIgnoresLimits("data_reassembly")

    async def _receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_SIZE:
            COUNTERS.limit_exceeded("data_message_size")
            return
        await super()._receive(stream_id, pp_id, data)

    async def _data_channel_receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        if pp_id == _WEBRTC_DCEP and data:
            if data[0] == _DATA_CHANNEL_OPEN:
                if stream_id in self._data_channels:
                    return  # a second open of a stream (aiortc asserts)
                if len(self._data_channels) >= MAX_CHANNELS:
                    COUNTERS.limit_exceeded("data_channels")
                    return
            elif data[0] == _DATA_CHANNEL_ACK and stream_id not in self._data_channels:
                return  # an ack for nothing (aiortc asserts)
        await super()._data_channel_receive(stream_id, pp_id, data)

    async def _give_up(self) -> None:
        """Abort the association (RFC 9260 §9.1) and drop what it holds."""
        if self._aborted:
            return
        self._aborted = True
        await self._abort()
        for stream in self._inbound_streams.values():
            stream.reassembly = []
        self._inbound_streams.clear()
        self._held.bytes = self._held.chunks = 0
        self._set_state(self.State.CLOSED)


def send_allowed(channel: Any) -> bool:
    """Whether `channel` may take another message: False while its peer leaves
    `MAX_BUFFERED_AMOUNT` bytes unacknowledged (the drop is counted)."""
    if int(channel.bufferedAmount) > MAX_BUFFERED_AMOUNT:
        COUNTERS.limit_exceeded("data_send_buffer")
        return False
    return True
