"""Self-test of tests/harness/element_call.py and tests/element_call/ without a homeserver.

Proves: the pinned npm packages are installed (`make node-deps`) at the versions the lock file
names; the static server serves the host page, matrix-widget-api's browser build and Element
Call's widget build (its page and the module scripts it loads, with a JavaScript MIME type, as
module scripts need) from the same origin.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from tests.harness import element_call as ec
from tests.harness.browser import static_server

pytestmark = pytest.mark.slow

PINNED = {"@element-hq/element-call-embedded": "0.26.1", "matrix-widget-api": "1.19.0"}


def _fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_the_pinned_packages_are_installed() -> None:
    ec.check_element_call_modules()
    package = json.loads((ec.HOST_DIR / "package.json").read_text())
    lock = json.loads((ec.HOST_DIR / "package-lock.json").read_text())
    for name, version in PINNED.items():
        assert package["dependencies"][name] == version
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        installed = ec.HOST_DIR / "node_modules" / name / "package.json"
        assert json.loads(installed.read_text())["version"] == version


def test_the_host_and_element_call_are_served_from_one_origin() -> None:
    with static_server(root=ec.HOST_DIR) as server:
        status, ctype, body = _fetch(f"{server.url}/host.html")
        assert status == 200 and ctype.startswith("text/html")
        assert b"matrix-widget-api/dist/api.js" in body and b"host.js" in body
        for path in ("host.js", "node_modules/matrix-widget-api/dist/api.js"):
            status, ctype, _ = _fetch(f"{server.url}/{path}")
            assert status == 200 and ctype.startswith("text/javascript"), (path, ctype)
        base = "node_modules/@element-hq/element-call-embedded/dist"
        status, _, page = _fetch(f"{server.url}/{base}/index.html")
        scripts = re.findall(rb'src="\./(assets/[^"]+\.js)"', page)
        assert status == 200 and scripts, page[:400]
        for script in scripts:
            status, ctype, _ = _fetch(f"{server.url}/{base}/{script.decode()}")
            assert status == 200 and ctype.startswith("text/javascript"), (script, ctype)
        status, _, config = _fetch(f"{server.url}/{base}/config.json")
        # Element Call's own config names no LiveKit service: it finds it through the homeserver.
        assert status == 200 and "livekit" not in json.loads(config)
