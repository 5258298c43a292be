"""Settings from the environment: upstream's variables, file variants, and the new ones."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_service.app import build_sfu_client
from auth_service.config import (
    DEFAULT_IP_RATE_LIMIT,
    ConfigError,
    is_placeholder_secret,
    load_settings,
    parse_bind,
    parse_networks,
    parse_server_map,
)
from auth_service.ratelimit import RateLimit

SECRET = "k3y-s3cret-that-is-long-enough-0123456789"
BASE = {
    "LIVEKIT_URL": "wss://sfu.example.org",
    "LIVEKIT_KEY": "APIkey",
    "LIVEKIT_SECRET": SECRET,
    "LIVEKIT_FULL_ACCESS_HOMESERVERS": "example.org",
}


def env(**changes: str | None) -> dict[str, str]:
    values = dict(BASE)
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def test_minimal_environment() -> None:
    settings = load_settings(env())
    assert settings.livekit_url == "wss://sfu.example.org"
    assert (settings.api_key, settings.api_secret) == ("APIkey", SECRET)
    assert settings.full_access_homeservers == ("example.org",)
    assert (settings.bind_host, settings.bind_port) == ("", 8080)
    assert settings.skip_verify_tls is False
    assert settings.log_level == logging.INFO
    assert settings.ip_rate_limit == DEFAULT_IP_RATE_LIMIT
    assert settings.allow_private_homeservers is False
    assert settings.homeserver_urls == {}
    assert settings.metrics_enabled is True
    # Each request asks the homeserver, like upstream; 64 outbound lookups at most.
    assert settings.openid_cache_seconds == 0
    assert settings.max_concurrent_lookups == 64


@pytest.mark.parametrize("missing", ["LIVEKIT_URL", "LIVEKIT_KEY", "LIVEKIT_SECRET"])
def test_required_livekit_settings(missing: str) -> None:
    with pytest.raises(ConfigError, match=r"LIVEKIT_KEY\* / LIVEKIT_SECRET\* and LIVEKIT_URL"):
        load_settings(env(**{missing: None}))


@pytest.mark.parametrize("value", [None, "", " ,  "])
def test_full_access_homeservers_is_required(value: str | None) -> None:
    with pytest.raises(ConfigError, match="LIVEKIT_FULL_ACCESS_HOMESERVERS"):
        load_settings(env(LIVEKIT_FULL_ACCESS_HOMESERVERS=value))


def test_full_access_homeservers_list() -> None:
    settings = load_settings(env(LIVEKIT_FULL_ACCESS_HOMESERVERS="a.org, b.org c.org,,"))
    assert settings.full_access_homeservers == ("a.org", "b.org", "c.org")


@pytest.mark.parametrize(
    "secret",
    [
        "secret",
        "CHANGEME",
        "change-me-please",
        "<your secret>",
        "${LIVEKIT_SECRET}",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ],
)
def test_placeholder_secrets_are_refused(secret: str) -> None:
    assert is_placeholder_secret(secret)
    with pytest.raises(ConfigError, match="placeholder"):
        load_settings(env(LIVEKIT_SECRET=secret))


def test_short_secret_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert load_settings(env(LIVEKIT_SECRET="Sh0rtButReal")).api_secret == "Sh0rtButReal"
    assert "shorter than 32" in caplog.text


def test_key_and_secret_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("filekey\n")
    (tmp_path / "secret").write_text(f" {SECRET}\r\n")
    settings = load_settings(
        env(
            LIVEKIT_KEY_FROM_FILE=str(tmp_path / "key"),
            LIVEKIT_SECRET_FROM_FILE=str(tmp_path / "secret"),
        )
    )
    assert (settings.api_key, settings.api_secret) == ("filekey", SECRET)


def test_key_file_with_key_and_secret_wins(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(f"APIfile: {SECRET}\n")
    (tmp_path / "key").write_text("ignored")
    settings = load_settings(
        env(
            LIVEKIT_KEY_FILE=str(tmp_path / "keys.yaml"),
            LIVEKIT_KEY_FROM_FILE=str(tmp_path / "key"),
            LIVEKIT_KEY=None,
            LIVEKIT_SECRET=None,
        )
    )
    assert (settings.api_key, settings.api_secret) == ("APIfile", SECRET)


@pytest.mark.parametrize("content", ["no separator", "a: b: c", "a: b\nc: d\n"])
def test_key_file_must_hold_one_pair(tmp_path: Path, content: str) -> None:
    (tmp_path / "keys").write_text(content)
    with pytest.raises(ConfigError, match="LIVEKIT_KEY_FILE"):
        load_settings(env(LIVEKIT_KEY_FILE=str(tmp_path / "keys")))


@pytest.mark.parametrize(
    "variable", ["LIVEKIT_KEY_FILE", "LIVEKIT_KEY_FROM_FILE", "LIVEKIT_SECRET_FROM_FILE"]
)
def test_unreadable_files_are_named(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable}: cannot read .*missing"):
        load_settings(env(**{variable: str(tmp_path / "missing")}))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"LIVEKIT_JWT_BIND": "127.0.0.1:9000"}, ("127.0.0.1", 9000)),
        ({"LIVEKIT_JWT_BIND": ":9001"}, ("", 9001)),
        ({"LIVEKIT_JWT_BIND": "[::1]:9002"}, ("::1", 9002)),
        ({"LIVEKIT_JWT_PORT": "9003"}, ("", 9003)),
    ],
)
def test_bind(changes: dict[str, str], expected: tuple[str, int]) -> None:
    settings = load_settings(env(**changes))
    assert (settings.bind_host, settings.bind_port) == expected


def test_bind_and_port_are_mutually_exclusive() -> None:
    with pytest.raises(ConfigError, match="must not be set together"):
        load_settings(env(LIVEKIT_JWT_BIND=":8080", LIVEKIT_JWT_PORT="8080"))


@pytest.mark.parametrize(
    "value", ["8080", "host:", "host:http", ":70000", "::1:80", "[::1:80", "[nope]:80"]
)
def test_bad_bind_addresses(value: str) -> None:
    with pytest.raises(ConfigError, match="LIVEKIT_JWT_BIND"):
        parse_bind(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("YES_I_KNOW_WHAT_I_AM_DOING", True),
        ("yes", False),
        ("true", False),
        ("", False),
        ("YES_I_KNOW_WHAT_I_AM_DOING ", False),
    ],
)
def test_skip_verify_tls_needs_the_exact_value(value: str, expected: bool) -> None:
    assert load_settings(env(LIVEKIT_INSECURE_SKIP_VERIFY_TLS=value)).skip_verify_tls is expected


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("debug", logging.DEBUG),
        ("WARN", logging.WARNING),
        ("warning", logging.WARNING),
        ("error", logging.ERROR),
        ("bogus", logging.INFO),
        ("", logging.INFO),
    ],
)
def test_log_level(value: str, level: int) -> None:
    assert load_settings(env(LIVEKIT_LOG_LEVEL=value)).log_level == level


def test_upstream_delegation_settings_are_read() -> None:
    settings = load_settings(
        env(
            LIVEKIT_CS_API_URL_OVERRIDES="example.org=https://matrix.example.org, b.org = http://b",
            LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS="30",
            LIVEKIT_REDIS_URL="redis://localhost:6379",
        )
    )
    assert settings.cs_api_url_overrides == {
        "example.org": "https://matrix.example.org",
        "b.org": "http://b",
    }
    assert settings.sanity_check_interval_seconds == 30
    assert settings.redis_url == "redis://localhost:6379"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"LIVEKIT_CS_API_URL_OVERRIDES": "example.org"}, "LIVEKIT_CS_API_URL_OVERRIDES"),
        ({"LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS": "-1"}, "non-negative integer"),
        ({"LIVEKIT_AUTH_HOMESERVER_URLS": "a=ftp://x"}, "http:// or https://"),
        ({"LIVEKIT_AUTH_HOMESERVER_URLS": "a=http://x?q=1"}, "query"),
        ({"LIVEKIT_AUTH_HOMESERVER_URLS": "=http://x"}, "expected server_name=url"),
        ({"LIVEKIT_AUTH_HOMESERVER_URLS": "a=http://x:99999"}, "not a valid URL"),
        ({"LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS": "maybe"}, "not a boolean"),
        ({"LIVEKIT_AUTH_RATE_LIMIT_IP_PER_SECOND": "fast"}, "not a number"),
        ({"LIVEKIT_AUTH_RATE_LIMIT_USER_BURST": "0"}, ">= 1"),
        ({"LIVEKIT_AUTH_RATE_LIMIT_USER_BURST": "2.5"}, "whole number"),
        ({"LIVEKIT_AUTH_TRUSTED_PROXIES": "10.0.0.0/8 proxy"}, "not an IP address"),
        ({"LIVEKIT_AUTH_OPENID_TIMEOUT_SECONDS": "0"}, ">= 0.1"),
        ({"LIVEKIT_AUTH_OPENID_CACHE_SECONDS": "inf"}, "LIVEKIT_AUTH_OPENID_CACHE_SECONDS"),
        ({"LIVEKIT_AUTH_METRICS": "sometimes"}, "LIVEKIT_AUTH_METRICS"),
        ({"LIVEKIT_AUTH_OPENID_CACHE_SECONDS": "300"}, "at most 10 seconds"),
        ({"LIVEKIT_AUTH_MAX_CONCURRENT_LOOKUPS": "0"}, "LIVEKIT_AUTH_MAX_CONCURRENT_LOOKUPS"),
        ({"LIVEKIT_AUTH_MAX_CONCURRENT_LOOKUPS": "1.5"}, "whole number"),
    ],
)
def test_bad_values_name_their_variable(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(env(**changes))
    assert "\n" not in str(info.value)


def test_settings_beyond_upstream() -> None:
    settings = load_settings(
        env(
            LIVEKIT_AUTH_HOMESERVER_URLS="localhost:8448=http://127.0.0.1:8008/,b=https://b.org",
            LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS="true",
            LIVEKIT_AUTH_RATE_LIMIT_IP_PER_SECOND="0",
            LIVEKIT_AUTH_RATE_LIMIT_USER_PER_SECOND="2.5",
            LIVEKIT_AUTH_RATE_LIMIT_USER_BURST="4",
            LIVEKIT_AUTH_TRUSTED_PROXIES="10.0.0.0/8, ::1",
            LIVEKIT_AUTH_OPENID_CACHE_SECONDS="0",
            LIVEKIT_AUTH_OPENID_TIMEOUT_SECONDS="2.5",
            LIVEKIT_AUTH_DISCOVERY_CACHE_SECONDS="60",
            LIVEKIT_AUTH_METRICS="off",
            LIVEKIT_AUTH_MAX_CONCURRENT_LOOKUPS="16",
        )
    )
    assert settings.homeserver_urls == {
        "localhost:8448": "http://127.0.0.1:8008",
        "b": "https://b.org",
    }
    assert settings.allow_private_homeservers is True
    assert settings.ip_rate_limit == RateLimit(0.0, DEFAULT_IP_RATE_LIMIT.burst)
    assert not settings.ip_rate_limit.enabled
    assert settings.user_rate_limit == RateLimit(2.5, 4)
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert settings.openid_cache_seconds == 0
    assert settings.openid_timeout_seconds == 2.5
    assert settings.discovery_cache_seconds == 60
    assert settings.metrics_enabled is False
    assert settings.max_concurrent_lookups == 16


@given(st.text(max_size=30))
def test_config_parsers_raise_only_config_errors(text: str) -> None:
    for parse in (
        lambda: parse_bind(text),
        lambda: parse_server_map(text, "X", http_only=True),
        lambda: parse_server_map(text, "X"),
        lambda: parse_networks(text, "X"),
    ):
        with contextlib.suppress(ConfigError):
            parse()


def test_the_sfu_api_url_defaults_to_livekit_url_and_must_be_http() -> None:
    base = {
        "LIVEKIT_URL": "wss://rtc.example.org/livekit/sfu",
        "LIVEKIT_KEY": "k",
        "LIVEKIT_SECRET": "Qx7-s3cr3t-for-the-sfu-api-url-test-0123",
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": "example.org",
    }
    assert load_settings(base).sfu_api_url == ""
    direct = load_settings({**base, "LIVEKIT_SFU_API_URL": "http://sfu:7880"})
    assert direct.sfu_api_url == "http://sfu:7880"
    assert build_sfu_client(direct).base_url == "http://sfu:7880"
    assert build_sfu_client(load_settings(base)).base_url == "https://rtc.example.org/livekit/sfu"
    with pytest.raises(ConfigError, match="LIVEKIT_SFU_API_URL must be an http"):
        load_settings({**base, "LIVEKIT_SFU_API_URL": "wss://sfu:7880"})
