"""The auth service and the SFU together: tokens minted for real Synapse users, used on the SFU.

A full-access user's token (``roomCreate``) creates the room on join; a restricted user (a
homeserver not in ``LIVEKIT_FULL_ACCESS_HOMESERVERS``) gets a token too, but the SFU refuses it
with 404 for a room nobody created, and admits it into a room that exists. The SFU runs with
``room.auto_create: false`` (its default), so room creation depends on the token alone.

Raw WebSocket signalling clients, no media.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from livekit.protocol import rtc
from websockets.asyncio.client import ClientConnection

from auth_service.app import build_verifier, create_app
from auth_service.net import client_tls_context
from tests.auth_service.fakes import make_settings
from tests.harness.sfu import SfuInstance, running_sfu
from tests.harness.synapse import MatrixUser, Synapse
from tests.harness.synapse import synapse as synapse  # the session fixture

WAIT = 20.0


def auth_app(sfu: SfuInstance, synapse: Synapse, *, full_access: bool) -> Any:
    """The auth service for ``sfu``, verifying against ``synapse`` over TLS."""
    settings = make_settings(
        livekit_url=sfu.url,
        api_key=sfu.api_key,
        api_secret=sfu.api_secret,
        full_access_homeservers=(synapse.server_name if full_access else "elsewhere.example",),
        allow_private_homeservers=True,
    )
    verifier = build_verifier(
        settings, tls_context=client_tls_context(verify=True, cafile=str(synapse.tls_cert))
    )
    return create_app(settings, verifier=verifier)


async def token_for(app: Any, synapse: Synapse, user: MatrixUser, matrix_room: str) -> str:
    """``POST /sfu/get`` with a fresh OpenID token of ``user``; the JWT it answers."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as http:
        response = await http.post(
            "/sfu/get",
            json={
                "room": matrix_room,
                "openid_token": synapse.openid_token(user),
                "device_id": user.device_id,
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["jwt"])


async def connect(sfu: SfuInstance, token: str) -> ClientConnection:
    return await websockets.connect(
        f"{sfu.url}/rtc?access_token={token}&protocol=17", open_timeout=WAIT, max_size=None
    )


async def joined(ws: ClientConnection) -> rtc.JoinResponse:
    async with asyncio.timeout(WAIT):
        while True:
            response = rtc.SignalResponse.FromString(await ws.recv())  # type: ignore[arg-type]
            if response.WhichOneof("message") == "join":
                return response.join


async def rooms_created(sfu: SfuInstance) -> float:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        text = (await http.get(sfu.metrics_url)).text
    for line in text.splitlines():
        if line.startswith("livekit_room_total"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def users(synapse: Synapse) -> tuple[MatrixUser, MatrixUser]:
    return synapse.create_user("alice_e2e", "ALICEE2E"), synapse.create_user("bob_e2e", "BOBE2E")


async def test_auth_service_tokens_on_the_sfu(
    tmp_path: Path, synapse: Synapse, users: tuple[MatrixUser, MatrixUser]
) -> None:
    alice, bob = users
    async with running_sfu(
        tmp_path / "sfu", extra_config={"room": {"auto_create": False, "empty_timeout": 300}}
    ) as sfu:
        full = auth_app(sfu, synapse, full_access=True)
        restricted = auth_app(sfu, synapse, full_access=False)

        # A restricted user cannot start a call in a room nobody created.
        lonely = await token_for(restricted, synapse, bob, "!nobody:example.org")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(sfu, lonely)
        response = refused.value.response
        assert response.status_code == 404
        assert response.body is not None
        assert response.body.decode() == "requested room does not exist"
        assert await rooms_created(sfu) == 0

        # A full-access user's token creates the room on join...
        alice_ws = await connect(sfu, await token_for(full, synapse, alice, "!call:example.org"))
        try:
            alice_join = await joined(alice_ws)
            assert alice_join.participant.identity == f"{alice.user_id}:{alice.device_id}"
            assert await rooms_created(sfu) == 1
            # ...which the restricted user may then join.
            bob_token = await token_for(restricted, synapse, bob, "!call:example.org")
            bob_ws = await connect(sfu, bob_token)
            try:
                bob_join = await joined(bob_ws)
                assert bob_join.room.name == alice_join.room.name
                assert [p.identity for p in bob_join.other_participants] == [
                    f"{alice.user_id}:{alice.device_id}"
                ]
            finally:
                await bob_ws.close()
        finally:
            await alice_ws.close()
        sfu.assert_alive()


async def test_a_full_access_request_creates_the_room_a_restricted_user_then_joins(
    tmp_path: Path, synapse: Synapse, users: tuple[MatrixUser, MatrixUser]
) -> None:
    """The auth service's CreateRoom (RoomService over Twirp) makes the room exist before
    anyone connects: a restricted user may be the first one in it."""
    alice, bob = users
    async with running_sfu(
        tmp_path / "sfu", extra_config={"room": {"auto_create": False, "empty_timeout": 300}}
    ) as sfu:
        full = auth_app(sfu, synapse, full_access=True)
        restricted = auth_app(sfu, synapse, full_access=False)
        await token_for(full, synapse, alice, "!first:example.org")  # never used to connect
        assert await rooms_created(sfu) == 1
        bob_ws = await connect(sfu, await token_for(restricted, synapse, bob, "!first:example.org"))
        try:
            bob_join = await joined(bob_ws)
            assert bob_join.other_participants == []
            assert bob_join.participant.identity == f"{bob.user_id}:{bob.device_id}"
        finally:
            await bob_ws.close()
        # another room nobody asked for stays closed to the restricted user
        with pytest.raises(websockets.InvalidStatus) as refused:
            await connect(sfu, await token_for(restricted, synapse, bob, "!other:example.org"))
        assert refused.value.response.status_code == 404
        assert await rooms_created(sfu) == 1
        sfu.assert_alive()
