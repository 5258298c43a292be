"""Headless Chromium running livekit-client for end-to-end tests.

`browser_session()` serves `tests/browser/` (page.html, harness.js, node_modules) from a stdlib
static HTTP server on 127.0.0.1 (ephemeral port, own thread), launches Debian's Chromium through
Playwright with the flags WebRTC needs on loopback, and opens `HarnessPage`s, one browser
context (profile) each. A `HarnessPage` calls the functions harness.js puts on `window` and polls
`stats()` with bounded timeouts. At teardown every page's console log, page errors and harness
event log are printed, so pytest shows them for failing tests.

Chromium is started by `tests.harness.chromium.launch_chromium` (Debian's binary, never a
downloaded one), plus `--autoplay-policy=no-user-gesture-required`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page

from tests.harness.chromium import launch_chromium

REPO_ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO_ROOT / "tests" / "browser"
LIVEKIT_UMD = BROWSER_DIR / "node_modules" / "livekit-client" / "dist" / "livekit-client.umd.js"
E2EE_WORKER_PATH = "node_modules/livekit-client/dist/livekit-client.e2ee.worker.mjs"
# Chromium itself comes from tests.harness.chromium (Debian's /usr/bin/chromium, loopback WebRTC
# flags); remote <audio> must play without a user gesture or inbound audio is never pulled.
EXTRA_CHROMIUM_FLAGS: tuple[str, ...] = ("--autoplay-policy=no-user-gesture-required",)
PAGE_LOAD_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 30.0
LOG_LINES_KEPT = 3000
#: the beep of Chromium's fake audio capture device (--use-fake-device-for-media-stream)
FAKE_MICROPHONE_HZ = 400.0
CONSOLE_LINE_MAX = 500


# ---------------------------------------------------------------------------------------------
# Static file server
# ---------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",  # module workers need a JavaScript MIME type
        ".map": "application/json",
        ".html": "text/html",
        ".wasm": "application/wasm",
    }
    requests: list[str]

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        self.requests.append(format % args)


class StaticServer:
    """`tests/browser/` over HTTP on 127.0.0.1:<ephemeral>, in a daemon thread."""

    def __init__(self, root: Path = BROWSER_DIR, host: str = "127.0.0.1") -> None:
        self.root = root
        self.requests: list[str] = []
        handler = type("Handler", (_QuietHandler,), {"requests": self.requests})
        self._httpd = http.server.ThreadingHTTPServer(
            (host, 0), functools.partial(handler, directory=str(root))
        )
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> StaticServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


@contextlib.contextmanager
def static_server(root: Path = BROWSER_DIR, host: str = "127.0.0.1") -> Iterator[StaticServer]:
    server = StaticServer(root, host).start()
    try:
        yield server
    finally:
        server.stop()


def check_node_modules() -> None:
    """Fail clearly when `npm ci` has not been run in tests/browser."""
    if not LIVEKIT_UMD.is_file():
        raise AssertionError(
            f"{LIVEKIT_UMD} is missing: run `make node-deps` "
            "(npm ci in tests/browser) before the browser tests"
        )


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------


POST_JSON = """async ([url, body]) => {
  const response = await fetch(url, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)});
  return {status: response.status, body: await response.json()};
}"""


class PageCallError(AssertionError):
    """A window function failed or timed out; the message carries the page's recent log."""


@dataclass
class HarnessPage:
    """One participant: a page in its own browser context, with the harness API."""

    name: str
    page: Page
    context: BrowserContext
    console: list[str] = field(default_factory=list)
    harness_events: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def _on_console(self, message: ConsoleMessage) -> None:
        self._log(f"console.{message.type}: {message.text}")

    def _log(self, line: str) -> None:
        if len(line) > CONSOLE_LINE_MAX:
            line = line[:CONSOLE_LINE_MAX] + f"... ({len(line)} chars)"
        self.console.append(f"+{time.monotonic() - self.t0:7.2f}s {line}")
        if len(self.console) > LOG_LINES_KEPT:
            del self.console[: len(self.console) - LOG_LINES_KEPT]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console[-lines:])

    async def call(self, function: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """`await window[function](...args)` in the page, bounded by `timeout_s`."""
        script = "([fn, args]) => window[fn](...args)"
        try:
            return await asyncio.wait_for(
                self.page.evaluate(script, [function, list(args)]), timeout_s
            )
        except TimeoutError as exc:
            raise PageCallError(
                f"{self.name}: {function}() did not finish in {timeout_s} s\n{self.log_tail()}"
            ) from exc
        except Exception as exc:  # playwright.Error carries the JS exception text
            if isinstance(exc, PageCallError):
                raise
            raise PageCallError(
                f"{self.name}: {function}() failed: {exc}\n{self.log_tail()}"
            ) from exc

    async def post_json(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """`POST url` with a JSON body from inside the page (the browser's fetch, TLS and CORS,
        as Element Call asks for its token): ``{"status", "body"}``."""
        answer: dict[str, Any] = await self.page.evaluate(POST_JSON, [url, body])
        return answer

    # -- the window API --------------------------------------------------------------------------

    async def join(
        self,
        url: str,
        token: str,
        *,
        simulcast: bool = True,
        adaptive_stream: bool = True,
        dynacast: bool = True,
        e2ee_key: str | None = None,
        video: bool = True,
        audio: bool = True,
        video_css: tuple[int, int] = (320, 180),
        capture: tuple[int, int, int] = (1280, 720, 30),
        rtc_config: dict[str, Any] | None = None,
        red: bool = False,
        refuse_red: bool = False,
        timeout_s: float = 45.0,
    ) -> dict[str, Any]:
        """Connect, publish camera (VP8, layers 180/360/capture) and mic; returns what published.
        `rtc_config` goes to livekit-client's connect options (e.g. iceTransportPolicy); `red`
        publishes the mic with audio RED, `refuse_red` answers the SFU's offers without it."""
        opts: dict[str, Any] = {
            "simulcast": simulcast,
            "adaptiveStream": adaptive_stream,
            "dynacast": dynacast,
            "e2eeKey": e2ee_key,
            "video": video,
            "audio": audio,
            "videoCss": {"width": video_css[0], "height": video_css[1]},
            "capture": {"width": capture[0], "height": capture[1], "frameRate": capture[2]},
            "timeoutMs": int(timeout_s * 1000) - 5000,
            "rtcConfig": rtc_config,
            "red": red,
            "refuseRed": refuse_red,
        }
        result: dict[str, Any] = await self.call("join", url, token, opts, timeout_s=timeout_s)
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.call("stats", timeout_s=10.0)
        return result

    async def ice_routes(self) -> dict[str, Any]:
        """The selected candidate pair of the publisher and subscriber peer connections."""
        result: dict[str, Any] = await self.call("iceRoutes", timeout_s=10.0)
        return result

    async def events(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call("events", timeout_s=5.0)
        return result

    async def resize(self, target: str, width: int, height: int) -> int:
        return int(await self.call("resize", target, width, height, timeout_s=5.0))

    async def hide(self, target: str) -> int:
        return int(await self.call("hide", target, timeout_s=5.0))

    async def show(self, target: str) -> int:
        return int(await self.call("show", target, timeout_s=5.0))

    async def local_encodings(self, kind: str = "video") -> list[dict[str, Any]]:
        """`RTCRtpSender.getParameters().encodings` of the local `kind` track: rid, active, ..."""
        result: list[dict[str, Any]] = await self.call("localEncodings", kind, timeout_s=5.0)
        return result

    async def set_camera(self, enabled: bool) -> None:
        await self.call("setCamera", enabled, timeout_s=25.0)

    async def set_microphone(self, enabled: bool) -> None:
        await self.call("setMicrophone", enabled, timeout_s=25.0)

    async def start_sampler(self, identity: str, interval_ms: int = 200) -> None:
        """Sample `identity`'s inbound counters in the page every `interval_ms`."""
        await self.call("startSampler", identity, interval_ms, timeout_s=5.0)

    async def take_samples(self) -> list[dict[str, Any]]:
        """The samples taken since the last call (`at`: epoch ms; `video`, `audio`: counters)."""
        result: list[dict[str, Any]] = await self.call("takeSamples", timeout_s=10.0)
        return result

    async def leave(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.call("leave", timeout_s=15.0)
        self.harness_events = result
        return result

    # -- polling ---------------------------------------------------------------------------------

    async def wait_for_stats(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout_s: float = 20.0,
        interval_s: float = 0.5,
        what: str = "stats condition",
    ) -> dict[str, Any]:
        """Poll `stats()` until `predicate(stats)` holds; fail with the last stats and log."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while True:
            last = await self.stats()
            if predicate(last):
                return last
            if time.monotonic() >= deadline:
                events = await self.events()
                raise PageCallError(
                    f"{self.name}: {what} not reached in {timeout_s} s\n"
                    f"last stats: {json.dumps(last, indent=1)[:6000]}\n"
                    f"events: {json.dumps(events[-60:], indent=None)[:6000]}\n"
                    f"console:\n{self.log_tail()}"
                )
            await asyncio.sleep(interval_s)

    async def wait_for_event(
        self, event_type: str, *, timeout_s: float = 20.0, **match: Any
    ) -> dict[str, Any]:
        """Poll the harness event log until an event of `event_type` with fields `match` shows up."""
        deadline = time.monotonic() + timeout_s
        while True:
            events = await self.events()
            for event in events:
                if event.get("type") == event_type and all(
                    event.get(k) == v for k, v in match.items()
                ):
                    return event
            if time.monotonic() >= deadline:
                raise PageCallError(
                    f"{self.name}: event {event_type} {match} not seen in {timeout_s} s\n"
                    f"events: {json.dumps(events[-60:])[:6000]}\nconsole:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.25)

    async def wait_remote_media_flowing(
        self,
        from_identity: str,
        *,
        timeout_s: float = 30.0,
        min_frames: int = 10,
        growth_window_s: float = 2.0,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait until video from `from_identity` decodes and keeps decoding, and its audio has
        energy; returns (video entry, audio entry) of the later stats sample."""

        def flowing(s: dict[str, Any]) -> bool:
            v = remote_inbound(s, from_identity, "video")
            a = remote_inbound(s, from_identity, "audio")
            return (
                v is not None
                and v.get("framesDecoded", 0) >= min_frames
                and a is not None
                and a.get("totalSamplesReceived", 0) > 0
                and a.get("totalAudioEnergy", 0) > 0
            )

        first = await self.wait_for_stats(
            flowing, timeout_s=timeout_s, what=f"video+audio from {from_identity}"
        )
        v0 = remote_inbound(first, from_identity, "video") or {}
        a0 = remote_inbound(first, from_identity, "audio") or {}
        await asyncio.sleep(growth_window_s)

        def grew(s: dict[str, Any]) -> bool:
            v = remote_inbound(s, from_identity, "video") or {}
            a = remote_inbound(s, from_identity, "audio") or {}
            more_frames = v.get("framesDecoded", 0) > v0.get("framesDecoded", 0)
            more_samples = a.get("totalSamplesReceived", 0) > a0.get("totalSamplesReceived", 0)
            return bool(more_frames and more_samples)

        later = await self.wait_for_stats(
            grew, timeout_s=10.0, what=f"frames/samples from {from_identity} still increasing"
        )
        return (
            remote_inbound(later, from_identity, "video") or {},
            remote_inbound(later, from_identity, "audio") or {},
        )

    def dump(self) -> str:
        events = "\n".join(json.dumps(e) for e in self.harness_events[-200:])
        return (
            f"==== page {self.name}: console ({len(self.console)} lines) ====\n"
            + "\n".join(self.console[-400:])
            + f"\n==== page {self.name}: harness events ====\n{events}"
        )


def remote_entries(stats: dict[str, Any], identity: str, kind: str) -> list[dict[str, Any]]:
    return [
        r
        for r in stats.get("remote", [])
        if r.get("identity") == identity and r.get("kind") == kind
    ]


def remote_inbound(stats: dict[str, Any], identity: str, kind: str) -> dict[str, Any] | None:
    """The first inbound-rtp summary of `identity`'s `kind` track, or None."""
    for entry in remote_entries(stats, identity, kind):
        inbound = entry.get("inbound") or []
        if inbound:
            first: dict[str, Any] = inbound[0]
            return first
    return None


def signal_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The UpdateTrackSettings a page sent and the SubscribedQualityUpdates it received."""
    kinds = {"UpdateTrackSettings", "SubscribedQualityUpdate"}
    return [e for e in events if e.get("type") in kinds]


def local_outbound(stats: dict[str, Any], kind: str = "video") -> list[dict[str, Any]]:
    """Per-rid outbound-rtp summaries of the local `kind` track, lowest layer first."""
    for entry in stats.get("local", []):
        if entry.get("kind") == kind:
            outbound: list[dict[str, Any]] = entry.get("outbound") or []
            return outbound
    return []


# ---------------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------------


@dataclass
class BrowserSession:
    browser: Browser
    server: StaticServer
    pages: list[HarnessPage] = field(default_factory=list)

    @property
    def page_url(self) -> str:
        return f"{self.server.url}/page.html"

    async def new_page(self, name: str | None = None, *, loglevel: str = "info") -> HarnessPage:
        """A fresh browser context + page with harness.js loaded and ready."""
        name = name or f"page{len(self.pages)}"
        context = await self.browser.new_context(
            permissions=["camera", "microphone"], viewport={"width": 1280, "height": 800}
        )
        page = await context.new_page()
        hp = HarnessPage(name, page, context)
        page.on("console", hp._on_console)
        page.on("pageerror", lambda err: hp._log(f"pageerror: {err}"))
        page.on("crash", lambda _p: hp._log("page crashed"))
        page.on(
            "requestfailed",
            lambda req: hp._log(f"requestfailed: {req.url} {req.failure}"),
        )
        self.pages.append(hp)
        await asyncio.wait_for(
            page.goto(f"{self.page_url}?loglevel={loglevel}"), PAGE_LOAD_TIMEOUT_S
        )
        await page.wait_for_function(
            "window.harnessReady === true", timeout=PAGE_LOAD_TIMEOUT_S * 1000
        )
        return hp

    async def close(self) -> None:
        for hp in self.pages:
            with contextlib.suppress(Exception):
                hp.harness_events = await asyncio.wait_for(
                    hp.page.evaluate("window.events ? window.events() : []"), 3.0
                )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hp.page.evaluate("window.leave && window.leave()"), 12.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(hp.context.close(), 10.0)

    def dump(self) -> str:
        return "\n".join(hp.dump() for hp in self.pages)


@contextlib.asynccontextmanager
async def browser_session(
    pages: int = 0,
    *,
    names: Sequence[str] | None = None,
    extra_flags: Sequence[str] = (),
    loglevel: str = "info",
    host: str = "127.0.0.1",
    executable: str | None = None,
) -> AsyncIterator[BrowserSession]:
    """Static server + Chromium + `pages` ready pages (named by `names` when given).

    `host` is the address the pages are served from (a browser in a network namespace cannot
    reach 127.0.0.1; that origin is then declared secure for getUserMedia); `executable` runs
    Chromium through a wrapper (e.g. `ip netns exec`)."""
    check_node_modules()
    with static_server(host=host) as server:
        flags = [*EXTRA_CHROMIUM_FLAGS, *extra_flags]
        if host != "127.0.0.1":
            flags.append(f"--unsafely-treat-insecure-origin-as-secure={server.url}")
        async with launch_chromium(*flags, executable=executable) as browser:
            session = BrowserSession(browser, server)
            try:
                wanted = list(names) if names else [f"page{i}" for i in range(pages)]
                for name in wanted:
                    await session.new_page(name, loglevel=loglevel)
                yield session
            finally:
                await session.close()
                print(session.dump())
