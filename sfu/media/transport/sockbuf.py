"""Kernel buffer sizes for the SFU's UDP sockets.

A media socket's receive buffer is what absorbs a burst (a key frame from every publisher, a
stall of the event loop) before the kernel starts dropping datagrams. `SO_RCVBUF` is silently
capped at `net.core.rmem_max` (Debian's default is 208 KiB), so `size_buffers` first tries
`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, which a process with CAP_NET_ADMIN (root, or a container given
that capability) may use beyond the cap, and warns once, naming the sysctl, when the buffer it
got is smaller than asked.
"""

from __future__ import annotations

import contextlib
import logging
import socket

__all__ = ["UDP_BUFFER", "size_buffers"]

log = logging.getLogger(__name__)

#: bytes asked for each peer connection's socket buffers (the shared single-port socket asks 8×)
UDP_BUFFER = 1024 * 1024
# Linux socket options (asm-generic/socket.h); Python's socket module does not name them
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_warned = False


def size_buffers(sock: socket.socket, size: int = UDP_BUFFER) -> int:
    """Ask for `size`-byte receive and send buffers; return the receive buffer granted."""
    global _warned
    for forced, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except OSError:  # no CAP_NET_ADMIN: capped at net.core.{r,w}mem_max
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
    # the kernel reports twice the size it was given (it counts its own bookkeeping)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < size and not _warned:
        _warned = True
        log.warning(
            "UDP receive buffers are %d KiB, not the %d KiB asked for: bursts may be dropped; "
            "raise net.core.rmem_max and net.core.wmem_max (sysctl) to at least %d",
            granted // 1024,
            size // 1024,
            size,
        )
    return granted
