"""Prometheus metrics of the auth service, on a registry of its own (one per app instance).

* ``matrix_sfu_auth_requests_total{endpoint, outcome}`` — every answered request; ``outcome`` is
  ``ok`` or a short reason (``not_json``, ``bad_json``, ``unauthorized``, ``rate_limited``, ...).
* ``matrix_sfu_auth_tokens_issued_total{endpoint, access}`` — tokens issued, ``access`` being
  ``full`` or ``restricted``.
* ``matrix_sfu_auth_openid_lookup_seconds{result}`` — latency of OpenID userinfo lookups that went
  to a homeserver (cache misses), ``result`` ``ok`` or ``error``.
* ``matrix_sfu_auth_openid_cache_total{result}`` — OpenID cache ``hit``/``miss``.
* ``matrix_sfu_auth_discovery_total{result}`` — server discovery ``hit`` (cached) or ``resolved``.
* ``sfu_limit_exceeded_total{limit}`` — every time a cap on remote input was hit; the same name
  and meaning as the SFU's counter, ``limit`` being a name of ``docs/limits.md``.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's counters and histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "matrix_sfu_auth_requests",
            "Requests answered, by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.tokens_issued = Counter(
            "matrix_sfu_auth_tokens_issued",
            "LiveKit tokens issued, by endpoint and access level.",
            ["endpoint", "access"],
            registry=self.registry,
        )
        self.openid_lookup_seconds = Histogram(
            "matrix_sfu_auth_openid_lookup_seconds",
            "Time spent asking homeservers for OpenID userinfo (cache misses only).",
            ["result"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.openid_cache = Counter(
            "matrix_sfu_auth_openid_cache",
            "OpenID userinfo cache lookups, by result.",
            ["result"],
            registry=self.registry,
        )
        self.discovery = Counter(
            "matrix_sfu_auth_discovery",
            "Federation server discovery, cached or resolved.",
            ["result"],
            registry=self.registry,
        )

        self.limit_exceeded = Counter(
            "sfu_limit_exceeded",
            "Caps on remote input that were hit, by limit (see docs/limits.md).",
            ["limit"],
            registry=self.registry,
        )

    def limit_hit(self, limit: str) -> None:
        """Count one hit of the cap named ``limit``."""
        self.limit_exceeded.labels(limit).inc()

    def render(self) -> bytes:
        """The exposition text for ``GET /metrics``."""
        return generate_latest(self.registry)
