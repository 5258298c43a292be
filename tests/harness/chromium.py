"""Launch the system Chromium (Debian's /usr/bin/chromium) with Playwright for real-browser tests.

`launch_chromium()` is an async context manager yielding a Playwright `Browser` configured for
WebRTC on loopback (fake camera and microphone, permission prompts auto-accepted, no network
services).  `secure_page()` opens a page on a `http://localhost` origin that Playwright serves
from memory, so `getUserMedia` and `RTCPeerConnection` work without any web server.
The browser and Playwright's driver are stopped when the context exits; a missing Chromium fails
the test (never skips it).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, Page, Route, async_playwright

CHROMIUM = os.environ.get("SFU_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
)
BLANK_PAGE = "<!doctype html><html><head><meta charset=utf-8><title>sfu test</title></head></html>"


@asynccontextmanager
async def launch_chromium(
    *extra_args: str, executable: str | None = None
) -> AsyncIterator[Browser]:
    """Start Chromium (or `executable`, a wrapper that runs it); yield the Browser; close it
    and the Playwright driver on exit."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: run `make system-deps`")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable or CHROMIUM,
            args=[*CHROMIUM_ARGS, *extra_args],
            timeout=30_000,
        )
        try:
            yield browser
        finally:
            await browser.close()


async def secure_page(
    browser: Browser, html: str = BLANK_PAGE, origin: str = "http://localhost"
) -> Page:
    """A new page at `origin`/ (a secure context), its HTML served by Playwright from memory."""
    page = await browser.new_page()

    async def serve(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html", body=html)

    await page.route(f"{origin}/", serve)
    await page.goto(f"{origin}/")
    return page
