"""Token requests the homeserver proxies to the application service (MSC4512).

With ``io.element.msc4512.proxy_prefix: rtc/livekit`` in the registration and Synapse's
``experimental_features.msc4512_enabled``, Synapse authenticates a client's
``POST /_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token`` itself and forwards it
here with the ``hs_token`` and ``X-Matrix-User-Identifier: @user:server``, the user it
authenticated. No OpenID token is involved. The body is MSC4195's without ``openid_token``:
``{"url", "room_id", "slot_id", "member": {"id", "claimed_device_id"[, "claimed_user_id"]}}``;
``url`` must be this service's ``LIVEKIT_URL`` (400 ``M_INVALID_PARAM`` otherwise, as upstream).
:func:`parse_cs_get_token` checks it with the token endpoints' rules (unknown keys 400
``M_NOT_JSON``, missing fields 400 ``M_BAD_JSON``); the answer is ``{"jwt": …}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from .models import BadJsonError, MatrixError, NotJsonError, RtcMember, check_device_id

CS_GET_TOKEN_PATH: Final = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token"
PROXY_PREFIX: Final = "rtc/livekit"
USER_HEADER: Final = "x-matrix-user-identifier"
MAX_ID_LENGTH: Final = 255
_FIELDS: Final = ("url", "room_id", "slot_id", "member")


@dataclass(frozen=True)
class CsGetToken:
    """A proxied client-server ``get_token`` request."""

    url: str
    room_id: str
    slot_id: str
    member: RtcMember


def parse_cs_get_token(body: bytes) -> CsGetToken:
    """Decode and check a proxied ``get_token`` body; raises a :class:`MatrixError`."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise NotJsonError("not JSON") from None
    if not isinstance(document, dict) or any(key not in _FIELDS for key in document):
        raise NotJsonError("unknown field")
    strings = {name: document.get(name, "") for name in ("url", "room_id", "slot_id")}
    if not all(isinstance(value, str) for value in strings.values()):
        raise NotJsonError("wrong type")
    member = RtcMember.from_json(document.get("member"))
    for name, value in (*strings.items(), ("member.id", member.id)):
        if not value:
            raise BadJsonError(f"The request body `{name}` can't be empty")
        if len(value) > MAX_ID_LENGTH:
            raise BadJsonError(f"The request body `{name}` is longer than {MAX_ID_LENGTH}")
    check_device_id(member.claimed_device_id, "member.claimed_device_id")
    if not member.claimed_device_id:
        raise BadJsonError("The request body `member.claimed_device_id` can't be empty")
    return CsGetToken(str(strings["url"]), str(strings["room_id"]), str(strings["slot_id"]), member)


def proxied_user(header: str, server_name: str) -> str:
    """The user Synapse authenticated, who must be one of ``server_name``'s."""
    if not header.startswith("@") or not header.endswith(f":{server_name}") or len(header) > 255:
        raise MatrixError(403, "M_FORBIDDEN", "Missing or foreign X-Matrix-User-Identifier")
    return header
