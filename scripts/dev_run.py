"""`make run`: the SFU and the auth service on loopback with embedded single-node dev defaults,
and a meet page where browser tabs join `dev-room`.

Generates an API key/secret for this run (printed once), writes a config under .run/, starts both
services, serves the dev meet page (deploy/meet/ plus livekit-client from npm, vendored at build
time: nothing is loaded from the internet) with a `/token` endpoint that hands each tab a guest
identity in `dev-room`, prints how to connect and what Synapse needs, and stops both services (by
PID) on Ctrl-C or when either exits. Ports: SFU_PORT (7880), AUTH_PORT (8080), MEET_PORT (7890),
UDP_PORT (7882, the SFU's one media port).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jwt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python scripts/dev_run.py` from a checkout
from auth_service.__main__ import well_known_text  # noqa: E402

RUN_DIR = ROOT / ".run"
SFU_PORT = int(os.environ.get("SFU_PORT", "7880"))
AUTH_PORT = int(os.environ.get("AUTH_PORT", "8080"))
MEET_PORT = int(os.environ.get("MEET_PORT", "7890"))
UDP_PORT = int(os.environ.get("UDP_PORT", "7882"))
HOST = "127.0.0.1"
DEV_ROOM = "dev-room"
MEET_DIR = ROOT / "deploy" / "meet"
#: livekit-client's UMD build: vendored into the image at build time, or the test harness' copy
LIVEKIT_CLIENT_CANDIDATES = (
    MEET_DIR / "vendor" / "livekit-client.umd.js",
    ROOT
    / "tests"
    / "browser"
    / "node_modules"
    / "livekit-client"
    / "dist"
    / "livekit-client.umd.js",
)
_NAME = re.compile(r"[^A-Za-z0-9_-]")


def wait_http(url: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def dev_token(key: str, secret: str, room: str, identity: str) -> str:
    now = int(time.time())
    claims = {
        "iss": key,
        "sub": identity,
        "nbf": now,
        "exp": now + 6 * 3600,
        "name": identity,
        "video": {
            "room": room,
            "roomJoin": True,
            "roomCreate": True,  # the SFU creates rooms only for such tokens (auto_create false)
            "canPublish": True,
            "canSubscribe": True,
        },
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def livekit_client_path() -> Path | None:
    return next((p for p in LIVEKIT_CLIENT_CANDIDATES if p.is_file()), None)


def guest_identity(name: str) -> str:
    """`name` cut to 24 safe characters (or "guest"), plus a random suffix: one per tab."""
    base = _NAME.sub("", name)[:24] or "guest"
    return f"{base}-{secrets.token_hex(3)}"


class MeetHandler(http.server.BaseHTTPRequestHandler):
    """GET /, /meet.js, /livekit-client.umd.js and /token?name=…; nothing else."""

    key = ""
    secret = ""
    sfu_url = ""
    server_version = "matrix-sfu-dev-meet"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        files: dict[str, tuple[Path | None, str]] = {
            "/": (MEET_DIR / "index.html", "text/html; charset=utf-8"),
            "/meet.js": (MEET_DIR / "meet.js", "text/javascript"),
            "/livekit-client.umd.js": (livekit_client_path(), "text/javascript"),
        }
        if url.path == "/token":
            query = urllib.parse.parse_qs(url.query[:256])
            identity = guest_identity((query.get("name") or [""])[0])
            body = {
                "url": self.sfu_url,
                "room": DEV_ROOM,
                "identity": identity,
                "token": dev_token(self.key, self.secret, DEV_ROOM, identity),
            }
            self._send(200, json.dumps(body).encode(), "application/json")
        elif url.path in files:
            path, content_type = files[url.path]
            if path is None or not path.is_file():
                self._send(404, b"livekit-client is missing: run `make node-deps`", "text/plain")
            else:
                self._send(200, path.read_bytes(), content_type)
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_meet_server(key: str, secret: str) -> http.server.ThreadingHTTPServer:
    handler = type(
        "Handler",
        (MeetHandler,),
        {"key": key, "secret": secret, "sfu_url": f"ws://{HOST}:{SFU_PORT}"},
    )
    server = http.server.ThreadingHTTPServer((HOST, MEET_PORT), handler)
    server.daemon_threads = True
    threading.Thread(target=functools.partial(server.serve_forever, 0.2), daemon=True).start()
    return server


def synapse_text(service_url: str) -> str:
    """What the homeserver needs for Element Call 0.26: transports (and .well-known for older
    clients), plus the room version its call rooms need."""
    return (
        well_known_text(service_url)
        + "\n# 4. Element Call creates its rooms with the caller in the power levels' users, which\n"
        + '#    room versions before 11 refuse ("Creator user … must not appear in content.users"):\n'
        + 'default_room_version: "11"\n'
    )


def write_config(key: str, secret: str) -> Path:
    RUN_DIR.mkdir(exist_ok=True)
    config = RUN_DIR / "sfu.yaml"
    config.write_text(
        f"port: {SFU_PORT}\n"
        f"bind_addresses: [{HOST}]\n"
        f"keys:\n  {key}: {secret}\n"
        f"rtc:\n  udp_port: {UDP_PORT}\n"
        f"  node_ip: {HOST}\n"
        "drain_timeout: 0\n"  # Ctrl-C: no call to wait for in development
        # restricted users only join rooms that exist: the auth service creates them (CreateRoom)
        "room:\n  auto_create: false\n"
        # the auth service watches delegated delayed leaves through the SFU's webhooks
        f"webhook:\n  api_key: {key}\n  urls: [http://{HOST}:{AUTH_PORT}/sfu_webhook]\n"
        "logging:\n  level: info\n"
    )
    config.chmod(0o600)
    return config


def main() -> int:
    key = "dev" + secrets.token_hex(6)
    secret = secrets.token_urlsafe(36)
    config = write_config(key, secret)
    python = sys.executable
    sfu = subprocess.Popen([python, "-m", "sfu", "--config", str(config)], cwd=ROOT)
    auth_env = {
        **os.environ,
        "LIVEKIT_URL": f"ws://{HOST}:{SFU_PORT}",
        "LIVEKIT_KEY": key,
        "LIVEKIT_SECRET": secret,
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": "*",
        "LIVEKIT_JWT_BIND": f"{HOST}:{AUTH_PORT}",
        # dev only: a homeserver on this machine (loopback) is allowed past the SSRF guard
        "LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS": "true",
    }
    auth = subprocess.Popen([python, "-m", "auth_service"], cwd=ROOT, env=auth_env)
    processes = [sfu, auth]
    meet: http.server.ThreadingHTTPServer | None = None

    def stop(*_args: object) -> None:
        if meet is not None:
            meet.shutdown()
            meet.server_close()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                process.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    try:
        sfu_up = wait_http(f"http://{HOST}:{SFU_PORT}/healthz")
        auth_up = wait_http(f"http://{HOST}:{AUTH_PORT}/healthz")
        if not (sfu_up and auth_up):
            print("make run: a service did not start; see the log above", file=sys.stderr)
            return 1
        meet = start_meet_server(key, secret)
        meet_line = f"  Meet page:                 http://{HOST}:{MEET_PORT}/   (open it in two tabs: both join {DEV_ROOM!r} with camera and mic)"
        if livekit_client_path() is None:
            meet_line += "\n    (livekit-client is missing: run `make node-deps` for the meet page)"
        service_url = f"http://{HOST}:{AUTH_PORT}"
        print(
            "\n".join(
                [
                    "",
                    "Matrix SFU is running (single node, embedded defaults, loopback only).",
                    f"  SFU (LiveKit signalling):  ws://{HOST}:{SFU_PORT}   media: UDP {UDP_PORT}   metrics: http://{HOST}:{SFU_PORT}/metrics",
                    f"  Auth service:              {service_url}   (POST /sfu/get, /get_token)",
                    meet_line,
                    f"  API key / secret (this run only): {key} / {secret}",
                    "",
                    "For Element Call 0.26 the homeserver must name the auth service:",
                    "",
                    synapse_text(service_url),
                    f"A dev token for room {DEV_ROOM!r} (valid 6 h), for any LiveKit client or SDK:",
                    f"  url:   ws://{HOST}:{SFU_PORT}",
                    f"  token: {dev_token(key, secret, DEV_ROOM, 'dev-user')}",
                    "",
                    "Ctrl-C stops both services.",
                ]
            ),
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("make run: a service exited; stopping the other", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
