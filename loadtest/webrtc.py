"""A lean WebRTC endpoint for the load tester: one BUNDLEd ICE + DTLS-SRTP transport, and the
few SDP lines the two sides of a LiveKit call need.

Built from aiortc's ORTC objects (`RTCIceGatherer`, `RTCIceTransport`, `RTCDtlsTransport`); no
`RTCPeerConnection`, no aiortc RTP senders or receivers. Once connected:

- `send_rtp`/`send_rtcp` protect with libsrtp and `sendto` the nominated pair's socket at once
  (`send_rtp` returns the datagram, which `resend` can send again to answer a NACK);
- remote candidates come from the SDP and, for servers that trickle (LiveKit does), from
  `add_remote_candidate` at any time — before or after the SDP; end-of-candidates is never
  signalled, so late candidates are always accepted (aioice keeps checking until one pair works);
- received RTP bypasses aiortc. With an `rx_table` (a cheap subscriber) on asyncio's selector
  loop, `loadtest.rx.BatchedReader` reads the socket in batches, the table counts every packet
  from its clear header, and `on_samples` gets only the sampled, *still encrypted* packets (the
  RTP header is readable, RFC 3711 §3.1); otherwise (uvloop, or no table) `on_rtp(data)` gets
  every encrypted packet from the UDP protocol. `unprotect(data)` decrypts the few the caller
  samples; received RTCP is decrypted by aiortc and handed to `on_rtcp(data)`.

aiortc/aioice internals used (aiortc 1.16.0, aioice 0.13.0): `RTCDtlsTransport._set_role`,
`._tx_srtp`, `._rx_srtp`, `._handle_rtp_data`, `._handle_rtcp_data`; aioice
`Connection.ice_controlling`, `._nominated`; `StunProtocol.datagram_received`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aioice.ice
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import (
    RTCIceCandidate,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.sdp import candidate_from_sdp

from loadtest.rx import BatchedReader, Sample, Table, is_rtp

__all__ = [
    "MediaLine",
    "Sdp",
    "SdpError",
    "Transport",
    "candidate_init",
    "parse_candidate_init",
    "read_candidate",
    "use_interfaces_for",
]

CONNECT_TIMEOUT_S = 20.0


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = False) -> list[str]:
    return ["127.0.0.1"]


_all_interfaces = aioice.ice.get_host_addresses

#: Host candidates on loopback only: a load test of a local SFU never sprays other interfaces.
aioice.ice.get_host_addresses = _loopback_only


def is_loopback_url(url: str) -> bool:
    """Whether the signalling URL's host is this machine's loopback (`localhost`, 127/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def use_interfaces_for(url: str) -> None:
    """Gather host candidates on loopback for a local server, on every interface otherwise."""
    aioice.ice.get_host_addresses = _loopback_only if is_loopback_url(url) else _all_interfaces


_certificate: RTCCertificate | None = None


def certificate() -> RTCCertificate:
    """One DTLS certificate per process (generating one costs milliseconds)."""
    global _certificate
    if _certificate is None:
        _certificate = RTCCertificate.generateCertificate()
    return _certificate


class SdpError(ValueError):
    """A session description this client cannot use."""


@dataclass
class MediaLine:
    """One m= section: only what the load tester reads or writes."""

    kind: str
    port: int
    protocol: str
    formats: list[str]
    mid: str = ""
    direction: str = "sendrecv"
    rtpmap: dict[int, str] = field(default_factory=dict)  # pt -> "VP8/90000"
    extmaps: dict[str, int] = field(default_factory=dict)  # uri -> id
    msid: str = ""
    ice_ufrag: str = ""
    ice_pwd: str = ""
    fingerprint: str = ""
    setup: str = ""
    candidates: list[str] = field(default_factory=list)
    ssrcs: list[int] = field(default_factory=list)
    ice_lite: bool = False


@dataclass
class Sdp:
    """A parsed session description (session-level ICE/DTLS values are copied into each m=)."""

    media: list[MediaLine]

    @classmethod
    def parse(cls, text: str) -> Sdp:
        session: dict[str, str] = {}
        media: list[MediaLine] = []
        try:
            for raw in text.splitlines():
                line = raw.strip()
                if line.startswith("m="):
                    kind, port, proto, *formats = line[2:].split()
                    current = MediaLine(kind, int(port), proto, formats)
                    current.ice_ufrag = session.get("ice-ufrag", "")
                    current.ice_pwd = session.get("ice-pwd", "")
                    current.fingerprint = session.get("fingerprint", "")
                    current.setup = session.get("setup", "")
                    current.ice_lite = "ice-lite" in session
                    media.append(current)
                    continue
                if not line.startswith("a="):
                    continue
                name, _, value = line[2:].partition(":")
                if not media:
                    session[name] = value
                    continue
                m = media[-1]
                if name == "mid":
                    m.mid = value
                elif name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                    m.direction = name
                elif name == "rtpmap":
                    pt, _, codec = value.partition(" ")
                    m.rtpmap[int(pt)] = codec
                elif name == "extmap":
                    ident, _, rest = value.partition(" ")
                    m.extmaps[rest.split()[0]] = int(ident.split("/")[0])
                elif name == "msid":
                    m.msid = value
                elif name == "ice-ufrag":
                    m.ice_ufrag = value
                elif name == "ice-pwd":
                    m.ice_pwd = value
                elif name == "fingerprint":
                    m.fingerprint = value
                elif name == "setup":
                    m.setup = value
                elif name == "candidate":
                    m.candidates.append(value)
                elif name == "ssrc":
                    ssrc = int(value.split()[0])
                    if ssrc not in m.ssrcs:
                        m.ssrcs.append(ssrc)
        except (ValueError, IndexError) as exc:
            raise SdpError(f"unreadable SDP: {exc}") from exc
        if not media:
            raise SdpError("no m= section")
        return cls(media)

    def first_bundled(self) -> MediaLine:
        for m in self.media:
            if m.port != 0:
                return m
        raise SdpError("every m= section is rejected")

    @property
    def has_candidates(self) -> bool:
        """Whether any m= section carries an `a=candidate` (else the sender trickles them)."""
        return any(m.candidates for m in self.media)


def parse_candidate_init(text: str) -> str | None:
    """The `a=candidate` value (without `candidate:`) in a trickled `RTCIceCandidateInit` JSON.

    `TrickleRequest.candidateInit` is a browser `RTCIceCandidateInit`: `{"candidate":
    "candidate:…", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "…"}`. An empty
    candidate (a browser's end-of-candidates) gives None. Raises only `SdpError`.
    """
    try:
        init = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SdpError(f"trickled candidate is not JSON: {exc}") from exc
    if not isinstance(init, dict):
        raise SdpError("trickled candidate is not a JSON object")
    candidate = init.get("candidate")
    if candidate is None or candidate == "":
        return None
    if not isinstance(candidate, str):
        raise SdpError("trickled candidate: 'candidate' is not a string")
    value = candidate.strip().removeprefix("a=").removeprefix("candidate:")
    read_candidate(value)
    return value


def read_candidate(value: str) -> RTCIceCandidate:
    """An `a=candidate` value (`foundation component proto priority ip port typ type …`) as
    aiortc's candidate; raises only `SdpError` (aiortc's own reader asserts on short input)."""
    bits = value.split()
    try:
        if len(bits) < 8 or bits[6] != "typ" or bits[2].lower() not in ("udp", "tcp"):
            raise ValueError("not `foundation component proto priority ip port typ type`")
        if not 0 < int(bits[5]) < 65536 or int(bits[1]) < 1 or int(bits[3]) < 0:
            raise ValueError("bad component, priority or port")
        ipaddress.ip_address(bits[4])
        return candidate_from_sdp(value)
    except (ValueError, IndexError, TypeError, AssertionError) as exc:
        raise SdpError(f"unreadable candidate {value!r}: {exc}") from exc


def candidate_init(candidate: str, mid: str, mline_index: int, ufrag: str) -> str:
    """The `RTCIceCandidateInit` JSON for one of our candidates (`candidate:…`), to trickle."""
    return json.dumps(
        {
            "candidate": candidate,
            "sdpMid": mid,
            "sdpMLineIndex": mline_index,
            "usernameFragment": ufrag,
        }
    )


@dataclass(frozen=True)
class LocalParameters:
    ufrag: str
    pwd: str
    fingerprint: str  # "sha-256 AB:CD…"
    candidates: list[str]


class Transport:
    """One ICE + DTLS-SRTP transport (rtcp-mux, BUNDLE)."""

    def __init__(self, *, controlling: bool) -> None:
        self.controlling = controlling
        self._gatherer = RTCIceGatherer(iceServers=[])
        self._ice = RTCIceTransport(self._gatherer)
        # The role from the start (aiortc creates the agent controlled): an answering server
        # begins its checks as soon as it has our offer, before `start`. An agent still
        # "controlled" then, while the server is too, settles the conflict by tie-breaker and
        # may turn the server controlling just before we become controlling ourselves: both
        # agents controlling, and now and then ICE never completes on our side.
        self._ice._connection.ice_controlling = controlling
        self._dtls = RTCDtlsTransport(self._ice, [certificate()])
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._remote_addr: Any = None
        self._protect: Callable[[bytes], bytes] | None = None
        self._protect_rtcp: Callable[[bytes], bytes] | None = None
        self.unprotect: Callable[[bytes], bytes] = _not_connected
        self.on_rtp: Callable[[bytes], None] = _ignore
        #: set by a cheap subscriber before `start`: count in batches, see only the samples
        self.rx_table: Table | None = None
        self.on_samples: Callable[[list[Sample]], None] = _ignore
        self.reader: BatchedReader | None = None
        self.on_rtcp: Callable[[bytes], None] = _ignore
        #: decrypted RTP that took aiortc's path (the first instants after DTLS connects)
        self.on_rtp_clear: Callable[[bytes], None] = _ignore
        self.connected = asyncio.Event()
        self.failed: str | None = None
        self._connect_task: asyncio.Task[None] | None = None
        #: trickled remote candidates added so far (the SDP's are not counted)
        self.trickled = 0
        self._dtls._handle_rtp_data = self._slow_rtp  # type: ignore[method-assign]
        self._dtls._handle_rtcp_data = self._slow_rtcp  # type: ignore[method-assign]

    async def local_parameters(self) -> LocalParameters:
        await self._gatherer.gather()
        params = self._gatherer.getLocalParameters()
        fp = self._dtls.getLocalParameters().fingerprints
        sha = next((f for f in fp if f.algorithm == "sha-256"), fp[0])
        candidates = []
        for c in self._gatherer.getLocalCandidates():
            candidates.append(
                f"candidate:{c.foundation} {c.component} {c.protocol} {c.priority} "
                f"{c.ip} {c.port} typ {c.type}"
            )
        return LocalParameters(
            params.usernameFragment or "",
            params.password or "",
            f"{sha.algorithm} {sha.value}",
            candidates,
        )

    def describe(self) -> str:
        """Where the connection stands, for error messages."""
        return f"ICE {self._ice.state}, DTLS {self._dtls.state}"

    def start(self, remote: MediaLine, dtls_role: str) -> None:
        """Begin ICE then DTLS towards `remote` (its credentials, fingerprint, candidates)."""
        if self._connect_task is None:
            self._connect_task = asyncio.create_task(self._connect(remote, dtls_role))

    async def _connect(self, remote: MediaLine, dtls_role: str) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for text in remote.candidates:
                    with contextlib.suppress(SdpError):  # skip what aiortc cannot read
                        await self._ice.addRemoteCandidate(read_candidate(text))
                # No end-of-candidates: a trickling server may send more at any time. An
                # ICE-lite server is never the controlling agent (RFC 8445 §6.1.1).
                self._ice._connection.ice_controlling = self.controlling or remote.ice_lite
                await self._ice.start(
                    RTCIceParameters(remote.ice_ufrag, remote.ice_pwd, iceLite=remote.ice_lite)
                )
                if self._ice.state != "completed":
                    raise ConnectionError(f"ICE {self._ice.state}")
                self._dtls._set_role(dtls_role)
                algorithm, _, value = remote.fingerprint.partition(" ")
                await self._dtls.start(
                    RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint(algorithm, value)])
                )
                if self._dtls.state != "connected":
                    raise ConnectionError(f"DTLS {self._dtls.state}")
        except (TimeoutError, ConnectionError, OSError) as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            return
        pair = self._ice._connection._nominated[1]
        self._remote_addr = pair.remote_addr
        self._protect = self._dtls._tx_srtp.protect
        self._protect_rtcp = self._dtls._tx_srtp.protect_rtcp
        self.unprotect = self._dtls._rx_srtp.unprotect
        self.take_receive(pair.protocol)
        self.connected.set()

    def take_receive(self, protocol: Any) -> None:
        """Route RTP arriving on `protocol` (an `asyncio.DatagramProtocol` with a `transport`,
        aioice's `StunProtocol` once connected) to the table or `on_rtp`; the rest still goes to
        the protocol's own `datagram_received`."""
        self._sendto = protocol.transport.sendto
        original = protocol.datagram_received
        if self.rx_table is not None and BatchedReader.supported(protocol.transport):
            self.reader = BatchedReader(
                protocol.transport, original, self.rx_table, self.on_samples
            )
            return

        def datagram_received(data: bytes, addr: Any) -> None:
            if is_rtp(data):  # ours, still encrypted
                self.on_rtp(data)
            else:
                original(data, addr)

        protocol.datagram_received = datagram_received

    async def add_remote_candidate(self, candidate: str) -> None:
        """Add one trickled remote candidate (`a=candidate` value), before or after `start`.

        Before `start` aioice keeps it and pairs it when the checks begin; after, it is paired at
        once. Duplicates are ignored. Raises `SdpError` for a candidate aiortc cannot read.
        """
        parsed = read_candidate(candidate)
        with contextlib.suppress(ValueError):  # closed or ended: nothing to add to
            await self._ice.addRemoteCandidate(parsed)
            self.trickled += 1

    async def _slow_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        # Only before the fast path is installed; `data` is already decrypted here.
        self.on_rtp_clear(data)

    async def _slow_rtcp(self, data: bytes) -> None:
        self.on_rtcp(data)

    def send_rtp(self, data: bytes) -> bytes | None:
        """Protect and send one RTP packet; the datagram sent (for a NACK history), or None."""
        if self._protect is None or self._sendto is None:
            return None
        datagram: bytes = self._protect(data)
        self._sendto(datagram, self._remote_addr)
        return datagram

    def resend(self, datagram: bytes) -> bool:
        """Send an already protected datagram again (a retransmission answering a NACK)."""
        if self._sendto is None or self._protect is None:
            return False
        self._sendto(datagram, self._remote_addr)
        return True

    def send_rtcp(self, data: bytes) -> bool:
        if self._protect_rtcp is None or self._sendto is None:
            return False
        self._sendto(self._protect_rtcp(data), self._remote_addr)
        return True

    async def close(self) -> None:
        self._protect = self._protect_rtcp = None
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._connect_task is not None:
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connect_task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._dtls.stop(), 3)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ice.stop(), 3)


def _ignore(data: Any) -> None:
    return None


def _not_connected(data: bytes) -> bytes:
    raise ConnectionError("not connected")


def new_id(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def _transport_lines(local: LocalParameters, setup: str, with_candidates: bool) -> list[str]:
    lines = [
        "c=IN IP4 127.0.0.1",
        f"a=ice-ufrag:{local.ufrag}",
        f"a=ice-pwd:{local.pwd}",
        f"a=fingerprint:{local.fingerprint}",
        f"a=setup:{setup}",
    ]
    if with_candidates:
        lines += [f"a={c}" for c in local.candidates] + ["a=end-of-candidates"]
    return lines


def answer_subscriber_offer(offer: Sdp, local: LocalParameters) -> str:
    """Our answer to the SFU's subscriber offer: receive every m= it sends, DTLS client."""
    out = ["v=0", f"o=- {secrets.randbits(62)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    bundle = [m.mid for m in offer.media if m.port != 0]
    out += [f"a=group:BUNDLE {' '.join(bundle)}", "a=msid-semantic: WMS *"]
    first = True
    for m in offer.media:
        if m.kind == "application":
            out.append(f"m=application {9 if m.port else 0} {m.protocol} {' '.join(m.formats)}")
        else:
            pt = m.formats[0]
            out.append(f"m={m.kind} {9 if m.port else 0} {m.protocol} {pt}")
        out += _transport_lines(local, "active", first and m.port != 0)
        out.append(f"a=mid:{m.mid}")
        if m.kind == "application":
            out += ["a=sctp-port:5000", "a=max-message-size:262144"]
        else:
            pt = m.formats[0]
            direction = "recvonly" if m.direction in ("sendonly", "sendrecv") else "inactive"
            out += [f"a={direction}", "a=rtcp-mux"]
            if int(pt) in m.rtpmap:
                out.append(f"a=rtpmap:{pt} {m.rtpmap[int(pt)]}")
            for uri, ident in m.extmaps.items():
                if uri.endswith("sdes:mid"):
                    out.append(f"a=extmap:{ident} {uri}")
        if m.port != 0:
            first = False
    return "\r\n".join(out) + "\r\n"
