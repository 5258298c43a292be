"""The signal relay: a client's ``/rtc`` WebSocket on this node, piped to the room's node.

The relaying node opens a WebSocket of its own to the owner's ``/rtc`` (the address the owner
published in Redis), with the client's query string and token and a relay header
(`sfu.cluster.node.RELAY_HEADER`) that tells the owner the client's address and that the
session must not be relayed again. Only then does it accept the client, so an owner's refusal
(404, 503, 401 ...) reaches the client as the same HTTP status and text. After that each frame
is copied as it is, binary or text, both ways; the owner's ICE candidates go to the client
unchanged, so the media flow straight between the client and the owner.

When the owner's socket is lost without a close frame (the node died), the client gets a
``LeaveRequest`` with action RECONNECT in its own framing, and rejoins at once (a live node
places the room again). A close from the owner is passed on with its code and reason. At the
end of a drain (`Relays.shutdown`) the relayed clients get the same leave, with reason
SERVER_SHUTDOWN, and rejoin through another node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf import json_format
from livekit.protocol import models, rtc
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger(__name__)

#: seconds the owner has to answer the relay's WebSocket handshake
CONNECT_TIMEOUT_S = 3.0
CLOSE_NORMAL = 1000
CLOSE_INTERNAL = 1011


class OwnerUnreachable(Exception):
    """The owner's address did not take the relay's connection."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True)
class Denied:
    """The owner answered the handshake with an HTTP status instead of a WebSocket."""

    status: int
    text: str


async def open_upstream(
    address: str, query: str, headers: Mapping[str, str], max_size: int
) -> ClientConnection | Denied:
    """Connect to the owner's ``/rtc``; raises OwnerUnreachable."""
    url = f"ws://{address}/rtc" + (f"?{query}" if query else "")
    try:
        return await connect(
            url,
            additional_headers=dict(headers),
            open_timeout=CONNECT_TIMEOUT_S,
            max_size=max_size,
            compression=None,
            proxy=None,
            ping_interval=10,
            ping_timeout=20,
            user_agent_header=None,
        )
    except InvalidStatus as exc:
        body = exc.response.body or b""
        return Denied(exc.response.status_code, body.decode("utf-8", "replace"))
    except ConnectionRefusedError as exc:
        raise OwnerUnreachable(f"{address}: {exc}", refused=True) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise OwnerUnreachable(f"{address}: {exc!r}", refused=False) from None


class Relays:
    """The sessions this node relays: each one's stop signal."""

    def __init__(self) -> None:
        self._stops: set[asyncio.Event] = set()

    def __len__(self) -> int:
        return len(self._stops)

    def shutdown(self) -> None:
        """Ask every relayed client to rejoin elsewhere (this node is going away)."""
        for stop in self._stops:
            stop.set()


def _leave(reason: models.DisconnectReason, use_json: bool) -> bytes | str:
    leave = rtc.SignalResponse(
        leave=rtc.LeaveRequest(
            can_reconnect=True, reason=reason, action=rtc.LeaveRequest.Action.RECONNECT
        )
    )
    if use_json:
        return json_format.MessageToJson(leave, indent=None)
    return leave.SerializeToString()


async def deny(websocket: WebSocket, denied: Denied) -> None:
    await websocket.send_denial_response(PlainTextResponse(denied.text, denied.status))


async def pipe(websocket: WebSocket, upstream: ClientConnection, relays: Relays) -> None:
    """Copy frames both ways until either side ends (or `relays` shuts down); the client is
    accepted here."""
    await websocket.accept()
    use_json = False
    stop = asyncio.Event()
    relays._stops.add(stop)

    async def client_to_owner() -> None:
        nonlocal use_json
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                use_json = False
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                use_json = True
                await upstream.send(message["text"])

    async def owner_to_client() -> None:
        async for frame in upstream:
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)

    up = asyncio.ensure_future(client_to_owner())
    down = asyncio.ensure_future(owner_to_client())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait((up, down, stopped), return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            with contextlib.suppress(ConnectionClosed, WebSocketDisconnect, RuntimeError):
                task.result()
    finally:
        relays._stops.discard(stop)
        for task in (up, down, stopped):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if up not in done and websocket.application_state == WebSocketState.CONNECTED:
        received = None if stopped in done else upstream.protocol.close_rcvd
        if received is None:  # the owner vanished without a close, or this node stops
            why = "this node stops" if stopped in done else "the room's node dropped the session"
            log.info("relay: %s; asking the client to rejoin", why)
            reason = (
                models.DisconnectReason.SERVER_SHUTDOWN
                if stopped in done
                else models.DisconnectReason.SIGNAL_CLOSE
            )
            with contextlib.suppress(Exception):
                leave = _leave(reason, use_json)
                if isinstance(leave, str):
                    await websocket.send_text(leave)
                else:
                    await websocket.send_bytes(leave)
            code, reason_text = CLOSE_NORMAL, why
        else:
            code, reason_text = received.code, received.reason
            if code in (1005, 1006, 1015):  # never sent on the wire (RFC 6455 §7.4.1)
                code = CLOSE_NORMAL
        with contextlib.suppress(Exception):
            await websocket.close(code, reason_text)
    with contextlib.suppress(Exception):
        await upstream.close()
