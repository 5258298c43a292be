"""The whole auth service (`auth_service.app`), in process through its ASGI interface.

Each record of the input is one HTTP request (method, path, headers, a body in two chunks) to a
fresh app built by `create_app` with upstream-like settings (trusted proxies, a per-user rate
limit) and stand-ins for the network: an OpenID verifier that accepts tokens starting with "ok"
and a room creator that records. The app never raises and never answers 500; every JSON answer
is JSON; a 200 from a token endpoint carries a JWT signed with the configured secret.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import jwt

from auth_service.app import create_app
from auth_service.config import Settings
from auth_service.matrix import OpenIdError
from auth_service.metrics import Metrics
from auth_service.ratelimit import RateLimit
from auth_service.sfu_client import CreateRoomRequest

from ._records import join, records

MAX_LEN = 8192

METHODS = ("POST", "GET", "OPTIONS", "HEAD", "PUT", "DELETE", "PATCH", "post")
PATHS = ("/sfu/get", "/get_token", "/healthz", "/metrics", "/delegate_delayed_leave", "/", "/x/")
SECRET = "fuzz-secret-fuzz-secret-fuzz-secret-0123456789"
SETTINGS = Settings(
    livekit_url="wss://sfu.example.org",
    api_key="fuzzkey",
    api_secret=SECRET,
    full_access_homeservers=("example.org",),
    ip_rate_limit=RateLimit(per_second=0.0, burst=1),
    user_rate_limit=RateLimit(per_second=1.0, burst=2),
    trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
)
METRICS = Metrics()
_loop: Any = None


class _Verifier:
    async def verify(self, server_name: str, access_token: str) -> str:
        if not access_token.startswith("ok"):
            raise OpenIdError("not a token of ours")
        user = access_token[2:]
        return user if user.startswith("@") else f"@user:{server_name}"


class _RoomCreator:
    def __init__(self) -> None:
        self.created: list[CreateRoomRequest] = []

    async def create_room(self, request: CreateRoomRequest) -> None:
        self.created.append(request)


def _request(record: bytes) -> tuple[dict[str, Any], list[bytes]]:
    method = METHODS[record[0] % len(METHODS)] if record else "POST"
    path = PATHS[record[1] % len(PATHS)] if len(record) > 1 else "/get_token"
    split = record[2] if len(record) > 2 else 0
    head, _, body = record[3:].partition(b"\r\n\r\n")
    headers = []
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon:
            headers.append((name.strip().lower(), value.strip()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("10.1.2.3", 50000),
        "server": ("auth.example.org", 443),
    }
    return scope, [body[:split], body[split:]]


async def _call(app: Any, scope: dict[str, Any], chunks: list[bytes]) -> None:
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, "not exactly one response"
    status = starts[0]["status"]
    assert status != 500, "500 Internal Server Error"
    headers = {k.decode().lower(): v.decode() for k, v in starts[0].get("headers", [])}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if headers.get("content-type") == "application/json" and body and scope["method"] != "HEAD":
        answer = json.loads(body)
        if status == 200 and scope["path"] in ("/sfu/get", "/get_token"):
            options: Any = {"verify_exp": False, "verify_nbf": False}
            claims = jwt.decode(answer["jwt"], SECRET, algorithms=["HS256"], options=options)
            assert isinstance(claims["sub"], str) and isinstance(claims["video"]["room"], str)


async def _run(data: bytes) -> None:
    app = create_app(
        SETTINGS,
        verifier=_Verifier(),
        room_creator=_RoomCreator(),
        metrics=METRICS,
        clock=lambda: 1000.0,
        wall_clock=lambda: 1_700_000_000.0,
    )
    for record in records(data, 6):
        scope, chunks = _request(record)
        await _call(app, scope, chunks)


def test_one(data: bytes) -> None:
    global _loop
    if _loop is None:
        import asyncio

        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(_run(data))


def seeds() -> list[bytes]:
    token = {"access_token": "ok@alice:example.org", "matrix_server_name": "example.org"}
    legacy = {"room": "!room:example.org", "openid_token": token, "device_id": "DEV"}
    member = {"id": "m1", "claimed_user_id": "@alice:example.org", "claimed_device_id": "DEV"}
    msc = {"room_id": "!r:other.org", "slot_id": "m.call#ROOM", "openid_token": token}
    msc["member"] = member
    json_headers = b"content-type: application/json\r\nx-forwarded-for: 198.51.100.7, 10.0.0.1"
    return [
        join(
            [
                b"\x00\x00\x05" + json_headers + b"\r\n\r\n" + json.dumps(legacy).encode(),
                b"\x00\x01\x10" + json_headers + b"\r\n\r\n" + json.dumps(msc).encode(),
                b"\x00\x01\x00" + b"content-length: 70000\r\n\r\n{}",
                b"\x02\x00\x00\r\n\r\n",
                b"\x01\x03\x00\r\n\r\n",
            ]
        ),
        join([b"\x00\x00\x03\r\n\r\n" + json.dumps(legacy).encode()] * 4),
        b'\x00\x01\x01x-forwarded-for: nonsense\r\n\r\n{"room_id": 1}',
    ]
