"""Pure derivations (LiveKit room alias, participant identity) and LiveKit access-token minting.

Everything here is deterministic and free of I/O, so the MSC4195 test vectors and the JWT claims
can be checked byte for byte.

Room alias and identity follow lk-jwt-service exactly:

* alias    = unpadded standard base64 of SHA-256 over the JSON array ``[room_id, slot_id]``;
* identity = the same over ``[user_id, device_id, member_id]`` on ``/get_token``, and the plain
  string ``user_id + ":" + device_id`` on the legacy ``/sfu/get``.

The JSON array is serialised the way Go's ``encoding/json`` does it: compact, UTF-8, and with
``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\u003c``-style escapes. Canonical JSON
would not escape them; matching Go keeps identities identical to the ones upstream hands out.

The access token is an HS256 JWT with the claims LiveKit's ``AccessToken.ToJWT`` writes for
upstream's grant: ``iss`` (API key), ``sub`` (identity), ``nbf``, ``exp`` (one hour later) and a
``video`` grant (with ``roomCreate`` for full-access users only). Its JSON is pure ASCII, and the characters whose bytes could turn into ``-`` or
``_`` in base64url (``>``, ``?``, ``~``, DEL) are escaped as well, so the payload segment is also
valid standard base64: Element Call decodes it with ``atob``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any, Final

LEGACY_SLOT_ID: Final = "m.call#ROOM"
"""The MatrixRTC slot ``/sfu/get`` uses, so legacy and new clients meet in one LiveKit room."""

TOKEN_TTL_SECONDS: Final = 3600

_GO_HTML_ESCAPES: Final = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}

# Bytes whose low six bits are 0b111110 or 0b111111 become '-' or '_' in base64url when they end
# a three-byte group; in ASCII those are exactly these four characters.
_ATOB_UNSAFE_ESCAPES: Final = {
    ord(">"): "\\u003e",
    ord("?"): "\\u003f",
    ord("~"): "\\u007e",
    0x7F: "\\u007f",
}

_JWT_HEADER_SEGMENT: Final = (
    base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode("ascii")
)


def go_json_marshal_strings(values: Sequence[str]) -> bytes:
    """Serialise a list of strings exactly like Go's ``json.Marshal([]string{...})``."""
    text = json.dumps(list(values), ensure_ascii=False, separators=(",", ":"))
    return text.translate(_GO_HTML_ESCAPES).encode("utf-8")


def _hash_b64(values: Sequence[str]) -> str:
    digest = hashlib.sha256(go_json_marshal_strings(values)).digest()
    return base64.b64encode(digest).rstrip(b"=").decode("ascii")


def room_alias(room_id: str, slot_id: str) -> str:
    """The LiveKit room name for a Matrix room and MatrixRTC slot (MSC4195)."""
    return _hash_b64([room_id, slot_id])


def legacy_room_alias(room_id: str) -> str:
    """The LiveKit room name ``/sfu/get`` uses: the room with the fixed ``m.call#ROOM`` slot."""
    return room_alias(room_id, LEGACY_SLOT_ID)


def participant_identity(user_id: str, device_id: str, member_id: str) -> str:
    """The LiveKit identity ``/get_token`` issues: a hash over the verified user and the member."""
    return _hash_b64([user_id, device_id, member_id])


def legacy_participant_identity(user_id: str, device_id: str) -> str:
    """The LiveKit identity ``/sfu/get`` issues: ``@user:server:DEVICE``, not hashed."""
    return f"{user_id}:{device_id}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims_json(claims: dict[str, Any]) -> bytes:
    """Compact ASCII JSON for JWT claims, safe for ``atob`` after base64url encoding."""
    text = json.dumps(claims, ensure_ascii=True, separators=(",", ":"))
    return text.translate(_ATOB_UNSAFE_ESCAPES).encode("ascii")


def join_claims(
    api_key: str,
    room: str,
    identity: str,
    now: int,
    *,
    room_create: bool = False,
    can_publish: bool = True,
) -> dict[str, Any]:
    """The claims of a LiveKit join token: upstream's grant, plus ``roomCreate`` if asked.

    ``roomCreate`` goes only to users of full-access homeservers: our SFU creates a room on
    join only for a token that carries it (LiveKit does the same since its PR #4320), so a
    restricted user can join a room that exists but never create one.
    """
    video: dict[str, Any] = {
        "canPublish": can_publish,
        "canSubscribe": True,
        "canUpdateOwnMetadata": True,
        "room": room,
    }
    if not can_publish:
        video["canPublishData"] = True
    if room_create:
        video["roomCreate"] = True
    video["roomJoin"] = True
    return {
        "exp": now + TOKEN_TTL_SECONDS,
        "iss": api_key,
        "nbf": now,
        "sub": identity,
        "video": video,
    }


class TokenMinter:
    """Signs LiveKit join tokens with one API key and secret (HS256)."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self.api_key = api_key
        self._mac = hmac.new(api_secret.encode("utf-8"), digestmod=hashlib.sha256)

    def sign(self, claims: dict[str, Any]) -> str:
        """Return the compact JWT for ``claims``."""
        signing_input = f"{_JWT_HEADER_SEGMENT}.{_b64url(claims_json(claims))}"
        mac = self._mac.copy()
        mac.update(signing_input.encode("ascii"))
        return f"{signing_input}.{_b64url(mac.digest())}"

    def join_token(
        self,
        room: str,
        identity: str,
        now: int,
        *,
        room_create: bool = False,
        can_publish: bool = True,
    ) -> str:
        """A one-hour token letting ``identity`` join, publish and subscribe in ``room``.

        With ``room_create`` the token also lets the SFU create ``room`` on join; without
        ``can_publish`` it may only subscribe (and send data).
        """
        claims = join_claims(
            self.api_key, room, identity, now, room_create=room_create, can_publish=can_publish
        )
        return self.sign(claims)
