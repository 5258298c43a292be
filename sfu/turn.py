"""The ICE servers a participant is handed in its JoinResponse: ``rtc.turn_servers`` and
``rtc.ice_servers`` as LiveKit ``ICEServer`` messages.

A TURN server with a shared ``secret`` gets per-participant, time-limited credentials in the
"TURN REST API" scheme coturn implements with ``use-auth-secret`` / ``static-auth-secret``:
username ``"<expiry unix time>:<identity>"``, credential ``base64(HMAC-SHA1(secret, username))``.
An identity that is not short printable ASCII (a STUN USERNAME must be under 513 bytes and is
SASLprep'd, RFC 8489 §14.3) is replaced by its SHA-256 there; coturn only reads the expiry.
URLs follow LiveKit's form: ``turn:host:port?transport=udp|tcp``, ``turns:host:port?transport=tcp``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence

from livekit.protocol import rtc

from sfu.config import RtcConfig, TurnServer

__all__ = ["ice_servers_for", "rest_credential", "turn_url"]

#: identities longer than this (or not printable ASCII) are hashed in TURN REST usernames
MAX_IDENTITY_IN_USERNAME = 128


def turn_url(server: TurnServer) -> str:
    scheme = "turns" if server.protocol == "tls" else "turn"
    transport = "udp" if server.protocol == "udp" else "tcp"
    return f"{scheme}:{server.host}:{server.port}?transport={transport}"


def rest_credential(secret: str, identity: str, ttl: int, now: float) -> tuple[str, str]:
    """(username, credential) valid until ``now + ttl`` for coturn's ``static-auth-secret``."""
    name = identity
    if (
        not name
        or len(name) > MAX_IDENTITY_IN_USERNAME
        or not all(0x20 < ord(c) < 0x7F for c in name)
    ):
        name = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
    username = f"{int(now) + ttl}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def ice_servers_for(
    config: RtcConfig, identity: str, now: float | None = None
) -> tuple[rtc.ICEServer, ...]:
    """The JoinResponse.ice_servers for ``identity``: every TURN server (REST credentials
    derived now), then each ``rtc.ice_servers`` URL on its own."""
    now = time.time() if now is None else now
    servers: list[rtc.ICEServer] = []
    for server in config.turn_servers:
        if server.secret:
            username, credential = rest_credential(server.secret, identity, server.ttl, now)
        else:
            username, credential = server.username, server.credential
        servers.append(
            rtc.ICEServer(urls=[turn_url(server)], username=username, credential=credential)
        )
    servers.extend(_plain(config.ice_servers))
    return tuple(servers)


def _plain(urls: Sequence[str]) -> list[rtc.ICEServer]:
    return [rtc.ICEServer(urls=[url]) for url in urls]
