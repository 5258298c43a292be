"""Media between workers: a publisher's decrypted RTP relayed once to every other worker with
subscribers of the track, and what flows back (key-frame requests).

Each worker binds one Unix datagram socket in the abstract namespace, named by the control
process's namespace and the worker's index, so a restarted worker is found at the same name.
A datagram is one byte of kind, the track's number (u32) and the layer (u8), then:

- ``R``: the RTP packet as the publisher's worker decrypted it (its header untouched);
- ``S``: a sender report's NTP (u64) and RTP (u32) timestamps and the layer's SSRC (u32);
- ``K``: nothing: a subscriber on the sending worker needs a key frame of that layer.

On the subscribers' worker, a `ReplicaReceiver` takes the place of the publisher's
`TrackReceiver`: its down tracks fan out as they would locally. Its key-frame requests go to
the publisher's worker, whose receiver throttles them once for every worker. A datagram the
other side cannot take now (its buffer full, the worker restarting) is dropped and counted:
that is a lost packet, recovered like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from sfu.media.receiver import TrackReceiver
from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpPacket

log = logging.getLogger(__name__)

_HEAD = struct.Struct("!cIB")
_SR = struct.Struct("!QII")
#: datagrams read per readiness callback before the loop runs other work
READ_BURST = 256
RELAY_BUFFER = 4 << 20


def relay_address(namespace: str, index: int) -> str:
    """The abstract socket name of worker ``index`` of one control process."""
    return f"\0{namespace}-w{index}"


class Relay:
    """This worker's relay socket: sends to the others, and hands what arrives to callbacks."""

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
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def _send(self, to: int, datagram: bytes) -> None:
        try:
            self.sock.sendto(datagram, relay_address(self.namespace, to))
            self.sent += 1
        except OSError:  # full, or nobody there (a worker restarting): a lost packet
            self.dropped += 1

    def send_rtp(self, to: int, track: int, layer: int, data: bytes) -> None:
        self._send(to, _HEAD.pack(b"R", track, layer) + data)

    def send_sender_report(
        self, to: int, track: int, layer: int, ssrc: int, ntp: int, ts: int
    ) -> None:
        self._send(to, _HEAD.pack(b"S", track, layer) + _SR.pack(ntp, ts, ssrc))

    def send_keyframe_request(self, to: int, track: int, layer: int) -> None:
        self._send(to, _HEAD.pack(b"K", track, layer))

    def _readable(self) -> None:
        for _ in range(READ_BURST):
            try:
                datagram = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.received += 1
            try:
                self._dispatch(datagram)
            except Exception:  # a bad datagram must not stop the relay
                log.exception("relay datagram failed")

    def _dispatch(self, datagram: bytes) -> None:
        if len(datagram) < _HEAD.size:
            return
        kind, track, layer = _HEAD.unpack_from(datagram)
        if kind == b"R":
            self.on_rtp(track, layer, datagram[_HEAD.size :])
        elif kind == b"S" and len(datagram) >= _HEAD.size + _SR.size:
            ntp, ts, ssrc = _SR.unpack_from(datagram, _HEAD.size)
            self.on_sender_report(track, layer, rtcp.SenderReport(ssrc, ntp, ts, 0, 0))
        elif kind == b"K":
            self.on_keyframe(track, layer)

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
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
