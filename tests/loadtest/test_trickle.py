"""Trickle ICE against the real SFU: the SFU's candidates are taken out of its SDP and fed to the
client as `SignalResponse.trickle` (before the SDP for the publisher, after it for the
subscriber), and the client's own are taken out of its SDP, so both transports can only connect
through the trickle paths a LiveKit server uses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from livekit.protocol import rtc

from loadtest.media import load_media
from loadtest.participant import Participant, Subscriber
from loadtest.publisher import Publisher
from loadtest.signal import TokenSource
from loadtest.worker import make_layout
from tests.harness.sfu import running_sfu

pytestmark = pytest.mark.slow

CONNECT_TIMEOUT_S = 25.0
MEDIA_TIMEOUT_S = 15.0


def _strip(sdp: str) -> tuple[str, list[tuple[str, int, str]]]:
    """The SDP without candidates, and the candidates as (candidate line, m-index, mid)."""
    kept: list[str] = []
    found: list[tuple[str, int, str]] = []
    index, mid = -1, ""
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            index += 1
        if line.startswith("a=mid:"):
            mid = line[6:]
        if line.startswith("a=candidate:"):
            found.append((line[2:], index, mid))
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept), found


def _as_trickle(found: list[tuple[str, int, str]], target: int) -> list[rtc.SignalResponse]:
    out = []
    for candidate, index, mid in found:
        init = json.dumps({"candidate": candidate, "sdpMid": mid or "0", "sdpMLineIndex": index})
        out.append(
            rtc.SignalResponse(trickle=rtc.TrickleRequest(candidateInit=init, target=target))
        )
    # a browser's end-of-candidates and a malformed one: ignored, never fatal
    out.append(
        rtc.SignalResponse(
            trickle=rtc.TrickleRequest(candidateInit='{"candidate":""}', target=target)
        )
    )
    out.append(rtc.SignalResponse(trickle=rtc.TrickleRequest(candidateInit="{bad", target=target)))
    return out


def _trickle_only(participant: Participant, *, candidates_first: bool) -> list[rtc.TrickleRequest]:
    """Rewire `participant`'s signalling so that every candidate travels by trickle."""
    handler: Callable[[rtc.SignalResponse], Awaitable[None]] = participant.signal.on_message
    send = participant.signal.send
    sent: list[rtc.TrickleRequest] = []

    async def on_message(response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind not in ("offer", "answer"):
            await handler(response)
            return
        description = getattr(response, kind)
        sdp, found = _strip(description.sdp)
        assert found, "the SFU's SDP carries its candidates"
        target = rtc.SignalTarget.SUBSCRIBER if kind == "offer" else rtc.SignalTarget.PUBLISHER
        stripped = rtc.SessionDescription(type=description.type, sdp=sdp, id=description.id)
        trickles = _as_trickle(found, target)
        if candidates_first:
            for trickle in trickles:
                await handler(trickle)
        await handler(rtc.SignalResponse(**{kind: stripped}))
        if not candidates_first:
            await asyncio.sleep(0.3)  # ICE is already checking: these arrive late
            for trickle in trickles:
                await handler(trickle)

    async def send_stripped(request: rtc.SignalRequest) -> None:
        kind = request.WhichOneof("message")
        if kind in ("offer", "answer"):
            description = getattr(request, kind)
            sdp, _ = _strip(description.sdp)
            request = rtc.SignalRequest(
                **{kind: rtc.SessionDescription(type=description.type, sdp=sdp, id=description.id)}
            )
        elif kind == "trickle":
            sent.append(request.trickle)
        await send(request)

    participant.signal.on_message = on_message
    participant.signal.send = send_stripped  # type: ignore[method-assign]
    return sent


async def test_trickled_candidates_both_ways(tmp_path: Path, media_cache: Path) -> None:
    media = load_media(media_cache, ("q", "h"))
    async with running_sfu(tmp_path / "sfu") as sfu:
        tokens = TokenSource(sfu.api_key, sfu.api_secret)
        pub = Publisher(
            sfu.url, tokens.mint("pub-0000", "trickle", publish=True), "pub-0000", number=0,
            media=media, video_rids=("q", "h"), audio=True, talking=True,
        )  # fmt: skip
        sub = Subscriber(
            sfu.url, tokens.mint("sub-0000", "trickle", publish=False), "sub-0000",
            sample_every=1, layout=make_layout("speaker", 0, 1, 1, time.monotonic_ns()),
        )  # fmt: skip
        pub_sent = _trickle_only(pub, candidates_first=True)
        sub_sent = _trickle_only(sub, candidates_first=False)
        try:
            await pub.join()
            await asyncio.wait_for(pub.publish(), CONNECT_TIMEOUT_S)
            pub.start_media()
            await sub.join()
            await asyncio.wait_for(sub.sub_transport.connected.wait(), CONNECT_TIMEOUT_S)
            deadline = time.monotonic() + MEDIA_TIMEOUT_S
            while time.monotonic() < deadline and (
                sub.packets < 100 or not sub.latency_ms or pub.sender_reports == 0
            ):
                await asyncio.sleep(0.2)
            sfu.assert_alive()
        finally:
            await pub.close()
            await sub.close()
    # Both sides' candidates went by trickle only, and media flowed publisher → SFU → subscriber.
    assert pub.pub_transport.trickled >= 1 and sub.sub_transport.trickled >= 1
    assert pub.bad_candidates >= 1 and sub.bad_candidates >= 1  # the malformed ones, counted
    to_publisher = [t for t in pub_sent if t.target == rtc.SignalTarget.PUBLISHER]
    assert to_publisher, pub_sent
    assert [t.target for t in sub_sent] == [rtc.SignalTarget.SUBSCRIBER] * len(sub_sent) != []
    init = json.loads(to_publisher[0].candidateInit)
    assert init["candidate"].startswith("candidate:") and init["sdpMid"] == "0"
    assert init["sdpMLineIndex"] == 0 and init["usernameFragment"]
    assert sub.packets >= 100 and sub.latency_ms, (sub.packets, sub.error, pub.error)
    assert pub.sender_reports > 0
