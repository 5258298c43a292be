"""Command line: ``python -m auth_service`` (console script ``matrix-sfu-auth``).

* no arguments (or ``serve``): read the environment (see :mod:`auth_service.config`) and serve;
* ``well-known --service-url URL``: print what an operator adds to the homeserver's
  ``.well-known/matrix/client`` and to Synapse's ``homeserver.yaml`` so that Matrix clients find
  this service;
* ``appservice-registration --url URL``: print the application-service registration YAML for
  Synapse (``app_service_config_files``) from ``LIVEKIT_AS_TOKEN``, ``LIVEKIT_HS_TOKEN`` and
  ``LIVEKIT_HS_SERVER_NAME``; ``URL`` is where the homeserver reaches this service.

Configuration problems end the process with one line on stderr and exit status 2; a port that
cannot be bound, with exit status 1. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import uvicorn
import yaml

from .app import create_app
from .appservice import registration_yaml
from .config import ConfigError, Settings, appservice_settings, load_settings

log = logging.getLogger("auth_service")

PROG = "matrix-sfu-auth"
EXIT_CONFIG = 2
EXIT_RUNTIME = 1
#: seconds an idle HTTP/1.1 connection is kept open (uvicorn's default)
KEEP_ALIVE = 5
#: in application-service mode the homeserver pushes transactions over pooled connections it
#: keeps idle for up to 120 s (Synapse); closing one first races a push sent on it in the same
#: instant, which the homeserver counts as a failed transaction: it marks the service down and
#: retries only after a back-off (2 s and more), so leavers are ejected late. Outlasting the
#: pool leaves the closing to the homeserver.
KEEP_ALIVE_APPSERVICE = 130


def normalise_service_url(url: str) -> str:
    """Validate the public base URL of this service and drop a trailing slash."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"--service-url: {url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--service-url: {url!r} must be an https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"--service-url: {url!r} must not have a query or fragment")
    return url.rstrip("/")


def rtc_foci(service_url: str) -> list[dict[str, str]]:
    """The MatrixRTC transport entry naming this service."""
    return [{"type": "livekit", "livekit_service_url": service_url}]


def well_known_client_fragment(service_url: str) -> dict[str, Any]:
    """What ``/.well-known/matrix/client`` must contain (older clients read it)."""
    return {"org.matrix.msc4143.rtc_foci": rtc_foci(service_url)}


def synapse_config(service_url: str) -> dict[str, Any]:
    """Synapse settings that serve the transports endpoint (Element Call reads it)."""
    return {
        "experimental_features": {"msc4143_enabled": True},
        "matrix_rtc": {"transports": rtc_foci(service_url)},
    }


def well_known_text(service_url: str) -> str:
    """The operator-facing text ``well-known`` prints."""
    fragment = json.dumps(well_known_client_fragment(service_url), indent=2)
    synapse = yaml.safe_dump(synapse_config(service_url), sort_keys=False)
    served_by_synapse = yaml.safe_dump(
        {"extra_well_known_client_content": well_known_client_fragment(service_url)},
        sort_keys=False,
    )
    return (
        "# 1. Merge into https://<server_name>/.well-known/matrix/client\n"
        "#    (older clients discover the service here):\n"
        f"{fragment}\n"
        "\n"
        "# 2. Add to Synapse's homeserver.yaml, merging with keys already there (Element Call\n"
        "#    reads /_matrix/client/unstable/org.matrix.msc4143/rtc/transports):\n"
        f"{synapse}"
        "\n"
        "# 3. Only if Synapse itself serves /.well-known/matrix/client (public_baseurl set),\n"
        "#    add this to homeserver.yaml instead of editing a file for step 1:\n"
        f"{served_by_synapse}"
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket; an empty host means every interface (IPv6 and IPv4 where possible)."""
    if host == "":
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(
                    ("::", port), family=socket.AF_INET6, dualstack_ipv6=True
                )
            except OSError:
                pass
        return socket.create_server(("0.0.0.0", port))
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _canon, sockaddr = infos[0]
    return socket.create_server((str(sockaddr[0]), port), family=family)


def _configure_logging(level: int) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def serve(settings: Settings) -> int:
    """Run the service until interrupted."""
    try:
        sock = bind_socket(settings.bind_host, settings.bind_port)
    except OSError as exc:
        print(
            f"{PROG}: cannot listen on {settings.bind_host or '*'}:{settings.bind_port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    host, port = sock.getsockname()[:2]
    if settings.skip_verify_tls:
        log.warning("LIVEKIT_INSECURE_SKIP_VERIFY_TLS: homeserver TLS certificates are NOT checked")
    log.info(
        "starting: listening on %s:%s, LIVEKIT_URL=%s, full-access homeservers=%s",
        host,
        port,
        settings.livekit_url,
        " ".join(settings.full_access_homeservers),
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_APPSERVICE if settings.appservice_enabled else KEEP_ALIVE,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def print_registration(url: str) -> int:
    """``appservice-registration``: the YAML on stdout, or one line on stderr and status 2."""
    try:
        url = normalise_service_url(url)
        as_token, hs_token, server_name, _interval = appservice_settings(os.environ)
        if not as_token:
            raise ConfigError(
                "LIVEKIT_AS_TOKEN, LIVEKIT_HS_TOKEN and LIVEKIT_HS_SERVER_NAME must be set"
            )
    except ConfigError as exc:
        print(f"{PROG}: {str(exc).replace('--service-url', '--url')}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(registration_yaml(url, as_token, hs_token, server_name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m auth_service`` and ``matrix-sfu-auth``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Matrix OpenID → LiveKit token service (a drop-in for lk-jwt-service). "
        "Configured by environment variables; see docs/auth_service.md.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the token endpoints (the default)")
    well_known = commands.add_parser(
        "well-known", help="print the .well-known and Synapse settings that point clients here"
    )
    well_known.add_argument(
        "--service-url",
        required=True,
        help="public base URL of this service, e.g. https://rtc.example.org/livekit/jwt",
    )
    registration = commands.add_parser(
        "appservice-registration",
        help="print Synapse's application-service registration for this service",
    )
    registration.add_argument(
        "--url",
        required=True,
        help="where the homeserver reaches this service, e.g. http://lk-jwt-service:8080",
    )
    args = parser.parse_args(argv)

    if args.command == "appservice-registration":
        return print_registration(args.url)

    if args.command == "well-known":
        try:
            service_url = normalise_service_url(args.service_url)
        except ConfigError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if urlsplit(service_url).scheme != "https":
            print(f"{PROG}: warning: browsers need an https:// service URL", file=sys.stderr)
        sys.stdout.write(well_known_text(service_url))
        return 0

    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _configure_logging(settings.log_level)
    try:
        return serve(settings)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
