"""Config loading: LiveKit key names, env overrides, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sfu.config import ConfigError, from_mapping, load
from sfu.media.fastpath import MODES as FAST_PATH_MODES
from sfu.media.transport import SEND_MODES

SECRET = "s" * 40


def test_livekit_config_carries_over(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
port: 7999
bind_addresses: ["127.0.0.1"]
keys:
  APIabc: {SECRET}
rtc:
  port_range_start: 51000
  port_range_end: 51100
  node_ip: 127.0.0.1
  tcp_port: 7881
  udp_port: 7882
  use_external_ip: false
room:
  auto_create: false
  empty_timeout: 30
logging:
  level: debug
"""
    )
    config = load(str(path), env={})
    assert config.port == 7999
    assert config.keys == {"APIabc": SECRET}
    assert config.rtc.port_range_start == 51000
    assert config.rtc.node_ip == "127.0.0.1"
    assert config.rtc.udp_port == 7882  # single-port mode: the port range is then unused
    assert config.room.auto_create is False
    assert config.room.empty_timeout == 30


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"keys: {{a: {SECRET}}}\nport: 7000\n")
    config = load(str(path), env={"LIVEKIT_PORT": "7100", "NODE_IP": "10.0.0.5"})
    assert config.port == 7100
    assert config.rtc.node_ip == "10.0.0.5"


def test_send_mode_defaults_to_gso_and_takes_every_transport_mode() -> None:
    assert from_mapping({"keys": {"k": SECRET}}).rtc.send_mode == "gso"
    for mode in SEND_MODES:
        assert (
            from_mapping({"keys": {"k": SECRET}, "rtc": {"send_mode": mode}}).rtc.send_mode == mode
        )


def test_fast_path_defaults_to_auto_and_takes_every_loader_mode() -> None:
    assert from_mapping({"keys": {"k": SECRET}}).rtc.fast_path == "auto"
    for mode in FAST_PATH_MODES:
        assert (
            from_mapping({"keys": {"k": SECRET}, "rtc": {"fast_path": mode}}).rtc.fast_path == mode
        )


def test_keys_from_env_and_body() -> None:
    config = load(None, env={"LIVEKIT_CONFIG": "port: 7200", "LIVEKIT_KEYS": f"k1: {SECRET}"})
    assert config.keys == {"k1": SECRET}
    assert config.port == 7200


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"keys": {"k": SECRET}, "bogus": 1}, "unknown config key 'bogus'"),
        ({"keys": {"k": SECRET}, "rtc": {"nope": 1}}, "unknown config key 'rtc.nope'"),
        ({"keys": {"k": "secret"}}, "placeholder"),
        ({"keys": {"k": "short"}}, "placeholder or shorter"),
        ({}, "no API keys"),
        ({"keys": {"k": SECRET}, "port": "x"}, "port: invalid value"),
        ({"keys": {"k": SECRET}, "room": {"auto_create": "maybe"}}, "room.auto_create"),
        ({"keys": {"k": SECRET}, "rtc": {"udp_port": 70000}}, "rtc.udp_port"),
        (
            {"keys": {"k": SECRET}, "rtc": {"port_range_start": 9, "port_range_end": 2}},
            "port range",
        ),
        ({"keys": {"k": SECRET}, "rtc": {"node_ip": "example.org"}}, "not an IP address"),
        ({"keys": {"k": SECRET}, "room": [1]}, "expected a mapping"),
        ({"keys": {"k": SECRET}, "rtc": {"send_mode": "fast"}}, "rtc.send_mode: must be one of"),
        ({"keys": {"k": SECRET}, "rtc": {"fast_path": "on"}}, "rtc.fast_path: must be one of"),
        ({"keys": {"k": SECRET}, "prometheus_port": 70000}, "prometheus_port"),
        ({"keys": {"k": SECRET}, "prometheus_port": 7880}, "other than port"),
        ({"keys": {"k": SECRET}, "limits": {"max_sessions": -1}}, "must not be negative"),
        ({"keys": {"k": SECRET}, "limits": {"max_sessions_per_ip": -1}}, "must not be negative"),
        ({"keys": {"k": SECRET}, "logging": {"level": "loud"}}, "logging.level: unknown level"),
    ],
)
def test_errors_are_clear(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping(raw)


def test_unreadable_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(tmp_path / "missing.yaml"), env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("keys: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(str(bad), env={})


def test_config_file_from_env_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text(f"keys: {{a: {SECRET}}}\nport: 7300\nredis: {{address: file:6379}}\n")
    env = {
        "LIVEKIT_CONFIG_FILE": str(path),
        "LIVEKIT_CONFIG": "port: 1",  # the file wins over the body
        "LIVEKIT_BIND": "127.0.0.1, ::1",
        "REDIS_HOST": "redis.internal:6380",
        "REDIS_PASSWORD": "hunter2",
    }
    config = load(None, env=env)
    assert config.port == 7300
    assert config.bind_addresses == ("127.0.0.1", "::1")
    assert (config.redis.address, config.redis.password) == ("redis.internal:6380", "hunter2")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(None, env={"LIVEKIT_CONFIG_FILE": str(tmp_path / "absent.yaml")})


def test_ignored_livekit_keys_warn_by_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sfu.config"):
        config = from_mapping(
            {"keys": {"k": SECRET}, "rtc": {"tcp_port": 7881}, "development": True}
        )
    assert config.port == 7880
    assert [r.getMessage() for r in caplog.records] == [
        "config key rtc.tcp_port is a LiveKit setting this SFU ignores",
        "config key development is a LiveKit setting this SFU ignores",
    ]


def test_admission_defaults_and_prometheus_port(caplog: pytest.LogCaptureFixture) -> None:
    defaults = from_mapping({"keys": {"k": SECRET}})
    assert defaults.room.auto_create is False  # rooms come from roomCreate tokens
    assert (defaults.limits.max_sessions, defaults.limits.max_sessions_per_ip) == (0, 64)
    assert defaults.prometheus_port == 0
    with caplog.at_level(logging.WARNING, logger="sfu.config"):
        config = from_mapping({"keys": {"k": SECRET}, "prometheus_port": 6789})
    assert config.prometheus_port == 6789 and caplog.records == []  # implemented, not ignored


@pytest.mark.parametrize("level", ["debug", "info", "warn", "warning", "error", "ERROR"])
def test_logging_levels(level: str) -> None:
    assert from_mapping({"keys": {"k": SECRET}, "logging": {"level": level}}).logging.level == level


def test_signal_message_size_is_configurable() -> None:
    raw = {"keys": {"k": SECRET}, "limits": {"max_signal_message_size": 4096}}
    assert from_mapping(raw).limits.max_signal_message_size == 4096


def test_webhook_keys() -> None:
    keys = {"APIabc": SECRET}
    config = from_mapping(
        {"keys": keys, "webhook": {"api_key": "APIabc", "urls": ["https://hooks.example/lk"]}}
    )
    assert config.webhook.urls == ("https://hooks.example/lk",)
    assert from_mapping({"keys": keys}).webhook.urls == ()
    for webhook, message in (
        ({"urls": ["http://x/"]}, "api_key is required to use webhooks"),
        ({"api_key": "other", "urls": ["http://x/"]}, "is not one of the keys"),
        ({"api_key": "APIabc", "urls": ["ftp://x/"]}, "is not an http"),
    ):
        with pytest.raises(ConfigError, match=message):
            from_mapping({"keys": keys, "webhook": webhook})


def test_file_variables_hold_secrets(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"APIfile: {SECRET}\n")
    config = load(None, env={"LIVEKIT_KEYS_FILE": str(keys), "LIVEKIT_KEYS": "x: y"})
    assert config.keys == {"APIfile": SECRET}
    body = tmp_path / "config.yaml"
    body.write_text(f"keys: {{k: {SECRET}}}\nport: 7444\n")
    assert load(None, env={"LIVEKIT_CONFIG_FILE": str(body)}).port == 7444
    with pytest.raises(ConfigError, match=r"LIVEKIT_KEYS_FILE: cannot read /nonexistent/k: "):
        load(None, env={"LIVEKIT_KEYS_FILE": "/nonexistent/k"})
    big = tmp_path / "big"
    big.write_bytes(b"a" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match=r"REDIS_PASSWORD_FILE: .* is larger than 1048576 bytes"):
        load(None, env={"REDIS_PASSWORD_FILE": str(big), "LIVEKIT_KEYS": f"k: {SECRET}"})


def test_redis_keys_livekit_names_and_sentinel() -> None:
    config = from_mapping(
        {
            "keys": {"k": "s" * 40},
            "redis": {
                "address": "redis:6379",
                "username": "u",
                "password": "p",
                "db": 2,
                "use_tls": True,
            },
            "node_address": "10.0.0.5:7880",
        }
    )
    assert config.redis.enabled and config.redis.use_tls and config.redis.db == 2
    assert config.node_address == "10.0.0.5:7880"
    assert "p" not in repr(config.redis)  # the password stays out of logs
    sentinel = from_mapping(
        {
            "keys": {"k": "s" * 40},
            "redis": {"sentinel_master_name": "m", "sentinel_addresses": ["s1:26379", "s2:26379"]},
        }
    )
    assert sentinel.redis.enabled and sentinel.redis.sentinel_addresses == ("s1:26379", "s2:26379")
    assert not from_mapping({"keys": {"k": "s" * 40}}).redis.enabled


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"address": "redis"}, "redis.address: 'redis' is not host:port"),
        ({"sentinel_addresses": ["s:26379"]}, "sentinel_master_name: required"),
        ({"address": "r:1", "db": -1}, "redis.db: must not be negative"),
    ],
)
def test_redis_keys_refused(redis: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_mapping({"keys": {"k": "s" * 40}, "redis": redis})


def test_node_address_from_env() -> None:
    config = load(env={"LIVEKIT_KEYS": f"k: {SECRET}", "NODE_ADDRESS": "10.0.0.9:7880"})
    assert config.node_address == "10.0.0.9:7880"
