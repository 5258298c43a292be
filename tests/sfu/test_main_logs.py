"""The SFU's log never carries an access token (uvicorn's WebSocket lines name the query)."""

from __future__ import annotations

import logging

from sfu.__main__ import RedactTokens

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_the_token_in_a_websocket_line_is_blanked() -> None:
    r = record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/rtc?access_token={TOKEN}&x=1")
    assert RedactTokens().filter(r)
    line = r.getMessage()
    assert TOKEN not in line and "access_token=…&x=1" in line


def test_join_requests_and_plain_messages_are_blanked_too() -> None:
    r = record(f'"WebSocket /rtc/v1?join_request={TOKEN}" 404')
    RedactTokens().filter(r)
    assert TOKEN not in r.getMessage()
    untouched = record("%s joined", "alice")
    RedactTokens().filter(untouched)
    assert untouched.getMessage() == "alice joined"
