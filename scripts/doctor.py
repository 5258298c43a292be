"""`python scripts/doctor.py`: probe a MatrixRTC deployment from outside, one line per problem.

A black box (imports neither `sfu` nor `auth_service`): it asks what a client asks.
* the homeserver's transports endpoint (``--homeserver``; with ``--access-token`` also its
  content): msc4143 enabled, ``matrix_rtc.transports`` naming a livekit service;
* ``/.well-known/matrix/client`` of ``--server-name`` (older clients): ``rtc_foci``;
* the auth service (``--service-url``, what the transports name): ``/healthz``, the CORS
  preflight of ``/sfu/get``, and that ``/sfu/get`` is this service (a proxy that does not strip
  its path prefix answers 404 there);
* the SFU (``--sfu-url``, ws(s)://): ``/rtc/validate`` answers as LiveKit does (401 without a
  token), ``/readyz`` (not draining);
* ``--turn host:port``: a STUN Binding over UDP is answered (coturn answers it unauthenticated).
* with ``--token`` (a LiveKit token for a test room, with roomJoin and canPublish): media. It
  joins like a client, announces one audio track, offers, and runs ICE and DTLS to the
  candidates the SFU gives: that is the SFU's UDP port answering from where the doctor runs.
  Nothing is sent after that; the participant leaves. (The SFU's port answers STUN only inside
  an ICE session, so a bare STUN probe cannot check it.) Uses the load tester's client
  (``loadtest``, with the ``loadtest`` extra: ``make venv`` has it).

Exit status 0 when nothing is wrong, 1 otherwise. Each problem line starts with ``PROBLEM``,
each passed check with ``ok``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

TIMEOUT_S = 5.0
TRANSPORTS = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"


class Report:
    def __init__(self) -> None:
        self.problems = 0

    def ok(self, text: str) -> None:
        print(f"ok       {text}")

    def problem(self, text: str) -> None:
        self.problems += 1
        print(f"PROBLEM  {text}")


def _get(
    report: Report, client: httpx.Client, what: str, url: str, **kw: object
) -> httpx.Response | None:
    try:
        return client.request(str(kw.pop("method", "GET")), url, **kw)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        report.problem(f"{what}: {url} unreachable ({type(exc).__name__}: {exc})")
        return None


def check_transports(
    report: Report, client: httpx.Client, homeserver: str, token: str
) -> list[str]:
    url = homeserver.rstrip("/") + TRANSPORTS
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = _get(report, client, "transports", url, headers=headers)
    if response is None:
        return []
    if response.status_code == 404:
        report.problem(
            "transports: 404 — Synapse needs experimental_features: {msc4143_enabled: true} "
            "(Element Call finds the SFU only there)"
        )
        return []
    if response.status_code == 401 and not token:
        report.ok("transports endpoint enabled (msc4143); pass --access-token to read it")
        return []
    if response.status_code != 200:
        report.problem(f"transports: HTTP {response.status_code} from {url}")
        return []
    foci = [t for t in response.json().get("rtc_transports", []) if t.get("type") == "livekit"]
    urls = [str(t.get("livekit_service_url", "")) for t in foci if t.get("livekit_service_url")]
    if not urls:
        report.problem(
            "transports: none of type livekit — add matrix_rtc: {transports: [{type: livekit, "
            "livekit_service_url: https://…/livekit/jwt}]} to homeserver.yaml"
        )
    else:
        report.ok(f"transports name {', '.join(urls)}")
    return urls


def check_well_known(report: Report, client: httpx.Client, server_name: str) -> None:
    url = f"https://{server_name}/.well-known/matrix/client"
    response = _get(report, client, ".well-known", url)
    if response is None:
        return
    try:
        foci = (
            response.json().get("org.matrix.msc4143.rtc_foci")
            if response.status_code == 200
            else None
        )
    except json.JSONDecodeError:
        foci = None
    if not foci:
        report.problem(
            f".well-known: {url} has no org.matrix.msc4143.rtc_foci (older clients read it)"
        )
    else:
        report.ok(".well-known lists rtc_foci")


def check_auth(report: Report, client: httpx.Client, service_url: str) -> None:
    base = service_url.rstrip("/")
    health = _get(report, client, "auth service", f"{base}/healthz")
    if health is None:
        return
    if health.status_code != 200:
        report.problem(f"auth service: {base}/healthz answered {health.status_code}, not 200")
    preflight = _get(
        report,
        client,
        "auth service",
        f"{base}/sfu/get",
        method="OPTIONS",
        headers={"Origin": "https://call.example", "Access-Control-Request-Method": "POST"},
    )
    if preflight is not None:
        if preflight.status_code == 404:
            report.problem(
                f"auth service: {base}/sfu/get is 404 — the proxy must strip its path prefix "
                "(the service matches /sfu/get exactly)"
            )
            return
        if preflight.headers.get("access-control-allow-origin") != "*":
            report.problem(
                "auth service: the CORS preflight of /sfu/get has no Access-Control-Allow-Origin: * "
                "(browsers will refuse the token request)"
            )
    probe = _get(report, client, "auth service", f"{base}/sfu/get", method="POST", content=b"{}")
    if probe is not None and probe.status_code == 400 and "errcode" in probe.text:
        report.ok(f"auth service answers at {base}")
    elif probe is not None and probe.status_code != 404:
        report.problem(
            f"auth service: POST /sfu/get {{}} answered {probe.status_code}, not 400 M_BAD_JSON"
        )


def check_sfu(report: Report, client: httpx.Client, sfu_url: str) -> None:
    parts = urlsplit(sfu_url)
    if parts.scheme not in ("ws", "wss"):
        report.problem(
            f"SFU: {sfu_url} is not a ws:// or wss:// URL (what the auth service hands out)"
        )
        return
    http = urlunsplit(
        ("https" if parts.scheme == "wss" else "http", parts.netloc, parts.path.rstrip("/"), "", "")
    )
    validate = _get(report, client, "SFU", f"{http}/rtc/validate")
    if validate is None:
        return
    if validate.status_code == 401:
        report.ok(f"SFU signalling answers at {sfu_url}/rtc")
    elif validate.status_code == 404:
        report.problem(
            f"SFU: {http}/rtc/validate is 404 — wrong URL, or a proxy that does not strip its prefix"
        )
        return
    else:
        report.problem(
            f"SFU: /rtc/validate without a token answered {validate.status_code}, not 401"
        )
    ready = _get(report, client, "SFU", f"{http}/readyz")
    if ready is not None and ready.status_code not in (200, 404):
        report.problem(f"SFU: not ready ({ready.text.strip()[:120]})")


def stun_binding(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """An RFC 8489 Binding request over UDP; True when a Binding success response comes back."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        try:
            s.sendto(request, (host, port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == transaction


def check_turn(
    report: Report, target: str, probe: Callable[[str, int], bool] = stun_binding
) -> None:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        report.problem(f"--turn {target!r}: expected host:port")
    elif probe(host.strip("[]"), int(port)):
        report.ok(f"TURN/STUN answers on UDP {target}")
    else:
        report.problem(
            f"TURN: no STUN answer from UDP {target} (firewall, or coturn not listening)"
        )


async def _media_probe(sfu_url: str, token: str) -> tuple[str | None, str, list[str]]:
    """Join, publish one audio track, connect the publisher transport. Returns (failure or None,
    the connection's state or the SFU's address, the candidates the SFU offered)."""
    from livekit.protocol import rtc

    from loadtest.media import MediaSet
    from loadtest.publisher import Publisher
    from loadtest.signal import SignalError
    from loadtest.webrtc import Sdp, parse_candidate_init, use_interfaces_for

    use_interfaces_for(sfu_url)
    offered: list[str] = []

    class Probe(Publisher):
        async def on_signal(self, kind: str | None, response: rtc.SignalResponse) -> None:
            if kind == "answer":
                for media in Sdp.parse(response.answer.sdp).media:
                    offered.extend(media.candidates)
            await super().on_signal(kind, response)

        async def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
            if trickle.target == rtc.SignalTarget.PUBLISHER:
                with contextlib.suppress(Exception):
                    offered.append(parse_candidate_init(trickle.candidateInit) or "")
            await super()._on_trickle(trickle)

    silent = MediaSet(video={}, speech=[], silence=b"")
    probe = Probe(
        sfu_url, token, "doctor", number=0, media=silent, video_rids=(), audio=True, talking=False
    )
    try:
        await probe.join()
        await probe.publish()
        addr = probe.pub_transport._remote_addr
        return None, f"{addr[0]}:{addr[1]}" if addr else "?", offered
    except SignalError as exc:
        return f"join: {exc}", "", offered
    except (ConnectionError, TimeoutError) as exc:
        reason = str(exc).removesuffix(": ").strip() or type(exc).__name__
        return reason, probe.pub_transport.describe(), offered
    finally:
        await probe.close()


def check_media(report: Report, sfu_url: str, token: str) -> None:
    try:
        failure, where, offered = asyncio.run(_media_probe(sfu_url, token))
    except ImportError as exc:
        report.problem(f"media: --token needs the load tester's client ({exc}; `make venv`)")
        return
    fields = [c.split() for c in offered]
    candidates = sorted({f"{f[4]}:{f[5]}/{f[2].lower()}" for f in fields if len(f) > 5})
    if failure is None:
        report.ok(f"media: ICE and DTLS with the SFU at {where} (UDP)")
    elif failure.startswith("join"):
        report.problem(f"media: {failure} (a token for a room it may create or join?)")
    else:
        report.problem(
            f"media: no ICE/DTLS with the SFU ({failure}; {where}); it offered "
            f"{', '.join(candidates) or 'no candidates'}: open that UDP port to it, and set "
            "rtc.node_ip (NODE_IP) to the address clients reach"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--homeserver", help="client-server API base, e.g. https://matrix.example.org"
    )
    parser.add_argument("--access-token", default="", help="a user's token, to read the transports")
    parser.add_argument("--server-name", help="Matrix server name, for its .well-known")
    parser.add_argument("--service-url", help="the auth service (livekit_service_url)")
    parser.add_argument(
        "--sfu-url", help="the SFU's ws(s):// URL (what the auth service hands out)"
    )
    parser.add_argument("--turn", help="coturn's host:port (UDP)")
    parser.add_argument(
        "--token", help="a LiveKit token (roomJoin, canPublish) for a test room: checks media"
    )
    parser.add_argument(
        "--cafile", help="verify TLS against this CA (PEM) instead of the system's, e.g. your own"
    )
    parser.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    args = parser.parse_args(argv)
    report = Report()
    verify: ssl.SSLContext | bool = not args.insecure
    if args.cafile and not args.insecure:
        verify = ssl.create_default_context(cafile=args.cafile)
        os.environ["SSL_CERT_FILE"] = args.cafile  # the media probe's wss:// (OpenSSL's default)
    with httpx.Client(timeout=TIMEOUT_S, verify=verify) as client:
        service_urls = []
        if args.homeserver:
            service_urls = check_transports(report, client, args.homeserver, args.access_token)
        if args.server_name:
            check_well_known(report, client, args.server_name)
        for url in [args.service_url] if args.service_url else service_urls:
            check_auth(report, client, url)
        if args.sfu_url:
            check_sfu(report, client, args.sfu_url)
    if args.turn:
        check_turn(report, args.turn)
    if args.token and args.sfu_url:
        check_media(report, args.sfu_url, args.token)
    elif args.token:
        report.problem("--token needs --sfu-url (where to join)")
    print(f"{report.problems} problem(s)" if report.problems else "no problems found")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
