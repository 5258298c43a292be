"""End to end against a real Synapse: OpenID tokens exchanged at both endpoints."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from starlette.applications import Starlette

from auth_service.app import build_verifier, create_app
from auth_service.config import Settings
from auth_service.net import client_tls_context
from auth_service.tokens import legacy_room_alias, participant_identity, room_alias
from tests.harness.synapse import MatrixUser, Synapse

from .fakes import (
    API_KEY,
    API_SECRET,
    LIVEKIT_URL,
    RecordingRoomCreator,
    asgi_client,
    make_settings,
)

ROOM = "!callroom:example.org"


@dataclass(frozen=True)
class Users:
    alice: MatrixUser
    bob: MatrixUser


@pytest.fixture(scope="module")
def users(synapse: Synapse) -> Users:
    return Users(
        alice=synapse.create_user("alice_auth", "ALICEDEV"),
        bob=synapse.create_user("bob_auth", "BOBDEV"),
    )


def federation_settings(synapse: Synapse, **overrides: Any) -> Settings:
    """Discovery over TLS: the server name ``localhost:<port>`` names the TLS listener."""
    values: dict[str, Any] = {
        "full_access_homeservers": (synapse.server_name,),
        "allow_private_homeservers": True,
    }
    values.update(overrides)
    return make_settings(**values)


def federation_app(synapse: Synapse, rooms: RecordingRoomCreator | None = None) -> Starlette:
    settings = federation_settings(synapse)
    verifier = build_verifier(
        settings, tls_context=client_tls_context(verify=True, cafile=str(synapse.tls_cert))
    )
    return create_app(settings, verifier=verifier, room_creator=rooms or RecordingRoomCreator())


@pytest.fixture
async def client(synapse: Synapse) -> AsyncIterator[Any]:
    async with asgi_client(federation_app(synapse)) as http:
        yield http


def decode(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url"] == LIVEKIT_URL
    claims: dict[str, Any] = jwt.decode(body["jwt"], API_SECRET, algorithms=["HS256"])
    return claims


def assert_unauthorized(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {
        "errcode": "M_UNAUTHORIZED",
        "error": "The request could not be authorised.",
    }


async def test_sfu_get_with_a_real_openid_token(
    client: Any, synapse: Synapse, users: Users
) -> None:
    token = synapse.openid_token(users.alice)
    assert token["matrix_server_name"] == synapse.server_name
    before = int(time.time())
    claims = decode(
        await client.post(
            "/sfu/get", json={"room": ROOM, "openid_token": token, "device_id": "ALICEDEV"}
        )
    )
    after = int(time.time())
    assert before <= claims["nbf"] <= after
    assert claims == {
        "iss": API_KEY,
        "sub": f"{users.alice.user_id}:ALICEDEV",
        "nbf": claims["nbf"],
        "exp": claims["nbf"] + 3600,
        "video": {
            "roomJoin": True,
            "room": legacy_room_alias(ROOM),
            "canPublish": True,
            "canSubscribe": True,
            "canUpdateOwnMetadata": True,
        },
    }


async def test_get_token_with_a_real_openid_token(
    client: Any, synapse: Synapse, users: Users
) -> None:
    body = {
        "room_id": ROOM,
        "slot_id": "m.call#",
        "openid_token": synapse.openid_token(users.bob),
        "member": {
            "id": "member-bob-1",
            "claimed_user_id": users.bob.user_id,
            "claimed_device_id": "BOBDEV",
        },
    }
    claims = decode(await client.post("/get_token", json=body))
    assert set(claims) == {"iss", "sub", "nbf", "exp", "video"}
    assert claims["iss"] == API_KEY
    assert claims["sub"] == participant_identity(users.bob.user_id, "BOBDEV", "member-bob-1")
    assert claims["exp"] - claims["nbf"] == 3600
    assert claims["video"] == {
        "roomJoin": True,
        "room": room_alias(ROOM, "m.call#"),
        "canPublish": True,
        "canSubscribe": True,
        "canUpdateOwnMetadata": True,
    }


async def test_full_access_homeserver_gets_its_room_created(synapse: Synapse, users: Users) -> None:
    rooms = RecordingRoomCreator()
    async with asgi_client(federation_app(synapse, rooms)) as http:
        token = synapse.openid_token(users.alice)
        claims = decode(await http.post("/sfu/get", json={"room": ROOM, "openid_token": token}))
    assert [request.name for request in rooms.requests] == [claims["video"]["room"]]


async def test_a_token_of_user_a_presented_as_user_b_is_refused(
    client: Any, synapse: Synapse, users: Users
) -> None:
    body = {
        "room_id": ROOM,
        "slot_id": "m.call#",
        "openid_token": synapse.openid_token(users.alice),
        "member": {
            "id": "member-x",
            "claimed_user_id": users.bob.user_id,
            "claimed_device_id": "BOBDEV",
        },
    }
    assert_unauthorized(await client.post("/get_token", json=body))
    # On the legacy endpoint the identity always comes from the token, never from the body.
    claims = decode(
        await client.post(
            "/sfu/get",
            json={
                "room": ROOM,
                "openid_token": synapse.openid_token(users.alice),
                "device_id": "BOBDEV",
            },
        )
    )
    assert claims["sub"].startswith(users.alice.user_id + ":")


@pytest.mark.parametrize("path", ["/sfu/get", "/get_token"])
async def test_expired_and_garbage_tokens_are_refused_quickly(
    client: Any, synapse: Synapse, users: Users, path: str
) -> None:
    expired = synapse.openid_token(users.alice)
    synapse.expire_openid_token(expired["access_token"])
    garbage = {**expired, "access_token": "syt_garbage_0123456789"}
    for token in (expired, garbage):
        if path == "/sfu/get":
            body: dict[str, Any] = {"room": ROOM, "openid_token": token}
        else:
            body = {
                "room_id": ROOM,
                "slot_id": "m.call#",
                "openid_token": token,
                "member": {
                    "id": "m",
                    "claimed_user_id": users.alice.user_id,
                    "claimed_device_id": "ALICEDEV",
                },
            }
        started = time.monotonic()
        assert_unauthorized(await client.post(path, json=body))
        assert time.monotonic() - started < 3.0


async def test_a_token_claimed_for_another_server_name_is_refused(
    synapse: Synapse, users: Users
) -> None:
    # Synapse answers for "evil.test" via the override, but its user is not of that server.
    settings = make_settings(homeserver_urls={"evil.test": synapse.client_url})
    app = create_app(settings, verifier=build_verifier(settings))
    token = {**synapse.openid_token(users.alice), "matrix_server_name": "evil.test"}
    async with asgi_client(app) as http:
        assert_unauthorized(await http.post("/sfu/get", json={"room": ROOM, "openid_token": token}))


async def test_plain_http_override_reaches_synapse(synapse: Synapse, users: Users) -> None:
    settings = make_settings(homeserver_urls={synapse.server_name: synapse.client_url})
    app = create_app(settings, verifier=build_verifier(settings))
    async with asgi_client(app) as http:
        token = synapse.openid_token(users.bob)
        response = await http.post("/sfu/get", json={"room": ROOM, "openid_token": token})
    assert decode(response)["sub"] == f"{users.bob.user_id}:"


async def test_loopback_homeserver_is_refused_by_default(synapse: Synapse, users: Users) -> None:
    settings = federation_settings(synapse, allow_private_homeservers=False)
    verifier = build_verifier(
        settings, tls_context=client_tls_context(verify=True, cafile=str(synapse.tls_cert))
    )
    async with asgi_client(create_app(settings, verifier=verifier)) as http:
        token = synapse.openid_token(users.alice)
        assert_unauthorized(await http.post("/sfu/get", json={"room": ROOM, "openid_token": token}))


@pytest.mark.parametrize(("skip_verify", "status"), [(True, 200), (False, 401)])
async def test_skip_verify_tls(
    synapse: Synapse, users: Users, skip_verify: bool, status: int
) -> None:
    """A self-signed homeserver works only with LIVEKIT_INSECURE_SKIP_VERIFY_TLS."""
    settings = federation_settings(synapse, skip_verify_tls=skip_verify)
    async with asgi_client(create_app(settings, verifier=build_verifier(settings))) as http:
        token = synapse.openid_token(users.alice)
        response = await http.post("/sfu/get", json={"room": ROOM, "openid_token": token})
    assert response.status_code == status, response.text
