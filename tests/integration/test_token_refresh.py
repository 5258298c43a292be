"""Token refresh end to end: the SFU sends each participant a fresh token (`refresh_token`) every
`TOKEN_REFRESH_INTERVAL` (300 s, as LiveKit), so a call outlives its join token and a reconnect
after the original token expired still gets in.

Five minutes is too long for a test, so the real SFU process is started with that one module
constant shortened (`python -c` sets it, then runs the SFU's own `main`); everything else - the
timer loop, the minting, the signing key, the signal framing - is the product's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
import websockets
from livekit import rtc

from sfu.auth import LEEWAY_SECONDS
from sfu.room import participant
from tests.harness.rawsignal import RawSignal
from tests.harness.sfu import running_sfu

ROOM = "refresh-room"
INTERVAL_S = 1.5
SHORTENED_SFU = (
    sys.executable,
    "-c",
    "import sys; import sfu.room.participant as p; "
    f"p.TOKEN_REFRESH_INTERVAL = {INTERVAL_S}; "
    "from sfu.__main__ import main; sys.exit(main(['--config', sys.argv[1]]))",
    "{config}",
)


def test_the_production_interval_is_livekits_five_minutes() -> None:
    assert participant.TOKEN_REFRESH_INTERVAL == 300


async def test_refreshed_tokens_keep_the_grants_and_outlive_the_join_token(
    tmp_path: Path,
) -> None:
    async with running_sfu(tmp_path / "sfu", command=SHORTENED_SFU) as sfu:
        # The SFU accepts tokens up to LEEWAY_SECONDS (60 s) past `exp`: a join token that
        # expired 55 s ago still gets in, and is refused a few seconds later.
        token = sfu.token(
            "ria",
            ROOM,
            name="Ria",
            metadata='{"m": 1}',
            can_publish_data=False,
            ttl=timedelta(seconds=5 - LEEWAY_SECONDS),
        )
        original = jwt.decode(
            token, sfu.api_secret, algorithms=["HS256"], options={"verify_exp": False}
        )
        async with await RawSignal.connect(sfu.url, token) as client:
            join = await client.next("join")
            joined_at = join.at
            first = await client.next("refresh_token", timeout_s=INTERVAL_S + 10)
            second = await client.next("refresh_token", timeout_s=INTERVAL_S + 10)
            # on the timer, not at once and not in a burst
            assert first.at - joined_at >= INTERVAL_S * 0.8
            assert second.at - first.at >= INTERVAL_S * 0.8

            now = time.time()
            claims = jwt.decode(first.response.refresh_token, sfu.api_secret, algorithms=["HS256"])
            assert claims["iss"] == sfu.api_key and claims["sub"] == "ria"
            assert claims["name"] == "Ria" and claims["metadata"] == '{"m": 1}'
            for grant in ("room", "roomJoin", "canPublish", "canSubscribe", "canPublishData"):
                assert claims["video"][grant] == original["video"][grant], grant
            # a refreshed token lasts until the next refresh plus a minute's grace (the original
            # expiry, if later): long enough for a reconnect, never a standing 10-minute session
            issued = now - (time.monotonic() - first.at)  # wall time the refresh arrived
            assert INTERVAL_S + 60 - 3 <= claims["exp"] - issued <= INTERVAL_S + 60 + 3
            assert claims["exp"] > original["exp"]
            assert claims["nbf"] <= now + 1

            # The join token has expired: the refreshed one still admits the participant (the
            # reconnect a client makes after a network change).
            await asyncio.sleep(max(0.0, original["exp"] + LEEWAY_SECONDS + 1.5 - time.time()))
            with pytest.raises(websockets.InvalidStatus) as expired:
                await RawSignal.connect(sfu.url, token)
            assert expired.value.response.status_code == 401
            async with await RawSignal.connect(sfu.url, second.response.refresh_token) as again:
                rejoin = await again.next("join")
                assert rejoin.response.join.participant.identity == "ria"
                assert rejoin.response.join.room.name == ROOM


async def test_the_python_sdk_takes_the_refreshed_token(tmp_path: Path) -> None:
    """A real client accepts the refresh message and keeps the new token (for its reconnects)."""
    async with running_sfu(tmp_path / "sfu", command=SHORTENED_SFU) as sfu:
        room = rtc.Room()
        refreshed = asyncio.Event()
        room.on("token_refreshed", refreshed.set)
        token = sfu.token("sam", ROOM)
        try:
            await asyncio.wait_for(room.connect(sfu.url, token), 20.0)
            await asyncio.wait_for(refreshed.wait(), INTERVAL_S + 15)
            new_token = room._token  # the SDK (1.2.1) keeps it there; it has no public getter
            assert new_token != token
            claims = jwt.decode(new_token, sfu.api_secret, algorithms=["HS256"])
            assert (claims["sub"], claims["video"]["room"]) == ("sam", ROOM)
        finally:
            await room.disconnect()
