"""A bare `/rtc` signalling client for end-to-end tests: no WebRTC, every frame recorded.

`RawSignal.connect(sfu, identity, room)` opens the WebSocket with a token; `send(request,
json=...)` writes a `SignalRequest` as a binary protobuf frame or as a protojson text frame;
`next(kind)` waits (bounded) for the next `SignalResponse` of that kind. Every received frame is
kept as a `Frame` (arrival time, whether it was text, the decoded response, the raw text), so a
test can check how the server framed its answer, not only what it said.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import websockets
from google.protobuf import json_format
from livekit.protocol import rtc
from websockets.asyncio.client import ClientConnection

WAIT_S = 20.0


@dataclass(frozen=True)
class Frame:
    at: float  # time.monotonic() at arrival
    is_text: bool
    response: rtc.SignalResponse
    text: str | None  # the raw protojson when is_text

    @property
    def kind(self) -> str | None:
        return self.response.WhichOneof("message")


class RawSignal:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._read = 0  # frames[:_read] were handed out or skipped by next()

    @classmethod
    async def connect(
        cls, url: str, token: str, *, timeout_s: float = WAIT_S, **params: Any
    ) -> RawSignal:
        query = {"access_token": token, "protocol": "17", "sdk": "js", **params}
        ws = await websockets.connect(
            f"{url}/rtc?" + "&".join(f"{k}={v}" for k, v in query.items()),
            max_size=None,
            open_timeout=timeout_s,
        )
        return cls(ws)

    async def send(self, request: rtc.SignalRequest, *, json: bool = False) -> None:
        if json:
            await self.ws.send(json_format.MessageToJson(request, indent=None))
        else:
            await self.ws.send(request.SerializeToString())

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def _receive(self) -> Frame:
        data = await self.ws.recv()
        if isinstance(data, str):
            response = json_format.Parse(data, rtc.SignalResponse(), ignore_unknown_fields=True)
            frame = Frame(time.monotonic(), True, response, data)
        else:
            frame = Frame(time.monotonic(), False, rtc.SignalResponse.FromString(data), None)
        self.frames.append(frame)
        return frame

    async def next(self, kind: str, *, timeout_s: float = WAIT_S) -> Frame:
        """The next frame whose response is `kind`; frames of other kinds are skipped."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    while self._read < len(self.frames):
                        frame = self.frames[self._read]
                        self._read += 1
                        if frame.kind == kind:
                            return frame
                    await self._receive()
        except TimeoutError:
            seen = [f.kind for f in self.frames]
            raise TimeoutError(f"no {kind} in {timeout_s} s; received so far: {seen}") from None

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> RawSignal:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
