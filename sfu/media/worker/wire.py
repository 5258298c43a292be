"""The control channel between the control process and one media worker.

Frames are a 4-byte big-endian length and a JSON object, on a Unix stream socket. A message
with ``rid`` is a request: the other side answers ``{"re": rid, "ok": result}`` or
``{"re": rid, "err": text, "type": name}``; every request has a timeout. Everything is bounded:
a frame by `MAX_FRAME`, what is waiting to be written by `MAX_BUFFERED` (past it the channel
closes: a worker that stops reading must not grow the control process, and is restarted),
pending requests by `MAX_PENDING`. Bytes (data-channel payloads) travel as base64 text.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: the largest frame either side accepts (an SDP with many m-lines is ~100 KiB)
MAX_FRAME = 1 << 20
#: bytes waiting in the writer before new messages are dropped
MAX_BUFFERED = 8 << 20
MAX_PENDING = 4096
REQUEST_TIMEOUT = 10.0
_LENGTH = struct.Struct("!I")

Message = dict[str, Any]


class ChannelClosed(ConnectionError):
    """The other side is gone (or the channel was closed)."""


class RemoteError(RuntimeError):
    """A request the other side refused; ``kind`` names its exception class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"a control message of {len(body)} bytes is over {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


class Channel:
    """One end of a control channel: send, request, and a read loop that hands every
    message that is not an answer to ``on_message``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_message: Callable[[Message], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_message = on_message
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    def send(self, message: Message) -> None:
        """Queue one message; raises ChannelClosed once closed."""
        if self.closed or self._writer.is_closing():
            raise ChannelClosed("the control channel is closed")
        if self._writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            # the other side stopped reading: end the channel (a worker is then restarted, a
            # control process that stopped reading makes its worker exit)
            log.error("control channel: %d bytes unread by the other side, closing", MAX_BUFFERED)
            self.close()
            raise ChannelClosed("the other side stopped reading")
        self._writer.write(encode(message))

    async def request(self, message: Message, wait_s: float = REQUEST_TIMEOUT) -> Any:
        """Send a request and wait for its answer (TimeoutError after ``wait_s`` seconds)."""
        if len(self._pending) >= MAX_PENDING:
            raise RemoteError("LimitExceeded", "too many control requests in flight")
        rid = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self.send({**message, "rid": rid})
            return await asyncio.wait_for(future, wait_s)
        finally:
            self._pending.pop(rid, None)

    def reply(self, rid: int, result: Any = None, error: BaseException | None = None) -> None:
        answer: Message = {"re": rid}
        if error is None:
            answer["ok"] = result
        else:
            answer["err"] = str(error)
            answer["type"] = type(error).__name__
        with contextlib.suppress(ChannelClosed):
            self.send(answer)

    async def run(self) -> None:
        """Read until EOF (or a bad frame); then fail what is pending and close."""
        try:
            while True:
                header = await self._reader.readexactly(_LENGTH.size)
                (length,) = _LENGTH.unpack(header)
                if length > MAX_FRAME:
                    log.error("control frame of %d bytes: closing the channel", length)
                    return
                message = json.loads(await self._reader.readexactly(length))
                if not isinstance(message, dict):
                    log.error("control frame is not an object: closing the channel")
                    return
                if "re" in message:
                    self._answer(message)
                    continue
                try:
                    self._on_message(message)
                except Exception:  # one bad message must not end the channel
                    log.exception("control message %r failed", message.get("op"))
        except (asyncio.IncompleteReadError, ConnectionError, json.JSONDecodeError):
            pass
        finally:
            self.close()

    def _answer(self, message: Message) -> None:
        future = self._pending.get(message["re"])
        if future is None or future.done():
            return
        if "err" in message:
            future.set_exception(RemoteError(str(message.get("type")), str(message["err"])))
        else:
            future.set_result(message.get("ok"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("the control channel closed"))
        self._pending.clear()
        self._writer.close()


async def open_channel(
    sock: Any, on_message: Callable[[Message], None]
) -> tuple[Channel, asyncio.Task[None]]:
    """A Channel on a connected Unix stream socket, and its running read loop."""
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME + 16)
    channel = Channel(reader, writer, on_message)
    return channel, asyncio.ensure_future(channel.run())
