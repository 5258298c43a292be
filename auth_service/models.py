"""Request bodies of the token endpoints: decoding, validation, and the Matrix error type.

Decoding reproduces what lk-jwt-service's Go decoder (``encoding/json`` with
``DisallowUnknownFields``) accepts, because a drop-in must refuse and accept the same bodies:

* the first JSON value of the body is decoded; bytes after it are ignored;
* a top-level ``null`` decodes to an empty request (validation then refuses it);
* object keys match field names exactly or, failing that, case-insensitively; the last one wins;
* an unknown key, a value of the wrong JSON type, a non-integer or out-of-range number for an
  integer field, NaN/Infinity, or invalid JSON → :class:`NotJsonError` (400 ``M_NOT_JSON``);
* ``null`` for any field leaves its zero value;
* invalid UTF-8 and lone UTF-16 surrogates become U+FFFD, one per bad byte, as in Go.

Validation then applies upstream's checks in upstream's order with upstream's messages
(400 ``M_BAD_JSON``), and one check beyond upstream: a device ID must be printable ASCII
without ``:``, at most 255 characters (:func:`check_device_id`). The Matrix spec leaves device
IDs opaque and upstream takes anything, but the legacy identity ``user_id:device_id`` is split
at colons by clients, shown in logs and limited in length by the SFU; homeservers generate
device IDs of letters.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_JSON_WHITESPACE: Final = " \t\n\r"
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
MAX_DEVICE_ID_LENGTH: Final = 255
_DEVICE_ID: Final = re.compile("[!-9;-~]*")  # printable ASCII (no space), no ':'


def _replace_one_byte(error: UnicodeError) -> tuple[str, int]:
    """Decode error handler: one U+FFFD per invalid byte, as Go's ``utf8.DecodeRune`` does."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "\ufffd", error.start + 1


codecs.register_error("auth_service.go_replace", _replace_one_byte)


class MatrixError(Exception):
    """An error answer in the Matrix shape ``{"errcode", "error"}`` with an HTTP status."""

    def __init__(
        self, status: int, errcode: str, error: str, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"errcode": self.errcode, "error": self.error, **self.extra}


class RequestError(MatrixError, ValueError):
    """A request body that cannot be used; the parsers' only error type."""


class NotJsonError(RequestError):
    """The body is not JSON, or not JSON of the expected shape (400 ``M_NOT_JSON``)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(400, "M_NOT_JSON", "Error reading request")
        self.detail = detail


class BadJsonError(RequestError):
    """The body decoded but misses required fields (400 ``M_BAD_JSON``).

    ``limit`` names the cap of ``docs/limits.md`` the request exceeded, if that is the reason.
    """

    def __init__(self, error: str, limit: str = "") -> None:
        super().__init__(400, "M_BAD_JSON", error)
        self.limit = limit


def unauthorized() -> MatrixError:
    """Upstream's single answer for every authentication failure."""
    return MatrixError(401, "M_UNAUTHORIZED", "The request could not be authorised.")


# --- Go-compatible decoding -------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise NotJsonError(f"invalid JSON literal {name}")


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def decode_first_json_value(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` the way Go's ``json.Decoder.Decode`` reads it."""
    text = body.decode("utf-8", errors="auth_service.go_replace")
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    if start == len(text):
        raise NotJsonError("empty body")
    try:
        value, _end = _DECODER.raw_decode(text, start)
    except NotJsonError:
        raise
    except (ValueError, RecursionError) as exc:
        raise NotJsonError(str(exc)) from None
    return value


def _fold(name: str) -> str:
    """Simple case folding of a key, close to Go's ``foldName`` for ASCII field names."""
    return "".join(c.upper().lower() if len(c.upper()) == 1 else c for c in name)


@functools.cache
def _folded(names: tuple[str, ...]) -> dict[str, str]:
    return {_fold(name): name for name in names}


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise NotJsonError(f"{where} must be a string")
    return _LONE_SURROGATE.sub("\ufffd", value)


def _int(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise NotJsonError(f"{where} must be an integer")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise NotJsonError(f"{where} is out of range")
    return value


def _fields(value: Any, names: tuple[str, ...], where: str) -> dict[str, Any]:
    """Map a decoded JSON object onto known field names (Go's matching rules)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise NotJsonError(f"{where} must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = key if key in names else _folded(names).get(_fold(key))
        if name is None:
            raise NotJsonError(f"unknown field {key!r} in {where}")
        out[name] = item
    return out


def _decode_object(body: bytes, names: tuple[str, ...]) -> dict[str, Any]:
    # Duplicate keys: the JSON decoder keeps the last value, and so does Go.
    return _fields(decode_first_json_value(body), names, "request body")


@dataclass(frozen=True)
class OpenIdToken:
    """The OpenID token a client got from ``/openid/request_token`` on its homeserver."""

    access_token: str = ""
    token_type: str = ""
    matrix_server_name: str = ""
    expires_in: int = 0

    @classmethod
    def from_json(cls, value: Any) -> OpenIdToken:
        """Decode the ``openid_token`` object."""
        names = ("access_token", "token_type", "matrix_server_name", "expires_in")
        raw = _fields(value, names, "openid_token")
        return cls(
            access_token=_string(raw.get("access_token"), "access_token"),
            token_type=_string(raw.get("token_type"), "token_type"),
            matrix_server_name=_string(raw.get("matrix_server_name"), "matrix_server_name"),
            expires_in=_int(raw.get("expires_in"), "expires_in"),
        )


@dataclass(frozen=True)
class RtcMember:
    """The MatrixRTC member a ``/get_token`` request is for."""

    id: str = ""
    claimed_user_id: str = ""
    claimed_device_id: str = ""

    @classmethod
    def from_json(cls, value: Any) -> RtcMember:
        """Decode the ``member`` object."""
        raw = _fields(value, ("id", "claimed_user_id", "claimed_device_id"), "member")
        return cls(
            id=_string(raw.get("id"), "id"),
            claimed_user_id=_string(raw.get("claimed_user_id"), "claimed_user_id"),
            claimed_device_id=_string(raw.get("claimed_device_id"), "claimed_device_id"),
        )


_DELAY_MISSING: Final = "The request body is missing `delay_id` or `delay_timeout`"


def check_device_id(device_id: str, name: str) -> None:
    """Refuse a device ID that is not printable ASCII without ``:``, or longer than 255."""
    if len(device_id) > MAX_DEVICE_ID_LENGTH:
        raise BadJsonError(
            f"The request body `{name}` is longer than {MAX_DEVICE_ID_LENGTH} characters",
            limit="auth_device_id_length",
        )
    if not _DEVICE_ID.fullmatch(device_id):
        raise BadJsonError(
            f"The request body `{name}` must be printable ASCII without spaces or `:`"
        )


def _check_delay_pair(delay_id: str, delay_timeout: int) -> None:
    """Both delayed-leave parameters or neither (``delay_timeout`` counts when > 0)."""
    if (delay_id != "" or delay_timeout > 0) and not (delay_id != "" and delay_timeout > 0):
        raise BadJsonError(_DELAY_MISSING)


@dataclass(frozen=True)
class LegacySfuRequest:
    """The body of ``POST /sfu/get``."""

    room: str = ""
    openid_token: OpenIdToken = field(default_factory=OpenIdToken)
    device_id: str = ""
    delay_id: str = ""
    delay_timeout: int = 0
    delay_cs_api_url: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = (
        "room",
        "openid_token",
        "device_id",
        "delay_id",
        "delay_timeout",
        "delay_cs_api_url",
    )

    @classmethod
    def parse(cls, body: bytes) -> LegacySfuRequest:
        """Decode and validate a body; raises :class:`RequestError` only."""
        raw = _decode_object(body, cls.FIELDS)
        request = cls(
            room=_string(raw.get("room"), "room"),
            openid_token=OpenIdToken.from_json(raw.get("openid_token")),
            device_id=_string(raw.get("device_id"), "device_id"),
            delay_id=_string(raw.get("delay_id"), "delay_id"),
            delay_timeout=_int(raw.get("delay_timeout"), "delay_timeout"),
            delay_cs_api_url=_string(raw.get("delay_cs_api_url"), "delay_cs_api_url"),
        )
        request.validate()
        return request

    def validate(self) -> None:
        """Upstream's checks, in upstream's order."""
        if self.room == "":
            raise BadJsonError("Missing room parameter")
        if self.openid_token.access_token == "" or self.openid_token.matrix_server_name == "":
            raise BadJsonError("Missing OpenID token parameters")
        _check_delay_pair(self.delay_id, self.delay_timeout)
        check_device_id(self.device_id, "device_id")


@dataclass(frozen=True)
class SfuRequest:
    """The body of ``POST /get_token`` (MSC4195)."""

    room_id: str = ""
    slot_id: str = ""
    openid_token: OpenIdToken = field(default_factory=OpenIdToken)
    member: RtcMember = field(default_factory=RtcMember)
    delay_id: str = ""
    delay_timeout: int = 0
    delay_cs_api_url: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = (
        "room_id",
        "slot_id",
        "openid_token",
        "member",
        "delay_id",
        "delay_timeout",
        "delay_cs_api_url",
    )

    @classmethod
    def parse(cls, body: bytes) -> SfuRequest:
        """Decode and validate a body; raises :class:`RequestError` only."""
        request = cls.parse_unvalidated(body)
        request.validate()
        return request

    @classmethod
    def parse_unvalidated(cls, body: bytes) -> SfuRequest:
        """Decode a body (Go's rules) without upstream's checks."""
        raw = _decode_object(body, cls.FIELDS)
        return SfuRequest(
            room_id=_string(raw.get("room_id"), "room_id"),
            slot_id=_string(raw.get("slot_id"), "slot_id"),
            openid_token=OpenIdToken.from_json(raw.get("openid_token")),
            member=RtcMember.from_json(raw.get("member")),
            delay_id=_string(raw.get("delay_id"), "delay_id"),
            delay_timeout=_int(raw.get("delay_timeout"), "delay_timeout"),
            delay_cs_api_url=_string(raw.get("delay_cs_api_url"), "delay_cs_api_url"),
        )

    def validate(self) -> None:
        """Upstream's checks, in upstream's order."""
        self._require_fields(article="a ")
        _check_delay_pair(self.delay_id, self.delay_timeout)

    def _require_fields(self, *, article: str) -> None:
        """The required fields, in upstream's order; its messages name the missing ones with
        ``article`` ("a " on ``/get_token``, none on ``/delegate_delayed_leave``)."""
        if self.room_id == "" or self.slot_id == "":
            raise BadJsonError("The request body is missing `room_id` or `slot_id`")
        member = self.member
        if member.id == "" or member.claimed_user_id == "" or member.claimed_device_id == "":
            raise BadJsonError(
                f"The request body `member` is missing {article}`id`, `claimed_user_id` or "
                "`claimed_device_id`"
            )
        if self.openid_token.access_token == "" or self.openid_token.matrix_server_name == "":
            raise BadJsonError(
                f"The request body `openid_token` is missing {article}`access_token` or "
                "`matrix_server_name`"
            )
        check_device_id(self.member.claimed_device_id, "claimed_device_id")


@dataclass(frozen=True)
class DelegateDelayedLeaveRequest(SfuRequest):
    """The body of ``POST /delegate_delayed_leave``: ``/get_token``'s, the delay fields required."""

    @classmethod
    def parse(cls, body: bytes) -> DelegateDelayedLeaveRequest:
        """Decode and validate a body; raises :class:`RequestError` only."""
        request = SfuRequest.parse_unvalidated(body)
        delegate = cls(**{name: getattr(request, name) for name in SfuRequest.FIELDS})
        delegate.validate()
        return delegate

    def validate(self) -> None:
        """Upstream's checks and messages (which differ from ``/get_token``'s in wording)."""
        self._require_fields(article="")
        if self.delay_id == "" or self.delay_timeout <= 0:
            raise BadJsonError(_DELAY_MISSING)
        check_device_id(self.member.claimed_device_id, "claimed_device_id")


ParsedRequest = LegacySfuRequest | SfuRequest
