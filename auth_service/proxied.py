"""Token requests the homeserver proxies to the application service (MSC4512): their paths and
bodies.

With ``io.element.msc4512.proxy_prefix: rtc/livekit`` in the registration and Synapse's
``experimental_features.msc4512_enabled``, Synapse authenticates a client's
``POST /_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token`` itself and forwards it
here with the ``hs_token`` and ``X-Matrix-User-Identifier: @user:server``, the user it
authenticated. No OpenID token is involved. The body is MSC4195's without ``openid_token``:
``{"url", "room_id", "slot_id", "member": {"id", "claimed_device_id"[, "claimed_user_id"]}}``;
``url`` must be this service's ``LIVEKIT_URL`` (400 ``M_INVALID_PARAM`` otherwise, as upstream).
:func:`parse_cs_get_token` checks it with the token endpoints' rules (unknown keys 400
``M_NOT_JSON``, missing fields 400 ``M_BAD_JSON``); the answer is ``{"jwt": …}``.

The same proxy carries two more routes: ``POST
/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave`` (the same body
plus ``delay_id``) and, from other homeservers, ``POST
/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token``: Synapse checks the
remote server's request signature and forwards it with ``X-Matrix-Origin: <server>``; the body
adds the remote ``user_id``, who must be of that server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from .models import BadJsonError, MatrixError, NotJsonError, RtcMember, check_device_id

CS_GET_TOKEN_PATH: Final = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token"
CS_DELEGATE_PATH: Final = (
    "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave"
)
FEDERATION_GET_TOKEN_PATH: Final = (
    "/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token"
)
PROXY_PREFIX: Final = "rtc/livekit"
USER_HEADER: Final = "x-matrix-user-identifier"
ORIGIN_HEADER: Final = "x-matrix-origin"
MAX_ID_LENGTH: Final = 255
MAX_DELAY_ID_LENGTH: Final = 255
_CS_FIELDS: Final = ("url", "room_id", "slot_id", "member")
_DELEGATE_FIELDS: Final = (*_CS_FIELDS, "delay_id", "delay_timeout")
_FEDERATION_FIELDS: Final = (*_CS_FIELDS, "user_id")


@dataclass(frozen=True)
class ProxiedRequest:
    """A proxied ``get_token`` or ``delegate_delayed_leave`` request."""

    url: str
    room_id: str
    slot_id: str
    member: RtcMember
    user_id: str = ""  # federation: the remote user
    delay_id: str = ""  # delegate_delayed_leave


CsGetToken = ProxiedRequest


def _document(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise NotJsonError("not JSON") from None
    if not isinstance(document, dict) or any(key not in fields for key in document):
        raise NotJsonError("unknown field")
    return document


def _strings(document: dict[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    strings = {name: document.get(name, "") for name in names}
    if not all(isinstance(value, str) for value in strings.values()):
        raise NotJsonError("wrong type")
    for name, value in strings.items():
        if not value:
            raise BadJsonError(f"The request body `{name}` can't be empty")
        if len(value) > MAX_ID_LENGTH:
            raise BadJsonError(f"The request body `{name}` is longer than {MAX_ID_LENGTH}")
    return strings


def _parse(body: bytes, fields: tuple[str, ...], required: tuple[str, ...]) -> ProxiedRequest:
    document = _document(body, fields)
    strings = _strings(document, ("url", "room_id", "slot_id", *required))
    member = RtcMember.from_json(document.get("member"))
    _strings({"member.id": member.id}, ("member.id",))
    check_device_id(member.claimed_device_id, "member.claimed_device_id")
    if not member.claimed_device_id:
        raise BadJsonError("The request body `member.claimed_device_id` can't be empty")
    return ProxiedRequest(
        strings["url"],
        strings["room_id"],
        strings["slot_id"],
        member,
        user_id=strings.get("user_id", ""),
        delay_id=strings.get("delay_id", ""),
    )


def parse_cs_get_token(body: bytes) -> ProxiedRequest:
    """Decode and check a proxied client-server ``get_token`` body; raises a
    :class:`MatrixError`."""
    return _parse(body, _CS_FIELDS, ())


def parse_federation_get_token(body: bytes) -> ProxiedRequest:
    """The federation ``get_token`` body: ``get_token``'s plus the remote ``user_id``."""
    request = _parse(body, _FEDERATION_FIELDS, ("user_id",))
    if request.member.claimed_user_id and request.member.claimed_user_id != request.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "`member.claimed_user_id` is not `user_id`")
    return request


def parse_cs_delegate(body: bytes) -> ProxiedRequest:
    """The proxied ``delegate_delayed_leave`` body: ``get_token``'s plus ``delay_id`` (an
    optional ``delay_timeout`` is accepted and ignored: the homeserver's delay counts)."""
    document = _document(body, _DELEGATE_FIELDS)
    timeout = document.get("delay_timeout", 0)
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise NotJsonError("wrong type")
    request = _parse(body, _DELEGATE_FIELDS, ("delay_id",))
    if not all("!" <= c <= "~" for c in request.delay_id):
        raise BadJsonError("The request body `delay_id` must be printable ASCII")
    return request


def proxied_user(header: str, server_name: str) -> str:
    """The user Synapse authenticated, who must be one of ``server_name``'s."""
    if not header.startswith("@") or not header.endswith(f":{server_name}") or len(header) > 255:
        raise MatrixError(403, "M_FORBIDDEN", "Missing or foreign X-Matrix-User-Identifier")
    return header


def federated_user(origin: str, user_id: str, server_name: str) -> str:
    """The remote ``user_id`` a federation request names, who must be of its ``origin``."""
    if not origin or origin == server_name or len(origin) > MAX_ID_LENGTH:
        raise MatrixError(403, "M_FORBIDDEN", "Missing or invalid X-Matrix-Origin")
    if not user_id.startswith("@") or user_id.partition(":")[2] != origin:
        raise MatrixError(403, "M_FORBIDDEN", "`user_id` is not a user of the origin server")
    return user_id
