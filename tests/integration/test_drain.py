"""/readyz and the SIGTERM drain, against the real SFU process.

On SIGTERM the node reports not ready, refuses joins with 503 and the draining message (on /rtc
and /rtc/validate), keeps the calls it has; when they end it exits at once (code 0), and when
drain_timeout passes first its participants get a LeaveRequest RECONNECT (SERVER_SHUTDOWN).
A second SIGTERM exits without waiting. /readyz also fails while the event loop is stalled
(the process stopped with SIGSTOP stands in for a loop blocked by work).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from livekit.protocol import models, rtc

from sfu.lifecycle import DRAINING_MESSAGE
from tests.harness.rawsignal import RawSignal
from tests.harness.sfu import SfuInstance, running_sfu

pytestmark = pytest.mark.slow

WAIT = 20.0


async def _status(sfu: SfuInstance, path: str, token: str = "") -> tuple[int, str]:
    params = {"access_token": token} if token else {}
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.get(f"{sfu.http_url}{path}", params=params)
    return response.status_code, response.text


async def _exit_code(sfu: SfuInstance, timeout_s: float) -> int:
    return await asyncio.wait_for(sfu.process.wait(), timeout_s)


async def _joined(sfu: SfuInstance, identity: str, room: str) -> RawSignal:
    client = await RawSignal.connect(sfu.url, sfu.token(identity, room))
    await client.next("join")
    return client


async def test_drain_waits_for_calls_then_asks_the_rest_to_reconnect(tmp_path: Path) -> None:
    async with running_sfu(
        tmp_path / "sfu", extra_config={"drain_timeout": 3}, expect_exit=True
    ) as sfu:
        assert await _status(sfu, "/readyz") == (200, "ready")
        alice = await _joined(sfu, "alice", "drain")
        started = time.monotonic()
        os.kill(sfu.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while (await _status(sfu, "/readyz"))[0] == 200:
            assert time.monotonic() < deadline, "still ready 5 s after SIGTERM"
            await asyncio.sleep(0.05)
        assert await _status(sfu, "/readyz") == (503, "not ready: draining")
        assert (await _status(sfu, "/healthz"))[0] == 200  # alive: not to be restarted
        assert await _status(sfu, "/rtc/validate", sfu.token("bob", "drain")) == (
            503,
            DRAINING_MESSAGE,
        )
        with pytest.raises(websockets.InvalidStatus) as refused:
            await RawSignal.connect(sfu.url, sfu.token("bob", "drain"))
        response = refused.value.response
        assert response.status_code == 503
        assert response.body is not None and response.body.decode() == DRAINING_MESSAGE
        # the call in progress still works: a ping is answered
        await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=42)))
        assert (await alice.next("pong_resp")).response.pong_resp.last_ping_timestamp == 42
        leave = (await alice.next("leave", timeout_s=10)).response.leave
        waited = time.monotonic() - started
        assert leave.action == rtc.LeaveRequest.Action.RECONNECT, leave
        assert leave.reason == models.DisconnectReason.SERVER_SHUTDOWN, leave
        assert 2.5 < waited < 8, waited  # drain_timeout 3 s
        assert await _exit_code(sfu, 10) == 0
        print(f"drain: LeaveRequest after {waited:.2f} s, exit 0")


@contextlib.asynccontextmanager
async def _sigterm_during_a_call(tmp_path: Path) -> AsyncIterator[tuple[SfuInstance, RawSignal]]:
    """An SFU (drain_timeout 120 s) with alice in a call, just sent SIGTERM."""
    async with running_sfu(
        tmp_path / "sfu", extra_config={"drain_timeout": 120}, expect_exit=True
    ) as sfu:
        alice = await _joined(sfu, "alice", "call")
        os.kill(sfu.pid, signal.SIGTERM)
        try:
            yield sfu, alice
        finally:
            await alice.close()


async def test_drain_ends_when_the_last_participant_leaves(tmp_path: Path) -> None:
    async with _sigterm_during_a_call(tmp_path) as (sfu, alice):
        await asyncio.sleep(1.0)
        assert sfu.process.returncode is None  # waiting for alice's call
        left = time.monotonic()
        await alice.send(rtc.SignalRequest(leave=rtc.LeaveRequest()))
        await alice.close()
        assert await _exit_code(sfu, 10) == 0
        print(f"drain: exited {time.monotonic() - left:.2f} s after the last participant left")


async def test_second_sigterm_exits_without_waiting(tmp_path: Path) -> None:
    async with _sigterm_during_a_call(tmp_path) as (sfu, _alice):
        await asyncio.sleep(0.5)
        os.kill(sfu.pid, signal.SIGTERM)
        code = await _exit_code(sfu, 10)
        assert code in (0, -signal.SIGTERM), code


def _read_to_close(sock: socket.socket) -> bytes:
    """The whole reply of a `Connection: close` request: head and body may come in two
    segments, so one recv is not enough."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_readyz_fails_while_the_event_loop_is_stalled(tmp_path: Path) -> None:
    async with running_sfu(tmp_path / "sfu") as sfu:
        assert await _status(sfu, "/readyz") == (200, "ready")
        os.kill(sfu.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)
            # the request waits in the kernel's backlog while the process is stopped
            sock = socket.create_connection(("127.0.0.1", sfu.port), timeout=WAIT)
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: sfu\r\nConnection: close\r\n\r\n")
        finally:
            os.kill(sfu.pid, signal.SIGCONT)
        with sock:
            reply = await asyncio.to_thread(_read_to_close, sock)
        head, _, body = reply.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 503"), reply
        assert body.startswith("not ready: event loop unresponsive"), body
        deadline = time.monotonic() + 5
        while (await _status(sfu, "/readyz"))[0] != 200:
            assert time.monotonic() < deadline, "not ready again 5 s after the stall"
            await asyncio.sleep(0.1)
