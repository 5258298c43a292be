"""End to end against a real Synapse: OpenID tokens exchanged at both endpoints, token expiry,
and the MatrixRTC transport Synapse advertises (configured from ``well-known``'s output)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import yaml
from starlette.applications import Starlette

from auth_service.app import build_verifier, create_app
from auth_service.config import Settings
from auth_service.net import client_tls_context
from auth_service.tokens import legacy_room_alias, participant_identity, room_alias
from tests.harness.synapse import REPO_ROOT, RTC_SERVICE_URL, MatrixUser, Synapse

from .fakes import (
    API_KEY,
    API_SECRET,
    LIVEKIT_URL,
    RecordingRoomCreator,
    asgi_client,
    make_settings,
)

pytestmark = pytest.mark.slow  # starts Synapse

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
            "roomCreate": True,  # Synapse's server name is a full-access homeserver here
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
        "roomCreate": True,
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
    claims = decode(response)
    assert claims["sub"] == f"{users.bob.user_id}:"
    # Synapse's server name is not in make_settings' full-access list: no room creation.
    assert "roomCreate" not in claims["video"]


async def test_a_token_synapse_expired_is_refused_on_the_next_request(
    client: Any, synapse: Synapse, users: Users
) -> None:
    """Like upstream, each request asks the homeserver: no cache outlives an expiry."""
    token = synapse.openid_token(users.alice)
    body = {"room": ROOM, "openid_token": token, "device_id": "ALICEDEV"}
    decode(await client.post("/sfu/get", json=body))
    synapse.expire_openid_token(token["access_token"])
    assert_unauthorized(await client.post("/sfu/get", json=body))
    member = {"id": "m", "claimed_user_id": users.alice.user_id, "claimed_device_id": "ALICEDEV"}
    new_body = {"room_id": ROOM, "slot_id": "m.call#", "openid_token": token, "member": member}
    assert_unauthorized(await client.post("/get_token", json=new_body))


def test_synapse_advertises_the_auth_service_as_printed_by_well_known(
    synapse: Synapse, users: Users
) -> None:
    """The README's homeserver wiring, tried on the real Synapse (tests-review finding 8)."""
    printed = subprocess.run(
        [sys.executable, "-m", "auth_service", "well-known", "--service-url", RTC_SERVICE_URL],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # The second of the three blocks is what goes into homeserver.yaml.
    block = printed.split("\n\n")[1]
    homeserver_yaml = yaml.safe_load(block)  # its "#" lines are YAML comments
    assert set(homeserver_yaml) == {"experimental_features", "matrix_rtc"}
    running = synapse.config()
    assert running["matrix_rtc"] == homeserver_yaml["matrix_rtc"]
    for key, value in homeserver_yaml["experimental_features"].items():
        assert running["experimental_features"][key] == value
    response = synapse.rtc_transports(users.alice)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "rtc_transports": [{"type": "livekit", "livekit_service_url": RTC_SERVICE_URL}]
    }
    # Authenticated only, as Element Call calls it.
    unauthenticated = httpx.get(
        f"{synapse.client_url}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"
    )
    assert unauthenticated.status_code == 401


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
    app = create_app(
        settings, verifier=build_verifier(settings), room_creator=RecordingRoomCreator()
    )
    async with asgi_client(app) as http:
        token = synapse.openid_token(users.alice)
        response = await http.post("/sfu/get", json={"room": ROOM, "openid_token": token})
    assert response.status_code == status, response.text
