"""Twirp framing for LiveKit's server API: routes, bodies, errors, and API-key authorisation.

``POST /twirp/<package>.<Service>/<Method>`` with an ``application/protobuf`` or
``application/json`` (protojson) body; the answer uses the request's encoding. Errors are
Twirp's JSON ``{"code", "msg"}`` with the HTTP status the Twirp spec gives each code, whatever
the request's encoding. Bodies are read up to `MAX_REQUEST_BYTES`.

Authorisation is LiveKit's: an API-key JWT in ``Authorization: Bearer``; a token that does not
verify, and a valid one without the grant a method needs, are both ``unauthenticated`` (as
LiveKit's ``twirpAuthError`` answers), the latter with LiveKit's message ``permissions denied``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from starlette.requests import Request
from starlette.responses import Response

from sfu.auth import AuthError, ClaimGrants, TokenVerifier
from sfu.metrics import COUNTERS
from sfu.room.admin import AdminError

log = logging.getLogger(__name__)

PREFIX = "/twirp/"
#: largest request body read, in bytes (a SendData packet must fit a data-channel message)
MAX_REQUEST_BYTES = 1 << 20
JSON = "application/json"
PROTOBUF = "application/protobuf"
#: HTTP status by Twirp error code (twitchtv/twirp docs/spec_v7.md, "Error codes")
STATUS = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}


class TwirpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        assert code in STATUS, code
        self.code = code
        self.message = message

    def response(self) -> Response:
        body = json.dumps({"code": self.code, "msg": self.message})
        return Response(body, STATUS[self.code], media_type=JSON)


def permission_denied() -> TwirpError:
    return TwirpError("unauthenticated", "permissions denied")


#: answers one decoded request (of its Method's request_type) for the caller's grants
Handler = Callable[[Any, ClaimGrants], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    """One RPC: its request type and the coroutine that answers it."""

    request_type: type[Message]
    handler: Handler


class TwirpService:
    """Serves the methods of one Twirp service (``livekit.RoomService``)."""

    def __init__(
        self, service: str, methods: Mapping[str, Method], verifier: TokenVerifier
    ) -> None:
        self.service = service
        self.methods = dict(methods)
        self.verifier = verifier

    @property
    def path(self) -> str:
        return f"{PREFIX}{self.service}/{{method}}"

    async def handle(self, request: Request) -> Response:
        try:
            return await self._serve(request)
        except TwirpError as exc:
            return exc.response()
        except AdminError as exc:
            return TwirpError(exc.code, exc.message).response()
        except Exception:  # a bug must answer like Twirp, and not end the server
            log.exception("%s: request failed", request.url.path)
            return TwirpError("internal", "internal error").response()

    async def _serve(self, request: Request) -> Response:
        if request.method != "POST":
            raise TwirpError(
                "bad_route", f"unsupported method {request.method} (only POST is allowed)"
            )
        name = request.path_params.get("method", "")
        method = self.methods.get(name)
        if method is None:
            raise TwirpError("bad_route", f"no handler for path {request.url.path!r}")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in (JSON, PROTOBUF, "application/x-protobuf"):
            raise TwirpError("bad_route", f"unexpected Content-Type: {media_type!r}")
        grants = self._authorize(request)
        body = await read_body(request)
        message = decode(method.request_type, body, as_json=media_type == JSON)
        answer = await method.handler(message, grants)
        if media_type == JSON:
            text = json_format.MessageToJson(answer, preserving_proto_field_name=True, indent=None)
            return Response(text, 200, media_type=JSON)
        return Response(answer.SerializeToString(), 200, media_type=PROTOBUF)

    def _authorize(self, request: Request) -> ClaimGrants:
        header = request.headers.get("authorization", "")
        if not header:
            raise permission_denied()  # LiveKit: no token, no grants
        if not header.startswith("Bearer "):
            raise TwirpError(
                "unauthenticated", "invalid authorization header. Must start with Bearer "
            )
        try:
            return self.verifier.verify(header[7:].strip())
        except AuthError as exc:
            raise TwirpError("unauthenticated", exc.message) from None


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, refused (counted) past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> TwirpError:
    COUNTERS.limit_exceeded("api_request_body")
    return TwirpError("malformed", f"request body is larger than {limit} bytes")


def decode(request_type: type[Message], body: bytes, *, as_json: bool) -> Message:
    message = request_type()
    if as_json:
        try:
            json_format.Parse(body.decode("utf-8"), message, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError, RecursionError):
            # UnicodeDecodeError is a ValueError
            raise TwirpError("malformed", "the json request could not be decoded") from None
        return message
    try:
        message.ParseFromString(body)
    except (DecodeError, RecursionError):
        raise TwirpError("malformed", "the protobuf request could not be decoded") from None
    return message
