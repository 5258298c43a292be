"""The media receive path, socket-free: SRTP ingress → RTP demuxer → receivers → down tracks.

Two `SrtpIngress` (`sfu.media.transport.ingress`) sit in front of real aioice `StunProtocol`s, keyed
like a DTLS-SRTP transport: the publisher side delivers to a real `RtpDemuxer` with an Opus track,
a 3-layer VP8 simulcast track and an H.264 track bound (`sfu.media.receiver`), whose receivers fan out to
started `DownTrack`s (`sfu.media.forwarder`); the subscriber side delivers RTCP to a `FeedbackRouter`.
Each record of the input is one datagram: SRTP/SRTCP protected with the sender's keys, raw bytes
(forged or non-media datagrams), or plaintext straight to the handler. Afterwards the periodic
RTCP the SFU builds from that state (receiver reports, REMB, sender reports) is built and parsed.

Nothing may raise: bad packets are counted and dropped (`SrtpError` and `PacketError` are
handled inside); an exception a callback raises (which `SrtpIngress` would only log) is re-raised
here. Every forwarded packet must parse as RTP with the down track's SSRC.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from aioice.ice import StunProtocol
from pylibsrtp import Error as LibSrtpError
from pylibsrtp import Policy, Session

from sfu.media.feedback import FeedbackRouter
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import RtpDemuxer, TrackReceiver
from sfu.media.rtp import extensions as ext
from sfu.media.rtp import rtcp
from sfu.media.rtp.header import RtpHeader, RtpPacket
from sfu.media.transport.ingress import SrtpIngress

from ._records import join, records

MAX_LEN = 4096

KEY = bytes(range(30))  # SRTP master key + salt
ADDR = ("127.0.0.1", 5000)
EXTENSION_IDS = {ext.MID: 1, ext.RTP_STREAM_ID: 2, ext.REPAIRED_RTP_STREAM_ID: 3}
EXTENSION_IDS[ext.SSRC_AUDIO_LEVEL] = 4
DOWN_SSRCS = (0x11111111, 0x22222222, 0x33333333)

_loop: asyncio.AbstractEventLoop | None = None


class _Receiver:
    """aioice's `Connection`, as far as a `StunProtocol` delivers to it."""

    def data_received(self, data: bytes, component: int) -> None:
        pass

    def request_received(self, message: Any, addr: Any, protocol: Any, raw: bytes = b"") -> None:
        pass


class _Local:
    component = 1


class Rig:
    """One publisher PC's and one subscriber PC's receive side, and what they send."""

    def __init__(self, protocols: tuple[Any, Any]) -> None:
        self.errors: list[BaseException] = []
        self.to_publisher: list[bytes] = []  # PLIs, RRs
        self.forwarded: dict[int, list[bytes]] = {ssrc: [] for ssrc in DOWN_SSRCS}
        self.demuxer = RtpDemuxer()
        self.demuxer.set_extension_ids([EXTENSION_IDS])
        send = self.to_publisher.append
        self.audio = TrackReceiver(
            kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1, send_rtcp=send
        )
        self.vp8 = TrackReceiver(
            kind="video", mime_type="video/VP8", clock_rate=90000, layer_count=3, send_rtcp=send
        )
        self.h264 = TrackReceiver(
            kind="video", mime_type="video/H264", clock_rate=90000, layer_count=1, send_rtcp=send
        )
        self.demuxer.bind("0", self.audio, {"": 0}, payload_type=111)
        self.demuxer.bind("1", self.vp8, {"q": 0, "h": 1, "f": 2}, payload_type=96)
        self.demuxer.bind("2", self.h264, {"": 0}, payload_type=102)
        self.feedback = FeedbackRouter()
        self.downtracks = []
        for receiver, ssrc, pt in zip(
            (self.audio, self.vp8, self.h264), DOWN_SSRCS, (111, 96, 102), strict=True
        ):
            downtrack = DownTrack(
                receiver,
                ssrc=ssrc,
                payload_type=pt,
                send_rtp=self.forwarded[ssrc].append,
                cname="fuzz",
            )
            receiver.add_sink(downtrack)
            self.feedback.add(downtrack)
            downtrack.start()
            self.downtracks.append(downtrack)
        self.publisher = SrtpIngress(
            self._guard(self.demuxer.on_rtp), self._guard(self.demuxer.on_rtcp)
        )
        self.subscriber = SrtpIngress(self._unexpected_rtp, self._guard(self.feedback.on_rtcp))
        self.publisher.attach(
            protocols[0], Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
        )
        self.subscriber.attach(
            protocols[1], Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
        )
        self.sender = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))

    def _guard(self, handler: Any) -> Any:
        def call(data: bytes) -> None:
            try:
                handler(data)
            except BaseException as exc:
                self.errors.append(exc)
                raise

        return call

    def _unexpected_rtp(self, data: bytes) -> None:
        pass  # a subscriber PC's RTP is ignored (sendonly m-lines)

    def close(self) -> None:
        self.publisher.detach()
        self.subscriber.detach()


def _protocol() -> Any:
    protocol: Any = StunProtocol(_Receiver())  # type: ignore[arg-type]
    protocol.local_candidate = _Local()
    return protocol


def _feed(rig: Rig, protocols: tuple[Any, Any], record: bytes) -> None:
    op = record[0] % 8 if record else 0
    body = record[1:]
    if op in (0, 1, 2):  # protected RTP / RTCP from the publisher, protected RTCP from a subscriber
        try:
            datagram = rig.sender.protect(body) if op == 0 else rig.sender.protect_rtcp(body)
        except LibSrtpError:
            return  # the sender's libsrtp refuses it: nothing to send
        protocols[0 if op < 2 else 1].datagram_received(datagram, ADDR)
    elif op in (3, 4):  # raw: forged SRTP, DTLS, STUN
        protocols[op - 3].datagram_received(body, ADDR)
    elif op == 5:
        rig.publisher.deliver_rtp(body)
    elif op == 6:
        rig.publisher.deliver_rtcp(body)
    else:
        rig.subscriber.deliver_rtcp(body)
    if rig.errors:
        raise rig.errors[0]


async def _run(data: bytes) -> None:
    protocols = (_protocol(), _protocol())
    rig = Rig(protocols)
    try:
        for record in records(data, 48):
            _feed(rig, protocols, record)
        report = rig.demuxer.rtcp_reports()
        if report:
            rtcp.parse_compound(report)
        for downtrack in rig.downtracks:
            _ = downtrack.paused
            sender_report = downtrack.sender_report()
            if sender_report:
                rtcp.parse_compound(sender_report)
        for ssrc, packets in rig.forwarded.items():
            for packet in packets:
                assert RtpPacket.parse(packet).ssrc == ssrc, "forwarded on a foreign SSRC"
        for packet in rig.to_publisher:
            rtcp.parse_compound(packet)
    finally:
        rig.close()


def test_one(data: bytes) -> None:
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(_run(data))


def _rtp(
    pt: int, seq: int, ssrc: int, extensions: list[tuple[int, bytes]], payload: bytes
) -> bytes:
    return bytes(RtpHeader(pt, seq, seq * 3000, ssrc, extensions=extensions)) + payload


def seeds() -> list[bytes]:
    key = b"\x90\x80\x80\x01\x10\x00\x9d\x01\x2a"  # VP8 key frame, 15-bit PictureID
    delta = b"\x90\x80\x80\x02\x11"
    sr = rtcp.SenderReport(0x5001, 0xE94F3A128B439581, 3000, 10, 1000)
    nack = rtcp.Nack.from_sequence_numbers(1, DOWN_SSRCS[1], [1, 2, 3])
    pli = rtcp.Pli(1, DOWN_SSRCS[1])
    fir = rtcp.Fir(1, (rtcp.FirEntry(DOWN_SSRCS[2], 1),))
    simulcast = [
        b"\x00" + _rtp(96, 1, 0x5000 + layer, [(1, b"1"), (2, rid)], key)
        for layer, rid in enumerate((b"q", b"h", b"f"))
    ]
    return [
        join(
            [
                *simulcast,
                b"\x00" + _rtp(96, 2, 0x5001, [], delta),
                b"\x01" + bytes(sr),
                b"\x02" + bytes(nack) + bytes(pli),
                b"\x02" + bytes(fir),
            ]
        ),
        join(
            [
                b"\x00" + _rtp(111, 1, 0x6000, [(1, b"0"), (4, b"\x9a")], b"opus"),
                b"\x05" + _rtp(102, 1, 0x7000, [(1, b"2")], b"\x78\x00\x02\x67\x42\x00\x01\x65"),
                b"\x05" + _rtp(102, 2, 0x7000, [], b"\x7c\x85\x88"),
                b"\x03" + b"\x80\x60" + bytes(30),
                b"\x04\x16\xfe\xfd" + bytes(20),
            ]
        ),
        join(
            [
                b"\x05" + _rtp(96, 10, 0x5002, [(1, b"1"), (2, b"f"), (3, b"f")], key),
                b"\x05" + _rtp(96, 11, 0x5003, [(1, b"1"), (2, b"h")], key),
                b"\x06" + bytes(sr) + bytes(rtcp.Sdes.for_cname(0x5001, "x")),
                b"\x07" + bytes(nack),
                b"\x05" + struct.pack("!BBHII", 0xA0, 96, 12, 36000, 0x5003) + b"\x00\x00\x03",
            ]
        ),
    ]
