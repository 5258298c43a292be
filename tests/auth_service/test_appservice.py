"""Application-service mode in-process: the transaction endpoint under hostile input, what a
membership event is trusted for, the bounds, the settings and the registration command.

The homeserver and the SFU are stand-ins here because the faults (wrong tokens, replayed,
oversized or malformed transactions, a membership event about someone else) are ones a real
Synapse never sends on demand; tests/integration/test_focus.py runs the same code against
real Synapse, the real SFU and SDK clients.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Route

from auth_service import membership as membership_module
from auth_service.__main__ import main
from auth_service.appservice import AppServiceEndpoints, registration
from auth_service.config import ConfigError, load_settings
from auth_service.homeserver import IS_JOINED_SCOPE, MembershipUnknown
from auth_service.membership import Membership, legacy_owner
from auth_service.models import MatrixError
from auth_service.proxied import (
    federated_user,
    parse_cs_delegate,
    parse_cs_get_token,
    parse_federation_get_token,
    proxied_user,
)
from auth_service.sfu_client import RoomServiceError
from auth_service.tokens import join_claims, legacy_room_alias

HS_TOKEN = "hs-token-for-tests-0123456789"
ROOM = "!room:hs.test"


class FakeMembers:
    def __init__(self, joined: dict[str, set[str]]) -> None:
        self.joined = joined
        self.fetches = 0

    async def joined_members(self, room_id: str) -> frozenset[str]:
        self.fetches += 1
        if room_id not in self.joined:
            raise MembershipUnknown("homeserver down")
        return frozenset(self.joined[room_id])

    async def is_joined(
        self, room_id: str, *, user_id: str = "", server_name: str = ""
    ) -> bool | None:
        return None  # a homeserver without MSC4502


class FakeSfu:
    def __init__(self, present: dict[str, set[str]], *, broken: bool = False) -> None:
        self.present = present
        self.removed: list[tuple[str, str]] = []
        self.deleted: list[str] = []
        self.broken = broken

    async def delete_room(self, room: str) -> None:
        if self.broken:
            raise RoomServiceError("down")
        self.deleted.append(room)

    async def participant_exists(self, room: str, identity: str) -> bool:
        return identity in self.present.get(room, set())

    async def participant_identities(self, room: str) -> frozenset[str]:
        if self.broken:
            raise RoomServiceError("down")
        return frozenset(self.present.get(room, set()))

    async def remove_participant(self, room: str, identity: str) -> bool:
        if self.broken:
            raise RoomServiceError("down")
        self.removed.append((room, identity))
        here = self.present.get(room, set())
        if identity in here:
            here.discard(identity)
            return True
        return False


def member_event(user: str, membership: str, sender: str | None = None) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "room_id": ROOM,
        "state_key": user,
        "sender": sender or user,
        "content": {"membership": membership},
    }


def app_for(membership: Membership) -> httpx.AsyncClient:
    endpoints = AppServiceEndpoints(HS_TOKEN, membership)
    app = Starlette(
        routes=[
            Route(
                "/_matrix/app/v1/transactions/{txn_id}",
                endpoints.transaction,
                methods=["PUT", "POST"],
            ),
            Route("/_matrix/app/v1/ping", endpoints.ping, methods=["POST"]),
        ]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://as.test")


AUTH = {"Authorization": f"Bearer {HS_TOKEN}"}
LEGACY = legacy_room_alias(ROOM)


def stack(present: set[str] | None = None) -> tuple[Membership, FakeSfu, FakeMembers]:
    members = FakeMembers({ROOM: {"@alice:hs.test", "@bob:hs.test"}})
    sfu = FakeSfu({LEGACY: set(present or set())})
    return Membership(members, sfu), sfu, members  # type: ignore[arg-type]


async def put(client: httpx.AsyncClient, txn: str, body: object, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.put(f"/_matrix/app/v1/transactions/{txn}", content=content, **kw)


async def test_transactions_need_the_hs_token() -> None:
    membership, _sfu, _ = stack()
    async with app_for(membership) as client:
        missing = await put(client, "1", {"events": []})
        assert (missing.status_code, missing.json()["errcode"]) == (401, "M_UNAUTHORIZED")
        wrong = await put(client, "1", {"events": []}, headers={"Authorization": "Bearer x"})
        assert (wrong.status_code, wrong.json()["errcode"]) == (403, "M_FORBIDDEN")
        query = await put(client, "1", {"events": []}, params={"access_token": HS_TOKEN})
        assert query.status_code == 200
        assert (await client.post("/_matrix/app/v1/ping", headers=AUTH, json={})).json() == {}
        assert (await client.post("/_matrix/app/v1/ping", json={})).status_code == 401


async def test_a_leave_ejects_legacy_and_hashed_identities_once_per_transaction() -> None:
    membership, sfu, _ = stack({"@bob:hs.test:BOB", "@bob:hs.test:PHONE", "@alice:hs.test:A"})
    membership.issued(ROOM, "@bob:hs.test", "slot-alias", "hashed-bob")
    sfu.present["slot-alias"] = {"hashed-bob"}
    async with app_for(membership) as client:
        first = await put(
            client, "t1", {"events": [member_event("@bob:hs.test", "leave")]}, headers=AUTH
        )
        assert first.status_code == 200
        assert sorted(sfu.removed) == [
            (LEGACY, "@bob:hs.test:BOB"),
            (LEGACY, "@bob:hs.test:PHONE"),
            ("slot-alias", "hashed-bob"),
        ]
        sfu.removed.clear()
        again = await put(
            client, "t1", {"events": [member_event("@bob:hs.test", "leave")]}, headers=AUTH
        )
        assert again.status_code == 200 and sfu.removed == []  # idempotent per txnId
    assert sfu.present[LEGACY] == {"@alice:hs.test:A"}


async def test_a_membership_event_counts_only_for_its_state_key() -> None:
    membership, sfu, _ = stack({"@bob:hs.test:BOB", "@alice:hs.test:A"})
    kick = member_event("@bob:hs.test", "leave", sender="@alice:hs.test")
    ban = member_event("@bob:hs.test", "ban", sender="@alice:hs.test")
    assert await membership.is_joined(ROOM, "@bob:hs.test")  # cached, then kept by pushes
    async with app_for(membership) as client:
        assert (await put(client, "k", {"events": [kick, ban]}, headers=AUTH)).status_code == 200
    assert sfu.removed == [(LEGACY, "@bob:hs.test:BOB")]
    assert await membership.is_joined(ROOM, "@alice:hs.test")
    assert not await membership.is_joined(ROOM, "@bob:hs.test")


@pytest.mark.parametrize(
    ("body", "status", "errcode"),
    [
        (b"not json", 400, "M_NOT_JSON"),
        ({"events": {}}, 400, "M_BAD_JSON"),
        ([], 400, "M_BAD_JSON"),
        (b"[" * 100_000, 400, "M_NOT_JSON"),
        (b" " * (16 * 1024 * 1024 + 1), 413, "M_TOO_LARGE"),
    ],
)
async def test_hostile_transactions_get_precise_errors(
    body: object, status: int, errcode: str
) -> None:
    membership, _sfu, _ = stack()
    async with app_for(membership) as client:
        response = await put(client, "bad", body, headers=AUTH)
    assert (response.status_code, response.json()["errcode"]) == (status, errcode)


async def test_malformed_events_are_skipped_and_long_txn_ids_refused() -> None:
    membership, sfu, _ = stack({"@bob:hs.test:BOB"})
    junk: list[object] = [
        None,
        7,
        {"type": "m.room.member"},
        {"type": "m.room.member", "room_id": ROOM, "state_key": 5, "content": {}},
        {
            "type": "m.room.member",
            "room_id": ROOM,
            "state_key": "bob",
            "content": {"membership": "leave"},
        },
        {"type": "m.room.member", "room_id": ROOM, "state_key": "@bob:hs.test", "content": []},
    ]
    async with app_for(membership) as client:
        assert (await put(client, "junk", {"events": junk}, headers=AUTH)).status_code == 200
        too_long = await put(client, "x" * 256, {"events": []}, headers=AUTH)
        assert too_long.status_code == 400
    assert sfu.removed == []


async def test_an_sfu_failure_does_not_fail_the_transaction() -> None:
    members = FakeMembers({ROOM: {"@bob:hs.test"}})
    membership = Membership(members, FakeSfu({}, broken=True))  # type: ignore[arg-type]
    membership.issued(ROOM, "@bob:hs.test", "a", "hashed")
    async with app_for(membership) as client:
        event = member_event("@bob:hs.test", "leave")
        assert (await put(client, "f", {"events": [event]}, headers=AUTH)).status_code == 200


async def test_a_tombstone_deletes_the_rooms_livekit_rooms() -> None:
    membership, sfu, _ = stack({"@bob:hs.test:BOB"})
    membership.issued(ROOM, "@bob:hs.test", "slot-alias", "hashed-bob")
    tombstone = {
        "type": "m.room.tombstone",
        "room_id": ROOM,
        "state_key": "",
        "content": {"replacement_room": "!new:hs.test"},
    }
    not_state = {**tombstone, "state_key": "x"}
    async with app_for(membership) as client:
        response = await put(client, "t", {"events": [not_state, tombstone]}, headers=AUTH)
    assert response.status_code == 200
    assert sorted(sfu.deleted) == sorted([LEGACY, "slot-alias"])
    assert membership.tracked_rooms() == []


async def test_pushed_events_update_the_cached_members() -> None:
    membership, _sfu, members = stack()
    assert await membership.is_joined(ROOM, "@alice:hs.test")
    await membership.apply([member_event("@carol:hs.test", "join")])
    assert await membership.is_joined(ROOM, "@carol:hs.test")
    await membership.apply([member_event("@alice:hs.test", "leave")])
    assert not await membership.is_joined(ROOM, "@alice:hs.test")
    assert members.fetches == 1
    with pytest.raises(MembershipUnknown):
        await membership.is_joined("!unknown:hs.test", "@alice:hs.test")


async def test_reconcile_removes_only_those_not_joined() -> None:
    membership, sfu, members = stack({"@bob:hs.test:BOB", "@alice:hs.test:A", "stranger-hash"})
    membership.issued(ROOM, "@bob:hs.test", LEGACY, "@bob:hs.test:BOB")
    members.joined[ROOM] = {"@alice:hs.test"}
    assert await membership.reconcile() == 1
    assert sfu.removed == [(LEGACY, "@bob:hs.test:BOB")]
    assert membership.tracked_rooms() == []


def test_issued_identities_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership_module, "MAX_TRACKED_USERS", 3)
    membership, _sfu, _ = stack()
    for n in range(membership_module.MAX_IDENTITIES_PER_USER + 5):
        membership.issued(ROOM, "@bob:hs.test", "a", f"id{n}")
    assert len(membership._owners(ROOM)) == membership_module.MAX_IDENTITIES_PER_USER
    for n in range(10):
        membership.issued(f"!r{n}:hs.test", "@bob:hs.test", "a", "x")
    assert membership.tracked_rooms() == ["!r7:hs.test", "!r8:hs.test", "!r9:hs.test"]


def test_legacy_owner() -> None:
    assert legacy_owner("@bob:hs.test:DEV") == "@bob:hs.test"
    assert legacy_owner("@bob:hs.test:8448:DEV") == "@bob:hs.test:8448"
    assert legacy_owner("abc+/hash") is None
    assert legacy_owner("@bob:") is None
    assert legacy_owner("@bob") is None


BASE_ENV = {
    "LIVEKIT_URL": "ws://sfu.test",
    "LIVEKIT_KEY": "key",
    "LIVEKIT_SECRET": "a-real-secret-0123456789abcdefghijkl",
    "LIVEKIT_FULL_ACCESS_HOMESERVERS": "hs.test",
}
AS_ENV = {
    "LIVEKIT_AS_TOKEN": "as-1",
    "LIVEKIT_HS_TOKEN": "hs-1",
    "LIVEKIT_HS_SERVER_NAME": "hs.test",
}


def test_settings_need_all_three_variables_or_none() -> None:
    assert not load_settings(BASE_ENV).appservice_enabled
    settings = load_settings({**BASE_ENV, **AS_ENV})
    assert settings.appservice_enabled and settings.membership_check_interval_seconds == 60
    with pytest.raises(ConfigError, match="missing LIVEKIT_HS_TOKEN"):
        load_settings({**BASE_ENV, **AS_ENV, "LIVEKIT_HS_TOKEN": ""})
    with pytest.raises(ConfigError, match="must differ"):
        load_settings({**BASE_ENV, **AS_ENV, "LIVEKIT_HS_TOKEN": "as-1"})
    with pytest.raises(ConfigError, match="LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS"):
        load_settings({**BASE_ENV, **AS_ENV, "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS": "-1"})
    zero = {**BASE_ENV, **AS_ENV, "LIVEKIT_MEMBERSHIP_CHECK_INTERVAL_SECONDS": "0"}
    assert load_settings(zero).membership_check_interval_seconds == 0


def test_registration_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in AS_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["appservice-registration", "--url", "http://auth.internal:8080/"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == registration("http://auth.internal:8080", "as-1", "hs-1", "hs.test")
    assert printed["namespaces"]["users"] == [{"exclusive": False, "regex": r"@.*:hs\.test"}]
    monkeypatch.delenv("LIVEKIT_HS_TOKEN")
    assert main(["appservice-registration", "--url", "http://auth.internal:8080"]) == 2
    assert "LIVEKIT_HS_TOKEN" in capsys.readouterr().err
    assert main(["appservice-registration", "--url", "ftp://x"]) == 2
    assert "--url" in capsys.readouterr().err


async def test_a_token_issued_before_a_leave_that_connects_after_it_is_reconciled() -> None:
    membership, sfu, members = stack()
    membership.issued(ROOM, "@bob:hs.test", "slot-alias", "hashed-bob")
    await membership.apply([member_event("@bob:hs.test", "leave")])
    assert sfu.removed == [("slot-alias", "hashed-bob")]  # not connected yet: nothing removed
    sfu.present["slot-alias"] = {"hashed-bob"}  # the client connects afterwards
    members.joined[ROOM] = {"@alice:hs.test"}
    assert await membership.reconcile() == 1
    assert sfu.present["slot-alias"] == set()


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        (b"[", "M_NOT_JSON"),
        (b'{"openid_token": {}}', "M_NOT_JSON"),
        (b'{"url": 5}', "M_NOT_JSON"),
        (b'{"url": "u", "room_id": "!r", "slot_id": "s", "member": {"extra": 1}}', "M_NOT_JSON"),
        (b'{"url": "u", "room_id": "", "slot_id": "s", "member": {"id": "m"}}', "M_BAD_JSON"),
        (
            b'{"url": "u", "room_id": "!r", "slot_id": "s", "member": {"id": "m", "claimed_device_id": "a:b"}}',
            "M_BAD_JSON",
        ),
        (b'{"url": "u", "room_id": "!r", "slot_id": "s", "member": {"id": "m"}}', "M_BAD_JSON"),
    ],
)
def test_proxied_get_token_bodies_are_checked(body: bytes, errcode: str) -> None:
    with pytest.raises(MatrixError) as raised:
        parse_cs_get_token(body)
    assert raised.value.errcode == errcode


def test_proxied_user_must_be_of_our_homeserver() -> None:
    assert proxied_user("@bob:hs.test", "hs.test") == "@bob:hs.test"
    for header in ("", "bob", "@bob:evil.test", "@bob:hs.test.evil", "@" + "b" * 300 + ":hs.test"):
        with pytest.raises(MatrixError):
            proxied_user(header, "hs.test")
    request = b'{"url": "u", "room_id": "!r", "slot_id": "s", "member": {"id": "m", "claimed_device_id": "D"}}'
    assert parse_cs_get_token(request).member.claimed_device_id == "D"


FEDERATION_BODY = {
    "url": "u",
    "user_id": "@dave:remote.test",
    "room_id": "!r",
    "slot_id": "s",
    "member": {"id": "m", "claimed_device_id": "D"},
}


def test_federation_and_delegation_bodies_are_checked() -> None:
    assert parse_federation_get_token(json.dumps(FEDERATION_BODY).encode()).user_id == (
        "@dave:remote.test"
    )
    cases = [
        ({**FEDERATION_BODY, "user_id": ""}, "M_BAD_JSON"),
        ({**FEDERATION_BODY, "delay_id": "x"}, "M_NOT_JSON"),
        (
            {**FEDERATION_BODY, "member": {**FEDERATION_BODY["member"], "claimed_user_id": "@x:y"}},
            "M_FORBIDDEN",
        ),
    ]
    for body, errcode in cases:
        with pytest.raises(MatrixError) as raised:
            parse_federation_get_token(json.dumps(body).encode())
        assert raised.value.errcode == errcode, body
    delegate = {k: v for k, v in FEDERATION_BODY.items() if k != "user_id"}
    assert parse_cs_delegate(json.dumps({**delegate, "delay_id": "syd_a"}).encode()).delay_id == (
        "syd_a"
    )
    for body in ({**delegate}, {**delegate, "delay_id": "a b"}, {**delegate, "delay_id": 5}):
        with pytest.raises(MatrixError):
            parse_cs_delegate(json.dumps(body).encode())


def test_a_federated_user_must_be_of_the_origin() -> None:
    assert federated_user("remote.test", "@dave:remote.test", "hs.test") == "@dave:remote.test"
    for origin, user in (
        ("", "@dave:remote.test"),
        ("hs.test", "@bob:hs.test"),  # our own server is not a federation origin
        ("remote.test", "@dave:other.test"),
        ("remote.test", "dave"),
    ):
        with pytest.raises(MatrixError) as raised:
            federated_user(origin, user, "hs.test")
        assert raised.value.status == 403


def test_a_subscribe_only_grant() -> None:
    claims = join_claims("key", "room", "ident", 0, can_publish=False)
    assert claims["video"]["canPublish"] is False
    assert claims["video"]["canPublishData"] is True
    assert claims["video"]["canSubscribe"] is True
    assert "roomCreate" not in claims["video"]
    assert "canPublishData" not in join_claims("key", "room", "ident", 0)["video"]


def test_the_registration_asks_for_msc4502_is_joined() -> None:
    printed = registration("http://a", "as", "hs", "hs.test")
    assert printed["io.element.msc4502.scopes"] == [IS_JOINED_SCOPE]
    assert printed["sender_localpart"] == "_lk_jwt_service"


async def test_deleteroom_when_the_last_of_our_users_leaves() -> None:
    members = FakeMembers({ROOM: {"@alice:hs.test", "@carol:remote.test"}})
    sfu = FakeSfu({LEGACY: set()})
    membership = Membership(members, sfu, server_name="hs.test")  # type: ignore[arg-type]
    await membership.apply([member_event("@bob:hs.test", "leave")])
    assert sfu.deleted == []  # Alice is still here
    await membership.apply([member_event("@carol:remote.test", "leave")])
    assert sfu.deleted == []  # not one of ours
    members.joined[ROOM] = {"@carol:remote.test"}
    await membership.apply([member_event("@alice:hs.test", "leave")])
    assert sfu.deleted == [LEGACY]
    members.joined.pop(ROOM)  # the homeserver cannot say: nothing deleted (fail open)
    await membership.apply([member_event("@alice:hs.test", "leave")])
    assert sfu.deleted == [LEGACY]


def test_focus_settings() -> None:
    defaults = load_settings({**BASE_ENV, **AS_ENV})
    assert (
        defaults.focus_empty_call_seconds,
        defaults.focus_no_call_seconds,
        defaults.focus_join_on_call,
    ) == (30, 90, False)
    env = {
        **BASE_ENV,
        **AS_ENV,
        "LIVEKIT_FOCUS_EMPTY_CALL_SECONDS": "5",
        "LIVEKIT_FOCUS_NO_CALL_SECONDS": "0",
        "LIVEKIT_FOCUS_JOIN_ON_CALL": "true",
    }
    settings = load_settings(env)
    assert (settings.focus_empty_call_seconds, settings.focus_no_call_seconds) == (5, 0)
    assert settings.focus_join_on_call
    for name, bad in (
        ("LIVEKIT_FOCUS_EMPTY_CALL_SECONDS", "-1"),
        ("LIVEKIT_FOCUS_NO_CALL_SECONDS", "soon"),
        ("LIVEKIT_FOCUS_JOIN_ON_CALL", "maybe"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings({**env, name: bad})
