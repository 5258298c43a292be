"""A call through the TLS reverse proxy as deploy/ runs it: Debian's Caddy with deploy/Caddyfile
itself (TLS_MODE=files, a test certificate), the auth service and the SFU behind it.

Two livekit-client pages in headless Chromium do what Element Call does: each POSTs a Synapse
OpenID token to `https://RTC_DOMAIN/livekit/jwt/sfu/get` (cross-origin: the CORS preflight goes
through Caddy too), connects to the `wss://RTC_DOMAIN/livekit/sfu` URL the auth service answers
with, and decodes the other's video. Chromium resolves the test names to loopback and accepts
the test certificate's key only (`--ignore-certificate-errors-spki-list`). Media goes to the
SFU's one UDP port, as in docker-compose.yml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.harness.browser import HarnessPage, browser_session
from tests.harness.proxy import (
    RTC_DOMAIN,
    chromium_flags,
    running_auth_service,
    running_caddy,
    write_test_certificate,
)
from tests.harness.sfu import free_tcp_port, free_udp_port, running_sfu
from tests.harness.synapse import Synapse
from tests.harness.synapse import synapse as synapse  # the session fixture

pytestmark = pytest.mark.slow

WAIT_S = 40.0


async def sfu_get(page: HarnessPage, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """`POST url` from inside the page (the browser's TLS, CORS and fetch), as Element Call."""
    answer = await page.post_json(url, body)
    assert answer["status"] == 200, answer
    reply: dict[str, Any] = answer["body"]
    return reply


async def test_call_through_the_tls_proxy(tmp_path: Path, synapse: Synapse) -> None:
    certificate = write_test_certificate(tmp_path / "tls")
    users = {name: synapse.create_user(name, f"{name.upper()}DEV") for name in ("tlsann", "tlsben")}
    matrix_room = f"!tlsproxy:{synapse.server_name}"
    https_port, auth_port = free_tcp_port(), free_tcp_port()
    origin = f"https://{RTC_DOMAIN}:{https_port}"
    extra = {"rtc": {"udp_port": free_udp_port()}}
    async with (
        running_sfu(tmp_path / "sfu", extra_config=extra) as sfu,
        running_auth_service(
            tmp_path / "auth",
            api_key=sfu.api_key,
            api_secret=sfu.api_secret,
            livekit_url=f"wss://{RTC_DOMAIN}:{https_port}/livekit/sfu",
            full_access_homeservers=synapse.server_name,
            homeserver_urls=f"{synapse.server_name}={synapse.client_url}",
            sfu_api_url=sfu.http_url,  # as compose: CreateRoom straight to the SFU
            port=auth_port,
        ) as auth,
        running_caddy(
            tmp_path / "caddy",
            certificate,
            auth_upstream=f"127.0.0.1:{auth.port}",
            sfu_upstream=f"127.0.0.1:{sfu.port}",
            https_port=https_port,
        ),
        browser_session(names=list(users), extra_flags=chromium_flags(certificate)) as session,
    ):
        identities: dict[str, str] = {}
        for page in session.pages:
            user = users[page.name]
            reply = await sfu_get(
                page,
                f"{origin}/livekit/jwt/sfu/get",
                {
                    "room": matrix_room,
                    "openid_token": synapse.openid_token(user),
                    "device_id": user.device_id,
                },
            )
            assert reply["url"] == f"wss://{RTC_DOMAIN}:{https_port}/livekit/sfu", reply
            claims = jwt.decode(reply["jwt"], options={"verify_signature": False})
            identities[page.name] = str(claims["sub"])
            joined = await page.join(reply["url"], reply["jwt"], timeout_s=WAIT_S + 10)
            assert joined["identity"] == identities[page.name], joined
        ann, ben = session.pages
        for viewer, sender in ((ben, ann), (ann, ben)):
            video, audio = await viewer.wait_remote_media_flowing(
                identities[sender.name], timeout_s=WAIT_S
            )
            assert video["codec"] == "video/VP8", video
            assert audio["totalAudioEnergy"] > 0, audio
        for page in session.pages:
            await page.leave()
        sfu.assert_alive()
