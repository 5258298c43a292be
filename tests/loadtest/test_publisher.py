"""RTCP the publisher writes and reads, dynacast pausing, sender reports and NACK answers."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import models, rtc

from loadtest.media import MediaSet
from loadtest.packets import (
    Feedback,
    PacketError,
    SdesCname,
    SenderReport,
    ntp_timestamp,
    split_rtcp,
)
from loadtest.publisher import Publisher
from loadtest.webrtc import LocalParameters

LOCAL = LocalParameters("u", "p" * 22, "sha-256 AA", ["candidate:1 1 udp 1 127.0.0.1 5 typ host"])
Q = models.VideoQuality


def test_ntp_timestamp() -> None:
    assert ntp_timestamp(0) == 2_208_988_800 << 32
    assert ntp_timestamp(1_500_000_000) == ((2_208_988_801) << 32) | (1 << 31)


def test_sender_report_bytes() -> None:
    sr = SenderReport(0x01020304, (5 << 32) | 6, 7, 8, 9)
    data = bytes(sr)
    assert data == bytes([0x80, 200, 0, 6]) + struct.pack("!IIIIII", 0x01020304, 5, 6, 7, 8, 9)
    assert SenderReport.parse(data) == sr


def test_sdes_cname_bytes() -> None:
    data = bytes(SdesCname(0xAABBCCDD, "pub-0001"))
    assert data[:2] == bytes([0x81, 202]) and len(data) % 4 == 0
    assert (int.from_bytes(data[2:4], "big") + 1) * 4 == len(data)
    assert data[4:8] == bytes.fromhex("aabbccdd") and data[8:10] == bytes([1, 8])
    assert SdesCname.parse(data) == SdesCname(0xAABBCCDD, "pub-0001")


def test_compound_split_and_feedback() -> None:
    pli = Feedback(1, 206, 1, 0xABCD, b"")
    fir = Feedback(4, 206, 1, 0, struct.pack("!IB3x", 0x1234, 7))
    nack = Feedback(1, 205, 1, 0x55, struct.pack("!HH", 65535, 0b101))
    compound = bytes(SenderReport(9, 0, 0, 0, 0)) + bytes(pli) + bytes(fir) + bytes(nack)
    parts = list(split_rtcp(compound))
    assert [(fmt, pt) for fmt, pt, _ in parts] == [(0, 200), (1, 206), (4, 206), (1, 205)]
    assert Feedback.parse(parts[1][2]).key_frame_ssrcs() == [0xABCD]
    assert Feedback.parse(parts[2][2]).key_frame_ssrcs() == [0x1234]
    parsed = Feedback.parse(parts[3][2])
    assert parsed.is_nack and parsed.nack_sequence_numbers() == [65535, 0, 2]
    assert parsed.key_frame_ssrcs() == [] and pli.nack_sequence_numbers() == []


def test_rtcp_rejects() -> None:
    for data in (b"\x80", b"\x40\xc8\x00\x00", b"\x80\xc8\x00\x06" + bytes(8)):
        with contextlib.suppress(PacketError):
            list(split_rtcp(data))
            raise AssertionError(f"accepted {data!r}")
    for parse in (SenderReport.parse, SdesCname.parse, Feedback.parse):
        with contextlib.suppress(PacketError):
            parse(b"\x80\xc9\x00\x01" + bytes(8))
            raise AssertionError(f"{parse} accepted an RR")


_RTCP_HEAD = st.builds(
    lambda first, pt, words: bytes([first, pt]) + words.to_bytes(2, "big"),
    st.integers(0, 255),
    st.sampled_from([200, 201, 202, 205, 206, 0, 255]),
    st.integers(0, 20),
)


@given(
    st.one_of(st.binary(max_size=80), st.tuples(_RTCP_HEAD, st.binary(max_size=60)).map(b"".join))
)
def test_rtcp_parsers_raise_only_their_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        for _, _, packet in split_rtcp(data):
            with contextlib.suppress(PacketError):
                feedback = Feedback.parse(packet)
                feedback.key_frame_ssrcs()
                feedback.nack_sequence_numbers()
    for parse in (SenderReport.parse, SdesCname.parse, Feedback.parse):
        with contextlib.suppress(PacketError):
            parse(data)


# -- the publisher's behaviour -------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.resent: list[bytes] = []

    def send_rtp(self, data: bytes) -> bytes:
        self.rtp.append(data)
        return data + b"authtag"  # SRTP: header in clear, tag appended

    def send_rtcp(self, data: bytes) -> bool:
        self.rtcp.append(data)
        return True

    def resend(self, datagram: bytes) -> bool:
        self.resent.append(datagram)
        return True


def _publisher() -> tuple[Publisher, FakeTransport]:
    frame = (True, bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + bytes(200))
    media = MediaSet({r: [frame] for r in "qhf"}, [b"\x78" * 60], b"\xf8")
    pub = Publisher(
        "ws://127.0.0.1:1", "t", "pub-0001", number=1, media=media,
        video_rids=("q", "h", "f"), audio=True, talking=True,
    )  # fmt: skip
    pub._offer(LOCAL, {"audio": "audio-1", "video": "video-1"})
    fake = FakeTransport()
    pub.pub_transport = fake  # type: ignore[assignment]
    pub.video_sid = "TR_v"
    return pub, fake


def _update(sid: str, enabled: dict[int, bool], codecs: bool = True) -> rtc.SubscribedQualityUpdate:
    qualities = [rtc.SubscribedQuality(quality=q, enabled=on) for q, on in enabled.items()]
    if codecs:
        codec = rtc.SubscribedCodec(codec="vp8", qualities=qualities)
        return rtc.SubscribedQualityUpdate(track_sid=sid, subscribed_codecs=[codec])
    return rtc.SubscribedQualityUpdate(track_sid=sid, subscribed_qualities=qualities)


def test_dynacast_pauses_and_resumes_with_a_key_frame() -> None:
    pub, _ = _publisher()
    layers = {s.rid: s for s in pub.streams.values() if s.rid}
    pub.on_quality_update(_update("TR_v", {Q.LOW: True, Q.MEDIUM: False, Q.HIGH: False}))
    assert [layers[r].active for r in "qhf"] == [True, False, False]
    assert not any(s.key_requested for s in layers.values())
    pub.on_quality_update(_update("TR_v", {Q.LOW: True, Q.MEDIUM: True, Q.HIGH: False}, False))
    assert [layers[r].active for r in "qhf"] == [True, True, False]
    assert layers["h"].key_requested and not layers["q"].key_requested  # only the resumed one
    pub.on_quality_update(_update("TR_other", {Q.LOW: False, Q.MEDIUM: False, Q.HIGH: False}))
    assert layers["q"].active  # another track's update changes nothing
    audio = next(s for s in pub.streams.values() if not s.rid)
    pub.on_quality_update(_update("TR_v", {Q.LOW: False, Q.MEDIUM: False, Q.HIGH: False}))
    assert audio.active and not any(s.active for s in layers.values())
    assert pub.quality_updates == 3


async def test_paused_layer_sends_nothing_and_resumes_on_a_key_frame() -> None:
    import asyncio

    pub, fake = _publisher()
    f = next(s for s in pub.streams.values() if s.rid == "f")
    f.active = False
    pub.sending = True
    task = asyncio.create_task(pub._video_loop(f))
    await asyncio.sleep(0.2)
    assert fake.rtp == [] and f.packets == 0
    ts_paused = f.timestamp
    pub.on_quality_update(_update("TR_v", {Q.HIGH: True}))
    await asyncio.sleep(0.2)
    pub.sending = False
    await asyncio.wait_for(task, 2)
    assert f.packets > 0 and fake.rtp
    assert int.from_bytes(fake.rtp[0][4:8], "big") >= ts_paused  # the clock ran on meanwhile


def test_sender_report_maps_the_monotonic_clock() -> None:
    pub, _ = _publisher()
    f = next(s for s in pub.streams.values() if s.rid == "f")
    f.sent_timestamp, f.sent_ns, f.packets, f.octets = 1000, 5_000_000_000, 3, 300
    sr = f.sender_report(5_500_000_000)
    assert sr.rtp_timestamp == 1000 + 45_000 and (sr.packet_count, sr.octet_count) == (3, 300)
    later = f.sender_report(6_500_000_000)
    ntp_delta = (later.ntp_timestamp - sr.ntp_timestamp) / 2**32
    assert abs(ntp_delta - 1.0) < 1e-6 and later.rtp_timestamp - sr.rtp_timestamp == 90_000
    audio = next(s for s in pub.streams.values() if not s.rid)
    audio.sent_timestamp, audio.sent_ns = 0, 0
    assert audio.sender_report(1_000_000_000).rtp_timestamp == 48_000


def test_nack_resends_from_history_and_pli_asks_a_key_frame() -> None:
    pub, fake = _publisher()
    h = next(s for s in pub.streams.values() if s.rid == "h")
    h.sequence_number = 65534
    for _ in range(4):
        pub._send(h, b"payload", 96, False, "1")
    sent = [int.from_bytes(p[2:4], "big") for p in fake.rtp]
    assert sent == [65534, 65535, 0, 1]
    nack = Feedback(1, 205, 7, h.ssrc, struct.pack("!HH", 65535, 0b1001))  # 65535, 0, 3
    pli = Feedback(1, 206, 7, h.ssrc, b"")
    pub._on_rtcp(bytes(nack) + bytes(pli) + b"\x80")  # a truncated tail is ignored
    assert fake.resent == [fake.rtp[1] + b"authtag", fake.rtp[2] + b"authtag"]  # 3: never sent
    assert (pub.nacked, pub.retransmitted) == (3, 2)
    assert h.key_requested and pub.plis == 1
