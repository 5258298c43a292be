"""Self-test of tests/harness/sfu.py and tests/harness/tokens.py without the real SFU.

A stand-in server (fake_sfu.py) is started through the same code path as the SFU, proving: the
config carries the documented LiveKit key names and free ports; readiness waits for /healthz;
the process is stopped by PID (SIGKILL when SIGTERM is ignored) and is gone afterwards; an SFU
that exits at startup, never gets healthy or dies during a test makes the harness fail with the
log tail. Tokens are standard HS256 LiveKit JWTs with the requested grants.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from tests.harness import sfu as hs
from tests.harness.tokens import mint_token, new_api_key_pair

FAKE = (sys.executable, str(Path(__file__).with_name("fake_sfu.py")), "--config", "{config}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_starts_waits_for_health_and_stops_by_pid(tmp_path: Path) -> None:
    async with hs.running_sfu(tmp_path, command=FAKE) as sfu:
        url, key, secret, metrics_url, pid = sfu
        assert url == f"ws://127.0.0.1:{sfu.port}" and metrics_url == f"{sfu.http_url}/metrics"
        assert key.startswith("API") and len(secret) >= 32
        config = yaml.safe_load(sfu.config_path.read_text())
        assert config["port"] == sfu.port
        assert config["keys"] == {key: secret}
        assert config["bind_addresses"] == ["127.0.0.1"]
        assert config["rtc"] == {
            "port_range_start": sfu.rtc_port_range[0],
            "port_range_end": sfu.rtc_port_range[1],
            "node_ip": "127.0.0.1",
        }
        assert config["room"] == {"empty_timeout": 300}
        assert config["logging"] == {"level": "info"}
        async with httpx.AsyncClient() as client:
            assert (await client.get(metrics_url)).status_code == 200
        sfu.assert_alive()
        assert not _gone(pid)
    assert _gone(pid)
    assert "listening on" in sfu.log_tail()


async def test_extra_config_merges(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    key, secret = new_api_key_pair()
    hs.write_config(
        path,
        port=1,
        api_key=key,
        api_secret=secret,
        rtc_port_range=(2, 3),
        extra={"room": {"auto_create": False}, "logging": {"level": "debug"}},
    )
    config = yaml.safe_load(path.read_text())
    assert config["room"] == {"empty_timeout": 300, "auto_create": False}
    assert config["logging"] == {"level": "debug"}


async def test_exit_at_startup_fails_with_log_tail(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(hs.SfuExitedError, match="boom, refusing to start"):
        async with hs.running_sfu(tmp_path, command=FAKE, env={"FAKE_SFU_MODE": "exit-early"}):
            pytest.fail("must not get here")
    assert time.monotonic() - started < 10


async def test_never_healthy_fails_within_bound(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(hs.SfuExitedError, match="not healthy"):
        async with hs.running_sfu(
            tmp_path, command=FAKE, env={"FAKE_SFU_MODE": "never-healthy"}, startup_timeout_s=2
        ):
            pytest.fail("must not get here")
    assert time.monotonic() - started < 10


async def test_death_during_test_fails_with_log_tail(tmp_path: Path) -> None:
    with pytest.raises(hs.SfuExitedError, match="crashing now"):
        async with hs.running_sfu(
            tmp_path, command=FAKE, env={"FAKE_SFU_MODE": "die-later"}
        ) as sfu:
            await asyncio.sleep(2.0)
            with pytest.raises(hs.SfuExitedError):
                sfu.assert_alive()


async def test_sigterm_ignored_then_sigkill(tmp_path: Path) -> None:
    started = time.monotonic()
    async with hs.running_sfu(
        tmp_path, command=FAKE, env={"FAKE_SFU_MODE": "ignore-term"}, stop_timeout_s=1.0
    ) as sfu:
        pid = sfu.pid
    assert _gone(pid)
    assert sfu.process.returncode == -9
    assert time.monotonic() - started < 10
    assert "ignoring SIGTERM" in sfu.log_tail()


def test_free_ports_are_free() -> None:
    port = hs.free_tcp_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    start, end = hs.free_udp_range(50)
    assert end - start == 49
    low, high = hs.ephemeral_port_range()
    assert end < low or start > high  # clients' ephemeral sockets cannot collide
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", start))


def test_tokens_are_livekit_hs256_jwts() -> None:
    key, secret = new_api_key_pair()
    token = mint_token(key, secret, "alice", "room-1", can_publish=False, hidden=True)
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert claims["iss"] == key and claims["sub"] == "alice" and claims["name"] == "alice"
    video = claims["video"]
    assert video["room"] == "room-1" and video["roomJoin"] is True
    assert video["canPublish"] is False and video["canSubscribe"] is True
    assert video["hidden"] is True
    assert claims["exp"] - claims["nbf"] == pytest.approx(3600, abs=5)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "wrong secret " * 4, algorithms=["HS256"])


def test_expired_token() -> None:
    key, secret = new_api_key_pair()
    token = mint_token(key, secret, "bob", "r", ttl=timedelta(seconds=-60))
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, secret, algorithms=["HS256"])
