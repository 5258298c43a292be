"""Configuration: LiveKit's ``config.yaml`` key names, a YAML file plus environment overrides.

Owns loading, validation and defaults. Unknown keys are a startup error; keys LiveKit has but this
SFU does not implement are accepted with a warning so that an operator's LiveKit config carries over.
Nothing here ever writes the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sfu.media.transport import SEND_MODES

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32
PLACEHOLDER_SECRETS = frozenset(
    {"secret", "changeme", "change-me", "change_me", "devsecret", "password", "xxxx", "todo"}
)
#: LiveKit keys that are accepted (so a LiveKit config loads) but have no effect here.
IGNORED_LIVEKIT_KEYS = frozenset(
    {
        "development",
        "region",
        "prometheus",
        "turn",
        "ingress",
        "egress",
        "node_selector",
        "signal_relay",
        "psrpc",
        "audio",
        "video",
        "limit",
        "key_file",
        "rtc.tcp_port",
        "rtc.use_external_ip",
        "rtc.use_ice_lite",
        "rtc.stun_servers",
        "rtc.interfaces",
        "rtc.ips",
        "rtc.congestion_control",
        "rtc.packet_buffer_size",
        "rtc.allow_tcp_fallback",
        "rtc.enable_loopback_candidate",
        "room.enabled_codecs",
        "room.playout_delay",
        "room.sync_streams",
        "room.max_metadata_size",
        "logging.json",
        "logging.sample",
        "logging.pion_level",
    }
)


class ConfigError(Exception):
    """A configuration problem, with a message meant for the operator (no traceback)."""


@dataclass(frozen=True)
class RtcConfig:
    port_range_start: int = 50000
    port_range_end: int = 60000
    #: one UDP port for every peer connection (ICE demultiplexed by ufrag and address); when
    #: set, the port range is not used
    udp_port: int = 0
    node_ip: str = ""
    #: STUN/TURN URLs handed to clients in JoinResponse.ice_servers.
    ice_servers: tuple[str, ...] = ()
    #: not a LiveKit key: how media leaves each socket. "gso": the datagrams of one event-loop
    #: iteration together, equal-size runs in one UDP GSO send; "batch": together, one sendto
    #: each; "immediate": one sendto per packet as it is forwarded.
    send_mode: str = "gso"
    #: not a LiveKit key: send ICE checks to a client's private candidates (RFC 1918, CGNAT,
    #: ULA) even when the SFU advertises no private address itself
    allow_private_candidates: bool = False


@dataclass(frozen=True)
class RoomConfig:
    #: create a room on its first join for any token; when false (the default, unlike LiveKit:
    #: the auth service hands every Matrix user a token) only a token whose video grant has
    #: ``roomCreate`` creates one, anyone else gets 404 ``requested room does not exist``
    auto_create: bool = False
    #: seconds a room with nobody in it stays open if no one joins
    empty_timeout: int = 300
    #: seconds a room stays open after the last participant left
    departure_timeout: int = 20
    max_participants: int = 0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True)
class RedisConfig:
    address: str = ""
    username: str = ""
    password: str = ""
    db: int = 0


@dataclass(frozen=True)
class LimitsConfig:
    #: largest signalling message accepted from a client, in bytes
    max_signal_message_size: int = 1 << 20
    #: concurrent WebSocket sessions per node; 0 = derived at start-up from RLIMIT_NOFILE and
    #: the UDP port range (`sfu.admission.derived_max_sessions`)
    max_sessions: int = 0
    #: not a LiveKit key: concurrent sessions from one remote address (0 = no per-address cap)
    max_sessions_per_ip: int = 64
    #: refuse new participants (503) while the SFU process's share of one core over the last 3 s,
    #: plus what the participants joining in that time will add, is above this; its one event
    #: loop saturates at 1.0 (0 = no limit)
    max_cpu_load: float = 0.8


@dataclass(frozen=True)
class Config:
    port: int = 7880
    #: serve /metrics on this port (on the bind addresses) instead of the signalling port
    prometheus_port: int = 0
    bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    keys: Mapping[str, str] = field(default_factory=dict)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


_SECTIONS: dict[str, type[Any]] = {
    "rtc": RtcConfig,
    "room": RoomConfig,
    "logging": LoggingConfig,
    "redis": RedisConfig,
    "limits": LimitsConfig,
}


def _coerce(path: str, value: Any, default: Any) -> Any:
    """Convert a YAML/env value to the type of the dataclass default, or raise ConfigError."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
                return True
            if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
                return False
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(value)
            return number
        if isinstance(default, str):
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            return str(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
    except ValueError:
        raise ConfigError(f"{path}: invalid value {value!r}") from None
    raise ConfigError(f"{path}: unsupported setting")


def _build_section(name: str, cls: type[Any], raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(raw).__name__}")
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{name}.{key}"
        if key not in known:
            if path in IGNORED_LIVEKIT_KEYS:
                log.warning("config key %s is a LiveKit setting this SFU ignores", path)
                continue
            raise ConfigError(f"unknown config key {path!r}")
        values[key] = _coerce(path, value, getattr(defaults, key))
    return cls(**values)


def _parse_keys(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, str):  # LIVEKIT_KEYS form: "key: secret" lines or "key:secret,key2:secret2"
        pairs: dict[str, str] = {}
        for part in raw.replace("\n", ",").split(","):
            if not part.strip():
                continue
            if ":" not in part:
                raise ConfigError("keys: expected 'key: secret' pairs")
            k, v = part.split(":", 1)
            pairs[k.strip()] = v.strip()
        return pairs
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) for k, v in raw.items()
    ):
        raise ConfigError("keys: expected a mapping of API key to secret")
    return {k: str(v) for k, v in raw.items()}


def validate_keys(keys: Mapping[str, str]) -> None:
    if not keys:
        raise ConfigError("no API keys configured: set 'keys' in the config or LIVEKIT_KEYS")
    for key, secret in keys.items():
        if not key:
            raise ConfigError("keys: an API key is empty")
        if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"keys: the secret for {key!r} is a placeholder or shorter than "
                f"{MIN_SECRET_LENGTH} characters; generate one, e.g. `openssl rand -hex 32`"
            )


def from_mapping(raw: Mapping[str, Any]) -> Config:
    """Build a validated Config from a parsed YAML mapping."""
    values: dict[str, Any] = {}
    defaults = Config()
    for key, value in raw.items():
        if key in _SECTIONS:
            values[key] = _build_section(key, _SECTIONS[key], value)
        elif key == "keys":
            values["keys"] = _parse_keys(value)
        elif key in ("port", "bind_addresses", "prometheus_port"):
            values[key] = _coerce(key, value, getattr(defaults, key))
        elif key in IGNORED_LIVEKIT_KEYS:
            log.warning("config key %s is a LiveKit setting this SFU ignores", key)
        else:
            raise ConfigError(f"unknown config key {key!r}")
    config = Config(**values)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    validate_keys(config.keys)
    if not 0 < config.port < 65536:
        raise ConfigError(f"port: {config.port} is not a valid TCP port")
    if not 0 <= config.prometheus_port < 65536 or config.prometheus_port == config.port:
        raise ConfigError(
            f"prometheus_port: {config.prometheus_port} is not a valid TCP port other than port"
        )
    rtc = config.rtc
    if not (0 <= rtc.port_range_start <= rtc.port_range_end < 65536):
        raise ConfigError("rtc.port_range_start/rtc.port_range_end: not a valid UDP port range")
    if rtc.port_range_start == 0 and rtc.port_range_end != 0:
        raise ConfigError("rtc.port_range_start: must be set when rtc.port_range_end is")
    if not 0 <= rtc.udp_port < 65536:
        raise ConfigError(f"rtc.udp_port: {rtc.udp_port} is not a valid UDP port")
    if rtc.send_mode not in SEND_MODES:
        raise ConfigError(f"rtc.send_mode: must be one of {', '.join(SEND_MODES)}")
    for address in (*config.bind_addresses, *([rtc.node_ip] if rtc.node_ip else [])):
        if address in ("", "0.0.0.0", "::"):
            continue
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"{address!r} is not an IP address") from None
    if config.logging.level.lower() not in {"debug", "info", "warn", "warning", "error"}:
        raise ConfigError(f"logging.level: unknown level {config.logging.level!r}")
    if config.room.empty_timeout < 0 or config.room.departure_timeout < 0:
        raise ConfigError("room timeouts must not be negative")
    if config.limits.max_sessions < 0 or config.limits.max_sessions_per_ip < 0:
        raise ConfigError("limits.max_sessions/max_sessions_per_ip: must not be negative")
    if config.limits.max_cpu_load < 0:
        raise ConfigError("limits.max_cpu_load: must be 0 (no limit) or a positive share of a core")


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """LiveKit's environment variables, applied on top of the file."""
    out: dict[str, Any] = {}
    if env.get("LIVEKIT_KEYS"):
        out["keys"] = env["LIVEKIT_KEYS"]
    if env.get("LIVEKIT_PORT"):
        out["port"] = env["LIVEKIT_PORT"]
    if env.get("LIVEKIT_BIND"):
        out["bind_addresses"] = env["LIVEKIT_BIND"]
    if env.get("NODE_IP"):
        out.setdefault("rtc", {})["node_ip"] = env["NODE_IP"]
    if env.get("REDIS_HOST"):
        out.setdefault("redis", {})["address"] = env["REDIS_HOST"]
    if env.get("REDIS_PASSWORD"):
        out.setdefault("redis", {})["password"] = env["REDIS_PASSWORD"]
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the config file (or ``LIVEKIT_CONFIG`` / ``LIVEKIT_CONFIG_FILE``) plus env overrides."""
    env = os.environ if env is None else env
    path = path or env.get("LIVEKIT_CONFIG_FILE") or None
    text = ""
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    elif env.get("LIVEKIT_CONFIG"):
        text = env["LIVEKIT_CONFIG"]
    try:
        raw = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping")
    return from_mapping(_merge(raw, _env_overrides(env)))
