"""The fuzz targets: one module per parser or handler of remote bytes.

Each module exposes `test_one(data: bytes) -> None`, which feeds `data` to the real project code
and lets only that code's documented error types through (any other exception is a finding), and
`seeds() -> list[bytes]`, a few valid inputs built from the project's own builders and fixtures.
`MAX_LEN` is the largest input libFuzzer generates for it. Modules import atheris nowhere: the
corpus is replayed by pytest without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["TARGETS", "load"]

#: in the order `python -m fuzz.run` runs them
TARGETS: tuple[str, ...] = (
    "rtp_header",
    "rtcp",
    "twcc",
    "vp8",
    "h264",
    "red",
    "extensions",
    "udpmux",
    "ingress",
    "fastpath",
    "fastrecv",
    "ice_candidate",
    "sdp",
    "signal",
    "join_token",
    "auth_models",
    "auth_app",
    "loadtest_packets",
)


def load(name: str) -> ModuleType:
    """The target module `fuzz.targets.<name>`."""
    if name not in TARGETS:
        raise KeyError(f"unknown fuzz target {name!r}; known: {', '.join(TARGETS)}")
    return importlib.import_module(f"{__name__}.{name}")
