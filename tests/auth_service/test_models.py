"""Request decoding (Go ``encoding/json`` behaviour) and upstream's validation rules."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_service.models import (
    BadJsonError,
    LegacySfuRequest,
    NotJsonError,
    RequestError,
    SfuRequest,
    check_device_id,
)

OPENID = {
    "access_token": "tok",
    "token_type": "Bearer",
    "matrix_server_name": "example.org",
    "expires_in": 3600,
}
MEMBER = {"id": "member-1", "claimed_user_id": "@alice:example.org", "claimed_device_id": "DEV"}


def legacy(**fields: Any) -> bytes:
    body: dict[str, Any] = {"room": "!r:example.org", "openid_token": OPENID, "device_id": "DEV"}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def get_token(**fields: Any) -> bytes:
    body: dict[str, Any] = {
        "room_id": "!r:example.org",
        "slot_id": "m.call#",
        "openid_token": OPENID,
        "member": MEMBER,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_valid_bodies_parse() -> None:
    request = SfuRequest.parse(get_token())
    assert request.member.claimed_user_id == "@alice:example.org"
    assert request.openid_token.expires_in == 3600
    assert LegacySfuRequest.parse(legacy()).device_id == "DEV"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \n",
        b"{not json",
        b"[]",
        b'"string"',
        b"42",
        b"true",
        b'{"room": }',
        b"\xef\xbb\xbf{}",  # a byte-order mark is not JSON
        b'{"room": NaN}',
        b'{"room": "a\x01b"}',  # raw control character in a string
        b"[" * 70000,
    ],
)
def test_undecodable_bodies_are_not_json(body: bytes) -> None:
    for parser in (LegacySfuRequest.parse, SfuRequest.parse):
        with pytest.raises(NotJsonError) as info:
            parser(body)
        assert info.value.errcode == "M_NOT_JSON" and info.value.status == 400
        assert info.value.error == "Error reading request"


@pytest.mark.parametrize(
    "body",
    [
        legacy(unknown="x"),
        legacy(openid_token={**OPENID, "extra": 1}),
        legacy(room=1),
        legacy(room=["!r"]),
        legacy(device_id=False),
        legacy(openid_token="token"),
        legacy(openid_token=[]),
        legacy(openid_token={**OPENID, "expires_in": "3600"}),
        legacy(openid_token={**OPENID, "expires_in": 1.5}),
        legacy(openid_token={**OPENID, "expires_in": True}),
        legacy(delay_timeout=2**63),
        legacy(delay_timeout=1.0),
        b'{"room":"!r","delay_timeout":1e3}',
    ],
)
def test_unknown_fields_and_wrong_types_are_not_json_legacy(body: bytes) -> None:
    with pytest.raises(NotJsonError):
        LegacySfuRequest.parse(body)


@pytest.mark.parametrize(
    "body",
    [
        get_token(room="legacy field"),
        get_token(member={**MEMBER, "user_id": "@a:b"}),
        get_token(member="member"),
        get_token(slot_id={}),
        get_token(delay_timeout="10000"),
    ],
)
def test_unknown_fields_and_wrong_types_are_not_json(body: bytes) -> None:
    with pytest.raises(NotJsonError):
        SfuRequest.parse(body)


def test_go_decoder_quirks() -> None:
    # Bytes after the first JSON value are not read.
    assert LegacySfuRequest.parse(legacy() + b"}} trailing garbage").room == "!r:example.org"
    # Keys match field names case-insensitively, and the last duplicate wins.
    body = b'{"ROOM":"!a","Room":"!b","OpenID_Token":{"Access_Token":"t","MATRIX_SERVER_NAME":"s"}}'
    request = LegacySfuRequest.parse(body)
    assert request.room == "!b" and request.openid_token.access_token == "t"
    # null leaves a field empty; -0 is an integer.
    request = LegacySfuRequest.parse(legacy(device_id=None, delay_timeout=None))
    assert request.device_id == "" and request.delay_timeout == 0
    assert (
        LegacySfuRequest.parse(
            b'{"room":"!r","openid_token":' + json.dumps(OPENID).encode() + b',"delay_timeout":-0}'
        ).delay_timeout
        == 0
    )


def test_top_level_null_decodes_then_fails_validation() -> None:
    with pytest.raises(BadJsonError, match="Missing room parameter"):
        LegacySfuRequest.parse(b"null")
    with pytest.raises(BadJsonError, match="room_id"):
        SfuRequest.parse(b"null")


def test_invalid_utf8_becomes_one_replacement_per_byte() -> None:
    body = b'{"room_id":"!r\xe2\x82","slot_id":"s\xed\xa0\x80","openid_token":{"access_token":"t",'
    body += b'"matrix_server_name":"x"},"member":{"id":"\\ud800x","claimed_user_id":"@u:x",'
    body += b'"claimed_device_id":"d"}}'
    request = SfuRequest.parse(body)
    assert request.room_id == "!r\ufffd\ufffd"
    assert request.slot_id == "s\ufffd\ufffd\ufffd"
    assert request.member.id == "\ufffdx"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (legacy(room=...), "Missing room parameter"),
        (legacy(room=""), "Missing room parameter"),
        (legacy(openid_token=...), "Missing OpenID token parameters"),
        (legacy(openid_token={**OPENID, "access_token": ""}), "Missing OpenID token parameters"),
        (legacy(openid_token={"access_token": "t"}), "Missing OpenID token parameters"),
        # Upstream's order: the room is checked before the token.
        (legacy(room="", openid_token={}), "Missing room parameter"),
        (legacy(delay_id="did"), "The request body is missing `delay_id` or `delay_timeout`"),
        (legacy(delay_timeout=1000), "The request body is missing `delay_id` or `delay_timeout`"),
        (
            legacy(delay_id="did", delay_cs_api_url="https://hs"),
            "The request body is missing `delay_id` or `delay_timeout`",
        ),
        (
            legacy(delay_timeout=1000, delay_cs_api_url="https://hs"),
            "The request body is missing `delay_id` or `delay_timeout`",
        ),
        (
            legacy(delay_id="did", delay_timeout=-5),
            "The request body is missing `delay_id` or `delay_timeout`",
        ),
    ],
)
def test_legacy_validation(body: bytes, message: str) -> None:
    with pytest.raises(BadJsonError) as info:
        LegacySfuRequest.parse(body)
    assert info.value.error == message
    assert info.value.body() == {"errcode": "M_BAD_JSON", "error": message}


ROOM_MISSING = "The request body is missing `room_id` or `slot_id`"
MEMBER_MISSING = (
    "The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`"
)
TOKEN_MISSING = (
    "The request body `openid_token` is missing a `access_token` or `matrix_server_name`"
)
DELAY_MISSING = "The request body is missing `delay_id` or `delay_timeout`"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (get_token(room_id=...), ROOM_MISSING),
        (get_token(slot_id=""), ROOM_MISSING),
        (get_token(member=...), MEMBER_MISSING),
        (get_token(member={**MEMBER, "id": ""}), MEMBER_MISSING),
        (get_token(member={**MEMBER, "claimed_user_id": None}), MEMBER_MISSING),
        (get_token(member={**MEMBER, "claimed_device_id": ""}), MEMBER_MISSING),
        (get_token(openid_token=None), TOKEN_MISSING),
        (get_token(openid_token={**OPENID, "matrix_server_name": ""}), TOKEN_MISSING),
        (get_token(openid_token={**OPENID, "access_token": ""}), TOKEN_MISSING),
        # Order: room/slot, then member, then token, then the delay pair.
        (get_token(room_id="", member={}, openid_token={}), ROOM_MISSING),
        (get_token(member={}, openid_token={}, delay_id="x"), MEMBER_MISSING),
        (get_token(openid_token={}, delay_id="x"), TOKEN_MISSING),
        (get_token(delay_id="did"), DELAY_MISSING),
        (get_token(delay_timeout=8000), DELAY_MISSING),
        (get_token(delay_id="did", delay_cs_api_url="https://hs"), DELAY_MISSING),
        (get_token(delay_timeout=8000, delay_cs_api_url="https://hs"), DELAY_MISSING),
    ],
)
def test_get_token_validation(body: bytes, message: str) -> None:
    with pytest.raises(BadJsonError) as info:
        SfuRequest.parse(body)
    assert info.value.error == message and info.value.status == 400


@pytest.mark.parametrize(
    "fields",
    [
        {"delay_id": "did", "delay_timeout": 1000},
        {"delay_id": "did", "delay_timeout": 1000, "delay_cs_api_url": "https://hs"},
        {"delay_cs_api_url": "https://hs"},
        {},
    ],
)
def test_delay_parameters_together_or_not_at_all(fields: dict[str, Any]) -> None:
    LegacySfuRequest.parse(legacy(**fields))
    SfuRequest.parse(get_token(**fields))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from([*SfuRequest.FIELDS, "room", "device_id", "id", "access_token", "x"]),
            children,
            max_size=6,
        )
    ),
    max_leaves=12,
)


@given(st.binary(max_size=300))
def test_parsers_raise_only_request_errors_on_bytes(body: bytes) -> None:
    for parser in (LegacySfuRequest.parse, SfuRequest.parse):
        with contextlib.suppress(RequestError):
            parser(body)


@given(json_values)
def test_parsers_raise_only_request_errors_on_json(value: Any) -> None:
    body = json.dumps(value).encode()
    for parser in (LegacySfuRequest.parse, SfuRequest.parse):
        try:
            parser(body)
        except RequestError as error:
            assert error.status == 400
            assert error.errcode in ("M_NOT_JSON", "M_BAD_JSON")


def test_device_id_grammar_boundaries() -> None:
    printable = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ":")
    check_device_id(printable, "device_id")
    check_device_id("D" * 255, "device_id")
    check_device_id("", "device_id")  # /sfu/get's device_id is optional, as upstream
    for bad in ("D" * 256, ":", " ", "\x00", "\x7f", "\u00e9", "\ufffd", "a\r\nb"):
        with pytest.raises(BadJsonError):
            check_device_id(bad, "device_id")


@given(st.text(max_size=300))
def test_device_ids_are_accepted_exactly_when_safe(device_id: str) -> None:
    safe = len(device_id) <= 255 and all("!" <= c <= "~" and c != ":" for c in device_id)
    try:
        check_device_id(device_id, "device_id")
    except BadJsonError:
        assert not safe
    else:
        assert safe
