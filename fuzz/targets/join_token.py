"""Join tokens (`sfu.auth.TokenVerifier.verify_join`): what a client presents on `/rtc`.

The harness holds the API secret, so besides raw token text it signs arbitrary header and claims
bytes itself: the claim checks after the signature are reached too. `verify_join` raises only
`AuthError`; accepted grants are usable by `Participant` (every publish source is known to it)
and survive `mint` → `verify_join` unchanged but for the expiry.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time

from sfu.auth import AuthError, TokenVerifier
from sfu.room.signalling import SOURCE_BY_NAME

from ._records import join, records

MAX_LEN = 2048

API_KEY = "fuzzkey"
SECRET = "fuzz-secret-fuzz-secret-fuzz-secret-0123456789"
VERIFIER = TokenVerifier({API_KEY: SECRET})
HEADER = b'{"alg":"HS256","typ":"JWT"}'


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(header: bytes, claims: bytes) -> str:
    """A token with exactly these header and claims bytes, signed with `SECRET`."""
    signing_input = _b64(header) + b"." + _b64(claims)
    mac = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(mac)).decode()


def test_one(data: bytes) -> None:
    mode = data[0] % 3 if data else 0
    body = data[1:]
    if mode == 0:
        token = sign(HEADER, body)
    elif mode == 1:
        parts = records(body, 2)
        token = sign(parts[0], parts[1] if len(parts) > 1 else b"")
    else:
        token = body.decode("utf-8", "replace")
    try:
        grants = VERIFIER.verify_join(token)
    except AuthError:
        return
    for source in grants.video.can_publish_sources:
        assert source in SOURCE_BY_NAME, f"Participant does not know publish source {source!r}"
    now = int(time.time())
    again = VERIFIER.verify_join(VERIFIER.mint(grants, 600, now))
    assert dataclasses.replace(again, expires_at=0) == dataclasses.replace(grants, expires_at=0)


def _claims(**extra: object) -> bytes:
    claims = {"iss": API_KEY, "sub": "alice", "exp": int(time.time()) + 3600}
    claims["video"] = {"room": "!room:example.org", "roomJoin": True}
    claims.update(extra)
    return json.dumps(claims).encode()


def seeds() -> list[bytes]:
    return [
        b"\x00" + _claims(),
        b"\x00" + _claims(name="Alice", metadata="{}", attributes={"a": "b"}, kind="agent"),
        b"\x00" + _claims(video={"room": "r", "roomJoin": True, "canPublishSources": ["camera"]}),
        b"\x01" + join([HEADER, _claims(nbf=int(time.time()) + 10)]),
        b"\x02" + sign(HEADER, _claims()).encode(),
        b"\x02not.a.jwt",
    ]
