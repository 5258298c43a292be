"""Hostile participants against the real SFU: oversized track requests, too many tracks, a
replaced participant that keeps talking, publishers whose ICE never completes.

Each case speaks raw LiveKit signalling over a WebSocket (the helpers of test_sfu_robustness)
and checks the answer the client gets plus what the process holds afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

import httpx
import websockets
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection

from tests.harness.sfu import SfuInstance
from tests.integration.test_sfu_robustness import WAIT, connect_raw, metric, next_response

MAX_TRACKS_PER_PARTICIPANT = 16  # docs/limits.md: tracks_per_participant


async def scrape(sfu: SfuInstance) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(sfu.metrics_url)).text


def limit_hits(text: str, limit: str) -> float:
    for line in text.splitlines():
        if line.startswith("sfu_limit_exceeded_total{") and f'limit="{limit}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def joined_raw(sfu: SfuInstance, identity: str) -> ClientConnection:
    ws = await connect_raw(sfu, identity)
    first = rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]
    assert first.WhichOneof("message") == "join"
    return ws


async def test_huge_add_track_requests_are_refused_and_healthz_stays_fast(
    sfu: SfuInstance,
) -> None:
    ws = await joined_raw(sfu, "mallory")
    huge = rtc.SignalRequest(
        add_track=rtc.AddTrackRequest(
            cid="c",
            type=models.TrackType.VIDEO,
            layers=[models.VideoLayer()] * 3000,
            simulcast_codecs=[rtc.SimulcastCodec()] * 3000,
        )
    ).SerializeToString()
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(4):
            await ws.send(huge)
        start = time.perf_counter()
        health = await client.get(f"{sfu.http_url}/healthz")
        elapsed = time.perf_counter() - start
    assert health.status_code == 200
    assert elapsed < 0.5, f"/healthz took {elapsed:.3f} s"  # unbounded: about 4 s here
    for _ in range(4):
        refused = await next_response(ws, "request_response")
        assert refused.request_response.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED
        assert refused.request_response.add_track.cid == "c"
    assert limit_hits(await scrape(sfu), "track_layers") == 4
    await ws.close()
    sfu.assert_alive()


async def test_the_seventeenth_track_is_refused(sfu: SfuInstance) -> None:
    ws = await joined_raw(sfu, "mallory")
    for i in range(MAX_TRACKS_PER_PARTICIPANT + 1):
        request = rtc.AddTrackRequest(cid=f"c{i}", type=models.TrackType.AUDIO)
        await ws.send(rtc.SignalRequest(add_track=request).SerializeToString())
    for i in range(MAX_TRACKS_PER_PARTICIPANT):
        published = await next_response(ws, "track_published")
        assert published.track_published.cid == f"c{i}"
    refused = await next_response(ws, "request_response")
    assert refused.request_response.reason == rtc.RequestResponse.Reason.LIMIT_EXCEEDED
    assert refused.request_response.add_track.cid == f"c{MAX_TRACKS_PER_PARTICIPANT}"
    assert limit_hits(await scrape(sfu), "tracks_per_participant") == 1
    await ws.close()


async def dead_offer() -> str:
    """A real publisher offer (one audio m-line) whose peer is gone: its ICE never completes."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def closed_by_server(ws: ClientConnection, within: float = WAIT) -> list[rtc.SignalResponse]:
    """Every response until the server closes the socket; fails if it does not in time."""
    seen: list[rtc.SignalResponse] = []
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(within):
            while True:
                seen.append(rtc.SignalResponse.FromString(await ws.recv()))  # type: ignore[arg-type]
    return seen


async def test_a_replaced_participant_is_disconnected_and_publishes_nothing(
    sfu: SfuInstance,
) -> None:
    a = await joined_raw(sfu, "x")
    track = rtc.AddTrackRequest(cid="c", type=models.TrackType.AUDIO)
    await a.send(rtc.SignalRequest(add_track=track).SerializeToString())
    await next_response(a, "track_published")
    listener = await joined_raw(sfu, "listener")
    b = await joined_raw(sfu, "x")  # same identity
    offer = rtc.SessionDescription(type="offer", sdp=await dead_offer(), id=1)
    with contextlib.suppress(websockets.ConnectionClosed):
        await a.send(rtc.SignalRequest(offer=offer).SerializeToString())
    seen = await closed_by_server(a)
    leaves = [r.leave.reason for r in seen if r.WhichOneof("message") == "leave"]
    assert leaves == [models.DisconnectReason.DUPLICATE_IDENTITY]
    assert a.close_code == 1000
    assert not [r for r in seen if r.WhichOneof("message") == "answer"]
    text = await scrape(sfu)
    assert metric(text, "livekit_track_published_total") == 0
    assert metric(text, "livekit_track_subscribed_total") == 0
    await b.close()
    await listener.close()


async def test_publishers_whose_ice_never_completes_leak_no_sockets(sfu: SfuInstance) -> None:
    """No LeaveRequest: the publisher PC times out (20 s) and the participant closes itself."""

    def fds() -> int:
        return len(os.listdir(f"/proc/{sfu.pid}/fd"))

    sdp = await dead_offer()
    await asyncio.sleep(0.5)
    baseline = fds()
    sockets = [await joined_raw(sfu, f"ghost{i}") for i in range(8)]
    for ws in sockets:
        offer = rtc.SessionDescription(type="offer", sdp=sdp, id=1)
        await ws.send(rtc.SignalRequest(offer=offer).SerializeToString())
        await next_response(ws, "answer")
    assert fds() > baseline
    for ws in sockets:  # each is told why and disconnected, without asking to leave
        seen = await closed_by_server(ws, within=40.0)
        leaves = [r.leave.reason for r in seen if r.WhichOneof("message") == "leave"]
        assert leaves == [models.DisconnectReason.CONNECTION_TIMEOUT]
    deadline = time.monotonic() + WAIT
    while fds() > baseline + 2:
        assert time.monotonic() < deadline, f"fds {baseline} → {fds()}"
        await asyncio.sleep(0.2)
    text = await scrape(sfu)
    assert metric(text, "livekit_participant_total") == 0
    sfu.assert_alive()


class RawWebSocket:
    """A WebSocket client on a plain socket that reads only when told to: unlike a client
    library, it leaves the SFU's responses in the kernel until then."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, sfu: SfuInstance, path: str) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up quickly
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sfu.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        header = (
            struct.pack("!BB", 0x82, 0x80 | size)
            if size < 126
            else (struct.pack("!BBH", 0x82, 0x80 | 126, size))
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """(opcode, payload) of each frame the server sent, until it closes."""
        while True:
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(size)
            yield first & 0x0F, payload
            if first & 0x0F == 0x8:
                return


async def test_a_client_that_stops_reading_is_disconnected_once(sfu: SfuInstance) -> None:
    """Its own echoes (a TrackPublishedResponse per repeated AddTrackRequest) pile up unread."""
    token = sfu.token("deaf", "robust")
    ws = await RawWebSocket.connect(sfu, f"/rtc?access_token={token}&protocol=17&sdk=js")
    request = rtc.SignalRequest(
        add_track=rtc.AddTrackRequest(cid="c", name="n" * 256, type=models.TrackType.AUDIO)
    ).SerializeToString()
    sent = 0
    async with asyncio.timeout(60):
        # unread, until the SFU gives up on it (4 MiB or 4,096 responses queued)
        while limit_hits(await scrape(sfu), "signal_outbox") == 0:
            for _ in range(1000):
                await ws.send(request)
            sent += 1000
            assert sent < 100_000
            await asyncio.sleep(0.2)
    kinds: list[str | None] = []
    close: bytes = b""
    async with asyncio.timeout(WAIT):
        async for opcode, payload in ws.frames():
            if opcode == 0x2:
                kinds.append(rtc.SignalResponse.FromString(payload).WhichOneof("message"))
            elif opcode == 0x8:
                close = payload
    assert kinds[-1] == "leave"
    assert struct.unpack("!H", close[:2])[0] == 1008 and close[2:] == b"signal outbox full"
    assert limit_hits(await scrape(sfu), "signal_outbox") == 1
    assert sfu.log_tail(2000).count("signal outbox full; disconnecting") == 1
    ws.writer.close()
    sfu.assert_alive()
