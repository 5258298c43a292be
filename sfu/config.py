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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sfu.media.fastpath import MODES as FAST_PATH_MODES
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


#: rtc.turn_servers entries kept (each is one ICEServer in every JoinResponse)
MAX_TURN_SERVERS = 16
#: RFC 8489 §14.3: USERNAME is under 513 bytes; credentials and secrets are kept to that too
MAX_TURN_FIELD_BYTES = 512
#: a TURN REST credential is valid this long by default (and at most MAX_TURN_TTL); coturn
#: refuses an allocation's refreshes once it lapses, so it bounds how long a call can relay
DEFAULT_TURN_TTL = 86400
MIN_TURN_TTL = 60
MAX_TURN_TTL = 7 * 86400
MIN_TURN_SECRET_LENGTH = 16
TURN_PROTOCOLS = ("udp", "tcp", "tls")
_TURN_KEYS = ("host", "port", "protocol", "username", "credential", "secret", "ttl")
#: a DNS name (RFC 1123 labels) or an IPv4 literal; IPv6 literals go in brackets
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)


@dataclass(frozen=True)
class TurnServer:
    """One ``rtc.turn_servers`` entry (LiveKit's keys, plus ``secret``/``ttl``): where clients
    relay through, and either a static username/credential or coturn's ``static-auth-secret``
    from which each participant gets its own time-limited credential (`sfu.turn`)."""

    host: str
    port: int
    protocol: str = "udp"
    username: str = ""
    credential: str = ""
    #: not a LiveKit key: coturn's ``use-auth-secret``/``static-auth-secret`` shared secret
    secret: str = dataclasses.field(default="", repr=False)
    #: not a LiveKit key: seconds a credential derived from ``secret`` stays valid
    ttl: int = DEFAULT_TURN_TTL


@dataclass(frozen=True)
class RtcConfig:
    port_range_start: int = 50000
    port_range_end: int = 60000
    #: one UDP port for every peer connection (ICE demultiplexed by ufrag and address); when
    #: set, the port range is not used
    udp_port: int = 0
    node_ip: str = ""
    #: STUN/TURN URLs handed to clients in JoinResponse.ice_servers (after turn_servers).
    ice_servers: tuple[str, ...] = ()
    #: TURN relays handed to clients in JoinResponse.ice_servers, with their credentials
    turn_servers: tuple[TurnServer, ...] = ()
    #: not a LiveKit key: how media leaves each socket. "gso": the datagrams of one event-loop
    #: iteration together, equal-size runs in one UDP GSO send; "batch": together, one sendto
    #: each; "immediate": one sendto per packet as it is forwarded.
    send_mode: str = "gso"
    #: not a LiveKit key: the per-copy forwarding path. "auto": the compiled one
    #: (sfu.media._fastpath, built at install time) when it was built, else pure Python with one
    #: warning; "off": always pure Python (the reference)
    fast_path: str = "auto"
    #: not a LiveKit key: send ICE checks to a client's private candidates (RFC 1918, CGNAT,
    #: ULA) even when the SFU advertises no private address itself
    allow_private_candidates: bool = False
    #: not a LiveKit key: media worker processes under this (control) process; 1 = media in
    #: this process, 0 = one per CPU. With rtc.udp_port P, worker i listens on UDP P + i.
    workers: int = 1
    #: not a LiveKit key: with media workers, a participant joins the worker that holds most of
    #: its room while that worker's load (the larger of its CPU share and its forwarded packets
    #: per second / 50,000, plus its joins in progress) is below this; past it, or at 0, the
    #: least-loaded worker (`sfu.workers.pool`)
    worker_spill_load: float = 0.6
    #: per-subscriber bandwidth estimation and stream allocation (transport-cc stamping and
    #: feedback, REMB, layer caps, pauses, padding probes, the NACK budget); LiveKit spells it
    #: rtc.congestion_control.enabled. Off: every subscriber gets what its tiles ask for.
    congestion_control: bool = True


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
    #: let RoomService.MutePublishedTrack unmute a track too (LiveKit's key; off by default)
    enable_remote_unmute: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True)
class RedisConfig:
    """LiveKit's ``redis`` section: with an address (or sentinel addresses) nodes share a Redis
    (node registry, room placement, signal relay: `sfu.cluster`); without, one node runs alone."""

    #: ``host:port`` of the Redis server
    address: str = ""
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    db: int = 0
    use_tls: bool = False
    #: Redis Sentinel: the master's name and the sentinels' ``host:port`` addresses (instead of
    #: ``address``), with the sentinels' own credentials
    sentinel_master_name: str = ""
    sentinel_addresses: tuple[str, ...] = ()
    sentinel_username: str = ""
    sentinel_password: str = dataclasses.field(default="", repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.address or self.sentinel_addresses)


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
    #: not a LiveKit key: refuse new participants (503) while the p99 of the time a received
    #: datagram waits on the node before its copies leave (last 3 s, sampled; plus what the
    #: participants joining add) is above this many milliseconds, until it is back under 80 %
    #: of it (0 = no limit)
    max_forward_latency_ms: float = 50.0
    #: not a LiveKit key: the latency bound refuses newcomers only while the node's CPU load
    #: (`max_cpu_load`'s measure, without the prediction) is at least this share of a core;
    #: below it the node's own work is too small to be what makes datagrams wait, and a
    #: newcomer adds little (0 = the bound applies at any load)
    forward_latency_min_load: float = 0.2
    #: bytes of participant or room metadata the server API accepts (LiveKit's
    #: ``limit.max_metadata_size``; 0 = no limit)
    max_metadata_size: int = 64000
    #: bytes of a participant's attributes (keys and values together) the server API accepts
    max_attributes_size: int = 64000
    #: characters of a participant name the server API accepts
    max_participant_name_length: int = 256


@dataclass(frozen=True)
class WebhookConfig:
    #: the API key whose secret signs the webhooks (must be one of ``keys``)
    api_key: str = ""
    #: URLs every event is POSTed to
    urls: tuple[str, ...] = ()


#: drain_timeout's bounds (seconds)
MAX_DRAIN_TIMEOUT = 24 * 3600
MAX_WORKERS = 256
#: rtc.worker_spill_load's bound: a worker's load is about a core at most, plus its joins in progress
MAX_SPILL_LOAD = 4.0


def media_workers(rtc: RtcConfig) -> int:
    """How many media worker processes ``rtc.workers`` asks for (0: one per CPU)."""
    return rtc.workers or len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Config:
    port: int = 7880
    #: not a LiveKit key: on SIGTERM, seconds to keep serving the calls in progress (admitting
    #: no one) before asking their participants to reconnect and exiting (`sfu.lifecycle`)
    drain_timeout: int = 30
    #: serve /metrics on this port (on the bind addresses) instead of the signalling port
    prometheus_port: int = 0
    #: not a LiveKit key: with Redis, the ``host:port`` where the other nodes reach this node's
    #: HTTP port (signal relay, RoomService forwarding); default ``rtc.node_ip`` (else the first
    #: bind address) and ``port``
    node_address: str = ""
    bind_addresses: tuple[str, ...] = ("127.0.0.1",)
    keys: Mapping[str, str] = field(default_factory=dict)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)


_SECTIONS: dict[str, type[Any]] = {
    "rtc": RtcConfig,
    "room": RoomConfig,
    "logging": LoggingConfig,
    "redis": RedisConfig,
    "limits": LimitsConfig,
    "webhook": WebhookConfig,
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
        if path == "rtc.turn_servers":
            values[key] = parse_turn_servers(value)
            continue
        if key not in known:
            if path in IGNORED_LIVEKIT_KEYS:
                log.warning("config key %s is a LiveKit setting this SFU ignores", path)
                continue
            raise ConfigError(f"unknown config key {path!r}")
        values[key] = _coerce(path, value, getattr(defaults, key))
    return cls(**values)


def parse_turn_servers(raw: Any) -> tuple[TurnServer, ...]:
    """``rtc.turn_servers``: a list of mappings, each checked to the field, with bounded sizes."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"rtc.turn_servers: expected a list, got {type(raw).__name__}")
    if len(raw) > MAX_TURN_SERVERS:
        raise ConfigError(f"rtc.turn_servers: {len(raw)} entries, at most {MAX_TURN_SERVERS}")
    return tuple(_turn_server(f"rtc.turn_servers[{i}]", entry) for i, entry in enumerate(raw))


def _turn_server(path: str, raw: Any) -> TurnServer:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with host and port")
    unknown = [str(k)[:40] for k in raw if k not in _TURN_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(_TURN_KEYS)})")
    fields: dict[str, Any] = {}
    for key in ("host", "protocol", "username", "credential", "secret"):
        value = raw.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"{path}.{key}: expected a string")
        value = str(value)
        if len(value.encode()) > MAX_TURN_FIELD_BYTES:
            raise ConfigError(f"{path}.{key}: longer than {MAX_TURN_FIELD_BYTES} bytes")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ConfigError(f"{path}.{key}: contains a control character")
        fields[key] = value
    host = fields["host"]
    if not host:
        raise ConfigError(f"{path}.host: missing (the TURN server's DNS name or IP address)")
    if not _valid_turn_host(host):
        raise ConfigError(
            f"{path}.host: {host[:80]!r} is not a hostname or IP address (no scheme, port or "
            "path: those are protocol and port)"
        )
    for key, default in (("port", 0), ("ttl", DEFAULT_TURN_TTL)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{path}.{key}: expected an integer")
        try:
            fields[key] = int(value)
        except ValueError:
            raise ConfigError(f"{path}.{key}: {str(value)[:40]!r} is not an integer") from None
    if not 0 < fields["port"] < 65536:
        raise ConfigError(f"{path}.port: {fields['port']} is not a port (1-65535)")
    if not MIN_TURN_TTL <= fields["ttl"] <= MAX_TURN_TTL:
        raise ConfigError(f"{path}.ttl: must be {MIN_TURN_TTL} to {MAX_TURN_TTL} seconds")
    protocol = (fields["protocol"] or "udp").lower()
    if protocol not in TURN_PROTOCOLS:
        raise ConfigError(f"{path}.protocol: must be one of {', '.join(TURN_PROTOCOLS)}")
    fields["protocol"] = protocol
    static = bool(fields["username"] or fields["credential"])
    if fields["secret"]:
        if static:
            raise ConfigError(
                f"{path}: set either secret (TURN REST credentials) or username/credential, "
                "not both"
            )
        secret = fields["secret"]
        if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < MIN_TURN_SECRET_LENGTH:
            raise ConfigError(
                f"{path}.secret: a placeholder or shorter than {MIN_TURN_SECRET_LENGTH} "
                "characters; generate one, e.g. `openssl rand -hex 32`, and give coturn the same "
                "as static-auth-secret"
            )
    elif not (fields["username"] and fields["credential"]):
        raise ConfigError(
            f"{path}: needs username and credential, or secret (coturn's static-auth-secret)"
        )
    return TurnServer(**fields)


def _valid_turn_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return _HOSTNAME.fullmatch(host) is not None


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
        elif key in ("port", "bind_addresses", "prometheus_port", "drain_timeout", "node_address"):
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
    if not 0 <= config.drain_timeout <= MAX_DRAIN_TIMEOUT:
        raise ConfigError(f"drain_timeout: must be 0 to {MAX_DRAIN_TIMEOUT} seconds")
    rtc = config.rtc
    if not (0 <= rtc.port_range_start <= rtc.port_range_end < 65536):
        raise ConfigError("rtc.port_range_start/rtc.port_range_end: not a valid UDP port range")
    if rtc.port_range_start == 0 and rtc.port_range_end != 0:
        raise ConfigError("rtc.port_range_start: must be set when rtc.port_range_end is")
    if not 0 <= rtc.udp_port < 65536:
        raise ConfigError(f"rtc.udp_port: {rtc.udp_port} is not a valid UDP port")
    if not 0 <= rtc.workers <= MAX_WORKERS:
        raise ConfigError(f"rtc.workers: must be 0 (one per CPU) to {MAX_WORKERS}")
    if not 0 <= rtc.worker_spill_load <= MAX_SPILL_LOAD:
        raise ConfigError(
            f"rtc.worker_spill_load: must be 0 (always the least-loaded worker) to {MAX_SPILL_LOAD}"
        )
    if rtc.udp_port and rtc.udp_port + media_workers(rtc) - 1 >= 65536:
        raise ConfigError("rtc.udp_port: the workers' ports (udp_port + i) pass 65535")
    if rtc.send_mode not in SEND_MODES:
        raise ConfigError(f"rtc.send_mode: must be one of {', '.join(SEND_MODES)}")
    if rtc.fast_path not in FAST_PATH_MODES:
        raise ConfigError(f"rtc.fast_path: must be one of {', '.join(FAST_PATH_MODES)}")
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
    if config.limits.max_forward_latency_ms < 0:
        raise ConfigError("limits.max_forward_latency_ms: must be 0 (no limit) or positive")
    if config.limits.forward_latency_min_load < 0:
        raise ConfigError(
            "limits.forward_latency_min_load: must be 0 or a positive share of a core"
        )
    limits = config.limits
    if min(limits.max_metadata_size, limits.max_attributes_size) < 0:
        raise ConfigError("limits.max_metadata_size/max_attributes_size: must not be negative")
    if limits.max_participant_name_length < 0:
        raise ConfigError("limits.max_participant_name_length: must not be negative")
    _validate_webhook(config)
    _validate_redis(config)


def _host_port(path: str, value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{path}: {value[:80]!r} is not host:port")


def _validate_redis(config: Config) -> None:
    redis = config.redis
    if redis.address:
        _host_port("redis.address", redis.address)
    for address in redis.sentinel_addresses:
        _host_port("redis.sentinel_addresses", address)
    if redis.sentinel_addresses and not redis.sentinel_master_name:
        raise ConfigError("redis.sentinel_master_name: required with redis.sentinel_addresses")
    if redis.db < 0:
        raise ConfigError("redis.db: must not be negative")
    if config.node_address:
        _host_port("node_address", config.node_address)


def _validate_webhook(config: Config) -> None:
    webhook = config.webhook
    if not webhook.urls:
        return
    if not webhook.api_key:
        raise ConfigError("webhook.api_key: api_key is required to use webhooks")
    if webhook.api_key not in config.keys:
        raise ConfigError(f"webhook.api_key: {webhook.api_key!r} is not one of the keys")
    for url in webhook.urls:
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f"webhook.urls: {url!r} is not an http(s) URL")


#: variables that may instead name a file holding the value (``NAME_FILE``, as container
#: secrets are mounted); the file wins over the variable. (``LIVEKIT_CONFIG_FILE`` is LiveKit's
#: own: the config file's path.)
FILE_VARIABLES = ("LIVEKIT_KEYS", "REDIS_PASSWORD")
MAX_SECRET_FILE_BYTES = 1 << 20


def _with_files(env: Mapping[str, str]) -> dict[str, str]:
    resolved = dict(env)
    for name in FILE_VARIABLES:
        path = env.get(f"{name}_FILE")
        if not path:
            continue
        try:
            with open(path, "rb") as file:
                data = file.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise ConfigError(f"{name}_FILE: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        try:
            resolved[name] = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{name}_FILE: {path} is not UTF-8 text") from None
    return resolved


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
    if env.get("NODE_ADDRESS"):
        out["node_address"] = env["NODE_ADDRESS"]
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
    env = _with_files(os.environ if env is None else env)
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
