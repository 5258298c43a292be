"""rtc.turn_servers end to end: livekit-client in headless Chromium, forced to relay
(iceTransportPolicy "relay"), inside a network namespace from which the SFU's UDP port cannot be
reached, calls through a real coturn (Debian) with the TURN REST credentials the SFU derived
for each participant (coturn's use-auth-secret), over UDP and, for networks that block UDP, TCP
and TLS (turns:, with a test certificate whose key alone Chromium accepts).

The SFU runs with one UDP port (rtc.udp_port) on 127.0.0.1, as in deploy/; the browsers reach
its signalling through a TCP forwarder on the veth address (the reverse proxy's place) and its
media only through coturn, which relays from 127.0.0.1.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness.browser import browser_session
from tests.harness.coturn import running_coturn
from tests.harness.netns import client_namespace, tcp_forwarder
from tests.harness.proxy import chromium_flags, write_test_certificate
from tests.harness.sfu import free_tcp_port, free_udp_port, running_sfu

pytestmark = pytest.mark.slow

WAIT_S = 40.0


async def _relayed_call(tmp_path: Path, protocol: str) -> None:
    with client_namespace() as ns:
        tls, flags = None, []
        if protocol == "tls":
            certificate = write_test_certificate(tmp_path / "tls", ips=(ns.host_ip,))
            tls = (free_tcp_port(), certificate.cert, certificate.key)
            flags = chromium_flags(certificate, ns.host_ip)
        async with running_coturn(
            tmp_path / "coturn", listen_ip=ns.host_ip, port=free_tcp_port(), tls=tls
        ) as turn:
            udp_port = free_udp_port()
            extra: dict[str, Any] = {
                "rtc": {
                    "udp_port": udp_port,
                    "turn_servers": [
                        {
                            "host": turn.host,
                            "port": turn.tls_port or turn.port,
                            "protocol": protocol,
                            "secret": turn.secret,
                            "ttl": 600,
                        }
                    ],
                }
            }
            async with running_sfu(tmp_path / "sfu", extra_config=extra) as sfu:
                # as seen from the namespace, nothing listens on the SFU's media port
                assert ns.udp_refused(ns.host_ip, udp_port)
                assert ns.udp_refused("127.0.0.1", udp_port)
                async with tcp_forwarder(ns.host_ip, "127.0.0.1", sfu.port) as signal_port:
                    url = f"ws://{ns.host_ip}:{signal_port}"
                    room = f"turn-{uuid.uuid4().hex[:8]}"
                    async with browser_session(
                        names=["alice", "bob"],
                        host=ns.host_ip,
                        executable=ns.chromium_wrapper(tmp_path),
                        extra_flags=flags,
                    ) as session:
                        alice, bob = session.pages
                        for page in (alice, bob):
                            await page.join(
                                url,
                                sfu.token(page.name, room),
                                rtc_config={"iceTransportPolicy": "relay"},
                                video_css=(640, 360),
                                timeout_s=WAIT_S + 10,
                            )
                        for viewer, sender in ((bob, alice), (alice, bob)):
                            video, audio = await viewer.wait_remote_media_flowing(
                                sender.name, timeout_s=WAIT_S
                            )
                            assert video["codec"] == "video/VP8", video
                            assert audio["totalAudioEnergy"] > 0, audio
                        for page in (alice, bob):
                            routes = await page.ice_routes()
                            print(f"{page.name}: {routes}")
                            for name in ("publisher", "subscriber"):
                                route = routes.get(name)
                                assert route is not None, (page.name, name, routes)
                                assert route["local"]["type"] == "relay", route
                                assert route["local"]["relayProtocol"] == protocol, route
                                assert route["remote"]["address"] == "127.0.0.1", route
                                assert route["remote"]["port"] == udp_port, route
                                assert route["bytesReceived"] > 0, route
                        await alice.leave()
                        await bob.leave()
                sfu.assert_alive()
        log = turn.log()
        # coturn checked the credentials the SFU derived ("<expiry>:<identity>") for each page
        for identity in ("alice", "bob"):
            allocated = rf"user <\d+:{identity}>: incoming packet ALLOCATE processed, success"
            assert re.search(allocated, log), log[-4000:]


async def test_call_relayed_over_turn_udp(tmp_path: Path) -> None:
    await _relayed_call(tmp_path, "udp")


async def test_call_relayed_over_turn_tcp(tmp_path: Path) -> None:
    await _relayed_call(tmp_path, "tcp")


async def test_call_relayed_over_turn_tls(tmp_path: Path) -> None:
    await _relayed_call(tmp_path, "tls")
