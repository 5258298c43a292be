"""LiveKit signalling for one load-test participant: tokens, the `/rtc` WebSocket, pings.

`SignalClient.connect()` opens `/rtc?access_token=…&protocol=17` and waits (bounded) for the
`JoinResponse`; every later `SignalResponse` goes to the `on_message` callback in arrival order.
`ping_req` goes out every `ping_interval`. Tokens are minted locally (HS256, LiveKit claims) from
an API key/secret, or fetched from a token endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

__all__ = ["PROTOCOL", "SignalClient", "SignalError", "TokenSource"]

PROTOCOL = 17
CONNECT_TIMEOUT_S = 15.0
JOIN_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 3.0
TOKEN_TTL_S = 6 * 3600
MAX_MESSAGE = 8 * 1024 * 1024


class SignalError(Exception):
    """Joining failed: no socket, no JoinResponse in time, or the server refused."""


class TokenSource:
    """Access tokens: minted from `api_key`/`api_secret`, or fetched from `token_url`."""

    def __init__(
        self,
        api_key: str | None = None,
        api_secret: str | None = None,
        token_url: str | None = None,
    ) -> None:
        if not (api_key and api_secret) and not token_url:
            raise ValueError("need api_key and api_secret, or token_url")
        self.api_key, self.api_secret, self.token_url = api_key, api_secret, token_url

    def mint(self, identity: str, room: str, *, publish: bool, create: bool = True) -> str:
        """A token for `room`. With `create` (the load test's own rooms: whoever comes first
        creates it) it carries roomCreate: an SFU with room.auto_create off (this SFU's
        default) creates rooms only for such tokens."""
        assert self.api_key is not None and self.api_secret is not None
        now = int(time.time())
        claims = {
            "iss": self.api_key,
            "sub": identity,
            "name": identity,
            "nbf": now - 10,
            "exp": now + TOKEN_TTL_S,
            "video": {
                "room": room,
                "roomJoin": True,
                "canPublish": publish,
                "canSubscribe": True,
                "canPublishData": publish,
                "roomCreate": create,
            },
        }
        return jwt.encode(claims, self.api_secret, algorithm="HS256")

    async def token(self, identity: str, room: str, *, publish: bool) -> str:
        if self.api_key and self.api_secret:
            return self.mint(identity, room, publish=publish)
        assert self.token_url is not None
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(self.token_url, params={"identity": identity, "room": room})
            response.raise_for_status()
            body: dict[str, Any] = response.json()
        token = body.get("token") or body.get("jwt") or body.get("accessToken")
        if not isinstance(token, str):
            raise SignalError(f"{self.token_url} returned no token")
        return token


OnMessage = Callable[[rtc.SignalResponse], Awaitable[None]]


class SignalClient:
    """One participant's signalling WebSocket."""

    def __init__(self, url: str, token: str, *, auto_subscribe: bool, on_message: OnMessage):
        self.url = url.rstrip("/")
        self.token = token
        self.auto_subscribe = auto_subscribe
        self.on_message = on_message
        self.join: rtc.JoinResponse | None = None
        self.closed_reason: str | None = None
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> rtc.JoinResponse:
        query = (
            f"access_token={self.token}&protocol={PROTOCOL}&sdk=python&version=loadtest"
            f"&auto_subscribe={int(self.auto_subscribe)}&adaptive_stream=1"
        )
        try:
            self._ws = await connect(
                f"{self.url}/rtc?{query}",
                max_size=MAX_MESSAGE,
                open_timeout=CONNECT_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
            )
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                while True:
                    message = await self._ws.recv()
                    if isinstance(message, bytes):
                        break
            first = rtc.SignalResponse.FromString(message)
        except InvalidStatus as exc:  # refused: the server's reason is in the body
            await self.close()
            reason = (
                exc.response.body.decode("utf-8", "replace").strip()[:200]
                if exc.response.body
                else ""
            )
            raise SignalError(
                f"join refused: HTTP {exc.response.status_code}" + (f": {reason}" if reason else "")
            ) from exc
        except Exception as exc:
            await self.close()
            raise SignalError(f"join failed: {type(exc).__name__}: {exc}") from exc
        if first.WhichOneof("message") != "join":
            await self.close()
            raise SignalError(f"first message was {first.WhichOneof('message')}, not join")
        self.join = first.join
        self._tasks.append(asyncio.create_task(self._reader()))
        self._tasks.append(asyncio.create_task(self._pinger(float(first.join.ping_interval or 5))))
        return first.join

    async def _reader(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    await self.on_message(rtc.SignalResponse.FromString(message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.closed_reason = f"{type(exc).__name__}: {exc}"
        else:
            self.closed_reason = self.closed_reason or "closed by the server"

    async def _pinger(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            ping = rtc.Ping(timestamp=int(time.time() * 1000), rtt=0)
            await self.send(rtc.SignalRequest(ping_req=ping))

    async def send(self, request: rtc.SignalRequest) -> None:
        if self._ws is None:
            return
        with contextlib.suppress(Exception):
            await self._ws.send(request.SerializeToString())

    async def close(self) -> None:
        if self._ws is not None:
            leave = rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.send(rtc.SignalRequest(leave=leave)), CLOSE_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), CLOSE_TIMEOUT_S)
            self._ws = None
