"""Federation server discovery and userinfo lookups against local servers and scripted DNS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth_service.matrix import (
    USERINFO_PATH,
    WELL_KNOWN_PATH,
    FederationDiscovery,
    InvalidServerName,
    InvalidUserInfo,
    InvalidWellKnown,
    OpenIdError,
    OpenIdVerifier,
    order_srv,
    parse_server_name,
    parse_userinfo,
    parse_well_known,
)
from auth_service.metrics import Metrics
from auth_service.net import SrvRecord, Timeouts, client_tls_context

from .conftest import TlsFiles
from .fakes import CLOSE, GARBAGE, HANG, NOT_FOUND, FakeHttpServer, FakeResolver, Reply

FAST = Timeouts(connect=0.5, request=1.0)


def userinfo_handler(users: dict[str, str]) -> Callable[[str], Reply]:
    """Answer userinfo like a homeserver: ``users`` maps access tokens to user IDs."""

    def handle(path: str) -> Reply:
        parts = urlsplit(path)
        if parts.path != USERINFO_PATH:
            return NOT_FOUND
        token = parse_qs(parts.query).get("access_token", [""])[0]
        if token not in users:
            return Reply.json('{"errcode":"M_UNKNOWN_TOKEN"}', 401)
        return Reply.json(json.dumps({"sub": users[token]}))

    return handle


def well_known_handler(document: str, status: int = 200) -> Callable[[str], Reply]:
    def handle(path: str) -> Reply:
        return Reply.json(document, status) if path == WELL_KNOWN_PATH else NOT_FOUND

    return handle


def make_verifier(
    resolver: FakeResolver,
    tls: TlsFiles,
    *,
    well_known_port: int = 1,
    default_port: int = 1,
    allow_private: bool = True,
    timeouts: Timeouts = FAST,
    total_timeout: float = 3.0,
    metrics: Metrics | None = None,
    homeserver_urls: dict[str, str] | None = None,
    openid_cache_seconds: float = 0.0,
    **discovery_options: object,
) -> OpenIdVerifier:
    discovery = FederationDiscovery(
        resolver,
        tls_context=client_tls_context(verify=True, cafile=str(tls.cert)),
        allow_private=allow_private,
        timeouts=timeouts,
        well_known_port=well_known_port,
        default_port=default_port,
        metrics=metrics,
        **discovery_options,  # type: ignore[arg-type]
    )
    return OpenIdVerifier(
        discovery,
        homeserver_urls=homeserver_urls,
        total_timeout=total_timeout,
        cache_seconds=openid_cache_seconds,
        metrics=metrics,
    )


def tls_pair(tls: TlsFiles) -> tuple[Path, Path]:
    """Certificate and key for a fake HTTPS server."""
    return tls.cert, tls.key


LOCAL = {"hs.test": ["127.0.0.1"], "delegated.test": ["127.0.0.1"], "fed.test": ["127.0.0.1"]}


# --- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "host", "port"),
    [
        ("example.org", "example.org", None),
        ("example.org:8448", "example.org", 8448),
        ("1.2.3.4", "1.2.3.4", None),
        ("1.2.3.4:80", "1.2.3.4", 80),
        ("[::1]", "[::1]", None),
        ("[2001:db8::1]:8443", "[2001:db8::1]", 8443),
        ("localhost:0", "localhost", 0),
        ("a-b.c", "a-b.c", None),
    ],
)
def test_server_names(name: str, host: str, port: int | None) -> None:
    parsed = parse_server_name(name)
    assert (parsed.host, parsed.port) == (host, port)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ":8448",
        "exa mple.org",
        "ex_ample.org",
        "::1",
        "[::1",
        "[1.2.3.4]",
        "é.org",
        "a" * 256,
        "example.org:99999x",
        "host/path",
        "user@host",
    ],
)
def test_invalid_server_names(name: str) -> None:
    with pytest.raises(InvalidServerName):
        parse_server_name(name)


@given(st.text(max_size=40))
def test_server_name_parser_raises_only_its_error(name: str) -> None:
    with contextlib.suppress(InvalidServerName):
        parse_server_name(name)


@given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_well_known_parser_raises_only_its_error(body: bytes) -> None:
    with contextlib.suppress(InvalidWellKnown):
        parse_well_known(body)


@given(
    st.binary(max_size=200) | st.text(max_size=60).map(lambda t: json.dumps({"sub": t}).encode())
)
def test_userinfo_parser_raises_only_its_error(body: bytes) -> None:
    with contextlib.suppress(InvalidUserInfo):
        parse_userinfo(body, "example.org")


@pytest.mark.parametrize(
    "body",
    [
        b'{"sub": "@alice:other.org"}',
        b'{"sub": "@alice:example.org:8448"}',
        b'{"sub": "alice"}',
        b'{"sub": 5}',
        b'{"sub": "alice:example.org"}',
        '{"sub": "@ali\u00e7e:example.org"}'.encode(),
        b'{"sub": "@a b:example.org"}',
        b"[]",
        b"not json",
    ],
)
def test_userinfo_must_name_a_user_of_the_server(body: bytes) -> None:
    with pytest.raises(InvalidUserInfo):
        parse_userinfo(body, "example.org")


def test_userinfo_accepts_a_user_of_the_server() -> None:
    assert parse_userinfo(b'{"sub":"@a:example.org","x":1}', "example.org") == "@a:example.org"


def test_srv_order_is_by_priority_then_weight() -> None:
    records = [
        SrvRecord(20, 0, 1, "c."),
        SrvRecord(10, 0, 1, "b."),
        SrvRecord(10, 100, 1, "a."),
        SrvRecord(5, 0, 1, "first."),
    ]
    ordered = order_srv(records, random.Random(1))
    assert ordered[0].target == "first." and ordered[-1].target == "c."
    assert {r.target for r in ordered[1:3]} == {"a.", "b."}


# --- discovery steps -------------------------------------------------------------------------


async def test_ip_literal_with_port_needs_no_dns(tls_files: TlsFiles) -> None:
    handler = userinfo_handler({"t": "@alice:127.0.0.1:PORT"})
    async with FakeHttpServer(handler, tls_files.cert, tls_files.key) as server:
        name = f"127.0.0.1:{server.port}"
        server.handler = userinfo_handler({"t": f"@alice:{name}"})
        resolver = FakeResolver()
        verifier = make_verifier(resolver, tls_files)
        assert await verifier.verify(name, "t") == f"@alice:{name}"
    assert resolver.queries == []
    assert server.requests[0].host == name


async def test_ip_literal_without_port_uses_the_default_port(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({"t": "@a:127.0.0.1"}), *tls_pair(tls_files)) as hs:
        verifier = make_verifier(FakeResolver(), tls_files, default_port=hs.port)
        assert await verifier.verify("127.0.0.1", "t") == "@a:127.0.0.1"


async def test_hostname_with_port_skips_well_known_and_srv(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({}), tls_files.cert, tls_files.key) as server:
        name = f"hs.test:{server.port}"
        server.handler = userinfo_handler({"t": f"@alice:{name}"})
        resolver = FakeResolver(LOCAL)
        assert await make_verifier(resolver, tls_files).verify(name, "t") == f"@alice:{name}"
    assert resolver.queries == [("A", "hs.test")]
    assert server.requests[0].host == name and server.requests[0].sni == "hs.test"


async def test_well_known_delegation_to_host_and_port(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(userinfo_handler({"t": "@alice:hs.test"}), *tls_pair(tls_files)) as target,
        FakeHttpServer(
            well_known_handler(json.dumps({"m.server": f"delegated.test:{target.port}"})),
            *tls_pair(tls_files),
        ) as well_known,
    ):
        resolver = FakeResolver(LOCAL)
        verifier = make_verifier(resolver, tls_files, well_known_port=well_known.port)
        assert await verifier.verify("hs.test", "t") == "@alice:hs.test"
    assert well_known.requests[0].host == "hs.test" and well_known.requests[0].sni == "hs.test"
    assert target.requests[0].host == f"delegated.test:{target.port}"
    assert target.requests[0].sni == "delegated.test"
    assert ("SRV", "_matrix-fed._tcp.hs.test") not in resolver.queries


async def test_well_known_delegation_then_srv_of_the_delegated_name(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(userinfo_handler({"t": "@alice:hs.test"}), *tls_pair(tls_files)) as target,
        FakeHttpServer(
            well_known_handler('{"m.server": "delegated.test"}'), *tls_pair(tls_files)
        ) as well_known,
    ):
        srv = {"_matrix-fed._tcp.delegated.test": [SrvRecord(10, 5, target.port, "fed.test.")]}
        resolver = FakeResolver(LOCAL, srv)
        verifier = make_verifier(resolver, tls_files, well_known_port=well_known.port)
        assert await verifier.verify("hs.test", "t") == "@alice:hs.test"
    # Host and TLS name are the delegated server name, not the SRV target.
    assert target.requests[0].host == "delegated.test"
    assert target.requests[0].sni == "delegated.test"
    assert len(well_known.requests) == 1  # no second well-known after delegation


async def test_srv_matrix_fed(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({"t": "@bob:hs.test"}), *tls_pair(tls_files)) as hs:
        srv = {"_matrix-fed._tcp.hs.test": [SrvRecord(10, 5, hs.port, "fed.test.")]}
        resolver = FakeResolver(LOCAL, srv)
        assert await make_verifier(resolver, tls_files).verify("hs.test", "t") == "@bob:hs.test"
    assert hs.requests[0].host == "hs.test" and hs.requests[0].sni == "hs.test"
    assert ("SRV", "_matrix._tcp.hs.test") not in resolver.queries


async def test_legacy_srv_when_matrix_fed_is_missing(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({"t": "@bob:hs.test"}), *tls_pair(tls_files)) as hs:
        srv = {"_matrix._tcp.hs.test": [SrvRecord(10, 5, hs.port, "fed.test")]}
        resolver = FakeResolver(LOCAL, srv)
        assert await make_verifier(resolver, tls_files).verify("hs.test", "t") == "@bob:hs.test"
    assert [q for q in resolver.queries if q[0] == "SRV"] == [
        ("SRV", "_matrix-fed._tcp.hs.test"),
        ("SRV", "_matrix._tcp.hs.test"),
    ]


async def test_srv_falls_over_to_the_next_target(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({"t": "@bob:hs.test"}), *tls_pair(tls_files)) as hs:
        srv = {
            "_matrix-fed._tcp.hs.test": [
                SrvRecord(1, 0, 9, "unresolvable.test."),
                SrvRecord(5, 0, hs.port, "fed.test."),
            ]
        }
        verifier = make_verifier(FakeResolver(LOCAL, srv), tls_files)
        assert await verifier.verify("hs.test", "t") == "@bob:hs.test"


async def test_srv_saying_no_service_fails(tls_files: TlsFiles) -> None:
    srv = {"_matrix-fed._tcp.hs.test": [SrvRecord(0, 0, 0, ".")]}
    with pytest.raises(OpenIdError, match="no federation service"):
        await make_verifier(FakeResolver(LOCAL, srv), tls_files).verify("hs.test", "t")


async def test_fallback_to_the_default_port(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({"t": "@eve:hs.test"}), *tls_pair(tls_files)) as hs:
        resolver = FakeResolver(LOCAL, fail={"_matrix-fed._tcp.hs.test"})
        verifier = make_verifier(resolver, tls_files, default_port=hs.port)
        assert await verifier.verify("hs.test", "t") == "@eve:hs.test"
    assert hs.requests[0].host == "hs.test"
    # A failed (not missing) matrix-fed lookup goes straight to the fallback, like upstream.
    assert ("SRV", "_matrix._tcp.hs.test") not in resolver.queries


@pytest.mark.parametrize(
    "well_known",
    [
        Reply.json("not json"),
        Reply.json("[]"),
        Reply.json('{"m.server": 5}'),
        Reply.json('{"m.server": ""}'),
        Reply.json('{"m.server": "bad name!"}'),
        Reply.json('{"m.server": "delegated.test:1"}', status=500),
        Reply(200, b'{"m.server": "x.test", "pad": "' + b"x" * 60_000 + b'"}'),
        GARBAGE,
        CLOSE,
        HANG,
    ],
)
async def test_unusable_well_known_falls_through_to_srv(
    tls_files: TlsFiles, well_known: Reply
) -> None:
    async with (
        FakeHttpServer(userinfo_handler({"t": "@bob:hs.test"}), *tls_pair(tls_files)) as hs,
        FakeHttpServer(lambda _path: well_known, *tls_pair(tls_files)) as wk,
    ):
        srv = {"_matrix-fed._tcp.hs.test": [SrvRecord(10, 5, hs.port, "fed.test.")]}
        verifier = make_verifier(
            FakeResolver(LOCAL, srv),
            tls_files,
            well_known_port=wk.port,
            timeouts=Timeouts(connect=0.3, request=0.5),
        )
        started = time.monotonic()
        assert await verifier.verify("hs.test", "t") == "@bob:hs.test"
        assert time.monotonic() - started < 2.0
    assert len(wk.requests) == 1


async def test_well_known_redirect_is_followed(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(userinfo_handler({"t": "@bob:hs.test"}), *tls_pair(tls_files)) as hs,
        FakeHttpServer(
            well_known_handler(json.dumps({"m.server": f"delegated.test:{hs.port}"})),
            *tls_pair(tls_files),
        ) as final,
        FakeHttpServer(
            lambda _path: Reply(
                302,
                headers=(("Location", f"https://redirect.test:{final.port}{WELL_KNOWN_PATH}"),),
            ),
            *tls_pair(tls_files),
        ) as first,
    ):
        resolver = FakeResolver({**LOCAL, "redirect.test": ["127.0.0.1"]})
        verifier = make_verifier(resolver, tls_files, well_known_port=first.port)
        assert await verifier.verify("hs.test", "t") == "@bob:hs.test"
    assert final.requests[0].host == f"redirect.test:{final.port}"
    assert final.requests[0].sni == "redirect.test"


async def test_tls_certificate_must_match_the_server_name(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(
        userinfo_handler({"t": "@x:other.example"}), *tls_pair(tls_files)
    ) as hs:
        resolver = FakeResolver({"other.example": ["127.0.0.1"]})
        with pytest.raises(OpenIdError):
            await make_verifier(resolver, tls_files).verify(f"other.example:{hs.port}", "t")
        assert hs.requests == []


# --- userinfo answers and timeouts -----------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply.json('{"errcode":"M_UNKNOWN_TOKEN"}', 401),
        Reply.json('{"sub":"@mallory:elsewhere.test"}'),
        Reply.json('{"sub": null}'),
        Reply.json("<html>"),
        Reply.json('{"sub":"@a:hs.test"}', 500),
        Reply(200, b'{"sub":"' + b"a" * 70_000 + b'"}'),
        GARBAGE,
        CLOSE,
        HANG,
    ],
)
async def test_bad_userinfo_answers_fail_quickly(tls_files: TlsFiles, reply: Reply) -> None:
    async with FakeHttpServer(lambda _path: reply, *tls_pair(tls_files)) as hs:
        name = f"hs.test:{hs.port}"
        verifier = make_verifier(
            FakeResolver(LOCAL), tls_files, timeouts=Timeouts(connect=0.3, request=0.5)
        )
        started = time.monotonic()
        with pytest.raises(OpenIdError):
            await verifier.verify(name, "t")
        assert time.monotonic() - started < 1.5


async def test_dns_that_never_answers_hits_the_total_timeout(tls_files: TlsFiles) -> None:
    resolver = FakeResolver(hang={"hs.test", "_matrix-fed._tcp.hs.test"})
    verifier = make_verifier(resolver, tls_files, total_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(OpenIdError, match="timed out"):
        await verifier.verify("hs.test", "t")
    assert time.monotonic() - started < 1.0


async def test_invalid_server_name_fails_without_network(tls_files: TlsFiles) -> None:
    resolver = FakeResolver()
    with pytest.raises(OpenIdError):
        await make_verifier(resolver, tls_files).verify("bad name", "t")
    assert resolver.queries == []


# --- caching ---------------------------------------------------------------------------------


async def test_successful_lookups_are_cached_when_the_cache_is_on(tls_files: TlsFiles) -> None:
    metrics = Metrics()
    async with FakeHttpServer(userinfo_handler({}), *tls_pair(tls_files)) as hs:
        srv = {"_matrix-fed._tcp.hs.test": [SrvRecord(10, 5, hs.port, "fed.test.")]}
        hs.handler = userinfo_handler({"t1": "@a:hs.test", "t2": "@b:hs.test"})
        resolver = FakeResolver(LOCAL, srv)
        verifier = make_verifier(resolver, tls_files, metrics=metrics, openid_cache_seconds=5)
        for _ in range(3):
            assert await verifier.verify("hs.test", "t1") == "@a:hs.test"
        assert await verifier.verify("hs.test", "t2") == "@b:hs.test"
        with pytest.raises(OpenIdError):
            await verifier.verify("hs.test", "unknown")
        with pytest.raises(OpenIdError):
            await verifier.verify("hs.test", "unknown")
    assert hs.paths == [USERINFO_PATH] * 4  # t1 once, t2 once, failures are not cached
    assert [q for q in resolver.queries if q[0] == "SRV"] == [("SRV", "_matrix-fed._tcp.hs.test")]
    text = metrics.render().decode()
    assert 'matrix_sfu_auth_openid_cache_total{result="hit"} 2.0' in text
    assert 'matrix_sfu_auth_openid_cache_total{result="miss"} 4.0' in text
    assert 'matrix_sfu_auth_openid_lookup_seconds_count{result="ok"} 2.0' in text
    assert 'matrix_sfu_auth_openid_lookup_seconds_count{result="error"} 2.0' in text


async def test_cache_entries_expire(tls_files: TlsFiles) -> None:
    now = [0.0]
    async with FakeHttpServer(userinfo_handler({}), *tls_pair(tls_files)) as hs:
        hs.handler = userinfo_handler({"t": f"@a:hs.test:{hs.port}"})
        discovery = FederationDiscovery(
            FakeResolver(LOCAL),
            tls_context=client_tls_context(verify=True, cafile=str(tls_files.cert)),
            allow_private=True,
            timeouts=FAST,
        )
        verifier = OpenIdVerifier(discovery, cache_seconds=10, clock=lambda: now[0])
        await verifier.verify(f"hs.test:{hs.port}", "t")
        now[0] = 9.0
        await verifier.verify(f"hs.test:{hs.port}", "t")
        now[0] = 10.5
        await verifier.verify(f"hs.test:{hs.port}", "t")
    assert len(hs.requests) == 2


async def test_concurrent_lookups_of_one_token_share_a_request(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({}), *tls_pair(tls_files)) as hs:
        name = f"hs.test:{hs.port}"
        hs.handler = userinfo_handler({"t": f"@a:{name}"})
        verifier = make_verifier(FakeResolver(LOCAL), tls_files)
        results = await asyncio.gather(*(verifier.verify(name, "t") for _ in range(10)))
    assert results == [f"@a:{name}"] * 10
    assert len(hs.requests) == 1


async def test_cached_destination_that_died_is_resolved_again(tls_files: TlsFiles) -> None:
    async with (
        FakeHttpServer(
            userinfo_handler({"t1": "@a:hs.test", "t2": "@b:hs.test"}), *tls_pair(tls_files)
        ) as new_home,
        FakeHttpServer(userinfo_handler({"t1": "@a:hs.test"}), *tls_pair(tls_files)) as old_home,
    ):
        srv = {"_matrix-fed._tcp.hs.test": [SrvRecord(10, 5, old_home.port, "fed.test.")]}
        resolver = FakeResolver(LOCAL, srv)
        verifier = make_verifier(resolver, tls_files)
        assert await verifier.verify("hs.test", "t1") == "@a:hs.test"
        await old_home.stop()
        resolver.srv["_matrix-fed._tcp.hs.test"] = [SrvRecord(10, 5, new_home.port, "fed.test.")]
        assert await verifier.verify("hs.test", "t2") == "@b:hs.test"
    srv_queries = [q for q in resolver.queries if q[0] == "SRV"]
    assert srv_queries == [("SRV", "_matrix-fed._tcp.hs.test")] * 2


async def test_homeserver_url_override_skips_discovery_and_allows_http(tls_files: TlsFiles) -> None:
    async with FakeHttpServer(userinfo_handler({"t": "@a:hs.test"})) as plain:
        resolver = FakeResolver()
        verifier = make_verifier(
            resolver,
            tls_files,
            allow_private=False,
            homeserver_urls={"hs.test": f"http://127.0.0.1:{plain.port}/"},
        )
        assert await verifier.verify("hs.test", "t") == "@a:hs.test"
    assert resolver.queries == []
    assert plain.requests[0].host == f"127.0.0.1:{plain.port}"
