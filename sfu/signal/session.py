"""One signalling WebSocket: decode SignalRequests, dispatch them to the participant, keep time.

Owns the order of things on the wire (JoinResponse first), ping/pong, the ping timeout, the
message size limit, binary protobuf or protojson framing, and the close reasons a client sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from sfu.media.sdp import SdpError
from sfu.metrics import COUNTERS
from sfu.room import signalling
from sfu.room.participant import Participant
from sfu.room.room import RoomClosedError, RoomFullError
from sfu.room.signalling import PING_TIMEOUT
from sfu.room.track import TrackRequestError
from sfu.room.types import SignalStateError

log = logging.getLogger(__name__)

#: WebSocket close codes (RFC 6455 §7.4.1)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
OUTBOX_LIMIT = 4096  # messages
#: bytes of encoded responses a session may hold for a client that does not read them
OUTBOX_BYTES = 4 * 1024 * 1024


class ProtocolViolation(Exception):
    """A message that ends the session, with the WebSocket close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class SignalSession:
    """Reads requests, writes responses; one per connected participant."""

    def __init__(self, websocket: WebSocket, max_message_size: int) -> None:
        self.websocket = websocket
        self.max_message_size = max_message_size
        self.use_json = False
        #: encoded responses (bytes, or str for protojson); None ends the writer
        self._outbox: asyncio.Queue[bytes | str | None] = asyncio.Queue(OUTBOX_LIMIT)
        self._queued_bytes = 0
        #: set once the outbox is ended: later responses are dropped, not queued
        self._ended = False
        self._close_code, self._close_reason = CLOSE_NORMAL, ""
        self._overflow_close: asyncio.Task[None] | None = None
        self.participant: Participant | None = None
        self._last_received = time.monotonic()

    # -- outgoing ---------------------------------------------------------------------------------
    def send(self, response: rtc.SignalResponse) -> None:
        """Queue a response; a client that stops reading is disconnected, not buffered forever."""
        if self._ended:
            return
        encoded = self._encode(response)
        size = len(encoded)
        if self._queued_bytes + size > OUTBOX_BYTES or self._outbox.full():
            self._overflow()
            return
        self._queued_bytes += size
        self._outbox.put_nowait(encoded)

    def _encode(self, response: rtc.SignalResponse) -> bytes | str:
        if self.use_json:
            return json_format.MessageToJson(response, indent=None)
        return response.SerializeToString()

    def _overflow(self) -> None:
        """The client does not read: drop what is queued, send a leave, close the socket and the
        participant. Logged and counted once."""
        COUNTERS.limit_exceeded("signal_outbox")
        identity = self.participant.identity if self.participant is not None else "?"
        log.warning("participant %r: signal outbox full; disconnecting", identity)
        while not self._outbox.empty():
            self._outbox.get_nowait()
        encoded = self._encode(signalling.leave(models.DisconnectReason.SIGNAL_CLOSE))
        self._queued_bytes = len(encoded)
        self._outbox.put_nowait(encoded)
        self._close_code, self._close_reason = CLOSE_POLICY, "signal outbox full"
        self.send_close()
        participant = self.participant
        if participant is not None and not participant.closed:
            self._overflow_close = asyncio.ensure_future(
                participant.close(models.DisconnectReason.SIGNAL_CLOSE)
            )

    def send_close(self) -> None:
        """End the outbox: the writer sends what is queued, then closes the WebSocket."""
        if self._ended:
            return
        self._ended = True
        if self._outbox.full():  # make room for the end marker: the client is not reading
            self._outbox.get_nowait()
        self._outbox.put_nowait(None)

    async def _writer(self) -> None:
        while True:
            encoded = await self._outbox.get()
            if encoded is None:
                break
            self._queued_bytes -= len(encoded)
            if isinstance(encoded, str):
                await self.websocket.send_text(encoded)
            else:
                await self.websocket.send_bytes(encoded)
        if self.websocket.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.websocket.close(self._close_code, self._close_reason)

    # -- incoming ---------------------------------------------------------------------------------
    def decode(self, message: Mapping[str, Any]) -> rtc.SignalRequest:
        data = message.get("bytes")
        text = message.get("text")
        size = len(data) if isinstance(data, bytes) else len(text) if isinstance(text, str) else 0
        if size > self.max_message_size:
            raise ProtocolViolation(CLOSE_TOO_BIG, "signal message too large")
        try:
            if isinstance(data, bytes):
                self.use_json = False
                return rtc.SignalRequest.FromString(data)
            if isinstance(text, str):
                self.use_json = True
                return json_format.Parse(text, rtc.SignalRequest(), ignore_unknown_fields=True)
        except (DecodeError, json_format.ParseError, json.JSONDecodeError, ValueError):
            raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, "malformed SignalRequest") from None
        raise ProtocolViolation(CLOSE_UNSUPPORTED, "empty message")

    async def run(self, participant: Participant, on_ready: Callable[[], Awaitable[None]]) -> None:
        """Serve the session until the client leaves, the socket closes, or a violation."""
        self.participant = participant
        participant.on_close = self.send_close
        writer = asyncio.ensure_future(self._writer())
        close_code, close_reason = CLOSE_NORMAL, ""
        try:
            try:
                await on_ready()
            except (RoomFullError, RoomClosedError) as exc:  # lost a race with the limits
                log.info("participant %r: join refused: %s", participant.identity, exc)
                await participant.close(models.DisconnectReason.JOIN_FAILURE)
                raise ProtocolViolation(CLOSE_TRY_AGAIN, str(exc) or "room is full") from None
            except Exception as exc:
                log.error("participant %r: join failed: %s", participant.identity, exc)
                await participant.close(models.DisconnectReason.JOIN_FAILURE)
                raise ProtocolViolation(CLOSE_INTERNAL, "join failed") from None
            while not participant.closed:
                try:
                    message = await asyncio.wait_for(
                        self.websocket.receive(), timeout=PING_TIMEOUT + 5
                    )
                except TimeoutError:
                    close_code, close_reason = CLOSE_POLICY, "ping timeout"
                    self._close_code, self._close_reason = close_code, close_reason
                    await participant.close(models.DisconnectReason.SIGNAL_CLOSE)
                    break
                if message["type"] == "websocket.disconnect" or participant.closed:
                    break  # closed meanwhile (duplicate identity, transport failure, room close)
                self._last_received = time.monotonic()
                try:
                    request = self.decode(message)
                    await self.dispatch(participant, request)
                    # Requests already queued on the socket would otherwise run back to back
                    # without the loop seeing anything else: one request per iteration.
                    await asyncio.sleep(0)
                except ProtocolViolation:
                    raise
                except (SignalStateError, TrackRequestError, SdpError) as exc:
                    COUNTERS.signal_errors += 1
                    log.info("participant %r: %s", participant.identity, exc)
                except Exception as exc:  # a bad request must not end the service
                    COUNTERS.signal_errors += 1
                    log.warning(
                        "participant %r: request failed: %s",
                        participant.identity,
                        exc,
                        exc_info=True,
                    )
        except ProtocolViolation as violation:
            COUNTERS.signal_errors += 1
            close_code, close_reason = violation.code, violation.reason
            log.info("participant %r: %s", participant.identity, violation.reason)
        except WebSocketDisconnect:
            pass
        finally:
            if close_code != CLOSE_NORMAL and self._close_code == CLOSE_NORMAL:
                self._close_code, self._close_reason = close_code, close_reason
            if not participant.closed:
                reason = (
                    models.DisconnectReason.CLIENT_INITIATED
                    if close_code == CLOSE_NORMAL
                    else models.DisconnectReason.STATE_MISMATCH
                )
                await participant.close(reason)
            self.send_close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer, timeout=2)
            writer.cancel()
            if self.websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await self.websocket.close(close_code, close_reason)

    async def dispatch(self, participant: Participant, request: rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        if kind == "offer":
            await participant.handle_offer(request.offer)
        elif kind == "answer":
            await participant.handle_answer(request.answer)
        elif kind == "trickle":
            self._trickle(participant, request.trickle)
        elif kind == "add_track":
            try:
                participant.add_track(request.add_track)
            except TrackRequestError as exc:
                self.send(
                    signalling.request_response(
                        exc.reason, exc.message, add_track=request.add_track
                    )
                )
                raise
        elif kind == "mute":
            try:
                participant.set_track_muted(request.mute.sid, request.mute.muted)
            except TrackRequestError as exc:
                self.send(signalling.request_response(exc.reason, exc.message, mute=request.mute))
                raise
        elif kind == "subscription":
            participant.update_subscription(request.subscription)
        elif kind == "track_setting":
            participant.update_track_settings(request.track_setting)
        elif kind == "subscription_permission":
            try:
                participant.update_subscription_permission(request.subscription_permission)
            except TrackRequestError as exc:  # RequestResponse has no field for this request
                self.send(signalling.request_response(exc.reason, exc.message))
                raise
        elif kind == "leave":
            await participant.close(models.DisconnectReason.CLIENT_INITIATED)
        elif kind == "ping":
            self.send(rtc.SignalResponse(pong=int(time.time() * 1000)))
        elif kind == "ping_req":
            pong = rtc.Pong(
                last_ping_timestamp=request.ping_req.timestamp, timestamp=int(time.time() * 1000)
            )
            self.send(rtc.SignalResponse(pong_resp=pong))
        elif kind is None:
            raise SignalStateError("empty SignalRequest")
        else:
            # update_metadata, sync_state, simulate, data tracks...:
            # accepted and ignored, as a v0 server without those features may.
            log.debug("participant %r: ignoring %s", participant.identity, kind)

    def _trickle(self, participant: Participant, trickle: rtc.TrickleRequest) -> None:
        target = (
            participant.subscriber
            if trickle.target == rtc.SignalTarget.SUBSCRIBER
            else participant.publisher
        )
        if target is None:
            publisher = trickle.target == rtc.SignalTarget.PUBLISHER
            if publisher and participant.keep_early_candidate(trickle.candidateInit):
                return  # libwebrtc may trickle before its offer reaches us: kept for it
            self.send(
                signalling.request_response(
                    rtc.RequestResponse.Reason.NOT_FOUND,
                    "no peer connection for this trickle target yet",
                    trickle=trickle,
                )
            )
            raise SignalStateError("trickle before the peer connection exists")
        if trickle.candidateInit:
            target.add_remote_candidate(trickle.candidateInit)
