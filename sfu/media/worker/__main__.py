"""``python -m sfu.media.worker``: one media worker process, started by the control process.

Arguments: the worker's index, the control channel's inherited file descriptor, the relay
namespace and the transport settings as JSON. The worker dies with its control process: the
kernel sends it SIGKILL when the parent exits (``PR_SET_PDEATHSIG``), and end of file on the
control channel ends it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

import uvloop

from sfu.media import fastpath
from sfu.media.transport import TransportConfig
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.media.worker.host import WorkerHost
from sfu.media.worker.relay import Relay
from sfu.media.worker.wire import Channel, ChannelClosed, open_channel

log = logging.getLogger("sfu.media.worker")
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent exits (Linux); exit now if it already has."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def transport_config(settings: dict[str, Any]) -> TransportConfig:
    return TransportConfig(
        bind_addresses=tuple(settings["bind_addresses"]),
        node_ip=settings.get("node_ip"),
        port_range_start=int(settings.get("port_range_start", 0)),
        port_range_end=int(settings.get("port_range_end", 0)),
        udp_port=int(settings.get("udp_port", 0)),
        send_mode=settings.get("send_mode", "gso"),
        allow_private_candidates=bool(settings.get("allow_private_candidates", False)),
        fast_path=fastpath.for_transports(str(settings.get("fast_path", "auto"))),
        congestion_control=bool(settings.get("congestion_control", True)),
    )


async def open_udp_port(config: TransportConfig) -> None:
    """Bind this worker's `rtc.udp_port` sockets (one per bind address), read by the compiled
    receive path where `config.fast_path` has one, as the single process's are."""
    if not config.udp_port:
        return
    for address in config.bind_addresses:
        await open_mux(address, config.udp_port, config.fast_path)


async def serve(index: int, fd: int, namespace: str, config: TransportConfig) -> None:
    await open_udp_port(config)
    relay = Relay(namespace, index)
    relay.start()
    channel: Channel | None = None

    def emit(message: dict[str, Any]) -> None:
        if channel is not None and not channel.closed:
            with contextlib.suppress(ChannelClosed):  # closing: the reader's end ends us
                channel.send(message)

    def reply(rid: int, result: Any, error: BaseException | None) -> None:
        if channel is not None:
            channel.reply(rid, result, error)

    host = WorkerHost(index, config, relay, emit, reply)
    sock = socket.socket(fileno=fd)
    channel, reader = await open_channel(sock, host.handle)
    timers = asyncio.ensure_future(host.run_timers())
    emit({"op": "ready", "pid": os.getpid()})
    try:
        await reader  # until the control process goes away
    finally:
        timers.cancel()
        await host.close()
        relay.close()
        close_muxes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sfu.media.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--config", required=True, help="transport settings (JSON)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s worker{args.index} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = transport_config(json.loads(args.config))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control process decides when we stop
    uvloop.run(serve(args.index, args.fd, args.namespace, config))


if __name__ == "__main__":
    main()
