"""The command line: startup errors without tracebacks, ``well-known``, and a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from auth_service.__main__ import main, synapse_config, well_known_client_fragment
from auth_service.app import CORS_HEADERS
from tests.harness.logcheck import check_log_text
from tests.harness.synapse import Synapse, free_port

SECRET = "cli-test-secret-0123456789abcdefghijklmnop"
SCRIPT = Path(sys.executable).with_name("matrix-sfu-auth")


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auth_service", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_configuration_is_one_line_without_traceback() -> None:
    result = run_cli({})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "matrix-sfu-auth: configuration error: "
        "LIVEKIT_KEY* / LIVEKIT_SECRET* and LIVEKIT_URL must be set"
    ]
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_line_without_traceback() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            {
                "LIVEKIT_URL": "wss://sfu.example.org",
                "LIVEKIT_KEY": "k",
                "LIVEKIT_SECRET": SECRET,
                "LIVEKIT_FULL_ACCESS_HOMESERVERS": "example.org",
                "LIVEKIT_JWT_BIND": f"127.0.0.1:{port}",
            }
        )
    assert result.returncode == 1
    assert f"matrix-sfu-auth: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LIVEKIT_JWT_BIND": ":1", "LIVEKIT_JWT_PORT": "1"}, "must not be set together"),
        ({"LIVEKIT_SECRET": "secret"}, "placeholder"),
        ({"LIVEKIT_KEY_FILE": "/nonexistent/keys"}, "LIVEKIT_KEY_FILE: cannot read"),
    ],
)
def test_configuration_errors_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    message: str,
) -> None:
    base = {
        "LIVEKIT_URL": "wss://sfu.example.org",
        "LIVEKIT_KEY": "k",
        "LIVEKIT_SECRET": SECRET,
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": "example.org",
    }
    for name in list(os.environ):
        if name.startswith("LIVEKIT_"):
            monkeypatch.delenv(name)
    for name, value in {**base, **env}.items():
        monkeypatch.setenv(name, value)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_well_known_prints_both_discovery_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["well-known", "--service-url", "https://rtc.example.org/livekit/jwt/"]) == 0
    out = capsys.readouterr().out
    url = "https://rtc.example.org/livekit/jwt"
    sections = [
        "\n".join(line for line in block.splitlines() if not line.startswith("#"))
        for block in out.split("\n\n")
    ]
    assert len(sections) == 3
    fragment = json.loads(sections[0])
    assert fragment == {
        "org.matrix.msc4143.rtc_foci": [{"type": "livekit", "livekit_service_url": url}]
    }
    assert fragment == well_known_client_fragment(url)
    synapse = yaml.safe_load(sections[1])
    assert synapse == synapse_config(url)
    assert synapse["experimental_features"] == {"msc4143_enabled": True}
    assert synapse["matrix_rtc"] == {
        "transports": [{"type": "livekit", "livekit_service_url": url}]
    }
    served = yaml.safe_load(sections[2])
    assert served == {"extra_well_known_client_content": fragment}


@pytest.mark.parametrize("url", ["rtc.example.org", "ftp://x", "https://x/?a=1", "https://:80"])
def test_well_known_refuses_bad_urls(capsys: pytest.CaptureFixture[str], url: str) -> None:
    assert main(["well-known", "--service-url", url]) == 2
    assert "--service-url" in capsys.readouterr().err


@pytest.fixture
def served(synapse: Synapse) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The console script serving on a free port, pointed at Synapse; stopped by PID."""
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LIVEKIT_URL": "wss://sfu.example.org",
        "LIVEKIT_KEY": "cli-key",
        "LIVEKIT_SECRET": SECRET,
        # restricted: a full-access user's request would CreateRoom on an SFU, which this test
        # has none of (tests/integration/test_auth_to_sfu.py runs that path against a real one)
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": "elsewhere.example",
        "LIVEKIT_JWT_BIND": f"127.0.0.1:{port}",
        "LIVEKIT_AUTH_HOMESERVER_URLS": f"{synapse.server_name}={synapse.client_url}",
    }
    process = subprocess.Popen(
        [str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        yield base, process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.mark.slow  # starts Synapse
def test_console_script_serves_tokens(
    served: tuple[str, subprocess.Popen[str]], synapse: Synapse
) -> None:
    base, process = served
    user = synapse.create_user("cli_user", "CLIDEV")
    body = {
        "room_id": "!room:example.org",
        "slot_id": "m.call#",
        "openid_token": synapse.openid_token(user),
        "member": {"id": "m1", "claimed_user_id": user.user_id, "claimed_device_id": "CLIDEV"},
    }
    response = httpx.post(f"{base}/get_token", json=body, timeout=10)
    assert response.status_code == 200, response.text
    for name, value in CORS_HEADERS.items():
        assert response.headers[name] == value
    claims = jwt.decode(response.json()["jwt"], SECRET, algorithms=["HS256"])
    assert claims["iss"] == "cli-key"
    assert "roomCreate" not in claims["video"]
    assert httpx.get(f"{base}/get_token", timeout=5).status_code == 405
    assert "matrix_sfu_auth_requests_total" in httpx.get(f"{base}/metrics", timeout=5).text

    os.kill(process.pid, signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.wait(10) in (0, -signal.SIGTERM)
    stderr = process.stderr.read() if process.stderr else ""
    problems = check_log_text(f"auth service (pid {process.pid})", stderr)
    assert problems is None, problems
    assert "issued token" in stderr
