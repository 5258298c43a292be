"""The composition root: builds every SFU object from the config and serves the HTTP/WebSocket routes.

Routes: ``/rtc`` (LiveKit v0 signalling), ``/rtc/validate``, ``/rtc/v1`` and ``/rtc/v1/validate``
(404 with CORS so newer JS clients fall back to v0), ``/twirp/livekit.RoomService/<Method>``
(the server API, `sfu.api`), ``/healthz`` (alive), ``/readyz`` (takes participants: not
draining, event loop responsive; `sfu.lifecycle`), ``/metrics`` and ``/``. With
``prometheus_port`` set, ``/metrics`` is served on that port (on the bind addresses) instead.

Admission (`Sfu.admit`): the token, then the session caps (`sfu.admission`), CPU load, forwarding
latency, and the room: it must exist, or the token's ``roomCreate`` or ``room.auto_create`` must
allow creating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import cast

import uvicorn
from livekit.protocol import models, rtc
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from sfu.admission import (
    LATENCY_RELEASE,
    SESSIONS_PER_IDENTITY,
    LatencyHold,
    Reservation,
    SessionLedger,
    address_key,
    derived_max_sessions,
)
from sfu.api.room_service import RoomService
from sfu.api.twirp import PREFIX as TWIRP_PREFIX
from sfu.api.twirp import TwirpError
from sfu.api.webhook import WebhookNotifier
from sfu.auth import AuthError, ClaimGrants, TokenVerifier
from sfu.cluster import ClusterNode, NodeStats, node_address
from sfu.cluster import build as build_cluster
from sfu.cluster.api import ClusterRoomService
from sfu.cluster.gateway import SignalGateway
from sfu.cluster.node import RELAY_HEADER, RouteError
from sfu.cluster.relay import Relays
from sfu.config import Config, media_workers
from sfu.cpuload import CpuLoad
from sfu.ids import NodeId, new_node_id
from sfu.lifecycle import DRAINING_MESSAGE, Readiness
from sfu.media import fastpath
from sfu.media.transport import SendMode, TransportConfig
from sfu.media.transport.batch import flusher_for
from sfu.media.transport.latency import ForwardLatency
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.metrics import CONTENT_TYPE, COUNTERS, Metrics
from sfu.room import Participant, ParticipantOptions, RoomManager, signalling
from sfu.room.participant import TOKEN_REFRESH_INTERVAL
from sfu.signal.session import CLOSE_NORMAL, SignalSession
from sfu.turn import ice_servers_for
from sfu.workers.pool import WorkerCollector, WorkerPool

log = logging.getLogger(__name__)

CORS = {"Access-Control-Allow-Origin": "*"}
#: a refreshed token is valid until the next refresh reaches the client, plus this long for a
#: reconnect that starts just before it; never less than the original token's expiry
TOKEN_REFRESH_GRACE = 60


class AdmissionError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Admission:
    """An admitted /rtc request: its grants, the room it joins, and the slots it holds."""

    grants: ClaimGrants
    room_name: str
    reservation: Reservation | None = None

    def release(self) -> None:
        if self.reservation is not None:
            self.reservation.release()


@dataclass
class Sfu:
    """Everything one node runs, built from the config."""

    config: Config
    node_id: NodeId
    verifier: TokenVerifier
    rooms: RoomManager
    metrics: Metrics
    transport_config: TransportConfig
    cpu_load: CpuLoad = dataclasses.field(default_factory=CpuLoad)
    ledger: SessionLedger = dataclasses.field(default_factory=lambda: SessionLedger(0, 0))
    webhooks: WebhookNotifier | None = None
    readiness: Readiness = dataclasses.field(default_factory=Readiness)
    #: with Redis: this node's part in the cluster (`sfu.cluster`), and the sessions it relays
    cluster: ClusterNode | None = None
    relays: Relays = dataclasses.field(default_factory=Relays)
    #: the media worker processes (rtc.workers > 1); None: media in this process
    workers: WorkerPool | None = None
    #: the serving loop's probe (`sfu.media.transport.latency`), set when the app starts; until
    #: then one that measures nothing
    latency: ForwardLatency = dataclasses.field(
        default_factory=lambda: ForwardLatency(None, lambda: None)
    )
    latency_hold: LatencyHold = dataclasses.field(default_factory=lambda: LatencyHold(0))
    _warned_per_ip: bool = False

    @property
    def sessions(self) -> int:
        return self.ledger.sessions

    @classmethod
    def build(cls, config: Config) -> Sfu:
        node_id = new_node_id()
        rooms = RoomManager(config.room)
        metrics = Metrics(node_id)
        transport_config = TransportConfig(
            bind_addresses=tuple(a for a in config.bind_addresses if a) or ("0.0.0.0",),
            node_ip=config.rtc.node_ip or None,
            port_range_start=config.rtc.port_range_start,
            port_range_end=config.rtc.port_range_end,
            udp_port=config.rtc.udp_port,
            send_mode=cast(SendMode, config.rtc.send_mode),
            allow_private_candidates=config.rtc.allow_private_candidates,
            fast_path=fastpath.for_transports(config.rtc.fast_path),
            congestion_control=config.rtc.congestion_control,
        )
        log.info(
            "rtc.fast_path %s: each copy through %s",
            config.rtc.fast_path,
            "the compiled path" if transport_config.fast_path else "PeerTransport.send_rtp",
        )
        workers = None
        if media_workers(config.rtc) > 1:
            workers = WorkerPool(
                media_workers(config.rtc),
                transport_config,
                config.rtc.fast_path,
                logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                spill_load=config.rtc.worker_spill_load,
            )
            metrics.registry.register(WorkerCollector(workers))
            metrics.set_counters(workers.totals)
        cpu_load = CpuLoad() if workers is None else CpuLoad(cpu=workers.cpu_seconds_per_worker)
        max_sessions = config.limits.max_sessions
        derived, why = derived_max_sessions(
            bind_addresses=len(transport_config.bind_addresses),
            port_range=(config.rtc.port_range_start, config.rtc.port_range_end),
            udp_port=config.rtc.udp_port,
        )
        if max_sessions:
            log.info("limits.max_sessions %d (configured)", max_sessions)
            if max_sessions > derived:
                log.warning(
                    "limits.max_sessions %d is above what this process can hold (%s)",
                    max_sessions,
                    why,
                )
        else:
            max_sessions = derived
            log.info("limits.max_sessions %d, derived from %s", max_sessions, why)
        ledger = SessionLedger(max_sessions, config.limits.max_sessions_per_ip)
        webhooks = None
        if config.webhook.urls:
            webhooks = WebhookNotifier(config.webhook.urls, config.webhook.api_key, config.keys)
            rooms.observer = webhooks
        sfu = cls(
            config,
            node_id,
            TokenVerifier(config.keys),
            rooms,
            metrics,
            transport_config,
            cpu_load,
            ledger,
            webhooks,
            workers=workers,
            latency_hold=LatencyHold(config.limits.max_forward_latency_ms / 1000),
        )
        metrics.set_gauges(
            lambda: dataclasses.replace(
                rooms.gauges(),
                tasks=_task_count(),
                cpu_load=cpu_load.value,
                forward_latency_p99=sfu.forward_latency_p99(),
            )
        )
        if config.redis.enabled:
            sfu.cluster = build_cluster(
                config,
                node_id,
                sfu.node_stats,
                lambda: [r.name for r in rooms.rooms.values() if not r.closed],
            )
            rooms.on_room_closed = sfu.cluster.room_ended
        return sfu

    def node_stats(self) -> NodeStats:
        """What this node publishes in the cluster's registry every heartbeat."""
        gauges = self.rooms.gauges()
        return NodeStats(
            node_id=self.node_id,
            address=node_address(self.config),
            cpu_load=self.cpu_load.value,
            rooms=gauges.rooms,
            participants=gauges.participants,
            sessions=self.sessions,
            packets_out=COUNTERS.packets_out,
            draining=self.readiness.draining,
            max_cpu_load=self.config.limits.max_cpu_load,
            workers=media_workers(self.config.rtc),
        )

    def forward_latency_p99(self) -> float:
        """The forwarding latency's p99 admission reads (seconds): this process's probe, and
        with media workers the worst of what each worker last reported (any may get the
        newcomer)."""
        p99 = self.latency.p99()
        return p99 if self.workers is None else max(p99, self.workers.forward_latency_p99())

    # -- admission ------------------------------------------------------------------------------
    def _refuse(self, limit: str, message: str) -> AdmissionError:
        COUNTERS.limit_exceeded(limit)
        return AdmissionError(503, message)

    def admit(
        self, conn: HTTPConnection, *, reserve: bool = False, room_checks: bool = True
    ) -> Admission:
        """Check a /rtc request: token, session caps, CPU load, forwarding latency,
        room. Raises AdmissionError with
        LiveKit's status. With `reserve`, the admission holds its session slots until released
        (checked and taken without an await in between, so concurrent handshakes cannot
        overshoot a cap); /rtc/validate only checks. Never creates a room. Without
        `room_checks` only the token and this node's session caps are checked (a node that may
        relay the session checks the room once it knows the room is here: `check_room`)."""
        token = ""
        authorization = conn.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        token = token or conn.query_params.get("access_token", "")
        try:
            grants = self.verifier.verify_join(token)
        except AuthError as exc:
            raise AdmissionError(exc.status, exc.message) from None
        if self.readiness.draining:
            raise AdmissionError(503, DRAINING_MESSAGE)
        if self.workers is not None and not self.workers.any_alive:
            raise AdmissionError(503, "no media worker is running (restarting)")
        ledger = self.ledger
        address = self._client_address(conn)
        refused = ledger.check_sessions(address)
        if refused == "max_sessions":
            raise self._refuse(
                refused,
                f"the server is at capacity: {ledger.max_sessions} sessions (limits.max_sessions)",
            )
        if refused == "max_sessions_per_ip":
            if not self._warned_per_ip:  # once: anyone can make this happen again and again
                self._warned_per_ip = True
                log.warning(
                    "refused a session from %s: limits.max_sessions_per_ip %d reached (behind "
                    "a proxy, see FORWARDED_ALLOW_IPS); further refusals are only counted",
                    address,
                    ledger.max_per_address,
                )
            raise self._refuse(
                refused,
                f"too many sessions from this address ({ledger.max_per_address}, "
                "limits.max_sessions_per_ip)",
            )
        if room_checks:
            self.check_room(grants)
        admission = Admission(grants, grants.video.room)
        if reserve:
            admission.reservation = ledger.reserve(address, grants.video.room, grants.identity)
        return admission

    def check_room(self, grants: ClaimGrants) -> None:
        """The room's part of admission on the node that holds the room: the identity's
        sessions, CPU load, the room's existence (or the right to create it) and its size."""
        ledger = self.ledger
        name, identity = grants.video.room, grants.identity
        room = self.rooms.get(name)
        if room is not None and room.closed:
            room = None
        live = room is not None and identity in room.participants
        joining = ledger.joining_identities(name)
        if int(live) + joining.get(identity, 0) >= SESSIONS_PER_IDENTITY:
            raise self._refuse(
                "sessions_per_identity",
                "too many sessions for this identity: one in the room and one joining already",
            )
        max_load = self.config.limits.max_cpu_load
        load = self.cpu_load.predicted(self.sessions) if max_load else 0.0
        if load > max_load and not live:
            # A participant rejoining its room (same identity) is let through: it replaces itself.
            COUNTERS.joins_refused_cpu += 1
            raise AdmissionError(
                503,
                f"the server is at capacity: CPU load {load:.2f} (last "
                f"{self.cpu_load.window_s:.0f} s, with the participants joining) exceeds "
                f"limits.max_cpu_load {max_load:.2f}",
            )
        if (
            self.latency_hold.bound_s
            and not live
            and self.cpu_load.value >= self.config.limits.forward_latency_min_load
        ):
            self._check_latency()
        if room is None and not (self.config.room.auto_create or grants.video.room_create):
            raise AdmissionError(404, "requested room does not exist")
        max_participants = (
            room.max_participants if room is not None else self.config.room.max_participants
        )
        if max_participants and not live and identity not in joining:
            present = set(room.participants) if room is not None else set()
            if len(present | set(joining)) >= max_participants:
                raise self._refuse("max_participants", "room is full")

    def _check_latency(self) -> None:
        """Refuse a newcomer while the forwarding latency's p99, plus what the participants
        joining will add (in proportion to their share, as for the CPU load), holds the node."""
        hold = self.latency_hold
        p99 = self.forward_latency_p99() * (1 + self.cpu_load.pending_share(self.sessions))
        if not hold.refuses(p99):
            return
        COUNTERS.joins_refused_latency += 1
        measured = (
            f"the server is at capacity: forwarding latency p99 {p99 * 1000:.1f} ms (last "
            f"{self.latency.window_s:.0f} s, with the participants joining)"
        )
        bound = f"limits.max_forward_latency_ms {hold.bound_s * 1000:g}"
        if p99 > hold.bound_s:
            raise AdmissionError(503, f"{measured} exceeds {bound}")
        raise AdmissionError(
            503,
            f"{measured} is not yet back under {hold.release_s * 1000:g} ms ({LATENCY_RELEASE * 100:.0f} % of {bound})",
        )

    def refresh_token(self, grants: ClaimGrants, now: int | None = None) -> str:
        """A token with every grant of ``grants``, valid until the next refresh reaches the
        client plus `TOKEN_REFRESH_GRACE` (or until the original expiry, if later)."""
        now = int(time.time()) if now is None else now
        expires = max(grants.expires_at, now + TOKEN_REFRESH_INTERVAL + TOKEN_REFRESH_GRACE)
        return self.verifier.mint(grants, expires - now, now)

    # -- routes ---------------------------------------------------------------------------------
    def _client_address(self, conn: HTTPConnection) -> str:
        """The client's address key: the one a relaying node vouches for, else the peer's."""
        if self.cluster is not None:
            relayed = self.cluster.relayed_for(conn.headers.get(RELAY_HEADER, ""))
            if relayed is not None:
                return address_key(relayed)
        return address_key(conn.client.host) if conn.client is not None else ""

    async def rtc(self, websocket: WebSocket) -> None:
        if self.cluster is not None and await self._relayed(websocket):
            return
        try:
            admission = self.admit(websocket, reserve=True)
        except AdmissionError as exc:
            await websocket.send_denial_response(PlainTextResponse(exc.message, exc.status))
            return
        try:
            await self._serve(websocket, admission)
        finally:
            admission.release()

    async def _relayed(self, websocket: WebSocket) -> bool:
        """With Redis: relay the session to the room's node when that is another node (True:
        relayed or refused here); False: the room is here, serve it as usual."""
        assert self.cluster is not None
        if self.cluster.relayed_for(websocket.headers.get(RELAY_HEADER, "")) is not None:
            return False  # relayed to this node: served here
        if _flag(websocket.query_params.get("reconnect"), default=False):
            return False  # a resume: answered here (a full rejoin, `_serve`), wherever the room is
        try:
            grants = self.admit(websocket, room_checks=False).grants
        except AdmissionError as exc:
            await websocket.send_denial_response(PlainTextResponse(exc.message, exc.status))
            return True
        gateway = SignalGateway(
            self.cluster,
            reserve=lambda: self._relay_slot(websocket),
            max_message_size=self.config.limits.max_signal_message_size,
            relays=self.relays,
        )
        may_create = self.config.room.auto_create or grants.video.room_create
        try:
            return await gateway.serve(websocket, grants.video.room, may_create=may_create)
        except AdmissionError as exc:
            await websocket.send_denial_response(PlainTextResponse(exc.message, exc.status))
            return True

    def _relay_slot(self, websocket: WebSocket) -> Callable[[], None]:
        """This node's session slot for a session it relays; returns its release."""
        reservation = self.admit(websocket, reserve=True, room_checks=False).reservation
        assert reservation is not None
        reservation.joined()  # the identity joins on the room's node, not here
        return reservation.release

    async def _serve(self, websocket: WebSocket, admission: Admission) -> None:
        grants, reservation = admission.grants, admission.reservation
        params = websocket.query_params
        await websocket.accept()
        if _flag(params.get("reconnect"), default=False):
            # No resume here (aiortc has no ICE restart): ask for a full reconnect.
            leave = signalling.leave(
                models.DisconnectReason.STATE_MISMATCH, rtc.LeaveRequest.Action.RECONNECT
            )
            await websocket.send_bytes(leave.SerializeToString())
            await websocket.close(CLOSE_NORMAL, "resume is not supported")
            return
        options = ParticipantOptions(
            auto_subscribe=_flag(params.get("auto_subscribe"), default=True),
            adaptive_stream=_flag(params.get("adaptive_stream"), default=False),
            protocol=_int(params.get("protocol"), 0),
            client_protocol=_int(params.get("client_protocol"), 0),
            sdk=params.get("sdk", ""),
            ice_servers=ice_servers_for(self.config.rtc, grants.identity),
            node_id=self.node_id,
        )
        session = SignalSession(websocket, self.config.limits.max_signal_message_size)
        media = self.workers.place(admission.room_name) if self.workers is not None else None
        if media is None:
            participant = Participant(
                grants, options, self.transport_config, session.send, self.refresh_token
            )
        else:
            participant = Participant(
                grants,
                options,
                self.transport_config,
                session.send,
                self.refresh_token,
                peer_factory=media,
                media=media,
            )
            media.on_lost = lambda: _worker_lost(participant)
        COUNTERS.participant_joins += 1
        self.cpu_load.note_admission()

        if reservation is not None:
            # from the moment the room holds it the participant counts as live, not as joining
            # (its transports may take a while to start; that is one session, not two)
            participant.on_joined = reservation.joined

        async def join() -> None:
            try:
                # admitted: the room exists or this token may create it
                await self.rooms.join(participant, admission.room_name)
            finally:
                if reservation is not None:
                    reservation.joined()

        try:
            await session.run(participant, on_ready=join)
        finally:
            if media is not None:
                media.close()

    async def drain(self, timeout_s: float) -> None:
        """Stop admitting, wait (at most `timeout_s`) for the sessions to end, then ask the
        participants left to reconnect (LeaveRequest RECONNECT, reason SERVER_SHUTDOWN)."""
        self.readiness.draining = True
        log.info("draining: %d sessions, waiting up to %.0f s", self.sessions, timeout_s)
        if self.cluster is not None:
            await self.cluster.beat()  # at once: no new room is placed here from now on
        await self._sessions_ended(timeout_s)
        if self.sessions:
            log.info("drain_timeout reached: asking %d sessions to reconnect", self.sessions)
        if self.cluster is not None:
            # first out of Redis, then closed: the rejoins place the rooms on other nodes
            await self.cluster.release_all()
        for room in list(self.rooms.rooms.values()):
            await room.close(models.DisconnectReason.SERVER_SHUTDOWN)
        self.relays.shutdown()  # the sessions relayed to other nodes rejoin through another
        # let the signalling outboxes flush the LeaveRequests before the sockets close
        await self._sessions_ended(2.0)
        log.info("drained")

    async def _sessions_ended(self, timeout_s: float, poll_s: float = 0.05) -> None:
        """Return when no session is left, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / poll_s) + 1):
            if not self.sessions or time.monotonic() >= deadline:
                return
            await asyncio.sleep(poll_s)

    async def ready(self, _request: Request) -> Response:
        reason = self.readiness.reason()
        if reason:
            return PlainTextResponse(f"not ready: {reason}", 503)
        return PlainTextResponse("ready")

    async def validate(self, request: Request) -> Response:
        try:
            if self.cluster is None:
                self.admit(request)
            else:  # the room's part is checked where the room lives
                grants = self.admit(request, room_checks=False).grants
                create = self.config.room.auto_create or grants.video.room_create
                route = await self.cluster.route(grants.video.room, may_create=create)
                if route.local:
                    self.check_room(grants)
        except (AdmissionError, RouteError) as exc:
            return PlainTextResponse(exc.message, exc.status, headers=CORS)
        return PlainTextResponse("success", headers=CORS)

    async def metrics_endpoint(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


async def _v1_not_supported(websocket: WebSocket) -> None:
    await websocket.send_denial_response(
        PlainTextResponse("v1 signalling is not supported; use /rtc", 404, headers=CORS)
    )


async def _not_found(_request: Request) -> Response:
    return PlainTextResponse("v1 signalling is not supported; use /rtc", 404, headers=CORS)


async def _twirp_bad_route(request: Request) -> Response:
    return TwirpError("bad_route", f"no handler for path {request.url.path!r}").response()


async def _ok(_request: Request) -> Response:
    return PlainTextResponse("OK")


def _flag(value: str | None, *, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


_LOST: set[asyncio.Task[None]] = set()


def _worker_lost(participant: Participant) -> None:
    """Its media worker died: it rejoins (LeaveRequest RECONNECT), on a live worker."""
    task = asyncio.ensure_future(participant.close(models.DisconnectReason.SERVER_SHUTDOWN))
    _LOST.add(task)
    task.add_done_callback(_LOST.discard)


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (scraped from another thread)
        return 0


def listen_sockets(addresses: tuple[str, ...], port: int) -> list[socket.socket]:
    """Bound TCP sockets on each address (``0.0.0.0`` when none); raises OSError."""
    sockets = []
    for address in addresses or ("0.0.0.0",):
        host = address or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sockets.append(sock)
    return sockets


class _MetricsServer(uvicorn.Server):
    """The ``prometheus_port`` listener; the signalling server owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_app(config: Config, metrics_sockets: list[socket.socket] | None = None) -> Starlette:
    """The signalling app. With ``prometheus_port``, /metrics is served by a second server on
    `metrics_sockets` (bound here on the bind addresses when not given) and not on this one."""
    sfu = Sfu.build(config)
    metrics_route = Route("/metrics", sfu.metrics_endpoint, methods=["GET"])

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        udp_port = sfu.transport_config.udp_port
        if sfu.workers is not None:  # each worker binds its own (udp_port + index)
            await sfu.workers.start()
            log.info("%d media workers: pids %s", len(sfu.workers.links), sfu.workers.pids())
        elif udp_port:  # bind the shared sockets now: a taken port is a startup error
            for address in sfu.transport_config.bind_addresses:
                await open_mux(address, udp_port, sfu.transport_config.fast_path)
            log.info("ICE/media on UDP port %d (one socket per bind address)", udp_port)
        metrics_server: _MetricsServer | None = None
        metrics_task: asyncio.Task[None] | None = None
        if config.prometheus_port:
            sockets = metrics_sockets or listen_sockets(
                config.bind_addresses, config.prometheus_port
            )
            metrics_server = _MetricsServer(
                uvicorn.Config(
                    Starlette(routes=[metrics_route]),
                    lifespan="off",
                    access_log=False,
                    log_config=None,  # the signalling server configured logging already
                    timeout_graceful_shutdown=2,
                )
            )
            metrics_task = asyncio.create_task(metrics_server.serve(sockets=sockets))
            log.info("/metrics on port %d", config.prometheus_port)
        sfu.latency = flusher_for(asyncio.get_running_loop()).latency
        log.info("SFU node %s ready", sfu.node_id)
        samplers = [
            asyncio.create_task(sfu.cpu_load.run(), name="cpu-load"),
            asyncio.create_task(sfu.readiness.run(), name="loop-lag"),
        ]
        if sfu.webhooks is not None:
            sfu.webhooks.start()
            log.info("webhooks to %s", ", ".join(config.webhook.urls))
        if sfu.cluster is not None:
            samplers.append(asyncio.create_task(sfu.cluster.run(), name="cluster-heartbeat"))
            log.info(
                "cluster: node %s at %s, Redis %s",
                sfu.node_id,
                sfu.cluster.address,
                config.redis.address or ",".join(config.redis.sentinel_addresses),
            )
        try:
            yield
        finally:
            for sampler in samplers:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            if metrics_server is not None and metrics_task is not None:
                metrics_server.should_exit = True
                await metrics_task
            if sfu.cluster is not None:
                await sfu.cluster.release_all()
            await sfu.rooms.close_all()
            if sfu.cluster is not None:
                await sfu.cluster.stop()
            if cluster_api is not None:
                await cluster_api.close()
            if sfu.workers is not None:
                await sfu.workers.close()
            if sfu.webhooks is not None:
                await sfu.webhooks.close()  # after close_all: room_finished goes out too
            close_muxes()

    twirp = RoomService(sfu.rooms, config).twirp(sfu.verifier)
    twirp_handle = twirp.handle
    cluster_api = None
    if sfu.cluster is not None:
        cluster_api = ClusterRoomService(twirp.handle, sfu.cluster, sfu.verifier)
        twirp_handle = cluster_api.handle
    every_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route(twirp.path, twirp_handle, methods=every_method),
            Route(TWIRP_PREFIX + "{rest:path}", _twirp_bad_route, methods=every_method),
            WebSocketRoute("/rtc", sfu.rtc),
            Route("/rtc/validate", sfu.validate, methods=["GET"]),
            WebSocketRoute("/rtc/v1", _v1_not_supported),
            Route("/rtc/v1", _not_found, methods=["GET"]),
            Route("/rtc/v1/validate", _not_found, methods=["GET"]),
            Route("/rtc", _not_found, methods=["GET"]),
            Route("/healthz", _ok, methods=["GET", "HEAD"]),
            Route("/readyz", sfu.ready, methods=["GET", "HEAD"]),
            *([] if config.prometheus_port else [metrics_route]),
            Route("/", _ok, methods=["GET", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.state.sfu = sfu
    return app
