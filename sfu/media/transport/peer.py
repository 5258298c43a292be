"""`PeerTransport`: one WebRTC peer connection of the SFU, built from aiortc's ORTC objects.

This module owns the lifetime of one BUNDLEd, rtcp-mux transport: an aioice ICE connection, one
DTLS-SRTP transport, one SCTP association with its data channels, and the SDP exchanged for them.
aiortc's RTCPeerConnection, RTP senders and receivers are never created: decrypted RTP/RTCP go
straight to the caller's callbacks; `send_rtp`/`send_rtcp` protect and send synchronously on the
nominated pair's socket, by default through a `SendQueue` (`sfu.media.transport.batch`: each loop
iteration's datagrams together, UDP GSO where it can), and `fast_sender` gives down tracks the
compiled path's per-copy targets (rtc.fast_path; one batch per socket). Payloads are never parsed.

aiortc/aioice internals used (pinned versions: aiortc 1.16.0, aioice 0.13.0), all in this package:
`RTCDtlsTransport._handle_rtp_data/_handle_rtcp_data` (replaced per instance), `._tx_srtp`,
`._rx_srtp`, `._set_role`, `._task` (and `srtp.outbound_keying`'s); aioice `Connection._nominated`,
`._add_remote_candidate`, `._closing`, `._queue` (bounded, `ice.py`), the gathering state in
`ice.py` and `StunProtocol.datagram_received` (fronted by `sfu.media.transport.ingress` once DTLS
is connected); the SCTP association is `sfu.media.transport.datachannel`'s bounded subclass.

Remote input is bounded per peer connection: `MAX_REMOTE_CANDIDATES` candidates at addresses
`ice.CandidatePolicy` allows (none once ICE completed), `MAX_TRACK_SLOTS` subscriber m-lines (a
track subscribed again before an answer gets its old slot back), the data-channel caps of
`datachannel.py`, and an offer unanswered for `connect_timeout` fails the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
)
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceParameters, RTCIceTransport
from aiortc.rtcsctptransport import RTCSctpCapabilities

from sfu.media.rtp.rtcp import is_rtcp
from sfu.media.sdp import Codec, SdpError, SessionDescription
from sfu.media.transport.batch import FastBatch, FastSenders, SendQueue, count_send_drop
from sfu.media.transport.datachannel import MAX_MESSAGE_SIZE, GuardedSctpTransport, send_allowed
from sfu.media.transport.ice import (
    MAX_REMOTE_CANDIDATES,
    CandidatePolicy,
    HostCandidates,
    advertised_addresses,
    bound_peer_reflexive,
    bound_receive_queue,
    gather_host_candidates,
    parse_candidate_init,
)
from sfu.media.transport.ingress import SrtpIngress
from sfu.media.transport.negotiation import (
    LocalParameters,
    PublishedMedia,
    TrackSlot,
    accepts_red,
    answered_transport_cc,
    build_answer,
    build_offer,
    remote_transport,
    subscriber_codec,
)
from sfu.media.transport.srtp import SrtpProtector, outbound_keying, outbound_session
from sfu.media.transport.udpmux import fast_senders_for
from sfu.metrics import COUNTERS

__all__ = [
    "DATA_CHANNEL_LABELS",
    "LOSSY_LABEL",
    "RELIABLE_LABEL",
    "SEND_MODES",
    "IceRestartError",
    "PeerTransport",
    "SendMode",
    "TrackSlotLimitError",
    "TransportConfig",
    "TransportStats",
]

logger = logging.getLogger(__name__)

State = Literal["new", "connecting", "connected", "failed", "closed"]
#: how RTP/RTCP leave: "gso" (batched per loop iteration, UDP GSO for equal-size runs),
#: "batch" (batched, one sendto per datagram) or "immediate" (one sendto per send_rtp call)
SendMode = Literal["gso", "batch", "immediate"]
SEND_MODES: tuple[SendMode, ...] = ("gso", "batch", "immediate")
SCTP_PORT = 5000
LOCAL_MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
#: m-lines of one subscriber PC (each a forwarded track, or an inactive one to recycle)
MAX_TRACK_SLOTS = 1000
# The event loop queues datagrams when the socket would block; beyond this, send_rtp drops.
MAX_SEND_BACKLOG = 256 * 1024
#: LiveKit's two data channels, opened on every peer connection: ordered and reliable, and
#: unordered without retransmissions
RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
DATA_CHANNEL_LABELS = frozenset({RELIABLE_LABEL, LOSSY_LABEL})
DATA_CHANNELS = (
    RTCDataChannelParameters(label=RELIABLE_LABEL, ordered=True),
    RTCDataChannelParameters(label=LOSSY_LABEL, ordered=False, maxRetransmits=0),
)


class IceRestartError(SdpError):
    """The remote description changes the ICE credentials (an ICE restart), which is unsupported."""


class TrackSlotLimitError(RuntimeError):
    """The subscriber PC already has `MAX_TRACK_SLOTS` m-lines."""


@dataclass(frozen=True)
class TransportConfig:
    """Network settings shared by every peer transport (LiveKit's `rtc.*` settings)."""

    bind_addresses: tuple[str, ...] = ("127.0.0.1",)  # "0.0.0.0" advertises every interface
    node_ip: str | None = None  # advertised candidate address (rtc.node_ip), e.g. behind 1:1 NAT
    port_range_start: int = 0  # rtc.port_range_start; 0/0: ephemeral ports
    port_range_end: int = 0
    udp_port: int = 0  # rtc.udp_port: one shared socket per bind address (port range unused)
    connect_timeout: float = 20.0  # ICE + DTLS must complete within this, else "failed"
    video_codecs: tuple[str, ...] = ("vp8", "h264")  # accepted from publishers (lower case)
    send_mode: SendMode = "gso"
    #: rtc.allow_private_candidates: send checks to RFC 1918/CGNAT/ULA candidates even when the
    #: SFU advertises no such address itself
    allow_private_candidates: bool = False
    fast_path: Any = None  # rtc.fast_path: a `sfu.media.fastpath.Implementation` (not "immediate")
    congestion_control: bool = True  # rtc.congestion_control: stamp copies, read the feedback

    def __post_init__(self) -> None:
        if not self.bind_addresses:
            raise ValueError("bind_addresses must not be empty")
        if self.send_mode not in SEND_MODES:
            raise ValueError(f"send_mode must be one of {SEND_MODES}")
        if (self.port_range_start, self.port_range_end) != (0, 0) and not (
            0 < self.port_range_start <= self.port_range_end < 65536
        ):
            raise ValueError("bad port range")
        if not 0 <= self.udp_port < 65536:
            raise ValueError("bad UDP port")


@dataclass(frozen=True)
class TransportStats:
    rtp_packets_sent: int
    rtcp_packets_sent: int
    bytes_sent: int  # SRTP/SRTCP bytes on the wire
    send_dropped: int  # send_rtp/send_rtcp calls dropped (not connected, or send error)
    rtp_packets_received: int
    rtcp_packets_received: int
    bytes_received: int  # decrypted bytes handed to on_rtp/on_rtcp
    data_sent: int
    data_received: int
    data_dropped: int


def _noop_send(data: bytes, addr: Any) -> None:  # pragma: no cover - replaced when connected
    raise ConnectionError


class PeerTransport:
    """One peer connection.  Publisher role: the client offers.  Subscriber role: we offer."""

    def __init__(
        self,
        role: Literal["publisher", "subscriber"],
        config: TransportConfig,
        *,
        on_rtp: Callable[[bytes], None],
        on_rtcp: Callable[[bytes], None],
        on_data: Callable[[str, bytes], None],
        on_state: Callable[[str], None],
    ) -> None:
        if role not in ("publisher", "subscriber"):
            raise ValueError(f"bad role {role!r}")
        self.role = role
        self._config = config
        self._on_data = on_data
        self._on_state = on_state
        self._state: State = "new"
        self._closing = False

        self._certificate = RTCCertificate.generateCertificate()
        self._gatherer = RTCIceGatherer(iceServers=[])
        self._ice = RTCIceTransport(self._gatherer)
        self._connection: Any = self._ice._connection
        self._receive_queue = bound_receive_queue(self._connection)
        bound_peer_reflexive(self._connection)
        self._candidate_policy: CandidatePolicy | None = None
        self._remote_candidates = 0
        # RFC 8445 §6.1.1: the offerer (subscriber PC) controls; Chrome offers on the publisher PC.
        self._connection.ice_controlling = role == "subscriber"
        self._dtls = RTCDtlsTransport(self._ice, [self._certificate])
        # aiortc looks these up on the instance: media never reaches its parser or router.
        self._dtls._handle_rtp_data = self._handle_rtp_data  # type: ignore[method-assign]
        self._dtls._handle_rtcp_data = self._handle_rtcp_data  # type: ignore[method-assign]
        self._sctp: Any = None
        self._channels: dict[str, Any] = {}
        self._local: LocalParameters | None = None
        self._gather_lock = asyncio.Lock()

        # negotiation state
        self._session_id = secrets.randbits(62)
        self._session_version = 0
        self._remote_ufrag: str | None = None
        self._remote_pwd: str | None = None
        self._remote_fingerprints: list[tuple[str, str]] = []
        self._remote_lite = False
        self._local_setup: str | None = None  # publisher: our answer's a=setup
        self._dtls_role: str | None = None  # "client" | "server"
        self._sctp_remote: tuple[int, int] | None = None  # (port, max message size)
        self._sctp_started = False
        # subscriber m-lines
        self._cname = secrets.token_hex(8)
        self._slots: list[TrackSlot] = []
        self._data_mid: str | None = "0" if role == "subscriber" else None
        self._next_mid = 1
        self._offered_inactive: set[str] = set()
        self._recyclable: set[str] = set()
        self._offered: set[str] = set()  # mids in an offer sent
        self._slot_tracks: dict[str, str] = {}  # mid -> the track id it carries or last carried
        self._takes_red: dict[str, bool] = {}  # mid -> whether the answer kept RED (`takes_red`)
        #: the transport-cc extension id the client's last answer kept (0: none; subscriber PC)
        self.transport_cc_id = 0
        self.congestion_control = config.congestion_control  # rtc.congestion_control

        self._connect_task: asyncio.Task[None] | None = None
        self._answer_timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

        # hot path
        self._sendto: Callable[[bytes, Any], None] = _noop_send
        self._backlog: Callable[[], int] = int  # bytes the event loop holds for the socket
        self._remote_addr: Any = None
        self._queue: SendQueue | None = None  # None: send_mode "immediate", or not connected
        self._fast: FastSenders | None = None  # the fast path's targets and batch
        self._protect: Callable[[bytes], bytes] | None = None
        self._protect_rtcp: Callable[[bytes], bytes] | None = None
        self._tx_keying: tuple[bytes, int] | None = None  # `_tx_srtp`'s key + salt, profile
        # what reaches on_rtp/on_rtcp, counted; the socket fast path once DTLS is up
        self._ingress = SrtpIngress(on_rtp, on_rtcp)

        # counters
        self.rtp_packets_sent = 0
        self.rtcp_packets_sent = 0
        self.bytes_sent = 0
        self.send_dropped = 0
        self.data_sent = 0
        self.data_received = 0
        self.data_dropped = 0

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> State:
        return self._state

    @property
    def stats(self) -> TransportStats:
        ingress = self._ingress
        return TransportStats(
            self.rtp_packets_sent, self.rtcp_packets_sent, self.bytes_sent, self.send_dropped,
            ingress.rtp_packets_received, ingress.rtcp_packets_received, ingress.bytes_received,
            self.data_sent, self.data_received, self.data_dropped,
        )  # fmt: skip

    @property
    def local_candidates(self) -> list[str]:
        """Our `a=candidate` values (empty until the first offer/answer)."""
        return list(self._local.candidates) if self._local else []

    @property
    def ice_role(self) -> str:
        return str(self._ice.role)

    @property
    def dtls_role(self) -> str | None:
        return self._dtls_role

    # ------------------------------------------------------------------ publisher PC

    async def handle_offer(
        self, sdp: str, red_tracks: frozenset[str] = frozenset()
    ) -> tuple[str, list[PublishedMedia]]:
        """Answer the client's offer (publisher PC), with RED for the audio of `red_tracks` (msid
        track ids) where offered.  Raises SdpError on a bad offer."""
        if self.role != "publisher":
            raise RuntimeError("only the publisher PC receives offers")
        self._check_open()
        offer = SessionDescription.parse(sdp)
        first, ufrag, pwd, fingerprints = remote_transport(offer, "offer")
        if self._local_setup is None:
            remote_setup = offer.dtls_setup(first) or "actpass"
            if remote_setup not in ("actpass", "active", "passive"):
                raise SdpError(f"bad a=setup:{remote_setup}")
            # RFC 8842 §5.2: the answerer picks active when allowed (as Chrome and pion do).
            self._local_setup = "passive" if remote_setup == "active" else "active"
            self._dtls_role = "server" if self._local_setup == "passive" else "client"
        local = await self._ensure_local()
        self._set_remote_transport(ufrag, pwd, fingerprints, offer.ice_lite)
        for section in offer.media:
            for candidate in section.candidates:
                self._add_candidate_line(candidate, None)
        self._session_version += 1
        answer, published = build_answer(
            offer,
            local,
            setup=self._local_setup,
            session_id=self._session_id,
            session_version=self._session_version,
            video_codecs=self._config.video_codecs,
            red_tracks=red_tracks,
        )
        offered_by_mid = {m.mid: m for m in reversed(offer.media)}  # the first of a mid wins
        for section in answer.media:
            if section.kind == "application" and section.port != 0:
                offered = offered_by_mid[section.mid]
                self._sctp_remote = (
                    offered.sctp_port or SCTP_PORT,
                    offered.max_message_size or 65536,
                )
        self._start()
        self._maybe_start_sctp()  # a data-channel m-line may arrive in a later offer
        return str(answer), published

    # ------------------------------------------------------------------ subscriber PC

    def add_track(
        self, kind: str, codec: Codec | str, ssrc: int, stream_id: str, track_id: str
    ) -> str:
        """Add a sendonly m-line (subscriber PC) for a forwarded track; returns its mid.

        `codec` is the publisher's codec (or a mime type such as "video/VP8"); the m-line offers
        it with the SFU's payload type, see `track_codec(mid)`.
        """
        if self.role != "subscriber":
            raise RuntimeError("only the subscriber PC offers tracks")
        if kind not in ("audio", "video"):
            raise ValueError(f"bad kind {kind!r}")
        if not 0 <= ssrc < 2**32:
            raise ValueError("bad ssrc")
        offered = subscriber_codec(kind, codec)
        for slot in self._slots:
            # an answered inactive m-line, one no offer carried, or this track's own (subscribed
            # again before the client answered the offer that removed it)
            if (
                slot.kind == kind
                and not slot.active
                and (
                    slot.mid in self._recyclable
                    or slot.mid not in self._offered
                    or self._slot_tracks.get(slot.mid) == track_id
                )
            ):
                self._recyclable.discard(slot.mid)
                slot.codec, slot.ssrc, slot.msid = offered, ssrc, (stream_id, track_id)
                self._slot_tracks[slot.mid] = track_id
                return slot.mid
        if len(self._slots) >= MAX_TRACK_SLOTS:
            COUNTERS.limit_exceeded("subscriber_track_slots")
            raise TrackSlotLimitError(f"more than {MAX_TRACK_SLOTS} subscriber m-lines")
        mid = str(self._next_mid)
        self._next_mid += 1
        self._slots.append(TrackSlot(mid, kind, offered, ssrc, (stream_id, track_id)))
        self._slot_tracks[mid] = track_id
        return mid

    def remove_track(self, mid: str) -> None:
        """Make the m-line inactive in the next offer; it is recycled once that is answered."""
        for slot in self._slots:
            if slot.mid == mid:
                slot.ssrc = None
                slot.msid = None
                return
        raise KeyError(mid)

    def track_codec(self, mid: str) -> Codec:
        """The codec (payload type, fmtp) the subscriber m-line `mid` offers."""
        for slot in self._slots:
            if slot.mid == mid:
                return slot.codec
        raise KeyError(mid)

    def takes_red(self, ssrc: int) -> bool:
        """Whether the client's answer kept RED on the m-line that sends `ssrc` (False before an
        answer, for an m-line it rejected, and for video)."""
        mid = next((s.mid for s in self._slots if s.ssrc == ssrc), None)
        return mid is not None and self._takes_red.get(mid, False)

    async def create_offer(self) -> str:
        """The next subscriber offer (ICE candidates included; the server never trickles)."""
        if self.role != "subscriber":
            raise RuntimeError("only the subscriber PC creates offers")
        self._check_open()
        local = await self._ensure_local()
        self._session_version += 1
        offer = build_offer(
            self._slots,
            self._data_mid,
            local,
            cname=self._cname,
            session_id=self._session_id,
            session_version=self._session_version,
        )
        self._offered_inactive = {s.mid for s in self._slots if not s.active}
        self._offered.update(s.mid for s in self._slots)
        if self._connect_task is None and self._answer_timer is None:
            self._answer_timer = asyncio.create_task(self._fail_unanswered())
        return str(offer)

    async def _fail_unanswered(self) -> None:
        """The client never answered the first offer: give up, as ICE would (and stop holding
        the port and whatever reaches it)."""
        await asyncio.sleep(self._config.connect_timeout)
        if self._connect_task is None and not self._closing:
            logger.info("subscriber offer unanswered for %.0f s", self._config.connect_timeout)
            self._set_state("failed")

    async def handle_answer(self, sdp: str) -> None:
        """Apply the client's answer to our last offer (subscriber PC)."""
        if self.role != "subscriber":
            raise RuntimeError("only the subscriber PC receives answers")
        self._check_open()
        if self._local is None:
            raise RuntimeError("no offer was made")
        answer = SessionDescription.parse(sdp)
        first, ufrag, pwd, fingerprints = remote_transport(answer, "answer")
        setup = answer.dtls_setup(first)
        if setup not in ("active", "passive"):
            raise SdpError(f"an answer needs a=setup active or passive, not {setup!r}")
        role = "server" if setup == "active" else "client"
        if self._dtls_role is not None and role != self._dtls_role:
            raise SdpError("the DTLS role cannot change on renegotiation")
        self._dtls_role = role
        self._set_remote_transport(ufrag, pwd, fingerprints, answer.ice_lite)
        self.transport_cc_id = answered_transport_cc(answer) * self._config.congestion_control
        self._takes_red = accepts_red(answer)
        for section in answer.media:
            for candidate in section.candidates:
                self._add_candidate_line(candidate, None)
            if section.kind == "application" and section.mid == self._data_mid:
                if section.port != 0:
                    self._sctp_remote = (
                        section.sctp_port or SCTP_PORT,
                        section.max_message_size or 65536,
                    )
            elif section.port == 0:
                logger.warning("subscriber m-line %s rejected by the client", section.mid)
        self._recyclable |= {
            s.mid for s in self._slots if s.mid in self._offered_inactive and not s.active
        }
        self._start()
        if self._state == "connected":
            self._maybe_start_sctp()

    # ------------------------------------------------------------------ ICE candidates

    def add_remote_candidate(self, candidate_init_json: str) -> None:
        """A trickled remote candidate (LiveKit TrickleRequest.candidateInit).  Never raises."""
        if self._candidates_full():
            return
        candidate, ufrag, reason = parse_candidate_init(candidate_init_json)
        if candidate is None:
            logger.debug("ignoring remote candidate %r: %s", candidate_init_json[:200], reason)
            return
        self._add_remote(candidate, ufrag)

    def _candidates_full(self) -> bool:
        if self._remote_candidates < MAX_REMOTE_CANDIDATES:
            return False
        COUNTERS.limit_exceeded("ice_remote_candidates")
        return True

    def _add_candidate_line(self, line: str, ufrag: str | None) -> None:
        if self._candidates_full():
            return
        candidate, _, reason = parse_candidate_init(line)
        if candidate is None:
            logger.debug("ignoring SDP candidate %r: %s", line[:200], reason)
        else:
            self._add_remote(candidate, ufrag)

    def _add_remote(self, candidate: Any, ufrag: str | None) -> None:
        if self._closing or self._connection._closing or self._connection._nominated:
            return  # ICE completed: a pair is chosen, new candidates would only cost checks
        if ufrag is not None and self._remote_ufrag is not None and ufrag != self._remote_ufrag:
            logger.debug("ignoring candidate for ufrag %s", ufrag)
            return
        if self._candidate_policy is None:
            config = self._config
            advertised = [
                ip for a in config.bind_addresses for ip in advertised_addresses(a, config.node_ip)
            ]
            self._candidate_policy = CandidatePolicy.for_addresses(
                advertised, config.allow_private_candidates
            )
        refusal = self._candidate_policy.refusal(candidate.host)
        if refusal is not None:
            logger.debug("ignoring candidate %s: %s", candidate, refusal)
            return
        if self._candidates_full():
            return
        self._remote_candidates += 1
        try:
            self._connection._add_remote_candidate(candidate, candidate.host)
        except Exception:  # a bad candidate must not break signalling
            logger.exception("could not add remote candidate %s", candidate)

    # ------------------------------------------------------------------ media

    def send_rtp(self, data: bytes) -> None:
        """SRTP-protect one plaintext RTP packet and send it; drop (and count) if not connected."""
        if self._send(self._protect, data):
            self.rtp_packets_sent += 1

    def send_rtcp(self, data: bytes) -> None:
        """SRTCP-protect one plaintext RTCP compound packet and send it; drop if not connected."""
        if self._send(self._protect_rtcp, data):
            self.rtcp_packets_sent += 1

    def _send(self, protect: Callable[[bytes], bytes] | None, data: bytes) -> bool:
        if protect is None:
            self.send_dropped += 1
            count_send_drop(data, len(data))
            return False
        queue = self._queue
        try:
            if queue is not None:
                packet = protect(data)
                if not queue.send(packet):
                    raise BlockingIOError
            else:
                if self._backlog() > MAX_SEND_BACKLOG:  # the socket is full: drop, don't queue
                    raise BlockingIOError
                packet = protect(data)
                self._sendto(packet, self._remote_addr)
        except Exception:
            self.send_dropped += 1
            count_send_drop(data, len(data))
            return False
        self.bytes_sent += len(packet)
        return True

    def fast_sender(self) -> tuple[Any, Any, FastBatch] | None:
        """(forward, a target sending where `send_rtp` does, batch) for one down track, or None;
        the target protects with a session of its own keyed as `_tx_srtp` (docs/decisions.md 7)."""
        if self._fast is None or self._protect is None or self._tx_keying is None:
            return None
        return self._fast.sender(self._remote_addr, outbound_session(*self._tx_keying))

    def _on_send_failed(self, packet: bytes) -> None:
        """A queued datagram the socket refused at flush time: uncount it, count a drop."""
        if is_rtcp(packet):
            self.rtcp_packets_sent -= 1
        else:
            self.rtp_packets_sent -= 1
        self.bytes_sent -= len(packet)
        self.send_dropped += 1

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self._ingress.deliver_rtp(data)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self._ingress.deliver_rtcp(data)

    # ------------------------------------------------------------------ data channels

    def send_data(self, label: str, data: bytes) -> None:
        """Send one message on the `_reliable`/`_lossy` channel; drop (and count) if not open."""
        channel = self._channels.get(label)
        if channel is None or channel.readyState != "open" or not send_allowed(channel):
            self.data_dropped += 1
            return
        try:
            channel.send(bytes(data))
        except Exception as exc:
            logger.debug("data channel %s send failed: %s", label, exc)
            self.data_dropped += 1
            return
        self.data_sent += 1

    def _watch_channel(self, channel: Any) -> None:
        label = str(channel.label)
        self._channels[label] = channel

        def on_message(message: bytes | str) -> None:
            self.data_received += 1
            payload = message.encode() if isinstance(message, str) else bytes(message)
            try:
                self._on_data(label, payload)
            except Exception:
                logger.exception("on_data failed")

        channel.on("message", on_message)

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Release sockets, tasks and the SCTP association.  Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._protect = self._protect_rtcp = None
        self._close_queue()
        self._ingress.detach()
        tasks = [t for t in (self._connect_task, self._answer_timer, *self._tasks) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sctp is not None:
            with contextlib.suppress(Exception):
                await self._sctp.stop()
        dtls_task = self._dtls._task
        with contextlib.suppress(Exception):
            await self._dtls.stop()
        if dtls_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await dtls_task
        with contextlib.suppress(Exception):
            await self._ice.stop()
        self._channels.clear()
        self._set_state("closed")

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("the transport is closed")

    def _set_state(self, state: State) -> None:
        if state == self._state or self._state == "closed":
            return
        if self._state == "failed" and state != "closed":
            return
        self._state = state
        try:
            self._on_state(state)
        except Exception:
            logger.exception("on_state failed")

    async def _gather(self) -> HostCandidates:
        """Bind this PC's sockets (or join the shared port): the only network step of
        `_ensure_local`."""
        return await gather_host_candidates(
            self._connection,
            self._config.bind_addresses,
            self._config.node_ip,
            (self._config.port_range_start, self._config.port_range_end),
            self._config.udp_port, self._config.fast_path,
        )  # fmt: skip

    async def _ensure_local(self) -> LocalParameters:
        async with self._gather_lock:
            if self._local is None:
                hosts = await self._gather()
                # One fingerprint (sha-256), as browsers write it; every peer checks that one.
                fingerprints = [
                    (f.algorithm, f.value)
                    for f in self._certificate.getFingerprints()
                    if f.algorithm == "sha-256"
                ]
                self._local = LocalParameters(
                    ice_ufrag=self._connection.local_username,
                    ice_pwd=self._connection.local_password,
                    fingerprints=fingerprints,
                    candidates=hosts.sdp,
                    address=hosts.address,
                    port=hosts.port,
                    sctp_port=SCTP_PORT,
                    max_message_size=LOCAL_MAX_MESSAGE_SIZE,
                )
                self._sctp = GuardedSctpTransport(self._dtls, SCTP_PORT)
                self._sctp.on("datachannel", self._watch_channel)
                if self.role == "subscriber":
                    for parameters in DATA_CHANNELS:
                        self._watch_channel(RTCDataChannel(self._sctp, parameters))
            return self._local

    def _set_remote_transport(
        self, ufrag: str, pwd: str, fingerprints: list[tuple[str, str]], lite: bool
    ) -> None:
        if self._remote_ufrag is None:
            self._remote_ufrag, self._remote_pwd = ufrag, pwd
            self._remote_fingerprints = list(fingerprints)
            self._remote_lite = lite
        elif ufrag != self._remote_ufrag or pwd != self._remote_pwd:
            # An ICE restart would need a new aioice connection under the running DTLS session.
            raise IceRestartError("ICE restart is not supported: the client must rejoin")

    def _start(self) -> None:
        if self._connect_task is None:
            self._set_state("connecting")
            self._connect_task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                await self._ice.start(
                    RTCIceParameters(
                        usernameFragment=self._remote_ufrag,
                        password=self._remote_pwd,
                        iceLite=self._remote_lite,
                    )
                )
                if self._ice.state != "completed":
                    raise ConnectionError(f"ICE {self._ice.state}")
                assert self._dtls_role is not None
                self._dtls._set_role(self._dtls_role)
                await self._dtls.start(
                    RTCDtlsParameters(
                        fingerprints=[
                            RTCDtlsFingerprint(algorithm=a, value=v)
                            for a, v in self._remote_fingerprints
                        ]
                    )
                )
                if self._dtls.state != "connected":
                    raise ConnectionError(f"DTLS {self._dtls.state}")
        except (TimeoutError, ConnectionError) as exc:
            if not self._closing:
                logger.info("%s transport failed to connect: %r", self.role, exc)
                self._set_state("failed")
            return
        if self._closing:
            return
        pair = self._connection._nominated[1]
        self._remote_addr, udp = pair.remote_addr, pair.protocol.transport
        self._sendto, self._backlog = udp.sendto, udp.get_write_buffer_size
        if self._config.send_mode != "immediate":
            try:
                self._queue = SendQueue.for_transport(
                    udp,
                    pair.remote_addr,
                    self._on_send_failed,
                    gso=self._config.send_mode == "gso",
                )
            except (OSError, ValueError) as exc:  # no socket to batch on: send immediately
                logger.warning("batched sends unavailable (%r); sending one by one", exc)
            if self._config.fast_path is not None and self._queue is not None:
                self._fast = fast_senders_for(udp, self._queue, self._config.fast_path)
        self._ingress.attach(pair.protocol, self._dtls._rx_srtp)
        self._protect = SrtpProtector(self._dtls._tx_srtp, rtcp=False)
        self._protect_rtcp = SrtpProtector(self._dtls._tx_srtp, rtcp=True)
        self._tx_keying = outbound_keying(self._dtls)
        self._ice.on("statechange", self._on_transport_change)
        self._dtls.on("statechange", self._on_transport_change)
        self._set_state("connected")
        self._on_transport_change()  # in case DTLS already ended
        self._maybe_start_sctp()

    def _on_transport_change(self) -> None:
        if self._closing or self._state != "connected":
            return
        # aioice closes its connection itself when consent expires (RFC 7675): a failure.
        ice_lost = self._ice.state in ("failed", "closed") or bool(self._connection._closing)
        dtls_state = self._dtls.state
        if ice_lost or dtls_state in ("failed", "closed"):
            self._protect = self._protect_rtcp = None
            self._close_queue()
            # DTLS closed over a live ICE connection: the peer sent close_notify (it hung up).
            self._set_state("failed" if ice_lost or dtls_state == "failed" else "closed")

    def _close_queue(self) -> None:
        queue, self._queue = self._queue, None
        fast, self._fast = self._fast, None
        for sender in (queue, fast):  # the targets close; a shared batch stays open
            if sender is not None:
                sender.close()

    def _maybe_start_sctp(self) -> None:
        if self._sctp_started or self._sctp_remote is None or self._sctp is None:
            return
        if self._state != "connected":
            return
        self._sctp_started = True
        port, max_message_size = self._sctp_remote
        task = asyncio.create_task(self._start_sctp(self._sctp, max_message_size, port))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _start_sctp(
        self, sctp: GuardedSctpTransport, max_message_size: int, port: int
    ) -> None:
        try:
            await sctp.start(RTCSctpCapabilities(maxMessageSize=max_message_size), port)
        except ConnectionError as exc:  # DTLS went away before the association began: no data
            logger.debug("%s transport: SCTP not started: %s", self.role, exc)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("%s transport task failed: %r", self.role, task.exception())
