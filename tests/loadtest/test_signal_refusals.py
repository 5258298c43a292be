"""A refused join reports the server's status and reason, as the report's `errors` will show it."""

from __future__ import annotations

from pathlib import Path

import pytest
from livekit.protocol import rtc

from loadtest.signal import SignalClient, SignalError, TokenSource
from tests.harness.sfu import running_sfu


async def _ignore(_: rtc.SignalResponse) -> None:
    return None


async def test_refused_joins_carry_the_status_and_the_servers_reason(tmp_path: Path) -> None:
    async with running_sfu(tmp_path / "sfu", extra_config={"room": {"auto_create": False}}) as sfu:
        wrong_secret = TokenSource(sfu.api_key, "x" * 40).mint("a", "room", publish=False)
        with pytest.raises(SignalError) as forged:
            await SignalClient(
                sfu.url, wrong_secret, auto_subscribe=True, on_message=_ignore
            ).connect()
        assert str(forged.value).startswith("join refused: HTTP 401: ")
        missing = TokenSource(sfu.api_key, sfu.api_secret).mint(
            "a", "nowhere", publish=False, create=False
        )
        with pytest.raises(SignalError) as absent:
            await SignalClient(sfu.url, missing, auto_subscribe=True, on_message=_ignore).connect()
        assert str(absent.value) == "join refused: HTTP 404: requested room does not exist"
        sfu.assert_alive()
