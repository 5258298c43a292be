"""Room alias and identity derivations (MSC4195 vectors, Go escaping) and the LiveKit JWT."""

from __future__ import annotations

import base64
import hashlib
import json

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_service.tokens import (
    LEGACY_SLOT_ID,
    TOKEN_TTL_SECONDS,
    TokenMinter,
    claims_json,
    go_json_marshal_strings,
    join_claims,
    legacy_participant_identity,
    legacy_room_alias,
    participant_identity,
    room_alias,
)

SECRET = "0123456789abcdef0123456789abcdef"


def test_msc4195_room_alias_vector() -> None:
    assert room_alias("!roomid:example.com", "slot1234") == (
        "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
    )


def test_msc4195_identity_vector() -> None:
    assert participant_identity("@alice:example.com", "DEVICE123", "memberABC") == (
        "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
    )


def test_msc4195_appendix_vector_with_random_bits() -> None:
    digest = hashlib.sha256(
        go_json_marshal_strings(["!roomid:example.com", "slot123", "random123"])
    ).digest()
    assert base64.b64encode(digest).rstrip(b"=").decode() == (
        "IMeDd+K3MIqJTI20EXBIrepKkhhORvf3q8fx3rlrhTk"
    )


def test_legacy_endpoint_uses_the_fixed_slot() -> None:
    assert LEGACY_SLOT_ID == "m.call#ROOM"
    assert legacy_room_alias("!room:example.com") == room_alias("!room:example.com", "m.call#ROOM")


def test_legacy_identity_is_user_and_device() -> None:
    assert legacy_participant_identity("@alice:example.org", "DEV") == "@alice:example.org:DEV"
    assert legacy_participant_identity("@alice:example.org", "") == "@alice:example.org:"


def test_alias_is_unpadded_standard_base64() -> None:
    aliases = {room_alias(f"!room{i}:example.org", "m.call#") for i in range(200)}
    assert len(aliases) == 200
    for alias in aliases:
        assert len(alias) == 43 and "=" not in alias
        assert "-" not in alias and "_" not in alias


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["<b>&"], b'["\\u003cb\\u003e\\u0026"]'),
        (["\u2028\u2029"], b'["\\u2028\\u2029"]'),
        (["\x08\x0c\n\r\t\x01\x1f"], b'["\\b\\f\\n\\r\\t\\u0001\\u001f"]'),
        (['"\\'], b'["\\"\\\\"]'),
        (["\x7f\u00e9\U0001f600"], '["\x7f\u00e9\U0001f600"]'.encode()),
        (["a", "b"], b'["a","b"]'),
    ],
)
def test_go_json_marshal_matches_go_bytes(values: list[str], expected: bytes) -> None:
    assert go_json_marshal_strings(values) == expected


def test_go_escaping_changes_the_hash() -> None:
    member = "<script>&"
    plain = json.dumps(["@a:b", "D", member], separators=(",", ":"), ensure_ascii=False)
    plain_hash = base64.b64encode(hashlib.sha256(plain.encode()).digest()).rstrip(b"=").decode()
    assert participant_identity("@a:b", "D", member) != plain_hash


@given(st.lists(st.text(), max_size=4))
def test_go_json_marshal_round_trips(values: list[str]) -> None:
    values = [v.encode("utf-8", "replace").decode("utf-8") for v in values]
    encoded = go_json_marshal_strings(values)
    assert json.loads(encoded) == values
    for raw in (b"<", b">", b"&", "\u2028".encode(), "\u2029".encode()):
        assert raw not in encoded


def test_join_token_claims() -> None:
    minter = TokenMinter("APIkey", SECRET)
    token = minter.join_token("ROOMALIAS", "@alice:example.org:DEV", now=1_700_000_000)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert claims == {
        "iss": "APIkey",
        "sub": "@alice:example.org:DEV",
        "nbf": 1_700_000_000,
        "exp": 1_700_000_000 + TOKEN_TTL_SECONDS,
        "video": {
            "roomJoin": True,
            "room": "ROOMALIAS",
            "canPublish": True,
            "canSubscribe": True,
            "canUpdateOwnMetadata": True,
        },
    }


def test_room_create_is_granted_only_when_asked() -> None:
    """Finding 13: only full-access users' tokens may create a room on join."""
    plain = join_claims("k", "ROOM", "@a:hs:D", 1)
    assert "roomCreate" not in plain["video"]
    creating = join_claims("k", "ROOM", "@a:hs:D", 1, room_create=True)
    assert creating["video"] == {**plain["video"], "roomCreate": True}
    token = TokenMinter("k", SECRET).join_token("ROOM", "@a:hs:D", 1, room_create=True)
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
    )
    assert claims["video"]["roomCreate"] is True


def test_join_token_signature_needs_the_secret() -> None:
    token = TokenMinter("k", SECRET).join_token("r", "i", now=1)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + "x", algorithms=["HS256"], options={"verify_exp": False})


@given(identity=st.text(max_size=40), room=st.text(max_size=20), key=st.text(max_size=10))
def test_payload_is_ascii_and_atob_safe(identity: str, room: str, key: str) -> None:
    identity = identity.encode("utf-8", "replace").decode("utf-8")
    token = TokenMinter(key or "k", SECRET).join_token(room, identity, now=1_700_000_000)
    _header, payload, _signature = token.split(".")
    # Element Call decodes the payload with atob(): standard alphabet only.
    assert "-" not in payload and "_" not in payload
    raw = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    assert raw.isascii()
    claims = json.loads(raw)
    assert claims["sub"] == identity and claims["video"]["room"] == room


def test_claims_json_escapes_only_inside_strings() -> None:
    assert claims_json({"a": "x>?~\x7f<", "n": 5}) == (
        b'{"a":"x\\u003e\\u003f\\u007e\\u007f<","n":5}'
    )
