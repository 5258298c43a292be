"""Self-test of tests/harness/browser.py and tests/browser/ without an SFU.

Proves: the static server serves the page, livekit-client's UMD build and its E2EE worker with
JavaScript MIME types; Debian Chromium starts with the harness flags; `LivekitClient.Room`
constructs with Element Call's options (with and without E2EE); the E2EE worker runs (answers
`init`); the fake camera renders frames at the requested 1280x720 and the fake mic carries
sound; WebRTC works over loopback (the `--allow-loopback-in-peer-connection` flag) and the same
stats summaries `stats()` uses read decoded frames and audio energy from real reports; a join to
an address where nothing listens fails within its bound and is logged.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

from tests.harness import browser as hb
from tests.harness.sfu import free_tcp_port

pytestmark = pytest.mark.slow

EXPECTED_LIVEKIT_CLIENT = "2.21.0"


def _fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_static_server_serves_page_library_and_worker() -> None:
    hb.check_node_modules()
    with hb.static_server() as server:
        status, ctype, body = _fetch(f"{server.url}/page.html")
        assert status == 200 and ctype.startswith("text/html")
        assert b"livekit-client.umd.js" in body and b"harness.js" in body
        for path in (
            "harness.js",
            "node_modules/livekit-client/dist/livekit-client.umd.js",
            hb.E2EE_WORKER_PATH,
        ):
            status, ctype, body = _fetch(f"{server.url}/{path}")
            assert status == 200, path
            assert ctype.startswith("text/javascript"), (path, ctype)
            assert len(body) > 1000, path
    package = json.loads((hb.BROWSER_DIR / "package.json").read_text())
    assert package["dependencies"]["livekit-client"] == EXPECTED_LIVEKIT_CLIENT
    lock = json.loads((hb.BROWSER_DIR / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/livekit-client"]["version"]
    assert locked == EXPECTED_LIVEKIT_CLIENT


async def test_page_loads_and_room_constructs() -> None:
    async with hb.browser_session(names=["solo"]) as session:
        page = session.pages[0]
        info = await page.call("harnessInfo")
        assert info["livekitClientVersion"] == EXPECTED_LIVEKIT_CLIENT
        assert info["protocolVersion"] >= 16
        assert info["secureContext"] is True  # getUserMedia and WebCrypto need it
        assert info["e2eeSupported"] is True
        assert info["e2eeWorkerUrl"].endswith(hb.E2EE_WORKER_PATH)

        plain = await page.call("constructRoom", {})
        assert plain["constructed"] and plain["state"] == "disconnected"
        assert plain["simulcast"] is True and plain["videoCodec"] == "vp8"
        assert plain["layers"] == [180, 360]
        assert plain["adaptiveStream"] and plain["dynacast"]
        assert plain["e2eeManager"] is False

        encrypted = await page.call(
            "constructRoom", {"e2eeKey": "shared secret", "simulcast": False}
        )
        assert encrypted["e2eeManager"] is True and encrypted["simulcast"] is False

        worker = await page.call("e2eeWorkerCheck")
        assert worker["reply"]["kind"] == "initAck", worker

        stats = await page.stats()
        assert stats["connected"] is False and stats["remote"] == [] and stats["local"] == []
        events = await page.events()
        assert events[0]["type"] == "HarnessReady"
        assert not [e for e in events if e["type"] in ("WindowError", "UnhandledRejection")], events


async def test_fake_camera_and_microphone() -> None:
    async with hb.browser_session(names=["devices"]) as session:
        page = session.pages[0]
        camera = await page.call("localCamera", {"resolution": {"width": 1280, "height": 720}})
        assert (camera["videoWidth"], camera["videoHeight"]) == (1280, 720), camera
        assert camera["framesLater"] > camera["framesFirst"] >= 5, camera
        mic = await page.call("localMicrophone", 2500)
        assert mic["readyState"] == "live"
        assert mic["peak"] > 0.01, mic  # Chromium's fake mic beeps


async def test_loopback_webrtc_and_stats_summaries() -> None:
    async with hb.browser_session(names=["loop"]) as session:
        result = await session.pages[0].call("loopbackCall", {"timeoutMs": 15000}, timeout_s=30)
    assert result["connectionState"] == "connected", result
    assert any(" 127.0.0.1 " in c for c in result["candidates"]["a"]), result["candidates"]
    assert sorted(result["received"]) == ["audio", "video"]
    video = result["inboundVideo"][0]
    assert video["framesDecoded"] >= 30 and video["frameWidth"] > 0 and video["frameHeight"] > 0
    assert "codec" in video and "freezeCount" in video and "framesDropped" in video
    audio = result["inboundAudio"][0]
    assert audio["totalSamplesReceived"] > 0 and audio["totalAudioEnergy"] > 0
    assert "concealedSamples" in audio
    outbound = result["outboundVideo"][0]
    assert outbound["bytesSent"] > 0 and outbound["frameHeight"] > 0 and "active" in outbound
    assert result["element"]["videoWidth"] > 0


async def test_join_where_nothing_listens_fails_within_bound() -> None:
    port = free_tcp_port()  # closed again: connections are refused
    async with hb.browser_session(names=["nobody"]) as session:
        page = session.pages[0]
        started = time.monotonic()
        with pytest.raises(hb.PageCallError) as failure:
            await page.join(f"ws://127.0.0.1:{port}", "not-a-token", timeout_s=40)
        assert time.monotonic() - started < 40
        assert "join() failed" in str(failure.value)
        stats = await page.stats()
        assert stats["connected"] is False
        await page.leave()


async def test_several_pages_are_independent() -> None:
    async with hb.browser_session(3) as session:
        infos = await asyncio.gather(*(p.call("harnessInfo") for p in session.pages))
        assert [p.name for p in session.pages] == ["page0", "page1", "page2"]
        assert all(i["livekitClientVersion"] == EXPECTED_LIVEKIT_CLIENT for i in infos)
        contexts = {id(p.context) for p in session.pages}
        assert len(contexts) == 3
