"""The control channel: frames, requests and their answers, timeouts, bounds, end of file."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from sfu.media.worker import wire
from sfu.media.worker.wire import Channel, ChannelClosed, Message, RemoteError, open_channel


async def pair(
    on_a: Any = None, on_b: Any = None
) -> tuple[Channel, Channel, asyncio.Task[None], asyncio.Task[None], list[Message], list[Message]]:
    got_a: list[Message] = []
    got_b: list[Message] = []
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a, run_a = await open_channel(left, on_a or got_a.append)
    b, run_b = await open_channel(right, on_b or got_b.append)
    return a, b, run_a, run_b, got_a, got_b


async def test_messages_arrive_in_order() -> None:
    a, b, run_a, run_b, _, got_b = await pair()
    for n in range(100):
        a.send({"op": "x", "n": n, "data": wire.b64(bytes([n]) * n)})
    for _ in range(100):
        if len(got_b) == 100:
            break
        await asyncio.sleep(0.01)
    assert [m["n"] for m in got_b] == list(range(100))
    assert wire.unb64(got_b[7]["data"]) == b"\x07" * 7
    a.close()
    await asyncio.wait_for(run_b, 2)
    assert b.closed
    run_a.cancel()


async def test_request_answer_error_and_timeout() -> None:
    b_holder: list[Channel] = []

    def answer(message: Message) -> None:
        channel = b_holder[0]
        if message["op"] == "add":
            channel.reply(message["rid"], message["x"] + 1)
        elif message["op"] == "fail":
            channel.reply(message["rid"], error=KeyError("nope"))
        # "silent": never answered

    a, b, run_a, run_b, _, _ = await pair(on_b=answer)
    b_holder.append(b)
    assert await a.request({"op": "add", "x": 41}) == 42
    with pytest.raises(RemoteError) as refused:
        await a.request({"op": "fail"})
    assert refused.value.kind == "KeyError"
    with pytest.raises(TimeoutError):
        await a.request({"op": "silent"}, wait_s=0.05)
    pending = asyncio.ensure_future(a.request({"op": "silent"}))
    await asyncio.sleep(0.01)
    b.close()  # the other side goes away: what is pending fails, and sending is refused
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(pending, 2)
    with pytest.raises(ChannelClosed):
        a.send({"op": "late"})
    for task in (run_a, run_b):
        await asyncio.wait_for(task, 2)


@pytest.mark.expect_log_errors(r"control frame of 1048577 bytes: closing the channel")
async def test_an_oversized_frame_closes_the_channel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[Message] = []
    channel, reader = await open_channel(right, got.append)
    left.sendall(struct.pack("!I", wire.MAX_FRAME + 1) + b"{}")
    await asyncio.wait_for(reader, 2)
    assert channel.closed and got == []
    left.close()


@pytest.mark.expect_log_errors(r"control frame is not an object")
async def test_a_frame_that_is_not_an_object_closes_the_channel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel, reader = await open_channel(right, lambda m: None)
    left.sendall(struct.pack("!I", 2) + b"[]")
    await asyncio.wait_for(reader, 2)
    assert channel.closed
    left.close()


def test_encode_refuses_an_oversized_message() -> None:
    with pytest.raises(ValueError):
        wire.encode({"sdp": "x" * (wire.MAX_FRAME + 1)})


@pytest.mark.expect_log_errors(r"control message 'boom' failed(.|\n)*handler bug")
async def test_a_bad_message_handler_does_not_end_the_channel() -> None:
    seen: list[Message] = []

    def handler(message: Message) -> None:
        seen.append(message)
        if message["op"] == "boom":
            raise RuntimeError("handler bug")

    a, b, run_a, run_b, _, _ = await pair(on_b=handler)
    a.send({"op": "boom"})
    a.send({"op": "fine"})
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert [m["op"] for m in seen] == ["boom", "fine"] and not b.closed
    a.close()
    await asyncio.wait_for(run_b, 2)
    run_a.cancel()


@pytest.mark.expect_log_errors(r"unread by the other side, closing")
async def test_a_peer_that_stops_reading_closes_the_channel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel, reader = await open_channel(right, lambda m: None)
    body = "x" * (wire.MAX_FRAME - 100)
    with pytest.raises(ChannelClosed):
        for _ in range(2 * wire.MAX_BUFFERED // wire.MAX_FRAME + 8):
            channel.send({"op": "flood", "body": body})
            await asyncio.sleep(0)
    assert channel.closed
    left.close()
    await asyncio.wait_for(reader, 2)
