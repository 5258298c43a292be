"""What the real SFU writes to its log: never an access token (a token in a log is a session for
whoever reads the log), however the client passes it."""

from __future__ import annotations

import asyncio

from tests.harness.rawsignal import RawSignal
from tests.harness.sfu import SfuInstance


async def test_no_access_token_reaches_the_log(sfu: SfuInstance) -> None:
    token = sfu.token("tina", "logs")
    async with await RawSignal.connect(sfu.url, token) as client:
        await client.next("join")
    await asyncio.sleep(0.3)  # uvicorn's lines are written as the socket opens and closes
    log = sfu.log_path.read_text()
    assert "/rtc?" in log  # the WebSocket line is there, with its query…
    assert token not in log and token.split(".")[2] not in log  # …but not the token
