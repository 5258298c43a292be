"""Offer/answer policy of the SFU's peer connections, as pure functions over `sfu.media.sdp` objects.

This module owns what the SFU accepts from a publishing client (codecs, RTCP feedback, header
extensions, simulcast RIDs, data channels) and what it offers to a subscribing client (one
sendonly m-line per forwarded track with an SSRC and msid chosen by the SFU).  It does no I/O.

A publisher's SDP reaches every subscriber's offer, so what is kept of it is normalised here: at
most `MAX_SIMULCAST_RIDS` layers, the clock rate and channels the codec's RTP payload format fixes,
and only the fmtp parameters of `FMTP_PARAMETERS`, each with a well-formed value.

Audio RED (RFC 2198) around Opus is answered for the tracks whose AddTrackRequest asked for
it (`red_tracks`, as LiveKit does: clients offer Opus first either way), and offered to their
subscribers with Opus beside it: `accepts_red` says whether a subscriber's answer kept it
(the forwarder sends the others only the primary encoding, see `sfu.media.rtp.red`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeVar

from sfu.media.rtp import extensions as ext
from sfu.media.sdp import Codec, MediaSection, Rid, SdpError, SessionDescription, Simulcast
from sfu.metrics import COUNTERS

__all__ = [
    "FMTP_PARAMETERS",
    "MAX_SIMULCAST_RIDS",
    "SUBSCRIBER_EXTENSION_IDS",
    "SUBSCRIBER_OPUS_PT",
    "SUBSCRIBER_RED_PT",
    "LocalParameters",
    "PublishedMedia",
    "TrackSlot",
    "accepts_red",
    "answered_transport_cc",
    "build_answer",
    "build_offer",
    "offered_codecs",
    "remote_transport",
    "sanitize_codec",
    "subscriber_codec",
]

# What the publisher answer keeps.  No transport-cc: the SFU sends REMB from abs-send-time.
PUBLISHER_EXTENSIONS = frozenset(
    {
        ext.MID,
        ext.RTP_STREAM_ID,
        ext.REPAIRED_RTP_STREAM_ID,
        ext.ABS_SEND_TIME,
        ext.SSRC_AUDIO_LEVEL,
    }
)
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")
AUDIO_FEEDBACK = ("nack",)
#: what subscribers are also offered: transport-wide CC feedback on every forwarded stream (the
#: SFU stamps every copy; libwebrtc then sends transport-cc instead of REMB)
SUBSCRIBER_FEEDBACK = ("transport-cc",)

# Header extension ids on the subscriber PC: the same id means the same URI across the bundle.
SUBSCRIBER_EXTENSION_IDS: dict[str, dict[str, int]] = {
    "audio": {ext.MID: 1, ext.TRANSPORT_CC: 3},
    "video": {ext.MID: 1, ext.ABS_SEND_TIME: 2, ext.TRANSPORT_CC: 3},
}
_SUBSCRIBER_PT = {"opus": 111, "vp8": 96, "h264": 102, "vp9": 98, "av1": 35}
#: Opus and RED on every subscriber m-line of a RED track (libwebrtc's numbers). A RED payload's
#: block headers name Opus by the publisher's payload type and are forwarded untouched, so RED
#: is accepted only from a publisher whose Opus is this one's too (libwebrtc's always is).
SUBSCRIBER_OPUS_PT = _SUBSCRIBER_PT["opus"]
SUBSCRIBER_RED_PT = 63
#: the most encodings one RED fmtp may name (`111/111/111`: two redundant and the primary)
MAX_RED_ENCODINGS = 8
_Layer = TypeVar("_Layer")
#: simulcast layers accepted per m-line (LiveKit's clients send at most 3: q, h, f)
MAX_SIMULCAST_RIDS = 3

_CODEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,31}")
_BOOLEAN = re.compile(r"[01]")
_NUMBER = re.compile(r"[0-9]{1,7}")
#: the fmtp parameters kept per codec (lower-case name), each with the form its value must have:
#: RFC 7741 (VP8: none), RFC 6184 §8.1 (H.264), RFC 7587 §6.1 (opus), the VP9 and AV1 RTP specs
FMTP_PARAMETERS: dict[str, dict[str, re.Pattern[str]]] = {
    "vp8": {},
    "vp9": {"profile-id": re.compile(r"[0-3]")},
    "av1": {
        "profile": re.compile(r"[0-2]"),
        "level-idx": re.compile(r"[0-9]{1,2}"),
        "tier": _BOOLEAN,
    },
    "h264": {
        "profile-level-id": re.compile(r"[0-9A-Fa-f]{6}"),
        "packetization-mode": re.compile(r"[0-2]"),
        "level-asymmetry-allowed": _BOOLEAN,
    },
    "opus": {
        "minptime": _NUMBER,
        "ptime": _NUMBER,
        "maxptime": _NUMBER,
        "useinbandfec": _BOOLEAN,
        "stereo": _BOOLEAN,
        "sprop-stereo": _BOOLEAN,
        "usedtx": _BOOLEAN,
        "cbr": _BOOLEAN,
        "maxaveragebitrate": _NUMBER,
    },
}
#: clock rate and channels per codec (RFC 7587 §7: opus/48000/2; video: 90000, no channels)
_AUDIO_FORMAT = (48000, 2)
_VIDEO_FORMAT = (90000, None)


@dataclass(frozen=True)
class PublishedMedia:
    """One audio/video m-line of a publisher offer, as the SFU accepted it."""

    mid: str
    kind: str  # "audio" | "video"
    direction: str  # as the client offered it: "sendonly" while publishing, else "inactive"...
    msid: tuple[str, str] | None  # (stream_id, track_id); track_id == AddTrackRequest.cid
    rids: tuple[str, ...]  # simulcast RIDs in offer order (low to high for livekit-client)
    paused_rids: tuple[str, ...]  # those marked "~" in a=simulcast
    codec: Codec  # the accepted codec, with the client's payload type
    extension_ids: dict[str, int]  # uri -> id, the accepted header extensions
    ssrcs: tuple[int, ...] = ()  # media SSRCs declared with a=ssrc (none with RID simulcast)
    rtx_ssrcs: dict[int, int] = field(default_factory=dict)  # media SSRC -> RTX SSRC (FID)


@dataclass(frozen=True)
class LocalParameters:
    """Our side of the transport, as written into every SDP we produce."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    candidates: list[str]  # a=candidate values
    address: str  # c= address and m= port: the first advertised candidate
    port: int
    sctp_port: int
    max_message_size: int


@dataclass
class TrackSlot:
    """One m-line of the subscriber PC (a forwarded track, or a recyclable inactive line)."""

    mid: str
    kind: str
    codec: Codec
    ssrc: int | None = None
    msid: tuple[str, str] | None = None

    @property
    def active(self) -> bool:
        return self.ssrc is not None


def _transport_attributes(section: MediaSection, local: LocalParameters, setup: str) -> None:
    section.connection = (
        f"IN IP4 {local.address}" if ":" not in local.address else (f"IN IP6 {local.address}")
    )
    section.port = local.port
    section.ice_ufrag = local.ice_ufrag
    section.ice_pwd = local.ice_pwd
    section.fingerprints = list(local.fingerprints)
    section.setup = setup
    section.candidates = list(local.candidates)
    section.end_of_candidates = True


#: the publisher's own send-rate hints, echoed in the answer it gets (libwebrtc takes its start
#: bitrate from the answer: without it a LiveKit SDK camera starts at 300 kbit/s instead of the
#: 1 Mbit/s it asked for), never passed on to subscribers
SENDER_HINTS: dict[str, re.Pattern[str]] = {
    "x-google-start-bitrate": _NUMBER,
    "x-google-min-bitrate": _NUMBER,
    "x-google-max-bitrate": _NUMBER,
}


def sanitize_codec(
    kind: str, codec: Codec, extra: dict[str, re.Pattern[str]] | None = None
) -> Codec:
    """`codec` with the clock rate and channels its payload format fixes and only the fmtp
    parameters of `FMTP_PARAMETERS` (and `extra`) whose values are well formed (a copy; rtcp-fb
    kept)."""
    name = codec.name.lower()
    allowed = FMTP_PARAMETERS.get(name, {})
    if extra:
        allowed = {**allowed, **extra}
    fmtp = {
        key: value
        for key, value in codec.fmtp.items()
        if key in allowed and allowed[key].fullmatch(value) is not None
    }
    clock_rate, channels = _AUDIO_FORMAT if name == "opus" else _VIDEO_FORMAT
    if kind == "audio" and name != "opus":  # not offered by the SFU; keep what RTP fixes least
        clock_rate, channels = codec.clock_rate, codec.channels
    return Codec(codec.payload_type, codec.name, clock_rate, channels, fmtp, list(codec.rtcp_fb))


def _choose_codec(
    offered: MediaSection, video_codecs: tuple[str, ...], red: bool = False
) -> Codec | None:
    if red:  # the client asked for RED (AddTrackRequest): LiveKit prefers it in the answer
        chosen = next((c for c in offered.codecs if _is_red(c, offered)), None)
        if chosen is not None:
            return chosen
    for codec in offered.codecs:
        name = codec.name.lower()
        if offered.kind == "audio" and name == "opus":
            if (codec.clock_rate, codec.channels) == _AUDIO_FORMAT:
                return codec
            continue
        if offered.kind == "video" and name in video_codecs:
            if (codec.clock_rate, codec.channels) != _VIDEO_FORMAT:
                continue
            if name == "h264" and codec.fmtp.get("packetization-mode") != "1":
                continue
            return codec
    return None


def _is_red(codec: Codec, offered: MediaSection) -> bool:
    """Whether `codec` is RED over this m-line's Opus at `SUBSCRIBER_OPUS_PT` only (its fmtp
    `111/111`, RFC 2198 §5)."""
    if codec.name.lower() != "red" or (codec.clock_rate, codec.channels) != _AUDIO_FORMAT:
        return False
    opus = offered.codec(SUBSCRIBER_OPUS_PT)
    if opus is None or opus.name.lower() != "opus" or opus.clock_rate != _AUDIO_FORMAT[0]:
        return False
    if len(codec.fmtp) != 1 or next(iter(codec.fmtp.values())):
        return False
    encodings = next(iter(codec.fmtp)).split("/")
    return 1 <= len(encodings) <= MAX_RED_ENCODINGS and set(encodings) == {str(opus.payload_type)}


def _answer_media(
    offered: MediaSection,
    local: LocalParameters,
    setup: str,
    video_codecs: tuple[str, ...],
    red_tracks: frozenset[str],
) -> tuple[MediaSection, PublishedMedia | None]:
    answer = MediaSection(
        kind=offered.kind,
        port=0,
        protocol=offered.protocol,
        mid=offered.mid,
        formats=list(offered.formats),
    )
    if offered.kind == "application":
        if (
            offered.port != 0
            and offered.mid  # a bundled section needs its mid (RFC 8843)
            and "SCTP" in offered.protocol
            and offered.formats == ["webrtc-datachannel"]
        ):
            _transport_attributes(answer, local, setup)
            answer.direction = "sendrecv"
            answer.sctp_port = local.sctp_port
            answer.max_message_size = local.max_message_size
        else:
            answer.direction = "inactive"
        return answer, None

    red = offered.kind == "audio" and offered.msid is not None and offered.msid[1] in red_tracks
    codec = (
        _choose_codec(offered, video_codecs, red) if offered.kind in ("audio", "video") else None
    )
    if codec is None or offered.port == 0 or not offered.mid:
        # Rejected: port 0, one format from the offer, not bundled (RFC 8843 §7.3.3); a section
        # without a mid cannot be bundled, so it is rejected too.
        answer.direction = "inactive"
        answer.codecs = [
            Codec(c.payload_type, c.name, c.clock_rate, c.channels) for c in offered.codecs[:1]
        ]
        answer.formats = [str(c.payload_type) for c in answer.codecs] or answer.formats[:1]
        return answer, None

    _transport_attributes(answer, local, setup)
    answer.rtcp_mux = True
    answer.rtcp_rsize = offered.rtcp_rsize
    answer.direction = {"sendonly": "recvonly", "sendrecv": "recvonly"}.get(
        offered.direction, "inactive"
    )
    allowed_fb = VIDEO_FEEDBACK if offered.kind == "video" else AUDIO_FEEDBACK
    hints = SENDER_HINTS if offered.kind == "video" else None
    accepted = sanitize_codec(offered.kind, codec, hints)
    accepted.rtcp_fb = [fb for fb in codec.rtcp_fb if fb in allowed_fb]
    answer.codecs = [accepted]
    if accepted.name.lower() == "red":  # RED, then the Opus its blocks carry
        accepted.fmtp = dict(codec.fmtp)
        opus = offered.codec(SUBSCRIBER_OPUS_PT)
        assert opus is not None  # _is_red checked it
        answer.codecs.append(sanitize_codec("audio", opus))
        answer.codecs[1].rtcp_fb = [fb for fb in opus.rtcp_fb if fb in allowed_fb]
    answer.extmaps = {i: uri for i, uri in offered.extmaps.items() if uri in PUBLISHER_EXTENSIONS}

    rids: list[str] = []
    paused: list[str] = []
    if offered.kind == "video":
        send_rids = [r for r in offered.rids if r.direction == "send"]
        if offered.simulcast is not None and offered.simulcast.send:
            known = {r.rid for r in send_rids}
            ordered = [r for r in offered.simulcast.send_rids() if r.rid in known]
            ordered = _first_layers(ordered)
            rids = [r.rid for r in ordered]
            paused = [r.rid for r in ordered if r.paused]
            answer.simulcast = Simulcast(recv=[[r] for r in ordered])
        elif send_rids:
            rids = [r.rid for r in _first_layers(send_rids)]
        answer.rids = [Rid(rid, "recv") for rid in rids]
        # Keep the rid extmaps even without simulcast on this m-line: libwebrtc restricts the
        # extensions of later m-lines in the BUNDLE group to those already negotiated, so
        # dropping them here makes a later simulcast publish fail to apply its own offer.

    rtx_ssrcs = {g[1][0]: g[1][1] for g in offered.ssrc_groups if g[0] == "FID" and len(g[1]) == 2}
    repair_ssrcs = set(rtx_ssrcs.values())
    ssrcs = tuple(s for s in offered.ssrcs if s not in repair_ssrcs)
    published = PublishedMedia(
        mid=offered.mid,
        kind=offered.kind,
        direction=offered.direction,
        msid=offered.msid,
        rids=tuple(rids),
        paused_rids=tuple(paused),
        codec=accepted,
        extension_ids={uri: i for i, uri in answer.extmaps.items()},
        ssrcs=ssrcs,
        rtx_ssrcs=rtx_ssrcs,
    )
    return answer, published


def _first_layers(layers: list[_Layer]) -> list[_Layer]:
    """The first `MAX_SIMULCAST_RIDS` layers (low to high as LiveKit's clients offer them)."""
    if len(layers) > MAX_SIMULCAST_RIDS:
        COUNTERS.limit_exceeded("simulcast_rids")
    return layers[:MAX_SIMULCAST_RIDS]


def build_answer(
    offer: SessionDescription,
    local: LocalParameters,
    *,
    setup: str,
    session_id: int,
    session_version: int,
    video_codecs: tuple[str, ...] = ("vp8", "h264"),
    red_tracks: frozenset[str] = frozenset(),
) -> tuple[SessionDescription, list[PublishedMedia]]:
    """Answer a publisher offer: receive audio/video, accept simulcast and SCTP data channels;
    the audio of `red_tracks` (msid track ids) with RED where it fits (`_is_red`), else Opus."""
    if not offer.media:
        raise SdpError("the offer has no m= section")
    answer = SessionDescription(
        session_id=session_id, session_version=session_version, msid_semantic="WMS *"
    )
    published: list[PublishedMedia] = []
    for offered in offer.media:
        section, media = _answer_media(offered, local, setup, video_codecs, red_tracks)
        answer.media.append(section)
        if media is not None:
            published.append(media)
    answer.groups = [("BUNDLE", [m.mid for m in answer.media if m.port != 0])]
    return answer, published


def subscriber_codec(kind: str, codec: Codec | str) -> Codec:
    """The codec the SFU offers a subscriber for a publisher's `codec` (a Codec or a mime type);
    `offered_codecs` adds the Opus a RED codec needs beside it."""
    if isinstance(codec, str):
        name = codec.split("/", 1)[-1]
        codec = Codec(
            0,
            name,
            48000 if name.lower() == "opus" else 90000,
            2 if name.lower() == "opus" else None,
        )
    if _CODEC_NAME.fullmatch(codec.name) is None:  # e.g. a hostile AddTrackRequest mime type
        codec = Codec(0, "opus" if kind == "audio" else "VP8", 0)
    codec = sanitize_codec(kind, codec)
    name = codec.name.lower()
    fmtp = dict(codec.fmtp)
    if name == "opus":
        fmtp = {"minptime": "10", "useinbandfec": "1", **fmtp}
        return Codec(
            SUBSCRIBER_OPUS_PT, "opus", 48000, 2, fmtp, [*AUDIO_FEEDBACK, *SUBSCRIBER_FEEDBACK]
        )
    if kind == "audio" and name == "red":  # blocks of the subscribers' Opus (see _is_red)
        opus_pt = SUBSCRIBER_OPUS_PT
        return Codec(SUBSCRIBER_RED_PT, "red", 48000, 2, {f"{opus_pt}/{opus_pt}": ""})
    payload_type = _SUBSCRIBER_PT.get(name, codec.payload_type)
    if name == "h264":
        fmtp = {
            "level-asymmetry-allowed": "1",
            "packetization-mode": "1",
            "profile-level-id": "42e01f",
            **fmtp,
        }
    feedback = [*(VIDEO_FEEDBACK if kind == "video" else AUDIO_FEEDBACK), *SUBSCRIBER_FEEDBACK]
    return Codec(payload_type, codec.name, codec.clock_rate, codec.channels, fmtp, feedback)


def offered_codecs(codec: Codec) -> list[Codec]:
    """The codecs of a subscriber m-line whose track is sent as `codec` (`subscriber_codec`'s):
    RED is offered first, with plain Opus after it for a client that does not take RED. That
    Opus says `stereo=1` (the publisher's own Opus fmtp does not travel with a RED track): the
    subscriber's decoder then takes the publisher's channels, one or two."""
    if codec.name.lower() == "red":
        opus = subscriber_codec("audio", "audio/opus")
        opus.fmtp["stereo"] = "1"
        return [codec, opus]
    return [codec]


def accepts_red(answer: SessionDescription) -> dict[str, bool]:
    """Per audio m-line of a subscriber's answer (by mid): whether it kept `SUBSCRIBER_RED_PT`
    (a client that did not gets a RED track's primary encoding as plain Opus)."""
    return {
        section.mid: any(c.payload_type == SUBSCRIBER_RED_PT for c in section.codecs)
        for section in answer.media
        if section.kind == "audio" and section.mid
    }


def remote_transport(
    description: SessionDescription, kind: str
) -> tuple[MediaSection, str, str, list[tuple[str, str]]]:
    """The BUNDLE transport's m-line (the first one not rejected) and its ICE/DTLS parameters."""
    bundled = [m for m in description.media if m.port != 0]
    if not bundled:
        raise SdpError(f"the {kind} has no usable m= section")
    first = bundled[0]
    ufrag, pwd = description.ice_credentials(first)
    fingerprints = description.dtls_fingerprints(first)
    if not ufrag or not pwd or not fingerprints:
        raise SdpError(f"the {kind} lacks ICE credentials or a DTLS fingerprint")
    return first, ufrag, pwd, fingerprints


def answered_transport_cc(answer: SessionDescription) -> int:
    """The transport-cc extension id a subscriber's answer kept (ours: RFC 8285 lets the
    answerer only keep or drop an offered id), or 0 when no audio/video m-line kept it."""
    offered = SUBSCRIBER_EXTENSION_IDS["video"][ext.TRANSPORT_CC]
    kept = (
        section.kind in ("audio", "video")
        and section.port != 0
        and section.extmaps.get(offered) == ext.TRANSPORT_CC
        for section in answer.media
    )
    return offered if any(kept) else 0


def build_offer(
    slots: list[TrackSlot],
    data_mid: str | None,
    local: LocalParameters,
    *,
    cname: str,
    session_id: int,
    session_version: int,
) -> SessionDescription:
    """The subscriber offer: the data-channel m-line, then one m-line per slot (in mid order)."""
    offer = SessionDescription(
        session_id=session_id, session_version=session_version, msid_semantic="WMS *"
    )
    if data_mid is not None:
        data = MediaSection(
            kind="application",
            port=9,
            protocol="UDP/DTLS/SCTP",
            formats=["webrtc-datachannel"],
            mid=data_mid,
        )
        _transport_attributes(data, local, "actpass")
        data.sctp_port = local.sctp_port
        data.max_message_size = local.max_message_size
        offer.media.append(data)
    for slot in slots:
        section = MediaSection(kind=slot.kind, port=9, protocol="UDP/TLS/RTP/SAVPF", mid=slot.mid)
        _transport_attributes(section, local, "actpass")
        section.rtcp_mux = True
        section.rtcp_rsize = True
        section.codecs = offered_codecs(slot.codec)
        section.extmaps = {i: uri for uri, i in SUBSCRIBER_EXTENSION_IDS[slot.kind].items()}
        if slot.active and slot.ssrc is not None and slot.msid is not None:
            section.direction = "sendonly"
            section.msid = slot.msid
            section.ssrcs = {slot.ssrc: {"cname": cname, "msid": f"{slot.msid[0]} {slot.msid[1]}"}}
        else:
            section.direction = "inactive"
        offer.media.append(section)
    offer.groups = [("BUNDLE", [m.mid for m in offer.media])]
    return offer
