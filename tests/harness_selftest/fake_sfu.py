"""A stand-in for `python -m sfu --config FILE`, used only to test tests/harness/sfu.py.

It reads the config the harness wrote, checks it has the documented LiveKit key names, serves
`/healthz` and `/metrics` on `port`, and misbehaves as `FAKE_SFU_MODE` asks:
`ok` (default), `exit-early`, `die-later`, `ignore-term`, `never-healthy`.
"""

from __future__ import annotations

import http.server
import os
import signal
import sys
import threading
import time
from typing import Any

import yaml

EXPECTED_KEYS = {"port", "bind_addresses", "keys", "rtc", "room", "limits", "logging"}


def main() -> int:
    mode = os.environ.get("FAKE_SFU_MODE", "ok")
    config_path = sys.argv[sys.argv.index("--config") + 1]
    with open(config_path) as f:
        config: dict[str, Any] = yaml.safe_load(f)
    print(f"fake sfu: mode={mode} config keys={sorted(config)}", flush=True)
    if set(config) != EXPECTED_KEYS:
        print(f"fake sfu: unexpected config keys {sorted(config)}", flush=True)
        return 2
    rtc = config["rtc"]
    assert set(rtc) == {"port_range_start", "port_range_end", "node_ip"}, rtc
    assert config["bind_addresses"] == ["127.0.0.1"]
    if mode == "exit-early":
        print("fake sfu: boom, refusing to start", flush=True)
        return 3
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, lambda *_: print("fake sfu: ignoring SIGTERM", flush=True))
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    healthy = mode != "never-healthy"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self.send_response(200 if healthy else 503)
                self.end_headers()
                self.wfile.write(b"ok")
            elif self.path == "/metrics":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"fake_sfu_up 1\n")
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            print(f"fake sfu: {format % args}", flush=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(config["port"])), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"fake sfu: listening on {config['port']}", flush=True)
    deadline = time.monotonic() + 60  # never outlive a test run
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if mode == "die-later" and time.monotonic() > deadline - 59:
            print("fake sfu: crashing now", flush=True)
            os._exit(4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
