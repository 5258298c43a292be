"""Element Call 0.26 (its embedded widget build, from npm) in headless Chromium, hosted as a
Matrix widget by a test page that plays the Matrix client.

`element_call_session()` serves `tests/element_call/` (host.html, host.js and node_modules:
`@element-hq/element-call-embedded`, `matrix-widget-api`) from the stdlib static server of
`tests.harness.browser` and launches Debian's Chromium (`tests.harness.chromium`). Each
`ElementCallPage` is one user on one device: its own browser context, host.html, and Element
Call in an iframe of the same origin, started with `start()` against a homeserver with that
user's access token. The host answers the widget API from the homeserver (host.js); Element
Call finds its LiveKit focus through the homeserver (MSC4143 transports, asked over the widget
API: MSC4515), gets its token from the auth service and joins with E2EE.

From outside: an init script in every frame records the RTCPeerConnections the page makes, so
`media()` reads Element Call's own inbound and outbound RTP statistics; `tiles()` reads its
video elements. At teardown every page's console (Element Call's included) and host log are
printed, so pytest shows them for failing tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Frame

from tests.harness.browser import (
    EXTRA_CHROMIUM_FLAGS,
    PAGE_LOAD_TIMEOUT_S,
    HarnessPage,
    PageCallError,
    static_server,
)
from tests.harness.chromium import launch_chromium
from tests.harness.synapse import MatrixUser, Synapse

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_DIR = REPO_ROOT / "tests" / "element_call"
ELEMENT_CALL_DIR = HOST_DIR / "node_modules" / "@element-hq" / "element-call-embedded"
WIDGET_API_UMD = HOST_DIR / "node_modules" / "matrix-widget-api" / "dist" / "api.js"
ELEMENT_CALL_VERSION = "0.26.1"
EC_FRAME_PATH = "/element-call-embedded/dist/"

RECORD_PEER_CONNECTIONS = """(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || window.__testPeerConnections) return;
  const pcs = [];
  window.__testPeerConnections = pcs;
  window.RTCPeerConnection = new Proxy(Native, {
    construct(target, args, newTarget) {
      const pc = Reflect.construct(target, args, newTarget);
      pcs.push(pc);
      return pc;
    },
  });
})();"""

MEDIA_STATS = """async () => {
  const out = {inbound: [], outbound: [], peerConnections: 0};
  for (const pc of window.__testPeerConnections || []) {
    if (pc.connectionState === 'closed') continue;
    out.peerConnections += 1;
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') out.inbound.push({
        kind: s.kind, ssrc: s.ssrc, packetsReceived: s.packetsReceived || 0,
        framesDecoded: s.framesDecoded || 0, totalAudioEnergy: s.totalAudioEnergy || 0,
        totalSamplesReceived: s.totalSamplesReceived || 0});
      if (s.type === 'outbound-rtp') out.outbound.push({
        kind: s.kind, ssrc: s.ssrc, rid: s.rid || null, packetsSent: s.packetsSent || 0,
        framesEncoded: s.framesEncoded || 0});
    });
  }
  return out;
}"""

VIDEO_TILES = """() => [...document.querySelectorAll('video')].map((v) => ({
  width: v.videoWidth, height: v.videoHeight, time: v.currentTime, paused: v.paused,
  readyState: v.readyState}))"""


def check_element_call_modules() -> None:
    """Fail clearly when `npm ci` has not been run in tests/element_call."""
    for path in (ELEMENT_CALL_DIR / "dist" / "index.html", WIDGET_API_UMD):
        if not path.is_file():
            raise AssertionError(
                f"{path} is missing: run `make node-deps` (npm ci in tests/element_call)"
            )
    version = json.loads((ELEMENT_CALL_DIR / "package.json").read_text())["version"]
    assert version == ELEMENT_CALL_VERSION, f"Element Call {version} installed, not 0.26"


@dataclass
class ElementCallPage(HarnessPage):
    """One user's client: host.html with Element Call in its iframe."""

    user: MatrixUser | None = None
    host_log: list[dict[str, Any]] = field(default_factory=list)

    async def start(self, synapse: Synapse, user: MatrixUser, room_id: str) -> None:
        """Embed Element Call for `user` in `room_id`; returns once its widget API is ready.
        In an encrypted room Element Call runs per-participant E2EE."""
        self.user = user
        opts = {
            "homeserver": synapse.client_url,
            "accessToken": user.access_token,
            "userId": user.user_id,
            "deviceId": user.device_id,
            "roomId": room_id,
        }
        await self.call("startCall", opts, timeout_s=30.0)

    async def hang_up(self) -> None:
        """The user hangs up: the host asks Element Call to leave the call."""
        await self.call("hangUp", timeout_s=15.0)

    def call_frame(self) -> Frame:
        for frame in self.page.frames:
            if EC_FRAME_PATH in frame.url:
                return frame
        raise PageCallError(f"{self.name}: no Element Call frame\n{self.log_tail()}")

    async def media(self) -> dict[str, Any]:
        """Element Call's RTP statistics: ``{"inbound": [...], "outbound": [...]}``."""
        result: dict[str, Any] = await asyncio.wait_for(
            self.call_frame().evaluate(MEDIA_STATS), 10.0
        )
        return result

    async def tiles(self) -> list[dict[str, Any]]:
        """Element Call's <video> elements: size, playback time, paused."""
        result: list[dict[str, Any]] = await asyncio.wait_for(
            self.call_frame().evaluate(VIDEO_TILES), 10.0
        )
        return result

    async def events(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call("hostEvents", timeout_s=5.0)
        self.host_log = result
        return result

    async def until(
        self,
        probe: Callable[[], Any],
        predicate: Callable[[Any], bool],
        what: str,
        timeout_s: float,
        interval_s: float = 0.5,
    ) -> Any:
        """Poll ``await probe()`` until `predicate` holds; fail with the last value and logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await probe()
            if predicate(value):
                return value
            if time.monotonic() >= deadline:
                events = await self.events()
                raise PageCallError(
                    f"{self.name}: {what} not reached in {timeout_s} s\n"
                    f"last: {json.dumps(value)[:4000]}\n"
                    f"host: {json.dumps(events[-40:])[:6000]}\nconsole:\n{self.log_tail(120)}"
                )
            await asyncio.sleep(interval_s)

    def dump(self) -> str:
        host = "\n".join(json.dumps(e)[:400] for e in self.host_log[-200:])
        return (
            f"==== Element Call page {self.name}: console ({len(self.console)} lines) ====\n"
            + "\n".join(self.console[-400:])
            + f"\n==== page {self.name}: host events ====\n{host}"
        )


@dataclass
class ElementCallSession:
    browser: Browser
    url: str
    pages: list[ElementCallPage] = field(default_factory=list)

    async def new_page(self, name: str) -> ElementCallPage:
        context = await self.browser.new_context(
            permissions=["camera", "microphone"], viewport={"width": 1024, "height": 700}
        )
        await context.add_init_script(RECORD_PEER_CONNECTIONS)
        page = await context.new_page()
        ecp = ElementCallPage(name, page, context)
        page.on("console", ecp._on_console)
        page.on("pageerror", lambda err: ecp._log(f"pageerror: {err}"))
        page.on("crash", lambda _p: ecp._log("page crashed"))
        page.on("requestfailed", lambda req: ecp._log(f"requestfailed: {req.url} {req.failure}"))
        self.pages.append(ecp)
        await asyncio.wait_for(page.goto(f"{self.url}/host.html"), PAGE_LOAD_TIMEOUT_S)
        await page.wait_for_function(
            "window.hostReady === true", timeout=PAGE_LOAD_TIMEOUT_S * 1000
        )
        return ecp

    async def close(self) -> None:
        for ecp in self.pages:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ecp.events(), 3.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ecp.page.evaluate("window.stopCall()"), 5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ecp.context.close(), 10.0)


@contextlib.asynccontextmanager
async def element_call_session(
    names: Sequence[str], *, extra_flags: Sequence[str] = ()
) -> AsyncIterator[ElementCallSession]:
    """The static server on tests/element_call, Chromium and one host page per name."""
    check_element_call_modules()
    with static_server(root=HOST_DIR) as server:
        async with launch_chromium(*EXTRA_CHROMIUM_FLAGS, *extra_flags) as browser:
            session = ElementCallSession(browser, server.url)
            try:
                for name in names:
                    await session.new_page(name)
                yield session
            finally:
                await session.close()
                print("\n".join(ecp.dump() for ecp in session.pages))
