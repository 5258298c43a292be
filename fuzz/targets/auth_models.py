"""The auth service's request bodies (`auth_service.models`): `POST /sfu/get` and `/get_token`.

`LegacySfuRequest.parse` and `SfuRequest.parse` raise only `RequestError` (400 M_NOT_JSON /
M_BAD_JSON), and what they accept passes its own validation and has the fields upstream requires.
"""

from __future__ import annotations

import json

from auth_service.models import LegacySfuRequest, RequestError, SfuRequest

MAX_LEN = 4096


def test_one(data: bytes) -> None:
    try:
        legacy = LegacySfuRequest.parse(data)
    except RequestError:
        pass
    else:
        legacy.validate()
        assert legacy.room and legacy.openid_token.access_token
    try:
        request = SfuRequest.parse(data)
    except RequestError:
        pass
    else:
        request.validate()
        assert request.room_id and request.slot_id and request.member.id


def seeds() -> list[bytes]:
    token = {"access_token": "tok", "token_type": "Bearer", "matrix_server_name": "example.org"}
    token["expires_in"] = 3600  # type: ignore[assignment]
    legacy = {"room": "!room:example.org", "openid_token": token, "device_id": "DEV"}
    member = {"id": "m1", "claimed_user_id": "@a:example.org", "claimed_device_id": "DEV"}
    msc = {"room_id": "!room:example.org", "slot_id": "m.call#ROOM", "openid_token": token}
    msc |= {"member": member, "delay_id": "d1", "delay_timeout": 1000}  # type: ignore[dict-item]
    return [
        json.dumps(legacy).encode(),
        json.dumps(msc).encode(),
        b' {"ROOM": "r", "Openid_Token": {"access_token": "\\ud800", "matrix_server_name": "x"}} x',
        b"null",
        b'{"room": "r", "openid_token": null, "delay_timeout": 1e3}',
    ]
