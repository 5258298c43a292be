"""The load tester's SDP parser and writers, and trickled-candidate parsing."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from loadtest.media import MediaSet
from loadtest.publisher import Publisher
from loadtest.webrtc import (
    LocalParameters,
    Sdp,
    SdpError,
    answer_subscriber_offer,
    candidate_init,
    is_loopback_url,
    parse_candidate_init,
)

CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host"
LOCAL = LocalParameters("ufragL", "pwdLpwdLpwdLpwdLpwdLpw", "sha-256 AA:BB", [CANDIDATE])

#: Shaped like the SFU's (and LiveKit's) subscriber offer: audio, video, data; BUNDLE.
SUBSCRIBER_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "a=ice-ufrag:srvU",
        "a=ice-pwd:srvPsrvPsrvPsrvPsrvPsr",
        "a=fingerprint:sha-256 11:22",
        "a=setup:actpass",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 127.0.0.1",
        "a=mid:0",
        "a=sendonly",
        "a=msid:PA_x TR_a",
        "a=rtpmap:111 opus/48000/2",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=ssrc:1111 cname:x",
        "a=candidate:7 1 udp 2130706431 127.0.0.1 40000 typ host",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=ssrc:2222 cname:x",
        "a=ssrc:2222 msid:PA_x TR_v",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "a=mid:2",
        "a=sctp-port:5000",
        "m=video 0 UDP/TLS/RTP/SAVPF 96",
        "a=mid:3",
        "a=inactive",
        "",
    ]
)


def test_parse_subscriber_offer() -> None:
    sdp = Sdp.parse(SUBSCRIBER_OFFER)
    assert [m.kind for m in sdp.media] == ["audio", "video", "application", "video"]
    audio, video, _, rejected = sdp.media
    assert (audio.ice_ufrag, audio.fingerprint, audio.setup) == ("srvU", "sha-256 11:22", "actpass")
    assert audio.candidates == ["7 1 udp 2130706431 127.0.0.1 40000 typ host"]
    assert audio.extmaps["urn:ietf:params:rtp-hdrext:sdes:mid"] == 4
    assert video.rtpmap == {96: "VP8/90000", 97: "rtx/90000"} and video.ssrcs == [2222]
    assert rejected.port == 0 and rejected.direction == "inactive"
    assert sdp.first_bundled() is audio and sdp.has_candidates and not audio.ice_lite


def test_parse_without_candidates_and_ice_lite() -> None:
    text = SUBSCRIBER_OFFER.replace(
        "a=candidate:7 1 udp 2130706431 127.0.0.1 40000 typ host\r\n", ""
    )
    sdp = Sdp.parse("a=ice-lite\r\n" + text)
    assert not sdp.has_candidates and sdp.media[0].ice_lite


def test_parse_rejects() -> None:
    for text in (
        "",
        "v=0\r\n",
        "m=audio x RTP 1\r\n",
        "m=audio\r\n",
        "m=audio 0 P 1\r\na=rtpmap:x y",
    ):
        with contextlib.suppress(SdpError):
            Sdp.parse(text)
            raise AssertionError(f"accepted {text!r}")
    with contextlib.suppress(SdpError):
        Sdp.parse("m=audio 0 P 1\r\n").first_bundled()
        raise AssertionError("a rejected-only SDP has a bundled m=")


_SDP_LINE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["m=", "a=", "a=rtpmap:", "a=extmap:", "a=ssrc:", "a=candidate:", "a=mid:"]
    ).flatmap(lambda prefix: st.text(max_size=30).map(lambda rest: prefix + rest)),
    st.builds(
        "m={} {} {} {}".format,
        st.sampled_from(["audio", "video", "application", ""]),
        st.text(max_size=6),
        st.text(max_size=6),
        st.text(max_size=6),
    ),
)


@given(st.lists(_SDP_LINE, max_size=12))
def test_sdp_parser_raises_only_its_error(lines: list[str]) -> None:
    with contextlib.suppress(SdpError):
        sdp = Sdp.parse("\r\n".join(lines))
        sdp.first_bundled()


@given(st.text(max_size=300))
def test_sdp_parser_raises_only_its_error_on_any_text(text: str) -> None:
    with contextlib.suppress(SdpError):
        Sdp.parse(text)


def test_answer_to_subscriber_offer() -> None:
    answer = answer_subscriber_offer(Sdp.parse(SUBSCRIBER_OFFER), LOCAL)
    assert answer.startswith("v=0\r\n") and answer.endswith("\r\n")
    assert "a=group:BUNDLE 0 1 2\r\n" in answer
    parsed = Sdp.parse(answer)
    assert [(m.kind, m.mid, m.port) for m in parsed.media] == [
        ("audio", "0", 9),
        ("video", "1", 9),
        ("application", "2", 9),
        ("video", "3", 0),
    ]
    audio, video, data, rejected = parsed.media
    assert audio.direction == video.direction == "recvonly" and rejected.direction == "inactive"
    assert {m.setup for m in parsed.media} == {"active"}  # the DTLS client
    assert audio.ice_ufrag == "ufragL" and audio.fingerprint == "sha-256 AA:BB"
    assert audio.candidates == [CANDIDATE.removeprefix("candidate:")]
    assert video.candidates == data.candidates == []  # BUNDLE: candidates once
    assert audio.rtpmap == {111: "opus/48000/2"} and video.rtpmap == {96: "VP8/90000"}
    assert audio.extmaps == {"urn:ietf:params:rtp-hdrext:sdes:mid": 4}  # only the MID extension
    assert "a=sctp-port:5000" in answer and answer.count("a=end-of-candidates") == 1


def _media() -> MediaSet:
    frame = (True, bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + bytes(200))
    return MediaSet({r: [frame] for r in "qhf"}, [b"\x78" * 60], b"\xf8")


def test_publisher_offer_simulcast() -> None:
    pub = Publisher(
        "ws://127.0.0.1:1", "t", "pub-0003", number=3, media=_media(),
        video_rids=("q", "h", "f"), audio=True, talking=True,
    )  # fmt: skip
    text = pub._offer(LOCAL, {"audio": "audio-1", "video": "video-1"})
    assert "a=group:BUNDLE 0 1\r\n" in text
    sdp = Sdp.parse(text)
    audio, video = sdp.media
    assert (audio.kind, audio.mid, video.kind, video.mid) == ("audio", "0", "video", "1")
    assert audio.direction == video.direction == "sendonly"
    assert audio.setup == video.setup == "actpass"
    assert audio.msid == "pub-0003-stream audio-1" and video.msid == "pub-0003-stream video-1"
    assert audio.candidates == [CANDIDATE.removeprefix("candidate:")] and not video.candidates
    assert video.rtpmap == {96: "VP8/90000"} and audio.rtpmap == {111: "opus/48000/2"}
    assert video.extmaps["urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"] == 10
    assert "a=simulcast:send q;h;f\r\n" in text
    assert all(f"a=rid:{r} send\r\n" in text for r in "qhf")
    assert len(audio.ssrcs) == 1 and not video.ssrcs  # simulcast: SSRCs learnt from RIDs
    assert sorted(s.rid for s in pub.streams.values()) == ["", "f", "h", "q"]


def test_publisher_offer_single_layer_names_its_ssrc() -> None:
    pub = Publisher(
        "ws://127.0.0.1:1", "t", "pub-0000", number=0, media=_media(),
        video_rids=("f",), audio=False, talking=False,
    )  # fmt: skip
    sdp = Sdp.parse(pub._offer(LOCAL, {"video": "video-1"}))
    (video,) = sdp.media
    assert video.ssrcs == [next(iter(pub.streams))] and video.candidates


def test_candidate_init_roundtrip() -> None:
    init = candidate_init(CANDIDATE, "0", 0, "ufragL")
    assert json.loads(init) == {
        "candidate": CANDIDATE,
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": "ufragL",
    }
    assert parse_candidate_init(init) == CANDIDATE.removeprefix("candidate:")
    assert parse_candidate_init('{"candidate": "", "sdpMid": "0"}') is None  # end-of-candidates
    assert parse_candidate_init("{}") is None
    lk = '{"candidate":"candidate:3 1 udp 2130706431 10.0.0.2 7882 typ host generation 0","sdpMid":"0","sdpMLineIndex":0}'
    assert parse_candidate_init(lk) == "3 1 udp 2130706431 10.0.0.2 7882 typ host generation 0"


def test_candidate_init_rejects() -> None:
    for text in ("", "[]", "nope", '{"candidate": 5}', '{"candidate": "candidate:1 1 udp"}',
                 '{"candidate": "candidate:1 1 udp 1 not-an-ip 5 typ host"}',
                 '{"candidate": "candidate:1 1 udp 1 127.0.0.1 0 typ host"}'):  # fmt: skip
        with contextlib.suppress(SdpError):
            parse_candidate_init(text)
            raise AssertionError(f"accepted {text!r}")


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.one_of(
        st.text(max_size=120),
        _JSONISH.map(json.dumps),
        st.text(max_size=80).map(lambda c: json.dumps({"candidate": c, "sdpMid": "0"})),
        st.lists(st.text(max_size=12), max_size=10).map(
            lambda parts: json.dumps({"candidate": "candidate:" + " ".join(parts)})
        ),
    )
)
def test_candidate_init_parser_raises_only_its_error(text: str) -> None:
    with contextlib.suppress(SdpError):
        parse_candidate_init(text)


def test_loopback_urls() -> None:
    assert is_loopback_url("ws://127.0.0.1:7880") and is_loopback_url("ws://localhost:1")
    assert is_loopback_url("ws://[::1]:7880")
    assert not is_loopback_url("wss://sfu.example.org") and not is_loopback_url("wss://10.0.0.1")
