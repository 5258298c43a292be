"""Bounds on what remote input can make the service hold (audit findings 21 and 25).

Per-IP buckets are per IPv6 /64, outbound homeserver lookups are capped globally (503 when
full), unreachable homeservers are remembered for a short while, device IDs have a grammar and
identities a length limit, and every cap that is hit is counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from auth_service.app import build_verifier, create_app
from auth_service.matrix import (
    WELL_KNOWN_PATH,
    FederationDiscovery,
    LookupCapacityError,
    OpenIdError,
    SingleFlight,
)
from auth_service.matrix import OpenIdVerifier as Verifier
from auth_service.metrics import Metrics
from auth_service.net import SrvRecord, Timeouts, client_tls_context
from auth_service.ratelimit import RateLimit

from .fakes import FakeHttpServer, FakeResolver, Reply, Tarpit, asgi_client, make_settings
from .test_app import ALICE, Harness, assert_error, claims_of, get_token_body, sfu_get_body
from .test_discovery import userinfo_handler

# --- finding 21: per-IP limit per IPv6 /64 ---------------------------------------------------


async def test_64_addresses_of_one_ipv6_64_share_one_bucket() -> None:
    harness = Harness(ip_rate_limit=RateLimit(per_second=5.0, burst=30))
    statuses = []
    for index in range(64):
        async with asgi_client(harness.app, client=(f"2001:db8:1:2::{index + 1:x}", 1)) as http:
            statuses.append((await http.post("/sfu/get", json=sfu_get_body())).status_code)
    assert statuses == [200] * 30 + [429] * 34
    # Another /64 of the same /48 has a bucket of its own.
    async with asgi_client(harness.app, client=("2001:db8:1:3::1", 1)) as http:
        assert (await http.post("/sfu/get", json=sfu_get_body())).status_code == 200
    text = (await _metrics(harness)).text
    assert 'sfu_limit_exceeded_total{limit="auth_ip_rate"} 34.0' in text


async def test_an_ipv4_mapped_address_shares_the_ipv4_bucket() -> None:
    harness = Harness(ip_rate_limit=RateLimit(per_second=0.001, burst=1))
    async with asgi_client(harness.app, client=("198.51.100.7", 1)) as http:
        assert (await http.post("/sfu/get", json=sfu_get_body())).status_code == 200
    async with asgi_client(harness.app, client=("::ffff:198.51.100.7", 1)) as http:
        assert (await http.post("/sfu/get", json=sfu_get_body())).status_code == 429
    async with asgi_client(harness.app, client=("198.51.100.8", 1)) as http:
        assert (await http.post("/sfu/get", json=sfu_get_body())).status_code == 200


async def _metrics(harness: Harness) -> Any:
    async with asgi_client(harness.app) as http:
        return await http.get("/metrics")


# --- finding 21: outbound lookups --------------------------------------------------------------


def tarpit_verifier(
    tarpit: Tarpit,
    names: list[str],
    *,
    metrics: Metrics,
    max_concurrent_lookups: int,
    clock: Any = time.monotonic,
    total_timeout: float = 0.5,
    **options: Any,
) -> Verifier:
    """A real verifier whose every discovery step (well-known, fallback port) hits ``tarpit``."""
    discovery = FederationDiscovery(
        FakeResolver({name: ["127.0.0.1"] for name in names}),
        tls_context=client_tls_context(verify=True),
        allow_private=True,
        timeouts=Timeouts(connect=5.0, request=5.0),
        well_known_port=tarpit.port,
        default_port=tarpit.port,
        metrics=metrics,
    )
    return Verifier(
        discovery,
        total_timeout=total_timeout,
        max_concurrent_lookups=max_concurrent_lookups,
        clock=clock,
        metrics=metrics,
        **options,
    )


def body_for(server_name: str) -> dict[str, Any]:
    openid = {"access_token": "t", "token_type": "Bearer", "matrix_server_name": server_name}
    return {"room": "!r:example.org", "openid_token": openid, "device_id": "D"}


async def test_1000_lookups_of_hanging_homeservers_hold_at_most_n_sockets() -> None:
    names = [f"n{index}.test" for index in range(1000)]
    metrics = Metrics()
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(
            tarpit, names, metrics=metrics, max_concurrent_lookups=8, total_timeout=1.0
        )
        app = create_app(make_settings(), verifier=verifier, metrics=metrics)
        async with asgi_client(app) as http:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(http.post("/sfu/get", json=body_for(name)) for name in names)
            )
            elapsed = time.monotonic() - started
            text = (await http.get("/metrics")).text
    statuses = [response.status_code for response in responses]
    # 8 got a slot and timed out after 1 s; on a loaded machine a few late ones may get a freed
    # slot, but never more than 8 at once.
    assert 8 <= statuses.count(401) <= 100
    assert statuses.count(503) == 1000 - statuses.count(401)
    assert 1 <= tarpit.max_open <= 8
    assert elapsed < 10.0  # the refused ones did not wait for the slow ones
    busy = next(response for response in responses if response.status_code == 503)
    assert busy.json() == {
        "errcode": "M_UNKNOWN",
        "error": "Too many homeserver lookups in progress; try again later",
    }
    assert busy.headers["retry-after"] == "1"
    assert busy.headers["access-control-allow-origin"] == "*"
    busy_count = statuses.count(503)
    assert f'sfu_limit_exceeded_total{{limit="auth_homeserver_lookups"}} {busy_count}.0' in text
    assert (
        f'matrix_sfu_auth_requests_total{{endpoint="sfu_get",outcome="busy"}} {busy_count}.0'
        in text
    )


async def test_a_slot_is_free_again_once_its_lookup_ends() -> None:
    metrics = Metrics()
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(
            tarpit, ["a.test", "b.test"], metrics=metrics, max_concurrent_lookups=1
        )
        first = asyncio.ensure_future(verifier.verify("a.test", "t"))
        await asyncio.sleep(0)
        with pytest.raises(LookupCapacityError):
            await verifier.verify("b.test", "t")
        # The same token at the same server joins the running lookup instead of taking a slot.
        second = asyncio.ensure_future(verifier.verify("a.test", "t"))
        for future in (first, second):
            with pytest.raises(OpenIdError, match="timed out"):
                await future
        with pytest.raises(OpenIdError, match="timed out"):
            await verifier.verify("b.test", "t")


async def test_an_unreachable_homeserver_is_remembered_for_a_while() -> None:
    now = [0.0]
    metrics = Metrics()
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(
            tarpit, ["a.test"], metrics=metrics, max_concurrent_lookups=8, clock=lambda: now[0]
        )
        with pytest.raises(OpenIdError, match="timed out"):
            await verifier.verify("a.test", "t1")
        connections = tarpit.accepted
        assert connections >= 1
        now[0] = 29.0
        started = time.monotonic()
        with pytest.raises(OpenIdError, match="unreachable"):
            await verifier.verify("a.test", "t2")
        assert time.monotonic() - started < 0.1
        assert tarpit.accepted == connections
        now[0] = 31.0
        with pytest.raises(OpenIdError, match="timed out"):
            await verifier.verify("a.test", "t3")
        assert tarpit.accepted > connections


async def test_a_refused_token_does_not_mark_its_homeserver_unreachable(tls_files: Any) -> None:
    async with FakeHttpServer(userinfo_handler({}), tls_files.cert, tls_files.key) as hs:
        name = f"hs.test:{hs.port}"
        hs.handler = userinfo_handler({"good": f"@a:{name}"})
        discovery = FederationDiscovery(
            FakeResolver({"hs.test": ["127.0.0.1"]}),
            tls_context=client_tls_context(verify=True, cafile=str(tls_files.cert)),
            allow_private=True,
        )
        verifier = Verifier(discovery)
        with pytest.raises(OpenIdError):
            await verifier.verify(name, "bad")
        assert await verifier.verify(name, "good") == f"@a:{name}"


async def test_unreachable_homeservers_are_bounded() -> None:
    metrics = Metrics()
    names = [f"n{index}.test" for index in range(12)]
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(
            tarpit, names, metrics=metrics, max_concurrent_lookups=64, max_unreachable_entries=10
        )
        results = await asyncio.gather(
            *(verifier.verify(name, "t") for name in names), return_exceptions=True
        )
    assert all(isinstance(result, OpenIdError) for result in results)
    assert verifier.unreachable_count() <= 10
    text = metrics.render().decode()
    assert 'sfu_limit_exceeded_total{limit="auth_unreachable_cache"}' in text


# --- finding 25: device IDs and identities ----------------------------------------------------


@pytest.mark.parametrize(
    "device_id", ["X\nFAKE", "A:B", "tab\there", "space here", "del\x7f", "é", "x" * 256]
)
async def test_unsafe_device_ids_are_400(device_id: str) -> None:
    harness = Harness()
    async with asgi_client(harness.app) as http:
        response = await http.post("/sfu/get", json=sfu_get_body(device_id=device_id))
        body = assert_error(response, 400, "M_BAD_JSON")
        assert "device_id" in body["error"]
        member = {"id": "m", "claimed_user_id": ALICE, "claimed_device_id": device_id}
        response = await http.post("/get_token", json=get_token_body(member=member))
        assert "claimed_device_id" in assert_error(response, 400, "M_BAD_JSON")["error"]
    assert harness.verifier.calls == []


async def test_safe_device_ids_still_work() -> None:
    harness = Harness()
    async with asgi_client(harness.app) as http:
        for device_id in ("ABCDEFGHIJ", "dev-1_2.3~!#$%&'()*+,/;<=>?@[]^`{|}", ""):
            response = await http.post("/sfu/get", json=sfu_get_body(device_id=device_id))
            assert claims_of(response)["sub"] == f"{ALICE}:{device_id}"


async def test_a_legacy_identity_over_256_characters_is_400() -> None:
    """The SFU refuses identities over 256 characters, so the service must not mint one."""
    harness = Harness()
    fits = "D" * (256 - len(ALICE) - 1)
    async with asgi_client(harness.app) as http:
        response = await http.post("/sfu/get", json=sfu_get_body(device_id=fits))
        assert len(claims_of(response)["sub"]) == 256
        response = await http.post("/sfu/get", json=sfu_get_body(device_id=fits + "D"))
        body = assert_error(response, 400, "M_BAD_JSON")
        assert "256" in body["error"]
    text = (await _metrics(harness)).text
    assert 'sfu_limit_exceeded_total{limit="auth_identity_length"} 1.0' in text


async def test_a_newline_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    harness = Harness()
    caplog.set_level(logging.INFO, logger="auth_service")
    async with asgi_client(harness.app) as http:
        forged = "\nINFO auth_service.app: sfu_get: issued token: user=@admin:example.org"
        response = await http.post("/sfu/get", json=sfu_get_body(room="!r:example.org" + forged))
        assert response.status_code == 200
        response = await http.post("/sfu/get", json=sfu_get_body(device_id="X\nFAKE"))
        assert response.status_code == 400
    for record in caplog.records:
        assert "\n" not in record.getMessage(), record.getMessage()
    assert any("issued token" in record.getMessage() for record in caplog.records)


def test_the_lookup_cap_comes_from_the_settings() -> None:
    verifier = build_verifier(make_settings(max_concurrent_lookups=3))
    assert verifier.max_concurrent_lookups == 3
    assert verifier.cache_seconds == 0


async def test_the_last_cancelled_waiter_cancels_the_lookup() -> None:
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(tarpit, ["a.test"], metrics=Metrics(), max_concurrent_lookups=1)
        waiters = [asyncio.ensure_future(verifier.verify("a.test", "t")) for _ in range(2)]
        while tarpit.open_now == 0:
            await asyncio.sleep(0.01)
        waiters[0].cancel()
        await asyncio.sleep(0.05)
        assert verifier.lookups_in_progress == 1  # the other waiter still wants it
        waiters[1].cancel()
        for _ in range(20):  # well before the 0.5 s time-out would end it anyway
            if verifier.lookups_in_progress == 0 and tarpit.open_now == 0:
                break
            await asyncio.sleep(0.01)
        assert verifier.lookups_in_progress == 0
        assert tarpit.open_now == 0  # its socket closed with it


@pytest.mark.parametrize(
    ("well_known", "limit"),
    [
        (Reply(200, b'{"m.server": "x.test", "pad": "' + b"x" * 60_000 + b'"}'), "response"),
        (Reply(302, b"", (("Location", f"https://hs.test:PORT{WELL_KNOWN_PATH}"),)), "redirects"),
    ],
)
async def test_homeserver_answers_over_a_cap_are_counted(
    tls_files: Any, well_known: Reply, limit: str
) -> None:
    metrics = Metrics()
    async with (
        FakeHttpServer(
            userinfo_handler({"t": "@bob:hs.test"}), tls_files.cert, tls_files.key
        ) as hs,
        FakeHttpServer(lambda _path: well_known, tls_files.cert, tls_files.key) as wk,
    ):
        headers = tuple(
            (name, value.replace("PORT", str(wk.port))) for name, value in well_known.headers
        )
        wk.handler = lambda _path: Reply(well_known.status, well_known.body, headers)
        discovery = FederationDiscovery(
            FakeResolver(
                {"hs.test": ["127.0.0.1"], "fed.test": ["127.0.0.1"]},
                {"_matrix-fed._tcp.hs.test": [SrvRecord(10, 5, hs.port, "fed.test.")]},
            ),
            tls_context=client_tls_context(verify=True, cafile=str(tls_files.cert)),
            allow_private=True,
            well_known_port=wk.port,
            metrics=metrics,
        )
        verifier = Verifier(discovery, metrics=metrics)
        assert await verifier.verify("hs.test", "t") == "@bob:hs.test"  # falls through to SRV
    name = {"response": "auth_homeserver_response", "redirects": "auth_well_known_redirects"}[limit]
    assert f'sfu_limit_exceeded_total{{limit="{name}"}} 1.0' in metrics.render().decode()


async def test_an_overlong_device_id_is_counted() -> None:
    harness = Harness()
    async with asgi_client(harness.app) as http:
        response = await http.post("/sfu/get", json=sfu_get_body(device_id="x" * 256))
        assert_error(response, 400, "M_BAD_JSON")
    text = (await _metrics(harness)).text
    assert 'sfu_limit_exceeded_total{limit="auth_device_id_length"} 1.0' in text


def test_every_counted_cap_is_documented() -> None:
    """Each limit name the service counts is a row of the "Auth service" section of limits.md."""
    root = Path(__file__).resolve().parents[2]
    source = "".join(path.read_text() for path in (root / "auth_service").glob("*.py"))
    counted = set(re.findall(r'(?:limit_hit\(|limit=)"(auth_\w+)"', source))
    section = (root / "docs" / "limits.md").read_text().split("## Auth service", 1)[1]
    documented = set(re.findall(r"^\| `(auth_\w+)` \|", section, flags=re.MULTILINE))
    assert len(counted) >= 12
    assert counted == documented


async def test_a_caller_right_after_the_last_cancelled_waiter_starts_afresh() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    started: list[int] = []

    async def slow() -> str:
        started.append(1)
        await asyncio.sleep(0.05)
        return "done"

    first = asyncio.ensure_future(flight.run("k", slow))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)  # first's cancellation is handled; the call is cancelled with it
    assert await flight.run("k", slow) == "done"  # not the cancelled call's CancelledError
    assert started == [1, 1]
    assert len(flight) == 0


async def test_lookups_for_other_servers_cannot_use_up_the_operators_slots() -> None:
    metrics = Metrics()
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(
            tarpit,
            ["a.test", "b.test", "home.test"],
            metrics=metrics,
            max_concurrent_lookups=1,
            reserved_servers={"home.test"},
        )
        flood = asyncio.ensure_future(verifier.verify("a.test", "t"))
        await asyncio.sleep(0)
        with pytest.raises(LookupCapacityError):
            await verifier.verify("b.test", "t")
        own = asyncio.ensure_future(verifier.verify("home.test", "t"))  # has a slot of its own
        await asyncio.sleep(0)
        assert verifier.lookups_in_progress == 2
        with pytest.raises(LookupCapacityError):
            await verifier.verify("home.test", "other-token")
        for future in (flood, own):
            with pytest.raises(OpenIdError, match="timed out"):
                await future


def test_the_operators_servers_are_reserved() -> None:
    settings = make_settings(
        full_access_homeservers=("example.org", "other.org"),
        homeserver_urls={"private.test": "http://127.0.0.1:1"},
    )
    assert build_verifier(settings).reserved_servers == {"example.org", "other.org", "private.test"}
    assert build_verifier(make_settings(full_access_homeservers=("*",))).reserved_servers == set()


async def test_the_operators_servers_are_never_marked_unreachable() -> None:
    async with Tarpit() as tarpit:
        verifier = tarpit_verifier(
            tarpit,
            ["home.test"],
            metrics=Metrics(),
            max_concurrent_lookups=8,
            reserved_servers={"home.test"},
        )
        for _ in range(2):
            with pytest.raises(OpenIdError, match="timed out"):
                await verifier.verify("home.test", "t")
        assert verifier.unreachable_count() == 0
