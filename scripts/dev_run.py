"""`make run`: the SFU and the auth service on loopback with embedded single-node dev defaults.

Generates an API key/secret for this run (printed once), writes a config under .run/, starts both
services, prints how to connect, and stops both (by PID) on Ctrl-C or when either exits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
SFU_PORT = int(os.environ.get("SFU_PORT", "7880"))
AUTH_PORT = int(os.environ.get("AUTH_PORT", "8080"))
HOST = "127.0.0.1"


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


def main() -> int:
    RUN_DIR.mkdir(exist_ok=True)
    key = "dev" + secrets.token_hex(6)
    secret = secrets.token_urlsafe(36)
    config = RUN_DIR / "sfu.yaml"
    config.write_text(
        f"port: {SFU_PORT}\n"
        f"bind_addresses: [{HOST}]\n"
        f"keys:\n  {key}: {secret}\n"
        "rtc:\n  port_range_start: 50000\n  port_range_end: 50999\n"
        f"  node_ip: {HOST}\n"
        # restricted users only join rooms that exist: the auth service creates them (CreateRoom)
        "room:\n  auto_create: false\n"
        # the auth service watches delegated delayed leaves through the SFU's webhooks
        f"webhook:\n  api_key: {key}\n  urls: [http://{HOST}:{AUTH_PORT}/sfu_webhook]\n"
        "logging:\n  level: info\n"
    )
    config.chmod(0o600)
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

    def stop(*_args: object) -> None:
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
            stop()
            return 1
        well_known = {
            "org.matrix.msc4143.rtc_foci": [
                {"type": "livekit", "livekit_service_url": f"http://{HOST}:{AUTH_PORT}"}
            ]
        }
        print(
            "\n".join(
                [
                    "",
                    "Matrix SFU is running (single node, embedded defaults, loopback only).",
                    f"  SFU (LiveKit signalling):  ws://{HOST}:{SFU_PORT}   metrics: http://{HOST}:{SFU_PORT}/metrics",
                    f"  Auth service:              http://{HOST}:{AUTH_PORT}   (POST /sfu/get, /get_token)",
                    f"  API key / secret (this run only): {key} / {secret}",
                    "",
                    "Add to your homeserver's /.well-known/matrix/client:",
                    json.dumps(well_known, indent=2),
                    "",
                    "A dev token for room 'dev-room' (valid 6 h), for any LiveKit client or SDK:",
                    f"  url:   ws://{HOST}:{SFU_PORT}",
                    f"  token: {dev_token(key, secret, 'dev-room', 'dev-user')}",
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
