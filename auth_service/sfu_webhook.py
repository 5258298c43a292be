"""The SFU's webhooks as ``/sfu_webhook`` receives them: LiveKit's signature, protojson body.

The ``Authorization`` header (optionally ``Bearer``-prefixed) is an HS256 API JWT whose issuer
is ``LIVEKIT_KEY``, signed with its secret, within its ``nbf``/``exp`` (10 s leeway), whose
``sha256`` claim is the unpadded-or-padded base64 SHA-256 of the body; the body is a
``WebhookEvent`` in protojson (unknown fields ignored). The SFU's ``webhook.api_key`` must
therefore be ``LIVEKIT_KEY``. Anything else is a :class:`WebhookError` with the HTTP status to
answer: 401 for the signature, 400 for the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

import jwt
from google.protobuf import json_format
from livekit.protocol.webhook import WebhookEvent

LEEWAY_SECONDS: Final = 10
MAX_BODY_BYTES: Final = 1024 * 1024


class WebhookError(Exception):
    """A webhook that is refused; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def receive(body: bytes, authorization: str, api_key: str, api_secret: str) -> WebhookEvent:
    """The verified event of a webhook; raises :class:`WebhookError`."""
    token = authorization.removeprefix("Bearer ").strip()
    if not token:
        raise WebhookError(401, "no Authorization header")
    try:
        claims = jwt.decode(
            token,
            api_secret,
            algorithms=["HS256"],
            issuer=api_key,
            leeway=LEEWAY_SECONDS,
            options={"require": ["iss", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise WebhookError(401, f"invalid token: {exc}") from None
    claimed = claims.get("sha256")
    if not isinstance(claimed, str):
        raise WebhookError(401, "the token has no sha256 claim")
    digest = hashlib.sha256(body).digest()
    padded = base64.b64encode(digest).decode()
    if not (
        hmac.compare_digest(claimed, padded) or hmac.compare_digest(claimed, padded.rstrip("="))
    ):
        raise WebhookError(401, "the body does not match the token's sha256 claim")
    event = WebhookEvent()
    try:
        json_format.Parse(body.decode("utf-8"), event, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError, RecursionError) as exc:
        raise WebhookError(400, f"not a WebhookEvent: {str(exc)[:200]}") from None
    return event
