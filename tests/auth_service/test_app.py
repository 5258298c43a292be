"""The HTTP contract: routes, methods, CORS, errors in upstream's order, limits, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth_service.app import CORS_HEADERS, MAX_BODY_BYTES, client_address, create_app
from auth_service.config import parse_networks
from auth_service.delegation import Delegations
from auth_service.matrix import FederationDiscovery, OpenIdVerifier
from auth_service.metrics import Metrics
from auth_service.net import client_tls_context
from auth_service.ratelimit import RateLimit
from auth_service.sfu_client import CreateRoomRequest
from auth_service.tokens import legacy_room_alias, participant_identity, room_alias
from tests.auth_service.delegation_fakes import FakeClock, FakeDeps

from .fakes import (
    API_KEY,
    API_SECRET,
    LIVEKIT_URL,
    FakeResolver,
    RecordingRoomCreator,
    StaticVerifier,
    asgi_client,
    make_settings,
)

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
REMOTE = "@carol:remote.example"
TOKENS = {"alice-token": ALICE, "bob-token": BOB, "carol-token": REMOTE}


def openid(token: str = "alice-token", server: str = "example.org") -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": server,
        "expires_in": 3600,
    }


def sfu_get_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "room": "!room:example.org",
        "openid_token": openid(),
        "device_id": "DEV",
    }
    body.update(fields)
    return body


def get_token_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "room_id": "!room:example.org",
        "slot_id": "m.call#",
        "openid_token": openid(),
        "member": {"id": "member-1", "claimed_user_id": ALICE, "claimed_device_id": "DEV"},
    }
    body.update(fields)
    return body


BODIES = {"/sfu/get": sfu_get_body, "/get_token": get_token_body}
ENDPOINTS = list(BODIES)


class Harness:
    """An app with a static verifier and a recording room creator."""

    def __init__(self, **setting_overrides: Any) -> None:
        self.verifier = StaticVerifier(dict(TOKENS))
        self.rooms = RecordingRoomCreator()
        self.metrics = Metrics()
        self.now = 1000.0
        self.deps = FakeDeps()
        self.delegations = Delegations(self.deps, clock=FakeClock())  # type: ignore[arg-type]
        self.app = create_app(
            make_settings(**setting_overrides),
            verifier=self.verifier,
            room_creator=self.rooms,
            delegations=self.delegations,
            metrics=self.metrics,
            clock=lambda: self.now,
            wall_clock=lambda: 1_700_000_000.5,
        )


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[Any]:
    async with asgi_client(harness.app) as http:
        yield http


def assert_cors(response: Any) -> None:
    for name, value in CORS_HEADERS.items():
        assert response.headers[name] == value


def assert_error(response: Any, status: int, errcode: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_cors(response)
    body: dict[str, Any] = response.json()
    assert body["errcode"] == errcode
    assert isinstance(body["error"], str)
    return body


def claims_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"url", "jwt"} and body["url"] == LIVEKIT_URL
    claims: dict[str, Any] = jwt.decode(
        body["jwt"],
        API_SECRET,
        algorithms=["HS256"],
        options={"verify_nbf": False, "verify_exp": False},
    )
    return claims


# --- successful exchanges --------------------------------------------------------------------


async def test_sfu_get_issues_a_legacy_token(client: Any, harness: Harness) -> None:
    claims = claims_of(await client.post("/sfu/get", json=sfu_get_body()))
    assert claims["sub"] == f"{ALICE}:DEV"
    assert claims["iss"] == API_KEY
    assert claims["nbf"] == 1_700_000_000 and claims["exp"] == 1_700_003_600
    assert claims["video"] == {
        "roomJoin": True,
        "room": legacy_room_alias("!room:example.org"),
        "roomCreate": True,  # alice's homeserver has full access
        "canPublish": True,
        "canSubscribe": True,
        "canUpdateOwnMetadata": True,
    }
    assert harness.verifier.calls == [("example.org", "alice-token")]


async def test_get_token_issues_a_hashed_identity(client: Any) -> None:
    claims = claims_of(await client.post("/get_token", json=get_token_body()))
    assert claims["sub"] == participant_identity(ALICE, "DEV", "member-1")
    assert claims["video"]["room"] == room_alias("!room:example.org", "m.call#")


async def test_both_endpoints_meet_in_one_room_for_the_legacy_slot(client: Any) -> None:
    legacy = claims_of(await client.post("/sfu/get", json=sfu_get_body()))
    new = claims_of(await client.post("/get_token", json=get_token_body(slot_id="m.call#ROOM")))
    assert legacy["video"]["room"] == new["video"]["room"]


async def test_missing_device_id_gives_a_trailing_colon(client: Any) -> None:
    body = sfu_get_body()
    del body["device_id"]
    assert claims_of(await client.post("/sfu/get", json=body))["sub"] == f"{ALICE}:"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_full_access_users_get_a_room_created(
    client: Any, harness: Harness, path: str
) -> None:
    claims = claims_of(await client.post(path, json=BODIES[path]()))
    assert claims["video"]["roomCreate"] is True
    assert harness.rooms.requests == [
        CreateRoomRequest(
            name=claims["video"]["room"],
            empty_timeout=300,
            departure_timeout=20,
            max_participants=0,
        )
    ]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_restricted_users_get_a_token_but_no_room(
    client: Any, harness: Harness, path: str
) -> None:
    body = BODIES[path](openid_token=openid("carol-token", "remote.example"))
    if path == "/get_token":
        body["member"]["claimed_user_id"] = REMOTE
    claims = claims_of(await client.post(path, json=body))
    assert claims["video"]["canPublish"] is True
    # Without roomCreate the SFU lets this user join only a room that already exists.
    assert claims["video"] == {
        "roomJoin": True,
        "room": claims["video"]["room"],
        "canPublish": True,
        "canSubscribe": True,
        "canUpdateOwnMetadata": True,
    }
    assert harness.rooms.requests == []


async def test_wildcard_alone_gives_everyone_full_access() -> None:
    harness = Harness(full_access_homeservers=("*",))
    body = sfu_get_body(openid_token=openid("carol-token", "remote.example"))
    async with asgi_client(harness.app) as http:
        claims = claims_of(await http.post("/sfu/get", json=body))
    assert claims["video"]["roomCreate"] is True
    assert len(harness.rooms.requests) == 1


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.expect_log_errors(r"unable to create room \S+ on the SFU: .*the SFU is down")
async def test_room_creation_failure_is_500(path: str) -> None:
    harness = Harness()
    harness.rooms.fail = True
    async with asgi_client(harness.app) as http:
        response = await http.post(path, json=BODIES[path]())
    body = assert_error(response, 500, "M_UNKNOWN")
    assert body["error"] == "Unable to create room on SFU"


# --- methods, CORS, routes -------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_options_is_an_empty_200_with_cors(client: Any, path: str) -> None:
    response = await client.options(path)
    assert response.status_code == 200 and response.content == b""
    assert_cors(response)
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH"])
async def test_wrong_methods_are_405_with_cors(
    client: Any, harness: Harness, path: str, method: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 405 and response.content == b""
    assert_cors(response)
    assert harness.verifier.calls == []


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_cors_headers_on_success_and_errors(client: Any, path: str) -> None:
    ok = await client.post(path, json=BODIES[path]())
    assert ok.status_code == 200
    assert_cors(ok)
    assert_cors(await client.post(path, content=b"{not json"))


async def test_healthz(client: Any) -> None:
    for method in ("GET", "HEAD"):
        response = await client.request(method, "/healthz")
        assert response.status_code == 200 and response.content == b""
    assert (await client.post("/healthz")).status_code == 405


async def test_delegate_delayed_leave_is_offered(client: Any, harness: Harness) -> None:
    # Element Call's probe (an empty POST) must not get 404: delegation is offered.
    probe = await client.post("/delegate_delayed_leave", content=b"")
    assert_error(probe, 400, "M_NOT_JSON")
    missing = await client.post("/delegate_delayed_leave", json=get_token_body())
    body = assert_error(missing, 400, "M_BAD_JSON")
    assert body["error"] == "The request body is missing `delay_id` or `delay_timeout`"
    full = await client.post(
        "/delegate_delayed_leave", json=get_token_body(delay_id="syd_d", delay_timeout=10_000)
    )
    assert full.status_code == 200 and full.json() == {}
    assert_cors(full)
    assert [job.params.delay_id for job in harness.delegations.jobs.values()] == ["syd_d"]
    assert harness.rooms.requests == []  # no token, no room
    preflight = await client.options("/delegate_delayed_leave")
    assert preflight.status_code == 200
    assert_cors(preflight)
    restricted = get_token_body(
        openid_token=openid("carol-token", "remote.example"), delay_id="x", delay_timeout=1
    )
    restricted["member"]["claimed_user_id"] = REMOTE
    refused = await client.post("/delegate_delayed_leave", json=restricted)
    assert_error(refused, 403, "M_FORBIDDEN")
    await harness.delegations.close()


async def test_paths_match_exactly(client: Any) -> None:
    for path in ("/sfu/get/", "/get_token/", "/livekit/jwt/sfu/get", "/"):
        assert (await client.post(path, json={})).status_code == 404


# --- upstream's bad inputs -------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1]", b'{"unknown_field": 1}', b'{"openid_token": "x"}'],
)
async def test_malformed_json_is_m_not_json(
    client: Any, harness: Harness, path: str, raw: bytes
) -> None:
    response = await client.post(path, content=raw)
    assert assert_error(response, 400, "M_NOT_JSON")["error"] == "Error reading request"
    assert harness.verifier.calls == []


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_partial_delay_parameters_are_refused_before_any_lookup(
    client: Any, harness: Harness, path: str
) -> None:
    for fields in ({"delay_id": "syd_1"}, {"delay_timeout": 8000}):
        response = await client.post(path, json=BODIES[path](**fields))
        assert_error(response, 400, "M_BAD_JSON")
    assert harness.verifier.calls == []


async def test_missing_fields_in_upstream_order(client: Any) -> None:
    response = await client.post("/get_token", json={"member": {}, "openid_token": {}})
    assert assert_error(response, 400, "M_BAD_JSON")["error"] == (
        "The request body is missing `room_id` or `slot_id`"
    )
    response = await client.post("/sfu/get", json={"openid_token": openid()})
    assert assert_error(response, 400, "M_BAD_JSON")["error"] == "Missing room parameter"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_unknown_token_is_401(client: Any, harness: Harness, path: str) -> None:
    response = await client.post(path, json=BODIES[path](openid_token=openid("syt_forged")))
    body = assert_error(response, 401, "M_UNAUTHORIZED")
    assert body["error"] == "The request could not be authorised."
    assert harness.verifier.calls == [("example.org", "syt_forged")]


async def test_claimed_user_mismatch_is_401(client: Any, harness: Harness) -> None:
    body = get_token_body()
    body["member"]["claimed_user_id"] = BOB
    assert_error(await client.post("/get_token", json=body), 401, "M_UNAUTHORIZED")
    assert harness.verifier.calls == [("example.org", "alice-token")]
    assert harness.rooms.requests == []


async def test_token_of_another_server_is_401(client: Any) -> None:
    body = sfu_get_body(openid_token=openid("alice-token", "remote.example"))
    assert_error(await client.post("/sfu/get", json=body), 401, "M_UNAUTHORIZED")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_delegation_requests_are_refused_after_verification(
    client: Any, harness: Harness, path: str
) -> None:
    delay = {"delay_id": "syd_1", "delay_timeout": 8000}
    restricted = BODIES[path](openid_token=openid("carol-token", "remote.example"), **delay)
    if path == "/get_token":
        restricted["member"]["claimed_user_id"] = REMOTE
    body = assert_error(await client.post(path, json=restricted), 400, "M_BAD_JSON")
    assert body["error"] == "Delegation of delayed events is only supported for full access users"
    assert len(harness.verifier.calls) == 1
    assert harness.rooms.requests == []
    assert harness.delegations.jobs == {}
    # A full-access user's delegation starts a job, after the room is created.
    claims_of(await client.post(path, json=BODIES[path](**delay)))
    assert len(harness.rooms.requests) == 1
    (job,) = harness.delegations.jobs.values()
    assert job.params.delay_id == "syd_1" and job.params.delay_timeout == 8.0
    assert job.params.room == harness.rooms.requests[0].name
    # A homeserver whose client-server API cannot be found: upstream's 400, and no room.
    harness.deps.unresolvable = True
    other = BODIES[path](delay_id="syd_2", delay_timeout=8000)
    body = assert_error(await client.post(path, json=other), 400, "M_BAD_JSON")
    assert body["error"] == "Unable to resolve client-server API"
    assert len(harness.rooms.requests) == 1
    harness.deps.unresolvable = False
    # Hostile delegation parameters are refused precisely.
    for bad, message in (
        ({"delay_id": "x" * 256}, "`delay_id` must be printable ASCII"),
        ({"delay_id": "syd 1"}, "`delay_id` must be printable ASCII"),
        ({"delay_timeout": 8 * 24 * 3600 * 1000}, "`delay_timeout` must be at most"),
    ):
        body = assert_error(
            await client.post(path, json=BODIES[path](**{**delay, **bad})), 400, "M_BAD_JSON"
        )
        assert message in body["error"]
    await harness.delegations.close()
    # An unknown token is still a 401, not a 400.
    forged = BODIES[path](openid_token=openid("forged"), **delay)
    assert_error(await client.post(path, json=forged), 401, "M_UNAUTHORIZED")


async def test_delay_cs_api_url_alone_is_ignored(client: Any) -> None:
    claims_of(await client.post("/sfu/get", json=sfu_get_body(delay_cs_api_url="https://hs")))


# --- size and rate limits --------------------------------------------------------------------


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_bodies_over_64_kib_are_413(client: Any, harness: Harness, path: str) -> None:
    body = json.dumps(BODIES[path]()).encode()
    at_limit = body + b" " * (MAX_BODY_BYTES - len(body))
    assert (await client.post(path, content=at_limit)).status_code == 200
    response = await client.post(path, content=at_limit + b" ")
    assert_error(response, 413, "M_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 4096

    assert_error(await client.post(path, content=chunks()), 413, "M_TOO_LARGE")
    assert len(harness.verifier.calls) == 1


async def test_per_ip_rate_limit() -> None:
    harness = Harness(ip_rate_limit=RateLimit(per_second=0.5, burst=3))
    async with asgi_client(harness.app) as http:
        for _ in range(3):
            assert (await http.post("/sfu/get", json=sfu_get_body())).status_code == 200
        response = await http.post("/sfu/get", content=b"{not json")
        body = assert_error(response, 429, "M_LIMIT_EXCEEDED")
        assert body["retry_after_ms"] == 2000
        assert response.headers["retry-after"] == "2"
        assert len(harness.verifier.calls) == 3
        # Preflights and health checks are not limited; another address is not affected.
        assert (await http.options("/sfu/get")).status_code == 200
        assert (await http.get("/healthz")).status_code == 200
    async with asgi_client(harness.app, client=("198.51.100.1", 1)) as other:
        assert (await other.post("/sfu/get", json=sfu_get_body())).status_code == 200
    harness.now += 2.0
    async with asgi_client(harness.app) as http:
        assert (await http.post("/sfu/get", json=sfu_get_body())).status_code == 200


async def test_per_user_rate_limit_spans_addresses() -> None:
    harness = Harness(user_rate_limit=RateLimit(per_second=1.0, burst=2))
    for index in range(2):
        async with asgi_client(harness.app, client=(f"198.51.100.{index}", 1)) as http:
            assert (await http.post("/get_token", json=get_token_body())).status_code == 200
    async with asgi_client(harness.app, client=("198.51.100.9", 1)) as http:
        response = await http.post("/sfu/get", json=sfu_get_body())
        assert assert_error(response, 429, "M_LIMIT_EXCEEDED")["retry_after_ms"] == 1000
        bob = sfu_get_body(openid_token=openid("bob-token"))
        assert (await http.post("/sfu/get", json=bob)).status_code == 200


async def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    harness = Harness(
        ip_rate_limit=RateLimit(per_second=0.001, burst=1),
        trusted_proxies=parse_networks("10.0.0.0/8", "test"),
    )
    async with asgi_client(harness.app, client=("10.1.2.3", 1)) as proxy:
        for client_ip in ("198.51.100.1", "198.51.100.2"):
            headers = {"X-Forwarded-For": f"{client_ip}, 10.9.9.9"}
            response = await proxy.post("/sfu/get", json=sfu_get_body(), headers=headers)
            assert response.status_code == 200
        headers = {"X-Forwarded-For": "198.51.100.1"}
        response = await proxy.post("/sfu/get", json=sfu_get_body(), headers=headers)
        assert response.status_code == 429
    async with asgi_client(harness.app, client=("203.0.113.1", 1)) as direct:
        for expected in (200, 429):
            headers = {"X-Forwarded-For": f"198.51.100.{expected}"}
            response = await direct.post("/sfu/get", json=sfu_get_body(), headers=headers)
            assert response.status_code == expected


def test_client_address() -> None:
    trusted = parse_networks("10.0.0.0/8 ::1", "test")
    assert client_address("203.0.113.5", ["1.2.3.4"], trusted) == "203.0.113.5"
    assert client_address("10.0.0.1", ["1.2.3.4, 10.0.0.2"], trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", ["9.9.9.9", "1.2.3.4"], trusted) == "1.2.3.4"
    assert client_address("10.0.0.1", [], trusted) == "10.0.0.1"
    assert client_address("10.0.0.1", ["10.0.0.3"], trusted) == "10.0.0.3"
    assert client_address("10.0.0.1", ["unknown, 10.0.0.3"], trusted) == "unknown"
    assert client_address(None, [], trusted) == "unknown"
    assert client_address("10.0.0.1", ["1.2.3.4"], ()) == "10.0.0.1"


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics(client: Any) -> None:
    await client.post("/sfu/get", json=sfu_get_body())
    await client.post("/get_token", content=b"nope")
    await client.get("/get_token")
    text = (await client.get("/metrics")).text
    assert 'matrix_sfu_auth_requests_total{endpoint="sfu_get",outcome="ok"} 1.0' in text
    assert 'matrix_sfu_auth_requests_total{endpoint="get_token",outcome="not_json"} 1.0' in text
    assert (
        'matrix_sfu_auth_requests_total{endpoint="get_token",outcome="method_not_allowed"} 1.0'
        in text
    )
    assert 'matrix_sfu_auth_tokens_issued_total{access="full",endpoint="sfu_get"} 1.0' in text


async def test_metrics_can_be_disabled() -> None:
    harness = Harness(metrics_enabled=False)
    async with asgi_client(harness.app) as http:
        assert (await http.get("/metrics")).status_code == 404


# --- arbitrary input -------------------------------------------------------------------------

field_names = st.sampled_from(
    [
        "room",
        "room_id",
        "slot_id",
        "device_id",
        "openid_token",
        "member",
        "access_token",
        "matrix_server_name",
        "token_type",
        "expires_in",
        "id",
        "claimed_user_id",
        "claimed_device_id",
        "delay_id",
        "delay_timeout",
        "delay_cs_api_url",
        "unknown",
    ]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["example.org", "alice-token", ALICE, "127.0.0.1:1", "[::1]", ""]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(field_names | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=15,
)


def test_arbitrary_json_only_ever_gets_4xx() -> None:
    """Real verifier (fake DNS: every name missing), no network: every answer is a 4xx."""
    metrics = Metrics()
    resolver = FakeResolver()
    discovery = FederationDiscovery(
        resolver, tls_context=client_tls_context(verify=True), metrics=metrics
    )
    verifier = OpenIdVerifier(discovery, total_timeout=2.0, metrics=metrics)
    app = create_app(make_settings(), verifier=verifier, metrics=metrics)
    loop = asyncio.new_event_loop()
    http = asgi_client(app)
    try:

        @settings(
            max_examples=250,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(path=st.sampled_from(ENDPOINTS), value=json_values)
        def post(path: str, value: Any) -> None:
            request = http.post(path, content=json.dumps(value).encode())
            response = loop.run_until_complete(request)
            assert 400 <= response.status_code < 500, (value, response.text)
            assert response.json()["errcode"] in ("M_NOT_JSON", "M_BAD_JSON", "M_UNAUTHORIZED")

        post()
    finally:
        loop.run_until_complete(http.aclose())
        loop.close()
