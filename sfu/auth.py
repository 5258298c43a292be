"""LiveKit access tokens: HS256 verification against the configured keys, and the grants they carry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

LEEWAY_SECONDS = 60
MAX_IDENTITY_LENGTH = 256
MAX_ROOM_NAME_LENGTH = 256
TRACK_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")


class AuthError(Exception):
    """A token problem; ``status`` is the HTTP status LiveKit answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class VideoGrant:
    room: str = ""
    room_join: bool = False
    room_create: bool = False
    room_list: bool = False
    room_admin: bool = False
    room_record: bool = False
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_publish_sources: tuple[str, ...] = ()
    can_update_own_metadata: bool = False
    hidden: bool = False
    recorder: bool = False


@dataclass(frozen=True)
class ClaimGrants:
    api_key: str
    identity: str
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    kind: str = "standard"
    video: VideoGrant = field(default_factory=VideoGrant)
    expires_at: int = 0


def _bool(grant: Mapping[str, Any], key: str, default: bool) -> bool:
    value = grant.get(key, default)
    if not isinstance(value, bool):
        raise AuthError(401, f"invalid token: video.{key} must be a boolean")
    return value


def _parse_video(raw: Any) -> VideoGrant:
    if raw is None:
        return VideoGrant()
    if not isinstance(raw, dict):
        raise AuthError(401, "invalid token: video grant must be an object")
    room = raw.get("room", "")
    if not isinstance(room, str):
        raise AuthError(401, "invalid token: video.room must be a string")
    can_publish = _bool(raw, "canPublish", True)
    sources = raw.get("canPublishSources") or []
    if not isinstance(sources, list) or not all(s in TRACK_SOURCES for s in sources):
        raise AuthError(401, "invalid token: video.canPublishSources has an unknown source")
    return VideoGrant(
        room=room,
        room_join=_bool(raw, "roomJoin", False),
        room_create=_bool(raw, "roomCreate", False),
        room_list=_bool(raw, "roomList", False),
        room_admin=_bool(raw, "roomAdmin", False),
        room_record=_bool(raw, "roomRecord", False),
        can_publish=can_publish,
        can_subscribe=_bool(raw, "canSubscribe", True),
        can_publish_data=_bool(raw, "canPublishData", can_publish),
        can_publish_sources=tuple(sources),
        can_update_own_metadata=_bool(raw, "canUpdateOwnMetadata", False),
        hidden=_bool(raw, "hidden", False),
        recorder=_bool(raw, "recorder", False),
    )


class TokenVerifier:
    """Verifies LiveKit access tokens signed with one of the configured API secrets."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)

    def verify(self, token: str) -> ClaimGrants:
        if not token:
            raise AuthError(401, "no authorization token")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid token: not a JWT") from None
        if header.get("alg") != "HS256":
            raise AuthError(401, "invalid token: only HS256 is accepted")
        api_key = unverified.get("iss")
        if not isinstance(api_key, str) or api_key not in self._keys:
            raise AuthError(401, "invalid token: unknown API key")
        try:
            claims = jwt.decode(
                token,
                self._keys[api_key],
                algorithms=["HS256"],
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid token: token is expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, "invalid token: token is not valid yet") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError(401, "invalid token: exp claim is required") from None
        except jwt.PyJWTError:
            raise AuthError(401, "invalid token: signature is invalid") from None
        identity = claims.get("sub") or claims.get("jti") or ""
        for name in ("name", "metadata", "kind"):
            if not isinstance(claims.get(name, ""), str):
                raise AuthError(401, f"invalid token: {name} must be a string")
        if not isinstance(identity, str):
            raise AuthError(401, "invalid token: sub must be a string")
        attributes = claims.get("attributes") or {}
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise AuthError(401, "invalid token: attributes must map strings to strings")
        return ClaimGrants(
            api_key=api_key,
            identity=identity,
            name=claims.get("name", "") or "",
            metadata=claims.get("metadata", "") or "",
            attributes=attributes,
            kind=claims.get("kind", "") or "standard",
            video=_parse_video(claims.get("video")),
            expires_at=int(claims["exp"]),
        )

    def verify_join(self, token: str) -> ClaimGrants:
        """Verify a token used to join a room: it must grant roomJoin on a named room."""
        grants = self.verify(token)
        if not grants.video.room_join:
            raise AuthError(401, "permissions denied: token has no roomJoin grant")
        if not grants.identity:
            raise AuthError(400, "identity cannot be empty")
        if not grants.video.room:
            raise AuthError(400, "no room name")
        if len(grants.identity) > MAX_IDENTITY_LENGTH:
            raise AuthError(400, "identity is too long")
        if len(grants.video.room) > MAX_ROOM_NAME_LENGTH:
            raise AuthError(400, "room name is too long")
        return grants

    def mint(self, grants: ClaimGrants, ttl_seconds: int, now: int) -> str:
        """Re-mint a token with every grant of ``grants`` (LiveKit's refresh_token)."""
        v = grants.video
        video: dict[str, Any] = {
            "room": v.room,
            "roomJoin": v.room_join,
            "roomCreate": v.room_create,
            "roomList": v.room_list,
            "roomAdmin": v.room_admin,
            "roomRecord": v.room_record,
            "canPublish": v.can_publish,
            "canSubscribe": v.can_subscribe,
            "canPublishData": v.can_publish_data,
            "canUpdateOwnMetadata": v.can_update_own_metadata,
            "hidden": v.hidden,
            "recorder": v.recorder,
        }
        if grants.video.can_publish_sources:
            video["canPublishSources"] = list(grants.video.can_publish_sources)
        claims: dict[str, Any] = {
            "iss": grants.api_key,
            "sub": grants.identity,
            "nbf": now,
            "exp": now + ttl_seconds,
            "name": grants.name,
            "metadata": grants.metadata,
            "kind": grants.kind,
            "video": video,
        }
        if grants.attributes:
            claims["attributes"] = dict(grants.attributes)
        return jwt.encode(claims, self._keys[grants.api_key], algorithm="HS256")
