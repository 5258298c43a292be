"""The composition root: builds every SFU object from the config and serves the HTTP/WebSocket routes.

Routes: ``/rtc`` (LiveKit v0 signalling), ``/rtc/validate``, ``/rtc/v1`` and ``/rtc/v1/validate``
(404 with CORS so newer JS clients fall back to v0), ``/twirp/livekit.RoomService/<Method>``
(the server API, `sfu.api`), ``/healthz`` (alive), ``/readyz`` (takes participants: not
draining, event loop responsive; `sfu.lifecycle`), ``/metrics`` and ``/``. With
``prometheus_port`` set, ``/metrics`` is served on that port (on the bind addresses) instead.

Admission (`Sfu.admit`): the token, then the session caps (`sfu.admission`), CPU load, and the
room: it must exist, or the token's ``roomCreate`` or ``room.auto_create`` must allow creating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
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
    SESSIONS_PER_IDENTITY,
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
from sfu.config import Config
from sfu.cpuload import CpuLoad
from sfu.ids import NodeId, new_node_id
from sfu.lifecycle import DRAINING_MESSAGE, Readiness
from sfu.media import fastpath
from sfu.media.transport import SendMode, TransportConfig
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.metrics import CONTENT_TYPE, COUNTERS, Metrics
from sfu.room import Participant, ParticipantOptions, RoomManager, signalling
from sfu.room.participant import TOKEN_REFRESH_INTERVAL
from sfu.signal.session import CLOSE_NORMAL, SignalSession
from sfu.turn import ice_servers_for

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
    _warned_per_ip: bool = False

    @property
    def sessions(self) -> int:
        return self.ledger.sessions

    @classmethod
    def build(cls, config: Config) -> Sfu:
        node_id = new_node_id()
        rooms = RoomManager(config.room)
        metrics = Metrics(node_id)
        cpu_load = CpuLoad()
        metrics.set_gauges(
            lambda: dataclasses.replace(
                rooms.gauges(), tasks=_task_count(), cpu_load=cpu_load.value
            )
        )
        transport_config = TransportConfig(
            bind_addresses=tuple(a for a in config.bind_addresses if a) or ("0.0.0.0",),
            node_ip=config.rtc.node_ip or None,
            port_range_start=config.rtc.port_range_start,
            port_range_end=config.rtc.port_range_end,
            udp_port=config.rtc.udp_port,
            send_mode=cast(SendMode, config.rtc.send_mode),
            allow_private_candidates=config.rtc.allow_private_candidates,
            fast_path=fastpath.for_transports(config.rtc.fast_path),
        )
        log.info(
            "rtc.fast_path %s: each copy through %s",
            config.rtc.fast_path,
            "the compiled path" if transport_config.fast_path else "PeerTransport.send_rtp",
        )
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
        return cls(
            config,
            node_id,
            TokenVerifier(config.keys),
            rooms,
            metrics,
            transport_config,
            cpu_load,
            ledger,
            webhooks,
        )

    # -- admission ------------------------------------------------------------------------------
    def _refuse(self, limit: str, message: str) -> AdmissionError:
        COUNTERS.limit_exceeded(limit)
        return AdmissionError(503, message)

    def admit(self, conn: HTTPConnection, *, reserve: bool = False) -> Admission:
        """Check a /rtc request: token, session caps, CPU load, room. Raises AdmissionError with
        LiveKit's status. With `reserve`, the admission holds its session slots until released
        (checked and taken without an await in between, so concurrent handshakes cannot
        overshoot a cap); /rtc/validate only checks. Never creates a room."""
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
        ledger = self.ledger
        address = address_key(conn.client.host) if conn.client is not None else ""
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
        if room is None and not (self.config.room.auto_create or grants.video.room_create):
            raise AdmissionError(404, "requested room does not exist")
        max_participants = (
            room.max_participants if room is not None else self.config.room.max_participants
        )
        if max_participants and not live and identity not in joining:
            present = set(room.participants) if room is not None else set()
            if len(present | set(joining)) >= max_participants:
                raise self._refuse("max_participants", "room is full")
        admission = Admission(grants, name)
        if reserve:
            admission.reservation = ledger.reserve(address, name, identity)
        return admission

    def refresh_token(self, grants: ClaimGrants, now: int | None = None) -> str:
        """A token with every grant of ``grants``, valid until the next refresh reaches the
        client plus `TOKEN_REFRESH_GRACE` (or until the original expiry, if later)."""
        now = int(time.time()) if now is None else now
        expires = max(grants.expires_at, now + TOKEN_REFRESH_INTERVAL + TOKEN_REFRESH_GRACE)
        return self.verifier.mint(grants, expires - now, now)

    # -- routes ---------------------------------------------------------------------------------
    async def rtc(self, websocket: WebSocket) -> None:
        try:
            admission = self.admit(websocket, reserve=True)
        except AdmissionError as exc:
            await websocket.send_denial_response(PlainTextResponse(exc.message, exc.status))
            return
        try:
            await self._serve(websocket, admission)
        finally:
            admission.release()

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
        participant = Participant(
            grants, options, self.transport_config, session.send, self.refresh_token
        )
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

        await session.run(participant, on_ready=join)

    async def drain(self, timeout_s: float) -> None:
        """Stop admitting, wait (at most `timeout_s`) for the sessions to end, then ask the
        participants left to reconnect (LeaveRequest RECONNECT, reason SERVER_SHUTDOWN)."""
        self.readiness.draining = True
        log.info("draining: %d sessions, waiting up to %.0f s", self.sessions, timeout_s)
        await self._sessions_ended(timeout_s)
        if self.sessions:
            log.info("drain_timeout reached: asking %d sessions to reconnect", self.sessions)
        for room in list(self.rooms.rooms.values()):
            await room.close(models.DisconnectReason.SERVER_SHUTDOWN)
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
            self.admit(request)
        except AdmissionError as exc:
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
        if udp_port:  # bind the shared sockets now: a taken port is a startup error
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
        log.info("SFU node %s ready", sfu.node_id)
        samplers = [
            asyncio.create_task(sfu.cpu_load.run(), name="cpu-load"),
            asyncio.create_task(sfu.readiness.run(), name="loop-lag"),
        ]
        if sfu.webhooks is not None:
            sfu.webhooks.start()
            log.info("webhooks to %s", ", ".join(config.webhook.urls))
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
            await sfu.rooms.close_all()
            if sfu.webhooks is not None:
                await sfu.webhooks.close()  # after close_all: room_finished goes out too
            close_muxes()

    twirp = RoomService(sfu.rooms, config).twirp(sfu.verifier)
    every_method = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[
            Route(twirp.path, twirp.handle, methods=every_method),
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
