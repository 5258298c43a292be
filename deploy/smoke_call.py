"""deploy/smoke.sh's last step: a call between two browsers through the running compose stack.

Two livekit-client pages in headless Chromium (the test harness' page and Debian's Chromium)
join `wss://localhost/livekit/sfu` (Caddy in its container, the SFU in its own) with tokens made
from the stack's API key, and each decodes the other's video; media goes to the SFU's published
UDP port. Chromium accepts the stack's test certificate by its key alone. Run from a checkout
with the dev venv (`make venv node-deps`):

    python deploy/smoke_call.py <work dir with certs/tls.crt and secrets/livekit_keys>
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.harness.browser import browser_session  # noqa: E402
from tests.harness.proxy import spki_sha256  # noqa: E402
from tests.harness.tokens import mint_token  # noqa: E402

URL = "wss://localhost/livekit/sfu"
WAIT_S = 40.0


async def call(work: Path) -> None:
    key, secret = (p.strip() for p in (work / "secrets" / "livekit_keys").read_text().split(":"))
    flags = [f"--ignore-certificate-errors-spki-list={spki_sha256(work / 'certs' / 'tls.crt')}"]
    async with browser_session(names=["ann", "ben"], extra_flags=flags) as session:
        for page in session.pages:
            await page.join(URL, mint_token(key, secret, page.name, "smoke-call"))
        ann, ben = session.pages
        for viewer, sender in ((ben, ann), (ann, ben)):
            video, _audio = await viewer.wait_remote_media_flowing(sender.name, timeout_s=WAIT_S)
            print(
                f"ok       {viewer.name} decodes {sender.name}: {video['framesDecoded']} frames "
                f"{video.get('frameWidth')}x{video.get('frameHeight')} {video['codec']}"
            )
        for page in session.pages:
            await page.leave()


if __name__ == "__main__":
    asyncio.run(call(Path(sys.argv[1])))
