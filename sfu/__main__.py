"""Command line: ``python -m sfu --config FILE`` (console script ``matrix-sfu``)."""

from __future__ import annotations

import argparse
import gc
import logging
import re
import resource
import socket
import sys

import uvicorn
import uvloop

from sfu.app import build_app, listen_sockets
from sfu.config import ConfigError, load
from sfu.lifecycle import DrainingServer
from sfu.signal.wsprotocol import FairWSProtocol

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _raise_nofile() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one (as Go does for LiveKit): sessions need
    descriptors, and the default cap on sessions is derived from this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        return
    logging.getLogger("sfu").info("RLIMIT_NOFILE raised from %d to %d", soft, hard)


_TOKEN_IN_QUERY = re.compile(r"((?:access_token|join_request)=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """Blank access tokens in uvicorn's WebSocket lines (`"WebSocket /rtc?access_token=…"
    [accepted]`), which `access_log=False` does not cover: a token in a log is a session for
    whoever reads the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _TOKEN_IN_QUERY.sub(r"\1…", a) if isinstance(a, str) else a for a in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = _TOKEN_IN_QUERY.sub(r"\1…", record.msg)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matrix-sfu", description=__doc__)
    parser.add_argument("--config", help="LiveKit-style config.yaml (default: env LIVEKIT_CONFIG*)")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"matrix-sfu: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=LEVELS[config.logging.level.lower()],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _raise_nofile()
    sockets: list[socket.socket] = []
    metrics_sockets: list[socket.socket] = []
    try:
        sockets = listen_sockets(config.bind_addresses, config.port)
        if config.prometheus_port:
            metrics_sockets = listen_sockets(config.bind_addresses, config.prometheus_port)
    except OSError as exc:
        port = config.prometheus_port if sockets else config.port
        print(f"matrix-sfu: cannot listen on port {port}: {exc.strerror}", file=sys.stderr)
        return 2
    if config.rtc.udp_port:  # the shared media sockets bind at start-up: check the port now
        for address in config.bind_addresses or ("0.0.0.0",):
            host = address or "0.0.0.0"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.bind((host, config.rtc.udp_port))
            except OSError as exc:
                print(
                    f"matrix-sfu: cannot bind rtc.udp_port {config.rtc.udp_port} on {host}: "
                    f"{exc.strerror}",
                    file=sys.stderr,
                )
                return 2
    app = build_app(config, metrics_sockets or None)
    sfu = app.state.sfu
    server = DrainingServer(
        uvicorn.Config(
            app,
            loop="uvloop",
            ws=FairWSProtocol,  # uvicorn's wsproto protocol, at most 64 events per turn
            ws_max_size=config.limits.max_signal_message_size,
            ws_per_message_deflate=False,  # protobuf frames are small: deflate costs CPU, saves little
            ws_ping_interval=10,
            ws_ping_timeout=20,
            log_level=LEVELS[config.logging.level.lower()],
            lifespan="on",
            access_log=False,  # query strings carry access tokens
            timeout_graceful_shutdown=5,
        ),
        drain=lambda: sfu.drain(config.drain_timeout),
    )
    logging.getLogger("uvicorn.error").addFilter(RedactTokens())  # after uvicorn's log config
    # Everything imported and built so far lives for the whole process: move it out of the
    # cyclic collector's generations, so full collections only walk what calls create.
    gc.collect()
    gc.freeze()
    uvloop.run(server.serve(sockets=sockets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
