"""Cheap LiveKit-protocol subscribers for benchmarks: join, answer offers, count RTP, decode nothing.

A `CountingSubscriber` speaks just enough of LiveKit's v0 client signalling to receive media: it
opens ``/rtc?access_token=…&protocol=17&auto_subscribe=1`` (binary protobuf `SignalRequest` /
`SignalResponse`), reads the `JoinResponse`, sends `ping_req` every `ping_interval` seconds and
answers every subscriber `offer` with aiortc (`setRemoteDescription` → `createAnswer` →
`setLocalDescription`, echoing the offer's `id`). It never publishes, so it has no publisher PC.

aiortc is kept away from the media: every `RTCDtlsTransport` of the peer connection gets its
instance method `_handle_rtp_data` replaced by a coroutine that only counts the decrypted packet
and tracks its sequence number per SSRC (for a loss estimate). Nothing is parsed past the fixed
RTP header, nothing reaches aiortc's jitter buffer or decoder. RTCP still goes to aiortc.

Run as a worker process (``python benchmarks/lk_subscriber.py``), it reads one JSON line on stdin
(``{"url", "subscribers": [{"identity", "token"}], "max_seconds"}``), joins them all, then answers
``stats`` lines with one JSON line of totals and exits on ``stop``, on end of input, on SIGTERM or
after ``max_seconds``. Every wait is bounded; ICE uses 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection, connect

log = logging.getLogger("lk_subscriber")

TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def keep_transport_cc(offer: str, answer: str) -> str:
    """The answer with the offer's transport-cc extmap kept on every audio/video m-line, as a
    browser's answer keeps it (aiortc drops it): the SFU then stamps every copy, as it does for
    real clients. aiortc ignores the extension and sends no feedback."""
    line = next(
        (x for x in offer.splitlines() if x.startswith("a=extmap:") and TRANSPORT_CC in x), None
    )
    if line is None:
        return answer
    out = []
    media = False
    for x in answer.split("\r\n"):
        out.append(x)
        if x.startswith("m="):
            media = x.startswith(("m=audio", "m=video"))
        elif media and x.startswith("a=mid:"):
            out.append(line)
    return "\r\n".join(out)


PROTOCOL = 17
CONNECT_TIMEOUT_S = 20.0
NEGOTIATION_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 5.0
MAX_SIGNAL_MESSAGE = 4 * 1024 * 1024
JOIN_CONCURRENCY = 5
GAP_LOG = 4


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = False) -> list[str]:
    """aioice gathers host candidates on these addresses: keep every packet on loopback."""
    return ["127.0.0.1"]


aioice.ice.get_host_addresses = _loopback_only


@dataclass(slots=True)
class StreamCount:
    """One received SSRC: packets counted and the extended highest sequence number seen."""

    kind: str
    payload_type: int
    base: int
    highest: int
    first_ms: int
    received: int = 1
    gaps: int = 0
    #: the first few sequence gaps: (packets received before it, packets missing, ms into stream)
    gap_log: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return self.highest - self.base + 1


@dataclass
class CountingSubscriber:
    """One participant that subscribes to everything and counts what arrives."""

    url: str
    token: str
    identity: str
    packets: int = 0
    octets: int = 0
    offers: int = 0
    streams: dict[int, StreamCount] = field(default_factory=dict)
    kind_by_pt: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    joined: bool = False
    joined_event: asyncio.Event = field(default_factory=asyncio.Event)
    left: bool = False
    pc: RTCPeerConnection | None = None
    _ws: ClientConnection | None = None
    _ping_interval: float = 5.0

    # -- media ------------------------------------------------------------------------------------
    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        """Replaces RTCDtlsTransport._handle_rtp_data: count, track the sequence number, drop."""
        self.packets += 1
        self.octets += len(data)
        if len(data) < 12:
            return
        seq = (data[2] << 8) | data[3]
        ssrc = int.from_bytes(data[8:12], "big")
        stream = self.streams.get(ssrc)
        if stream is None:
            kind = self.kind_by_pt.get(data[1] & 0x7F, "?")
            self.streams[ssrc] = StreamCount(kind, data[1] & 0x7F, seq, seq, arrival_time_ms)
            return
        stream.received += 1
        delta = (seq - stream.highest) & 0xFFFF
        if delta < 0x8000:
            stream.highest += delta
            if delta > 1:
                stream.gaps += 1
                if len(stream.gap_log) < GAP_LOG:
                    elapsed = arrival_time_ms - stream.first_ms
                    stream.gap_log.append((stream.received - 1, delta - 1, elapsed))

    def _hook_transports(self) -> None:
        pc = self.pc
        if pc is None:
            return
        transports = {t.receiver.transport for t in pc.getTransceivers()}
        if pc.sctp is not None:
            transports.add(pc.sctp.transport)
        for dtls in transports:
            # aiortc looks the method up on the instance (RTCDtlsTransport._recv_next).
            dtls._handle_rtp_data = self._on_rtp  # type: ignore[method-assign]

    @property
    def connected(self) -> bool:
        return self.pc is not None and self.pc.connectionState == "connected"

    # -- signalling -------------------------------------------------------------------------------
    async def _send(self, request: rtc.SignalRequest) -> None:
        if self._ws is not None:
            await self._ws.send(request.SerializeToString())

    async def _pinger(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            ping = rtc.Ping(timestamp=int(time.time() * 1000), rtt=0)
            await self._send(rtc.SignalRequest(ping_req=ping))

    def _learn_payload_types(self, sdp: str) -> None:
        for line in sdp.splitlines():
            if line.startswith("m=audio ") or line.startswith("m=video "):
                kind = line[2:7]
                for pt in line.split()[3:]:
                    if pt.isdigit():
                        self.kind_by_pt[int(pt)] = kind

    async def _answer(self, offer: rtc.SessionDescription) -> None:
        if self.pc is None:
            self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc = self.pc
        self._learn_payload_types(offer.sdp)
        async with asyncio.timeout(NEGOTIATION_TIMEOUT_S):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            self._hook_transports()
            await pc.setLocalDescription(await pc.createAnswer())
            self._hook_transports()
        local = pc.localDescription
        sdp = keep_transport_cc(offer.sdp, local.sdp)
        answer = rtc.SessionDescription(type="answer", sdp=sdp, id=offer.id)
        await self._send(rtc.SignalRequest(answer=answer))
        self.offers += 1

    async def run(self) -> None:
        """Join and serve signalling until the server closes, a leave arrives, or cancellation."""
        query = f"access_token={self.token}&protocol={PROTOCOL}&auto_subscribe=1&sdk=python"
        pinger: asyncio.Task[None] | None = None
        try:
            async with connect(
                f"{self.url}/rtc?{query}",
                max_size=MAX_SIGNAL_MESSAGE,
                open_timeout=CONNECT_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
            ) as ws:
                self._ws = ws
                async for message in ws:
                    if isinstance(message, str):
                        continue  # we asked for binary protobuf
                    response = rtc.SignalResponse.FromString(message)
                    kind = response.WhichOneof("message")
                    if kind == "join":
                        self.joined = True
                        self.joined_event.set()
                        self._ping_interval = float(response.join.ping_interval or 5)
                        pinger = pinger or asyncio.create_task(self._pinger())
                    elif kind == "offer":
                        await self._answer(response.offer)
                    elif kind == "leave":
                        self.left = True
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported in the stats, never raised
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pinger

    async def close(self) -> None:
        """Say goodbye on the signalling socket, then close it and the peer connection."""
        with contextlib.suppress(Exception):
            leave = rtc.LeaveRequest(reason=models.DisconnectReason.CLIENT_INITIATED)
            await asyncio.wait_for(self._send(rtc.SignalRequest(leave=leave)), CLOSE_TIMEOUT_S)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), CLOSE_TIMEOUT_S)
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)


def totals(subscribers: list[CountingSubscriber]) -> dict[str, Any]:
    """Sums over all subscribers, as one JSON-able dict."""
    by_kind: dict[str, dict[str, int]] = {}
    for sub in subscribers:
        for stream in sub.streams.values():
            if stream.kind == "?":  # media can arrive before the offer that announces it
                stream.kind = sub.kind_by_pt.get(stream.payload_type, "?")
            k = by_kind.setdefault(
                stream.kind, {"streams": 0, "received": 0, "expected": 0, "gaps": 0}
            )
            k["streams"] += 1
            k["received"] += stream.received
            k["expected"] += stream.expected
            k["gaps"] += stream.gaps
    first = next((s for s in subscribers if s.streams), None)
    gap_examples = (
        {f"{st.kind}:{ssrc}": st.gap_log for ssrc, st in first.streams.items()} if first else {}
    )
    return {
        "subscribers": len(subscribers),
        "joined": sum(s.joined for s in subscribers),
        "connected": sum(s.connected for s in subscribers),
        "packets": sum(s.packets for s in subscribers),
        "octets": sum(s.octets for s in subscribers),
        "streams": sum(len(s.streams) for s in subscribers),
        "by_kind": by_kind,
        "gap_examples": gap_examples,
        "errors": [f"{s.identity}: {s.error}" for s in subscribers if s.error][:5],
        "cpu_s": sum(os.times()[:2]),
    }


# -- worker process ---------------------------------------------------------------------------------
async def _worker() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_SIGNAL_MESSAGE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    setup = json.loads(await asyncio.wait_for(reader.readline(), 60))
    url: str = setup["url"]
    max_seconds = float(setup.get("max_seconds", 600))
    subs = [CountingSubscriber(url, s["token"], s["identity"]) for s in setup["subscribers"]]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    gate = asyncio.Semaphore(JOIN_CONCURRENCY)

    async def join(sub: CountingSubscriber) -> None:
        async with gate:
            task = asyncio.create_task(sub.run())
            tasks.append(task)
            joined = asyncio.create_task(sub.joined_event.wait())
            await asyncio.wait(
                {task, joined}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            joined.cancel()

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def commands() -> None:
        while not stop.is_set():
            line = await reader.readline()
            if not line:  # the parent went away
                break
            command = line.decode().strip()
            if command == "stats":
                reply(totals(subs))
            elif command == "stop":
                break
        stop.set()

    tasks: list[asyncio.Task[None]] = []
    command_task = asyncio.create_task(commands())
    joiner = asyncio.create_task(asyncio.wait([asyncio.create_task(join(s)) for s in subs]))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    joiner.cancel()
    command_task.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(s.close() for s in subs), return_exceptions=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    reply({"stopped": True, **totals(subs)})


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker())
    else:
        uvloop.run(_worker())


if __name__ == "__main__":
    main()
