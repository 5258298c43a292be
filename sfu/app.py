"""The composition root: builds every SFU object from the config and serves the HTTP/WebSocket routes.

Routes: ``/rtc`` (LiveKit v0 signalling), ``/rtc/validate``, ``/rtc/v1`` and ``/rtc/v1/validate``
(404 with CORS so newer JS clients fall back to v0), ``/healthz``, ``/metrics`` and ``/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from livekit.protocol import models, rtc
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from sfu.auth import AuthError, ClaimGrants, TokenVerifier
from sfu.config import Config
from sfu.cpuload import CpuLoad
from sfu.ids import NodeId, new_node_id
from sfu.metrics import CONTENT_TYPE, COUNTERS, Metrics
from sfu.room import Participant, ParticipantOptions, Room, RoomManager, RoomNotFoundError
from sfu.signal.session import CLOSE_NORMAL, SignalSession
from sfu.transport import SendMode, TransportConfig
from sfu.transport.udpmux import close_muxes, open_mux

log = logging.getLogger(__name__)

CORS = {"Access-Control-Allow-Origin": "*"}
TOKEN_REFRESH_TTL = 600


class AdmissionError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    sessions: int = 0

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
        )
        return cls(
            config, node_id, TokenVerifier(config.keys), rooms, metrics, transport_config, cpu_load
        )

    # -- admission ------------------------------------------------------------------------------
    def admit(self, conn: HTTPConnection) -> tuple[ClaimGrants, Room]:
        """Check a /rtc request: token, room, limits. Raises AdmissionError with LiveKit's status."""
        token = ""
        authorization = conn.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        token = token or conn.query_params.get("access_token", "")
        try:
            grants = self.verifier.verify_join(token)
        except AuthError as exc:
            raise AdmissionError(exc.status, exc.message) from None
        limit = self.config.limits.max_sessions
        if limit and self.sessions >= limit:
            raise AdmissionError(503, "the server is at capacity")
        max_load = self.config.limits.max_cpu_load
        load = self.cpu_load.predicted(self.sessions) if max_load else 0.0
        if load > max_load:
            # A participant rejoining its room (same identity) is let through: it replaces itself.
            room = self.rooms.get(grants.video.room)
            if room is None or grants.identity not in room.participants:
                COUNTERS.joins_refused_cpu += 1
                raise AdmissionError(
                    503,
                    f"the server is at capacity: CPU load {load:.2f} (last "
                    f"{self.cpu_load.window_s:.0f} s, with the participants joining) exceeds "
                    f"limits.max_cpu_load {max_load:.2f}",
                )
        try:
            room = self.rooms.get_or_create(grants.video.room)
        except RoomNotFoundError as exc:
            raise AdmissionError(404, str(exc)) from None
        if room.is_full() and grants.identity not in room.participants:
            raise AdmissionError(503, "room is full")
        return grants, room

    def refresh_token(self, grants: ClaimGrants) -> str:
        now = int(time.time())
        ttl = max(TOKEN_REFRESH_TTL, grants.expires_at - now)
        return self.verifier.mint(grants, ttl, now)

    # -- routes ---------------------------------------------------------------------------------
    async def rtc(self, websocket: WebSocket) -> None:
        try:
            grants, room = self.admit(websocket)
        except AdmissionError as exc:
            await websocket.send_denial_response(PlainTextResponse(exc.message, exc.status))
            return
        params = websocket.query_params
        await websocket.accept()
        if _flag(params.get("reconnect"), default=False):
            # No resume here (aiortc has no ICE restart): ask for a full reconnect.
            leave = rtc.LeaveRequest(
                reason=models.DisconnectReason.STATE_MISMATCH,
                action=rtc.LeaveRequest.Action.RECONNECT,
            )
            await websocket.send_bytes(rtc.SignalResponse(leave=leave).SerializeToString())
            await websocket.close(CLOSE_NORMAL, "resume is not supported")
            return
        options = ParticipantOptions(
            auto_subscribe=_flag(params.get("auto_subscribe"), default=True),
            adaptive_stream=_flag(params.get("adaptive_stream"), default=False),
            protocol=_int(params.get("protocol"), 0),
            client_protocol=_int(params.get("client_protocol"), 0),
            sdk=params.get("sdk", ""),
            ice_servers=self.config.rtc.ice_servers,
            node_id=self.node_id,
        )
        session = SignalSession(websocket, self.config.limits.max_signal_message_size)
        participant = Participant(
            room, grants, options, self.transport_config, session.send, self.refresh_token
        )
        COUNTERS.participant_joins += 1
        self.cpu_load.note_admission()
        self.sessions += 1
        try:
            await session.run(participant, on_ready=lambda: room.join(participant))
        finally:
            self.sessions -= 1

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


def build_app(config: Config) -> Starlette:
    sfu = Sfu.build(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        udp_port = sfu.transport_config.udp_port
        if udp_port:  # bind the shared sockets now: a taken port is a startup error
            for address in sfu.transport_config.bind_addresses:
                await open_mux(address, udp_port)
            log.info("ICE/media on UDP port %d (one socket per bind address)", udp_port)
        log.info("SFU node %s ready", sfu.node_id)
        sampler = asyncio.create_task(sfu.cpu_load.run(), name="cpu-load")
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await sfu.rooms.close_all()
            close_muxes()

    app = Starlette(
        routes=[
            WebSocketRoute("/rtc", sfu.rtc),
            Route("/rtc/validate", sfu.validate, methods=["GET"]),
            WebSocketRoute("/rtc/v1", _v1_not_supported),
            Route("/rtc/v1", _not_found, methods=["GET"]),
            Route("/rtc/v1/validate", _not_found, methods=["GET"]),
            Route("/rtc", _not_found, methods=["GET"]),
            Route("/healthz", _ok, methods=["GET", "HEAD"]),
            Route("/metrics", sfu.metrics_endpoint, methods=["GET"]),
            Route("/", _ok, methods=["GET", "HEAD"]),
        ],
        lifespan=lifespan,
    )
    app.state.sfu = sfu
    return app
