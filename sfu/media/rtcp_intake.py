"""The data plane's RTCP receive step, shared by the publisher and the subscriber side.

`RtcpIntake` owns what happens to one decrypted RTCP compound before anything acts on it: it is
counted, parsed with only the packet types that have a handler (the rest stays unparsed bytes, so
what a peer sends and nobody reads costs nothing), dropped whole when malformed, and each parsed
packet is handed to the handler registered for its type, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sfu.media.rtp import rtcp
from sfu.media.rtp.errors import PacketError
from sfu.metrics import COUNTERS

__all__ = ["RtcpIntake"]

_Packet = TypeVar("_Packet", bound=rtcp.RtcpPacket)


class RtcpIntake:
    """Count, parse (only the handled types), drop malformed compounds, dispatch by type."""

    __slots__ = ("_handlers", "_types")

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[Any], None]] = {}
        self._types: frozenset[type[rtcp.RtcpPacket]] = frozenset()

    def on(self, kind: type[_Packet], handler: Callable[[_Packet], None]) -> None:
        """Hand every parsed packet of type `kind` to `handler` (one handler per type)."""
        self._handlers[kind] = handler
        self._types = frozenset(self._handlers)

    def __call__(self, data: bytes) -> None:
        COUNTERS.rtcp_in += 1
        try:
            packets = rtcp.parse_compound(data, self._types)
        except PacketError:
            return
        handlers = self._handlers
        for packet in packets:
            handler = handlers.get(type(packet))
            if handler is not None:
                handler(packet)
