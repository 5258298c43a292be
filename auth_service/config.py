"""Settings of the auth service, read from the environment only.

The variables lk-jwt-service reads keep their names and meaning, so an operator can swap the
container and keep the environment. Variables this service adds start with ``LIVEKIT_AUTH_``.
Every problem is a :class:`ConfigError` whose message is one line naming the variable; the
entry point prints it and exits without a traceback. ``docs/auth_service.md`` documents every
variable.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from .ratelimit import RateLimit

log = logging.getLogger(__name__)

SKIP_VERIFY_TLS_VALUE: Final = "YES_I_KNOW_WHAT_I_AM_DOING"
DEFAULT_BIND: Final = ":8080"
MIN_SECRET_LENGTH: Final = 32
DEFAULT_IP_RATE_LIMIT: Final = RateLimit(per_second=5.0, burst=30)
DEFAULT_USER_RATE_LIMIT: Final = RateLimit(per_second=1.0, burst=10)
MAX_OPENID_CACHE_SECONDS: Final = 10.0
"""A verified token may be remembered only briefly: its homeserver may expire it any time."""
DEFAULT_MAX_CONCURRENT_LOOKUPS: Final = 64

PLACEHOLDER_SECRETS: Final = frozenset(
    {
        "secret",
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "password",
        "placeholder",
        "example",
        "mysecret",
        "my-secret",
        "your-secret",
        "your_secret",
        "yoursecret",
        "devsecret",
        "todo",
        "xxx",
    }
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to run, already validated."""

    livekit_url: str
    api_key: str
    api_secret: str
    full_access_homeservers: tuple[str, ...]
    bind_host: str = ""
    bind_port: int = 8080
    skip_verify_tls: bool = False
    log_level: int = logging.INFO
    # Delayed-leave delegation.
    cs_api_url_overrides: Mapping[str, str] = field(default_factory=dict)
    sanity_check_interval_seconds: int = 0
    redis_url: str = ""
    #: where the auth service calls the SFU's RoomService (LIVEKIT_SFU_API_URL); "" = the
    #: HTTP form of livekit_url
    sfu_api_url: str = ""
    # Beyond upstream.
    homeserver_urls: Mapping[str, str] = field(default_factory=dict)
    allow_private_homeservers: bool = False
    ip_rate_limit: RateLimit = DEFAULT_IP_RATE_LIMIT
    user_rate_limit: RateLimit = DEFAULT_USER_RATE_LIMIT
    trusted_proxies: tuple[IpNetwork, ...] = ()
    openid_cache_seconds: float = 0.0
    max_concurrent_lookups: int = DEFAULT_MAX_CONCURRENT_LOOKUPS
    openid_timeout_seconds: float = 10.0
    discovery_cache_seconds: float = 3600.0
    metrics_enabled: bool = True
    max_delegated_leaves: int = 10_000
    max_delegated_leaves_per_user: int = 20
    # Application-service mode (lk-jwt-service 0.5's variables): all three tokens or none.
    as_token: str = ""
    hs_token: str = ""
    hs_server_name: str = ""
    membership_check_interval_seconds: int = 60
    # The focus user (application-service mode).
    focus_empty_call_seconds: int = 30
    focus_no_call_seconds: int = 90
    focus_join_on_call: bool = False

    @property
    def appservice_enabled(self) -> bool:
        """Whether ``LIVEKIT_AS_TOKEN``, ``LIVEKIT_HS_TOKEN`` and ``LIVEKIT_HS_SERVER_NAME`` are
        set: then only joined members of a Matrix room get its tokens, and leavers are ejected."""
        return bool(self.as_token)


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "")


def _read_file(variable: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{variable}: cannot read {path}: {reason}") from None


def _trim(value: str) -> str:
    """Go's ``strings.Trim(value, " \\r\\n")``."""
    return value.strip(" \r\n")


def read_key_secret(env: Mapping[str, str]) -> tuple[str, str]:
    """The LiveKit API key and secret, with upstream's precedence of the file variants.

    ``LIVEKIT_KEY_FILE`` (one ``key: secret`` line) wins over everything; otherwise
    ``LIVEKIT_KEY_FROM_FILE`` / ``LIVEKIT_SECRET_FROM_FILE`` win over ``LIVEKIT_KEY`` /
    ``LIVEKIT_SECRET``. Values are trimmed of spaces and line ends.
    """
    key = _env(env, "LIVEKIT_KEY")
    secret = _env(env, "LIVEKIT_SECRET")
    key_secret_path = _env(env, "LIVEKIT_KEY_FILE")
    if key_secret_path:
        parts = _read_file("LIVEKIT_KEY_FILE", key_secret_path).split(":")
        if len(parts) != 2:
            raise ConfigError(
                f"LIVEKIT_KEY_FILE: {key_secret_path} must hold exactly one 'key: secret' pair"
            )
        key, secret = parts
    else:
        key_path = _env(env, "LIVEKIT_KEY_FROM_FILE")
        if key_path:
            key = _read_file("LIVEKIT_KEY_FROM_FILE", key_path)
        secret_path = _env(env, "LIVEKIT_SECRET_FROM_FILE")
        if secret_path:
            secret = _read_file("LIVEKIT_SECRET_FROM_FILE", secret_path)
    return _trim(key), _trim(secret)


def is_placeholder_secret(secret: str) -> bool:
    """Whether ``secret`` is an example value rather than a real secret."""
    lowered = secret.lower()
    return (
        lowered in PLACEHOLDER_SECRETS
        or lowered.startswith(("change", "replace", "your-", "your_", "<", "${", "{{"))
        or len(set(secret)) == 1
    )


def parse_bind(value: str, variable: str = "LIVEKIT_JWT_BIND") -> tuple[str, int]:
    """Split a Go listen address (``:8080``, ``127.0.0.1:8080``, ``[::1]:8080``)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"{variable}: {value!r} is not an address like ':8080' or 'host:8080'")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{variable}: port {port} is out of range")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{variable}: {value!r} has an unclosed '['")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{variable}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ConfigError(f"{variable}: write an IPv6 address in brackets, like '[::1]:8080'")
    return host, port


def _bind(env: Mapping[str, str]) -> tuple[str, int]:
    bind = _env(env, "LIVEKIT_JWT_BIND")
    port = _env(env, "LIVEKIT_JWT_PORT")
    if bind and port:
        raise ConfigError("LIVEKIT_JWT_BIND and LIVEKIT_JWT_PORT must not be set together")
    if bind:
        return parse_bind(bind)
    if port:
        log.warning("LIVEKIT_JWT_PORT is deprecated, use LIVEKIT_JWT_BIND")
        return parse_bind(f":{port}", "LIVEKIT_JWT_PORT")
    return parse_bind(DEFAULT_BIND)


def parse_server_map(value: str, variable: str, *, http_only: bool = False) -> dict[str, str]:
    """Parse ``server_name=url,server_name=url`` (upstream's override syntax)."""
    mapping: dict[str, str] = {}
    if value == "":
        return mapping
    for entry in value.split(","):
        server, sep, url = entry.partition("=")
        server, url = server.strip(), url.strip()
        if not sep or not server or not url:
            raise ConfigError(f"{variable}: invalid entry {entry!r}, expected server_name=url")
        if http_only:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 - validates the port
            except ValueError:
                raise ConfigError(f"{variable}: {url!r} is not a valid URL") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{variable}: {url!r} must be an http:// or https:// URL")
            if parts.query or parts.fragment:
                raise ConfigError(f"{variable}: {url!r} must not have a query or fragment")
            url = url.rstrip("/")
        mapping[server] = url
    return mapping


def parse_bool(value: str, variable: str, default: bool) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``); empty → default."""
    lowered = value.strip().lower()
    if lowered == "":
        return default
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable}: {value!r} is not a boolean (use true or false)")


def parse_number(value: str, variable: str, default: float, *, minimum: float = 0.0) -> float:
    """A finite number not below ``minimum``; empty → default."""
    if value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{variable}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < minimum:
        raise ConfigError(f"{variable}: {value!r} must be a number >= {minimum:g}")
    return number


def _rate_limit(env: Mapping[str, str], prefix: str, default: RateLimit) -> RateLimit:
    per_second = parse_number(_env(env, f"{prefix}_PER_SECOND"), f"{prefix}_PER_SECOND", -1.0)
    burst = parse_number(_env(env, f"{prefix}_BURST"), f"{prefix}_BURST", -1.0, minimum=1.0)
    if burst != -1.0 and burst != int(burst):
        raise ConfigError(f"{prefix}_BURST: must be a whole number")
    return RateLimit(
        per_second=default.per_second if per_second == -1.0 else per_second,
        burst=default.burst if burst == -1.0 else int(burst),
    )


def parse_networks(value: str, variable: str) -> tuple[IpNetwork, ...]:
    """A comma or space separated list of addresses or CIDR networks."""
    networks: list[IpNetwork] = []
    for item in value.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{variable}: {item!r} is not an IP address or network") from None
    return tuple(networks)


def _openid_cache_seconds(value: str) -> float:
    variable = "LIVEKIT_AUTH_OPENID_CACHE_SECONDS"
    seconds = parse_number(value, variable, Settings.openid_cache_seconds)
    if seconds > MAX_OPENID_CACHE_SECONDS:
        raise ConfigError(
            f"{variable}: at most {MAX_OPENID_CACHE_SECONDS:g} seconds, since a homeserver may "
            f"expire a token at any time (got {value!r})"
        )
    return seconds


def _max_concurrent_lookups(value: str) -> int:
    return _whole(value, "LIVEKIT_AUTH_MAX_CONCURRENT_LOOKUPS", Settings.max_concurrent_lookups)


def _whole(value: str, variable: str, default: int) -> int:
    number = parse_number(value, variable, default, minimum=1.0)
    if number != int(number):
        raise ConfigError(f"{variable}: must be a whole number, got {value!r}")
    return int(number)


def _redis_url(value: str) -> str:
    if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"LIVEKIT_REDIS_URL: {value!r} must be a redis://, rediss:// or unix:// URL"
        )
    return value


def _log_level(value: str) -> int:
    levels = {
        "debug": logging.DEBUG,
        "info": logging.INFO,
        "warn": logging.WARNING,
        "warning": logging.WARNING,
        "error": logging.ERROR,
    }
    level = levels.get(value.lower())
    if level is None:
        if value:
            log.warning("invalid LIVEKIT_LOG_LEVEL %r, defaulting to info", value)
        return logging.INFO
    return level


def _seconds(value: str, variable: str, default: int) -> int:
    if value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise ConfigError(f"{variable} must be a non-negative integer, got {value!r}")
    return int(value)


def _sanity_interval(value: str) -> int:
    return _seconds(value, "LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS", 0)


def appservice_settings(env: Mapping[str, str]) -> tuple[str, str, str, int]:
    """The application-service settings: all of the three variables or none of them."""
    names = ("LIVEKIT_AS_TOKEN", "LIVEKIT_HS_TOKEN", "LIVEKIT_HS_SERVER_NAME")
    values = [_trim(_env(env, name)) for name in names]
    if any(values) and not all(values):
        missing = ", ".join(n for n, v in zip(names, values, strict=True) if not v)
        raise ConfigError(f"application-service mode needs {', '.join(names)}; missing {missing}")
    as_token, hs_token, server_name = values
    if as_token and as_token == hs_token:
        raise ConfigError("LIVEKIT_AS_TOKEN and LIVEKIT_HS_TOKEN must differ")
    interval = _seconds(
        _env(env, "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS"),
        "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS",
        Settings.membership_check_interval_seconds,
    )
    return as_token, hs_token, server_name, interval


def load_settings(env: Mapping[str, str]) -> Settings:
    """Read and validate every setting from ``env``; raise :class:`ConfigError` on a problem."""
    key, secret = read_key_secret(env)
    livekit_url = _env(env, "LIVEKIT_URL")
    if not key or not secret or not livekit_url:
        raise ConfigError("LIVEKIT_KEY* / LIVEKIT_SECRET* and LIVEKIT_URL must be set")
    if is_placeholder_secret(secret):
        raise ConfigError(
            "LIVEKIT_SECRET is a placeholder; generate one, e.g. `openssl rand -base64 32`"
        )
    if len(secret) < MIN_SECRET_LENGTH:
        log.warning("the LiveKit API secret is shorter than %d characters", MIN_SECRET_LENGTH)
    if urlsplit(livekit_url).scheme not in ("ws", "wss", "http", "https"):
        log.warning("LIVEKIT_URL %r is not a ws:// or wss:// URL", livekit_url)
    sfu_api_url = _env(env, "LIVEKIT_SFU_API_URL")
    if sfu_api_url and urlsplit(sfu_api_url).scheme not in ("http", "https"):
        raise ConfigError(
            f"LIVEKIT_SFU_API_URL must be an http:// or https:// URL, got {sfu_api_url!r}"
        )

    full_access = _env(env, "LIVEKIT_FULL_ACCESS_HOMESERVERS")
    if not full_access:
        raise ConfigError(
            "LIVEKIT_FULL_ACCESS_HOMESERVERS must be set to the homeserver(s) you intend to "
            "serve (or '*' for everyone)"
        )
    full_access_homeservers = tuple(full_access.replace(",", " ").split())
    if not full_access_homeservers:
        raise ConfigError("LIVEKIT_FULL_ACCESS_HOMESERVERS lists no homeserver")

    bind_host, bind_port = _bind(env)
    as_token, hs_token, hs_server_name, membership_interval = appservice_settings(env)
    skip_verify = _env(env, "LIVEKIT_INSECURE_SKIP_VERIFY_TLS") == SKIP_VERIFY_TLS_VALUE

    return Settings(
        livekit_url=livekit_url,
        sfu_api_url=sfu_api_url,
        api_key=key,
        api_secret=secret,
        full_access_homeservers=full_access_homeservers,
        bind_host=bind_host,
        bind_port=bind_port,
        skip_verify_tls=skip_verify,
        log_level=_log_level(_env(env, "LIVEKIT_LOG_LEVEL")),
        cs_api_url_overrides=parse_server_map(
            _env(env, "LIVEKIT_CS_API_URL_OVERRIDES"),
            "LIVEKIT_CS_API_URL_OVERRIDES",
            http_only=True,
        ),
        sanity_check_interval_seconds=_sanity_interval(
            _env(env, "LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS")
        ),
        redis_url=_redis_url(_env(env, "LIVEKIT_REDIS_URL")),
        homeserver_urls=parse_server_map(
            _env(env, "LIVEKIT_AUTH_HOMESERVER_URLS"),
            "LIVEKIT_AUTH_HOMESERVER_URLS",
            http_only=True,
        ),
        allow_private_homeservers=parse_bool(
            _env(env, "LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS"),
            "LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS",
            False,
        ),
        ip_rate_limit=_rate_limit(env, "LIVEKIT_AUTH_RATE_LIMIT_IP", Settings.ip_rate_limit),
        user_rate_limit=_rate_limit(env, "LIVEKIT_AUTH_RATE_LIMIT_USER", Settings.user_rate_limit),
        trusted_proxies=parse_networks(
            _env(env, "LIVEKIT_AUTH_TRUSTED_PROXIES"), "LIVEKIT_AUTH_TRUSTED_PROXIES"
        ),
        openid_cache_seconds=_openid_cache_seconds(_env(env, "LIVEKIT_AUTH_OPENID_CACHE_SECONDS")),
        max_concurrent_lookups=_max_concurrent_lookups(
            _env(env, "LIVEKIT_AUTH_MAX_CONCURRENT_LOOKUPS")
        ),
        openid_timeout_seconds=parse_number(
            _env(env, "LIVEKIT_AUTH_OPENID_TIMEOUT_SECONDS"),
            "LIVEKIT_AUTH_OPENID_TIMEOUT_SECONDS",
            Settings.openid_timeout_seconds,
            minimum=0.1,
        ),
        discovery_cache_seconds=parse_number(
            _env(env, "LIVEKIT_AUTH_DISCOVERY_CACHE_SECONDS"),
            "LIVEKIT_AUTH_DISCOVERY_CACHE_SECONDS",
            Settings.discovery_cache_seconds,
        ),
        metrics_enabled=parse_bool(
            _env(env, "LIVEKIT_AUTH_METRICS"), "LIVEKIT_AUTH_METRICS", Settings.metrics_enabled
        ),
        max_delegated_leaves=_whole(
            _env(env, "LIVEKIT_AUTH_MAX_DELEGATED_LEAVES"),
            "LIVEKIT_AUTH_MAX_DELEGATED_LEAVES",
            Settings.max_delegated_leaves,
        ),
        max_delegated_leaves_per_user=_whole(
            _env(env, "LIVEKIT_AUTH_MAX_DELEGATED_LEAVES_PER_USER"),
            "LIVEKIT_AUTH_MAX_DELEGATED_LEAVES_PER_USER",
            Settings.max_delegated_leaves_per_user,
        ),
        as_token=as_token,
        hs_token=hs_token,
        hs_server_name=hs_server_name,
        membership_check_interval_seconds=membership_interval,
        focus_empty_call_seconds=_seconds(
            _env(env, "LIVEKIT_FOCUS_EMPTY_CALL_SECONDS"),
            "LIVEKIT_FOCUS_EMPTY_CALL_SECONDS",
            Settings.focus_empty_call_seconds,
        ),
        focus_no_call_seconds=_seconds(
            _env(env, "LIVEKIT_FOCUS_NO_CALL_SECONDS"),
            "LIVEKIT_FOCUS_NO_CALL_SECONDS",
            Settings.focus_no_call_seconds,
        ),
        focus_join_on_call=parse_bool(
            _env(env, "LIVEKIT_FOCUS_JOIN_ON_CALL"),
            "LIVEKIT_FOCUS_JOIN_ON_CALL",
            Settings.focus_join_on_call,
        ),
    )
