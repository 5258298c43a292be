"""Access-token verification: what LiveKit accepts and refuses, with its status codes."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit import api

from sfu.auth import AuthError, TokenVerifier

KEY, SECRET = "APIkey", "x" * 40
VERIFIER = TokenVerifier({KEY: SECRET})


def sdk_token(**grants: Any) -> str:
    video = api.VideoGrants(room_join=True, room="r1", **grants)
    return (
        api.AccessToken(KEY, SECRET)
        .with_identity("alice")
        .with_name("Alice")
        .with_grants(video)
        .to_jwt()
    )


def raw_token(claims: dict[str, Any], secret: str = SECRET, alg: str = "HS256") -> str:
    base = {
        "iss": KEY,
        "sub": "alice",
        # a day: parametrized tokens are made at collection, and the suite runs for minutes
        "exp": int(time.time()) + 86400,
        "video": {"roomJoin": True, "room": "r1"},
    }
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, secret, algorithm=alg)


def test_sdk_token_is_accepted() -> None:
    grants = VERIFIER.verify_join(sdk_token(can_publish=False))
    assert grants.identity == "alice"
    assert grants.name == "Alice"
    assert grants.video.room == "r1"
    assert grants.video.can_publish is False
    assert grants.video.can_subscribe is True
    raw = VERIFIER.verify_join(
        raw_token({"video": {"roomJoin": True, "room": "r", "canPublish": False}})
    )
    assert raw.video.can_publish_data is False  # defaults to canPublish when absent
    assert raw.video.can_subscribe is True  # defaults to true when absent


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("", 401, "no authorization token"),
        ("garbage", 401, "not a JWT"),
        (raw_token({}, secret="y" * 40), 401, "signature is invalid"),
        (raw_token({"iss": "other"}), 401, "unknown API key"),
        (raw_token({"exp": int(time.time()) - 3600}), 401, "expired"),
        (raw_token({"exp": None}), 401, "exp claim is required"),
        (raw_token({"nbf": int(time.time()) + 3600}), 401, "not valid yet"),
        (raw_token({"video": {"room": "r1"}}), 401, "no roomJoin grant"),
        (raw_token({"video": {"roomJoin": True}}), 400, "no room name"),
        (raw_token({"sub": None}), 400, "identity cannot be empty"),
        (raw_token({"sub": "a" * 300}), 400, "identity is too long"),
        (raw_token({"video": {"roomJoin": "yes", "room": "r"}}), 401, "must be a boolean"),
        (raw_token({"video": []}), 401, "video grant must be an object"),
        (raw_token({}, secret="z" * 64, alg="HS512"), 401, "only HS256"),
    ],
)
def test_refusals(token: str, status: int, message: str) -> None:
    with pytest.raises(AuthError, match=message) as info:
        VERIFIER.verify_join(token)
    assert info.value.status == status


def test_unsigned_token_is_refused() -> None:
    token = jwt.encode(
        {"iss": KEY, "sub": "a", "exp": int(time.time()) + 60}, key=None, algorithm="none"
    )
    with pytest.raises(AuthError) as info:
        VERIFIER.verify_join(token)
    assert (info.value.status, info.value.message) == (401, "invalid token: only HS256 is accepted")


def test_refresh_keeps_grants() -> None:
    grants = VERIFIER.verify_join(sdk_token(can_publish_sources=["camera"]))
    again = VERIFIER.verify_join(VERIFIER.mint(grants, 600, int(time.time())))
    assert again.video == grants.video
    assert again.identity == grants.identity


def test_refresh_keeps_admin_create_list_record_and_recorder_grants() -> None:
    token = sdk_token(
        room_create=True, room_list=True, room_admin=True, room_record=True, recorder=True
    )
    grants = VERIFIER.verify_join(token)
    assert grants.video.room_create and grants.video.room_admin and grants.video.recorder
    again = VERIFIER.verify_join(VERIFIER.mint(grants, 600, int(time.time())))
    assert again.video == grants.video


@given(st.text(max_size=300))
def test_arbitrary_strings_only_raise_auth_error(text: str) -> None:
    with contextlib.suppress(AuthError):
        VERIFIER.verify_join(text)


@given(
    st.dictionaries(
        st.sampled_from(["iss", "sub", "exp", "nbf", "video", "name", "attributes", "kind"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=10),
            st.booleans(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(
                st.text(max_size=12), st.one_of(st.booleans(), st.text(max_size=5)), max_size=4
            ),
        ),
    )
)
def test_arbitrary_claims_only_raise_auth_error(claims: dict[str, Any]) -> None:
    try:
        token = jwt.encode(claims, SECRET, algorithm="HS256")
    except TypeError:  # PyJWT refuses to encode e.g. a non-numeric exp
        return
    with contextlib.suppress(AuthError):
        VERIFIER.verify_join(token)
