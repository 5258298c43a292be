"""sfu.media.sdp: parsing and writing real SDP (captured from Chromium 156 and from the SFU itself)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.media.rtp import extensions as ext
from sfu.media.sdp import (
    MAX_CANDIDATES,
    MAX_LINE_LENGTH,
    MAX_MEDIA_SECTIONS,
    MAX_RIDS,
    MAX_SSRCS,
    Codec,
    MediaSection,
    Rid,
    SdpError,
    SdpLimitError,
    SessionDescription,
    Simulcast,
    SimulcastRid,
)
from sfu.media.transport.negotiation import (
    SUBSCRIBER_RED_PT,
    LocalParameters,
    TrackSlot,
    accepts_red,
    answered_transport_cc,
    build_answer,
    build_offer,
    offered_codecs,
    subscriber_codec,
)
from sfu.metrics import COUNTERS

FIXTURES = Path(__file__).parents[2] / "fixtures" / "sdp"
ALL_FIXTURES = sorted(FIXTURES.glob("*.sdp"))


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


def test_fixtures_exist() -> None:
    assert {p.name for p in ALL_FIXTURES} >= {
        "chrome_simulcast_offer.sdp",
        "chrome_subscriber_answer.sdp",
        "chrome_unpublish_offer.sdp",
        "sfu_subscriber_offer.sdp",
    }


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_round_trip_keeps_every_line(path: Path) -> None:
    text = path.read_bytes().decode()
    parsed = SessionDescription.parse(text)
    written = str(parsed)
    assert written.endswith("\r\n")
    assert set(written.split("\r\n")) == set(text.split("\r\n"))
    assert SessionDescription.parse(written) == parsed
    assert str(SessionDescription.parse(written)) == written
    # LF-only line ends are accepted too
    assert SessionDescription.parse(text.replace("\r\n", "\n")) == parsed


def test_chrome_simulcast_offer_fields() -> None:
    offer = SessionDescription.parse(fixture("chrome_simulcast_offer.sdp"))
    assert offer.bundle_mids == ["0", "1", "2"]
    assert [m.kind for m in offer.media] == ["audio", "video", "application"]
    audio, video, data = offer.media
    assert audio.mid == "0" and audio.direction == "sendonly"
    opus = audio.codecs[0]
    assert (opus.payload_type, opus.name, opus.clock_rate, opus.channels) == (111, "opus", 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1"}
    assert "transport-cc" in opus.rtcp_fb
    assert audio.codec(0) == Codec(0, "PCMU", 8000)
    assert audio.rtcp_mux and audio.rtcp_rsize
    assert audio.setup == "actpass"
    assert audio.ice_ufrag and audio.ice_pwd and audio.ice_options == ["trickle"]
    assert audio.fingerprints[0][0] == "sha-256"
    assert audio.candidates and all(" typ " in c for c in audio.candidates)
    assert audio.msid is not None and len(audio.ssrcs) == 1
    assert "cname" in next(iter(audio.ssrcs.values()))

    assert video.rids == [Rid("q", "send"), Rid("h", "send"), Rid("f", "send")]
    assert video.simulcast == Simulcast(send=[[SimulcastRid("q")], [SimulcastRid("h")],
                                              [SimulcastRid("f")]])  # fmt: skip
    assert video.extension_id(ext.RTP_STREAM_ID) == 10
    vp8 = video.codec(96)
    assert vp8 is not None and vp8.name == "VP8"
    assert vp8.rtcp_fb == ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    assert video.codec(97) == Codec(97, "rtx", 90000, None, {"apt": "96"})
    assert not video.ssrcs  # RID simulcast: no a=ssrc lines

    assert data.protocol == "UDP/DTLS/SCTP" and data.formats == ["webrtc-datachannel"]
    assert data.sctp_port == 5000 and data.max_message_size == 262144
    assert "extmap-allow-mixed" in offer.attributes


def test_simulcast_paused_and_alternatives() -> None:
    simulcast = Simulcast.parse("send q;~h;f,g recv x")
    assert simulcast.send_rids() == [SimulcastRid("q"), SimulcastRid("h", True), SimulcastRid("f")]
    assert simulcast.send[2] == [SimulcastRid("f"), SimulcastRid("g")]
    assert simulcast.recv_rids() == [SimulcastRid("x")]
    assert str(simulcast) == "send q;~h;f,g recv x"
    with pytest.raises(SdpError):
        Simulcast.parse("send q;;h")


def test_session_level_transport_attributes_apply_to_media() -> None:
    text = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
        "a=fingerprint:sha-256 aa:bb\r\na=setup:actpass\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:a\r\n"
    )
    session = SessionDescription.parse(text)
    media = session.media[0]
    assert session.ice_credentials(media) == ("abcd", "0123456789012345678901")
    assert session.dtls_fingerprints(media) == [("sha-256", "AA:BB")]
    assert session.dtls_setup(media) == "actpass"
    assert media.codecs == [Codec(0, "", 0)]
    assert SessionDescription.parse(str(session)) == session


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "v=1\r\n",
        "v=0\r\n",  # no o= line
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio x RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 RTP/AVP 96\r\n",  # no rtpmap for 96
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:8 PCMA/8000\r\n",
        "v=0\r\no=- x 1 IN IP4 0.0.0.0\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 9 RTP/AVP 0\r\na=simulcast:send\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=video 99999 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nnot a line\r\n",
    ],
)
def test_garbage_raises_sdp_error(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


def test_non_text_raises_sdp_error() -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_sdp_error(text: str) -> None:
    with contextlib.suppress(SdpError):
        SessionDescription.parse(text)


_REAL_LINES = sorted(
    {line for path in ALL_FIXTURES for line in path.read_bytes().decode().split("\r\n") if line}
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_REAL_LINES),
            st.sampled_from(_REAL_LINES).map(lambda s: s[: len(s) // 2]),
            st.builds(lambda a, b: a + b, st.sampled_from(_REAL_LINES), st.text(max_size=8)),
        ),
        max_size=40,
    )
)
def test_mutated_real_sdp_raises_only_sdp_error_and_round_trips(lines: list[str]) -> None:
    text = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" + "\r\n".join(lines) + "\r\n"
    try:
        parsed = SessionDescription.parse(text)
    except SdpError:
        return
    written = str(parsed)
    assert SessionDescription.parse(written) == parsed
    assert str(SessionDescription.parse(written)) == written


LOCAL = LocalParameters(
    ice_ufrag="abcd",
    ice_pwd="0123456789012345678901",
    fingerprints=[("sha-256", "AA:BB")],
    candidates=["1 1 udp 2130706431 127.0.0.1 50000 typ host generation 0"],
    address="127.0.0.1",
    port=50000,
    sctp_port=5000,
    max_message_size=262144,
)


def test_publisher_answer_to_chrome_simulcast_offer() -> None:
    offer = SessionDescription.parse(fixture("chrome_simulcast_offer.sdp"))
    answer, published = build_answer(offer, LOCAL, setup="active", session_id=7, session_version=1)
    answer = SessionDescription.parse(str(answer))
    assert answer.bundle_mids == ["0", "1", "2"]
    audio, video, data = answer.media
    assert audio.direction == video.direction == "recvonly"
    assert [c.name for c in audio.codecs] == ["opus"]
    assert audio.codecs[0].payload_type == 111
    assert audio.codecs[0].rtcp_fb == []  # Chrome offers no audio nack; never transport-cc
    assert [(c.name, c.payload_type) for c in video.codecs] == [("VP8", 96)]
    assert video.codecs[0].rtcp_fb == ["goog-remb", "ccm fir", "nack", "nack pli"]
    assert ext.TRANSPORT_CC not in video.extmaps.values()
    assert sorted(video.extmaps) == [2, 4, 10, 11]  # abs-send-time, mid, rid, repaired rid
    assert sorted(audio.extmaps) == [1, 2, 4]  # audio level, abs-send-time, mid
    assert video.rids == [Rid("q", "recv"), Rid("h", "recv"), Rid("f", "recv")]
    assert video.simulcast is not None and str(video.simulcast) == "recv q;h;f"
    for section in answer.media:
        assert section.setup == "active"
        assert section.ice_ufrag == "abcd" and section.fingerprints == [("sha-256", "AA:BB")]
        assert section.candidates == LOCAL.candidates
    assert data.sctp_port == 5000 and data.port == 50000
    assert [p.kind for p in published] == ["audio", "video"]
    assert published[1].rids == ("q", "h", "f") and published[1].paused_rids == ()
    assert published[1].msid == offer.media[1].msid
    assert published[1].extension_ids[ext.RTP_STREAM_ID] == 10
    assert published[0].ssrcs == tuple(offer.media[0].ssrcs)


def test_publisher_answer_to_unpublish_offer() -> None:
    offer = SessionDescription.parse(fixture("chrome_unpublish_offer.sdp"))
    answer, published = build_answer(offer, LOCAL, setup="active", session_id=7, session_version=2)
    assert [m.direction for m in answer.media[:2]] == ["recvonly", "inactive"]
    assert [p.direction for p in published] == ["sendonly", "inactive"]


def test_publisher_answer_rejects_unsupported_media_and_h264_only() -> None:
    offer = SessionDescription.parse(fixture("chrome_simulcast_offer.sdp"))
    video = offer.media[1]
    video.codecs = [c for c in video.codecs if c.name in ("H264", "rtx")]
    offer.media[0].codecs = [c for c in offer.media[0].codecs if c.name != "opus"]
    answer, published = build_answer(offer, LOCAL, setup="active", session_id=7, session_version=1)
    assert answer.media[0].port == 0 and answer.bundle_mids == ["1", "2"]
    h264 = answer.media[1].codecs[0]
    assert h264.name == "H264" and h264.fmtp["packetization-mode"] == "1"
    assert [p.kind for p in published] == ["video"]
    _, vp8_only = build_answer(offer, LOCAL, setup="active", session_id=7, session_version=1,
                               video_codecs=("vp8",))  # fmt: skip
    assert vp8_only == []


def test_subscriber_offer() -> None:
    slots = [
        TrackSlot("1", "audio", subscriber_codec("audio", "audio/opus"), 1234, ("PA_a|camera", "TR_1")),
        TrackSlot("2", "video", subscriber_codec("video", "video/VP8"), 5678, ("PA_a|camera", "TR_2")),
        TrackSlot("3", "video", subscriber_codec("video", "video/VP8")),
    ]  # fmt: skip
    offer = build_offer(slots, "0", LOCAL, cname="cn", session_id=3, session_version=4)
    offer = SessionDescription.parse(str(offer))
    assert offer.bundle_mids == ["0", "1", "2", "3"]
    data, audio, video, unused = offer.media
    assert data.kind == "application" and data.setup == "actpass"
    assert audio.direction == video.direction == "sendonly"
    assert audio.codecs == [Codec(111, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"},
                                  ["nack", "transport-cc"])]  # fmt: skip
    assert video.codecs[0].payload_type == 96
    assert video.codecs[0].rtcp_fb == ["nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"]
    assert video.msid == ("PA_a|camera", "TR_2")
    assert video.ssrcs == {5678: {"cname": "cn", "msid": "PA_a|camera TR_2"}}
    twcc = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
    assert video.extmaps == {1: "urn:ietf:params:rtp-hdrext:sdes:mid",
                             2: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                             3: twcc}  # fmt: skip
    assert audio.extmaps == {1: "urn:ietf:params:rtp-hdrext:sdes:mid", 3: twcc}
    # the answer decides whether copies are stamped: the id kept, or 0
    assert answered_transport_cc(offer) == 3
    for m in offer.media:
        m.extmaps.pop(3, None)
    assert answered_transport_cc(offer) == 0
    assert unused.direction == "inactive" and not unused.ssrcs and unused.msid is None
    assert all(m.candidates and m.end_of_candidates for m in offer.media)


def test_media_section_writer_builds_formats_from_codecs() -> None:
    section = MediaSection(kind="video", port=9, protocol="UDP/TLS/RTP/SAVPF",
                           codecs=[Codec(96, "VP8", 90000)], mid="v")  # fmt: skip
    assert section.lines()[0] == "m=video 9 UDP/TLS/RTP/SAVPF 96"


# -- hostile publisher SDP (audit 2026-12 findings 8, 9 and 18) ---------------------------------

_HEAD = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 AA:BB\r\n"
)
_VIDEO = "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\na=sendonly\r\n" \
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"  # fmt: skip


def _limit_count(name: str) -> int:
    return COUNTERS.limits_exceeded.get(name, 0)


def test_ssrc_times_fid_offer_is_refused_at_once() -> None:
    """Audit 8: 20,000 a=ssrc and 20,000 a=ssrc-group:FID lines on one m-line."""
    lines = [f"a=ssrc:{i} cname:x" for i in range(20000)]
    lines += [f"a=ssrc-group:FID {i} {i + 20000}" for i in range(20000)]
    text = _HEAD + _VIDEO + "\r\n".join(lines) + "\r\n"
    before = _limit_count("sdp_ssrcs")
    start = time.process_time()  # CPU time: other processes on a busy machine do not count
    with pytest.raises(SdpLimitError) as refused:
        offer = SessionDescription.parse(text)
        build_answer(offer, LOCAL, setup="active", session_id=1, session_version=1)
    assert time.process_time() - start < 0.1
    assert refused.value.limit == "sdp_ssrcs" and _limit_count("sdp_ssrcs") == before + 1


def test_build_answer_is_linear_in_ssrcs_and_fid_groups() -> None:
    """The same offer built as objects (past the parser's caps): the answer still takes < 100 ms."""
    offer = SessionDescription.parse(_HEAD + _VIDEO)
    video = offer.media[0]
    video.ssrcs = {i: {"cname": "x"} for i in range(40000)}
    video.ssrc_groups = [("FID", [i, i + 20000]) for i in range(20000)]
    start = time.process_time()
    _, published = build_answer(offer, LOCAL, setup="active", session_id=1, session_version=1)
    assert time.process_time() - start < 0.1
    assert published[0].ssrcs == tuple(range(20000))


@pytest.mark.parametrize(
    ("limit", "lines"),
    [
        ("sdp_ssrcs", [f"a=ssrc:{i} cname:x" for i in range(MAX_SSRCS + 1)]),
        ("sdp_ssrc_lines", [f"a=ssrc:1 k{i}:v" for i in range(65)]),
        ("sdp_ssrc_groups", [f"a=ssrc-group:FID {i} {i + 1}" for i in range(9)]),
        ("sdp_ssrc_groups", ["a=ssrc-group:SIM " + " ".join(map(str, range(17)))]),
        ("sdp_rids", [f"a=rid:r{i} send" for i in range(MAX_RIDS + 1)]),
        ("sdp_rids", ["a=simulcast:send " + ";".join(f"r{i}" for i in range(MAX_RIDS + 1))]),
        ("sdp_candidates",
         [f"a=candidate:1 1 udp 1 192.0.2.1 {i + 1} typ host" for i in range(MAX_CANDIDATES + 1)]),
        ("sdp_fmtp_lines", [f"a=fmtp:96 k{i}=1" for i in range(128)]),  # + the apt line
        ("sdp_rtcp_fb_lines", ["a=rtcp-fb:96 nack"] * 513),
        ("sdp_extmaps", [f"a=extmap:{i} urn:x:{i}" for i in range(1, 34)]),
        ("sdp_other_lines", [f"a=x-unknown-{i}" for i in range(65)]),
        ("sdp_other_lines", [f"b=AS:{i}" for i in range(65)]),
        ("sdp_line_length", ["a=x-long:" + "y" * MAX_LINE_LENGTH]),
        ("sdp_media_sections", ["m=audio 0 RTP/AVP 0"] * MAX_MEDIA_SECTIONS),
    ],
)  # fmt: skip
def test_each_cap_is_a_precise_counted_error(limit: str, lines: list[str]) -> None:
    before = _limit_count(limit)
    with pytest.raises(SdpLimitError) as refused:
        SessionDescription.parse(_HEAD + _VIDEO + "\r\n".join(lines) + "\r\n")
    assert refused.value.limit == limit
    assert _limit_count(limit) == before + 1
    SessionDescription.parse(_HEAD + _VIDEO + "\r\n".join(lines[:-1]) + "\r\n")  # one less: fine


@pytest.mark.parametrize(
    "line", ["a=x-ctl:\x01", "a=x-cr:a\rb", "a=fmtp:96 x-google-start-bitrate=1\x7f"]
)
def test_control_characters_and_lone_cr_are_refused(line: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(_HEAD + _VIDEO + line + "\r\n")


def test_simulcast_layers_are_capped_at_three() -> None:
    """Audit 9: only the first three layers of an m-line are accepted, and the cut is counted."""
    rids = [f"r{i}" for i in range(MAX_RIDS)]
    text = _HEAD + _VIDEO + "".join(f"a=rid:{r} send\r\n" for r in rids)
    before = _limit_count("simulcast_rids")
    offer = SessionDescription.parse(text + "a=simulcast:send " + ";".join(rids) + "\r\n")
    answer, published = build_answer(offer, LOCAL, setup="active", session_id=1, session_version=1)
    assert published[0].rids == ("r0", "r1", "r2")
    assert [r.rid for r in answer.media[0].rids] == ["r0", "r1", "r2"]
    assert str(answer.media[0].simulcast) == "recv r0;r1;r2"
    _, published = build_answer(
        SessionDescription.parse(text), LOCAL, setup="active", session_id=1, session_version=1
    )  # rids without a=simulcast
    assert published[0].rids == ("r0", "r1", "r2")
    assert _limit_count("simulcast_rids") == before + 2


def test_the_answer_keeps_the_publishers_start_bitrate() -> None:
    """libwebrtc reads x-google-start-bitrate from the answer: dropping it made a LiveKit SDK
    camera start at 300 kbit/s (and send about half its packets in a 20-s benchmark)."""
    offer = SessionDescription.parse(
        _HEAD.replace("a=ice-ufrag", "a=setup:actpass\r\na=ice-ufrag")
        + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n"
        "a=rtpmap:96 VP8/90000\r\na=fmtp:96 x-google-start-bitrate=1000;x-google-max-bitrate=9 9\r\n"
    )
    answer, _ = build_answer(offer, LOCAL, setup="active", session_id=1, session_version=1)
    assert answer.media[0].codecs[0].fmtp == {"x-google-start-bitrate": "1000"}
    assert "a=fmtp:96 x-google-start-bitrate=1000" in str(answer)


def test_publisher_codec_parameters_are_normalised_for_subscribers() -> None:
    """Audit 18: a bad clock rate is not accepted; only whitelisted, well-formed fmtp survive."""
    offer = SessionDescription.parse(
        _HEAD.replace("a=ice-ufrag", "a=setup:actpass\r\na=ice-ufrag")
        + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=1;maxplaybackrate=8000;stereo=1;x-evil=a b;usedtx=9\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 102 103\r\na=mid:1\r\na=sendonly\r\n"
        "a=rtpmap:96 VP8/1/9\r\na=rtpmap:102 H264/90000\r\na=rtpmap:103 VP8/90000\r\n"
        "a=fmtp:102 packetization-mode=1;profile-level-id=42e0 1f;x-google-max-bitrate=1\r\n"
        "a=fmtp:103 x-google-start-bitrate=100000\r\n"
    )
    answer, published = build_answer(offer, LOCAL, setup="active", session_id=1, session_version=1)
    audio, video = (p.codec for p in published)
    assert [c.payload_type for c in answer.media[1].codecs] == [102]  # not VP8/1/9
    assert audio.fmtp == {"minptime": "10", "useinbandfec": "1", "stereo": "1"}
    assert (video.payload_type, video.clock_rate, video.channels) == (102, 90000, None)
    # the publisher's own send-rate hint is echoed to it, and never reaches a subscriber
    assert video.fmtp == {"packetization-mode": "1", "x-google-max-bitrate": "1"}
    subscriber = subscriber_codec("video", video)
    assert subscriber.fmtp["profile-level-id"] == "42e01f"  # the default, not "42e0 1f"
    assert not any(key.startswith("x-google") for key in subscriber.fmtp)
    assert subscriber_codec("audio", audio).fmtp == audio.fmtp
    vp8 = subscriber_codec("video", Codec(96, "VP8", 1, 9, {"x": "1", "y": "\r\n"}))
    assert (vp8.clock_rate, vp8.channels, vp8.fmtp) == (90000, None, {})
    opus = subscriber_codec("audio", Codec(111, "opus", 8000, 1, {"maxplaybackrate": "8000"}))
    assert (opus.clock_rate, opus.channels) == (48000, 2)
    assert "maxplaybackrate" not in opus.fmtp
    assert subscriber_codec("video", "video/x y\r\nz").name == "VP8"  # a hostile mime type
    # every subscriber offer built from these parses back
    slots = [TrackSlot("1", "video", subscriber, 5, ("a", "b")), TrackSlot("2", "video", vp8)]
    SessionDescription.parse(str(build_offer(slots, "0", LOCAL, cname="c", session_id=1,
                                             session_version=1)))  # fmt: skip


# -- audio RED (RFC 2198) -----------------------------------------------------------------------


#: the audio track id (msid) of the Chrome offer fixture
MIC = "67f2cf8a-b1bc-45f4-b724-9f4bca7e3c13"


def _answer(offer: SessionDescription, red_tracks: frozenset[str] = frozenset({MIC})) -> Any:
    return build_answer(offer, LOCAL, setup="active", session_id=7, session_version=1,
                        red_tracks=red_tracks)  # fmt: skip


def test_red_is_answered_for_the_tracks_that_asked_for_it() -> None:
    offer = SessionDescription.parse(fixture("chrome_simulcast_offer.sdp"))
    assert offer.media[0].msid is not None and offer.media[0].msid[1] == MIC
    _, published = _answer(offer, frozenset())  # disable_red, or no AddTrackRequest for it
    assert published[0].codec.name == "opus"
    assert _answer(offer, frozenset({"another-track"}))[1][0].codec.name == "opus"
    answer, published = _answer(offer)  # Chrome offers Opus first: the answer prefers RED
    audio = SessionDescription.parse(str(answer)).media[0]
    assert [(c.payload_type, c.name, c.fmtp) for c in audio.codecs] == [
        (63, "red", {"111/111": ""}),
        (111, "opus", {"minptime": "10", "useinbandfec": "1"}),
    ]
    assert published[0].codec == Codec(63, "red", 48000, 2, {"111/111": ""})
    offer.media[0].codecs[0].fmtp["stereo"] = "1"  # livekit-client's for a stereo capture
    assert _answer(offer)[1][0].codec.name == "red"


@pytest.mark.parametrize(
    ("red_fmtp", "opus_fmtp"),
    [
        ("110/110", "minptime=10"),  # blocks of another codec
        ("111/110", "minptime=10"),
        ("111/111;x=1", "minptime=10"),
        ("/".join(["111"] * 9), "minptime=10"),
    ],
)
def test_red_that_does_not_fit_falls_back_to_opus(red_fmtp: str, opus_fmtp: str) -> None:
    offer = SessionDescription.parse(fixture("chrome_simulcast_offer.sdp"))
    opus, red = offer.media[0].codecs[:2]
    red.fmtp, opus.fmtp = Codec.parse_fmtp(red_fmtp), Codec.parse_fmtp(opus_fmtp)
    assert _answer(offer)[1][0].codec.name == "opus"


def test_red_over_an_opus_of_another_payload_type_is_not_taken() -> None:
    # Firefox numbers Opus 109: RED blocks would name a type the subscribers do not have
    offer = SessionDescription.parse(fixture("chrome_simulcast_offer.sdp"))
    opus, red = offer.media[0].codecs[:2]
    opus.payload_type, red.fmtp = 109, {"109/109": ""}
    offer.media[0].formats = [str(c.payload_type) for c in offer.media[0].codecs]
    codec = _answer(SessionDescription.parse(str(offer)))[1][0].codec
    assert (codec.name, codec.payload_type) == ("opus", 109)


def test_a_red_track_is_offered_with_opus_beside_it() -> None:
    red = subscriber_codec("audio", Codec(63, "red", 48000, 2, {"111/111": ""}))
    assert red == Codec(SUBSCRIBER_RED_PT, "red", 48000, 2, {"111/111": ""})
    assert [(c.name, c.fmtp) for c in offered_codecs(red)] == [
        ("red", {"111/111": ""}),
        ("opus", {"minptime": "10", "useinbandfec": "1", "stereo": "1"}),
    ]
    slots = [TrackSlot("1", "audio", red, 1234, ("PA_a|TR_1", "TR_1")),
             TrackSlot("2", "audio", subscriber_codec("audio", "audio/opus"), 99, ("PA_a|TR_2", "TR_2"))]  # fmt: skip
    offer = SessionDescription.parse(
        str(build_offer(slots, "0", LOCAL, cname="cn", session_id=3, session_version=4))
    )
    assert offer.media[1].formats == ["63", "111"] and offer.media[2].formats == ["111"]
    assert accepts_red(offer) == {"1": True, "2": False}
    offer.media[1].codecs = offer.media[1].codecs[1:]  # a client that answers Opus alone
    assert accepts_red(offer) == {"1": False, "2": False}
