"""Admission against the real SFU process: who may create a room, the session and room caps
answering 503 with a reason, concurrent joins, and config that reaches the wire.

Raw WebSocket clients (no media): each join still binds the subscriber PC's UDP port, which is
what the session cap protects.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import httpx
import pytest
import websockets
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection

from tests.harness.sfu import SfuInstance, free_tcp_port, running_sfu

WAIT = 20.0


async def connect(sfu: SfuInstance, token: str) -> ClientConnection:
    return await websockets.connect(
        f"{sfu.url}/rtc?access_token={token}&protocol=17", open_timeout=WAIT, max_size=None
    )


async def first(ws: ClientConnection, kind: str) -> rtc.SignalResponse:
    async with asyncio.timeout(WAIT):
        while True:
            response = rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]
            if response.WhichOneof("message") == kind:
                return response


async def refused(sfu: SfuInstance, token: str) -> tuple[int, str]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        await connect(sfu, token)
    response = caught.value.response
    return response.status_code, response.body.decode() if response.body else ""


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name) and (labels in line) and not line.startswith("#"):
            head = line.split(" ", 1)[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def scrape(sfu: SfuInstance) -> str:
    async with httpx.AsyncClient(timeout=WAIT) as client:
        response = await client.get(sfu.metrics_url)
        response.raise_for_status()
        return response.text


def padded(request: bytes, size: int) -> bytes:
    """`request` plus an unknown length-delimited field (number 1000) of `size` bytes."""
    out = bytearray(request)
    for value in ((1000 << 3) | 2, size):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + b"\x00" * size


async def close_all(sockets: list[ClientConnection]) -> None:
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def test_only_room_create_tokens_create_rooms(sfu: SfuInstance) -> None:
    restricted = sfu.token("mallory", "nobody-made-this", room_create=False)
    async with httpx.AsyncClient(base_url=sfu.http_url, timeout=WAIT) as http:
        validate = await http.get("/rtc/validate", params={"access_token": restricted})
        assert (validate.status_code, validate.text) == (404, "requested room does not exist")
        assert await refused(sfu, restricted) == (404, "requested room does not exist")
        # /rtc/validate with a token that could create the room says yes, and creates nothing
        creator = sfu.token("alice", "nobody-made-this")
        validate = await http.get("/rtc/validate", params={"access_token": creator})
        assert (validate.status_code, validate.text) == (200, "success")
    assert metric(await scrape(sfu), "livekit_room_total") == 0
    alice = await connect(sfu, creator)
    try:
        await first(alice, "join")
        assert metric(await scrape(sfu), "livekit_room_total") == 1
        # the room exists now: a restricted token joins it
        mallory = await connect(sfu, restricted)
        join = await first(mallory, "join")
        assert [p.identity for p in join.join.other_participants] == ["alice"]
        await mallory.close()
    finally:
        await alice.close()
    sfu.assert_alive()


async def test_the_session_past_the_derived_cap_gets_503(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> None:
    """20 UDP ports, 2 per session: 10 sessions; the 11th is told why, it does not hang."""
    key, secret = sfu_keys
    async with running_sfu(tmp_path / "sfu", api_key=key, api_secret=secret, rtc_ports=20) as sfu:
        start, end = sfu.rtc_port_range
        assert "limits.max_sessions 10, derived from" in sfu.log_tail()
        assert f"rtc.port_range {start}-{end}, 2 ports per session: 10" in sfu.log_tail()
        sockets = [await connect(sfu, sfu.token(f"u{i}", f"room-{i % 3}")) for i in range(10)]
        try:
            for ws in sockets:
                await first(ws, "join")
            message = "the server is at capacity: 10 sessions (limits.max_sessions)"
            assert await refused(sfu, sfu.token("u10", "room-0")) == (503, message)
            async with httpx.AsyncClient(base_url=sfu.http_url, timeout=WAIT) as http:
                validate = await http.get(
                    "/rtc/validate", params={"access_token": sfu.token("u10", "room-0")}
                )
            assert (validate.status_code, validate.text) == (503, message)
            text = await scrape(sfu)
            assert metric(text, "sfu_limit_exceeded_total", 'limit="max_sessions"') == 2
        finally:
            await close_all(sockets)
        # the slots come back when the sessions end
        async with asyncio.timeout(WAIT):
            while True:
                with contextlib.suppress(websockets.InvalidStatus):
                    late = await connect(sfu, sfu.token("u10", "room-0"))
                    break
                await asyncio.sleep(0.2)
        await first(late, "join")
        await late.close()
        sfu.assert_alive()


async def test_sessions_per_address_answer_503(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    key, secret = sfu_keys
    extra = {"limits": {"max_sessions_per_ip": 3}}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=extra
    ) as sfu:
        sockets = [await connect(sfu, sfu.token(f"u{i}", "r")) for i in range(3)]
        try:
            status, body = await refused(sfu, sfu.token("u3", "r"))
            assert status == 503 and "limits.max_sessions_per_ip" in body
        finally:
            await close_all(sockets)
        assert "limits.max_sessions_per_ip 3 reached" in sfu.log_tail()


async def test_fifty_concurrent_joins_fill_a_room_of_ten(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> None:
    key, secret = sfu_keys
    extra = {"room": {"max_participants": 10}}
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=extra, rtc_ports=200
    ) as sfu:
        sockets: list[ClientConnection] = []

        async def attempt(i: int) -> str:
            try:
                ws = await connect(sfu, sfu.token(f"u{i}", "small"))
            except websockets.InvalidStatus as exc:
                body = exc.response.body.decode() if exc.response.body else ""
                return f"{exc.response.status_code} {body}"
            sockets.append(ws)
            await first(ws, "join")
            return "joined"

        try:
            outcomes = await asyncio.gather(*(attempt(i) for i in range(50)))
            assert sorted(set(outcomes)) == ["503 room is full", "joined"]
            assert outcomes.count("joined") == 10
            text = await scrape(sfu)
            assert metric(text, "livekit_participant_total") == 10
            assert metric(text, "sfu_limit_exceeded_total", 'limit="max_participants"') == 40
        finally:
            await close_all(sockets)
        sfu.assert_alive()


async def test_three_concurrent_sockets_of_one_identity_leave_one_participant(
    sfu: SfuInstance,
) -> None:
    token = sfu.token("x", "dups")
    sockets: list[ClientConnection] = []

    async def attempt() -> str:
        try:
            ws = await connect(sfu, token)
        except websockets.InvalidStatus as exc:
            return str(exc.response.status_code)
        sockets.append(ws)
        return "open"

    try:
        outcomes = await asyncio.gather(attempt(), attempt(), attempt())
        assert set(outcomes) <= {"open", "503"} and "open" in outcomes
        async with asyncio.timeout(WAIT):  # the joins and replacements settle
            while metric(await scrape(sfu), "livekit_participant_total") != 1:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # and stay settled
        text = await scrape(sfu)
        assert metric(text, "livekit_participant_total") == 1
        assert metric(text, "livekit_room_total") == 1
        kicked = 0
        for ws in sockets:
            with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
                leave = await asyncio.wait_for(first(ws, "leave"), 1.0)
                assert leave.leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
                kicked += 1
        assert kicked == len(sockets) - 1
    finally:
        await close_all(sockets)


async def test_config_reaches_the_wire(tmp_path: Path, sfu_keys: tuple[str, str]) -> None:
    """rtc.ice_servers in the JoinResponse, a small limits.max_signal_message_size, logging.level
    warn (no INFO lines), and prometheus_port (serves /metrics there, not on the signal port)."""
    key, secret = sfu_keys
    prometheus_port = free_tcp_port()
    extra = {
        "rtc": {"ice_servers": ["stun:stun.example.org:3478", "turn:turn.example.org:3478"]},
        "limits": {"max_signal_message_size": 4096},
        "prometheus_port": prometheus_port,
    }
    async with running_sfu(
        tmp_path / "sfu", api_key=key, api_secret=secret, extra_config=extra, log_level="warn"
    ) as sfu:
        assert sfu.metrics_url == f"http://127.0.0.1:{prometheus_port}/metrics"
        async with httpx.AsyncClient(timeout=WAIT) as http:
            assert (await http.get(f"{sfu.http_url}/metrics")).status_code == 404
            scraped = await http.get(sfu.metrics_url)
            assert scraped.status_code == 200 and "livekit_room_total" in scraped.text
        ws = await connect(sfu, sfu.token("alice", "wire"))
        join = await first(ws, "join")
        assert [list(s.urls) for s in join.join.ice_servers] == [
            ["stun:stun.example.org:3478"],
            ["turn:turn.example.org:3478"],
        ]
        ping = rtc.SignalRequest(ping_req=rtc.Ping(timestamp=7)).SerializeToString()
        await ws.send(padded(ping, 3000))  # fits in 4096
        assert (await first(ws, "pong_resp")).pong_resp.last_ping_timestamp == 7
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(padded(ping, 5000))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(WAIT):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        sfu.assert_alive()
        log = sfu.log_tail()
        assert "INFO" not in log, log


async def test_the_session_cap_follows_the_descriptor_limit(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> None:
    """Under `ulimit -n 200` (soft = hard, so it cannot be raised): (200 - 64) // 5 = 27
    sessions, then 503, and the SFU keeps answering (no EMFILE)."""
    key, secret = sfu_keys
    command = ("bash", "-c", 'ulimit -n 200 && exec "$0" -m sfu --config "$1"', sys.executable)
    async with running_sfu(
        tmp_path / "sfu",
        api_key=key,
        api_secret=secret,
        rtc_ports=200,
        command=(*command, "{config}"),
    ) as sfu:
        assert "RLIMIT_NOFILE 200, less 64 kept in reserve" in sfu.log_tail()
        sockets = [await connect(sfu, sfu.token(f"u{i}", "fds")) for i in range(27)]
        try:
            for ws in sockets:
                await first(ws, "join")
            status, body = await refused(sfu, sfu.token("u27", "fds"))
            assert (status, body) == (
                503,
                "the server is at capacity: 27 sessions (limits.max_sessions)",
            )
            async with httpx.AsyncClient(timeout=WAIT) as http:
                assert (await http.get(f"{sfu.http_url}/healthz")).status_code == 200
        finally:
            await close_all(sockets)
        sfu.assert_alive()
