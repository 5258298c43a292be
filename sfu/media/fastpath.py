"""Which per-copy forwarding path runs: the compiled `sfu.media._fastpath` or its pure-Python reference.

`load(mode)` takes the value of `rtc.fast_path` (the caller reads the configuration; this package
never does): `"auto"` gives the compiled path when the extension was built at install time and
otherwise the pure-Python one, with one warning per process; `"off"` always the pure-Python one.
Both implementations offer the same `forward` / `Batch` / `Target` / `TransportWideSequence`
(see sfu/media/fastpath_py.py
for what `forward` does); `Implementation.target` hides how each reaches libsrtp: the compiled one
is handed the addresses of pylibsrtp's bundled `srtp_protect` / `srtp_protect_rtcp` and each
session's `srtp_t`, the reference calls them through pylibsrtp's cffi binding.

The receive side of the shared UDP socket (`rtc.udp_port`) has the same pair:
`sfu.media._fastrecv` (batched `recvmmsg`, SRTP unprotect, routing by source address) and its
reference `sfu.media.fastrecv_py`; `Implementation.reader` and `.route` make theirs (None: the
compiled one was not built, the socket stays with the event loop). Their `Stream`
(`sfu.media.layerstream`) holds a received layer's numbers; armed, the reader does the receiver's
per-packet work itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib

from sfu.media import fastpath_py, fastrecv_py

__all__ = ["MODES", "Implementation", "available", "for_transports", "load", "new_sequence"]

log = logging.getLogger(__name__)

#: rtc.fast_path values (sfu.config.FAST_PATH_MODES)
MODES = ("auto", "off")

_compiled: ModuleType | None
try:
    from sfu.media import _fastpath
except ImportError:  # built without a C compiler: the pure-Python path
    _compiled = None
else:
    _fastpath.set_srtp(
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect"))),
        int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect_rtcp"))),
    )
    _compiled = _fastpath

_compiled_recv: ModuleType | None
try:
    from sfu.media import _fastrecv
except ImportError:
    _compiled_recv = None
else:
    _fastrecv.set_srtp(int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_unprotect"))))
    _compiled_recv = _fastrecv

_warned = False


def available() -> bool:
    """Whether the compiled path was built (at install time, with the machine's compiler)."""
    return _compiled is not None


def srtp_context(session: Session) -> int:
    """The address of the `srtp_t` a pylibsrtp session owns (valid while the session lives)."""
    return int(ffi.cast("uintptr_t", session._srtp[0]))


@dataclass(frozen=True)
class Implementation:
    """One per-copy path: `forward`, and factories for its `Batch` and `Target` objects."""

    name: str  # "compiled" or "python"
    forward: Callable[[Sequence[Any], object, bytes, int, int, int, float], tuple[int, int]]
    _module: Any
    _recv: Any = None  # the receive module, if any

    def batch(self, fd: int, *, gso: bool = False, capacity: int = 1024) -> Any:
        """A send batch on a duplicate of socket descriptor `fd` (-1: none)."""
        return self._module.Batch(fd, gso=gso, capacity=capacity)

    def sequence(self, ext_id: int = 0) -> Any:
        """A transport's `TransportWideSequence`, of the type this path's targets stamp from."""
        return self._module.TransportWideSequence(ext_id)

    def target(self, batch: Any, addr: tuple[str, int], session: Session | None = None) -> Any:
        """A down track's per-copy state, sending to `addr` through `batch`, protected with
        `session` (None: plaintext, for tests)."""
        if self._module is fastpath_py:
            return fastpath_py.Target(batch, addr, session=session)
        if session is None:
            return self._module.Target(batch, addr)
        return self._module.Target(batch, addr, srtp=srtp_context(session), owner=session)

    @property
    def receives(self) -> bool:
        """Whether it has a receive path for the shared socket (`reader`, `route`)."""
        return self._recv is not None

    def reader(self, fd: int, fallback: Callable[[bytes, Any], object]) -> Any:
        """A batched reader of socket descriptor `fd` (a duplicate); what no route takes goes to
        `fallback(data, addr)`."""
        return self._recv.Reader(fd, fallback)

    def route(self, addr: Any, on_rtp: Callable[[bytes], object], session: Session | None) -> Any:
        """A route for SRTP from `addr`, unprotected with `session` (None: plaintext, for tests),
        handed to `on_rtp`."""
        if self._recv is fastrecv_py:
            return fastrecv_py.Route(addr, on_rtp, session=session)
        if session is None:
            return self._recv.Route(addr, on_rtp)
        return self._recv.Route(addr, on_rtp, srtp=srtp_context(session), owner=session)


PYTHON = Implementation("python", fastpath_py.forward, fastpath_py, fastrecv_py)
COMPILED = (
    None
    if _compiled is None
    else Implementation("compiled", _compiled.forward, _compiled, _compiled_recv)
)


def load(mode: str = "auto") -> Implementation:
    """The implementation for `rtc.fast_path` = `mode`."""
    global _warned
    if mode not in MODES:
        raise ValueError(f"fast path mode must be one of {', '.join(MODES)}")
    if mode == "off":
        return PYTHON
    if COMPILED is None:
        if not _warned:
            _warned = True
            log.warning(
                "rtc.fast_path: the compiled forwarding path (sfu.media._fastpath) is not built; "
                "forwarding in pure Python (reinstall with a C compiler present to build it)"
            )
        return PYTHON
    return COMPILED


def new_sequence(ext_id: int = 0) -> Any:
    """A subscriber transport's `TransportWideSequence`: the compiled one when built (a compiled
    target stamps only from that type; Python calls either), else the reference."""
    return (COMPILED or PYTHON).sequence(ext_id)


def for_transports(mode: str) -> Implementation | None:
    """What the transports forward through for `rtc.fast_path` = `mode`: the compiled path
    (`"auto"`, when built), or None (`"off"`, or not built): each copy through
    `PeerTransport.send_rtp` as before — the pure-Python reference is for tests, not traffic."""
    impl = load(mode)
    return impl if mode != "off" and impl is COMPILED else None
