"""Application-service mode end to end: real Synapse with the registration that
``python -m auth_service appservice-registration`` prints, the real SFU, the auth service as a
process and LiveKit SDK participants.

One Synapse, SFU and auth service serve the whole module (Synapse backs off pushing to an
application service that was down, so the auth service that receives the pushes stays up). Each
test makes its own Matrix room with Alice (the observer) and Bob, who joins the call twice: with
a legacy ``/sfu/get`` identity and a hashed ``/get_token`` one.

* Bob leaves, is kicked or is banned → Alice's client sees both of Bob's identities leave the
  SFU within 1 s of the homeserver accepting the membership change (pushed, not polled:
  this auth service's reconcile is off);
* Alice upgrades the room (a tombstone) → ``DeleteRoom``: both clients are disconnected
  within 1 s;
* MSC4512: ``get_token`` asked of Synapse, which authenticates the client and proxies it here,
  gives a working token to a member, 403 to a non-member and 400 for a foreign ``url``;
* a user who never joined gets 403 ``M_FORBIDDEN`` from both token endpoints, and so does Bob
  once he has left;
* reconcile: a second auth service with the same tokens but no pushes (the homeserver does not
  know its URL) removes a leaver within its ``LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS``; and,
  with its own Synapse and a push link the test cuts, reconcile removes nobody while Synapse is
  down and removes a leaver after Synapse's restart;
* the focus user (timers of 2 s and 4 s here): joins once however many invites, leaves when no
  call starts, stays for a call and leaves once it is empty (closing the call on the SFU: a
  client still connected is disconnected) or its membership expired, joins a call it sees
  (``LIVEKIT_FOCUS_JOIN_ON_CALL``), all read back from the room's timeline;
* the last local member leaving closes the call (``DeleteRoom``);
* MSC4512 ``delegate_delayed_leave`` through Synapse: the delayed leave is sent when the client
  drops; federation ``get_token`` called as Synapse's proxy calls it, and for real from a second
  Synapse federating on loopback: a subscribe-only token for a user joined over federation;
* an E2EE call of two Chromium pages (livekit-client as Element Call) with this mode on.

Synapse runs with ``msc4512_enabled`` and ``msc4502_enabled`` (membership checks use
``is_joined``) and advertises this auth service as its MatrixRTC transport (MSC4143), which is
how Element Call finds it (``test_element_call.py`` uses this module's fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt as pyjwt
import pytest
import pytest_asyncio
import yaml
from livekit import rtc

from auth_service.tokens import legacy_room_alias, participant_identity
from tests.harness.auth_service import AuthProcess
from tests.harness.browser import browser_session, remote_entries
from tests.harness.sfu import REPO_ROOT, SfuInstance, running_sfu
from tests.harness.synapse import MatrixUser, Synapse, free_port, start_synapse
from tests.harness.tokens import new_api_key_pair

pytestmark = pytest.mark.asyncio(loop_scope="module")

EJECTED_WITHIN_S = 1.0
WAIT_S = 20.0
RECONCILE_INTERVAL_S = 1
BROWSER_WAIT_S = 50.0  # as test_tls_proxy: Chromium's join under a loaded machine
FOCUS_EMPTY_S = 2
FOCUS_NO_CALL_S = 4
CALL_MEMBER = "org.matrix.msc3401.call.member"


@dataclass
class Focus:
    synapse: Synapse
    sfu: SfuInstance
    auth: AuthProcess
    env: dict[str, str]


def registration_cli(url: str, env: dict[str, str]) -> str:
    """What ``python -m auth_service appservice-registration --url URL`` prints."""
    result = subprocess.run(
        [sys.executable, "-m", "auth_service", "appservice-registration", "--url", url],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def focus(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Focus]:
    tmp = tmp_path_factory.mktemp("focus")
    key, secret = new_api_key_pair()
    auth = AuthProcess({}, tmp / "auth.log")
    tokens = {"LIVEKIT_AS_TOKEN": secrets.token_urlsafe(24), "LIVEKIT_HS_TOKEN": ""}
    tokens["LIVEKIT_HS_TOKEN"] = secrets.token_urlsafe(24)

    def registrations(server_name: str) -> list[Path]:
        tokens["LIVEKIT_HS_SERVER_NAME"] = server_name
        path = tmp / "lk-jwt-service.yaml"
        path.write_text(registration_cli(auth.url, tokens))
        return [path]

    async with running_sfu(tmp / "sfu", api_key=key, api_secret=secret) as sfu:
        synapse = start_synapse(
            tmp / "synapse",
            app_service_config_files=registrations,
            federation=True,
            extra_config={
                "experimental_features": {"msc4512_enabled": True, "msc4502_enabled": True},
                # Element Call finds this auth service through Synapse (MSC4143).
                "matrix_rtc": {
                    "transports": [{"type": "livekit", "livekit_service_url": auth.url}]
                },
            },
        )
        server = synapse.server_name
        env = {
            **tokens,
            "LIVEKIT_URL": sfu.url,
            "LIVEKIT_KEY": key,
            "LIVEKIT_SECRET": secret,
            "LIVEKIT_FULL_ACCESS_HOMESERVERS": server,
            "LIVEKIT_AUTH_HOMESERVER_URLS": f"{server}={synapse.client_url}",
            "LIVEKIT_CS_API_URL_OVERRIDES": f"{server}={synapse.client_url}",
            "LIVEKIT_AUTH_ALLOW_PRIVATE_HOMESERVERS": "true",
            "LIVEKIT_AUTH_RATE_LIMIT_USER_BURST": "1000",
            "LIVEKIT_AUTH_RATE_LIMIT_IP_BURST": "1000",
            "LIVEKIT_LOG_LEVEL": "debug",
            "LIVEKIT_FOCUS_EMPTY_CALL_SECONDS": str(FOCUS_EMPTY_S),
            "LIVEKIT_FOCUS_NO_CALL_SECONDS": str(FOCUS_NO_CALL_S),
            "LIVEKIT_FOCUS_JOIN_ON_CALL": "true",
            "LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS": "1",
        }
        auth.env.update({**env, "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS": "0"})
        try:
            auth.start()
            yield Focus(synapse, sfu, auth, env)
        finally:
            auth.kill(signal.SIGTERM)
            auth.kill()
            synapse.stop()


class Matrix:
    """Client-server calls of one user."""

    def __init__(self, synapse: Synapse, user: MatrixUser) -> None:
        self.user = user
        self.http = httpx.AsyncClient(
            base_url=synapse.client_url,
            headers={"Authorization": f"Bearer {user.access_token}"},
            timeout=WAIT_S,
        )

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(path, json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())


def room_path(room_id: str, action: str) -> str:
    return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/{action}"


async def token(
    auth: AuthProcess, synapse: Synapse, user: MatrixUser, room_id: str, *, legacy: bool
) -> httpx.Response:
    openid = await asyncio.to_thread(synapse.openid_token, user)
    if legacy:
        path, body = (
            "/sfu/get",
            {"room": room_id, "openid_token": openid, "device_id": user.device_id},
        )
    else:
        path = "/get_token"
        body = {
            "room_id": room_id,
            "slot_id": "m.call#ROOM",
            "openid_token": openid,
            "member": {
                "id": f"member-{secrets.token_hex(4)}",
                "claimed_user_id": user.user_id,
                "claimed_device_id": user.device_id,
            },
        }
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        return await http.post(f"{auth.url}{path}", json=body)


async def jwt(
    auth: AuthProcess, synapse: Synapse, user: MatrixUser, room_id: str, *, legacy: bool
) -> str:
    response = await token(auth, synapse, user, room_id, legacy=legacy)
    assert response.status_code == 200, f"{response.text}\n{auth.log_tail()}"
    return str(response.json()["jwt"])


@contextlib.asynccontextmanager
async def connected(url: str, token: str) -> AsyncIterator[rtc.Room]:
    room = rtc.Room()
    await asyncio.wait_for(room.connect(url, token), WAIT_S)
    try:
        yield room
    finally:
        await room.disconnect()


async def call_of_two(focus: Focus, name: str) -> tuple[Matrix, Matrix, str]:
    """Alice's room, which Bob joined."""
    synapse = focus.synapse
    alice = Matrix(synapse, await asyncio.to_thread(synapse.create_user, f"{name}_alice", "ALICE"))
    bob = Matrix(synapse, await asyncio.to_thread(synapse.create_user, f"{name}_bob", "BOB"))
    room_id = (await alice.post("/_matrix/client/v3/createRoom", {"preset": "private_chat"}))[
        "room_id"
    ]
    await alice.post(room_path(room_id, "invite"), {"user_id": bob.user.user_id})
    await bob.post(room_path(room_id, "join"), {})
    return alice, bob, room_id


def departures(room: rtc.Room) -> dict[str, float]:
    """Identity → when ``room`` saw that participant leave."""
    seen: dict[str, float] = {}
    room.on("participant_disconnected", lambda p: seen.setdefault(p.identity, time.monotonic()))
    return seen


async def until(condition: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("how", ["leave", "kick", "ban"])
async def test_a_leaver_is_ejected_from_the_sfu_within_a_second(focus: Focus, how: str) -> None:
    alice, bob, room_id = await call_of_two(focus, f"eject_{how}")
    auth, synapse, url = focus.auth, focus.synapse, focus.sfu.url
    alice_jwt = await jwt(auth, synapse, alice.user, room_id, legacy=False)
    bob_legacy = await jwt(auth, synapse, bob.user, room_id, legacy=True)
    bob_hashed = await jwt(auth, synapse, bob.user, room_id, legacy=False)
    async with connected(url, alice_jwt) as observer:
        seen = departures(observer)
        async with connected(url, bob_legacy) as legacy, connected(url, bob_hashed) as hashed:
            bobs = {legacy.local_participant.identity, hashed.local_participant.identity}
            await until(lambda: bobs <= set(observer.remote_participants), "Bob in the call")
            started = time.monotonic()
            if how == "leave":
                await bob.post(room_path(room_id, "leave"), {})
            else:
                await alice.post(room_path(room_id, how), {"user_id": bob.user.user_id})
            await until(lambda: bobs <= set(seen), "Bob's identities leaving", EJECTED_WITHIN_S * 5)
            took = max(seen[identity] for identity in bobs) - started
            print(
                f"{how}: both of Bob's identities left the SFU {took * 1000:.0f} ms after the {how}"
            )
            assert took < EJECTED_WITHIN_S, f"{how}: ejected after {took:.2f} s\n{auth.log_tail()}"
            assert alice.user.user_id + ":ALICE" not in seen
        for legacy_endpoint in (True, False):
            refused = await token(auth, synapse, bob.user, room_id, legacy=legacy_endpoint)
            assert refused.status_code == 403, refused.text
            assert refused.json()["errcode"] == "M_FORBIDDEN"
    focus.sfu.assert_alive()


async def test_an_upgraded_room_closes_its_call(focus: Focus) -> None:
    alice, bob, room_id = await call_of_two(focus, "upgrade")
    auth, synapse, url = focus.auth, focus.synapse, focus.sfu.url
    alice_jwt = await jwt(auth, synapse, alice.user, room_id, legacy=False)
    bob_jwt = await jwt(auth, synapse, bob.user, room_id, legacy=True)
    async with connected(url, alice_jwt) as alices, connected(url, bob_jwt) as bobs:
        closed: dict[str, float] = {}
        for name, room in (("alice", alices), ("bob", bobs)):
            room.on("disconnected", lambda _reason, n=name: closed.setdefault(n, time.monotonic()))
        await until(lambda: len(alices.remote_participants) == 1, "Bob in the call")
        started = time.monotonic()
        await alice.post(room_path(room_id, "upgrade"), {"new_version": "11"})
        await until(lambda: len(closed) == 2, "the call closing", EJECTED_WITHIN_S * 5)
        took = max(closed.values()) - started
        print(f"upgrade: both clients disconnected {took * 1000:.0f} ms after the upgrade")
        assert took < EJECTED_WITHIN_S, f"closed after {took:.2f} s\n{auth.log_tail()}"


async def test_get_token_through_the_homeservers_proxy(focus: Focus) -> None:
    """MSC4512: the client asks its homeserver, which authenticates it and forwards to us."""
    alice, _bob, room_id = await call_of_two(focus, "proxied")
    carol = Matrix(
        focus.synapse, await asyncio.to_thread(focus.synapse.create_user, "proxied_carol", "CAROL")
    )
    path = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token"

    def body(user: Matrix, url: str = focus.sfu.url) -> dict[str, Any]:
        return {
            "url": url,
            "room_id": room_id,
            "slot_id": "m.call#ROOM",
            "member": {"id": "proxied-member", "claimed_device_id": user.user.device_id},
        }

    answer = await alice.http.post(path, json=body(alice))
    assert answer.status_code == 200, f"{answer.text}\n{focus.auth.log_tail()}"
    assert set(answer.json()) == {"jwt"}
    async with connected(focus.sfu.url, answer.json()["jwt"]) as room:
        assert room.local_participant.identity == participant_identity(
            alice.user.user_id, "ALICE", "proxied-member"
        )
    stranger = await carol.http.post(path, json=body(carol))
    assert (stranger.status_code, stranger.json()["errcode"]) == (403, "M_FORBIDDEN")
    wrong_url = await alice.http.post(path, json=body(alice, "wss://elsewhere.test"))
    assert (wrong_url.status_code, wrong_url.json()["errcode"]) == (400, "M_INVALID_PARAM")
    # Without Synapse in between (no hs_token), the route refuses.
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        direct = await http.post(
            f"{focus.auth.url}{path}",
            json=body(alice),
            headers={"X-Matrix-User-Identifier": alice.user.user_id},
        )
    assert direct.status_code == 401


async def test_a_user_who_never_joined_gets_403_from_both_endpoints(focus: Focus) -> None:
    alice, _bob, room_id = await call_of_two(focus, "stranger")
    synapse = focus.synapse
    carol = await asyncio.to_thread(synapse.create_user, "stranger_carol", "CAROL")
    for legacy in (True, False):
        response = await token(focus.auth, synapse, carol, room_id, legacy=legacy)
        assert response.status_code == 403, response.text
        assert response.json() == {
            "errcode": "M_FORBIDDEN",
            "error": "User is not joined to the room",
        }
        # A joined member of the same room still gets a token.
        assert (
            await token(focus.auth, synapse, alice.user, room_id, legacy=legacy)
        ).status_code == 200
    # The checks were MSC4502 is_joined, answered by Synapse (no fall-back to joined_members).
    access = await asyncio.to_thread(synapse.log_path.read_text)
    assert "/io.element.msc4502/rooms/" in access and "is_joined?mxid=" in access
    assert "no MSC4502 is_joined" not in await asyncio.to_thread(focus.auth.log_path.read_text)


async def test_reconcile_removes_a_leaver_it_was_not_told_about(
    focus: Focus, tmp_path: Path
) -> None:
    """A second auth service, same tokens, unknown to the homeserver: only reconcile acts."""
    alice, bob, room_id = await call_of_two(focus, "reconcile")
    polling = AuthProcess(
        {**focus.env, "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS": str(RECONCILE_INTERVAL_S)},
        tmp_path / "polling-auth.log",
    )
    polling.start()
    try:
        synapse, url = focus.synapse, focus.sfu.url
        alice_jwt = await jwt(polling, synapse, alice.user, room_id, legacy=False)
        bob_jwt = await jwt(polling, synapse, bob.user, room_id, legacy=False)
        async with connected(url, alice_jwt) as observer:
            seen = departures(observer)
            async with connected(url, bob_jwt) as bobs_room:
                identity = bobs_room.local_participant.identity
                await until(lambda: identity in observer.remote_participants, "Bob in the call")
                # The pushed leave reaches only the registered service, which never issued
                # this hashed identity: the polling service's reconcile must find it.
                started = time.monotonic()
                await bob.post(room_path(room_id, "leave"), {})
                await until(
                    lambda: identity in seen, "reconcile removing Bob", 10 * RECONCILE_INTERVAL_S
                )
                took = seen[identity] - started
                print(
                    f"reconcile: Bob removed {took:.2f} s after leaving (interval {RECONCILE_INTERVAL_S} s)"
                )
            assert len(observer.remote_participants) == 0
        log = await asyncio.to_thread(polling.log_path.read_text)
        assert "not joined to" in log, log
    finally:
        polling.kill(signal.SIGTERM)
        polling.kill()


async def test_synapse_loaded_the_printed_registration(focus: Focus) -> None:
    registration = yaml.safe_load(registration_cli(focus.auth.url, focus.env))
    assert registration["url"] == focus.auth.url
    assert registration["as_token"] == focus.env["LIVEKIT_AS_TOKEN"]
    assert registration["hs_token"] == focus.env["LIVEKIT_HS_TOKEN"]
    loaded = focus.synapse.config()["app_service_config_files"]
    assert yaml.safe_load(await asyncio.to_thread(Path(loaded[0]).read_text)) == registration
    # The homeserver knows the application service's user: whoami with the as_token.
    async with httpx.AsyncClient(base_url=focus.synapse.client_url, timeout=WAIT_S) as http:
        whoami = await http.get(
            "/_matrix/client/v3/account/whoami",
            headers={"Authorization": f"Bearer {registration['as_token']}"},
        )
        # Synapse pings the service with the hs_token (the spec's appservice ping).
        ping = await http.post(
            "/_matrix/client/v1/appservice/lk-jwt-service/ping",
            json={"transaction_id": "focus-test"},
            headers={"Authorization": f"Bearer {registration['as_token']}"},
        )
    assert whoami.json()["user_id"] == f"@_lk_jwt_service:{focus.synapse.server_name}"
    assert ping.status_code == 200, ping.text
    assert "duration_ms" in ping.json()


# --- the focus user ------------------------------------------------------------------------


def focus_user(focus: Focus) -> str:
    return f"@_lk_jwt_service:{focus.synapse.server_name}"


async def call_room(focus: Focus, name: str) -> tuple[Matrix, str]:
    """A room of Alice's where members may send call memberships (as Element creates them)."""
    alice = Matrix(
        focus.synapse, await asyncio.to_thread(focus.synapse.create_user, f"{name}_alice", "ALICE")
    )
    room_id = (
        await alice.post(
            "/_matrix/client/v3/createRoom",
            {
                "preset": "private_chat",
                "power_level_content_override": {"events": {CALL_MEMBER: 0}},
            },
        )
    )["room_id"]
    return alice, room_id


async def put_call_member(
    user: Matrix, room_id: str, content: dict[str, Any], *, delay_ms: int | None = None
) -> dict[str, Any]:
    """Send (or, with ``delay_ms``, schedule) ``user``'s call membership state event."""
    key = f"_{user.user.user_id}_{user.user.device_id}_m.call"
    path = room_path(room_id, f"state/{CALL_MEMBER}/{quote(key, safe='')}")
    params = {"org.matrix.msc4140.delay": str(delay_ms)} if delay_ms is not None else None
    response = await user.http.put(path, json=content, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def joined_call(user: Matrix, expires_ms: int = 3_600_000) -> dict[str, Any]:
    return {
        "application": "m.call",
        "call_id": "",
        "scope": "m.room",
        "device_id": user.user.device_id,
        "expires": expires_ms,
        "focus_active": {"type": "livekit", "focus_selection": "multi_sfu"},
        "foci_preferred": [],
    }


async def focus_memberships(user: Matrix, room_id: str, focus_id: str) -> list[tuple[str, int]]:
    """The focus user's membership events in the room's timeline: (membership, timestamp)."""
    response = await user.http.get(
        room_path(room_id, "messages"),
        params={"dir": "f", "limit": "200", "filter": '{"types":["m.room.member"]}'},
    )
    assert response.status_code == 200, response.text
    return [
        (event["content"]["membership"], event["origin_server_ts"])
        for event in response.json()["chunk"]
        if event.get("state_key") == focus_id
    ]


async def until_focus(
    user: Matrix, room_id: str, focus_id: str, expected: list[str], timeout: float
) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = await focus_memberships(user, room_id, focus_id)
        if [membership for membership, _ts in seen] == expected:
            return seen
        assert time.monotonic() < deadline, f"focus memberships {seen}, wanted {expected}"
        await asyncio.sleep(0.1)


async def test_the_focus_joins_when_invited_and_leaves_when_no_call_starts(focus: Focus) -> None:
    alice, room_id = await call_room(focus, "focus_nocall")
    me = focus_user(focus)
    await alice.post(room_path(room_id, "invite"), {"user_id": me})
    seen = await until_focus(alice, room_id, me, ["invite", "join", "leave"], FOCUS_NO_CALL_S + 15)
    invited, joined, left = (ts for _membership, ts in seen)
    print(
        f"focus: joined {joined - invited} ms after the invite, left {(left - joined) / 1000:.2f} s "
        f"after joining (no call; LIVEKIT_FOCUS_NO_CALL_SECONDS={FOCUS_NO_CALL_S})"
    )
    assert FOCUS_NO_CALL_S * 1000 <= left - joined < (FOCUS_NO_CALL_S + 3) * 1000


async def test_the_focus_stays_for_the_call_and_leaves_once_it_is_empty(focus: Focus) -> None:
    alice, room_id = await call_room(focus, "focus_call")
    me = focus_user(focus)
    await alice.post(room_path(room_id, "invite"), {"user_id": me})
    # Several invites and a call membership at once: still one join.
    await put_call_member(alice, room_id, joined_call(alice))
    for _ in range(2):
        await alice.http.post(room_path(room_id, "invite"), json={"user_id": me})
    await until_focus(alice, room_id, me, ["invite", "join"], 15)
    # The call outlives the no-call timeout: the focus stays.
    await asyncio.sleep(FOCUS_NO_CALL_S + 1)
    assert [m for m, _ in await focus_memberships(alice, room_id, me)] == ["invite", "join"]
    # A client still connected once the call has no membership is disconnected: the focus
    # closes the call (DeleteRoom) as it leaves, though Alice is still in the Matrix room.
    alice_jwt = await jwt(focus.auth, focus.synapse, alice.user, room_id, legacy=True)
    async with connected(focus.sfu.url, alice_jwt) as stale:
        closed: list[float] = []
        stale.on("disconnected", lambda _reason: closed.append(time.time() * 1000))
        ended = await put_call_member(alice, room_id, {})  # the leave: empty content
        assert "event_id" in ended
        ended_at = time.time() * 1000
        seen = await until_focus(
            alice, room_id, me, ["invite", "join", "leave"], FOCUS_EMPTY_S + 15
        )
        await until(lambda: bool(closed), "the call closed on the SFU")
    took = seen[-1][1] - ended_at
    print(
        f"focus: left {took / 1000:.2f} s after the call emptied (LIVEKIT_FOCUS_EMPTY_CALL_SECONDS={FOCUS_EMPTY_S}); "
        f"the SFU room closed {(closed[0] - ended_at) / 1000:.2f} s after"
    )
    assert (FOCUS_EMPTY_S - 0.5) * 1000 <= took < (FOCUS_EMPTY_S + 3) * 1000
    assert closed[0] - ended_at < (FOCUS_EMPTY_S + 3) * 1000


async def test_the_focus_joins_a_call_it_sees_and_leaves_when_the_membership_expires(
    focus: Focus,
) -> None:
    """LIVEKIT_FOCUS_JOIN_ON_CALL: no invite; the membership's own ``expires`` ends the call."""
    alice, room_id = await call_room(focus, "focus_expiry")
    me = focus_user(focus)
    # A public room the focus can join without an invite.
    response = await alice.http.put(
        room_path(room_id, "state/m.room.join_rules/"), json={"join_rule": "public"}
    )
    assert response.status_code == 200, response.text
    await put_call_member(alice, room_id, joined_call(alice, expires_ms=3000))
    seen = await until_focus(alice, room_id, me, ["join", "leave"], FOCUS_EMPTY_S + 20)
    stayed = (seen[1][1] - seen[0][1]) / 1000
    print(f"focus: stayed {stayed:.2f} s (a membership of 3 s, then {FOCUS_EMPTY_S} s empty)")
    assert 3 + FOCUS_EMPTY_S - 0.5 <= stayed < 3 + FOCUS_EMPTY_S + 3


async def test_the_call_closes_when_our_homeserver_leaves_the_room(focus: Focus) -> None:
    """The last local member leaves: ``DeleteRoom`` disconnects even a participant the
    service cannot trace to a user (here one with another server's identity)."""
    alice, room_id = await call_room(focus, "hs_leaves")
    auth, synapse, sfu = focus.auth, focus.synapse, focus.sfu
    alice_jwt = await jwt(auth, synapse, alice.user, room_id, legacy=True)
    outsider = sfu.token("@carol:remote.test:CAROL", legacy_room_alias(room_id))
    async with connected(sfu.url, alice_jwt), connected(sfu.url, outsider) as carol:
        closed: list[float] = []
        carol.on("disconnected", lambda _reason: closed.append(time.monotonic()))
        await until(lambda: len(carol.remote_participants) == 1, "Alice in the call")
        started = time.monotonic()
        await alice.post(room_path(room_id, "leave"), {})
        await until(lambda: bool(closed), "the call closing", EJECTED_WITHIN_S * 5)
        took = closed[0] - started
        print(f"homeserver left: the call closed {took * 1000:.0f} ms after the last local leave")
        assert took < EJECTED_WITHIN_S, auth.log_tail()
    await until(lambda: "our homeserver left it" in auth.log_path.read_text(), "DeleteRoom logged")


async def test_delegate_delayed_leave_through_the_homeservers_proxy(focus: Focus) -> None:
    """MSC4512 ``delegate_delayed_leave``: Alice hands her delayed leave over through Synapse;
    when her client drops, the service sends it (the call membership ends)."""
    alice, room_id = await call_room(focus, "proxied_delegate")
    sfu = focus.sfu
    await put_call_member(alice, room_id, joined_call(alice))
    delay_id = (await put_call_member(alice, room_id, {}, delay_ms=60_000))["delay_id"]
    path = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/delegate_delayed_leave"
    member = {"id": "delegating-member", "claimed_device_id": "ALICE"}
    body = {"url": sfu.url, "room_id": room_id, "slot_id": "m.call#ROOM", "member": member}
    unknown = await alice.http.post(path, json={**body, "delay_id": "syd_nosuchdelay"})
    assert (unknown.status_code, unknown.json()) == (
        400,
        {"errcode": "M_INVALID_PARAM", "error": "Unknown delay_id"},
    ), unknown.text
    delegated = await alice.http.post(path, json={**body, "delay_id": delay_id})
    assert (delegated.status_code, delegated.json()) == (200, {}), delegated.text
    token_path = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token"
    answer = await alice.http.post(token_path, json=body)
    assert answer.status_code == 200, answer.text
    key = f"_{alice.user.user_id}_ALICE_m.call"
    state_path = room_path(room_id, f"state/{CALL_MEMBER}/{quote(key, safe='')}")
    async with connected(sfu.url, answer.json()["jwt"]):
        await asyncio.sleep(1.5)  # the job sees the participant connected (GetParticipant)
        assert (await alice.http.get(state_path)).json() != {}
    dropped = time.monotonic()
    deadline = dropped + WAIT_S
    while (await alice.http.get(state_path)).json() != {}:
        assert time.monotonic() < deadline, focus.auth.log_tail()
        await asyncio.sleep(0.1)
    print(f"delegated leave sent {time.monotonic() - dropped:.2f} s after the client left")


async def test_federation_get_token_as_the_homeservers_proxy_sends_it(focus: Focus) -> None:
    """The federation route called exactly as Synapse's federation proxy calls it (the
    ``hs_token``, ``X-Matrix-Origin``): a subscribe-only grant for a remote user our
    homeserver sees joined, 403 for one it does not, lk-jwt-service's errors otherwise."""
    alice, room_id = await call_room(focus, "federated")
    path = "/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token"
    headers = {
        "Authorization": f"Bearer {focus.env['LIVEKIT_HS_TOKEN']}",
        "X-Matrix-Origin": "remote.test",
    }
    body = {
        "url": focus.sfu.url,
        "user_id": "@dave:remote.test",
        "room_id": room_id,
        "slot_id": "m.call#ROOM",
        "member": {"id": "remote-member", "claimed_device_id": "DAVE"},
    }
    async with httpx.AsyncClient(base_url=focus.auth.url, timeout=WAIT_S) as http:
        # Our homeserver has never seen @dave in the room: not joined.
        stranger = await http.post(path, json=body, headers=headers)
        assert (stranger.status_code, stranger.json()["errcode"]) == (403, "M_FORBIDDEN")
        foreign = await http.post(
            path, json={**body, "user_id": "@dave:other.test"}, headers=headers
        )
        assert (foreign.status_code, foreign.json()["errcode"]) == (403, "M_FORBIDDEN")
        no_token = await http.post(path, json=body, headers={"X-Matrix-Origin": "remote.test"})
        assert no_token.status_code == 401
        wrong_url = await http.post(path, json={**body, "url": "wss://x.test"}, headers=headers)
        assert (wrong_url.status_code, wrong_url.json()["errcode"]) == (400, "M_INVALID_PARAM")
        unknown = await http.post(path, json={**body, "extra": 1}, headers=headers)
        assert (unknown.status_code, unknown.json()["errcode"]) == (400, "M_NOT_JSON")
        # A local user through the federation route is refused too (origin is not ours).
        local = await http.post(
            path,
            json={**body, "user_id": alice.user.user_id},
            headers={**headers, "X-Matrix-Origin": focus.synapse.server_name},
        )
        assert local.status_code == 403


class Partition:
    """A TCP forwarder between the homeserver and the auth service that can be cut (the
    homeserver's pushes then fail to connect, as across a network partition)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.refused = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            self.refused += 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_reconcile_after_a_synapse_restart_removes_a_leave_that_was_not_pushed(
    focus: Focus, tmp_path: Path
) -> None:
    """Its own Synapse and auth service (reconcile every second), the pushes going through a
    link the test cuts: while Synapse is down reconcile removes nobody (fail open); after the
    restart Bob leaves, the push cannot arrive, and reconcile removes him."""
    auth = AuthProcess({}, tmp_path / "auth.log")
    link = Partition(auth.port)
    await link.start()
    env = {k: v for k, v in focus.env.items() if not k.startswith("LIVEKIT_FOCUS")}

    def registrations(server_name: str) -> list[Path]:
        env["LIVEKIT_HS_SERVER_NAME"] = server_name
        path = tmp_path / "registration.yaml"
        path.write_text(registration_cli(link.url, env))
        return [path]

    synapse = await asyncio.to_thread(
        start_synapse, tmp_path / "synapse", app_service_config_files=registrations
    )
    server = synapse.server_name
    env["LIVEKIT_FULL_ACCESS_HOMESERVERS"] = server
    env["LIVEKIT_AUTH_HOMESERVER_URLS"] = f"{server}={synapse.client_url}"
    env["LIVEKIT_CS_API_URL_OVERRIDES"] = f"{server}={synapse.client_url}"
    auth.env.update({**env, "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS": "1"})
    try:
        await asyncio.to_thread(auth.start)
        alice = Matrix(synapse, await asyncio.to_thread(synapse.create_user, "rs_alice", "ALICE"))
        bob = Matrix(synapse, await asyncio.to_thread(synapse.create_user, "rs_bob", "BOB"))
        room_id = (await alice.post("/_matrix/client/v3/createRoom", {"preset": "private_chat"}))[
            "room_id"
        ]
        await alice.post(room_path(room_id, "invite"), {"user_id": bob.user.user_id})
        await bob.post(room_path(room_id, "join"), {})
        url = focus.sfu.url
        alice_jwt = await jwt(auth, synapse, alice.user, room_id, legacy=False)
        bob_jwt = await jwt(auth, synapse, bob.user, room_id, legacy=False)
        async with connected(url, alice_jwt) as observer, connected(url, bob_jwt) as bobs:
            seen = departures(observer)
            identity = bobs.local_participant.identity
            await until(lambda: identity in observer.remote_participants, "Bob in the call")
            link.cut = True
            await asyncio.to_thread(synapse.stop)
            await asyncio.sleep(3)  # three reconcile passes without a homeserver
            assert identity in observer.remote_participants and not seen
            log = await asyncio.to_thread(auth.log_path.read_text)
            assert "reconcile skips" in log, log
            await asyncio.to_thread(synapse.restart)
            started = time.monotonic()
            await bob.post(room_path(room_id, "leave"), {})
            await until(lambda: identity in seen, "reconcile removing Bob", 15)
            took = seen[identity] - started
            print(
                f"restart: Bob removed by reconcile {took:.2f} s after leaving "
                f"(interval 1 s; {link.refused} pushes refused by the cut link)"
            )
            assert link.refused > 0, "Synapse never tried to push the leave"
            assert set(seen) == {identity}  # Alice stays
    finally:
        auth.kill(signal.SIGTERM)
        auth.kill()
        synapse.stop()
        await link.stop()


async def test_an_e2ee_browser_call_with_the_application_service_on(focus: Focus) -> None:
    """Element Call's client side (livekit-client 2.21.0 in Chromium, E2EE) against Synapse
    with this mode enabled: each page gets its token from the auth service with its own OpenID
    token (cross-origin, as Element Call), both decode the other's encrypted media, and a
    non-member's page is refused."""
    alice, bob, room_id = await call_of_two(focus, "browser")
    synapse, auth = focus.synapse, focus.auth
    carol = await asyncio.to_thread(synapse.create_user, "browser_carol", "CAROL")
    key = f"shared-{secrets.token_hex(8)}"
    users = {"alice": alice.user, "bob": bob.user, "carol": carol}
    async with browser_session(names=list(users)) as session:
        identities: dict[str, str] = {}
        for page in session.pages:
            user = users[page.name]
            body = {
                "room": room_id,
                "openid_token": await asyncio.to_thread(synapse.openid_token, user),
                "device_id": user.device_id,
            }
            answer = await page.post_json(f"{auth.url}/sfu/get", body)
            if page.name == "carol":
                assert (answer["status"], answer["body"]["errcode"]) == (403, "M_FORBIDDEN")
                continue
            assert answer["status"] == 200, answer
            joined = await page.join(
                answer["body"]["url"],
                answer["body"]["jwt"],
                e2ee_key=key,
                timeout_s=BROWSER_WAIT_S,
            )
            identities[page.name] = joined["identity"]
            assert joined["e2ee"] is True, joined
        pages = {page.name: page for page in session.pages}
        for viewer, sender in (("bob", "alice"), ("alice", "bob")):
            video, audio = await pages[viewer].wait_remote_media_flowing(
                identities[sender], timeout_s=BROWSER_WAIT_S
            )
            assert video["framesDecoded"] > 0 and audio["totalAudioEnergy"] > 0, (video, audio)
            for entry in remote_entries(await pages[viewer].stats(), identities[sender], "video"):
                assert entry["encrypted"] is True, entry
            events = await pages[viewer].events()
            assert not [e for e in events if e.get("type") == "EncryptionError"], events
        for name in ("alice", "bob"):
            await pages[name].leave()
    focus.sfu.assert_alive()


async def test_federation_get_token_from_a_second_homeserver(focus: Focus, tmp_path: Path) -> None:
    """A second Synapse on loopback, federating with ours: its application service asks for a
    token for its user Dave through its homeserver (MSC4512 ``fed_proxy``), which signs the
    request; our Synapse checks the signature and proxies it to us with ``X-Matrix-Origin``.
    Dave joined Alice's room over federation, so our homeserver sees him joined: he gets a
    subscribe-only token and joins the call; Erin, who never joined, gets 403."""
    remote_as = {"as_token": secrets.token_urlsafe(24), "hs_token": secrets.token_urlsafe(24)}

    def registrations(server_name: str) -> list[Path]:
        path = tmp_path / "remote-as.yaml"
        unused = f"http://127.0.0.1:{free_port()}"
        registration = {
            "id": "remote-rtc",
            "url": unused,
            **remote_as,
            "sender_localpart": "remote_rtc",
            "namespaces": {"users": [], "aliases": [], "rooms": []},
            "io.element.msc4512.proxy_prefix": "rtc/livekit",
            "io.element.msc4512.proxy_url": unused,
        }
        path.write_text(yaml.safe_dump(registration))
        return [path]

    remote = await asyncio.to_thread(
        start_synapse,
        tmp_path / "remote",
        app_service_config_files=registrations,
        federation=True,
        extra_config={"experimental_features": {"msc4512_enabled": True}},
    )
    try:
        alice, room_id = await call_room(focus, "federated_host")
        public = await alice.http.put(
            room_path(room_id, "state/m.room.join_rules/"), json={"join_rule": "public"}
        )
        assert public.status_code == 200, public.text
        dave = Matrix(remote, await asyncio.to_thread(remote.create_user, "dave", "DAVE"))
        erin = Matrix(remote, await asyncio.to_thread(remote.create_user, "erin", "ERIN"))
        joined = await dave.http.post(
            f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
            params={"server_name": focus.synapse.server_name},
            json={},
        )
        assert joined.status_code == 200, f"{joined.text}\n{remote.log_tail()}"

        async def remote_token(user: Matrix) -> dict[str, Any]:
            body = {
                "url": focus.sfu.url,
                "user_id": user.user.user_id,
                "room_id": room_id,
                "slot_id": "m.call#ROOM",
                "member": {
                    "id": f"member-{user.user.device_id}",
                    "claimed_device_id": user.user.device_id,
                },
            }
            async with httpx.AsyncClient(base_url=remote.client_url, timeout=WAIT_S) as http:
                answer = await http.post(
                    "/_matrix/client/unstable/io.element.msc4512/appservice/fed_proxy",
                    json={
                        "destination": focus.synapse.server_name,
                        "method": "POST",
                        "path": "/_matrix/federation/unstable/io.element.msc4195/rtc/livekit/get_token",
                        "body": body,
                    },
                    headers={"Authorization": f"Bearer {remote_as['as_token']}"},
                )
            assert answer.status_code == 200, f"{answer.text}\n{remote.log_tail()}"
            return dict(answer.json())

        # Our homeserver learns of Dave's join over federation (bounded wait).
        deadline = time.monotonic() + WAIT_S
        while (reply := await remote_token(dave))["status"] != 200:
            assert time.monotonic() < deadline, f"{reply}\n{focus.auth.log_tail()}"
            await asyncio.sleep(0.2)
        token_ = reply["content"]["jwt"]
        claims = pyjwt.decode(token_, options={"verify_signature": False})
        assert claims["video"]["canPublish"] is False and claims["video"]["canSubscribe"] is True
        assert "roomCreate" not in claims["video"]
        assert claims["sub"] == participant_identity(dave.user.user_id, "DAVE", "member-DAVE")
        stranger = await remote_token(erin)
        assert (stranger["status"], stranger["content"]["errcode"]) == (403, "M_FORBIDDEN")

        alice_jwt = (
            await alice.post(
                "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token",
                {
                    "url": focus.sfu.url,
                    "room_id": room_id,
                    "slot_id": "m.call#ROOM",
                    "member": {"id": "host-member", "claimed_device_id": "ALICE"},
                },
            )
        )["jwt"]
        async with (
            connected(focus.sfu.url, alice_jwt) as host,
            connected(focus.sfu.url, token_) as guest,
        ):
            await until(lambda: claims["sub"] in host.remote_participants, "Dave in the call")
            assert guest.local_participant.permissions.can_publish is False
        print(
            f"federation: Dave of {remote.server_name} got a subscribe-only token through two homeservers"
        )
    finally:
        remote.stop()
