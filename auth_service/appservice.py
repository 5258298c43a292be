"""The application-service side of the auth service: its registration and the homeserver's pushes.

Enabled by lk-jwt-service 0.5's variables (``LIVEKIT_AS_TOKEN``, ``LIVEKIT_HS_TOKEN``,
``LIVEKIT_HS_SERVER_NAME``). :func:`registration` is the file an operator lists in Synapse's
``app_service_config_files`` (``matrix-sfu-auth appservice-registration --url URL`` prints
it): a non-exclusive namespace of the homeserver's users, so that the homeserver pushes the
events of every room one of its users is in and lets the application service read their member
lists, and lk-jwt-service's sender ``_lk_jwt_service`` (the focus user), so an existing
registration keeps working. It asks for Synapse's MSC4512 proxy of ``rtc/livekit`` and the
MSC4502 ``is_joined`` scope.

:class:`AppServiceEndpoints` serves the Matrix application-service API routes the homeserver
calls (each authenticated by ``hs_token`` as ``Authorization: Bearer``, or the deprecated
``access_token`` query parameter): ``PUT /_matrix/app/v1/transactions/{txnId}`` (and the legacy
``/transactions/{txnId}``), whose events go to :meth:`Membership.apply` and the focus user
(:meth:`Focus.apply`), and ``POST
/_matrix/app/v1/ping``. A transaction ID already handled is answered ``{}`` without handling it
again (the last :data:`MAX_REMEMBERED_TRANSACTIONS` are remembered); a transaction whose
handling failed is answered 500, so the homeserver sends it again.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import yaml
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .focus import Focus
from .homeserver import IS_JOINED_SCOPE
from .membership import Membership
from .proxied import PROXY_PREFIX

log = logging.getLogger(__name__)

SENDER_LOCALPART: Final = "_lk_jwt_service"
REGISTRATION_ID: Final = "lk-jwt-service"
MAX_TRANSACTION_BYTES: Final = 16 * 1024 * 1024
MAX_REMEMBERED_TRANSACTIONS: Final = 1024
MAX_TRANSACTION_ID_LENGTH: Final = 255


def registration(url: str, as_token: str, hs_token: str, server_name: str) -> dict[str, Any]:
    """Synapse's registration of this application service, listening at ``url`` (also where
    Synapse proxies ``/_matrix/client/*/rtc/livekit/*``, MSC4512)."""
    return {
        "id": REGISTRATION_ID,
        "url": url,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": SENDER_LOCALPART,
        "rate_limited": False,
        "receive_ephemeral": False,
        "namespaces": {
            "users": [{"exclusive": False, "regex": f"@.*:{re.escape(server_name)}"}],
            "aliases": [],
            "rooms": [],
        },
        "io.element.msc4512.proxy_prefix": PROXY_PREFIX,
        "io.element.msc4512.proxy_url": url,
        "io.element.msc4502.scopes": [IS_JOINED_SCOPE],
    }


def registration_yaml(url: str, as_token: str, hs_token: str, server_name: str) -> str:
    """:func:`registration` as the YAML file Synapse reads."""
    return yaml.safe_dump(registration(url, as_token, hs_token, server_name), sort_keys=False)


def _json(status: int, body: dict[str, Any]) -> Response:
    content = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return Response(content, status_code=status, headers={"Content-Type": "application/json"})


def _error(status: int, errcode: str, message: str) -> Response:
    return _json(status, {"errcode": errcode, "error": message})


def hs_token_refusal(request: Request, hs_token: bytes) -> tuple[int, str, str] | None:
    """Why ``request`` is not from the homeserver (status, errcode, message), or ``None``."""
    header = request.headers.get("authorization", "")
    token = header[7:] if header[:7].lower() == "bearer " else ""
    token = token or request.query_params.get("access_token", "")
    if not token:
        return 401, "M_UNAUTHORIZED", "Missing hs_token"
    if not hmac.compare_digest(token.encode("utf-8"), hs_token):
        log.warning("appservice: refused a request with a wrong hs_token")
        return 403, "M_FORBIDDEN", "Invalid hs_token"
    return None


class AppServiceEndpoints:
    """The routes the homeserver calls, authenticated by ``hs_token``."""

    def __init__(
        self,
        hs_token: str,
        membership: Membership,
        limit_hit: Callable[[str], None] = lambda _limit: None,
        focus: Focus | None = None,
    ) -> None:
        self._limit_hit = limit_hit
        self._hs_token = hs_token.encode("utf-8")
        self._membership = membership
        self._focus = focus
        self._done: OrderedDict[str, None] = OrderedDict()

    def _refusal(self, request: Request) -> Response | None:
        refusal = hs_token_refusal(request, self._hs_token)
        return None if refusal is None else _error(*refusal)

    async def ping(self, request: Request) -> Response:
        """``POST /_matrix/app/v1/ping``: the homeserver checking that we are reachable."""
        if request.method != "POST":
            return _error(405, "M_UNRECOGNIZED", "Method not allowed")
        return self._refusal(request) or _json(200, {})

    async def transaction(self, request: Request) -> Response:
        """``PUT /_matrix/app/v1/transactions/{txnId}``: events pushed by the homeserver."""
        if request.method != "PUT":
            return _error(405, "M_UNRECOGNIZED", "Method not allowed")
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        txn_id = str(request.path_params.get("txn_id", ""))
        if not txn_id or len(txn_id) > MAX_TRANSACTION_ID_LENGTH:
            return _error(400, "M_INVALID_PARAM", "Invalid transaction ID")
        if txn_id in self._done:
            return _json(200, {})
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_TRANSACTION_BYTES:
                    self._limit_hit("auth_as_transaction_body")
                    return _error(413, "M_TOO_LARGE", "Transaction too large")
        except ClientDisconnect:
            return _error(400, "M_UNKNOWN", "Client disconnected")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return _error(400, "M_NOT_JSON", "Transaction is not JSON")
        events = document.get("events") if isinstance(document, dict) else None
        if not isinstance(events, list):
            return _error(400, "M_BAD_JSON", "Transaction has no `events` list")
        try:
            await self._membership.apply(events)
            if self._focus is not None:
                await self._focus.apply(events)
        except Exception:
            log.exception("appservice: transaction %r failed; the homeserver will retry", txn_id)
            return _error(500, "M_UNKNOWN", "Transaction failed")
        self._done[txn_id] = None
        while len(self._done) > MAX_REMEMBERED_TRANSACTIONS:
            self._limit_hit("auth_as_transaction_ids")
            self._done.popitem(last=False)
        return _json(200, {})
