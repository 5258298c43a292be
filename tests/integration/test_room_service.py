"""LiveKit's RoomService (Twirp) against the real SFU, driven by `livekit-api` with LiveKit Python
SDK participants in the room: every method, the grants each needs, the Twirp error JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from livekit import api
from livekit import rtc as lk
from livekit.protocol import models

from tests.harness.lkclient import SyntheticPublisher
from tests.harness.sfu import SfuInstance

WAIT = 20.0
ROOM = "ops"


class Recorder:
    """An SDK participant that records the room events these tests look for."""

    def __init__(self) -> None:
        self.room = lk.Room()
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        for name in (
            "track_muted",
            "track_subscribed",
            "track_unsubscribed",
            "track_unpublished",
            "participant_metadata_changed",
            "participant_name_changed",
            "participant_attributes_changed",
            "participant_permissions_changed",
            "room_metadata_changed",
            "data_received",
            "disconnected",
        ):
            self.room.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            self.events.append((name, args))

        return record

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for event, args in self.events if event == name]

    async def wait(self, name: str, count: int = 1) -> list[tuple[Any, ...]]:
        async with asyncio.timeout(WAIT):
            while len(self.named(name)) < count:
                await asyncio.sleep(0.05)
        return self.named(name)


def admin_api(sfu: SfuInstance, **grants: Any) -> api.LiveKitAPI:
    """A client whose every call carries one token with exactly `grants`."""
    token = (
        api.AccessToken(sfu.api_key, sfu.api_secret)
        .with_identity("operator")
        .with_grants(api.VideoGrants(**grants))
        .with_ttl(timedelta(minutes=5))
        .to_jwt()
    )
    return api.LiveKitAPI(sfu.http_url, token=token, failover=False)


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def until_subscribed(sfu: SfuInstance, count: int) -> None:
    """Wait until the SFU forwards `count` subscriptions (its livekit_track_subscribed_total)."""
    async with httpx.AsyncClient(timeout=WAIT) as http, asyncio.timeout(WAIT):
        while True:
            for line in (await http.get(sfu.metrics_url)).text.splitlines():
                name, _, value = line.rpartition(" ")
                if name.startswith("livekit_track_subscribed_total{") and float(value) == count:
                    return
            await asyncio.sleep(0.1)


async def test_every_method_with_sdk_participants(sfu: SfuInstance) -> None:
    lkapi = api.LiveKitAPI(sfu.http_url, sfu.api_key, sfu.api_secret, failover=False)
    alice = SyntheticPublisher("alice")
    bob = Recorder()
    try:
        room = await lkapi.room.create_room(
            api.CreateRoomRequest(
                name=ROOM, empty_timeout=60, departure_timeout=5, max_participants=5, metadata="m0"
            )
        )
        assert (room.name, room.empty_timeout, room.departure_timeout) == (ROOM, 60, 5)
        assert (room.max_participants, room.metadata) == (5, "m0")
        assert room.sid.startswith("RM_")
        again = await lkapi.room.create_room(api.CreateRoomRequest(name=ROOM, metadata="other"))
        assert (again.sid, again.metadata) == (room.sid, "m0")  # an open room is reused
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest())
        assert [r.name for r in listed.rooms] == [ROOM]
        assert (await lkapi.room.list_rooms(api.ListRoomsRequest(names=["nope"]))).rooms == []

        # restricted tokens (no roomCreate) join because the room exists
        await alice.connect(sfu.url, sfu.token("alice", ROOM, room_create=False))
        await alice.publish(video=False, audio=True)
        await asyncio.wait_for(
            bob.room.connect(sfu.url, sfu.token("bob", ROOM, room_create=False)), WAIT
        )
        await bob.wait("track_subscribed")
        assert alice.audio_publication is not None
        track_sid = alice.audio_publication.sid

        people = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        assert sorted(p.identity for p in people.participants) == ["alice", "bob"]
        info = await lkapi.room.get_participant(
            api.RoomParticipantIdentity(room=ROOM, identity="alice")
        )
        assert [t.sid for t in info.tracks] == [track_sid]
        assert info.state == models.ParticipantInfo.State.ACTIVE

        # MutePublishedTrack: the publisher is muted, the others are told; no remote unmute
        muted = await lkapi.room.mute_published_track(
            api.MuteRoomTrackRequest(room=ROOM, identity="alice", track_sid=track_sid, muted=True)
        )
        assert muted.track.sid == track_sid and muted.track.muted
        await bob.wait("track_muted")
        await until(lambda: alice.audio_publication.muted, "alice's own publication to mute")
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room=ROOM, identity="alice", track_sid=track_sid, muted=False
                )
            )
        assert (refused.value.code, refused.value.status) == ("failed_precondition", 412)

        # UpdateSubscriptions: bob drops the track, then takes it again
        await lkapi.room.update_subscriptions(
            api.UpdateSubscriptionsRequest(
                room=ROOM, identity="bob", track_sids=[track_sid], subscribe=False
            )
        )
        await until_subscribed(sfu, 0)
        await lkapi.room.update_subscriptions(
            api.UpdateSubscriptionsRequest(
                room=ROOM, identity="bob", track_sids=[track_sid], subscribe=True
            )
        )
        await until_subscribed(sfu, 1)

        # UpdateParticipant: metadata, name, attributes reach bob himself and alice
        updated = await lkapi.room.update_participant(
            api.UpdateParticipantRequest(
                room=ROOM, identity="bob", metadata="meta", name="Bob B", attributes={"a": "1"}
            )
        )
        assert (updated.metadata, updated.name, dict(updated.attributes)) == (
            "meta",
            "Bob B",
            {"a": "1"},
        )
        local = bob.room.local_participant
        await until(
            lambda: (local.metadata, local.name, local.attributes) == ("meta", "Bob B", {"a": "1"}),
            "bob to see his own update",
        )
        await until(
            lambda: alice.room.remote_participants["bob"].metadata == "meta",
            "alice to see bob's metadata",
        )
        merged = await lkapi.room.update_participant(
            api.UpdateParticipantRequest(room=ROOM, identity="bob", attributes={"a": "", "b": "2"})
        )
        assert dict(merged.attributes) == {"b": "2"} and merged.metadata == "meta"

        # SendData from the server: only bob is named
        got: list[lk.DataPacket] = []
        alice.room.on("data_received", got.append)
        await lkapi.room.send_data(
            api.SendDataRequest(
                room=ROOM,
                data=b"from the server",
                kind=models.DataPacket.Kind.RELIABLE,
                destination_identities=["bob"],
                topic="ops",
            )
        )
        (packet,) = (await bob.wait("data_received"))[0]
        assert (packet.data, packet.topic, packet.participant) == (b"from the server", "ops", None)

        # UpdateRoomMetadata reaches everyone
        meta = await lkapi.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room=ROOM, metadata="m1")
        )
        assert meta.metadata == "m1"
        await bob.wait("room_metadata_changed")
        await until(lambda: alice.room.metadata == "m1", "alice to see the room metadata")

        # a permission binds at once: alice may no longer publish, her track goes
        revoked = await lkapi.room.update_participant(
            api.UpdateParticipantRequest(
                room=ROOM,
                identity="alice",
                permission=models.ParticipantPermission(can_subscribe=True, can_publish=False),
            )
        )
        assert not revoked.permission.can_publish and revoked.tracks == []
        await bob.wait("track_unpublished")
        await until(
            lambda: not alice.room.local_participant.permissions.can_publish,
            "alice to be told she may not publish",
        )
        assert got == []  # alice was never a destination

        # RemoveParticipant: bob gets leave{PARTICIPANT_REMOVED}
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob"))
        ((reason,),) = await bob.wait("disconnected")
        assert reason == models.DisconnectReason.PARTICIPANT_REMOVED
        with pytest.raises(api.TwirpError) as missing:
            await lkapi.room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="bob"))
        assert (missing.value.code, missing.value.status) == ("not_found", 404)

        # DeleteRoom: alice gets leave{ROOM_DELETED}
        gone: list[Any] = []
        alice.room.on("disconnected", gone.append)
        await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        await until(lambda: bool(gone), "alice to be disconnected")
        assert gone == [models.DisconnectReason.ROOM_DELETED]
        assert (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms == []
        with pytest.raises(api.TwirpError) as deleted:
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        assert deleted.value.code == "not_found"
    finally:
        await alice.leave()
        await bob.room.disconnect()
        await lkapi.aclose()


CALLS: list[tuple[str, Callable[[api.LiveKitAPI], Any], dict[str, Any]]] = [
    ("CreateRoom", lambda c: c.room.create_room(api.CreateRoomRequest(name=ROOM)), {}),
    ("ListRooms", lambda c: c.room.list_rooms(api.ListRoomsRequest()), {}),
    ("DeleteRoom", lambda c: c.room.delete_room(api.DeleteRoomRequest(room=ROOM)), {}),
    (
        "ListParticipants",
        lambda c: c.room.list_participants(api.ListParticipantsRequest(room=ROOM)),
        {},
    ),
    (
        "GetParticipant",
        lambda c: c.room.get_participant(api.RoomParticipantIdentity(room=ROOM, identity="x")),
        {},
    ),
    (
        "RemoveParticipant",
        lambda c: c.room.remove_participant(api.RoomParticipantIdentity(room=ROOM, identity="x")),
        {},
    ),
    (
        "MutePublishedTrack",
        lambda c: c.room.mute_published_track(
            api.MuteRoomTrackRequest(room=ROOM, identity="x", track_sid="TR_x", muted=True)
        ),
        {},
    ),
    (
        "UpdateParticipant",
        lambda c: c.room.update_participant(
            api.UpdateParticipantRequest(room=ROOM, identity="x", metadata="m")
        ),
        {},
    ),
    (
        "UpdateSubscriptions",
        lambda c: c.room.update_subscriptions(
            api.UpdateSubscriptionsRequest(room=ROOM, identity="x", track_sids=["TR_x"])
        ),
        {},
    ),
    (
        "SendData",
        lambda c: c.room.send_data(api.SendDataRequest(room=ROOM, data=b"x")),
        {},
    ),
    (
        "UpdateRoomMetadata",
        lambda c: c.room.update_room_metadata(
            api.UpdateRoomMetadataRequest(room=ROOM, metadata="m")
        ),
        {},
    ),
]
#: the grant each method needs, as LiveKit's RoomService checks it
NEEDS = {
    "CreateRoom": {"room_create": True},
    "DeleteRoom": {"room_create": True},
    "ListRooms": {"room_list": True},
}
ADMIN = {"room_admin": True, "room": ROOM}


async def test_every_bad_grant_is_refused(sfu: SfuInstance) -> None:
    everything_but = {
        "CreateRoom": {"room_list": True, **ADMIN, "room_join": True},
        "DeleteRoom": {"room_list": True, **ADMIN, "room_join": True},
        "ListRooms": {"room_create": True, **ADMIN, "room_join": True},
    }
    wrong_room = {"room_admin": True, "room": "elsewhere", "room_create": True, "room_list": True}
    for name, call, _ in CALLS:
        bad_tokens = [everything_but.get(name, {"room_create": True, "room_list": True})]
        if name not in NEEDS:
            bad_tokens += [wrong_room, {"room": ROOM, "room_join": True}]
        for grants in bad_tokens:
            client = admin_api(sfu, **grants)
            try:
                with pytest.raises(api.TwirpError) as refused:
                    await call(client)
            finally:
                await client.aclose()
            error = refused.value
            assert (error.code, error.status, error.message) == (
                "unauthenticated",
                401,
                "permissions denied",
            ), (name, grants)
        # the right grant passes authorisation (the call may then find nothing)
        client = admin_api(sfu, **NEEDS.get(name, ADMIN))
        try:
            await call(client)
        except api.TwirpError as exc:
            assert exc.code == "not_found", (name, exc)
        finally:
            await client.aclose()

    # no token, a token signed with another secret, an expired one, a non-Bearer header
    url = f"{sfu.http_url}/twirp/livekit.RoomService/ListRooms"
    forged = api.AccessToken(sfu.api_key, "x" * 40).with_grants(api.VideoGrants(room_list=True))
    expired = (
        api.AccessToken(sfu.api_key, sfu.api_secret)
        .with_grants(api.VideoGrants(room_list=True))
        .with_ttl(timedelta(minutes=-5))
    )
    async with httpx.AsyncClient(timeout=WAIT) as http:
        for headers, message in (
            ({}, "permissions denied"),
            ({"Authorization": f"Bearer {forged.to_jwt()}"}, "invalid token: signature is invalid"),
            ({"Authorization": f"Bearer {expired.to_jwt()}"}, "invalid token: token is expired"),
            (
                {"Authorization": "Basic abc"},
                "invalid authorization header. Must start with Bearer ",
            ),
        ):
            answer = await http.post(
                url, content="{}", headers={**headers, "Content-Type": "application/json"}
            )
            assert answer.status_code == 401, headers
            assert answer.headers["content-type"] == "application/json"
            assert answer.json() == {"code": "unauthenticated", "msg": message}


async def test_json_bodies_and_twirp_errors(sfu: SfuInstance) -> None:
    token = (
        api.AccessToken(sfu.api_key, sfu.api_secret)
        .with_grants(api.VideoGrants(room_create=True, room_list=True, room_admin=True, room="j"))
        .to_jwt()
    )
    auth = {"Authorization": f"Bearer {token}"}
    base = f"{sfu.http_url}/twirp/livekit.RoomService"
    json_headers = {**auth, "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=WAIT) as http:
        # protojson in both spellings, answered in JSON with proto field names
        created = await http.post(
            f"{base}/CreateRoom",
            json={"name": "j", "emptyTimeout": 30, "max_participants": 3, "unknownField": 1},
            headers=json_headers,
        )
        assert created.status_code == 200, created.text
        assert created.headers["content-type"] == "application/json"
        body = created.json()
        assert (body["name"], body["empty_timeout"], body["max_participants"]) == ("j", 30, 3)
        assert isinstance(body["creation_time"], str)  # int64 is a string in protojson
        listed = await http.post(f"{base}/ListRooms", content="{}", headers=json_headers)
        assert [r["name"] for r in listed.json()["rooms"]] == ["j"]

        async def error(path: str, content: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
            answer = await http.post(
                f"{base}/{path}", content=content, headers={**json_headers, **headers}
            )
            assert answer.headers["content-type"] == "application/json", answer.text
            return answer.status_code, answer.json()

        assert await error("Nope", b"{}") == (
            404,
            {"code": "bad_route", "msg": "no handler for path '/twirp/livekit.RoomService/Nope'"},
        )
        assert (await error("ListRooms", b"{}", **{"Content-Type": "text/plain"}))[1][
            "code"
        ] == "bad_route"
        assert await error("ListRooms", b"{not json") == (
            400,
            {"code": "malformed", "msg": "the json request could not be decoded"},
        )
        assert await error(
            "ListRooms", b"\xff\xff\xff", **{"Content-Type": "application/protobuf"}
        ) == (
            400,
            {"code": "malformed", "msg": "the protobuf request could not be decoded"},
        )
        assert (await error("ListRooms", b"[" * 100_000))[1]["code"] == "malformed"
        status, too_big = await error("SendData", b"x" * (2 << 20))
        assert (status, too_big["code"]) == (400, "malformed")
        status, meta = await error(
            "UpdateRoomMetadata", f'{{"room": "j", "metadata": "{"m" * 64001}"}}'.encode()
        )
        assert (status, meta) == (
            400,
            {"code": "invalid_argument", "msg": "metadata size exceeds limits: 64000 bytes"},
        )
        status, name = await error("CreateRoom", b'{"name": ""}')
        assert (status, name["code"]) == (400, "invalid_argument")
        other = await http.post(f"{sfu.http_url}/twirp/livekit.Egress/ListEgress", headers=auth)
        assert (other.status_code, other.json()["code"]) == (404, "bad_route")
        get = await http.get(f"{base}/ListRooms", headers=auth)
        assert (get.status_code, get.json()["code"]) == (404, "bad_route")
        metrics = (await http.get(sfu.metrics_url)).text
        assert 'limit="api_request_body"' in metrics
        assert 'limit="api_metadata_size"' in metrics
