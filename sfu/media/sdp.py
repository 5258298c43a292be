"""Our own SDP model: RFC 8866 plus the WebRTC attributes (RFC 8829, 8839, 8841-8843, 8851, 8853).

This module owns parsing and writing session descriptions.  It knows the attributes a WebRTC SFU
negotiates (ICE, DTLS, BUNDLE, rtcp-mux, codecs, header extensions, msid, SSRCs, RIDs, simulcast,
SCTP) and keeps every other line verbatim, so `parse` followed by `str` loses nothing a peer sent.
`SessionDescription.parse` raises only `SdpError`, whatever the input.

Every count a peer controls is capped (`MAX_*` below, documented in docs/limits.md): a description
over a cap is refused with `SdpLimitError` naming the cap, which is counted in
`sfu_limit_exceeded_total`.  No parse step costs more than linear time in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

from sfu.metrics import COUNTERS

__all__ = [
    "DIRECTIONS",
    "MAX_CANDIDATES",
    "MAX_LINE_LENGTH",
    "MAX_MEDIA_SECTIONS",
    "MAX_RIDS",
    "MAX_SSRCS",
    "Codec",
    "MediaSection",
    "Rid",
    "SdpError",
    "SdpLimitError",
    "SessionDescription",
    "Simulcast",
    "SimulcastRid",
    "reverse_direction",
]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_LINE = re.compile(r"^([a-z])=(.*)$")
# C0 controls and DEL other than tab, CR and LF (RFC 8866 §9: text carries none of them)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")


#: characters in one line (Chrome's longest, an a=ssrc-group or a=fmtp, is under 200)
MAX_LINE_LENGTH = 4096
#: m= sections in one description (a subscriber answer has one per subscribed track)
MAX_MEDIA_SECTIONS = 1100
#: distinct SSRCs declared with a=ssrc on one m-line (Chrome: 2 or, with SIM simulcast, 6)
MAX_SSRCS = 16
#: a=ssrc lines on one m-line (each SSRC carries cname, msid and maybe two legacy attributes)
MAX_SSRC_LINES = 64
#: a=ssrc-group lines on one m-line (Chrome: one FID per layer and one SIM)
MAX_SSRC_GROUPS = 8
#: a=rid lines on one m-line, and streams in its a=simulcast (LiveKit uses 3)
MAX_RIDS = 8
#: a=candidate lines on one m-line; a peer connection uses at most 64 (sfu.media.transport.ice)
MAX_CANDIDATES = 256
#: a=fmtp and a=rtcp-fb lines on one m-line (Chrome's video m-line: about 30 and 150)
MAX_FMTP_LINES = 128
MAX_RTCP_FB_LINES = 512
#: a=extmap lines on one m-line (Chrome: about 15)
MAX_EXTMAPS = 32
#: attributes and lines kept verbatim, per m-line and at session level
MAX_OTHER_LINES = 64


class SdpError(ValueError):
    """The text is not a session description this module can represent."""


class SdpLimitError(SdpError):
    """The description exceeds one of the caps above; `limit` names it (as counted)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


def _over(limit: str, what: str, cap: int) -> SdpLimitError:
    COUNTERS.limit_exceeded(limit)
    return SdpLimitError(limit, f"more than {cap} {what}")


def reverse_direction(direction: str) -> str:
    """The direction an answerer uses to accept `direction` in both ways it can (RFC 8866 §6.7)."""
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def _int(value: str, what: str, low: int = 0, high: int = 2**64 - 1) -> int:
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise SdpError(f"{what}: not a number: {value!r}")
    number = int(value)
    if not low <= number <= high:
        raise SdpError(f"{what}: {number} out of range")
    return number


@dataclass
class Codec:
    """One payload type of an RTP m-line (`a=rtpmap`, `a=fmtp`, `a=rtcp-fb`)."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: dict[str, str] = field(default_factory=dict)
    rtcp_fb: list[str] = field(default_factory=list)

    def mime_type(self, kind: str) -> str:
        """`audio/opus`, `video/VP8`..."""
        return f"{kind}/{self.name}"

    def fmtp_line(self) -> str:
        """The `a=fmtp` value after the payload type (`minptime=10;useinbandfec=1`)."""
        return ";".join(f"{k}={v}" if v else k for k, v in self.fmtp.items())

    @staticmethod
    def parse_fmtp(text: str) -> dict[str, str]:
        params: dict[str, str] = {}
        for item in text.split(";"):
            key, _, value = item.strip().partition("=")
            key = key.strip()
            if key:
                params[key] = value.strip()
        return params


class Rid(NamedTuple):
    """`a=rid:<rid> <direction>`; its restrictions (`pt=`, `max-width=`) are in `rid_params`."""

    rid: str
    direction: str  # "send" | "recv"


@dataclass(frozen=True)
class SimulcastRid:
    rid: str
    paused: bool = False

    def __str__(self) -> str:
        return ("~" if self.paused else "") + self.rid


@dataclass
class Simulcast:
    """`a=simulcast` (RFC 8853): per direction, a list of streams, each a list of alternatives."""

    send: list[list[SimulcastRid]] = field(default_factory=list)
    recv: list[list[SimulcastRid]] = field(default_factory=list)

    def send_rids(self) -> list[SimulcastRid]:
        """The first alternative of each send stream, in order."""
        return [alternatives[0] for alternatives in self.send if alternatives]

    def recv_rids(self) -> list[SimulcastRid]:
        return [alternatives[0] for alternatives in self.recv if alternatives]

    @classmethod
    def parse(cls, value: str) -> Simulcast:
        tokens = value.split()
        if len(tokens) not in (2, 4):
            raise SdpError(f"bad a=simulcast: {value!r}")
        result = cls()
        for direction, streams in zip(tokens[::2], tokens[1::2], strict=True):
            if streams.count(";") + streams.count(",") >= MAX_RIDS:
                raise _over("sdp_rids", "rids in a=simulcast", MAX_RIDS)
            if direction not in ("send", "recv"):
                raise SdpError(f"bad a=simulcast direction: {direction!r}")
            parsed: list[list[SimulcastRid]] = []
            for stream in streams.split(";"):
                alternatives = []
                for alt in stream.split(","):
                    paused = alt.startswith("~")
                    rid = alt[1:] if paused else alt
                    if not _TOKEN.match(rid):
                        raise SdpError(f"bad simulcast rid: {alt!r}")
                    alternatives.append(SimulcastRid(rid, paused))
                parsed.append(alternatives)
            if getattr(result, direction):
                raise SdpError("a=simulcast repeats a direction")
            setattr(result, direction, parsed)
        return result

    def __str__(self) -> str:
        parts = []
        for direction in ("send", "recv"):
            streams: list[list[SimulcastRid]] = getattr(self, direction)
            if streams:
                text = ";".join(",".join(str(r) for r in alts) for alts in streams)
                parts.append(f"{direction} {text}")
        return " ".join(parts)


@dataclass
class MediaSection:
    """One m= section and its attributes."""

    kind: str
    port: int
    protocol: str
    formats: list[str] = field(default_factory=list)  # as on the m= line (application: names)
    mid: str = ""
    direction: str = "sendrecv"
    codecs: list[Codec] = field(default_factory=list)
    extmaps: dict[int, str] = field(default_factory=dict)  # id -> uri
    extmap_params: dict[int, str] = field(default_factory=dict)  # id -> "/dir" suffix or attrs
    msid: tuple[str, str] | None = None
    ssrcs: dict[int, dict[str, str]] = field(default_factory=dict)
    ssrc_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    rids: list[Rid] = field(default_factory=list)
    rid_params: dict[str, str] = field(default_factory=dict)  # rid -> "pt=96;max-width=640"
    simulcast: Simulcast | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    candidates: list[str] = field(default_factory=list)  # the value after "a=candidate:"
    end_of_candidates: bool = False
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    rtcp: str | None = None
    sctp_port: int | None = None
    max_message_size: int | None = None
    connection: str | None = None  # the c= value ("IN IP4 0.0.0.0")
    bandwidths: list[str] = field(default_factory=list)  # b= values
    attributes: list[str] = field(default_factory=list)  # unknown a= values, verbatim
    other_lines: list[str] = field(default_factory=list)  # unknown "x=..." lines, verbatim
    # lines seen per capped attribute ("fmtp", "rtcp-fb", "ssrc"), while parsing
    _line_counts: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    # payload type -> codec of the m= line, while parsing (a lookup per a=rtcp-fb line)
    _by_payload_type: dict[int, Codec] = field(default_factory=dict, repr=False, compare=False)

    def _count(self, name: str, limit: str, cap: int) -> None:
        count = self._line_counts.get(name, 0) + 1
        if count > cap:
            raise _over(limit, f"a={name} lines on one m-line", cap)
        self._line_counts[name] = count

    def codec(self, payload_type: int) -> Codec | None:
        for codec in self.codecs:
            if codec.payload_type == payload_type:
                return codec
        return None

    @property
    def rejected(self) -> bool:
        return self.port == 0

    def extension_id(self, uri: str) -> int | None:
        for ext_id, ext_uri in self.extmaps.items():
            if ext_uri == uri:
                return ext_id
        return None

    def _apply(self, name: str, value: str | None) -> None:
        if value is None and name in DIRECTIONS:
            self.direction = name
        elif name == "mid" and value is not None:
            self.mid = value
        elif name == "rtpmap" and value is not None:
            pt_text, _, encoding = value.partition(" ")
            codec = self._codec_for(_int(pt_text, "rtpmap", 0, 127))
            parts = encoding.strip().split("/")
            if len(parts) not in (2, 3) or not parts[0] or "/" in parts[0]:
                raise SdpError(f"bad a=rtpmap: {value!r}")
            codec.name = parts[0]
            codec.clock_rate = _int(parts[1], "clock rate", 1, 2**32)
            codec.channels = _int(parts[2], "channels", 1, 255) if len(parts) == 3 else None
        elif name == "fmtp" and value is not None:
            self._count(name, "sdp_fmtp_lines", MAX_FMTP_LINES)
            pt_text, _, params = value.partition(" ")
            self._codec_for(_int(pt_text, "fmtp", 0, 127)).fmtp.update(Codec.parse_fmtp(params))
        elif name == "rtcp-fb" and value is not None and not value.startswith("*"):
            pt_text, _, feedback = value.partition(" ")
            feedback = " ".join(feedback.split())
            self._count(name, "sdp_rtcp_fb_lines", MAX_RTCP_FB_LINES)
            if not feedback:
                raise SdpError(f"bad a=rtcp-fb: {value!r}")
            self._codec_for(_int(pt_text, "rtcp-fb", 0, 127)).rtcp_fb.append(feedback)
        elif name == "extmap" and value is not None:
            head, _, rest = value.partition(" ")
            id_text, slash, ext_direction = head.partition("/")
            uri, _, attrs = rest.strip().partition(" ")
            ext_id = _int(id_text, "extmap id", 1, 255)
            if not uri or ext_id in self.extmaps:
                raise SdpError(f"bad a=extmap: {value!r}")
            if len(self.extmaps) >= MAX_EXTMAPS:
                raise _over("sdp_extmaps", "a=extmap lines on one m-line", MAX_EXTMAPS)
            self.extmaps[ext_id] = uri
            suffix = (slash + ext_direction) + ((" " + attrs.strip()) if attrs.strip() else "")
            if suffix:
                self.extmap_params[ext_id] = suffix
        elif name == "msid" and value is not None and self.msid is None:
            tokens = value.split()
            if len(tokens) not in (1, 2):
                raise SdpError(f"bad a=msid: {value!r}")
            self.msid = (tokens[0], tokens[1] if len(tokens) == 2 else "")
        elif name == "ssrc" and value is not None:
            ssrc_text, _, attr = value.partition(" ")
            ssrc = _int(ssrc_text, "ssrc", 0, 2**32 - 1)
            attr_name, _, attr_value = attr.strip().partition(":")
            if not attr_name:
                raise SdpError(f"bad a=ssrc: {value!r}")
            self._count(name, "sdp_ssrc_lines", MAX_SSRC_LINES)
            if ssrc not in self.ssrcs and len(self.ssrcs) >= MAX_SSRCS:
                raise _over("sdp_ssrcs", "SSRCs on one m-line", MAX_SSRCS)
            self.ssrcs.setdefault(ssrc, {})[attr_name] = attr_value
        elif name == "ssrc-group" and value is not None:
            tokens = value.split()
            if not tokens:
                raise SdpError("empty a=ssrc-group")
            if len(self.ssrc_groups) >= MAX_SSRC_GROUPS or len(tokens) > MAX_SSRCS + 1:
                raise _over("sdp_ssrc_groups", "a=ssrc-group lines or SSRCs", MAX_SSRC_GROUPS)
            ssrcs = [_int(t, "ssrc-group", 0, 2**32 - 1) for t in tokens[1:]]
            self.ssrc_groups.append((tokens[0], ssrcs))
        elif name == "rid" and value is not None:
            tokens = value.split(None, 2)
            if len(tokens) < 2 or tokens[1] not in ("send", "recv") or not _TOKEN.match(tokens[0]):
                raise SdpError(f"bad a=rid: {value!r}")
            if len(self.rids) >= MAX_RIDS:
                raise _over("sdp_rids", "a=rid lines on one m-line", MAX_RIDS)
            self.rids.append(Rid(tokens[0], tokens[1]))
            if len(tokens) > 2 and tokens[2].strip():
                self.rid_params[tokens[0]] = tokens[2].strip()
        elif name == "simulcast" and value is not None and self.simulcast is None:
            self.simulcast = Simulcast.parse(value)
        elif _transport_attribute(self, name, value):
            pass
        elif name == "candidate" and value is not None:
            if len(self.candidates) >= MAX_CANDIDATES:
                raise _over("sdp_candidates", "a=candidate lines on one m-line", MAX_CANDIDATES)
            self.candidates.append(value)
        elif name == "end-of-candidates" and value is None:
            self.end_of_candidates = True
        elif name == "rtcp-mux" and value is None:
            self.rtcp_mux = True
        elif name == "rtcp-rsize" and value is None:
            self.rtcp_rsize = True
        elif name == "rtcp" and value is not None and self.rtcp is None:
            self.rtcp = value
        elif name == "sctp-port" and value is not None and self.sctp_port is None:
            self.sctp_port = _int(value, "sctp-port", 0, 65535)
        elif name == "max-message-size" and value is not None and self.max_message_size is None:
            self.max_message_size = _int(value, "max-message-size")
        else:
            if len(self.attributes) >= MAX_OTHER_LINES:
                raise _over("sdp_other_lines", "other attributes on one m-line", MAX_OTHER_LINES)
            self.attributes.append(name if value is None else f"{name}:{value}")

    def _codec_for(self, payload_type: int) -> Codec:
        codec = self._by_payload_type.get(payload_type)
        if codec is None:
            raise SdpError(f"payload type {payload_type} is not on the m= line")
        return codec

    def lines(self) -> list[str]:
        out: list[str] = []
        formats = self.formats
        if self.kind in ("audio", "video") and self.codecs:
            formats = [str(c.payload_type) for c in self.codecs]
        out.append(" ".join([f"m={self.kind}", str(self.port), self.protocol, *formats]))
        out.extend(self.other_lines)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        if self.rtcp is not None:
            out.append(f"a=rtcp:{self.rtcp}")
        if self.ice_ufrag is not None:
            out.append(f"a=ice-ufrag:{self.ice_ufrag}")
        if self.ice_pwd is not None:
            out.append(f"a=ice-pwd:{self.ice_pwd}")
        if self.ice_options:
            out.append("a=ice-options:" + " ".join(self.ice_options))
        out.extend(f"a=fingerprint:{algo} {value}" for algo, value in self.fingerprints)
        if self.setup is not None:
            out.append(f"a=setup:{self.setup}")
        if self.mid:
            out.append(f"a=mid:{self.mid}")
        for ext_id, uri in self.extmaps.items():
            params = self.extmap_params.get(ext_id, "")
            direction, space, attrs = params.partition(" ")
            out.append(f"a=extmap:{ext_id}{direction} {uri}" + (f" {attrs}" if space else ""))
        if self.kind != "application" or self.direction != "sendrecv":
            out.append(f"a={self.direction}")
        if self.msid is not None:
            out.append(f"a=msid:{self.msid[0]} {self.msid[1]}".rstrip())
        if self.rtcp_mux:
            out.append("a=rtcp-mux")
        if self.rtcp_rsize:
            out.append("a=rtcp-rsize")
        for codec in self.codecs:
            if codec.name:
                channels = f"/{codec.channels}" if codec.channels is not None else ""
                out.append(
                    f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}{channels}"
                )
            out.extend(f"a=rtcp-fb:{codec.payload_type} {fb}" for fb in codec.rtcp_fb)
            if codec.fmtp:
                out.append(f"a=fmtp:{codec.payload_type} {codec.fmtp_line()}")
        for semantics, group in self.ssrc_groups:
            out.append(" ".join([f"a=ssrc-group:{semantics}", *map(str, group)]))
        for ssrc, ssrc_attrs in self.ssrcs.items():
            for name, value in ssrc_attrs.items():
                out.append(f"a=ssrc:{ssrc} {name}" + (f":{value}" if value else ""))
        for rid in self.rids:
            restrictions = f" {self.rid_params[rid.rid]}" if rid.rid in self.rid_params else ""
            out.append(f"a=rid:{rid.rid} {rid.direction}{restrictions}")
        if self.simulcast is not None and (self.simulcast.send or self.simulcast.recv):
            out.append(f"a=simulcast:{self.simulcast}")
        if self.sctp_port is not None:
            out.append(f"a=sctp-port:{self.sctp_port}")
        if self.max_message_size is not None:
            out.append(f"a=max-message-size:{self.max_message_size}")
        out.extend(f"a=candidate:{c}" for c in self.candidates)
        if self.end_of_candidates:
            out.append("a=end-of-candidates")
        out.extend(f"a={a}" for a in self.attributes)
        return out


def _transport_attribute(target: Any, name: str, value: str | None) -> bool:
    """ICE and DTLS attributes, valid at session and media level alike; False if not one."""
    if value is None:
        return False
    if name == "ice-ufrag":
        target.ice_ufrag = value
    elif name == "ice-pwd":
        target.ice_pwd = value
    elif name == "ice-options":
        target.ice_options = value.split()
    elif name == "fingerprint":
        if len(target.fingerprints) >= MAX_RIDS:
            raise _over("sdp_other_lines", "a=fingerprint lines", MAX_RIDS)
        target.fingerprints.append(_fingerprint(value))
    elif name == "setup":
        target.setup = value.strip()
    else:
        return False
    return True


def _fingerprint(value: str) -> tuple[str, str]:
    tokens = value.split()
    if len(tokens) != 2:
        raise SdpError(f"bad a=fingerprint: {value!r}")
    return tokens[0].lower(), tokens[1].upper()


@dataclass
class SessionDescription:
    """A whole session description: the session part and its m= sections."""

    origin_username: str = "-"
    session_id: int = 0
    session_version: int = 0
    origin_address: str = "IN IP4 127.0.0.1"
    session_name: str = "-"
    timing: str = "0 0"
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # ("BUNDLE", [mids])
    msid_semantic: str | None = None  # "WMS *"
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    connection: str | None = None
    attributes: list[str] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    media: list[MediaSection] = field(default_factory=list)

    @property
    def bundle_mids(self) -> list[str]:
        for semantics, mids in self.groups:
            if semantics == "BUNDLE":
                return mids
        return []

    def media_by_mid(self, mid: str) -> MediaSection | None:
        for section in self.media:
            if section.mid == mid:
                return section
        return None

    # Effective transport parameters: a media-level value overrides the session-level one.
    def ice_credentials(self, section: MediaSection) -> tuple[str | None, str | None]:
        return (section.ice_ufrag or self.ice_ufrag, section.ice_pwd or self.ice_pwd)

    def dtls_fingerprints(self, section: MediaSection) -> list[tuple[str, str]]:
        return section.fingerprints or self.fingerprints

    def dtls_setup(self, section: MediaSection) -> str | None:
        return section.setup or self.setup

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse SDP text (CRLF or LF line ends); raise `SdpError` on anything malformed."""
        try:
            return cls._parse(text)
        except SdpError:
            raise
        except Exception as exc:  # a parser raises only its own error type
            raise SdpError(f"malformed SDP: {exc!r}") from exc

    @classmethod
    def _parse(cls, text: str) -> Self:
        if not isinstance(text, str):
            raise SdpError("SDP must be text")
        if _CONTROL.search(text) is not None:
            raise SdpError("SDP contains a control character")
        lines = [line.rstrip("\r") for line in text.split("\n")]
        lines = [line for line in lines if line.strip()]
        if not lines or lines[0] != "v=0":
            raise SdpError("SDP must start with v=0")
        session = cls()
        seen_origin = False
        current: MediaSection | None = None
        for line in lines[1:]:
            if len(line) > MAX_LINE_LENGTH:
                raise _over("sdp_line_length", "characters in one SDP line", MAX_LINE_LENGTH)
            match = _LINE.match(line)
            if match is None or "\r" in line:
                raise SdpError(f"bad SDP line: {line!r}")
            kind, value = match.group(1), match.group(2)
            if kind == "m":
                if len(session.media) >= MAX_MEDIA_SECTIONS:
                    raise _over("sdp_media_sections", "m= sections", MAX_MEDIA_SECTIONS)
                tokens = value.split()
                if len(tokens) < 3 or not tokens[0].isprintable():
                    raise SdpError(f"bad m= line: {value!r}")
                port_text = tokens[1].split("/")[0]
                current = MediaSection(
                    kind=tokens[0],
                    port=_int(port_text, "port", 0, 65535),
                    protocol=tokens[2],
                    formats=tokens[3:],
                )
                if tokens[2].startswith(("RTP/", "UDP/TLS/RTP/")):
                    for fmt in tokens[3:]:
                        pt = _int(fmt, "payload type", 0, 127)
                        if pt in current._by_payload_type:
                            raise SdpError(f"payload type {pt} repeated on the m= line")
                        codec = Codec(pt, "", 0)
                        current.codecs.append(codec)
                        current._by_payload_type[pt] = codec
                session.media.append(current)
            elif kind == "a":
                name, colon, attr_value = value.partition(":")
                if not name:
                    raise SdpError(f"bad attribute: {line!r}")
                target_value = attr_value if colon else None
                if current is None:
                    session._apply(name, target_value)
                else:
                    current._apply(name, target_value)
            elif kind == "c":
                if current is None:
                    session.connection = value
                else:
                    current.connection = value
            elif kind == "b" and current is not None:
                if len(current.bandwidths) >= MAX_OTHER_LINES:
                    raise _over("sdp_other_lines", "b= lines on one m-line", MAX_OTHER_LINES)
                current.bandwidths.append(value)
            elif current is not None:
                if len(current.other_lines) >= MAX_OTHER_LINES:
                    raise _over("sdp_other_lines", "other lines on one m-line", MAX_OTHER_LINES)
                current.other_lines.append(line)
            elif kind == "o" and not seen_origin:
                tokens = value.split()
                if len(tokens) != 6:
                    raise SdpError(f"bad o= line: {value!r}")
                session.origin_username = tokens[0]
                session.session_id = _int(tokens[1], "session id")
                session.session_version = _int(tokens[2], "session version")
                session.origin_address = " ".join(tokens[3:])
                seen_origin = True
            elif kind == "s":
                session.session_name = value
            elif kind == "t":
                session.timing = value
            else:
                if len(session.other_lines) >= MAX_OTHER_LINES:
                    raise _over("sdp_other_lines", "other session lines", MAX_OTHER_LINES)
                session.other_lines.append(line)
        if not seen_origin:
            raise SdpError("SDP has no o= line")
        for section in session.media:
            for codec in section.codecs:
                if codec.payload_type >= 96 and not codec.name:
                    raise SdpError(f"dynamic payload type {codec.payload_type} has no a=rtpmap")
        return session

    def _apply(self, name: str, value: str | None) -> None:
        if name == "group" and value is not None:
            tokens = value.split()
            if not tokens:
                raise SdpError("empty a=group")
            if len(self.groups) >= MAX_OTHER_LINES:
                raise _over("sdp_other_lines", "a=group lines", MAX_OTHER_LINES)
            self.groups.append((tokens[0], tokens[1:]))
        elif name == "msid-semantic" and value is not None and self.msid_semantic is None:
            self.msid_semantic = " ".join(value.split())
        elif name == "ice-lite" and value is None:
            self.ice_lite = True
        elif _transport_attribute(self, name, value):
            pass
        else:
            if len(self.attributes) >= MAX_OTHER_LINES:
                raise _over("sdp_other_lines", "session attributes", MAX_OTHER_LINES)
            self.attributes.append(name if value is None else f"{name}:{value}")

    def lines(self) -> list[str]:
        out = [
            "v=0",
            f"o={self.origin_username} {self.session_id} {self.session_version} "
            f"{self.origin_address}",
            f"s={self.session_name}",
        ]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.append(f"t={self.timing}")
        out.extend(self.other_lines)
        if self.ice_lite:
            out.append("a=ice-lite")
        if self.ice_ufrag is not None:
            out.append(f"a=ice-ufrag:{self.ice_ufrag}")
        if self.ice_pwd is not None:
            out.append(f"a=ice-pwd:{self.ice_pwd}")
        if self.ice_options:
            out.append("a=ice-options:" + " ".join(self.ice_options))
        out.extend(f"a=fingerprint:{algo} {value}" for algo, value in self.fingerprints)
        if self.setup is not None:
            out.append(f"a=setup:{self.setup}")
        out.extend(" ".join([f"a=group:{sem}", *mids]) for sem, mids in self.groups)
        if self.msid_semantic is not None:
            out.append(f"a=msid-semantic: {self.msid_semantic}")
        out.extend(f"a={a}" for a in self.attributes)
        for section in self.media:
            out.extend(section.lines())
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"
