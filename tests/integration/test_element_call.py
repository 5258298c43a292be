"""Element Call 0.26 against Synapse with the application-service mode on: a two-user E2EE call.

Element Call's embedded (widget) build from npm runs in headless Chromium, one browser context
per user, each hosted by ``tests/element_call/host.html`` (the Matrix client side of the widget
API, over Synapse's client-server API). Nothing is configured in Element Call: it finds the
auth service through Synapse's MSC4143 transports (asked over the widget API), gets its token
with its own OpenID token and joins the SFU with per-participant E2EE (the room is encrypted;
keys travel as to-device messages through Synapse).

From outside: RoomService ``ListParticipants`` shows both users with GCM-encrypted tracks; each
Element Call decodes the other's video and audio (its own RTP statistics, its video elements
playing) and relayed its media key to the other's device. Alice invites the focus user, which
joins. Then Bob leaves the Matrix room: the auth service, told by Synapse's push, removes him
from the SFU, Alice's Element Call drops his tile and neither receives video any more. Last,
Alice hangs up (her client's ``im.vector.hangup``): the call is empty, so the focus leaves
(``LIVEKIT_FOCUS_EMPTY_CALL_SECONDS`` later, read back from the timeline) and closes the call
on the SFU (the room is gone from ``ListRooms``), though Alice is still in the Matrix room.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit import api
from livekit.protocol import models

from auth_service.tokens import legacy_room_alias
from tests.harness.element_call import ElementCallPage, element_call_session
from tests.harness.synapse import MatrixUser
from tests.integration.test_focus import (
    CALL_MEMBER,
    FOCUS_EMPTY_S,
    Focus,
    Matrix,
    focus_user,
    room_path,
    until_focus,
)
from tests.integration.test_focus import focus as focus

pytestmark = pytest.mark.asyncio(loop_scope="module")

JOIN_S = 60.0
EJECTED_S = 3.0
"""Bob's removal, from his leave request: test_focus.py holds the service to 1 s with SDK
clients; here two Element Calls encode and decode video on the same small machine as Synapse,
whose push to the application service then takes longer."""
MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2"}


async def encrypted_call_room(focus: Focus) -> tuple[Matrix, Matrix, str]:
    """Alice's encrypted room (as Element creates a call room), which Bob joined."""
    synapse = focus.synapse
    alice = Matrix(synapse, await asyncio.to_thread(synapse.create_user, "ec_alice", "ALICEDEV"))
    bob = Matrix(synapse, await asyncio.to_thread(synapse.create_user, "ec_bob", "BOBDEV"))
    room_id = (
        await alice.post(
            "/_matrix/client/v3/createRoom",
            {
                "preset": "private_chat",
                "name": "Element Call test",
                "initial_state": [
                    {"type": "m.room.encryption", "state_key": "", "content": MEGOLM}
                ],
                "power_level_content_override": {"events": {CALL_MEMBER: 0}},
            },
        )
    )["room_id"]
    await alice.post(room_path(room_id, "invite"), {"user_id": bob.user.user_id})
    await bob.post(room_path(room_id, "join"), {})
    return alice, bob, room_id


def room_service(focus: Focus) -> api.LiveKitAPI:
    sfu = focus.sfu
    return api.LiveKitAPI(sfu.http_url, sfu.api_key, sfu.api_secret, failover=False)


async def participants(lkapi: api.LiveKitAPI, room: str) -> dict[str, models.ParticipantInfo]:
    answer = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity: p for p in answer.participants}


def receiving(media: dict[str, Any]) -> dict[str, int]:
    """Frames decoded and audio energy (µ units) over Element Call's inbound RTP streams."""
    video = sum(s["framesDecoded"] for s in media["inbound"] if s["kind"] == "video")
    energy = sum(s["totalAudioEnergy"] for s in media["inbound"] if s["kind"] == "audio")
    return {"frames": video, "audio": int(energy * 1e6)}


async def wait_receiving(
    page: ElementCallPage, since: dict[str, int] | None = None
) -> dict[str, int]:
    """Until `page`'s Element Call decodes more video (10 frames) and audio than `since`."""
    base = since or {"frames": 0, "audio": 0}

    async def probe() -> dict[str, int]:
        return receiving(await page.media())

    result: dict[str, int] = await page.until(
        probe,
        lambda r: r["frames"] > base["frames"] + 10 and r["audio"] > base["audio"],
        "remote video and audio decoding",
        JOIN_S,
    )
    return result


async def frames_in_a_second(page: ElementCallPage) -> int:
    first = receiving(await page.media())
    await asyncio.sleep(1.0)
    return receiving(await page.media())["frames"] - first["frames"]


def playing(tiles: list[dict[str, Any]]) -> int:
    """Element Call's video elements showing a picture."""
    return sum(1 for t in tiles if t["width"] > 0 and not t["paused"] and t["readyState"] >= 2)


def keys_exchanged(events: list[dict[str, Any]], other: MatrixUser) -> bool:
    """The host relayed MatrixRTC media keys to `other`'s device and received theirs."""
    kind = "io.element.call.encryption_keys"
    target = f"{other.user_id}/{other.device_id}"
    sent = any(
        e["type"] == "to_device_sent" and e["eventType"] == kind and target in e["targets"]
        for e in events
    )
    received = any(
        e["type"] == "to_device_received"
        and e["eventType"] == kind
        and e["sender"] == other.user_id
        for e in events
    )
    return sent and received


async def test_element_call_two_users_e2ee_and_a_leaver_removed(focus: Focus) -> None:
    alice, bob, room_id = await encrypted_call_room(focus)
    synapse = focus.synapse
    alias = legacy_room_alias(room_id)
    lkapi = room_service(focus)
    users = {"alice": alice.user, "bob": bob.user}
    identities = {name: f"{u.user_id}:{u.device_id}" for name, u in users.items()}
    try:
        async with element_call_session(list(users)) as session:
            pages = {page.name: page for page in session.pages}
            started = time.monotonic()
            for name, user in users.items():
                await pages[name].start(synapse, user, room_id)

            async def in_the_sfu() -> dict[str, models.ParticipantInfo]:
                try:
                    return await participants(lkapi, alias)
                except api.TwirpError:  # the room exists once the first one joins
                    return {}

            people = await pages["alice"].until(
                in_the_sfu,
                lambda p: (
                    set(identities.values()) <= set(p)
                    and all(len(p[i].tracks) >= 2 for i in identities.values())
                ),
                "both users publishing audio and video in the SFU room",
                JOIN_S,
            )
            print(f"element call: both published {time.monotonic() - started:.1f} s after start")
            # As a client would once its call starts: the focus joins (one focus per room).
            me = focus_user(focus)
            await alice.post(room_path(room_id, "invite"), {"user_id": me})
            await until_focus(alice, room_id, me, ["invite", "join"], JOIN_S)
            for identity in identities.values():
                for track in people[identity].tracks:
                    assert track.encryption == models.Encryption.Type.GCM, (identity, track)
            for name, other in (("alice", "bob"), ("bob", "alice")):
                page = pages[name]
                got = await wait_receiving(page)
                later = await wait_receiving(page, got)
                print(
                    f"element call: {name} decodes {other}'s media {later} "
                    f"({time.monotonic() - started:.1f} s)"
                )
                await page.until(page.tiles, lambda t: playing(t) >= 2, "two video tiles", JOIN_S)
                events = await page.events()
                transports = [e for e in events if e["type"] == "rtc_transports"]
                assert transports[0]["transports"] == [
                    {"type": "livekit", "livekit_service_url": focus.auth.url}
                ], transports
                assert keys_exchanged(events, users[other]), events

            print(f"element call: tiles and keys checked ({time.monotonic() - started:.1f} s)")
            left_at = time.monotonic()
            await bob.post(room_path(room_id, "leave"), {})

            async def sfu_now() -> dict[str, models.ParticipantInfo]:
                return await participants(lkapi, alias)

            await pages["alice"].until(
                sfu_now,
                lambda p: identities["bob"] not in p,
                "Bob removed from the SFU",
                EJECTED_S,
                interval_s=0.05,
            )
            took = time.monotonic() - left_at
            print(
                f"element call: Bob gone from the SFU {took * 1000:.0f} ms after leaving the room"
            )
            assert identities["alice"] in await participants(lkapi, alias)
            # Element Call sees it: Alice's shows her own tile only and stops receiving;
            # Bob's receives nothing more.
            await pages["alice"].until(
                pages["alice"].tiles, lambda t: playing(t) == 1, "Bob's tile gone", 15.0
            )
            for name in ("alice", "bob"):
                await pages[name].until(
                    lambda n=name: frames_in_a_second(pages[n]),
                    lambda frames: frames == 0,
                    "no more video from the other",
                    15.0,
                )

            # Alice hangs up: the call is empty, so the focus leaves and closes it on the SFU.
            await pages["alice"].hang_up()
            hung_up = time.monotonic()
            seen = await until_focus(
                alice, room_id, me, ["invite", "join", "leave"], FOCUS_EMPTY_S + 20
            )

            async def sfu_rooms() -> list[str]:
                listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[alias]))
                return [room.name for room in listed.rooms]

            await pages["alice"].until(sfu_rooms, lambda names: not names, "the call closed", 10.0)
            print(
                f"element call: the focus stayed {(seen[2][1] - seen[1][1]) / 1000:.1f} s; "
                f"the SFU room closed {time.monotonic() - hung_up:.1f} s after Alice hung up"
            )
    finally:
        await lkapi.aclose()
    focus.sfu.assert_alive()
