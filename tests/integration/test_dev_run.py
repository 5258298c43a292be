"""`make run` (scripts/dev_run.py) as a newcomer meets it: the real script and services.

It prints the Synapse settings Element Call 0.26 needs (msc4143 on, matrix_rtc.transports naming
the auth service, the room version) besides the .well-known fragment, and serves the dev meet
page, which loads nothing from the internet: two Chromium tabs on it join `dev-room` with camera
and microphone and each decodes the other's video.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness.chromium import launch_chromium
from tests.harness.devrun import dev_run

pytestmark = pytest.mark.slow

WAIT_S = 40.0


def _yaml_after(text: str, marker: str) -> dict[str, Any]:
    """The YAML block printed after the comment line containing `marker`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    block: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if not line.startswith("#"):
            block.append(line)
    loaded: dict[str, Any] = yaml.safe_load("\n".join(block))
    return loaded


async def test_make_run_prints_the_synapse_settings_and_serves_a_meet_page(
    tmp_path: Path,
) -> None:
    async with dev_run(tmp_path) as (ports, printed):
        service_url = f"http://127.0.0.1:{ports['AUTH_PORT']}"
        homeserver = _yaml_after(printed, "Synapse's homeserver.yaml")
        assert homeserver == {
            "experimental_features": {"msc4143_enabled": True},
            "matrix_rtc": {"transports": [{"type": "livekit", "livekit_service_url": service_url}]},
        }, printed
        assert _yaml_after(printed, "room versions before 11") == {"default_room_version": "11"}
        well_known = json.loads(
            printed.split("/.well-known/matrix/client")[1].split("\n\n")[0].split("\n", 2)[2]
        )
        assert well_known == {
            "org.matrix.msc4143.rtc_foci": [{"type": "livekit", "livekit_service_url": service_url}]
        }
        meet_url = f"http://127.0.0.1:{ports['MEET_PORT']}/"
        assert meet_url in printed
        async with httpx.AsyncClient(timeout=10) as http:
            tokens = [
                (await http.get(f"{meet_url}token", params={"name": n})).json() for n in ("<x>", "")
            ]
        assert re.fullmatch(r"x-[0-9a-f]{6}", tokens[0]["identity"]), tokens
        assert re.fullmatch(r"guest-[0-9a-f]{6}", tokens[1]["identity"]), tokens
        assert {t["room"] for t in tokens} == {"dev-room"}

        async with launch_chromium("--autoplay-policy=no-user-gesture-required") as browser:
            pages = []
            for name in ("ann", "ben"):
                context = await browser.new_context(permissions=["camera", "microphone"])
                page = await context.new_page()
                requested: list[str] = []
                page.on("request", lambda r, requested=requested: requested.append(r.url))
                page.on("console", lambda m, name=name: print(f"[{name}] {m.type}: {m.text[:300]}"))
                await page.goto(f"{meet_url}?name={name}")
                pages.append((name, page, requested))
            for name, page, requested in pages:
                other = "ben" if name == "ann" else "ann"
                deadline = time.monotonic() + WAIT_S
                while True:
                    state = await page.evaluate("window.meet.state()")
                    seen = [
                        t
                        for t in state
                        if not t["local"]
                        and t["identity"].startswith(f"{other}-")
                        and t["framesDecoded"] > 10
                        and t["videoWidth"] > 0
                    ]
                    if seen:
                        break
                    if time.monotonic() >= deadline:
                        statuses = [f"{n}: {await p.text_content('#status')}" for n, p, _ in pages]
                        raise AssertionError(f"{name} never saw {other}: {statuses} {state}")
                    await asyncio.sleep(0.5)
                print(f"{name} sees {seen}")
                local = [t for t in state if t["local"]]
                assert local and local[0]["identity"].startswith(f"{name}-"), state
                hosts = {httpx.URL(u).host for u in requested}
                assert hosts == {"127.0.0.1"}, requested  # the page, the SFU: nothing else
            for _name, page, _requested in pages:
                await page.evaluate("window.meet.room && window.meet.room.disconnect()")
                await page.context.close()
