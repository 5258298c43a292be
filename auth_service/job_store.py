"""Where delegated delayed leaves survive a restart of the service: Redis (``LIVEKIT_REDIS_URL``).

The layout is lk-jwt-service's, so either service can take over the other's jobs: the hash
``lk-jwt:jobs`` maps the JSON array ``[room, identity]`` to
``{"Params": {"DelayId", "DelayTimeout" (nanoseconds), "ServerName", "LiveKitRoom",
"LiveKitIdentity"}, "RestartedAt": RFC 3339}``, plus ``"Connected"`` (beyond upstream, which
ignores it): whether the participant was connected when the job was last written, so a resumed
job carries on restarting and checks the participant is still there instead of waiting for a
first connect.

This is the only module that imports ``redis``. A store failure is logged by the caller and the
job goes on in memory; an entry that does not parse is skipped with a warning.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any, Final, Protocol

import redis.asyncio
import redis.exceptions

from .delegation_job import JobParams

log = logging.getLogger(__name__)

HASH_KEY: Final = "lk-jwt:jobs"
MAX_ENTRY_BYTES: Final = 16 * 1024
TIMEOUT_SECONDS: Final = 5.0


class StoreError(Exception):
    """The store could not be read or written."""


@dataclass(frozen=True)
class StoredJob:
    """A job as stored: its parameters, when its event was last restarted, whether connected."""

    params: JobParams
    restarted_at: float  # unix seconds
    connected: bool = False

    def to_json(self) -> str:
        """Upstream's JSON shape."""
        p = self.params
        when = datetime.datetime.fromtimestamp(self.restarted_at, datetime.UTC)
        return json.dumps(
            {
                "Params": {
                    "DelayId": p.delay_id,
                    "DelayTimeout": round(p.delay_timeout * 1e9),
                    "ServerName": p.server_name,
                    "LiveKitRoom": p.room,
                    "LiveKitIdentity": p.identity,
                },
                "RestartedAt": when.isoformat().replace("+00:00", "Z"),
                "Connected": self.connected,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> StoredJob:
        """Parse a stored entry; raises ``ValueError`` for anything else."""
        if len(text) > MAX_ENTRY_BYTES:
            raise ValueError("entry too large")
        document = json.loads(text)
        params = _object(document, "Params")
        strings = {
            name: _string(params, name)
            for name in ("DelayId", "ServerName", "LiveKitRoom", "LiveKitIdentity")
        }
        nanoseconds = params.get("DelayTimeout")
        if not isinstance(nanoseconds, int) or isinstance(nanoseconds, bool) or nanoseconds <= 0:
            raise ValueError("DelayTimeout must be a positive integer")
        restarted = datetime.datetime.fromisoformat(_string(document, "RestartedAt"))
        if restarted.tzinfo is None:
            raise ValueError("RestartedAt has no time zone")
        connected = document.get("Connected", False)
        return cls(
            JobParams(
                delay_id=strings["DelayId"],
                delay_timeout=nanoseconds / 1e9,
                server_name=strings["ServerName"],
                room=strings["LiveKitRoom"],
                identity=strings["LiveKitIdentity"],
            ),
            restarted.timestamp(),
            connected is True,
        )


def _object(document: Any, name: str) -> dict[str, Any]:
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object")
    return value


def _string(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def field_name(key: tuple[str, str]) -> str:
    """The hash field of a (room, identity) key."""
    return json.dumps(list(key), separators=(",", ":"))


class JobStore(Protocol):
    """Persistence of jobs; every method raises :class:`StoreError` on failure."""

    async def save(self, job: StoredJob) -> None:
        """Write (or overwrite) ``job``."""
        ...

    async def delete(self, key: tuple[str, str]) -> None:
        """Forget the job of ``key`` (no error if there is none)."""
        ...

    async def load(self, limit: int) -> list[StoredJob]:
        """Every stored job that parses, at most ``limit``."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class RedisJobStore:
    """The jobs in a Redis hash."""

    def __init__(self, url: str) -> None:
        try:
            self._redis: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS,
                decode_responses=True,
            )
        except ValueError as exc:
            raise StoreError(f"LIVEKIT_REDIS_URL: {exc}") from None

    async def ping(self) -> None:
        """Check the server answers."""
        try:
            await self._redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from None

    async def save(self, job: StoredJob) -> None:
        """``HSET``."""
        try:
            await self._redis.hset(HASH_KEY, field_name(job.params.key), job.to_json())
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis HSET: {exc}") from None

    async def delete(self, key: tuple[str, str]) -> None:
        """``HDEL``."""
        try:
            await self._redis.hdel(HASH_KEY, field_name(key))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis HDEL: {exc}") from None

    async def load(self, limit: int) -> list[StoredJob]:
        """``HSCAN`` through the hash; unparseable entries are skipped with a warning."""
        jobs: list[StoredJob] = []
        try:
            async for name, text in self._redis.hscan_iter(HASH_KEY, count=500):
                if len(jobs) >= limit:
                    log.warning("more than %d stored jobs; the rest are not resumed", limit)
                    break
                try:
                    jobs.append(StoredJob.from_json(text))
                except (ValueError, TypeError) as exc:
                    log.warning("skipping the stored job %r: %s", name[:200], exc)
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreError(f"Redis HSCAN: {exc}") from None
        return jobs

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
