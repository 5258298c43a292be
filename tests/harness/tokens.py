"""Access tokens for tests: standard LiveKit HS256 JWTs minted with `livekit-api`.

Everything a real deployment's token issuer would put in a token is settable here, so tests can
also build over-scoped, under-scoped and expired tokens without hand-writing JWTs.

Tokens carry ``roomCreate`` unless told otherwise, as the auth service's tokens for users of a
full-access homeserver do: the SFU (``room.auto_create`` false by default) creates a room on
join only for such a token. `room_create=False` gives a restricted user's token.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from livekit import api


def new_api_key_pair() -> tuple[str, str]:
    """A fresh (api_key, api_secret) pair, unique per call (tests generate keys per session)."""
    return "API" + secrets.token_hex(6), secrets.token_urlsafe(32)


def mint_token(
    api_key: str,
    api_secret: str,
    identity: str,
    room: str,
    *,
    name: str | None = None,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_publish_data: bool = True,
    can_publish_sources: list[str] | None = None,
    hidden: bool | None = None,
    room_join: bool = True,
    room_create: bool = True,
    metadata: str | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """A signed access token carrying a `video` grant for `room`.

    A negative `ttl` gives an already-expired token.
    """
    grants = api.VideoGrants(
        room_join=room_join,
        room_create=room_create,
        room=room,
        can_publish=can_publish,
        can_subscribe=can_subscribe,
        can_publish_data=can_publish_data,
        can_publish_sources=can_publish_sources,
        hidden=hidden,
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name if name is not None else identity)
        .with_grants(grants)
        .with_ttl(ttl)
    )
    if metadata is not None:
        token = token.with_metadata(metadata)
    return token.to_jwt()
