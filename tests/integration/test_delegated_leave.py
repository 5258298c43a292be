"""Delayed-leave delegation end to end: real Synapse (``max_event_delay_duration`` set), the
real SFU with webhooks to the real auth service process, Redis, and a LiveKit SDK participant in
a process of its own.

The client does what Element Call does: publishes its call membership
(``org.matrix.msc3401.call.member``), schedules the leave (the same state key emptied) as a
1-hour delayed event, and hands its ``delay_id`` over with ``/sfu/get``. Whether the client is
killed or leaves cleanly, and also after the auth service was killed and restarted mid-call,
the homeserver must empty the membership within 10 s of the SFU dropping the participant (the
SFU's own webhook, recorded by the test, says when that was).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web
from livekit import api

from tests.harness.auth_service import AuthProcess, running_redis
from tests.harness.sfu import REPO_ROOT, SfuInstance, free_tcp_port, running_sfu
from tests.harness.synapse import MatrixUser, Synapse
from tests.harness.synapse import synapse as synapse  # the session fixture
from tests.harness.tokens import new_api_key_pair

WAIT = 20.0
LEAVE_WITHIN_S = 10.0
MEMBER = "org.matrix.msc3401.call.member"


@contextlib.asynccontextmanager
async def hook_recorder(
    receiver: api.WebhookReceiver,
) -> AsyncIterator[tuple[str, list[tuple[float, str, str]]]]:
    """Records (arrival time, event, identity) of the SFU's verified webhooks."""
    seen: list[tuple[float, str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        event = receiver.receive(await request.text(), request.headers.get("Authorization", ""))
        seen.append((time.monotonic(), event.event, event.participant.identity))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", seen
    finally:
        await runner.cleanup()


class Call:
    """One Matrix room with a call member who delegates their delayed leave."""

    def __init__(self, synapse: Synapse, user: MatrixUser) -> None:
        self.synapse = synapse
        self.user = user
        self.http = httpx.Client(
            base_url=synapse.client_url,
            headers={"Authorization": f"Bearer {user.access_token}"},
            timeout=WAIT,
        )
        response = self.http.post("/_matrix/client/v3/createRoom", json={"preset": "private_chat"})
        assert response.status_code == 200, response.text
        self.room_id = response.json()["room_id"]
        self.state_key = f"_{user.user_id}_{user.device_id}_m.call"

    def _state_path(self) -> str:
        return (
            f"/_matrix/client/v3/rooms/{quote(self.room_id)}/state/{MEMBER}/"
            f"{quote(self.state_key, safe='')}"
        )

    def join(self) -> str:
        """Publish the membership and schedule its emptying in 1 h; the delay_id."""
        content = {
            "application": "m.call",
            "call_id": "",
            "scope": "m.room",
            "device_id": self.user.device_id,
            "expires": 14_400_000,
            "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
            "foci_preferred": [],
        }
        assert self.http.put(self._state_path(), json=content).status_code == 200
        delayed = self.http.put(
            self._state_path(), params={"org.matrix.msc4140.delay": 3_600_000}, json={}
        )
        assert delayed.status_code == 200, delayed.text
        return str(delayed.json()["delay_id"])

    def membership(self) -> dict[str, Any]:
        response = self.http.get(self._state_path())
        assert response.status_code == 200, response.text
        return dict(response.json())


def sfu_token(auth: AuthProcess, synapse: Synapse, call: Call, delay_id: str) -> str:
    response = httpx.post(
        f"{auth.url}/sfu/get",
        json={
            "room": call.room_id,
            "openid_token": synapse.openid_token(call.user),
            "device_id": call.user.device_id,
            "delay_id": delay_id,
            "delay_timeout": 3_600_000,
            "delay_cs_api_url": synapse.client_url,
        },
        timeout=WAIT,
    )
    assert response.status_code == 200, f"{response.text}\n{auth.log_tail()}"
    return str(response.json()["jwt"])


@contextlib.contextmanager
def participant(url: str, token: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.lk_participant", url, token],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "connected"
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)


async def until(condition: Any, timeout: float = WAIT, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def dropped_at(seen: list[tuple[float, str, str]], identity: str) -> float | None:
    for at, name, who in seen:
        if who == identity and name in ("participant_left", "participant_connection_aborted"):
            return at
    return None


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path, synapse: Synapse
) -> AsyncIterator[tuple[SfuInstance, AuthProcess, list[tuple[float, str, str]]]]:
    key, secret = new_api_key_pair()
    auth = AuthProcess({}, tmp_path / "auth.log")
    with running_redis(tmp_path / "redis") as redis_url:
        async with hook_recorder(api.WebhookReceiver(api.TokenVerifier(key, secret))) as (
            hook_url,
            seen,
        ):
            webhook = {"api_key": key, "urls": [f"{auth.url}/sfu_webhook", hook_url]}
            async with running_sfu(
                tmp_path / "sfu", api_key=key, api_secret=secret, extra_config={"webhook": webhook}
            ) as sfu:
                server = synapse.server_name
                auth.env.update(
                    {
                        "LIVEKIT_URL": sfu.url,
                        "LIVEKIT_KEY": key,
                        "LIVEKIT_SECRET": secret,
                        "LIVEKIT_FULL_ACCESS_HOMESERVERS": server,
                        "LIVEKIT_AUTH_HOMESERVER_URLS": f"{server}={synapse.client_url}",
                        "LIVEKIT_CS_API_URL_OVERRIDES": f"{server}={synapse.client_url}",
                        "LIVEKIT_REDIS_URL": redis_url,
                        "LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS": "true",
                        "LIVEKIT_LOG_LEVEL": "debug",
                    }
                )
                auth.start()
                try:
                    yield sfu, auth, seen
                finally:
                    auth.kill(signal.SIGTERM)


async def check_leave(
    call: Call, seen: list[tuple[float, str, str]], identity: str, auth: AuthProcess
) -> float:
    await until(lambda: dropped_at(seen, identity) is not None, what="the SFU dropping them")
    dropped = dropped_at(seen, identity)
    assert dropped is not None
    deadline = dropped + LEAVE_WITHIN_S
    while call.membership() != {}:
        assert time.monotonic() < deadline, f"membership not emptied\n{auth.log_tail()}"
        await asyncio.sleep(0.1)
    return time.monotonic() - dropped


@pytest.mark.parametrize("how", ["killed", "clean_leave", "auth_restarted"])
async def test_delegated_leave(tmp_path: Path, synapse: Synapse, how: str) -> None:
    user = synapse.create_user(f"deleg_{how}", f"DEV{how.upper().replace('_', '')}")
    call = Call(synapse, user)
    async with stack(tmp_path, synapse) as (sfu, auth, seen):
        delay_id = call.join()
        token = sfu_token(auth, synapse, call, delay_id)
        identity = f"{user.user_id}:{user.device_id}"
        with participant(sfu.url, token) as client:
            await until(lambda: any(n == "participant_joined" for _, n, _ in seen))
            if how == "auth_restarted":
                await asyncio.sleep(1.0)  # the job restarted the event once: stored as connected
                auth.kill()
                auth.start()
                await asyncio.sleep(1.0)
            assert call.membership() != {}
            if how == "clean_leave":
                client.send_signal(signal.SIGTERM)
                assert client.stdout is not None and client.stdout.readline().strip() == "left"
            else:
                os.kill(client.pid, signal.SIGKILL)
            took = await check_leave(call, seen, identity, auth)
        print(f"{how}: membership emptied {took:.2f} s after the SFU dropped the participant")
        sfu.assert_alive()
