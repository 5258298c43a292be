"""The SSRF guard: attacker-chosen server names never reach non-public addresses."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from auth_service.app import create_app
from auth_service.matrix import FederationDiscovery, OpenIdError, OpenIdVerifier
from auth_service.net import (
    IpAddress,
    SrvRecord,
    Timeouts,
    client_tls_context,
    is_forbidden_address,
)

from .conftest import TlsFiles
from .fakes import FakeHttpServer, FakeResolver, Reply, asgi_client, make_settings
from .test_discovery import userinfo_handler, well_known_handler

FAST = Timeouts(connect=0.5, request=1.0)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "ff0e::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888", "2606:4700::1111"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


def guarded_verifier(
    resolver: FakeResolver,
    tls: TlsFiles,
    *,
    policy: Any = is_forbidden_address,
    well_known_port: int = 1,
    default_port: int = 1,
) -> OpenIdVerifier:
    discovery = FederationDiscovery(
        resolver,
        tls_context=client_tls_context(verify=True, cafile=str(tls.cert)),
        allow_private=False,
        address_policy=policy,
        timeouts=FAST,
        well_known_port=well_known_port,
        default_port=default_port,
    )
    return OpenIdVerifier(discovery, total_timeout=3.0)


def only(forbidden: str) -> Any:
    """A policy that forbids one loopback address, so tests can run servers on another."""
    target = ipaddress.ip_address(forbidden)

    def policy(address: IpAddress) -> bool:
        return address == target

    return policy


async def test_loopback_targets_are_refused_through_the_app(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({}), tls_files.cert, tls_files.key) as hs:
        hs.handler = userinfo_handler(
            {"t": f"@a:127.0.0.1:{hs.port}", "u": f"@a:localhost:{hs.port}"}
        )
        resolver = FakeResolver({"localhost": ["::1", "127.0.0.1"]})
        app = create_app(make_settings(), verifier=guarded_verifier(resolver, tls_files))
        async with asgi_client(app) as http:
            for token, server in (("t", f"127.0.0.1:{hs.port}"), ("u", f"localhost:{hs.port}")):
                body = {
                    "room": "!r:x",
                    "openid_token": {"access_token": token, "matrix_server_name": server},
                }
                response = await http.post("/sfu/get", content=json.dumps(body))
                assert response.status_code == 401
                assert response.json()["errcode"] == "M_UNAUTHORIZED"
    assert hs.connections == 0


async def test_private_answers_from_dns_are_refused(tls_files: TlsFiles) -> None:
    resolver = FakeResolver({"hs.test": ["10.0.0.5", "192.168.0.2", "fd00::2"]})
    verifier = guarded_verifier(resolver, tls_files)
    with pytest.raises(OpenIdError, match="non-public"):
        await verifier.verify("hs.test:8448", "t")


async def test_only_allowed_addresses_of_a_mixed_answer_are_used(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(userinfo_handler({}), tls_files.cert, tls_files.key) as good,
        FakeHttpServer(
            lambda _p: Reply.json('{"sub":"@evil:x"}'), tls_files.cert, tls_files.key, "127.0.0.2"
        ) as evil,
    ):
        name = f"hs.test:{good.port}"
        good.handler = userinfo_handler({"t": f"@a:{name}"})
        resolver = FakeResolver({"hs.test": ["127.0.0.2", "127.0.0.1"]})
        verifier = guarded_verifier(resolver, tls_files, policy=only("127.0.0.2"))
        assert await verifier.verify(name, "t") == f"@a:{name}"
    assert evil.connections == 0


async def test_well_known_cannot_delegate_to_a_forbidden_address(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(
            userinfo_handler({"t": "@a:hs.test"}), tls_files.cert, tls_files.key, "127.0.0.2"
        ) as internal,
        FakeHttpServer(
            well_known_handler(json.dumps({"m.server": f"evil.test:{internal.port}"})),
            tls_files.cert,
            tls_files.key,
        ) as well_known,
    ):
        resolver = FakeResolver({"hs.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]})
        verifier = guarded_verifier(
            resolver, tls_files, policy=only("127.0.0.2"), well_known_port=well_known.port
        )
        with pytest.raises(OpenIdError):
            await verifier.verify("hs.test", "t")
    assert len(well_known.requests) == 1
    assert internal.connections == 0


async def test_srv_cannot_point_at_a_forbidden_address(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(
        userinfo_handler({"t": "@a:hs.test"}), tls_files.cert, tls_files.key, "127.0.0.2"
    ) as internal:
        resolver = FakeResolver(
            {"hs.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]},
            {"_matrix-fed._tcp.hs.test": [SrvRecord(0, 0, internal.port, "evil.test.")]},
        )
        verifier = guarded_verifier(resolver, tls_files, policy=only("127.0.0.2"))
        with pytest.raises(OpenIdError):
            await verifier.verify("hs.test", "t")
    assert internal.connections == 0


async def test_redirects_cannot_reach_a_forbidden_address(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(
            well_known_handler('{"m.server":"x.test:1"}'),
            tls_files.cert,
            tls_files.key,
            "127.0.0.2",
        ) as internal,
        FakeHttpServer(
            lambda _p: Reply(301, headers=(("Location", f"https://evil.test:{internal.port}/x"),)),
            tls_files.cert,
            tls_files.key,
        ) as well_known,
    ):
        resolver = FakeResolver({"hs.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]})
        verifier = guarded_verifier(
            resolver, tls_files, policy=only("127.0.0.2"), well_known_port=well_known.port
        )
        with pytest.raises(OpenIdError):
            await verifier.verify("hs.test", "t")
    assert internal.connections == 0


async def test_allowing_private_homeservers_lifts_the_guard(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({}), tls_files.cert, tls_files.key) as hs:
        name = f"127.0.0.1:{hs.port}"
        hs.handler = userinfo_handler({"t": f"@a:{name}"})
        discovery = FederationDiscovery(
            FakeResolver(),
            tls_context=client_tls_context(verify=True, cafile=str(tls_files.cert)),
            allow_private=True,
            timeouts=FAST,
        )
        assert await OpenIdVerifier(discovery).verify(name, "t") == f"@a:{name}"
