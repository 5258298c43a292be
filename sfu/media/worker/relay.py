"""Media between workers: a publisher's decrypted RTP relayed once to every other worker with
subscribers of the track, and what flows back (key-frame requests).

Each worker binds one Unix datagram socket in the abstract namespace, named by the control
process's namespace and the worker's index, so a restarted worker is found at the same name.
A datagram holds the frames one event-loop iteration queued for that worker, each a u16
length and one byte of kind, the track's number (u32) and the layer (u8), then:

- ``R``: the RTP packet as the publisher's worker decrypted it (its header untouched);
- ``S``: a sender report's NTP (u64) and RTP (u32) timestamps and the layer's SSRC (u32);
- ``K``: nothing: a subscriber on the sending worker needs a key frame of that layer.

On the subscribers' worker, a `ReplicaReceiver` takes the place of the publisher's
`TrackReceiver`: its down tracks fan out as they would locally. Its key-frame requests go to
the publisher's worker, whose receiver throttles them once for every worker. A datagram the
other side cannot take now waits (at most `MAX_BACKLOG` datagrams); one for a worker that is
not there (restarting) is dropped and counted: lost packets, recovered like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable

from sfu.media.receiver import TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpPacket

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!cIB")
_LENGTH = struct.Struct("!H")
_SR = struct.Struct("!QII")
#: datagrams read per readiness callback before the loop runs other work
READ_BURST = 256
RELAY_BUFFER = 4 << 20
#: the largest datagram the relay sends: the frames of one loop iteration for one worker, cut
#: here (a Unix datagram socket queues at most net.unix.max_dgram_qlen datagrams, 10 by default,
#: whatever their size: one per packet would drop a key frame's burst)
MAX_DATAGRAM = 64 * 1024
#: datagrams kept per destination while its socket is full; older ones are dropped first
MAX_BACKLOG = 256


def relay_address(namespace: str, index: int) -> str:
    """The abstract socket name of worker ``index`` of one control process."""
    return f"\0{namespace}-w{index}"


class Relay:
    """This worker's relay socket: sends to the others (the frames of one event-loop iteration
    batched into one datagram per worker), and hands what arrives to callbacks."""

    def __init__(self, namespace: str, index: int) -> None:
        self.namespace = namespace
        self.index = index
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_BUFFER)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RELAY_BUFFER)
        self.sock.bind(relay_address(namespace, index))
        self.on_rtp: Callable[[int, int, bytes], None] = _ignore_rtp
        self.on_sender_report: Callable[[int, int, rtcp.SenderReport], None] = _ignore_sr
        self.on_keyframe: Callable[[int, int], None] = _ignore_keyframe
        self.sent = 0  # frames (packets, reports, requests) sent
        self.received = 0  # frames received
        self.dropped = 0  # frames dropped: the other worker's socket full, or nobody there
        self.datagrams = 0  # datagrams sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, list[bytes]] = {}
        self._backlog: dict[int, deque[tuple[bytes, int]]] = {}
        self._flush_scheduled = False
        self._writing = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    # -- sending ----------------------------------------------------------------------------------
    def _queue(self, to: int, frame: bytes) -> None:
        self._pending.setdefault(to, []).append(_LENGTH.pack(len(frame)) + frame)
        self.sent += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def send_rtp(self, to: int, track: int, layer: int, data: bytes) -> None:
        self._queue(to, _HEAD.pack(b"R", track, layer) + data)

    def send_sender_report(
        self, to: int, track: int, layer: int, ssrc: int, ntp: int, ts: int
    ) -> None:
        self._queue(to, _HEAD.pack(b"S", track, layer) + _SR.pack(ntp, ts, ssrc))

    def send_keyframe_request(self, to: int, track: int, layer: int) -> None:
        self._queue(to, _HEAD.pack(b"K", track, layer))

    def flush(self) -> None:
        """Send what this loop iteration queued: one datagram per worker (cut at MAX_DATAGRAM)."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for to, frames in pending.items():
            chunk: list[bytes] = []
            size = 0
            for frame in frames:
                if chunk and size + len(frame) > MAX_DATAGRAM:
                    self._send(to, b"".join(chunk), len(chunk))
                    chunk, size = [], 0
                chunk.append(frame)
                size += len(frame)
            if chunk:
                self._send(to, b"".join(chunk), len(chunk))

    def _send(self, to: int, datagram: bytes, frames: int) -> None:
        backlog = self._backlog.get(to)
        if backlog:  # keep the order: behind what is waiting
            self._keep(to, datagram, frames)
            return
        try:
            self.sock.sendto(datagram, relay_address(self.namespace, to))
            self.datagrams += 1
        except (BlockingIOError, InterruptedError):
            self._keep(to, datagram, frames)
        except OSError:  # nobody there (a worker restarting): lost packets
            self.dropped += frames

    def _keep(self, to: int, datagram: bytes, frames: int) -> None:
        backlog = self._backlog.setdefault(to, deque())
        if len(backlog) >= MAX_BACKLOG:
            self.dropped += backlog.popleft()[1]
        backlog.append((datagram, frames))
        if not self._writing and self._loop is not None:
            self._writing = True
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        for to, backlog in self._backlog.items():
            while backlog:
                datagram, frames = backlog[0]
                try:
                    self.sock.sendto(datagram, relay_address(self.namespace, to))
                except (BlockingIOError, InterruptedError):
                    return  # still full: wait for the next writable
                except OSError:
                    self.dropped += frames
                backlog.popleft()
                self.datagrams += 1
        self._backlog.clear()
        self._writing = False
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())

    # -- receiving --------------------------------------------------------------------------------
    def _readable(self) -> None:
        for _ in range(READ_BURST):
            try:
                datagram = self.sock.recv(MAX_DATAGRAM + 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            offset, end = 0, len(datagram)
            while offset + _LENGTH.size <= end:
                (length,) = _LENGTH.unpack_from(datagram, offset)
                offset += _LENGTH.size
                frame = datagram[offset : offset + length]
                offset += length
                self.received += 1
                try:
                    self._dispatch(frame)
                except Exception:  # a bad frame must not stop the relay
                    log.exception("relay frame failed")

    def _dispatch(self, frame: bytes) -> None:
        if len(frame) < _HEAD.size:
            return
        kind, track, layer = _HEAD.unpack_from(frame)
        if kind == b"R":
            self.on_rtp(track, layer, frame[_HEAD.size :])
        elif kind == b"S" and len(frame) >= _HEAD.size + _SR.size:
            ntp, ts, ssrc = _SR.unpack_from(frame, _HEAD.size)
            self.on_sender_report(track, layer, rtcp.SenderReport(ssrc, ntp, ts, 0, 0))
        elif kind == b"K":
            self.on_keyframe(track, layer)

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.sock.fileno())
        self.sock.close()


class RelaySink:
    """A sink of the publisher's receiver that stands for all of one other worker's down
    tracks of the track: each packet goes there once."""

    fast = None  # never on the compiled fan-out: one datagram, not a protected copy

    def __init__(self, relay: Relay, to: int, track: int) -> None:
        self._relay = relay
        self.to = to
        self.track = track

    def write(self, packet: RtpPacket, sequence: int, layer: int, keyframe: bool) -> None:
        self._relay.send_rtp(self.to, self.track, layer, packet.data)

    @property
    def subscribed_layer(self) -> int:
        return -1  # the control process adds up the other worker's demand itself


class HomeReceiver(TrackReceiver):
    """A publisher's receiver on its own worker; its sender reports reach the replicas."""

    relay: Relay | None = None
    track: int = 0
    relay_sinks: dict[int, RelaySink]

    def on_sender_report(self, layer: int, report: rtcp.SenderReport) -> None:
        super().on_sender_report(layer, report)
        relay = self.relay
        if relay is not None:
            for to in getattr(self, "relay_sinks", {}):
                relay.send_sender_report(
                    to, self.track, layer, report.ssrc, report.ntp_timestamp, report.rtp_timestamp
                )


class ReplicaReceiver(TrackReceiver):
    """Another worker's publisher, here: fed by the relay, asking the publisher's worker for
    key frames (throttled there, once for all workers)."""

    relay: Relay | None = None
    track: int = 0
    home: int = 0

    def request_keyframe(self, layer: int) -> None:
        if self.is_video and not self.closed and self.relay is not None:
            self.relay.send_keyframe_request(self.home, self.track, layer)


def _ignore_rtp(track: int, layer: int, data: bytes) -> None:
    pass


def _ignore_sr(track: int, layer: int, report: rtcp.SenderReport) -> None:
    pass


def _ignore_keyframe(track: int, layer: int) -> None:
    pass
