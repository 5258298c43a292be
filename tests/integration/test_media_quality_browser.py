"""Issue 16, "Done means", in a real browser: livekit-client 2.21.0 in headless Chromium as the
subscriber behind a shaped link.

The call and scenarios of tests/integration/test_media_quality.py (tests/harness/media_quality.py),
with bob being livekit-client in Chromium, itself inside the shaped namespace (Chromium runs
through `ip netns exec`; its page is served from the veth address), configured like Element Call
(adaptive stream, dynacast) with alice's tile 1280×720 so it asks for the top layer. bob's frames
and audio are read from getStats in the page every 200 ms (harness.js `startSampler`:
inbound-rtp framesDecoded, frameHeight, concealedSamples...), so a freeze is measured to within
that interval. carol, the unshaped subscriber, is the LiveKit Python SDK on the host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.browser import check_node_modules
from tests.harness.media_quality import play

pytestmark = pytest.mark.slow


async def test_browser_subscriber_behind_a_shaped_link(tmp_path: Path) -> None:
    check_node_modules()
    problems = await play(tmp_path, "browser")
    assert not problems, "media quality behind a shaped link (Chromium):\n" + "\n".join(problems)
